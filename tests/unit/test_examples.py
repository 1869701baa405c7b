"""The shipped examples: demo project, tickets, recordings, demo agent and configs.

These tests use the real files and real subprocesses (git, the demo agent, the
demo project's unittest suite); nothing is mocked.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
import yaml

from orchestrator.daemon.review import ReviewAnswer, parse_review
from orchestrator.shared import config as config_mod
from orchestrator.shared import lockspec as locks
from orchestrator.shared import models

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
DEMO = EXAMPLES / "demo"
PROJECT = DEMO / "project"
TICKETS = DEMO / "tickets"
RECORDINGS = DEMO / "recordings"
AGENT = DEMO / "demo_agent.py"
REVIEWER = DEMO / "demo_reviewer.py"

TICKET_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
TICKET_FIELDS = {"id", "title", "priority", "description", "locks", "depends_on", "max_attempts"}
OPS = {
    "write": {"path", "content"},
    "append": {"path", "text"},
    "replace": {"path", "old", "new"},
    "say": {"text"},
    "ask": {"question", "default"},
}
PLACEHOLDERS = {
    "prompt",
    "prompt_file",
    "ticket_file",
    "ticket_id",
    "worktree",
    "branch",
    "attempt",
    "feedback_file",
    "run_dir",
    "usage_file",
}
GIT = [
    "git",
    "-c",
    "user.name=t",
    "-c",
    "user.email=t@t",
    "-c",
    "commit.gpgsign=false",
    "-c",
    "core.hooksPath=/dev/null",
]


# --- loading -------------------------------------------------------------------------


def load_tickets() -> dict[str, dict]:
    tickets = {}
    for path in sorted(TICKETS.glob("*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert isinstance(data, dict), path.name
        ticket = dict(data)
        ticket.setdefault("id", path.stem)
        ticket.setdefault("priority", 2)
        ticket.setdefault("depends_on", [])
        ticket.setdefault("locks", [])
        assert ticket["id"] not in tickets, f"duplicate id {ticket['id']}"
        tickets[ticket["id"]] = ticket
    return tickets


def recordings_of(ticket_id: str) -> dict[int, list[dict]]:
    out = {}
    for path in (RECORDINGS / ticket_id).glob("attempt-*.yaml"):
        number = int(re.fullmatch(r"attempt-(\d+)\.yaml", path.name).group(1))
        out[number] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return dict(sorted(out.items()))


def touched_paths(ticket_id: str) -> set[str]:
    return {op["path"] for ops in recordings_of(ticket_id).values() for op in ops if "path" in op}


def covered(path: str, locks: list[str]) -> bool:
    """Equal to a lock, under a lock directory, or matched by a glob lock."""
    for lock in locks:
        lock = lock.removeprefix("./").rstrip("/")
        if lock in ("", ".", "**") or path == lock or path.startswith(lock + "/"):
            return True
        if fnmatch.fnmatchcase(path, lock):
            return True
    return False


def reviewed_tickets() -> set[str]:
    """Tickets the demo reviewer sends back once (its REQUESTS): attempt 2 answers it."""
    spec = importlib.util.spec_from_file_location("demo_reviewer", REVIEWER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return set(module.REQUESTS)


def ci_failing_tickets(tickets: dict[str, dict]) -> list[str]:
    """Tickets recorded with more than one attempt and not sent back by the demo
    reviewer: attempt 1 fails CI by design."""
    reviewed = reviewed_tickets()
    return [t for t in tickets if len(recordings_of(t)) > 1 and t not in reviewed]


def replay_order(tickets: dict[str, dict]) -> list[str]:
    """The order the daemon would merge them in with one worker: among the tickets
    whose dependencies are merged, the most urgent (lowest priority) first."""
    done: list[str] = []
    while len(done) < len(tickets):
        ready = [
            t for t in tickets if t not in done and all(d in done for d in tickets[t]["depends_on"])
        ]
        assert ready, f"dependency cycle among {set(tickets) - set(done)}"
        done.append(min(ready, key=lambda t: (tickets[t]["priority"], t)))
    return done


# --- subprocess helpers --------------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    # Bytecode writing stays on: the project's .gitignore must keep __pycache__
    # out of the commits (the lock check below would see it otherwise).
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ORCH_", "DEMO_", "GIT_", "PYTHON"))
    }
    env["DEMO_AGENT_DELAY_S"] = "0"
    env.update(extra)
    return env


def run_agent(cwd: Path, ticket_id: str, attempt: int = 1, **extra: str):
    env = clean_env(ORCH_TICKET_ID=ticket_id, ORCH_ATTEMPT=str(attempt), **extra)
    return subprocess.run(
        [sys.executable, str(AGENT)], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def run_tests(cwd: Path):
    return subprocess.run(
        [sys.executable, "-m", "unittest", "discover", "-s", "tests", "-q"],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def git(cwd: Path, *args: str) -> str:
    result = subprocess.run(
        [*GIT, *args], cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"git {args}: {result.stderr}"
    return result.stdout


def commit_all(repo: Path, message: str) -> list[str]:
    """Stage and commit everything, as the daemon does; return the changed paths."""
    git(repo, "add", "-A")
    changed = git(repo, "diff", "--cached", "--name-only").split()
    if changed:
        git(repo, "commit", "-q", "-m", message)
    return changed


@pytest.fixture
def demo_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "project"
    shutil.copytree(PROJECT, repo)
    git(repo, "init", "-q", "-b", "main")
    assert commit_all(repo, "initial import")
    return repo


# --- the demo project ----------------------------------------------------------------


def test_project_is_a_clean_tree():
    assert (PROJECT / "README.md").is_file()
    assert (PROJECT / "tests").is_dir()
    assert not (PROJECT / "tests" / "__init__.py").exists()
    junk = [
        p for p in PROJECT.rglob("*") if p.name in (".git", "__pycache__") or p.suffix == ".pyc"
    ]
    assert junk == []
    assert "__pycache__" in (PROJECT / ".gitignore").read_text()


def test_project_tests_pass_from_a_fresh_copy(demo_repo: Path):
    result = run_tests(demo_repo)
    assert result.returncode == 0, result.stderr
    assert git(demo_repo, "status", "--porcelain") == ""


# --- tickets -------------------------------------------------------------------------


def test_tickets_parse_and_have_required_fields():
    tickets = load_tickets()
    assert len(tickets) == 6
    for tid, t in tickets.items():
        assert set(t) <= TICKET_FIELDS, f"{tid}: unknown fields {set(t) - TICKET_FIELDS}"
        assert TICKET_ID_RE.match(tid), tid
        assert (TICKETS / f"{tid}.yaml").is_file(), f"{tid}: file name should match its id"
        assert isinstance(t["title"], str) and t["title"].strip()
        assert isinstance(t["description"], str) and t["description"].strip()
        assert isinstance(t["priority"], int) and 0 <= t["priority"] <= 4
        assert t["locks"] and all(isinstance(lock, str) for lock in t["locks"])
        assert all(dep in tickets and dep != tid for dep in t["depends_on"]), tid


def test_tickets_make_a_good_show():
    tickets = load_tickets()
    assert {0, 1, 2, 3} <= {t["priority"] for t in tickets.values()}
    assert any(t["depends_on"] for t in tickets.values())
    shared = [
        (a, b)
        for a in tickets
        for b in tickets
        if a < b and set(tickets[a]["locks"]) & set(tickets[b]["locks"])
    ]
    assert shared, "two tickets should share a lock"
    assert len(ci_failing_tickets(tickets)) == 1


def test_tickets_decode_with_the_daemon_parser():
    for path in sorted(TICKETS.glob("*.yaml")):
        ticket = models.parse_ticket(path.read_bytes(), path)
        assert ticket.id == path.stem


# --- recordings ----------------------------------------------------------------------


def test_every_ticket_has_a_first_recording_and_no_strays():
    tickets = load_tickets()
    assert {p.name for p in RECORDINGS.iterdir()} == set(tickets)
    for tid in tickets:
        names = {p.name for p in (RECORDINGS / tid).iterdir()}
        assert all(re.fullmatch(r"attempt-[1-9]\d*\.yaml", n) for n in names), names
        assert 1 in recordings_of(tid)


def test_recordings_parse_and_use_known_ops():
    for tid in load_tickets():
        for number, ops in recordings_of(tid).items():
            where = f"{tid}/attempt-{number}"
            assert isinstance(ops, list) and ops, where
            for op in ops:
                assert isinstance(op, dict) and op.get("op") in OPS, (where, op)
                assert set(op) == OPS[op["op"]] | {"op"}, (where, op)
                assert all(isinstance(op[k], str) for k in OPS[op["op"]]), (where, op)
                if "path" in op:
                    path = op["path"]
                    assert not path.startswith("/") and ".." not in path.split("/"), where
            assert any(op["op"] != "say" for op in ops), where


def test_locks_cover_every_path_a_recording_touches():
    for tid, t in load_tickets().items():
        outside = sorted(p for p in touched_paths(tid) if not covered(p, t["locks"]))
        assert outside == [], f"{tid} touches paths outside its locks: {outside}"


def test_locks_cover_recordings_by_the_daemon_rules():
    for tid, t in load_tickets().items():
        assert locks.paths_outside(touched_paths(tid), t["locks"]) == [], tid


def test_every_ticket_adds_tests():
    for tid in load_tickets():
        assert any(p.startswith("tests/test_") for p in touched_paths(tid)), tid


def test_covered_helper():
    assert covered("a/b.py", ["a/b.py"])
    assert covered("a/b.py", ["a"]) and covered("a/b.py", ["a/"])
    assert covered("a/b.py", ["a/*.py"])
    assert not covered("a/b.py", ["a/c.py", "b"])
    assert not covered("ab/c.py", ["a"])


# --- the full replay -----------------------------------------------------------------


def test_full_replay_merges_every_ticket(demo_repo: Path, tmp_path: Path):
    tickets = load_tickets()
    failing = set(ci_failing_tickets(tickets))
    order = replay_order(tickets)
    # The dependency and the shared-lock pair really are sequenced.
    for tid in order:
        for dep in tickets[tid]["depends_on"]:
            assert order.index(dep) < order.index(tid)

    for tid in order:
        result = run_agent(demo_repo, tid, 1)
        assert result.returncode == 0, f"{tid}: {result.stderr}"
        assert f"reading ticket {tid}" in result.stdout
        ci = run_tests(demo_repo)
        changed = commit_all(demo_repo, f"{tid}: attempt 1")
        assert changed, f"{tid}: the agent changed nothing"
        assert all(covered(p, tickets[tid]["locks"]) for p in changed), (tid, changed)
        if tid in failing:
            assert ci.returncode != 0, f"{tid}: attempt 1 should fail CI"
            assert "FAILED" in ci.stderr
            feedback = tmp_path / f"{tid}.feedback"
            feedback.write_text(f"Attempt 1 failed: CI failed\n{ci.stderr}")
            result = run_agent(demo_repo, tid, 2, ORCH_FEEDBACK_FILE=str(feedback))
            assert result.returncode == 0, f"{tid}: {result.stderr}"
            assert "feedback: Attempt 1 failed: CI failed" in result.stdout
            ci = run_tests(demo_repo)
            changed = commit_all(demo_repo, f"{tid}: attempt 2")
            assert changed and all(covered(p, tickets[tid]["locks"]) for p in changed)
        assert ci.returncode == 0, f"{tid}: CI should pass:\n{ci.stderr}"
        if tid in reviewed_tickets():  # the reviewer asked for more in round 1
            result = run_agent(demo_repo, tid, 2)
            assert result.returncode == 0, f"{tid}: {result.stderr}"
            assert commit_all(demo_repo, f"{tid}: attempt 2"), f"{tid}: nothing new for review"
            assert run_tests(demo_repo).returncode == 0

    final = run_tests(demo_repo)
    assert final.returncode == 0, final.stderr
    assert git(demo_repo, "status", "--porcelain") == ""
    ran = int(re.search(r"Ran (\d+) test", final.stderr).group(1))
    assert ran > 20


def test_shared_lock_tickets_apply_in_either_order(demo_repo: Path):
    tickets = load_tickets()
    shared = next(
        (a, b)
        for a in tickets
        for b in tickets
        if a < b and set(tickets[a]["locks"]) & set(tickets[b]["locks"])
    )
    for tid in reversed(replay_order({t: tickets[t] for t in shared})):
        assert run_agent(demo_repo, tid).returncode == 0
        assert run_tests(demo_repo).returncode == 0


def test_retry_from_main_also_passes(demo_repo: Path):
    """After a rebase conflict the retry starts from main, without attempt 1's commit."""
    (tid,) = ci_failing_tickets(load_tickets())
    last = max(recordings_of(tid))
    assert run_agent(demo_repo, tid, last).returncode == 0
    assert run_tests(demo_repo).returncode == 0


