"""The socket protocol: newline-delimited JSON messages, tagged by ``type``.

Documented for people in docs/protocol.md. Every message is one JSON object on
one line (NDJSON, https://github.com/ndjson/ndjson-spec). On connect the daemon
sends :class:`Hello`. A client that wants the live state sends
:class:`ClientHello` (``subscribe``): it is answered with a :class:`Reply`, then
a :class:`Snapshot`, then :class:`Event` lines as they happen. A one-shot client
(a CLI command, the hook's ``ci_notify``) sends its command only and gets only
its reply. Each command gets exactly one :class:`Reply` (a :class:`StatusReply`
for :class:`Status`) carrying the command's ``req`` (if given).

Bump :data:`PROTOCOL_VERSION` on any incompatible change; clients refuse to talk
to a daemon with another version.

Messages are values: frozen structs, never changed after they are built (use
``msgspec.structs.replace`` to derive one). Names that are contracts between
modules are enums (:class:`EventKind`, :class:`CommandName`); they are ``StrEnum``
so the wire format is the plain string.
"""

from __future__ import annotations

import enum
from typing import ClassVar

import msgspec

from orchestrator.shared.models import AgentView, LeaseView, QuestionView, TicketView
from orchestrator.shared.terminal import sanitize_message

PROTOCOL_VERSION = 6
#: Longest line the daemon accepts from a client (bytes); longer lines get an error reply.
MAX_COMMAND_BYTES = 1 << 20
#: Longest question an agent may ask, and longest answer (characters).
MAX_QUESTION_CHARS = 8000


class EventKind(enum.StrEnum):
    """The ``kind`` of an :class:`Event`, a dotted name; docs/protocol.md says when each is sent."""

    DAEMON_STARTED = "daemon.started"
    DAEMON_STOPPING = "daemon.stopping"
    DAEMON_DEGRADED = "daemon.degraded"
    """The state database cannot be written (busy, disk full); retried, not persisted."""
    DAEMON_RECOVERED = "daemon.recovered"
    TICKET_QUEUED = "ticket.queued"
    TICKET_STATE = "ticket.state"
    TICKET_WAITING = "ticket.waiting"
    TICKET_UPDATED = "ticket.updated"
    TICKET_REJECTED = "ticket.rejected"
    WARNING = "warning"
    LEASE_ACQUIRED = "lease.acquired"
    LEASE_RELEASED = "lease.released"
    LEASE_EXPIRED = "lease.expired"
    LEASE_RESERVED = "lease.reserved"
    AGENT_STARTED = "agent.started"
    AGENT_OUTPUT = "agent.output"
    AGENT_HEARTBEAT = "agent.heartbeat"
    AGENT_STALE = "agent.stale"
    AGENT_STOPPING = "agent.stopping"
    AGENT_STATE = "agent.state"
    AGENT_EXITED = "agent.exited"
    ATTEMPT_FAILED = "attempt.failed"
    CI_RESULT = "ci.result"
    MERGE_QUEUED = "merge.queued"
    MERGE_STACKED = "merge.stacked"
    MERGE_RESTACKED = "merge.restacked"
    MERGE_RECHECK = "merge.recheck"
    """No longer sent (before the merge queue); kept so old event logs decode."""
    REVIEW_STARTED = "review.started"
    REVIEW_RESULT = "review.result"
    """The reviewer answered: ``approve`` or ``request_changes`` (comments in ``text``)."""
    REVIEW_ERROR = "review.error"
    """The reviewer failed, timed out or printed something else."""
    DECISION = "decision"
    """A person's command, applied or refused (the audit trail)."""
    QUESTION_ASKED = "question.asked"
    """An agent asked a question (``orchestrator ask``); the ticket is ``needs_input``."""
    QUESTION_ANSWERED = "question.answered"
    """A person answered; ``text`` is the answer."""
    QUESTION_WITHDRAWN = "question.withdrawn"
    """The question was withdrawn: its ``ask`` timed out (the agent goes on without an
    answer)."""
    QUESTION_ORPHANED = "question.orphaned"
    """The asking agent ended before the answer; the answer will go to the next attempt."""


