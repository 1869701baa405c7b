"""8. The TUI at scale, and ``status``/``locks`` of a big backlog.

* The real TUI (``benchmarks/tui_driver.py``: ``OrchestratorApp`` headless under
  Textual's Pilot, 120x36, its own process) against the daemon's real socket
  server (:class:`daemon.server.Server`, in this process) holding a snapshot
  built like ``Daemon.snapshot`` from a Core with 10,000 tickets and 1,000
  leases (five agents shown). After an idle phase, the server streams 1,000
  events/s (10 every 10 ms): four in five are ``agent.output`` lines of the
  agents' tickets, one in five a ``ticket.updated`` that changes a queued
  ticket's priority (so rows move). Meanwhile the driver presses j/k every
  200 ms. Figures: key -> screen and event -> screen latency (to the first frame
  Textual hands to its driver after the change), and the TUI process's CPU
  (user + system from /proc) idle and under load.
* ``orchestrator status --json`` and ``locks --json`` as a person runs them (a
  subprocess, the real CLI and client) against the same server answering
  ``status`` the way the daemon does, from a Core holding 100,000 tickets
  (20,000 with ``--quick``).

The real daemon cannot be made to publish 1,000 events/s (each event comes
from an input that also costs an SQLite commit), hence the in-process server,
as in benchmarks/fanout.py.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import msgspec

from benchmarks.harness import BenchmarkError, Figure, cpu_s, median, percentile
from orchestrator.daemon import core as C
from orchestrator.daemon.server import Server
from orchestrator.shared import protocol as P
from orchestrator.shared.models import TicketState

TARGET_KEY_P99_MS = 100.0
TARGET_EVENT_P99_MS = 250.0
TARGET_LOAD_CPU_PCT = 50.0
TARGET_IDLE_CPU_PCT = 2.0
TARGET_STATUS_S = 1.0
EVENTS_PER_TICK = 10
TICK_S = 0.010
SHOWN_AGENTS = 5


def _core_snapshot(tickets: int) -> tuple[Any, Any]:
    """A Core holding ``tickets`` queued tickets (benchmarks/scheduling.py) and a function
    building its snapshot the way ``Daemon.snapshot`` does."""
    from benchmarks.scheduling import WORKERS, _Bench, _without_refresh

    bench = _Bench(seed=8)
    undo = _without_refresh(bench.core)
    bench.fill_running(WORKERS)
    for _ in range(tickets):
        bench.read(bench.mixed_locks(), priority=bench.rng.randrange(5))
    undo()
    core = bench.core

    def snapshot() -> P.Snapshot:
        now = time.time()
        return P.Snapshot(
            version=P.PROTOCOL_VERSION,
            last_event_id=0,
            tickets=core.ticket_views(now),
            agents=[core.agent_view(w) for w in core.workers.values()],
            leases=core.lease_views(),
            approval="manual",
        )

    return core, snapshot


def _daemon_snapshot(core: C.Core, tickets: bool = True) -> P.EncodedSnapshot:
    """The snapshot as ``Daemon.snapshot`` builds it (``Core.snapshot``: cached views)."""
    return core.snapshot(time.time(), 0, "manual", tickets=tickets)


def _hello() -> bytes:
    return P.encode(P.Hello(version=P.PROTOCOL_VERSION, home="/bench", pid=os.getpid()))


class _Stream:
    """Builds the streamed events from a snapshot's tickets and agents."""

    def __init__(self, snapshot: P.Snapshot) -> None:
        self.rng = random.Random(11)
        self.queued = [t for t in snapshot.tickets if t.state == TicketState.QUEUED]
        self.agents = [a for a in snapshot.agents if a.ticket][:SHOWN_AGENTS]
        self.next_id = 1
        self.sent = 0

    def batch(self, count: int) -> list[P.Event]:
        now = time.time()
        out = []
        for _ in range(count):
            self.next_id += 1
            if self.next_id % 5 == 0:
                i = self.rng.randrange(len(self.queued))
                old = self.queued[i]
                priority = self.rng.randrange(5)
                view = msgspec.structs.replace(
                    old,
                    priority=priority,
                    effective_priority=float(priority),
                    rank=priority + old.queued_at / 300.0,
                )
                self.queued[i] = view
                out.append(
                    P.Event(
                        id=self.next_id,
                        ts=now,
                        kind=P.EventKind.TICKET_UPDATED,
                        message=f"{view.id}: priority P{priority}",
                        ticket=view.id,
                        ticket_view=view,
                    )
                )
            else:
                agent = self.agents[self.next_id % len(self.agents)]
                out.append(
                    P.Event(
                        id=self.next_id,
                        ts=now,
                        kind=P.EventKind.AGENT_OUTPUT,
                        ticket=agent.ticket,
                        agent=agent.name,
                        text=f"step {self.next_id}: editing src/module_{self.next_id % 97}.py\n",
                    )
                )
        self.sent += count
        return out


