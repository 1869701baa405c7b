"""The board: applying snapshots and events, queue order, output tails."""

from __future__ import annotations

from pathlib import Path

import msgspec

from orchestrator.shared.models import AgentState, AgentView, TicketState
from orchestrator.shared.protocol import Event
from orchestrator.tui.board import ATTEMPT_MARK, OUTPUT_LINES, Board, agent_key
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


def test_event_views_replace_and_record_changes() -> None:
    b = board()
    b.take_changes()
    view = msgspec.structs.replace(b.tickets["T-3"], state=TicketState.RUNNING, agent="agent-3")
    agent = AgentView(name="agent-10", state=AgentState.RUNNING, worktree="/w", ticket="T-3")
    b.apply(
        Event(
            id=101,
            ts=NOW,
            kind="ticket.state",
            message="T-3: running",
            ticket="T-3",
            ticket_view=view,
            agent_view=agent,
            leases=[],
        )
    )
    assert b.tickets["T-3"].state == TicketState.RUNNING
    assert list(b.agents)[-1] == "agent-10"  # numeric order, not "agent-1" < "agent-10" < "agent-2"
    changes = b.take_changes()
    assert changes.tickets == {"T-3"} and changes.agents == {"agent-10"}
    assert changes.order and changes.queue and changes.leases
    assert changes.touched == {"T-3", agent_key("agent-10")}
    assert [e.message for e in changes.log] == ["T-3: running"]
    assert changes.log[0].ticket == "T-3"
    assert b.last_event_id == 101

    b.apply(Event(id=102, ts=NOW, kind="ticket.state", ticket_view=view))  # no change
    changes = b.take_changes()
    assert not changes.tickets and not changes.order


def test_why_is_computed_from_the_current_board() -> None:
    b = board()
    assert b.why(b.tickets["T-4"]) == "waits for T-3 (queued)"
    assert b.why(b.tickets["T-3"]) == "lock src/auth/ held by T-1 (running)"
    assert b.why(b.tickets["T-8"]) == "2nd in line for a free agent (2/3 busy)"
    # T-1 releases its lease: T-3 is next for a free agent, without any event about T-3.
    b.apply(Event(id=101, ts=NOW, kind="lease.released", ticket="T-1", leases=[]))
    assert b.why(b.tickets["T-3"]) == "next for a free agent (2/3 busy)"
    # T-3 merges: T-4 no longer waits for it.
    merged = msgspec.structs.replace(b.tickets["T-3"], state=TicketState.MERGED)
    b.apply(Event(id=102, ts=NOW, kind="ticket.state", ticket_view=merged))
    assert b.why(b.tickets["T-4"]) == "2nd in line for a free agent (2/3 busy)"
    assert b.why(b.tickets["T-8"]) == "next for a free agent (2/3 busy)"
    # Other states show the daemon's reason.
    assert b.why(b.tickets["T-7"]) == "attempt 3 failed: CI fail"


def test_a_ticket_shows_only_the_agent_that_works_on_it_now() -> None:
    b = board()
    # T-7 failed on agent-1 earlier; agent-1 works on T-1 now.
    failed = msgspec.structs.replace(b.tickets["T-7"], agent="agent-1")
    b.apply(Event(id=101, ts=NOW, kind="ticket.state", ticket_view=failed))
    assert b.agent_of_ticket("T-7") is None
    assert b.agent_label(b.tickets["T-7"]) == "-"
    assert b.agent_label(b.tickets["T-1"]) == "agent-1"


def test_agent_in_state_counts_from_the_state_change() -> None:
    b = board()
    agent = b.agents["agent-1"]  # attempt started at NOW - 125
    ci = msgspec.structs.replace(
        b.tickets["T-1"], state=TicketState.CI_RUNNING, state_since=NOW - 10
    )
    b.apply(Event(id=101, ts=NOW, kind="ticket.state", ticket_view=ci))
    assert b.agent_since(agent) == NOW - 10
    assert b.agent_since(b.agents["agent-3"]) == NOW - 3700  # idle: its own time


def test_agent_output_is_kept_per_ticket_and_agent_not_logged() -> None:
    b = board()
    b.take_changes()
    for i in range(OUTPUT_LINES + 10):
        b.apply(Event(id=200 + i, ts=NOW, kind="agent.output", agent="agent-1", text=f"l{i}\n"))
    assert len(b.output["T-1"]) == OUTPUT_LINES  # resolved through agent-1's ticket
    assert b.output["T-1"][-1] == f"l{OUTPUT_LINES + 9}"
    assert list(b.output[agent_key("agent-1")])[-10:] == list(b.output["T-1"])[-10:]
    assert not b.take_changes().log


def test_output_marks_each_attempt() -> None:
    b = board()
    b.apply(Event(id=200, ts=NOW, kind="agent.output", ticket="T-1", text="first"))
    second = msgspec.structs.replace(b.tickets["T-1"], attempt=2)
    b.apply(Event(id=201, ts=NOW, kind="ticket.state", ticket_view=second))
    b.apply(Event(id=202, ts=NOW, kind="agent.output", ticket="T-1", text="second"))
    assert list(b.output["T-1"]) == [f"{ATTEMPT_MARK}1", "first", f"{ATTEMPT_MARK}2", "second"]


def test_snapshot_replaces_everything_but_output() -> None:
    b = board()
    b.apply(Event(id=300, ts=NOW, kind="agent.output", ticket="T-1", text="kept"))
    snapshot = make_snapshot(Path("/x"), Path("/x"))
    b.load(msgspec.structs.replace(snapshot, tickets=snapshot.tickets[:1]))
    assert list(b.tickets) == ["T-4"]
    assert list(b.output["T-1"])[-1] == "kept"
    assert b.take_changes().reloaded


def test_matching_filters_by_id_title_state_and_why() -> None:
    b = board()
    tickets = b.queue(finished=False)
    assert [t.id for t in b.matching(tickets, "login")] == ["T-1"]
    assert [t.id for t in b.matching(tickets, "FAILED")] == ["T-7"]
    assert [t.id for t in b.matching(tickets, "held by t-1")] == ["T-3"]


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
