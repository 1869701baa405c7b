"""``r``: ask for the feedback that goes with a rejection."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label


class RejectScreen(ModalScreen[str | None]):
    """Dismisses with the feedback typed (enter) or None (escape); empty feedback is refused."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, ticket_id: str, title: str) -> None:
        super().__init__()
        self.ticket_id = ticket_id
        self._title = title

    def compose(self) -> ComposeResult:
        with Vertical(id="reject-box") as box:
            box.border_title = f"Reject {self.ticket_id}"
            box.border_subtitle = "enter sends · escape cancels"
            yield Label(
                f"{self._title}\nWhat should the next attempt do differently?", markup=False
            )
            yield Input(placeholder="feedback for the agent", id="feedback")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        feedback = event.value.strip()
        if not feedback:
            self.notify("type some feedback first (escape cancels)", severity="warning")
            return
        self.dismiss(feedback)

    def action_cancel(self) -> None:
        self.dismiss(None)
