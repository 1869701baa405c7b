"""The red line at the top that says the daemon is gone (hidden while connected)."""

from __future__ import annotations

from textual.widgets import Static


class Banner(Static):
    """``daemon disconnected — reconnecting…`` plus why; :meth:`show`/:meth:`hide`."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("", id=id, markup=False)
        self.display = False

    def show(self, reason: str) -> None:
        text = "daemon disconnected — reconnecting…"
        if reason:
            text += f" ({reason})"
        self.update(text)
        self.display = True

    def hide(self) -> None:
        self.display = False
