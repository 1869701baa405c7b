"""Clients of the daemon socket: a blocking one for CLI commands, an async one for streams.

Both speak the NDJSON protocol of :mod:`orchestrator.shared.protocol`
(docs/protocol.md). :func:`request` is one-shot: it reads the daemon's hello,
sends one command and gets only its reply (no snapshot, no events).
:class:`Client` subscribes with a ``hello`` and gets a snapshot and every event.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import overload

import msgspec

from orchestrator.shared.errors import DaemonNotRunning, ProtocolError
from orchestrator.shared.protocol import (
    PROTOCOL_VERSION,
    AskReply,
    ClientHello,
    Command,
    Event,
    Hello,
    QuestionsReply,
    Reply,
    ServerMessage,
    Snapshot,
    Status,
    StatusReply,
    decode_server,
    encode,
)

#: Snapshots of large backlogs are big; one line may be this long (bytes).
MAX_LINE_BYTES = 256 << 20
#: Read buffer of the one-shot client (:func:`request_line`), bytes.
READ_BUFFER_BYTES = 1 << 20


def _not_running(path: Path, exc: OSError) -> DaemonNotRunning:
    return DaemonNotRunning(
        f"no daemon answers on {path} ({exc.strerror or exc}); start it with "
        "`orchestrator daemon --config CONFIG` or `systemctl --user start orchestrator`"
    )


def _check_hello(message: ServerMessage) -> Hello:
    if not isinstance(message, Hello):
        raise ProtocolError(f"expected a hello from the daemon, got {type(message).__name__}")
    if message.version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"the daemon speaks protocol version {message.version}, this client "
            f"{PROTOCOL_VERSION}: restart the daemon after upgrading (or use the same version)"
        )
    return message


def _decode(line: bytes) -> ServerMessage:
    try:
        return decode_server(line)
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"the daemon sent an unreadable line: {exc}") from None


class _ReplyHead(msgspec.Struct):
    """The fields of a server line that say what it is; the rest is skipped unparsed."""

    type: str
    req: str | None = None


_head_decoder = msgspec.json.Decoder(_ReplyHead)
_REPLY_TAGS = frozenset(
    cls.__struct_config__.tag for cls in (Reply, StatusReply, AskReply, QuestionsReply)
)


@overload
def request(path: Path, command: Status, timeout_s: float | None = 30.0) -> StatusReply: ...
@overload
def request(path: Path, command: Command, timeout_s: float | None = 30.0) -> Reply: ...
def request(path: Path, command: Command, timeout_s: float | None = 30.0) -> Reply:
    """Send one command and wait for its reply (blocking; for the CLI).

    One-shot: the daemon sends its hello and then only the reply (no snapshot,
    no events), however large its state.

    Args:
        timeout_s: how long to wait for the daemon's lines; None waits for ever
            (``orchestrator ask``, whose reply comes when a person answers).

    Returns:
        The reply, of the command's ``reply_type`` (a :class:`StatusReply` for
        :class:`Status`).

    Raises:
        DaemonNotRunning: nothing listens on ``path``.
        ProtocolError: version mismatch or an unreadable answer.
    """
    message = _decode(request_line(path, command, timeout_s))
    if not isinstance(message, command.reply_type):
        raise ProtocolError(
            f"the daemon answered {command.__struct_config__.tag} with a "
            f"{type(message).__name__}, not a {command.reply_type.__name__}"
        )
    return message


def request_line(path: Path, command: Command, timeout_s: float | None = 30.0) -> bytes:
    """:func:`request`, returning the reply's JSON line undecoded.

    For callers that pass a large reply through or read only part of it
    (``status --json`` and ``locks`` of 100,000 tickets: decoding every view
    into structs costs more than the daemon's whole answer).

    Raises:
        DaemonNotRunning: nothing listens on ``path``.
        ProtocolError: version mismatch, an unreadable line, or no reply.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        sock.connect(str(path))
    except OSError as exc:
        sock.close()
        raise _not_running(path, exc) from None
    # A large buffer: a status of 100,000 tickets is one 40 MB line.
    with sock, sock.makefile("rb", buffering=READ_BUFFER_BYTES) as reader:

        def read() -> bytes:
            try:
                line = reader.readline(MAX_LINE_BYTES)
            except TimeoutError:
                raise ProtocolError(
                    f"the daemon did not answer within {timeout_s or 0:.0f} s"
                ) from None
            if not line:
                raise ProtocolError("the daemon closed the connection without answering")
            return line

        _check_hello(_decode(read()))  # before sending: never act on a daemon of another version
        sock.sendall(encode(msgspec.structs.replace(command, req="1")))
        while True:
            line = read()
            try:
                head = _head_decoder.decode(line)
            except msgspec.DecodeError as exc:
                raise ProtocolError(f"the daemon sent an unreadable line: {exc}") from None
            if head.req == "1" and head.type in _REPLY_TAGS:
                return line


class Client:
    """An async connection: hello, snapshot, then events; commands with replies.

    Use as ``async with Client(path) as client:`` then ``client.snapshot`` and
    ``async for message in client.messages():`` (yields :class:`Snapshot` and
    :class:`Event`; a new snapshot arrives when the daemon dropped events for a
    slow client). ``await client.send(cmd)`` returns the :class:`Reply`.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.hello: Hello | None = None
        self.snapshot: Snapshot | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._ids = itertools.count(1)
        self._pending: dict[str, asyncio.Future[Reply]] = {}

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect, read the daemon's hello, subscribe with ours and read the snapshot.

        Raises:
            DaemonNotRunning, ProtocolError (another version; the daemon refused).
        """
        try:
            self._reader, self._writer = await asyncio.open_unix_connection(
                str(self.path), limit=MAX_LINE_BYTES
            )
        except OSError as exc:
            raise _not_running(self.path, exc) from None
        try:
            self.hello = _check_hello(await self._read())
            assert self._writer is not None
            self._writer.write(encode(ClientHello(version=PROTOCOL_VERSION, req="hello")))
            await self._writer.drain()
            while not isinstance(message := await self._read(), Snapshot):
                if isinstance(message, Reply) and not message.ok:
                    raise ProtocolError(f"the daemon refused our hello: {message.message}")
        except BaseException:
            await self.close()
            raise
        self.snapshot = message

    async def close(self) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ProtocolError("connection closed"))
        self._pending.clear()
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except OSError:
                pass
            self._writer = None

    async def _read(self) -> ServerMessage:
        assert self._reader is not None
        try:
            line = await self._reader.readline()
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            raise ProtocolError(f"connection to the daemon lost: {exc}") from None
        if not line:
            raise ProtocolError("the daemon closed the connection")
        return _decode(line)

    async def messages(self) -> AsyncIterator[Snapshot | Event]:
        """Yield snapshots and events until the connection ends (then ProtocolError)."""
        while True:
            message = await self._read()
            if isinstance(message, Reply):
                future = self._pending.pop(message.req or "", None)
                if future is not None and not future.done():
                    future.set_result(message)
                continue
            if isinstance(message, Snapshot):
                self.snapshot = message
            if isinstance(message, Snapshot | Event):
                yield message

    async def send(self, command: Command, timeout_s: float = 30.0) -> Reply:
        """Send a command; its reply arrives through :meth:`messages`, which must be running."""
        assert self._writer is not None, "not connected"
        req = f"c{next(self._ids)}"
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[req] = future
        self._writer.write(encode(msgspec.structs.replace(command, req=req)))
        await self._writer.drain()
        return await asyncio.wait_for(future, timeout_s)