async def _tui_phase(base: Path, quick: bool) -> dict[str, Any]:
    _, build = _core_snapshot(10_000)
    full = build()
    snapshot = msgspec.structs.replace(full, agents=full.agents[:SHOWN_AGENTS])
    line = P.encode(snapshot)
    stream = _Stream(snapshot)

    async def dispatch(command: P.ClientCommand) -> P.Reply:
        return P.Reply(ok=True)

    server = Server(base / "tui.sock", _hello, lambda: line, dispatch)
    idle_s, load_s = (3.0, 6.0) if quick else (10.0, 20.0)
    result: dict[str, Any] = {"snapshot_bytes": len(line), "tickets": len(snapshot.tickets)}
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.tui_driver",
                str(server.path),
                str(idle_s),
                str(load_s),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        readline = proc.stdout.readline

        async def expect(word: str) -> None:
            got = (await anyio.to_thread.run_sync(readline)).strip()
            if got != word:
                proc.kill()
                raise BenchmarkError(f"the TUI driver said {got!r}, expected {word!r}")

        await expect("ready")
        cpu0, t0 = cpu_s(proc.pid), time.monotonic()
        async with anyio.create_task_group() as phase:
            phase.start_soon(expect, "load")
        cpu1, t1 = cpu_s(proc.pid), time.monotonic()
        result["idle_cpu_pct"] = (cpu1 - cpu0) / (t1 - t0) * 100

        done = anyio.Event()

        async def publish() -> None:
            start = time.monotonic()
            i = 0
            while not done.is_set():
                server.publish(stream.batch(EVENTS_PER_TICK))
                i += 1
                await anyio.sleep(max(0.0, start + i * TICK_S - time.monotonic()))

        tg.start_soon(publish)
        await expect("done")
        cpu2, t2 = cpu_s(proc.pid), time.monotonic()
        done.set()
        result["load_cpu_pct"] = (cpu2 - cpu1) / (t2 - t1) * 100
        result["events_per_s"] = stream.sent / (t2 - t1)
        out = await anyio.to_thread.run_sync(proc.stdout.read)
        proc.wait(30)
        if proc.returncode != 0:
            raise BenchmarkError(f"the TUI driver failed with {proc.returncode}")
        result.update(json.loads(out.strip().splitlines()[-1]))
        tg.cancel_scope.cancel()
    return result


