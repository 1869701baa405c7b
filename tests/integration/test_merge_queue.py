"""The merge queue end to end: real daemon, git, hook, ci.sh and agent processes.

Every test ends by checking the merge queue's guarantee: each commit on main has
a passing CI result (repo.git/ci-status/<sha>.json) for exactly its tree.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess

from tests.integration.conftest import Project, git

HEAD = "import unittest\\n\\nclass T(unittest.TestCase):\\n    def test(self):\\n"
BROKEN = HEAD + "        self.fail('deliberate {0}')\\n"
FIXED = HEAD + "        pass\\n"


def main_order(project: Project) -> list[str]:
    """Ticket ids of main's commits, oldest first (from the Ticket trailer)."""
    out = git(
        project.home.repo, "log", "--reverse", "--format=%(trailers:key=Ticket,valueonly)", "main"
    )
    return out.split()


def assert_every_main_commit_passed_ci(project: Project) -> None:
    repo = project.home.repo
    passed_trees = set()
    for path in project.home.ci_status_dir.glob("*.json"):
        doc = json.loads(path.read_text())
        if doc["status"] == "pass":
            passed_trees.add(git(repo, "rev-parse", f"{doc['sha']}^{{tree}}"))
    commits = git(repo, "rev-list", "main").split()[:-1]  # all but the initial commit
    assert commits
    for sha in commits:
        tree = git(repo, "rev-parse", f"{sha}^{{tree}}")
        assert tree in passed_trees, f"main commit {sha[:10]} has no CI pass for its tree"
    assert git(repo, "rev-list", "--merges", "main") == "", "linear history"
    # the merger recorded each merge as a ref, pointing into main
    for tid in main_order(project):
        recorded = git(repo, "rev-parse", f"refs/orchestrator/merged/{tid}")
        ok = subprocess.run(
            ["git", "-C", str(repo), "merge-base", "--is-ancestor", recorded, "main"], check=False
        )
        assert ok.returncode == 0, tid


def event_messages(project: Project, kind: str) -> list[str]:
    db = sqlite3.connect(project.home.state_db)
    try:
        rows = db.execute("SELECT data FROM events WHERE kind = ? ORDER BY id", (kind,))
        return [json.loads(data)["message"] for (data,) in rows.fetchall()]
    finally:
        db.close()


def all_merged(ids: list[str]):
    return lambda s: sorted(t.id for t in s.tickets if t.state == "merged") == sorted(ids)


def test_middle_of_a_three_deep_stack_fails_the_others_merge(make_project):
    project = make_project(workers=3, approval="auto", ci_prefix="sleep 2 && ")
    project.ticket(
        "a", priority=0, locks=["src/a.py"], description="spin 0.3\nwrite src/a.py A = 1\\n"
    )
    project.ticket(
        "b",
        priority=1,
        locks=["src/b.py", "tests/test_b.py"],
        description="spin 0.9\nwrite src/b.py B = 1\\n\n"
        f"a1: write tests/test_b.py {BROKEN.format('b')}\n"
        f"a2: write tests/test_b.py {FIXED}",
    )
    project.ticket(
        "c", priority=2, locks=["src/c.py"], description="spin 1.5\nwrite src/c.py C = 1\\n"
    )
    snap = project.wait_for(all_merged(["a", "b", "c"]), 120, "a, b and c merged")
    attempts = {t.id: t.attempt for t in snap.tickets}
    assert attempts == {"a": 1, "b": 2, "c": 1}
    stacked = event_messages(project, "merge.stacked")
    assert any(m.startswith("b: stacked on a;") for m in stacked), stacked
    assert any(m.startswith("c: stacked on b;") for m in stacked), stacked
    restacked = event_messages(project, "merge.restacked")
    assert "c: restacked without b" in restacked, restacked
    assert main_order(project) == ["a", "c", "b"]
    feedback = (project.home.runs / "b" / "2" / "feedback.md").read_text()
    assert "merge queue" in feedback and "deliberate b" in feedback, feedback
    # c's commit on main is built on a's, without b's broken test
    c_commit = git(project.home.repo, "rev-parse", "refs/orchestrator/merged/c")
    a_commit = git(project.home.repo, "rev-parse", "refs/orchestrator/merged/a")
    assert git(project.home.repo, "rev-parse", f"{c_commit}^") == a_commit
    assert_every_main_commit_passed_ci(project)
    # one CI run per merged ticket plus the failures' reruns: no branch CI under auto approval
    runs = len(list(project.home.ci_status_dir.glob("*.json")))
    assert runs <= 6, runs