def test_replaying_twice_is_a_no_op(demo_repo: Path):
    for tid in replay_order(load_tickets()):
        assert run_agent(demo_repo, tid, 3).returncode == 0
    commit_all(demo_repo, "everything")
    for tid in replay_order(load_tickets()):
        result = run_agent(demo_repo, tid, 3)
        assert result.returncode == 0, result.stderr
    assert git(demo_repo, "status", "--porcelain") == ""
    assert run_tests(demo_repo).returncode == 0


# --- the demo agent's contract -------------------------------------------------------


def test_agent_is_executable_and_does_not_use_git():
    assert os.access(AGENT, os.X_OK)
    source = AGENT.read_text()
    assert source.startswith("#!/usr/bin/env python3\n")
    assert "os.system" not in source and '"git"' not in source
    # its one subprocess is `orchestrator ask`
    calls = re.findall(r"subprocess\.\w+\(\s*\[([^\]]*)\]", source)
    assert calls == ['sys.executable, "-m", "orchestrator", "ask", question'], calls


def test_agent_asks_and_without_a_daemon_goes_on_with_the_default(demo_repo: Path):
    result = run_agent(demo_repo, "restock")
    assert result.returncode == 0, result.stderr
    assert "asking a person: Who calls Inventory.restock()" in result.stdout
    assert "going on with 'the warehouse staff'" in result.stdout
    core = (demo_repo / "inventory" / "core.py").read_text()
    assert "Called by the warehouse staff." in core


