"""The reviewer stage end to end: a real daemon runs a real reviewer process
(tests/agents/scripted_reviewer.py) after the real CI passed on a ticket's branch."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from orchestrator.shared import protocol as P
from tests.integration.conftest import ROOT, git, main_log

REVIEWER = ROOT / "tests" / "agents" / "scripted_reviewer.py"


def review_config(mode: str, max_rounds: int = 2, timeout_s: int = 60) -> str:
    """A ``review:`` config line (one line: init's extra settings are top-level lines)."""
    argv = [sys.executable, str(REVIEWER), mode, "{diff_file}"]
    review = {"command": argv, "max_rounds": max_rounds, "timeout_s": timeout_s}
    return f"review: {json.dumps(review)}\n"


def view(project, tid):
    (found,) = [t for t in project.snapshot().tickets if t.id == tid]
    return found


def test_changes_requested_once_then_approved_merges_after_two_rounds(make_project):
    project = make_project(workers=1, approval="auto", extra=review_config("once"))
    project.ticket(
        "greet",
        locks=["app.py", "NOTES.md"],
        description=(
            "append app.py \\ndef greet():\\n    return 'hi'\na2: write NOTES.md greet says hi\\n\n"
        ),
    )
    project.wait_state("greet", "merged", timeout_s=120)
    done = view(project, "greet")
    assert done.attempt == 2
    assert done.review is not None
    assert (done.review.round, done.review.status, done.review.comments) == (2, "approve", [])
    # round 1's comments reached the agent as feedback for attempt 2
    feedback = (project.home.runs / "greet" / "2" / "feedback.md").read_text()
    assert "review round 1: changes requested (1 comment)" in feedback
    assert "- app.py:1: please add NOTES.md" in feedback
    assert (
        "feedback: Attempt 1 failed: review round 1"
        in (project.home.runs / "greet" / "2" / "agent.log").read_text()
    )
    # the reviewer saw the ticket's net diff against its merge base
    diff = (project.home.runs / "greet" / "2" / "review-2" / "diff.patch").read_text()
    assert "+++ b/NOTES.md" in diff and "+def greet():" in diff
    assert not (project.home.runs / "greet" / "2" / "review-2" / "checkout").exists()
    assert main_log(project)[0] == "greet: ticket greet"
    assert "NOTES.md" in git(project.home.repo, "show", "--name-only", "--format=", "main")

    events = project.cli("events", "--since", "0", "--json")
    assert events.returncode == 0, events.stderr
    kinds = [json.loads(line)["kind"] for line in events.stdout.splitlines()]
    assert kinds.count("review.started") == 2 and kinds.count("review.result") == 2
    status = json.loads(project.cli("status", "--json").stdout)
    (ticket,) = [t for t in status["tickets"] if t["id"] == "greet"]
    assert ticket["review"]["round"] == 2 and ticket["review"]["status"] == "approve"

    metrics = json.loads(project.cli("metrics", "--json").stdout)
    rounds = {(a["ticket"], a["attempt"]): a["review_rounds"] for a in metrics["attempts"]}
    assert rounds == {("greet", 1): 1, ("greet", 2): 1}
    assert metrics["totals"]["review_rounds"] == 2


@pytest.mark.parametrize(
    ("mode", "why"),
    [
        ("garbage", "the reviewer printed more than 262144 bytes on stdout"),
        ("exit3", "the reviewer exited with code 3"),
        ("hang", "the reviewer timed out after 2 s (review.timeout_s)"),
    ],
)
def test_a_failing_reviewer_is_a_review_error_and_a_person_decides(make_project, mode, why):
    project = make_project(workers=1, approval="auto", extra=review_config(mode, timeout_s=2))
    project.ticket("t", locks=["app.py"], description="append app.py # reviewed\n")
    project.wait_state("t", "awaiting_approval", timeout_s=90)
    found = view(project, "t")
    assert found.reason == f"review error: {why}; needs a person (approve or reject)"
    assert found.review is not None and found.review.status == "error"
    assert found.review.error == why
    assert main_log(project) == ["initial"]  # nothing merged on its own
    log = (project.home.runs / "t" / "1" / "review-1" / "review.log").read_text()
    assert "scripted reviewer: t round 1" in log
    assert "[orchestrator] reviewer exited with code" in log
    # the daemon is fine, and a person's approval merges it (CI passed on the branch)
    assert project.send(P.Approve(ticket="t")).ok
    project.wait_state("t", "merged", timeout_s=90)


def test_an_approving_reviewer_never_turns_a_red_ci_green(make_project):
    project = make_project(workers=1, approval="auto", extra=review_config("approve"))
    project.ticket(
        "red",
        locks=["app.py"],
        max_attempts=1,
        description="write app.py def answer():\\n    return 41\\n\n",
    )
    project.wait_state("red", "failed", timeout_s=120)
    found = view(project, "red")
    assert found.review is None  # the reviewer never ran on a failed CI
    assert found.reason.startswith("CI fail (exit 1)"), found.reason
    assert not list((project.home.runs / "red").glob("*/review-*"))
    assert main_log(project) == ["initial"]


def test_max_rounds_reached_waits_for_a_person_and_survives_a_restart(make_project):
    project = make_project(workers=1, approval="auto", extra=review_config("always"))
    project.ticket(
        "t",
        locks=["app.py"],
        description="append app.py # round\n",
    )
    project.wait_state("t", "awaiting_approval", timeout_s=120)
    found = view(project, "t")
    assert found.reason == "review: changes requested 2 rounds; needs a person"
    assert found.attempt == 2 and found.review is not None
    assert (found.review.round, found.review.status) == (2, "request_changes")
    assert len(found.review.comments) == 1
    text = project.cli("status").stdout
    assert "review round 2 of 2: request_changes, 1 comment" in text
    assert "app.py:1: please add NOTES.md" in text
    project.stop()
    project.start()
    again = view(project, "t")
    assert again.state == "awaiting_approval" and again.review == found.review
    assert project.send(P.Approve(ticket="t")).ok
    project.wait_state("t", "merged", timeout_s=90)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rfind(")") + 2] != "Z"  # a zombie has ended


