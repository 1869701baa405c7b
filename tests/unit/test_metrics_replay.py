"""daemon/metrics.py replay rules and daemon/homefiles.py renderings, on synthetic events."""

from __future__ import annotations

import csv
from pathlib import Path

from orchestrator.daemon import metrics as M
from orchestrator.daemon.homefiles import render_tasks
from orchestrator.shared.models import CIView, TicketState, TicketView
from orchestrator.shared.protocol import Event
from orchestrator.shared.usage import Usage

S = TicketState


def ev(ts: float, kind: str, state: S, attempt: int, message: str = "", **view) -> Event:
    return Event(
        id=0,
        ts=ts,
        kind=kind,
        message=message,
        ticket="t",
        ticket_view=TicketView(
            id="t",
            title="T",
            state=state,
            priority=2,
            effective_priority=2.0,
            attempt=attempt,
            agent=view.pop("agent", "agent-1"),
            **view,
        ),
    )


def test_replay_books_each_phase_to_its_attempt():
    events = [
        ev(0, "ticket.queued", S.QUEUED, 0, agent=None),
        ev(10, "ticket.state", S.RUNNING, 1),
        ev(40, "ticket.state", S.CI_RUNNING, 1),
        ev(100, "ci.result", S.CI_RUNNING, 1, ci=CIView(sha="a", status="fail", duration_s=55)),
        ev(100, "attempt.failed", S.CI_RUNNING, 1, "t: attempt 1 failed: CI fail (exit 1)"),
        ev(100, "ticket.state", S.RUNNING, 2),
        ev(130, "ticket.state", S.CI_RUNNING, 2),
        ev(190, "ci.result", S.CI_RUNNING, 2, ci=CIView(sha="b", status="pass", duration_s=50)),
        ev(190, "ticket.state", S.AWAITING_APPROVAL, 2),
        ev(490, "ticket.state", S.MERGING, 2),
        ev(495, "ticket.state", S.MERGED, 2),
    ]
    rows = M.replay("t", events, now=1000)
    one, two = rows[1], rows[2]
    assert (one.queue_wait_s, one.agent_s, one.ci_runs, one.ci_s) == (10, 30, 1, 55)
    assert one.outcome == "failed" and one.reason == "CI fail (exit 1)" and one.ended_at == 100
    assert (two.queue_wait_s, two.agent_s, two.ci_runs, two.ci_pass) == (0, 30, 1, 1)
    assert (two.approval_wait_s, two.merge_wait_s) == (300, 5)
    assert two.outcome == "merged" and two.ended_at == 495 and two.started_at == 100
    assert one.review_rounds == two.review_rounds == 0
    assert one.agent == two.agent == "agent-1"  # known from the first view that names it


def test_replay_restart_and_stop_and_open_attempt():
    events = [
        ev(0, "ticket.queued", S.QUEUED, 0),
        ev(5, "ticket.state", S.RUNNING, 1),
        ev(20, "ticket.state", S.QUEUED, 0, reason="daemon restarted"),  # attempt not counted
        ev(50, "ticket.state", S.RUNNING, 1),
        ev(60, "ticket.state", S.STOPPED, 1, reason="stopped by request"),
        ev(100, "ticket.state", S.QUEUED, 1, reason="continued after stopped"),
        ev(130, "ticket.state", S.RUNNING, 2),
    ]
    rows = M.replay("t", events, now=200)
    assert rows[1].queue_wait_s == 5 + 30 and rows[1].agent_s == 15 + 10
    assert rows[1].outcome == "stopped" and rows[1].reason == "stopped by request"
    assert rows[2].queue_wait_s == 30 and rows[2].agent_s == 70  # open until `now`
    assert rows[2].outcome == "running" and rows[2].ended_at is None


def test_ticket_csv_has_one_header_and_whole_rows(tmp_path: Path):
    tm = M.TicketMetrics(
        ticket="t",
        title='a "quoted", title\nwith a line break',
        state="merged",
        priority=1,
        queued_at=1000.0,
        ended_at=1600.0,
        attempts=[
            M.AttemptMetrics(ticket="t", attempt=1, agent_s=30.0, usage=Usage(cost_usd=0.5)),
            M.AttemptMetrics(ticket="t", attempt=2, agent_s=20.0, ci_runs=1, usage=Usage()),
        ],
    )
    path = tmp_path / "metrics" / "tickets.csv"
    M.append_ticket_row(path, tm)
    M.append_ticket_row(path, tm)
    rows = list(csv.reader(path.read_text().splitlines()))
    assert rows[0] == M.TICKET_COLUMNS and len(rows) == 3
    row = dict(zip(M.TICKET_COLUMNS, rows[1], strict=True))
    assert row["title"] == 'a "quoted", title with a line break'
    assert (row["attempts"], row["agent_s"], row["ci_runs"]) == ("2", "50.000", "1")
    assert row["total_s"] == "600.000" and float(row["cost_usd"]) == 0.5
    assert row["enqueued_at"] == "1970-01-01T00:16:40Z"


def view(tid: str, state: S, **kw) -> TicketView:
    return TicketView(
        id=tid, title=f"title {tid}", state=state, priority=2, effective_priority=2.0, **kw
    )


def test_tasks_board_groups_by_state_with_reasons():
    text = render_tasks(
        [
            view("q2", S.QUEUED, rank=5.0, reason="lock app.py held by r1"),
            view("q1", S.QUEUED, rank=1.0),
            view("r1", S.RUNNING, agent="agent-1", attempt=1, state_since=990.0),
            view("f1", S.FAILED, reason="CI fail | exit 1", attempt=3, max_attempts=3),
        ],
        now=1000.0,
    )
    assert text.index("## Running (1)") < text.index("## Queued (2)") < text.index("## Failed")
    assert text.index("`q1`") < text.index("`q2`")  # queue order
    assert "lock app.py held by r1" in text and "CI fail \\| exit 1" in text
    assert "| agent-1 | 1/3 | 10 s |" in text
    assert "4 tickets: 1 running, 2 queued, 1 failed." in text
    assert "## Merged" not in text
