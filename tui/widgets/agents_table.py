"""The agents panel: one row per worker ``agent-K``."""

from __future__ import annotations

from rich.text import Text

from orchestrator.shared.models import AgentView, TicketView
from orchestrator.tui.format import agent_state_style, ci_cell, since
from orchestrator.tui.widgets.board_table import BoardTable, Row


class AgentsTable(BoardTable):
    """Workers with their state (coloured, see :func:`tui.format.agent_state_style`),
    ticket, branch, attempt, time in state, last activity and their ticket's CI result."""

    COLUMNS = (
        ("Agent", "name"),
        ("State", "state"),
        ("Ticket", "ticket"),
        ("Branch", "branch"),
        ("Att", "attempt"),
        ("In state", "since"),
        ("Active", "activity"),
        ("CI", "ci"),
    )

    def show(self, agents: list[AgentView], tickets: dict[str, TicketView], now: float) -> None:
        self.sync([_row(agent, tickets, now) for agent in agents])


def _row(agent: AgentView, tickets: dict[str, TicketView], now: float) -> Row:
    ticket = tickets.get(agent.ticket) if agent.ticket else None
    attempt = "-"
    if agent.attempt:
        attempt = f"{agent.attempt}/{ticket.max_attempts}" if ticket else str(agent.attempt)
    return (
        agent.name,
        (
            agent.name,
            Text(str(agent.state), style=agent_state_style(agent, ticket)),
            agent.ticket or "-",
            agent.branch or "-",
            attempt,
            since(agent.state_since, now),
            since(agent.last_activity, now),
            ci_cell(ticket.ci if ticket else None),
        ),
    )
