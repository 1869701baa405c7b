"""The pure state machine: scheduling, retries, approval, stop/continue, liveness."""

from __future__ import annotations

import msgspec

from orchestrator.daemon import core as C
from orchestrator.shared import protocol as P
from orchestrator.shared.config import MergeConfig
from orchestrator.shared.models import TicketState as S
from tests.unit.coresim import Sim, check_encoded_views, check_invariants, ticket


def test_most_urgent_first_then_age():
    sim = Sim.new(workers=1)
    sim.add(ticket("low", priority=3))
    # the single worker took "low" at once; the next ones queue behind it
    sim.add(ticket("p1-old", priority=1))
    sim.now += 1
    sim.add(ticket("p1-new", priority=1))
    sim.add(ticket("p0", priority=0))
    (first,) = sim.take(C.StartAgent)
    assert first.ticket == "low"
    order = [r.id for r in sim.core.ordered() if r.state == S.QUEUED]
    assert order == ["p0", "p1-old", "p1-new"]
    sim.command("stop", "low")
    sim.exit(first)
    (nxt,) = sim.take(C.StartAgent)
    assert nxt.ticket == "p0"
    check_invariants(sim.core)


def test_branch_and_attempt_of_an_assignment():
    sim = Sim.new(workers=2)
    sim.add(ticket("a"))
    (eff,) = sim.take(C.StartAgent)
    assert (eff.agent, eff.branch, eff.attempt, eff.feedback) == ("agent-1", "agent-1/a", 1, "")
    assert sim.state("a") == S.RUNNING


def test_lock_conflict_waits_and_does_not_block_others():
    sim = Sim.new(workers=3)
    sim.add(ticket("holder", priority=2, locks=["src/api/"]))
    sim.add(ticket("blocked", priority=0, locks=["src/api/avatar.py"]))
    sim.add(ticket("free", priority=4, locks=["docs/"]))
    started = {e.ticket for e in sim.take(C.StartAgent)}
    assert started == {"holder", "free"}
    assert sim.state("blocked") == S.QUEUED
    assert "lock src/api held by holder" in sim.rec("blocked").reason
    check_invariants(sim.core)


def test_dependency_waits_for_merge_then_runs():
    sim = Sim.new(workers=2)
    sim.add(ticket("child", priority=0, depends_on=["parent"]))
    sim.add(ticket("parent", priority=4))
    (eff,) = sim.take(C.StartAgent)
    assert eff.ticket == "parent"
    assert "waits for 'parent'" in sim.rec("child").reason
    sha = sim.run_to_ci(eff)
    sim.ci(sha)
    sim.command("approve", "parent")
    (stack,) = sim.take(C.Stack)
    assert stack.verified_sha == sha
    sim.stack(stack, verified=True)  # same tree as the branch CI pass: no second run
    assert sim.take(C.StartAgent) == []
    (ff,) = sim.take(C.FastForward)
    sim.fast_forward(ff)
    assert sim.state("parent") == S.MERGED
    (child,) = sim.take(C.StartAgent)
    assert child.ticket == "child"


def test_ci_failure_retries_with_feedback_then_passes_and_merges():
    sim = Sim.new(workers=1)
    sim.add(ticket("t", locks=["a.py"]))
    (eff,) = sim.take(C.StartAgent)
    sha = sim.run_to_ci(eff)
    assert sim.state("t") == S.CI_RUNNING
    sim.ci(sha, "fail", tail="AssertionError: 0.1 != 0.10")
    (retry,) = sim.take(C.StartAgent)
    assert (retry.attempt, retry.branch, retry.agent) == (2, "agent-1/t", "agent-1")
    assert "AssertionError: 0.1 != 0.10" in retry.feedback
    sha2 = sim.run_to_ci(retry)
    sim.ci(sha2, "pass")
    assert sim.state("t") == S.AWAITING_APPROVAL
    reply = sim.command("approve", "t")
    assert reply.ok and "merge queue position 1" in reply.message
    (stack,) = sim.take(C.Stack)
    assert stack.branch == "agent-1/t"
    sim.effects.append(stack)
    sim.settle()
    assert sim.state("t") == S.MERGED
    (move,) = sim.take(C.MoveFile)
    assert move.dest == "done"
    assert sim.core.workers["agent-1"].ticket is None
    assert len(sim.core.locks) == 0


