"""Tickets, their states, and the views of tickets, agents and leases.

The ticket file format is documented in docs/tickets.md; these structs are the
single source of truth for it. Decoding uses shared.yamlsafe (a safe loader that
refuses duplicate keys);
``msgspec`` reports type errors with a JSON path such as ``$.priority``.
"""

from __future__ import annotations

import enum
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from orchestrator.shared.cistatus import CIVerdict as CIVerdict
from orchestrator.shared.errors import TicketError
from orchestrator.shared.lockspec import normalize_lock

#: Ticket ids become part of a git branch name (``agent-K/<id>``), so they are
#: restricted to a subset that git-check-ref-format(1) always accepts.
TICKET_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
"""Used with ``fullmatch`` (``$`` would accept a trailing newline)."""

Priority = Annotated[int, msgspec.Meta(ge=0, le=4)]


def _doc(text: str) -> msgspec.Meta:
    """A field's description, shown by editors through the JSON Schema."""
    return msgspec.Meta(description=text)


Attempts = Annotated[int, msgspec.Meta(ge=1, le=50)]
#: Most ``locks`` (and most ``depends_on`` entries) one ticket may declare: overlap
#: checks cost locks x locks per pair of tickets.
MAX_LOCKS = 256


#: A repository-relative path: no leading ``/``, no ``..`` component, no NUL.
RelPath = Annotated[str, msgspec.Meta(pattern=r"^(?!/)(?!(.*/)?\.\.(/|$))[^\x00]+$")]


