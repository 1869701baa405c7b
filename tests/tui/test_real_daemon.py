"""The TUI against a real daemon: real git, real socket, the scripted agent as a process.

Blocking calls to the daemon (status, start, stop) run in a thread so the app
under test keeps running while the test waits.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual.pilot import Pilot
from textual.widgets import Input

from orchestrator.shared import protocol as P
from orchestrator.shared.models import TicketState
from orchestrator.tui.app import OrchestratorApp
from orchestrator.tui.widgets.banner import Banner
from orchestrator.tui.widgets.reject_screen import RejectScreen
from orchestrator.tui.widgets.tickets_table import TicketsTable
from tests.integration.conftest import Project

SIZE = (120, 36)
TIMEOUT_S = 60.0
QUICK = "write src/{name}.py {name} = 1\\n"


async def until(
    pilot: Pilot, predicate: Callable[[], object], what: str, timeout_s: float = TIMEOUT_S
) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.1)


async def wait_daemon(
    pilot: Pilot,
    project: Project,
    predicate: Callable[[P.Snapshot], bool],
    what: str,
    timeout_s: float = TIMEOUT_S,
) -> P.Snapshot:
    """Poll the daemon's status (in a thread) until ``predicate``; the app keeps running."""
    deadline = time.monotonic() + timeout_s
    while True:
        snap = await asyncio.to_thread(project.snapshot)
        if predicate(snap):
            return snap
        if time.monotonic() > deadline:
            states = {t.id: (str(t.state), t.reason) for t in snap.tickets}
            log = (project.root / "daemon.log").read_text()[-3000:]
            raise AssertionError(
                f"timed out waiting for {what}: {states}\n--- daemon log ---\n{log}"
            )
        await pilot.pause(0.1)


async def wait_state(pilot: Pilot, project: Project, tid: str, *states: str) -> P.Snapshot:
    return await wait_daemon(
        pilot,
        project,
        lambda s: any(t.id == tid and t.state in states for t in s.tickets),
        f"{tid} in {states}",
    )


def row_state(app: OrchestratorApp, tid: str) -> str | None:
    """The State cell of ``tid`` in the tickets panel, or None when it has no row."""
    table = app.query_one(TicketsTable)
    return table.cell_text(tid, "state") if table.has_row(tid) else None


async def select_ticket(pilot: Pilot, tid: str) -> None:
    """Focus the tickets panel (tab) and move the cursor to ``tid``'s row (j/k)."""
    app = pilot.app
    table = app.query_one(TicketsTable)
    if app.focused is not table:
        await pilot.press("tab")
    assert app.focused is table
    target = table.row_keys.index(tid)
    while table.cursor_row != target:
        await pilot.press("j" if table.cursor_row < target else "k")
    assert app.selected()[0] is not None and app.selected()[0].id == tid


async def test_c_approves_and_the_ticket_is_merged(make_project) -> None:
    project = make_project(workers=1)
    app = OrchestratorApp(project.home.socket_path)
    async with app.run_test(size=SIZE) as pilot:
        project.ticket("T-ok", description=QUICK.format(name="ok"))
        await wait_state(pilot, project, "T-ok", "awaiting_approval")
        await until(
            pilot,
            lambda: row_state(app, "T-ok") == "awaiting_approval",
            "the TUI to show T-ok awaiting approval",
        )

        await select_ticket(pilot, "T-ok")
        await pilot.press("c", "y")
        await wait_state(pilot, project, "T-ok", "merged")
        await until(
            pilot,
            lambda: app.board.tickets["T-ok"].state == TicketState.MERGED,
            "the TUI to learn T-ok merged",
        )
        await until(pilot, lambda: row_state(app, "T-ok") is None, "merged T-ok hidden")
        await pilot.press("f")
        await until(pilot, lambda: row_state(app, "T-ok") == "merged", "T-ok shown merged")
        assert any(
            n.title == "approve T-ok" and n.severity == "information" for n in app._notifications
        )


async def test_s_stops_a_running_agent(make_project) -> None:
    project = make_project(workers=1)
    app = OrchestratorApp(project.home.socket_path)
    async with app.run_test(size=SIZE) as pilot:
        project.ticket("T-spin", description="spin 600")
        await wait_state(pilot, project, "T-spin", "running")
        await until(
            pilot, lambda: row_state(app, "T-spin") == "running", "the TUI to show T-spin running"
        )
        await until(
            pilot,
            lambda: "working..." in "\n".join(app.board.output.get("T-spin", ())),
            "the agent's output in the TUI",
        )

        await select_ticket(pilot, "T-spin")
        await pilot.press("s")
        snap = await wait_state(pilot, project, "T-spin", "stopped")
        await until(
            pilot, lambda: row_state(app, "T-spin") == "stopped", "the TUI to show T-spin stopped"
        )
        agent = next(a for a in snap.agents if a.name == "agent-1")
        assert agent.ticket is None and agent.pid is None, "the agent process is gone"


