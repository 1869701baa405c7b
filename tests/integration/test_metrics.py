"""Metrics end to end: a real daemon runs scripted agents that print ORCH_USAGE lines and
a recorded Claude Code stream-json transcript; the CSV, the Prometheus textfile and HTTP
endpoint, `orchestrator metrics` and the report are checked by parsing them."""

from __future__ import annotations

import csv
import io
import json
import socket
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.shared import protocol as P

DATA = Path(__file__).resolve().parents[1] / "data" / "usage"
CLAUDE = DATA / "claude-code.stream.jsonl"
CLAUDE_COST = 0.0407105


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def wait_file(path: Path, predicate, project, what: str) -> str:
    def ready(_snap) -> bool:
        return path.exists() and predicate(path.read_text())

    project.wait_for(ready, timeout_s=30, what=what)
    return path.read_text()


def test_metrics_csv_prometheus_and_report(make_project):
    port = free_port()
    project = make_project(workers=2, extra=f"metrics: {{port: {port}}}\n")
    project.ticket(
        "fix",
        priority=1,
        description=(
            'a1: usage {"input_tokens": 1000, "output_tokens": 100, "cost_usd": 0.5}\n'
            "a1: write app.py def answer():\\n    return 41\\n\n"
            'a2: usage {"input_tokens": 2000, "output_tokens": 200, "cost_usd": 0.25}\n'
            'a2: usage {"input_tokens": -1}\n'
            "a2: write app.py def answer():\\n    return 42\\n# fixed\\n\n"
        ),
        locks=["app.py"],
    )
    project.ticket(
        "claude",
        description=f"cat {CLAUDE}\nwrite notes.txt from claude\n",
        locks=["notes.txt"],
    )
    project.wait_state("fix", "awaiting_approval")
    project.wait_state("claude", "awaiting_approval")
    assert project.send(P.Approve(ticket="fix")).ok
    project.wait_state("fix", "merged")
    assert project.send(P.Approve(ticket="claude")).ok
    project.wait_state("claude", "merged")
    home = project.home

    # metrics/tickets.csv: one row per ended ticket, parsed as CSV
    text = wait_file(
        home.metrics_dir / "tickets.csv", lambda t: t.count("\n") >= 3, project, "2 CSV rows"
    )
    rows = {r["ticket"]: r for r in csv.DictReader(io.StringIO(text))}
    fix, claude = rows["fix"], rows["claude"]
    assert fix["outcome"] == "merged" and fix["attempts"] == "2"
    assert float(fix["cost_usd"]) == pytest.approx(0.75)
    assert (fix["input_tokens"], fix["output_tokens"]) == ("3000", "300")
    assert fix["ci_runs"] == "2" and float(fix["agent_s"]) > 0
    assert float(fix["total_s"]) >= float(fix["approval_wait_s"]) > 0
    assert float(claude["cost_usd"]) == pytest.approx(CLAUDE_COST, abs=1e-6)
    assert claude["attempts"] == "1" and claude["cache_read_tokens"] == "27120"

    # the Prometheus textfile, parsed with prometheus_client's parser
    prom = wait_file(
        home.metrics_dir / "orchestrator.prom",
        lambda t: 'orchestrator_tickets{state="merged"} 2.0' in t,
        project,
        "textfile with 2 merged",
    )
    got = samples(prom)
    assert got[("orchestrator_tickets", (("state", "merged"),))] == 2
    assert got[("orchestrator_attempts_total", (("outcome", "failed"),))] == 1
    assert got[("orchestrator_attempts_total", (("outcome", "merged"),))] == 2
    assert got[("orchestrator_ci_runs_total", (("result", "fail"),))] == 1
    # 2 passes, plus 1 when the second merge re-checked its rebased tree
    ci_pass = got[("orchestrator_ci_runs_total", (("result", "pass"),))]
    assert ci_pass in (2, 3)
    cost = sum(v for (name, _), v in got.items() if name == "orchestrator_cost_usd_total")
    assert cost == pytest.approx(0.75 + CLAUDE_COST)
    assert got[("orchestrator_attempt_success_ratio", ())] == pytest.approx(2 / 3)
    assert got[("orchestrator_attempt_phase_seconds_count", (("phase", "agent"),))] == 3

    # the same metrics over HTTP on 127.0.0.1 (metrics.port)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        served = samples(resp.read().decode())
    assert served[("orchestrator_tickets", (("state", "merged"),))] == 2

    # orchestrator metrics --json / --csv / text
    result = project.cli("metrics", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    attempts = {(a["ticket"], a["attempt"]): a for a in data["attempts"]}
    assert attempts[("fix", 1)]["outcome"] == "failed"
    assert "CI fail" in attempts[("fix", 1)]["reason"]
    assert attempts[("fix", 2)]["outcome"] == "merged"
    assert attempts[("fix", 2)]["usage"]["malformed_lines"] == 1
    assert attempts[("fix", 2)]["approval_wait_s"] > 0
    assert attempts[("fix", 2)]["merge_wait_s"] > 0
    assert attempts[("claude", 1)]["usage"]["sources"] == ["claude"]
    totals = data["totals"]
    assert totals["attempts"] == 3 and totals["ci_pass"] == ci_pass
    assert totals["ci_runs"] == ci_pass + 1
    assert totals["usage"]["cost_usd"] == pytest.approx(0.75 + CLAUDE_COST)
    result = project.cli("metrics", "--csv")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["ticket"] for r in rows][-1] == "TOTAL" and len(rows) == 4
    assert float(rows[-1]["cost_usd"]) == pytest.approx(0.75 + CLAUDE_COST, abs=1e-6)
    text = project.cli("metrics").stdout
    assert "attempts: 3" in text and "cost: $0.7907" in text

    # TASKS.md: the board by state
    tasks = wait_file(home.tasks_file, lambda t: "## Merged (2)" in t, project, "TASKS.md")
    assert "`fix`" in tasks and "main fast-forwarded" in tasks

    # report includes the metrics
    report = project.cli("report").stdout
    assert "## Metrics" in report and "$0.7907" in report