def test_attempts_used_up_fail_the_ticket_and_block_dependents():
    sim = Sim.new(workers=2)
    sim.add(ticket("t", max_attempts=2))
    sim.add(ticket("dep", depends_on=["t"]))
    for _ in range(2):
        (eff,) = sim.take(C.StartAgent)
        sim.start(eff)
        sim.exit(eff, code=3, tail="boom")
    assert sim.state("t") == S.FAILED
    assert "agent exited with code 3" in sim.rec("t").reason
    assert sim.state("dep") == S.BLOCKED
    assert "dependency 't' is failed" in sim.rec("dep").reason
    sim.command("continue", "t")
    assert sim.state("t") == S.RUNNING
    assert sim.state("dep") == S.QUEUED
    check_invariants(sim.core)


def test_no_change_fails_the_attempt():
    sim = Sim.new(workers=1, max_attempts=1)
    sim.add(ticket("t"))
    (eff,) = sim.take(C.StartAgent)
    sim.exit(eff, new_work=False, changed=())
    assert sim.state("t") == S.FAILED
    assert "changed nothing" in sim.rec("t").reason


def test_changes_outside_locks_are_rejected_with_the_paths_named():
    sim = Sim.new(workers=1)
    sim.add(ticket("t", locks=["src/a.py"]))
    (eff,) = sim.take(C.StartAgent)
    sim.exit(eff, changed=("src/a.py", "src/b.py", "README.md"))
    assert sim.take(C.Push) == []
    (retry,) = sim.take(C.StartAgent)
    assert "README.md, src/b.py" in retry.feedback
    assert "outside its locks" in sim.rec("t").reason


def test_lock_policy_warn_pushes_and_warns():
    sim = Sim.new(workers=1, lock_policy="warn")
    sim.add(ticket("t", locks=["src/a.py"]))
    (eff,) = sim.take(C.StartAgent)
    sim.exit(eff, changed=("src/b.py",))
    assert len(sim.take(C.Push)) == 1
    assert any(e.kind == "warning" and "src/b.py" in e.message for e in sim.events)


def test_stop_running_then_continue_on_the_same_branch():
    sim = Sim.new(workers=1)
    sim.add(ticket("t", locks=["x"]))
    (eff,) = sim.take(C.StartAgent)
    sim.start(eff)
    out = sim.command("stop", "t")
    assert out.ok
    (stop,) = sim.take(C.StopAgent)
    assert stop.reason == "stop"
    assert sim.command("stop", "t").message.endswith("already stopping")
    sim.exit(eff, code=-15)
    assert sim.state("t") == S.STOPPED
    assert len(sim.core.locks) == 0
    assert sim.core.workers["agent-1"].ticket is None
    sim.command("continue", "t")
    (again,) = sim.take(C.StartAgent)
    assert (again.branch, again.attempt) == ("agent-1/t", 2)


def test_commands_are_idempotent():
    sim = Sim.new(workers=1)
    sim.add(ticket("t"))
    (eff,) = sim.take(C.StartAgent)
    sim.ci(sim.run_to_ci(eff))
    assert sim.command("approve", "t").ok
    second = sim.command("approve", "t")
    assert second.ok and "already approved" in second.message
    assert len(sim.take(C.Stack)) == 1
    assert not sim.command("approve", "nope").ok


def test_reject_sends_back_with_feedback():
    sim = Sim.new(workers=1)
    sim.add(ticket("t"))
    (eff,) = sim.take(C.StartAgent)
    sim.ci(sim.run_to_ci(eff))
    assert sim.core.workers["agent-1"].ticket is None  # the slot was freed at the push
    out = sim.command("reject", "t", feedback="please add a test")
    assert out.ok
    (retry,) = sim.take(C.StartAgent)
    assert "please add a test" in retry.feedback and retry.attempt == 2


