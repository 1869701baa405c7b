"""Files the daemon keeps current in the home: TASKS.md, metrics/tickets.csv, Prometheus.

:class:`HomeFiles` watches the events the daemon commits (:meth:`HomeFiles.on_events`,
called on the loop after each commit; it only records what changed) and a task of
its own (:meth:`HomeFiles.run`) does the writing, debounced: it waits for a change,
waits ``DEBOUNCE_S`` more so a burst of events makes one write, then works in a
thread, off the loop:

- ``TASKS.md``: a Markdown board of the tickets by state, with their reasons,
  written atomically (temp file, fsync, rename);
- ``metrics/tickets.csv``: a row per ticket that ended (merged, failed, rejected,
  cancelled) since the last write (docs/metrics.md);
- ``metrics/orchestrator.prom``: the Prometheus text exposition of
  :class:`MetricsCollector` (``metrics.textfile``), and the same metrics on
  ``http://127.0.0.1:<metrics.port>/metrics`` when that is set.

Errors writing these files are logged and announced as ``warning`` events; they
never stop the daemon.
"""

from __future__ import annotations

import csv
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio

from orchestrator.daemon import metrics as M
from orchestrator.daemon.store import Store
from orchestrator.shared.config import Home
from orchestrator.shared.fsutil import atomic_write
from orchestrator.shared.models import TicketState, TicketView
from orchestrator.shared.protocol import Event

log = logging.getLogger(__name__)

#: Wait this long after a change before writing, so a burst makes one write (s).
DEBOUNCE_S = 0.5
#: At most this many tickets per state are listed in TASKS.md.
TASKS_ROWS_PER_STATE = 200

S = TicketState
#: TASKS.md sections, in this order.
BOARD_ORDER = [
    (S.NEEDS_INPUT, "Needs input"),
    (S.RUNNING, "Running"),
    (S.CI_RUNNING, "In CI"),
    (S.REVIEWING, "In review"),
    (S.AWAITING_APPROVAL, "Awaiting approval"),
    (S.MERGING, "Merging"),
    (S.QUEUED, "Queued"),
    (S.BLOCKED, "Blocked"),
    (S.STOPPED, "Stopped"),
    (S.FAILED, "Failed"),
    (S.MERGED, "Merged"),
    (S.REJECTED, "Rejected"),
    (S.CANCELLED, "Cancelled"),
]