class CommandName(enum.StrEnum):
    """The ``type`` of each client command (the tag of its struct)."""

    HELLO = "hello"
    STATUS = "status"
    APPROVE = "approve"
    STOP = "stop"
    CONTINUE = "continue"
    REJECT = "reject"
    PRIORITY = "priority"
    ENQUEUE = "enqueue"
    HEARTBEAT = "heartbeat"
    CI_NOTIFY = "ci_notify"
    ASK = "ask"
    ANSWER = "answer"
    QUESTIONS = "questions"


class Message(msgspec.Struct, tag_field="type", kw_only=True, omit_defaults=True, frozen=True):
    """Base of every protocol message; ``type`` is the tag. Frozen: messages are values."""


# --- daemon -> client -------------------------------------------------------


class Hello(Message, tag="hello", kw_only=True, frozen=True):
    version: int
    home: str
    pid: int


class Snapshot(Message, tag="snapshot", kw_only=True, frozen=True):
    """The whole visible state; ``tickets`` are in queue order, then the rest."""

    version: int
    last_event_id: int
    tickets: list[TicketView]
    agents: list[AgentView]
    leases: list[LeaseView]
    approval: str = "manual"


class EncodedSnapshot(Snapshot, tag="snapshot", kw_only=True, frozen=True):
    """A :class:`Snapshot` whose ``tickets`` are already the JSON array of their views.

    Built by the daemon only, to be encoded at once: it encodes to the same line as
    the :class:`Snapshot` it stands for, which is what clients decode. The daemon
    keeps each ticket's encoded view between changes (``Core.ticket_views_json``),
    so a snapshot of 100,000 tickets is a join of cached bytes (docs/performance.md).
    """

    tickets: msgspec.Raw  # type: ignore[assignment]


class Event(Message, tag="event", kw_only=True, frozen=True):
    """Something that happened. ``kind`` is a dotted name, e.g. ``ticket.state``.

    Views, when present, are the complete new state of that ticket/agent, so a
    client can replace what it holds instead of interpreting the kind. ``leases``,
    when present, are all of ``ticket``'s leases and reservation after the change
    (empty: it holds none); the full table is in the snapshot.
    """

    id: int
    ts: float
    """Unix time, seconds."""
    kind: EventKind
    message: str = ""
    ticket: str | None = None
    agent: str | None = None
    ticket_view: TicketView | None = None
    agent_view: AgentView | None = None
    leases: list[LeaseView] | None = None
    text: str | None = None
    """Agent output (``agent.output``) or a CI log tail (``ci.result``)."""
    user: str | None = None
    """``decision`` events: the OS user who sent the command (the socket peer's uid)."""
    client: str | None = None
    """``decision`` events: the client that sent it, as it said (``cli``, ``tui``...)."""


class Reply(Message, tag="reply", kw_only=True, frozen=True):
    """The answer to one command: ``ok`` and one line for a person."""

    ok: bool
    message: str = ""
    req: str | None = None


class StatusReply(Reply, tag="status_reply", kw_only=True, frozen=True):
    """The answer to :class:`Status`: a fresh snapshot."""

    snapshot: Snapshot


class AskReply(Reply, tag="ask_reply", kw_only=True, frozen=True):
    """The answer to :class:`Ask`, sent once the question is closed.

    ``ok`` with ``answer``: a person answered. ``timed_out``: no answer within the
    ask's ``timeout_s`` (the question is withdrawn). Otherwise ``ok: false`` and
    ``message`` says why (refused, or the question was closed: the ticket was stopped).
    """

    answer: str | None = None
    timed_out: bool = False


class QuestionsReply(Reply, tag="questions_reply", kw_only=True, frozen=True):
    """The answer to :class:`Questions`: every open question, oldest first."""

    questions: list[QuestionView] = msgspec.field(default_factory=list)


ServerMessage = Hello | Snapshot | Event | Reply | StatusReply | AskReply | QuestionsReply

# --- client -> daemon -------------------------------------------------------


class Command(Message, kw_only=True, frozen=True):
    """Base of the client's commands; ``reply_type`` is the type of the answer."""

    reply_type: ClassVar[type[Reply]] = Reply
    req: str | None = None
    """Optional request id, echoed in the reply."""
    client: str | None = None
    """Who is sending: ``cli``, ``tui``, or a script's own name; recorded with every
    decision (approve, reject, continue, priority, stop) in the event log."""