def test_higher_priority_approved_later_overtakes_waiting_entries(make_project):
    project = make_project(
        workers=3, approval="auto", ci_prefix="sleep 2 && ", extra="merge: {depth: 1}\n"
    )
    project.ticket("a", priority=2, locks=["src/a.py"], description="write src/a.py A = 1\\n")
    project.ticket(
        "c", priority=3, locks=["src/c.py"], description="spin 0.6\nwrite src/c.py C = 1\\n"
    )
    project.ticket(
        "b", priority=0, locks=["src/b.py"], description="spin 1.2\nwrite src/b.py B = 1\\n"
    )
    project.wait_for(all_merged(["a", "b", "c"]), 120, "a, b and c merged")
    queued = [m.split(":")[0] for m in event_messages(project, "merge.queued")]
    assert queued == ["a", "c", "b"], "c was approved before b"
    assert main_order(project) == ["a", "b", "c"], "b (P0) overtook c (P3) in the queue"
    assert_every_main_commit_passed_ci(project)


def test_attempt_reverting_a_file_of_its_first_attempt_merges_without_conflict(make_project):
    project = make_project(
        workers=2, approval="auto", extra="lock_policy: warn\nmerge: {depth: 1}\n"
    )
    project.ticket(
        "x",
        locks=["tests/test_x.py"],
        description="a1: write app.py def answer():\\n    return 42  # x\\n\n"
        f"a1: write tests/test_x.py {BROKEN.format('x')}\n"
        "a2: spin 6\n"
        "a2: write app.py def answer():\\n    return 42\\n\n"
        f"a2: write tests/test_x.py {FIXED}",
    )
    project.ticket(
        "y",
        locks=["app.py"],
        description="spin 2.5\nwrite app.py def answer():\\n    return 40 + 2\\n",
    )
    snap = project.wait_for(all_merged(["x", "y"]), 120, "x and y merged")
    attempts = {t.id: t.attempt for t in snap.tickets}
    failures = event_messages(project, "attempt.failed")
    assert attempts["x"] == 2, f"x's second attempt merged at once: {failures}"
    assert not any("conflict" in m for m in failures), failures
    assert main_order(project) == ["y", "x"]
    assert "40 + 2" in git(project.home.repo, "show", "main:app.py")
    x_commit = git(project.home.repo, "rev-parse", "refs/orchestrator/merged/x")
    changed = git(project.home.repo, "diff", "--name-only", f"{x_commit}^", x_commit)
    assert changed.split() == ["tests/test_x.py"], "x's net change only"
    assert_every_main_commit_passed_ci(project)


def test_manual_approval_runs_branch_ci_once_and_reuses_it_in_the_queue(make_project):
    project = make_project(workers=1, approval="manual")
    project.ticket("m", locks=["src/m.py"], description="write src/m.py M = 1\\n")
    project.ticket(
        "auto-one", approval="auto", locks=["src/n.py"], description="write src/n.py N = 1\\n"
    )
    project.wait_state("m", "awaiting_approval")
    assert project.cli("approve", "m").returncode == 0
    project.wait_for(all_merged(["m", "auto-one"]), 60, "both merged")
    refs = {json.loads(p.read_text())["ref"] for p in project.home.ci_status_dir.glob("*.json")}
    # m: its branch CI only (the queue commit has the same tree: not run again);
    # auto-one (the ticket's own approval: auto): the merge queue run only.
    assert any(r.startswith("refs/heads/agent-1/m") for r in refs), refs
    assert not any(r.endswith("/auto-one") and r.startswith("refs/heads/") for r in refs), refs
    assert "refs/orchestrator/queue/auto-one" in refs, refs
    assert_every_main_commit_passed_ci(project)
