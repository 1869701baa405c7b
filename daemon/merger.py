"""The merger: rebase an approved branch onto main, re-check, fast-forward main.

Each ticket becomes exactly one commit on main (its branch squashed, with a
``Ticket: <id>`` trailer for people; the merge itself is recorded by the ref
``refs/orchestrator/merged/<id>``, pushed atomically with main), whose tree is
the tree CI passed on; so every
commit on main passed CI and ``git bisect`` never lands on a failed attempt.

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

from orchestrator.daemon.core import Merge, MergeOutcome, MergeResult
from orchestrator.daemon.git import git, run_git
from orchestrator.shared.config import Home
from orchestrator.shared.errors import GitError


def merged_ref(ticket: str) -> str:
    """The durable record that ``ticket`` was merged: a ref in repo.git."""
    return f"refs/orchestrator/merged/{ticket}"


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
            await git(
                self.home.work,
                "worktree",
                "add",
                "--detach",
                "--force",
                str(self.worktree),
                "origin/main",
            )

    async def merge(self, effect: Merge) -> MergeResult:
        """Merge a ticket's branch into main; never raises (errors become ``error``).

        main is fast-forwarded to one new commit whose tree is exactly the tree
        CI passed on (``effect.verified_sha``) and whose parent is main; anything
        else (main moved, a restart mid-merge) is first pushed for CI again.
        """
        async with self._one_at_a_time:
            try:
                return await self._merge(effect)
            except GitError as exc:
                return MergeResult(effect.ticket, MergeOutcome.ERROR, time.time(), text=str(exc))

    async def _merged_before(self, ticket: str, main: str) -> str:
        """The commit that merged ``ticket`` into main, or "".

        Decided by the merge record ``refs/orchestrator/merged/<ticket>`` in repo.git
        (written by the merger alone, in the same atomic push as main; hooks/update
        refuses it to anyone without the daemon's ref token), never by commit
        message text: the record must be on main and its tree must be the one its
        own commit introduced there.
        """
        ref = merged_ref(ticket)
        listed = await git(self.home.work, "ls-remote", "origin", ref, check=False)
        sha = listed.split()[0] if listed else ""
        if not sha:
            return ""
        async with self.repo_lock:
            await git(self.home.work, "fetch", "--quiet", "origin", f"+{ref}:{ref}")
        on_main = await run_git(self.home.work, "merge-base", "--is-ancestor", sha, main)
        return sha if on_main.returncode == 0 else ""

    async def _merge(self, effect: Merge) -> MergeResult:
        work, wt, branch = self.home.work, self.worktree, effect.branch
        ticket = effect.ticket
        for _ in range(PUSH_RETRIES):
            async with self.repo_lock:
                await git(work, "fetch", "--quiet", "origin", "main")
            main = await git(work, "rev-parse", "origin/main")
            done = await self._merged_before(ticket, main)
            if done:  # merged before (e.g. the daemon died right after the push)
                return MergeResult(ticket, MergeOutcome.MERGED, time.time(), sha=done)
            tip = await git(work, "rev-parse", f"refs/heads/{branch}")
            await git(wt, "checkout", "--quiet", "--detach", tip)
            rebase = await run_git(wt, "rebase", "--quiet", main)
            if rebase.returncode != 0:
                conflicted = await git(wt, "diff", "--name-only", "--diff-filter=U", check=False)
                await run_git(wt, "rebase", "--abort")
                await git(wt, "checkout", "--quiet", "--detach", main)
                text = "conflicting files: " + (", ".join(conflicted.split()) or "(unknown)")
                return MergeResult(ticket, MergeOutcome.CONFLICT, time.time(), text=text)
            rebased = await git(wt, "rev-parse", "HEAD")
            await git(wt, "checkout", "--quiet", "--detach", main)
            tree = await git(work, "rev-parse", f"{rebased}^{{tree}}")
            if tree == await git(work, "rev-parse", f"{main}^{{tree}}"):
                return MergeResult(
                    ticket,
                    MergeOutcome.ERROR,
                    time.time(),
                    text="the branch changes nothing on top of main",
                )
            verified = ""
            if effect.verified_sha:
                verified = await git(work, "rev-parse", f"{effect.verified_sha}^{{tree}}")
            if tree != verified:
                # main moved since CI ran on the branch: run CI on the rebased commit first.
                async with self.repo_lock:
                    if rebased != tip:
                        await git(work, "update-ref", f"refs/heads/{branch}", rebased, tip)
                    await git(
                        work,
                        "push",
                        "--quiet",
                        "--force",
                        "origin",
                        f"refs/heads/{branch}:refs/heads/{branch}",
                    )
                return MergeResult(ticket, MergeOutcome.RECHECK, time.time(), sha=rebased)
            squashed = await git(
                work, "commit-tree", tree, "-p", main, stdin=effect.message.encode()
            )
            async with self.repo_lock:
                # One atomic push: main and the ticket's merge record move together.
                push = await run_git(
                    work,
                    "push",
                    "--quiet",
                    "--atomic",
                    "origin",
                    f"{squashed}:refs/heads/main",
                    f"{squashed}:{merged_ref(ticket)}",
                )
            if push.returncode == 0:
                async with self.repo_lock:
                    await run_git(work, "fetch", "--quiet", "origin", "main")
                return MergeResult(ticket, MergeOutcome.MERGED, time.time(), sha=squashed)
        return MergeResult(
            ticket,
            MergeOutcome.ERROR,
            time.time(),
            text=f"main kept moving; gave up after {PUSH_RETRIES} tries",
        )
