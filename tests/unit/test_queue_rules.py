"""The merge queue's rules in the pure core (docs/scheduling.md, "The merge queue")."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.daemon import core as C
from orchestrator.shared.config import CIConfig, MergeConfig
from orchestrator.shared.models import TicketState as S
from tests.unit.coresim import Sim, check_invariants, ticket


def approved(sim: Sim, *ids: str, priority: dict[str, int] | None = None) -> None:
    """Run ``ids`` (auto approval) until each is pushed, in order: they join the queue."""
    for tid in ids:
        sim.add(ticket(tid, priority=(priority or {}).get(tid, 2), locks=[f"src/{tid}.py"]))
    starts = {e.ticket: e for e in sim.take(C.StartAgent)}
    for tid in ids:
        eff = starts.pop(tid)
        sim.start(eff)
        sim.exit(eff)
        (push,) = sim.take(C.Push)
        sim.push(push)
        sim.now += 1


def stack_all(sim: Sim) -> dict[str, str]:
    """Answer Stack effects until none is out; returns ticket -> stacked commit."""
    shas = {}
    while stacks := sim.take(C.Stack):
        for eff in stacks:
            shas[eff.ticket] = sim.stack(eff)
    return shas


def test_stacks_each_entry_on_the_one_ahead_up_to_the_depth():
    sim = Sim.new(workers=5, approval="auto", merge=MergeConfig(depth=3))
    approved(sim, "a", "b", "c", "d", "e")
    shas = stack_all(sim)
    assert list(shas) == ["a", "b", "c"], "only merge.depth entries are stacked"
    assert sim.rec("b").queue_parent == shas["a"] and sim.rec("c").queue_parent == shas["b"]
    views = {t: sim.core.ticket_view(sim.rec(t)) for t in "abcde"}
    assert [views[t].queue_position for t in "abcde"] == [1, 2, 3, 4, 5]
    assert (views["a"].stacked_on, views["b"].stacked_on, views["d"].stacked_on) == (
        "main",
        "a",
        None,
    )
    assert all(sim.core.workers[w].ticket is None for w in sim.core.workers), "slots free"
    check_invariants(sim.core)


def test_default_depth_scales_with_the_workers():
    # Little's law: W agents hand in W/A tickets a second, each in CI for about C s.
    for workers, depth in ((1, 4), (2, 4), (3, 6), (5, 10), (20, 32)):
        sim = Sim.new(workers=workers, approval="auto")
        assert (sim.core.config.queue_depth, sim.core.config.ci_parallel) == (depth, depth)
        ids = [f"t{i}" for i in range(workers)]
        approved(sim, *ids)
        assert len(stack_all(sim)) == min(depth, workers), workers
    set_both = Sim.new(workers=5, merge=MergeConfig(depth=3), ci=CIConfig(parallel=2)).core.config
    assert (set_both.queue_depth, set_both.ci_parallel) == (3, 2)
    only_depth = Sim.new(workers=5, merge=MergeConfig(depth=7)).core.config
    assert only_depth.ci_parallel == 7


def test_ci_parallel_bounds_entries_waiting_for_ci():
    sim = Sim.new(workers=4, approval="auto", merge=MergeConfig(depth=4), ci=CIConfig(parallel=2))
    approved(sim, "a", "b", "c", "d")
    shas = stack_all(sim)
    assert list(shas) == ["a", "b"]
    sim.ci(shas["a"])  # a passed: one slot of CI free again
    assert [e.ticket for e in sim.take(C.Stack)] == ["c"]


def test_head_merges_first_even_when_an_entry_behind_passes_earlier():
    sim = Sim.new(workers=3, approval="auto")
    approved(sim, "a", "b")
    shas = stack_all(sim)
    sim.ci(shas["b"])
    assert sim.take(C.FastForward) == [], "b waits for a: main only moves to the head"
    sim.ci(shas["a"])
    (ff,) = sim.take(C.FastForward)
    assert (ff.ticket, ff.sha) == ("a", shas["a"])
    sim.fast_forward(ff)
    (ff,) = sim.take(C.FastForward)
    assert (ff.ticket, ff.parent) == ("b", shas["a"]), "b was built on a: untouched"
    sim.fast_forward(ff)
    assert sim.merged == ["a", "b"] and sim.main == shas["b"]
    assert sim.take(C.Stack) == [], "nothing was restacked"


def test_failing_middle_entry_goes_back_and_only_entries_behind_restack():
    sim = Sim.new(workers=3, approval="auto")
    approved(sim, "a", "b", "c")
    shas = stack_all(sim)
    sim.ci(shas["b"], "fail", tail="FAILED test_b")
    # a retry (leases kept), taken at once by a free worker
    assert sim.state("b") == S.RUNNING and sim.core.locks.held_by("b")
    (retry,) = sim.take(C.StartAgent)
    assert "CI fail in the merge queue" in retry.feedback
    assert retry.ticket == "b" and retry.attempt == 2 and "FAILED test_b" in retry.feedback
    assert sim.rec("a").queue_sha == shas["a"], "the entry ahead is untouched"
    (restack,) = sim.take(C.Stack)
    assert (restack.ticket, restack.parent) == ("c", shas["a"])
    sim.ci(shas["c"])  # the result for c's discarded commit is ignored
    assert sim.rec("c").ci_sha is None
    new_c = sim.stack(restack)
    sim.ci(shas["a"])
    sim.ci(new_c)
    sim.settle()
    assert sim.merged == ["a", "c"]
    check_invariants(sim.core)


def test_retry_goes_ahead_of_newer_tickets_of_its_priority():
    sim = Sim.new(workers=1, approval="auto")
    approved(sim, "old")
    sim.add(ticket("new", locks=["src/new.py"]))
    (start_new,) = sim.take(C.StartAgent)  # the freed worker took the newer ticket
    (stack,) = sim.take(C.Stack)
    sim.ci(sim.stack(stack), "fail")
    sim.start(start_new)
    sim.exit(start_new)
    sim.push(sim.take(C.Push)[0])
    sim.add(ticket("newer", locks=["src/newer.py"]))
    (nxt,) = sim.take(C.StartAgent)
    assert nxt.ticket == "old", "the retry keeps its age"


def test_higher_priority_overtakes_only_entries_whose_ci_has_not_started():
    sim = Sim.new(workers=4, approval="auto", merge=MergeConfig(depth=1))
    approved(sim, "a", "c", "b", priority={"a": 2, "c": 3, "b": 0})
    assert sim.core.merge_queue == ["a", "b", "c"], "b (P0) ahead of c, not ahead of a"
    sim.settle()
    assert sim.merged == ["a", "b", "c"]


def test_priority_command_moves_a_waiting_entry():
    sim = Sim.new(workers=3, approval="auto", merge=MergeConfig(depth=1))
    approved(sim, "a", "b", "c")
    sim.command("priority", "c", priority=0)
    assert sim.core.merge_queue == ["a", "c", "b"]
    sim.command("priority", "a", priority=4)
    assert sim.core.merge_queue[0] == "a", "a's CI started: it keeps its place"


def test_stop_and_reject_in_the_stack():
    sim = Sim.new(workers=3, approval="auto")
    approved(sim, "a", "b", "c")
    shas = stack_all(sim)
    assert sim.command("stop", "b").ok
    assert sim.state("b") == S.STOPPED and not sim.core.locks.held_by("b")
    (restack,) = sim.take(C.Stack)
    assert restack.ticket == "c"
    sim.effects.append(restack)
    assert sim.command("reject", "a", feedback="no").ok
    (again,) = sim.take(C.StartAgent)
    assert again.ticket == "a" and "rejected the change:\nno" in again.feedback
    sim.ci(shas["a"])  # ignored: a left the queue
    assert sim.take(C.FastForward) == []
    sim.settle()
    assert sim.merged == ["c"]
    assert sim.command("continue", "b").ok
    sim.settle()
    assert sim.state("b") == S.MERGED and sim.merged == ["c", "b"]
    check_invariants(sim.core)


def test_stop_is_refused_while_main_is_fast_forwarded_to_it():
    sim = Sim.new(workers=1, approval="auto")
    approved(sim, "a")
    sim.ci(stack_all(sim)["a"])
    (ff,) = sim.take(C.FastForward)
    assert not sim.command("stop", "a").ok
    assert not sim.command("reject", "a", feedback="no").ok
    sim.fast_forward(ff)
    assert sim.state("a") == S.MERGED


def test_ci_that_never_reports_fails_the_entry():
    sim = Sim.new(workers=2, approval="auto", ci=CIConfig(timeout_s=10))
    approved(sim, "a", "b")
    stack_all(sim)
    sim.tick(10 + C.CI_REPORT_MARGIN_S + 1)
    retries = {e.ticket: e for e in sim.take(C.StartAgent)}
    assert set(retries) == {"a"}, "b was restacked without a: its CI starts afresh"
    assert [e.ticket for e in sim.take(C.Stack)] == ["b"]
    assert "CI did not report a result in time" in retries["a"].feedback


def test_restart_restacks_everything_and_a_recorded_merge_is_not_repeated():
    sim = Sim.new(workers=3, approval="auto")
    approved(sim, "a", "b")
    shas = stack_all(sim)
    sim.ci(shas["a"])
    sim.ci(shas["b"])
    (ff,) = sim.take(C.FastForward)  # the daemon dies while this push happens
    restored = Sim.new(workers=3, approval="auto")
    out = restored.core.restore(list(sim.core.tickets.values()), sim.now)
    restored.effects += out.effects
    assert restored.take(C.FastForward) == [], "nothing reaches main on old results"
    assert restored.core.merge_queue == ["a", "b"]
    (stack,) = restored.take(C.Stack)
    assert stack.ticket == "a" and stack.parent == ""
    restored.feed(C.Stacked("a", stack.gen, "merged", restored.now, sha=ff.sha))
    assert restored.state("a") == S.MERGED and restored.rec("a").merged_sha == ff.sha
    check_invariants(restored.core)


def test_main_moved_outside_the_queue_restacks_every_entry():
    sim = Sim.new(workers=2, approval="auto")
    approved(sim, "a", "b")
    shas = stack_all(sim)
    sim.ci(shas["a"])
    (ff,) = sim.take(C.FastForward)
    sim.main = "f" * 40  # someone else moved main
    sim.fast_forward(ff)
    assert [e.ticket for e in sim.take(C.Stack)] == ["a"]
    assert not sim.rec("b").queue_sha
    check_invariants(sim.core)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 4), st.booleans()), min_size=1, max_size=8),
    st.integers(1, 4),
    st.integers(1, 4),
)
def test_every_ticket_merges_exactly_once_in_a_valid_chain(plan, depth, parallel):
    """Random priorities and first-run CI failures: the queue drains, each ticket reaches
    main exactly once, and each fast-forward goes to a commit whose CI passed."""
    sim = Sim.new(
        workers=3,
        approval="auto",
        merge=MergeConfig(depth=depth),
        ci=CIConfig(parallel=parallel),
        max_attempts=5,
    )
    ids = [f"t{i}" for i in range(len(plan))]
    for tid, (prio, _) in zip(ids, plan, strict=True):
        sim.add(ticket(tid, priority=prio, locks=[f"src/{tid}.py"]))
    failing = {tid for tid, (_, fail) in zip(ids, plan, strict=True) if fail}
    passed: set[str] = set()
    for _ in range(500):
        for eff in sim.take(C.StartAgent):
            sim.start(eff)
            sim.exit(eff)
        for push in sim.take(C.Push):
            sim.push(push)
        for eff in sim.take(C.Stack):
            sim.stack(eff)
        for rec in list(sim.core.tickets.values()):
            if rec.state == S.MERGING and rec.ci_sha:
                fail = rec.id in failing and rec.attempt == 1
                if not fail:
                    passed.add(rec.ci_sha)
                sim.ci(rec.ci_sha, "fail" if fail else "pass")
        for ff in sim.take(C.FastForward):
            assert ff.sha in passed
            sim.fast_forward(ff)
        check_invariants(sim.core)
        if all(sim.state(t) == S.MERGED for t in ids):
            break
    assert sorted(sim.merged) == sorted(ids) and len(sim.merged) == len(ids)


def test_one_stack_at_a_time_even_when_its_entry_was_discarded_meanwhile():
    """Two pushes of one queue ref never overlap: a restacked entry waits for the answer
    to its discarded Stack before it is stacked again."""
    sim = Sim.new(workers=3, approval="auto")
    approved(sim, "a", "b")
    (first,) = sim.take(C.Stack)
    sim.stack(first)
    (out,) = sim.take(C.Stack)  # b is being stacked on a
    assert out.ticket == "b"
    sim.ci(sim.rec("a").queue_sha, "fail")  # a leaves: b is restacked, its Stack still out
    assert sim.take(C.Stack) == []
    sim.stack(out)  # the late answer is ignored, and frees the way
    (again,) = sim.take(C.Stack)
    assert (again.ticket, again.parent) == ("b", "") and again.gen > out.gen
    assert not sim.rec("b").queue_sha


def test_a_stacking_error_is_retried_then_waits_for_a_person():
    sim = Sim.new(workers=1, approval="auto")
    approved(sim, "a")
    for _ in range(C.QUEUE_ERROR_RETRIES):
        (eff,) = sim.take(C.Stack)
        sim.stack(eff, "error")
        assert sim.state("a") == S.MERGING
    (eff,) = sim.take(C.Stack)
    sim.stack(eff, "error")
    assert sim.state("a") == S.AWAITING_APPROVAL and "merge queue error" in sim.rec("a").reason


# --- batches (merge.batch) ----------------------------------------------------


def drain_stacks(sim: Sim) -> list[C.Stack]:
    """Answer Stack effects until none is out; returns them in order."""
    done = []
    while stacks := sim.take(C.Stack):
        for eff in stacks:
            sim.stack(eff)
            done.append(eff)
    return done


def gather_batch(sim: Sim, ids: str, first: str = "z") -> None:
    """``first`` is stacked and under CI alone; ``ids`` hand in meanwhile and gather."""
    approved(sim, first)
    (alone,) = drain_stacks(sim)
    assert alone.test, "an entry alone in the queue, nothing under CI ahead: tested at once"
    approved(sim, *ids)


def test_a_batch_is_tested_once_on_its_last_commit_and_merges_in_one_fast_forward():
    sim = Sim.new(workers=5, approval="auto", merge=MergeConfig(batch=3))
    gather_batch(sim, "abc")
    stacks = drain_stacks(sim)
    assert [(e.ticket, e.test) for e in stacks] == [("a", False), ("b", False), ("c", True)]
    assert sim.pushed == [sim.rec("z").queue_sha, sim.rec("c").queue_sha], "two CI runs"
    sim.ci(sim.rec("c").queue_sha)  # the batch passed before z: it waits for z
    assert sim.take(C.FastForward) == []
    sim.ci(sim.rec("z").queue_sha)
    (ff,) = sim.take(C.FastForward)
    sim.fast_forward(ff)
    (ff,) = sim.take(C.FastForward)
    assert (ff.ticket, [t for t, _ in ff.batch]) == ("c", ["a", "b"])
    commits = {t: sim.rec(t).queue_sha for t in "abc"}
    sim.fast_forward(ff)
    assert sim.merged == ["z", "a", "b", "c"] and sim.main == commits["c"]
    assert {t: sim.rec(t).merged_sha for t in "abc"} == commits, "each its own commit"
    check_invariants(sim.core)


def test_a_partial_batch_is_closed_when_nothing_runs_ahead_of_it():
    sim = Sim.new(workers=5, approval="auto", merge=MergeConfig(batch=4))
    gather_batch(sim, "ab")
    assert [(e.ticket, e.test) for e in drain_stacks(sim)] == [("a", False), ("b", False)]
    sim.ci(sim.rec("z").queue_sha)
    (ff,) = sim.take(C.FastForward)
    b_commit = sim.rec("b").queue_sha
    sim.fast_forward(ff)
    (again,) = drain_stacks(sim)  # z merged: b closes the batch, on the same commit
    assert (again.ticket, again.test, again.reuse) == ("b", True, b_commit)
    assert sim.rec("b").queue_sha == b_commit and sim.pushed[-1] == b_commit
    sim.ci(b_commit)
    (ff,) = sim.take(C.FastForward)
    sim.fast_forward(ff)
    assert sim.merged == ["z", "a", "b"]
    check_invariants(sim.core)


def test_a_failed_batch_is_bisected_the_culprit_goes_back_the_rest_merge():
    sim = Sim.new(workers=5, approval="auto", merge=MergeConfig(batch=4))
    gather_batch(sim, "abcd")
    drain_stacks(sim)
    sim.ci(sim.rec("z").queue_sha)
    sim.fast_forward(sim.take(C.FastForward)[0])
    commits = {t: sim.rec(t).queue_sha for t in "abcd"}
    runs = len(sim.pushed)
    sim.ci(commits["d"], "fail", tail="test_c failed")  # c is the culprit
    assert sim.state("d") == S.MERGING, "nobody is sent back before the culprit is known"
    (half,) = drain_stacks(sim)  # the first half, a+b, is tested on b's (same) commit
    assert (half.ticket, half.test, sim.rec("b").queue_sha) == ("b", True, commits["b"])
    sim.ci(commits["b"])
    (ff,) = sim.take(C.FastForward)
    assert (ff.ticket, ff.batch) == ("b", (("a", commits["a"]),))
    sim.fast_forward(ff)
    (half,) = drain_stacks(sim)  # d's batch is now c+d: c is tested alone
    assert (half.ticket, half.test, sim.rec("c").queue_sha) == ("c", True, commits["c"])
    sim.ci(commits["c"], "fail", tail="test_c failed")
    starts = sim.take(C.StartAgent)
    assert [e.ticket for e in starts] == ["c"], starts
    (retry,) = starts  # c goes back to an agent with its CI log
    assert retry.ticket == "c" and "test_c failed" in retry.feedback
    (again,) = drain_stacks(sim)  # d is restacked on main without c
    assert again.ticket == "d" and again.test and sim.rec("d").queue_parent == sim.main
    sim.ci(sim.rec("d").queue_sha)
    sim.fast_forward(sim.take(C.FastForward)[0])
    assert sim.merged == ["z", "a", "b", "d"]
    assert len(sim.pushed) - runs == 3, "b, c and d's new commit: the bisection's runs"
    check_invariants(sim.core)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.booleans(), min_size=1, max_size=9),
    st.integers(2, 5),
    st.integers(1, 6),
)
def test_batches_merge_every_passing_ticket_once_and_only_passed_trees(plan, batch, depth):
    """Random first-attempt failures with batches: CI fails on a commit whose chain holds
    a failing change; each ticket reaches main once; main only moves to passed commits."""
    sim = Sim.new(
        workers=3,
        approval="auto",
        merge=MergeConfig(batch=batch, depth=depth),
        max_attempts=5,
    )
    ids = [f"t{i}" for i in range(len(plan))]
    for tid in ids:
        sim.add(ticket(tid, locks=[f"src/{tid}.py"]))
    failing = {tid for tid, fail in zip(ids, plan, strict=True) if fail}
    owner: dict[str, tuple[str, int]] = {}
    passed: set[str] = set()

    def bad(sha: str) -> bool:
        while sha in owner:
            tid, attempt = owner[sha]
            if tid in failing and attempt == 1:
                return True
            sha = sim.parents[sha]
        return False

    for _ in range(600):
        for eff in sim.take(C.StartAgent):
            sim.start(eff)
            sim.exit(eff)
        for push in sim.take(C.Push):
            sim.push(push)
        for eff in sim.take(C.Stack):
            sha = sim.stack(eff)
            owner[sha] = (eff.ticket, sim.rec(eff.ticket).attempt)
        for rec in list(sim.core.tickets.values()):
            if rec.state == S.MERGING and rec.ci_sha:
                fail = bad(rec.ci_sha)
                if not fail:
                    passed.add(rec.ci_sha)
                sim.ci(rec.ci_sha, "fail" if fail else "pass")
        for ff in sim.take(C.FastForward):
            assert ff.sha in passed
            assert not bad(ff.sha)
            sim.fast_forward(ff)
        check_invariants(sim.core)
        if all(sim.state(t) == S.MERGED for t in ids):
            break
    assert sorted(sim.merged) == sorted(ids) and len(sim.merged) == len(ids)