def test_merge_conflict_rebuilds_the_branch_with_feedback():
    sim = Sim.new(workers=1)
    sim.add(ticket("t"))
    (eff,) = sim.take(C.StartAgent)
    sim.ci(sim.run_to_ci(eff))
    sim.command("approve", "t")
    (stack,) = sim.take(C.Stack)
    sim.stack(stack, "conflict")
    (retry,) = sim.take(C.StartAgent)
    assert retry.rebuild and "a.py" in retry.feedback


def test_queue_ci_runs_when_main_moved_since_the_branch_ci():
    sim = Sim.new(workers=1)
    sim.add(ticket("t"))
    (eff,) = sim.take(C.StartAgent)
    sim.ci(sim.run_to_ci(eff))
    sim.command("approve", "t")
    (stack,) = sim.take(C.Stack)
    stacked = sim.stack(stack, verified=False)
    assert sim.state("t") == S.MERGING and sim.rec("t").ci_sha == stacked
    assert sim.take(C.FastForward) == []
    sim.ci(stacked, "pass")
    (ff,) = sim.take(C.FastForward)
    assert ff.sha == stacked


def test_auto_approval_merges_without_a_person_and_one_ci_run():
    sim = Sim.new(workers=1, approval="auto")
    sim.add(ticket("t"))
    (eff,) = sim.take(C.StartAgent)
    sim.start(eff)
    sim.exit(eff)
    (push,) = sim.take(C.Push)
    assert push.ci is False  # no branch CI: the merge queue run is its CI
    sim.push(push)
    assert sim.state("t") == S.MERGING
    assert sim.core.workers["agent-1"].ticket is None
    sim.settle()
    assert sim.state("t") == S.MERGED and sim.merged == ["t"]


def test_ticket_approval_overrides_the_config():
    sim = Sim.new(workers=1, approval="auto")
    sim.add(msgspec.structs.replace(ticket("t"), approval="manual"))
    (eff,) = sim.take(C.StartAgent)
    sim.start(eff)
    sim.exit(eff)
    (push,) = sim.take(C.Push)
    assert push.ci is True
    sim.ci(sim.push(push))
    assert sim.state("t") == S.AWAITING_APPROVAL


def test_bad_tickets_are_rejected_with_a_reason():
    sim = Sim.new(workers=1)
    sim.feed(C.TicketRead(path="/b/x.yaml", now=sim.now, error="x.yaml: priority: bad"))
    (move,) = sim.take(C.MoveFile)
    assert (move.dest, move.error) == ("rejected", "x.yaml: priority: bad")
    sim.add(ticket("a"), path="/b/a.yaml")
    sim.add(ticket("a"), path="/b/a-copy.yaml")
    (dup,) = sim.take(C.MoveFile)
    assert dup.path == "/b/a-copy.yaml" and "duplicate ticket id" in dup.error


def test_dependency_cycle_is_rejected():
    sim = Sim.new(workers=0)
    sim.add(ticket("a", depends_on=["b"]))
    sim.add(ticket("b", depends_on=["c"]))
    sim.add(ticket("c", depends_on=["a"]))
    (move,) = sim.take(C.MoveFile)
    assert move.path.endswith("c.yaml")
    assert "cycle c -> a -> b -> c" in move.error


def test_unknown_dependency_is_rejected_after_a_grace_period():
    sim = Sim.new(workers=1)
    sim.add(ticket("a", depends_on=["ghost"]))
    sim.tick(1)
    assert sim.state("a") == S.QUEUED
    sim.tick(C.UNKNOWN_DEPENDENCY_GRACE_S + 1)
    assert sim.state("a") == S.REJECTED
    (move,) = sim.take(C.MoveFile)
    assert "unknown ticket 'ghost'" in move.error


def test_editing_and_removing_a_queued_ticket():
    sim = Sim.new(workers=0)
    sim.add(ticket("a", priority=4))
    sim.add(ticket("a", priority=0))
    assert sim.rec("a").ticket.priority == 0
    sim.feed(C.TicketFileGone("/backlog/a.yaml", sim.now))
    assert sim.state("a") == S.CANCELLED
    sim.add(ticket("a", priority=1))
    assert sim.state("a") == S.QUEUED


