"""Integration tests for hooks/post-receive + ci.sh with real git and real processes.

Each test builds a project home in tmp_path (bare repo.git with the hook and ci.sh
installed the way `orchestrator init` does it), pushes agent branches from a work
clone, and polls for the status JSON written by the detached CI job.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from orchestrator.shared import protocol as P

REPO_ROOT = Path(__file__).resolve().parents[2]
HOOK_SRC = REPO_ROOT / "hooks" / "post-receive"
CI_SRC = REPO_ROOT / "ci.sh"

POLL_TIMEOUT_S = 30.0
ISO_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
STATUS_KEYS = {
    "sha",
    "ref",
    "status",
    "exit_code",
    "started_at",
    "finished_at",
    "duration_s",
    "log_tail",
    "checks",
}

TEST_OK = """\
import unittest


class OkTest(unittest.TestCase):
    def test_ok(self):
        self.assertEqual(1 + 1, 2)
"""

TEST_FAIL = """\
import unittest


class BadTest(unittest.TestCase):
    def test_bad(self):
        self.assertEqual("expected-value", "DELIBERATE-FAILURE-MARKER")
"""


def sleeping_test(seconds: float) -> str:
    return (
        "import time\nimport unittest\n\n\n"
        "class SlowTest(unittest.TestCase):\n"
        "    def test_slow(self):\n"
        f"        time.sleep({seconds})\n"
    )


def wait_for(pred: Callable[[], object], what: str, timeout: float = POLL_TIMEOUT_S) -> object:
    deadline = time.monotonic() + timeout
    while True:
        result = pred()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


@dataclass
class Home:
    """A project home: DIR/repo.git (bare, hook installed), DIR/ci.sh, a work clone."""

    root: Path
    bare: Path
    work: Path
    env: dict[str, str]
    tmpdir: Path

    def run(self, *args: str, cwd: Path | None = None) -> str:
        proc = subprocess.run(
            list(args),
            cwd=cwd or self.work,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if proc.returncode != 0:
            raise AssertionError(
                f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
        return proc.stdout

    def git(self, *args: str, cwd: Path | None = None) -> str:
        return self.run("git", *args, cwd=cwd)

    def config(self, key: str, value: str | None) -> None:
        if value is None:
            subprocess.run(
                ["git", "--git-dir", str(self.bare), "config", "--unset", key],
                env=self.env,
                check=False,
                capture_output=True,
            )
        else:
            self.git("--git-dir", str(self.bare), "config", key, value)

    def commit(self, branch: str, files: dict[str, str], message: str = "change") -> str:
        """Create `branch` from main (or reuse it), commit `files`; return the sha."""
        existing = self.git("branch", "--list", branch).strip()
        if existing:
            self.git("checkout", "-q", branch)
        else:
            self.git("checkout", "-q", "-b", branch, "main")
        for rel, text in files.items():
            path = self.work / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            self.git("add", rel)
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.git("rev-parse", "HEAD").strip()

    def push(self, *refspecs: str) -> str:
        proc = subprocess.run(
            ["git", "push", "-q", "origin", *refspecs],
            cwd=self.work,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stderr

    @property
    def status_dir(self) -> Path:
        return self.bare / "ci-status"

    def status_path(self, sha: str) -> Path:
        return self.status_dir / f"{sha}.json"

    def log_path(self, sha: str) -> Path:
        return self.status_dir / f"{sha}.log"

    def read_log(self, sha: str) -> str:
        try:
            return self.log_path(sha).read_text(errors="replace")
        except FileNotFoundError:
            return "<no log file>"

    def wait_status(self, sha: str) -> dict:
        """Wait until the status JSON exists and the background job has finished."""
        path = self.status_path(sha)
        try:
            wait_for(path.exists, f"status file {path.name}")
            wait_for(lambda: f"CI for {sha} done" in self.read_log(sha), "CI job to finish")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- job log ---\n{self.read_log(sha)}") from None
        return json.loads(path.read_text())


@pytest.fixture
def home(tmp_path: Path) -> Home:
    root = tmp_path / "home"
    root.mkdir()
    fake_home = tmp_path / "userhome"
    fake_home.mkdir()
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        HOME=str(fake_home),
        TMPDIR=str(tmpdir),
        GIT_CONFIG_NOSYSTEM="1",
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@t",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@t",
    )

    # Source repo with one commit containing a tiny stdlib unittest suite.
    src = tmp_path / "src"
    src.mkdir()
    (src / "tests").mkdir()
    (src / "tests" / "test_ok.py").write_text(TEST_OK)
    for args in (["init", "-q", "-b", "main"], ["add", "."], ["commit", "-q", "-m", "init"]):
        subprocess.run(["git", *args], cwd=src, env=env, check=True, capture_output=True)

    bare = root / "repo.git"
    subprocess.run(
        ["git", "clone", "-q", "--bare", str(src), str(bare)],
        env=env,
        check=True,
        capture_output=True,
    )

    # Install as `orchestrator init` does.
    hook = bare / "hooks" / "post-receive"
    shutil.copyfile(HOOK_SRC, hook)
    hook.chmod(0o755)
    ci = root / "ci.sh"
    shutil.copyfile(CI_SRC, ci)
    ci.chmod(ci.stat().st_mode | stat.S_IXUSR)
    ci_command = f"{shlex.quote(sys.executable)} -m unittest discover -s tests -q"
    for key, value in (
        ("orchestrator.ciScript", str(ci)),
        ("orchestrator.ciCommand", ci_command),
        ("orchestrator.ciTimeoutS", "60"),
        ("orchestrator.python", sys.executable),
    ):
        subprocess.run(
            ["git", "--git-dir", str(bare), "config", key, value],
            env=env,
            check=True,
            capture_output=True,
        )

    work = tmp_path / "work"
    subprocess.run(
        ["git", "clone", "-q", str(bare), str(work)], env=env, check=True, capture_output=True
    )
    return Home(root=root, bare=bare, work=work, env=env, tmpdir=tmpdir)


@dataclass
class FakeDaemon:
    """A real Unix socket server speaking the daemon's line protocol (one thread)."""

    path: str
    received: queue.Queue = field(default_factory=queue.Queue)
    errors: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(self.path)
        self._sock.listen(8)
        self._sock.settimeout(0.1)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                try:
                    self._handle(conn)
                except Exception as exc:  # recorded, asserted on by the test
                    self.errors.append(exc)

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        conn.sendall(P.encode(P.Hello(version=P.PROTOCOL_VERSION, home="/h", pid=1)))
        # One-shot: after its hello the daemon sends nothing until the command's reply.
        buf = b""
        while b"\n" not in buf:
            chunk = conn.recv(4096)
            if not chunk:
                raise ConnectionError("client closed before sending a line")
            buf += chunk
        line, _, rest = buf.partition(b"\n")
        assert rest == b"", f"more than one line sent: {rest!r}"
        command = json.loads(line)
        self.received.put(command)
        conn.sendall(P.encode(P.Reply(ok=True, message="applied", req=command.get("req"))))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # Unix socket paths must be < 108 bytes; tmp_path can be longer than that.
    d = tempfile.mkdtemp(prefix="orch-", dir="/tmp")
    try:
        yield Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def daemon(short_dir: Path) -> Iterator[FakeDaemon]:
    d = FakeDaemon(str(short_dir / "d.sock"))
    try:
        yield d
    finally:
        d.close()


