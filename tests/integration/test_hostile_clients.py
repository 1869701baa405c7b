"""Issue 10, the socket: a connection cap, accept errors survived, clients that never read
are dropped, other uids refused. In-process servers on real sockets, and a real daemon
under a low open-file limit. Each test fails on 7e9918c."""

from __future__ import annotations

import json
import os
import resource
import socket
import tempfile
import time
from pathlib import Path

import anyio

from orchestrator.daemon import server as S
from orchestrator.shared import protocol as P


def _server(path: Path, **kwargs: object) -> S.Server:
    async def dispatch(command: P.ClientCommand) -> P.Reply:
        return P.Reply(ok=True, message="done " + "x" * 1000)

    return S.Server(
        path,
        lambda: P.encode(P.Hello(version=P.PROTOCOL_VERSION, home="/h", pid=1)),
        lambda: P.encode(
            P.Snapshot(
                version=P.PROTOCOL_VERSION, last_event_id=0, tickets=[], agents=[], leases=[]
            )
        ),
        dispatch,
        **kwargs,  # type: ignore[arg-type]
    )


async def _first_line(path: Path) -> dict:
    stream = await anyio.connect_unix(path)
    async with stream:
        data = b""
        with anyio.fail_after(10):
            while b"\n" not in data:
                chunk = await stream.receive()
                data += chunk
        return json.loads(data.split(b"\n", 1)[0])


async def test_clients_over_the_cap_are_refused_with_a_reason_and_others_served():
    path = Path(tempfile.mkdtemp(dir="/tmp")) / "s.sock"
    server = _server(path, max_clients=3)
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        held = [await anyio.connect_unix(path) for _ in range(3)]
        with anyio.fail_after(10):
            while len(server.peers) < 3:
                await anyio.sleep(0.01)
        refused = await _first_line(path)
        assert refused["type"] == "reply" and refused["ok"] is False
        assert "already 3 clients (the limit)" in refused["message"]
        await held.pop().aclose()
        with anyio.fail_after(10):
            while len(server.peers) > 2:
                await anyio.sleep(0.01)
        assert (await _first_line(path))["type"] == "hello"
        for stream in held:
            await stream.aclose()
        tg.cancel_scope.cancel()


async def test_a_process_of_another_uid_is_refused():
    path = Path(tempfile.mkdtemp(dir="/tmp")) / "s.sock"
    server = _server(path, allowed_uid=os.getuid() + 1)
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        refused = await _first_line(path)
        assert refused["ok"] is False
        assert (
            f"runs as uid {os.getuid()}, not the daemon's uid {os.getuid() + 1}"
            in (refused["message"])
        )
        assert not server.peers
        tg.cancel_scope.cancel()


async def test_a_client_that_never_reads_its_replies_is_dropped(monkeypatch, caplog):
    monkeypatch.setattr(S, "MAX_BUFFERED_BYTES", 256 * 1024)
    path = Path(tempfile.mkdtemp(dir="/tmp")) / "s.sock"
    server = _server(path)
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        lazy = socket.socket(socket.AF_UNIX)
        lazy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        lazy.connect(str(path))
        lazy.setblocking(False)
        with anyio.fail_after(10):
            while not server.peers:
                await anyio.sleep(0.01)
        line = b'{"type":"status"}\n'
        sent = 0
        with anyio.fail_after(60):
            while True:  # commands, never a read: replies (~1 KB each) pile up
                try:
                    sent += lazy.send(line * 64)
                except BlockingIOError:
                    await anyio.sleep(0.01)
                except (BrokenPipeError, ConnectionResetError):
                    break  # the daemon closed the connection
                if not server.peers and sent > 0:
                    break
                await anyio.sleep(0)
        with anyio.fail_after(10):
            while server.peers:
                await anyio.sleep(0.01)
        lazy.close()
        assert "does not read its replies" in caplog.text
        assert (await _first_line(path))["type"] == "hello"  # others are served
        tg.cancel_scope.cancel()


def test_the_daemon_survives_running_out_of_file_descriptors(make_project):
    project = make_project(workers=1, start=False)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (160, hard))
    try:
        project.start()  # inherits the limit of 160 open files
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    path = str(project.home.socket_path)
    clients = []
    try:
        for _ in range(300):
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(str(path))  # the listen queue takes them even when accept fails
            clients.append(sock)
    except OSError:
        pass  # a full listen queue: enough pressure
    assert len(clients) > 160
    log_file = project.root / "daemon.log"
    deadline = time.monotonic() + 30
    while "cannot accept a client" not in log_file.read_text():
        assert time.monotonic() < deadline, "accept never failed: " + log_file.read_text()[-2000:]
        time.sleep(0.05)
    for sock in clients:
        sock.close()
    assert project.proc is not None and project.proc.poll() is None, "the daemon died"
    assert project.send(P.Status()).ok  # served again once clients left
    assert "accepting clients again" in log_file.read_text()
