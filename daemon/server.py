"""The Unix socket server: hello, commands, and for subscribers a snapshot and live events.

Protocol: shared/protocol.py, docs/protocol.md. A client that sends a
subscribing ``hello`` gets a snapshot and then every event; any other client is
one-shot: it gets only the replies to its commands. Each subscriber has a bounded
outgoing buffer; a client that falls behind by more than
:data:`MAX_BUFFERED_BYTES` loses its backlog of events and is sent a fresh
snapshot instead, so a slow or stopped reader never slows the daemon or grows
its memory without bound; one that sends commands and never reads its replies
is disconnected. At most :data:`MAX_CLIENTS` clients are served, only processes
of the daemon's own uid (SO_PEERCRED), and no accept error ends the daemon.
"""

from __future__ import annotations

import contextvars
import logging
import os
import pwd
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import anyio.abc
import msgspec
from anyio.abc import SocketAttribute, SocketListener, SocketStream, TaskGroup, TaskStatus
from anyio.streams.buffered import BufferedByteReceiveStream

from orchestrator.shared.protocol import (
    MAX_COMMAND_BYTES,
    PROTOCOL_VERSION,
    ClientCommand,
    ClientHello,
    Event,
    Reply,
    decode_command,
    encode,
)

log = logging.getLogger(__name__)

#: A client further behind than this (bytes of unsent messages) is resynchronised;
#: one whose unsent *replies* exceed it is disconnected.
MAX_BUFFERED_BYTES = 8 << 20
#: Clients served at once (well under the usual 1,024 open files).
MAX_CLIENTS = 256
#: struct ucred (pid, uid, gid) as SO_PEERCRED returns it.
_UCRED = struct.Struct("3i")

Dispatch = Callable[[ClientCommand], Awaitable[Reply]]

#: The OS user at the other end of the connection whose command is being dispatched
#: (from SO_PEERCRED, unix(7)); set per connection, read by the dispatcher.
PEER_USER: contextvars.ContextVar[str] = contextvars.ContextVar("peer_user", default="")


def peer_user(stream: SocketStream) -> str:
    """The user name (or ``uid N``) of the process on the other end of a Unix socket."""
    try:
        sock = stream.extra(anyio.abc.SocketAttribute.raw_socket)  # noqa: S610 (not Django)
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _, uid, _ = struct.unpack("3i", creds)
    except (OSError, anyio.TypedAttributeLookupError):
        return ""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


class _Peer:
    def __init__(self, stream: SocketStream) -> None:
        self.stream = stream
        self.chunks: list[tuple[bytes, bool]] = []
        """Unsent data in order; the flag marks replies, which are never dropped."""
        self.size = 0
        self.ready = anyio.Event()
        self.flushed = anyio.Event()
        """Set while everything pushed has been sent (replaced on the next push)."""
        self.resyncs = 0
        self.needs_snapshot = False
        self.subscribed = False
        """Sent a subscribing hello: gets the snapshot and every event."""

    def push(self, data: bytes, reply: bool = False) -> None:
        self.chunks.append((data, reply))
        self.size += len(data)
        self.ready.set()
        if self.flushed.is_set():
            self.flushed = anyio.Event()

    def drop_events(self) -> None:
        self.chunks = [c for c in self.chunks if c[1]]
        self.size = sum(len(c[0]) for c in self.chunks)


