"""A thin async wrapper over the git CLI (argv lists, never a shell).

See git(1). Every call runs ``git -C <cwd> ...`` with a fixed identity and no
terminal prompts, and raises :class:`shared.errors.GitError` carrying git's own
stderr when ``check`` is set.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import anyio

from orchestrator.shared.errors import GitError

#: Environment every git call gets: no prompts, no pager, no user/system config
#: surprises in identity. Hooks still run (post-receive is how CI starts).
GIT_ENV = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_AUTHOR_NAME": "orchestrator",
    "GIT_AUTHOR_EMAIL": "orchestrator@localhost",
    "GIT_COMMITTER_NAME": "orchestrator",
    "GIT_COMMITTER_EMAIL": "orchestrator@localhost",
}


def git_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_ENV)
    if extra:
        env.update(extra)
    return env


async def git(
    cwd: Path,
    *args: str,
    check: bool = True,
    env: dict[str, str] | None = None,
    stdin: bytes | None = None,
) -> str:
    """Run ``git -C cwd args...`` and return its stdout (stripped).

    Raises:
        GitError: exit status non-zero and ``check`` is True.
    """
    result = await run_git(cwd, *args, env=env, stdin=stdin)
    if check and result.returncode != 0:
        raise GitError(_describe(args, result))
    return result.stdout.decode(errors="replace").strip()


async def run_git(
    cwd: Path, *args: str, env: dict[str, str] | None = None, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run git and return the completed process whatever its exit status."""
    return await anyio.run_process(
        ["git", "-C", str(cwd), *args], input=stdin, check=False, env=git_env(env)
    )


def git_sync(cwd: Path, *args: str, check: bool = True) -> str:
    """Blocking :func:`git`, for the CLI (init) and tests."""
    result = subprocess.run(
        ["git", "-C", str(cwd), *args], capture_output=True, check=False, env=git_env()
    )
    if check and result.returncode != 0:
        raise GitError(_describe(args, result))
    return result.stdout.decode(errors="replace").strip()


def _describe(args: tuple[str, ...], result: subprocess.CompletedProcess[bytes]) -> str:
    err = (result.stderr or b"").decode(errors="replace").strip().splitlines()
    detail = err[-1] if err else f"exit status {result.returncode}"
    return f"git {' '.join(args[:3])}: {detail}"
