"""Metrics per attempt and per ticket, derived from the event log and the agents' output.

Sources, all read-only: the ``events`` table of ``state.db`` (every persisted event
carries the ticket's complete view, so the state timeline of each ticket can be
replayed), the ``tickets`` table, and ``runs/<ticket>/<attempt>/agent.log`` plus
``usage.jsonl`` for tokens and cost (:mod:`orchestrator.shared.usage`).

Definitions (docs/metrics.md):

- ``queue_wait_s``: time in ``queued`` / ``blocked`` before the attempt started;
- ``agent_s``: time in ``running`` (worktree preparation, the agent, commit, push); time
  in ``needs_input`` (the agent waits for a person's answer) is not counted;
- ``ci_runs``, ``ci_s``: ``ci.result`` events of the attempt and the CI's own
  durations (``duration_s`` of the CI status JSON);
- ``review_rounds``: reviewer rounds that ended (``review.result`` and ``review.error``
  events of the attempt; docs/review.md);
- ``approval_wait_s``: time in ``awaiting_approval``;
- ``merge_wait_s``: time in ``merging`` (rebase, re-check, fast-forward);
- ``outcome``: ``merged``, ``failed`` (the attempt failed; ``reason`` says why),
  ``stopped``, ``requeued`` (stale, lease expired, shutdown), ``cancelled``,
  ``rejected``, or the current state while the attempt is still going.
"""

from __future__ import annotations

import csv
import io
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from orchestrator.daemon.core import TicketRecord
from orchestrator.daemon.store import Store
from orchestrator.shared.config import Home
from orchestrator.shared.errors import OrchestratorError
from orchestrator.shared.models import FINAL_STATES, TicketState
from orchestrator.shared.protocol import Event
from orchestrator.shared.usage import Usage, parse_files, price_table

S = TicketState
#: A ticket has ended (a CSV row is written) when it enters one of these states.
ENDED_STATES = FINAL_STATES | {S.FAILED}
WAITING = (S.QUEUED, S.BLOCKED)
ACTIVE = (S.RUNNING, S.NEEDS_INPUT, S.CI_RUNNING, S.REVIEWING, S.AWAITING_APPROVAL, S.MERGING)
PHASES = ("queue", "agent", "ci", "approval", "merge")

_event_decoder = msgspec.json.Decoder(Event)
_record_decoder = msgspec.json.Decoder(TicketRecord)


class AttemptMetrics(msgspec.Struct, kw_only=True):
    """One attempt of one ticket (a row of ``orchestrator metrics``)."""

    ticket: str
    attempt: int
    agent: str = ""
    started_at: float = 0.0
    """Unix time (s) the attempt left the queue."""
    ended_at: float | None = None
    """Unix time (s) of its outcome; None while it is still going."""
    queue_wait_s: float = 0.0
    agent_s: float = 0.0
    ci_runs: int = 0
    ci_pass: int = 0
    ci_s: float = 0.0
    review_rounds: int = 0
    approval_wait_s: float = 0.0
    merge_wait_s: float = 0.0
    outcome: str = ""
    reason: str = ""
    usage: Usage = msgspec.field(default_factory=Usage)


class TicketMetrics(msgspec.Struct, kw_only=True):
    """The attempts of one ticket and its totals (a row of ``metrics/tickets.csv``)."""

    ticket: str
    title: str
    state: str
    priority: int
    queued_at: float
    ended_at: float | None
    attempts: list[AttemptMetrics]
    reason: str = ""
    agent: str = ""

    def total(self, name: str) -> float:
        return float(sum(getattr(a, name) for a in self.attempts))

    def usage(self) -> Usage:
        total = Usage()
        for a in self.attempts:
            total.add(a.usage)
        return total


