"""``orchestrator report`` and ``orchestrator events --since`` on a real run.

The headless demo runs end to end in a subprocess (six tickets; csv-export
fails CI on attempt 1 and passes on attempt 2), then the report and the event
replay are read from the state.db it left behind and checked against git.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from orchestrator.cli import cli
from orchestrator.daemon.core import TicketRecord
from orchestrator.daemon.report import write_report
from orchestrator.daemon.store import Store
from orchestrator.shared.config import Home, load_config
from orchestrator.shared.errors import OrchestratorError
from orchestrator.shared.models import Ticket, TicketState
from orchestrator.shared.protocol import Event
from tests.integration.conftest import run_group

ROOT = Path(__file__).resolve().parents[2]
DEMO_TICKETS = sorted(p.stem for p in (ROOT / "examples" / "demo" / "tickets").glob("*.yaml"))
BIN = Path(sys.executable).parent


def _command() -> list[str]:
    script = BIN / "orchestrator"
    return [str(script)] if script.exists() else [sys.executable, "-m", "orchestrator"]


def orchestrator(
    *args: str, env: dict[str, str], timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    argv = _command()
    return subprocess.run(
        [*argv, *args], capture_output=True, text=True, env=env, timeout=timeout_s, cwd=ROOT
    )


#: With pytest-xdist (``--dist loadgroup``) the tests of ``demo_run`` run in one worker,
#: which runs the demo once for them all.
DEMO_GROUP = pytest.mark.xdist_group("report-demo")


@pytest.fixture(scope="module")
def demo_run() -> Iterator[tuple[Path, dict[str, str]]]:
    """The demo run once for the module: (its config.yaml, the env to run the CLI with)."""
    base = Path(tempfile.mkdtemp(prefix="orch-report-"))
    runtime = Path(tempfile.mkdtemp(prefix="orch-rt-", dir="/tmp"))
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime))
    env.pop("ORCH_CONFIG", None)
    try:
        # In its own process group: a timeout stops the demo's daemon too.
        result = run_group(
            [
                *_command(),
                "demo",
                "--dir",
                str(base),
                "--headless",
                "--auto-approve",
                "--timeout-s",
                # Generous: on a loaded machine (two cores shared by several test runs) the
                # six tickets' agents and CI runs took longer than the former 60 s now and then.
                "240",
            ],
            env=env,
            timeout_s=300,
            cwd=ROOT,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "demo: every ticket merged into main" in result.stdout
        yield base / "home" / "config.yaml", env
    finally:
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(runtime, ignore_errors=True)


def merged_commits(repo: Path) -> dict[str, str]:
    """Ticket id -> the newest commit on main of repo.git carrying its ``Ticket:`` trailer."""
    log = subprocess.run(
        ["git", "-C", str(repo), "log", "--format=%H%x01%B%x00", "main"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    newest: dict[str, str] = {}
    for entry in log.split("\x00"):
        sha, _, body = entry.strip().partition("\x01")
        for match in re.finditer(r"^Ticket: (\S+)$", body, re.MULTILINE):
            newest.setdefault(match[1], sha)
    return newest


def section(report: str, title: str) -> str:
    """The text of one ``## title`` section of the report."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", report, re.S | re.M)
    assert match, f"no section {title!r} in:\n{report}"
    return match[1]


def table_row(text: str, ticket: str) -> list[str]:
    """The cells of the one table row of ``text`` that names ``ticket``."""
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        for line in text.splitlines()
        if line.startswith("|")
    ]
    found = [cells for cells in rows if f"`{ticket}`" in cells]
    assert len(found) == 1, f"{ticket}: {len(found)} rows in\n{text}"
    return found[0]