def test_stale_agent_is_flagged_then_stopped_and_requeued():
    sim = Sim.new(workers=1, stale_after_s=100.0, stale_grace_s=50.0, lease_ttl_s=1000.0)
    sim.add(ticket("t", locks=["a"]))
    (eff,) = sim.take(C.StartAgent)
    sim.start(eff)
    sim.tick(99)
    assert not any(e.kind == "agent.stale" for e in sim.events)
    sim.tick(2)
    assert any(e.kind == "agent.stale" for e in sim.events)
    assert sim.core.agent_view(sim.core.workers["agent-1"]).state == "stale"
    sim.tick(51)
    (stop,) = sim.take(C.StopAgent)
    assert stop.reason == "stale"
    sim.exit(eff, code=-15)
    assert sim.state("t") in (S.QUEUED, S.RUNNING)
    (again,) = sim.take(C.StartAgent)
    assert again.attempt == 2 and again.branch == "agent-1/t"


def test_progress_keeps_an_agent_fresh():
    sim = Sim.new(workers=1, stale_after_s=100.0, stale_grace_s=50.0)
    sim.add(ticket("t"))
    (eff,) = sim.take(C.StartAgent)
    sim.start(eff)
    for _ in range(10):
        sim.tick(60)
        sim.feed(C.Progress("agent-1", sim.now, note="thinking"))
    assert not any(e.kind == "agent.stale" for e in sim.events)
    out = sim.command("heartbeat", "t", note="still here")
    assert out.ok


def test_aging_lets_old_low_priority_work_overtake():
    sim = Sim.new(workers=0, aging_interval_s=10.0)
    sim.add(ticket("old-p4", priority=4))
    sim.now += 41
    sim.add(ticket("new-p0", priority=0))
    assert [r.id for r in sim.core.ordered()][:2] == ["old-p4", "new-p0"]


def test_starving_ticket_reserves_its_locks():
    sim = Sim.new(workers=2, starvation_after_s=100.0)
    sim.add(ticket("narrow-1", locks=["src/a.py"]))
    sim.add(ticket("wide", priority=0, locks=["src/"]))
    sim.take(C.StartAgent)
    sim.tick(101)
    assert sim.rec("wide").reserved
    sim.add(ticket("narrow-2", priority=0, locks=["src/b.py"]))
    assert sim.take(C.StartAgent) == []
    assert "src" in sim.rec("narrow-2").reason


def test_restore_requeues_running_work_without_counting_the_attempt():
    sim = Sim.new(workers=1)
    sim.add(ticket("t", locks=["a"]))
    (eff,) = sim.take(C.StartAgent)
    sim.start(eff)
    records = list(sim.core.tickets.values())
    fresh = Sim.new(workers=1)
    out = fresh.core.restore(records, sim.now + 5)
    (again,) = [e for e in out.effects if isinstance(e, C.StartAgent)]
    assert (again.attempt, again.branch) == (1, "agent-1/t")
    check_invariants(fresh.core)


def test_stop_while_awaiting_approval_then_continue_needs_no_new_attempt():
    sim = Sim.new(workers=1)
    sim.add(ticket("t", locks=["a"]))
    (eff,) = sim.take(C.StartAgent)
    sim.ci(sim.run_to_ci(eff))
    assert sim.command("stop", "t").ok
    assert sim.state("t") == S.STOPPED and len(sim.core.locks) == 0
    sim.command("continue", "t")
    assert sim.state("t") == S.AWAITING_APPROVAL
    assert sim.take(C.StartAgent) == []
    assert sim.rec("t").attempt == 1


def test_stop_while_ci_runs_then_continue_pushes_again():
    sim = Sim.new(workers=1)
    sim.add(ticket("t"))
    (eff,) = sim.take(C.StartAgent)
    sha = sim.run_to_ci(eff)
    sim.command("stop", "t")
    sim.ci(sha)  # the result arrives while stopped: nobody waits for it
    assert sim.state("t") == S.STOPPED
    sim.command("continue", "t")
    (push,) = sim.take(C.Push)
    assert push.branch == "agent-1/t"
    sim.push(push)
    assert sim.state("t") == S.CI_RUNNING


