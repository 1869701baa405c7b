"""The cheap CI path: ``python -m orchestrator.ci job|run`` and its stdlib ``ci_notify``.

Every CI run goes through ``ci job`` (in the hook's interpreter) and ``ci run``
(in the job, or under a customised ci.sh), so neither may load the command line,
the protocol, the ticket models or PyYAML (docs/performance.md). These tests run
the real entry points in real subprocesses, against a real bare repository,
ci.sh, Unix socket and daemon, and look at what they imported (``sys.modules``
after the run).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator import ci
from orchestrator.shared import protocol as P
from orchestrator.shared.cistatus import CIVerdict, make_status, write_status
from orchestrator.shared.errors import DaemonNotRunning, ProtocolError

REPO_ROOT = Path(__file__).resolve().parents[2]

#: Never loaded by either entry point: the CLI and everything heavy behind it.
HEAVY = {
    "argparse",
    "yaml",
    "orchestrator.cli",
    "orchestrator.shared.models",
    "orchestrator.shared.protocol",
    "orchestrator.shared.client",
    "orchestrator.shared.yamlsafe",
}
#: ...and not by ``ci job`` when all goes well (ci.sh wrote the status, no ci.setup).
NOT_IN_JOB = {"msgspec", "orchestrator.shared.cistatus", "orchestrator.cirun"}

#: Runs ``python -m orchestrator.ci ARGS`` in this process and writes what was imported.
RUN_ENTRY = """\
import json, runpy, sys
out, args = sys.argv[1], sys.argv[2:]
sys.argv = ["orchestrator.ci", *args]
code = 0
try:
    runpy.run_module("orchestrator.ci", run_name="__main__", alter_sys=True)
except SystemExit as exc:
    code = exc.code
with open(out, "w") as f:
    json.dump({"exit": code, "modules": sorted(sys.modules)}, f)