class HomeFiles:
    """Keeps TASKS.md, metrics/tickets.csv and the Prometheus metrics of ``home`` current.

    Args:
        home: the project home.
        views: the tickets as the daemon holds them at start (queue order first).
        notice: announces a warning event (a write failed).
    """

    def __init__(self, home: Home, views: list[TicketView], notice: Callable[[str], None]) -> None:
        self.home = home
        self.notice = notice
        self.views: dict[str, TicketView] = {v.id: v for v in views}
        self.dirty: set[str] = set(self.views)
        """Tickets whose metrics must be recomputed."""
        self.ended: list[str] = []
        """Tickets that ended since the last write: they get a CSV row."""
        self._changed = anyio.Event()
        self._changed.set()
        self.metrics: dict[str, M.TicketMetrics] = {}
        self.cache = M.UsageCache()
        self.collector = MetricsCollector(self)
        self._registry: Any = None
        self._http: Any = None
        self._store: Store | None = None
        self.writes = 0

    def on_events(self, events: list[Event]) -> None:
        """Take the events of one committed batch (on the loop; cheap)."""
        for ev in events:
            view = ev.ticket_view
            if view is None:
                continue
            before = self.views.get(view.id)
            self.views[view.id] = view
            self.dirty.add(view.id)
            if view.state in M.ENDED_STATES and (before is None or before.state != view.state):
                self.ended.append(view.id)
            self._changed.set()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Write whenever something changed, debounced; runs until cancelled."""
        self._start_http()
        task_status.started()
        try:
            while True:
                await self._changed.wait()
                await anyio.sleep(DEBOUNCE_S)
                await self._flush()
        finally:
            if self._changed.is_set():  # shutdown: what changed last is written too
                with anyio.CancelScope(shield=True):
                    await self._flush()
            if self._http is not None:
                self._http.shutdown()
                self._http.server_close()
            if self._store is not None:
                self._store.close()

    async def _flush(self) -> None:
        self._changed = anyio.Event()
        views = list(self.views.values())
        # A ticket that never started has no attempt to measure (cheap bursts).
        dirty = {t for t in self.dirty if t in self.views and self.views[t].attempt > 0}
        self.dirty = set()
        ended, self.ended = self.ended, []
        try:
            await anyio.to_thread.run_sync(self.write, views, dirty, ended)
        except OSError as exc:
            log.warning("cannot write home files: %s", exc)
            self.notice(f"cannot write TASKS.md or metrics: {exc.strerror or exc}")

    def write(self, views: list[TicketView], dirty: set[str], ended: list[str]) -> None:
        """Recompute the dirty tickets' metrics, append CSV rows, write TASKS.md and the
        textfile (in a worker thread). The first write also adds the rows of tickets that
        ended while no daemon wrote them (a crash within the debounce, an older home)."""
        if self.writes == 0:
            ended = ended + [t for t in self._missing_rows(views) if t not in ended]
        if dirty or ended:
            if self._store is None:  # one connection, used only from this thread's calls
                self._store = Store(self.home.state_db)
            now = time.time()
            for rec in M.load_records(self._store, dirty | set(ended)):
                events = M.ticket_events(self._store, rec.id)
                self.metrics[rec.id] = M.ticket_metrics(self.home, rec, events, now, self.cache)
            for ticket in ended:
                if ticket in self.metrics:
                    M.append_ticket_row(self.home.metrics_dir / "tickets.csv", self.metrics[ticket])
        atomic_write(self.home.tasks_file, render_tasks(views, time.time()))
        if self.home.config.metrics.textfile:
            self.home.metrics_dir.mkdir(parents=True, exist_ok=True)
            self._write_textfile(self.home.metrics_dir / "orchestrator.prom")
        self.writes += 1

    def _missing_rows(self, views: list[TicketView]) -> list[str]:
        """Ended tickets whose end (ticket, ended_at) has no row in metrics/tickets.csv."""
        path = self.home.metrics_dir / "tickets.csv"
        try:
            with path.open(newline="") as f:
                rows = {(r.get("ticket"), r.get("ended_at")) for r in csv.DictReader(f)}
        except FileNotFoundError:
            rows = set()
        return [
            v.id
            for v in views
            if v.state in M.ENDED_STATES and (v.id, M.iso(v.state_since)) not in rows
        ]

    def _write_textfile(self, path: Path) -> None:
        from prometheus_client import write_to_textfile

        write_to_textfile(str(path), self._get_registry())

    def _get_registry(self) -> Any:
        if self._registry is None:
            from prometheus_client import CollectorRegistry

            self._registry = CollectorRegistry(auto_describe=False)
            self._registry.register(self.collector)
        return self._registry

    def _start_http(self) -> None:
        port = self.home.config.metrics.port
        if port is None:
            return
        from prometheus_client import start_http_server

        try:
            self._http, _ = start_http_server(port, addr="127.0.0.1", registry=self._get_registry())
        except OSError as exc:
            self.notice(f"metrics.port {port}: cannot listen on 127.0.0.1: {exc.strerror or exc}")


class MetricsCollector:
    """A prometheus_client custom collector over :attr:`HomeFiles.metrics` and the views.

    Metric names and labels: docs/metrics.md. Reads a snapshot of the dicts, so it may
    run in the HTTP server's thread while the writer updates them.
    """

    def __init__(self, files: HomeFiles) -> None:
        self.files = files

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            SummaryMetricFamily,
        )

        views = list(self.files.views.values())
        tickets = list(self.files.metrics.values())
        attempts = [a for t in tickets for a in t.attempts]

        by_state = Counter(str(v.state) for v in views)
        g = GaugeMetricFamily("orchestrator_tickets", "Tickets by current state.", labels=["state"])
        for state in TicketState:
            g.add_metric([str(state)], by_state.get(str(state), 0))
        yield g

        outcomes = Counter(a.outcome for a in attempts)
        c = CounterMetricFamily(
            "orchestrator_attempts", "Agent attempts by outcome.", labels=["outcome"]
        )
        for outcome, n in sorted(outcomes.items()):
            c.add_metric([outcome], n)
        yield c

        ci_runs = sum(a.ci_runs for a in attempts)
        ci_pass = sum(a.ci_pass for a in attempts)
        c = CounterMetricFamily("orchestrator_ci_runs", "CI runs by result.", labels=["result"])
        c.add_metric(["pass"], ci_pass)
        c.add_metric(["fail"], ci_runs - ci_pass)
        yield c

        ended = [a for a in attempts if a.ended_at is not None]
        merged = sum(1 for a in ended if a.outcome == "merged")
        yield GaugeMetricFamily(
            "orchestrator_attempt_success_ratio",
            "Merged attempts / ended attempts (NaN before any ended).",
            value=merged / len(ended) if ended else float("nan"),
        )
        yield GaugeMetricFamily(
            "orchestrator_ci_pass_ratio",
            "Passing CI runs / CI runs (NaN before any run).",
            value=ci_pass / ci_runs if ci_runs else float("nan"),
        )

        s = SummaryMetricFamily(
            "orchestrator_attempt_phase_seconds",
            "Time attempts spent in each phase (queue, agent, ci, approval, merge).",
            labels=["phase"],
        )
        for phase, attr in zip(
            M.PHASES,
            ("queue_wait_s", "agent_s", "ci_s", "approval_wait_s", "merge_wait_s"),
            strict=True,
        ):
            s.add_metric(
                [phase],
                count_value=len(attempts),
                sum_value=sum(getattr(a, attr) for a in attempts),
            )
        yield s

        done = [t for t in tickets if t.ended_at is not None]
        yield SummaryMetricFamily(
            "orchestrator_ticket_duration_seconds",
            "Enqueue to end (merged, failed, rejected, cancelled) of ended tickets.",
            count_value=len(done),
            sum_value=sum(t.ended_at - t.queued_at for t in done if t.ended_at is not None),
        )

        cost = CounterMetricFamily(
            "orchestrator_cost_usd", "Agent cost in USD, by worker.", labels=["agent"]
        )
        tokens = CounterMetricFamily(
            "orchestrator_tokens", "Agent tokens by worker and kind.", labels=["agent", "kind"]
        )
        per_agent: dict[str, list[float]] = {}
        for a in attempts:
            acc = per_agent.setdefault(a.agent or "none", [0.0, 0, 0, 0, 0])
            acc[0] += a.usage.cost_usd
            acc[1] += a.usage.input_tokens
            acc[2] += a.usage.output_tokens
            acc[3] += a.usage.cache_read_tokens
            acc[4] += a.usage.cache_write_tokens
        for agent, acc in sorted(per_agent.items()):
            cost.add_metric([agent], acc[0])
            for kind, value in zip(
                ("input", "output", "cache_read", "cache_write"), acc[1:], strict=True
            ):
                tokens.add_metric([agent, kind], value)
        yield cost
        yield tokens


# --- TASKS.md ----------------------------------------------------------------------


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|") or "—"


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def render_tasks(views: list[TicketView], now: float) -> str:
    """TASKS.md: the tickets by state (sections in :data:`BOARD_ORDER`, queued tickets in
    queue order), each with priority, agent, attempt, time in state and reason."""
    by_state: dict[str, list[TicketView]] = {}
    for v in views:
        by_state.setdefault(str(v.state), []).append(v)
    counts = ", ".join(
        f"{len(by_state[str(s)])} {title.lower()}"
        for s, title in BOARD_ORDER
        if by_state.get(str(s))
    )
    out = [
        "# Tasks",
        "",
        f"Updated {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(now))} by the orchestrator "
        "daemon; do not edit (it is rewritten on every change).",
        "",
        f"{len(views)} tickets" + (f": {counts}." if counts else "."),
    ]
    for state, title in BOARD_ORDER:
        group = by_state.get(str(state), [])
        if not group:
            continue
        if state == S.QUEUED:
            group.sort(key=lambda v: v.rank)
        elif state in (S.MERGED, S.REJECTED, S.CANCELLED, S.FAILED):
            group.sort(key=lambda v: -v.state_since)
        out += ["", f"## {title} ({len(group)})", ""]
        out += [
            "| Ticket | Title | Priority | Agent | Attempt | In state | Reason |",
            "|---|---|---|---|---|---:|---|",
        ]
        for v in group[:TASKS_ROWS_PER_STATE]:
            reason = v.reason
            if v.review is not None and state in (S.REVIEWING, S.AWAITING_APPROVAL):
                reason += f" ({v.review.summary()})"
            out.append(
                f"| `{v.id}` | {_cell(v.title)} | P{v.priority} | {v.agent or '—'} | "
                f"{v.attempt}/{v.max_attempts} | {_age(now - v.state_since)} | {_cell(reason)} |"
            )
        if len(group) > TASKS_ROWS_PER_STATE:
            out.append(f"\n… and {len(group) - TASKS_ROWS_PER_STATE} more.")
    return "\n".join(out) + "\n"
