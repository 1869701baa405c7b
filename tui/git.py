"""Read-only git and file look-ups for the detail pane and the diff/log viewers.

Every function here blocks (subprocess, disk), so the TUI calls them from thread
workers. None raises: failures come back as text to show in place of the result,
because a missing branch or worktree is a normal state (merged, not started).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterable
from pathlib import Path

from orchestrator.shared.terminal import terminal_safe

GIT_TIMEOUT_S = 10.0
#: Longest tail of an agent log the viewer reads (bytes); agent logs can be huge.
MAX_LOG_BYTES = 4 << 20
#: Longest diff the viewer shows (bytes).
MAX_DIFF_BYTES = 8 << 20

#: CSI/OSC escape sequences, which agents write into their logs.
_ANSI_RE = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[@-Z\\-_])")


class GitFailed(Exception):
    """A git command failed; the message is git's first stderr line."""


def pick_git_dir(candidates: Iterable[str | Path | None]) -> Path | None:
    """The first candidate that is an existing directory (a worktree or the work clone)."""
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def _git(cwd: Path, *args: str, limit: int | None = None) -> str:
    env = {**os.environ, "GIT_PAGER": "cat", "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
    try:
        proc = subprocess.run(
            ["git", "-C", str(cwd), *args],
            capture_output=True,
            timeout=GIT_TIMEOUT_S,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise GitFailed(f"git {args[0]} took longer than {GIT_TIMEOUT_S:.0f} s") from None
    except OSError as exc:
        raise GitFailed(f"cannot run git: {exc.strerror or exc}") from None
    if proc.returncode != 0:
        lines = proc.stderr.decode(errors="replace").strip().splitlines()
        raise GitFailed(lines[0] if lines else f"git {args[0]} exited with {proc.returncode}")
    out = proc.stdout if limit is None else proc.stdout[:limit]
    return terminal_safe(out.decode(errors="replace"), multiline=True)


def _base(cwd: Path) -> str:
    """``origin/main`` in the daemon's work clone (it fetches there), else ``main``."""
    try:
        _git(cwd, "rev-parse", "--verify", "--quiet", "origin/main^{commit}")
    except GitFailed:
        return "main"
    return "origin/main"


def diff_stat(cwd: Path, branch: str, width: int = 80) -> str:
    """``git diff --stat <main>...<branch>`` as text, or why it could not be computed."""
    try:
        base = _base(cwd)
        out = _git(
            cwd,
            "diff",
            "--no-color",
            "--no-ext-diff",
            f"--stat={max(width, 40)}",
            f"{base}...{branch}",
            "--",
        )
    except GitFailed as exc:
        return f"diff unavailable: {exc}"
    return out.rstrip() or f"no changes against {base}"


def full_diff(cwd: Path, branch: str) -> str:
    """``git diff <main>...<branch>`` as text (cut at :data:`MAX_DIFF_BYTES`), or the error."""
    try:
        base = _base(cwd)
        out = _git(
            cwd,
            "diff",
            "--no-color",
            "--no-ext-diff",
            f"{base}...{branch}",
            "--",
            limit=MAX_DIFF_BYTES,
        )
    except GitFailed as exc:
        return f"diff unavailable: {exc}"
    return out or f"no changes against {base}"


def read_log_tail(path: str | Path) -> str:
    """The last :data:`MAX_LOG_BYTES` of an agent log, escape sequences removed, or the error."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - MAX_LOG_BYTES))
            data = handle.read()
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    text = strip_ansi(data.decode(errors="replace"))
    if size > MAX_LOG_BYTES:
        text = f"[… first {size - MAX_LOG_BYTES} bytes not shown …]\n" + text.split("\n", 1)[-1]
    return text or f"{path} is empty"


def strip_ansi(text: str) -> str:
    """``text`` without ANSI colour sequences, other controls escaped (shared.terminal)."""
    return terminal_safe(_ANSI_RE.sub("", text), multiline=True)
