"""The merge queue end to end: real daemon, git, hook, ci.sh and agent processes.

Every test ends by checking the merge queue's guarantee: each commit on main has
a passing CI result (repo.git/ci-status/<sha>.json) for exactly its tree.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time

from orchestrator.shared import protocol as P
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


SLOW = HEAD.replace("class T", "import time\\n\\nclass T") + "        time.sleep({0})\\n"


def queue_refs(project: Project) -> list[str]:
    """The ref of every CI run so far (one status file per run)."""
    docs = [json.loads(p.read_text()) for p in project.home.ci_status_dir.glob("*.json")]
    return sorted(d["ref"] for d in docs)


def ci_status(project: Project, sha: str) -> str:
    path = project.home.ci_status_dir / f"{sha}.json"
    return json.loads(path.read_text())["status"] if path.exists() else ""


def wait_ci_pass(project: Project, sha: str, whose: str) -> None:
    """Wait until CI passed on ``sha``: the CI job is detached, it finishes on its own
    (also after the daemon was killed)."""
    deadline = time.monotonic() + 60
    while ci_status(project, sha) != "pass":
        assert time.monotonic() < deadline, f"{whose} CI did not pass"
        time.sleep(0.2)


def assert_batch_tips_passed_ci(project: Project, untested: set[str]) -> None:
    """merge.batch's guarantee: main moves only to commits CI passed on; the commits of a
    batch's earlier entries (``untested``) are ancestors of such a commit."""
    repo = project.home.repo
    order = main_order(project)
    commits = git(repo, "rev-list", "--reverse", "main").split()[1:]
    assert len(commits) == len(order)
    for tid, sha in zip(order, commits, strict=True):
        if tid in untested:
            later = commits[commits.index(sha) + 1 :]
            assert any(ci_status(project, c) == "pass" for c in later), tid
        else:
            assert ci_status(project, sha) == "pass", f"{tid}: no CI pass on {sha[:10]}"
    assert git(repo, "rev-list", "--merges", "main") == "", "linear history"


def wait_stacked(project: Project, ids: list[str], timeout_s: float = 60.0) -> None:
    project.wait_for(
        lambda s: all(any(t.id == i and t.queue_sha for t in s.tickets) for i in ids),
        timeout_s,
        f"{ids} stacked in the merge queue",
    )


def test_a_batch_of_three_merges_after_one_ci_run(make_project):
    # The tickets are in the backlog before the daemon starts, so the one worker takes
    # them in name order: a is tested alone, and b, c, d hand in while a's CI runs and
    # form one batch.
    project = make_project(
        workers=1,
        approval="auto",
        ci_prefix="sleep 6 && ",
        extra="merge: {batch: 3}\n",
        start=False,
    )
    for tid in "abcd":
        project.ticket(tid, locks=[f"src/{tid}.py"], description=f"write src/{tid}.py V=1\\n")
    project.start()
    project.wait_for(all_merged(["a", "b", "c", "d"]), 90, "a, b, c and d merged")
    assert queue_refs(project) == ["refs/orchestrator/queue/a", "refs/orchestrator/queue/d"]
    assert main_order(project) == ["a", "b", "c", "d"]
    merged = event_messages(project, "ticket.state")
    assert any(m.startswith("d: merged") and "with 2 more" in m for m in merged), merged
    # each ticket is still one commit of its own on main, recorded by the merger
    for tid in "bcd":
        recorded = git(project.home.repo, "rev-parse", f"refs/orchestrator/merged/{tid}")
        assert git(project.home.repo, "log", "-1", "--format=%s", recorded).startswith(tid)
    assert_batch_tips_passed_ci(project, untested={"b", "c"})


def test_a_batch_with_a_failing_ticket_finds_it_and_merges_the_others(make_project):
    # as above: a alone first, then b, c (its first attempt breaks a test) and d in a batch
    project = make_project(
        workers=1,
        approval="auto",
        ci_prefix="sleep 5 && ",
        extra="merge: {batch: 3}\n",
        start=False,
    )
    for tid in "abd":
        project.ticket(tid, locks=[f"src/{tid}.py"], description=f"write src/{tid}.py V=1\\n")
    project.ticket(
        "c",
        locks=["src/c.py", "tests/test_c.py"],
        description="write src/c.py C = 1\\n\n"
        f"a1: write tests/test_c.py {BROKEN.format('c')}\n"
        f"a2: write tests/test_c.py {FIXED}",
    )
    project.start()
    snap = project.wait_for(all_merged(["a", "b", "c", "d"]), 120, "a, b, c and d merged")
    attempts = {t.id: t.attempt for t in snap.tickets}
    assert attempts == {"a": 1, "b": 1, "c": 2, "d": 1}
    restacked = event_messages(project, "merge.restacked")
    assert any("CI failed on a batch of 3" in m for m in restacked), restacked
    failed = event_messages(project, "attempt.failed")
    assert len(failed) == 1 and failed[0].startswith("c: ") and "bisecting" in failed[0], failed
    feedback = (project.home.runs / "c" / "2" / "feedback.md").read_text()
    assert "merge queue" in feedback and "deliberate c" in feedback, feedback
    assert main_order(project) == ["a", "b", "d", "c"], "b and d merged before c came back"
    assert_every_main_commit_passed_ci(project)