def test_agent_takes_an_answer_from_the_feedback_made_safe(demo_repo: Path, tmp_path: Path):
    feedback = tmp_path / "feedback.md"
    feedback.write_text(
        "Your previous attempt asked a person:\nWho?\n\nThe answer:\n"
        'the "shop" """ 1/0\nsecond line\n'
    )
    result = run_agent(demo_repo, "restock", ORCH_FEEDBACK_FILE=str(feedback))
    assert result.returncode == 0, result.stderr
    assert "asking a person" not in result.stdout
    core = (demo_repo / "inventory" / "core.py").read_text()
    assert "Called by the shop  10." in core
    assert '"""  1/0' not in core and "second line" not in core
    assert run_tests(demo_repo).returncode == 0


def test_agent_exits_2_for_an_unknown_ticket(tmp_path: Path):
    result = run_agent(tmp_path, "no-such-ticket")
    assert result.returncode == 2
    assert "no recording" in result.stderr and "no-such-ticket" in result.stderr


def test_agent_exits_2_without_a_ticket_id(tmp_path: Path):
    result = run_agent(tmp_path, "")
    assert result.returncode == 2
    assert "ORCH_TICKET_ID" in result.stderr


def write_recording(root: Path, ticket: str, number: int, ops: list[dict]) -> None:
    path = root / ticket / f"attempt-{number}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(ops))


