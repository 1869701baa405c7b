"""Hypothesis fuzzing of socket lines against a real daemon (issue 10).

One daemon per run; every example is one line on one long-lived connection, and must
get exactly one reply (a blank line none) (or, for a line over the limit, a reply and a closed
connection). Afterwards the daemon must still be alive and serve a new client, and
its log must hold no traceback. ``ORCH_FUZZ_EXAMPLES`` sets the example count (the
normal suite runs a small profile; docs/security.md records a long run).
"""

from __future__ import annotations

import json
import os
import socket

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.shared import protocol as P

EXAMPLES = int(os.environ.get("ORCH_FUZZ_EXAMPLES", "60"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

TYPES = [
    "hello",
    "status",
    "approve",
    "stop",
    "continue",
    "reject",
    "priority",
    "enqueue",
    "heartbeat",
    "ci_notify",
    "launch",
]
FIELD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**66), 2**66),
    st.floats(allow_nan=False),
    st.text(max_size=30),
    st.sampled_from(["..", "../x", "a" * 40, "\x1b[2J", "t\n", ".hidden", "title: x\n"]),
    st.lists(st.text(max_size=5), max_size=3),
)


@st.composite
def lines(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 3))
    if kind == 0:  # anything at all (no newline inside: one line)
        return draw(st.binary(max_size=200)).replace(b"\n", b" ") + b"\n"
    if kind == 1:
        return draw(st.text(max_size=200)).replace("\n", " ").encode("utf-8", "replace") + b"\n"
    doc: dict[str, object] = {"type": draw(st.sampled_from(TYPES))}
    for key in draw(
        st.lists(
            st.sampled_from(
                ["ticket", "priority", "feedback", "name", "yaml", "sha", "note", "req", "version"]
            ),
            max_size=4,
        )
    ):
        doc[key] = draw(FIELD_VALUES)
    if kind == 3:
        doc["req"] = draw(st.text(max_size=8))
    return msgspec.json.encode(doc) + b"\n"


def _reply(reader) -> dict:
    """The next reply line (events and snapshots of a subscribed client are skipped)."""
    while True:
        try:
            line = reader.readline()
        except ConnectionResetError:  # closed by design with our next line unread
            line = b""
        assert line, "the daemon closed the connection without a reply"
        message = json.loads(line)
        if message.get("type") in ("reply", "status_reply"):
            return message


def test_fuzz_socket_lines(make_project):
    project = make_project(workers=1, agent=["false"], extra="max_attempts: 1\n")
    path = str(project.home.socket_path)
    conn: dict[str, object] = {}

    def connect() -> None:
        if conn:
            conn["reader"].close()  # type: ignore[attr-defined]
            conn["sock"].close()  # type: ignore[attr-defined]
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(30)  # a hang fails the example
        sock.connect(path)
        reader = sock.makefile("rb")
        assert json.loads(reader.readline())["type"] == "hello"
        conn.update(sock=sock, reader=reader)

    connect()
    counts = {"examples": 0, "closed": 0}

    @given(line=lines())
    @FUZZ
    def one(line: bytes) -> None:
        try:
            conn["sock"].sendall(line)  # type: ignore[attr-defined]
        except (BrokenPipeError, ConnectionResetError):
            # The previous line ended the connection by design (a hello with another
            # protocol version, a line over the limit): a new client sends it again.
            counts["closed"] += 1
            connect()
            conn["sock"].sendall(line)  # type: ignore[attr-defined]
        if not line.strip():
            return  # blank lines are ignored by design (docs/protocol.md): no reply
        try:
            reply = _reply(conn["reader"])
        except AssertionError:
            counts["closed"] += 1  # refused protocol version: connection ends, by design
            connect()
            return
        assert isinstance(reply.get("ok"), bool)
        assert "\x1b" not in reply.get("message", "")
        counts["examples"] += 1

    one()
    conn["reader"].close()  # type: ignore[attr-defined]
    conn["sock"].close()  # type: ignore[attr-defined]
    print(f"socket fuzz: {counts['examples']} replies checked, {counts['closed']} by-design closes")
    assert counts["examples"] > 0
    assert project.proc is not None and project.proc.poll() is None, "the daemon died"
    assert project.send(P.Status()).ok
    log = (project.root / "daemon.log").read_text()
    assert "Traceback" not in log and "internal error" not in log, log[-3000:]