def test_a_hanging_ci_run_in_the_stack_times_out_and_the_others_merge(make_project):
    project = make_project(workers=2, approval="auto", start=False)
    config = project.config.read_text().replace("  timeout_s: 600\n", "  timeout_s: 2\n")
    project.config.write_text(config)
    project.start()
    project.ticket(
        "a",
        priority=0,
        locks=["src/a.py", "tests/test_a.py"],
        description="write src/a.py A = 1\\n\n"
        f"a1: write tests/test_a.py {SLOW.format(600)}\n"
        f"a2: write tests/test_a.py {FIXED}",
    )
    project.ticket(
        "b", priority=1, locks=["src/b.py"], description="spin 0.5\nwrite src/b.py B=1\\n"
    )
    snap = project.wait_for(all_merged(["a", "b"]), 90, "a and b merged")
    assert {t.id: t.attempt for t in snap.tickets} == {"a": 2, "b": 1}
    feedback = (project.home.runs / "a" / "2" / "feedback.md").read_text()
    assert "CI error in the merge queue" in feedback and "timed out after 2 s" in feedback, feedback
    stacked = event_messages(project, "merge.stacked")
    assert any(m.startswith("b: stacked on a;") for m in stacked), "b was stacked behind a"
    assert "b: restacked without a" in event_messages(project, "merge.restacked")
    assert main_order(project) == ["b", "a"]
    assert_every_main_commit_passed_ci(project)


def test_stop_and_reject_in_the_stack_restack_the_entries_behind_and_lose_nothing(make_project):
    project = make_project(workers=4, approval="auto", ci_prefix="sleep 5 && ")
    for i, tid in enumerate("abcd"):
        project.ticket(
            tid,
            priority=i,  # 0 first: the order among entries not yet tested is a, b, c, d
            locks=[f"src/{tid}.py"],
            description=f"spin {0.3 * i:.1f}\na1: write src/{tid}.py V = {i}\\n\n"
            f"a2: write src/{tid}.py V = 30\\n",
        )
    wait_stacked(project, ["a", "b", "c", "d"])
    # Entries whose CI started keep their places, so on a loaded machine an agent that
    # finished late can still stand anywhere: the stop must restack exactly those behind b.
    order = sorted(
        (t for t in project.snapshot().tickets if t.queue_position is not None),
        key=lambda t: t.queue_position or 0,
    )
    behind_b = [t.id for t in order][[t.id for t in order].index("b") + 1 :]
    assert behind_b, [t.id for t in order]
    assert project.send(P.Stop(ticket="b")).ok
    assert project.send(P.Reject(ticket="c", feedback="use V = 30")).ok
    snap = project.snapshot()
    states = {t.id: t.state for t in snap.tickets}
    assert states["b"] == "stopped" and states["c"] in ("queued", "running"), states
    restacked = event_messages(project, "merge.restacked")
    for tid in behind_b:
        assert f"{tid}: restacked without b" in restacked, (behind_b, restacked)
    project.wait_for(all_merged(["a", "c", "d"]), 90, "a, c and d merged")
    assert project.send(P.Continue(ticket="b")).ok  # back into the queue, no agent run
    snap = project.wait_for(all_merged(["a", "b", "c", "d"]), 90, "b merged too")
    assert {t.id: t.attempt for t in snap.tickets} == {"a": 1, "b": 1, "c": 2, "d": 1}
    feedback = (project.home.runs / "c" / "2" / "feedback.md").read_text()
    assert "use V = 30" in feedback, feedback
    assert sorted(main_order(project)) == ["a", "b", "c", "d"]
    assert main_order(project)[-1] == "b"
    assert_every_main_commit_passed_ci(project)


def test_after_a_restart_the_queue_does_not_test_a_passed_stack_again(make_project):
    # a's acceptance check takes 6 s, so b (stacked on a) passes first; the daemon dies then
    project = make_project(workers=2, approval="auto")
    project.ticket(
        "a",
        priority=0,
        locks=["src/a.py"],
        description="write src/a.py A = 1\\n",
        acceptance=[{"run": ["sleep", "6"]}],
    )
    project.ticket(
        "b", priority=1, locks=["src/b.py"], description="spin 0.5\nwrite src/b.py B=1\\n"
    )
    wait_stacked(project, ["a", "b"])
    b_commit = next(t.queue_sha for t in project.snapshot().tickets if t.id == "b")
    assert b_commit is not None
    deadline = time.monotonic() + 30
    while ci_status(project, b_commit) != "pass":
        assert time.monotonic() < deadline, "b's CI did not pass"
        time.sleep(0.1)
    a_commit = next(t.queue_sha for t in project.snapshot().tickets if t.id == "a")
    assert ci_status(project, a_commit or "") == "", "a's CI still runs"
    project.kill9()
    project.start()
    project.wait_for(all_merged(["a", "b"]), 60, "a and b merged after the restart")
    assert len(queue_refs(project)) == 2, "one CI run each: none was run again"
    assert git(project.home.repo, "rev-parse", "main") == b_commit
    assert git(project.home.repo, "rev-parse", "main^") == a_commit
    assert_every_main_commit_passed_ci(project)