def test_agent_exits_1_when_replace_text_is_missing(tmp_path: Path):
    recordings, work = tmp_path / "rec", tmp_path / "work"
    work.mkdir()
    (work / "a.txt").write_text("hello\n")
    write_recording(
        recordings,
        "t",
        1,
        [
            {"op": "write", "path": "b.txt", "content": "first\n"},
            {"op": "replace", "path": "a.txt", "old": "goodbye", "new": "farewell"},
        ],
    )
    result = run_agent(work, "t", DEMO_RECORDINGS=str(recordings))
    assert result.returncode == 1
    assert "a.txt" in result.stderr and "not found" in result.stderr
    assert (work / "a.txt").read_text() == "hello\n"


def test_agent_exits_1_when_replace_text_is_ambiguous(tmp_path: Path):
    recordings, work = tmp_path / "rec", tmp_path / "work"
    work.mkdir()
    (work / "a.txt").write_text("x\nx\n")
    write_recording(
        recordings, "t", 1, [{"op": "replace", "path": "a.txt", "old": "x", "new": "y"}]
    )
    result = run_agent(work, "t", DEMO_RECORDINGS=str(recordings))
    assert result.returncode == 1 and "2 times" in result.stderr


@pytest.mark.parametrize("path", ["/etc/passwd", "../outside.txt", ".git/config"])
def test_agent_refuses_paths_outside_the_worktree(tmp_path: Path, path: str):
    recordings, work = tmp_path / "rec", tmp_path / "work"
    work.mkdir()
    write_recording(recordings, "t", 1, [{"op": "write", "path": path, "content": "x"}])
    result = run_agent(work, "t", DEMO_RECORDINGS=str(recordings))
    assert result.returncode == 1 and "relative to the worktree" in result.stderr
    assert not (tmp_path / "outside.txt").exists()


