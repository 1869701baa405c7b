"""A thin async wrapper over the git CLI (argv lists, never a shell).

See git(1). Every call runs ``git -c <hardened config> -C <cwd> ...`` with a
fixed identity, the daemon's ref token and no terminal prompts, and raises
:class:`shared.errors.GitError` carrying git's own stderr when ``check`` is set.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import subprocess
from pathlib import Path

import anyio

from orchestrator.shared.errors import GitError
from orchestrator.shared.fsutil import atomic_write

#: Environment every git call gets: no prompts, no pager, no user/system config
#: surprises in identity. Hooks still run (post-receive is how CI starts).
GIT_ENV = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_AUTHOR_NAME": "orchestrator",
    "GIT_AUTHOR_EMAIL": "orchestrator@localhost",
    "GIT_COMMITTER_NAME": "orchestrator",
    "GIT_COMMITTER_EMAIL": "orchestrator@localhost",
}


#: Config every daemon git call runs with, whatever an agent wrote into the shared
#: clone's config (its agents run as the same user): no fsmonitor (a command git
#: would run), no client-side hooks, no pager, no editor, no external diff or
#: credential helper, no ``ext::`` transport. Server-side hooks of repo.git
#: (update, post-receive) still run: ``-c`` settings do not reach the receiving
#: side of a local push (git's local_repo_env drops GIT_CONFIG_PARAMETERS).
HARDENED_CONFIG = (
    "core.fsmonitor=false",
    "core.hooksPath=/dev/null",
    "core.pager=cat",
    "core.editor=true",
    "core.sshCommand=false",
    "credential.helper=",
    "diff.external=",
    "protocol.ext.allow=never",
    "uploadpack.packObjectsHook=",
)
HARDENED_ARGS: tuple[str, ...] = tuple(a for kv in HARDENED_CONFIG for a in ("-c", kv))

#: Local config keys the daemon removes from the shared clone (``<home>/work``) at
#: start and after each attempt: settings that make git run a command or read
#: another file, which ``-c`` cannot neutralise in general (filter drivers,
#: includes, per-worktree config).
UNSAFE_CONFIG_RE = re.compile(
    r"^(filter\..*|diff\..*\.(command|textconv)|merge\..*\.driver|include\..*|"
    r"includeif\..*|core\.(fsmonitor|hookspath|pager|editor|sshcommand|askpass|gitproxy|"
    r"attributesfile|excludesfile|worktree)|extensions\.worktreeconfig|"
    r"credential\..*|alias\..*|sequence\.editor|gpg\..*program)$"
)

#: The daemon's ref token for this process: only the daemon (its merger and its own
#: pushes) may move main and refs/orchestrator/* in repo.git (hooks/update). Drawn
#: at each start, passed to git in ``$ORCH_REF_TOKEN``, never to agents; repo.git
#: keeps only its SHA-256 (:func:`install_ref_token`).
REF_TOKEN = secrets.token_hex(32)
REF_TOKEN_FILE = "orchestrator-ref-token.sha256"  # noqa: S105 (a file name)
REF_TOKEN_VAR = "ORCH_REF_TOKEN"  # noqa: S105 (a variable name, not a secret)


def install_ref_token(repo: Path) -> None:
    """Write this process's token hash to ``repo/orchestrator-ref-token.sha256`` (0600).

    Raises:
        OSError: repo.git is not writable.
    """
    digest = hashlib.sha256(REF_TOKEN.encode()).hexdigest()
    # A file, not a directory named "orchestrator": hooks run with repo.git as their
    # working directory, where such a directory would shadow the package.
    atomic_write(repo / REF_TOKEN_FILE, digest + "\n", mode=0o600)


def scrub_clone_config(work: Path) -> list[str]:
    """Remove :data:`UNSAFE_CONFIG_RE` keys from the clone's local config; return them.

    An agent can write the shared clone's ``.git/config`` (``core.fsmonitor``, a
    filter driver...) to run code inside the daemon's next git call; this undoes
    it. Errors reading the config are ignored (the next call reports them).
    """
    names = git_sync(work, "config", "--local", "--name-only", "--list", check=False)
    removed = sorted({n for n in names.splitlines() if UNSAFE_CONFIG_RE.match(n.lower())})
    for name in removed:
        git_sync(work, "config", "--local", "--unset-all", name, check=False)
    return removed


def git_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_ENV)
    env[REF_TOKEN_VAR] = REF_TOKEN
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
        ["git", *HARDENED_ARGS, "-C", str(cwd), *args], input=stdin, check=False, env=git_env(env)
    )


async def main_commit(repo: Path, work: Path, repo_lock: anyio.Lock) -> str:
    """main's commit as repo.git has it now (read there: no fetch, no lock).

    Its objects are normally in the work clone already (the merger built the commit
    there); only when they are not is main fetched, under ``repo_lock`` (the fetch
    updates ``refs/remotes/origin/main``, which the merger's push updates too).

    Raises:
        GitError: repo.git has no main, or the fetch failed.
    """
    main = await git(repo, "rev-parse", "refs/heads/main")
    if (await run_git(work, "cat-file", "-e", f"{main}^{{commit}}")).returncode:
        async with repo_lock:
            await git(work, "fetch", "--quiet", "origin", "main")
    return main


def git_sync(cwd: Path, *args: str, check: bool = True) -> str:
    """Blocking :func:`git`, for the CLI (init) and tests."""
    result = subprocess.run(
        ["git", *HARDENED_ARGS, "-C", str(cwd), *args],
        capture_output=True,
        check=False,
        env=git_env(),
    )
    if check and result.returncode != 0:
        raise GitError(_describe(args, result))
    return result.stdout.decode(errors="replace").strip()


def _describe(args: tuple[str, ...], result: subprocess.CompletedProcess[bytes]) -> str:
    err = (result.stderr or b"").decode(errors="replace").strip().splitlines()
    detail = err[-1] if err else f"exit status {result.returncode}"
    return f"git {' '.join(args[:3])}: {detail}"