@DEMO_GROUP
def test_report_of_the_demo(demo_run: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    config, env = demo_run
    out = tmp_path / "report.md"
    result = orchestrator("report", "--config", str(config), "--out", str(out), env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"wrote {out}"
    report = out.read_text()
    home = load_config(config)
    assert f"- Project home: `{home.root}`" in report

    merged = merged_commits(home.repo)
    assert sorted(merged) == DEMO_TICKETS
    merges = section(report, "Merges")
    tickets = section(report, "Tickets")
    for ticket in DEMO_TICKETS:
        assert table_row(merges, ticket)[1] == f"`{merged[ticket]}`"
        row = table_row(tickets, ticket)
        assert row[2] == "merged"
        assert "pass" in row[8].split(", ")
    csv = table_row(tickets, "csv-export")
    assert csv[4] == "2/3"  # attempt 2 of 3 was merged
    assert csv[8].split(", ")[0] == "fail"

    summary = section(report, "Summary")
    assert f"{len(DEMO_TICKETS)} tickets: {len(DEMO_TICKETS)} merged" in summary
    ci = re.search(r"CI runs: (\d+) \((\d+) pass, (\d+) fail, (\d+) error\)", summary)
    assert ci, summary
    runs, passed, failed, errors = map(int, ci.groups())
    assert failed >= 1 and passed >= len(DEMO_TICKETS) and runs == passed + failed + errors
    assert "| merged | 6 |" in summary

    failures = section(report, "Failures")
    row = table_row(failures, "csv-export")
    assert row[1:3] == ["`csv-export`", "attempt 1 failed"]
    assert row[3].startswith("CI fail")


@DEMO_GROUP
def test_the_demo_agent_asks_and_the_headless_demo_answers(
    demo_run: tuple[Path, dict[str, str]],
) -> None:
    config, env = demo_run
    result = orchestrator("events", "--since", "0", "--json", "--config", str(config), env=env)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    asked = [e for e in events if e["kind"] == "question.asked"]
    assert [e["ticket"] for e in asked] == ["restock"]
    assert "Who calls Inventory.restock()" in asked[0]["text"]
    (answered,) = [e for e in events if e["kind"] == "question.answered"]
    assert answered["text"] == "the online shop, after a return"
    (decision,) = [
        e for e in events if e["kind"] == "decision" and "answer: the online shop" in e["message"]
    ]
    assert decision["client"] == "demo" and ": done: " in decision["message"]
    readme = subprocess.run(
        ["git", "-C", str(config.parent / "repo.git"), "show", "main:inventory/core.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "Called by the online shop, after a return." in readme


@DEMO_GROUP
def test_events_replay_as_json(demo_run: tuple[Path, dict[str, str]]) -> None:
    config, env = demo_run
    result = orchestrator("events", "--since", "0", "--json", "--config", str(config), env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    events = [msgspec.json.decode(line, type=Event) for line in lines]
    assert all(json.loads(line)["type"] == "event" for line in lines)
    ids = [e.id for e in events]
    assert ids == sorted(ids) and ids[0] == 1 and len(set(ids)) == len(ids)
    kinds = {e.kind for e in events}
    assert {"ticket.state", "ci.result", "daemon.started", "daemon.stopping"} <= kinds
    merged = {
        e.ticket
        for e in events
        if e.kind == "ticket.state" and e.ticket_view and e.ticket_view.state == TicketState.MERGED
    }
    assert sorted(t for t in merged if t) == DEMO_TICKETS

    # --since N skips what came before N
    later = orchestrator(
        "events", "--since", str(ids[-3]), "--json", "--config", str(config), env=env
    )
    assert [json.loads(line)["id"] for line in later.stdout.splitlines()] == ids[-2:]


# --- without a demo: the error and the failure sections ---------------------------


def _home(directory: Path) -> Home:
    directory.mkdir(parents=True)
    (directory / "config.yaml").write_text('agent:\n  command: ["true"]\n')
    return load_config(directory / "config.yaml")


def test_report_without_state_db(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = _home(tmp_path / "proj")
    with pytest.raises(OrchestratorError, match="no state database"):
        write_report(home)
    assert cli(["report", "--config", str(home.config_file)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("orchestrator: ") and str(home.state_db) in err
    assert not home.state_db.exists()  # the report did not create one


def test_report_lists_failures_and_unfinished_tickets(tmp_path: Path) -> None:
    home = _home(tmp_path / "proj")
    now = time.time()

    def record(tid: str, state: TicketState, seq: int, **kw: object) -> TicketRecord:
        ticket = Ticket(title=f"title of {tid} | with a pipe", id=tid, priority=1)
        return TicketRecord(
            ticket=ticket,
            file=f"/b/{tid}.yaml",
            state=state,
            seq=seq,
            queued_at=now - 600,
            state_since=now,
            **kw,
        )  # type: ignore[arg-type]

    broken = record(
        "broken",
        TicketState.FAILED,
        0,
        attempt=3,
        reason="agent exited with code 1 (attempt 3 of 3)",
    )
    busy = record("busy", TicketState.RUNNING, 1, attempt=1, agent="agent-1", branch="agent-1/busy")
    events = [
        Event(
            id=0,
            ts=now - 90,
            kind="ci.result",
            ticket="broken",
            message="broken: CI error on 0123456789",
        ),
        Event(
            id=0,
            ts=now - 80,
            kind="attempt.failed",
            ticket="broken",
            message="broken: attempt 1 failed: CI error (exit None)",
        ),
        Event(
            id=0,
            ts=now - 70,
            kind="ticket.rejected",
            message="bad.yaml: title: Object missing required field",
        ),
    ]
    store = Store(home.state_db)
    try:
        store.commit([broken, busy], events)
    finally:
        store.close()

    report = write_report(home)
    assert "CI runs: 1 (0 pass, 0 fail, 1 error)" in report
    assert "Nothing merged." in section(report, "Merges")
    tickets = section(report, "Tickets")
    assert table_row(tickets, "broken")[1] == "title of broken \\| with a pipe"
    assert table_row(tickets, "broken")[7] == "10.0 min"
    assert table_row(tickets, "busy")[7] == "(running)"
    failures = section(report, "Failures")
    assert "| attempt failed | CI error (exit None) |" in failures
    assert "| ticket failed | agent exited with code 1 (attempt 3 of 3) |" in failures
    assert "| `bad.yaml` | file rejected | title: Object missing required field |" in failures


def test_demo_without_dir_removes_what_it_made(tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    runtime = Path(tempfile.mkdtemp(prefix="orch-rt-", dir="/tmp"))
    env = dict(os.environ, TMPDIR=str(scratch), XDG_RUNTIME_DIR=str(runtime))
    env.pop("ORCH_CONFIG", None)
    try:
        argv = [*_command(), "demo", "--headless", "--auto-approve"]
        argv += ["--pace", "0.05", "--timeout-s", "240"]
        result = run_group(argv, env=env, timeout_s=300, cwd=ROOT)
    finally:
        shutil.rmtree(runtime, ignore_errors=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "demo: every ticket merged into main" in result.stdout
    assert "use --dir to keep the demo project" in result.stdout
    assert list(scratch.iterdir()) == []
