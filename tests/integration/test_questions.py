"""Agents that ask a person (issue 13 item 2), end to end: a real daemon, real scripted
agents running the real `orchestrator ask`, and a person answering with the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from tests.integration.conftest import git


def _events(project) -> list[dict]:
    result = project.cli("events", "--since", "0", "--json")
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def _on_main(project, path: str) -> str:
    return git(project.home.repo, "show", f"main:{path}")


def _ask(project, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`orchestrator ask` run the way an agent runs it (its config from $ORCH_CONFIG)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", "ask", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, "ORCH_CONFIG": str(project.config), **env},
    )


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("orchestrator: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_an_agent_asks_a_person_answers_and_the_answer_is_merged(make_project):
    project = make_project(workers=1, approval="auto")
    project.ticket("t1", description="ask colour.txt Which colour?\\nred or blue\n")
    snap = project.wait_state("t1", "needs_input")
    (view,) = [t for t in snap.tickets if t.id == "t1"]
    assert view.question == "Which colour?\nred or blue" and view.asked_at
    assert view.reason == "asks: Which colour? red or blue"
    assert snap.agents[0].state == "needs_input" and snap.agents[0].ticket == "t1"

    listed = project.cli("questions", "--json")
    assert listed.returncode == 0, listed.stderr
    (question,) = json.loads(listed.stdout)
    assert question == {
        "ticket": "t1",
        "title": "ticket t1",
        "question": "Which colour?\nred or blue",
        "asked_at": view.asked_at,
        "agent": "agent-1",
        "waiting": True,
    }
    text = project.cli("questions").stdout
    assert "t1 (ticket t1)" in text and "    red or blue" in text
    status = project.cli("status").stdout
    assert "needs_input" in status and "asks: Which colour? red or blue" in status
    assert '"question":"Which colour?\\nred or blue"' in project.cli("status", "--json").stdout
    tasks = project.home.tasks_file
    project.wait_for(
        lambda _s: tasks.exists() and "## Needs input (1)" in tasks.read_text(),
        timeout_s=30,
        what="TASKS.md",
    )
    assert "asks: Which colour? red or blue" in tasks.read_text()

    # bad input: one line each, nothing changes
    empty = project.cli("answer", "t1", "   ")
    assert empty.returncode == 1 and "the answer is empty" in _one_error_line(empty)
    outsider = _ask(project, "me too?", env={})
    assert outsider.returncode == 2 and "ORCH_TICKET_ID" in _one_error_line(outsider)
    forged = _ask(project, "me too?", env={"ORCH_TICKET_ID": "t1", "ORCH_RUN_ID": "0" * 16})
    assert forged.returncode == 1 and "ORCH_RUN_ID" in _one_error_line(forged)
    assert project.states()["t1"] == "needs_input"

    answered = project.cli("answer", "t1", "blue")
    assert answered.returncode == 0, answered.stderr
    project.wait_state("t1", "merged")
    assert _on_main(project, "colour.txt") == "blue"

    late = project.cli("answer", "t1", "red")
    assert late.returncode == 1 and "no open question" in _one_error_line(late)
    done = _ask(project, "again?", env={"ORCH_TICKET_ID": "t1", "ORCH_RUN_ID": "0" * 16})
    assert done.returncode == 1
    assert "t1 is merged; only the agent of a running ticket can ask" in _one_error_line(done)
    assert project.cli("questions").stdout.strip() == "no open questions"
    events = _events(project)
    kinds = [e["kind"] for e in events]
    assert kinds.index("question.asked") < kinds.index("question.answered")
    asked = next(e for e in events if e["kind"] == "question.asked")
    assert asked["text"] == "Which colour?\nred or blue" and asked["agent"] == "agent-1"
    decisions = [e for e in events if e["kind"] == "decision"]
    assert [d["message"].split(" by ")[0].rstrip() for d in decisions] == [
        "t1: answer:",
        "t1: answer: blue",
        "t1: answer: red",
    ]
    assert [d["client"] for d in decisions] == ["cli"] * 3
    assert ": done: " in decisions[1]["message"] and ": refused: " in decisions[2]["message"]


def test_an_ask_killed_before_the_answer_gets_it_when_asked_again(make_project):
    """Agent CLIs cut off long tool calls: the dropped `ask` leaves the question open,
    and the same question asked again after the answer gets that answer at once."""
    project = make_project(workers=1, approval="auto")
    project.ticket("t1", description="ask-killed 1 colour.txt Which colour?\n")
    project.wait_state("t1", "needs_input")
    log = project.home.runs / "t1" / "1" / "agent.log"
    project.wait_for(lambda _s: "ask: killed" in log.read_text(), what="the ask to be killed")
    assert project.states()["t1"] == "needs_input"  # the drop changes nothing
    assert project.cli("answer", "t1", "teal").returncode == 0
    project.wait_state("t1", "merged", timeout_s=90)
    assert _on_main(project, "colour.txt") == "teal"
    kinds = [e["kind"] for e in _events(project) if e["kind"].startswith("question.")]
    assert kinds == ["question.asked", "question.answered"]


def test_ask_times_out_with_exit_3_and_needs_input_is_never_stale(make_project):
    project = make_project(workers=2, approval="auto", extra="stale_after_s: 2\nstale_grace_s: 1\n")
    project.ticket("patient", description="ask patient.txt Shall I wait?\n", locks=["patient.txt"])
    project.ticket(
        "hasty", description="ask-timeout 1 hasty.txt Anyone there?\n", locks=["hasty.txt"]
    )
    project.wait_state("hasty", "merged", timeout_s=90)
    assert _on_main(project, "hasty.txt") == "exit 3"
    project.wait_state("patient", "needs_input")
    # far past stale_after_s + stale_grace_s while it waits for a person
    time.sleep(6)
    assert project.states()["patient"] == "needs_input"
    assert project.cli("answer", "patient", "yes").returncode == 0
    project.wait_state("patient", "merged", timeout_s=90)
    assert _on_main(project, "patient.txt") == "yes"
    events = _events(project)
    stale = [e for e in events if e["kind"] in ("agent.stale", "agent.stopping")]
    assert stale == [], stale
    withdrawn = [e for e in events if e["kind"] == "question.withdrawn"]
    assert [e["ticket"] for e in withdrawn] == ["hasty"]


def test_the_question_survives_a_restart_and_the_answer_reaches_the_next_attempt(make_project):
    project = make_project(workers=1, approval="auto")
    project.ticket("t1", description="ask colour.txt Which colour?\n")
    project.wait_state("t1", "needs_input")
    project.kill9()  # the agent's `ask` loses its daemon; recovery ends what is left
    down = _ask(project, "anyone?", env={"ORCH_TICKET_ID": "t1", "ORCH_RUN_ID": "0" * 16})
    assert down.returncode == 4 and "no daemon answers" in _one_error_line(down)
    project.start()
    snap = project.wait_state("t1", "needs_input")
    (view,) = [t for t in snap.tickets if t.id == "t1"]
    assert view.question == "Which colour?" and view.agent is None
    assert "the answer goes to its next attempt" in view.reason
    (question,) = json.loads(project.cli("questions", "--json").stdout)
    assert question["waiting"] is False and question["agent"] == "agent-1"

    assert project.cli("answer", "t1", "green").returncode == 0
    snap = project.wait_state("t1", "merged", timeout_s=90)
    assert _on_main(project, "colour.txt") == "green"
    (view,) = [t for t in snap.tickets if t.id == "t1"]
    assert view.attempt == 1  # the interrupted attempt was re-run, not counted twice
    feedback = (project.home.runs / "t1" / "1" / "feedback.md").read_text()
    assert "Which colour?" in feedback and "The answer:\ngreen" in feedback
    log = (project.home.runs / "t1" / "1" / "agent.log").read_text()
    assert "ask: the answer came with the feedback" in log
