"""How an agent process is run: the seam between the workers and the machine.

:class:`Workers` (daemon/workers.py) prepares the worktree, builds the argv and
environment, pumps the output and commits what the agent left; *where and how*
the process runs is an :class:`AgentRunner`. Today there is one,
:class:`LocalRunner`: a child process in its own session and process group on
this machine, so a stop ends the whole tree (SIGTERM to the group, a grace
period, then SIGKILL, like watchfiles' process supervisor). The other is
:class:`orchestrator.daemon.ray_runner.RayRunner` (``runner: ray``): agents on a
Ray cluster, their code travelling through git (docs/scale-out.md). Both
implement the same two small protocols; nothing else in the daemon changes.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import anyio
from anyio.abc import Process

from orchestrator.daemon.contain import RUN_ID_VAR, AttemptGroup


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

    @property
    def node(self) -> str:
        """The Ray node id it runs on; "" on this machine."""
        ...

    @property
    def host(self) -> str:
        """The host name it runs on; "" on this machine."""
        ...

    @property
    def lost(self) -> str:
        """Why its node was lost mid-attempt ("" while it was not). A lost attempt is
        requeued without counting it, from its last WIP push."""
        ...

    @property
    def worktree_status(self) -> str | None:
        """A digest of its worktree that changes when the worktree does (a sign of life),
        for an agent whose worktree is not the local one; None: read the local worktree."""
        ...

    async def settle(self) -> None:
        """After :meth:`wait`: end whatever the agent left running (its group and what
        escaped it, daemon.contain), and bring its work into the local worktree it was
        started for (a remote agent's work is committed and pushed by its node, then
        fetched here). Never raises for a process or node that is gone."""
        ...


class AgentRunner(Protocol):
    def connect(self, agents: Sequence[str]) -> None:
        """Get ready before the first start of the workers named ``agents`` (blocking;
        run in a thread).

        Raises:
            RunnerError: the runner cannot be used (a one-line reason).
        """
        ...

    def close(self) -> None:
        """Let go of what :meth:`connect` took (at daemon exit)."""
        ...

    async def start(
        self,
        argv: Sequence[str],
        cwd: Path,
        env: Mapping[str, str],
        waiting: Callable[[str], None] | None = None,
    ) -> AgentProcess:
        """Start ``argv`` (never through a shell) in ``cwd`` with exactly ``env``.

        ``env`` carries the attempt's ``ORCH_*`` variables (docs/config.md). ``waiting``
        is called with a reason when the agent cannot start at once (no room on the
        cluster); cancelling the call abandons the start.

        Raises:
            OSError: it could not be started (FileNotFoundError: no such command).
        """
        ...

    async def recover(
        self, agent: str, ticket: str, attempt: int, pid: int | None, worktree: Path
    ) -> None:
        """After a daemon crash: end the agent of ``ticket``'s ``attempt`` on worker
        ``agent`` that outlived the old daemon (``pid``: its persisted id) and bring its
        work into ``worktree``."""
        ...


class LocalAgent:
    """A local child process leading its own session and process group."""

    def __init__(self, process: Process, run_id: str = "") -> None:
        self._process = process
        self._group = AttemptGroup(process.pid, run_id)  # read at once: the leader's start

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
        code = await self._process.wait()
        self._group.exited()
        return code

    def signal(self, sig: signal.Signals) -> None:
        self._group.signal(sig)

    node = host = lost = ""
    worktree_status = None

    async def settle(self) -> None:
        if self._process.returncode is not None:
            self._group.exited()
        await anyio.to_thread.run_sync(self._group.end)


class LocalRunner:
    """Runs agents as local processes (stdin /dev/null, stderr into stdout)."""

    def connect(self, agents: Sequence[str]) -> None:
        pass

    def close(self) -> None:
        pass

    async def start(
        self,
        argv: Sequence[str],
        cwd: Path,
        env: Mapping[str, str],
        waiting: Callable[[str], None] | None = None,
    ) -> LocalAgent:
        process = await anyio.open_process(
            list(argv),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return LocalAgent(process, env.get(RUN_ID_VAR, ""))

    async def recover(
        self, agent: str, ticket: str, attempt: int, pid: int | None, worktree: Path
    ) -> None:
        if pid and is_our_agent(pid, ticket, worktree):
            kill_group(pid, signal.SIGKILL)


def kill_group(pid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to process group ``pid``; a group that is gone is not an error.

    Only for a group whose leader is known to be alive (or checked, as by
    :func:`is_our_agent`): a group number can be reused (daemon.contain). A local agent
    is signalled through its :class:`~orchestrator.daemon.contain.AttemptGroup`."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def is_our_agent(pid: int, ticket: str, worktree: Path) -> bool:
    """Is local ``pid`` still the agent we started for ``ticket`` in ``worktree``? (pids
    are reused; checked in ``/proc/<pid>/environ`` before a crashed daemon's agent is
    killed: the ticket id alone is not enough, another project's daemon of the same user
    may run an agent for a ticket of the same name.)"""
    try:
        environ = set(Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"))
    except OSError:
        return False
    return {f"ORCH_TICKET_ID={ticket}".encode(), f"ORCH_WORKTREE={worktree}".encode()} <= environ