def test_continue_of_a_blocked_ticket_says_why_it_still_waits():
    sim = Sim.new(workers=1, max_attempts=1)
    sim.add(ticket("parent"))
    sim.add(ticket("child", depends_on=["parent"]))
    (eff,) = sim.take(C.StartAgent)
    sim.exit(eff, code=1)
    assert sim.state("child") == S.BLOCKED
    out = sim.command("continue", "child")
    assert not out.ok and "still blocked" in out.message


def test_a_rejected_id_can_be_submitted_again():
    sim = Sim.new(workers=0)
    sim.add(ticket("a", depends_on=["ghost"]))
    sim.tick(C.UNKNOWN_DEPENDENCY_GRACE_S + 1)
    assert sim.state("a") == S.REJECTED
    sim.add(ticket("a"), path="/backlog/a-fixed.yaml")
    assert sim.state("a") == S.QUEUED


def test_a_queued_file_that_turns_invalid_cancels_its_ticket():
    sim = Sim.new(workers=0)
    sim.add(ticket("a"))
    sim.feed(C.TicketRead(path="/backlog/a.yaml", now=sim.now, error="a.yaml: bad"))
    assert sim.state("a") == S.CANCELLED
    assert "bad" in sim.rec("a").reason


def test_stop_while_the_branch_is_being_pushed_ends_stopped():
    sim = Sim.new(workers=1)
    sim.add(ticket("t"))
    (eff,) = sim.take(C.StartAgent)
    sim.start(eff)
    sim.exit(eff)
    (push,) = sim.take(C.Push)
    assert sim.command("stop", "t").ok
    sim.push(push)
    assert sim.state("t") == S.STOPPED
    assert sim.core.workers["agent-1"].ticket is None
    sim.command("continue", "t")
    (again,) = sim.take(C.Push)
    assert again.branch == "agent-1/t"


def test_budget_exceeded_stops_a_running_agent_once_and_ends_stopped():
    sim = Sim.new(workers=1)
    sim.add(ticket("t", locks=["x"]))
    (eff,) = sim.take(C.StartAgent)
    # before the agent process exists (worktree being prepared) there is nothing to stop
    sim.feed(C.BudgetExceeded("t", 1, 2.5, 2.0, sim.now))
    assert sim.take(C.StopAgent) == [] and sim.state("t") == S.RUNNING
    sim.start(eff)
    sim.feed(C.BudgetExceeded("t", 1, 2.5, 2.0, sim.now))
    (stop,) = sim.take(C.StopAgent)
    assert stop.reason == C.StopReason.BUDGET
    sim.feed(C.BudgetExceeded("t", 1, 2.7, 2.0, sim.now))  # already stopping: ignored
    assert sim.take(C.StopAgent) == []
    sim.exit(eff, code=-15)
    rec = sim.rec("t")
    assert rec.state == S.STOPPED
    assert rec.reason == (
        "budget exceeded: $2.50 spent, budget.max_cost_usd is $2.00; raise it and continue; "
        "work committed on agent-1/t"
    )
    assert sim.core.workers["agent-1"].ticket is None and len(sim.core.locks) == 0
    sim.feed(C.BudgetExceeded("t", 1, 3.0, 2.0, sim.now))  # not running: ignored
    assert sim.take(C.StopAgent) == [] and sim.state("t") == S.STOPPED
    check_invariants(sim.core)


