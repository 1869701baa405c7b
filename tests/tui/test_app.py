"""The TUI against the fake daemon of conftest.py: rendering, keys, commands, reconnects."""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
from rich.text import Text
from textual.app import App, ComposeResult
from textual.pilot import Pilot
from textual.widgets import Input

from orchestrator.shared.config import TuiConfig
from orchestrator.shared.errors import TicketError
from orchestrator.shared.models import (
    AgentState,
    CIView,
    ReviewComment,
    ReviewStatus,
    ReviewView,
    TicketState,
    parse_ticket,
)
from orchestrator.shared.protocol import Approve, Continue, Enqueue, Reject, SetPriority, Stop
from orchestrator.tui.app import OrchestratorApp
from orchestrator.tui.board import ordinal
from orchestrator.tui.editor import ERROR_MARK, TEMPLATE, editor_command, read_draft
from orchestrator.tui.notify import Notifier, desktop_available
from orchestrator.tui.widgets.agents_table import AgentsTable
from orchestrator.tui.widgets.banner import Banner
from orchestrator.tui.widgets.board_table import BoardTable
from orchestrator.tui.widgets.confirm_screen import ConfirmScreen
from orchestrator.tui.widgets.detail_pane import DetailPane
from orchestrator.tui.widgets.event_log import EventLog
from orchestrator.tui.widgets.help_screen import HelpScreen
from orchestrator.tui.widgets.new_ticket_screen import NewTicketScreen
from orchestrator.tui.widgets.reject_screen import RejectScreen
from orchestrator.tui.widgets.text_screen import TextScreen
from orchestrator.tui.widgets.tickets_table import TicketsTable
from tests.tui.conftest import NOW

SIZE = (120, 36)


async def until(pilot: Pilot, predicate: Callable[[], object], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {predicate.__doc__ or predicate}")
        await pilot.pause(0.02)


async def connected(pilot: Pilot) -> OrchestratorApp:
    app = pilot.app
    assert isinstance(app, OrchestratorApp)
    await until(pilot, lambda: app.query_one(TicketsTable).row_keys)
    return app


def notifications(app: OrchestratorApp) -> list[tuple[str, str, str]]:
    return [(n.title, n.message, n.severity) for n in app._notifications]


async def select_ticket(pilot: Pilot, ticket_id: str) -> None:
    app = pilot.app
    table = app.query_one(TicketsTable)
    table.focus()
    table.move_cursor(row=table.row_keys.index(ticket_id))
    await pilot.pause()


async def test_snapshot_is_rendered_in_queue_order(make_app, fake_daemon) -> None:
    async with make_app().run_test(size=SIZE) as pilot:
        app = await connected(pilot)
        agents = app.query_one(AgentsTable)
        assert agents.row_keys == ["agent-1", "agent-2", "agent-3"]
        assert str(agents.row_cells("agent-2")[1]) == "awaiting_approval"
        tickets = app.query_one(TicketsTable)
        # Active first, then queued by rank then queued_at, then parked; finished hidden.
        assert tickets.row_keys == ["T-2", "T-1", "T-3", "T-8", "T-4", "T-7", "T-5"]
        # Why is computed from the current board: T-1 holds the lock T-3 needs.
        assert tickets.cell_text("T-3", "reason") == "lock src/auth/ held by T-1 (running)"
        assert tickets.cell_text("T-4", "reason") == "waits for T-3 (queued)"
        assert tickets.cell_text("T-8", "reason") == "2nd in line for a free agent (2/3 busy)"
        assert "1 finished hidden" in str(tickets.border_title)

        await pilot.press("f")
        await until(pilot, lambda: "T-6" in tickets.row_keys)
        await pilot.press("f")
        await until(pilot, lambda: "T-6" not in tickets.row_keys)


async def test_event_replaces_ticket_row(make_app, fake_daemon) -> None:
    async with make_app().run_test(size=SIZE) as pilot:
        app = await connected(pilot)
        tickets = app.query_one(TicketsTable)
        fake_daemon.push(
            fake_daemon.ticket_event(
                "T-3",
                state=TicketState.RUNNING,
                agent="agent-3",
                reason="[/b] not [red]markup",
                title="Fix [bug] in [/] parser",
            )
        )
        await until(pilot, lambda: tickets.cell_text("T-3", "state") == "running")
        assert tickets.cell_text("T-3", "title") == "Fix [bug] in [/] parser"
        assert tickets.cell_text("T-3", "reason") == "[/b] not [red]markup"
        # T-4 waited for T-3: its Why follows T-3's state without an event of its own.
        assert tickets.cell_text("T-4", "reason") == "waits for T-3 (running)"
        await pilot.pause(0.1)  # rendered without a MarkupError
        assert tickets.row_keys.index("T-3") < tickets.row_keys.index("T-8")
        log = app.query_one(EventLog)
        await until(pilot, lambda: any("T-3: running" in line.text for line in log.lines))

        agent = next(a for a in fake_daemon.snapshot.agents if a.name == "agent-3")
        stale = msgspec.structs.replace(agent, state=AgentState.STALE, ticket="T-3")
        fake_daemon.push(fake_daemon.event("agent.stale", "agent-3: stale", agent_view=stale))
        agents = app.query_one(AgentsTable)
        await until(pilot, lambda: str(agents.row_cells("agent-3")[1]) == "stale")
        stale = agents.row_cells("agent-3")[1]
        assert [(span.start, span.end, span.style) for span in stale.spans] == [(0, 5, "bold red")]


async def test_c_approves_awaiting_ticket_and_shows_reply(make_app, fake_daemon) -> None:
    async with make_app().run_test(size=SIZE) as pilot:
        app = await connected(pilot)
        await pilot.press("down")  # agents table: agent-2, working on T-2 (awaiting approval)
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("n")  # not merged
        await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen))
        assert fake_daemon.commands == []
        await pilot.press("c", "y")
        await until(pilot, lambda: fake_daemon.commands)
        assert fake_daemon.commands == [Approve(ticket="T-2", req="c1", client="tui")]
        await until(pilot, lambda: ("approve T-2", "done", "information") in notifications(app))


