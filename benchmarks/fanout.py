"""4. Event fan-out: 4 subscribed socket clients, the server publishing as fast as it can.

The real daemon has no way to publish events at full speed: every event it
makes comes from a ticket, agent or command input, each of which also costs a
SQLite commit, so the daemon's event rate is bounded by its inputs, not by the
fan-out. The component under test is therefore :class:`daemon.server.Server`,
run here in-process on a real Unix socket, with real clients in separate
processes (benchmarks/reader.py, which count lines and decode nothing).

* Throughput: a publisher task calls ``Server.publish`` with batches of 100
  pre-built ``ticket.updated`` events (a full ticket view each, ~600 bytes of
  JSON, as the daemon sends) and yields to the loop after each batch. The
  figure is the events each client received per second (the slowest client
  counts), the median over phases.
* A fifth client that connects and never reads: phases with and without it
  come in pairs (order alternating); the slowdown is the median over pairs of
  the drop of the slowest client's rate, and the memory figure the growth of
  this process's RSS while the fifth client is connected. The ``_10k``
  variant gives the server a snapshot built like ``Daemon.snapshot`` from a
  Core holding 10,000 tickets and 1,000 leases, since a resync resends it.
* Event-loop lag: 10 events every 10 ms (1,000 events/s) to 4 clients while a
  task sleeps 10 ms in a loop and records how late it wakes.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

from benchmarks.harness import (
    BenchmarkError,
    Figure,
    median,
    percentile,
    rss_mb,
)
from orchestrator.daemon.server import MAX_BUFFERED_BYTES, Server
from orchestrator.shared import protocol as P
from orchestrator.shared.models import TicketState, TicketView

TARGET_EVENTS_PER_S = 50_000.0
TARGET_LAG_P99_MS = 10.0
TARGET_SLOWDOWN_PCT = 10.0
#: Bounded: the per-client buffer cap (8 MB) plus the batch in flight, with room to spare.
TARGET_STALLED_GROWTH_MB = 4 * MAX_BUFFERED_BYTES / (1 << 20)
READER = Path(__file__).with_name("reader.py")
CLIENTS = 4
BATCH = 100


def sample_events(count: int) -> list[P.Event]:
    """Events shaped like the daemon's ``ticket.updated`` (a full ticket view each)."""
    now = time.time()
    events = []
    for i in range(count):
        view = TicketView(
            id=f"ticket-{i:05d}",
            title=f"Benchmark ticket number {i} with a realistic title",
            state=TicketState.QUEUED,
            priority=i % 5,
            effective_priority=(i % 5) - 0.25,
            locks=[f"src/pkg{i % 50}/module{i}.py", f"tests/test_module{i}.py"],
            queued_at=now - 60,
            state_since=now - 30,
            rank=(i % 5) + now / 300,
            file=f"/home/user/project/backlog/ticket-{i:05d}.yaml",
            reason="lock src/pkg1/module1.py held by ticket-00001",
        )
        events.append(
            P.Event(
                id=1000 + i,
                ts=now,
                kind="ticket.updated",
                message=f"ticket-{i:05d}: priority P{i % 5}",
                ticket=view.id,
                ticket_view=view,
            )
        )
    return events


