"""How the daemon's own git writes reach repo.git: a branch push that starts no CI, and
the fast-forward of main (real repo.git with its real hooks, no daemon running)."""

from __future__ import annotations

import subprocess
import time

import anyio

from orchestrator.daemon.core import FastForward, MergeOutcome, Pushed
from orchestrator.daemon.git import install_ref_token
from orchestrator.daemon.merger import MERGED_REF, Merger
from orchestrator.daemon.workers import Workers
from tests.integration.conftest import git


def _has_ref(cwd, ref: str) -> bool:
    found = subprocess.run(["git", "-C", str(cwd), "rev-parse", "--verify", "--quiet", ref])
    return found.returncode == 0


def _workers(home) -> tuple[Workers, list[object]]:
    fed: list[object] = []
    return Workers(home, fed.extend, lambda events: None, anyio.Lock()), fed


def test_a_branch_without_ci_is_set_in_repo_git_when_it_has_the_commit(make_project):
    """Auto approval (no CI for the branch): a commit repo.git has (a Ray node pushed it,
    or the branch is still at main) is set there without a push; a commit only the clone
    has is pushed. With CI, it is always a push (post-receive starts CI)."""
    project = make_project(start=False)
    home = project.home
    install_ref_token(home.repo)
    work, repo = home.work, home.repo
    workers, fed = _workers(home)
    main = git(repo, "rev-parse", "refs/heads/main")

    git(work, "branch", "agent-1/p1", main)
    assert anyio.run(workers.push, "p1", 1, "agent-1/p1", False) == main
    assert git(repo, "rev-parse", "refs/heads/agent-1/p1") == main
    # Not pushed: a push would have set the clone's remote-tracking ref.
    assert not _has_ref(work, "refs/remotes/origin/agent-1/p1")

    only_here = git(work, "commit-tree", "-p", main, "-m", "only in the clone", f"{main}^{{tree}}")
    git(work, "branch", "agent-1/p2", only_here)
    assert anyio.run(workers.push, "p2", 1, "agent-1/p2", False) == only_here
    assert git(repo, "rev-parse", "refs/heads/agent-1/p2") == only_here
    assert _has_ref(work, "refs/remotes/origin/agent-1/p2")  # pushed

    git(work, "branch", "agent-1/p3", main)
    assert anyio.run(workers.push, "p3", 1, "agent-1/p3", True) == main
    assert _has_ref(work, "refs/remotes/origin/agent-1/p3")  # pushed: CI starts
    log = home.ci_status_dir / f"{main}.log"
    deadline = time.monotonic() + 30
    while not log.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert log.exists(), "the push with CI started no CI job"
    assert [type(x) for x in fed] == [Pushed, Pushed, Pushed]
    assert all(x.sha for x in fed)  # type: ignore[attr-defined]


def test_fast_forward_moves_main_only_from_its_parent_and_only_forward(make_project):
    """The fast-forward is one all-or-nothing update of main and the merge record(s),
    leased on the parent; a commit that does not descend from main never lands, even
    though repo.git has it; one repo.git lacks is pushed with it."""
    project = make_project(start=False)
    home = project.home
    install_ref_token(home.repo)
    work, repo = home.work, home.repo
    merger = Merger(home, anyio.Lock())
    main = git(repo, "rev-parse", "refs/heads/main")
    tree = f"{main}^{{tree}}"

    def commit(parent: str, message: str) -> str:
        return git(work, "commit-tree", "-p", parent, "-m", message, tree)

    def ff(ticket: str, sha: str, parent: str, batch=()):
        return anyio.run(merger.fast_forward, FastForward(ticket, sha, parent, batch=batch))

    # In the clone only: pushed (with its record), main moves.
    first = commit(main, "f1")
    assert ff("f1", first, main).outcome == MergeOutcome.MERGED
    assert git(repo, "rev-parse", "refs/heads/main") == first
    assert git(repo, "rev-parse", MERGED_REF + "f1") == first

    # Already in repo.git (as a queue commit is): set there, with a batch's records.
    second = commit(first, "f2")
    third = commit(second, "f3")
    git(work, "push", "--quiet", "origin", f"{third}:refs/heads/agent-1/f3")
    result = ff("f3", third, first, batch=(("f2", second),))
    assert result.outcome == MergeOutcome.MERGED, result.text
    assert git(repo, "rev-parse", "refs/heads/main") == third
    assert git(repo, "rev-parse", MERGED_REF + "f2") == second
    assert git(repo, "rev-parse", MERGED_REF + "f3") == third
    # The clone that built them keeps main's commits reachable, as after a push.
    assert git(work, "rev-parse", "refs/remotes/origin/main") == third

    # Leased on a parent main is no longer at: nothing moves.
    stale = commit(first, "stale")
    git(work, "push", "--quiet", "origin", f"{stale}:refs/heads/agent-1/stale")
    result = ff("s1", stale, first)
    assert result.outcome == MergeOutcome.MOVED
    assert git(repo, "rev-parse", "refs/heads/main") == third
    assert not _has_ref(repo, MERGED_REF + "s1")

    # Not a descendant of main (here: an older commit), though main is the lease: refused.
    result = ff("back", first, third)
    assert result.outcome == MergeOutcome.ERROR
    assert "hook declined to update refs/heads/main" in result.text
    assert git(repo, "rev-parse", "refs/heads/main") == third
    assert not _has_ref(repo, MERGED_REF + "back")
