"""The event log: one line per daemon event, ``HH:MM:SS kind message``, newest last.

Heartbeats are hidden by default (``h`` shows them); ``e`` narrows the log to
one ticket. Changing a filter rewrites the log from the board's backlog.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from rich.cells import cell_len
from rich.segment import Segment
from rich.style import Style
from textual.cache import LRUCache
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

from orchestrator.shared.protocol import EventKind
from orchestrator.tui.board import LogEntry
from orchestrator.tui.format import clock

MAX_LINES = 1000
#: Strips kept for lines drawn: a few screens of a tall terminal.
STRIP_CACHE_LINES = 300
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
_STYLES = {name: Style.parse(name) for name in ("", "dim", "bold red", *_KIND_STYLES.values())}


class EventLog(ScrollView, can_focus=True):
    """The last :data:`MAX_LINES` lines, fed in batches by the app, newest last.

    Textual's Line API: the entries are held as they arrive, and only the lines
    on screen become a :class:`Strip`, built from segments (no Rich rendering)
    when first drawn and cached for a few screens. Under a stream of events the
    log takes hundreds of lines a second; a strip for each would be work and
    garbage for lines nobody sees. The view follows new lines while it is at
    the end; scrolled up, it stays where it is.

    Attributes:
        ticket: only this ticket's events are shown (None: all).
        heartbeats: heartbeat events are shown.
        entries: the entries held, oldest first.
    """

    DEFAULT_CSS = """
    EventLog {
        background: $surface;
        color: $foreground;
        overflow-y: scroll;
        &:focus {
            background-tint: $foreground 5%;
        }
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.ticket: str | None = None
        self.heartbeats = False
        self.entries: deque[LogEntry] = deque(maxlen=MAX_LINES)
        self._strips: LRUCache[LogEntry, Strip] = LRUCache(STRIP_CACHE_LINES)
        self._widest = 0

    @property
    def lines(self) -> list[Strip]:
        """Every line held as a strip, oldest first (built now: for tests and tools)."""
        return [self._strip(entry) for entry in self.entries]

    def _strip(self, entry: LogEntry) -> Strip:
        strip = self._strips.get(entry)
        if strip is None:
            strip = self._strips[entry] = entry_strip(entry)
        return strip

    def shows(self, entry: LogEntry) -> bool:
        if not self.heartbeats and entry.kind in HEARTBEAT_KINDS:
            return False
        return self.ticket is None or entry.ticket == self.ticket

    def add(self, entries: Iterable[LogEntry]) -> None:
        """Append the entries this log shows; one redraw per batch."""
        shown = [entry for entry in entries if self.shows(entry)][-MAX_LINES:]
        if not shown:
            return
        following = self.scroll_y >= self.max_scroll_y
        self.entries.extend(shown)
        self._widest = max(self._widest, *map(entry_width, shown))
        self.virtual_size = Size(self._widest, len(self.entries))
        if following:
            self.scroll_end(animate=False, immediate=False, x_axis=False)
        self.refresh()

    def clear(self) -> None:
        self.entries.clear()
        self._strips.clear()
        self._widest = 0
        self.virtual_size = Size(0, 0)
        self.scroll_to(0, 0, animate=False)
        self.refresh()

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        index = scroll_y + y
        width = self.scrollable_content_region.width
        if not 0 <= index < len(self.entries):
            return Strip.blank(width, self.rich_style)
        style = self.rich_style
        line = self._strip(self.entries[index]).crop_extend(scroll_x, scroll_x + width, style)
        return line.apply_style(style)

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


def entry_width(entry: LogEntry) -> int:
    """The cells :func:`entry_strip` takes for ``entry``."""
    return cell_len(clock(entry.ts)) + cell_len(entry.kind) + 2 + cell_len(_message(entry))


def _message(entry: LogEntry) -> str:
    return " ⏎ ".join(entry.message.splitlines())


def entry_strip(entry: LogEntry) -> Strip:
    """One log line as a strip: ``HH:MM:SS kind message``, the kind coloured by its
    family (red for failures), a message of several lines joined with ``⏎``. The
    text is terminal-safe already (shared.terminal, applied when decoded)."""
    style = _KIND_STYLES.get(entry.kind.partition(".")[0], "")
    if any(word in entry.kind for word in _ALERT_WORDS):
        style = "bold red"
    time_text = clock(entry.ts)
    message = _message(entry)
    segments = [
        Segment(time_text, _STYLES["dim"]),
        Segment(" "),
        Segment(entry.kind, _STYLES[style]),
        Segment(" " + message),
    ]
    return Strip(segments, cell_len(time_text) + cell_len(entry.kind) + 2 + cell_len(message))