class TicketCommand(Command, kw_only=True, frozen=True):
    """A command about one ticket, applied by the daemon's core."""

    ticket: str


class Approve(TicketCommand, tag=CommandName.APPROVE.value, kw_only=True, frozen=True):
    pass


class Stop(TicketCommand, tag=CommandName.STOP.value, kw_only=True, frozen=True):
    pass


class Continue(TicketCommand, tag=CommandName.CONTINUE.value, kw_only=True, frozen=True):
    feedback: str = ""
    """Optional words for the next attempt of a stopped, failed or blocked ticket."""


class Reject(TicketCommand, tag=CommandName.REJECT.value, kw_only=True, frozen=True):
    feedback: str


class SetPriority(TicketCommand, tag=CommandName.PRIORITY.value, kw_only=True, frozen=True):
    priority: int


class Heartbeat(TicketCommand, tag=CommandName.HEARTBEAT.value, kw_only=True, frozen=True):
    note: str = ""


class Ask(TicketCommand, tag=CommandName.ASK.value, kw_only=True, frozen=True):
    """An agent asks a person (``orchestrator ask``); answered by :class:`AskReply`
    only when the question is closed (answered, timed out, or the ticket stopped).

    Attributes:
        question: one or more lines for a person (at most :data:`MAX_QUESTION_CHARS`).
        run_id: the asking agent's ``ORCH_RUN_ID``; must be the running attempt's.
        timeout_s: withdraw the question after this long without an answer
            (None: wait until answered).
    """

    reply_type: ClassVar[type[Reply]] = AskReply
    question: str
    run_id: str
    timeout_s: float | None = None


class Answer(TicketCommand, tag=CommandName.ANSWER.value, kw_only=True, frozen=True):
    """A person answers the ticket's open question (``orchestrator answer``)."""

    text: str


class Questions(Command, tag=CommandName.QUESTIONS.value, kw_only=True, frozen=True):
    """List the open questions; answered by :class:`QuestionsReply`."""

    reply_type: ClassVar[type[Reply]] = QuestionsReply


class Enqueue(Command, tag=CommandName.ENQUEUE.value, kw_only=True, frozen=True):
    """Place a ticket in the backlog; ``yaml`` is the file content, ``name`` its file name."""

    name: str
    yaml: str


class ClientHello(Command, tag=CommandName.HELLO.value, kw_only=True, frozen=True):
    """A client's hello: the protocol version it speaks, and whether it subscribes.

    ``subscribe``: after the reply, send a snapshot and then every event. A
    different ``version`` is refused (``ok: false``) and the connection closed.
    """

    version: int
    subscribe: bool = True


class Status(Command, tag=CommandName.STATUS.value, kw_only=True, frozen=True):
    """Ask for a fresh snapshot; answered with a :class:`StatusReply`.

    Attributes:
        tickets: False leaves the snapshot's ``tickets`` empty (agents and leases only),
            so ``orchestrator locks`` costs the same with 10 or 100,000 tickets.
    """

    reply_type: ClassVar[type[Reply]] = StatusReply
    tickets: bool = True


class CINotify(Command, tag=CommandName.CI_NOTIFY.value, kw_only=True, frozen=True):
    """Sent by hooks/post-receive once repo.git/ci-status/<sha>.json is written."""

    sha: str


TicketCommands = Approve | Stop | Continue | Reject | SetPriority | Heartbeat | Ask | Answer
ClientCommand = ClientHello | TicketCommands | Enqueue | Status | CINotify | Questions

_encoder = msgspec.json.Encoder()
_server_decoder = msgspec.json.Decoder(ServerMessage)
_client_decoder = msgspec.json.Decoder(ClientCommand)


def encode(message: Message) -> bytes:
    """One message as one NDJSON line (with the trailing newline)."""
    return _encoder.encode(message) + b"\n"


def decode_command(line: bytes) -> ClientCommand:
    """Decode one client line.

    Raises:
        msgspec.DecodeError: not JSON, unknown ``type`` or wrong fields; the
            message says which (the server turns it into an error reply).
    """
    return _client_decoder.decode(line)


def decode_server(line: bytes) -> ServerMessage:
    """Decode one daemon line, every string made terminal-safe (shared.terminal).

    Raises msgspec.DecodeError on a bad line.
    """
    return sanitize_message(_server_decoder.decode(line))
