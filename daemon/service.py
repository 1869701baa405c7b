"""The daemon's imperative shell: wiring, the main loop, signals and sd_notify.

One task (:meth:`Daemon._loop`) owns the :class:`daemon.core.Core`: it drains
the inbox in batches, applies each input, commits the changed records and the
events to the store in one transaction, and only then publishes the events and
answers the commands. Effects (start/stop agents, pushes, merges, file moves)
run in their own tasks and report back through the inbox.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import anyio
import msgspec
from anyio.abc import TaskGroup

from orchestrator.daemon import core as C
from orchestrator.daemon.backlog import Backlog
from orchestrator.daemon.budget import BudgetWatch
from orchestrator.daemon.ci import CIStatusDir, is_sha
from orchestrator.daemon.contain import end_attempt_processes
from orchestrator.daemon.git import git, install_ref_token, scrub_clone_config
from orchestrator.daemon.home import sync_repo_config
from orchestrator.daemon.homefiles import HomeFiles
from orchestrator.daemon.merger import Merger
from orchestrator.daemon.review import Reviewer, review_run_id
from orchestrator.daemon.runner import AgentRunner, LocalRunner
from orchestrator.daemon.server import PEER_USER, Server
from orchestrator.daemon.store import Store
from orchestrator.daemon.workers import Workers
from orchestrator.shared import protocol as P
from orchestrator.shared.config import Home
from orchestrator.shared.errors import HomeError, OrchestratorError, TicketError
from orchestrator.shared.fsutil import atomic_write, move_aside
from orchestrator.shared.models import (
    AcceptanceCheck,
    ReviewStatus,
    TicketState,
    check_ticket_file_name,
    parse_ticket,
)

log = logging.getLogger("orchestrator")

#: Commands that are a person's decision, recorded as ``decision`` events (audit trail).
DECISIONS = (P.Approve, P.Reject, P.Continue, P.SetPriority, P.Stop, P.Answer)

#: How long a stop waits for a degraded state database to become writable (s).
FLUSH_AT_EXIT_S = 10.0
#: Inputs applied per store transaction at most (bounds latency under bursts).
MAX_BATCH = 2000
#: At shutdown, how long killed attempts may take to commit their work (seconds).
SHUTDOWN_SETTLE_S = 5.0


class AlreadyRunning(OrchestratorError):
    pass


class _AskWaiter:
    """One ``ask`` command waiting for its question to close."""

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.reply = P.AskReply(ok=False, message="the question was closed")


def sd_notify(state: str) -> None:
    """Send one sd_notify(3) datagram to $NOTIFY_SOCKET (no-op when unset)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(address)
            # Never block the event loop on a receiver that does not read.
            sock.send(state.encode(), socket.MSG_DONTWAIT)
        except BlockingIOError:
            log.warning("sd_notify %s dropped: $NOTIFY_SOCKET is full", state.split("=")[0])
        except OSError as exc:
            log.warning("sd_notify %s failed: %s", state, exc)


