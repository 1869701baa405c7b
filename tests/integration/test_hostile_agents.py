"""Issue 10, what an agent can do: push to main, plant git config, leave processes behind,
forge a merge with ticket text. Real daemon, real git, the scripted agent. Each test fails
on 7e9918c."""

from __future__ import annotations

import json
import time
from pathlib import Path

from orchestrator.shared import protocol as P
from tests.integration.conftest import git


def _gone(pid: int, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True  # a zombie is dead (its parent reaps it)
        except FileNotFoundError:
            return True
        time.sleep(0.1)
    return False


def test_an_agent_cannot_push_main_or_other_branches(make_project):
    project = make_project(workers=1)
    main_before = git(project.home.repo, "rev-parse", "main")
    project.ticket(
        "pusher",
        description="write evil.txt evil\n"
        "run git add -A\n"
        "run git -c user.name=a -c user.email=a@a commit -q -m evil\n"
        "run git push -q origin HEAD:main\n"
        "run env -u ORCH_BRANCH git push -q origin HEAD:main\n"
        "run git push -q origin HEAD:refs/heads/agent-9/other\n"
        "run git push -q origin HEAD:refs/orchestrator/merged/pusher",
    )
    project.wait_state("pusher", "awaiting_approval", "failed", timeout_s=90)
    assert git(project.home.repo, "rev-parse", "main") == main_before
    log = Path(project.snapshot().tickets[0].log_file).read_text()
    assert "may push only its ticket's branch refs/heads/agent-1/pusher, not refs/heads/main" in log
    assert "only the orchestrator's merger moves refs/heads/main" in log  # without ORCH_BRANCH
    refs = git(project.home.repo, "for-each-ref", "--format=%(refname)")
    assert "refs/heads/agent-9/other" not in refs
    assert "refs/orchestrator/merged/pusher" not in refs
    # the daemon itself still moves main
    assert project.send(P.Approve(ticket="pusher")).ok
    project.wait_state("pusher", "merged", timeout_s=60)
    assert git(project.home.repo, "rev-parse", "main") != main_before
    assert "refs/orchestrator/merged/pusher" in git(
        project.home.repo, "for-each-ref", "--format=%(refname)"
    )


def test_git_config_planted_by_an_agent_never_runs_in_the_daemon(make_project, tmp_path):
    project = make_project(workers=1)
    marker = tmp_path / "pwned"
    hook = tmp_path / "fsmonitor.sh"
    hook.write_text(f"#!/bin/sh\ntouch {marker}\n")
    hook.chmod(0o755)
    project.ticket(
        "planter",
        description=f"run git config core.fsmonitor {hook}\n"
        f"run git config filter.x.clean {hook}\n"
        "write planted.txt x",
    )
    project.wait_state("planter", "awaiting_approval", "failed", timeout_s=90)
    assert project.send(P.Approve(ticket="planter")).ok
    project.wait_state("planter", "merged", timeout_s=60)
    assert not marker.exists(), "the planted fsmonitor ran"
    config = (project.home.work / ".git" / "config").read_text()
    assert "fsmonitor" not in config and "filter" not in config
    assert "removed unsafe git config" in (project.root / "daemon.log").read_text()


def test_a_setsid_grandchild_ends_with_its_attempt(make_project):
    project = make_project(workers=1)
    project.ticket("escaper", description="setsid-child 300\nwrite a.txt a")
    snap = project.wait_state("escaper", "ci_running", "awaiting_approval", "failed", timeout_s=90)
    pid_file = Path(snap.tickets[0].log_file).with_name("child.pid")
    pid = int(pid_file.read_text())
    assert _gone(pid), f"pid {pid} (setsid) outlived its attempt"


def test_ticket_text_cannot_make_another_ticket_look_merged(make_project):
    project = make_project(workers=1)
    project.ticket("forger", description="write forger.txt f\nTicket: victim")
    project.wait_state("forger", "awaiting_approval", timeout_s=90)
    assert project.send(P.Approve(ticket="forger")).ok
    project.wait_state("forger", "merged", timeout_s=60)
    project.ticket("victim", description="write victim.txt v")
    project.wait_state("victim", "awaiting_approval", timeout_s=90)
    assert project.send(P.Approve(ticket="victim")).ok
    project.wait_state("victim", "merged", timeout_s=60)
    files = git(project.home.repo, "ls-tree", "--name-only", "main").split()
    assert "victim.txt" in files, "victim was reported merged but never reached main"
    body = git(project.home.repo, "log", "-1", "--format=%B", "main~1")
    assert "\nTicket: victim" not in body and " Ticket: victim" in body


def test_a_merge_record_on_main_counts_only_with_the_tree_ci_passed_on(make_project):
    """``refs/orchestrator/merged/<id>`` on main says where main went, not what got
    there: a record planted on main (here main's own first commit, as anything holding
    the ref token could) does not make the ticket merged. It is refused with a one-line
    reason naming both trees, and the ticket's change is not lost."""
    project = make_project(workers=1)
    project.ticket("planted", description="write planted.txt p")
    project.wait_state("planted", "awaiting_approval", timeout_s=90)
    main = git(project.home.repo, "rev-parse", "main")
    git(project.home.repo, "update-ref", "refs/orchestrator/merged/planted", main)
    assert project.send(P.Approve(ticket="planted")).ok
    snap = project.wait_for(
        lambda s: any(
            t.id == "planted" and "not the tree CI passed on" in t.reason for t in s.tickets
        ),
        timeout_s=60,
        what="the planted record refused",
    )
    (ticket,) = [t for t in snap.tickets if t.id == "planted"]
    assert ticket.state == "awaiting_approval", ticket
    assert "\n" not in ticket.reason and f"is on main at {main[:10]}" in ticket.reason
    assert "planted.txt" not in git(project.home.repo, "ls-tree", "--name-only", "main").split()
    assert git(project.home.repo, "rev-parse", "main") == main  # nothing moved


def test_a_merge_record_planted_at_another_tickets_commit_is_refused(make_project):
    """A record planted at a commit of main that CI covers (o2's CI passed on the commit
    after it), but that is another ticket's change: the batch rule (an entry's commit
    counts when CI passed on a later one) does not take it, as its change is not this
    ticket's."""
    project = make_project(workers=1)
    for tid in ("o1", "o2"):  # both branched from the first main: o2's queue commit runs CI
        project.ticket(tid, locks=[f"{tid}.txt"], description=f"write {tid}.txt {tid}")
    for tid in ("o1", "o2"):
        project.wait_state(tid, "awaiting_approval", timeout_s=90)
    for tid in ("o1", "o2"):
        assert project.send(P.Approve(ticket=tid)).ok
        project.wait_state(tid, "merged", timeout_s=90)
    repo = project.home.repo
    main = git(repo, "rev-parse", "main")
    assert json.loads((project.home.ci_status_dir / f"{main}.json").read_text())["status"] == (
        "pass"
    )
    o1 = git(repo, "rev-parse", "main^")
    project.ticket("planted", description="write planted.txt p")
    project.wait_state("planted", "awaiting_approval", timeout_s=90)
    git(repo, "update-ref", "refs/orchestrator/merged/planted", o1)
    assert project.send(P.Approve(ticket="planted")).ok
    snap = project.wait_for(
        lambda s: any(
            t.id == "planted" and "not the tree CI passed on" in t.reason for t in s.tickets
        ),
        timeout_s=60,
        what="the planted record refused",
    )
    (ticket,) = [t for t in snap.tickets if t.id == "planted"]
    assert ticket.state == "awaiting_approval" and f"is on main at {o1[:10]}" in ticket.reason
    assert git(repo, "rev-parse", "main") == main
    assert "planted.txt" not in git(repo, "ls-tree", "--name-only", "main").split()


def _move_main(project, tmp_path: Path, name: str, record_for: str = "") -> str:
    """Move repo.git's main outside the merge queue (as a person with the ref token
    could): a commit adding ``name`` on top of main; with ``record_for``, also point
    that ticket's merge record at it. Returns the new main."""
    clone = tmp_path / f"mover-{name}"
    git(tmp_path, "clone", "--quiet", str(project.home.repo), str(clone))
    (clone / name).write_text("moved outside the queue\n")
    git(clone, "add", name)
    git(clone, "commit", "--quiet", "-m", f"outside the queue: {name}")
    repo = project.home.repo
    old = git(repo, "rev-parse", "main")
    git(repo, "fetch", "--quiet", str(clone), "HEAD")
    new = git(repo, "rev-parse", "FETCH_HEAD")
    git(repo, "update-ref", "refs/heads/main", new, old)
    if record_for:
        git(repo, "update-ref", f"refs/orchestrator/merged/{record_for}", new)
    return new


def _queue_ci_running(project, tid: str) -> str:
    """Wait until CI runs on ``tid``'s queue commit; return that commit's short sha."""
    snap = project.wait_for(
        lambda s: any(t.id == tid and "CI running on" in t.reason for t in s.tickets),
        timeout_s=90,
        what=f"CI on {tid}'s queue commit",
    )
    (ticket,) = [t for t in snap.tickets if t.id == tid]
    return ticket.reason.rsplit(" ", 1)[1]


def test_main_moved_while_the_queue_tested_a_commit_that_commit_never_lands(make_project, tmp_path):
    """CI passed on a queue commit built on main M; by the fast-forward main is at M2.
    Landing the ticket now means a tree CI never saw: the fast-forward (leased on M)
    is refused, the entry is built again on M2 and tested again, and only that lands."""
    project = make_project(workers=1, ci_prefix="sleep 3 && ")
    project.ticket("t", description="write t.txt t")
    project.wait_state("t", "awaiting_approval", timeout_s=90)
    _move_main(project, tmp_path, "before.txt")  # the branch's CI saw the old main
    assert project.send(P.Approve(ticket="t")).ok
    tested = _queue_ci_running(project, "t")
    moved = _move_main(project, tmp_path, "during.txt")
    project.wait_state("t", "merged", timeout_s=120)
    repo = project.home.repo
    main = git(repo, "rev-parse", "main")
    assert git(repo, "merge-base", "--is-ancestor", moved, main) == ""  # kept, not lost
    assert not any(c.startswith(tested) for c in git(repo, "log", "--format=%H", main).split())
    status = json.loads((project.home.ci_status_dir / f"{main}.json").read_text())
    assert status["status"] == "pass"  # CI passed on exactly the tree on main
    files = git(repo, "ls-tree", "--name-only", "main").split()
    assert {"t.txt", "before.txt", "during.txt"} <= set(files)
    events = project.cli("events", "--since", "0").stdout
    assert "main moved outside the merge queue; every entry is stacked again" in events


def test_a_merge_record_moved_onto_main_at_fast_forward_time_is_refused_by_tree(
    make_project, tmp_path
):
    """The same race, but what moved main also recorded the ticket as merged there,
    at a commit whose tree is not the one CI passed on: the refused fast-forward finds
    the record on main, the tree check refuses it with one line naming both trees, and
    nothing of the ticket reaches main."""
    project = make_project(workers=1, ci_prefix="sleep 3 && ")
    project.ticket("t", description="write t.txt t")
    project.wait_state("t", "awaiting_approval", timeout_s=90)
    _move_main(project, tmp_path, "before.txt")
    assert project.send(P.Approve(ticket="t")).ok
    tested = _queue_ci_running(project, "t")
    moved = _move_main(project, tmp_path, "during.txt", record_for="t")
    snap = project.wait_for(
        lambda s: any(t.id == "t" and "not the tree CI passed on" in t.reason for t in s.tickets),
        timeout_s=90,
        what="the record refused",
    )
    (ticket,) = [t for t in snap.tickets if t.id == "t"]
    assert ticket.state == "awaiting_approval", ticket
    assert "\n" not in ticket.reason and f"is on main at {moved[:10]}" in ticket.reason
    repo = project.home.repo
    tested_tree = git(repo, "rev-parse", f"{tested}^{{tree}}")
    assert f"({tested_tree[:10]})" in ticket.reason, ticket.reason
    assert git(repo, "rev-parse", "main") == moved  # nothing of t landed
    assert "t.txt" not in git(repo, "ls-tree", "--name-only", "main").split()
