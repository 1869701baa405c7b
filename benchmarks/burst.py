"""2. Burst intake: N valid tickets renamed into the backlog at once -> all queued.

The ticket files (each with a priority and one lock) are first written outside
the backlog, on the same file system, then renamed into it in one loop (as
``mv staging/*.yaml backlog/`` would): the clock starts at the first rename and
stops when a socket client has seen every ticket queued (a ``ticket.queued``
event, or the ticket in a resync snapshot if the daemon dropped events for
the client). Five workers take the first five tickets. The daemon's peak RSS
is VmHWM from /proc/<pid>/status after the burst. A burst that is not done
after the time limit is reported as it stands, as a lower bound.
"""

from __future__ import annotations

import os
import random
import threading
import time

from benchmarks.harness import (
    BenchmarkError,
    Connection,
    Figure,
    Project,
    peak_rss_mb,
    rss_mb,
    wait_until,
)
from orchestrator.shared import protocol as P

TARGET_S = 5.0
TARGET_PEAK_RSS_MB = 150.0


def run(quick: bool) -> list[Figure]:
    count = 2000 if quick else 10_000
    # Beyond this the run is reported as it stands (the figure is then a lower bound).
    timeout_s = 40.0 if quick else 120.0
    ids = [f"b{i:05d}" for i in range(count)]
    wanted = set(ids)
    seen: set[str] = set()
    last = [0.0]
    lock = threading.Lock()

    def on_message(t: float, message: P.ServerMessage) -> None:
        with lock:
            if isinstance(message, P.Event):
                if message.kind == "ticket.queued" and message.ticket in wanted:
                    seen.add(message.ticket)
                    last[0] = t
            elif isinstance(message, P.Snapshot):
                found = {v.id for v in message.tickets} & wanted
                if found - seen:
                    seen.update(found)
                    last[0] = t

    with Project(workers=5) as project:
        project.start()
        backlog = project.home.backlog
        rng = random.Random(2)
        staged = []
        for ticket_id in ids:
            path = project.stage_ticket(
                ticket_id, priority=rng.randrange(5), locks=[f"src/m{rng.randrange(500)}.py"]
            )
            staged.append((path, backlog / f"{ticket_id}.yaml"))
        base_rss = rss_mb(project.pid)
        with Connection(project.socket_path, on_message):
            t0 = time.monotonic()
            for path, dest in staged:
                os.rename(path, dest)
            renamed_s = time.monotonic() - t0
            complete = True
            try:
                wait_until(
                    lambda: len(seen) >= count,
                    timeout_s,
                    f"{count} tickets queued",
                    project,
                    poll_s=0.05,
                )
            except BenchmarkError:
                project.alive()
                complete = False
            elapsed = (last[0] - t0) if complete else time.monotonic() - t0
            time.sleep(0.5)
            peak = peak_rss_mb(project.pid)
            after = rss_mb(project.pid)
    how = "" if complete else f"cut short: {len(seen)} of {count} queued after {timeout_s:.0f} s; "
    return [
        Figure(
            "burst.all_queued",
            elapsed,
            "s",
            TARGET_S,
            samples=count,
            lower_bound=not complete,
            note=f"{how}{count} tickets renamed into the backlog in {renamed_s:.2f} s -> "
            "last ticket.queued on a socket client",
        ),
        Figure(
            "burst.queued_per_s",
            len(seen) / elapsed,
            "tickets/s",
            None,
            note="tickets queued per second over the burst",
        ),
        Figure(
            "burst.peak_rss",
            peak,
            "MB",
            TARGET_PEAK_RSS_MB,
            note=f"daemon VmHWM; VmRSS {base_rss:.0f} MB before, {after:.0f} MB after",
        ),
    ]
