"""What every benchmark shares: figures, statistics, a throw-away project with a
real daemon, /proc readings and a socket client that timestamps what it receives.

Times are taken with ``time.monotonic()`` (CLOCK_MONOTONIC, one clock for every
process of the machine), so a timestamp taken here can be compared with one
taken in a reader subprocess.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from orchestrator.daemon.home import init_home
from orchestrator.demo import start_daemon, stop_daemon
from orchestrator.shared import protocol as P
from orchestrator.shared.config import Home, load_config

#: An agent that never finishes by itself (stopped by the daemon at shutdown).
SLEEPING_AGENT = [sys.executable, "-c", "import time; time.sleep(3600)"]
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGESIZE") // 1024


class BenchmarkError(Exception):
    """A benchmark could not run (as opposed to: it ran and missed its target)."""


# --- figures -----------------------------------------------------------------


@dataclass
class Figure:
    """One measured number and the target it is judged against.

    Attributes:
        name: dotted id, e.g. ``intake.latency_p99``.
        value: the measurement, in ``unit``.
        unit: ``ms``, ``s``, ``MB``, ``events/s``, ``%``...
        target: the limit from the issue, or None for a figure given for context.
        higher_is_better: True when ``target`` is a minimum (throughput).
        floor: the same quantity for the layer underneath (e.g. raw watchdog
            latency under intake latency), when one is measured.
        samples: how many samples the statistic was taken over.
        note: one line on how it was measured.
        lower_bound: the run was cut short; the true value is at least ``value``.
    """

    name: str
    value: float
    unit: str
    target: float | None
    higher_is_better: bool = False
    floor: float | None = None
    samples: int | None = None
    note: str = ""
    lower_bound: bool = False

    @property
    def verdict(self) -> str:
        if self.target is None:
            return "info"
        if math.isnan(self.value):
            return "MISS"
        ok = self.value >= self.target if self.higher_is_better else self.value <= self.target
        return "ok" if ok else "MISS"

    @property
    def ratio(self) -> float | None:
        """``value / floor`` when a floor was measured."""
        if self.floor is None or not self.floor:
            return None
        return self.value / self.floor

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "name": self.name,
            "value": _round(self.value),
            "unit": self.unit,
            "target": self.target,
            "target_is": "min" if self.higher_is_better else "max",
            "verdict": self.verdict,
        }
        if self.floor is not None:
            doc["floor"] = _round(self.floor)
            ratio = self.ratio
            doc["ratio"] = _round(ratio) if ratio is not None else None
        if self.samples is not None:
            doc["samples"] = self.samples
        if self.lower_bound:
            doc["lower_bound"] = True
        if self.note:
            doc["note"] = self.note
        return doc


def _round(x: float) -> float | None:
    """Four significant digits (whole numbers from 1000 up); None for NaN/inf (not JSON)."""
    if math.isnan(x) or math.isinf(x):
        return None
    return float(f"{x:.4g}") if abs(x) < 1000 else round(x, 1)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), linear between closest ranks; NaN if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


# --- /proc -------------------------------------------------------------------


def proc_status_kb(pid: int, key: str) -> int:
    """A ``kB`` field of /proc/<pid>/status, e.g. ``VmRSS`` or ``VmHWM`` (see proc(5))."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise BenchmarkError(f"/proc/{pid}/status has no {key}")


def rss_mb(pid: int) -> float:
    return proc_status_kb(pid, "VmRSS") / 1024


