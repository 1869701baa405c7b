"""``n``: write a new ticket in a form; it is validated here, then the daemon is asked to take it.

The form's fields are the ticket file's (docs/tickets.md). On enter (or ctrl+s)
the fields become the YAML of a ticket file, which is checked with
:func:`shared.models.parse_ticket` (the daemon's own rules); a problem is shown
in the form, which stays open. A valid ticket dismisses the form with
``(file name, YAML text)`` for the app to send as an ``enqueue`` command.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import msgspec
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static, TextArea

from orchestrator.shared.errors import TicketError
from orchestrator.shared.models import parse_ticket


def ticket_yaml(
    ticket_id: str,
    title: str,
    priority: str,
    locks: str,
    depends_on: str,
    description: str,
) -> str:
    """The YAML of a ticket file from the form's texts (comma-separated lists).

    Raises:
        TicketError: the priority is not a number.
    """
    doc: dict[str, object] = {"title": title.strip()}
    if ticket_id.strip():
        doc["id"] = ticket_id.strip()
    if priority.strip():
        try:
            doc["priority"] = int(priority)
        except ValueError:
            raise TicketError(f"priority: {priority!r} is not a number 0..4") from None
    lock_list = [p.strip() for p in locks.split(",") if p.strip()]
    if lock_list:
        doc["locks"] = lock_list
    deps = [d.strip() for d in depends_on.split(",") if d.strip()]
    if deps:
        doc["depends_on"] = deps
    if description.strip():
        doc["description"] = description.strip() + "\n"
    import msgspec.yaml

    return msgspec.yaml.encode(doc).decode()


class NewTicketScreen(ModalScreen[tuple[str, str] | None]):
    """Dismisses with ``(file name, YAML)`` of a valid ticket, or None (escape)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "submit", "Enqueue"),
    ]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="new-box") as box:
            box.border_title = "New ticket"
            box.border_subtitle = "enter in a field or ctrl+s: enqueue · escape: cancel"
            yield Input(placeholder="title (required)", id="title")
            yield Input(placeholder="id (default: from the title)", id="id")
            yield Input(placeholder="priority 0..4 (default 2)", id="priority")
            yield Input(placeholder="locks: src/, docs/*.md (default: the whole repo)", id="locks")
            yield Input(placeholder="depends on: other-ticket, ...", id="depends")
            yield Label("description (the agent's instructions):")
            yield TextArea(id="description")
            yield Static("", id="new-error", markup=False)

    def on_mount(self) -> None:
        self.query_one("#title", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_submit()

    def action_submit(self) -> None:
        def text(selector: str) -> str:
            return self.query_one(selector, Input).value

        title = text("#title")
        ticket_id = text("#id").strip() or id_from_title(title)
        try:
            yaml = ticket_yaml(
                ticket_id,
                title,
                text("#priority"),
                text("#locks"),
                text("#depends"),
                self.query_one("#description", TextArea).text,
            )
            ticket = parse_ticket(yaml.encode(), Path(f"{ticket_id or 'new'}.yaml"))
        except TicketError as exc:
            self.query_one("#new-error", Static).update(f"✗ {exc}")
            return
        except msgspec.MsgspecError as exc:
            self.query_one("#new-error", Static).update(f"✗ {exc}")
            return
        self.dismiss((f"{ticket.id}.yaml", yaml))

    def action_cancel(self) -> None:
        self.dismiss(None)


def id_from_title(title: str) -> str:
    """``Add a --verbose flag`` -> ``add-a-verbose-flag`` (at most 40 characters)."""
    out = []
    for ch in title.lower():
        if ch.isalnum() and ch.isascii():
            out.append(ch)
        elif out and out[-1] != "-":
            out.append("-")
    return "".join(out).strip("-")[:40].strip("-")
