"""``orchestrator tui``: a Textual dashboard of one daemon, fed by its socket.

The app holds a :class:`~tui.board.Board` (the last snapshot plus events) and a
connection worker that reads the socket and posts :mod:`tui.messages`. Each
batch of events is applied to the board, and then only what changed is
redrawn: rows by key, cells by column (:class:`~tui.widgets.board_table.BoardTable`).
There is no repaint timer; a 1 s clock only advances the ages shown.

Actions act on the *subject*: the ticket shown in Detail, named in the line
above the footer. It is set when the cursor moves, and stays put when the
agent under the cursor moves on to another ticket.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import ClassVar

import msgspec
from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult, SuspendNotSupported
from textual.binding import Binding, BindingType
from textual.containers import Container, Vertical
from textual.events import DescendantFocus, Key, Resize
from textual.widgets import DataTable, Footer, Input, Static

from orchestrator.shared.client import Client
from orchestrator.shared.config import TuiConfig
from orchestrator.shared.errors import DaemonNotRunning, OrchestratorError, TicketError
from orchestrator.shared.models import (
    FINAL_STATES,
    AgentView,
    TicketState,
    TicketView,
)
from orchestrator.shared.protocol import (
    Answer,
    Approve,
    Continue,
    Enqueue,
    Event,
    Reject,
    Reply,
    SetPriority,
    Snapshot,
    Stop,
)
from orchestrator.tui import git
from orchestrator.tui.board import MERGE_STATES, Board, Changes, agent_key
from orchestrator.tui.editor import Draft, editor_command, new_draft, read_draft
from orchestrator.tui.format import set_border_title
from orchestrator.tui.messages import Connected, DaemonEvents, Disconnected
from orchestrator.tui.notify import Notifier, agent_needs_person, needs_person
from orchestrator.tui.widgets.agents_table import AgentsTable
from orchestrator.tui.widgets.banner import Banner
from orchestrator.tui.widgets.board_table import BoardTable
from orchestrator.tui.widgets.confirm_screen import ConfirmScreen
from orchestrator.tui.widgets.detail_pane import DetailPane
from orchestrator.tui.widgets.event_log import EventLog
from orchestrator.tui.widgets.help_screen import HelpScreen
from orchestrator.tui.widgets.new_ticket_screen import NewTicketScreen
from orchestrator.tui.widgets.reject_screen import RejectScreen
from orchestrator.tui.widgets.status_line import StatusLine
from orchestrator.tui.widgets.text_screen import TextScreen
from orchestrator.tui.widgets.tickets_table import TicketsTable

AGE_TICK_S = 1.0
#: Events arriving within this long of each other are drawn together: at 1,000
#: events/s the panels are updated ~20 times a second, not once per socket read.
UPDATE_DELAY_S = 0.05
RECONNECT_DELAY_S = 0.5
COMMAND_TIMEOUT_S = 10.0
#: How long ``orchestrator tui`` waits for a daemon that is starting.
STARTUP_WAIT_S = 30.0
#: The reader yields to the app after this many messages read without waiting.
READ_BATCH = 100

#: Keys that are not app bindings, for the help screen.
_NAVIGATION_KEYS = [
    ("↑ ↓  j k", "move in a table; the row under the cursor becomes the subject"),
    ("home end", "first / last row"),
    ("← →", "scroll a table sideways (the Ticket column stays)"),
    ("tab  shift+tab", "next / previous panel"),
    ("pgup pgdn", "page through the focused panel"),
    ("escape", "close a dialog or viewer; clear the / filter"),
]
_PRIORITY_HELP = (
    "P2→1.9: P2 is the ticket's priority (P0 most urgent); 1.9 its effective priority now. "
    "A queued ticket gains one level per aging_interval_s (default 300 s) of waiting, "
    "so old tickets are not starved; the queue is taken in effective-priority order."
)
#: Keys whose binding is disabled for some states; pressing them then explains why.
_REFUSABLE = {"c": "proceed", "r": "reject", "s": "stop_ticket", "a": "answer"}
_CONTINUE_STATES = frozenset({TicketState.STOPPED, TicketState.FAILED, TicketState.BLOCKED})


class OrchestratorApp(App[int]):
    """The dashboard of the daemon listening on ``socket_path``.

    Args:
        socket_path: the daemon's Unix socket (``Home.socket_path``).
        title: shown in the terminal title; defaults to ``orchestrator``.
        now: the clock used for ages in the panels (Unix seconds); tests freeze it.
        settings: the ``tui`` section of config.yaml (confirmation, notifications).
        notifier: sends desktop notifications; built from ``settings`` when None.
    """

    CSS_PATH = "app.tcss"
    TITLE = "orchestrator"
    ENABLE_COMMAND_PALETTE = False
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (160, "-wide")]
    # The tooltips are the help screen's descriptions.
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            "c",
            "proceed",
            "Continue",
            tooltip="approve the subject if it awaits approval (asks first: approving merges); "
            "continue it if stopped, failed or blocked (with optional feedback)",
        ),
        Binding(
            "s",
            "stop_ticket",
            "Stop",
            tooltip="stop the subject (work is kept on its branch)",
        ),
        Binding(
            "r",
            "reject",
            "Reject",
            tooltip="send a ticket awaiting approval back with feedback for its next attempt",
        ),
        Binding(
            "a",
            "answer",
            "Answer",
            show=False,  # offered in Detail ("press a to answer") and in the help screen
            tooltip="answer the question the subject's agent asked (needs_input)",
        ),
        Binding("d", "diff", "Diff", tooltip="full diff of its branch against main (coloured)"),
        Binding("l", "log", "Log", tooltip="the agent's full output log, followed live"),
        Binding(
            "plus",
            "priority(-1)",
            "Prio↑",
            key_display="+",
            tooltip="more urgent (P2 → P1; P0 is the most urgent)",
        ),
        Binding(
            "minus",
            "priority(1)",
            "Prio↓",
            key_display="-",
            show=False,
            tooltip="less urgent (P2 → P3)",
        ),
        Binding(
            "n",
            "new_ticket",
            "New",
            tooltip="write a new ticket ($VISUAL/$EDITOR if set, else a form); enqueued if valid",
        ),
        Binding("slash", "search", "Find", key_display="/", tooltip="filter tickets by text"),
        Binding(
            "e",
            "events_scope",
            "Events",
            show=False,
            tooltip="events: all tickets, or only the subject's",
        ),
        Binding(
            "h",
            "toggle_heartbeats",
            "Beats",
            show=False,
            tooltip="show or hide heartbeat events (hidden by default)",
        ),
        Binding(
            "m",
            "toggle_merge_view",
            "Merges",
            tooltip="the merge queue: tickets merging, awaiting approval or in CI, in order",
        ),
        Binding(
            "f",
            "toggle_finished",
            "Finished",
            tooltip="show or hide merged, cancelled and rejected tickets",
        ),
        Binding("question_mark", "help", "Help", key_display="?", tooltip="this screen"),
        Binding("q", "quit", "Quit", tooltip="quit the TUI (the daemon keeps running)"),
    ]

    def __init__(
        self,
        socket_path: Path,
        *,
        title: str | None = None,
        now: Callable[[], float] = time.time,
        settings: TuiConfig | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        super().__init__()
        self.socket_path = Path(socket_path)
        self.now = now
        self.settings = settings or TuiConfig()
        self.notifier = notifier or Notifier(self.settings)
        self.board = Board()
        self.show_finished = False
        self.filter_text = ""
        self.merge_view = False
        """The tickets panel shows only the merge queue (``m``)."""
        self.subject: str | None = None
        """Ticket id the actions act on (or ``@agent-K`` for an agent without a ticket)."""
        if title:
            self.title = title
        self._client: Client | None = None
        # Kept, not queried: app.query_one looks at the top screen, which may be a modal.
        self._banner = Banner(id="banner")
        self._status = StatusLine(id="status")
        self._agents = AgentsTable(self.board, id="agents")
        self._tickets = TicketsTable(self.board, id="tickets")
        self._detail = DetailPane(id="detail")
        self._events = EventLog(id="log")
        self._search = Input(placeholder="filter tickets (enter keeps, escape clears)", id="search")
        self._target = Static("", id="target", markup=False)
        self._active_table: BoardTable = self._agents
        self._tickets_wide = False
        self._update_pending = False
        self._bindings_key: tuple[bool, TicketState | None] = (True, None)
        self._draft: Path | None = None
        """A new ticket written in $EDITOR and not enqueued yet (:mod:`tui.editor`)."""

    def compose(self) -> ComposeResult:
        yield self._banner
        yield self._status
        with Container(id="body"):
            with Vertical(id="tables"):
                yield self._agents
                yield self._search
                yield self._tickets
            with Container(id="bottom"):
                yield self._detail
                yield self._events
        yield self._target
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self._agents.border_title = "Agents"
        self._tickets.border_title = "Tickets"
        self._search.display = False
        self._agents.focus()
        self._show_target()
        self._events.border_title = self._events.title()
        self.set_interval(AGE_TICK_S, self._age_tick)
        self._connection()

    # --- the connection -----------------------------------------------------

    @work(exclusive=True, group="conn")
    async def _connection(self) -> None:
        """Connect, stream, and on any failure retry every :data:`RECONNECT_DELAY_S`."""
        while True:
            client = Client(self.socket_path)
            try:
                await client.connect()
                assert client.hello is not None and client.snapshot is not None
                self._client = client
                self.post_message(Connected(client.hello, client.snapshot))
                batch: DaemonEvents | None = None
                read = 0
                async for message in client.messages():
                    if batch is None or batch.taken:
                        batch = DaemonEvents()
                        self.post_message(batch)
                    batch.items.append(message)
                    read += 1
                    if read % READ_BATCH == 0:
                        # Buffered lines never make readline wait; let the app run.
                        await asyncio.sleep(0)
                reason = "the connection ended"
            except DaemonNotRunning:
                reason = f"nothing answers on {self.socket_path}"
            except (OrchestratorError, OSError) as exc:
                reason = str(exc)
            except Exception as exc:  # a reader bug must not kill the app
                reason = f"unexpected error: {exc!r}"
            finally:
                self._client = None
                await client.close()
            self.post_message(Disconnected(reason))
            await asyncio.sleep(RECONNECT_DELAY_S)

    def on_connected(self, message: Connected) -> None:
        board = self.board
        board.hello = message.hello
        board.connected = True
        board.load(message.snapshot)
        board.note(
            self.now(),
            "tui.connected",
            f"connected to daemon pid {message.hello.pid} ({message.hello.home})",
        )
        self._banner.hide()
        self._update_views()

    def on_daemon_events(self, message: DaemonEvents) -> None:
        message.taken = True
        board = self.board
        alerts: list[str] = []
        for item in message.items:
            if isinstance(item, Snapshot):
                board.load(item)
                continue
            try:
                alerts += self._alerts(item)
                board.apply(item)
            except Exception as exc:  # one odd event must not kill the app
                board.note(self.now(), "tui.error", f"cannot apply event {item.id}: {exc!r}")
        if not self._update_pending:
            self._update_pending = True
            self.set_timer(UPDATE_DELAY_S, self._flush_updates)
        if alerts:
            self._alert(alerts)

    def on_disconnected(self, message: Disconnected) -> None:
        self._banner.show(message.reason)
        if self.board.connected:
            self.board.connected = False
            self.board.note(self.now(), "tui.disconnected", message.reason)
            self._update_views()

    # --- notifications ----------------------------------------------------------

    def _alerts(self, event: Event) -> list[str]:
        out = []
        if event.ticket_view is not None:
            why = needs_person(self.board.tickets.get(event.ticket_view.id), event.ticket_view)
            if why:
                out.append(why)
        if event.agent_view is not None:
            why = agent_needs_person(self.board.agents.get(event.agent_view.name), event.agent_view)
            if why:
                out.append(why)
        return out

    def _alert(self, alerts: list[str]) -> None:
        """A ticket needs a person: bell, toast, desktop notification (per settings)."""
        if self.settings.bell:
            self.bell()
        more = f"\n… and {len(alerts) - 5} more" if len(alerts) > 5 else ""
        text = "\n".join(alerts[:5]) + more
        self.notify(text, title="needs you", severity="warning", markup=False)
        self._desktop_notify(text)

    @work(thread=True, group="notify", exit_on_error=False)
    def _desktop_notify(self, text: str) -> None:
        self.notifier.desktop("orchestrator: a ticket needs you", text)

    # --- updating the panels ----------------------------------------------------------

    def _visible(self, ticket: TicketView) -> bool:
        if self.merge_view and ticket.state not in MERGE_STATES:
            return False
        if not self.show_finished and ticket.state in FINAL_STATES:
            return False
        if self.filter_text:
            return bool(self.board.matching([ticket], self.filter_text))
        return True

    def _visible_order(self) -> list[str]:
        if not self.merge_view and not self.filter_text:
            return self.board.queue_ids(finished=self.show_finished)
        if self.merge_view:
            tickets = self.board.merge_queue()
        else:
            tickets = self.board.queue(finished=self.show_finished)
        if self.filter_text:
            tickets = self.board.matching(tickets, self.filter_text)
        return [t.id for t in tickets]

    def _rebuild_tickets(self) -> None:
        board = self.board
        rows = [self._tickets.row(board.tickets[key]) for key in self._visible_order()]
        self._tickets.set_rows(rows)
        self._title_tickets()

    def _flush_updates(self) -> None:
        self._update_pending = False
        self._update_views()

    def _update_views(self) -> None:
        """Apply what changed on the board to the panels; nothing else is redrawn."""
        if not self._detail.is_attached:  # shutting down
            return
        changes = self.board.take_changes()
        if changes.empty:
            return
        board = self.board
        now = self.now()
        if changes.reloaded:
            self._rebuild_tickets()
            self._agents.set_rows([self._agents.row(a, now) for a in board.agents.values()])
            _freeze_heap()
        else:
            self._update_tickets(changes)
            agents = set(changes.agents)
            for ticket_id in changes.tickets:  # an agent row shows its ticket's state and CI
                agent = board.agent_of_ticket(ticket_id)
                if agent is not None:
                    agents.add(agent.name)
            for name in agents:
                if name in board.agents:
                    self._agents.upsert(*self._agents.row(board.agents[name], now))
        if changes.reloaded or changes.tickets or changes.agents or changes.leases:
            self._tickets.refresh_lazy()
            busy = sum(1 for a in board.agents.values() if a.ticket)
            set_border_title(self._agents, f"Agents · {busy}/{len(board.agents)} busy")
            self._status.show(board)
        if changes.log:
            self._events.add(changes.log)
        self._tickets.set_widths()  # a longer ticket id widens its column
        if self.subject is None:
            self._pick_subject()
        if (
            changes.reloaded
            or self.subject in changes.touched
            or self._subject_agent_touched(changes)
        ):
            self._show_detail()
            self._show_target()

    def _update_tickets(self, changes: Changes) -> None:
        table, board = self._tickets, self.board
        added = False
        for ticket_id in changes.tickets:
            ticket = board.tickets[ticket_id]
            if self._visible(ticket):
                added |= table.upsert(*table.row(ticket))
            else:
                table.remove_key(ticket_id)
        if added or changes.order:
            table.reorder(self._visible_order())
        if changes.tickets:
            self._title_tickets()

    def _subject_agent_touched(self, changes: Changes) -> bool:
        agent = self.board.agent_of_ticket(self.subject) if self.subject else None
        return agent is not None and agent_key(agent.name) in changes.touched

    def _title_tickets(self) -> None:
        finished = self.board.finished_count()
        shown = "shown (f hides)" if self.show_finished else "hidden (f shows)"
        title = f"Tickets · {finished} finished {shown}"
        if self.merge_view:
            title = f"Merge queue · {self._tickets.row_count} on their way to main (m: all tickets)"
        if self.filter_text:
            title += f" · filter {self.filter_text!r}: {self._tickets.row_count} match"
        set_border_title(self._tickets, title)

    def _age_tick(self) -> None:
        """Ages advance: the agents' time cells and the detail head (a handful of cells)."""
        now = self.now()
        for agent in self.board.agents.values():
            self._agents.upsert(*self._agents.row(agent, now))
        if self.subject is not None:
            self._show_detail()

    # --- the subject -------------------------------------------------------------

    def on_descendant_focus(self, event: DescendantFocus) -> None:
        if isinstance(event.widget, BoardTable):
            self._active_table = event.widget
            self._pick_subject()

    @on(DataTable.RowHighlighted)
    def _row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table is self._active_table:
            self._pick_subject()

    def _pick_subject(self) -> None:
        """The subject becomes what is under the cursor of the focused table, now."""
        if not self.screen_stack:  # a highlight delivered while the app closes
            return
        table = self._active_table
        key = table.selected_key
        subject: str | None = None
        if key is not None and table is self._agents:
            agent = self.board.agents.get(key)
            subject = (agent.ticket or agent_key(agent.name)) if agent else None
        elif key is not None:
            subject = key
        if subject != self.subject:
            self.subject = subject
            self._show_detail()
            self._show_target()

    def selected(self) -> tuple[TicketView | None, AgentView | None]:
        """The subject ticket and the agent working on it now (or the subject agent)."""
        subject = self.subject
        if subject is None:
            return None, None
        if subject.startswith("@"):
            agent = self.board.agents.get(subject[1:])
            if agent is not None and agent.ticket:  # the idle agent got a ticket meanwhile
                return None, agent
            return None, agent
        return self.board.tickets.get(subject), self.board.agent_of_ticket(subject)

    def _show_detail(self) -> None:
        ticket, agent = self.selected()
        key = ticket.id if ticket else (agent_key(agent.name) if agent else "")
        why = self.board.why(ticket) if ticket else ""
        self._detail.show(
            ticket,
            agent,
            self.board.output.get(key, ()),
            self._git_dir(ticket),
            self.now(),
            why=why,
        )
        # The footer is recomposed on refresh_bindings: only when what it offers changes.
        bindings_key = (self.subject is None, ticket.state if ticket else None)
        if bindings_key != self._bindings_key:
            self._bindings_key = bindings_key
            self.refresh_bindings()

    def _show_target(self) -> None:
        ticket, agent = self.selected()
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(" keys act on ", style="dim")
        if ticket is not None:
            text.append(ticket.id, style="bold")
            text.append(f" ({ticket.state})")
        elif agent is not None:
            text.append(f"{agent.name} (no ticket)", style="bold")
        else:
            text.append("nothing: select a ticket or an agent", style="italic")
        self._target.update(text, layout=False)  # one fixed line: no relayout

    def _selected_ticket(self) -> TicketView | None:
        ticket, agent = self.selected()
        if ticket is None:
            if agent is not None:
                self.notify(f"{agent.name} has no ticket", severity="warning", markup=False)
            else:
                self.notify(
                    "nothing selected: pick a ticket or an agent with ↑/↓ first", severity="warning"
                )
        return ticket

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Offer only what the subject's state allows (others are shown disabled)."""
        ticket = self.board.tickets.get(self.subject or "")
        if ticket is None:
            return True  # pressing it explains what to select
        state = ticket.state
        if action == "proceed":
            return state == TicketState.AWAITING_APPROVAL or state in _CONTINUE_STATES or None
        if action == "reject":
            return state == TicketState.AWAITING_APPROVAL or None
        if action == "answer":
            return state == TicketState.NEEDS_INPUT or None
        if action == "stop_ticket":
            return (
                state not in FINAL_STATES
                and state
                not in (
                    TicketState.STOPPED,
                    TicketState.FAILED,
                    TicketState.MERGING,
                )
                or None
            )
        return True

    def _git_dir(self, ticket: TicketView | None) -> Path | None:
        agent = self.board.agent_of_ticket(ticket.id) if ticket else None
        home = self.board.hello.home if self.board.hello else None
        return git.pick_git_dir(
            [
                agent.worktree if agent else None,
                Path(home) / "work" if home else None,
                *(a.worktree for a in self.board.agents.values()),
            ]
        )

    def on_resize(self, event: Resize) -> None:
        if self._tickets.wide != self._tickets_wide:  # state labels depend on the width
            self._tickets_wide = self._tickets.wide
            self._rebuild_tickets()
        self._tickets.set_widths()

    # --- commands ---------------------------------------------------------------

    def _send(
        self, command: Approve | Continue | Stop | Reject | SetPriority | Enqueue | Answer
    ) -> None:
        command = msgspec.structs.replace(command, client="tui")  # recorded (audit trail)
        client = self._client
        if client is None:
            self.notify("not connected to the daemon; nothing was sent", severity="error")
            return
        self._send_command(client, command)

    @work(group="commands", exit_on_error=False)
    async def _send_command(
        self,
        client: Client,
        command: Approve | Continue | Stop | Reject | SetPriority | Enqueue | Answer,
    ) -> None:
        await self._command(client, command)

    async def _command(
        self,
        client: Client,
        command: Approve | Continue | Stop | Reject | SetPriority | Enqueue | Answer,
    ) -> Reply | None:
        """Send ``command``, show the daemon's answer; the reply, or None when none came."""
        subject = command.name if isinstance(command, Enqueue) else command.ticket
        label = f"{type(command).__struct_config__.tag} {subject}"
        try:
            reply = await client.send(command, timeout_s=COMMAND_TIMEOUT_S)
        except TimeoutError:
            self.notify(
                f"no reply within {COMMAND_TIMEOUT_S:.0f} s",
                title=label,
                severity="error",
                markup=False,
            )
            return None
        except Exception as exc:  # report any failure, keep running
            self.notify(str(exc) or repr(exc), title=label, severity="error", markup=False)
            return None
        text = reply.message or ("done" if reply.ok else "refused")
        self.notify(
            text, title=label, severity="information" if reply.ok else "error", markup=False
        )
        return reply

    def action_proceed(self) -> None:
        """``c``: approve the subject if it awaits approval (after a yes), continue it if
        stopped, failed or blocked (with optional feedback for the next attempt)."""
        ticket = self._selected_ticket()
        if ticket is None:
            return
        ticket_id = ticket.id
        if ticket.state == TicketState.AWAITING_APPROVAL:
            if not self.settings.confirm_merge:
                self._send(Approve(ticket=ticket_id))
                return

            def approve(yes: bool | None) -> None:
                if yes:
                    self._send(Approve(ticket=ticket_id))

            question = f"Merge {ticket_id} ({ticket.title}) into main?"
            self.push_screen(ConfirmScreen(f"Approve {ticket_id}", question), approve)
        elif ticket.state in _CONTINUE_STATES:

            def resume(feedback: str | None) -> None:
                if feedback is not None:
                    self._send(Continue(ticket=ticket_id, feedback=feedback))

            screen = RejectScreen(ticket_id, ticket.title, verb="Continue", required=False)
            self.push_screen(screen, resume)
        else:
            self.notify(
                f"{ticket_id} is {ticket.state}: c approves a ticket awaiting approval "
                "or continues a stopped, failed or blocked one",
                severity="warning",
                markup=False,
            )

    def action_stop_ticket(self) -> None:
        ticket = self._selected_ticket()
        if ticket is None:
            return
        if self.check_action("stop_ticket", ()) is None:
            self.notify(
                f"{ticket.id} is {ticket.state}: there is nothing to stop",
                severity="warning",
                markup=False,
            )
            return
        self._send(Stop(ticket=ticket.id))

    def action_reject(self) -> None:
        """``r``: only a ticket awaiting approval can be rejected; refuse others at once."""
        ticket = self._selected_ticket()
        if ticket is None:
            return
        if ticket.state != TicketState.AWAITING_APPROVAL:
            hint = " (c continues it with feedback)" if ticket.state in _CONTINUE_STATES else ""
            self.notify(
                f"{ticket.id} is {ticket.state}: only a ticket awaiting approval can be "
                f"rejected{hint}",
                severity="warning",
                markup=False,
            )
            return
        ticket_id = ticket.id

        def send(feedback: str | None) -> None:
            if feedback:
                self._send(Reject(ticket=ticket_id, feedback=feedback))

        self.push_screen(RejectScreen(ticket_id, ticket.title), send)

    def action_answer(self) -> None:
        """``a``: answer the question of the subject's agent (a ticket in needs_input)."""
        ticket = self._selected_ticket()
        if ticket is None:
            return
        if ticket.state != TicketState.NEEDS_INPUT:
            self.notify(
                f"{ticket.id} is {ticket.state}: only a ticket whose agent asked a question "
                "(needs_input) can be answered",
                severity="warning",
                markup=False,
            )
            return
        ticket_id = ticket.id

        def send(answer: str | None) -> None:
            if answer:
                self._send(Answer(ticket=ticket_id, text=answer))

        screen = RejectScreen(
            ticket_id,
            ticket.title,
            verb="Answer",
            prompt=f"The agent asks:\n{ticket.question or '(no question text)'}",
            placeholder="your answer",
        )
        self.push_screen(screen, send)

    def action_priority(self, delta: int) -> None:
        """``+``/``-``: one step more/less urgent (lower number = more urgent, 0..4)."""
        ticket = self._selected_ticket()
        if ticket is None:
            return
        priority = min(4, max(0, ticket.priority + delta))
        if priority == ticket.priority:
            self.notify(f"{ticket.id} is already P{priority}", severity="warning", markup=False)
            return
        self._send(SetPriority(ticket=ticket.id, priority=priority))

    def action_diff(self) -> None:
        ticket = self._selected_ticket()
        if ticket is None:
            return
        agent = self.board.agent_of_ticket(ticket.id)
        branch = ticket.branch or (agent.branch if agent else None)
        git_dir = self._git_dir(ticket)
        if branch is None or git_dir is None:
            why = "has no branch yet" if branch is None else "has no worktree to run git in"
            self.notify(f"{ticket.id} {why}", severity="warning", markup=False)
            return
        self.push_screen(
            TextScreen(f"diff main...{branch}", partial(git.full_diff, git_dir, branch), diff=True)
        )

    def action_log(self) -> None:
        ticket = self._selected_ticket()
        if ticket is None:
            return
        if not ticket.log_file:
            self.notify(f"{ticket.id} has no agent log yet", severity="warning", markup=False)
            return
        self.push_screen(
            TextScreen(ticket.log_file, partial(git.read_log_tail, ticket.log_file), tail=True)
        )

    def action_toggle_finished(self) -> None:
        self.show_finished = not self.show_finished
        self._rebuild_tickets()

    def action_new_ticket(self) -> None:
        """``n``: a new ticket, written in ``$VISUAL``/``$EDITOR`` when one is set (a draft
        from a template, :mod:`tui.editor`), else in a form; a valid one is sent to
        the daemon (``enqueue``)."""
        try:
            editor = editor_command()
        except ValueError as exc:
            self.notify(f"$VISUAL/$EDITOR: {exc}; the form instead", severity="warning")
            editor = None
        if editor is not None and self._edit_draft(editor):
            return

        def enqueue(result: tuple[str, str] | None) -> None:
            if result is not None:
                name, yaml = result
                self._send(Enqueue(name=name, yaml=yaml))

        self.push_screen(NewTicketScreen(), enqueue)

    def _edit_draft(self, editor: list[str]) -> bool:
        """Run ``editor`` on the draft (the kept one, else a new one) with the terminal
        handed over, then enqueue it if valid. False: no editor could run here."""
        kept = self._draft is not None and self._draft.exists()
        try:
            draft = self._draft if kept and self._draft is not None else new_draft()
        except OSError as exc:
            self.notify(f"cannot write a draft: {exc.strerror or exc}; the form instead")
            return False
        argv = [*editor, str(draft)]
        try:
            try:
                with self.suspend():
                    code = subprocess.run(argv, check=False).returncode
            except SuspendNotSupported:
                if not self.is_headless:
                    raise
                # No terminal to hand over (tests, a headless run): the editor runs as is.
                code = subprocess.run(argv, stdin=subprocess.DEVNULL, check=False).returncode
        except (SuspendNotSupported, OSError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "no terminal to run it in"
            self.notify(f"cannot run {editor[0]}: {why or exc}; the form instead")
            if not kept:
                draft.unlink(missing_ok=True)
            return False
        self._draft = draft
        if code != 0:
            self.notify(
                f"{editor[0]} exited with {code}; nothing was sent, your text is kept in "
                f"{draft} (n opens it again)",
                severity="warning",
                markup=False,
            )
            return True
        try:
            result = read_draft(draft)
        except (TicketError, OSError) as exc:
            self.notify(
                f"{exc}. Kept in {draft}; n opens it again",
                title="new ticket not enqueued",
                severity="error",
                markup=False,
            )
            return True
        if result is None:
            self._drop_draft(draft)
            self.notify("new ticket cancelled (the template was left as it was)")
            return True
        self._enqueue_draft(draft, result)
        return True

    def _drop_draft(self, draft: Path) -> None:
        draft.unlink(missing_ok=True)
        if self._draft == draft:
            self._draft = None

    @work(group="commands", exit_on_error=False)
    async def _enqueue_draft(self, draft: Path, result: Draft) -> None:
        """Send the draft; delete it once the daemon took the ticket, else keep it."""
        client = self._client
        reply = None
        if client is not None:
            command = Enqueue(name=result.name, yaml=result.yaml, client="tui")
            reply = await self._command(client, command)
        else:
            self.notify("not connected to the daemon; nothing was sent", severity="error")
        if reply is not None and reply.ok:
            self._drop_draft(draft)
        else:
            self.notify(f"your ticket is kept in {draft}; n opens it again", markup=False)

    def action_toggle_merge_view(self) -> None:
        self.merge_view = not self.merge_view
        self._rebuild_tickets()

    def action_search(self) -> None:
        """``/``: show the filter field; typing filters the tickets panel."""
        self._search.display = True
        self._search.focus()

    @on(Input.Changed, "#search")
    def _search_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value.strip()
        self._rebuild_tickets()

    @on(Input.Submitted, "#search")
    def _search_submitted(self, event: Input.Submitted) -> None:
        if not self.filter_text:
            self._search.display = False
        self._tickets.focus()

    def on_key(self, event: Key) -> None:
        key = event.key
        action = _REFUSABLE.get(key)
        if (
            action is not None
            and self.check_action(action, ()) is None
            and self.screen is self.screen_stack[0]
        ):
            # Disabled for the subject's state (dimmed in the footer): say why, send nothing.
            event.stop()
            getattr(self, f"action_{action}")()
            return
        if key == "escape" and self._search.display:
            self._search.value = ""
            self._search.display = False
            self._tickets.focus()

    def action_events_scope(self) -> None:
        """``e``: events of every ticket, or only of the subject ticket."""
        ticket, _ = self.selected()
        scope = None if self._events.ticket is not None or ticket is None else ticket.id
        self._events.set_filter(self.board.log, ticket=scope)
        self._events.border_title = self._events.title()

    def action_toggle_heartbeats(self) -> None:
        self._events.set_filter(self.board.log, heartbeats=not self._events.heartbeats)
        self._events.border_title = self._events.title()

    def action_help(self) -> None:
        keys = [
            (binding.key_display or binding.key, binding.tooltip or binding.description)
            for binding in (b for b in self.BINDINGS if isinstance(b, Binding))
        ]
        about = f"daemon socket: {self.socket_path}\n{_PRIORITY_HELP}"
        self.push_screen(HelpScreen([*keys, *_NAVIGATION_KEYS], about=about))


PROBE_TIMEOUT_S = 5.0


def probe(socket_path: Path, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """Say hello to the daemon once; return why that failed (one line), or None."""

    async def hello() -> None:
        client = Client(socket_path)
        try:
            async with asyncio.timeout(timeout_s):
                await client.connect()
        finally:
            # Not `async with Client(...)`: a failed hello would leave its socket open.
            await client.close()

    try:
        asyncio.run(hello())
    except OrchestratorError as exc:
        return " ".join(str(exc).split())
    except TimeoutError:
        return f"the daemon on {socket_path} did not answer within {timeout_s:.0f} s"
    return None


def wait_for_daemon(
    socket_path: Path, wait_s: float = STARTUP_WAIT_S, interval_s: float = RECONNECT_DELAY_S
) -> str | None:
    """Probe until the daemon answers; a daemon that is starting gets ``wait_s`` seconds.

    Only "nothing answers yet" is retried; a daemon of another protocol version
    or one that does not answer its hello fails at once.

    Returns:
        None when the daemon answered, else why not (one line).
    """
    deadline = time.monotonic() + wait_s
    said = False
    while True:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.connect(str(socket_path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            if time.monotonic() >= deadline:
                return (
                    f"no daemon answers on {socket_path} ({exc.strerror}; waited {wait_s:.0f} s); "
                    "start it with `orchestrator daemon --config CONFIG`"
                )
            if not said:
                print(
                    f"waiting up to {wait_s:.0f} s for the daemon on {socket_path}…",
                    file=sys.stderr,
                )
                said = True
            time.sleep(interval_s)
            continue
        return probe(socket_path)


def run(
    socket_path: Path,
    *,
    title: str | None = None,
    settings: TuiConfig | None = None,
    wait_s: float = STARTUP_WAIT_S,
) -> int:
    """Run the TUI until ``q``; the daemon keeps running.

    Waits up to ``wait_s`` for a daemon that is starting (its socket not there yet).

    Returns:
        0 after a normal exit; 1 (with one line on stderr) when no daemon answers
        on ``socket_path`` in time or it speaks another protocol version.
    """
    problem = wait_for_daemon(socket_path, wait_s)
    if problem is not None:
        print(f"orchestrator: {problem}", file=sys.stderr)
        return 1
    app = OrchestratorApp(socket_path, title=title, settings=settings)
    app.run()
    return app.return_code or 0


def _freeze_heap() -> None:
    """Exempt what a snapshot loaded from the cyclic garbage collector's scans.

    A board of 10,000 tickets and the tables' rows are a few million objects; every
    full collection walked them all (0.4-1 s on the benchmark's machine, with the
    screen frozen meanwhile: the key-to-screen p99). They live until the next snapshot
    and hold no reference cycles that matter, so they are collected once and then
    frozen (:func:`gc.freeze`, the pattern the CPython docs describe for long-lived
    startup state); what is replaced later is still freed by reference counting.
    """
    gc.collect()
    gc.freeze()
