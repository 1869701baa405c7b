"""The detail pane: the subject ticket (or agent): why it is where it is, the CI verdict
with the failing tests first, the diff summary, then the agent output, newest attempt first."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static
from textual.worker import Worker, WorkerState

from orchestrator.shared.models import AgentView, TicketState, TicketView
from orchestrator.tui import git
from orchestrator.tui.board import ATTEMPT_MARK
from orchestrator.tui.format import (
    CI_STYLES,
    agent_state_style,
    set_border_title,
    since,
    ticket_state,
)

#: Output lines shown; the whole log is one key away (``l``).
OUTPUT_TAIL_LINES = 40
CI_TAIL_LINES = 15
#: Reviewer comments shown in the Detail pane (all of them: `orchestrator status`).
MAX_REVIEW_LINES = 30
#: Shortest interval between two redraws for new output alone (s): a live tail read by a
#: person needs no more; redrawing it for every batch of a 1,000 lines/s stream cost
#: a fifth of the TUI's CPU (docs/performance.md).
OUTPUT_REDRAW_S = 0.25
#: How often the diff summary of a ticket that is still being worked on is recomputed.
DIFF_REFRESH_S = 10.0

_SECTION = "bold cyan"
#: Lines of a CI log that name a failing test (pytest's short summary, unittest, go test).
FAILING_TEST_RE = re.compile(r"^(FAILED |ERROR |FAIL: |ERROR: |--- FAIL: )")


class DetailPane(VerticalScroll):
    """Scrollable text about one ticket or agent, rebuilt by :meth:`show`.

    The diff summary comes from ``git diff --stat`` run in a thread worker; it
    is recomputed when the ticket's branch, state or CI commit changes, and every
    :data:`DIFF_REFRESH_S` while an agent works on it.
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._diff_key: tuple[object, ...] | None = None
        self._diff_started = 0.0
        self._diff_text = ""
        self._subject: str | None = None
        self._last: tuple[TicketView | None, AgentView | None, list[str], float, str] | None = None
        self._body = Text()
        self._drawn_at = 0.0
        self._redraw_pending = False

    def compose(self) -> ComposeResult:
        yield Static(self._body, id="detail-body")

    @property
    def diff_text(self) -> str:
        """The diff summary shown (empty while git runs)."""
        return self._diff_text

    @property
    def body_text(self) -> str:
        """The plain text shown."""
        return self._body.plain

    def show(
        self,
        ticket: TicketView | None,
        agent: AgentView | None,
        output: Sequence[str],
        git_dir: Path | None,
        now: float,
        *,
        why: str = "",
    ) -> None:
        """Show ``ticket`` (and the ``agent`` on it), or ``agent`` alone, or a hint if neither."""
        subject = ticket.id if ticket else (agent.name if agent else None)
        if subject != self._subject:
            self._subject = subject
            self.scroll_home(animate=False)
        set_border_title(self, f"Detail · {subject}" if subject else "Detail")
        if ticket is not None:
            self._maybe_start_diff(ticket, agent, git_dir)
        previous, self._last = self._last, (ticket, agent, list(output), now, why)
        if previous is not None and previous[:2] == (ticket, agent) and previous[4] == why:
            # Only the output (or the clock) moved: redraw at most every OUTPUT_REDRAW_S.
            wait_s = self._drawn_at + OUTPUT_REDRAW_S - time.monotonic()
            if wait_s > 0:
                if not self._redraw_pending:
                    self._redraw_pending = True
                    self.set_timer(wait_s, self._redraw)
                return
        self._render_body()

    def _redraw(self) -> None:
        self._redraw_pending = False
        self._render_body()

    def _render_body(self) -> None:
        if self._last is None:
            return
        self._drawn_at = time.monotonic()
        ticket, agent, output, now, why = self._last
        if ticket is None and agent is None:
            self._update(
                Text(
                    "Nothing selected: move with ↑/↓ or j/k in the agents or tickets panel.",
                    style="dim",
                )
            )
            return
        parts: list[Text] = []
        if ticket is None:
            assert agent is not None
            parts.append(_agent_head(agent, now))
            parts.append(_output(output))
        else:
            parts.append(_ticket_head(ticket, agent, now, why))
            parts += [_ci(ticket), _diff(self._diff_text), _output(output)]
        self._update(Text("\n").join(p for p in parts if p.plain))

    def _update(self, text: Text) -> None:
        if text == self._body:
            return
        self._body = text
        # A highlight can arrive before compose or while the app closes, when the body is
        # not mounted; compose shows ``self._body`` once it is.
        for body in self.query("#detail-body").results(Static):
            # A layout pass redraws the whole screen (the tickets table included): only
            # when the body's height changes, not for every ticket the cursor passes.
            size = body.content_size
            body.update(text, layout=False)
            body.clear_cached_dimensions()
            if not size.width or body.get_content_height(size, size, size.width) != size.height:
                body.refresh(layout=True)

    def _maybe_start_diff(
        self, ticket: TicketView, agent: AgentView | None, git_dir: Path | None
    ) -> None:
        branch = ticket.branch or (agent.branch if agent else None)
        key = (
            ticket.id,
            branch,
            ticket.state,
            ticket.state_since,
            ticket.attempt,
            ticket.ci.sha if ticket.ci else None,
            git_dir,
        )
        stale = (
            ticket.state == TicketState.RUNNING
            and time.monotonic() - self._diff_started > DIFF_REFRESH_S
        )
        if key == self._diff_key and not stale:
            return
        if key != self._diff_key:
            self._diff_text = ""
        self._diff_key = key
        self._diff_started = time.monotonic()
        if branch is None:
            self._diff_text = "no branch yet"
        elif git_dir is None:
            self._diff_text = "no worktree or work clone found to run git in"
        else:
            width = max(self.size.width - 4, 40)
            self.run_worker(
                lambda: git.diff_stat(git_dir, branch, width),
                name=repr(key),
                group="diffstat",
                thread=True,
                exclusive=True,
                exit_on_error=False,
            )

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        worker = event.worker
        if worker.group != "diffstat" or worker.name != repr(self._diff_key):
            return
        if event.state == WorkerState.SUCCESS:
            self._diff_text = str(worker.result)
        elif event.state == WorkerState.ERROR:
            self._diff_text = f"diff unavailable: {worker.error}"
        else:
            return
        self._render_body()


