"""A DataTable that is repainted from a list of keyed rows, touching only what changed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from rich.text import Text
from textual.binding import Binding, BindingType
from textual.widgets import DataTable

Cell = str | Text
Row = tuple[str, tuple[Cell, ...]]


class BoardTable(DataTable[Cell]):
    """Row-cursor table with j/k, whose rows are kept equal to the last :meth:`sync`.

    Subclasses set ``COLUMNS`` as ``(label, key)`` pairs.
    """

    COLUMNS: ClassVar[Sequence[tuple[str, str]]] = ()
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
    ]

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=False)
        self._rows: dict[str, tuple[Cell, ...]] = {}
        self._order: list[str] = []

    def on_mount(self) -> None:
        for label, key in self.COLUMNS:
            self.add_column(label, key=key)

    @property
    def selected_key(self) -> str | None:
        """Key of the row under the cursor, or None when the table is empty."""
        if not self._order:
            return None
        row = min(max(self.cursor_row, 0), len(self._order) - 1)
        return self._order[row]

    @property
    def row_keys(self) -> list[str]:
        return list(self._order)

    def row_cells(self, key: str) -> tuple[Cell, ...]:
        """The cells last synced for row ``key``, as Text (KeyError if absent)."""
        return self._rows[key]

    def sync(self, rows: Sequence[Row]) -> None:
        """Make the table show ``rows`` in that order.

        When only cell values changed, those cells are updated in place; when
        rows were added, removed or reordered, the table is rebuilt and the
        cursor stays on the same key (or the same position if that row left).
        """
        # DataTable reads str cells as markup; ticket titles and reasons are not.
        rows = [
            (key, tuple(Text(c) if isinstance(c, str) else c for c in cells)) for key, cells in rows
        ]
        order = [key for key, _ in rows]
        if order == self._order:
            columns = [key for _, key in self.COLUMNS]
            for key, cells in rows:
                old = self._rows[key]
                if old == cells:
                    continue
                for column, before, after in zip(columns, old, cells, strict=True):
                    if before != after:
                        self.update_cell(key, column, after, update_width=True)
                self._rows[key] = cells
            return
        selected, row = self.selected_key, self.cursor_row
        self.clear()
        for key, cells in rows:
            self.add_row(*cells, key=key)
        self._order = order
        self._rows = dict(rows)
        if selected in self._rows:
            row = order.index(selected)
        if order:
            self.move_cursor(row=min(max(row, 0), len(order) - 1), scroll=True)