def test_budget_stops_the_agent_keeps_its_work_and_says_why(make_project):
    project = make_project(workers=1, extra="budget: {max_cost_usd: 5.0}\n")
    project.ticket(
        "pricey",
        budget={"max_cost_usd": 1.0},  # the ticket's own budget wins over the config's
        description=(
            "write work.txt half done\n"
            'usage {"input_tokens": 1000, "output_tokens": 10, "cost_usd": 0.6}\n'
            'usage {"input_tokens": 1000, "output_tokens": 10, "cost_usd": 0.6}\n'
            "sleep 60\n"
        ),
    )
    snap = project.wait_state("pricey", "stopped", timeout_s=30)
    (view,) = [t for t in snap.tickets if t.id == "pricey"]
    assert view.reason.startswith("budget exceeded: $1.20 spent, budget.max_cost_usd is $1.00")
    assert view.branch is not None and view.branch in view.reason
    from tests.integration.conftest import git

    assert git(project.home.work, "show", f"{view.branch}:work.txt") == "half done"
    # a ticket under its budget is not stopped
    project.ticket("cheap", description='usage {"cost_usd": 0.5}\nwrite cheap.txt ok\n')
    project.wait_state("cheap", "awaiting_approval")


def test_bad_budget_values_are_refused_with_one_line(make_project, tmp_path: Path):
    from orchestrator.shared.config import load_config
    from orchestrator.shared.errors import ConfigError, TicketError
    from orchestrator.shared.models import parse_ticket

    with pytest.raises(TicketError) as exc:
        parse_ticket(b"title: t\nbudget: {max_cost_usd: -1}\n", Path("t.yaml"))
    assert "budget.max_cost_usd" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(TicketError, match="budget"):
        parse_ticket(b"title: t\nbudget: {max_usd: 1}\n", Path("t.yaml"))
    project = make_project(start=False)
    config = project.config.read_text()
    for bad, key in (
        ("budget: {max_cost_usd: 0}\n", "budget.max_cost_usd"),
        ("metrics: {port: 70000}\n", "metrics.port"),
        ("usage: {prices: {m: {input: 1}}}\n", "output"),
        ("worktree: {exclude: 3}\n", "worktree.exclude"),
        ("worktree: {copy: [../secrets]}\n", "worktree.copy[0]: must be a path relative"),
        ("worktree: {setup: make}\n", "worktree.setup"),
        ("ci: {setup: maybe}\n", "ci.setup"),
        ("usage: {model: 5}\n", "usage.model"),
    ):
        if bad.startswith("ci:"):  # config.yaml has a ci: block (a second one is a duplicate key)
            project.config.write_text(config.replace("\nci:\n", "\nci:\n  setup: maybe\n", 1))
        else:
            project.config.write_text(config + bad)
        with pytest.raises(ConfigError) as exc:
            load_config(project.config)
        assert key in str(exc.value) and "\n" not in str(exc.value), str(exc.value)


def test_rows_missed_while_no_daemon_wrote_them_are_added_at_start(make_project):
    project = make_project(workers=1, approval="auto")
    project.ticket("a", description="append app.py # a\n")
    project.wait_state("a", "merged")
    csv_path = project.home.metrics_dir / "tickets.csv"
    project.wait_for(lambda _s: csv_path.exists() and "\na," in csv_path.read_text(), 30, "row")
    project.stop()
    csv_path.unlink()  # as if the daemon had died before writing it
    project.start()
    project.wait_for(lambda _s: csv_path.exists(), 30, "the CSV again")
    rows = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    assert [(r["ticket"], r["outcome"]) for r in rows] == [("a", "merged")]
    project.stop()
    project.start()  # a second start adds nothing
    project.ticket("b", description="append app.py # b\n")
    project.wait_state("b", "merged")
    project.wait_for(lambda _s: "\nb," in csv_path.read_text(), 30, "row b")
    rows = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    assert [r["ticket"] for r in rows] == ["a", "b"]


def test_the_last_changes_are_written_when_the_daemon_stops(make_project):
    project = make_project(workers=1, approval="auto")
    project.ticket("z", description="append app.py # z\n")
    project.wait_state("z", "merged")
    project.stop()  # at once: within the debounce of the last change
    tasks = project.home.tasks_file.read_text()
    assert "1 tickets: 1 merged." in tasks
    rows = list(csv.DictReader(io.StringIO((project.home.metrics_dir / "tickets.csv").read_text())))
    assert [(r["ticket"], r["outcome"], r["agent"]) for r in rows] == [("z", "merged", "agent-1")]