def test_a_batch_fast_forwarded_just_before_a_crash_counts_as_merged_after_it(make_project):
    """The daemon dies right after its atomic push moved main through a batch (b, c, d)
    and recorded each entry, before it saved the answer. At the next start each record
    is on main; b's and c's commits never had CI of their own (CI ran on d's, the
    batch's last), so their trees match no CI run: what makes them count is that each
    is exactly its ticket's change on its parent and a CI pass on main covers it."""
    project = make_project(
        workers=1,
        approval="auto",
        ci_prefix="sleep 6 && ",
        extra="merge: {batch: 3}\n",
        start=False,
    )
    for tid in "abcd":
        project.ticket(tid, locks=[f"src/{tid}.py"], description=f"write src/{tid}.py V=1\\n")
    project.start()
    snap = project.wait_for(
        lambda s: (
            any(t.id == "a" and t.state == "merged" for t in s.tickets)
            and any(t.id == "d" and "CI running on" in t.reason for t in s.tickets)
        ),
        90,
        "a merged and the batch b, c, d under CI",
    )
    queued = {t.id: t.queue_sha for t in snap.tickets if t.id in "bcd"}
    assert all(queued.values()), queued
    project.kill9()
    wait_ci_pass(project, queued["d"] or "", "the batch's")
    repo = project.home.repo  # the merger's atomic push, as it was just before the crash
    git(repo, "update-ref", "refs/heads/main", queued["d"] or "")
    for tid, sha in queued.items():
        git(repo, "update-ref", f"refs/orchestrator/merged/{tid}", sha or "")
    project.start()
    project.wait_for(all_merged(["a", "b", "c", "d"]), 60, "b, c and d merged after the restart")
    assert git(repo, "rev-parse", "main") == queued["d"]  # nothing merged twice
    assert_batch_tips_passed_ci(project, untested={"b", "c"})


def test_a_ticket_fast_forwarded_just_before_a_crash_counts_as_merged_behind_another(
    make_project,
):
    """x (priority 4) is the head of the queue, y (priority 2) is stacked on it; the
    daemon dies right after main moved to x's commit, before it saved the answer. The
    restart orders the queue afresh, by priority, so y comes back ahead of x: x's record
    on main must still count (not "the change is empty on top of main", an attempt
    that fails for good and blocks what depends on x)."""
    project = make_project(workers=2, approval="auto", ci_prefix="sleep 6 && ")
    project.ticket("x", priority=4, locks=["src/x.py"], description="write src/x.py V=1\\n")
    project.wait_for(lambda s: any(t.id == "x" and t.queue_sha for t in s.tickets), 60, "x")
    project.ticket("y", priority=2, locks=["src/y.py"], description="write src/y.py V=1\\n")
    project.ticket(
        "z", priority=2, depends_on=["x"], locks=["src/z.py"], description="write src/z.py V=1\\n"
    )
    snap = project.wait_for(
        lambda s: any(t.id == "y" and t.queue_sha for t in s.tickets), 60, "y stacked on x"
    )
    order = sorted(
        (t for t in snap.tickets if t.queue_position is not None),
        key=lambda t: t.queue_position or 0,
    )
    assert [t.id for t in order] == ["x", "y"], [t.id for t in order]
    x_sha = next(t.queue_sha for t in snap.tickets if t.id == "x") or ""
    project.kill9()
    wait_ci_pass(project, x_sha, "x's")
    repo = project.home.repo  # the merger's fast-forward, as it was just before the crash
    git(repo, "update-ref", "refs/heads/main", x_sha)
    git(repo, "update-ref", "refs/orchestrator/merged/x", x_sha)
    project.start()
    snap = project.wait_for(all_merged(["x", "y", "z"]), 90, "x, y and z merged after the restart")
    tickets = {t.id: t for t in snap.tickets}
    assert tickets["x"].attempt == 1, tickets["x"]
    assert tickets["x"].reason == "merged before the restart", tickets["x"].reason
    assert main_order(project).count("x") == 1  # nothing merged twice
    assert not [m for m in event_messages(project, "attempt.failed") if m.startswith("x:")]
    assert_every_main_commit_passed_ci(project)