async def test_c_continues_stopped_ticket_and_error_reply(make_app, fake_daemon) -> None:
    fake_daemon.reply_ok = False
    async with make_app().run_test(size=SIZE) as pilot:
        app = await connected(pilot)
        await select_ticket(pilot, "T-5")
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, RejectScreen))
        await pilot.press("enter")  # feedback is optional when continuing
        await until(pilot, lambda: fake_daemon.commands)
        assert isinstance(fake_daemon.commands[0], Continue)
        assert fake_daemon.commands[0].ticket == "T-5"
        assert fake_daemon.commands[0].feedback == ""
        await until(pilot, lambda: ("continue T-5", "refused", "error") in notifications(app))

        # A queued ticket can be neither approved nor continued: a hint, nothing sent.
        await select_ticket(pilot, "T-3")
        await pilot.press("c")
        await until(pilot, lambda: any("T-3 is queued" in n[1] for n in notifications(app)))
        assert len(fake_daemon.commands) == 1

        # A failed ticket continues with feedback for its next attempt.
        await select_ticket(pilot, "T-7")
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, RejectScreen))
        await pilot.press(*"use pathlib", "enter")
        await until(pilot, lambda: len(fake_daemon.commands) == 2)
        assert fake_daemon.commands[1].feedback == "use pathlib"


async def test_s_stops_ticket_of_selected_agent(make_app, fake_daemon) -> None:
    async with make_app().run_test(size=SIZE) as pilot:
        await connected(pilot)
        await pilot.press("s")  # agents table, first row: agent-1 on T-1
        await until(pilot, lambda: fake_daemon.commands)
        assert isinstance(fake_daemon.commands[0], Stop)
        assert fake_daemon.commands[0].ticket == "T-1"


async def test_r_rejects_with_feedback(make_app, fake_daemon) -> None:
    async with make_app().run_test(size=SIZE) as pilot:
        app = await connected(pilot)
        await select_ticket(pilot, "T-2")
        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, RejectScreen))
        await pilot.press("enter")  # empty feedback is refused, the modal stays
        assert isinstance(app.screen, RejectScreen)
        await pilot.press(*"fix")
        assert app.screen.query_one(Input).value == "fix"
        await pilot.press("enter")
        await until(pilot, lambda: fake_daemon.commands)
        command = fake_daemon.commands[0]
        assert isinstance(command, Reject)
        assert (command.ticket, command.feedback, command.client) == ("T-2", "fix", "tui")
        assert not isinstance(app.screen, RejectScreen)

        await pilot.press("r", "escape")  # cancelled: nothing sent
        await pilot.pause()
        assert len(fake_daemon.commands) == 1

        # A failed ticket cannot be rejected: refused before any dialog.
        await select_ticket(pilot, "T-7")
        await pilot.press("r")
        await until(pilot, lambda: any("T-7 is failed" in n[1] for n in notifications(app)))
        assert not isinstance(app.screen, RejectScreen)


async def test_plus_and_minus_set_priority(make_app, fake_daemon) -> None:
    async with make_app().run_test(size=SIZE) as pilot:
        app = await connected(pilot)
        await select_ticket(pilot, "T-3")  # P1
        await pilot.press("plus")
        await until(pilot, lambda: len(fake_daemon.commands) == 1)
        await pilot.press("minus")
        await until(pilot, lambda: len(fake_daemon.commands) == 2)
        assert fake_daemon.commands[0] == SetPriority(
            ticket="T-3", priority=0, req="c1", client="tui"
        )
        assert fake_daemon.commands[1] == SetPriority(
            ticket="T-3", priority=2, req="c2", client="tui"
        )

        await select_ticket(pilot, "T-2")  # P0 already: a hint, nothing sent
        await pilot.press("plus")
        await until(pilot, lambda: any("already P0" in n[1] for n in notifications(app)))
        assert len(fake_daemon.commands) == 2


async def test_nothing_selected_gives_hint(make_app, fake_daemon) -> None:
    fake_daemon.snapshot = fake_daemon.snapshot.__class__(
        version=fake_daemon.snapshot.version, last_event_id=0, tickets=[], agents=[], leases=[]
    )
    async with make_app().run_test(size=SIZE) as pilot:
        app = pilot.app
        await until(pilot, lambda: app.board.connected)
        for key in "cs":
            await pilot.press(key)
        await until(pilot, lambda: len(notifications(app)) == 2)
        assert all("nothing selected" in n[1] for n in notifications(app))
        assert fake_daemon.commands == []