def assert_schema(doc: dict, sha: str, ref: str) -> None:
    assert set(doc) == STATUS_KEYS
    assert doc["sha"] == sha
    assert doc["ref"] == ref
    assert doc["status"] in {"pass", "fail", "error"}
    assert type(doc["exit_code"]) is int
    assert isinstance(doc["started_at"], str) and ISO_RE.match(doc["started_at"])
    assert isinstance(doc["finished_at"], str) and ISO_RE.match(doc["finished_at"])
    assert doc["started_at"] <= doc["finished_at"]
    assert type(doc["duration_s"]) is float and doc["duration_s"] >= 0
    assert isinstance(doc["log_tail"], str)
    assert len(doc["log_tail"]) <= 8000
    assert len(doc["log_tail"].splitlines()) <= 100


def assert_cleaned_up(home: Home) -> None:
    # The throw-away checkout (and ci.sh's temp log) live in TMPDIR and must be gone.
    assert list(home.tmpdir.iterdir()) == []


def test_passing_commit_writes_pass_status(home: Home) -> None:
    sha = home.commit("agent-1/t1", {"tests/test_more.py": TEST_OK.replace("OkTest", "More")})
    out = home.push("agent-1/t1")
    assert "CI started for agent-1/t1" in out

    doc = home.wait_status(sha)
    assert_schema(doc, sha, "refs/heads/agent-1/t1")
    assert doc["status"] == "pass", doc
    assert doc["exit_code"] == 0
    assert "OK" in doc["log_tail"]
    # No socket configured: the file is still written, the log says why nobody was told.
    assert "picked up when the daemon starts" in home.read_log(sha)
    assert not list(home.status_dir.glob("*.tmp.*"))
    assert_cleaned_up(home)


