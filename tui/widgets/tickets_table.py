"""The tickets panel: active tickets, the queue in the daemon's order, then parked ones."""

from __future__ import annotations

from typing import Any

from rich.text import Text

from orchestrator.shared.models import TicketState, TicketView
from orchestrator.tui.board import Board
from orchestrator.tui.format import ticket_state
from orchestrator.tui.widgets.board_table import BoardTable, LazyCell

#: Fixed column widths (cells, without padding); Title and Why share the rest.
_FIXED = {"state": 17, "priority": 6, "attempt": 3, "agent": 8}
#: The Ticket column fits the longest id shown, within these bounds.
ID_WIDTH_MIN, ID_WIDTH_MAX = 6, 20
#: State labels below :data:`WIDE_COLUMNS` (the colour says the rest).
_NARROW_STATES = {
    "awaiting_approval": "to approve",
    "ci_running": "ci running",
    "needs_input": "asks",
}
#: States whose Why cell starts with the reviewer's comment count (``[3 comments]``).
_REVIEW_STATES = (TicketState.REVIEWING, TicketState.AWAITING_APPROVAL)
#: Below this many columns, Att and Agent give their room to Title and Why.
WIDE_COLUMNS = 110
_PADDING = 2  # DataTable's cell_padding=1 on each side


class TicketsTable(BoardTable):
    """Tickets sorted by :func:`tui.board.queue_key`: active ones, then the queue,
    then stopped/failed/blocked, then (when shown) merged, cancelled and rejected ones.

    Agent and Why are :class:`LazyCell` cells read from the board when drawn:
    Why says where a queued ticket is in line, or which ticket is in its way and
    in what state *now* (:meth:`tui.board.Board.why`).
    """

    COLUMNS = (
        ("Ticket", "id"),
        ("State", "state"),
        ("P", "priority"),
        ("Att", "attempt"),
        ("Agent", "agent"),
        ("Title", "title"),
        ("Why", "reason"),
    )

    def __init__(self, board: Board, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.board = board
        self._lazy: dict[str, tuple[LazyCell, LazyCell]] = {}
        self._longest_id = ID_WIDTH_MIN

    @property
    def wide(self) -> bool:
        return (self.size.width or self.app.size.width) >= WIDE_COLUMNS

    def column_width(self, key: str) -> int | None:
        width = max(self.size.width or self.app.size.width, 40) - 1  # the scrollbar
        fixed = dict(_FIXED, id=min(self._longest_id, ID_WIDTH_MAX))
        if not self.wide:
            fixed["attempt"] = fixed["agent"] = 0
            fixed["state"] = 10
        if key in fixed:
            return fixed[key]
        rest = width - sum(fixed.values()) - _PADDING * len(self.COLUMNS)
        rest = max(rest, 24)
        title = max(10, rest * 2 // 5)
        return title if key == "title" else rest - title

    def row(self, ticket: TicketView) -> tuple[str, tuple[Any, ...]]:
        """The cells of one ticket's row."""
        lazy = self._lazy.get(ticket.id)
        if lazy is None:
            tid = ticket.id
            lazy = self._lazy[tid] = (
                LazyCell(lambda: self._agent_text(tid)),
                LazyCell(lambda: self._why_text(tid)),
            )
        if len(ticket.id) > self._longest_id:
            self._longest_id = len(ticket.id)
        attempt = f"{ticket.attempt}/{ticket.max_attempts}" if ticket.attempt else "-"
        state = ticket_state(ticket.state)
        if not self.wide and state.plain in _NARROW_STATES:
            state.plain = _NARROW_STATES[state.plain]
        return (
            ticket.id,
            (
                ticket.id,
                state,
                priority_label(ticket),
                attempt,
                lazy[0],
                ticket.title,
                lazy[1],
            ),
        )

    def _agent_text(self, ticket_id: str) -> Text:
        ticket = self.board.tickets.get(ticket_id)
        return Text(self.board.agent_label(ticket) if ticket else "-")

    def _why_text(self, ticket_id: str) -> Text:
        ticket = self.board.tickets.get(ticket_id)
        why = self.board.why(ticket) if ticket else ""
        text = Text(why, style="italic")
        review = ticket.review if ticket else None
        if ticket and review and ticket.state in _REVIEW_STATES and review.comments:
            n = len(review.comments)
            text = Text(f"[{n} comment{'s' if n != 1 else ''}] ", style="magenta") + text
        return text


def priority_label(ticket: TicketView) -> str:
    """``P2``, or ``P2→1.9`` when aging made it more urgent (see the help screen)."""
    label = f"P{ticket.priority}"
    if abs(ticket.effective_priority - ticket.priority) >= 0.05:
        label += f"→{ticket.effective_priority:.1f}"
    return label
