"""``tui.app.run``: refuses to start without a daemon, or with one of another version."""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from orchestrator.tui.app import run, wait_for_daemon


def test_no_daemon_prints_one_line_and_returns_1(capsys: pytest.CaptureFixture[str]) -> None:
    path = Path(tempfile.mkdtemp(dir="/tmp")) / "nobody.sock"
    assert run(path, wait_s=0) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith(f"orchestrator: no daemon answers on {path}")
    assert "orchestrator daemon --config CONFIG" in err


def test_stale_socket_file_counts_as_no_daemon(capsys: pytest.CaptureFixture[str]) -> None:
    path = Path(tempfile.mkdtemp(dir="/tmp")) / "stale.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))  # bound, never listening: connect is refused
    assert run(path, wait_s=0) == 1
    assert capsys.readouterr().err.startswith(f"orchestrator: no daemon answers on {path}")


def test_waits_for_a_daemon_that_is_starting(fake_daemon, capsys) -> None:
    fake_daemon.stop()
    starter = threading.Timer(1.0, fake_daemon.start)
    starter.start()
    try:
        assert wait_for_daemon(fake_daemon.socket_path, wait_s=20, interval_s=0.1) is None
    finally:
        starter.join()
    assert "waiting up to 20 s for the daemon" in capsys.readouterr().err


def test_gives_up_after_the_wait(capsys: pytest.CaptureFixture[str]) -> None:
    path = Path(tempfile.mkdtemp(dir="/tmp")) / "late.sock"
    problem = wait_for_daemon(path, wait_s=0.3, interval_s=0.1)
    assert problem is not None and "waited 0 s" in problem


def test_version_mismatch_prints_the_protocol_error(fake_daemon, capsys) -> None:
    fake_daemon.version = 99
    assert run(fake_daemon.socket_path) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "protocol version 99" in err


def test_tui_modules_import_no_daemon_and_board_imports_no_textual() -> None:
    code = (
        "import sys, tui.board, tui.git, tui.format\n"
        "assert 'textual' not in sys.modules, 'board pulls textual'\n"
        "import tui.app\n"
        "assert not [m for m in sys.modules if m.startswith('daemon')]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])
