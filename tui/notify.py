"""Telling a person that a ticket needs them: the terminal bell and a desktop notification.

The desktop notification uses ``notify-send`` (libnotify, freedesktop.org
notification spec) when it is installed and a display is set
(``DISPLAY`` or ``WAYLAND_DISPLAY``); otherwise only the bell rings.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping

from orchestrator.shared.config import TuiConfig
from orchestrator.shared.models import AgentState, AgentView, TicketState, TicketView

NOTIFY_TIMEOUT_S = 5.0


def desktop_available(environ: Mapping[str, str] = os.environ) -> str | None:
    """The ``notify-send`` path when a desktop notification can be shown, else None."""
    if not (environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY")):
        return None
    return shutil.which("notify-send")


def needs_person(old: TicketView | None, new: TicketView) -> str | None:
    """Why ``new`` needs a person now and did not before (one line), or None."""
    if old is not None and old.state == new.state:
        return None
    if new.state == TicketState.AWAITING_APPROVAL:
        return f"{new.id} passed CI and awaits approval"
    if new.state == TicketState.NEEDS_INPUT:
        question = " ".join((new.question or "").split())
        return f"{new.id} asks: {question[:200]}" if question else f"{new.id} asks a question"
    if new.state == TicketState.FAILED:
        return f"{new.id} failed: {new.reason}" if new.reason else f"{new.id} failed"
    return None


def agent_needs_person(old: AgentView | None, new: AgentView) -> str | None:
    """Why the agent needs a person now (it went stale), or None."""
    if new.state == AgentState.STALE and (old is None or old.state != AgentState.STALE):
        return f"{new.name} on {new.ticket or '?'} shows no progress (stale)"
    return None


class Notifier:
    """Sends desktop notifications per :class:`~shared.config.TuiConfig`.

    Args:
        config: the ``tui`` section; ``notify: off`` disables the desktop part.
        environ: where to look for a display (tests pass their own).
    """

    def __init__(self, config: TuiConfig, environ: Mapping[str, str] = os.environ) -> None:
        self.config = config
        self.command = desktop_available(environ) if config.notify == "auto" else None

    def desktop(self, summary: str, body: str) -> None:
        """Show a notification; failures (no notification daemon) are ignored by design."""
        if self.command is None:
            return
        try:
            subprocess.run(  # noqa: S603 - fixed argv, no shell
                [self.command, "--app-name=orchestrator", summary, body],
                check=False,
                timeout=NOTIFY_TIMEOUT_S,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired):
            self.command = None  # it will not work better next time