def test_push_returns_before_ci_finishes(home: Home) -> None:
    # The job runs in a fork of the hook's Python: it must hold none of git's pipes,
    # or `git push` would wait for the 5 s command and the status would be there.
    home.config("orchestrator.ciCommand", "sleep 5 && echo SLEPT")
    sha = home.commit("agent-1/t1", {})
    home.push("agent-1/t1")
    assert not home.status_path(sha).exists()
    assert home.log_path(sha).exists()  # the job was started by the hook

    doc = home.wait_status(sha)
    assert doc["status"] == "pass", doc
    assert "SLEPT" in doc["log_tail"]
    assert doc["duration_s"] >= 4.5


def test_failing_test_writes_fail_status(home: Home) -> None:
    sha = home.commit("agent-2/broken", {"tests/test_bad.py": TEST_FAIL})
    home.push("agent-2/broken")

    doc = home.wait_status(sha)
    assert_schema(doc, sha, "refs/heads/agent-2/broken")
    assert doc["status"] == "fail", doc
    assert doc["exit_code"] == 1
    assert "DELIBERATE-FAILURE-MARKER" in doc["log_tail"]
    assert "FAILED" in doc["log_tail"]
    assert_cleaned_up(home)


def test_timeout_writes_error_status(home: Home) -> None:
    home.config("orchestrator.ciTimeoutS", "1")
    sha = home.commit("agent-1/slow", {"tests/test_slow.py": sleeping_test(5)})
    home.push("agent-1/slow")

    doc = home.wait_status(sha)
    assert_schema(doc, sha, "refs/heads/agent-1/slow")
    assert doc["status"] == "error", doc
    assert doc["exit_code"] in (124, 137)
    assert "timed out after 1 s" in doc["log_tail"]
    assert doc["duration_s"] < 5
    assert_cleaned_up(home)


def test_missing_ci_command_writes_error_status(home: Home) -> None:
    home.config("orchestrator.ciCommand", None)
    sha = home.commit("agent-1/t1", {})
    home.push("agent-1/t1")

    doc = home.wait_status(sha)
    assert_schema(doc, sha, "refs/heads/agent-1/t1")
    assert doc["status"] == "error"
    assert "no CI command configured (git config orchestrator.ciCommand)" in doc["log_tail"]


def test_non_agent_refs_do_nothing(home: Home) -> None:
    main_sha = home.commit("main", {"tests/test_main.py": TEST_OK.replace("OkTest", "Main")})
    home.git("tag", "v1")
    home.push("main", "v1")
    # The hook creates the job's log synchronously, so anything started would show now.
    assert not home.status_dir.exists() or list(home.status_dir.iterdir()) == []

    # Branch deletions are ignored too.
    sha = home.commit("agent-1/t1", {})
    home.push("agent-1/t1")
    home.wait_status(sha)
    before = sorted(p.name for p in home.status_dir.iterdir())
    home.push(":agent-1/t1")
    assert sorted(p.name for p in home.status_dir.iterdir()) == before
    assert not home.status_path(main_sha).exists()
    assert not home.log_path(main_sha).exists()


