"""``n`` with ``$VISUAL``/``$EDITOR`` set: a new ticket written in the person's editor.

The app suspends itself (Textual's ``App.suspend``), runs the editor on a draft
file pre-filled with :data:`TEMPLATE`, then reads the draft back with
:func:`read_draft`, which checks it with :func:`shared.models.parse_ticket` (the
daemon's own rules). Nothing typed is lost: the draft is deleted only once the
daemon has taken the ticket or when it was left as the template; an invalid
draft is kept, with the reason on its first line as a comment, and ``n`` opens
it again.
"""

from __future__ import annotations

import os
import shlex
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import msgspec
import msgspec.yaml

from orchestrator.shared.errors import TicketError
from orchestrator.shared.models import parse_ticket
from orchestrator.tui.widgets.new_ticket_screen import id_from_title

#: What a new draft holds (the fields of docs/tickets.md; comments are kept as written).
TEMPLATE = """\
# A new ticket (fields: docs/tickets.md). Fill in the title and the description,
# save and quit: it is checked, then enqueued. Quit leaving it as it is to cancel.
title:
# id: my-ticket              # default: made from the title
priority: 2                  # 0 (most urgent) .. 4
# locks: [src/, docs/*.md]   # what it may change; default: the whole repository
# depends_on: [other-ticket] # tickets that must be merged first
description: |
  What the agent should do, and how to tell it is done.
"""

#: First-line comment :func:`read_draft` leaves in an invalid draft (replaced each time).
ERROR_MARK = "# ✗ "


def editor_command(env: Mapping[str, str] = os.environ) -> list[str] | None:
    """``$VISUAL``, else ``$EDITOR``, split like a shell word list; None when neither is set.

    Raises:
        ValueError: the variable does not split (an unclosed quote).
    """
    value = (env.get("VISUAL") or env.get("EDITOR") or "").strip()
    return shlex.split(value) if value else None


def new_draft() -> Path:
    """A new draft file (mode 0600, in the temporary directory) holding :data:`TEMPLATE`."""
    fd, name = tempfile.mkstemp(prefix="orchestrator-ticket-", suffix=".yaml")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(TEMPLATE)
    return Path(name)


@dataclass(frozen=True)
class Draft:
    """A valid draft: ``name`` (``<id>.yaml``) and ``yaml`` for an ``enqueue`` command."""

    name: str
    yaml: str


def read_draft(path: Path) -> Draft | None:
    """Read the draft back: a :class:`Draft`, or None when it is still the template
    (or empty): the person cancelled.

    Raises:
        TicketError: the ticket is not valid; one line. The reason is also written
            as the draft's first line (:data:`ERROR_MARK`), the rest kept as typed.
        OSError: the draft cannot be read.
    """
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.splitlines(keepends=True)
    while lines and lines[0].startswith(ERROR_MARK):
        lines.pop(0)
    body = "".join(lines)
    if not body.strip() or body == TEMPLATE:
        return None
    default = f"{_default_id(body)}.yaml"
    try:
        ticket = parse_ticket(body.encode(), Path(default))
    except TicketError as exc:
        reason = str(exc).removeprefix(f"{default}: ").replace("\n", " ")
        path.write_text(f"{ERROR_MARK}{reason}\n{body}", encoding="utf-8")
        raise TicketError(reason) from None
    return Draft(name=f"{ticket.id}.yaml", yaml=body)


def _default_id(body: str) -> str:
    """The id a draft without ``id`` gets: made from its title, as the form does."""
    try:
        doc = msgspec.yaml.decode(body.encode())
    except msgspec.DecodeError:
        return "new-ticket"  # parse_ticket reports the YAML error
    title = doc.get("title") if isinstance(doc, dict) else None
    return id_from_title(title) if isinstance(title, str) and id_from_title(title) else "new-ticket"
