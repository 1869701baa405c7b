"""The Ray runner (issue 14): dispatch overhead, throughput on two nodes, daemon cost.

A real two-node Ray cluster on this machine (benchmarks/raycluster.py: a head and
a second node, both on loopback addresses) and real daemons with ``runner: ray``.

- ``ray.dispatch_p50``/``_p99`` (and ``local.dispatch_p50``/``_p99`` for the same
  daemon with ``runner: local``): the ticket's ``running`` event (assigned to a
  worker) -> the agent process's first statement (it prints ``time.time()``);
  both clocks are this machine's. N tickets, 2 workers, agents that exit at once.
- ``ray.efficiency``: N short agents (A s each) with W workers on the two nodes,
  auto approval, a CI command that sleeps C s: (N·A/W + C) / wall, as in
  benchmarks/throughput.py (the first drop -> the last ``merged`` event); its note
  says how many agents ran on each node. ``local.efficiency``: the same run with
  ``runner: local``, for comparison (the control host's share: commits, pushes,
  CI, the merge queue).
- ``ray.daemon_cpu_idle``/``_rss_idle``: the daemon connected to the cluster with
  no ticket, over a window; ``ray.daemon_cpu_busy``/``_rss_busy``: over the
  throughput run (CPU as a share of one core; RSS at the end).

``--quick``: fewer tickets (dispatch 8, throughput 16 agents of 1 s, no local run).
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from benchmarks.harness import (
    CLK_TCK,
    BenchmarkError,
    Connection,
    Figure,
    Project,
    cpu_s,
    percentile,
    rss_mb,
)
from benchmarks.raycluster import RayCluster, running_cluster
from orchestrator.shared import protocol as P

TARGET_DISPATCH_P99_MS = 500.0
TARGET_EFFICIENCY = 0.7
#: An agent that reports when it started, then works ``argv[1]`` seconds and writes a file.
AGENT_CODE = (
    "import os, sys, time, pathlib; print('T0=%.6f' % time.time(), flush=True); "
    "time.sleep(float(sys.argv[1])); d = pathlib.Path('bench'); d.mkdir(exist_ok=True); "
    "(d / (os.environ['ORCH_TICKET_ID'] + '.txt')).write_text('done')"
)
T0_RE = re.compile(r"T0=(\d+\.\d+)")


class _Watch:
    """Timestamps of each ticket's assignment, agent start and merge (daemon clocks)."""

    def __init__(self) -> None:
        self.assigned: dict[str, float] = {}
        self.started: dict[str, float] = {}
        self.merged: dict[str, float] = {}
        self.node: dict[str, str] = {}
        """Ticket -> the Ray node its (last) agent ran on ("" on this machine)."""
        self.lock = threading.Lock()
        self.wake = threading.Event()

    def on_message(self, t: float, message: P.ServerMessage) -> None:
        if not isinstance(message, P.Event) or message.ticket is None:
            return
        ticket, view = message.ticket, message.ticket_view
        with self.lock:
            if message.kind == P.EventKind.AGENT_STARTED and message.agent_view is not None:
                self.node[ticket] = message.agent_view.node
            if message.kind == P.EventKind.AGENT_OUTPUT and ticket not in self.started:
                found = T0_RE.search(message.text or "")
                if found:
                    self.started[ticket] = float(found.group(1))
            elif view is not None and message.kind == P.EventKind.TICKET_STATE:
                if view.state == "running" and ticket not in self.assigned:
                    self.assigned[ticket] = message.ts
                elif view.state == "merged":
                    self.merged[ticket] = message.ts
                    self.wake.set()


def _ray_config(cluster: RayCluster, cache: Path, num_cpus: float) -> dict[str, str]:
    return {
        "runner": "ray",
        "ray": f"{{address: '{cluster.address}', num_cpus: {num_cpus}, wip_push_s: 30, "
        f"cache_dir: '{cache}'}}",
    }


def _drive(project: Project, n: int, budget_s: float) -> tuple[_Watch, float, float]:
    """Drop ``n`` tickets at once; wait until all merged. (watch, t0, wall)."""
    watch = _Watch()
    ids = [f"t{i:03d}" for i in range(n)]
    staged = [project.stage_ticket(i, locks=[f"bench/{i}.txt"]) for i in ids]
    with Connection(project.socket_path, watch.on_message):
        t0 = time.time()
        for path in staged:
            project.drop(path)
        deadline = time.monotonic() + budget_s
        while len(watch.merged) < n:
            project.alive()
            if time.monotonic() > deadline:
                raise BenchmarkError(
                    f"{len(watch.merged)} of {n} merged after {budget_s:.0f} s: "
                    f"{project.log_tail()}"
                )
            watch.wake.wait(0.5)
            watch.wake.clear()
    return watch, t0, max(watch.merged.values()) - t0


def _dispatch(runner: str, cluster: RayCluster, cache: Path, n: int) -> list[float]:
    config = _ray_config(cluster, cache, 0.25) if runner == "ray" else {}
    agent = [sys.executable, "-c", AGENT_CODE, "0"]
    with Project(workers=2, agent_command=agent, approval="auto", config=config) as project:
        project.start()
        watch, _, _ = _drive(project, n, 60 + 10 * n)
    return [
        (watch.started[t] - watch.assigned[t]) * 1000 for t in watch.assigned if t in watch.started
    ]


