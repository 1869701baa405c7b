"""Agent workers: prepare the worktree, run the agent, commit what it left, push.

Each worker ``agent-K`` owns the worktree ``<home>/worktrees/agent-K`` of the
clone ``<home>/work`` (whose ``origin`` is repo.git). Between attempts the
worktree is detached, so any worker can later check out any ticket branch.
Agents are started from argv lists (never a shell) by an ``AgentRunner``
(daemon/runner.py; today local processes in their own session and process
group), so a stop ends the whole tree: SIGTERM, a grace period, then SIGKILL
(like watchfiles' process supervisor). A worker is an agent slot: it is busy
from the worktree preparation to the commit of the attempt's work; the push
(:meth:`Workers.push`) runs after it, without the slot. What escaped
the group (``setsid``) ends with the attempt too (daemon.contain).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import anyio
import msgspec
from anyio.abc import Process

from orchestrator.daemon.contain import RUN_ID_VAR
from orchestrator.daemon.core import (
    AgentExited,
    AgentStarted,
    AgentWaiting,
    Input,
    Progress,
    Pushed,
    StartAgent,
)
from orchestrator.daemon.git import (
    REF_TOKEN_VAR,
    git,
    main_commit,
    run_git,
    scrub_clone_config,
)
from orchestrator.daemon.runner import AgentProcess, AgentRunner, LocalAgent, LocalRunner
from orchestrator.shared.config import Home
from orchestrator.shared.errors import GitError
from orchestrator.shared.models import Ticket
from orchestrator.shared.protocol import Event, EventKind
from orchestrator.shared.saferead import MAX_TICKET_BYTES, FileRefused, read_file_async
from orchestrator.shared.yamlsafe import decode_yaml

log = logging.getLogger(__name__)

PLACEHOLDER_RE = re.compile(
    r"\{(prompt|prompt_file|ticket_file|ticket_id|worktree|branch|"
    r"attempt|feedback_file|run_dir|usage_file)\}"
)
#: Linux refuses one argv item longer than this (MAX_ARG_STRLEN, 32 pages of 4 KiB,
#: including the NUL; execve(2) fails with E2BIG).
MAX_ARG_BYTES = 32 * 4096 - 1
LOG_TAIL_CHARS = 4000
#: At most one Progress input per agent this often (s), however chatty its output.
PROGRESS_EVERY_S = 1.0


#: An agent log keeps its first and its last bytes; what is between is cut out
#: (docs/config.md). The file never exceeds head + 2 x tail + one marker line.
LOG_HEAD_BYTES = 1 << 20
LOG_TAIL_BYTES = 4 << 20


class CappedLog:
    """Appends to an open agent log, keeping its head and tail (bounded size).

    When the file grows past ``head + 2 * tail`` bytes, everything after the first
    ``head`` bytes except the last ``tail`` is replaced by one marker line saying
    how many bytes were cut. Amortised O(1) per byte written.
    """

    def __init__(self, out: IO[bytes], head: int = LOG_HEAD_BYTES, tail: int = LOG_TAIL_BYTES):
        self.out = out
        self.head = head
        self.tail = tail
        self.omitted = 0
        self.size = out.seek(0, os.SEEK_END)

    def write(self, data: bytes) -> None:
        self.out.write(data)
        self.out.flush()
        self.size += len(data)
        if self.size > self.head + 2 * self.tail:
            self._compact()

    def _compact(self) -> None:
        keep = os.pread(self.out.fileno(), self.tail, self.size - self.tail)
        self.omitted += self.size - self.head - self.tail
        self.out.truncate(self.head)
        marker = f"\n[orchestrator] {self.omitted} bytes of agent output cut here\n".encode()
        self.out.write(marker + keep)  # append mode: written at the (new) end
        self.out.flush()
        self.size = self.head + len(marker) + len(keep)


def fill_placeholders(
    argv: list[str], values: dict[str, str], pattern: re.Pattern[str] = PLACEHOLDER_RE
) -> list[str]:
    """Replace the documented ``{name}`` placeholders (``pattern``; the reviewer's adds
    ``{diff_file}``) in each argv item; leave other braces."""
    return [pattern.sub(lambda m: values[m.group(1)], item) for item in argv]


def argv_too_long(argv: list[str]) -> str:
    """Why the kernel would refuse ``argv`` (an item over :data:`MAX_ARG_BYTES`), or ""."""
    for i, item in enumerate(argv):
        size = len(os.fsencode(item))
        if size > MAX_ARG_BYTES:
            return (
                f"argv item {i} is {size} bytes, over Linux's limit of {MAX_ARG_BYTES + 1} "
                "for one argument (E2BIG); pass a long prompt as {prompt_file} instead "
                "of {prompt} (docs/config.md)"
            )
    return ""


@dataclass
class _Run:
    effect: StartAgent
    process: AgentProcess | None = None
    stop_reason: str = ""
    tail: bytearray = field(default_factory=bytearray)
    output_closed: anyio.Event = field(default_factory=anyio.Event)
    """Set when the agent's output pipe reached its end (everything is in the log)."""
    status_hash: str = ""
    run_id: str = field(default_factory=lambda: secrets.token_hex(8))
    """``ORCH_RUN_ID`` of this attempt's processes (daemon.contain)."""
    start_scope: anyio.CancelScope | None = None
    """Set while the runner starts the agent (a stop cancels a start that waits)."""


