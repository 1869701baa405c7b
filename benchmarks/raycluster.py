"""A real two-node Ray cluster on this machine, for the Ray runner's tests and benchmark.

A head on a loopback address and a second node with its own custom resource
``agent2`` (so agents can be pinned to it), each ``ray start --block`` in its own
process group, stopped by killing that group. Loopback addresses other than
127.0.0.1 are used on purpose: Ray replaces 127.0.0.1 by the machine's outward
address, and this cluster must stay on the loopback range.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


class RayCluster:
    """See the module docstring. ``env`` is what its nodes (and drivers joining it) need."""

    HEAD_IP = "127.0.0.2"
    NODE2_IP = "127.0.0.3"

    def __init__(self, root: Path, port: int = 0) -> None:
        """``root``: a short directory of its own (Ray's sockets live under it); ``port``:
        the head's GCS port, 0 for a free one."""
        if not port:
            with socket.socket() as sock:
                sock.bind((self.HEAD_IP, 0))
                port = sock.getsockname()[1]
        self.root = root
        self.port = port
        self.address = f"{self.HEAD_IP}:{port}"
        self.head: subprocess.Popen[bytes] | None = None
        self.node2: subprocess.Popen[bytes] | None = None
        self.env = dict(
            os.environ,
            RAY_USAGE_STATS_ENABLED="0",
            # Bound to loopback addresses; the same mode for every node and driver,
            # whatever ~/.ray/auth_token holds.
            RAY_AUTH_MODE="disabled",
            # A lost node is declared dead within about 2 s (default: tens of seconds).
            RAY_health_check_period_ms="500",
            RAY_health_check_timeout_ms="500",
            RAY_health_check_failure_threshold="3",
            RAY_health_check_initial_delay_ms="0",
        )

    def _ray_start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        ray = str(Path(sys.executable).with_name("ray"))
        log = self.root / f"{name}.log"
        with open(log, "ab") as out:
            proc = self._popen(ray, out, args)
        deadline = time.monotonic() + 60
        while "Ray runtime started" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                self._kill(proc)
                raise RuntimeError(f"ray start {name} failed:\n{log.read_text()[-2000:]}")
            time.sleep(0.2)
        return proc

    def _popen(self, ray: str, out: IO[bytes], args: tuple[str, ...]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                ray,
                "start",
                "--block",
                "--disable-usage-stats",
                "--object-store-memory",
                "100000000",
                "--dashboard-agent-listen-port",
                "0",
                *args,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            start_new_session=True,
        )

    def start(self) -> None:
        self.head = self._ray_start(
            "head",
            "--head",
            "--port",
            str(self.port),
            "--node-ip-address",
            self.HEAD_IP,
            "--num-cpus",
            "2",
            "--include-dashboard",
            "false",
            "--temp-dir",
            str(self.root / "t"),
        )
        self.start_node2()

    def start_node2(self) -> None:
        self.node2 = self._ray_start(
            "node2",
            "--address",
            self.address,
            "--node-ip-address",
            self.NODE2_IP,
            "--num-cpus",
            "2",
            "--resources",
            '{"agent2": 2}',
        )

    def node_ids(self) -> dict[str, str]:
        """Node address -> node id of the alive nodes (asked through a Ray driver)."""
        code = (
            f"import json, ray; ray.init(address={self.address!r}, "
            f"_node_ip_address={self.HEAD_IP!r}, log_to_driver=False); "
            "print(json.dumps({n['NodeManagerAddress']: n['NodeID'] for n in ray.nodes() "
            "if n['Alive']}))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=self.env, timeout=60
        )
        return dict(json.loads(out.stdout.strip().splitlines()[-1]))

    def kill_node2(self) -> None:
        """Lose the second node: SIGKILL its raylet and every process of its group."""
        assert self.node2 is not None
        self._kill(self.node2)
        self.node2 = None

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes]) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()

    def stop(self) -> None:
        for proc in (self.node2, self.head):
            if proc is not None:
                self._kill(proc)
        self.node2 = self.head = None


@contextmanager
def running_cluster(prefix: str) -> Iterator[RayCluster]:
    """A started :class:`RayCluster` in a new directory under /tmp named ``prefix``…,
    with Ray's token authentication and usage reporting off for the daemons this
    process starts; everything is stopped, removed and restored on exit."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED")}
    os.environ.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    cluster = RayCluster(root)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