async def test_detail_shows_output_ci_and_diff(make_app, fake_daemon) -> None:
    async with make_app().run_test(size=SIZE) as pilot:
        app = await connected(pilot)
        detail = app.query_one(DetailPane)
        fake_daemon.push(
            fake_daemon.event(
                "agent.output",
                ticket="T-1",
                agent="agent-1",
                text="compiling\n\x1b[32mtests pass\x1b[0m\n",
            ),
            fake_daemon.event("agent.output", ticket="T-2", agent="agent-2", text="other\n"),
        )
        await until(pilot, lambda: "tests pass" in detail.body_text)
        assert "other" not in detail.body_text
        await until(pilot, lambda: detail.diff_text)
        assert "app.py" in detail.diff_text and "auth.py" in detail.diff_text
        assert "2 files changed" in detail.body_text

        await pilot.press("down")  # agent-2 → T-2 with its CI result
        await until(pilot, lambda: "12 passed in 3.20s" in detail.body_text)
        assert "CI pass" in detail.body_text
        assert "diff unavailable" in detail.body_text  # no branch agent-2/T-2 in the repo
        assert "other" in detail.body_text


async def test_d_shows_full_diff_and_l_the_log(make_app, fake_daemon) -> None:
    async with make_app().run_test(size=SIZE) as pilot:
        app = await connected(pilot)
        await pilot.press("d")  # agent-1 → T-1
        await until(pilot, lambda: isinstance(app.screen, TextScreen))
        screen = app.screen
        await until(pilot, lambda: "def login" in screen.text)
        assert "+TOKEN = 'x'" in screen.text
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, TextScreen))

        await pilot.press("l")
        await until(pilot, lambda: isinstance(app.screen, TextScreen))
        screen = app.screen
        await until(pilot, lambda: "all done" in screen.text)
        assert "\x1b" not in screen.text and "step 1" in screen.text
        await pilot.press("q")  # closes the viewer, not the app
        await until(pilot, lambda: not isinstance(app.screen, TextScreen))
        assert app.is_running


async def test_help_lists_keys(make_app, fake_daemon) -> None:
    async with make_app().run_test(size=SIZE) as pilot:
        app = await connected(pilot)
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen))
        await pilot.press("c")  # app keys are inert under the modal
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, HelpScreen))
        assert fake_daemon.commands == []


async def test_disconnect_shows_banner_and_reconnect_resyncs(make_app, fake_daemon) -> None:
    async with make_app().run_test(size=SIZE) as pilot:
        app = await connected(pilot)
        banner = app.query_one(Banner)
        assert not banner.display

        fake_daemon.stop()
        await until(pilot, lambda: banner.display)
        assert "daemon disconnected" in str(banner.render())
        await pilot.press("s")  # commands while down: an error, no traceback
        await until(pilot, lambda: any("not connected" in n[1] for n in notifications(app)))

        snapshot = fake_daemon.snapshot
        fake_daemon.snapshot = snapshot.__class__(
            version=snapshot.version,
            last_event_id=500,
            agents=snapshot.agents,
            leases=[],
            tickets=[t for t in snapshot.tickets if t.id != "T-3"],
        )
        fake_daemon.start()
        await until(pilot, lambda: not banner.display)
        tickets = app.query_one(TicketsTable)
        await until(pilot, lambda: "T-3" not in tickets.row_keys)
        assert "T-8" in tickets.row_keys

        await pilot.press("s")
        await until(pilot, lambda: fake_daemon.commands)


async def test_burst_of_events_is_absorbed(make_app, fake_daemon) -> None:
    async with make_app().run_test(size=SIZE) as pilot:
        app = await connected(pilot)
        states = [TicketState.CI_RUNNING, TicketState.RUNNING]
        events = [
            fake_daemon.ticket_event("T-1", state=states[i % 2], attempt=1 + i % 2)
            if i % 3
            else fake_daemon.event(
                "agent.output", ticket="T-1", agent="agent-1", text=f"line {i}\n"
            )
            for i in range(5000)
        ]
        events.append(fake_daemon.ticket_event("T-1", state=TicketState.AWAITING_APPROVAL))
        fake_daemon.push(*events)
        tickets = app.query_one(TicketsTable)
        await until(
            pilot, lambda: tickets.cell_text("T-1", "state") == "awaiting_approval", timeout_s=15
        )
        assert app.board.last_event_id == events[-1].id
        assert len(app.query_one(EventLog).lines) <= 1000

        await pilot.press("c", "y")  # agent-1 → T-1, now awaiting approval
        await until(pilot, lambda: fake_daemon.commands)
        assert fake_daemon.commands[0] == Approve(ticket="T-1", req="c1", client="tui")


async def test_compact_layout_at_80x24(make_app, fake_daemon) -> None:
    async with make_app().run_test(size=(80, 24)) as pilot:
        app = await connected(pilot)
        panels = [app.query_one(w) for w in (AgentsTable, TicketsTable, DetailPane, EventLog)]

        def all_visible() -> bool:
            """every panel at least 3 rows high, inside 80 columns"""
            return all(p.region.height >= 3 and p.region.right <= 80 for p in panels)

        await until(pilot, all_visible)
        assert app.query_one(AgentsTable).region.height == 5  # border, header, 3 agents
        await pilot.press("tab")
        assert app.focused is app.query_one(TicketsTable)