async def test_r_sends_feedback_to_a_new_attempt(make_project) -> None:
    project = make_project(workers=1)
    app = OrchestratorApp(project.home.socket_path)
    async with app.run_test(size=SIZE) as pilot:
        # The second attempt spins so that it is still running when we look at it.
        project.ticket("T-rej", description=QUICK.format(name="rej") + "\na2: spin 600")
        await wait_state(pilot, project, "T-rej", "awaiting_approval")
        await until(
            pilot,
            lambda: row_state(app, "T-rej") == "awaiting_approval",
            "the TUI to show T-rej awaiting approval",
        )

        await select_ticket(pilot, "T-rej")
        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, RejectScreen), "the reject dialog")
        await pilot.press(*"kiwi")
        assert app.screen.query_one(Input).value == "kiwi"
        await pilot.press("enter")
        await until(pilot, lambda: not isinstance(app.screen, RejectScreen), "the dialog to close")

        snap = await wait_daemon(
            pilot,
            project,
            lambda s: any(
                t.id == "T-rej" and t.attempt == 2 and t.feedback_file for t in s.tickets
            ),
            "attempt 2 of T-rej with a feedback file",
        )
        view = next(t for t in snap.tickets if t.id == "T-rej")
        feedback = Path(view.feedback_file)
        assert feedback == project.home.runs / "T-rej" / "2" / "feedback.md"
        assert "kiwi" in feedback.read_text()
        await until(
            pilot, lambda: app.board.tickets["T-rej"].attempt == 2, "the TUI to show attempt 2"
        )
        await until(
            pilot,
            lambda: app.query_one(TicketsTable).cell_text("T-rej", "attempt").startswith("2/"),
            "the Att column to show 2",
        )


async def test_banner_while_daemon_is_down_then_resync(make_project) -> None:
    project = make_project(workers=1)
    project.ticket("T-one", description=QUICK.format(name="one"))
    app = OrchestratorApp(project.home.socket_path)
    async with app.run_test(size=SIZE) as pilot:
        banner = app.query_one(Banner)
        await until(pilot, lambda: row_state(app, "T-one") is not None, "T-one in the TUI")
        assert not banner.display

        await asyncio.to_thread(project.stop)
        await until(pilot, lambda: banner.display, "the disconnected banner")
        assert "daemon disconnected" in str(banner.render())
        assert not app.board.connected

        # Written while the daemon is down: only a fresh snapshot can show it.
        project.ticket("T-two", description=QUICK.format(name="two"))
        await asyncio.to_thread(project.start)
        await until(pilot, lambda: not banner.display, "the banner to go away")
        await until(pilot, lambda: row_state(app, "T-two") is not None, "T-two after the resync")
        assert row_state(app, "T-one") is not None
        assert app.board.connected


async def test_a_answers_an_agents_question(make_project) -> None:
    """An agent asks (the real `orchestrator ask`); the TUI notifies, shows the question in
    the tickets table and Detail, and `a` sends the answer, which the agent merges."""
    from orchestrator.shared.config import TuiConfig
    from orchestrator.tui.notify import Notifier
    from orchestrator.tui.widgets.detail_pane import DetailPane
    from tests.integration.conftest import git

    sent: list[str] = []

    class Recorder(Notifier):
        def desktop(self, summary: str, body: str) -> None:
            sent.append(body)

    project = make_project(workers=1, approval="auto")
    app = OrchestratorApp(project.home.socket_path, notifier=Recorder(TuiConfig(), environ={}))
    rings: list[int] = []
    app.bell = lambda: rings.append(1)  # type: ignore[method-assign]
    toasts: list[tuple[str, str]] = []
    post_toast = app.notify

    def recording_notify(message: str, **kwargs: Any) -> None:
        toasts.append((kwargs.get("title", ""), kwargs.get("severity", "information")))
        post_toast(message, **kwargs)

    app.notify = recording_notify  # type: ignore[method-assign]
    async with app.run_test(size=SIZE) as pilot:
        project.ticket("T-ask", description="ask src/fruit.txt Which fruit?\n")
        await wait_state(pilot, project, "T-ask", "needs_input")
        await until(
            pilot, lambda: row_state(app, "T-ask") == "needs_input", "T-ask shown needs_input"
        )
        await until(pilot, lambda: sent, "a desktop notification")
        assert "T-ask asks: Which fruit?" in sent[0] and rings
        table = app.query_one(TicketsTable)
        await until(
            pilot, lambda: "asks: Which fruit?" in table.cell_text("T-ask", "reason"), "the Why"
        )

        await select_ticket(pilot, "T-ask")
        detail = app.query_one(DetailPane)
        await until(
            pilot,
            lambda: "question" in detail.body_text and "press a to answer" in detail.body_text,
            "the question in Detail",
        )
        await pilot.press("a")
        await until(pilot, lambda: isinstance(app.screen, RejectScreen), "the answer dialog")
        await pilot.press("enter")  # empty: refused, the dialog stays
        assert isinstance(app.screen, RejectScreen)
        await pilot.press(*"kiwi", "enter")
        await until(pilot, lambda: not isinstance(app.screen, RejectScreen), "the dialog to close")
        # the daemon's reply, as a toast (recorded when posted: toasts expire under load)
        await until(
            pilot,
            lambda: ("answer T-ask", "information") in toasts,
            "the reply to the answer",
        )

        await wait_state(pilot, project, "T-ask", "merged")
        assert git(project.home.repo, "show", "main:src/fruit.txt") == "kiwi"
        events = await asyncio.to_thread(project.cli, "events", "--since", "0")
        assert "T-ask: answer: kiwi by" in events.stdout and "via tui: done" in events.stdout
