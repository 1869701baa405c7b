"""Issue 10 through the external interface only: ticket files in the backlog, the CLI,
the socket protocol, signals. These are the black-box checks of the classes whose other
tests call internal APIs (terminal safety, lock patterns, input edges, restarts, the
socket's peer check): the same file, with its two imports changed to the old layout,
fails on 7e9918c (docs/security.md, "Regression evidence against 7e9918c")."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from orchestrator.shared import protocol as P

ESC = "\x1b"


def _wait_file(path: Path, timeout_s: float = 30.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            return path.read_text()
        time.sleep(0.05)
    raise AssertionError(f"{path} never appeared")


def test_escape_sequences_in_ticket_text_never_reach_the_terminal(make_project):
    """A title that would erase its row and draw a fake "CI pass" in green, and a YAML
    key with an escape: `status`, `events` and `report` print them escaped."""
    project = make_project(workers=1)
    path = project.home.backlog / "esc.yaml"
    path.write_text(
        json.dumps(
            {"title": f"fix{ESC}[2K{ESC}[1A{ESC}[32mCI pass{ESC}[0m", "description": "sleep 60"}
        )
    )
    (project.home.backlog / "key.yaml").write_text(json.dumps({"title": "k", f"x{ESC}[31m": 1}))
    project.wait_state("esc", "queued", "running")
    time.sleep(2)  # the second file is read (and refused) too
    printed = ""
    for args in (("status",), ("events", "--since", "0"), ("report",)):
        result = project.cli(*args)
        assert result.returncode == 0, (args, result.stderr)
        out = result.stdout + result.stderr
        assert "esc" in out, (args, out)
        assert ESC not in out, (args, out)
        printed += out
    assert "fix\\x1b[2K" in printed  # the title is shown, escaped


def test_a_backtracking_lock_pattern_does_not_freeze_the_daemon(make_project):
    """``*a*a...*b`` against a 40-character file name the agent wrote: matching it is
    linear here; a backtracking matcher froze the event loop for minutes."""
    project = make_project(workers=1)
    project.ticket("glob", description="write " + "a" * 40 + " x", locks=["*a" * 14 + "*b"])
    project.wait_state("glob", "running", "ci_running", "awaiting_approval", "failed")
    deadline = time.monotonic() + 60
    while True:  # every status answer comes quickly while the ticket settles
        started = time.monotonic()
        states = project.states()
        assert time.monotonic() - started < 10, "the daemon took over 10 s to answer"
        if states["glob"] not in ("queued", "running"):
            break
        assert time.monotonic() < deadline, states
        time.sleep(0.2)
    assert project.proc is not None and project.proc.poll() is None


def test_ids_with_a_newline_and_duplicate_keys_are_refused_with_a_reason(make_project):
    project = make_project(workers=1)
    backlog = project.home.backlog
    (backlog / "nl.yaml").write_text('title: t\nid: "abc\\n"\n')
    (backlog / "dup.yaml").write_text("title: a\npriority: 1\ntitle: b\n")
    for name, reason in (("nl.yaml", "id"), ("dup.yaml", "duplicate key 'title'")):
        error = _wait_file(project.home.rejected_dir / f"{name}.error")
        assert reason in error and len(error.strip().splitlines()) == 1, (name, error)
    assert project.states() == {}


def test_a_priority_set_by_a_person_survives_restarts(make_project):
    """A graceful restart and a kill -9: the person's priority stays, and the unchanged
    file is not reported as changed."""
    project = make_project(workers=1)
    project.ticket("busy", description="sleep 120")
    project.wait_state("busy", "running")
    project.ticket("t", priority=3, description="sleep 120")
    project.wait_state("t", "queued")
    assert project.send(P.SetPriority(ticket="t", priority=0)).ok
    for restart in ("graceful", "kill -9"):
        if restart == "graceful":
            project.stop()
        else:
            project.kill9()
        project.start()
        snap = project.wait_state("t", "queued", "running")
        (ticket,) = [t for t in snap.tickets if t.id == "t"]
        assert ticket.priority == 0, restart
    events = project.cli("events", "--since", "0")
    assert "t: ticket file changed" not in events.stdout


def test_a_process_of_another_uid_is_refused_even_when_the_socket_is_open(make_project):
    """The file mode is one check; the peer's uid (SO_PEERCRED) is the other. Run as
    root (as .ci/run is): a client as uid 65534 reaches a socket opened up to everyone."""
    project = make_project(workers=1)
    sock_path = project.home.socket_path
    log = project.root / "daemon.log"
    deadline = time.monotonic() + 30
    while "ready:" not in log.read_text():  # its last look at the socket path is done:
        assert time.monotonic() < deadline, log.read_text()  # that look re-closes the dir
        time.sleep(0.05)
    for opened in (sock_path, *sock_path.parents[:-2]):  # up to the test's runtime dir
        os.chmod(opened, 0o777)
    assert os.getuid() == 0, "this test needs root to run a client as another uid"
    read_end, write_end = os.pipe()
    pid = os.fork()  # a client as uid 65534 (no new interpreter: it could not read ours)
    if pid == 0:
        code = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(20)
                sock.connect(str(sock_path))
                data = b""
                try:  # the first line: a hello for a client served, else the refusal
                    while b"\n" not in data:
                        chunk = sock.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                except (BrokenPipeError, ConnectionResetError):
                    pass
            os.write(write_end, data)
            code = 0
        except OSError as exc:
            os.write(write_end, f"client error: {exc!r}".encode())
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        out = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, out
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert lines, out
    assert lines[0]["type"] == "reply" and lines[0]["ok"] is False, lines
    assert "not the daemon's uid" in lines[0]["message"]
    assert project.send(P.Status()).ok  # the daemon's own user is still served
