"""The daemon under systemd: sd_notify, signals, the unit file, service install/uninstall.

systemd itself is not running here, so its side of sd_notify(3) is played by
an AF_UNIX datagram socket the test binds and passes as $NOTIFY_SOCKET, the
way systemd does for a ``Type=notify`` service. The daemon is the real one, in
a subprocess, on a real project home (the demo project).
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.cli import cli
from orchestrator.daemon import unit
from orchestrator.daemon.store import Store
from orchestrator.demo import drop_tickets, prepare_demo
from orchestrator.shared import protocol as P
from orchestrator.shared.client import request
from orchestrator.shared.config import Home, load_config
from orchestrator.shared.errors import OrchestratorError
from orchestrator.shared.models import AgentState, AgentView, TicketState

ROOT = Path(__file__).resolve().parents[2]
WATCHDOG_USEC = 400_000
EXIT_TIMEOUT_S = 20.0


class Notify:
    """systemd's end of $NOTIFY_SOCKET: receives and records sd_notify datagrams.

    A thread drains the socket all the time, as systemd does: the kernel queues
    only a few datagrams per socket (net.unix.max_dgram_qlen, often 10), and a
    sender blocks when that queue is full.
    """

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="orch-n-", dir="/tmp")
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.05)
        self.received: list[dict[str, str]] = []
        self._inbox: queue.Queue[dict[str, str]] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self._inbox.put(dict(line.partition("=")[::2] for line in data.decode().splitlines()))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def wait_for(
        self, assignment: str, timeout_s: float, proc: subprocess.Popen[bytes], log: Path
    ) -> dict[str, str]:
        """Take datagrams until one carries ``assignment`` (e.g. ``READY=1``); return it."""
        key, _, value = assignment.partition("=")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                fields = self._inbox.get(timeout=max(0.01, min(0.2, deadline - time.monotonic())))
            except queue.Empty:
                if proc.poll() is not None:
                    break
                continue
            self.received.append(fields)
            if fields.get(key) == value:
                return fields
        raise AssertionError(
            f"no {assignment} within {timeout_s} s (exit code {proc.poll()}); received "
            f"{self.received}\n--- daemon log ---\n{log.read_text()[-3000:]}"
        )

    def count(self, assignment: str) -> int:
        key, _, value = assignment.partition("=")
        return sum(1 for fields in self.received if fields.get(key) == value)


@pytest.fixture
def notify() -> Iterator[Notify]:
    n = Notify()
    yield n
    n.close()


def start(
    config: Path, notify_socket: str, log: Path, watchdog_usec: int = WATCHDOG_USEC
) -> subprocess.Popen[bytes]:
    """Start the daemon the way the unit does: the ``orchestrator`` script, notify env set."""
    env = dict(
        os.environ,
        NOTIFY_SOCKET=notify_socket,
        WATCHDOG_USEC=str(watchdog_usec),
        PYTHONUNBUFFERED="1",
    )
    env.pop("JOURNAL_STREAM", None)
    with open(log, "wb") as out:
        return subprocess.Popen(
            [*unit.executable_argv(), "daemon", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )


def wait_exit(proc: subprocess.Popen[bytes], log: Path) -> int:
    try:
        return proc.wait(EXIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(
            f"the daemon did not exit within {EXIT_TIMEOUT_S} s\n"
            f"--- daemon log ---\n{log.read_text()[-3000:]}"
        ) from None


def last_event_kinds(home: Home, n: int) -> list[str]:
    store = Store(home.state_db)
    try:
        return [e.kind for e in store.events()][-n:]
    finally:
        store.close()


def test_sd_notify_ready_watchdog_stopping(
    tmp_path: Path, runtime_dir: Path, notify: Notify
) -> None:
    config = prepare_demo(tmp_path, auto_approve=True)
    home = load_config(config)
    log = tmp_path / "daemon.log"
    proc = start(config, notify.path, log)
    try:
        ready = notify.wait_for("READY=1", 30, proc, log)
        # READY=1 promises clients can connect: the socket must already be there.
        assert home.socket_path.exists()
        assert ready.get("STATUS") == "running"
        snapshot = request(home.socket_path, P.Status()).snapshot
        assert len(snapshot.agents) == home.config.workers

        # WATCHDOG_USEC=0.4 s: a ping every 0.2 s; two arrive well within 5 s.
        deadline = time.monotonic() + 5
        while notify.count("WATCHDOG=1") < 2 and time.monotonic() < deadline:
            notify.wait_for("WATCHDOG=1", deadline - time.monotonic(), proc, log)
        assert notify.count("WATCHDOG=1") >= 2

        proc.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING=1", 10, proc, log)
        assert wait_exit(proc, log) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    order = [next(iter(f)) for f in notify.received]
    assert order.index("READY") < order.index("STOPPING")
    assert last_event_kinds(home, 1) == ["daemon.stopping"]
    assert not home.socket_path.exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_agents_gracefully(
    tmp_path: Path, runtime_dir: Path, notify: Notify, signum: signal.Signals
) -> None:
    """SIGINT (Ctrl-C) and SIGTERM (systemctl stop) take the same graceful path."""
    # a slow demo agent, so agents are surely still running when the signal comes
    config = prepare_demo(tmp_path, auto_approve=True, agent_delay_s=2.0)
    home = load_config(config)
    log = tmp_path / "daemon.log"
    proc = start(config, notify.path, log)
    try:
        notify.wait_for("READY=1", 30, proc, log)
        drop_tickets(home.backlog)
        running: list[AgentView] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            snapshot = request(home.socket_path, P.Status()).snapshot
            running = [a for a in snapshot.agents if a.state == AgentState.RUNNING and a.pid]
            assigned = {t.id for t in snapshot.tickets if t.state == TicketState.RUNNING}
            # signal once every assigned agent process runs, not while one is being spawned
            if running and assigned == {a.ticket for a in running}:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"agents did not start\n{log.read_text()[-3000:]}")

        proc.send_signal(signum)
        notify.wait_for("STOPPING=1", 10, proc, log)
        assert wait_exit(proc, log) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    text = log.read_text()
    assert f"received {signum.name}: stopping agents" in text
    # asyncio's own "Exception in callback" noise (a CPython subprocess race) aside,
    # nothing may have logged an error
    assert not [
        line for line in text.splitlines() if " ERROR " in line and " ERROR asyncio:" not in line
    ], text[-3000:]
    assert "internal error" not in text
    for agent in running:
        assert agent.pid is not None
        with pytest.raises(ProcessLookupError):
            os.kill(agent.pid, 0)  # the daemon ended its agents before it exited
    store = Store(home.state_db)
    try:
        records = {r.id: r for r in store.load()}
    finally:
        store.close()
    for agent in running:
        assert agent.ticket is not None
        rec = records[agent.ticket]
        assert rec.state == TicketState.QUEUED, (rec.state, rec.reason)
        assert rec.reason == "daemon stopped while the agent ran; requeued"
    assert not any(r.state == TicketState.RUNNING for r in records.values())
    assert last_event_kinds(home, 1) == ["daemon.stopping"]


def test_unread_notify_socket_does_not_hang_the_daemon(tmp_path: Path, runtime_dir: Path) -> None:
    """sd_notify never blocks the event loop, even when nobody reads $NOTIFY_SOCKET.

    The kernel queues max_dgram_qlen datagrams per socket (often 10); a blocking
    send beyond that would freeze the daemon until the manager reads again.
    """
    directory = tempfile.mkdtemp(prefix="orch-n-", dir="/tmp")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        receiver.bind(os.path.join(directory, "notify"))  # bound, never read
        config = prepare_demo(tmp_path, auto_approve=True)
        home = load_config(config)
        log = tmp_path / "daemon.log"
        # a ping every 1 ms: the kernel's queue (max_dgram_qlen datagrams) fills quickly
        proc = start(config, os.path.join(directory, "notify"), log, watchdog_usec=2000)
        try:
            deadline = time.monotonic() + 30
            while not home.socket_path.exists() and time.monotonic() < deadline:
                assert proc.poll() is None, log.read_text()
                time.sleep(0.05)
            qlen = int(Path("/proc/sys/net/unix/max_dgram_qlen").read_text())
            time.sleep(min(5.0, 0.5 + qlen * 0.003))
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(5)
            except subprocess.TimeoutExpired:
                raise AssertionError("the daemon hung on a full notify socket") from None
            assert code == 0, log.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        receiver.close()
        shutil.rmtree(directory, ignore_errors=True)


# --- the unit file ------------------------------------------------------------


def _verify(unit_file: Path) -> list[str]:
    """Lines of ``systemd-analyze verify`` output that are about our unit."""
    runtime = Path(tempfile.mkdtemp(prefix="orch-sa-", dir="/tmp"))
    try:
        env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime), SYSTEMD_LOG_COLOR="0")
        result = subprocess.run(
            ["systemd-analyze", "verify", "--user", str(unit_file)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        output = result.stdout + result.stderr
        if "Failed to initialize manager" in output:
            # no user manager context here (e.g. a container): the system-mode check
            # parses the unit with the same rules
            result = subprocess.run(
                ["systemd-analyze", "verify", str(unit_file)],
                capture_output=True,
                text=True,
                env=env,
                timeout=60,
            )
            output = result.stdout + result.stderr
        assert "Failed to initialize manager" not in output, output
    finally:
        shutil.rmtree(runtime, ignore_errors=True)
    return [line for line in output.splitlines() if unit.UNIT_NAME in line]


def _render_to(directory: Path, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / unit.UNIT_NAME
    path.write_text(text)
    return path


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (package systemd); it is the "
    "only tool that checks a unit file the way systemd parses it",
)
def test_rendered_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    executable = unit.executable_argv()
    assert Path(executable[0]).is_file()
    config = tmp_path / "home" / "config.yaml"
    text = unit.render_unit(executable, config)

    exec_start = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    assert exec_start == [f"ExecStart={' '.join(executable)} daemon --config {config}"]
    for setting in (
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=30",
        "Restart=on-failure",
        "RestartSec=2",
        "KillMode=mixed",
        "KillSignal=SIGTERM",
        "TimeoutStopSec=60",
        "Environment=PYTHONUNBUFFERED=1",
        "WantedBy=default.target",
        f"Documentation=file://{ROOT / 'docs' / 'service.md'}",
    ):
        assert setting in text.splitlines(), setting
    assert "@" not in text  # every placeholder filled

    assert _verify(_render_to(tmp_path / "ok", text)) == []

    # paths with spaces, quotes, % and $ are quoted and escaped, and still verify
    odd = tmp_path / "my 'odd' 100% $HOME" / "config.yaml"
    assert _verify(_render_to(tmp_path / "odd", unit.render_unit(executable, odd))) == []

    # the fallback without a console script: python -m orchestrator
    fallback = unit.render_unit([sys.executable, "-m", "orchestrator"], config)
    assert _verify(_render_to(tmp_path / "fallback", fallback)) == []

    # the check is not vacuous: systemd-analyze does complain about a broken copy
    broken = text.replace("WatchdogSec=30", "WatchdogSec=soon")
    assert _verify(_render_to(tmp_path / "broken", broken))


def test_render_unit_rejects_relative_paths() -> None:
    with pytest.raises(OrchestratorError, match="absolute"):
        unit.render_unit(Path("orchestrator"), Path("/x/config.yaml"))
    with pytest.raises(OrchestratorError, match="absolute"):
        unit.render_unit(Path("/usr/bin/orchestrator"), Path("config.yaml"))


# --- service install / uninstall ------------------------------------------------


@pytest.fixture
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """$XDG_CONFIG_HOME in tmp_path, so the unit lands there and not in ~/.config."""
    path = tmp_path / "xdg-config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(path))
    return path


def _home(directory: Path) -> Home:
    directory.mkdir(parents=True)
    (directory / "config.yaml").write_text('agent:\n  command: ["true"]\n')
    return load_config(directory / "config.yaml")


def test_service_install_and_uninstall(
    tmp_path: Path, config_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = _home(tmp_path / "proj")
    path = config_home / "systemd" / "user" / "orchestrator.service"

    assert cli(["service", "install", "--config", str(home.config_file)]) == 0
    out = capsys.readouterr().out
    assert path.is_file()
    script = Path(sys.executable).parent / "orchestrator"
    assert f"ExecStart={script} daemon --config {home.config_file}\n" in path.read_text()
    assert "  systemctl --user daemon-reload\n" in out
    assert "  systemctl --user enable --now orchestrator\n" in out
    assert "journalctl --user -u orchestrator -f" in out
    assert f"wrote {path}" in out

    # installing for another home replaces the unit and says what it replaced
    other = _home(tmp_path / "other")
    assert unit.install(other) == 0
    out = capsys.readouterr().out
    assert f"replaced {path}" in out
    assert f"was: ExecStart={script} daemon --config {home.config_file}" in out
    assert f"--config {other.config_file}\n" in path.read_text()
    assert unit.install(other) == 0
    assert "is up to date" in capsys.readouterr().out

    # still enabled: uninstall refuses and says to disable first
    wants = path.parent / "default.target.wants"
    wants.mkdir()
    (wants / unit.UNIT_NAME).symlink_to(path)
    assert cli(["service", "uninstall"]) == 1
    assert "systemctl --user disable --now orchestrator" in capsys.readouterr().out
    assert path.exists()
    (wants / unit.UNIT_NAME).unlink()

    assert cli(["service", "uninstall"]) == 0
    out = capsys.readouterr().out
    assert not path.exists()
    assert f"removed {path}" in out
    assert "systemctl --user daemon-reload" in out

    assert unit.uninstall() == 0
    assert "nothing to remove" in capsys.readouterr().out


def test_install_without_console_script_uses_python_m(
    tmp_path: Path,
    config_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    python = bindir / "python3"
    python.symlink_to(sys.executable)
    monkeypatch.setattr(sys, "executable", str(python))
    home = _home(tmp_path / "proj")
    assert unit.install(home) == 0
    text = (config_home / "systemd" / "user" / unit.UNIT_NAME).read_text()
    assert f"ExecStart={python} -m orchestrator daemon --config {home.config_file}\n" in text
    assert "PYTHONPATH" not in text  # the package is installed; nothing points into a checkout
    capsys.readouterr()


def test_unit_dir_defaults_to_home_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert unit.unit_path() == tmp_path / ".config" / "systemd" / "user" / unit.UNIT_NAME
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/dir")  # ignored, as the XDG spec says
    assert unit.unit_path() == tmp_path / ".config" / "systemd" / "user" / unit.UNIT_NAME