def test_daemon_is_notified(home: Home, daemon: FakeDaemon) -> None:
    home.config("orchestrator.socket", daemon.path)
    sha = home.commit("agent-3/notify", {})
    home.push("agent-3/notify")

    doc = home.wait_status(sha)
    assert doc["status"] == "pass", doc
    msg = daemon.received.get(timeout=POLL_TIMEOUT_S)
    assert {k: v for k, v in msg.items() if k != "req"} == {"type": "ci_notify", "sha": sha}
    assert daemon.errors == []
    assert "notified daemon" in home.read_log(sha)


def test_absent_daemon_still_writes_status(home: Home, short_dir: Path) -> None:
    # Socket configured but nothing listening (path does not exist), and ciScript
    # unset so the default $GIT_DIR/../ci.sh is used.
    home.config("orchestrator.socket", str(short_dir / "gone.sock"))
    home.config("orchestrator.ciScript", None)
    sha = home.commit("agent-1/t1", {})
    home.push("agent-1/t1")

    doc = home.wait_status(sha)
    assert doc["status"] == "pass", doc
    log = home.read_log(sha)
    assert "picked up when the daemon starts" in log


def test_ref_names_are_not_code(home: Home) -> None:
    branch = "agent-4/x;touch${IFS}PWNED$(touch${IFS}PWNED2)`touch${IFS}PWNED3`"
    sha = home.commit(branch, {})
    home.push(branch)

    doc = home.wait_status(sha)
    assert doc["status"] == "pass", doc
    assert doc["ref"] == f"refs/heads/{branch}"
    leaked = list(home.root.parent.rglob("PWNED*"))
    assert leaked == []


def test_ci_runs_in_clean_checkout_of_the_sha(home: Home) -> None:
    # No GIT_* variable from the hook may leak into the test command, and the
    # command runs at the root of a checkout of exactly the pushed sha.
    home.config(
        "orchestrator.ciCommand",
        'env | grep "^GIT_" && exit 3; '
        'test "$(git rev-parse HEAD)" = "$CI_SHA" || exit 4; '
        "test -f tests/test_ok.py || exit 5; "
        "git status --porcelain | grep . && exit 6; echo CLEAN-OK",
    )
    sha = home.commit("agent-5/env", {"README": "hello\n"})
    home.push("agent-5/env")

    doc = home.wait_status(sha)
    assert doc["status"] == "pass", doc
    assert "CLEAN-OK" in doc["log_tail"]
    assert_cleaned_up(home)