"""


def run_entry(tmp_path: Path, *args: str, env: dict[str, str], cwd: Path) -> dict:
    out = tmp_path / "modules.json"
    proc = subprocess.run(
        [sys.executable, "-c", RUN_ENTRY, str(out), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and out.exists(), proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    result["output"] = proc.stdout + proc.stderr
    return result


def git(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
def git_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for key in [k for k in os.environ if k.startswith("GIT_")]:
        monkeypatch.delenv(key)
    values = {
        "HOME": str(tmp_path),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return dict(os.environ)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # Unix socket paths must be < 108 bytes; tmp_path can be longer than that.
    d = tempfile.mkdtemp(prefix="orch-", dir="/tmp")
    try:
        yield Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


class LineServer:
    """A real Unix socket that says ``hello`` (``version``), records each client's first
    line and answers with ``reply`` (None: answer nothing, keep the connection open)."""

    def __init__(self, path: Path, version: int, reply: bytes | None) -> None:
        self.path = path
        self.lines: list[bytes] = []
        self._version, self._reply = version, reply
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(path))
        self._sock.listen(4)
        self._open: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self._open.append(conn)
            conn.sendall(P.encode(P.Hello(version=self._version, home="/h", pid=1)))
            with conn.makefile("rb") as reader:
                line = reader.readline()
            if line:
                self.lines.append(line)
                if self._reply is not None:
                    conn.sendall(self._reply)

    def close(self) -> None:
        self._sock.close()
        for conn in self._open:
            conn.close()
        self._thread.join(5)


@pytest.fixture
def servers(short_dir: Path) -> Iterator[list[LineServer]]:
    made: list[LineServer] = []
    yield made
    for server in made:
        server.close()


def test_the_entry_points_load_neither_the_cli_nor_the_models(
    tmp_path: Path, git_env: dict[str, str]
) -> None:
    # `ci run` as ci.sh runs it: a passing command, the status written to a file.
    status = tmp_path / "status" / "s.json"
    env = {**git_env, "CI_COMMAND": "echo tests-ran", "CI_SHA": "a" * 40}
    env["CI_STATUS_FILE"] = str(status)
    result = run_entry(tmp_path, "run", env=env, cwd=tmp_path)
    assert result["exit"] == 0, result["output"]
    assert "tests-ran" in result["output"]
    assert json.loads(status.read_text())["status"] == "pass"
    loaded = set(result["modules"])
    assert "orchestrator.shared.cistatus" in loaded  # it did write the document
    assert loaded & HEAVY == set()

    # With the ticket's acceptance checks the models are loaded, still without PyYAML.
    checks = tmp_path / "acceptance.json"
    checks.write_text(json.dumps([{"file_exists": "present.txt"}, {"run": ["false"]}]))
    (tmp_path / "present.txt").write_text("")
    result = run_entry(
        tmp_path, "run", env={**env, "CI_ACCEPTANCE_FILE": str(checks)}, cwd=tmp_path
    )
    assert result["exit"] == 1, result["output"]
    doc = json.loads(status.read_text())
    assert doc["status"] == "fail"
    assert [(c["name"], c["status"]) for c in doc["checks"]] == [
        ("file_exists: present.txt", "pass"),
        ("run: false", "fail"),
    ]
    loaded = set(result["modules"])
    assert "orchestrator.shared.models" in loaded
    assert loaded & (HEAVY - {"orchestrator.shared.models"}) == set()

    # Importing the module alone loads no msgspec either.
    code = "import json, sys, orchestrator.ci; print(json.dumps(sorted(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    modules = set(json.loads(proc.stdout))
    assert "orchestrator.ci" in modules
    assert modules & (HEAVY | NOT_IN_JOB) == set()


def make_bare(tmp_path: Path) -> tuple[Path, str]:
    """A project home's repo.git with one commit (``f.txt``) and the shipped ci.sh next to it."""
    src = tmp_path / "src"
    src.mkdir()
    git("init", "-q", "-b", "main", cwd=src)
    (src / "f.txt").write_text("x\n")
    git("add", ".", cwd=src)
    git("commit", "-q", "-m", "init", cwd=src)
    bare = tmp_path / "home" / "repo.git"
    git("clone", "-q", "--bare", str(src), str(bare))
    shutil.copyfile(REPO_ROOT / "ci.sh", bare.parent / "ci.sh")
    (bare.parent / "ci.sh").chmod(0o755)
    return bare, git("rev-parse", "HEAD", cwd=src)


def test_ci_job_succeeds_on_the_standard_library_alone(
    tmp_path: Path, git_env: dict[str, str], short_dir: Path, servers: list[LineServer]
) -> None:
    bare, sha = make_bare(tmp_path)
    reply = P.encode(P.Reply(ok=True, message="applied", req="1"))
    server = LineServer(short_dir / "d.sock", P.PROTOCOL_VERSION, reply)
    servers.append(server)
    for key, value in (
        ("orchestrator.ciCommand", "test -f f.txt && echo checkout-ok"),
        ("orchestrator.ciTimeoutS", "60"),
        ("orchestrator.socket", str(server.path)),
        ("orchestrator.ciSetup", "{}"),  # what the daemon writes without ci.setup
    ):
        git("--git-dir", str(bare), "config", key, value)
    # A customised ci.sh (one comment line more than the template) runs as a script
    # (its own `ci run` Python): the job itself loads nothing but the standard library.
    ci_sh = bare.parent / "ci.sh"
    ci_sh.write_text((REPO_ROOT / "ci.sh").read_text() + "# our own ci.sh\n")
    assert not ci.is_shipped_ci_sh(ci_sh)

    result = run_entry(
        tmp_path, "job", str(bare), sha, "refs/heads/agent-1/t1", env=git_env, cwd=tmp_path
    )
    assert result["exit"] == 0
    log = result["output"]
    assert "checkout-ok" in log and "ci.sh exited with 0" in log, log
    assert "shipped template" not in log
    assert f"notified daemon at {server.path}: ok: applied" in log
    assert json.loads((bare / "ci-status" / f"{sha}.json").read_text())["status"] == "pass"
    assert P.decode_command(server.lines[0]) == P.CINotify(sha=sha, req="1")
    assert set(result["modules"]) & (HEAVY | NOT_IN_JOB) == set()

    # The shipped template: the job runs `ci run` itself, loading what `ci run` loads
    # (cirun, msgspec, cistatus) and still nothing heavy.
    shutil.copyfile(REPO_ROOT / "ci.sh", ci_sh)
    assert ci.is_shipped_ci_sh(ci_sh)
    result = run_entry(
        tmp_path, "job", str(bare), sha, "refs/heads/agent-1/t1", env=git_env, cwd=tmp_path
    )
    log = result["output"]
    assert f"ci.sh ({ci_sh}) is the shipped template" in log, log
    assert "checkout-ok" in log and "ci.sh exited with 0" in log, log
    assert json.loads((bare / "ci-status" / f"{sha}.json").read_text())["status"] == "pass"
    assert P.decode_command(server.lines[1]) == P.CINotify(sha=sha, req="1")
    assert NOT_IN_JOB <= set(result["modules"])
    assert set(result["modules"]) & HEAVY == set()

    # Without a CI command the job writes an `error` status itself (cistatus and
    # msgspec now), still without the heavy modules.
    git("--git-dir", str(bare), "config", "--unset", "orchestrator.ciCommand")
    result = run_entry(
        tmp_path, "job", str(bare), sha, "refs/heads/agent-1/t1", env=git_env, cwd=tmp_path
    )
    doc = json.loads((bare / "ci-status" / f"{sha}.json").read_text())
    assert (doc["status"], doc["exit_code"]) == ("error", 2)
    assert "no CI command configured" in doc["log_tail"]
    assert "orchestrator.shared.cistatus" in result["modules"]
    assert set(result["modules"]) & HEAVY == set()