def test_agent_exits_1_for_an_invalid_recording(tmp_path: Path):
    recordings, work = tmp_path / "rec", tmp_path / "work"
    work.mkdir()
    write_recording(recordings, "t", 1, [{"op": "delete", "path": "a.txt"}])
    result = run_agent(work, "t", DEMO_RECORDINGS=str(recordings))
    assert result.returncode == 1 and "unknown op" in result.stderr


def test_agent_picks_the_highest_recorded_attempt_not_above_the_current(tmp_path: Path):
    recordings, work = tmp_path / "rec", tmp_path / "work"
    work.mkdir()
    for n in (1, 3):
        write_recording(recordings, "t", n, [{"op": "write", "path": "n.txt", "content": f"{n}\n"}])
    expected = {1: "1", 2: "1", 3: "3", 7: "3"}
    for attempt, content in expected.items():
        assert run_agent(work, "t", attempt, DEMO_RECORDINGS=str(recordings)).returncode == 0
        assert (work / "n.txt").read_text() == f"{content}\n", attempt
    write_recording(recordings, "late", 2, [{"op": "say", "text": "hi"}])
    assert run_agent(work, "late", 1, DEMO_RECORDINGS=str(recordings)).returncode == 2


def test_agent_ops_are_idempotent(tmp_path: Path):
    recordings, work = tmp_path / "rec", tmp_path / "work"
    (work / "pkg").mkdir(parents=True)
    (work / "pkg" / "m.py").write_text("def f():\n    return 1\n")
    write_recording(
        recordings,
        "t",
        1,
        [
            {"op": "say", "text": "thinking hard"},
            {"op": "replace", "path": "pkg/m.py", "old": "    return 1\n", "new": "    return 2\n"},
            {
                "op": "replace",
                "path": "pkg/m.py",
                "old": "def f():\n",
                "new": "def g():\n    return 0\n\n\ndef f():\n",
            },
            {"op": "append", "path": "pkg/m.py", "text": "\nX = 1\n"},
            {"op": "write", "path": "new/dir/file.txt", "content": "new\n"},
        ],
    )
    prompt = tmp_path / "prompt.md"
    prompt.write_text("\nAdd g() to pkg/m.py\nmore\n")
    first = run_agent(
        work,
        "t",
        DEMO_RECORDINGS=str(recordings),
        ORCH_PROMPT_FILE=str(prompt),
        ORCH_FEEDBACK_FILE="",
    )
    assert first.returncode == 0, first.stderr
    assert "thinking hard" in first.stdout and "prompt: Add g() to pkg/m.py" in first.stdout
    assert "feedback" not in first.stdout
    expected = "def g():\n    return 0\n\n\ndef f():\n    return 2\n\nX = 1\n"
    assert (work / "pkg" / "m.py").read_text() == expected
    assert (work / "new" / "dir" / "file.txt").read_text() == "new\n"

    second = run_agent(
        work, "t", 2, DEMO_RECORDINGS=str(recordings), ORCH_FEEDBACK_FILE=str(tmp_path / "missing")
    )
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("already") == 4
    assert (work / "pkg" / "m.py").read_text() == expected


