"""``python -m orchestrator.cihook``: the post-receive hook of repo.git (hooks/post-receive).

Git runs the hook inside every push and the pusher waits for it, so this module
imports nothing but the standard library: it starts in a few tens of
milliseconds, where ``python -m orchestrator ci hook`` (which loads msgspec and
the ticket models) takes several times as long, and every push of a worker or
of the merger paid for it (docs/performance.md, throughput).

The CI job (:func:`orchestrator.ci.job`) runs in this same interpreter: for each
tested ref the hook forks, and the child detaches (new session, stdin
``/dev/null``, stdout and stderr to ``ci-status/<sha>.log``, no other descriptor
of git's left open, the environment without ``GIT_*``) and runs the job, so
``git push`` returns at once and no second interpreter is started. Only when
this process itself was started with ``ORCH_REF_TOKEN`` or ``ORCH_RUN_ID`` (a
copy of hooks/post-receive from before it unset them) is the job started as
``python -m orchestrator.ci job`` instead: a forked child keeps its parent's
initial environment in ``/proc/<pid>/environ``, where the code under test could
read the token and where daemon/contain.py looks for the run id.

hooks/post-receive does not even start this module for a push that cannot start
CI (no agent branch and no merge queue commit, or agent branches pushed with
``-o ci=skip``); what it passes, this module decides exactly.

The rules (which refs are tested, how the job is detached) are docs/ci.md, "How
a CI run happens", steps 1-3.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NoReturn

#: Merge queue commits, pushed by the daemon's merger (daemon/merger.py).
QUEUE_REFS = "refs/orchestrator/queue/"
SHA_RE = re.compile(r"^([0-9a-f]{40}|[0-9a-f]{64})$")
#: Never handed to a CI job (:func:`without_git_env`).
DROPPED_VARS = ("ORCH_REF_TOKEN", "ORCH_RUN_ID")


def push_options(env: Mapping[str, str]) -> list[str]:
    """The ``git push -o`` options as git hands them to hooks (githooks(5))."""
    try:
        count = int(env.get("GIT_PUSH_OPTION_COUNT", "0"))
    except ValueError:
        return []
    return [env.get(f"GIT_PUSH_OPTION_{i}", "") for i in range(count)]


def hook(lines: Iterable[str], git_dir: Path, push_options: Iterable[str] = ()) -> int:
    """post-receive: start one detached CI job per pushed agent branch or merge queue
    commit; returns 0.

    ``lines`` are git's ``<old> <new> <ref>`` lines; ``push_options`` the push's
    ``-o`` options (``GIT_PUSH_OPTION_<i>``). Tested: ``refs/heads/agent-*`` unless
    an option is ``ci=skip`` (the daemon's push under auto approval, whose merge
    queue run is its CI), and ``refs/orchestrator/queue/*``. Other refs, deletions
    and malformed lines are skipped. Ref names are only ever passed as arguments,
    never as code.
    """
    skip_branches = "ci=skip" in push_options
    status_dir = git_dir / "ci-status"
    for line in lines:
        parts = line.split()
        if len(parts) != 3:
            continue
        _old, new, ref = parts
        branch = ref.startswith("refs/heads/agent-") and not skip_branches
        if not (branch or ref.startswith(QUEUE_REFS)) or not SHA_RE.match(new):
            continue
        if set(new) == {"0"}:
            continue  # a branch deletion
        status_dir.mkdir(parents=True, exist_ok=True)
        name = ref.removeprefix("refs/heads/").removeprefix("refs/orchestrator/")
        if start_job(git_dir, new, ref, status_dir / f"{new}.log"):
            print(f"orchestrator: CI started for {name} ({new[:12]})")
    return 0


def without_git_env(env: Mapping[str, str]) -> dict[str, str]:
    """Hooks run with GIT_DIR, GIT_QUARANTINE_PATH...; they would break git in the checkout.

    The daemon's ref token (``ORCH_REF_TOKEN``, docs/security.md) is dropped too: the
    code under test was written by an agent and must not be able to move main. So is
    an agent's ``ORCH_RUN_ID``: the job belongs to the hook, and must not end with the
    attempt whose push started it (daemon/contain.py).
    """
    return {k: v for k, v in env.items() if not k.startswith("GIT_") and k not in DROPPED_VARS}


def start_job(git_dir: Path, sha: str, ref: str, log_path: Path) -> bool:
    """Start the detached CI job for ``sha`` (pushed as ``ref``), logging to ``log_path``.

    Forks: the child detaches and runs :func:`orchestrator.ci.job` in this
    interpreter (:func:`_run_forked`), the parent returns at once. Started as
    ``python -m orchestrator.ci job`` instead when this process's own environment
    holds one of :data:`DROPPED_VARS` (see the module docstring).

    Returns:
        True when the job was started; False when the fork failed (the reason is on
        stderr, which the pusher sees, and in the log).

    Raises:
        OSError: ``log_path`` cannot be created.
    """
    if any(var in os.environ for var in DROPPED_VARS):
        return _exec_job(git_dir, sha, ref, log_path)
    sys.stdout.flush()  # or the child would write the parent's pending lines again
    sys.stderr.flush()
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    try:
        pid = os.fork()
    except OSError as exc:
        message = f"orchestrator: CI not started for {ref} ({sha[:12]}): cannot fork: {exc}"
        print(message, file=sys.stderr)
        os.write(log_fd, f"{message}\n".encode())
        os.close(log_fd)
        return False
    if pid == 0:
        _run_forked(log_fd, git_dir, sha, ref)
    os.close(log_fd)
    return True


def _run_forked(log_fd: int, git_dir: Path, sha: str, ref: str) -> NoReturn:
    """The forked child: detach as ``subprocess.Popen(start_new_session=True)`` with
    stdin ``/dev/null`` and stdout/stderr to ``log_fd`` would, run the job, and leave
    with ``os._exit``: nothing, not even an exception, returns into the hook's code."""
    code = 1
    try:
        os.setsid()  # no SIGHUP when the push's session ends
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # git waits for EOF on its pipes
        clean = without_git_env(os.environ)
        os.environ.clear()
        os.environ.update(clean)
        from orchestrator.ci import job

        code = job(git_dir, sha, ref)
    except BaseException:  # logged to the job log; the child must never return
        import traceback

        traceback.print_exc()  # to the job log
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _exec_job(git_dir: Path, sha: str, ref: str, log_path: Path) -> bool:
    """``python -m orchestrator.ci job GIT_DIR SHA REF`` in a new session, environment
    cleaned by :func:`without_git_env` (the way before the job ran in the hook's
    interpreter)."""
    import subprocess

    with open(log_path, "wb") as job_log:
        try:
            subprocess.Popen(
                [sys.executable, "-m", "orchestrator.ci", "job", str(git_dir), sha, ref],
                stdin=subprocess.DEVNULL,
                stdout=job_log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # detached: survives the end of `git push`
                env=without_git_env(os.environ),
            )
        except OSError as exc:
            message = f"orchestrator: CI not started for {ref} ({sha[:12]}): {exc}"
            print(message, file=sys.stderr)
            job_log.write(f"{message}\n".encode())
            return False
    return True


def main() -> int:
    """Run as git's post-receive hook: lines on stdin, ``$GIT_DIR``, push options."""
    git_dir = Path(os.environ.get("GIT_DIR", ".")).resolve()
    return hook(sys.stdin, git_dir, push_options(os.environ))


if __name__ == "__main__":
    sys.exit(main())
