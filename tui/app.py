"""``orchestrator tui``: a Textual dashboard of one daemon, fed by its socket.

The app holds a :class:`~tui.board.Board` (the last snapshot plus events), a
connection worker that reads the socket and posts :mod:`tui.messages`, and a
repaint timer that copies the board into the panels at most every
:data:`REPAINT_INTERVAL_S` — so a burst of events costs one repaint, not one per
event. Keys send commands (docs/protocol.md) and show the daemon's reply.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import ClassVar

import msgspec
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Container, Vertical
from textual.events import DescendantFocus
from textual.widgets import DataTable, Footer

from orchestrator.shared.client import Client
from orchestrator.shared.errors import DaemonNotRunning, OrchestratorError
from orchestrator.shared.models import AgentView, TicketState, TicketView
from orchestrator.shared.protocol import Approve, Continue, Reject, SetPriority, Snapshot, Stop
from orchestrator.tui import git
from orchestrator.tui.board import Board, agent_key
from orchestrator.tui.messages import Connected, DaemonEvents, Disconnected
from orchestrator.tui.widgets.agents_table import AgentsTable
from orchestrator.tui.widgets.banner import Banner
from orchestrator.tui.widgets.board_table import BoardTable
from orchestrator.tui.widgets.detail_pane import DetailPane
from orchestrator.tui.widgets.event_log import EventLog
from orchestrator.tui.widgets.help_screen import HelpScreen
from orchestrator.tui.widgets.reject_screen import RejectScreen
from orchestrator.tui.widgets.status_line import StatusLine
from orchestrator.tui.widgets.text_screen import TextScreen
from orchestrator.tui.widgets.tickets_table import TicketsTable

REPAINT_INTERVAL_S = 0.05
RECONNECT_DELAY_S = 0.5
COMMAND_TIMEOUT_S = 10.0
PROBE_TIMEOUT_S = 5.0
#: The reader yields to the app after this many messages read without waiting.
READ_BATCH = 100

#: Keys that are not app bindings, for the help screen.
_NAVIGATION_KEYS = [
    ("↑ ↓  j k", "move in a table (an agent row selects its ticket)"),
    ("← →", "scroll a table sideways"),
    ("tab  shift+tab", "next / previous panel"),
    ("pgup pgdn", "page through the focused panel"),
    ("escape", "close a dialog or viewer"),
]
_CONTINUE_STATES = frozenset({TicketState.STOPPED, TicketState.FAILED, TicketState.BLOCKED})


class OrchestratorApp(App[int]):
    """The dashboard of the daemon listening on ``socket_path``.

    Args:
        socket_path: the daemon's Unix socket (``Home.socket_path``).
        title: shown in the terminal title; defaults to ``orchestrator``.
        now: the clock used for ages in the panels (Unix seconds); tests freeze it.
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
            tooltip="approve the selected ticket if it awaits "
            "approval; continue it if stopped, failed or blocked",
        ),
        Binding(
            "s",
            "stop_ticket",
            "Stop",
            tooltip="stop the selected ticket (work is kept on its branch)",
        ),
        Binding(
            "r",
            "reject",
            "Reject",
            tooltip="reject the selected ticket with feedback for its next attempt",
        ),
        Binding("d", "diff", "Diff", tooltip="full diff of its branch against main"),
        Binding("l", "log", "Log", tooltip="the agent's full output log"),
        Binding(
            "plus",
            "priority(-1)",
            "Prio↑",
            key_display="+",
            tooltip="more urgent (P2 → P1; P0 is the most urgent)",
        ),
        Binding("minus", "priority(1)", "Prio↓", key_display="-", tooltip="less urgent (P2 → P3)"),
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
    ) -> None:
        super().__init__()
        self.socket_path = Path(socket_path)
        self.now = now
        self.board = Board()
        self.show_finished = False
        if title:
            self.title = title
        self._client: Client | None = None
        self._detail_dirty = True
        # Kept, not queried: app.query_one looks at the top screen, which may be a modal.
        self._banner = Banner(id="banner")
        self._status = StatusLine(id="status")
        self._agents = AgentsTable(id="agents")
        self._tickets = TicketsTable(id="tickets")
        self._detail = DetailPane(id="detail")
        self._events = EventLog(id="log")
        self._active_table: BoardTable = self._agents

    def compose(self) -> ComposeResult:
        yield self._banner
        yield self._status
        with Container(id="body"):
            with Vertical(id="tables"):
                yield self._agents
                yield self._tickets
            with Container(id="bottom"):
                yield self._detail
                yield self._events
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self._agents.border_title = "Agents"
        self._tickets.border_title = "Tickets"
        self._events.border_title = "Events"
        self._agents.focus()
        self.set_interval(REPAINT_INTERVAL_S, self._repaint)
        self.set_interval(1.0, self._age_tick)
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
        self._detail_dirty = True

    def on_daemon_events(self, message: DaemonEvents) -> None:
        message.taken = True
        for item in message.items:
            if isinstance(item, Snapshot):
                self.board.load(item)
                self._detail_dirty = True
                continue
            try:
                self.board.apply(item)
            except Exception as exc:  # one odd event must not kill the app
                self.board.note(self.now(), "tui.error", f"cannot apply event {item.id}: {exc!r}")

    def on_disconnected(self, message: Disconnected) -> None:
        self._banner.show(message.reason)
        if self.board.connected:
            self.board.connected = False
            self.board.note(self.now(), "tui.disconnected", message.reason)

    # --- repainting -----------------------------------------------------------

    def _repaint(self) -> None:
        if not self._detail.is_attached:  # shutting down
            return
        board = self.board
        now = self.now()
        if board.dirty_agents or board.dirty_tickets:
            self._agents.show(list(board.agents.values()), board.tickets, now)
            busy = sum(1 for a in board.agents.values() if a.ticket)
            self._agents.border_title = f"Agents · {busy}/{len(board.agents)} busy"
            self._status.show(board)
        if board.dirty_tickets:
            self._tickets.show(board.queue(finished=self.show_finished))
            self._title_tickets()
        board.dirty_agents = board.dirty_tickets = False
        if board.pending_log:
            entries = list(board.pending_log)
            board.pending_log.clear()
            self._events.add(entries)
        touched = board.take_touched()
        ticket, agent = self.selected()
        keys = {ticket.id if ticket else None, agent_key(agent.name) if agent else None}
        if self._detail_dirty or not touched.isdisjoint(keys):
            self._detail_dirty = False
            output_key = ticket.id if ticket else (agent_key(agent.name) if agent else "")
            self._detail.show(
                ticket, agent, board.output.get(output_key, ()), self._git_dir(ticket), now
            )

    def _title_tickets(self) -> None:
        finished = self.board.finished_count()
        if self.show_finished:
            self._tickets.border_title = f"Tickets · {finished} finished shown (f hides)"
        else:
            self._tickets.border_title = f"Tickets · {finished} finished hidden (f shows)"

    def _age_tick(self) -> None:
        self.board.dirty_agents = True
        self._detail_dirty = True

    # --- selection ------------------------------------------------------------

    def on_descendant_focus(self, event: DescendantFocus) -> None:
        if isinstance(event.widget, BoardTable):
            self._active_table = event.widget
            self._detail_dirty = True

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table is self._active_table:
            self._detail_dirty = True

    def selected(self) -> tuple[TicketView | None, AgentView | None]:
        """The ticket and agent of the row under the cursor of the last focused table.

        An agent row selects its ticket too; a ticket row selects the agent on it.
        """
        table = self._active_table
        key = table.selected_key
        if key is None:
            return None, None
        if table is self._agents:
            return self.board.ticket_of_agent(key), self.board.agents.get(key)
        return self.board.tickets.get(key), self.board.agent_of_ticket(key)

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

    # --- commands ---------------------------------------------------------------

    def _send(self, command: Approve | Continue | Stop | Reject | SetPriority) -> None:
        command = msgspec.structs.replace(command, client="tui")  # recorded (audit trail)
        client = self._client
        if client is None:
            self.notify("not connected to the daemon; nothing was sent", severity="error")
            return
        self._send_command(client, command)

    @work(group="commands", exit_on_error=False)
    async def _send_command(
        self, client: Client, command: Approve | Continue | Stop | Reject | SetPriority
    ) -> None:
        label = f"{type(command).__struct_config__.tag} {command.ticket}"
        try:
            reply = await client.send(command, timeout_s=COMMAND_TIMEOUT_S)
        except TimeoutError:
            self.notify(
                f"no reply within {COMMAND_TIMEOUT_S:.0f} s",
                title=label,
                severity="error",
                markup=False,
            )
            return
        except Exception as exc:  # report any failure, keep running
            self.notify(str(exc) or repr(exc), title=label, severity="error", markup=False)
            return
        text = reply.message or ("done" if reply.ok else "refused")
        self.notify(
            text, title=label, severity="information" if reply.ok else "error", markup=False
        )

    def action_proceed(self) -> None:
        """``c``: approve a ticket awaiting approval, continue a stopped/failed/blocked one."""
        ticket = self._selected_ticket()
        if ticket is None:
            return
        if ticket.state == TicketState.AWAITING_APPROVAL:
            self._send(Approve(ticket=ticket.id))
        elif ticket.state in _CONTINUE_STATES:
            self._send(Continue(ticket=ticket.id))
        else:
            self.notify(
                f"{ticket.id} is {ticket.state}: c approves a ticket awaiting approval "
                "or continues a stopped, failed or blocked one",
                severity="warning",
                markup=False,
            )

    def action_stop_ticket(self) -> None:
        ticket = self._selected_ticket()
        if ticket is not None:
            self._send(Stop(ticket=ticket.id))

    def action_reject(self) -> None:
        ticket = self._selected_ticket()
        if ticket is None:
            return

        def send(feedback: str | None) -> None:
            if feedback:
                self._send(Reject(ticket=ticket.id, feedback=feedback))

        self.push_screen(RejectScreen(ticket.id, ticket.title), send)

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
            TextScreen(f"diff main...{branch}", partial(git.full_diff, git_dir, branch))
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
        self.board.dirty_tickets = True

    def action_help(self) -> None:
        keys = [
            (binding.key_display or binding.key, binding.tooltip or binding.description)
            for binding in (b for b in self.BINDINGS if isinstance(b, Binding))
        ]
        self.push_screen(
            HelpScreen([*keys, *_NAVIGATION_KEYS], about=f"daemon socket: {self.socket_path}")
        )


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


def run(socket_path: Path, *, title: str | None = None) -> int:
    """Run the TUI until ``q``; the daemon keeps running.

    Returns:
        0 after a normal exit; 1 (with one line on stderr) when no daemon answers
        on ``socket_path`` or it speaks another protocol version.
    """
    problem = probe(socket_path)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 1
    app = OrchestratorApp(socket_path, title=title)
    app.run()
    return app.return_code or 0
