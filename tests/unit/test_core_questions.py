"""The pure core's rules for agents that ask a person (needs_input), issue 13 item 2."""

from __future__ import annotations

from orchestrator.daemon import core as C
from orchestrator.shared.models import AgentState
from orchestrator.shared.models import TicketState as S
from tests.unit.coresim import Sim, check_invariants, run_id, ticket


def _asking(**config: object) -> tuple[Sim, C.StartAgent]:
    sim = Sim.new(workers=1, **config)
    sim.add(ticket("t", locks=["a"]))
    (eff,) = sim.take(C.StartAgent)
    sim.start(eff)
    out = sim.ask(eff, "Which colour?\nred or blue")
    assert out.ok, out.message
    return sim, eff


def _closed(sim: Sim) -> list[C.QuestionClosed]:
    return sim.take(C.QuestionClosed)


def test_ask_puts_the_ticket_in_needs_input_with_its_question_shown():
    sim, eff = _asking()
    rec = sim.rec("t")
    assert rec.state == S.NEEDS_INPUT and rec.agent == "agent-1"
    view = sim.core.ticket_view(rec, sim.now)
    assert view.question == "Which colour?\nred or blue" and view.asked_at == sim.now
    assert view.reason == "asks: Which colour? red or blue"
    agent = sim.core.agent_view(sim.core.workers["agent-1"])
    assert agent.state == AgentState.NEEDS_INPUT and agent.ticket == "t"
    (question,) = sim.core.questions()
    assert (question.ticket, question.agent, question.waiting) == ("t", "agent-1", True)
    assert any(e.kind == "question.asked" and e.text == rec.question for e in sim.events)
    assert len(sim.core.locks) == 1  # it keeps its lease
    check_invariants(sim.core)


def test_answer_resumes_the_waiting_agent_and_hands_it_the_answer():
    sim, eff = _asking()
    out = sim.command("answer", "t", text="  blue  ")
    assert out.ok and "continues" in out.message
    assert sim.state("t") == S.RUNNING and sim.rec("t").question == ""
    (closed,) = _closed(sim)
    assert (closed.ticket, closed.answer) == ("t", "blue")
    assert sim.core.questions() == []
    # the attempt goes on as usual: exit, push, CI
    sim.exit(eff)
    assert sim.take(C.Push)
    assert sim.rec("t").attempt == 1


def test_needs_input_is_never_stale():
    sim, eff = _asking(stale_after_s=10.0, stale_grace_s=5.0, lease_ttl_s=30.0)
    for _ in range(100):
        sim.tick(7)
    assert sim.state("t") == S.NEEDS_INPUT
    assert not any(e.kind in ("agent.stale", "agent.stopping") for e in sim.events)
    assert sim.take(C.StopAgent) == []
    # answered: the stale clock starts afresh from the answer
    sim.command("answer", "t", text="ok")
    sim.tick(9)
    assert not any(e.kind == "agent.stale" for e in sim.events)
    sim.tick(2)
    assert any(e.kind == "agent.stale" for e in sim.events)


def test_only_the_current_attempts_agent_may_ask():
    sim = Sim.new(workers=1)
    sim.add(ticket("t"))
    (eff,) = sim.take(C.StartAgent)
    out = sim.ask(eff)  # not started yet: no agent process
    assert not out.ok and "only the agent of a running ticket" in out.message
    sim.start(eff)
    out = sim.command("ask", "t", question="q", run_id="someone-else")
    assert not out.ok and "ORCH_RUN_ID" in out.message
    assert sim.state("t") == S.RUNNING
    assert not sim.ask(eff, "   ").ok
    sim.add(ticket("u"))
    out = sim.command("ask", "u", question="q", run_id=run_id(eff))
    assert not out.ok and "is queued" in out.message


def test_asking_again_reattaches_and_a_second_question_is_refused():
    sim, eff = _asking()
    assert sim.ask(eff, "Which colour?\nred or blue").ok
    out = sim.ask(eff, "something else?")
    assert not out.ok and "one at a time" in out.message


def test_answer_refused_without_a_question_or_text():
    sim, _ = _asking()
    assert not sim.command("answer", "t", text="   ").ok
    assert sim.state("t") == S.NEEDS_INPUT
    sim.add(ticket("u"))
    out = sim.command("answer", "u", text="x")
    assert not out.ok and "no open question" in out.message
    assert not sim.command("answer", "nope", text="x").ok


