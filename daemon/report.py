"""``orchestrator report``: a Markdown summary of a run, read from state.db.

Sources: the ``tickets`` table (the last state of each ticket, see
:class:`daemon.core.TicketRecord`) and a few kinds of the ``events`` log
(``ci.result``, ``attempt.failed``, ``ticket.rejected``, see
:class:`shared.protocol.Event`). Works while the daemon runs (SQLite WAL lets
a reader in) and after it stopped; only reads.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import msgspec

from orchestrator.daemon.core import TicketRecord
from orchestrator.daemon.metrics import Metrics, all_ticket_metrics, totals
from orchestrator.daemon.store import Store
from orchestrator.shared.config import Home
from orchestrator.shared.errors import OrchestratorError
from orchestrator.shared.models import FINAL_STATES, CIState, TicketState
from orchestrator.shared.protocol import Event, EventKind
from orchestrator.shared.terminal import sanitize_message

#: Event kinds the report reads (agent output, the bulk of the log, is skipped).
REPORT_KINDS = (EventKind.CI_RESULT, EventKind.ATTEMPT_FAILED, EventKind.TICKET_REJECTED)
#: ``ci.result`` messages, as daemon.core writes them: ``<ticket>: CI <status> on <sha>``.
CI_MESSAGE_RE = re.compile(r"CI (?P<status>pass|fail|error) on (?P<sha>[0-9a-f]+)")
#: States whose ``state_since`` ends the ticket's run (nothing happens without a person).
ENDED_STATES = FINAL_STATES | {TicketState.FAILED}
SHORT_SHA = 10

_event_decoder = msgspec.json.Decoder(Event)


@dataclass
class CIRun:
    """One ``ci.result`` event."""

    ts: float
    ticket: str | None
    status: str
    """``pass``, ``fail`` or ``error``."""
    sha: str


@dataclass
class Failure:
    """A failed attempt, a failed ticket or a rejected file."""

    ts: float
    subject: str
    """Ticket id, or the file name of a rejected file."""
    what: str
    reason: str


@dataclass
class RunData:
    """What the report shows, read from one state.db."""

    records: list[TicketRecord]
    first_ts: float | None = None
    last_ts: float | None = None
    event_count: int = 0
    ci_runs: list[CIRun] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    metrics: Metrics | None = None


def write_report(home: Home) -> str:
    """The Markdown report of ``home``'s run (tickets, merges, CI, failures).

    Raises:
        OrchestratorError: ``home.state_db`` does not exist (the daemon never ran).
    """
    return render(read_run(home), home)


def read_run(home: Home) -> RunData:
    """Ticket records and the events the report needs, from ``home.state_db``.

    Raises:
        OrchestratorError: ``home.state_db`` does not exist.
    """
    if not home.state_db.exists():
        raise OrchestratorError(
            f"{home.state_db}: no state database yet; start the daemon "
            f"(orchestrator daemon --config {home.config_file}) first"
        )
    store = Store(home.state_db)
    try:
        data = RunData(records=sanitize_message(store.load()))
        first, last, count = store.db.execute(
            "SELECT MIN(ts), MAX(ts), COUNT(*) FROM events"
        ).fetchone()
        data.first_ts, data.last_ts, data.event_count = first, last, count
        for event in _events_of_kinds(store, REPORT_KINDS):
            _take_event(data, sanitize_message(event))
        tickets = all_ticket_metrics(home, store)
        data.metrics = Metrics(
            attempts=[a for t in tickets for a in t.attempts], totals=totals(tickets)
        )
    finally:
        store.close()
    for rec in data.records:
        if rec.state == TicketState.FAILED:
            data.failures.append(Failure(rec.state_since, rec.id, "ticket failed", rec.reason))
        elif rec.state == TicketState.REJECTED:
            data.failures.append(Failure(rec.state_since, rec.id, "ticket rejected", rec.reason))
    data.failures.sort(key=lambda f: f.ts)
    return data


def _events_of_kinds(store: Store, kinds: Iterable[str]) -> Iterator[Event]:
    kinds = tuple(kinds)
    marks = ", ".join("?" * len(kinds))
    cursor = store.db.execute(f"SELECT data FROM events WHERE kind IN ({marks}) ORDER BY id", kinds)  # noqa: S608
    for (raw,) in cursor:
        yield _event_decoder.decode(raw)


def _take_event(data: RunData, event: Event) -> None:
    view = event.ticket_view
    if event.kind == EventKind.CI_RESULT:
        if view is not None and view.ci is not None and view.ci.status != CIState.RUNNING:
            data.ci_runs.append(CIRun(event.ts, event.ticket, view.ci.status, view.ci.sha))
        elif match := CI_MESSAGE_RE.search(event.message):
            data.ci_runs.append(CIRun(event.ts, event.ticket, match["status"], match["sha"]))
    elif event.kind == EventKind.ATTEMPT_FAILED:
        attempt = f"attempt {view.attempt}" if view is not None else "attempt"
        reason = (
            view.reason
            if view is not None and view.reason
            else (event.message.partition(" failed: ")[2] or event.message)
        )
        data.failures.append(Failure(event.ts, event.ticket or "?", f"{attempt} failed", reason))
    elif event.kind == EventKind.TICKET_REJECTED:
        name, _, reason = event.message.partition(": ")
        data.failures.append(Failure(event.ts, name, "file rejected", reason or event.message))


# --- rendering -----------------------------------------------------------------


def render(data: RunData, home: Home) -> str:
    """The Markdown text of the report."""
    out: list[str] = ["# Orchestrator run report", ""]
    out.append(f"- Project home: `{home.root}`")
    if data.first_ts is None or data.last_ts is None:
        out.append("- Events: none recorded")
    else:
        out.append(
            f"- Events: {data.event_count}, from {_when(data.first_ts)} to "
            f"{_when(data.last_ts)} ({_duration(data.last_ts - data.first_ts)})"
        )
    out.append(f"- Generated: {_when(time.time())}")
    out += ["", "## Summary", ""]
    out += _summary(data)
    out += ["", "## Tickets", ""]
    out += _tickets(data)
    out += ["", "## Merges", ""]
    out += _merges(data)
    out += ["", "## CI", ""]
    out += _ci(data)
    out += ["", "## Failures", ""]
    out += _failures(data)
    if data.metrics is not None:
        out += ["", "## Metrics", ""]
        out += _metrics(data.metrics)
    return "\n".join(out) + "\n"


def _metrics(metrics: Metrics) -> list[str]:
    """Totals, then a row per attempt (docs/metrics.md)."""
    t = metrics.totals
    u = t.usage
    lines = [
        "| Total | Value |",
        "|---|---:|",
        f"| Attempts | {t.attempts} |",
        f"| Queue wait | {_duration(t.queue_wait_s)} |",
        f"| Agent time | {_duration(t.agent_s)} |",
        f"| CI runs (pass) | {t.ci_runs} ({t.ci_pass}) |",
        f"| CI time | {_duration(t.ci_s)} |",
        f"| Approval wait | {_duration(t.approval_wait_s)} |",
        f"| Merge wait | {_duration(t.merge_wait_s)} |",
        f"| Tokens in / out | {u.input_tokens} / {u.output_tokens} |",
        f"| Tokens cache read / write | {u.cache_read_tokens} / {u.cache_write_tokens} |",
        f"| Cost | ${u.cost_usd:.4f} |",
    ]
    if u.unpriced_models:
        lines.append(f"| No price for | {_cell(', '.join(u.unpriced_models))} |")
    if not metrics.attempts:
        return lines
    lines += [
        "",
        "| Ticket | Attempt | Agent | Outcome | Queue | Agent time | CI runs | CI time "
        "| Approval | Merge | Tokens | Cost |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for a in metrics.attempts:
        lines.append(
            f"| `{a.ticket}` | {a.attempt} | {a.agent or '—'} | {a.outcome} "
            f"| {_duration(a.queue_wait_s)} | {_duration(a.agent_s)} | {a.ci_runs} "
            f"| {_duration(a.ci_s)} | {_duration(a.approval_wait_s)} "
            f"| {_duration(a.merge_wait_s)} | {a.usage.tokens} | ${a.usage.cost_usd:.4f} |"
        )
    return lines


def _summary(data: RunData) -> list[str]:
    lines = []
    states = Counter(rec.state for rec in data.records)
    lines.append(
        f"{len(data.records)} tickets: "
        + (
            ", ".join(
                f"{count} {state}" for state, count in sorted(states.items(), key=lambda kv: -kv[1])
            )
            or "none"
        )
    )
    ci = Counter(run.status for run in data.ci_runs)
    lines.append("")
    lines.append(
        f"CI runs: {len(data.ci_runs)} ({ci['pass']} pass, {ci['fail']} fail, {ci['error']} error)"
    )
    attempts = sum(rec.attempt for rec in data.records)
    failed = sum(1 for f in data.failures if f.what.startswith("attempt"))
    lines.append("")
    lines.append(f"Agent attempts: {attempts} ({failed} failed)")
    lines += ["", "| State | Tickets |", "|---|---:|"]
    lines += [f"| {state} | {states[state]} |" for state in TicketState if states[state]]
    return lines


def _tickets(data: RunData) -> list[str]:
    if not data.records:
        return ["No tickets."]
    ci_by_ticket: dict[str, list[str]] = {}
    for run in data.ci_runs:
        if run.ticket:
            ci_by_ticket.setdefault(run.ticket, []).append(run.status)
    lines = [
        "| Ticket | Title | State | Priority | Attempts | Agent | Branch | Queued → end "
        "| CI results |",
        "|---|---|---|---|---:|---|---|---:|---|",
    ]
    for rec in data.records:
        took = (
            _duration(rec.state_since - rec.queued_at)
            if rec.state in ENDED_STATES
            else f"({rec.state})"
        )
        lines.append(
            " | ".join(
                [
                    f"| `{rec.id}`",
                    _cell(rec.ticket.title),
                    str(rec.state),
                    f"P{rec.ticket.priority}",
                    f"{rec.attempt}/{rec.max_attempts}",
                    rec.agent or "—",
                    f"`{rec.branch}`" if rec.branch else "—",
                    took,
                    ", ".join(ci_by_ticket.get(rec.id, [])) or "—",
                ]
            )
            + " |"
        )
    return lines


def _merges(data: RunData) -> list[str]:
    merged = sorted((r for r in data.records if r.merged_sha), key=lambda r: r.state_since)
    if not merged:
        return ["Nothing merged."]
    lines = [
        "In merge order (main's history).",
        "",
        "| Ticket | Merged sha | Merged at | Attempts |",
        "|---|---|---|---:|",
    ]
    for rec in merged:
        lines.append(
            f"| `{rec.id}` | `{rec.merged_sha}` | {_when(rec.state_since)} | {rec.attempt} |"
        )
    return lines


def _ci(data: RunData) -> list[str]:
    if not data.ci_runs:
        return ["No CI results."]
    lines = ["| Time | Ticket | Result | Commit |", "|---|---|---|---|"]
    for run in data.ci_runs:
        lines.append(
            f"| {_when(run.ts)} | `{run.ticket or '?'}` | {run.status} | `{run.sha[:SHORT_SHA]}` |"
        )
    return lines


def _failures(data: RunData) -> list[str]:
    if not data.failures:
        return ["None."]
    lines = ["| Time | Ticket | What | Reason |", "|---|---|---|---|"]
    for f in data.failures:
        lines.append(f"| {_when(f.ts)} | `{f.subject}` | {f.what} | {_cell(f.reason)} |")
    return lines


def _cell(text: str) -> str:
    """Text made safe for one Markdown table cell (no pipes, no line breaks)."""
    return " ".join(text.split()).replace("|", "\\|") or "—"


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
