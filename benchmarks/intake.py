"""1. Intake latency: a ticket file renamed into the backlog -> its ``ticket.queued``
event received by a socket client; floor: raw watchdog latency of the same renames.

One worker, busy with a warm-up ticket, so every measured ticket stays queued
and the daemon does nothing else. Tickets are dropped open loop, 10-30 ms apart
(not waiting for each event, so a slow answer cannot hide the next one's), in
two ways: written outside the backlog on the same file system and renamed in
(``intake.*``, the issue's case, e.g. ``mv t.yaml backlog/``), and written as a
dot-file inside the backlog then renamed (``intake.in_dir.*``, what editors and
``shared.fsutil.atomic_write`` do). An observer of the watchdog library in this
process watches the same directory: its event time for each rename is the
floor, what any watchdog-based intake must pay.
"""

from __future__ import annotations

import os
import random
import time

from watchdog.events import (
    FileCreatedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from benchmarks.harness import (
    BenchmarkError,
    Connection,
    Figure,
    Project,
    percentile,
    wait_until,
)
from orchestrator.shared import protocol as P

TARGET_P99_MS = 50.0


class _Moves(FileSystemEventHandler):
    def __init__(self) -> None:
        self.seen: dict[str, float] = {}

    def on_any_event(self, event: FileSystemEvent) -> None:
        # A rename from outside the directory is an unpaired IN_MOVED_TO, which
        # watchdog reports as a created event; a rename within it as a move.
        if isinstance(event, FileMovedEvent | FileCreatedEvent):
            t = time.monotonic()
            dest = event.dest_path if isinstance(event, FileMovedEvent) else event.src_path
            name = dest.decode() if isinstance(dest, bytes) else dest
            self.seen.setdefault(name.rsplit("/", 1)[-1], t)


def run(quick: bool) -> list[Figure]:
    count = 100 if quick else 250
    queued: dict[str, float] = {}

    def on_message(t: float, message: P.ServerMessage) -> None:
        if isinstance(message, P.Event) and message.kind == "ticket.queued" and message.ticket:
            queued[message.ticket] = t

    with Project(workers=1) as project:
        project.start()
        moves = _Moves()
        observer = Observer()
        observer.schedule(moves, str(project.home.backlog), recursive=False)
        observer.start()
        try:
            with Connection(project.socket_path, on_message):
                # The first ticket takes the only worker; the others warm the code paths.
                _drop_paced(project, [f"warm-{i}" for i in range(5)], queued, inside=True, seed=0)
                outside = _drop_paced(
                    project, [f"o{i:05d}" for i in range(count)], queued, inside=False, seed=1
                )
                inside = _drop_paced(
                    project, [f"i{i:05d}" for i in range(count)], queued, inside=True, seed=2
                )
            # The observer's thread may lag behind the daemon on a loaded machine: let it
            # report the last renames before it stops (a rename it never reports still fails).
            names = [f"{i}.yaml" for i in (*outside, *inside)]
            wait_until(lambda: all(n in moves.seen for n in names), 30, "the watchdog floor")
        finally:
            observer.stop()
            observer.join(5)
    figures = []
    for prefix, drops, how in (
        ("intake", outside, "written outside the backlog (same file system), renamed in"),
        ("intake.in_dir", inside, "written as .NAME.tmp inside the backlog, renamed to NAME.yaml"),
    ):
        daemon_ms = [(queued[i] - t0) * 1000 for i, t0 in drops.items()]
        floor_ms = [
            (moves.seen[f"{i}.yaml"] - t0) * 1000
            for i, t0 in drops.items()
            if f"{i}.yaml" in moves.seen
        ]
        if len(floor_ms) < len(drops):
            raise BenchmarkError(f"watchdog saw {len(floor_ms)} of {len(drops)} renames")
        note = (
            f"{how}; rename -> ticket.queued on a socket client, {count} tickets dropped "
            "10-30 ms apart; floor: watchdog event for the same rename"
        )
        figures += [
            Figure(
                f"{prefix}.latency_p50",
                percentile(daemon_ms, 50),
                "ms",
                TARGET_P99_MS,
                floor=percentile(floor_ms, 50),
                samples=count,
                note=note,
            ),
            Figure(
                f"{prefix}.latency_p99",
                percentile(daemon_ms, 99),
                "ms",
                TARGET_P99_MS,
                floor=percentile(floor_ms, 99),
                samples=count,
                note=note,
            ),
        ]
    return figures


def _drop_paced(
    project: Project, ids: list[str], queued: dict[str, float], *, inside: bool, seed: int
) -> dict[str, float]:
    """Drop tickets 10-30 ms apart (open loop, not waiting for each event); wait for all
    their queued events; return id -> rename time."""
    rng = random.Random(seed)
    backlog = project.home.backlog
    drops: dict[str, float] = {}
    for ticket_id in ids:
        staged = project.stage_ticket(ticket_id, priority=rng.randrange(5))
        if inside:
            tmp = backlog / f".{staged.name}.tmp"
            staged.rename(tmp)
            staged = tmp
        time.sleep(rng.uniform(0.010, 0.030))
        t0 = time.monotonic()
        os.rename(staged, backlog / f"{ticket_id}.yaml")
        drops[ticket_id] = t0
    wait_until(
        lambda: all(i in queued for i in ids),
        30,
        f"ticket.queued events for {len(ids)} tickets",
        project,
    )
    return drops
