"""Property tests of the pure core over random sequences of inputs (hypothesis)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.daemon import core as C
from orchestrator.shared.config import CIConfig, MergeConfig, ReviewConfig
from orchestrator.shared.models import ReviewComment, ReviewStatus
from orchestrator.shared.models import TicketState as S
from tests.unit.coresim import Sim, check_invariants, ticket

LOCKS = ["src/", "src/a.py", "src/b.py", "docs/*.md", "docs/", "tests/", "README.md"]
IDS = [f"t{i}" for i in range(8)]

op = st.one_of(
    st.tuples(
        st.just("add"),
        st.sampled_from(IDS),
        st.integers(0, 4),
        st.lists(st.sampled_from(LOCKS), max_size=2, unique=True),
        st.lists(st.sampled_from(IDS), max_size=1),
    ),
    st.tuples(st.just("tick"), st.floats(0.5, 400.0)),
    st.tuples(st.just("exit"), st.integers(0, 2), st.booleans()),
    st.tuples(st.just("push"), st.booleans()),
    st.tuples(st.just("ci"), st.sampled_from(["pass", "fail", "error"])),
    st.tuples(
        st.just("stack"),
        st.sampled_from(["stacked", "stacked", "conflict", "empty", "error", "merged"]),
        st.booleans(),
    ),
    st.tuples(st.just("ff"), st.sampled_from(["merged", "merged", "moved", "error"])),
    st.tuples(
        st.just("cmd"),
        st.sampled_from(["approve", "stop", "continue", "reject"]),
        st.sampled_from(IDS),
    ),
    st.tuples(st.just("priority"), st.sampled_from(IDS), st.integers(0, 4)),
    st.tuples(st.just("progress"), st.integers(1, 3)),
    st.tuples(st.just("gone"), st.sampled_from(IDS)),
    st.tuples(st.just("ask"), st.booleans()),
    st.tuples(st.just("answer"), st.sampled_from(IDS), st.booleans()),
    st.tuples(st.just("ask_timeout"), st.sampled_from(IDS)),
    st.tuples(st.just("asker_dies"), st.sampled_from(IDS)),
)


def play(sim: Sim, step: tuple) -> None:
    kind = step[0]
    if kind == "add":
        _, tid, prio, locks, deps = step
        sim.add(ticket(tid, priority=prio, locks=locks, depends_on=[d for d in deps if d != tid]))
    elif kind == "tick":
        sim.tick(step[1])
    elif kind == "exit":
        starts = sim.take(C.StartAgent)
        sim.effects += starts[1:]
        if starts:
            eff = starts[0]
            sim.start(eff)
            sim.exit(eff, code=step[1], new_work=step[2])
    elif kind == "push":
        pushes = sim.take(C.Push)
        sim.effects += pushes[1:]
        if pushes:
            if step[1]:
                sim.push(pushes[0])
            else:
                sim.feed(C.Pushed(pushes[0].ticket, pushes[0].attempt, "", sim.now, error="x"))
    elif kind == "ci":
        waiting = [r for r in sim.core.tickets.values() if r.ci_sha]
        if waiting:
            sim.ci(waiting[0].ci_sha or "", step[1])
    elif kind == "stack":
        stacks = sim.take(C.Stack)
        sim.effects += stacks[1:]
        if stacks:
            sim.stack(stacks[0], step[1], verified=step[2] and bool(stacks[0].verified_sha))
    elif kind == "ff":
        ffs = sim.take(C.FastForward)
        sim.effects += ffs[1:]
        if ffs:
            sim.fast_forward(ffs[0], step[1])
    elif kind == "review":  # answer the oldest Review effect (or a stale generation of it)
        reviews = sim.take(C.Review)
        sim.effects += reviews[1:]
        if reviews:
            eff = reviews[0]
            comments = (ReviewComment(path="a.py", line=1, body="x"),)
            sim.feed(
                C.ReviewResult(
                    eff.ticket, eff.gen - step[2], ReviewStatus(step[1]), sim.now, comments
                )
            )
            if step[2]:
                sim.effects.append(eff)  # the stale answer is ignored; this one still waits
    elif kind == "priority":
        sim.command("priority", step[1], priority=step[2])
    elif kind == "cmd":
        sim.command(step[1], step[2], **({"feedback": "fb"} if step[1] == "reject" else {}))
    elif kind == "progress":
        sim.feed(C.Progress(f"agent-{step[1]}", sim.now, note="x"))
    elif kind == "gone":
        sim.feed(C.TicketFileGone(f"/backlog/{step[1]}.yaml", sim.now))
    elif kind == "ask":  # an agent starts and asks (twice: asked again, same question)
        starts = sim.take(C.StartAgent)
        sim.effects += starts[1:]
        if starts:
            sim.start(starts[0])
            sim.ask(starts[0])
            if step[1]:
                sim.ask(starts[0])
    elif kind == "answer":
        sim.command("answer", step[1], text="yes" if step[2] else " ")
    elif kind == "ask_timeout":
        rec = sim.core.tickets.get(step[1])
        if rec is not None:
            sim.feed(C.AskTimedOut(step[1], rec.run_id, sim.now))
    elif kind == "asker_dies":
        rec = sim.core.tickets.get(step[1])
        if rec is not None and rec.state == S.NEEDS_INPUT and rec.agent:
            sim.feed(C.AgentExited(rec.agent, rec.id, rec.attempt, -9, sim.now, head="h"))
    for stop in sim.take(C.StopAgent):  # the shell stops the process; it exits
        rec = sim.core.tickets[stop.ticket]
        sim.feed(
            C.AgentExited(
                stop.agent,
                stop.ticket,
                rec.attempt,
                -15,
                sim.now,
                head=f"stop{sim.now}",
                changed=tuple(rec.ticket.locks[:1]),
            )
        )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op, max_size=60), st.sampled_from(["manual", "auto"]), st.integers(1, 3))
def test_invariants_hold_for_any_sequence(steps, approval, depth):
    sim = Sim.new(
        workers=3,
        approval=approval,
        merge=MergeConfig(depth=depth),
        ci=CIConfig(parallel=2),
        stale_after_s=300.0,
        stale_grace_s=100.0,
        lease_ttl_s=200.0,
        heartbeat_interval_s=5.0,
        starvation_after_s=500.0,
    )
    added: set[str] = set()
    for step in steps:
        play(sim, step)
        if step[0] == "add":
            added.add(step[1])
        check_invariants(sim.core)
        # no ticket lost: every valid intake is known, in exactly one state
        assert added <= set(sim.core.tickets) | _rejected_ids(sim)
        # each ticket reaches main at most once, and only by its merge queue commit
        assert len(sim.merged) == len(set(sim.merged)), sim.merged
        for tid in sim.merged:
            assert sim.state(tid) == S.MERGED, tid
    restored = Sim.new(workers=3)
    restored.core.restore(list(sim.core.tickets.values()), sim.now)
    check_invariants(restored.core)


#: Steps that move work forward (a good exit, a push, a CI pass), so that random
#: sequences reach the reviewer often.
happy_op = st.sampled_from(
    [("exit", 0, True), ("push", True), ("ci", "pass"), ("stack", "stacked", False)]
)
review_op = st.tuples(
    st.just("review"), st.sampled_from(["approve", "request_changes", "error"]), st.integers(0, 1)
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.one_of(op, review_op, review_op, happy_op, happy_op), min_size=20, max_size=80),
    st.sampled_from(["manual", "auto"]),
    st.integers(1, 3),
)
def test_invariants_hold_with_a_reviewer(steps, approval, max_rounds):
    sim = Sim.new(
        workers=2,
        approval=approval,
        review=ReviewConfig(command=["reviewer"], max_rounds=max_rounds, timeout_s=600),
        stale_after_s=300.0,
        stale_grace_s=100.0,
        lease_ttl_s=200.0,
    )
    first = [("add", "t0", 2, ["src/"], []), ("add", "t1", 1, ["docs/"], [])]
    for step in first + steps:
        play(sim, step)
        check_invariants(sim.core)
        for rec in sim.core.tickets.values():
            if rec.state == S.REVIEWING:  # only ever a change CI passed on
                assert rec.ci is not None and rec.ci.status == "pass", rec.id
                assert rec.review is not None and rec.review.sha == rec.ci.sha == rec.verified_sha
                assert rec.review.round <= max_rounds
            assert rec.review_round <= max_rounds, (rec.id, rec.review_round)
        for push in (e for e in sim.effects if isinstance(e, C.Push)):
            assert push.ci  # a reviewer means branch CI, also with auto approval
    restored = Sim.new(workers=2, review=ReviewConfig(command=["reviewer"], max_rounds=max_rounds))
    restored.core.restore(list(sim.core.tickets.values()), sim.now)
    check_invariants(restored.core)


def _rejected_ids(sim: Sim) -> set[str]:
    return {
        e.path.rsplit("/", 1)[-1].removesuffix(".yaml")
        for e in sim.effects
        if isinstance(e, C.MoveFile) and e.dest == "rejected"
    }


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 3), st.integers(1, 4))
def test_p4_finishes_under_a_steady_p0_load(workers, p0_per_round):
    """Aging bounds the wait: a P4 ticket merges although P0 work keeps arriving."""
    sim = Sim.new(workers=workers, approval="auto", aging_interval_s=60.0)
    sim.add(ticket("slow", priority=4))
    for w in range(workers):
        sim.add(ticket(f"warm{w}", priority=0))
    n = 0
    for _ in range(400):
        for _ in range(p0_per_round):
            n += 1
            sim.add(ticket(f"p0-{n}", priority=0))
        sim.now += 30
        for eff in sim.take(C.StartAgent):
            sim.start(eff)
            sim.exit(eff)
        for push in sim.take(C.Push):
            sim.push(push)
        sim.settle()
        check_invariants(sim.core)
        if sim.state("slow") == S.MERGED:
            return
    raise AssertionError("the P4 ticket never ran under a steady P0 load")