def _ci_sh(home: Home, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the shipped ci.sh by hand, in the work clone, with ORCH_PYTHON set."""
    full = {**home.env, "ORCH_PYTHON": sys.executable, **env}
    return subprocess.run(
        [str(home.root / "ci.sh")],
        cwd=home.work,
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_ci_sh_by_hand_prints_the_status_as_its_last_line(home: Home, tmp_path: Path) -> None:
    head = home.git("rev-parse", "HEAD").strip()
    proc = _ci_sh(home, tmp_path, CI_COMMAND="echo RUNNING-TESTS; exit 3")
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "RUNNING-TESTS"
    doc = json.loads(lines[-1])
    assert_schema(doc, head, "")
    assert (doc["status"], doc["exit_code"]) == ("fail", 3)
    assert doc["log_tail"] == "RUNNING-TESTS\n"


def test_ci_sh_refuses_a_bad_timeout_with_an_error_status(home: Home, tmp_path: Path) -> None:
    out = tmp_path / "status" / "s.json"
    proc = _ci_sh(home, tmp_path, CI_COMMAND="true", CI_TIMEOUT_S="soon", CI_STATUS_FILE=str(out))
    assert proc.returncode == 1
    doc = json.loads(out.read_text())
    assert (doc["status"], doc["exit_code"]) == ("error", 2)
    assert "invalid CI_TIMEOUT_S: 'soon' (expected a positive integer)" in doc["log_tail"]
    assert [p.name for p in out.parent.iterdir()] == ["s.json"]  # no temp file left


def test_ci_sh_exits_2_when_the_status_cannot_be_written(home: Home, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    proc = _ci_sh(home, tmp_path, CI_COMMAND="true", CI_STATUS_FILE=str(blocker / "s.json"))
    assert proc.returncode == 2
    assert "cannot write the status file" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_shipped_scripts_hold_no_python(home: Home) -> None:
    # One implementation (orchestrator/ci.py): the scripts only call it.
    for script in (HOOK_SRC, CI_SRC):
        text = script.read_text()
        assert "<<" not in text and " -c " not in text.replace("bash -c", ""), script
        assert "-m orchestrator.cihook" in text or "orchestrator ci run" in text, script


def test_ci_notify_by_hand(home: Home, daemon: FakeDaemon, short_dir: Path) -> None:
    cmd = [sys.executable, "-m", "orchestrator", "ci", "notify", "--socket", daemon.path]
    proc = subprocess.run([*cmd, "f" * 40], capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (0, "ok: applied\n"), proc.stderr
    assert daemon.received.get(timeout=5)["sha"] == "f" * 40
    gone = [*cmd[:-1], str(short_dir / "gone.sock"), "f" * 40]
    proc = subprocess.run(gone, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith("orchestrator: no daemon answers on")


def _python_recorder(tmp_path: Path) -> tuple[Path, Path]:
    """A wrapper of the real interpreter that appends its argv to a file (the record,
    returned with the wrapper) and puts a ``sitecustomize`` on ``PYTHONPATH`` that
    appends the argv of every Python started below it (the CI job's environment
    keeps ``PYTHONPATH``) to :func:`every_python` of the record."""
    record = tmp_path / "python-starts.txt"
    site = tmp_path / "record-site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sys\n"
        f"with open({str(every_python(record))!r}, 'a') as f:\n"
        "    f.write(' '.join(sys.orig_argv[1:]) + '\\n')\n"
    )
    wrapper = tmp_path / "python-wrapper"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$*" >> {shlex.quote(str(record))}\n'
        f"export PYTHONPATH={shlex.quote(str(site))}\n"
        f'exec {shlex.quote(sys.executable)} "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper, record


def _record_python_starts(home: Home, tmp_path: Path) -> Path:
    """Point ``orchestrator.python`` at :func:`_python_recorder`'s wrapper: its record
    lists every Python the hook starts, :func:`python_starts` every Python at all."""
    wrapper, record = _python_recorder(tmp_path)
    home.config("orchestrator.python", str(wrapper))
    home.config("receive.advertisePushOptions", "true")
    return record


def every_python(record: Path) -> Path:
    """Where :func:`_record_python_starts` lists every Python started (argv after the
    interpreter's path, one line each)."""
    return record.with_name("every-python.txt")


def python_starts(record: Path) -> list[str]:
    try:
        return every_python(record).read_text().splitlines()
    except FileNotFoundError:
        return []


def _push_with_options(home: Home, *args: str) -> str:
    proc = subprocess.run(
        ["git", "push", "-q", "origin", *args],
        cwd=home.work,
        env=home.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_ci_skip_push_of_agent_branches_starts_no_python(home: Home, tmp_path: Path) -> None:
    # A worker's branch push under auto approval: the hook ends in the shell script.
    record = _record_python_starts(home, tmp_path)
    home.commit("agent-1/t1", {"a.txt": "a\n"})
    home.commit("agent-2/t2", {"b.txt": "b\n"})
    out = _push_with_options(home, "-o", "ci=skip", "agent-1/t1", "agent-2/t2")
    assert "CI started" not in out
    assert not record.exists()
    assert not home.status_dir.exists() or list(home.status_dir.iterdir()) == []

    # Another push option alone does not skip: the branch gets its CI run.
    sha = home.commit("agent-1/t1", {"c.txt": "c\n"})
    out = _push_with_options(home, "-o", "other=1", "agent-1/t1")
    assert "CI started for agent-1/t1" in out
    assert home.wait_status(sha)["status"] == "pass"
    assert record.read_text().splitlines() == ["-m orchestrator.cihook"]


def test_ci_skip_does_not_skip_a_merge_queue_commit(home: Home, tmp_path: Path) -> None:
    # A queue commit pushed together with a skipped branch: Python starts, and
    # cihook.py (authoritative) starts CI for the queue commit only.
    record = _record_python_starts(home, tmp_path)
    branch_sha = home.commit("agent-1/t1", {"a.txt": "a\n"})
    queue_sha = home.commit("stack", {"q.txt": "q\n"})
    out = _push_with_options(
        home, "-o", "ci=skip", "agent-1/t1", "stack:refs/orchestrator/queue/t1"
    )
    assert "CI started for queue/t1" in out
    assert "agent-1/t1" not in out
    doc = home.wait_status(queue_sha)
    assert_schema(doc, queue_sha, "refs/orchestrator/queue/t1")
    assert doc["status"] == "pass", doc
    assert record.read_text().splitlines() == ["-m orchestrator.cihook"]
    assert not home.log_path(branch_sha).exists()
    assert sorted(p.name for p in home.status_dir.iterdir()) == [
        f"{queue_sha}.json",
        f"{queue_sha}.log",
    ]


def test_the_shipped_ci_sh_runs_in_the_hooks_python(home: Home, tmp_path: Path) -> None:
    # A merge queue commit with the shipped ci.sh: the hook's Python forks the job,
    # which runs `ci run` itself: one Python for the whole CI run.
    record = _record_python_starts(home, tmp_path)
    home.config("orchestrator.ciCommand", "test -f q.txt && echo TESTS-RAN-HERE")
    sha = home.commit("stack", {"q.txt": "q\n"})
    out = home.push("stack:refs/orchestrator/queue/t1")
    assert "CI started for queue/t1" in out

    doc = home.wait_status(sha)
    assert_schema(doc, sha, "refs/orchestrator/queue/t1")
    assert (doc["status"], doc["exit_code"]) == ("pass", 0), doc
    assert doc["log_tail"] == "TESTS-RAN-HERE\n"
    assert "is the shipped template" in home.read_log(sha)
    assert python_starts(record) == ["-m orchestrator.cihook"]
    assert_cleaned_up(home)


@pytest.mark.parametrize("change", ["comment", "marker"])
def test_a_customised_ci_sh_really_runs(home: Home, tmp_path: Path, change: str) -> None:
    record = _record_python_starts(home, tmp_path)
    ci_sh = home.root / "ci.sh"
    template = CI_SRC.read_text()
    marker = tmp_path / "ci-sh-ran"
    if change == "comment":
        ci_sh.write_text(template + "# one line of our own\n")
    else:
        line = f'printf "%s\\n" "$CI_SHA" > {shlex.quote(str(marker))}\n'
        ci_sh.write_text(template.replace("set -euo pipefail\n", "set -euo pipefail\n" + line))
    home.config("orchestrator.ciCommand", "echo TESTS-RAN")
    sha = home.commit("agent-1/t1", {})
    home.push("agent-1/t1")

    doc = home.wait_status(sha)
    assert (doc["status"], doc["log_tail"]) == ("pass", "TESTS-RAN\n"), doc
    assert "shipped template" not in home.read_log(sha)
    # ci.sh ran, and exec'd its own `ci run` Python.
    assert python_starts(record) == ["-m orchestrator.cihook", "-m orchestrator.ci run"]
    if change == "marker":
        assert marker.read_text() == f"{sha}\n"


#: The CI command of the environment test: its own environment must hold no GIT_*
#: and neither the ref token nor the run id, and neither may the initial environment
#: of any process above it (/proc/<pid>/environ, readable by the code under test).
CHECK_ENV = r"""
env | grep -E '^(GIT_|ORCH_REF_TOKEN=|ORCH_RUN_ID=)' && exit 3
pid=$PPID
while [ "$pid" -gt 1 ]; do
    if environ=$(tr '\0' '\n' < "/proc/$pid/environ"); then
        printf '%s\n' "$environ" | grep -E '^(ORCH_REF_TOKEN|ORCH_RUN_ID)=' && exit 4
        echo "checked $(cat "/proc/$pid/comm")"
    fi
    pid=$(sed 's/.*) //' "/proc/$pid/stat" | cut -d ' ' -f 2)
done
echo ENV-CLEAN
"""


@pytest.mark.parametrize("hook", ["shipped", "old copy"])
def test_the_job_gets_neither_git_env_nor_the_daemons_secrets(
    home: Home, tmp_path: Path, hook: str
) -> None:
    # The merger pushes with ORCH_REF_TOKEN; an agent's push would carry ORCH_RUN_ID.
    # The shipped hook unsets both before Python starts, so the job is forked; a copy
    # of the hook from before (no unset) gets the job exec'd with a clean environment.
    if hook == "old copy":
        text = HOOK_SRC.read_text()
        assert "\nunset ORCH_REF_TOKEN ORCH_RUN_ID\n" in text
        (home.bare / "hooks" / "post-receive").write_text(
            text.replace("\nunset ORCH_REF_TOKEN ORCH_RUN_ID\n", "\n")
        )
    record = _record_python_starts(home, tmp_path)
    script = tmp_path / "check-env.sh"
    script.write_text(CHECK_ENV)
    home.config("orchestrator.ciCommand", f"bash {shlex.quote(str(script))}")
    home.env.update(ORCH_REF_TOKEN="the-daemons-secret", ORCH_RUN_ID="run-1234")
    sha = home.commit("stack", {})
    home.push("stack:refs/orchestrator/queue/t1")

    doc = home.wait_status(sha)
    assert doc["status"] == "pass", doc
    log = doc["log_tail"]
    assert "ENV-CLEAN" in log
    assert "checked timeout" in log and "checked python" in log, log  # the job itself
    starts = python_starts(record)
    if hook == "shipped":
        assert starts == ["-m orchestrator.cihook"]
    else:
        assert starts == [
            "-m orchestrator.cihook",
            f"-m orchestrator.ci job {home.bare} {sha} refs/orchestrator/queue/t1",
        ]


def test_an_exception_in_the_job_is_logged_and_gives_an_error_status(
    home: Home, tmp_path: Path, daemon: FakeDaemon
) -> None:
    # A host without coreutils' `timeout` (a PATH holding only what git and the hook
    # need): `ci run` inside the job raises FileNotFoundError.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "git", "cat"):
        found = shutil.which(tool)
        assert found is not None
        (bin_dir / tool).symlink_to(found)
    home.config("orchestrator.socket", daemon.path)
    sha = home.commit("agent-1/t1", {})
    home.env["PATH"] = str(bin_dir)
    out = home.push("agent-1/t1")
    assert "CI started for agent-1/t1" in out

    doc = home.wait_status(sha)
    assert_schema(doc, sha, "refs/heads/agent-1/t1")
    assert (doc["status"], doc["exit_code"]) == ("error", 1), doc
    assert "the CI job failed: FileNotFoundError" in doc["log_tail"]
    log = home.read_log(sha)
    assert "Traceback (most recent call last)" in log and "'timeout'" in log, log
    # ...and the daemon still hears of it, and the checkout is gone.
    assert daemon.received.get(timeout=POLL_TIMEOUT_S)["sha"] == sha
    assert_cleaned_up(home)


def test_one_python_per_ticket_and_a_real_daemon_is_notified(make_project, tmp_path: Path) -> None:
    # The real pipeline under auto approval: the branch push (ci=skip) starts no Python,
    # the merge queue commit's CI runs in the hook's Python, and the daemon merges it.
    project = make_project(workers=1, approval="auto")
    repo = project.home.repo
    wrapper, record = _python_recorder(tmp_path)
    # The daemon wrote orchestrator.python at its start; the hook reads it at each push.
    subprocess.run(
        ["git", "--git-dir", str(repo), "config", "orchestrator.python", str(wrapper)],
        check=True,
    )
    project.ticket("t1", description="write src/one.py ONE = 1\\n")
    project.wait_state("t1", "merged", timeout_s=90)

    statuses = sorted((repo / "ci-status").glob("*.json"))
    assert len(statuses) == 1, statuses
    doc = json.loads(statuses[0].read_text())
    sha = statuses[0].stem
    assert_schema(doc, sha, "refs/orchestrator/queue/t1")
    assert doc["status"] == "pass", doc
    main = subprocess.run(
        ["git", "--git-dir", str(repo), "rev-parse", "main"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert main == sha  # main was fast-forwarded to the commit CI passed
    log_path = repo / "ci-status" / f"{sha}.log"
    wait_for(lambda: f"CI for {sha} done" in log_path.read_text(), "the CI job to finish")
    log = log_path.read_text()
    assert "is the shipped template" in log, log
    assert f"notified daemon at {project.home.socket_path}: ok: applied" in log, log
    # One Python for the ticket's CI besides the project's own tests (the CI command).
    assert sorted(python_starts(record)) == [
        "-m orchestrator.cihook",
        "-m unittest discover -s tests -q",
    ]


def test_several_refs_in_one_push_each_get_their_own_job(home: Home) -> None:
    # The hook forks once per ref; what it printed before a fork must not reach the
    # next child's log (its stdout goes to git, buffered: flushed before each fork),
    # and a child must not go on with the hook's loop after its job (os._exit).
    home.env.pop("PYTHONUNBUFFERED", None)  # the hook's stdout buffered, as by default
    shas = {
        branch: home.commit(branch, {f"{branch[:7]}.txt": "x\n"})
        for branch in ("agent-1/a", "agent-2/b", "agent-3/c")
    }
    out = home.push(*shas)
    for branch, sha in shas.items():
        assert out.count(f"orchestrator: CI started for {branch} ({sha[:12]})") == 1, out
        assert home.wait_status(sha)["status"] == "pass"
    # Every process of this push has ended (each carries the test's own HOME), so a
    # child that went on with the hook's loop would have written its lines by now.
    marker = f"HOME={home.env['HOME']}".encode()
    wait_for(lambda: not _processes_with(marker), "the CI jobs to exit")
    for branch, sha in shas.items():
        log = home.read_log(sha)
        assert log.count(f"CI for {sha} (refs/heads/{branch}) started") == 1, log
        assert log.startswith("["), log
        assert "orchestrator: CI started" not in log and "Traceback" not in log, log
        assert log.endswith(f"CI for {sha} done\n"), log


def test_an_interrupted_job_never_returns_into_the_hook(home: Home, tmp_path: Path) -> None:
    # SIGINT to the job: the KeyboardInterrupt is no Exception the job handles (no
    # status claims a result); its traceback goes to the log and the job ends there.
    pid_file = tmp_path / "timeout.pid"
    home.config("orchestrator.ciCommand", f"echo $PPID > {shlex.quote(str(pid_file))}; sleep 60")
    sha = home.commit("agent-1/t1", {})
    home.push("agent-1/t1")
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), "the CI command")
    timeout_pid = int(pid_file.read_text())
    stat = Path(f"/proc/{timeout_pid}/stat").read_text()
    job_pid = int(stat[stat.rfind(")") + 2 :].split()[1])
    try:
        assert Path(f"/proc/{job_pid}/cmdline").read_bytes().split(b"\0")[1:3] == [
            b"-m",
            b"orchestrator.cihook",
        ]  # the hook's own interpreter, forked
        os.kill(job_pid, signal.SIGINT)
        wait_for(lambda: not Path(f"/proc/{job_pid}").exists() or _is_zombie(job_pid), "exit")
    finally:
        os.killpg(timeout_pid, signal.SIGKILL)  # coreutils timeout leads its own group
    log = home.read_log(sha)
    assert "Traceback (most recent call last)" in log and "KeyboardInterrupt" in log, log
    assert log.count("Traceback") == 1, log
    assert "orchestrator: CI started" not in log and f"CI for {sha} done" not in log, log
    assert not home.status_path(sha).exists()


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat[stat.rfind(")") + 2] == "Z"


def _processes_with(entry: bytes) -> list[int]:
    """Pids whose initial environment (``/proc/<pid>/environ``) holds ``entry``."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                environ = (proc / "environ").read_bytes()
            except OSError:
                continue
            if entry in environ.split(b"\0"):
                found.append(int(proc.name))
    return found
