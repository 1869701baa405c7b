"""The reviewer stage's shell: runs ``review.command`` on a ticket's change (docs/review.md).

A :class:`~orchestrator.daemon.core.Review` effect names a branch commit CI passed
on. :meth:`Reviewer.run` prepares ``runs/<ticket>/<attempt>/review-<round>/``:

- ``diff.patch``: the ticket's net diff (its merge base with main to the commit),
  the ``{diff_file}`` placeholder;
- ``prompt.md``: the review prompt (ticket, where the diff is, the answer's shape),
  ``{prompt}``/``{prompt_file}``;
- ``checkout/``: a detached worktree of the commit (``{worktree}``), removed after;

then runs the reviewer from its argv (never a shell) in its own session and process
group, stdin ``/dev/null``, killed (the whole group, and whatever carries its
``ORCH_RUN_ID``) when it exits or after ``review.timeout_s``. Its stdout is kept up
to :data:`MAX_OUTPUT_BYTES`; stdout and stderr go to ``review.log`` (head and tail
kept, like an agent log). The answer is decoded by :func:`parse_review`.

:meth:`Reviewer.run` never raises: every failure is a ``ReviewResult`` with status
``error`` and a one-line reason, so a ticket never waits in ``reviewing`` for good.
:meth:`Reviewer.stop` (a ``StopReview`` effect: the ticket was stopped) ends a run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Annotated, Literal

import anyio
import msgspec

from orchestrator.daemon.contain import RUN_ID_VAR, AttemptGroup
from orchestrator.daemon.core import Review, ReviewResult
from orchestrator.daemon.git import REF_TOKEN_VAR, git, run_git
from orchestrator.daemon.workers import (
    PLACEHOLDER_RE,
    CappedLog,
    argv_too_long,
    fill_placeholders,
)
from orchestrator.shared.config import Home
from orchestrator.shared.errors import GitError
from orchestrator.shared.models import ReviewComment, ReviewStatus, Ticket
from orchestrator.shared.saferead import MAX_TICKET_BYTES, FileRefused, read_file_async
from orchestrator.shared.yamlsafe import decode_yaml

log = logging.getLogger(__name__)

#: stdout kept from a reviewer (bytes); more is a review error, never a crash.
MAX_OUTPUT_BYTES = 256 * 1024
#: Most comments one answer may carry; longer lists are a review error.
MAX_COMMENTS = 200
#: The reviewer's placeholders: the agent's plus ``{diff_file}``.
REVIEW_PLACEHOLDER_RE = re.compile(PLACEHOLDER_RE.pattern.replace(r"\{(", r"\{(diff_file|", 1))
#: Candidate JSON starts (lines beginning with ``{``) tried from the end of the output.
MAX_CANDIDATES = 20


class ReviewAnswer(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """What a reviewer prints: ``{"verdict": ..., "comments": [...]}`` (docs/review.md)."""

    verdict: Literal["approve", "request_changes"]
    comments: Annotated[list[ReviewComment], msgspec.Meta(max_length=MAX_COMMENTS)] = msgspec.field(
        default_factory=list
    )


_decoder = msgspec.json.Decoder(ReviewAnswer)


def review_run_id(home: Path, ticket: str, gen: int) -> str:
    """``ORCH_RUN_ID`` of a reviewer run: derived from the persisted ``review_gen``, so the
    daemon can end a reviewer that outlived a crash (daemon.contain), and from the project
    home ``home`` (a digest of its path), so that it never names another project's
    reviewer: every process of the user that carries it is killed when the review ends,
    and the daemons of two projects may well review tickets of the same name."""
    digest = hashlib.sha256(os.fsencode(home.resolve())).hexdigest()[:12]
    return f"review-{digest}-{ticket}-{gen}"


def parse_review(stdout: bytes) -> ReviewAnswer | str:
    """Decode a reviewer's stdout; return the answer or why it is unusable (one line).

    The rule (docs/review.md): the whole output, stripped, is the JSON object; else
    agents that print chatter first are served by trying, from the last line that
    starts with ``{`` backwards, the text from that line to the end (a trailing
    Markdown code fence removed). Decoding is strict: unknown keys, a wrong verdict
    or a wrong type are errors, reported with msgspec's JSON path.
    """
    text = stdout.decode(errors="replace").strip()
    if not text:
        return "the reviewer printed nothing on stdout"
    candidates = [text]
    lines = text.splitlines(keepends=True)
    offsets = []
    pos = 0
    for line in lines:
        if line.lstrip().startswith("{"):
            offsets.append(pos)
        pos += len(line)
    candidates += [text[o:] for o in reversed(offsets[-MAX_CANDIDATES:]) if o > 0]
    first_error = ""
    for candidate in candidates:
        body = candidate.strip().removesuffix("```").strip()
        try:
            return _decoder.decode(body)
        except msgspec.ValidationError as exc:  # JSON, but not a review answer
            first_error = first_error or f"the reviewer's JSON is not a review answer: {exc}"
        except msgspec.DecodeError:
            continue
    if first_error:
        return _one_line(first_error)
    last = text.splitlines()[-1][:120]
    return _one_line(f"the reviewer printed no JSON object (its last line: {last!r})")


def _one_line(text: str) -> str:
    return " ".join(text.split())[:500]


def review_prompt(ticket: Ticket | None, ticket_id: str, diff_file: Path, checkout: Path) -> str:
    """The text given as ``{prompt}`` (and in ``{prompt_file}``) to the reviewer."""
    title = ticket.title if ticket else ticket_id
    text = f"# Review the change for ticket {ticket_id}: {title}\n\n"
    if ticket and ticket.description.strip():
        text += f"The ticket asked for:\n\n{ticket.description.strip()}\n\n"
    if ticket and ticket.locks:
        text += "It may change only these paths: " + ", ".join(ticket.locks) + "\n\n"
    text += (
        f"The change (its diff against the main branch it started from) is in {diff_file}; "
        f"the changed tree is checked out at {checkout}. The test suite passed on it. "
        "Review it for correctness, clarity and what the ticket asked; do not change files.\n\n"
        "Answer with exactly one JSON object on stdout, and print nothing after it:\n"
        '{"verdict": "approve" | "request_changes", "comments": '
        '[{"path": "file/path", "line": 12, "body": "what to change and why"}]}\n'
        '"line" may be null for a comment on a whole file. Request changes only for what '
        "must change before the change is merged.\n"
    )
    return text


class Reviewer:
    """Runs reviewer processes for one home (one per :class:`Review` effect)."""

    def __init__(self, home: Home) -> None:
        self.home = home
        self.running: dict[tuple[str, int], anyio.CancelScope] = {}
        """(ticket, gen) -> the cancel scope of that reviewer run."""

    def stop(self, ticket: str, gen: int) -> None:
        """End the reviewer run of ``ticket`` generation ``gen`` (its process group is
        killed); it then answers with an ``error`` result, which the core ignores."""
        scope = self.running.get((ticket, gen))
        if scope is not None:
            scope.cancel()

    async def run(self, effect: Review) -> ReviewResult:
        """Run the reviewer for ``effect``; never raises (errors are ``error`` results)."""
        started = time.monotonic()

        def result(status: ReviewStatus, **kw: object) -> ReviewResult:
            return ReviewResult(
                effect.ticket,
                effect.gen,
                status,
                time.time(),
                duration_s=round(time.monotonic() - started, 3),
                **kw,  # type: ignore[arg-type]
            )

        run_dir = self.home.runs / effect.ticket / str(effect.attempt) / f"review-{effect.round}"
        checkout = run_dir / "checkout"
        try:
            await anyio.to_thread.run_sync(lambda: run_dir.mkdir(parents=True, exist_ok=True))
            await self._prepare(effect, run_dir, checkout)
        except (GitError, OSError) as exc:
            return result(ReviewStatus.ERROR, error=_one_line(f"cannot prepare the review: {exc}"))
        key = (effect.ticket, effect.gen)
        outcome: ReviewAnswer | str = "the review was stopped"
        try:
            with anyio.CancelScope() as scope:
                self.running[key] = scope
                outcome = await self._review(effect, run_dir, checkout)
        except OSError as exc:
            outcome = _one_line(f"reviewer I/O error: {exc}")
        finally:
            self.running.pop(key, None)
            await self._remove_checkout(checkout)
        if isinstance(outcome, str):
            return result(ReviewStatus.ERROR, error=outcome)
        return result(ReviewStatus(outcome.verdict), comments=tuple(outcome.comments))

    async def _prepare(self, effect: Review, run_dir: Path, checkout: Path) -> None:
        repo = self.home.repo
        base = await git(repo, "merge-base", effect.sha, "refs/heads/main")
        diff_file = run_dir / "diff.patch"
        await git(
            repo, "diff", "--no-color", "--no-ext-diff", f"--output={diff_file}", base, effect.sha
        )
        await self._remove_checkout(checkout)
        await git(
            self.home.work, "worktree", "add", "--detach", "--force", str(checkout), effect.sha
        )

    async def _remove_checkout(self, checkout: Path) -> None:
        if checkout.exists():
            await run_git(self.home.work, "worktree", "remove", "--force", str(checkout))
            await anyio.to_thread.run_sync(lambda: shutil.rmtree(checkout, ignore_errors=True))
        await run_git(self.home.work, "worktree", "prune")

    async def _end(self, process: anyio.abc.Process, group: AttemptGroup) -> None:
        """SIGKILL the reviewer's process group and whatever carries its ``ORCH_RUN_ID``
        (by its :class:`AttemptGroup`: the group number may have been reused)."""
        if process.returncode is not None:
            group.exited()
        await anyio.to_thread.run_sync(group.end)

    async def _ticket(self, effect: Review) -> Ticket | None:
        if not effect.ticket_file:
            return None
        try:
            data = await read_file_async(
                effect.ticket_file, MAX_TICKET_BYTES, inside=self.home.root
            )
            return decode_yaml(data, Ticket)
        except (OSError, FileRefused, msgspec.DecodeError) as exc:
            log.warning("%s: ticket file not used for the review prompt: %s", effect.ticket, exc)
            return None

    async def _review(self, effect: Review, run_dir: Path, checkout: Path) -> ReviewAnswer | str:
        cfg = self.home.config.review
        diff_file = run_dir / "diff.patch"
        prompt = review_prompt(await self._ticket(effect), effect.ticket, diff_file, checkout)
        prompt_file = run_dir / "prompt.md"
        await anyio.to_thread.run_sync(prompt_file.write_text, prompt)
        feedback = self.home.runs / effect.ticket / str(effect.attempt) / "feedback.md"
        values = {
            "prompt": prompt,
            "prompt_file": str(prompt_file),
            "ticket_file": effect.ticket_file,
            "ticket_id": effect.ticket,
            "worktree": str(checkout),
            "branch": effect.branch,
            "attempt": str(effect.attempt),
            "feedback_file": str(feedback) if feedback.exists() else "",
            "run_dir": str(run_dir),
            "usage_file": str(run_dir / "usage.jsonl"),
            "diff_file": str(diff_file),
        }
        argv = fill_placeholders(cfg.command, values, REVIEW_PLACEHOLDER_RE)
        if too_long := argv_too_long(argv):
            return too_long
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", REF_TOKEN_VAR)
        }
        env.update(self.home.config.agent.env)
        run_id = review_run_id(self.home.root, effect.ticket, effect.gen)
        env.update(
            {
                "ORCH_TICKET_ID": effect.ticket,
                "ORCH_TICKET_FILE": effect.ticket_file,
                "ORCH_PROMPT_FILE": str(prompt_file),
                "ORCH_WORKTREE": str(checkout),
                "ORCH_BRANCH": effect.branch,
                "ORCH_ATTEMPT": str(effect.attempt),
                "ORCH_RUN_DIR": str(run_dir),
                "ORCH_USAGE_FILE": values["usage_file"],
                "ORCH_DIFF_FILE": str(diff_file),
                "ORCH_REVIEW_ROUND": str(effect.round),
                "ORCH_CONFIG": str(self.home.config_file),
                RUN_ID_VAR: run_id,
            }
        )
        with open(run_dir / "review.log", "ab") as raw:
            out = CappedLog(raw)
            out.write(f"$ {' '.join(argv)}\n".encode())
            try:
                process = await anyio.open_process(
                    argv,
                    cwd=checkout,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    start_new_session=True,
                )
            except OSError as exc:
                reason = (
                    f"reviewer command not found: {argv[0]}"
                    if isinstance(exc, FileNotFoundError)
                    else f"cannot start the reviewer {argv[0]}: {exc.strerror or exc}"
                )
                out.write(f"{reason}\n".encode())
                return reason
            group = AttemptGroup(process.pid, run_id)  # at once: the leader's start
            stdout = bytearray()
            overflow = False
            closed = [anyio.Event(), anyio.Event()]

            lock = anyio.Lock()  # one log, two pipes

            async def pump(
                stream: anyio.abc.ByteReceiveStream, keep: bool, done: anyio.Event
            ) -> None:
                nonlocal overflow
                async for chunk in stream:
                    async with lock:
                        await anyio.to_thread.run_sync(out.write, chunk)
                    if keep and not overflow:
                        stdout.extend(chunk)
                        if len(stdout) > MAX_OUTPUT_BYTES:
                            overflow = True
                            del stdout[:]
                done.set()

            code: int | None = None
            try:
                async with anyio.create_task_group() as tg:
                    assert process.stdout is not None and process.stderr is not None
                    tg.start_soon(pump, process.stdout, True, closed[0])
                    tg.start_soon(pump, process.stderr, False, closed[1])
                    with anyio.move_on_after(cfg.timeout_s):
                        code = await process.wait()
                    timed_out = code is None
                    # What the reviewer left running ends too (that also closes the pipes).
                    await self._end(process, group)
                    code = await process.wait()
                    with anyio.move_on_after(2):  # the pipes close once the group is gone
                        for done in closed:
                            await done.wait()
                    tg.cancel_scope.cancel()
            finally:  # also when stopped or when the daemon stops: no reviewer outlives it
                with anyio.CancelScope(shield=True):
                    await self._end(process, group)
                    if process.returncode is None:
                        await process.wait()
            out.write(f"[orchestrator] reviewer exited with code {code}\n".encode())
        if timed_out:
            return f"the reviewer timed out after {cfg.timeout_s} s (review.timeout_s)"
        if code != 0:
            return f"the reviewer exited with code {code}"
        if overflow:
            return f"the reviewer printed more than {MAX_OUTPUT_BYTES} bytes on stdout"
        return parse_review(bytes(stdout))