async def _status_phase(base: Path, quick: bool) -> dict[str, Any]:
    core, _ = _core_snapshot(20_000 if quick else 100_000)
    path = base / "status.sock"

    async def dispatch(command: P.ClientCommand) -> P.Reply:
        if isinstance(command, P.Status):
            snapshot = _daemon_snapshot(core, command.tickets)
            return P.StatusReply(ok=True, message="status", snapshot=snapshot)
        return P.Reply(ok=True)

    server = Server(path, _hello, lambda: P.encode(_daemon_snapshot(core)), dispatch)
    config = base / "config.yaml"
    config.write_text(f'agent:\n  command: ["true"]\nsocket: {path}\n')
    runs = 2 if quick else 5
    times: dict[str, list[float]] = {"status": [], "locks": []}
    sizes: dict[str, int] = {}
    rng = random.Random(5)
    queued = [r.id for r in core.tickets.values() if r.state == TicketState.QUEUED]
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        for run in range(runs):
            if run:  # a busy backlog: 1% of the tickets changed since the last status
                for ticket_id in rng.sample(queued, len(queued) // 100):
                    command = P.SetPriority(ticket=ticket_id, priority=rng.randrange(5))
                    core.handle(C.Command(command, time.time()))
            for what in ("status", "locks"):
                argv = [
                    sys.executable,
                    "-m",
                    "orchestrator",
                    what,
                    "--json",
                    "--config",
                    str(config),
                ]
                t0 = time.monotonic()
                done = await anyio.run_process(argv, check=False)
                times[what].append(time.monotonic() - t0)
                if done.returncode != 0:
                    raise BenchmarkError(f"{what} --json failed: {done.stderr.decode()[-500:]}")
                sizes[what] = len(done.stdout)
        tg.cancel_scope.cancel()
    return {"times": times, "sizes": sizes, "tickets": len(core.tickets)}


def run(quick: bool) -> list[Figure]:
    import shutil

    base = Path(tempfile.mkdtemp(prefix="otui-", dir="/tmp"))
    try:
        tui = anyio.run(_tui_phase, base, quick)
        status = anyio.run(_status_phase, base, quick)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    keys, events = tui["key_ms"], tui["event_ms"]
    if not keys or not events:
        raise BenchmarkError("the TUI driver measured no key presses or no events")
    note = (
        f"{tui['tickets']} tickets ({tui['snapshot_bytes'] / 1e6:.1f} MB snapshot), "
        f"{tui['events_per_s']:.0f} events/s streamed"
    )
    return [
        Figure(
            "tui.key_to_screen_p50",
            percentile(keys, 50),
            "ms",
            TARGET_KEY_P99_MS,
            samples=len(keys),
            note=note,
        ),
        Figure(
            "tui.key_to_screen_p99",
            percentile(keys, 99),
            "ms",
            TARGET_KEY_P99_MS,
            samples=len(keys),
            note=note,
        ),
        Figure(
            "tui.event_to_screen_p50",
            percentile(events, 50),
            "ms",
            TARGET_EVENT_P99_MS,
            samples=len(events),
        ),
        Figure(
            "tui.event_to_screen_p99",
            percentile(events, 99),
            "ms",
            TARGET_EVENT_P99_MS,
            samples=len(events),
        ),
        Figure(
            "tui.cpu_load", tui["load_cpu_pct"], "%", TARGET_LOAD_CPU_PCT, note="one core = 100%"
        ),
        Figure(
            "tui.cpu_idle", tui["idle_cpu_pct"], "%", TARGET_IDLE_CPU_PCT, note="one core = 100%"
        ),
        Figure(
            "tui.status_json",
            median(status["times"]["status"][1:]),
            "s",
            TARGET_STATUS_S,
            samples=len(status["times"]["status"]) - 1,
            note=f"{status['tickets']} tickets, {status['sizes']['status'] / 1e6:.0f} MB of JSON, "
            f"1% of them changed between runs, max {max(status['times']['status'][1:]):.2f} s",
        ),
        Figure(
            "tui.status_json_first",
            status["times"]["status"][0],
            "s",
            None,
            samples=1,
            note="the first status after start, which fills the daemon's cache of encoded views",
        ),
        Figure(
            "tui.locks_json",
            median(status["times"]["locks"]),
            "s",
            TARGET_STATUS_S,
            samples=len(status["times"]["locks"]),
            note=f"{status['tickets']} tickets, max {max(status['times']['locks']):.2f} s",
        ),
    ]
