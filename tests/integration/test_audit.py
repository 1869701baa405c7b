"""Audit trail and TASKS.md against a real daemon: every decision sent from the CLI (a
real subprocess) or another client is a `decision` event with the OS user and the client."""

from __future__ import annotations

import json
import os
import pwd

from orchestrator.shared import protocol as P


def decisions(project) -> list[dict]:
    result = project.cli("events", "--since", "0", "--json")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    return [e for e in events if e["kind"] == "decision"]


def test_every_decision_is_recorded_with_user_and_client(make_project):
    me = pwd.getpwuid(os.getuid()).pw_name
    project = make_project(workers=1)
    project.ticket(
        "t1",
        description="a1: append app.py # t1\na2: append app.py # commented\n",
    )
    # t2 waits for t1: a worker is free while t1 awaits approval (agent slots), and t2
    # must still be running when it is stopped below
    project.ticket("t2", description="sleep 30\n", locks=["other.txt"], depends_on=["t1"])
    project.wait_state("t1", "awaiting_approval")

    assert project.cli("priority", "t2", "0").returncode == 0
    assert project.cli("reject", "t1", "please add a comment").returncode == 0
    project.wait_state("t1", "awaiting_approval")
    assert project.cli("approve", "t1").returncode == 0
    project.wait_state("t1", "merged")
    project.wait_state("t2", "running")
    assert project.send(P.Stop(ticket="t2", client="tui")).ok
    project.wait_state("t2", "stopped")
    assert project.send(P.Continue(ticket="t2")).ok  # a client that does not say who it is
    refused = project.cli("approve", "t2")
    assert refused.returncode == 1

    got = decisions(project)
    summary = [(d["ticket"], d["client"], d["message"].split(" by ")[0]) for d in got]
    assert summary == [
        ("t2", "cli", "t2: priority P0"),
        ("t1", "cli", "t1: reject: please add a comment"),
        ("t1", "cli", "t1: approve"),
        ("t2", "tui", "t2: stop"),
        ("t2", "unknown client", "t2: continue"),
        ("t2", "cli", "t2: approve"),
    ]
    assert all(d["user"] == me for d in got)
    assert (
        got[-1]["message"].endswith(refused.stderr.strip().removeprefix("orchestrator: "))
        and ": refused: " in got[-1]["message"]
    )
    assert ": done: " in got[2]["message"]

    # TASKS.md shows the board, with the reasons
    tasks = project.home.tasks_file

    def board_ready(_snap) -> bool:
        if not tasks.exists():
            return False
        text = tasks.read_text()  # rewritten after a debounce: wait for t2's last change too
        return "## Merged (1)" in text and ("## Queued (1)" in text or "## Running (1)" in text)

    project.wait_for(board_ready, timeout_s=30, what="TASKS.md")
    text = tasks.read_text()
    assert "`t1`" in text and "`t2`" in text
    assert "## Queued (1)" in text or "## Running (1)" in text
