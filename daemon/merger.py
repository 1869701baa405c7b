"""The merger: rebase an approved branch onto main, re-check, fast-forward main.

Runs in its own worktree ``<home>/worktrees/merge``. main in repo.git is only
ever updated by a plain (non-forced) push, and repo.git's
``update`` hook (hooks/update) refuses anything but a fast-forward of main. A rebase that
conflicts is aborted; nothing reaches main. Running a merge twice is safe: a
branch already contained in main reports ``merged`` without a new commit.
"""

from __future__ import annotations

import time
from pathlib import Path

import anyio

from daemon.core import MergeResult
from daemon.git import git, run_git
from shared.config import Home
from shared.errors import GitError

#: Attempts when main moves between our rebase and our push.
PUSH_RETRIES = 3


class Merger:
    def __init__(self, home: Home, repo_lock: anyio.Lock) -> None:
        self.home = home
        self.repo_lock = repo_lock
        self._one_at_a_time = anyio.Lock()

    @property
    def worktree(self) -> Path:
        return self.home.worktrees / "merge"

    async def ensure_worktree(self) -> None:
        if not (self.worktree / ".git").exists():
            await git(self.home.work, "worktree", "add", "--detach", "--force",
                      str(self.worktree), "origin/main")

    async def merge(self, ticket: str, branch: str) -> MergeResult:
        """Merge ``branch`` into main; never raises (errors become an ``error`` result)."""
        async with self._one_at_a_time:
            try:
                return await self._merge(ticket, branch)
            except GitError as exc:
                return MergeResult(ticket, "error", time.time(), text=str(exc))

    async def _merge(self, ticket: str, branch: str) -> MergeResult:
        work, wt = self.home.work, self.worktree
        for _ in range(PUSH_RETRIES):
            async with self.repo_lock:
                await git(work, "fetch", "--quiet", "origin", "main")
            main = await git(work, "rev-parse", "origin/main")
            tip = await git(work, "rev-parse", f"refs/heads/{branch}")
            if (await run_git(work, "merge-base", "--is-ancestor", tip, main)).returncode == 0:
                return MergeResult(ticket, "merged", time.time(), sha=main)
            await git(wt, "checkout", "--quiet", "--detach", tip)
            rebase = await run_git(wt, "rebase", "--quiet", main)
            if rebase.returncode != 0:
                conflicted = await git(wt, "diff", "--name-only", "--diff-filter=U", check=False)
                await run_git(wt, "rebase", "--abort")
                await git(wt, "checkout", "--quiet", "--detach", main)
                text = "conflicting files: " + (", ".join(conflicted.split()) or "(unknown)")
                return MergeResult(ticket, "conflict", time.time(), text=text)
            rebased = await git(wt, "rev-parse", "HEAD")
            await git(wt, "checkout", "--quiet", "--detach", main)
            if rebased == main:
                return MergeResult(ticket, "merged", time.time(), sha=main)
            if rebased != tip:
                # main moved since CI ran on the branch: run CI on the rebased commit first.
                async with self.repo_lock:
                    await git(work, "update-ref", f"refs/heads/{branch}", rebased, tip)
                    await git(work, "push", "--quiet", "--force", "origin",
                              f"refs/heads/{branch}:refs/heads/{branch}")
                return MergeResult(ticket, "recheck", time.time(), sha=rebased)
            async with self.repo_lock:
                push = await run_git(work, "push", "--quiet", "origin",
                                     f"{rebased}:refs/heads/main")
            if push.returncode == 0:
                async with self.repo_lock:
                    await run_git(work, "fetch", "--quiet", "origin", "main")
                return MergeResult(ticket, "merged", time.time(), sha=rebased)
        return MergeResult(ticket, "error", time.time(),
                           text=f"main kept moving; gave up after {PUSH_RETRIES} tries")