def _section(title: str, style: str = _SECTION) -> Text:
    return Text(f"── {title} ", style=style)


def _ticket_head(ticket: TicketView, agent: AgentView | None, now: float, why: str) -> Text:
    head = Text()
    head.append(ticket.id, style="bold")
    head.append(f"  {ticket.title}\n")
    head.append_text(ticket_state(ticket.state))
    head.append(f" {since(ticket.state_since, now)}")
    head.append(f" · {_priority(ticket, now)}")
    if ticket.attempt:
        head.append(f" · attempt {ticket.attempt}/{ticket.max_attempts}")
    if agent is not None:
        head.append(f" · {agent.name}")
    if ticket.branch:
        head.append(f"\nbranch {ticket.branch}")
    why = why or ticket.reason
    if why:
        head.append("\nwhy: ", style="bold")
        head.append(why, style="italic")
    if ticket.review is not None:
        head.append(f"\n{ticket.review.summary()}", style="magenta")
        lines = ticket.review.comment_lines()
        for line in lines[:MAX_REVIEW_LINES]:
            head.append(f"\n  {line}")
        if len(lines) > MAX_REVIEW_LINES:
            head.append(f"\n  … {len(lines) - MAX_REVIEW_LINES} more (orchestrator status)")
    if ticket.state == TicketState.AWAITING_APPROVAL:
        head.append("\npress c to merge, r to send it back with feedback", style="bold")
    if ticket.state == TicketState.NEEDS_INPUT and ticket.question:
        head.append("\nquestion", style="bold magenta")
        if ticket.asked_at:
            head.append(f" (asked {since(ticket.asked_at, now)} ago)", style="dim")
        head.append(f":\n{ticket.question}\n")
        head.append("press a to answer", style="bold")
    if ticket.locks:
        head.append(f"\nlocks: {', '.join(ticket.locks)}", style="dim")
    if ticket.depends_on:
        head.append(f"\ndepends on: {', '.join(ticket.depends_on)}", style="dim")
    if agent is not None and agent.note:
        head.append(f"\nnote: {agent.note}", style="dim")
    return head


def _priority(ticket: TicketView, now: float) -> str:
    """``P2``, or ``P2, effective 1.9 after 30m queued (aging)`` (see the help screen)."""
    label = f"P{ticket.priority}"
    if abs(ticket.effective_priority - ticket.priority) >= 0.05:
        waited = f" after {since(ticket.queued_at, now)} queued" if ticket.queued_at else ""
        label += f", effective {ticket.effective_priority:.1f}{waited} (aging: ? explains)"
    return label


def _agent_head(agent: AgentView, now: float) -> Text:
    head = Text()
    head.append(agent.name, style="bold")
    head.append(" ")
    head.append(str(agent.state), style=agent_state_style(agent, None))
    head.append(f" {since(agent.state_since, now)}")
    if agent.last_activity:
        head.append(f" · active {since(agent.last_activity, now)} ago")
    head.append(f"\nworktree {agent.worktree}", style="dim")
    if agent.note:
        head.append(f"\nnote: {agent.note}", style="dim")
    return head


def _output(lines: Sequence[str]) -> Text:
    """The output tail, one block per attempt, the newest attempt first."""
    if not lines:
        return Text()
    blocks: list[tuple[str, list[str]]] = [("output", [])]
    for line in lines:
        if line.startswith(ATTEMPT_MARK):
            blocks.append((f"output of attempt {line[len(ATTEMPT_MARK) :]}", []))
        else:
            blocks[-1][1].append(line)
    text = Text()
    for title, block in reversed([b for b in blocks if b[1]]):
        if text.plain:
            text.append("\n")
        text.append_text(_section(title + " (newest last)"))
        text.append("\n")
        text.append_text(Text.from_ansi("\n".join(block[-OUTPUT_TAIL_LINES:])))
    return text


def failing_tests(log: str) -> list[str]:
    """Lines of a CI log that name a failing test (``FAILED tests/x.py::test_y - ...``)."""
    return [line.strip() for line in log.splitlines() if FAILING_TEST_RE.match(line.strip())]


def _ci(ticket: TicketView) -> Text:
    ci = ticket.ci
    if ci is None:
        return Text()
    title = f"CI {ci.status}"
    if ci.duration_s is not None:
        title += f" in {ci.duration_s:.0f} s"
    title += f" · {ci.sha[:10]}"
    text = _section(title, f"bold {CI_STYLES.get(ci.status, 'cyan')}")
    log = git.strip_ansi(ci.log_tail).rstrip()
    failing = failing_tests(log)
    if failing:
        text.append(f"\n{len(failing)} failing:", style="bold red")
        for line in failing[:CI_TAIL_LINES]:
            text.append(f"\n  {line}", style="red")
    tail = log.splitlines()[-CI_TAIL_LINES:]
    if tail:
        text.append("\n" + "\n".join(tail), style="dim" if failing else "")
    return text


def _diff(diff_text: str) -> Text:
    text = _section("diff").append("\n")
    return text.append(diff_text or "computing…", style="" if diff_text else "dim")