def _wait_dead(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def _reviewer_pid(project, tid: str) -> int:
    pid_file = project.home.runs / tid / "1" / "review-1" / "reviewer.pid"
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "the reviewer never started"
        time.sleep(0.05)
    return int(pid_file.read_text())


@pytest.mark.parametrize("how", ["graceful", "kill9"])
def test_a_review_survives_a_daemon_restart_and_no_reviewer_outlives_it(make_project, how):
    project = make_project(workers=1, approval="auto", extra=review_config("slow-once"))
    project.ticket("t", locks=["app.py"], description="append app.py # reviewed\n")
    project.wait_state("t", "reviewing", timeout_s=90)
    pid = _reviewer_pid(project, "t")
    assert _alive(pid)
    if how == "graceful":
        project.stop()
        assert _wait_dead(pid), "the reviewer outlived a graceful stop"
    else:
        project.kill9()
        assert _alive(pid)  # in its own session: the killed daemon did not take it along
    project.start()
    assert _wait_dead(pid), "the restarted daemon did not end the old reviewer"
    project.wait_state("t", "merged", timeout_s=90)
    done = view(project, "t")
    assert done.review is not None and (done.review.round, done.review.status) == (1, "approve")
    assert done.attempt == 1


def test_stop_while_reviewing_ends_the_reviewer_and_continue_reviews_again(make_project):
    project = make_project(workers=1, approval="auto", extra=review_config("slow-once"))
    project.ticket("t", locks=["app.py"], description="append app.py # reviewed\n")
    project.wait_state("t", "reviewing", timeout_s=90)
    pid = _reviewer_pid(project, "t")
    assert project.send(P.Stop(ticket="t")).ok
    assert _wait_dead(pid), "a stop left the reviewer running"
    assert view(project, "t").state == "stopped"
    assert project.send(P.Continue(ticket="t")).ok
    project.wait_state("t", "merged", timeout_s=90)
    assert view(project, "t").attempt == 1


def test_what_a_reviewer_leaves_running_is_ended(make_project):
    project = make_project(workers=1, approval="auto", extra=review_config("child"))
    project.ticket("t", locks=["app.py"], description="append app.py # reviewed\n")
    project.wait_state("t", "merged", timeout_s=90)
    child = int((project.home.runs / "t" / "1" / "review-1" / "child.pid").read_text())
    assert _wait_dead(child), "a setsid grandchild of the reviewer is still running"