def test_only_the_exact_template_counts_as_shipped(tmp_path: Path) -> None:
    template = (REPO_ROOT / "ci.sh").read_bytes()
    script = tmp_path / "ci.sh"
    script.write_bytes(template)
    assert ci.is_shipped_ci_sh(script)
    script.chmod(0o644)  # the mode does not matter: run with bash, it does the same
    assert ci.is_shipped_ci_sh(script)
    for variant in (template + b"\n", template.replace(b"exit 2", b"exit 3"), template[:-1]):
        script.write_bytes(variant)
        assert not ci.is_shipped_ci_sh(script)
    # Unreadable or missing: the job goes the ordinary way (and reports it there).
    assert not ci.is_shipped_ci_sh(tmp_path)
    assert not ci.is_shipped_ci_sh(tmp_path / "missing.sh")


@pytest.mark.parametrize(
    "entry",
    [["orchestrator.ci"], ["orchestrator", "ci"]],
    ids=["python -m orchestrator.ci", "orchestrator ci (the CLI, an old ci.sh copy)"],
)
def test_both_entries_run_the_same_job_and_run(
    tmp_path: Path, git_env: dict[str, str], entry: list[str]
) -> None:
    # A home's ci.sh copied before this change still execs `-m orchestrator ci run`.
    bare, sha = make_bare(tmp_path)
    old_ci_sh = bare.parent / "old-ci.sh"
    old_ci_sh.write_text('#!/usr/bin/env bash\nexec "$ORCH_PYTHON" -m orchestrator ci run\n')
    ci_sh = old_ci_sh if entry[0] == "orchestrator" else bare.parent / "ci.sh"
    git("--git-dir", str(bare), "config", "orchestrator.ciScript", str(ci_sh))
    git("--git-dir", str(bare), "config", "orchestrator.ciCommand", "cat f.txt; exit 3")
    ref = "refs/orchestrator/queue/t1"
    job = subprocess.run(
        [sys.executable, "-m", *entry, "job", str(bare), sha, ref],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert job.returncode == 0, job.stderr
    assert f"CI for {sha} done" in job.stdout
    assert "ci.sh exited with 1" in job.stdout
    doc = json.loads((bare / "ci-status" / f"{sha}.json").read_text())
    assert (doc["sha"], doc["ref"], doc["status"], doc["exit_code"]) == (sha, ref, "fail", 3)
    assert doc["log_tail"] == "x\n"

    run = subprocess.run(
        [sys.executable, "-m", *entry, "run"],
        cwd=tmp_path,
        env={**git_env, "CI_COMMAND": "echo fine", "CI_SHA": sha},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.splitlines()[-1])["status"] == "pass"


def test_a_wrong_call_gets_the_usage(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.ci", "job", "only-one"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == f"orchestrator.ci: {ci.USAGE}\n"


def test_read_config_takes_every_key_in_one_call(tmp_path: Path, git_env: dict[str, str]) -> None:
    bare = tmp_path / "repo.git"
    git("init", "-q", "--bare", str(bare))
    assert ci.read_config(bare) == {}
    for key, value in (
        ("orchestrator.ciCommand", "first"),
        ("orchestrator.ciTimeoutS", "30"),
        ("other.key", "not ours"),
    ):
        git("--git-dir", str(bare), "config", key, value)
    git("--git-dir", str(bare), "config", "--add", "orchestrator.ciCommand", "make test\n  && x")
    assert ci.read_config(bare) == {
        "orchestrator.cicommand": "make test\n  && x",  # the last value, as `--get` gives
        "orchestrator.citimeouts": "30",
    }
    assert ci.read_config(tmp_path / "not-a-repo") == {}


def test_the_notify_line_is_the_daemons_ci_notify(
    short_dir: Path, servers: list[LineServer]
) -> None:
    assert ci.PROTOCOL_VERSION == P.PROTOCOL_VERSION  # the copy cannot drift
    reply = P.encode(P.Reply(ok=False, message="no status\x1b[31m here", req="1"))
    server = LineServer(short_dir / "d.sock", P.PROTOCOL_VERSION, reply)
    servers.append(server)
    sha = "c" * 40
    assert ci.notify(server.path, sha) == "refused: no status\\x1b[31m here"
    assert len(server.lines) == 1 and server.lines[0].endswith(b"\n")
    assert P.decode_command(server.lines[0]) == P.CINotify(sha=sha, req="1")


def test_notify_refuses_another_protocol_version(
    short_dir: Path, servers: list[LineServer]
) -> None:
    reply = P.encode(P.Reply(ok=True, message="applied", req="1"))
    server = LineServer(short_dir / "d.sock", P.PROTOCOL_VERSION + 1, reply)
    servers.append(server)
    with pytest.raises(ProtocolError, match="protocol version"):
        ci.notify(server.path, "c" * 40)
    time.sleep(0.2)
    assert server.lines == []  # nothing was sent to a daemon of another version


def test_notify_gives_up_after_its_timeout(short_dir: Path, servers: list[LineServer]) -> None:
    server = LineServer(short_dir / "d.sock", P.PROTOCOL_VERSION, None)
    servers.append(server)
    started = time.monotonic()
    with pytest.raises(ProtocolError, match="did not answer within"):
        ci.notify(server.path, "c" * 40, timeout_s=0.5)
    assert time.monotonic() - started < 10
    with pytest.raises(DaemonNotRunning, match="no daemon answers on"):
        ci.notify(short_dir / "gone.sock", "c" * 40)


def test_notify_gets_the_real_daemons_reply(make_project) -> None:
    project = make_project(workers=1)
    socket_path = project.home.socket_path
    assert ci.notify(socket_path, "b" * 40) == f"refused: no status for {'b' * 40}"
    assert ci.notify(socket_path, "../evil").startswith("refused: ci_notify: '../evil' is not")
    sha = "d" * 40
    now = time.time()
    write_status(
        project.home.ci_status_dir / f"{sha}.json",
        make_status(
            sha=sha,
            ref="refs/heads/agent-1/x",
            status=CIVerdict.PASS,
            exit_code=0,
            started_s=now - 1,
            finished_s=now,
            log=b"ok\n",
        ),
    )
    assert ci.notify(socket_path, sha) == "ok: applied"
    assert project.send(P.Status()).ok  # the daemon is still fine