class Server:
    """Serves one socket path.

    Args:
        path: the socket file (its directory is created 0700, the socket is 0600).
        hello: returns the encoded hello line for a new client.
        snapshot: returns the encoded snapshot line (sent to a client that
            subscribes, and to resync one that fell behind).
        dispatch: answers one command other than ``hello`` (awaited; runs in the
            client's task).
        max_clients: clients served at once; more are sent a refusal and closed.
        allowed_uid: the only uid whose processes are served (SO_PEERCRED, see
            unix(7)); default the daemon's own.
    """

    def __init__(
        self,
        path: Path,
        hello: Callable[[], bytes],
        snapshot: Callable[[], bytes],
        dispatch: Dispatch,
        max_clients: int = MAX_CLIENTS,
        allowed_uid: int | None = None,
    ) -> None:
        self.path = path
        self.hello = hello
        self.snapshot = snapshot
        self.dispatch = dispatch
        self.peers: set[_Peer] = set()
        self.max_clients = max_clients
        self.allowed_uid = os.getuid() if allowed_uid is None else allowed_uid
        self._left = anyio.Event()
        """Set (and replaced) whenever a client disconnects."""

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.path.is_socket():
            self.path.unlink()  # a stale socket of ours; the daemon lock proves no one uses it
        old_umask = os.umask(0o177)
        try:
            listener = await anyio.create_unix_listener(self.path)
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        async with listener, anyio.create_task_group() as tg:
            task_status.started()
            try:
                await self._accept_loop(listener, tg)
            finally:
                with anyio.CancelScope(shield=True):
                    self.path.unlink(missing_ok=True)

    async def _accept_loop(self, listener: SocketListener, tg: TaskGroup) -> None:
        """Accept clients for ever; no accept error (EMFILE...) ends the daemon.

        When accept fails for lack of resources (file descriptors, memory), the
        loop logs it once and waits until a client disconnects (or 1 s), then
        tries again; the pending connection stays in the listen queue meanwhile.
        """
        failing = False
        while True:
            try:
                stream = await listener.accept()
            except (OSError, anyio.BrokenResourceError) as exc:
                # anyio reports accept(2) failures as BrokenResourceError from the OSError.
                cause = exc if isinstance(exc, OSError) else exc.__cause__
                if not isinstance(cause, OSError):
                    raise
                if not failing:
                    log.warning(
                        "socket: cannot accept a client (%s); waiting for one to leave",
                        cause.strerror or cause,
                    )
                failing = True
                with anyio.move_on_after(1.0):
                    await self._left.wait()
                continue
            if failing:
                log.info("socket: accepting clients again")
                failing = False
            why = self._refuse(stream)
            if why:
                log.warning("socket: refused a client: %s", why)
                tg.start_soon(self._turn_away, stream, why)
                continue
            tg.start_soon(self._handle, stream)

    def _refuse(self, stream: SocketStream) -> str:
        """Why a new client is not served ("" when it is): another uid, or too many."""
        sock = stream.extra(SocketAttribute.raw_socket)  # noqa: S610 (anyio, not Django)
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
            pid, uid, _gid = _UCRED.unpack(creds)
        except OSError as exc:
            return f"cannot read its credentials ({exc.strerror})"
        if uid != self.allowed_uid:
            return f"pid {pid} runs as uid {uid}, not the daemon's uid {self.allowed_uid}"
        if len(self.peers) >= self.max_clients:
            return f"already {len(self.peers)} clients (the limit)"
        return ""

    async def _turn_away(self, stream: SocketStream, why: str) -> None:
        with anyio.move_on_after(1.0):
            try:
                async with stream:
                    await stream.send(encode(Reply(ok=False, message=f"refused: {why}")))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass

    def publish(self, events: list[Event]) -> None:
        """Send events to every subscribed client (non-blocking; buffers per client).

        A client more than :data:`MAX_BUFFERED_BYTES` behind loses its pending
        events and gets no more until its writer has caught up; then it is sent a
        fresh snapshot, built at that moment (once per recovery, not per event).
        """
        if not self.peers or not events:
            return
        data = b"".join(encode(e) for e in events)
        for peer in list(self.peers):
            if not peer.subscribed or peer.needs_snapshot:
                continue
            if peer.size + len(data) > MAX_BUFFERED_BYTES:
                peer.drop_events()
                peer.resyncs += 1
                peer.needs_snapshot = True
                peer.ready.set()
                log.warning("a socket client fell behind; it will get a fresh snapshot")
            else:
                peer.push(data)

    async def flushed(self) -> None:
        """Wait until every client was sent everything queued for it (shutdown)."""
        for peer in list(self.peers):
            await peer.flushed.wait()

    async def _handle(self, stream: SocketStream) -> None:
        PEER_USER.set(peer_user(stream))
        peer = _Peer(stream)
        peer.push(self.hello())
        self.peers.add(peer)
        try:
            async with stream, anyio.create_task_group() as tg:
                tg.start_soon(self._writer, peer)
                await self._reader(peer)
                # The client closed its side; what we owe it (replies) still goes out.
                with anyio.move_on_after(1):
                    await peer.flushed.wait()
                tg.cancel_scope.cancel()
        except* (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass  # the client went away
        except* Exception:
            log.exception("socket client handler failed")
        finally:
            self.peers.discard(peer)
            self._left.set()
            self._left = anyio.Event()

    async def _writer(self, peer: _Peer) -> None:
        while True:
            if not peer.chunks and not peer.needs_snapshot:
                peer.flushed.set()
            await peer.ready.wait()
            peer.ready = anyio.Event()
            if peer.needs_snapshot:  # the previous send completed: the client reads again
                peer.needs_snapshot = False
                peer.push(self.snapshot())
            data = b"".join(c[0] for c in peer.chunks)
            peer.chunks.clear()
            peer.size = 0
            if data:
                await peer.stream.send(data)

    async def _reader(self, peer: _Peer) -> None:
        buffered = BufferedByteReceiveStream(peer.stream)
        while True:
            try:
                line = await buffered.receive_until(b"\n", MAX_COMMAND_BYTES)
            except anyio.IncompleteRead:
                return
            except anyio.DelimiterNotFound:
                peer.push(
                    reply=True,
                    data=encode(
                        Reply(
                            ok=False,
                            message=(f"line longer than {MAX_COMMAND_BYTES} bytes; closing"),
                        )
                    ),
                )
                return
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                return
            if not line.strip():
                continue
            if peer.size > MAX_BUFFERED_BYTES:
                # Replies are never dropped, so a client that sends commands and never
                # reads would grow our memory for ever: it is disconnected instead.
                log.warning(
                    "socket: dropped a client that does not read its replies "
                    "(%d bytes unsent, limit %d)",
                    peer.size,
                    MAX_BUFFERED_BYTES,
                )
                raise anyio.BrokenResourceError
            try:
                command = decode_command(line)
            except msgspec.DecodeError as exc:
                reply = Reply(ok=False, message=f"invalid command: {exc}", req=_req_of(line))
                peer.push(encode(reply), reply=True)
                continue
            if isinstance(command, ClientHello):
                if not self._greet(peer, command):
                    return  # another protocol version: the connection ends
                continue
            peer.push(encode(await self._answer(command)), reply=True)

    def _greet(self, peer: _Peer, hello: ClientHello) -> bool:
        """Answer a client's hello; subscribe it when asked. False: refused."""
        if hello.version != PROTOCOL_VERSION:
            message = (
                f"this daemon speaks protocol version {PROTOCOL_VERSION}, the client "
                f"{hello.version}: use the same orchestrator version for both"
            )
            peer.push(encode(Reply(ok=False, message=message, req=hello.req)), reply=True)
            return False
        if not hello.subscribe or peer.subscribed:
            message = "already subscribed" if peer.subscribed else "hello"
            peer.push(encode(Reply(ok=True, message=message, req=hello.req)), reply=True)
            return True
        # No await from here on: no event can be published between the snapshot
        # and the subscription, so the client misses none and gets none twice.
        reply = encode(Reply(ok=True, message="subscribed", req=hello.req))
        peer.push(reply + self.snapshot(), reply=True)
        peer.subscribed = True
        return True

    async def _answer(self, command: ClientCommand) -> Reply:
        try:
            reply = await self.dispatch(command)
        except Exception as exc:  # a bug must not take the connection or daemon down
            log.exception("command %s failed", type(command).__name__)
            reply = Reply(ok=False, message=f"internal error: {exc}")
        return msgspec.structs.replace(reply, req=command.req)


def _req_of(line: bytes) -> str | None:
    try:
        value = msgspec.json.decode(line)
    except msgspec.DecodeError:
        return None
    req = value.get("req") if isinstance(value, dict) else None
    return req if isinstance(req, str) else None
