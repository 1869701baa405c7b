"""Worktree setup before an agent starts: ``worktree.copy`` then ``worktree.setup``.

- ``worktree.copy``: repository-relative paths (files or directories, e.g. ``.env``)
  copied from the source repository (``worktree.source``, default: repo.git's
  ``remote.origin.url``, the directory ``orchestrator init --from`` cloned) into the
  worktree, over what is there. They are also written to the worktree exclude
  block (daemon.home.sync_worktree_excludes), so they are never committed.
- ``worktree.setup``: an argv list (no shell) run in the worktree, in its own
  process group, output to ``runs/<ticket>/<attempt>/setup.log``, killed after
  ``worktree.setup_timeout_s``.

A failure fails the attempt with a one-line reason naming the step; the log's
tail is the next attempt's feedback. docs/config.md#worktree-setup.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import anyio
from anyio.abc import Process

from orchestrator.daemon.contain import AttemptGroup
from orchestrator.shared.config import Home

#: Characters of the setup log kept for the reason's feedback.
TAIL_CHARS = 4000


def source_repo(home: Home) -> Path | None:
    """Where ``worktree.copy`` copies from: ``worktree.source``, else the directory
    repo.git was cloned from (``remote.origin.url`` when it is a local directory)."""
    if home.config.worktree.source:
        path = Path(home.config.worktree.source).expanduser()
        return path if path.is_absolute() else home.root / path
    proc = subprocess.run(
        ["git", f"--git-dir={home.repo}", "config", "--get", "remote.origin.url"],
        capture_output=True,
        text=True,
        check=False,
    )
    url = proc.stdout.strip()
    if proc.returncode != 0 or not url:
        return None
    path = Path(url.removeprefix("file://"))
    return path if path.is_absolute() and path.is_dir() else None


def copy_files(home: Home, worktree: Path) -> str:
    """Copy ``worktree.copy`` into ``worktree``; return why it failed, or ""."""
    paths = home.config.worktree.copy
    if not paths:
        return ""
    source = source_repo(home)
    if source is None:
        return (
            "worktree.copy: the source repository is unknown (repo.git has no local "
            "remote.origin.url); set worktree.source"
        )
    for rel in paths:
        src, dst = source / rel, worktree / rel
        try:
            if src.is_dir():
                shutil.copytree(src, dst, dirs_exist_ok=True, symlinks=True)
            elif src.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
            else:
                return f"worktree.copy: {src} does not exist"
        except OSError as exc:
            return f"worktree.copy: cannot copy {src}: {exc.strerror or exc}"
    return ""


async def run_setup(
    home: Home,
    worktree: Path,
    log_path: Path,
    env: dict[str, str],
    started: Callable[[Process], None],
) -> tuple[str, str]:
    """Run ``worktree.setup`` in ``worktree``; return (why it failed or "", log tail).

    ``started`` receives the process (so a stop can end it like an agent).
    """
    argv = home.config.worktree.setup
    if not argv:
        return "", ""
    timeout_s = home.config.worktree.setup_timeout_s
    name = " ".join(argv)[:200]
    with open(log_path, "ab") as out:
        out.write(f"$ {' '.join(argv)}\n".encode())
        try:
            process = await anyio.open_process(
                argv,
                cwd=worktree,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            reason = (
                f"worktree.setup `{name}`: command not found"
                if isinstance(exc, FileNotFoundError)
                else f"worktree.setup `{name}` cannot start: {exc.strerror or exc}"
            )
            out.write(f"{reason}\n".encode())
            return reason, reason
        group = AttemptGroup(process.pid)
        started(process)
        code: int | None = None
        with anyio.move_on_after(timeout_s):
            code = await process.wait()
            group.exited()
        await anyio.to_thread.run_sync(group.end)  # what the setup left running ends too
        if code is None:
            code = await process.wait()
            reason = f"worktree.setup `{name}` timed out after {timeout_s} s"
        elif code != 0:
            reason = f"worktree.setup `{name}` exited with code {code}"
        else:
            reason = ""
        out.write(f"[orchestrator] setup exited with code {code}\n".encode())
    return reason, (await anyio.to_thread.run_sync(tail, log_path)) if reason else ""


def tail(path: Path, chars: int = TAIL_CHARS) -> str:
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - chars * 4))
            return f.read().decode(errors="replace")[-chars:]
    except OSError:
        return ""
