"""Pictures of the main screen at 80×24 and 120×36 (pytest-textual-snapshot).

The data is fixed (conftest.make_snapshot), the clock frozen at conftest.NOW and
the zone pinned to UTC, so the SVGs only change when the rendering does.
Regenerate after an intended change with ``pytest tests/tui --snapshot-update``.
"""

from __future__ import annotations

import time

import pytest
from textual.pilot import Pilot

from orchestrator.tui.app import OrchestratorApp
from orchestrator.tui.widgets.board_table import BoardTable
from orchestrator.tui.widgets.detail_pane import DetailPane
from orchestrator.tui.widgets.event_log import EventLog


@pytest.fixture
def app(fake_daemon, make_app) -> OrchestratorApp:
    fake_daemon.initial_events = [
        fake_daemon.event(
            "agent.output",
            ticket="T-1",
            agent="agent-1",
            text="reading src/auth/views.py\nwriting tests/test_login.py\n",
        ),
        fake_daemon.event("ci.result", "T-2: CI pass on 0123456789", ticket="T-2"),
        fake_daemon.event("agent.stale", "agent-3: no progress for 600 s", agent="agent-3"),
    ]
    return make_app()


async def settle(pilot: Pilot) -> None:
    """Wait until the snapshot, the events and the diff summary are all on screen."""
    app = pilot.app
    assert isinstance(app, OrchestratorApp)
    detail = app.query_one(DetailPane)
    deadline = time.monotonic() + 10
    while not (
        app.board.last_event_id >= 103
        and detail.diff_text
        and "files changed" in detail.body_text
        and len(app.query_one(EventLog).lines) >= 3
        # the tables' column widths are measured after a refresh (late on a busy machine)
        and not any(table._require_update_dimensions for table in app.query(BoardTable))
    ):
        assert time.monotonic() < deadline, "the app did not settle"
        await pilot.pause(0.02)
    await pilot.pause(0.1)


def test_main_screen_80x24(app, snap_compare) -> None:
    assert snap_compare(app, terminal_size=(80, 24), run_before=settle)


def test_main_screen_120x36(app, snap_compare) -> None:
    assert snap_compare(app, terminal_size=(120, 36), run_before=settle)
