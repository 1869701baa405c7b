"""``d`` and ``l``: a full-screen viewer for a diff or an agent log, loaded in a thread."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import ModalScreen
from textual.widgets import Footer, Log
from textual.worker import Worker, WorkerState


class TextScreen(ModalScreen[None]):
    """Shows the text returned by ``load`` (a blocking callable run in a thread worker).

    ``load`` must not raise for expected failures; it returns the error as text.
    ``tail`` starts at the end (logs) instead of the top (diffs).
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q", "close", "Close"),
        Binding("j", "scroll('down')", "Down", show=False),
        Binding("k", "scroll('up')", "Up", show=False),
    ]

    def __init__(self, title: str, load: Callable[[], str], *, tail: bool = False) -> None:
        super().__init__()
        self._title = title
        self._load = load
        self._tail = tail

    def compose(self) -> ComposeResult:
        log = Log(id="viewer", highlight=False, auto_scroll=self._tail)
        log.border_title = self._title
        yield log
        yield Footer()

    def on_mount(self) -> None:
        log = self.query_one(Log)
        log.write_line("loading…")
        log.focus()
        self.run_worker(self._load, thread=True, group="viewer", exit_on_error=False)

    @property
    def text(self) -> str:
        return "\n".join(self.query_one(Log).lines)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group != "viewer":
            return
        log = self.query_one(Log)
        if event.state == WorkerState.SUCCESS:
            log.clear()
            log.write_lines(str(event.worker.result).splitlines())
            if not self._tail:
                log.scroll_home(animate=False)
        elif event.state == WorkerState.ERROR:
            log.clear()
            log.write_line(f"cannot load: {event.worker.error}")

    def action_scroll(self, direction: str) -> None:
        log = self.query_one(Log)
        if direction == "down":
            log.scroll_down(animate=False)
        else:
            log.scroll_up(animate=False)

    def action_close(self) -> None:
        self.dismiss(None)
