"""The merger: builds merge queue commits and fast-forwards main to them.

Each ticket becomes exactly one commit on main: its *net change* (the diff
from the merge base of its branch and main to its branch tip) applied on top
of main and the merge queue entries ahead of it, with a ``Ticket: <id>``
trailer. Because only the net change is applied, commits of earlier attempts
that a later attempt reverted can never conflict. The core decides what to
stack on what (docs/scheduling.md, "The merge queue"); this module only does
git:

- :meth:`Merger.stack` answers a :class:`Stack` effect: a 3-way merge of the
  parent commit and the branch squashed onto its merge base (``git merge-tree
  --write-tree``, no worktree needed), ``git commit-tree`` on the parent, and a
  push to ``refs/orchestrator/queue/<ticket>`` so that repo.git's post-receive
  hook runs the real CI on exactly that tree (skipped when the tree is the one
  CI already passed on, ``verified_sha``).
- :meth:`Merger.fast_forward` answers a :class:`FastForward`: one atomic push
  of ``<sha>:refs/heads/main`` and ``<sha>:refs/orchestrator/merged/<ticket>``
  (with a batch, one such record for each of its entries, at its own commit).
  The second ref is the merger's record of the merge: after a crash, a ticket
  whose record is in main is known to be merged (never inferred from commit
  messages), so no ticket is merged twice. A record counts only when its tree is
  the tree CI passed on (the fast-forwarded commit; after a restart, a commit with
  a passing ``ci-status/<sha>.json`` or the branch commit CI passed on; for an
  earlier entry of a batch, whose own tree CI never saw, a commit that is exactly
  its ticket's change on its parent with a CI pass on main at most ``MAX_BATCH``
  commits later): otherwise the merge is refused with a one-line reason naming
  both trees.

main in repo.git is only ever updated by a push leased on the parent the
entry was built on (``--force-with-lease=refs/heads/main:<parent>``: it moves
only if main is still there), and repo.git's ``update`` hook (hooks/update)
refuses anything but a fast-forward. Each step runs as few git processes as it
can: the merger's throughput bounds the merge queue's (docs/performance.md).
Neither method raises: git failures become ``error`` results.
"""

from __future__ import annotations

import subprocess
import time

import anyio
import msgspec

from orchestrator.daemon.ci import read_status
from orchestrator.daemon.core import (
    FastForward,
    MergeOutcome,
    MergeResult,
    Stack,
    Stacked,
    StackOutcome,
)
from orchestrator.daemon.git import git, main_commit, run_git
from orchestrator.shared.config import Home
from orchestrator.shared.errors import GitError
from orchestrator.shared.models import CIVerdict
from orchestrator.shared.saferead import FileRefused

#: Where the merger records each merged ticket (in repo.git), and where queue commits go.
MERGED_REF = "refs/orchestrator/merged/"
QUEUE_REF = "refs/orchestrator/queue/"
#: The largest ``merge.batch`` (docs/config.md): how far after a batch entry's commit
#: the commit CI passed on can be.
MAX_BATCH = 32