def test_encoded_views_follow_the_merge_queue_as_it_moves():
    """A merge queue entry's view depends on the entries ahead (its position, what it
    is stacked on), which change without the entry itself changing: the cached
    encoded views stay equal to fresh ones at every step of the queue draining."""
    sim = Sim.new(workers=3, approval="auto", merge=MergeConfig(depth=3))
    for tid in ("a", "b", "c"):
        sim.add(ticket(tid, locks=[f"{tid}.py"]))
    for eff in sim.take(C.StartAgent):
        sim.start(eff)
        sim.exit(eff)
    for push in sim.take(C.Push):
        sim.push(push)
    assert sim.core.merge_queue == ["a", "b", "c"]
    positions = []
    for _ in range(30):
        check_encoded_views(sim.core)
        positions.append(
            [(t.id, t.queue_position, t.stacked_on) for t in sim.core.ticket_views(sim.now)]
        )
        stacks, ffs = sim.take(C.Stack), sim.take(C.FastForward)
        if not stacks and not ffs:
            break
        for eff in stacks[:1]:
            sim.stack(eff)
        sim.effects += stacks[1:]
        for rec in list(sim.core.tickets.values()):
            if rec.state == S.MERGING and rec.ci_sha:
                sim.ci(rec.ci_sha, "pass")
        for ff in ffs:
            sim.fast_forward(ff)
    assert sim.merged == ["a", "b", "c"]
    # b moved to the head of the queue, on main, without a change of its own
    assert any(("b", 1, "main") in p for p in positions)


def test_a_snapshot_from_cached_views_decodes_as_the_snapshot_it_stands_for():
    """``Core.snapshot`` (what ``status`` and a subscriber get) decodes, through the
    client's decoder, to the same Snapshot as one built from fresh views."""
    sim = Sim.new(workers=1)
    for k in range(5):
        sim.add(ticket(f"t{k}", priority=k % 3, locks=[f"f{k}.py"]))
        sim.now += 10
    sim.core.snapshot(sim.now, 7, "manual")  # fills the cache
    sim.command("priority", "t3", priority=0)  # one ticket changes, one moves up
    sim.now += 100
    line = P.encode(P.StatusReply(ok=True, snapshot=sim.core.snapshot(sim.now, 7, "auto")))
    reply = P.decode_server(line)
    assert isinstance(reply, P.StatusReply)
    expected = P.Snapshot(
        version=P.PROTOCOL_VERSION,
        last_event_id=7,
        tickets=sim.core.ticket_views(sim.now),
        agents=[sim.core.agent_view(w) for w in sim.core.workers.values()],
        leases=sim.core.lease_views(),
        approval="auto",
    )
    assert reply.snapshot == expected
    assert [t.id for t in reply.snapshot.tickets][:2] == ["t3", "t1"]
    assert P.decode_server(P.encode(sim.core.snapshot(sim.now, 7, "auto", tickets=False))) == (
        msgspec.structs.replace(expected, tickets=[])
    )


def test_a_lost_node_requeues_without_counting_the_attempt():
    """runner: ray: the agent's node died; the attempt is re-run, not counted, and the
    reason names the node and the WIP push the branch was moved to."""
    sim = Sim.new(workers=1, max_attempts=1)
    sim.add(ticket("t", locks=["a"]))
    (eff,) = sim.take(C.StartAgent)
    sim.feed(C.AgentStarted("agent-1", "t", 1, 7, "/log", "", sim.now, node="n" * 56, host="box"))
    view = sim.core.agent_view(sim.core.workers["agent-1"])
    assert (view.node, view.host) == ("n" * 56, "box")
    sim.feed(C.AgentExited("agent-1", "t", 1, -9, sim.now, head="abc1234567890", lost="node died"))
    (lost,) = [e.message for e in sim.events if e.kind == "agent.exited"]
    assert "box (Ray node nnnnnnnnnnnn) was lost mid-attempt (node died)" in lost
    assert "requeued from its last WIP push at abc1234567, attempt not counted" in lost
    (again,) = sim.take(C.StartAgent)  # max_attempts 1: not used up by the lost attempt
    assert (again.attempt, again.branch) == (1, "agent-1/t")
    check_invariants(sim.core)


def test_an_agent_waiting_for_cluster_resources_says_so_until_it_starts():
    sim = Sim.new(workers=1)
    sim.add(ticket("t", locks=["a"]))
    (eff,) = sim.take(C.StartAgent)
    sim.feed(C.AgentWaiting("agent-1", "t", 1, "num_cpus=1, agent=1", sim.now))
    assert sim.rec("t").reason == "waiting for Ray resources: num_cpus=1, agent=1"
    assert any(e.kind == "ticket.waiting" for e in sim.events)
    sim.start(eff)
    assert sim.rec("t").reason == ""
