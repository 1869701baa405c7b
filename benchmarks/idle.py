"""6. Idle: a daemon with 5 idle workers and one connected client, for 60 s.

CPU is user + system time from /proc/<pid>/stat over the window, as a share of
one core; RSS is VmRSS at the end. Wake-ups are the context switches of all
the daemon's threads (/proc/<pid>/task/*/status) per second: a daemon that
polls shows hundreds, one that waits on events a handful (its timers: the
heartbeat tick, the backlog and CI rescans).
"""

from __future__ import annotations

import os
import time

from benchmarks.harness import Connection, Figure, Project, cpu_s, rss_mb

TARGET_CPU_PCT = 1.0
TARGET_RSS_MB = 80.0


def context_switches(pid: int) -> int:
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total


def run(quick: bool) -> list[Figure]:
    window_s = 10.0 if quick else 60.0
    with Project(workers=5) as project:
        project.start()
        with Connection(project.socket_path):
            time.sleep(2.0)  # start-up work (git fetch, worktrees) is over
            pid = project.pid
            cpu0, switches0, t0 = cpu_s(pid), context_switches(pid), time.monotonic()
            time.sleep(window_s)
            cpu1, switches1, t1 = cpu_s(pid), context_switches(pid), time.monotonic()
            rss = rss_mb(pid)
            project.alive()
    elapsed = t1 - t0
    cpu_pct = (cpu1 - cpu0) / elapsed * 100
    return [
        Figure(
            "idle.cpu",
            cpu_pct,
            "%",
            TARGET_CPU_PCT,
            note=f"daemon user+sys CPU over {elapsed:.0f} s, 5 idle workers, 1 client "
            f"(tick resolution {100 / elapsed / os.sysconf('SC_CLK_TCK'):.3f} %)",
        ),
        Figure("idle.rss", rss, "MB", TARGET_RSS_MB, note="daemon VmRSS after the idle window"),
        Figure(
            "idle.wakeups_per_s",
            (switches1 - switches0) / elapsed,
            "1/s",
            None,
            note="context switches of all daemon threads per second",
        ),
    ]