class Merger:
    def __init__(self, home: Home, repo_lock: anyio.Lock) -> None:
        self.home = home
        self.repo_lock = repo_lock

    async def _main(self) -> str:
        return await main_commit(self.home.repo, self.home.work, self.repo_lock)

    async def _recorded(self, ticket: str, main: str) -> str:
        """The commit recorded as ``ticket``'s merge if main contains it, else ""."""
        repo = self.home.repo
        found = await run_git(repo, "rev-parse", "--verify", "--quiet", MERGED_REF + ticket)
        sha = found.stdout.decode().strip() if found.returncode == 0 else ""
        if not sha:
            return ""
        inside = await run_git(repo, "merge-base", "--is-ancestor", sha, main)
        return sha if inside.returncode == 0 else ""

    async def _tree_mismatch(self, ticket: str, recorded: str, passed: list[str]) -> str:
        """Why the recorded merge ``recorded`` does not count: "" when its tree is the
        tree of one of ``passed`` (commits CI passed on for this ticket), else one
        line naming both trees. A record on main proves where main went, the tree
        that what went there is what CI tested."""
        repo = self.home.repo
        tree = await git(repo, "rev-parse", f"{recorded}^{{tree}}")
        trees = [await git(repo, "rev-parse", f"{sha}^{{tree}}") for sha in passed if sha]
        if tree in trees:
            return ""
        tested = ", ".join(t[:10] for t in trees) or "none found"
        return (
            f"{MERGED_REF}{ticket} is on main at {recorded[:10]} but its tree {tree[:10]} "
            f"is not the tree CI passed on ({tested}); not counted as merged"
        )

    async def _passed(self, sha: str) -> bool:
        """Whether ``ci-status/<sha>.json`` says CI passed on ``sha``."""
        path = self.home.ci_status_dir / f"{sha}.json"
        try:
            status = await anyio.to_thread.run_sync(read_status, path)
        except (OSError, FileRefused, msgspec.DecodeError):
            return False
        return status.sha == sha and status.status == CIVerdict.PASS

    async def stack(self, effect: Stack) -> Stacked:
        """Build (and push for CI) the queue commit of ``effect.ticket``; never raises."""
        try:
            return await self._stack(effect)
        except GitError as exc:
            return Stacked(
                effect.ticket, effect.gen, StackOutcome.ERROR, time.time(), text=str(exc)
            )

    async def _stack(self, effect: Stack) -> Stacked:
        work, ticket = self.home.work, effect.ticket

        def result(outcome: StackOutcome, **kw: object) -> Stacked:
            return Stacked(ticket, effect.gen, outcome, time.time(), **kw)  # type: ignore[arg-type]

        parent = effect.parent
        # Merged before the daemon died? Asked for the head of the queue, and for every
        # entry stacked before (``reuse``): a restart orders the queue afresh, so an entry
        # main was fast-forwarded to just before a crash can come back behind another.
        # Any other entry behind the head cannot have been merged: main moves through
        # the queue in order.
        if not parent or effect.reuse:
            main = await self._main()
            recorded = await self._recorded(ticket, main)
            if recorded:
                passed = [recorded if await self._passed(recorded) else "", effect.verified_sha]
                mismatch = await self._tree_mismatch(ticket, recorded, passed)
                if mismatch and not await self._covered_in_batch(effect.branch, recorded, main):
                    return result(StackOutcome.ERROR, text=mismatch)
                return result(StackOutcome.MERGED, sha=recorded)
            parent = parent or main
        # The parent descends from main by queue commits only, which no branch contains,
        # so its merge base with the branch is the branch's merge base with main.
        tip, parent_tree = (
            await git(work, "rev-parse", f"refs/heads/{effect.branch}", f"{parent}^{{tree}}")
        ).split()
        tree, conflict = await self._net_tree(tip, parent)
        if conflict:
            return result(StackOutcome.CONFLICT, text=conflict)
        if tree == parent_tree:
            return result(StackOutcome.EMPTY, parent=parent)
        sha = await self._reused(effect.reuse, parent, tree)
        if not sha:
            sha = await git(work, "commit-tree", tree, "-p", parent, stdin=effect.message.encode())
        verified = bool(effect.verified_sha) and tree == await git(
            work, "rev-parse", f"{effect.verified_sha}^{{tree}}"
        )
        if effect.test and not verified:  # updates no ref of the work clone: no lock needed
            # A queue ref already at this commit (reused) starts nothing: CI ran or runs
            # on it, and its status file answers (read by the daemon after this). If no
            # CI job ever started for it (no log: the daemon died inside the push), the
            # ref is deleted first, so the push below starts one.
            status = self.home.ci_status_dir / sha
            if sha == effect.reuse and not status.with_suffix(".log").exists():
                await run_git(work, "push", "--quiet", "origin", f":{QUEUE_REF}{ticket}")
            await git(work, "push", "--quiet", "--force", "origin", f"{sha}:{QUEUE_REF}{ticket}")
        return result(
            StackOutcome.STACKED, sha=sha, parent=parent, verified=verified, test=effect.test
        )

    async def _net_tree(self, tip: str, parent: str) -> tuple[str, str]:
        """The tree of the net change of the branch at ``tip`` (from its merge base with
        ``parent``) applied onto ``parent``, and ""; or "" and the conflicting files (one
        line) when it does not apply.

        Raises:
            GitError: git failed.
        """
        work = self.home.work
        base = await git(work, "merge-base", tip, parent)
        # The net change as one commit on the merge base; merging it into the parent is
        # a 3-way merge with that base, i.e. the net change applied onto the parent.
        net = await git(work, "commit-tree", f"{tip}^{{tree}}", "-p", base, stdin=b"net change\n")
        merged = await run_git(
            work, "merge-tree", "--write-tree", "--name-only", "--no-messages", parent, net
        )
        lines = merged.stdout.decode(errors="replace").splitlines()
        if merged.returncode == 1:
            files = ", ".join(line for line in lines[1:] if line) or "(unknown)"
            return "", f"conflicting files: {files}"
        if merged.returncode != 0 or not lines:
            raise GitError(f"git merge-tree failed: {merged.stderr.decode(errors='replace')}")
        return lines[0], ""

    async def _covered_in_batch(self, branch: str, recorded: str, main: str) -> bool:
        """Whether the record ``recorded`` (on ``main``) of an earlier entry of a batch
        counts although CI never ran on its own tree (``merge.batch``): its commit is
        exactly the ticket's net change (``branch``) applied on its parent, as the merge
        queue builds it, and one of the next ``MAX_BATCH`` commits of main has a passing
        CI status (the batch's last commit, whose tree holds it). A record planted at
        another commit of main fails the first test."""
        work = self.home.work
        found = await run_git(work, "rev-parse", "--verify", "--quiet", f"{recorded}^1")
        if found.returncode != 0:
            return False
        tip = await git(work, "rev-parse", f"refs/heads/{branch}")
        tree, conflict = await self._net_tree(tip, found.stdout.decode().strip())
        if conflict or tree != await git(work, "rev-parse", f"{recorded}^{{tree}}"):
            return False
        later = await git(
            self.home.repo, "rev-list", "--reverse", "--ancestry-path", f"{recorded}..{main}"
        )
        for sha in later.split()[:MAX_BATCH]:
            if await self._passed(sha):
                return True
        return False

    async def _reused(self, commit: str, parent: str, tree: str) -> str:
        """``commit`` when it is exactly the commit to build (its parent is ``parent``,
        its tree ``tree``), else ""."""
        if not commit:
            return ""
        found = await run_git(self.home.work, "rev-parse", f"{commit}^{{tree}}", f"{commit}^1")
        lines = found.stdout.decode().split()
        return commit if found.returncode == 0 and lines == [tree, parent] else ""

    async def fast_forward(self, effect: FastForward) -> MergeResult:
        """Fast-forward main to ``effect.sha`` and record the merge; never raises."""
        try:
            return await self._fast_forward(effect)
        except GitError as exc:
            return MergeResult(effect.ticket, MergeOutcome.ERROR, time.time(), text=str(exc))

    async def _move_main(
        self, parent: str, sha: str, records: list[tuple[str, str]]
    ) -> subprocess.CompletedProcess[bytes] | None:
        """Move main from ``parent`` to ``sha`` and set each ``(ticket, commit)`` record,
        all or nothing; None when done, else the failed git call (its stderr says why).

        One compare-and-swap: main moves only if it is still at ``parent``. It is a
        ``git update-ref --stdin`` transaction in repo.git (git-update-ref(1): all
        updates or none, each ``update`` with an old value checked) once ``sha``
        descends from ``parent`` there, a few ms; a push costs tens of ms (receive-pack,
        both hooks), which every merged ticket paid. The atomic push, leased on
        ``parent`` (``--force-with-lease``; hooks/update still refuses anything but a
        fast-forward), is the fallback when repo.git lacks the commit (an entry whose
        tree CI had already passed is never pushed for CI): it carries it there.
        """
        repo = self.home.repo
        descends = await run_git(repo, "merge-base", "--is-ancestor", parent, sha)
        if descends.returncode == 0:
            lines = [f"update refs/heads/main {sha} {parent}"]
            lines += [f"update {MERGED_REF}{t} {commit}" for t, commit in records]
            moved = await run_git(
                repo, "update-ref", "--stdin", stdin="".join(f"{line}\n" for line in lines).encode()
            )
            if moved.returncode != 0:  # main moved since (its stderr says so)
                return moved
            # As the push did: main's commits stay reachable in the clone, which
            # built them (else a gc there could prune what later merges need).
            await run_git(self.home.work, "update-ref", "refs/remotes/origin/main", sha)
            return None
        push = await run_git(
            self.home.work,
            "push",
            "--atomic",
            "--quiet",
            f"--force-with-lease=refs/heads/main:{parent}",
            "origin",
            f"{sha}:refs/heads/main",
            *(f"{commit}:{MERGED_REF}{t}" for t, commit in records),
        )
        return None if push.returncode == 0 else push

    async def _fast_forward(self, effect: FastForward) -> MergeResult:
        ticket = effect.ticket
        records = [*effect.batch, (ticket, effect.sha)]
        async with self.repo_lock:
            push = await self._move_main(effect.parent, effect.sha, records)
        if push is None:
            return MergeResult(ticket, MergeOutcome.MERGED, time.time(), sha=effect.sha)
        main = await self._main()
        recorded = await self._recorded(ticket, main)
        if recorded:  # merged before (an earlier answer was lost)
            mismatch = await self._tree_mismatch(ticket, recorded, [effect.sha])
            if mismatch:
                return MergeResult(ticket, MergeOutcome.ERROR, time.time(), text=mismatch)
            return MergeResult(ticket, MergeOutcome.MERGED, time.time(), sha=recorded)
        if main == effect.parent:
            text = push.stderr.decode(errors="replace").strip()
            return MergeResult(ticket, MergeOutcome.ERROR, time.time(), text=text[-500:])
        return MergeResult(ticket, MergeOutcome.MOVED, time.time(), sha=main)
