"""The tickets panel: the queue in the daemon's order, finished tickets behind ``f``."""

from __future__ import annotations

from rich.text import Text

from orchestrator.shared.models import TicketState, TicketView
from orchestrator.tui.format import ticket_state
from orchestrator.tui.widgets.board_table import BoardTable, Row


class TicketsTable(BoardTable):
    """Tickets sorted by :func:`tui.board.queue_key`: active ones, then the queue
    (``#`` is the position among queued tickets), then stopped/failed/blocked,
    then (when shown) merged, cancelled and rejected ones."""

    COLUMNS = (
        ("#", "pos"),
        ("Ticket", "id"),
        ("State", "state"),
        ("P", "priority"),
        ("Att", "attempt"),
        ("Agent", "agent"),
        ("Why", "reason"),
        ("Title", "title"),
    )

    def show(self, tickets: list[TicketView]) -> None:
        rows: list[Row] = []
        position = 0
        for ticket in tickets:
            if ticket.state == TicketState.QUEUED:
                position += 1
                rows.append(_row(ticket, str(position)))
            else:
                rows.append(_row(ticket, ""))
        self.sync(rows)


def _priority(ticket: TicketView) -> str:
    label = f"P{ticket.priority}"
    if abs(ticket.effective_priority - ticket.priority) >= 0.05:
        label += f"→{ticket.effective_priority:.1f}"
    return label


def _row(ticket: TicketView, position: str) -> Row:
    attempt = f"{ticket.attempt}/{ticket.max_attempts}" if ticket.attempt else "-"
    return (
        ticket.id,
        (
            position,
            ticket.id,
            ticket_state(ticket.state),
            _priority(ticket),
            attempt,
            ticket.agent or "-",
            Text(ticket.reason, style="italic") if ticket.reason else "",
            ticket.title,
        ),
    )
