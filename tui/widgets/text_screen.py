"""``d`` and ``l``: a full-screen viewer for a diff (coloured) or an agent log (followed live)."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import ModalScreen
from textual.widgets import Footer, RichLog
from textual.worker import Worker, WorkerState

#: How often a followed log is re-read (s).
FOLLOW_INTERVAL_S = 1.0


def diff_line(line: str) -> Text:
    """One line of a unified diff with the usual colours (git diff --color)."""
    if line.startswith(("+++", "---")):
        style = "bold"
    elif line.startswith("+"):
        style = "green"
    elif line.startswith("-"):
        style = "red"
    elif line.startswith("@@"):
        style = "cyan"
    elif line.startswith(("diff --git", "index ")):
        style = "bold"
    else:
        style = ""
    return Text(line, style=style, no_wrap=True)


class TextScreen(ModalScreen[None]):
    """Shows the text returned by ``load`` (a blocking callable run in a thread worker).

    ``load`` must not raise for expected failures; it returns the error as text.
    ``tail`` starts at the end and follows: ``load`` runs again every
    :data:`FOLLOW_INTERVAL_S` and new lines are appended (logs). ``diff``
    colours added and removed lines.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q", "close", "Close"),
        Binding("j", "scroll('down')", "Down", show=False),
        Binding("k", "scroll('up')", "Up", show=False),
    ]

    def __init__(
        self, title: str, load: Callable[[], str], *, tail: bool = False, diff: bool = False
    ) -> None:
        super().__init__()
        self._title = title
        self._load = load
        self._tail = tail
        self._diff = diff
        self._text: str | None = None

    def compose(self) -> ComposeResult:
        log = RichLog(
            id="viewer", highlight=False, markup=False, wrap=False, auto_scroll=self._tail
        )
        log.border_title = self._title + (" · following" if self._tail else "")
        yield log
        yield Footer()

    def on_mount(self) -> None:
        log = self.query_one(RichLog)
        log.write("loading…")
        log.focus()
        self._reload()
        if self._tail:
            self.set_interval(FOLLOW_INTERVAL_S, self._reload)

    def _reload(self) -> None:
        self.run_worker(self._load, thread=True, group="viewer", exit_on_error=False)

    @property
    def text(self) -> str:
        return self._text or ""

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group != "viewer":
            return
        log = self.query_one(RichLog)
        if event.state == WorkerState.SUCCESS:
            self._show(str(event.worker.result))
        elif event.state == WorkerState.ERROR:
            log.clear()
            log.write(f"cannot load: {event.worker.error}")

    def _show(self, text: str) -> None:
        log = self.query_one(RichLog)
        old = self._text
        if text == old:
            return
        self._text = text
        if old is not None and text.startswith(old) and old.endswith("\n"):
            new_lines = text[len(old) :].splitlines()
        else:
            log.clear()
            new_lines = text.splitlines()
        style = diff_line if self._diff else (lambda line: Text(line, no_wrap=True))
        for line in new_lines:
            log.write(style(line))
        if not self._tail and old is None:
            log.scroll_home(animate=False)

    def action_scroll(self, direction: str) -> None:
        log = self.query_one(RichLog)
        if direction == "down":
            log.scroll_down(animate=False)
        else:
            log.scroll_up(animate=False)

    def action_close(self) -> None:
        self.dismiss(None)
