"""The agents panel: one row per worker ``agent-K``."""

from __future__ import annotations

from typing import Any

from rich.text import Text

from orchestrator.shared.models import AgentView
from orchestrator.tui.board import Board
from orchestrator.tui.format import agent_state_style, ci_cell, since
from orchestrator.tui.widgets.board_table import BoardTable


class AgentsTable(BoardTable):
    """Workers (``agent-K@host`` when it runs on a Ray node) with their state (coloured,
    see :func:`tui.format.agent_state_style`), ticket, branch, attempt, time in its shown
    state, last activity and its ticket's CI."""

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

    def __init__(self, board: Board, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.board = board

    def row(self, agent: AgentView, now: float) -> tuple[str, tuple[Any, ...]]:
        """The cells of one agent's row; ages are relative to ``now`` (Unix s)."""
        ticket = self.board.ticket_of_agent(agent.name)
        attempt = "-"
        if agent.attempt:
            attempt = f"{agent.attempt}/{ticket.max_attempts}" if ticket else str(agent.attempt)
        return (
            agent.name,
            (
                f"{agent.name}@{agent.host}" if agent.host else agent.name,
                Text(str(agent.state), style=agent_state_style(agent, ticket)),
                agent.ticket or "-",
                agent.branch or "-",
                attempt,
                since(self.board.agent_since(agent), now),
                since(agent.last_activity, now),
                ci_cell(ticket.ci if ticket else None),
            ),
        )
