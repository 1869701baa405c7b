"""``r`` (and ``c`` on a failed or stopped ticket): ask for feedback for the next attempt;
``a``: the answer to an agent's question."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label


class RejectScreen(ModalScreen[str | None]):
    """Dismisses with the feedback typed (enter) or None (escape).

    Args:
        verb: the action named in the box title (``Reject``, ``Continue``, ``Answer``).
        required: refuse empty feedback (a rejection must say why); when False,
            enter on an empty field dismisses with ``""``.
        prompt: the text above the field (default: what the next attempt should do
            differently).
        placeholder: the empty field's hint.
    """

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(
        self,
        ticket_id: str,
        title: str,
        *,
        verb: str = "Reject",
        required: bool = True,
        prompt: str | None = None,
        placeholder: str = "feedback for the agent",
    ) -> None:
        super().__init__()
        self._prompt = prompt
        self._placeholder = placeholder
        self.ticket_id = ticket_id
        self._title = title
        self._verb = verb
        self._required = required

    def compose(self) -> ComposeResult:
        with Vertical(id="reject-box") as box:
            box.border_title = f"{self._verb} {self.ticket_id}"
            box.border_subtitle = "enter sends · escape cancels"
            question = self._prompt or "What should the next attempt do differently?"
            if not self._required:
                question += " (optional: enter on an empty line continues without)"
            yield Label(f"{self._title}\n{question}", markup=False)
            yield Input(placeholder=self._placeholder, id="feedback")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        feedback = event.value.strip()
        if not feedback and self._required:
            what = "an answer" if self._verb == "Answer" else "some feedback"
            self.notify(f"type {what} first (escape cancels)", severity="warning")
            return
        self.dismiss(feedback)

    def action_cancel(self) -> None:
        self.dismiss(None)
