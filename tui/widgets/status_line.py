"""One line under the banner: which daemon, and how many tickets need what."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from orchestrator.shared.models import TicketState
from orchestrator.tui.board import Board


class StatusLine(Static):
    """``queued · awaiting approval · failed · approval mode · home (pid)``."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("", id=id, markup=False)
        self._text = Text()

    def show(self, board: Board) -> None:
        text = Text(no_wrap=True, overflow="ellipsis")
        if board.hello is None:
            text.append("connecting…", style="dim")
        else:
            counts: dict[TicketState, int] = {}
            for ticket in board.tickets.values():
                counts[ticket.state] = counts.get(ticket.state, 0) + 1
            text.append(f"queued {counts.get(TicketState.QUEUED, 0)}")
            asking = counts.get(TicketState.NEEDS_INPUT, 0)
            if asking:
                text.append(f" · questions {asking}", style="bold magenta")
            awaiting = counts.get(TicketState.AWAITING_APPROVAL, 0)
            if awaiting:
                text.append(f" · awaiting approval {awaiting}", style="bold green")
            failed = counts.get(TicketState.FAILED, 0)
            if failed:
                text.append(f" · failed {failed}", style="bold red")
            text.append(f" · approval {board.approval} · ", style="dim")
            text.append(board.hello.home, style="bold")
            text.append(f" (pid {board.hello.pid})", style="dim")
        if text != self._text:
            self._text = text
            self.update(text, layout=False)  # one fixed line: no relayout