async def test_subject_stays_when_the_agent_moves_on(make_app, fake_daemon) -> None:
    async with make_app().run_test(size=SIZE) as pilot:
        app = await connected(pilot)
        await pilot.press("down")  # agent-2 on T-2
        await until(pilot, lambda: app.subject == "T-2")
        target = app.query_one("#target")
        assert "keys act on T-2 (awaiting_approval)" in str(target.render())
        # agent-2 finishes T-2 and takes T-8: the subject is still T-2.
        agent = next(a for a in fake_daemon.snapshot.agents if a.name == "agent-2")
        moved = msgspec.structs.replace(agent, state=AgentState.RUNNING, ticket="T-8")
        fake_daemon.push(
            fake_daemon.ticket_event("T-2", state=TicketState.MERGED),
            fake_daemon.ticket_event("T-8", state=TicketState.RUNNING, agent="agent-2"),
            fake_daemon.event("agent.state", "agent-2: running T-8", agent_view=moved),
        )
        detail = app.query_one(DetailPane)
        await until(pilot, lambda: app.board.agents["agent-2"].ticket == "T-8")
        await pilot.pause(0.1)
        assert app.subject == "T-2"
        assert detail.border_title == "Detail · T-2"
        assert "keys act on T-2 (merged)" in str(target.render())
        await pilot.press("c")  # merged: nothing to approve, nothing sent
        await until(pilot, lambda: any("T-2 is merged" in n[1] for n in notifications(app)))
        assert fake_daemon.commands == []


async def test_failed_ticket_detail_shows_no_other_agents_note(make_app, fake_daemon) -> None:
    async with make_app().run_test(size=SIZE) as pilot:
        app = await connected(pilot)
        # T-7 failed on agent-1 earlier; agent-1 now works on T-1 with note "running tests".
        fake_daemon.push(fake_daemon.ticket_event("T-7", agent="agent-1"))
        await until(pilot, lambda: app.board.tickets["T-7"].agent == "agent-1")
        await select_ticket(pilot, "T-7")
        detail = app.query_one(DetailPane)
        await until(pilot, lambda: detail.border_title == "Detail · T-7")
        assert "running tests" not in detail.body_text
        assert app.query_one(TicketsTable).cell_text("T-7", "agent") == "-"


async def test_slash_filters_tickets(make_app, fake_daemon) -> None:
    async with make_app().run_test(size=SIZE) as pilot:
        app = await connected(pilot)
        tickets = app.query_one(TicketsTable)
        await pilot.press("slash", *"login")
        await until(pilot, lambda: tickets.row_keys == ["T-1"])
        assert "filter 'login'" in str(tickets.border_title)
        await pilot.press("enter")  # keeps the filter, back to the table
        assert app.focused is tickets
        # A ticket that starts matching appears at once.
        fake_daemon.push(fake_daemon.ticket_event("T-8", title="login via CSV"))
        await until(pilot, lambda: tickets.row_keys == ["T-1", "T-8"])
        await pilot.press("slash", "escape")  # clears the filter
        await until(pilot, lambda: len(tickets.row_keys) == 7)


async def test_events_hide_heartbeats_and_filter_by_ticket(make_app, fake_daemon) -> None:
    async with make_app().run_test(size=SIZE) as pilot:
        app = await connected(pilot)
        log = app.query_one(EventLog)
        fake_daemon.push(
            fake_daemon.event("agent.heartbeat", "agent-1: beat", ticket="T-1"),
            fake_daemon.event("ticket.updated", "T-3: priority P1", ticket="T-3"),
            fake_daemon.event("ticket.updated", "T-1: priority P2", ticket="T-1"),
        )

        def text() -> str:
            return "\n".join(line.text for line in log.lines)

        await until(pilot, lambda: "T-1: priority P2" in text())
        assert "beat" not in text()
        await pilot.press("h")
        await until(pilot, lambda: "agent-1: beat" in text())
        await pilot.press("e")  # subject: T-1 (agent-1's ticket)
        await until(pilot, lambda: "T-3: priority" not in text())
        assert "T-1: priority P2" in text() and log.border_title == "Events · T-1 · +heartbeats"
        await pilot.press("e")
        await until(pilot, lambda: "T-3: priority" in text())


async def test_help_and_detail_explain_the_effective_priority(make_app, fake_daemon) -> None:
    async with make_app().run_test(size=SIZE) as pilot:
        app = await connected(pilot)
        await select_ticket(pilot, "T-8")
        detail = app.query_one(DetailPane)
        await until(pilot, lambda: "effective 1.5 after 15m queued" in detail.body_text)
        assert "why: 2nd in line for a free agent" in detail.body_text
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen))
        about = str(app.screen.query_one(".help-about").render())
        assert "P2→1.9" in about and "aging_interval_s" in about


