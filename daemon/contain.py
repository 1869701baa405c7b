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

Process numbers are reused (``kernel.pid_max`` is often 32768, and a busy
machine goes through them in minutes), so a group is never signalled by its
number alone. An :class:`AttemptGroup` remembers its leader's start time
(``/proc/<pid>/stat`` field 22, read at spawn) and when the leader's exit was
seen; the group number ``P`` is taken to be the attempt's only while its leader
(``P`` with that start time, alive or a zombie) still exists, or, once the leader
is reaped, while a member of group or session ``P`` started before that exit or
carries the run id. The kernel frees the number ``P`` only when no process has
it as pid, group or session, so at any instant the members of group ``P`` are
either all the attempt's or all a stranger's (a new process that got ``P``).
Each process is then killed through a pidfd (pidfd_open(2), pidfd_send_signal(2))
opened after its start time was read again, so a pid that is reused between
the scan of ``/proc`` and the signal is never hit.

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
    start: int = 0
    """Start time in clock ticks after boot (proc(5), ``/proc/<pid>/stat`` field 22)."""


def _stat_fields(stat: bytes) -> list[bytes]:
    """The fields of ``/proc/<pid>/stat`` from field 3 (state) on: comm may contain
    spaces and parentheses, so they start after the last ')'."""
    return stat[stat.rfind(b")") + 2 :].split()


def proc_start_ticks(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks after boot; None when there is no
    such process (zombies included: a zombie still holds its pid)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = _stat_fields(f.read())
    except OSError:
        return None
    return int(fields[19]) if len(fields) > 19 else None


def now_ticks() -> int:
    """The time now on the scale of :func:`proc_start_ticks` (``/proc/uptime``)."""
    with open("/proc/uptime", "rb") as f:
        uptime_s = float(f.read().split()[0])
    return int(uptime_s * os.sysconf("SC_CLK_TCK")) + 1


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
        fields = _stat_fields(stat)
        if len(fields) < 20 or fields[0] == b"Z":
            continue
        out.append(
            ProcInfo(
                pid,
                int(fields[1]),
                int(fields[2]),
                int(fields[3]),
                frozenset(environ.split(b"\0")),
                int(fields[19]),
            )
        )
    return out


def _kill(proc: ProcInfo) -> bool:
    """SIGKILL ``proc`` through a pidfd, only if the pid still names the process that
    was scanned (same start time); False when it is gone or another process."""
    try:
        fd = os.pidfd_open(proc.pid)
    except OSError:
        return False
    try:
        if proc_start_ticks(proc.pid) != proc.start:
            return False  # exited, and the pid already names another process
        signal.pidfd_send_signal(fd, signal.SIGKILL)
        return True
    except (ProcessLookupError, PermissionError):
        return False
    finally:
        os.close(fd)


def _group_is_ours(
    group: int, members: list[ProcInfo], mark: bytes, leader_start: int | None, exited_at: int
) -> bool:
    """Whether the processes in group or session ``group`` belong to the attempt whose
    leader was ``group`` started at ``leader_start`` (None: not known, assumed ours)
    and whose exit was seen at ``exited_at`` (ticks; 0: not yet)."""
    if leader_start is None:
        return True
    current = proc_start_ticks(group)
    if current is not None:
        # The number names a live process (or a zombie): ours only if it is our leader.
        return current == leader_start
    # The leader is gone. While any process of ours is in the group or session, the
    # kernel cannot give the number to a new process: one member that is provably
    # ours (started before the leader's exit was seen, or carrying the run id) makes
    # them all ours.
    return any(mark in p.environ or (exited_at and p.start <= exited_at) for p in members)


def end_attempt_processes(
    group: int, run_id: str, leader_start: int | None = None, exited_at: int = 0
) -> list[int]:
    """SIGKILL what is left of one attempt; return the pids killed.

    Args:
        group: the agent's pid, which is its process group and session id (-1: none,
            only the run id is looked for).
        run_id: the attempt's ``ORCH_RUN_ID``.
        leader_start: the agent's start time (:func:`proc_start_ticks` at spawn); with
            it, a group whose number was reused by another process is left alone (see
            the module docstring). None: the group is not checked.
        exited_at: when the agent's exit was seen (:func:`now_ticks`), 0 if not yet.
    """
    me = os.getpid()
    mark = f"{RUN_ID_VAR}={run_id}".encode() if run_id else b"\0"  # b"\0": no run id
    procs = [p for p in _processes() if p.pid != me]
    members = [p for p in procs if group > 0 and group in (p.pgrp, p.session)]
    targets = [p for p in procs if mark in p.environ]
    if members and _group_is_ours(group, members, mark, leader_start, exited_at):
        targets += [p for p in members if mark not in p.environ]
    elif members:
        log.warning(
            "process group %d now belongs to other processes (%s; its number was reused): "
            "not signalled",
            group,
            ", ".join(str(p.pid) for p in members[:5]),
        )
    killed = []
    for proc in targets:
        if not _kill(proc):
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


class AttemptGroup:
    """The process group and session an agent (or reviewer, or setup command) leads,
    with what it takes to signal it safely after its pid may have been reused.

    Create it right after the spawn (it reads the leader's start time then); call
    :meth:`exited` once the leader's exit is seen.
    """

    def __init__(self, pid: int, run_id: str = "") -> None:
        self.pid = pid
        self.run_id = run_id
        start = proc_start_ticks(pid)
        #: The leader's start time; -1 when it was gone (and reaped) before it was read,
        #: so the group number is never trusted.
        self.leader_start = start if start is not None else -1
        self.exited_at = 0

    def exited(self) -> None:
        """Note that the leader's exit has been seen (the first call counts)."""
        if not self.exited_at:
            self.exited_at = now_ticks()

    def signal(self, sig: signal.Signals) -> bool:
        """Send ``sig`` to the whole group while its leader still exists (alive or a
        zombie: either way the number is still its own); once the leader is reaped,
        nothing (the number may name another process's group: :meth:`end` finds what
        is left). Never raises; True when it was sent."""
        if proc_start_ticks(self.pid) != self.leader_start:
            return False
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def end(self) -> list[int]:
        """SIGKILL the group and what carries the run id (blocking: reads /proc; run it
        in a thread). Returns the pids killed."""
        self.signal(signal.SIGKILL)
        return end_attempt_processes(self.pid, self.run_id, self.leader_start, self.exited_at)
