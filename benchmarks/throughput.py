"""Throughput: how much agent time becomes merged commits (issue 9).

N tickets with disjoint locks are dropped at once into a real daemon with W
workers. The agent (``benchmarks/agent.py work A``) works A seconds and writes
``bench/<id>.txt``; the CI command sleeps C seconds, then runs a small real
test suite (``python -m unittest`` over ``bench_tests/``, in the project's
first commit) that fails when a ``bench/*.txt`` file says ``FAIL``.
The real post-receive hook and ci.sh run every CI job.

Figures per scenario (``throughput.<scenario>.<figure>``):

- ``wall``: first drop -> last ``merged`` event (s);
- ``efficiency`` = (N·A/W + C) / wall: the agent-time bound over the wall time;
- ``ci_runs_per_merge``: status files in ``repo.git/ci-status/`` per merged ticket
  (each CI run of a distinct commit writes one);
- ``agent_utilisation``: time agent processes ran (``agent.started`` -> the
  attempt's end) over W·wall;
- ``approval_wait_p50``/``_max``: last entry into ``merging`` (approved, in the
  merge step) -> ``merged``.

Scenarios: ``auto`` (N=18, W=3, A=2, C=2, approval auto), ``manual`` (the same,
the benchmark approves each ticket as soon as it awaits approval), ``failing``
(auto, every fifth ticket fails CI on its first attempt), ``large`` (N=60,
W=5). ``--quick``: one small auto scenario (N=6, W=2, A=0.5, C=0.5).
"""

from __future__ import annotations

import math
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.harness import (
    BenchmarkError,
    Connection,
    Figure,
    Project,
    percentile,
    wait_until,
)
from orchestrator.shared import protocol as P

AGENT = Path(__file__).with_name("agent.py")

TEST_SUITE = """\
import pathlib
import unittest

BENCH = pathlib.Path("bench")


class WorkTest(unittest.TestCase):
    def test_no_file_says_fail(self):
        for path in sorted(BENCH.glob("*.txt")):
            self.assertNotIn("FAIL", path.read_text(), path)

    def test_every_file_names_its_ticket(self):
        for path in sorted(BENCH.glob("*.txt")):
            self.assertIn(path.stem, path.read_text(), path)

    def test_arithmetic(self):
        self.assertEqual(sum(range(100)), 4950)


if __name__ == "__main__":
    unittest.main()
"""


@dataclass(frozen=True)
class Scenario:
    name: str
    tickets: int
    workers: int
    agent_s: float
    ci_s: float
    approval: str = "auto"
    fail_every: int = 0
    target_efficiency: float = 0.8
    target_ci_runs: float = 1.3


SCENARIOS = [
    Scenario("auto", 18, 3, 2.0, 2.0),
    Scenario(
        "manual", 18, 3, 2.0, 2.0, approval="manual", target_efficiency=0.7, target_ci_runs=2.2
    ),
    Scenario(
        "failing", 18, 3, 2.0, 2.0, fail_every=5, target_efficiency=0.6, target_ci_runs=math.inf
    ),
    Scenario("large", 60, 5, 2.0, 2.0),
]
QUICK = [Scenario("quick", 6, 2, 0.5, 0.5)]


@dataclass
class _Watch:
    """What a socket client saw, with the daemon's timestamps (``Event.ts``)."""

    approval: str
    conn_requests: list[str] = field(default_factory=list)
    merged: dict[str, float] = field(default_factory=dict)
    entered_merging: dict[str, float] = field(default_factory=dict)
    agent_started: dict[str, float] = field(default_factory=dict)
    agent_busy_s: float = 0.0
    to_approve: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    wake: threading.Event = field(default_factory=threading.Event)

    def on_message(self, t: float, message: P.ServerMessage) -> None:
        if not isinstance(message, P.Event) or message.ticket is None:
            return
        ticket, view = message.ticket, message.ticket_view
        with self.lock:
            if message.kind == "agent.started":
                self.agent_started[ticket] = message.ts
                return
            started = self.agent_started.get(ticket)
            ended = message.kind in ("agent.exited", "attempt.failed") or (
                view is not None and view.state != "running"
            )
            if started is not None and ended:
                self.agent_busy_s += message.ts - started
                del self.agent_started[ticket]
            if view is None:
                return
            if view.state == "merging" and message.kind == "ticket.state":
                self.entered_merging[ticket] = message.ts
            elif view.state == "merged" and ticket not in self.merged:
                self.merged[ticket] = message.ts
                self.wake.set()
            elif view.state == "awaiting_approval" and self.approval == "manual":
                self.to_approve.append(ticket)
                self.wake.set()


