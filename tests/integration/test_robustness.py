"""Bad input gets a clear error and nothing is lost; stop/continue; crash recovery; liveness."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from orchestrator.shared import protocol as P
from tests.integration.conftest import git


def _wait_file(path: Path, timeout_s: float = 20.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            return path.read_text()
        time.sleep(0.05)
    raise AssertionError(f"{path} never appeared")


def test_bad_tickets_are_moved_aside_with_a_reason(make_project):
    project = make_project(workers=1)
    backlog = project.home.backlog
    (backlog / "broken.yaml").write_text("title: [unclosed\n")
    (backlog / "typo.yaml").write_text("title: x\npriorty: 1\n")
    (backlog / "prio.yaml").write_text("title: x\npriority: 9\n")
    (backlog / "bad id.yaml").write_text("title: x\n")
    (backlog / "escape.yaml").write_text("title: x\nlocks: [../etc/passwd]\n")
    expect = {
        "broken.yaml": "invalid YAML",
        "typo.yaml": "unknown field: priorty",
        "prio.yaml": "priority: Expected `int` <= 4",
        "bad id.yaml": "file name 'bad id'",
        "escape.yaml": "locks:",
    }
    for name, reason in expect.items():
        error = _wait_file(project.home.rejected_dir / f"{name}.error")
        assert reason in error, (name, error)
        assert len(error.strip().splitlines()) == 1
        assert (project.home.rejected_dir / name).exists(), "the user's file is kept"
    project.ticket("fine", description="write ok.txt fine")
    project.wait_state("fine", "ci_running", "awaiting_approval")


def test_validate_and_enqueue_cli(make_project, tmp_path):
    project = make_project(workers=1, start=False)
    good = tmp_path / "good.yaml"
    good.write_text("title: Good\npriority: 1\nlocks: [src/]\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("title: Bad\npriority: high\n")
    result = project.cli("validate", str(good), str(bad))
    assert result.returncode == 1
    assert f"{bad}: priority: Expected `int`, got `str`" in result.stderr
    assert "good.yaml: ok" in result.stdout
    assert project.cli("enqueue", str(good)).returncode == 0
    assert (project.home.backlog / "good.yaml").read_text() == good.read_text()
    again = project.cli("enqueue", str(good))
    assert again.returncode == 1 and "already exists" in again.stderr


def test_socket_garbage_gets_an_error_and_others_are_unaffected(make_project):
    project = make_project(workers=1)
    path = str(project.home.socket_path)
    with socket.socket(socket.AF_UNIX) as bad, socket.socket(socket.AF_UNIX) as good:
        bad.connect(path)
        good.connect(path)
        bad_reader = bad.makefile("rb")

        def next_reply() -> dict:
            # One-shot (no hello sent): no snapshot and no events, only replies.
            return json.loads(bad_reader.readline())

        assert json.loads(bad_reader.readline())["type"] == "hello"
        bad.sendall(b"this is not json\n")
        reply = next_reply()
        assert reply["type"] == "reply" and reply["ok"] is False
        assert "invalid command" in reply["message"]
        bad.sendall(b'{"type":"launch_missiles","req":"7"}\n')
        reply = next_reply()
        assert reply["ok"] is False and reply["req"] == "7"
        bad.sendall(b'{"type":"approve","ticket":"nope","req":"8"}\n')
        reply = next_reply()
        assert reply == {
            "type": "reply",
            "ok": False,
            "message": "unknown ticket 'nope'",
            "req": "8",
        }
    assert project.send(P.Status()).ok


def test_missing_agent_command_fails_the_attempt_with_the_reason(make_project):
    project = make_project(
        workers=1, agent=["/nonexistent/agent-binary"], extra="max_attempts: 1\n"
    )
    project.ticket("t", description="x")
    snap = project.wait_state("t", "failed")
    (t,) = snap.tickets
    assert "agent command not found: /nonexistent/agent-binary" in t.reason


def test_stop_commits_the_work_and_continue_resumes_on_the_same_branch(make_project):
    project = make_project(workers=1)
    project.ticket(
        "long",
        locks=["notes.txt"],
        description="a1: write notes.txt half done\na1: child 600\na1: spin 600\n"
        "a2: append notes.txt finished",
    )
    snap = project.wait_for(
        lambda s: (
            s.agents[0].pid is not None
            and (project.home.worktrees / "agent-1" / "notes.txt").exists()
        ),
        30,
        "agent running",
    )
    child_pid_file = project.home.runs / "long" / "1" / "child.pid"
    _wait_file(child_pid_file)
    child = int(child_pid_file.read_text())
    result = project.cli("stop", "long")
    assert result.returncode == 0, result.stderr
    project.wait_state("long", "stopped", timeout_s=30)
    assert git(project.home.work, "show", "agent-1/long:notes.txt") == "half done"
    _assert_gone(child)
    assert project.cli("stop", "long").stdout.strip().endswith("already stopped")
    assert project.cli("continue", "long").returncode == 0
    snap = project.wait_state("long", "awaiting_approval", timeout_s=60)
    (t,) = snap.tickets
    assert t.attempt == 2 and t.branch == "agent-1/long"
    assert git(project.home.work, "show", "agent-1/long:notes.txt") == "half donefinished"


def _assert_gone(pid: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        if Path(f"/proc/{pid}/stat").exists() and " Z " in Path(f"/proc/{pid}/stat").read_text():
            return  # a zombie waiting for its (init) parent: it is dead
        time.sleep(0.1)
    raise AssertionError(f"process {pid} still alive")


def test_changes_outside_locks_are_rejected_with_paths_named(make_project):
    project = make_project(workers=1, extra="max_attempts: 1\n")
    project.ticket(
        "sneaky",
        locks=["src/mine.py"],
        description="write src/mine.py x = 1\nwrite src/theirs.py y = 2",
    )
    snap = project.wait_state("sneaky", "failed")
    assert "outside its locks: src/theirs.py" in snap.tickets[0].reason


def test_kill_9_during_an_agent_run_loses_nothing(make_project):
    project = make_project(workers=1)
    project.ticket(
        "survivor", locks=["work.txt"], description="write work.txt before crash\nspin-once 600"
    )
    snap = project.wait_for(lambda s: s.agents[0].pid is not None, 30, "agent running")
    agent_pid = snap.agents[0].pid
    assert agent_pid is not None
    _wait_file(project.home.worktrees / "agent-1" / "work.txt")
    project.kill9()
    project.start()
    _assert_gone(agent_pid)
    # the interrupted attempt is re-run (not counted), on the same branch, with its work
    snap = project.wait_state("survivor", "awaiting_approval", timeout_s=60)
    (t,) = snap.tickets
    assert t.branch == "agent-1/survivor"
    log = git(project.home.work, "log", "--format=%s", "agent-1/survivor")
    assert "saved after a daemon restart" in log
    project.cli("approve", "survivor")
    project.wait_state("survivor", "merged")
    assert "before crash" in git(project.home.repo, "show", "main:work.txt")


def test_ci_result_arriving_while_the_daemon_is_down_is_applied(make_project):
    project = make_project(workers=1, extra="max_attempts: 1\n")
    project.ticket(
        "slow-ci",
        locks=["tests/test_slow.py"],
        description="write tests/test_slow.py import time, unittest\\n"
        "class T(unittest.TestCase):\\n    def test(self):\\n"
        "        time.sleep(3)\\n",
    )
    project.wait_state("slow-ci", "ci_running", timeout_s=30)
    project.stop()
    sha = git(project.home.repo, "rev-parse", "agent-1/slow-ci")
    _wait_file(project.home.ci_status_dir / f"{sha}.json", timeout_s=30)
    project.start()
    project.wait_state("slow-ci", "awaiting_approval", timeout_s=20)


def test_a_second_daemon_refuses_to_start(make_project):
    import subprocess

    project = make_project(workers=1)
    second = subprocess.run(
        [sys.executable, "-m", "orchestrator", "daemon", "--config", str(project.config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert second.returncode == 2
    assert "another daemon" in second.stderr and "already running" in second.stderr
    assert "Traceback" not in second.stderr


def test_sigstopped_agent_goes_stale_and_is_requeued_with_its_work(make_project):
    project = make_project(workers=1, extra="stale_after_s: 2\nstale_grace_s: 1\nmax_attempts: 3\n")
    project.ticket(
        "hung",
        locks=["h.txt"],
        description="a1: write h.txt partial\na1: sigstop\na2: append h.txt done",
    )
    project.wait_for(lambda s: s.tickets and s.tickets[0].attempt == 2, 40, "second attempt")
    assert git(project.home.work, "show", "agent-1/hung:h.txt").startswith("partial")
    project.wait_state("hung", "awaiting_approval", timeout_s=30)
    events = project.cli("events", "--since", "0", "--json")
    kinds = [json.loads(line)["kind"] for line in events.stdout.splitlines()]
    assert "agent.stale" in kinds


def test_agent_calling_heartbeat_is_never_flagged(make_project):
    project = make_project(workers=1, extra="stale_after_s: 2\nstale_grace_s: 1\n")
    project.ticket(
        "thinker",
        locks=["t.txt"],
        description="sleep 1.2\nheartbeat thinking hard\nsleep 1.2\n"
        "heartbeat still thinking\nsleep 1.2\nheartbeat almost\n"
        "write t.txt answer",
    )
    project.wait_state("thinker", "awaiting_approval", timeout_s=40)
    events = project.cli("events", "--since", "0", "--json")
    lines = [json.loads(line) for line in events.stdout.splitlines()]
    assert not [e for e in lines if e["kind"] == "agent.stale"]
    assert any(e["kind"] == "agent.heartbeat" and "thinking hard" in e["message"] for e in lines)