class _Bench:
    def __init__(self, path: Path) -> None:
        self.path = path
        snapshot = P.Snapshot(
            version=P.PROTOCOL_VERSION, last_event_id=0, tickets=[], agents=[], leases=[]
        )
        hello = P.Hello(version=P.PROTOCOL_VERSION, home="/bench", pid=os.getpid())
        hello_line, snapshot_line = P.encode(hello), P.encode(snapshot)
        self.server = Server(path, lambda: hello_line, lambda: snapshot_line, self._dispatch)
        self.events = sample_events(1000)
        self.published = 0

    async def _dispatch(self, command: P.ClientCommand) -> P.Reply:
        return P.Reply(ok=True)

    async def publish_flat_out(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        k = 0
        n = len(self.events)
        while time.monotonic() < deadline:
            batch = self.events[k : k + BATCH]
            k = (k + BATCH) % n
            self.server.publish(batch)
            self.published += len(batch)
            await anyio.sleep(0)

    async def publish_paced(self, seconds: float, per_tick: int, tick_s: float) -> None:
        start = time.monotonic()
        k = 0
        n = len(self.events)
        ticks = int(seconds / tick_s)
        for i in range(ticks):
            self.server.publish(self.events[k : k + per_tick])
            k = (k + per_tick) % n
            self.published += per_tick
            await anyio.sleep(max(0.0, start + (i + 1) * tick_s - time.monotonic()))

    async def wait_peers(self, count: int) -> None:
        with anyio.fail_after(20):
            while sum(p.subscribed for p in self.server.peers) < count:
                await anyio.sleep(0.01)


def _rate(series: list[list[float]], t0: float, t1: float) -> float:
    """Lines per second a reader received between t0 and t1 (from its series)."""

    def lines_at(t: float) -> float:
        best = 0.0
        for ts, n in series:
            if ts <= t:
                best = n
            else:
                break
        return best

    return (lines_at(t1) - lines_at(t0)) / (t1 - t0)


async def _alternate(
    bench: _Bench,
    rounds: int,
    phase_s: float,
    label: str,
    phases: list[tuple[str, int, float, float]],
) -> tuple[list[float], int]:
    """Pairs of flat-out phases without and with a fifth client that never reads.

    The order alternates (free-stalled, stalled-free, ...) so that a drift of the
    machine's speed does not favour either. Appends ``(label/free|stalled, round,
    t0, t1)`` windows to ``phases``; returns the RSS growth of this process
    during each stalled phase (MB) and the number of resyncs.
    """
    growth = []
    resyncs = 0
    for r in range(rounds):
        for kind in ("free", "stalled") if r % 2 == 0 else ("stalled", "free"):
            stalled = None
            before = rss_mb(os.getpid())
            if kind == "stalled":
                stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                stalled.connect(str(bench.path))  # subscribes, and never reads
                stalled.sendall(P.encode(P.ClientHello(version=P.PROTOCOL_VERSION)))
                await bench.wait_peers(CLIENTS + 1)
            t0 = time.monotonic()
            peak = before
            while time.monotonic() < t0 + phase_s:
                await bench.publish_flat_out(0.05)
                peak = max(peak, rss_mb(os.getpid()))
            phases.append((f"{label}/{kind}", r, t0 + 0.1, time.monotonic()))
            if stalled is not None:
                resyncs += max(p.resyncs for p in bench.server.peers)
                stalled.close()
                growth.append(peak - before)
                with anyio.fail_after(20):
                    while len(bench.server.peers) > CLIENTS:
                        await anyio.sleep(0.01)
    return growth, resyncs


async def _main(quick: bool, base: Path, big_snapshot: Callable[[], bytes]) -> dict[str, Any]:
    bench = _Bench(base / "s.sock")
    phase_s = 1.0 if quick else 2.0
    rounds = 4 if quick else 8
    lag_s = 3.0 if quick else 10.0
    phases: list[tuple[str, int, float, float]] = []
    lags: list[float] = []
    async with anyio.create_task_group() as tg:
        await tg.start(bench.server.serve)
        readers = [
            subprocess.Popen(
                [sys.executable, str(READER), str(bench.path), str(P.PROTOCOL_VERSION)],
                stdout=subprocess.PIPE,
            )
            for _ in range(CLIENTS)
        ]
        await bench.wait_peers(CLIENTS)
        await bench.publish_flat_out(0.5)  # warm-up
        growth, resyncs = await _alternate(bench, rounds, phase_s, "small", phases)
        bench.server.snapshot = big_snapshot
        big_growth, big_resyncs = await _alternate(
            bench, max(2, rounds // 2), phase_s, "big", phases
        )

        async def measure_lag() -> None:
            while True:
                t = time.monotonic()
                await anyio.sleep(0.010)
                lags.append((time.monotonic() - t - 0.010) * 1000)

        t0 = time.monotonic()
        async with anyio.create_task_group() as inner:
            inner.start_soon(measure_lag)
            await bench.publish_paced(lag_s, per_tick=10, tick_s=0.010)
            inner.cancel_scope.cancel()
        phases.append(("paced", 0, t0 + 0.2, time.monotonic()))
        tg.cancel_scope.cancel()
    outputs = []
    for reader in readers:
        out, _ = reader.communicate(timeout=30)
        if reader.returncode != 0:
            raise BenchmarkError(f"a reader process failed with {reader.returncode}")
        outputs.append(json.loads(out)["series"])
    rates: dict[str, list[float]] = {}
    for kind, _, a, b in phases:
        rates.setdefault(kind, []).append(min(_rate(series, a, b) for series in outputs))
    slowdowns: dict[str, list[float]] = {}
    for label in ("small", "big"):
        free = {r: (a, b) for kind, r, a, b in phases if kind == f"{label}/free"}
        for kind, r, a, b in phases:
            if kind == f"{label}/stalled":
                fa, fb = free[r]
                rate_free = min(_rate(series, fa, fb) for series in outputs)
                rate_busy = min(_rate(series, a, b) for series in outputs)
                slowdowns.setdefault(label, []).append((1 - rate_busy / rate_free) * 100)
    return {
        "rates": rates,
        "slowdowns": slowdowns,
        "growth": growth,
        "big_growth": big_growth,
        "resyncs": resyncs,
        "big_resyncs": big_resyncs,
        "lags": lags,
    }


def daemon_like_snapshot(tickets: int) -> tuple[Callable[[], bytes], int]:
    """A snapshot line built the way the daemon builds it, from a Core holding
    ``tickets`` queued tickets and 1,000 leases; returns it and its size in bytes."""
    from benchmarks.scheduling import WORKERS, _Bench, _without_refresh

    core_bench = _Bench(seed=6)
    undo = _without_refresh(core_bench.core)
    core_bench.fill_running(WORKERS)
    for _ in range(tickets):
        core_bench.read(core_bench.mixed_locks(), priority=core_bench.rng.randrange(5))
    undo()
    core = core_bench.core

    def snapshot_line() -> bytes:
        now = time.time()
        snapshot = P.Snapshot(
            version=P.PROTOCOL_VERSION,
            last_event_id=0,
            tickets=core.ticket_views(now),
            agents=[core.agent_view(w) for w in core.workers.values()],
            leases=core.lease_views(),
            approval="manual",
        )
        return P.encode(snapshot)

    return snapshot_line, len(snapshot_line())


def run(quick: bool) -> list[Figure]:
    import shutil
    import tempfile

    big_snapshot, big_size = daemon_like_snapshot(10_000)
    t0 = time.perf_counter()
    big_snapshot()
    big_ms = (time.perf_counter() - t0) * 1000
    base = Path(tempfile.mkdtemp(prefix="ob-", dir="/tmp"))
    # The server warns on every resync of the stalled client; that is expected here.
    server_log = logging.getLogger("daemon.server")
    level = server_log.level
    server_log.setLevel(logging.ERROR)
    try:
        r = anyio.run(_main, quick, base, big_snapshot)
    finally:
        server_log.setLevel(level)
        shutil.rmtree(base, ignore_errors=True)
    rates = r["rates"]
    free, busy = median(rates["small/free"]), median(rates["small/stalled"])
    big_free, big_busy = median(rates["big/free"]), median(rates["big/stalled"])
    lags = r["lags"]
    paced = median(rates["paced"])
    return [
        Figure(
            "fanout.events_per_s",
            free,
            "events/s",
            TARGET_EVENTS_PER_S,
            higher_is_better=True,
            samples=len(rates["small/free"]),
            note=f"daemon.server.Server in-process, {CLIENTS} reader processes, batches of "
            f"{BATCH}; the slowest client's rate, median over phases",
        ),
        Figure(
            "fanout.loop_lag_p99",
            percentile(lags, 99),
            "ms",
            TARGET_LAG_P99_MS,
            samples=len(lags),
            note=f"10 ms sleeps oversleeping while publishing {paced:.0f} events/s "
            f"to {CLIENTS} clients; p50 {percentile(lags, 50):.2f} ms",
        ),
        Figure(
            "fanout.stalled_slowdown",
            median(r["slowdowns"]["small"]),
            "%",
            TARGET_SLOWDOWN_PCT,
            samples=len(r["slowdowns"]["small"]),
            note=f"median over pairs of phases of the slowest client's rate drop with a 5th "
            f"client that never reads ({busy:.0f}/s vs {free:.0f}/s; "
            f"{r['resyncs']} resyncs); empty snapshot",
        ),
        Figure(
            "fanout.stalled_rss_growth",
            max(r["growth"]),
            "MB",
            TARGET_STALLED_GROWTH_MB,
            samples=len(r["growth"]),
            note="RSS growth of the serving process while the 5th client is stalled "
            f"(per phase: {', '.join(f'{g:.0f}' for g in r['growth'])} MB)",
        ),
        Figure(
            "fanout.stalled_slowdown_10k",
            median(r["slowdowns"]["big"]),
            "%",
            TARGET_SLOWDOWN_PCT,
            samples=len(r["slowdowns"]["big"]),
            note=f"the same with a daemon-like 10,000-ticket snapshot ({big_size / 1e6:.1f} "
            f"MB, {big_ms:.0f} ms to build) resent at each resync ({r['big_resyncs']} "
            f"resyncs): {big_busy:.0f}/s vs {big_free:.0f}/s",
        ),
        Figure(
            "fanout.stalled_rss_growth_10k",
            max(r["big_growth"]),
            "MB",
            TARGET_STALLED_GROWTH_MB,
            samples=len(r["big_growth"]),
            note="RSS growth with the 10,000-ticket snapshot",
        ),
    ]