def peak_rss_mb(pid: int) -> float:
    return proc_status_kb(pid, "VmHWM") / 1024


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (fields 14 and 15 of /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    fields = data[data.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine() -> dict[str, Any]:
    """nproc, CPU model, Python version, kernel and date, for docs/performance.md."""
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": sys.version.split()[0],
        "kernel": os.uname().release,
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }


# --- a project with a real daemon ----------------------------------------------


def git(cwd: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-c", "user.name=b", "-c", "user.email=b@b", "-C", str(cwd), *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise BenchmarkError(f"git {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout.strip()


def set_config_key(text: str, key: str, value: str) -> str:
    """Replace a top-level ``key: ...`` line of config.yaml text, or append one."""
    pattern = re.compile(rf"^{re.escape(key)}:.*$", re.MULTILINE)
    if pattern.search(text):
        return pattern.sub(f"{key}: {value}", text, count=1)
    return text + f"{key}: {value}\n"


class Project:
    """A temporary git repo, its project home and (once started) a real daemon.

    Use as ``with Project(workers=5) as project:``; everything lives under one
    short directory in /tmp (socket paths must fit in 107 bytes) and is removed
    at the end, the daemon stopped first. ``{base}`` in ``ci_command`` becomes
    that directory.
    """

    def __init__(
        self,
        *,
        workers: int = 5,
        agent_command: list[str] | None = None,
        ci_command: str = "true",
        approval: str = "manual",
        config: dict[str, str] | None = None,
        files: dict[str, str] | None = None,
    ) -> None:
        """``files``: extra files (relative path -> text) in the project's first commit."""
        self.base = Path(tempfile.mkdtemp(prefix="ob-", dir="/tmp"))
        self.staging = self.base / "staging"
        self.staging.mkdir()
        source = self.base / "src"
        source.mkdir()
        git(source, "init", "--quiet", "--initial-branch=main")
        (source / "README.md").write_text("benchmark project\n")
        for rel, text in (files or {}).items():
            (source / rel).parent.mkdir(parents=True, exist_ok=True)
            (source / rel).write_text(text)
        git(source, "add", "-A")
        git(source, "commit", "--quiet", "-m", "initial")
        self.config_file = init_home(
            self.base / "home",
            str(source),
            workers=workers,
            ci_command=ci_command.replace("{base}", str(self.base)),
            agent_command=agent_command or SLEEPING_AGENT,
            approval=approval,
        )
        text = self.config_file.read_text()
        overrides = {"socket": str(self.base / "d.sock"), **(config or {})}
        for key, value in overrides.items():
            text = set_config_key(text, key, value)
        self.config_file.write_text(text)
        self.home: Home = load_config(self.config_file)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_file = self.base / "daemon.log"

    def __enter__(self) -> Project:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pid(self) -> int:
        assert self.proc is not None, "daemon not started"
        return self.proc.pid

    @property
    def socket_path(self) -> Path:
        return self.home.socket_path

    def start(self) -> None:
        """Start the daemon and wait until it accepts a connection."""
        self.proc = start_daemon(self.config_file, self.log_file)
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.connect(str(self.socket_path))
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise BenchmarkError(f"the daemon did not start: {self.log_tail()}") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None:
            stop_daemon(self.proc)

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise BenchmarkError(
                f"the daemon exited with {self.proc.returncode}: {self.log_tail()}"
            )

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # --- tickets --------------------------------------------------------------

    def stage_ticket(
        self, ticket_id: str, *, priority: int = 2, locks: Sequence[str] = (), title: str = ""
    ) -> Path:
        """Write a ticket file outside the backlog (same file system); return its path."""
        text = (
            f"title: {json.dumps(title or 'benchmark ticket ' + ticket_id)}\npriority: {priority}\n"
        )
        if locks:
            text += "locks: [" + ", ".join(json.dumps(x) for x in locks) + "]\n"
        path = self.staging / f"{ticket_id}.yaml"
        path.write_text(text)
        return path

    def drop(self, staged: Path) -> Path:
        """Rename a staged ticket into the backlog, like an editor saving it."""
        dest = self.home.backlog / staged.name
        os.rename(staged, dest)
        return dest


# --- a socket client -----------------------------------------------------------


@dataclass
class Connection:
    """A blocking socket client whose reader thread timestamps every line.

    It subscribes with a ``hello``. ``on_message(t, message)`` runs in the
    reader thread for every event and resync snapshot (the daemon's hello and
    the first snapshot are kept in ``hello`` and ``snapshot``). :meth:`request`
    sends a command and waits for its reply.
    """

    path: Path
    on_message: Callable[[float, P.ServerMessage], None] | None = None
    decode: bool = True
    hello: P.Hello | None = None
    snapshot: P.Snapshot | None = None
    lines: int = 0
    error: BaseException | None = None
    _sock: socket.socket | None = None
    _thread: threading.Thread | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _pending: dict[str, tuple[threading.Event, list[Any]]] = field(default_factory=dict)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _send_lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> Connection:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self, timeout_s: float = 30.0) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.connect(str(self.path))
        self._sock.sendall(P.encode(P.ClientHello(version=P.PROTOCOL_VERSION, req="hello")))
        self._thread = threading.Thread(target=self._read, daemon=True, name="bench-reader")
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise BenchmarkError(f"no hello + snapshot from the daemon within {timeout_s} s")
        if self.error is not None:
            raise BenchmarkError(f"reading from the daemon failed: {self.error}")

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
        if self._thread is not None:
            self._thread.join(5)

    def send(self, command: P.Command) -> str:
        """Send a command without waiting; return its ``req``."""
        assert self._sock is not None
        req = f"b{next(self._ids)}"
        command = msgspec.structs.replace(command, req=req)
        with self._send_lock:
            self._sock.sendall(P.encode(command))
        return req

    def request(self, command: P.Command, timeout_s: float = 30.0) -> tuple[P.Reply, float]:
        """Send a command, wait for its reply; return it and the round trip in seconds."""
        assert self._sock is not None
        req = f"b{next(self._ids)}"
        command = msgspec.structs.replace(command, req=req)
        done = threading.Event()
        box: list[Any] = []
        self._pending[req] = (done, box)
        data = P.encode(command)
        t0 = time.monotonic()
        with self._send_lock:
            self._sock.sendall(data)
        if not done.wait(timeout_s):
            raise BenchmarkError(f"no reply to {type(command).__name__} within {timeout_s} s")
        t1, reply = box
        return reply, t1 - t0

    def _read(self) -> None:
        assert self._sock is not None
        buf = b""
        first = 0
        try:
            while True:
                chunk = self._sock.recv(1 << 20)
                if not chunk:
                    return
                t = time.monotonic()
                buf += chunk
                if b"\n" not in chunk:
                    continue
                *lines, buf = buf.split(b"\n")
                self.lines += len(lines)
                for line in lines:
                    if first < 3:  # hello, the reply to ours, the snapshot
                        first += 1
                        message = P.decode_server(line)
                        if isinstance(message, P.Hello):
                            self.hello = message
                            continue
                        if isinstance(message, P.Reply) and message.req == "hello":
                            if not message.ok:
                                raise BenchmarkError(f"hello refused: {message.message}")
                            continue
                        if isinstance(message, P.Snapshot):
                            first = 3
                            self.snapshot = message
                            self._ready.set()
                            continue
                    if not self.decode and b'"type":"reply"' not in line:  # not a StatusReply
                        continue
                    message = P.decode_server(line)
                    if isinstance(message, P.Reply):
                        pending = self._pending.pop(message.req or "", None)
                        if pending is not None:
                            pending[1].extend((t, message))
                            pending[0].set()
                        continue
                    if self.on_message is not None:
                        self.on_message(t, message)
        except OSError:
            return
        except BaseException as exc:  # surfaced by open() or the benchmark
            self.error = exc
            self._ready.set()
            raise


def wait_until(
    predicate: Callable[[], bool],
    timeout_s: float,
    what: str,
    project: Project | None = None,
    poll_s: float = 0.01,
) -> None:
    """Poll ``predicate`` until true; BenchmarkError naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if project is not None:
            project.alive()
        if time.monotonic() > deadline:
            raise BenchmarkError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)