def test_agent_prints_progress_with_a_delay(demo_repo: Path):
    import time

    started = time.monotonic()
    result = run_agent(demo_repo, "low-stock", DEMO_AGENT_DELAY_S="0.05")
    elapsed = time.monotonic() - started
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert len(lines) >= 5 and all(line.startswith("[demo-agent] ") for line in lines)
    assert elapsed >= 0.05 * len(lines) * 0.9


# --- configuration examples ----------------------------------------------------------


def command_placeholders(command: list[str]) -> set[str]:
    return {name for item in command for name in re.findall(r"\{([^{}]*)\}", item)}


def test_config_example_has_every_key():
    config = yaml.safe_load((EXAMPLES / "config.example.yaml").read_text())
    assert config["workers"] == 3
    assert config["approval"] == "manual" and config["lock_policy"] == "reject"
    assert config["max_attempts"] == 3
    assert config["ci"] == {"command": "python3 -m unittest discover -s tests -q", "timeout_s": 600}
    assert config["agent"]["stop_grace_s"] == 10
    assert command_placeholders(config["agent"]["command"]) <= PLACEHOLDERS
    for key, value in {
        "stale_after_s": 600,
        "heartbeat_interval_s": 5,
        "lease_ttl_s": 60,
        "stale_grace_s": 120,
        "starvation_after_s": 900,
        "aging_interval_s": 300,
        "rescan_interval_s": 2,
    }.items():
        assert config[key] == value, key


def test_config_example_decodes_with_the_daemon_schema(tmp_path: Path):
    path = tmp_path / "config.yaml"
    shutil.copy(EXAMPLES / "config.example.yaml", path)
    home = config_mod.load_config(path)
    assert home.config.workers == 3


AGENT_FILES = [
    "claude-code.yaml",
    "codex.yaml",
    "amp.yaml",
    "aider.yaml",
    "gemini.yaml",
    "opencode.yaml",
    "script.yaml",
]


@pytest.mark.parametrize("name", AGENT_FILES)
def test_agent_snippets(name: str):
    text = (EXAMPLES / "agents" / name).read_text()
    assert text.startswith("#"), "each snippet explains its flags in comments"
    data = yaml.safe_load(text)
    assert "agent" in data and set(data) <= {"agent", "usage", "worktree"}
    command = data["agent"]["command"]
    assert isinstance(command, list) and command and all(isinstance(c, str) for c in command)
    assert command_placeholders(command) <= PLACEHOLDERS
    assert command_placeholders(command) & {"prompt", "prompt_file"} or name == "script.yaml"
    msgspec.convert(data, type=config_mod.Config)  # the whole section decodes strictly


def test_agent_snippets_readme_lists_them():
    readme = (EXAMPLES / "agents" / "README.md").read_text()
    assert all(f"`{name}`" in readme for name in AGENT_FILES)


def agent_command(name: str) -> list[str]:
    return yaml.safe_load((EXAMPLES / "agents" / name).read_text())["agent"]["command"]


def test_aider_config_avoids_the_known_failures():
    """aider's defaults would edit .gitignore (outside the locks), commit dirty files and
    leave its history files at the worktree root (docs: aider options reference)."""
    command = agent_command("aider.yaml")
    for flag in ("--no-gitignore", "--no-dirty-commits", "--no-auto-commits", "--yes-always"):
        assert flag in command, flag
    history = command[command.index("--chat-history-file") + 1]
    inputs = command[command.index("--input-history-file") + 1]
    assert history.startswith("{run_dir}/") and inputs.startswith("{run_dir}/")
    assert command[command.index("--analytics-log") + 1] == "{usage_file}"
    data = yaml.safe_load((EXAMPLES / "agents" / "aider.yaml").read_text())
    assert ".aider*" in data["worktree"]["exclude"]


def test_codex_config_uses_the_sandbox_flag_not_full_auto():
    command = agent_command("codex.yaml")
    assert "--full-auto" not in command
    assert command[command.index("--sandbox") + 1] == "workspace-write"
    assert "--json" in command


