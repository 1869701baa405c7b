"""Issue 10, pure parts: terminal sanitiser, strict YAML, ids, config values, safe reads,
lock patterns. Each test fails on 7e9918c."""

from __future__ import annotations

import fnmatch
import os
import stat
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.shared import lockspec
from orchestrator.shared import protocol as P
from orchestrator.shared.config import load_config
from orchestrator.shared.errors import ConfigError, TicketError
from orchestrator.shared.models import check_ticket_file_name, parse_ticket
from orchestrator.shared.saferead import FileRefused, read_file
from orchestrator.shared.terminal import sanitize_message, terminal_safe

PROPS = settings(max_examples=300, deadline=None, database=None)

# --- terminal ------------------------------------------------------------------


def test_escape_sequences_never_reach_the_terminal():
    title = "fix\x1b[2K\x1b[1A\x1b[32mCI pass\x1b[0m\u202e\x9b31m"
    safe = terminal_safe(title)
    assert "\x1b" not in safe and "\u202e" not in safe and "\x9b" not in safe
    assert safe.startswith("fix\\x1b[2K")
    assert terminal_safe("a\nb") == "a\\x0ab"  # one value, one line
    assert terminal_safe("a\r\nb\tc\rd", multiline=True) == "a\nb\tc\\x0dd"


def test_every_string_a_client_decodes_is_sanitised():
    view = {
        "id": "t",
        "title": "x\x1b]0;owned\x07",
        "state": "queued",
        "priority": 2,
        "effective_priority": 2.0,
    }
    line = msgspec.json.encode(
        {
            "type": "event",
            "id": 1,
            "ts": 0.0,
            "kind": "agent.output",
            "message": "m\x1b[H",
            "text": "line1\nline2\x1b[2J",
            "ticket_view": view,
        }
    )
    event = P.decode_server(line)
    assert isinstance(event, P.Event)
    assert event.message == "m\\x1b[H"
    assert event.text == "line1\nline2\\x1b[2J"
    assert event.ticket_view is not None and "\x1b" not in event.ticket_view.title
    snapshot = {
        "version": P.PROTOCOL_VERSION,
        "last_event_id": 0,
        "tickets": [view],
        "agents": [],
        "leases": [],
    }
    reply = P.decode_server(
        msgspec.json.encode({"type": "status_reply", "ok": True, "snapshot": snapshot})
    )
    assert isinstance(reply, P.StatusReply)
    assert reply.snapshot.tickets[0].title == "x\\x1b]0;owned\\x07"


@given(st.text())
@PROPS
def test_sanitised_text_has_no_controls(text):
    for multiline in (False, True):
        out = terminal_safe(text, multiline)
        assert not any(
            (ord(c) < 0x20 and c not in ("\n\t" if multiline else "")) or 0x7F <= ord(c) <= 0x9F
            for c in out
        )
    assert sanitize_message([text, {"k": text}]) == [
        terminal_safe(text),
        {"k": terminal_safe(text)},
    ]


# --- ticket files and names --------------------------------------------------------


def test_id_with_a_trailing_newline_is_refused():
    with pytest.raises(TicketError, match="id 'abc\\\\n'"):
        parse_ticket(b'title: t\nid: "abc\\n"\n', Path("x.yaml"))
    with pytest.raises(TicketError, match="depends_on"):
        parse_ticket(b'title: t\ndepends_on: ["a\\n"]\n', Path("x.yaml"))


def test_duplicate_yaml_keys_are_refused_with_the_line():
    with pytest.raises(TicketError, match="duplicate key 'title' \\(line 3\\)"):
        parse_ticket(b"title: a\npriority: 1\ntitle: b\n", Path("x.yaml"))
    with pytest.raises(TicketError, match="duplicate key"):
        parse_ticket(b"title: a\nlocks: [x]\nlocks: [y]\n", Path("x.yaml"))
    ticket = parse_ticket(b"title: a\npriority: 1\n", Path("x.yaml"))
    assert (ticket.title, ticket.priority, ticket.id) == ("a", 1, "x")


