"""``python -m orchestrator.cihook``: the post-receive hook of repo.git (hooks/post-receive).

Git runs the hook inside every push and the pusher waits for it, so this module
imports nothing but the standard library: it starts in a few tens of
milliseconds, where ``python -m orchestrator ci hook`` (which loads msgspec and
the ticket models) takes several times as long, and every push of a worker or
of the merger paid for it (docs/performance.md, throughput). The CI job itself
(``python -m orchestrator.ci job``, :mod:`orchestrator.ci`, also stdlib-only on
its way) runs detached, off the push.

hooks/post-receive does not even start this module for a push that cannot start
CI (no agent branch and no merge queue commit, or agent branches pushed with
``-o ci=skip``); what it passes, this module decides exactly.

The rules (which refs are tested, how the job is detached) are docs/ci.md, "How
a CI run happens", steps 1-3.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

#: Merge queue commits, pushed by the daemon's merger (daemon/merger.py).
QUEUE_REFS = "refs/orchestrator/queue/"
SHA_RE = re.compile(r"^([0-9a-f]{40}|[0-9a-f]{64})$")


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
        with open(status_dir / f"{new}.log", "wb") as job_log:
            subprocess.Popen(
                [sys.executable, "-m", "orchestrator.ci", "job", str(git_dir), new, ref],
                stdin=subprocess.DEVNULL,
                stdout=job_log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # detached: survives the end of `git push`
                env=without_git_env(os.environ),
            )
        name = ref.removeprefix("refs/heads/").removeprefix("refs/orchestrator/")
        print(f"orchestrator: CI started for {name} ({new[:12]})")
    return 0


def without_git_env(env: Mapping[str, str]) -> dict[str, str]:
    """Hooks run with GIT_DIR, GIT_QUARANTINE_PATH...; they would break git in the checkout.

    The daemon's ref token (``ORCH_REF_TOKEN``, docs/security.md) is dropped too: the
    code under test was written by an agent and must not be able to move main. So is
    an agent's ``ORCH_RUN_ID``: the job belongs to the hook, and must not end with the
    attempt whose push started it (daemon/contain.py).
    """
    dropped = ("ORCH_REF_TOKEN", "ORCH_RUN_ID")
    return {k: v for k, v in env.items() if not k.startswith("GIT_") and k not in dropped}


def main() -> int:
    """Run as git's post-receive hook: lines on stdin, ``$GIT_DIR``, push options."""
    git_dir = Path(os.environ.get("GIT_DIR", ".")).resolve()
    return hook(sys.stdin, git_dir, push_options(os.environ))


if __name__ == "__main__":
    sys.exit(main())