class Daemon:
    """The long-running daemon of one project home.

    ``run()`` blocks until SIGTERM/SIGINT (exit code 0 after a graceful stop);
    tests call ``await async_run()`` inside their own event loop.
    """

    def __init__(self, home: Home) -> None:
        self.home = home
        cfg = home.config
        self.names = [f"agent-{k}" for k in range(1, cfg.workers + 1)]
        self.core = C.Core(cfg, {n: str(home.worktrees / n) for n in self.names})
        self._inbox_send, self._inbox = anyio.create_memory_object_stream[
            tuple[C.Input, anyio.Event | None]
        ](float("inf"))
        self._notices: list[P.Event] = []
        self._replies: dict[int, C.Outcome] = {}
        self.repo_lock = anyio.Lock()
        self.runner: AgentRunner = LocalRunner()
        if cfg.runner == "ray":
            from orchestrator.daemon.ray_runner import RayRunner

            self.runner = RayRunner(home)
        self.workers = Workers(home, self.submit, self._publish_raw, self.repo_lock, self.runner)
        self.merger = Merger(home, self.repo_lock)
        self.reviewer = Reviewer(home)
        self.backlog = Backlog(home.backlog, self.submit, cfg.rescan_interval_s)
        self.ci = CIStatusDir(home.ci_status_dir, self.submit, self.notice, cfg.rescan_interval_s)
        self.server = Server(home.socket_path, self._hello, self._snapshot_line, self._dispatch)
        self.store: Store | None = None
        self.budget = BudgetWatch(home, self._budget_of, self.submit)
        self.files: HomeFiles | None = None
        """TASKS.md, metrics/tickets.csv, Prometheus metrics (created at start)."""
        self._tg: TaskGroup | None = None
        self._stopping = False
        self._enqueueing: set[str] = set()
        self._pending_events: list[P.Event] = []
        self._pending_ids: set[str] = set()
        self._degraded_since: float | None = None
        """monotonic time the state database became unwritable (None: it is fine)."""
        self._retrying = False
        self._writable = anyio.Event()
        """Set when a degraded state database is written again."""
        self._lock_fd: int | None = None
        self._asks: dict[str, list[_AskWaiter]] = {}
        """Ticket id -> the ``ask`` commands waiting for its question to close."""

    # --- entry points -----------------------------------------------------

    def run(self) -> int:
        try:
            anyio.run(self.async_run)
        except KeyboardInterrupt:
            pass
        return 0

    async def async_run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until stopped.

        Raises:
            HomeError: the home cannot be used at all (read-only, state.db not a
                database...): the CLI prints it as one line and exits 2, which
                the systemd unit does not restart.
        """
        try:
            self._take_lock()
            self.store = Store(self.home.state_db)
        except (OSError, sqlite3.Error, msgspec.DecodeError) as exc:
            if self._lock_fd is not None:
                os.close(self._lock_fd)
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise HomeError(f"{self.home.root}: cannot use the project home: {reason}") from None
        try:
            await self._start(task_status)
        finally:
            self.store.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)

    def _take_lock(self) -> None:
        fd = os.open(self.home.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise AlreadyRunning(
                f"another daemon (pid {other}) is already running for {self.home.root}"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    async def _start(self, task_status: anyio.abc.TaskStatus[None]) -> None:
        assert self.store is not None
        # runner: ray joins (or starts) its cluster here; RunnerError: one line, exit 2.
        await anyio.to_thread.run_sync(self.runner.connect, self.names)
        try:
            await self._run_daemon(task_status)
        finally:
            self.runner.close()

    async def _run_daemon(self, task_status: anyio.abc.TaskStatus[None]) -> None:
        assert self.store is not None
        await self._prepare_home()
        records = self.store.load()
        await self._reconcile(records)
        outcome = self.core.restore(records, time.time())
        now = time.time()
        self.files = HomeFiles(self.home, self.core.ticket_views(now), self.notice)
        async with anyio.create_task_group() as tg:
            self._tg = tg
            self._commit_and_publish(outcome)
            await tg.start(self.files.run)
            await tg.start(self.budget.run)
            await tg.start(self._signals)
            await tg.start(self.server.serve)
            await tg.start(self.backlog.run)
            await tg.start(self.ci.run)
            tg.start_soon(self._loop)
            tg.start_soon(self._ticker)
            self._execute(outcome.effects)
            self.notice(
                f"daemon started (pid {os.getpid()}, {len(self.names)} workers, "
                f"socket {self.home.socket_path})",
                kind=P.EventKind.DAEMON_STARTED,
            )
            log.info("ready: %d workers, socket %s", len(self.names), self.home.socket_path)
            sd_notify("READY=1\nSTATUS=running")
            task_status.started()
            tg.start_soon(self._watchdog)

    async def _prepare_home(self) -> None:
        home = self.home
        for d in (home.backlog, home.done_dir, home.rejected_dir, home.runs, home.worktrees):
            d.mkdir(parents=True, exist_ok=True)
        await anyio.to_thread.run_sync(sync_repo_config, home)
        await anyio.to_thread.run_sync(install_ref_token, home.repo)
        removed = await anyio.to_thread.run_sync(scrub_clone_config, home.work)
        if removed:
            log.warning("removed unsafe git config from %s: %s", home.work, ", ".join(removed))
        await git(home.work, "fetch", "--quiet", "origin", "main")
        await self.workers.ensure_worktrees(self.names)

    async def _reconcile(self, records: list[C.TicketRecord]) -> None:
        """After a crash: end agents and reviewers that outlived the old daemon and commit
        the agents' work."""
        for rec in records:
            if rec.state == TicketState.REVIEWING:  # its review runs again (Core.restore)
                run_id = review_run_id(self.home.root, rec.id, rec.review_gen)
                await anyio.to_thread.run_sync(end_attempt_processes, -1, run_id)
            if rec.state not in (TicketState.RUNNING, TicketState.NEEDS_INPUT):
                continue
            if rec.agent:
                wt = self.workers.worktree(rec.agent)
                try:
                    await self.runner.recover(rec.agent, rec.id, rec.attempt, rec.agent_pid, wt)
                    await self.workers.salvage(
                        wt, f"{rec.id}: work of attempt {rec.attempt} saved after a daemon restart"
                    )
                    if await git(wt, "symbolic-ref", "-q", "HEAD", check=False):
                        await git(wt, "checkout", "--quiet", "--detach")
                except OrchestratorError as exc:
                    log.error("%s: could not save work in %s: %s", rec.id, wt, exc)

    # --- the loop ---------------------------------------------------------

    def submit(self, inputs: list[C.Input]) -> None:
        """Queue inputs for the core (callable from any task of the loop)."""
        for item in inputs:
            self._inbox_send.send_nowait((item, None))

    async def ask(self, item: C.Input) -> C.Outcome:
        """Queue one input and wait until it is applied and persisted."""
        done = anyio.Event()
        self._inbox_send.send_nowait((item, done))
        await done.wait()
        return self._replies.pop(id(done))

    def notice(self, message: str, kind: P.EventKind = P.EventKind.WARNING) -> None:
        """Persist and publish an event that is not a state change (a warning...)."""
        (log.warning if kind == P.EventKind.WARNING else log.info)("%s", message)
        self._notices.append(P.Event(id=0, ts=time.time(), kind=kind, message=message))
        self._inbox_send.send_nowait((C.Tick(time.time()), None))

    async def _loop(self) -> None:
        async with self._inbox:
            while True:
                first = await self._inbox.receive()
                batch = [first]
                while len(batch) < MAX_BATCH:
                    try:
                        batch.append(self._inbox.receive_nowait())
                    except anyio.WouldBlock:
                        break
                self._apply(batch)

    def _apply(self, batch: list[tuple[C.Input, anyio.Event | None]]) -> None:
        total = C.Outcome()
        waiters = []
        for item, done in batch:
            try:
                outcome = self.core.handle(item)
            except Exception as exc:  # a bug in a rule must not stop the team
                log.exception("applying %r failed", item)
                self.core.forget_encoded_views()  # whatever it changed is shown afresh
                outcome = C.Outcome(ok=False, message=f"internal error: {exc}")
                self._notices.append(
                    P.Event(
                        id=0,
                        ts=time.time(),
                        kind=P.EventKind.WARNING,
                        message=(
                            f"internal error applying {type(item).__name__} ({exc});"
                            " see the daemon log"
                        ),
                    )
                )
            total.effects += outcome.effects
            total.events += outcome.events
            total.dirty |= outcome.dirty
            if done is not None:
                self._replies[id(done)] = outcome
                waiters.append(done)
        self._commit_and_publish(total)
        for done in waiters:
            done.set()
        self._execute(total.effects)

    def _commit_and_publish(self, outcome: C.Outcome) -> None:
        """Persist, then announce. A failed commit (database locked by another process,
        disk full) keeps everything pending in memory, announces ``daemon.degraded``
        and is retried with backoff (:meth:`_retry_commit`); the daemon never exits
        for it and nothing accepted is lost while it runs."""
        assert self.store is not None
        self._pending_events += self._notices + outcome.events
        self._notices = []
        self._pending_ids |= {i for i in outcome.dirty if i in self.core.tickets}
        if self._degraded_since is not None and not self._retrying:
            return  # the retry task commits everything pending
        records = [self.core.tickets[i] for i in self._pending_ids if i in self.core.tickets]
        try:
            events = self.store.commit(records, self._pending_events)
        except (sqlite3.Error, OSError) as exc:
            self._degrade(exc)
            return
        self._pending_events = []
        self._pending_ids = set()
        self.server.publish(events)
        if self.files is not None:
            self.files.on_events(events)
        self.budget.on_events(events)
        if self._degraded_since is not None:
            down_s = time.monotonic() - self._degraded_since
            self._degraded_since = None
            self._writable.set()
            log.info("state database writable again after %.1f s", down_s)
            sd_notify("STATUS=running")
            self.notice(
                f"state database writable again after {down_s:.1f} s; nothing was lost",
                kind=P.EventKind.DAEMON_RECOVERED,
            )

    def _degrade(self, exc: BaseException) -> None:
        first = self._degraded_since is None
        if first:
            self._degraded_since = time.monotonic()
            self._writable = anyio.Event()
            message = (
                f"degraded: cannot write the state database ({exc}); "
                "retrying, nothing is lost while the daemon runs"
            )
            log.error("%s", message)
            sd_notify(f"STATUS={message}")
            # Not persisted (that is what fails): published to the clients at once.
            self.server.publish(
                [P.Event(id=0, ts=time.time(), kind=P.EventKind.DAEMON_DEGRADED, message=message)]
            )
            if self._tg is not None:
                self._tg.start_soon(self._retry_commit)

    async def _retry_commit(self) -> None:
        """Retry the pending commit with exponential backoff (0.1 s .. 5 s) until it works."""
        delay = 0.1
        while self._degraded_since is not None:
            await anyio.sleep(delay)
            delay = min(delay * 2, 5.0)
            self._retrying = True
            try:
                self._commit_and_publish(C.Outcome())
            finally:
                self._retrying = False

    def _budget_of(self, ticket: str) -> float | None:
        """``budget.max_cost_usd`` of a ticket (its own, else the config's), or None."""
        rec = self.core.tickets.get(ticket)
        if rec is not None and rec.ticket.budget is not None:
            return rec.ticket.budget.max_cost_usd
        return self.home.config.budget.max_cost_usd

    def _publish_raw(self, events: list[P.Event]) -> None:
        self.server.publish(events)

    # --- effects ----------------------------------------------------------

    def _execute(self, effects: list[C.Effect]) -> None:
        assert self._tg is not None
        for effect in effects:
            match effect:
                case C.StartAgent():
                    self._tg.start_soon(self._guarded, self.workers.run_attempt(effect))
                case C.StopAgent():
                    self._tg.start_soon(
                        self._guarded, self.workers.stop(effect.agent, effect.reason)
                    )
                case C.Push():
                    self._tg.start_soon(self._guarded, self._push(effect))
                case C.Review():
                    self._tg.start_soon(self._guarded, self._review(effect))
                case C.StopReview():
                    self.reviewer.stop(effect.ticket, effect.gen)
                case C.Stack():
                    self._tg.start_soon(self._guarded, self._stack(effect))
                case C.FastForward():
                    self._tg.start_soon(self._guarded, self._fast_forward(effect))
                case C.MoveFile():
                    self._move(effect)
                case C.QuestionClosed():
                    self._close_asks(effect)

    def _close_asks(self, effect: C.QuestionClosed) -> None:
        """Answer every ``ask`` waiting on the ticket's question."""
        if effect.answer is not None:
            reply = P.AskReply(ok=True, message="answered", answer=effect.answer)
        elif effect.timed_out:
            reply = P.AskReply(
                ok=False, timed_out=True, message="no answer in time; the question is withdrawn"
            )
        else:
            reply = P.AskReply(ok=False, message=effect.message or "the question was closed")
        for waiter in self._asks.pop(effect.ticket, []):
            waiter.reply = reply
            waiter.done.set()

    async def _guarded(self, work: Coroutine[Any, Any, None]) -> None:
        """Run an effect; a bug in it is logged and announced, never fatal to the daemon."""
        try:
            await work
        except Exception as exc:
            log.exception("effect failed")
            self.notice(f"internal error ({type(exc).__name__}: {exc}); see the daemon log")

    async def _push(self, effect: C.Push) -> None:
        rec = self.core.tickets.get(effect.ticket)
        checks = list(rec.ticket.acceptance) if rec is not None else []
        await anyio.to_thread.run_sync(self._write_acceptance, effect.ticket, checks)
        sha = await self.workers.push(effect.ticket, effect.attempt, effect.branch, effect.ci)
        if sha and effect.ci:
            await self.ci.read_now(sha)  # CI may have finished before (or ran for it earlier)

    def _write_acceptance(self, ticket: str, checks: list[AcceptanceCheck]) -> None:
        """``runs/<ticket>/acceptance.json``: the checks the CI job runs for its pushes."""
        path = self.home.runs / ticket / "acceptance.json"
        if not checks:
            path.unlink(missing_ok=True)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, msgspec.json.encode(checks))

    async def _review(self, effect: C.Review) -> None:
        try:
            result = await self.reviewer.run(effect)
        except Exception as exc:  # the ticket must always get an answer, or it would wait
            log.exception("reviewing %s failed", effect.ticket)
            result = C.ReviewResult(
                effect.ticket,
                effect.gen,
                ReviewStatus.ERROR,
                time.time(),
                error=f"internal error: {type(exc).__name__}: {exc}"[:300],
            )
        self.submit([result])

    async def _stack(self, effect: C.Stack) -> None:
        try:
            result = await self.merger.stack(effect)
        except Exception as exc:  # the queue must always get an answer, or it would stall
            log.exception("stacking %s failed", effect.ticket)
            result = C.Stacked(
                effect.ticket, effect.gen, C.StackOutcome.ERROR, time.time(), text=repr(exc)
            )
        self.submit([result])
        if result.outcome == C.StackOutcome.STACKED and not result.verified:
            await self.ci.read_now(result.sha)  # CI may have finished already

    async def _fast_forward(self, effect: C.FastForward) -> None:
        try:
            result = await self.merger.fast_forward(effect)
        except Exception as exc:  # the queue must always get an answer, or it would stall
            log.exception("fast-forward to %s failed", effect.ticket)
            result = C.MergeResult(effect.ticket, C.MergeOutcome.ERROR, time.time(), text=repr(exc))
        self.submit([result])

    def _move(self, effect: C.MoveFile) -> None:
        src = Path(effect.path)
        dest_dir = self.home.done_dir if effect.dest == "done" else self.home.rejected_dir
        self.backlog.forget(effect.path)
        try:
            dest = move_aside(src, dest_dir)
            if effect.error:
                # 0600: the reason may quote the file, which may be private.
                atomic_write(
                    dest.with_name(dest.name + ".error"), effect.error.rstrip() + "\n", mode=0o600
                )
        except FileNotFoundError:
            return
        except OSError as exc:
            self.notice(f"cannot move {src} to {dest_dir}: {exc.strerror}")
            return
        if effect.ticket:
            self.submit([C.FileMoved(effect.ticket, str(dest), time.time())])

    # --- timers, signals, systemd ------------------------------------------

    async def _ticker(self) -> None:
        interval = self.home.config.heartbeat_interval_s
        while True:
            await anyio.sleep(interval)
            await self.workers.check_worktrees()
            self.submit([C.Tick(time.time())])

    async def _watchdog(self) -> None:
        usec = os.environ.get("WATCHDOG_USEC")
        if not usec or not usec.isdigit():
            return
        interval = int(usec) / 2e6
        while True:
            sd_notify("WATCHDOG=1")
            await anyio.sleep(interval)

    async def _signals(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        # SIGHUP (the terminal of `orchestrator daemon &` closing) takes the same graceful
        # path as SIGTERM: agents stopped with their work committed, socket removed.
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            task_status.started()  # handlers installed before the socket answers
            async for signum in signals:
                log.info(
                    "received %s: stopping agents (work is committed), then exiting",
                    signal.Signals(signum).name,
                )
                await self.shutdown()
                return

    async def shutdown(self) -> None:
        """Graceful stop: no new work, agents stopped with work committed, state flushed."""
        if self._stopping:
            return
        self._stopping = True
        sd_notify("STOPPING=1")
        outcome = self.core.stop_all(time.time())
        self._commit_and_publish(outcome)
        self._execute(outcome.effects)
        deadline = self.home.config.agent.stop_grace_s + 10
        with anyio.move_on_after(deadline):
            await self.workers.idle.wait()
        if not self.workers.idle.is_set():
            self.workers.kill_all()  # never leave an agent orphaned, even past the grace
            with anyio.move_on_after(SHUTDOWN_SETTLE_S):  # their work is committed, exits fed
                await self.workers.idle.wait()
        self.notice("daemon stopped", kind=P.EventKind.DAEMON_STOPPING)
        # The inbox is FIFO: once this tick is applied, every exit and the notice
        # before it are committed and published.
        await self.ask(C.Tick(time.time()))
        with anyio.move_on_after(1):  # a client that stopped reading does not hold us up
            await self.server.flushed()
        if self._degraded_since is not None:  # a degraded store: a last chance to write
            with anyio.move_on_after(FLUSH_AT_EXIT_S):
                await self._writable.wait()
        if self._degraded_since is not None:
            log.error(
                "exiting with %d state change(s) not written; the ticket files in the "
                "backlog are read again at the next start",
                len(self._pending_ids),
            )
        assert self._tg is not None
        self._tg.cancel_scope.cancel()

    # --- socket ------------------------------------------------------------

    def snapshot(self, tickets: bool = True) -> P.EncodedSnapshot:
        """The whole state as clients see it; ``tickets=False`` leaves the tickets out."""
        return self.core.snapshot(
            time.time(),
            self.store.last_event_id if self.store else 0,
            self.home.config.approval,
            tickets=tickets,
        )

    def _hello(self) -> bytes:
        return P.encode(
            P.Hello(version=P.PROTOCOL_VERSION, home=str(self.home.root), pid=os.getpid())
        )

    def _snapshot_line(self) -> bytes:
        return P.encode(self.snapshot())

    async def _dispatch(self, command: P.ClientCommand) -> P.Reply:
        match command:
            case P.Status(tickets=tickets):
                return P.StatusReply(ok=True, message="status", snapshot=self.snapshot(tickets))
            case P.CINotify(sha=sha):
                if not is_sha(sha):
                    return P.Reply(ok=False, message=f"ci_notify: {sha!r} is not a full hex sha")
                found = await self.ci.read_now(sha)
                return P.Reply(ok=found, message="applied" if found else f"no status for {sha}")
            case P.Enqueue():
                return await self._enqueue(command)
            case P.Questions():
                questions = self.core.questions()
                return P.QuestionsReply(
                    ok=True, message=f"{len(questions)} open question(s)", questions=questions
                )
            case P.Ask():
                return await self._ask(command)
            case P.ClientHello():  # answered by the server itself; never dispatched
                return P.Reply(ok=False, message="hello is answered by the server")
            case _:  # a ticket command: the core applies it
                if self._stopping:
                    return P.Reply(ok=False, message="the daemon is shutting down")
                now = time.time()
                outcome = await self.ask(C.Command(command, now))
                if isinstance(command, DECISIONS):
                    self._record_decision(command, outcome, now)
                    # persisted (the Tick's batch commits it) before the reply is sent
                    await self.ask(C.Tick(time.time()))
                return P.Reply(ok=outcome.ok, message=outcome.message)

    def _record_decision(self, command: P.TicketCommands, outcome: C.Outcome, now: float) -> None:
        """Audit trail: a ``decision`` event naming the person, the client and the result."""
        user = PEER_USER.get() or "unknown user"
        client = (command.client or "unknown client")[:40]
        match command:
            case P.Reject():
                what = f"reject: {command.feedback}"
            case P.SetPriority():
                what = f"priority P{command.priority}"
            case P.Answer():
                what = f"answer: {command.text}"
            case _:
                what = str(type(command).__struct_config__.tag)
        result = "done" if outcome.ok else "refused"
        self._notices.append(
            P.Event(
                id=0,
                ts=now,
                kind=P.EventKind.DECISION,
                message=f"{command.ticket}: {what[:500]} by {user} via {client}: {result}: "
                f"{outcome.message}",
                ticket=command.ticket,
                user=user,
                client=client,
            )
        )

    async def _ask(self, command: P.Ask) -> P.Reply:
        """An agent's question: applied by the core, then answered when it closes.

        The waiter is registered before the core applies the ask, so an answer in
        the same batch is not missed. A timeout (``timeout_s``) is timed here and
        applied by the core (:class:`~daemon.core.AskTimedOut`); an answer that
        races it wins. If the asking connection drops meanwhile, nothing changes:
        the question stays open (docs/protocol.md).
        """
        if self._stopping:
            return P.AskReply(ok=False, message="the daemon is shutting down")
        waiter = _AskWaiter()
        waiters = self._asks.setdefault(command.ticket, [])
        waiters.append(waiter)
        try:
            outcome = await self.ask(C.Command(command, time.time()))
            if not outcome.ok:
                return P.AskReply(ok=False, message=outcome.message)
            timeout_s = command.timeout_s if command.timeout_s is not None else math.inf
            with anyio.move_on_after(max(0.0, timeout_s)):
                await waiter.done.wait()
            if not waiter.done.is_set():
                await self.ask(C.AskTimedOut(command.ticket, command.run_id, time.time()))
                if not waiter.done.is_set():  # cannot happen: closed questions are answered
                    waiter.reply = P.AskReply(ok=False, timed_out=True, message="no answer")
            return waiter.reply
        finally:
            left = self._asks.get(command.ticket)
            if left is not None and waiter in left:
                left.remove(waiter)
                if not left:
                    del self._asks[command.ticket]

    async def _enqueue(self, command: P.Enqueue) -> P.Reply:
        name = command.name
        if not name.endswith((".yaml", ".yml")):
            name += ".yaml"
        why = check_ticket_file_name(name)
        if why:
            return P.Reply(ok=False, message=f"{command.name!r}: {why}")
        try:
            ticket = parse_ticket(command.yaml.encode(), Path(name))
        except TicketError as exc:
            return P.Reply(ok=False, message=str(exc))
        target = self.home.backlog / name
        taken = target.exists() or ticket.id in self.core.tickets
        if taken or name in self._enqueueing:
            return P.Reply(ok=False, message=f"{name}: a ticket {ticket.id!r} already exists")
        # The write (with its fsync) runs in a thread, off the loop; meanwhile the
        # name is taken, so a second enqueue of it cannot overwrite this one.
        self._enqueueing.add(name)
        try:
            await anyio.to_thread.run_sync(atomic_write, target, command.yaml)
        finally:
            self._enqueueing.discard(name)
        return P.Reply(ok=True, message=f"{ticket.id}: placed in the backlog")


def configure_logging(level: str = "INFO") -> None:
    """Log to stderr; under systemd (JOURNAL_STREAM set) without our own timestamps."""
    journald = bool(os.environ.get("JOURNAL_STREAM"))
    fmt = (
        "<%(levelno)s>%(levelname)s %(name)s: %(message)s"
        if journald
        else ("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    if journald:
        # sd-daemon(3) prefixes: <3> error, <4> warning, <6> info, <7> debug.
        class _Prefix(logging.Formatter):
            LEVELS = {logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}

            def format(self, record: logging.LogRecord) -> str:
                record.levelno = self.LEVELS.get(record.levelno, 6)
                return super().format(record)

        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_Prefix(fmt))
        logging.basicConfig(level=level, handlers=[handler], force=True)
    else:
        logging.basicConfig(level=level, format=fmt, stream=sys.stderr, force=True)


def main(home: Home) -> int:
    configure_logging()
    try:
        return Daemon(home).run()
    except msgspec.DecodeError as exc:
        log.error("state database is unreadable: %s", exc)
        return 2