async def test_detail_puts_failing_tests_first_and_newest_attempt_first(
    make_app, fake_daemon
) -> None:
    log_tail = (
        "collected 3 items\ntests/test_a.py .F.\n=== short test summary info ===\n"
        "FAILED tests/test_a.py::test_x - assert 1 == 2\n1 failed, 2 passed\n"
    )
    async with make_app().run_test(size=SIZE) as pilot:
        app = await connected(pilot)
        fake_daemon.push(
            fake_daemon.event("agent.output", ticket="T-1", text="old attempt line"),
            fake_daemon.ticket_event(
                "T-1",
                attempt=2,
                ci=CIView(sha="abcdef0123", status="fail", duration_s=3.0, log_tail=log_tail),
            ),
            fake_daemon.event("agent.output", ticket="T-1", text="new attempt line"),
        )
        detail = app.query_one(DetailPane)
        await until(pilot, lambda: "new attempt line" in detail.body_text)
        body = detail.body_text
        assert "1 failing:\n  FAILED tests/test_a.py::test_x - assert 1 == 2" in body
        assert body.index("FAILED tests/") < body.index("output of attempt 2")
        assert body.index("output of attempt 2") < body.index("output of attempt 1")
        assert body.index("new attempt line") < body.index("old attempt line")


async def test_a_ticket_needing_a_person_rings_and_notifies(fake_daemon) -> None:
    sent: list[tuple[str, str]] = []

    class Recorder(Notifier):
        def desktop(self, summary: str, body: str) -> None:
            sent.append((summary, body))

    app = OrchestratorApp(
        fake_daemon.socket_path, now=lambda: NOW, notifier=Recorder(TuiConfig(), environ={})
    )
    rings: list[int] = []
    app.bell = lambda: rings.append(1)  # type: ignore[method-assign]
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot)
        fake_daemon.push(fake_daemon.ticket_event("T-1", state=TicketState.AWAITING_APPROVAL))
        await until(pilot, lambda: sent)
        assert rings == [1]
        assert "T-1 passed CI and awaits approval" in sent[0][1]
        fake_daemon.push(fake_daemon.ticket_event("T-1", title="retitled"))  # same state
        await pilot.pause(0.2)
        assert len(sent) == 1


def test_desktop_notifications_need_a_display() -> None:
    assert desktop_available({}) is None
    off = Notifier(TuiConfig(notify="off"), environ={"DISPLAY": ":0"})
    assert off.command is None


async def test_10000_tickets_update_by_row(make_app, fake_daemon) -> None:
    base = fake_daemon.ticket("T-8")
    many = [
        msgspec.structs.replace(base, id=f"B-{i:05d}", rank=10 + i, queued_at=NOW - i)
        for i in range(10_000)
    ]
    fake_daemon.snapshot = msgspec.structs.replace(
        fake_daemon.snapshot, tickets=fake_daemon.snapshot.tickets + many
    )
    async with make_app().run_test(size=SIZE) as pilot:
        app = await connected(pilot)
        tickets = app.query_one(TicketsTable)
        await until(pilot, lambda: tickets.row_count == 10_007, timeout_s=30)
        rows_before = dict(tickets.rows)
        fake_daemon.push(
            fake_daemon.ticket_event("T-8", priority=0, effective_priority=0.0, rank=0.0)
        )

        def moved() -> bool:
            """T-8 first in the queue, shown P0"""
            return tickets.row_keys[2] == "T-8" and tickets.cell_text("T-8", "priority") == "P0"

        await until(pilot, moved)
        # The rows were re-sorted and one cell updated; no row was rebuilt.
        assert dict(tickets.rows) == rows_before


async def test_n_writes_a_ticket_that_is_validated_and_enqueued(make_app, fake_daemon) -> None:
    async with make_app().run_test(size=SIZE) as pilot:
        app = await connected(pilot)
        await pilot.press("n")
        await until(pilot, lambda: isinstance(app.screen, NewTicketScreen))
        screen = app.screen
        await pilot.press("enter")  # no title: refused in the form, nothing sent
        error = screen.query_one("#new-error")
        await until(pilot, lambda: "title" in str(error.render()))
        assert isinstance(app.screen, NewTicketScreen) and fake_daemon.commands == []
        await pilot.press(*"Add a --verbose flag")
        screen.query_one("#priority", Input).value = "7"
        await pilot.press("enter")  # priority out of range: refused
        await until(pilot, lambda: "priority" in str(error.render()))
        screen.query_one("#priority", Input).value = "1"
        screen.query_one("#locks", Input).value = "src/, docs/*.md"
        await pilot.press("enter")
        await until(pilot, lambda: fake_daemon.commands)
        command = fake_daemon.commands[0]
        assert isinstance(command, Enqueue) and command.name == "add-a-verbose-flag.yaml"
        ticket = parse_ticket(command.yaml.encode(), Path(command.name))
        assert (ticket.id, ticket.title, ticket.priority) == (
            "add-a-verbose-flag",
            "Add a --verbose flag",
            1,
        )
        assert ticket.locks == ["src", "docs/*.md"]  # normalised as the daemon does
        assert not isinstance(app.screen, NewTicketScreen)


