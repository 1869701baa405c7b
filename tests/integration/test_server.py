"""The socket server in-process on a real Unix socket: slow clients, garbage, resync."""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path

import anyio
import anyio.abc
import pytest

from orchestrator.daemon import server as S
from orchestrator.shared import protocol as P


def _event(i: int) -> P.Event:
    return P.Event(id=i, ts=0.0, kind="ticket.updated", message="x" * 200)


V = P.PROTOCOL_VERSION
SUBSCRIBE = P.encode(P.ClientHello(version=V))


def _server() -> tuple[S.Server, list[int], list[P.ClientCommand]]:
    """A server on a fresh socket path; it counts snapshots built and records commands."""
    path = Path(tempfile.mkdtemp(dir="/tmp")) / "s.sock"
    snapshots: list[int] = []
    commands: list[P.ClientCommand] = []

    def snapshot() -> bytes:
        snapshots.append(1)
        return P.encode(P.Snapshot(version=V, last_event_id=0, tickets=[], agents=[], leases=[]))

    async def dispatch(command: P.ClientCommand) -> P.Reply:
        commands.append(command)
        return P.Reply(ok=True, message="done")

    hello = P.encode(P.Hello(version=V, home="/h", pid=1))
    return S.Server(path, lambda: hello, snapshot, dispatch), snapshots, commands


async def _lines(stream: anyio.abc.SocketStream, count: int) -> list[bytes]:
    data = b""
    with anyio.fail_after(10):
        while data.count(b"\n") < count:
            data += await stream.receive()
    return data.split(b"\n")[:count]


async def test_a_one_shot_client_gets_its_reply_and_nothing_else():
    server, snapshots, commands = _server()
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        async with await anyio.connect_unix(server.path) as client:
            (hello,) = await _lines(client, 1)
            assert isinstance(P.decode_server(hello), P.Hello)
            server.publish([_event(1)])  # not subscribed: not sent
            await client.send(b'{"type":"stop","ticket":"t","req":"r1"}\n')
            (reply,) = await _lines(client, 1)
            assert P.decode_server(reply) == P.Reply(ok=True, message="done", req="r1")
            await client.send_eof()
            with anyio.fail_after(5):
                rest = b""
                while True:
                    try:
                        rest += await client.receive()
                    except anyio.EndOfStream:
                        break
            assert rest == b"", "no snapshot, no events for a one-shot client"
        assert snapshots == [], "no snapshot was even built"
        assert commands == [P.Stop(ticket="t", req="r1")]
        tg.cancel_scope.cancel()


async def test_hello_subscribes_then_every_event_follows_the_snapshot():
    server, snapshots, commands = _server()
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        async with await anyio.connect_unix(server.path) as client:
            await _lines(client, 1)
            await client.send(P.encode(P.ClientHello(version=V, req="h")))
            with anyio.fail_after(5):
                while not any(p.subscribed for p in server.peers):
                    await anyio.sleep(0.01)
            server.publish([_event(7)])
            reply, snapshot, event = (P.decode_server(x) for x in await _lines(client, 3))
            assert reply == P.Reply(ok=True, message="subscribed", req="h")
            assert isinstance(snapshot, P.Snapshot)
            assert isinstance(event, P.Event) and event.id == 7
            # A second hello does not send the snapshot again.
            await client.send(P.encode(P.ClientHello(version=V, req="h2")))
            (again,) = await _lines(client, 1)
            assert P.decode_server(again) == P.Reply(
                ok=True, message="already subscribed", req="h2"
            )
        assert len(snapshots) == 1 and commands == []
        tg.cancel_scope.cancel()


async def test_a_hello_of_another_version_is_refused_and_the_connection_closed():
    server, snapshots, _ = _server()
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        async with await anyio.connect_unix(server.path) as client:
            await _lines(client, 1)
            await client.send(P.encode(P.ClientHello(version=V + 1, req="h")))
            (reply,) = await _lines(client, 1)
            refused = P.decode_server(reply)
            assert isinstance(refused, P.Reply) and not refused.ok and refused.req == "h"
            assert f"protocol version {V}, the client {V + 1}" in refused.message
            with anyio.fail_after(5), pytest.raises(anyio.EndOfStream):
                await client.receive()
        assert snapshots == []
        tg.cancel_scope.cancel()


async def test_a_stalled_client_is_resynchronised_and_others_are_unaffected(monkeypatch):
    monkeypatch.setattr(S, "MAX_BUFFERED_BYTES", 64 * 1024)
    server, snapshots, _ = _server()
    path = server.path
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        stalled = socket.socket(socket.AF_UNIX)
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(str(path))
        stalled.sendall(SUBSCRIBE)
        reader = await anyio.connect_unix(path)
        await reader.send(SUBSCRIBE)
        received = bytearray()

        async def read_all() -> None:
            while True:
                try:
                    received.extend(await reader.receive())
                except anyio.EndOfStream:
                    return

        tg.start_soon(read_all)
        while sum(p.subscribed for p in server.peers) < 2:
            await anyio.sleep(0.01)
        for i in range(3000):  # ~800 KB: far more than the stalled client's budget
            server.publish([_event(i)])
            if i % 50 == 0:
                await anyio.sleep(0)
        stalled_peer = next(p for p in server.peers if p.resyncs)
        assert stalled_peer.size <= S.MAX_BUFFERED_BYTES, "memory stays bounded"
        while received.count(b"\n") < 3003:  # hello, reply, snapshot, events
            await anyio.sleep(0.01)
        assert received.count(b'"kind":"ticket.updated"') == 3000, "the reader got everything"
        # the stalled client starts reading: it gets a fresh snapshot, then new events
        stalled.setblocking(False)
        data = bytearray()
        with anyio.move_on_after(5):
            while b'"type":"snapshot"' not in data.split(b"\n", 3)[-1]:  # after hello+reply+1st
                try:
                    data.extend(stalled.recv(1 << 20))
                except BlockingIOError:
                    await anyio.sleep(0.01)
        assert data.count(b'"type":"snapshot"') >= 2, "a resync snapshot after the first one"
        assert len(snapshots) <= 2 + stalled_peer.resyncs
        tg.cancel_scope.cancel()
    stalled.close()
    await reader.aclose()