def run(quick: bool) -> list[Figure]:
    with running_cluster("orch-rb-") as cluster:
        return _measure(quick, cluster, cluster.root)


def _measure(quick: bool, cluster: RayCluster, root: Path) -> list[Figure]:
    figures: list[Figure] = []
    n_dispatch = 8 if quick else 40
    for runner in ("local", "ray"):
        print(f"[ray] dispatch, runner {runner}", file=sys.stderr, flush=True)
        samples = _dispatch(runner, cluster, root / f"cache-{runner}", n_dispatch)
        for q in (50, 99):
            figures.append(
                Figure(
                    f"{runner}.dispatch_p{q}",
                    percentile(samples, q),
                    "ms",
                    TARGET_DISPATCH_P99_MS if (runner, q) == ("ray", 99) else None,
                    samples=len(samples),
                    note=f"ticket running -> agent's first statement, runner {runner}, 2 workers",
                )
            )
    n, workers, agent_s, ci_s = (16, 8, 1.0, 0.5) if quick else (100, 8, 2.0, 0.5)
    bound = n * agent_s / workers + ci_s
    for runner in ("ray",) if quick else ("local", "ray"):
        print(
            f"[ray] throughput, runner {runner}: {n} agents of {agent_s} s, {workers} workers",
            file=sys.stderr,
            flush=True,
        )
        load_before = os.getloadavg()[0]
        watch, wall, daemon = _throughput(runner, cluster, root, quick, n, workers, agent_s, ci_s)
        where = ""
        if runner == "ray":
            per_node = sorted(Counter(watch.node.values()).values(), reverse=True)
            where = f" on 2 Ray nodes (agents per node: {'/'.join(map(str, per_node))})"
        figures += [
            Figure(
                f"{runner}.efficiency",
                bound / wall,
                "ratio",
                TARGET_EFFICIENCY if runner == "ray" else None,
                higher_is_better=True,
                samples=len(watch.merged),
                note=f"{n} agents of {agent_s:g} s, {workers} workers{where}, CI {ci_s:g} s: "
                f"bound {bound:.1f} s / wall {wall:.1f} s (load average {load_before:.1f} "
                f"before, {os.getloadavg()[0]:.1f} after: the run's own processes raise it)",
            ),
            Figure(f"{runner}.wall", wall, "s", None, note="first drop -> last merged"),
        ]
    cpu_idle, rss_idle, cpu_busy, tree_busy, rss_busy, window_s = daemon
    figures += [
        Figure(
            "ray.daemon_cpu_idle",
            cpu_idle,
            "%",
            None,
            note=f"daemon user+sys CPU over {window_s:g} s, connected to Ray, no ticket",
        ),
        Figure("ray.daemon_rss_idle", rss_idle, "MB", None, note="daemon VmRSS, Ray idle"),
        Figure(
            "ray.daemon_cpu_busy",
            cpu_busy,
            "%",
            None,
            note="daemon user+sys CPU (its own, not its git children's) over the throughput run",
        ),
        Figure(
            "ray.daemon_git_cpu_busy",
            tree_busy,
            "%",
            None,
            note="the same with the git processes it started (and their hooks)",
        ),
        Figure("ray.daemon_rss_busy", rss_busy, "MB", None, note="daemon VmRSS after that run"),
    ]
    return figures


def _throughput(
    runner: str,
    cluster: RayCluster,
    root: Path,
    quick: bool,
    n: int,
    workers: int,
    agent_s: float,
    ci_s: float,
) -> tuple[_Watch, float, tuple[float, float, float, float, float, float]]:
    """One throughput run: (watch, wall, (daemon CPU % idle, RSS MB idle, CPU % busy,
    CPU % busy with its git children, RSS MB busy, idle window s))."""
    agent = [sys.executable, "-c", AGENT_CODE, str(agent_s)]
    config = _ray_config(cluster, root / f"cache-tp-{runner}", 0.25) if runner == "ray" else {}
    with Project(
        workers=workers,
        agent_command=agent,
        approval="auto",
        ci_command=f"sleep {ci_s}",
        config=config,
    ) as project:
        project.start()
        time.sleep(2.0)  # start-up work (git fetch, worktrees, actors) is over
        pid = project.pid
        window_s = 5.0 if quick else 20.0
        cpu0, t0 = cpu_s(pid), time.monotonic()
        time.sleep(window_s)
        cpu_idle = (cpu_s(pid) - cpu0) / (time.monotonic() - t0) * 100
        rss_idle = rss_mb(pid)
        cpu0, tree0, t0 = cpu_s(pid), _tree_cpu_s(pid), time.monotonic()
        watch, _, wall = _drive(project, n, 120 + 10 * n * agent_s)
        elapsed = time.monotonic() - t0
        cpu_busy = (cpu_s(pid) - cpu0) / elapsed * 100
        tree_busy = (_tree_cpu_s(pid) - tree0) / elapsed * 100
        rss_busy = rss_mb(pid)
    return watch, wall, (cpu_idle, rss_idle, cpu_busy, tree_busy, rss_busy, window_s)


def _tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and of its children it has waited for
    (fields 14-17 of /proc/<pid>/stat: the daemon's git calls and their hooks)."""
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    fields = data[data.rindex(")") + 2 :].split()
    return sum(int(x) for x in fields[11:15]) / CLK_TCK
