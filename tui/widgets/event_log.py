"""The event log: one line per daemon event, ``HH:MM:SS kind message``, newest last."""

from __future__ import annotations

from collections.abc import Iterable

from rich.text import Text
from textual.widgets import RichLog

from orchestrator.tui.board import LogEntry
from orchestrator.tui.format import clock

MAX_LINES = 1000

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
    """A RichLog capped at :data:`MAX_LINES` lines, fed in batches by the app's repaint."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, max_lines=MAX_LINES, wrap=False, markup=False, highlight=False)

    def add(self, entries: Iterable[LogEntry]) -> None:
        """Append entries; one write per batch, because each write re-renders and scrolls."""
        lines = [format_entry(entry) for entry in entries][-MAX_LINES:]
        if lines:
            self.write(Text("\n", no_wrap=True, overflow="ellipsis").join(lines))


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