class ContainsCheck(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    path: RelPath
    text: Annotated[str, msgspec.Meta(min_length=1)]


class AcceptanceCheck(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """One acceptance check of a ticket: exactly one of ``run``, ``file_exists``,
    ``contains`` (docs/tickets.md#acceptance-checks). Run in the CI checkout after the
    CI command; a failing check fails CI."""

    name: str | None = None
    run: Annotated[list[str], msgspec.Meta(min_length=1)] | None = None
    """argv (no shell), run at the checkout's root; passes when it exits 0."""
    file_exists: RelPath | None = None
    contains: ContainsCheck | None = None

    @property
    def label(self) -> str:
        """``name``, else a description of the check."""
        if self.name:
            return self.name
        if self.run is not None:
            return "run: " + " ".join(self.run)[:200]
        if self.file_exists is not None:
            return f"file_exists: {self.file_exists}"
        assert self.contains is not None
        return f"contains: {self.contains.path}"


class TicketBudget(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """A ticket's spending limit (docs/tickets.md, docs/usage.md)."""

    max_cost_usd: Annotated[float, msgspec.Meta(gt=0)]
    """USD over all the ticket's attempts; over it, the running agent is stopped."""


class Ticket(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """A unit of work for one agent, as written by a person in the backlog.

    Attributes:
        title: one-line summary shown everywhere.
        id: branch-safe identifier; defaults to the file name stem.
        priority: 0 (P0, most urgent) .. 4 (P4); default 2.
        description: the agent's instructions (its prompt).
        locks: repo-relative files, directories or globs the ticket may change;
            none declared means the whole repository (``.``).
        depends_on: ids of tickets that must be merged first.
        max_attempts: overrides the project's ``max_attempts`` for this ticket.
        budget: overrides the project's ``budget.max_cost_usd`` for this ticket.
        acceptance: checks run in the CI checkout after the CI command.
        approval: overrides the project's ``approval`` for this ticket: ``auto``
            (merge when the merge queue's CI passes) or ``manual`` (CI on the
            branch, then a person approves).

    Frozen: a ticket is a value; derive changed copies with ``msgspec.structs.replace``.
    """

    title: Annotated[str, _doc("one-line summary shown everywhere")]
    id: Annotated[str | None, _doc("branch-safe identifier; defaults to the file name stem")] = None
    priority: Annotated[Priority, _doc("0 (P0, most urgent) .. 4 (P4)")] = 2
    description: Annotated[str, _doc("the agent's instructions (its prompt)")] = ""
    locks: Annotated[
        list[str],
        msgspec.Meta(max_length=MAX_LOCKS),
        _doc(
            "repo-relative files, directories or globs the ticket may change; "
            "none declared means the whole repository"
        ),
    ] = msgspec.field(default_factory=list)
    depends_on: Annotated[
        list[str],
        msgspec.Meta(max_length=MAX_LOCKS),
        _doc("ids of tickets that must be merged first"),
    ] = msgspec.field(default_factory=list)
    max_attempts: Annotated[
        Attempts | None, _doc("overrides the project's max_attempts for this ticket")
    ] = None
    budget: Annotated[
        TicketBudget | None,
        _doc("overrides the project's budget.max_cost_usd for this ticket (USD, all attempts)"),
    ] = None
    acceptance: Annotated[
        list[AcceptanceCheck],
        _doc(
            "checks run in the CI checkout after the CI command, each exactly one of "
            "{run: [argv]}, {file_exists: PATH}, {contains: {path: PATH, text: TEXT}}"
        ),
    ] = msgspec.field(default_factory=list)
    approval: Annotated[
        Literal["auto", "manual"] | None,
        _doc(
            "overrides the project's approval for this ticket: auto (merged when the merge "
            "queue's CI passes) or manual (CI on the branch, then a person approves)"
        ),
    ] = None


def ticket_schema() -> dict[str, Any]:
    """The JSON Schema (2020-12) of a ticket file, generated from :class:`Ticket`.

    For editors: yaml-language-server reads it from a first-line comment
    ``# yaml-language-server: $schema=<path or URL>`` (docs/tickets.md).
    """
    schema = msgspec.json.schema(Ticket)
    ticket = schema["$defs"]["Ticket"]
    ticket["description"] = "A ticket file of the orchestrator's backlog (docs/tickets.md)."
    # The id rule (check_ticket_id) as a pattern, so editors flag a bad id while typing.
    ticket["properties"]["id"]["anyOf"][0]["pattern"] = f"^{TICKET_ID_RE.pattern}$"
    return schema


def check_ticket_id(ticket_id: str) -> str | None:
    """Return why ``ticket_id`` cannot name a branch, or None when it can."""
    if not TICKET_ID_RE.fullmatch(ticket_id):
        return (
            "must start with a letter or digit and use only letters, digits, '.', '_' "
            "or '-' (at most 100 characters)"
        )
    if ".." in ticket_id or ticket_id.endswith((".lock", ".")):
        return "must not contain '..' or end with '.' or '.lock' (git branch rules)"
    return None


def check_ticket_file_name(name: str) -> str | None:
    """Return why ``name`` cannot be a ticket file in the backlog, or None when it can.

    The backlog reads only visible ``*.yaml``/``*.yml`` files directly in it, so
    a name with a ``/``, a leading ``.`` (dot-files, ``..``) or control
    characters would be acknowledged and never read.
    """
    if not name.endswith((".yaml", ".yml")):
        return "a ticket file name must end with .yaml or .yml"
    if "/" in name or "\0" in name:
        return "a ticket file name must not contain '/' or NUL"
    if name.startswith("."):
        return "a ticket file name must not start with '.' (hidden files are not read)"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        return "a ticket file name must not contain control characters"
    if len(name.encode()) > 255:
        return "a ticket file name must be at most 255 bytes"
    return None


def _yaml_decode(data: bytes) -> Ticket:
    # Imported here: PyYAML is not needed by those who import the models only for their
    # structs (the CI run's acceptance checks, orchestrator/cirun.py).
    from orchestrator.shared.yamlsafe import decode_yaml

    return decode_yaml(data, Ticket)


def parse_ticket(data: bytes, path: Path) -> Ticket:
    """Decode and validate one ticket file's bytes.

    Args:
        data: the raw file content (UTF-8 YAML).
        path: where it came from; its stem is the default id and its name is
            used in error messages.

    Returns:
        The ticket with ``id`` filled in and every lock normalised.

    Raises:
        TicketError: one line ``<file>: <field>: <reason>`` naming the problem.
    """
    name = str(path)
    if not data.strip():
        raise TicketError(f"{name}: file is empty")
    try:
        ticket = _yaml_decode(data)
    except msgspec.ValidationError as exc:
        raise TicketError(f"{name}: {_field_of(str(exc))}") from None
    except msgspec.DecodeError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else "not valid YAML"
        raise TicketError(f"{name}: invalid YAML: {reason}") from None
    where = "id" if ticket.id is not None else "file name"
    ticket_id = ticket.id if ticket.id is not None else path.stem
    why = check_ticket_id(ticket_id)
    if why:
        raise TicketError(f"{name}: {where} {ticket_id!r} {why}")
    if not ticket.title.strip():
        raise TicketError(f"{name}: title: must not be empty")
    locks = []
    for spec in ticket.locks:
        try:
            locks.append(normalize_lock(spec))
        except ValueError as exc:
            raise TicketError(f"{name}: locks: {exc}") from None
    for dep in ticket.depends_on:
        if check_ticket_id(dep):
            raise TicketError(f"{name}: depends_on: {dep!r} is not a valid ticket id")
    if ticket_id in ticket.depends_on:
        raise TicketError(f"{name}: depends_on: a ticket cannot depend on itself")
    for i, check in enumerate(ticket.acceptance):
        given = [k for k in ("run", "file_exists", "contains") if getattr(check, k) is not None]
        if len(given) != 1:
            raise TicketError(
                f"{name}: acceptance[{i}]: give exactly one of run, file_exists, contains"
                + (f" (got {', '.join(given)})" if given else "")
            )
    # No locks declared: the ticket may change anything, so it locks the whole repo.
    return msgspec.structs.replace(ticket, id=ticket_id, locks=locks or ["."])


def _field_of(message: str) -> str:
    """Turn msgspec's ``Expected `int` - at `$.priority``` into ``priority: Expected `int```."""
    match = re.search(r"^(.*) - at `\$\.?([^`]*)`$", message)
    if match:
        field = match.group(2) or "(document)"
        reason = match.group(1)
        if reason.startswith("Expected `str` matching regex '^(?!/)"):  # RelPath
            reason = "must be a path relative to the repository root (no leading /, no ..)"
        return f"{field}: {reason}"
    if message.startswith("Object contains unknown field"):
        return f"unknown field: {message.split('`')[1] if '`' in message else message}"
    if message.startswith("Object missing required field"):
        return f"{message.split('`')[1]}: missing required field"
    return message


def load_ticket(path: Path) -> Ticket:
    """Read and :func:`parse_ticket` a file.

    Raises:
        TicketError: unreadable or invalid file.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TicketError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_ticket(data, path)


class TicketState(enum.StrEnum):
    """Where a ticket is in its life. See docs/architecture.md for transitions."""

    QUEUED = "queued"
    """Waiting in the priority heap (possibly waiting on a dependency or lock)."""
    BLOCKED = "blocked"
    """A dependency failed or was cancelled; waits until it is continued."""
    RUNNING = "running"
    """An agent works on it in a worktree."""
    NEEDS_INPUT = "needs_input"
    """Its agent asked a person a question (``orchestrator ask``) and waits for the
    answer (``orchestrator answer``); never stale. If the agent ended meanwhile, the
    answer becomes the feedback of its next attempt."""
    CI_RUNNING = "ci_running"
    """Its branch was pushed; CI runs on the pushed commit (manual approval, or a
    reviewer configured)."""
    REVIEWING = "reviewing"
    """CI passed on its branch; the reviewer (``review.command``) looks at the change
    (docs/review.md)."""
    AWAITING_APPROVAL = "awaiting_approval"
    """CI passed; waits for a person to approve (``c``)."""
    MERGING = "merging"
    """Approved, in the merge queue: stacked on main and the entries ahead, CI on the
    stacked commit, then main is fast-forwarded to it."""
    MERGED = "merged"
    """Fast-forwarded into main. Final."""
    STOPPED = "stopped"
    """Stopped by a person; work committed on its branch; ``continue`` resumes it."""
    FAILED = "failed"
    """Used up its attempts; ``continue`` grants one more."""
    REJECTED = "rejected"
    """Invalid file, or rejected at intake (cycle); the file is in backlog/rejected/."""
    CANCELLED = "cancelled"
    """Its file was removed from the backlog while it was queued."""


#: States from which nothing more happens without a person.
FINAL_STATES = frozenset({TicketState.MERGED, TicketState.REJECTED, TicketState.CANCELLED})
#: States of a ticket in flight: it holds its leases (path locks). Only ``running``
#: and ``needs_input`` (while its agent waits for the answer) hold a worker (an agent
#: slot); see docs/architecture.md.
ACTIVE_STATES = frozenset(
    {
        TicketState.RUNNING,
        TicketState.NEEDS_INPUT,
        TicketState.CI_RUNNING,
        TicketState.REVIEWING,
        TicketState.AWAITING_APPROVAL,
        TicketState.MERGING,
    }
)


class AgentState(enum.StrEnum):
    """A worker's state, as shown in the agents panel."""

    IDLE = "idle"
    RUNNING = "running"
    """The agent process runs."""
    STALE = "stale"
    """The agent process shows no progress for ``stale_after_s``."""
    STOPPING = "stopping"
    NEEDS_INPUT = "needs_input"
    """The agent waits for a person's answer to its question (``orchestrator ask``)."""
    # The three below are no longer reported: a worker is free once its ticket's work is
    # pushed (issue 9). Kept so that older clients and the TUI still decode them.
    WAITING_CI = "ci_running"
    AWAITING_APPROVAL = "awaiting_approval"
    MERGING = "merging"


class CIState(enum.StrEnum):
    """A ticket's CI state as shown to clients: running, or the verdict."""

    RUNNING = "running"
    PASS = "pass"  # noqa: S105 (a CI verdict, not a password)
    FAIL = "fail"
    ERROR = "error"


class CIView(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True):
    """The latest CI result of a ticket, from repo.git/ci-status/<sha>.json."""

    sha: str
    status: CIState = CIState.RUNNING
    duration_s: float | None = None
    log_tail: str = ""


class ReviewComment(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """One reviewer comment: a repository path, a line (None: the whole file) and text."""

    path: str
    line: int | None
    body: str


class ReviewStatus(enum.StrEnum):
    """Where a ticket's review stands (:class:`ReviewView`, docs/review.md)."""

    RUNNING = "running"
    APPROVE = "approve"
    REQUEST_CHANGES = "request_changes"
    ERROR = "error"
    """The reviewer failed, timed out or printed something else (``error`` says which)."""


class ReviewView(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True):
    """A ticket's latest reviewer round (``review.command``, docs/review.md)."""

    round: int
    """1-based round of this review; at most ``max_rounds``."""
    max_rounds: int
    sha: str
    """The branch commit reviewed (CI passed on it)."""
    status: ReviewStatus = ReviewStatus.RUNNING
    comments: list[ReviewComment] = msgspec.field(default_factory=list)
    error: str = ""
    """One line: why the reviewer's answer was not usable (``status`` ``error``)."""
    duration_s: float | None = None

    def summary(self) -> str:
        """One line, e.g. ``review round 1 of 2: request_changes, 3 comments``."""
        head = f"review round {self.round} of {self.max_rounds}: {self.status}"
        if self.status == ReviewStatus.ERROR:
            return f"{head}: {self.error}"
        if self.status == ReviewStatus.RUNNING:
            return head
        n = len(self.comments)
        return f"{head}, {n} comment{'s' if n != 1 else ''}"

    def comment_lines(self) -> list[str]:
        """Each comment as ``path:line: body`` (``path: body`` without a line)."""
        return [
            f"{c.path}:{c.line}: {c.body}" if c.line is not None else f"{c.path}: {c.body}"
            for c in self.comments
        ]


class TicketView(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True):
    """One ticket as the daemon reports it (snapshot, events, ``status --json``)."""

    id: str
    title: str
    state: TicketState
    priority: int
    effective_priority: float
    locks: list[str] = msgspec.field(default_factory=list)
    depends_on: list[str] = msgspec.field(default_factory=list)
    agent: str | None = None
    branch: str | None = None
    attempt: int = 0
    max_attempts: int = 3
    reason: str = ""
    """Why it waits, failed or was refused; empty when nothing to say."""
    queued_at: float = 0.0
    """Unix time (s) the ticket entered the queue; the heap's age tie-break."""
    state_since: float = 0.0
    """Unix time (s) of the last state change."""
    rank: float = 0.0
    """Queue order key: lower is taken first (see docs/scheduling.md)."""
    ci: CIView | None = None
    file: str = ""
    """The ticket file's current path."""
    log_file: str = ""
    """The current attempt's agent output log."""
    feedback_file: str = ""
    queue_position: int | None = None
    """1-based place in the merge queue (``merging`` only; 1 merges next)."""
    stacked_on: str | None = None
    """What its merge queue commit is built on: ``main`` or the id of the entry ahead;
    None while not stacked yet."""
    queue_sha: str | None = None
    """Its commit in the merge queue (pushed as ``refs/orchestrator/queue/<id>``)."""
    question: str | None = None
    """The open question its agent asked (``needs_input`` only), else None."""
    asked_at: float | None = None
    """Unix time (s) the open question was asked, else None."""
    review: ReviewView | None = None
    """Its latest reviewer round (none: not reviewed)."""


class AgentView(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True):
    """One worker ``agent-K`` as the daemon reports it."""

    name: str
    state: AgentState
    worktree: str
    ticket: str | None = None
    branch: str | None = None
    attempt: int = 0
    pid: int | None = None
    state_since: float = 0.0
    last_activity: float = 0.0
    """Unix time (s) of the agent's last output, worktree change or heartbeat."""
    note: str = ""
    """The last ``orchestrator heartbeat --note`` text or output line."""
    node: str = ""
    """The Ray node id its agent runs on (``runner: ray``); empty on this machine."""
    host: str = ""
    """The host name of that Ray node; empty on this machine."""


class LeaseView(msgspec.Struct, kw_only=True, frozen=True):
    """One held path lock."""

    path: str
    ticket: str
    agent: str
    acquired_at: float
    expires_at: float
    reserved: bool = False
    """True for a starvation reservation (held for a waiting ticket)."""


class QuestionView(msgspec.Struct, kw_only=True, frozen=True):
    """One open question of an agent (``orchestrator questions``, docs/protocol.md)."""

    ticket: str
    title: str
    question: str
    asked_at: float
    """Unix time (s) it was asked."""
    agent: str
    """The worker (``agent-K``) whose agent asked."""
    waiting: bool
    """True while that agent blocks in ``orchestrator ask``; False when it ended
    meanwhile (the answer then becomes the feedback of the ticket's next attempt)."""