@pytest.mark.parametrize("name", [n for n in AGENT_FILES if n != "script.yaml"])
def test_readme_documents_every_flag_of_each_config(name: str):
    readme = (EXAMPLES / "agents" / "README.md").read_text()
    flags = [item for item in agent_command(name) if item.startswith("-")]
    assert flags
    for flag in flags:
        assert f"`{flag}" in readme or f"{flag}`" in readme, (name, flag)


def test_demo_reviewer_requests_changes_once_then_approves(demo_repo: Path, tmp_path: Path):
    (tid,) = reviewed_tickets()
    diff = tmp_path / "diff.patch"
    diff.write_text("--- a/README.md\n+++ b/README.md\n@@ -1 +1 @@\n-x\n+y\n")
    answers = []
    for ticket, round_ in ((tid, "1"), (tid, "2"), ("low-stock", "1")):
        env = clean_env(ORCH_TICKET_ID=ticket, ORCH_REVIEW_ROUND=round_)
        result = subprocess.run(
            [sys.executable, str(REVIEWER), str(diff)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert "README.md" in result.stdout
        answers.append(parse_review(result.stdout.encode()))
    first, second, other = answers
    assert isinstance(first, ReviewAnswer) and first.verdict == "request_changes"
    assert first.comments and first.comments[0].path == "README.md"
    assert second == ReviewAnswer(verdict="approve") and other == ReviewAnswer(verdict="approve")


REVIEWER_FILES = [
    "claude-code-review.yaml",
    "codex-review.yaml",
    "amp-review.yaml",
    "aider-review.yaml",
    "gemini-review.yaml",
    "opencode-review.yaml",
]


def review_command(name: str) -> list[str]:
    return yaml.safe_load((EXAMPLES / "agents" / name).read_text())["review"]["command"]


@pytest.mark.parametrize("name", REVIEWER_FILES)
def test_reviewer_snippets(name: str):
    text = (EXAMPLES / "agents" / name).read_text()
    assert text.startswith("#"), "each snippet explains its flags in comments"
    data = yaml.safe_load(text)
    assert set(data) == {"review"}
    command = data["review"]["command"]
    assert isinstance(command, list) and command and all(isinstance(c, str) for c in command)
    assert command_placeholders(command) <= PLACEHOLDERS | {"diff_file"}
    assert command_placeholders(command) & {"prompt", "prompt_file"}
    # the section decodes strictly, beside an agent section
    config = msgspec.convert({"agent": {"command": ["agent"]}, **data}, type=config_mod.Config)
    assert config.review.command == command
    # a reviewer prints its answer as text: no JSON event streams that would hide it
    joined = " ".join(command)
    for flag in ("stream-json", "--json", "--format json", "--dangerously", "--auto "):
        assert flag not in joined + " ", (name, flag)


@pytest.mark.parametrize("name", REVIEWER_FILES)
def test_readme_documents_every_flag_of_each_reviewer(name: str):
    readme = (EXAMPLES / "agents" / "README.md").read_text()
    assert f"`{name}`" in readme
    reviewers = readme[readme.index("## Reviewers") :]
    for flag in (item for item in review_command(name) if item.startswith("-")):
        assert f"`{flag}" in reviewers or f"{flag}`" in reviewers, (name, flag)


def test_review_config_is_decoded_strictly(tmp_path: Path):
    path = tmp_path / "config.yaml"
    base = "agent: {command: [a]}\n"
    for review, error in [
        ("review: {rounds: 2}", "review: Object contains unknown field `rounds`"),
        ("review: {max_rounds: 0}", "review.max_rounds: Expected `int` >= 1"),
        ("review: {timeout_s: soon}", "review.timeout_s: Expected `int`, got `str`"),
        ("review: {command: review-it}", "review.command: Expected `array`, got `str`"),
        ('review: {command: ["a\\0b"]}', "review.command[0]: must not contain a NUL character"),
    ]:
        path.write_text(base + review + "\n")
        with pytest.raises(config_mod.ConfigError) as info:
            config_mod.load_config(path)
        message = str(info.value)
        assert error in message and "\n" not in message, message
    path.write_text(base + "review: {command: [r, '{diff_file}']}\n")
    review = config_mod.load_config(path).config.review
    assert (review.command, review.max_rounds, review.timeout_s) == (["r", "{diff_file}"], 2, 600)
