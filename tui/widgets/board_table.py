"""A DataTable kept equal to keyed rows by updating only what changed.

Rows are added, removed and updated by key and cells by column
(:meth:`BoardTable.upsert`), the order is changed with one ``sort``
(:meth:`BoardTable.reorder`), and only a filter or a new snapshot rebuilds the
table (:meth:`BoardTable.set_rows`). Cells that depend on *other* rows (a queued
ticket's place in line, the ticket holding a lock) are :class:`LazyCell`
renderables: computed when drawn, so only the rows on screen pay for them and
they are never stale; :meth:`BoardTable.refresh_lazy` redraws them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.text import Text
from textual._two_way_dict import TwoWayDict
from textual.binding import Binding, BindingType
from textual.coordinate import Coordinate
from textual.geometry import Region, Spacing
from textual.widgets import DataTable
from textual.widgets._data_table import CellKey, ColumnKey, RowKey

Row = tuple[str, tuple[Any, ...]]
#: Rows above and below the screen treated as on screen (they are drawn on a scroll).
WINDOW_MARGIN = 2


class LazyCell:
    """A cell whose text is computed at draw time by ``render()`` (one line, ellipsised)."""

    __slots__ = ("render",)

    def __init__(self, render: Callable[[], Text]) -> None:
        self.render = render

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        text = self.render()
        text.no_wrap = True
        text.overflow = "ellipsis"
        yield text

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement(1, options.max_width)


class BoardTable(DataTable[Any]):
    """Row-cursor table with j/k and Home/End on rows; the first column never scrolls away.

    Subclasses set ``COLUMNS`` as ``(label, key)`` pairs; the first column holds
    the row key as plain text (it is what :meth:`reorder` sorts by).
    """

    COLUMNS: ClassVar[Sequence[tuple[str, str]]] = ()
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
        # DataTable's Home/End scroll sideways in row mode, taking the ID column away.
        Binding("home", "scroll_top", "First", show=False),
        Binding("end", "scroll_bottom", "Last", show=False),
    ]

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=False)
        self.fixed_columns = 1
        self._cells: dict[str, tuple[Any, ...]] = {}
        self._order: list[str] = []
        self._row_key_of: dict[str, RowKey] = {}
        self._lazy_shown: dict[str, list[str]] = {}
        """Row key -> what its lazy cells read when :meth:`refresh_lazy` last saw it on
        screen (a row that comes into view is drawn afresh by the scroll or move)."""

    def on_mount(self) -> None:
        for label, key in self.COLUMNS:
            self.add_column(label, key=key, width=self.column_width(key))

    def column_width(self, key: str) -> int | None:
        """Fixed width of a column (cells), or None to fit its content."""
        return None

    def set_widths(self) -> None:
        """Re-apply :meth:`column_width` (after a resize)."""
        changed = False
        for _, key in self.COLUMNS:
            width = self.column_width(key)
            column = self.columns.get(key)  # type: ignore[call-overload]
            if column is None or width is None or column.width == width:
                continue
            column.width = width
            column.auto_width = False
            changed = True
        if changed:
            self._clear_caches()
            self.refresh()

    @property
    def selected_key(self) -> str | None:
        """Key of the row under the cursor, or None when the table is empty."""
        if not self.row_count:
            return None
        row = min(max(self.cursor_row, 0), self.row_count - 1)
        key = self.coordinate_to_cell_key(Coordinate(row, 0)).row_key.value
        return key

    @property
    def row_keys(self) -> list[str]:
        """Row keys in display order."""
        return list(self._order)

    def row_cells(self, key: str) -> tuple[Any, ...]:
        """The cells last set for row ``key`` (KeyError if absent)."""
        return self._cells[key]

    def cell_text(self, key: str, column: str) -> str:
        """The plain text a cell shows now (lazy cells are computed)."""
        index = [k for _, k in self.COLUMNS].index(column)
        cell = self._cells[key][index]
        if isinstance(cell, LazyCell):
            return cell.render().plain
        return cell.plain if isinstance(cell, Text) else str(cell)

    def has_row(self, key: str) -> bool:
        return key in self._cells

    def set_rows(self, rows: Sequence[Row]) -> None:
        """Replace every row, keeping the cursor on the same key when it is still there."""
        selected, row = self.selected_key, self.cursor_row
        self.clear()
        self._cells = {}
        self._lazy_shown = {}
        self._row_key_of = {}
        for key, cells in rows:
            cells = _texts(cells)
            self._cells[key] = cells
            self._row_key_of[key] = self.add_row(*cells, key=key)
        self._order = [key for key, _ in rows]
        self._restore_cursor(selected, row)

    def upsert(self, key: str, cells: tuple[Any, ...]) -> bool:
        """Update row ``key``'s changed cells, or append the row; True when appended."""
        cells = _texts(cells)
        old = self._cells.get(key)
        if old is None:
            self._cells[key] = cells
            self._row_key_of[key] = self.add_row(*cells, key=key)
            self._order.append(key)
            return True
        if old != cells:
            on_screen = self.get_row_index(key) in self._window()
            for (_, column), before, after in zip(self.COLUMNS, old, cells, strict=True):
                if before == after:
                    continue
                if on_screen:
                    self.update_cell(key, column, after, update_width=self._auto(column))
                else:
                    self._set_cell_off_screen(key, column, after)
            self._cells[key] = cells
        return False

    def _set_cell_off_screen(self, key: str, column: str, value: Any) -> None:
        # DataTable.update_cell refreshes the whole table, and every rendered line
        # is cached under a counter that any change bumps, so one changed cell
        # anywhere redraws every row on screen. A row off screen has nothing to
        # redraw: its cell is stored and the caches invalidated, and it is drawn
        # when it scrolls into view.
        row_key = self._row_key_of[key]
        column_key = ColumnKey(column)
        self._data[row_key][column_key] = value
        self._update_count += 1
        if self._auto(column):
            self._updated_cells.add(CellKey(row_key, column_key))
            self._require_update_dimensions = True

    def _window(self) -> range:
        """Indices of the rows on screen, with a margin of :data:`WINDOW_MARGIN` rows."""
        top = int(self.scroll_y)
        height = self.scrollable_content_region.height
        return range(max(0, top - WINDOW_MARGIN), top + height + WINDOW_MARGIN)

    def remove_key(self, key: str) -> None:
        """Remove row ``key`` if present (``remove`` is Widget.remove: the widget itself)."""
        if self._cells.pop(key, None) is not None:
            selected, row = self.selected_key, self.cursor_row
            self.remove_row(key)
            self._order.remove(key)
            del self._row_key_of[key]
            self._restore_cursor(selected, row)

    def reorder(self, keys: Sequence[str]) -> None:
        """Put the rows in the order of ``keys`` (each row's key must be in it)."""
        keys = list(keys)
        if keys == self._order:
            return
        selected, row = self.selected_key, self.cursor_row
        # What DataTable.sort does, without sorting: the order is known, so O(n)
        # instead of O(n log n) key calls (10,000 rows: ~2 ms instead of ~15 ms).
        row_key_of = self._row_key_of
        self._row_locations = TwoWayDict(
            dict(zip(map(row_key_of.__getitem__, keys), range(len(keys)), strict=True))
        )
        self._update_count += 1
        window = self._window()
        if keys[window.start : window.stop] != self._order[window.start : window.stop]:
            self.refresh()  # else only rows off screen moved: nothing to redraw
        self._order = keys
        self._restore_cursor(selected, row)

    def _get_offsets(self, y: int) -> tuple[RowKey, int]:
        # DataTable rebuilds a list of every line of every row (10,000 rows: ~3 ms)
        # after each change to find the row at a screen line; our rows are all one
        # line high, so the row at line y is the row at index y.
        if self.show_header:
            if y < self.header_height:
                return self._header_row_key, y
            y -= self.header_height
        row_key = self._row_locations.get_key(y)
        if row_key is None:
            raise LookupError(f"Y coord {y!r} is greater than total height")
        return row_key, 0

    def _get_row_region(self, row_index: int) -> Region:
        # As _get_offsets: one line per row, so no walk over every row above it.
        if not self.is_valid_row_index(row_index):
            return Region(0, 0, 0, 0)
        width = sum(column.get_render_width(self) for column in self.columns.values())
        y = row_index + (self.header_height if self.show_header else 0)
        return Region(0, y, max(self.size.width, width + self._row_label_column_width), 1)

    def refresh_lazy(self) -> None:
        """Redraw the rows on screen if a :class:`LazyCell` there reads differently now.

        The lazy cells of the rows on screen are computed (a few dozen) and compared
        with what they read when last looked at here; rows off screen are drawn
        afresh when they scroll into view.
        """
        # DataTable caches rendered rows until a cell changes; lazy cells change
        # without DataTable knowing: bumping its change counter invalidates every
        # cached line (without drawing anything).
        self._update_count += 1
        window = self._window()
        shown, changed = self._lazy_shown, False
        for key in self._order[window.start : window.stop]:
            texts = [c.render().plain for c in self._cells[key] if isinstance(c, LazyCell)]
            changed |= shown.get(key, texts) != texts
            shown[key] = texts
        if changed:
            self.refresh()

    def _get_fixed_offset(self) -> Spacing:
        # DataTable sums the heights of the fixed rows over ``ordered_rows``, a list
        # of every row rebuilt after each change (10,000 rows: ~5 ms per key press);
        # our rows are one line high.
        top = (self.header_height if self.show_header else 0) + min(self.fixed_rows, self.row_count)
        left = (
            sum(c.get_render_width(self) for c in self.ordered_columns[: self.fixed_columns])
            + self._row_label_column_width
        )
        return Spacing(top, 0, 0, left)

    def _auto(self, column: str) -> bool:
        col = self.columns.get(column)  # type: ignore[call-overload]
        return bool(col is not None and col.auto_width)

    def _restore_cursor(self, selected: str | None, row: int) -> None:
        if not self.row_count:
            return
        if selected is not None and selected in self._cells:
            row = self.get_row_index(selected)
        self.move_cursor(row=min(max(row, 0), self.row_count - 1), scroll=False)


def _texts(cells: tuple[Any, ...]) -> tuple[Any, ...]:
    # DataTable reads str cells as markup; ticket titles and reasons are not.
    return tuple(Text(c) if isinstance(c, str) else c for c in cells)
