"""Hypothesis fuzzing of what comes from outside: ticket YAML (through intake and the
core), lock patterns and config.yaml. A small profile runs in the normal suite; set
``ORCH_FUZZ_EXAMPLES`` (e.g. 10000) for a long run; docs/security.md records one.

Each target checks three things: no exception other than the documented one-line
error (no crash), every call returns (pytest-timeout catches a hang), and every
ticket file ends up either accepted or moved aside with a reason (no file lost).
"""

from __future__ import annotations

import fnmatch
import os
import tempfile
import time
from pathlib import Path

import msgspec
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.daemon import core as C
from orchestrator.daemon.backlog import Backlog
from orchestrator.shared import lockspec
from orchestrator.shared.config import load_config
from orchestrator.shared.errors import ConfigError, TicketError
from orchestrator.shared.models import parse_ticket
from tests.unit.coresim import make_config

EXAMPLES = int(os.environ.get("ORCH_FUZZ_EXAMPLES", "60"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# --- values a person (or an attacker) might write ----------------------------------

SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=40),
    st.sampled_from(["", "..", "/etc/passwd", "*a*a*a*a*b", "\x1b[2J", "a\nb", "Ticket: x"]),
)
KEYS = st.one_of(
    st.sampled_from(
        ["title", "id", "priority", "description", "locks", "depends_on", "max_attempts"]
    ),
    st.text(max_size=12),
)
VALUE = st.recursive(
    SCALAR,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=20,
)
DOCUMENT = st.dictionaries(KEYS, VALUE, max_size=8)


@st.composite
def ticket_bytes(draw: st.DrawFn) -> bytes:
    """Raw bytes, YAML of random documents, near-valid tickets, duplicate keys, aliases."""
    kind = draw(st.integers(0, 4))
    if kind == 0:
        return draw(st.binary(max_size=300))
    if kind == 1:
        return draw(st.text(max_size=300)).encode("utf-8", "surrogatepass")
    doc = draw(DOCUMENT)
    if kind >= 3:
        doc.setdefault("title", draw(st.text(max_size=30)))
    try:
        text = yaml.safe_dump(doc, allow_unicode=True)
    except (yaml.YAMLError, ValueError):
        text = "title: x\n"
    if kind == 4:  # a duplicated line, an alias, a truncation
        lines = text.splitlines(keepends=True)
        if lines:
            i = draw(st.integers(0, len(lines) - 1))
            lines.insert(i, lines[i])
        text = "".join(lines) + draw(st.sampled_from(["", "a: &x [1]\nb: *x\n", "title"]))
    return text.encode("utf-8", "surrogatepass")


_HOME = Path(tempfile.mkdtemp(prefix="orch-fuzz-"))
(_HOME / "backlog").mkdir()
#: One intake for every example (each Backlog owns an inotify watcher; the kernel caps them).
_INTAKE = Backlog(_HOME / "backlog", lambda inputs: None, rescan_interval_s=1.0)


@given(data=ticket_bytes())
@FUZZ
def test_fuzz_ticket_files_through_intake_and_core(data):
    """Each file is either a queued ticket or moved aside with a one-line reason."""
    backlog = _HOME / "backlog"
    path = backlog / "fuzz.yaml"
    path.write_bytes(data)
    os.utime(path, (time.time() - 10, time.time() - 10))  # settled: no "half-written" retry
    try:
        parse_ticket(data, path)
    except TicketError as exc:
        assert "\n" not in str(exc).strip(), "a reason is one line"
    _INTAKE.known.clear()
    inputs = _INTAKE._read_sync([str(path)], full=False)
    assert len(inputs) == 1
    core = C.Core(make_config(), {"agent-1": "/wt/agent-1"})
    out = core.handle(inputs[0])
    accepted = any(r.file == str(path) for r in core.tickets.values())
    moved = [e for e in out.effects if isinstance(e, C.MoveFile) and e.path == str(path)]
    assert accepted != bool(moved), "the file is either accepted or moved aside, never lost"
    if moved:
        assert moved[0].error.strip() and "\n" not in moved[0].error.strip()
    path.unlink()


PATTERN = st.text(alphabet="ab*?[]!-/.", max_size=40) | st.text(max_size=60)
PATH = st.text(alphabet="ab*?[]!-/.", min_size=1, max_size=60)


@given(a=PATTERN, b=PATTERN, path=PATH)
@FUZZ
def test_fuzz_lock_patterns(a, b, path):
    """Valid or a ValueError with a reason; matching and overlap always return, and agree."""
    specs = []
    for spec in (a, b):
        try:
            specs.append(lockspec.normalize_lock(spec))
        except ValueError as exc:
            assert str(exc)
    if len(specs) == 2:
        assert lockspec.locks_overlap(*specs) == lockspec.locks_overlap(*reversed(specs))
    covered = [lockspec.path_covered(path, [spec]) for spec in specs]
    for spec, hit in zip(specs, covered, strict=True):
        single = "/" not in spec and "/" not in path and spec not in (".", "**")
        if single and path not in (".", ".."):
            assert hit == fnmatch.fnmatchcase(path, spec)
    if len(specs) == 2 and all(covered):
        assert lockspec.locks_overlap(specs[0], specs[1]), "overlap is conservative"


@st.composite
def config_bytes(draw: st.DrawFn) -> bytes:
    base: dict[str, object] = {"agent": {"command": ["agent"]}}
    keys = [
        "workers",
        "approval",
        "max_attempts",
        "lock_policy",
        "heartbeat_interval_s",
        "lease_ttl_s",
        "stale_after_s",
        "rescan_interval_s",
        "socket",
        "ci",
        "agent",
    ]
    for key in draw(st.lists(st.sampled_from(keys), max_size=4)):
        base[key] = draw(VALUE)
    if draw(st.booleans()):
        base["agent"] = {
            "command": draw(st.lists(st.text(max_size=10), max_size=3)),
            "env": draw(st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=3)),
        }
    try:
        text = yaml.safe_dump(base, allow_unicode=True)
    except (yaml.YAMLError, ValueError):
        text = "agent: {command: [x]}\n"
    if draw(st.booleans()):
        text += draw(st.text(max_size=40))
    return text.encode("utf-8", "surrogatepass")


@given(data=config_bytes())
@FUZZ
def test_fuzz_config(tmp_path, data):
    """load_config returns a usable home or raises ConfigError (one line); never anything else."""
    path = tmp_path / "config.yaml"
    path.write_bytes(data)
    try:
        home = load_config(path)
    except ConfigError as exc:
        assert "\n" not in str(exc).strip()
        return
    cfg = home.config
    assert cfg.rescan_interval_s >= 0.1 and cfg.heartbeat_interval_s >= 0.1
    assert all("\0" not in a for a in cfg.agent.command)
    assert all(k and "=" not in k and "\0" not in k for k in cfg.agent.env)
    assert "\0" not in (cfg.socket or "")
    msgspec.json.encode(cfg)
