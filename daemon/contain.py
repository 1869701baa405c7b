"""Process containment: nothing an agent starts outlives its attempt.

An agent runs in its own session and process group, which a stop or the end of
the attempt SIGKILLs. A descendant that calls ``setsid`` (a daemonising
``nohup ... &``, a double fork) leaves that group; what still finds it is its
environment: every attempt's environment carries a unique ``ORCH_RUN_ID``,
inherited by everything the agent starts. At the end of an attempt,
:func:`end_attempt_processes` SIGKILLs every process of the daemon's uid that is
in the attempt's process group or session or carries its ``ORCH_RUN_ID``.

The daemon is deliberately *not* a child subreaper (prctl(2),
``PR_SET_CHILD_SUBREAPER``): CI jobs are started detached by repo.git's
post-receive hook from the daemon's own pushes, so they would be re-parented to
the daemon, where they must neither be killed as strays nor left as zombies
(asyncio reaps only the children it started). The post-receive hook (orchestrator/cihook.py) drops
``ORCH_RUN_ID`` from a CI job's environment for the same reason: a CI job
started by an agent's own push belongs to the hook, not to the attempt.

Linux only (``/proc``); elsewhere the process-group kill is all there is.
docs/security.md lists what this does not cover (a process that both leaves
the session and clears its environment).
"""

from __future__ import annotations

import logging
import os
import select
import signal
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: Environment variable naming an attempt's processes.
RUN_ID_VAR = "ORCH_RUN_ID"


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    pgrp: int
    session: int
    environ: frozenset[bytes]


def _processes() -> list[ProcInfo]:
    """Processes of our uid, from /proc (vanishing ones skipped)."""
    uid = os.getuid()
    out: list[ProcInfo] = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return out
    for name in names:
        if not name.isdigit():
            continue
        pid = int(name)
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read(1 << 20)
        except OSError:
            continue
        # comm may contain spaces and parentheses: the fields start after the last ')'.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) < 4 or fields[0] == b"Z":
            continue
        out.append(
            ProcInfo(
                pid, int(fields[1]), int(fields[2]), int(fields[3]), frozenset(environ.split(b"\0"))
            )
        )
    return out


def end_attempt_processes(group: int, run_id: str) -> list[int]:
    """SIGKILL what is left of one attempt; return the pids killed.

    Args:
        group: the agent's pid, which is its process group and session id.
        run_id: the attempt's ``ORCH_RUN_ID``.
    """
    me = os.getpid()
    mark = f"{RUN_ID_VAR}={run_id}".encode()
    killed = []
    for proc in _processes():
        if proc.pid == me:
            continue
        if proc.pgrp == group or proc.session == group or mark in proc.environ:
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                continue
            killed.append(proc.pid)
            if proc.ppid == me:
                _reap(proc.pid)
    if killed:
        log.info("ended %d leftover process(es) of run %s: %s", len(killed), run_id, killed)
    return killed


def _reap(pid: int, timeout_s: float = 2.0) -> None:
    """Collect a direct child after SIGKILL so it does not stay a zombie.

    Waits on a pidfd (pidfd_open(2)) for its exit, at most ``timeout_s``.
    """
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        fd = None  # gone already (or no pidfd): waitpid below collects or fails
    if fd is not None:
        try:
            select.select([fd], [], [], timeout_s)
        finally:
            os.close(fd)
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # already reaped (or not ours)