async def test_m_shows_the_merge_queue_in_order(make_app, fake_daemon) -> None:
    async with make_app().run_test(size=SIZE) as pilot:
        app = await connected(pilot)
        tickets = app.query_one(TicketsTable)
        fake_daemon.push(
            fake_daemon.ticket_event("T-1", state=TicketState.CI_RUNNING, state_since=NOW - 5),
            fake_daemon.ticket_event("T-3", state=TicketState.MERGING, state_since=NOW - 1),
        )
        await until(pilot, lambda: app.board.tickets["T-3"].state == TicketState.MERGING)
        await pilot.press("m")
        await until(pilot, lambda: tickets.row_keys == ["T-3", "T-2", "T-1"])
        assert str(tickets.border_title).startswith("Merge queue · 3")
        # T-2 merges: it leaves the merge queue view at once.
        fake_daemon.push(fake_daemon.ticket_event("T-2", state=TicketState.MERGED))
        await until(pilot, lambda: tickets.row_keys == ["T-3", "T-1"])
        await pilot.press("m")
        await until(pilot, lambda: len(tickets.row_keys) == 6)


async def test_review_comments_are_counted_in_the_table_and_listed_in_detail(
    make_app, fake_daemon
) -> None:
    review = ReviewView(
        round=2,
        max_rounds=2,
        sha="abcdef0123",
        status=ReviewStatus.REQUEST_CHANGES,
        comments=[
            ReviewComment(path="src/auth/login.py", line=12, body="check the token expiry"),
            ReviewComment(path="README.md", line=None, body="document the flag"),
        ],
    )
    async with make_app().run_test(size=SIZE) as pilot:
        app = await connected(pilot)
        tickets = app.query_one(TicketsTable)
        assert not tickets.cell_text("T-2", "reason").startswith("[")
        fake_daemon.push(
            fake_daemon.ticket_event(
                "T-2",
                state=TicketState.AWAITING_APPROVAL,
                reason="review: changes requested 2 rounds; needs a person",
                review=review,
            )
        )
        await until(pilot, lambda: tickets.cell_text("T-2", "reason").startswith("[2 comments]"))
        assert "changes requested 2 rounds" in tickets.cell_text("T-2", "reason")
        detail = app.query_one(DetailPane)
        await pilot.press("down")  # agent-2 → T-2
        await until(pilot, lambda: "review round 2 of 2" in detail.body_text)
        body = detail.body_text
        assert "review round 2 of 2: request_changes, 2 comments" in body
        assert "src/auth/login.py:12: check the token expiry" in body
        assert "README.md: document the flag" in body


async def test_rows_changed_off_screen_show_their_change_when_scrolled_into_view(
    make_app, fake_daemon
) -> None:
    """A change to a row below the screen is kept without redrawing the screen, and
    the row shows it (title, priority, its place in line) once it scrolls into view."""
    async with make_app().run_test(size=SIZE) as pilot:
        app = await connected(pilot)
        tickets = app.query_one(TicketsTable)
        fake_daemon.push(
            *(
                fake_daemon.ticket_event(
                    "T-8", id=f"Q-{k:02}", title=f"queued {k}", rank=100.0 + k, queued_at=NOW + k
                )
                for k in range(60)
            )
        )
        await until(pilot, lambda: "Q-59" in tickets.row_keys)
        assert tickets.get_row_index("Q-59") > tickets.size.height  # below the screen
        fake_daemon.push(
            fake_daemon.ticket_event("T-8", id="Q-59", title="renamed far below", rank=100.5),
            fake_daemon.ticket_event("T-8", id="Q-58", title="renamed too", rank=100.0 + 58),
        )
        await until(pilot, lambda: tickets.cell_text("Q-58", "title") == "renamed too")
        tickets.focus()
        tickets.move_cursor(row=tickets.get_row_index("Q-58"))
        await pilot.pause(0.1)
        screen = app.export_screenshot()
        assert "renamed&#160;too" in screen
        assert [str(c) for c in tickets.get_row("Q-58")][5] == "renamed too"
        assert tickets.row_keys.index("Q-59") == tickets.row_keys.index("Q-00") + 1  # moved up
        why = tickets.cell_text("Q-58", "reason")
        position = app.board.queue_position("Q-58")
        queued_before = sum(1 for t in app.board.tickets.values() if t.state == "queued") - 60
        assert position == queued_before + 60 and why.startswith(f"{ordinal(position)} in line")
        assert f"{ordinal(position)}&#160;in&#160;line" in screen


