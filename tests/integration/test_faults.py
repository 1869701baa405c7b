"""Fault injection: kill -9 the daemon at random moments of a real pipeline run.

CI runs a short version. The long one: ``FAULT_ROUNDS=40 FAULT_SEED=7 .venv/bin/python -m
pytest tests/integration/test_faults.py --timeout 0``.
"""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from orchestrator.shared.models import TicketState
from tests.integration.conftest import git

ROUNDS = int(os.environ.get("FAULT_ROUNDS", "5"))
SEED = int(os.environ.get("FAULT_SEED", str(int(time.time()))))
#: How long the tickets may take to drain after the crashes: below pytest-timeout's 120 s,
#: so a stuck run fails with the tickets' states, the daemon log and the seed.
DRAIN_S = 80.0

HEAD = "import unittest\\nclass T(unittest.TestCase):\\n    def test(self):\\n"
BROKEN = HEAD + "        self.fail()\\n"
FIXED = HEAD + "        pass\\n"


def _agent_processes(home: Path) -> list[int]:
    """Live processes started as agents of this home (found by their environment)."""
    marker = f"ORCH_CONFIG={home / 'config.yaml'}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if marker in environ.split(b"\0") and stat.rsplit(")", 1)[1].split()[0] != "Z":
            pids.append(int(entry.name))
    return pids


def test_kill_9_at_random_moments_loses_nothing(make_project):
    print(f"FAULT_SEED={SEED} FAULT_ROUNDS={ROUNDS}")  # shown with any failure, a timeout too
    rng = random.Random(SEED)
    project = make_project(workers=2, approval="auto", extra="max_attempts: 6\n")
    ids = []
    for i in range(6):
        tid = f"t{i}"
        ids.append(tid)
        script = [f"spin {rng.uniform(0.2, 1.5):.2f}", f"write src/f{i}.py V = {i}\\n"]
        if i == 2:  # a CI failure then a passing retry, across the crashes
            script += [f"a1: write tests/test_t2.py {BROKEN}", f"write tests/test_t2.py {FIXED}"]
        project.ticket(
            tid,
            priority=rng.randint(0, 4),
            locks=[f"src/f{i}.py", "tests/test_t2.py"] if i == 2 else [f"src/f{i}.py"],
            depends_on=["t0"] if i == 5 else [],
            description="\n".join(script),
        )
    for _ in range(ROUNDS):
        time.sleep(rng.uniform(0.2, 2.5))
        project.kill9()
        project.start()
    snap = project.wait_for(
        lambda s: len(s.tickets) == len(ids) and all(t.state == "merged" for t in s.tickets),
        DRAIN_S,
        f"every ticket merged (seed {SEED})",
    )
    assert sorted(t.id for t in snap.tickets) == ids, "no ticket lost or duplicated"

    repo = project.home.repo
    assert git(repo, "rev-list", "--merges", "main") == "", "linear history"
    trailers = git(repo, "log", "--format=%(trailers:key=Ticket,valueonly)", "main").split()
    assert sorted(trailers) == ids, f"each merged ticket exactly once in main (seed {SEED})"
    # main only ever moved by fast-forward (repo.git keeps a reflog of every update)
    moves = git(repo, "reflog", "--format=%H", "main").split()
    for new, old in zip(moves, moves[1:], strict=False):
        ok = (
            subprocess.run(
                ["git", "-C", str(repo), "merge-base", "--is-ancestor", old, new], check=False
            ).returncode
            == 0
        )
        assert ok, f"main moved {old} -> {new} without a fast-forward"
    project.stop()
    assert _agent_processes(project.home.root) == [], "no orphan agent processes"
    db = sqlite3.connect(project.home.state_db)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    states = {t.state for t in snap.tickets}
    assert states <= set(TicketState)


def test_the_daemon_never_imports_textual():
    code = (
        "import sys, orchestrator.daemon.service, orchestrator.daemon.home,"
        " orchestrator.daemon.store, orchestrator.shared.client;"
        "print(sorted(m for m in sys.modules"
        " if m.split('.')[0] == 'textual' or m.startswith('orchestrator.tui')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_kill_9_with_a_merge_queue_stack_in_flight(make_project):
    """Crashes while entries are stacked, in CI or being fast-forwarded: main only moves
    to trees that passed CI, each ticket is merged exactly once, nothing is lost."""
    from tests.integration.test_merge_queue import assert_every_main_commit_passed_ci, main_order

    print(f"FAULT_SEED={SEED} FAULT_ROUNDS={ROUNDS}")
    rng = random.Random(SEED)
    project = make_project(
        workers=3, approval="auto", ci_prefix="sleep 1 && ", extra="max_attempts: 6\n"
    )
    ids = [f"q{i}" for i in range(6)]
    for i, tid in enumerate(ids):
        script = [f"spin {rng.uniform(0.1, 0.6):.2f}", f"write src/q{i}.py V = {i}\\n"]
        if i == 3:  # fails in the queue once, in the middle of a stack
            script += [f"a1: write tests/test_q3.py {BROKEN}", f"write tests/test_q3.py {FIXED}"]
        locks = [f"src/q{i}.py", "tests/test_q3.py"] if i == 3 else [f"src/q{i}.py"]
        project.ticket(tid, priority=rng.randint(0, 2), locks=locks, description="\n".join(script))
    # wait until the queue holds a stack, then crash repeatedly while it drains
    project.wait_for(
        lambda s: sum(t.state == "merging" and t.queue_sha is not None for t in s.tickets) >= 2,
        60,
        "a stack of two entries",
    )
    for _ in range(max(3, ROUNDS)):
        project.kill9()
        project.start()
        time.sleep(rng.uniform(0.3, 2.0))
    snap = project.wait_for(
        lambda s: all(t.state == "merged" for t in s.tickets) and len(s.tickets) == len(ids),
        DRAIN_S,
        f"every ticket merged (seed {SEED})",
    )
    assert sorted(t.id for t in snap.tickets) == ids
    assert sorted(main_order(project)) == ids, f"each ticket exactly once on main (seed {SEED})"
    assert_every_main_commit_passed_ci(project)
    repo = project.home.repo
    moves = git(repo, "reflog", "--format=%H", "main").split()
    for new, old in zip(moves, moves[1:], strict=False):
        ok = subprocess.run(
            ["git", "-C", str(repo), "merge-base", "--is-ancestor", old, new], check=False
        )
        assert ok.returncode == 0, f"main moved {old} -> {new} without a fast-forward"
    project.stop()
    assert _agent_processes(project.home.root) == [], "no orphan agent processes"
