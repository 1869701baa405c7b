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

from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

from rich.console import Console, ConsoleOptions, RenderResult
from rich.markup import escape
from rich.measure import Measurement
from rich.text import Text
from textual.binding import Binding, BindingType
from textual.coordinate import Coordinate
from textual.geometry import Region, Spacing
from textual.strip import Strip
from textual.widgets import DataTable
from textual.widgets._data_table import CellKey, ColumnKey, RowKey

Row = tuple[str, tuple[Any, ...]]
#: Rows above and below the screen treated as on screen (they are drawn on a scroll).
WINDOW_MARGIN = 2
#: Rendered cells and lines DataTable may cache: a few screens of a tall terminal.
RENDER_CACHE_CELLS = 2000
RENDER_CACHE_LINES = 300


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
        # DataTable keys every render cache on a change counter that any change bumps,
        # and a board changes many times a second: entries of an older count are never
        # read again. Its default sizes (10,000 cells, 1,000 rows and lines) kept
        # ~200,000 dead objects alive, all scanned by each full garbage collection
        # (50-100 ms pauses under a stream of events); a few screens' worth is enough.
        self._cell_render_cache.maxsize = RENDER_CACHE_CELLS
        for cache in (self._row_render_cache, self._row_renderable_cache, self._line_cache):
            cache.maxsize = RENDER_CACHE_LINES
        self._cells: dict[str, tuple[Any, ...]] = {}
        self._order: list[str] = []
        self._row_key_of: dict[str, RowKey] = {}
        self._lazy_shown: dict[str, list[str]] = {}
        """Row key -> what its lazy cells read when :meth:`refresh_lazy` last saw it on
        screen (a row that comes into view is drawn afresh by the scroll or move)."""
        self._stale_rows: set[RowKey] = set()
        """Rows whose cached renders are dropped before the next frame (:meth:`_forget`)."""
        self._stale_span = (0, 0)
        """Row indices ``[start, end)`` whose rows moved since the last frame (:meth:`reorder`)."""
        self._widths_drawn: tuple[int, ...] = ()

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
        """The cells last set for row ``key``, as text (a ``Text`` from the markup
        held, or the :class:`LazyCell`); KeyError if absent."""
        return tuple(Text.from_markup(c) if isinstance(c, str) else c for c in self._cells[key])

    def cell_text(self, key: str, column: str) -> str:
        """The plain text a cell shows now (lazy cells are computed)."""
        index = [k for _, k in self.COLUMNS].index(column)
        cell = self._cells[key][index]
        if isinstance(cell, LazyCell):
            return cell.render().plain
        return Text.from_markup(cell).plain if isinstance(cell, str) else str(cell)

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
            cells = _stored(cells)
            self._cells[key] = cells
            self._row_key_of[key] = self.add_row(*cells, key=key)
        self._order = [key for key, _ in rows]
        self._restore_cursor(selected, row)

    def upsert(self, key: str, cells: tuple[Any, ...]) -> bool:
        """Update row ``key``'s changed cells, or append the row; True when appended."""
        cells = _stored(cells)
        old = self._cells.get(key)
        if old is None:
            self._cells[key] = cells
            self._row_key_of[key] = self.add_row(*cells, key=key)
            self._order.append(key)
            return True
        if old != cells:
            row_key = self._row_key_of[key]
            for (_, column), before, after in zip(self.COLUMNS, old, cells, strict=True):
                if before != after:
                    self._set_cell(row_key, column, after)
            self._cells[key] = cells
            self._forget([row_key])
            index = self.get_row_index(key)
            if index in self._window():
                self.refresh_row(index)  # a row off screen is drawn when it scrolls in
        return False

    def _set_cell(self, row_key: RowKey, column: str, value: Any) -> None:
        # DataTable.update_cell bumps the change counter every render cache is keyed
        # on and refreshes the whole table: one changed cell anywhere re-rendered
        # every row on screen. Here the cell is stored, only its row's renders are
        # dropped (:meth:`_forget`) and only its line is redrawn.
        column_key = ColumnKey(column)
        self._data[row_key][column_key] = value
        if self._auto(column):
            self._updated_cells.add(CellKey(row_key, column_key))
            self._require_update_dimensions = True

    def _forget(self, row_keys: Iterable[RowKey]) -> None:
        """Drop the cached renders of ``row_keys`` before the next frame draws them.

        DataTable's cell and row caches are keyed by row key (and a change counter we
        do not bump for a change of a few rows); the line and per-index caches hold
        lines by position, so they are cleared (cheap: rebuilt from cached cells).
        """
        self._stale_rows.update(row_keys)
        self._row_renderable_cache.clear()
        self._line_cache.clear()

    def _drop_stale(self) -> None:
        """Drop the cached cells and rows of changed rows and of rows that moved."""
        stale, (start, end) = self._stale_rows, self._stale_span
        index_of = self._row_locations.get

        def is_stale(row_key: RowKey) -> bool:
            if row_key in stale:
                return True
            index = index_of(row_key)
            return index is None or start <= index < end

        cells, rows = self._cell_render_cache, self._row_render_cache
        for cell_key in [k for k in cells.keys() if is_stale(k[0])]:
            cells.discard(cell_key)
        for row_key in [k for k in rows.keys() if is_stale(k[0])]:
            rows.discard(row_key)
        stale.clear()
        self._stale_span = (0, 0)

    def render_lines(self, crop: Region) -> list[Strip]:
        widths = tuple(c.get_render_width(self) for c in self.ordered_columns)
        if widths != self._widths_drawn:
            # Cached cells were rendered at their old width: drop them all.
            self._widths_drawn = widths
            self._update_count += 1
            self._stale_rows.clear()
        elif self._stale_rows or self._stale_span[0] < self._stale_span[1]:
            self._drop_stale()
        return super().render_lines(crop)

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
        old, row_key_of = self._order, self._row_key_of
        if len(keys) != len(old):
            raise ValueError(f"reorder: {len(keys)} keys for {len(old)} rows")
        # What DataTable.sort does, without sorting and only over the span of rows
        # whose place changed (a ticket moving up or down a few places in 10,000).
        first = _first_difference(keys, old)
        end = len(keys) - _first_difference(keys[::-1], old[::-1])
        # TwoWayDict.__setitem__ per row is a Python call per row; its two dicts are
        # updated from iterators instead (the span is most of the table when several
        # rows move in one batch).
        moved = list(map(row_key_of.__getitem__, keys[first:end]))
        locations = self._row_locations
        locations._forward.update(zip(moved, range(first, end), strict=True))
        locations._reverse.update(zip(range(first, end), moved, strict=True))
        # A cached cell carries its row index (for mouse clicks), and cached lines and
        # rows their place: those of the rows in the span that moved are dropped
        # before the next frame (:meth:`_drop_stale`), the others are kept.
        start, stop = self._stale_span
        self._stale_span = (first, end) if start >= stop else (min(start, first), max(stop, end))
        self._row_renderable_cache.clear()
        self._line_cache.clear()
        self._row_render_cache.clear()
        self._offset_cache.clear()
        self._ordered_row_cache.clear()
        window = self._window()
        if first < window.stop and end > window.start:
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
        # DataTable caches rendered cells; lazy cells change without DataTable knowing.
        window = self._window()
        shown, changed = self._lazy_shown, []
        for index, key in enumerate(self._order[window.start : window.stop], window.start):
            texts = [c.render().plain for c in self._cells[key] if isinstance(c, LazyCell)]
            if shown.get(key, texts) != texts:
                changed.append((index, self._row_key_of[key]))
            shown[key] = texts
        if changed:
            self._forget(row_key for _, row_key in changed)
            for index, _ in changed:
                self.refresh_row(index)

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        # Rows coming into view may hold lazy cells that changed while off screen.
        self.refresh_lazy()

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


def _stored(cells: tuple[Any, ...]) -> tuple[Any, ...]:
    """Cells as the table holds them: text as console markup (``str``), other
    renderables as they are.

    DataTable reads a ``str`` cell as markup and renders it only when drawn (then
    cached). A ``str`` is not tracked by the garbage collector, where a ``Text`` is
    three objects: with 10,000 rows, text cells were ~150,000 objects that every
    full collection walked, and each batch of events replaced hundreds of them.
    Plain strings are escaped (a ticket title is not markup); a ``Text`` becomes its
    markup (``Text.markup``, base style included).
    """
    return tuple(
        escape(c) if isinstance(c, str) else c.markup if isinstance(c, Text) else c for c in cells
    )


def _first_difference(a: list[str], b: list[str]) -> int:
    """The first index where ``a`` and ``b`` (of equal length) differ, or their length.

    A binary search on prefixes: each comparison runs in C, so for 10,000 rows this
    is ~14 slice comparisons instead of a Python loop over every row.
    """
    low, high = 0, len(a)  # a[:low] == b[:low]; they differ before high + 1
    while low < high:
        mid = (low + high + 1) // 2
        if a[:mid] == b[:mid]:
            low = mid
        else:
            high = mid - 1
    return low
