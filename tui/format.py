"""Plain-text formatting shared by the panels: ages, clock times, state colours."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from rich.text import Text

from orchestrator.shared.models import (
    AgentState,
    AgentView,
    CIState,
    CIView,
    TicketState,
    TicketView,
)

if TYPE_CHECKING:  # this module imports no textual (tests/tui/test_run.py)
    from textual.widget import Widget

#: Rich styles of ticket states; colour names follow the agents-panel legend in docs.
TICKET_STYLES: dict[TicketState, str] = {
    TicketState.QUEUED: "",
    TicketState.BLOCKED: "yellow",
    TicketState.RUNNING: "blue",
    TicketState.NEEDS_INPUT: "bold magenta",
    TicketState.CI_RUNNING: "blue",
    TicketState.REVIEWING: "magenta",
    TicketState.AWAITING_APPROVAL: "bold green",
    TicketState.MERGING: "blue",
    TicketState.MERGED: "green",
    TicketState.STOPPED: "yellow",
    TicketState.FAILED: "bold red",
    TicketState.REJECTED: "red",
    TicketState.CANCELLED: "dim",
}

CI_STYLES = {"pass": "green", "fail": "bold red", "error": "bold red", "running": "yellow"}


def age(seconds: float) -> str:
    """A short duration: ``42s``, ``7m``, ``1h05``, ``3d02``."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 24:
        return f"{hours}h{minutes % 60:02d}"
    return f"{hours // 24}d{hours % 24:02d}"


def since(ts: float, now: float) -> str:
    """Age of a Unix timestamp, or ``-`` when the daemon sent none (0)."""
    return age(now - ts) if ts > 0 else "-"


def clock(ts: float) -> str:
    """``HH:MM:SS`` in local time."""
    return time.strftime("%H:%M:%S", time.localtime(ts))


def ticket_state(state: TicketState) -> Text:
    return Text(str(state), style=TICKET_STYLES.get(state, ""))


def agent_state_style(agent: AgentView, ticket: TicketView | None) -> str:
    """Colour of an agent's state cell.

    Red when stale or its ticket failed, magenta when its agent waits for an answer,
    green when its ticket awaits approval,
    yellow when stopping/stopped, blue while working, plain when idle.
    """
    ticket_state_ = ticket.state if ticket is not None else None
    if agent.state == AgentState.STALE or ticket_state_ == TicketState.FAILED:
        return "bold red"
    if agent.state == AgentState.NEEDS_INPUT or ticket_state_ == TicketState.NEEDS_INPUT:
        return "bold magenta"
    if (
        agent.state == AgentState.AWAITING_APPROVAL
        or ticket_state_ == TicketState.AWAITING_APPROVAL
    ):
        return "bold green"
    if agent.state == AgentState.STOPPING or ticket_state_ == TicketState.STOPPED:
        return "yellow"
    if agent.state == AgentState.IDLE:
        return ""
    return "blue"


def ci_cell(ci: CIView | None) -> Text:
    if ci is None:
        return Text("-", style="dim")
    label = str(ci.status)
    if ci.duration_s is not None and ci.status != CIState.RUNNING:
        label += f" {age(ci.duration_s)}"
    return Text(label, style=CI_STYLES.get(ci.status, ""))


def set_border_title(widget: Widget, title: str) -> None:
    """Set ``widget``'s border title only when it reads differently: Textual redraws the
    whole widget on every assignment (under a stream of events, the tickets and agents
    tables after every batch, though their titles rarely change)."""
    if widget.border_title != title:
        widget.border_title = title