def run(quick: bool) -> list[Figure]:
    figures: list[Figure] = []
    for scenario in QUICK if quick else SCENARIOS:
        print(f"[throughput] scenario {scenario.name}", file=sys.stderr, flush=True)
        figures += _scenario(scenario)
    return figures


def _scenario(sc: Scenario) -> list[Figure]:
    ci = f"sleep {sc.ci_s} && {sys.executable} -m unittest discover -s bench_tests -q"
    with Project(
        workers=sc.workers,
        agent_command=[sys.executable, str(AGENT), "work", str(sc.agent_s)],
        ci_command=ci,
        approval=sc.approval,
        files={"bench_tests/test_work.py": TEST_SUITE, "bench/seed.txt": "seed\n"},
    ) as project:
        project.start()
        watch = _Watch(sc.approval)
        ids = [
            (f"fail{i:03d}" if sc.fail_every and i % sc.fail_every == 0 else f"t{i:03d}")
            for i in range(sc.tickets)
        ]
        staged = [project.stage_ticket(i, locks=[f"bench/{i}.txt"]) for i in ids]
        budget_s = 60 + 12 * sc.tickets * (sc.agent_s + sc.ci_s + 1)
        with Connection(project.socket_path, watch.on_message) as conn:
            t0 = time.time()
            for path in staged:
                project.drop(path)
            deadline = time.monotonic() + budget_s
            while len(watch.merged) < len(ids):
                project.alive()
                if time.monotonic() > deadline:
                    raise BenchmarkError(
                        f"{sc.name}: {len(watch.merged)} of {len(ids)} merged after "
                        f"{budget_s:.0f} s; daemon log: {project.log_tail()}"
                    )
                watch.wake.wait(0.5)
                watch.wake.clear()
                with watch.lock:
                    pending, watch.to_approve = watch.to_approve, []
                for ticket in pending:
                    reply, _ = conn.request(P.Approve(ticket=ticket))
                    if not reply.ok and "already" not in reply.message:
                        raise BenchmarkError(f"approve {ticket}: {reply.message}")
            wall = max(watch.merged.values()) - t0
        status_dir = project.home.ci_status_dir
        wait_until(
            lambda: (
                not any(
                    "done" not in p.read_text(errors="replace") for p in status_dir.glob("*.log")
                )
            ),
            60,
            "the last CI jobs to finish",
            project,
            poll_s=0.1,
        )
        ci_runs = len(list(status_dir.glob("*.json")))
    waits = [watch.merged[t] - watch.entered_merging.get(t, watch.merged[t]) for t in ids]
    bound = sc.tickets * sc.agent_s / sc.workers + sc.ci_s
    name = f"throughput.{sc.name}"
    setup = f"N={sc.tickets} W={sc.workers} A={sc.agent_s:g}s C={sc.ci_s:g}s {sc.approval}"
    if sc.fail_every:
        setup += f", 1 in {sc.fail_every} fails CI once"
    return [
        Figure(f"{name}.wall", wall, "s", None, note=f"{setup}: first drop -> last merge"),
        Figure(
            f"{name}.efficiency",
            bound / wall,
            "ratio",
            sc.target_efficiency,
            higher_is_better=True,
            note=f"(N·A/W + C) / wall = {bound:.1f} s / wall",
        ),
        Figure(
            f"{name}.ci_runs_per_merge",
            ci_runs / len(ids),
            "runs",
            None if math.isinf(sc.target_ci_runs) else sc.target_ci_runs,
            samples=ci_runs,
            note="CI status files per merged ticket",
        ),
        Figure(
            f"{name}.agent_utilisation",
            100 * watch.agent_busy_s / (sc.workers * wall),
            "%",
            None,
            note="agent process time / (W · wall)",
        ),
        Figure(
            f"{name}.approval_wait_p50",
            percentile(waits, 50),
            "s",
            None,
            samples=len(waits),
            note="last entry into merging -> merged",
        ),
        Figure(f"{name}.approval_wait_max", max(waits), "s", None, samples=len(waits)),
    ]
