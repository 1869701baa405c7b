"""Process containment never signals a process that is not the attempt's: a process
group's number is reused once its leader is reaped and its members are gone
(``kernel.pid_max`` is 32768 here), and a run id must name one project's run only.

Real processes. A recycled number is simulated the only way a test can: an
:class:`AttemptGroup` whose number now belongs to an unrelated live process group,
with the old leader's start time and exit. Before the fix, the group was signalled by
number (``os.killpg``) and swept by number in ``/proc``, so each of these strangers
was SIGKILLed; and a reviewer's run id was ``review-<ticket>-<gen>`` in every project,
so ending one project's review killed another project's reviewer of a ticket of the
same name (a reviewer SIGKILLed about a second after its start, under parallel test
runs of the same uid)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from orchestrator.daemon.contain import (
    RUN_ID_VAR,
    AttemptGroup,
    end_attempt_processes,
    now_ticks,
    proc_start_ticks,
)
from orchestrator.daemon.review import review_run_id


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except FileNotFoundError:
        return False


def _gone(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def _stranger() -> tuple[subprocess.Popen[str], int]:
    """An unrelated process leading its own session and group, with a child in it
    (its pid printed); neither carries a run id."""
    env = {k: v for k, v in os.environ.items() if k != RUN_ID_VAR}
    proc = subprocess.Popen(
        ["sh", "-c", "sleep 300 & echo $!; exec sleep 300"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    assert proc.stdout is not None
    with proc.stdout:
        return proc, int(proc.stdout.readline())


def _old_attempt() -> tuple[int, int]:
    """Start and reap a leader, as an attempt's agent; return its start time and when
    its exit was seen."""
    leader = subprocess.Popen(["sleep", "0.2"], start_new_session=True)
    start = proc_start_ticks(leader.pid)
    assert start is not None
    leader.wait()
    time.sleep(0.05)  # clock ticks are 10 ms: the stranger starts strictly later
    return start, now_ticks()


def test_a_group_number_reused_by_another_process_is_never_signalled():
    start, exited_at = _old_attempt()
    time.sleep(0.05)
    stranger, child = _stranger()
    try:
        group = AttemptGroup(stranger.pid, "gone-run")  # the number, as recorded
        group.leader_start, group.exited_at = start, exited_at  # of the old leader
        assert group.signal(signal.SIGKILL) is False
        assert group.end() == []
        assert _alive(stranger.pid) and _alive(child), "a stranger's group was killed"
        # The stranger's leader exits; its child stays in group and session `number`:
        # still not the attempt's (it started after the attempt's leader was gone).
        os.kill(stranger.pid, signal.SIGKILL)
        stranger.wait()
        assert end_attempt_processes(stranger.pid, "gone-run", start, exited_at) == []
        assert _alive(child)
    finally:
        for pid in (stranger.pid, child):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        stranger.wait()


def test_what_an_exited_leader_left_in_its_group_is_still_ended():
    """The other side of the rule: the attempt's own leftovers, found by group alone
    (no run id in their environment), are ended after their leader was reaped."""
    env = {k: v for k, v in os.environ.items() if k != RUN_ID_VAR}
    leader = subprocess.Popen(
        ["sh", "-c", "sleep 300 & echo $!"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    group = AttemptGroup(leader.pid, "this-run")
    assert leader.stdout is not None
    with leader.stdout:
        leftover = int(leader.stdout.readline())
    leader.wait()
    group.exited()
    assert group.signal(signal.SIGKILL) is False  # the leader is reaped: not by number
    assert group.end() == [leftover]
    assert _gone(leftover)


def test_a_live_group_is_signalled_whole():
    leader, child = _stranger()
    group = AttemptGroup(leader.pid, "")
    assert group.signal(signal.SIGKILL) is True
    leader.wait()
    assert leader.returncode == -signal.SIGKILL
    assert _gone(child)


def test_ending_a_review_never_ends_another_projects_reviewer(tmp_path):
    """Two projects' daemons (same user) review a ticket named ``t``, round 1: the run
    ids differ, and ending one project's reviewer (by its run id) leaves the other's."""
    home_a, home_b = tmp_path / "a", tmp_path / "b"
    run_a, run_b = review_run_id(home_a, "t", 1), review_run_id(home_b, "t", 1)
    assert run_a != run_b
    assert review_run_id(home_a, "t", 1) == run_a  # derivable again after a crash
    other = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(300)"],
        env={**os.environ, RUN_ID_VAR: run_b},
        start_new_session=True,
    )
    try:
        time.sleep(0.2)  # its environment is in /proc once it runs
        assert end_attempt_processes(-1, run_a) == []
        assert _alive(other.pid), "another project's reviewer was killed"
        assert end_attempt_processes(-1, run_b) == [other.pid]
        other.wait(timeout=10)
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()


def test_a_crashed_daemons_agent_is_recognised_by_ticket_and_worktree(tmp_path):
    from orchestrator.daemon.runner import is_our_agent

    worktree = tmp_path / "worktrees" / "agent-1"
    proc = subprocess.Popen(
        ["sleep", "300"],
        env={**os.environ, "ORCH_TICKET_ID": "t", "ORCH_WORKTREE": str(worktree)},
    )
    try:
        time.sleep(0.2)
        assert is_our_agent(proc.pid, "t", worktree)
        assert not is_our_agent(proc.pid, "t", Path("/elsewhere/worktrees/agent-1"))
        assert not is_our_agent(proc.pid, "u", worktree)
    finally:
        proc.kill()
        proc.wait()


def test_two_projects_reviewing_a_ticket_of_the_same_name_leave_each_other_alone(
    make_project,
):
    """The flake, reproduced through two real daemons of the same user: project B's
    reviewer of ticket ``t`` runs on while project A reviews its own ``t`` to the end
    (A's reviewer exits at once, and A then ends whatever carries its run id)."""
    from tests.integration.test_review import review_config

    b = make_project(workers=1, extra=review_config("hang", timeout_s=100))
    b.ticket("t", description="write b.txt b")
    b.wait_state("t", "reviewing", timeout_s=90)
    a = make_project(workers=1, extra=review_config("approve"))
    a.ticket("t", description="write a.txt a")
    a.wait_state("t", "awaiting_approval", timeout_s=90)
    time.sleep(1)  # A's end of review has run
    (ticket,) = [t for t in b.snapshot().tickets if t.id == "t"]
    assert ticket.state == "reviewing", (ticket.state, ticket.reason)
    log = next(b.home.runs.glob("t/1/review-1/review.log")).read_text()
    assert "reviewer exited" not in log, log
