"""Process containment: nothing an agent starts outlives its attempt.

An agent runs in its own session and process group, which a stop or the end of
the attempt SIGKILLs. A descendant that calls ``setsid`` (a daemonising
``nohup ... &``, a double fork) leaves that group. Three things catch it:

* the daemon is a *child subreaper* (``prctl(PR_SET_CHILD_SUBREAPER)``, see
  prctl(2)), so an orphaned descendant is re-parented to the daemon instead of
  to init, where the daemon can see it and reap it;
* every attempt's environment carries a unique ``ORCH_RUN_ID``, inherited by
  everything it starts (unless a process clears its environment);
* at the end of an attempt, :func:`end_attempt_processes` SIGKILLs every
  process of the daemon's uid that is in the attempt's process group or
  session, or carries its ``ORCH_RUN_ID``, and every child adopted by the
  daemon (a session other than the daemon's) that belongs to no attempt
  still running; then it reaps the adopted ones.

Linux only (``/proc``, prctl); elsewhere the process-group kill is all there is.
docs/security.md lists what this does not cover.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import signal
from dataclasses import dataclass

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36
#: Environment variable naming an attempt's processes.
RUN_ID_VAR = "ORCH_RUN_ID"


def become_subreaper() -> bool:
    """Make this process a child subreaper; False where prctl is unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_CHILD_SUBREAPER) failed: %s", os.strerror(ctypes.get_errno()))
            return False
    except (OSError, AttributeError) as exc:
        log.warning("cannot become a child subreaper: %s", exc)
        return False
    return True


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


def end_attempt_processes(group: int, run_id: str, live_run_ids: set[str]) -> list[int]:
    """SIGKILL what is left of one attempt; return the pids killed.

    Args:
        group: the agent's pid, which is its process group and session id.
        run_id: the attempt's ``ORCH_RUN_ID``.
        live_run_ids: ``ORCH_RUN_ID`` of the attempts still running (their
            processes are left alone when adopted).
    """
    me = os.getpid()
    my_session = os.getsid(0)
    mark = f"{RUN_ID_VAR}={run_id}".encode()
    live_marks = {f"{RUN_ID_VAR}={r}".encode() for r in live_run_ids}
    killed = []
    for proc in _processes():
        if proc.pid == me:
            continue
        ours = proc.pgrp == group or proc.session == group or mark in proc.environ
        adopted_stray = (
            proc.ppid == me and proc.session != my_session and not (live_marks & proc.environ)
        )
        if ours or adopted_stray:
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
    """Collect an adopted child after SIGKILL so it does not stay a zombie.

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
