"""Fixtures for integration tests: real git repos, a real daemon, the real socket."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from benchmarks.raycluster import RayCluster, running_cluster
from orchestrator.daemon.home import init_home
from orchestrator.demo import start_daemon, stop_daemon
from orchestrator.shared import protocol as P
from orchestrator.shared.client import request
from orchestrator.shared.config import Home, load_config

ROOT = Path(__file__).resolve().parents[2]
AGENT = ROOT / "tests" / "agents" / "scripted_agent.py"
GIT_ID = ["-c", "user.name=t", "-c", "user.email=t@t"]

FAST = "heartbeat_interval_s: 0.5\nlease_ttl_s: 30\nrescan_interval_s: 0.5\n"


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *GIT_ID, "-C", str(cwd), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
def runtime_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A short XDG_RUNTIME_DIR so socket paths fit in AF_UNIX's 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="orch-", dir="/tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(path))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def source_repo(tmp_path: Path) -> Path:
    """A small project with a passing unittest suite, on branch main."""
    repo = tmp_path / "source"
    (repo / "tests").mkdir(parents=True)
    (repo / "app.py").write_text("def answer():\n    return 42\n")
    (repo / "tests" / "__init__.py").write_text("")
    (repo / "tests" / "test_app.py").write_text(
        "import unittest\nimport app\n\n\nclass T(unittest.TestCase):\n"
        "    def test_answer(self):\n        self.assertEqual(app.answer(), 42)\n"
    )
    git(repo.parent, "init", "--quiet", "--initial-branch=main", str(repo))
    git(repo, "add", "-A")
    git(repo, "commit", "--quiet", "-m", "initial")
    return repo


def run_group(
    argv: list[str], *, timeout_s: float, env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    """Run a command that starts daemons of its own (the demo, a README script) in its
    own process group, and on timeout stop the whole group, so no daemon outlives the test.

    Raises:
        subprocess.TimeoutExpired: after the group was stopped.
    """
    import signal

    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        raise
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def write_ticket(backlog: Path, tid: str, **fields: object) -> Path:
    """Write a ticket atomically (temp name, then rename) like an editor would."""
    fields.setdefault("title", f"ticket {tid}")
    path = backlog / f"{tid}.yaml"
    tmp = backlog.parent / f".{tid}.tmp"
    tmp.write_text(json.dumps(fields))  # JSON is YAML
    os.replace(tmp, path)
    return path


class Project:
    """A project home with a running daemon (started by :meth:`start`)."""

    def __init__(self, root: Path, home: Home) -> None:
        self.root = root
        self.home = home
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def config(self) -> Path:
        return self.home.config_file

    def start(self) -> None:
        self.proc = start_daemon(self.config, self.root / "daemon.log")

    def stop(self) -> None:
        if self.proc is not None:
            stop_daemon(self.proc)
            self.proc = None

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.proc = None

    def ticket(self, tid: str, **fields: object) -> Path:
        return write_ticket(self.home.backlog, tid, **fields)

    def send(self, command: P.Command) -> P.Reply:
        return request(self.home.socket_path, command)

    def snapshot(self) -> P.Snapshot:
        return request(self.home.socket_path, P.Status()).snapshot

    def states(self) -> dict[str, str]:
        return {t.id: str(t.state) for t in self.snapshot().tickets}

    def wait_for(
        self,
        predicate: Callable[[P.Snapshot], bool],
        timeout_s: float = 60.0,
        what: str = "condition",
    ) -> P.Snapshot:
        deadline = time.monotonic() + timeout_s
        snap = self.snapshot()
        while time.monotonic() < deadline:
            snap = self.snapshot()
            if predicate(snap):
                return snap
            time.sleep(0.1)
        log = (self.root / "daemon.log").read_text()[-3000:]
        states = {t.id: (str(t.state), t.reason) for t in snap.tickets}
        raise AssertionError(f"timed out waiting for {what}: {states}\n--- daemon log ---\n{log}")

    def wait_state(self, tid: str, *states: str, timeout_s: float = 60.0) -> P.Snapshot:
        return self.wait_for(
            lambda s: any(t.id == tid and t.state in states for t in s.tickets),
            timeout_s,
            f"{tid} in {states}",
        )

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "orchestrator", *args, "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=60,
        )


@pytest.fixture
def make_project(
    tmp_path: Path, source_repo: Path, runtime_dir: Path
) -> Iterator[Callable[..., Project]]:
    projects: list[Project] = []

    def make(
        workers: int = 2,
        approval: str = "manual",
        extra: str = "",
        agent: list[str] | None = None,
        start: bool = True,
        ci_prefix: str = "",
        root: Path | None = None,
    ) -> Project:
        """``ci_prefix`` runs before the test suite in the CI command (e.g. ``sleep 2 &&``);
        ``root``: the project home (default: a new directory in tmp_path)."""
        root = root or tmp_path / f"home{len(projects)}"
        ci = ci_prefix + f"{shlex.quote(sys.executable)} -m unittest discover -s tests -q"
        config = init_home(
            root,
            str(source_repo),
            ci_command=ci,
            workers=workers,
            agent_command=agent or [sys.executable, str(AGENT)],
            approval=approval,
            extra_config=FAST + extra,
        )
        project = Project(tmp_path, load_config(config))
        projects.append(project)
        if start:
            project.start()
        return project

    yield make
    for project in projects:
        project.stop()


def main_log(project: Project) -> list[str]:
    return git(project.home.repo, "log", "--format=%s", "main").splitlines()


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayCluster]:
    """One real Ray cluster for every Ray test of a module (starting one takes ~8 s).

    Module-scoped, not session-scoped: the cluster's dozen idle processes (raylets, GCS,
    log monitors, dashboard agents) would otherwise keep taking CPU from every test that
    runs after the Ray tests. The Ray tests live in one module (test_ray.py), so it
    still starts once per run."""
    with running_cluster("orch-ray-") as cluster:
        yield cluster
