"""How an agent process is run: the seam between the workers and the machine.

:class:`Workers` (daemon/workers.py) prepares the worktree, builds the argv and
environment, pumps the output and commits what the agent left; *where and how*
the process runs is an :class:`AgentRunner`. Today there is one,
:class:`LocalRunner`: a child process in its own session and process group on
this machine, so a stop ends the whole tree (SIGTERM to the group, a grace
period, then SIGKILL, like watchfiles' process supervisor). Another runner
(for example one placing agents on a Ray cluster, issue 14) implements the same
two small protocols; nothing else in the daemon changes.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import anyio
from anyio.abc import Process


class AgentProcess(Protocol):
    """One running agent, as a worker sees it."""

    @property
    def pid(self) -> int:
        """An id of the running agent, persisted with its ticket (``agent_pid``); for a
        local agent its pid, which is also its process group id."""
        ...

    @property
    def returncode(self) -> int | None:
        """The exit code once it has exited (negative: killed by that signal), else None."""
        ...

    def output(self) -> AsyncIterator[bytes]:
        """Its combined stdout and stderr, in chunks, until the stream closes."""
        ...

    async def wait(self) -> int:
        """Wait until it exits; return its exit code."""
        ...

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the agent and everything it started; never raises when it is
        already gone."""
        ...


class AgentRunner(Protocol):
    async def start(self, argv: Sequence[str], cwd: Path, env: Mapping[str, str]) -> AgentProcess:
        """Start ``argv`` (never through a shell) in ``cwd`` with exactly ``env``.

        Raises:
            OSError: it could not be started (FileNotFoundError: no such command).
        """
        ...


class LocalAgent:
    """A local child process leading its own session and process group."""

    def __init__(self, process: Process) -> None:
        self._process = process

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.returncode

    async def output(self) -> AsyncIterator[bytes]:
        assert self._process.stdout is not None
        async for chunk in self._process.stdout:
            yield chunk

    async def wait(self) -> int:
        return await self._process.wait()

    def signal(self, sig: signal.Signals) -> None:
        kill_group(self._process.pid, sig)


class LocalRunner:
    """Runs agents as local processes (stdin /dev/null, stderr into stdout)."""

    async def start(self, argv: Sequence[str], cwd: Path, env: Mapping[str, str]) -> LocalAgent:
        process = await anyio.open_process(
            list(argv),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return LocalAgent(process)


def kill_group(pid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to process group ``pid``; a group that is gone is not an error."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def is_our_agent(pid: int, ticket: str) -> bool:
    """Is local ``pid`` still the agent we started for ``ticket``? (pids are reused after a
    reboot; checked in ``/proc/<pid>/environ`` before a crashed daemon's agent is killed)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"ORCH_TICKET_ID={ticket}".encode() in environ.split(b"\0")