async def test_the_rows_drawn_are_the_rows_held_after_changes_and_moves(
    make_app, fake_daemon
) -> None:
    """The tickets table keeps rendered rows cached by row and drops only those that
    changed or moved: after rounds of renames and moves on and off screen, every line
    drawn shows the row held at its place with its latest title, and a click lands
    on the row drawn under the pointer."""
    async with make_app().run_test(size=SIZE) as pilot:
        app = await connected(pilot)
        tickets = app.query_one(TicketsTable)
        tickets.focus()
        fake_daemon.push(
            *(
                fake_daemon.ticket_event(
                    "T-8", id=f"Q-{k:02}", title=f"queued {k}", rank=100.0 + k, queued_at=NOW + k
                )
                for k in range(40)
            )
        )
        await until(pilot, lambda: "Q-39" in tickets.row_keys)
        rank = {f"Q-{k:02}": 100.0 + k for k in range(40)}
        for step in range(6):
            # Rename two rows on screen and one below it; move one up and one down.
            renames = {"Q-01": step, "Q-03": step, "Q-35": step}
            moves = {f"Q-{(7 * step) % 40:02}": 99.0 - step, f"Q-{(11 * step + 2) % 40:02}": 200.0}
            rank.update(moves)
            fake_daemon.push(
                *(
                    fake_daemon.ticket_event(
                        "T-8",
                        id=tid,
                        title=f"{tid} v{renames.get(tid, 'x')}",
                        rank=rank[tid],
                        queued_at=NOW + int(tid[2:]),
                    )
                    for tid in sorted(set(renames) | set(moves))
                )
            )
            await until(
                pilot, lambda: all(app.board.tickets[t].rank == r for t, r in moves.items())
            )
            await pilot.pause(0.1)
            await until(pilot, lambda: not app._update_pending)
            await pilot.pause(0.05)
            keys = tickets.row_keys
            top = int(tickets.scroll_y)
            header = tickets.header_height
            for y in range(header, tickets.size.height):
                line = tickets.render_line(y).text
                index = top + y - header
                if index >= len(keys):
                    break
                key = keys[index]
                assert key in line, (step, y, key, line)
                title = app.board.tickets[key].title
                assert title[:12] in line, (step, y, key, line)
            # A click on a row drawn selects the row held there (each cell carries
            # its row's index for the mouse: a row that moved must not keep the old).
            border = tickets.content_region.y - tickets.region.y
            for row in (0, 3, 6):
                await pilot.click(TicketsTable, offset=(3, border + tickets.header_height + row))
                await pilot.pause(0.02)
                assert tickets.cursor_row == int(tickets.scroll_y) + row, (step, row)
                assert app.subject == tickets.row_keys[tickets.cursor_row]


# --- n with $EDITOR (tui/editor.py) ----------------------------------------------

#: An "editor": appends the draft's path and text to the log file argv[1], then
#: writes the file argv[2] over the draft (or leaves the draft alone when it is "-").
EDITOR_SCRIPT = """\
import shutil, sys
log, source, draft = sys.argv[1:]
with open(log, "a") as f:
    f.write(draft + "\\n" + open(draft).read() + "=====\\n")
if source != "-":
    shutil.copyfile(source, draft)
"""


def _editor(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str | None) -> Path:
    """Set $EDITOR to the script above, typing ``text``; returns its log."""
    script, log = tmp_path / "editor.py", tmp_path / "editor.log"
    script.write_text(EDITOR_SCRIPT)
    source = "-"
    if text is not None:
        source = str(tmp_path / "typed.yaml")
        Path(source).write_text(text)
    monkeypatch.setenv("EDITOR", f"{sys.executable} {script} {log} {source}")
    return log


async def test_n_with_editor_keeps_an_invalid_draft_then_enqueues_it(
    make_app, fake_daemon, monkeypatch, tmp_path
) -> None:
    """$EDITOR on a template; an invalid ticket is explained in one line and kept
    where the message says, with the reason on top; n opens the same draft again,
    and once the daemon took the ticket the draft is gone."""
    typed = "title: Colour the diff\npriority: 9\ndescription: |\n  Use rich.\n"
    log = _editor(monkeypatch, tmp_path, typed)
    async with make_app().run_test(size=SIZE) as pilot:
        app = await connected(pilot)
        await pilot.press("n")
        await until(pilot, lambda: notifications(app))
        title, message, severity = notifications(app)[-1]
        assert (title, severity) == ("new ticket not enqueued", "error")
        assert "priority" in message and "\n" not in message
        draft = Path(message.split("Kept in ")[1].split(";")[0])
        assert draft.read_text().startswith(f"{ERROR_MARK}priority")
        assert draft.read_text().endswith(typed)  # nothing typed is lost
        assert fake_daemon.commands == [] and not isinstance(app.screen, NewTicketScreen)
        first_seen = log.read_text()
        assert first_seen == f"{draft}\n{TEMPLATE}=====\n"

        _editor(monkeypatch, tmp_path, typed.replace("priority: 9", "priority: 1"))
        await pilot.press("n")
        await until(pilot, lambda: fake_daemon.commands)
        (command,) = fake_daemon.commands
        assert isinstance(command, Enqueue) and command.name == "colour-the-diff.yaml"
        ticket = parse_ticket(command.yaml.encode(), Path(command.name))
        assert (ticket.id, ticket.title) == ("colour-the-diff", "Colour the diff")
        assert ticket.priority == 1
        assert ERROR_MARK not in command.yaml
        # the second run was given the kept draft, reason on top
        assert log.read_text()[len(first_seen) :].startswith(f"{draft}\n{ERROR_MARK}priority")
        await until(pilot, lambda: not draft.exists())


async def test_n_with_editor_left_as_the_template_sends_nothing(
    make_app, fake_daemon, monkeypatch, tmp_path
) -> None:
    log = _editor(monkeypatch, tmp_path, None)
    async with make_app().run_test(size=SIZE) as pilot:
        app = await connected(pilot)
        await pilot.press("n")
        await until(pilot, lambda: notifications(app))
        assert "cancelled" in notifications(app)[-1][1]
        draft = Path(log.read_text().splitlines()[0])
        assert not draft.exists()  # the draft is removed
        assert fake_daemon.commands == []


