"""The event log: one line per daemon event, ``HH:MM:SS kind message``, newest last.

Heartbeats are hidden by default (``h`` shows them); ``e`` narrows the log to
one ticket. Changing a filter rewrites the log from the board's backlog.
"""

from __future__ import annotations

from collections.abc import Iterable

from rich.text import Text
from textual.widgets import RichLog

from orchestrator.shared.protocol import EventKind
from orchestrator.tui.board import LogEntry
from orchestrator.tui.format import clock

MAX_LINES = 1000
HEARTBEAT_KINDS = frozenset({EventKind.AGENT_HEARTBEAT})

_KIND_STYLES = {
    "ticket": "cyan",
    "agent": "blue",
    "ci": "magenta",
    "merge": "green",
    "lease": "dim",
    "daemon": "bold",
    "tui": "bold yellow",
}
_ALERT_WORDS = ("failed", "stale", "rejected", "error", "disconnected")


class EventLog(RichLog):
    """A RichLog capped at :data:`MAX_LINES` lines, fed in batches by the app.

    Attributes:
        ticket: only this ticket's events are shown (None: all).
        heartbeats: heartbeat events are shown.
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, max_lines=MAX_LINES, wrap=False, markup=False, highlight=False)
        self.ticket: str | None = None
        self.heartbeats = False

    def shows(self, entry: LogEntry) -> bool:
        if not self.heartbeats and entry.kind in HEARTBEAT_KINDS:
            return False
        return self.ticket is None or entry.ticket == self.ticket

    def add(self, entries: Iterable[LogEntry]) -> None:
        """Append entries; one write per batch, because each write re-renders and scrolls."""
        lines = [format_entry(entry) for entry in entries if self.shows(entry)][-MAX_LINES:]
        if lines:
            self.write(Text("\n", no_wrap=True, overflow="ellipsis").join(lines))

    def set_filter(
        self,
        backlog: Iterable[LogEntry],
        *,
        ticket: str | None | bool = False,
        heartbeats: bool | None = None,
    ) -> None:
        """Change the filter (``ticket=False`` keeps it) and rewrite from ``backlog``."""
        if ticket is not False:
            self.ticket = ticket  # type: ignore[assignment]
        if heartbeats is not None:
            self.heartbeats = heartbeats
        self.clear()
        self.add(backlog)

    def title(self) -> str:
        """``Events · all``, ``Events · T-3 · +heartbeats`` (``e`` and ``h`` change it)."""
        parts = ["Events", self.ticket or "all"]
        if self.heartbeats:
            parts.append("+heartbeats")
        return " · ".join(parts)


def format_entry(entry: LogEntry) -> Text:
    kind_style = _KIND_STYLES.get(entry.kind.partition(".")[0], "")
    if any(word in entry.kind for word in _ALERT_WORDS):
        kind_style = "bold red"
    line = Text(no_wrap=True, overflow="ellipsis")
    line.append(clock(entry.ts), style="dim")
    line.append(" ")
    line.append(entry.kind, style=kind_style)
    line.append(" ")
    # One line per event even when a message spans several.
    line.append(" ⏎ ".join(entry.message.splitlines()))
    return line
