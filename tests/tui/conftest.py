"""A real fake daemon for the TUI tests: an asyncio Unix-socket server in its own thread.

It speaks the protocol of shared/protocol.py for real (hello, snapshot, events,
one reply per command), so the TUI under test uses the real ``shared.client``.
It runs on its own event loop in a thread so that both ``app.run_test()`` tests
and ``snap_compare`` (which runs the app on a loop of its own) can use it.

The real daemon of the integration tests (``make_project``) is imported too,
for test_real_daemon.py and test_tmux.py.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from orchestrator.shared.models import (
    AgentState,
    AgentView,
    CIView,
    LeaseView,
    TicketState,
    TicketView,
)
from orchestrator.shared.protocol import (
    PROTOCOL_VERSION,
    ClientCommand,
    ClientHello,
    Event,
    Hello,
    Reply,
    Snapshot,
    decode_command,
    encode,
)
from orchestrator.tui.app import OrchestratorApp
from tests.integration.conftest import make_project, runtime_dir, source_repo  # noqa: F401

#: The frozen "now" of every test (2023-11-14 22:13:20 UTC); ages are relative to it.
NOW = 1_700_000_000.0


class FakeDaemon:
    """Serves ``snapshot`` on ``socket_path``; records commands; pushes events on demand.

    Attributes:
        commands: every command received, in order.
        reply_ok: the ``ok`` of the next replies (message ``done`` or ``refused``).
        version: the protocol version announced in hello.
    """

    def __init__(self, snapshot: Snapshot, *, home: str = "/srv/demo", pid: int = 4242) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="tui-", dir="/tmp"))
        self.socket_path = self.dir / "d.sock"
        self.snapshot = snapshot
        self.home = home
        self.pid = pid
        self.version = PROTOCOL_VERSION
        self.initial_events: list[Event] = []
        self.commands: list[ClientCommand] = []
        self.reply_ok = True
        self._event_id = snapshot.last_event_id
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    # --- control from the test thread ---------------------------------------

    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def start(self) -> None:
        self._call(self._start())

    def stop(self) -> None:
        """Close the listening socket and every connection (the TUI sees the daemon die)."""
        self._call(self._stop())

    def push(self, *events: Event) -> None:
        """Send events to every connected client, as one buffered write."""
        self._call(self._push(events))

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def connections(self) -> int:
        return len(self._writers)

    def close(self) -> None:
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # --- data helpers -----------------------------------------------------------

    def ticket(self, ticket_id: str) -> TicketView:
        return next(t for t in self.snapshot.tickets if t.id == ticket_id)

    def event(self, kind: str, message: str = "", **fields: Any) -> Event:
        self._event_id += 1
        return Event(id=self._event_id, ts=NOW, kind=kind, message=message, **fields)

    def ticket_event(self, ticket_id: str, **changes: Any) -> Event:
        """A ``ticket.state`` event carrying the snapshot's ticket with ``changes``."""
        view = msgspec.structs.replace(self.ticket(ticket_id), **changes)
        return self.event(
            "ticket.state", f"{ticket_id}: {view.state}", ticket=ticket_id, ticket_view=view
        )

    # --- the server (daemon thread) -----------------------------------------------

    async def _start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.socket_path))

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.close()
        self.socket_path.unlink(missing_ok=True)

    async def _shutdown(self) -> None:
        await self._stop()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _push(self, events: tuple[Event, ...]) -> None:
        data = b"".join(encode(e) for e in events)
        for writer in list(self._writers):
            # No drain: the test thread waits for this call while the app (on that
            # thread) is the reader, so waiting for the reader would deadlock.
            writer.write(data)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(encode(Hello(version=self.version, home=self.home, pid=self.pid)))
            await writer.drain()
            while line := await reader.readline():
                command = decode_command(line)
                if isinstance(command, ClientHello):  # subscribes: snapshot, then events
                    writer.write(encode(Reply(ok=True, message="subscribed", req=command.req)))
                    writer.write(encode(self.snapshot))
                    for event in self.initial_events:
                        writer.write(encode(event))
                    self._writers.add(writer)
                    await writer.drain()
                    continue
                self.commands.append(command)
                message = "done" if self.reply_ok else "refused"
                writer.write(encode(Reply(ok=self.reply_ok, message=message, req=command.req)))
                await writer.drain()
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError, asyncio.CancelledError):
                pass


def _git(cwd: Path, *args: str) -> None:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True, env=env)