def test_ask_timeout_withdraws_the_question_and_the_agent_goes_on():
    sim, eff = _asking()
    sim.feed(C.AskTimedOut("t", "stale-run", sim.now))  # another attempt's timer: ignored
    assert sim.state("t") == S.NEEDS_INPUT
    sim.feed(C.AskTimedOut("t", run_id(eff), sim.now))
    assert sim.state("t") == S.RUNNING and sim.rec("t").question == ""
    (closed,) = _closed(sim)
    assert closed.timed_out and closed.answer is None
    assert any(e.kind == "question.withdrawn" for e in sim.events)
    assert not sim.command("answer", "t", text="late").ok


def test_agent_ending_while_it_waits_keeps_the_question_for_the_next_attempt():
    sim, eff = _asking()
    sim.exit(eff, code=-9)
    rec = sim.rec("t")
    assert rec.state == S.NEEDS_INPUT and rec.agent is None
    assert sim.core.workers["agent-1"].ticket is None and len(sim.core.locks) == 1
    assert sim.core.questions()[0].waiting is False
    assert "next attempt" in rec.reason
    check_invariants(sim.core)
    assert sim.command("answer", "t", text="blue").ok
    (again,) = sim.take(C.StartAgent)
    assert again.attempt == 1  # the interrupted attempt is run again, not counted twice
    assert "Which colour?" in again.feedback and "The answer:\nblue" in again.feedback


def test_question_survives_a_restart_and_the_answer_becomes_feedback():
    sim, _ = _asking()
    fresh = Sim.new(workers=1)
    out = fresh.core.restore(list(sim.core.tickets.values()), sim.now + 5)
    rec = fresh.rec("t")
    assert rec.state == S.NEEDS_INPUT and rec.agent is None and rec.question
    assert not [e for e in out.effects if isinstance(e, C.StartAgent)]
    assert [q.ticket for q in fresh.core.questions()] == ["t"]
    check_invariants(fresh.core)
    assert fresh.command("answer", "t", text="red").ok
    (again,) = fresh.take(C.StartAgent)
    assert again.attempt == 1 and "The answer:\nred" in again.feedback


def test_stop_while_needs_input_closes_the_question():
    sim, eff = _asking()
    assert sim.command("stop", "t").ok
    (stop,) = sim.take(C.StopAgent)
    sim.exit(eff, code=-15)
    assert sim.state("t") == S.STOPPED and sim.rec("t").question == ""
    (closed,) = _closed(sim)
    assert closed.answer is None and not closed.timed_out
    # an orphaned question (no agent) is stopped at once
    sim2, eff2 = _asking()
    sim2.exit(eff2, code=-9)
    _closed(sim2)
    assert sim2.command("stop", "t").ok
    assert sim2.state("t") == S.STOPPED and "it asked: Which colour?" in sim2.rec("t").reason
    assert len(sim2.core.locks) == 0


def test_shutdown_while_needs_input_keeps_the_question():
    sim, eff = _asking()
    out = sim.core.stop_all(sim.now)
    (stop,) = [e for e in out.effects if isinstance(e, C.StopAgent)]
    assert stop.reason == "shutdown"
    sim.exit(eff, code=-15)
    assert sim.state("t") == S.NEEDS_INPUT and sim.rec("t").agent is None


def test_the_same_question_asked_again_after_the_answer_gets_it_at_once():
    """An agent CLI that kills a long tool call (its `ask`) and runs it again later."""
    sim, eff = _asking()
    sim.command("answer", "t", text="blue")
    _closed(sim)
    out = sim.ask(eff, "Which colour?\nred or blue")
    assert out.ok and sim.state("t") == S.RUNNING
    (closed,) = _closed(sim)
    assert closed.answer == "blue"
    assert sim.ask(eff, "Another one?").ok  # a new question waits for a new answer
    assert sim.state("t") == S.NEEDS_INPUT
    # while it is open, the old question is not answered from memory (that would close
    # the waiting ask of the new one)
    out = sim.ask(eff, "Which colour?\nred or blue")
    assert not out.ok and "one at a time" in out.message
    assert _closed(sim) == [] and sim.state("t") == S.NEEDS_INPUT
