"""The socket protocol: newline-delimited JSON messages, tagged by ``type``.

Documented for people in docs/protocol.md. Every message is one JSON object on
one line (NDJSON, https://github.com/ndjson/ndjson-spec). On connect the daemon
sends :class:`Hello` then :class:`Snapshot`, then :class:`Event` lines as they
happen. A client may send any :data:`Command` at any time; each gets exactly one
:class:`Reply` carrying the command's ``req`` (if given).

Bump :data:`PROTOCOL_VERSION` on any incompatible change; clients refuse to talk
to a daemon with another version.
"""

from __future__ import annotations

from typing import Any

import msgspec

from orchestrator.shared.models import AgentView, LeaseView, TicketView

PROTOCOL_VERSION = 1
#: Longest line the daemon accepts from a client (bytes); longer lines get an error reply.
MAX_COMMAND_BYTES = 1 << 20


class Message(msgspec.Struct, tag_field="type", kw_only=True, omit_defaults=True):
    """Base of every protocol message; ``type`` is the tag."""


# --- daemon -> client -------------------------------------------------------


class Hello(Message, tag="hello", kw_only=True):
    version: int
    home: str
    pid: int


class Snapshot(Message, tag="snapshot", kw_only=True):
    """The whole visible state; ``tickets`` are in queue order, then the rest."""

    version: int
    last_event_id: int
    tickets: list[TicketView]
    agents: list[AgentView]
    leases: list[LeaseView]
    approval: str = "manual"


class Event(Message, tag="event", kw_only=True):
    """Something that happened. ``kind`` is a dotted name, e.g. ``ticket.state``.

    Views, when present, are the complete new state of that ticket/agent, so a
    client can replace what it holds instead of interpreting the kind. ``leases``,
    when present, are all of ``ticket``'s leases and reservation after the change
    (empty: it holds none); the full table is in the snapshot.
    """

    id: int
    ts: float
    """Unix time, seconds."""
    kind: str
    message: str = ""
    ticket: str | None = None
    agent: str | None = None
    ticket_view: TicketView | None = None
    agent_view: AgentView | None = None
    leases: list[LeaseView] | None = None
    text: str | None = None
    """Agent output (``agent.output``) or a CI log tail (``ci.result``)."""


class Reply(Message, tag="reply", kw_only=True):
    ok: bool
    message: str = ""
    req: str | None = None
    data: Any = None


ServerMessage = Hello | Snapshot | Event | Reply

# --- client -> daemon -------------------------------------------------------


class Command(Message, kw_only=True):
    req: str | None = None
    """Optional request id, echoed in the reply."""


class Approve(Command, tag="approve", kw_only=True):
    ticket: str


class Stop(Command, tag="stop", kw_only=True):
    ticket: str


class Continue(Command, tag="continue", kw_only=True):
    ticket: str


class Reject(Command, tag="reject", kw_only=True):
    ticket: str
    feedback: str


class SetPriority(Command, tag="priority", kw_only=True):
    ticket: str
    priority: int


class Enqueue(Command, tag="enqueue", kw_only=True):
    """Place a ticket in the backlog; ``yaml`` is the file content, ``name`` its file name."""

    name: str
    yaml: str


class Status(Command, tag="status", kw_only=True):
    pass


class Heartbeat(Command, tag="heartbeat", kw_only=True):
    ticket: str
    note: str = ""


class CINotify(Command, tag="ci_notify", kw_only=True):
    """Sent by hooks/post-receive once repo.git/ci-status/<sha>.json is written."""

    sha: str


ClientCommand = (
    Approve | Stop | Continue | Reject | SetPriority | Enqueue | Status | Heartbeat | CINotify
)

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
    """Decode one daemon line. Raises msgspec.DecodeError on a bad line."""
    return _server_decoder.decode(line)
