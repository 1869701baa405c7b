"""The command line as a new user meets it: init, errors without a daemon, long socket paths."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from orchestrator.cli import cli
from orchestrator.daemon.home import init_home
from tests.integration.conftest import git


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_init_creates_a_home_and_refuses_to_overwrite_it(tmp_path, source_repo, runtime_dir):
    home = tmp_path / "home"
    first = run(
        "init", str(home), "--from", str(source_repo), "--ci-command", "true", "--workers", "4"
    )
    assert first.returncode == 0, first.stderr
    config = (home / "config.yaml").read_text()
    assert "workers: 4" in config and "approval: manual" in config
    assert "max_attempts: 3" in config and "command:" in config
    for path in (
        "backlog",
        "backlog/done",
        "backlog/rejected",
        "repo.git/hooks/post-receive",
        "repo.git/hooks/update",
        "ci.sh",
        "work",
    ):
        assert (home / path).exists(), path
    repo = home / "repo.git"
    assert git(repo, "config", "orchestrator.ciCommand") == "true"
    (home / "backlog" / "mine.yaml").write_text("title: keep me\n")
    second = run("init", str(home), "--from", str(source_repo))
    assert second.returncode == 2
    assert "already holds a project home" in second.stderr and "Traceback" not in second.stderr
    forced = run("init", str(home), "--from", str(source_repo), "--force")
    assert forced.returncode == 0, forced.stderr
    assert (home / "backlog" / "mine.yaml").read_text() == "title: keep me\n"
    assert (home / "config.yaml.bak").read_text() == config


def test_init_from_a_repo_without_main_creates_it(tmp_path, runtime_dir):
    source = tmp_path / "legacy"
    git(tmp_path, "init", "--quiet", "--initial-branch=master", str(source))
    (source / "a.txt").write_text("a")
    git(source, "add", "-A")
    git(source, "commit", "--quiet", "-m", "first")
    init_home(tmp_path / "home", str(source), ci_command="true", workers=1)
    repo = tmp_path / "home" / "repo.git"
    assert git(repo, "rev-parse", "main") == git(source, "rev-parse", "master")


def test_init_from_nothing_is_a_clear_error(tmp_path):
    result = run("init", str(tmp_path / "h"), "--from", str(tmp_path / "missing"))
    assert result.returncode == 2
    assert result.stderr.startswith("orchestrator: cannot set up repo.git from")
    assert len(result.stderr.strip().splitlines()) == 1


def test_commands_without_a_daemon_say_how_to_start_it(make_project):
    project = make_project(workers=1, start=False)
    for args in (["status"], ["approve", "x"], ["locks", "--json"]):
        result = project.cli(*args)
        assert result.returncode == 2, args
        assert "no daemon answers on" in result.stderr
        assert "orchestrator daemon --config" in result.stderr
        assert "Traceback" not in result.stderr


def test_missing_or_invalid_config_is_one_clear_line(tmp_path, capsys):
    assert cli(["status", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "no such config file" in capsys.readouterr().err
    bad = tmp_path / "config.yaml"
    bad.write_text("workers: lots\nagent: {command: [x]}\n")
    assert cli(["status", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "workers: Expected `int`, got `str`" in err


def test_too_long_socket_path_is_a_clear_error(tmp_path, capsys, monkeypatch):
    deep = tmp_path / ("x" * 60) / ("y" * 60)
    deep.mkdir(parents=True)
    config = deep / "config.yaml"
    config.write_text(f"agent: {{command: [x]}}\nsocket: {deep / 'daemon.sock'}\n")
    assert cli(["status", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "more than AF_UNIX allows" in err and "set `socket:`" in err


def test_socket_directory_and_socket_are_private(make_project):
    project = make_project(workers=1)
    sock: Path = project.home.socket_path
    assert oct(sock.parent.stat().st_mode & 0o777) == "0o700"
    assert oct(sock.stat().st_mode & 0o777) == "0o600"


def test_init_from_a_relative_path_and_no_empty_dir_on_failure(tmp_path, source_repo, runtime_dir):
    import shutil

    shutil.copytree(source_repo, tmp_path / "repo")
    made = subprocess.run(
        [sys.executable, "-m", "orchestrator", "init", "home", "--from", "./repo"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "home" / "repo.git").is_dir()

    failed = subprocess.run(
        [sys.executable, "-m", "orchestrator", "init", "other", "--from", "./nothing"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert failed.returncode == 2
    assert failed.stderr.startswith("orchestrator: cannot set up repo.git")
    assert not (tmp_path / "other").exists(), "a failed init leaves no empty directory"


def test_version_and_help_for_every_option(capsys):
    import argparse

    import pytest

    from orchestrator import __version__
    from orchestrator.cli import build_parser

    with pytest.raises(SystemExit) as exit_:
        cli(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"orchestrator {__version__}"

    missing = []

    def walk(parser: argparse.ArgumentParser, path: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, [*path, name])
            elif not action.help:
                missing.append(" ".join([*path, action.dest]))

    walk(build_parser(), [])
    assert missing == []


def test_since_accepts_ids_times_and_relative_and_refuses_unix_times():
    from datetime import datetime

    import pytest

    from orchestrator.cli import parse_since
    from orchestrator.shared.errors import OrchestratorError

    now = datetime(2026, 11, 21, 12, 0, 0).timestamp()
    assert parse_since("42", now) == (42, 0.0)
    assert parse_since("5m", now) == (0, now - 300)
    assert parse_since("2h", now) == (0, now - 7200)
    assert parse_since("03:03", now) == (0, datetime(2026, 11, 21, 3, 3).timestamp())
    assert parse_since("03:03:07", now) == (0, datetime(2026, 11, 21, 3, 3, 7).timestamp())
    assert parse_since("2026-11-20T10:00", now) == (0, datetime(2026, 11, 20, 10).timestamp())
    for bad in ("1700000000", "yesterday", "25:00", "5x"):
        with pytest.raises(OrchestratorError) as err:
            parse_since(bad, now)
        assert "--since" in str(err.value)
    with pytest.raises(OrchestratorError, match="looks like a Unix time"):
        parse_since("1700000000", now)


def test_enqueue_reports_the_daemons_verdict(make_project, tmp_path):
    project = make_project()
    first = tmp_path / "a" / "dup.yaml"
    first.parent.mkdir()
    first.write_text("title: first\n")
    second = tmp_path / "b" / "dup.yaml"
    second.parent.mkdir()
    second.write_text("title: same id\n")
    ok = project.cli("enqueue", str(first))
    assert ok.returncode == 0, ok.stderr
    assert "dup: placed in the backlog" in ok.stdout
    project.wait_state("dup", "queued", "running", "ci_running", "awaiting_approval", "failed")
    refused = project.cli("enqueue", str(second))
    assert refused.returncode == 1
    assert refused.stderr.startswith("orchestrator: ") and "already exists" in refused.stderr
    assert "placed" not in refused.stdout


def test_refusals_and_local_errors_have_one_prefix(make_project, tmp_path):
    project = make_project()
    refused = project.cli("approve", "nope")
    assert refused.returncode == 1
    assert refused.stderr.startswith("orchestrator: unknown ticket")
    bad = tmp_path / "bad.yaml"
    bad.write_text("priority: 9\n")
    invalid = project.cli("validate", str(bad))
    assert invalid.stderr.startswith("orchestrator: ")


def test_a_closed_pipe_ends_events_quietly(make_project):
    project = make_project()
    for i in range(100):  # --json events of 100 tickets: far more than a pipe buffer
        project.ticket(f"T-{i}")
    project.wait_for(lambda s: len(s.tickets) == 100, timeout_s=30, what="100 tickets")
    cmd = [sys.executable, "-m", "orchestrator", "events", "--since", "0", "--json"]
    cmd += ["--config", str(project.config)]
    events = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert events.stdout is not None and events.stderr is not None
    first = events.stdout.readline()
    events.stdout.close()  # like `| head -1`
    err = events.stderr.read().decode()
    events.stderr.close()
    events.wait(30)
    assert first
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
