"""The board: applying snapshots and events, queue order, output tails."""

from __future__ import annotations

from pathlib import Path

import msgspec

from orchestrator.shared.models import AgentState, AgentView, TicketState
from orchestrator.shared.protocol import Event
from orchestrator.tui.board import OUTPUT_LINES, Board, agent_key
from orchestrator.tui.format import age
from tests.tui.conftest import NOW, make_snapshot


def board() -> Board:
    b = Board()
    b.load(make_snapshot(Path("/nonexistent"), Path("/nonexistent")))
    return b


def test_queue_order_and_finished_toggle() -> None:
    b = board()
    order = ["T-2", "T-1", "T-3", "T-8", "T-4", "T-7", "T-5"]
    assert [t.id for t in b.queue(finished=False)] == order
    assert [t.id for t in b.queue(finished=True)][-1] == "T-6"
    assert b.finished_count() == 1
    assert list(b.agents) == ["agent-1", "agent-2", "agent-3"]


def test_event_views_replace_and_mark_dirty() -> None:
    b = board()
    b.dirty_tickets = b.dirty_agents = False
    b.take_touched()
    view = msgspec.structs.replace(b.tickets["T-3"], state=TicketState.RUNNING, agent="agent-3")
    agent = AgentView(name="agent-10", state=AgentState.RUNNING, worktree="/w", ticket="T-3")
    b.apply(
        Event(
            id=101,
            ts=NOW,
            kind="ticket.state",
            message="T-3: running",
            ticket_view=view,
            agent_view=agent,
            leases=[],
        )
    )
    assert b.tickets["T-3"].state == TicketState.RUNNING
    assert list(b.agents)[-1] == "agent-10"  # numeric order, not "agent-1" < "agent-10" < "agent-2"
    assert b.dirty_tickets and b.dirty_agents
    assert b.take_touched() == {"T-3", agent_key("agent-10")}
    assert [e.message for e in b.pending_log] == ["T-3: running"]
    assert b.last_event_id == 101

    b.dirty_tickets = False
    b.apply(Event(id=102, ts=NOW, kind="ticket.state", ticket_view=view))  # no change
    assert not b.dirty_tickets


def test_agent_output_is_kept_per_ticket_and_agent_not_logged() -> None:
    b = board()
    b.pending_log.clear()
    for i in range(OUTPUT_LINES + 10):
        b.apply(Event(id=200 + i, ts=NOW, kind="agent.output", agent="agent-1", text=f"l{i}\n"))
    assert len(b.output["T-1"]) == OUTPUT_LINES  # resolved through agent-1's ticket
    assert b.output["T-1"][-1] == f"l{OUTPUT_LINES + 9}"
    assert list(b.output[agent_key("agent-1")]) == list(b.output["T-1"])
    assert not b.pending_log


def test_snapshot_replaces_everything_but_output() -> None:
    b = board()
    b.apply(Event(id=300, ts=NOW, kind="agent.output", ticket="T-1", text="kept"))
    snapshot = make_snapshot(Path("/x"), Path("/x"))
    b.load(msgspec.structs.replace(snapshot, tickets=snapshot.tickets[:1]))
    assert list(b.tickets) == ["T-4"]
    assert list(b.output["T-1"]) == ["kept"]


def test_age() -> None:
    assert [age(s) for s in (0, 59, 60, 3599, 3600, 3725, 90_000)] == [
        "0s",
        "59s",
        "1m",
        "59m",
        "1h00",
        "1h02",
        "1d01",
    ]
