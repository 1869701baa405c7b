"""The CI status document: ``repo.git/ci-status/<sha>.json`` (docs/ci.md).

One struct, :class:`CIStatus`, is the single definition of the document: the CI
runner (``orchestrator ci run``, called by ci.sh, and ``ci job``, started by
hooks/post-receive) encodes it, the daemon (``daemon/ci.py``) decodes it, and
``orchestrator schema ci-status`` prints its JSON Schema (generated with
``msgspec.json.schema``). :class:`CISetup` is the CI job's ``ci.setup`` settings
(git config ``orchestrator.ciSetup``).

The CI runner imports this module on every run, so it imports only msgspec and
shared/fsutil.py (never shared/models.py, which loads PyYAML): :class:`CIVerdict`
is defined here and re-exported by :mod:`orchestrator.shared.models`.
"""

from __future__ import annotations

import datetime
import enum
from pathlib import Path
from typing import Annotated, Any

import msgspec

from orchestrator.shared.fsutil import atomic_write

#: ``log_tail`` keeps at most this many lines...
LOG_TAIL_LINES = 100
#: ...and at most this many characters (the end of the log).
LOG_TAIL_CHARS = 8000


class CIVerdict(enum.StrEnum):
    """The result CI reports for a commit (``status`` of a ci-status file, docs/ci.md)."""

    PASS = "pass"  # noqa: S105 (a CI verdict, not a password)
    FAIL = "fail"
    ERROR = "error"


class CheckResult(msgspec.Struct, kw_only=True, frozen=True):
    """The result of one acceptance check of the ticket (docs/tickets.md#acceptance-checks)."""

    name: Annotated[str, msgspec.Meta(description="the check's name or description")]
    status: Annotated[
        CIVerdict,
        msgspec.Meta(description="pass, fail, or error (could not run, timed out)"),
    ]
    output_tail: Annotated[
        str, msgspec.Meta(description="the end of its output or why it failed (2000 characters)")
    ] = ""


class CIStatus(msgspec.Struct, kw_only=True, frozen=True):
    """The result of one CI run for one commit."""

    sha: Annotated[str, msgspec.Meta(description="the commit tested")]
    ref: Annotated[
        str, msgspec.Meta(description="the ref pushed, e.g. refs/heads/agent-1/t1 ('' if unknown)")
    ]
    status: Annotated[CIVerdict, msgspec.Meta(description="pass, fail or error")]
    exit_code: Annotated[int, msgspec.Meta(description="exit code of the test command")]
    started_at: Annotated[
        str,
        msgspec.Meta(description="ISO 8601 UTC with milliseconds, e.g. 2026-11-21T16:20:00.123Z"),
    ]
    finished_at: Annotated[str, msgspec.Meta(description="same format as started_at")]
    duration_s: Annotated[float, msgspec.Meta(ge=0, description="wall-clock seconds of the run")]
    log_tail: Annotated[
        str,
        msgspec.Meta(
            description="the end of the combined output: last 100 lines, at most 8000 characters"
        ),
    ]
    checks: Annotated[
        list[CheckResult],
        msgspec.Meta(description="the ticket's acceptance checks, run after the test command"),
    ] = msgspec.field(default_factory=list)


class CISetup(msgspec.Struct, forbid_unknown_fields=True):
    """``ci.setup`` as the daemon records it in repo.git's git config ``orchestrator.ciSetup``
    (JSON, daemon/home.py; ``{}`` = no setup): what the CI job copies into its checkout
    and runs there first (docs/ci.md, step 5)."""

    copy: list[str] = msgspec.field(default_factory=list)
    """``worktree.copy``: paths relative to ``source``."""
    source: str = ""
    """The source repository the files are copied from."""
    setup: list[str] = msgspec.field(default_factory=list)
    """``worktree.setup``: argv (no shell); empty = nothing to run."""
    timeout_s: int = 600


_decoder = msgspec.json.Decoder(CIStatus)
_encoder = msgspec.json.Encoder()


def iso_utc(ts_s: float) -> str:
    """Unix time (s) as ISO 8601 UTC with milliseconds and a ``Z``: ``2026-11-21T16:20:00.123Z``."""
    moment = datetime.datetime.fromtimestamp(ts_s, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def log_tail(data: bytes) -> str:
    """The end of a log as ``log_tail`` keeps it: last 100 lines, at most 8000 characters."""
    text = data[-(LOG_TAIL_CHARS * 8) :].decode("utf-8", errors="replace")
    text = "".join(text.splitlines(keepends=True)[-LOG_TAIL_LINES:])
    return text[-LOG_TAIL_CHARS:]


def make_status(
    *,
    sha: str,
    ref: str,
    status: CIVerdict,
    exit_code: int,
    started_s: float,
    finished_s: float,
    log: bytes,
    checks: list[CheckResult] | None = None,
) -> CIStatus:
    """Build the document; times are Unix seconds, ``log`` the run's output (any length)."""
    return CIStatus(
        sha=sha,
        ref=ref,
        status=status,
        exit_code=exit_code,
        started_at=iso_utc(started_s),
        finished_at=iso_utc(finished_s),
        duration_s=round(max(0.0, finished_s - started_s), 3),
        log_tail=log_tail(log),
        checks=checks or [],
    )


def encode_status(status: CIStatus) -> bytes:
    """The document as written to disk: indented JSON and a final newline."""
    return msgspec.json.format(_encoder.encode(status), indent=2) + b"\n"


def write_status(path: Path, status: CIStatus) -> None:
    """Write the document atomically (temp file, fsync, rename, fsync the directory).

    Raises:
        OSError: the directory cannot be created or written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, encode_status(status))


def decode_status(data: bytes) -> CIStatus:
    """Decode one document. Raises msgspec.DecodeError (not JSON, or not the schema)."""
    return _decoder.decode(data)


def read_status(path: Path) -> CIStatus:
    """Read and decode one status file.

    Raises:
        OSError: unreadable; msgspec.DecodeError: not valid JSON or wrong schema.
    """
    return decode_status(path.read_bytes())


def decode_setup(raw: str) -> CISetup:
    """Decode ``orchestrator.ciSetup``. Raises msgspec.DecodeError (not JSON, or wrong fields)."""
    return msgspec.json.decode(raw, type=CISetup)


def status_schema() -> dict[str, Any]:
    """The JSON Schema (2020-12) of the document, generated from :class:`CIStatus`."""
    return msgspec.json.schema(CIStatus)