class Totals(msgspec.Struct, kw_only=True):
    tickets: int = 0
    tickets_by_state: dict[str, int] = msgspec.field(default_factory=dict)
    attempts: int = 0
    attempts_by_outcome: dict[str, int] = msgspec.field(default_factory=dict)
    queue_wait_s: float = 0.0
    agent_s: float = 0.0
    ci_runs: int = 0
    ci_pass: int = 0
    ci_s: float = 0.0
    review_rounds: int = 0
    approval_wait_s: float = 0.0
    merge_wait_s: float = 0.0
    usage: Usage = msgspec.field(default_factory=Usage)


class Metrics(msgspec.Struct, kw_only=True):
    """``orchestrator metrics --json``: a row per attempt plus totals."""

    attempts: list[AttemptMetrics]
    totals: Totals


# --- derivation (pure) ------------------------------------------------------------


@dataclass
class _Replay:
    attempts: dict[int, AttemptMetrics] = field(default_factory=dict)
    state: str = ""
    since: float = 0.0
    attempt: int = 0
    pending_queue_s: float = 0.0
    agent: str = ""

    def row(self, ticket: str, n: int) -> AttemptMetrics:
        if n not in self.attempts:
            self.attempts[n] = AttemptMetrics(ticket=ticket, attempt=n)
        return self.attempts[n]


def replay(ticket: str, events: Iterable[Event], now: float) -> dict[int, AttemptMetrics]:
    """Attempt metrics of ``ticket`` from its events (oldest first); open segments end at
    ``now``. Usage is not filled in (see :func:`fill_usage`)."""
    r = _Replay()
    for ev in events:
        view = ev.ticket_view
        if view is None:
            continue
        if view.agent:
            r.agent = view.agent
        if view.state != r.state or view.attempt != r.attempt:
            _close(r, ticket, ev.ts)
            _enter(r, ticket, str(view.state), view.attempt, ev.ts, view.reason)
        if ev.kind == "ci.result" and view.ci is not None and view.attempt > 0:
            row = r.row(ticket, view.attempt)
            row.ci_runs += 1
            row.ci_pass += view.ci.status == "pass"
            row.ci_s += view.ci.duration_s or 0.0
        elif ev.kind in ("review.result", "review.error") and view.attempt > 0:
            r.row(ticket, view.attempt).review_rounds += 1
        elif ev.kind == "attempt.failed" and view.attempt > 0:
            row = r.row(ticket, view.attempt)
            row.outcome, row.ended_at = "failed", ev.ts
            row.reason = ev.message.partition(" failed: ")[2] or view.reason
    _close(r, ticket, now)
    for row in r.attempts.values():
        if not row.outcome:
            row.outcome = r.state if row.attempt == r.attempt else "requeued"
    return r.attempts


def _close(r: _Replay, ticket: str, ts: float) -> None:
    """End the current state segment at ``ts`` and book its time."""
    if not r.state:
        return
    dur = max(0.0, ts - r.since)
    if r.state in WAITING:
        r.pending_queue_s += dur
        return
    if r.attempt <= 0:
        return
    row = r.row(ticket, r.attempt)
    if r.state == S.RUNNING:
        row.agent_s += dur
    elif r.state == S.AWAITING_APPROVAL:
        row.approval_wait_s += dur
    elif r.state == S.MERGING:
        row.merge_wait_s += dur


def _enter(r: _Replay, ticket: str, state: str, attempt: int, ts: float, reason: str) -> None:
    previous, prev_attempt = r.state, r.attempt
    r.state, r.attempt, r.since = state, attempt, ts
    if state in ACTIVE and attempt > 0:
        row = r.row(ticket, attempt)
        if not row.started_at:
            row.started_at = ts
            row.agent = r.agent
        row.queue_wait_s += r.pending_queue_s
        r.pending_queue_s = 0.0
        return
    if prev_attempt <= 0 or previous not in ACTIVE or prev_attempt not in r.attempts:
        return  # only the end of an active stretch is an attempt's outcome
    row = r.attempts[prev_attempt]
    if row.outcome == "failed":
        return
    outcome = {
        S.MERGED: "merged",
        S.STOPPED: "stopped",
        S.FAILED: "failed",
        S.QUEUED: "requeued",
        S.CANCELLED: "cancelled",
        S.REJECTED: "rejected",
    }.get(TicketState(state))
    if outcome:
        row.outcome, row.ended_at = outcome, ts
        if outcome != "merged":
            row.reason = reason