@pytest.fixture
def git_repo(tmp_path: Path) -> Path:
    """A repo on ``main`` with branch ``agent-1/T-1`` changing two files (the T-1 worktree)."""
    repo = tmp_path / "worktree-1"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    (repo / "app.py").write_text("def main():\n    return 1\n")
    (repo / "README.md").write_text("demo\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "initial")
    _git(repo, "checkout", "-q", "-b", "agent-1/T-1")
    (repo / "app.py").write_text("def main():\n    return 2\n\n\ndef login():\n    return True\n")
    (repo / "auth.py").write_text("TOKEN = 'x'\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "T-1: login")
    return repo


def make_snapshot(worktree: Path, log_dir: Path) -> Snapshot:
    """Eight tickets in every interesting state (snapshot order shuffled) and three agents."""
    S = TicketState
    tickets = [
        TicketView(
            id="T-4",
            title="Document the API",
            state=S.QUEUED,
            priority=2,
            effective_priority=2.0,
            rank=2.0,
            queued_at=NOW - 300,
            depends_on=["T-3"],
            reason="waits for T-3",
        ),
        TicketView(
            id="T-1",
            title="Add a login page",
            state=S.RUNNING,
            priority=2,
            effective_priority=2.0,
            agent="agent-1",
            branch="agent-1/T-1",
            attempt=1,
            max_attempts=3,
            state_since=NOW - 125,
            queued_at=NOW - 4000,
            locks=["src/auth/"],
            log_file=str(log_dir / "T-1.log"),
        ),
        TicketView(
            id="T-3",
            title="Refactor the db layer",
            state=S.QUEUED,
            priority=1,
            effective_priority=1.0,
            rank=1.0,
            queued_at=NOW - 600,
            locks=["src/auth/db.py"],
            reason="lock src/auth/ held by T-1 (stale: the TUI computes its own)",
        ),
        TicketView(
            id="T-2",
            title="Fix the flaky CI job",
            state=S.AWAITING_APPROVAL,
            priority=0,
            effective_priority=0.0,
            agent="agent-2",
            branch="agent-2/T-2",
            attempt=1,
            max_attempts=3,
            state_since=NOW - 42,
            ci=CIView(
                sha="0123456789abcdef",
                status="pass",
                duration_s=42.0,
                log_tail="collected 12 items\n12 passed in 3.20s\n",
            ),
        ),
        TicketView(
            id="T-5",
            title="Tune the cache",
            state=S.STOPPED,
            priority=3,
            effective_priority=3.0,
            branch="agent-3/T-5",
            attempt=1,
            rank=3.0,
            reason="stopped by a person",
            state_since=NOW - 3700,
        ),
        TicketView(
            id="T-6",
            title="Bump dependencies",
            state=S.MERGED,
            priority=2,
            effective_priority=2.0,
            attempt=1,
            state_since=NOW - 7200,
        ),
        TicketView(
            id="T-7",
            title="Port to Windows",
            state=S.FAILED,
            priority=2,
            effective_priority=2.0,
            attempt=3,
            max_attempts=3,
            rank=2.0,
            reason="attempt 3 failed: CI fail",
            state_since=NOW - 86_400,
        ),
        TicketView(
            id="T-8",
            title="Add a CSV export",
            state=S.QUEUED,
            priority=2,
            effective_priority=1.5,
            rank=2.0,
            queued_at=NOW - 900,
            locks=["docs/"],
        ),
    ]
    agents = [
        AgentView(
            name="agent-2",
            state=AgentState.AWAITING_APPROVAL,
            worktree=str(worktree),
            ticket="T-2",
            branch="agent-2/T-2",
            attempt=1,
            state_since=NOW - 42,
            last_activity=NOW - 50,
        ),
        AgentView(
            name="agent-1",
            state=AgentState.RUNNING,
            worktree=str(worktree),
            ticket="T-1",
            branch="agent-1/T-1",
            attempt=1,
            pid=999,
            state_since=NOW - 125,
            last_activity=NOW - 3,
            note="running tests",
        ),
        AgentView(
            name="agent-3",
            state=AgentState.IDLE,
            worktree="/nonexistent/wt-3",
            state_since=NOW - 3700,
        ),
    ]
    return Snapshot(
        version=PROTOCOL_VERSION,
        last_event_id=100,
        tickets=tickets,
        agents=agents,
        leases=[
            LeaseView(
                path="src/auth/",
                ticket="T-1",
                agent="agent-1",
                acquired_at=NOW - 125,
                expires_at=NOW + 60,
            )
        ],
    )


@pytest.fixture(autouse=True)
def _no_editor(monkeypatch: pytest.MonkeyPatch) -> None:
    """``n`` opens $VISUAL/$EDITOR when set: the tests choose, not the environment."""
    monkeypatch.delenv("VISUAL", raising=False)
    monkeypatch.delenv("EDITOR", raising=False)


@pytest.fixture(autouse=True)
def _utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Clock times in the event log are local; pin the zone so snapshots are stable."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def fake_daemon(git_repo: Path, tmp_path: Path) -> Iterator[FakeDaemon]:
    daemon = FakeDaemon(make_snapshot(git_repo, tmp_path))
    (tmp_path / "T-1.log").write_text("\x1b[1mstep 1\x1b[0m\nstep 2\nall done\n")
    daemon.start()
    yield daemon
    daemon.close()


@pytest.fixture
def make_app(fake_daemon: FakeDaemon) -> Callable[[], OrchestratorApp]:
    """Build an app on the fake daemon's socket with the clock frozen at :data:`NOW`."""
    return lambda: OrchestratorApp(fake_daemon.socket_path, now=lambda: NOW)