async def test_n_with_editor_keeps_the_draft_when_the_daemon_refuses(
    make_app, fake_daemon, monkeypatch, tmp_path
) -> None:
    _editor(monkeypatch, tmp_path, "id: T-1\ntitle: Again\n")
    fake_daemon.reply_ok = False
    async with make_app().run_test(size=SIZE) as pilot:
        app = await connected(pilot)
        await pilot.press("n")
        await until(pilot, lambda: any("kept in" in m for _, m, _ in notifications(app)))
        (command,) = fake_daemon.commands
        assert isinstance(command, Enqueue) and command.name == "T-1.yaml"
        message = next(m for _, m, _ in notifications(app) if "kept in" in m)
        draft = Path(message.split("kept in ")[1].split(";")[0])
        assert draft.read_text() == "id: T-1\ntitle: Again\n"
        assert app._draft == draft  # n opens it again


async def test_n_with_an_editor_that_cannot_run_opens_the_form(
    make_app, fake_daemon, monkeypatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("VISUAL", "/nonexistent/editor --wait")
    # Drafts go to a temporary directory of this test's own: /tmp is shared with the tests
    # running at the same time, which make and remove drafts of their own there.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    async with make_app().run_test(size=SIZE) as pilot:
        app = await connected(pilot)
        await pilot.press("n")
        await until(pilot, lambda: isinstance(app.screen, NewTicketScreen))
        assert "cannot run /nonexistent/editor" in notifications(app)[-1][1]
        assert list(tmp_path.glob("orchestrator-ticket-*")) == [], "no draft left behind"


def test_a_draft_without_an_id_is_named_after_its_title_and_errors_do_not_pile_up(
    tmp_path: Path,
) -> None:
    draft = tmp_path / "d.yaml"
    draft.write_text("title: Fix the README\nlocks: [/abs]\n")
    for _ in range(2):
        with pytest.raises(TicketError, match="^locks: "):
            read_draft(draft)
    lines = draft.read_text().splitlines()
    assert lines[0].startswith(f"{ERROR_MARK}locks: ") and lines[1:] == [
        "title: Fix the README",
        "locks: [/abs]",
    ]
    draft.write_text(draft.read_text().replace("[/abs]", "[README.md]"))
    result = read_draft(draft)
    assert result is not None and result.name == "fix-the-readme.yaml"
    assert result.yaml == "title: Fix the README\nlocks: [README.md]\n"
    draft.write_text(TEMPLATE)
    assert read_draft(draft) is None
    assert editor_command({"EDITOR": "code --wait", "VISUAL": ""}) == ["code", "--wait"]
    assert editor_command({"VISUAL": "vi"}) == ["vi"] and editor_command({}) is None


# --- BoardTable's render caches (tui/widgets/board_table.py) -------------------------


class _PlainTable(BoardTable):
    COLUMNS = (("ID", "id"), ("Title", "title"))


class _TableApp(App[None]):
    def compose(self) -> ComposeResult:
        yield _PlainTable(id="plain")


async def test_a_click_after_a_reorder_selects_the_row_drawn_there() -> None:
    """Rows keep their cached renders across a reorder unless they moved: a cell
    carries its row's index for the mouse, so the moved rows' renders are dropped
    and a click on a moved row selects it, not the row that was there before."""
    app = _TableApp()
    async with app.run_test(size=(60, 16)) as pilot:
        table = app.query_one(_PlainTable)
        keys = [f"R-{k}" for k in range(30)]
        table.set_rows([(key, (key, f"title {key}")) for key in keys])
        await pilot.pause(0.05)
        moved = keys[5:0:-1] + keys[:1] + keys[6:]  # rows 0..5 reversed: R-5 first
        table.reorder(moved)
        await pilot.pause(0.05)
        for row in range(6):
            await pilot.click(_PlainTable, offset=(2, table.header_height + row))
            await pilot.pause(0.02)
            assert table.selected_key == moved[row], row
            assert moved[row] in table.render_line(table.header_height + row).text
        # R-20 is drawn (and cached), scrolled away, changed off screen, scrolled back.
        table.scroll_to(y=14, animate=False)
        await pilot.pause(0.05)
        table.scroll_to(y=0, animate=False)
        await pilot.pause(0.05)
        table.upsert("R-20", ("R-20", "TITLE R-20"))  # same width
        await pilot.pause(0.05)
        table.scroll_to(y=14, animate=False)
        await pilot.pause(0.05)
        drawn = [table.render_line(y).text for y in range(table.size.height)]
        assert any("TITLE R-20" in line for line in drawn), drawn


async def test_text_that_looks_like_markup_is_shown_as_written() -> None:
    """A table holds text cells as console markup (strings the garbage collector does
    not track): a title with brackets and backslashes is escaped, and a styled cell
    keeps its style."""
    app = _TableApp()
    async with app.run_test(size=(60, 8)) as pilot:
        table = app.query_one(_PlainTable)
        title = r"fix [bold]x[/bold] and C:\dir\ [link=x]"
        table.set_rows([("R-1", ("R-1", title)), ("R-2", ("R-2", Text("red", style="red")))])
        await pilot.pause(0.05)
        assert table.cell_text("R-1", "title") == title
        assert title in table.render_line(table.header_height).text
        (span,) = table.row_cells("R-2")[1].spans
        assert (span.start, span.end, span.style) == (0, 3, "red")