def fill_usage(home: Home, rows: Iterable[AttemptMetrics], cache: UsageCache | None = None) -> None:
    """Parse each attempt's agent log and usage file into ``row.usage``."""
    prices = price_table(home.config.usage.prices)
    for row in rows:
        run_dir = home.runs / row.ticket / str(row.attempt)
        paths = [run_dir / "agent.log", run_dir / "usage.jsonl"]
        if cache is not None:
            row.usage = cache.get(paths, prices, home.config.usage.model)
        else:
            row.usage = parse_files(paths, prices, home.config.usage.model)


class UsageCache:
    """Parsed usage per set of files, reparsed only when a file's size or mtime changed."""

    def __init__(self) -> None:
        self._entries: dict[tuple[Path, ...], tuple[tuple[tuple[int, int], ...], Usage]] = {}

    def get(self, paths: list[Path], prices: dict, model: str) -> Usage:  # type: ignore[type-arg]
        key = tuple(paths)
        stamp = tuple(_stamp(p) for p in paths)
        hit = self._entries.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        usage = parse_files(paths, prices, model)
        self._entries[key] = (stamp, usage)
        return usage


def _stamp(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except OSError:
        return (-1, -1)
    return (st.st_size, st.st_mtime_ns)


def ticket_metrics(
    home: Home, rec: TicketRecord, events: Iterable[Event], now: float, cache: UsageCache | None
) -> TicketMetrics:
    """Everything about one ticket (its attempts, with usage)."""
    attempts = replay(rec.id, events, now)
    rows = [attempts[n] for n in sorted(attempts)]
    fill_usage(home, rows, cache)
    return TicketMetrics(
        ticket=rec.id,
        title=rec.ticket.title,
        state=str(rec.state),
        priority=rec.ticket.priority,
        queued_at=rec.queued_at,
        ended_at=rec.state_since if rec.state in ENDED_STATES else None,
        attempts=rows,
        reason=rec.reason,
        agent=rec.agent or "",
    )


def totals(tickets: Iterable[TicketMetrics]) -> Totals:
    """Sums over the tickets and their attempts."""
    t = Totals()
    states: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    for tm in tickets:
        t.tickets += 1
        states[tm.state] += 1
        for a in tm.attempts:
            t.attempts += 1
            outcomes[a.outcome] += 1
            t.queue_wait_s += a.queue_wait_s
            t.agent_s += a.agent_s
            t.ci_runs += a.ci_runs
            t.ci_pass += a.ci_pass
            t.ci_s += a.ci_s
            t.review_rounds += a.review_rounds
            t.approval_wait_s += a.approval_wait_s
            t.merge_wait_s += a.merge_wait_s
            t.usage.add(a.usage)
    t.tickets_by_state = dict(sorted(states.items()))
    t.attempts_by_outcome = dict(sorted(outcomes.items()))
    return t


# --- reading state.db ----------------------------------------------------------------


def ticket_events(store: Store, ticket: str) -> Iterator[Event]:
    """The persisted events of ``ticket``, oldest first."""
    cursor = store.db.execute("SELECT data FROM events WHERE ticket = ? ORDER BY id", (ticket,))
    for (raw,) in cursor:
        yield _event_decoder.decode(raw)


def load_records(store: Store, ids: set[str]) -> list[TicketRecord]:
    """The persisted records of the tickets ``ids`` (unknown ids are skipped)."""
    records = []
    rows = list(ids)
    for i in range(0, len(rows), 500):  # SQLite's limit on host parameters
        chunk = rows[i : i + 500]
        marks = ", ".join("?" * len(chunk))
        cursor = store.db.execute(f"SELECT data FROM tickets WHERE id IN ({marks})", chunk)  # noqa: S608
        records += [_record_decoder.decode(raw) for (raw,) in cursor]
    return records


def all_ticket_metrics(
    home: Home, store: Store, now: float | None = None, cache: UsageCache | None = None
) -> list[TicketMetrics]:
    """Metrics of every ticket in ``store``, in arrival order."""
    now = time.time() if now is None else now
    by_ticket: dict[str, list[Event]] = {}
    cursor = store.db.execute("SELECT data FROM events WHERE ticket IS NOT NULL ORDER BY id")
    for (raw,) in cursor:
        ev = _event_decoder.decode(raw)
        assert ev.ticket is not None
        by_ticket.setdefault(ev.ticket, []).append(ev)
    return [
        ticket_metrics(home, rec, by_ticket.get(rec.id, []), now, cache) for rec in store.load()
    ]


def read_metrics(home: Home, now: float | None = None) -> Metrics:
    """``orchestrator metrics``: every attempt plus totals, from ``home``'s state.db.

    Raises:
        OrchestratorError: no state.db yet (the daemon never ran).
    """
    if not home.state_db.exists():
        raise OrchestratorError(
            f"{home.state_db}: no state database yet; start the daemon "
            f"(orchestrator daemon --config {home.config_file}) first"
        )
    store = Store(home.state_db)
    try:
        tickets = all_ticket_metrics(home, store, now)
    finally:
        store.close()
    return Metrics(attempts=[a for t in tickets for a in t.attempts], totals=totals(tickets))


# --- CSV -------------------------------------------------------------------------------

#: The measures shared by a row per attempt and a row per ticket (their sums).
MEASURE_COLUMNS = [
    "queue_wait_s",
    "agent_s",
    "ci_runs",
    "ci_s",
    "review_rounds",
    "approval_wait_s",
    "merge_wait_s",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cost_usd",
    "reason",
]

ATTEMPT_COLUMNS = [
    "ticket",
    "attempt",
    "agent",
    "started_at",
    "ended_at",
    "outcome",
    *MEASURE_COLUMNS,
]

TICKET_COLUMNS = [
    "ticket",
    "title",
    "outcome",
    "priority",
    "attempts",
    "agent",
    "enqueued_at",
    "ended_at",
    "total_s",
    *MEASURE_COLUMNS,
]


def iso(ts: float | None) -> str:
    """UTC ISO 8601 with seconds, or "" (CSV cells)."""
    if not ts:
        return ""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _usage_cells(u: Usage) -> list[str]:
    return [
        str(u.input_tokens),
        str(u.output_tokens),
        str(u.cache_read_tokens),
        str(u.cache_write_tokens),
        f"{u.cost_usd:.6f}",
    ]


def _one_line(text: str) -> str:
    return " ".join(text.split())[:500]


def attempts_csv(metrics: Metrics) -> str:
    """``orchestrator metrics --csv``: a header, a row per attempt, a ``TOTAL`` row."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(ATTEMPT_COLUMNS)
    for a in metrics.attempts:
        w.writerow(
            [
                a.ticket,
                a.attempt,
                a.agent,
                iso(a.started_at),
                iso(a.ended_at),
                a.outcome,
                f"{a.queue_wait_s:.3f}",
                f"{a.agent_s:.3f}",
                a.ci_runs,
                f"{a.ci_s:.3f}",
                a.review_rounds,
                f"{a.approval_wait_s:.3f}",
                f"{a.merge_wait_s:.3f}",
                *_usage_cells(a.usage),
                _one_line(a.reason),
            ]
        )
    t = metrics.totals
    w.writerow(
        [
            "TOTAL",
            t.attempts,
            "",
            "",
            "",
            ",".join(f"{k}={v}" for k, v in t.attempts_by_outcome.items()),
            f"{t.queue_wait_s:.3f}",
            f"{t.agent_s:.3f}",
            t.ci_runs,
            f"{t.ci_s:.3f}",
            t.review_rounds,
            f"{t.approval_wait_s:.3f}",
            f"{t.merge_wait_s:.3f}",
            *_usage_cells(t.usage),
            "",
        ]
    )
    return out.getvalue()


def ticket_row(tm: TicketMetrics) -> list[str]:
    """One row of ``metrics/tickets.csv`` (columns :data:`TICKET_COLUMNS`)."""
    u = tm.usage()
    end = tm.ended_at
    return [
        tm.ticket,
        _one_line(tm.title),
        tm.state,
        str(tm.priority),
        str(len(tm.attempts)),
        tm.agent or (tm.attempts[-1].agent if tm.attempts else ""),
        iso(tm.queued_at),
        iso(end),
        f"{(end - tm.queued_at):.3f}" if end else "",
        f"{tm.total('queue_wait_s'):.3f}",
        f"{tm.total('agent_s'):.3f}",
        str(int(tm.total("ci_runs"))),
        f"{tm.total('ci_s'):.3f}",
        str(int(tm.total("review_rounds"))),
        f"{tm.total('approval_wait_s'):.3f}",
        f"{tm.total('merge_wait_s'):.3f}",
        *_usage_cells(u),
        _one_line(tm.reason),
    ]


def append_ticket_row(path: Path, tm: TicketMetrics) -> None:
    """Append ``tm``'s row to the CSV at ``path`` (header first when the file is new).

    One ``write(2)`` with ``O_APPEND`` per row, then fsync, so rows never interleave
    and a crash leaves whole rows.
    """
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if os.fstat(fd).st_size == 0:
            w.writerow(TICKET_COLUMNS)
        w.writerow(ticket_row(tm))
        os.write(fd, out.getvalue().encode())
        os.fsync(fd)
    finally:
        os.close(fd)


# --- text --------------------------------------------------------------------------


def render_text(metrics: Metrics) -> str:
    """``orchestrator metrics``: an aligned table of attempts, then the totals."""
    lines = [
        f"{'TICKET':<24} {'#':>2} {'AGENT':<8} {'OUTCOME':<18} {'QUEUE':>7} {'AGENT_S':>7} "
        f"{'CI':>3} {'CI_S':>6} {'APPROVE':>7} {'MERGE':>6} {'TOKENS':>9} {'COST_USD':>9}"
    ]
    for a in metrics.attempts:
        lines.append(
            f"{a.ticket[:24]:<24} {a.attempt:>2} {a.agent[:8]:<8} {a.outcome[:18]:<18} "
            f"{a.queue_wait_s:>7.0f} {a.agent_s:>7.0f} {a.ci_runs:>3} {a.ci_s:>6.0f} "
            f"{a.approval_wait_s:>7.0f} {a.merge_wait_s:>6.0f} {a.usage.tokens:>9} "
            f"{a.usage.cost_usd:>9.4f}"
        )
    t = metrics.totals
    lines += [
        "",
        f"tickets: {t.tickets} ("
        + ", ".join(f"{n} {s}" for s, n in t.tickets_by_state.items())
        + ")",
        f"attempts: {t.attempts} ("
        + ", ".join(f"{n} {o}" for o, n in t.attempts_by_outcome.items())
        + ")",
        f"CI runs: {t.ci_runs} ({t.ci_pass} pass), {t.ci_s:.0f} s",
        f"time: queue {t.queue_wait_s:.0f} s, agent {t.agent_s:.0f} s, "
        f"approval {t.approval_wait_s:.0f} s, merge {t.merge_wait_s:.0f} s",
        f"tokens: {t.usage.input_tokens} in, {t.usage.output_tokens} out, "
        f"{t.usage.cache_read_tokens} cache read, {t.usage.cache_write_tokens} cache write",
        f"cost: ${t.usage.cost_usd:.4f}"
        + (
            f" (no price for: {', '.join(t.usage.unpriced_models)}; set usage.prices)"
            if t.usage.unpriced_models
            else ""
        ),
    ]
    return "\n".join(lines) + "\n"