@pytest.mark.parametrize(
    "name", ["...yaml", "..yaml", ".hidden.yaml", "a/b.yaml", "x\x1b.yaml", "x.txt"]
)
def test_unreadable_ticket_file_names_are_refused(name):
    assert check_ticket_file_name(name)


def test_plain_ticket_file_names_are_accepted():
    assert check_ticket_file_name("fix-login.yaml") is None
    assert check_ticket_file_name("a.b.yml") is None


# --- config -------------------------------------------------------------------------


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text('agent:\n  command: ["true"]\n' + text)
    return path


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("rescan_interval_s: 1.0e-9\n", "rescan_interval_s"),
        ("heartbeat_interval_s: 0.01\n", "heartbeat_interval_s"),
        ('socket: "/tmp/a\\0b"\n', "socket: must not contain a NUL"),
        ("workers: 2\nworkers: 3\n", "duplicate key 'workers'"),
    ],
)
def test_config_values_that_cannot_work_are_refused(tmp_path, text, reason):
    with pytest.raises(ConfigError, match=reason):
        load_config(_config(tmp_path, text))


def test_agent_env_is_checked(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text('agent:\n  command: ["true"]\n  env: {"A": "x"}\n')
    assert load_config(path).config.agent.env == {"A": "x"}
    path.write_text('agent:\n  command: ["true"]\n  env: {"A=B": "x"}\n')
    with pytest.raises(ConfigError, match="not a valid environment variable name"):
        load_config(path)
    path.write_text('agent:\n  command: ["a\\0b"]\n')
    with pytest.raises(ConfigError, match=r"agent.command\[0\]: must not contain a NUL"):
        load_config(path)
    path.write_text('agent:\n  command: ["true"]\n  env: {"A": "x\\0"}\n')
    with pytest.raises(ConfigError, match="agent.env.A: must not contain a NUL"):
        load_config(path)


# --- safe reads ------------------------------------------------------------------


def test_safe_read_refuses_fifos_devices_big_files_and_escaping_symlinks(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    fifo = home / "fifo.yaml"
    os.mkfifo(fifo)
    with pytest.raises(FileRefused, match="FIFO"):
        read_file(fifo, 100, inside=home)
    zero = home / "zero.yaml"
    zero.symlink_to("/dev/zero")
    with pytest.raises(FileRefused, match="device"):
        read_file(zero, 100, inside=home)
    big = home / "big.yaml"
    big.write_bytes(b"x" * 101)
    with pytest.raises(FileRefused, match="101 bytes, more than the limit of 100"):
        read_file(big, 100, inside=home)
    secret = tmp_path / "secret"
    secret.write_text("password=hunter2\n")
    out = home / "out.yaml"
    out.symlink_to(secret)
    with pytest.raises(FileRefused, match="outside the project home") as refused:
        read_file(out, 100, inside=home)
    assert "hunter2" not in str(refused.value)
    inner = home / "inner.yaml"
    inner.symlink_to(big)
    assert read_file(inner, 1000, inside=home) == b"x" * 101
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)  # nothing was removed


# --- lock patterns ---------------------------------------------------------------


@pytest.mark.timeout(20)
def test_backtracking_patterns_are_matched_in_polynomial_time():
    pattern = "*a" * 14 + "*b"  # froze the loop for > 100 s on 7e9918c
    assert lockspec.paths_outside(["a" * 40], [pattern]) == ["a" * 40]
    assert not lockspec.locks_overlap(pattern, "a" * 40)
    worst = "*a" * 31 + "*b"
    assert lockspec.path_covered("a" * 254 + "b", [worst])
    assert not lockspec.path_covered("a" * 255, [worst])
    assert lockspec.locks_overlap(worst, "*b" * 31 + "*") is True  # a^31 b^31
    assert lockspec.locks_overlap(worst, "*b" * 31 + "*a") is False  # ends in a vs in b


def test_pattern_limits_are_refused_with_a_reason():
    with pytest.raises(ValueError, match="33 wildcards, more than 32"):
        lockspec.normalize_lock("*a" * 33)
    with pytest.raises(ValueError, match="more than 1024"):
        lockspec.normalize_lock("a" * 1025)
    with pytest.raises(ValueError, match="more than 64 segments"):
        lockspec.normalize_lock("/".join(["a"] * 65))
    with pytest.raises(TicketError, match="locks: lock pattern has 33 wildcards"):
        parse_ticket(b'title: t\nlocks: ["' + b"*a" * 33 + b'"]\n', Path("x.yaml"))


SEGMENT = st.text(alphabet="ab*?[]!-", min_size=1, max_size=8)
NAME = st.text(alphabet="ab-[]!*?", min_size=1, max_size=8)


@given(SEGMENT, NAME)
@PROPS
def test_segment_matching_agrees_with_fnmatch(pattern, name):
    assert lockspec.path_covered(name, [pattern]) == fnmatch.fnmatchcase(name, pattern)


@given(SEGMENT, SEGMENT, NAME)
@PROPS
def test_overlap_is_conservative(a, b, name):
    """Two patterns that both match a name always overlap."""
    if fnmatch.fnmatchcase(name, a) and fnmatch.fnmatchcase(name, b):
        assert lockspec.locks_overlap(a, b)


# --- restarts: a person's decisions survive ---------------------------------------


def _restart(sim):
    """A new Core restored from the persisted records (msgspec round trip), as at start."""
    from orchestrator.daemon import core as C
    from tests.unit.coresim import Sim

    raw = [msgspec.json.encode(r) for r in sim.core.tickets.values()]
    records = [msgspec.json.decode(r, type=C.TicketRecord) for r in raw]
    new = Sim(C.Core(sim.core.config, {w: f"/wt/{w}" for w in sim.core.workers}), now=sim.now)
    out = new.core.restore(records, new.now)
    new.effects += out.effects
    new.events += out.events
    return new


def test_priority_override_survives_restart_and_unchanged_files_are_not_changes():
    from tests.unit.coresim import Sim, ticket

    sim = Sim.new(workers=1)
    sim.add(ticket("busy"))
    original = ticket("t", priority=3)
    sim.add(original)
    sim.command("priority", "t", priority=0)
    assert sim.rec("t").ticket.priority == 0
    sim = _restart(sim)
    sim.events.clear()
    sim.add(original)  # intake reads every file again at start
    assert sim.rec("t").ticket.priority == 0
    assert not [e for e in sim.events if "ticket file changed" in e.message]
    edited = ticket("t", priority=3, locks=["src/"])
    sim.add(edited)  # a real edit applies, the person's priority stays
    assert sim.rec("t").ticket.locks == ["src/"]
    assert sim.rec("t").ticket.priority == 0


def test_continue_on_a_failed_ticket_is_never_attempt_3_of_2():
    from orchestrator.daemon import core as C
    from tests.unit.coresim import Sim, ticket

    sim = Sim.new(workers=1)
    t = ticket("t", max_attempts=2)
    sim.add(t)
    for _ in range(2):
        (eff,) = sim.take(C.StartAgent)
        sim.start(eff)
        sim.exit(eff, code=1)
    assert sim.state("t") == "failed"
    sim.command("continue", "t")
    sim = _restart(sim)
    sim.add(t)  # the unchanged file, read again at start
    sim.add(ticket("t", max_attempts=2, locks=["src/"]))  # and a real edit
    (eff,) = sim.take(C.StartAgent)
    assert (eff.attempt, sim.rec("t").max_attempts) == (3, 3)
    sim.start(eff)
    sim.exit(eff, code=1)
    assert sim.state("t") == "failed"
    assert "(attempt 3 of 3)" in sim.rec("t").reason


def test_agent_logs_keep_head_and_tail_within_a_bound(tmp_path):
    from orchestrator.daemon.workers import CappedLog

    path = tmp_path / "agent.log"
    with open(path, "a+b") as out:
        log = CappedLog(out, head=100, tail=200)
        for i in range(10_000):
            log.write(f"line {i:05d}\n".encode())
            assert log.size <= 100 + 2 * 200 + 80
    data = path.read_bytes()
    assert data.startswith(b"line 00000\nline 00001\n")
    assert data.endswith(b"line 09999\n")
    assert b"bytes of agent output cut here" in data
    assert len(data) == log.size <= 100 + 2 * 200 + 80
    assert data.count(b"cut here") == 1
