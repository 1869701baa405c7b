"""The socket server in-process on a real Unix socket: slow clients, garbage, resync."""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path

import anyio

from orchestrator.daemon import server as S
from orchestrator.shared import protocol as P


def _event(i: int) -> P.Event:
    return P.Event(id=i, ts=0.0, kind="ticket.updated", message="x" * 200)


async def test_a_stalled_client_is_resynchronised_and_others_are_unaffected(monkeypatch):
    monkeypatch.setattr(S, "MAX_BUFFERED_BYTES", 64 * 1024)
    path = Path(tempfile.mkdtemp(dir="/tmp")) / "s.sock"
    snapshots = []

    def snapshot() -> bytes:
        snapshots.append(1)
        return P.encode(P.Snapshot(version=1, last_event_id=0, tickets=[], agents=[], leases=[]))

    async def dispatch(command: P.ClientCommand) -> P.Reply:
        return P.Reply(ok=True, message="done")

    server = S.Server(
        path, lambda: P.encode(P.Hello(version=1, home="/h", pid=1)), snapshot, dispatch
    )
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        stalled = socket.socket(socket.AF_UNIX)
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(str(path))
        reader = await anyio.connect_unix(path)
        received = bytearray()

        async def read_all() -> None:
            while True:
                try:
                    received.extend(await reader.receive())
                except anyio.EndOfStream:
                    return

        tg.start_soon(read_all)
        while len(server.peers) < 2:
            await anyio.sleep(0.01)
        for i in range(3000):  # ~800 KB: far more than the stalled client's budget
            server.publish([_event(i)])
            if i % 50 == 0:
                await anyio.sleep(0)
        stalled_peer = next(p for p in server.peers if p.resyncs)
        assert stalled_peer.size <= S.MAX_BUFFERED_BYTES, "memory stays bounded"
        while received.count(b"\n") < 3002:
            await anyio.sleep(0.01)
        assert received.count(b'"kind":"ticket.updated"') == 3000, "the reader got everything"
        # the stalled client starts reading: it gets a fresh snapshot, then new events
        stalled.setblocking(False)
        data = bytearray()
        with anyio.move_on_after(5):
            while b'"type":"snapshot"' not in data.split(b"\n", 2)[-1]:
                try:
                    data.extend(stalled.recv(1 << 20))
                except BlockingIOError:
                    await anyio.sleep(0.01)
        assert data.count(b'"type":"snapshot"') >= 2, "a resync snapshot after the first one"
        assert len(snapshots) <= 2 + stalled_peer.resyncs
        tg.cancel_scope.cancel()
    stalled.close()
    await reader.aclose()
