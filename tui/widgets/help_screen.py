"""``?``: every key of the TUI, with what it does."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static


class HelpScreen(ModalScreen[None]):
    """A modal table of ``(keys, description)`` rows; escape, q or ? closes it."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,question_mark", "dismiss", "Close"),
    ]

    def __init__(self, keys: Sequence[tuple[str, str]], about: str = "") -> None:
        super().__init__()
        self._keys = list(keys)
        self._about = about

    def compose(self) -> ComposeResult:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold cyan", no_wrap=True)
        table.add_column()
        for keys, description in self._keys:
            table.add_row(keys, description)
        with VerticalScroll(id="help-box") as box:
            box.border_title = "Keys"
            box.border_subtitle = "escape closes"
            if self._about:
                yield Static(self._about, markup=False, classes="help-about")
            yield Static(table)