class Workers:
    """Runs attempts and pushes for all workers of one home.

    Args:
        home: the project home.
        submit: hands inputs to the core (non-blocking).
        publish: sends non-persisted events (agent output) to socket clients.
        repo_lock: held while ``refs/remotes/origin/main`` of the shared clone is
            updated (a fetch of main; the merger's push of main).
        runner: where agent processes run (daemon/runner.py); local processes by default.
    """

    def __init__(
        self,
        home: Home,
        submit: Callable[[list[Input]], None],
        publish: Callable[[list[Event]], None],
        repo_lock: anyio.Lock,
        runner: AgentRunner | None = None,
    ) -> None:
        self.home = home
        self.runner: AgentRunner = runner or LocalRunner()
        self.submit = submit
        self.publish = publish
        self.repo_lock = repo_lock
        self.idle = anyio.Event()
        """Set while no attempt runs and no push is under way (replaced when one starts);
        shutdown waits on it, so a ticket in ``ci_running`` has its branch pushed."""
        self.idle.set()
        self.runs: dict[str, _Run] = {}
        self._pushes = 0

    def kill_all(self) -> None:
        """SIGKILL every agent still running (last step of a shutdown)."""
        for run in self.runs.values():
            if run.process is not None and run.process.returncode is None:
                run.process.signal(signal.SIGKILL)

    def worktree(self, agent: str) -> Path:
        return self.home.worktrees / agent

    async def ensure_worktrees(self, names: list[str]) -> None:
        """Create missing worktrees (detached at origin/main); prune vanished ones."""
        work = self.home.work
        await git(work, "worktree", "prune")
        for name in names:
            path = self.worktree(name)
            if not (path / ".git").exists():
                await git(work, "worktree", "add", "--detach", "--force", str(path), "origin/main")

    # --- an attempt -------------------------------------------------------

    async def run_attempt(self, effect: StartAgent) -> None:
        """Prepare, run and finish one attempt; always ends with an AgentExited input."""
        run = _Run(effect)
        self.runs[effect.agent] = run
        if self.idle.is_set():
            self.idle = anyio.Event()
        try:
            await self._run(run)
        except Exception as exc:  # a bug here must not strand the ticket in `running`
            if isinstance(exc, OSError):  # the attempt's files (disk full...): one line
                reason = f"cannot write the attempt's files: {exc}"
                log.warning("%s: attempt of %s failed: %s", effect.agent, effect.ticket, reason)
            else:
                log.exception("%s: attempt of %s failed", effect.agent, effect.ticket)
                reason = f"internal error: {exc}"
            if run.process is not None:
                run.process.signal(signal.SIGKILL)
            self._exited(effect, None, reason=reason)
        finally:
            self.runs.pop(effect.agent, None)
            if not self.runs and not self._pushes:
                self.idle.set()

    async def _run(self, run: _Run) -> None:
        eff = run.effect
        wt = self.worktree(eff.agent)
        attempt_dir = self.home.runs / eff.ticket / str(eff.attempt)
        attempt_dir.mkdir(parents=True, exist_ok=True)
        log_file = attempt_dir / "agent.log"
        try:
            await self._prepare(wt, eff)
        except GitError as exc:
            self._exited(eff, None, reason=f"cannot prepare worktree: {exc}")
            return
        if run.stop_reason:  # stopped while the worktree was being prepared
            await self._finish(run, wt, -int(signal.SIGTERM), "")
            return
        ticket_file = eff.ticket_file
        prompt = await self._prompt(eff, ticket_file)
        prompt_file = attempt_dir / "prompt.md"
        prompt_file.write_text(prompt)
        feedback_file = attempt_dir / "feedback.md" if eff.feedback else None
        if feedback_file is not None:
            feedback_file.write_text(eff.feedback)
        if failed := await self._setup(run, wt, attempt_dir):
            await self._finish(run, wt, None, failed)
            return
        if run.stop_reason:  # stopped during the worktree setup
            await self._finish(run, wt, -int(signal.SIGTERM), "")
            return
        values = {
            "prompt": prompt,
            "prompt_file": str(prompt_file),
            "ticket_file": ticket_file,
            "ticket_id": eff.ticket,
            "worktree": str(wt),
            "branch": eff.branch,
            "attempt": str(eff.attempt),
            "feedback_file": str(feedback_file or ""),
            "run_dir": str(attempt_dir),
            "usage_file": str(attempt_dir / "usage.jsonl"),
        }
        argv = fill_placeholders(self.home.config.agent.command, values)
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", REF_TOKEN_VAR)
        }
        env.update(self.home.config.agent.env)
        env.update(
            {
                "ORCH_TICKET_ID": eff.ticket,
                "ORCH_TICKET_FILE": ticket_file,
                "ORCH_PROMPT_FILE": str(prompt_file),
                "ORCH_WORKTREE": str(wt),
                "ORCH_BRANCH": eff.branch,
                "ORCH_ATTEMPT": str(eff.attempt),
                "ORCH_AGENT": eff.agent,
                "ORCH_FEEDBACK_FILE": str(feedback_file or ""),
                "ORCH_RUN_DIR": values["run_dir"],
                "ORCH_USAGE_FILE": values["usage_file"],
                "ORCH_CONFIG": str(self.home.config_file),
                RUN_ID_VAR: run.run_id,
            }
        )
        # Unbuffered, written from a worker thread: the loop never blocks on the disk.
        async with await anyio.open_file(log_file, "a+b", buffering=0) as out:
            if too_long := argv_too_long(argv):
                await out.write(f"{too_long}\n".encode())
                await self._finish(run, wt, None, too_long)
                return
            await out.write(f"$ {' '.join(argv)}\n".encode())
            try:
                with anyio.CancelScope() as run.start_scope:
                    run.process = await self.runner.start(
                        argv, wt, env, waiting=lambda why: self._waiting(eff, why)
                    )
            except OSError as exc:
                reason = (
                    f"agent command not found: {argv[0]}"
                    if isinstance(exc, FileNotFoundError)
                    else f"cannot start agent {argv[0]}: {exc.strerror or exc}"
                )
                await out.write(f"{reason}\n".encode())
                await self._finish(run, wt, None, reason)
                return
            run.start_scope = None
            if run.process is None:  # stopped while it waited for room on the cluster
                await self._finish(run, wt, -int(signal.SIGTERM), "")
                return
            process = run.process
            self.submit(
                [
                    AgentStarted(
                        eff.agent,
                        eff.ticket,
                        eff.attempt,
                        process.pid,
                        str(log_file),
                        str(feedback_file or ""),
                        time.time(),
                        run.run_id,
                        node=process.node,
                        host=process.host,
                    )
                ]
            )
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._pump_output, run, out)
                if run.stop_reason:  # a stop arrived while the process was being started
                    tg.start_soon(self._terminate, run)
                code = await process.wait()
                # What the agent left running ends too; that also closes the output pipe
                # if a leftover child still held it.
                process.signal(signal.SIGKILL)
                await process.settle()
                with anyio.move_on_after(2):
                    await run.output_closed.wait()
                tg.cancel_scope.cancel()
            await out.write(f"[orchestrator] agent exited with code {code}\n".encode())
        await self._finish(run, wt, code, "")

    async def _setup(self, run: _Run, wt: Path, attempt_dir: Path) -> str:
        """``worktree.copy`` and ``worktree.setup`` (daemon/setup.py); why they failed or ""."""
        from orchestrator.daemon import setup

        reason = await anyio.to_thread.run_sync(setup.copy_files, self.home, wt)
        if reason:
            run.tail[:] = reason.encode()
            return reason
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", REF_TOKEN_VAR)
        }
        env.update(self.home.config.agent.env)
        env.update(ORCH_TICKET_ID=run.effect.ticket, ORCH_WORKTREE=str(wt))

        def started(process: Process) -> None:
            run.process = LocalAgent(process)  # the setup runs locally; a stop ends it too

        reason, tail = await setup.run_setup(self.home, wt, attempt_dir / "setup.log", env, started)
        run.process = None
        if run.stop_reason:  # stopped during the setup: end like a stop
            return ""
        run.tail[:] = tail.encode()
        return reason

    def _waiting(self, eff: StartAgent, why: str) -> None:
        self.submit([AgentWaiting(eff.agent, eff.ticket, eff.attempt, why, time.time())])

    async def _pump_output(self, run: _Run, out: anyio.AsyncFile[bytes]) -> None:
        eff = run.effect
        assert run.process is not None
        last_progress = 0.0
        capped = CappedLog(out.wrapped)  # written from a worker thread
        async for chunk in run.process.output():
            await anyio.to_thread.run_sync(capped.write, chunk)
            run.tail.extend(chunk)
            del run.tail[:-LOG_TAIL_CHARS]
            now = time.time()
            self.publish(
                [
                    Event(
                        id=0,
                        ts=now,
                        kind=EventKind.AGENT_OUTPUT,
                        ticket=eff.ticket,
                        agent=eff.agent,
                        text=chunk.decode(errors="replace"),
                    )
                ]
            )
            if now - last_progress >= PROGRESS_EVERY_S:
                last_progress = now
                line = chunk.decode(errors="replace").strip().splitlines()
                self.submit([Progress(eff.agent, now, note=line[-1][:120] if line else "")])
        run.output_closed.set()

    async def _prepare(self, wt: Path, eff: StartAgent) -> None:
        """Check out the ticket branch in the worktree (created from main if new).

        Takes no lock: the refs it changes (the ticket's branch, the worktree's HEAD)
        belong to this ticket alone, and main is read from repo.git, not fetched.
        """
        await self.salvage(wt, f"orchestrator: salvage before {eff.ticket} attempt {eff.attempt}")
        work = self.home.work
        main = await main_commit(self.home.repo, work, self.repo_lock)
        exists = await _branch_exists(work, eff.branch)
        if exists and eff.rebuild:
            backup = f"refs/orchestrator/attempts/{eff.ticket}/{eff.attempt - 1}"
            await git(work, "update-ref", backup, f"refs/heads/{eff.branch}")
            await git(work, "branch", "--force", eff.branch, main)
        if exists:
            await git(wt, "checkout", "--quiet", eff.branch)
        else:
            await git(wt, "checkout", "--quiet", "-b", eff.branch, main)

    async def salvage(self, wt: Path, message: str) -> bool:
        """Commit whatever is uncommitted in ``wt`` on its current branch (work is never lost).

        A detached HEAD gets a branch ``orchestrator/salvage/<time>`` first.
        Returns True when something was committed.
        """
        if not (wt / ".git").exists():
            return False
        status = await git(wt, "status", "--porcelain")
        if not status:
            return False
        if not await git(wt, "symbolic-ref", "-q", "HEAD", check=False):
            await git(wt, "checkout", "--quiet", "-b", f"orchestrator/salvage/{int(time.time())}")
        await git(wt, "add", "-A")
        await git(wt, "commit", "--quiet", "--no-verify", "-m", message)
        return True

    async def _finish(self, run: _Run, wt: Path, code: int | None, reason: str) -> None:
        eff = run.effect
        lost = run.process.lost if run.process is not None else ""
        removed = await anyio.to_thread.run_sync(scrub_clone_config, self.home.work)
        if removed:
            log.warning(
                "%s: removed unsafe git config the agent of %s wrote: %s",
                eff.agent,
                eff.ticket,
                ", ".join(removed),
            )
        try:
            await self.salvage(
                wt, f"{eff.ticket}: attempt {eff.attempt} by {eff.agent}\n\nTicket: {eff.ticket}"
            )
            head = await git(wt, "rev-parse", "HEAD")
            main = await main_commit(self.home.repo, self.home.work, self.repo_lock)
            changed = await git(wt, "diff", "--name-only", f"{main}...HEAD")
            await git(wt, "checkout", "--quiet", "--detach")
        except GitError as exc:
            self._exited(
                eff,
                code,
                reason=f"cannot commit the agent's work: {exc}",
                tail=bytes(run.tail),
                force_fail=True,
            )
            return
        self._exited(
            eff,
            code,
            reason=reason,
            tail=bytes(run.tail),
            changed=tuple(p for p in changed.splitlines() if p),
            head=head,
            lost=lost,
        )

    def _exited(
        self,
        eff: StartAgent,
        code: int | None,
        reason: str,
        tail: bytes = b"",
        changed: tuple[str, ...] = (),
        head: str = "",
        force_fail: bool = False,
        lost: str = "",
    ) -> None:
        self.submit(
            [
                AgentExited(
                    agent=eff.agent,
                    ticket=eff.ticket,
                    attempt=eff.attempt,
                    exit_code=None if force_fail else code,
                    now=time.time(),
                    changed=changed,
                    head=head,
                    log_tail=tail.decode(errors="replace"),
                    reason=reason,
                    lost=lost,
                )
            ]
        )

    async def _prompt(self, eff: StartAgent, ticket_file: str) -> str:
        """The prompt: the ticket file as it is now (read safely, off the event loop)."""
        text = ""
        if ticket_file:
            try:
                data = await read_file_async(ticket_file, MAX_TICKET_BYTES, inside=self.home.root)
                t = decode_yaml(data, Ticket)
                text = f"# {t.title}\n\n{t.description}\n"
                if t.locks:
                    text += "\nYou may change only these paths: " + ", ".join(t.locks) + "\n"
            except (OSError, FileRefused, msgspec.DecodeError) as exc:
                log.warning("%s: ticket file not used for the prompt: %s", eff.ticket, exc)
                text = ""
        text = text or f"# Ticket {eff.ticket}\n"
        if eff.feedback:
            text += f"\n## Feedback from the previous attempt\n\n{eff.feedback}\n"
        return text

    # --- stop, liveness, push ---------------------------------------------

    async def stop(self, agent: str, reason: str) -> None:
        """SIGTERM the agent's process group, wait ``stop_grace_s``, then SIGKILL."""
        run = self.runs.get(agent)
        if run is None:
            return
        run.stop_reason = reason  # also seen by an attempt that has not started its agent yet
        if run.start_scope is not None:
            run.start_scope.cancel()
        await self._terminate(run)

    async def _terminate(self, run: _Run) -> None:
        agent = run.effect.agent
        if run.process is None or run.process.returncode is not None:
            return
        pid = run.process.pid
        log.info("%s: stopping pid %d (%s): SIGTERM", agent, pid, run.stop_reason)
        run.process.signal(signal.SIGTERM)
        run.process.signal(signal.SIGCONT)  # a SIGSTOPped agent must see the SIGTERM
        with anyio.move_on_after(self.home.config.agent.stop_grace_s):
            await run.process.wait()
            return
        log.info(
            "%s: pid %d still alive after %.0f s: SIGKILL",
            agent,
            pid,
            self.home.config.agent.stop_grace_s,
        )
        run.process.signal(signal.SIGKILL)

    async def check_worktrees(self) -> None:
        """Feed Progress for agents whose worktree changed since the last check."""
        for agent, run in list(self.runs.items()):
            if run.process is None:
                continue
            digest = run.process.worktree_status
            if digest is None:  # a local agent: its worktree is here
                # --no-optional-locks: status must not take the worktree's index.lock, or
                # a commit of the attempt's work running at the same moment fails on it.
                result = await run_git(
                    self.worktree(agent), "--no-optional-locks", "status", "--porcelain", "-z"
                )
                digest = hashlib.sha1(result.stdout, usedforsecurity=False).hexdigest()
            if run.status_hash and digest != run.status_hash:
                self.submit([Progress(agent, time.time(), note="worktree changed")])
            run.status_hash = digest

    async def push(self, ticket: str, attempt: int, branch: str, ci: bool = True) -> str:
        """Push the branch to repo.git (post-receive starts CI unless ``ci`` is False: push
        option ``ci=skip``); feed Pushed; return the sha ("" when the push failed)."""
        self._pushes += 1
        if self.idle.is_set():
            self.idle = anyio.Event()
        try:
            return await self._push(ticket, attempt, branch, ci)
        finally:
            self._pushes -= 1
            if not self.runs and not self._pushes:
                self.idle.set()

    async def _push(self, ticket: str, attempt: int, branch: str, ci: bool) -> str:
        """Without CI to start, when repo.git has the commit already (a Ray node pushed
        it to the ticket's WIP ref, or the branch is still at main), the ref is set there
        directly: ``git update-ref`` refuses a commit repo.git lacks, and a push would
        only run hooks that start nothing (tens of ms of CPU per ticket). Otherwise it
        is a push. No lock: the only ref this changes in the clone is the branch's own
        remote-tracking ref (git locks each ref it updates)."""
        work, ref = self.home.work, f"refs/heads/{branch}"
        try:
            sha = await git(work, "rev-parse", ref)
            if ci or (await run_git(self.home.repo, "update-ref", ref, sha)).returncode != 0:
                options = [] if ci else ["-o", "ci=skip"]
                await git(work, "push", "--quiet", "--force", *options, "origin", f"{sha}:{ref}")
        except GitError as exc:
            self.submit([Pushed(ticket, attempt, "", time.time(), error=str(exc))])
            return ""
        self.submit([Pushed(ticket, attempt, sha, time.time())])
        return sha


async def _branch_exists(repo: Path, branch: str) -> bool:
    result = await run_git(repo, "show-ref", "--verify", "--quiet", f"refs/heads/{branch}")
    return result.returncode == 0
