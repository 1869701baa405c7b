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
