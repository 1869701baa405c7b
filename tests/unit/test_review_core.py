"""The reviewer stage in the pure core (transitions) and the decoding of its answer."""

from __future__ import annotations

import msgspec

from orchestrator.daemon import core as C
from orchestrator.daemon.review import ReviewAnswer, parse_review
from orchestrator.shared.config import ReviewConfig
from orchestrator.shared.models import ReviewComment, ReviewStatus
from orchestrator.shared.models import TicketState as S
from tests.unit.coresim import Sim, check_invariants, ticket

COMMENT = ReviewComment(path="app.py", line=3, body="name the constant")


def reviewed_sim(approval: str = "manual", max_rounds: int = 2, **config: object) -> Sim:
    review = ReviewConfig(command=["reviewer", "{diff_file}"], max_rounds=max_rounds, timeout_s=60)
    return Sim.new(workers=1, approval=approval, review=review, **config)


def to_review(sim: Sim, tid: str = "t") -> C.Review:
    """Run the ticket's next attempt to a CI pass; return the Review effect it led to."""
    (eff,) = sim.take(C.StartAgent)
    sha = sim.run_to_ci(eff)
    assert sim.state(tid) == S.CI_RUNNING
    sim.ci(sha)
    (review,) = sim.take(C.Review)
    assert (review.ticket, review.sha, review.attempt) == (tid, sha, eff.attempt)
    assert sim.state(tid) == S.REVIEWING
    check_invariants(sim.core)
    return review


def answer(sim: Sim, review: C.Review, status: str, *comments: ReviewComment, error: str = ""):
    return sim.feed(
        C.ReviewResult(
            review.ticket, review.gen, ReviewStatus(status), sim.now, comments, error=error
        )
    )


def test_approve_leads_to_approval_with_manual_approval():
    sim = reviewed_sim()
    sim.add(ticket("t"))
    review = to_review(sim)
    assert review.round == 1
    out = answer(sim, review, "approve", COMMENT)
    assert sim.state("t") == S.AWAITING_APPROVAL
    assert "review approved (1 comment)" in sim.rec("t").reason
    view = sim.core.ticket_view(sim.rec("t"))
    assert view.review is not None and view.review.status == "approve"
    assert view.review.comments == [COMMENT] and view.review.round == 1
    (result,) = [e for e in out.events if e.kind == "review.result"]
    assert result.text == "- app.py:3: name the constant"
    check_invariants(sim.core)


def test_a_reviewer_makes_auto_approval_run_branch_ci_first():
    sim = reviewed_sim(approval="auto")
    sim.add(ticket("t"))
    (eff,) = sim.take(C.StartAgent)
    sim.start(eff)
    sim.exit(eff)
    (push,) = sim.take(C.Push)
    assert push.ci  # no ci=skip: the reviewer only ever sees a change CI passed on
    sim.ci(sim.push(push))
    (review,) = sim.take(C.Review)
    answer(sim, review, "approve")
    assert sim.state("t") == S.MERGING
    sim.settle()
    assert sim.state("t") == S.MERGED


def test_without_a_reviewer_auto_approval_skips_branch_ci():
    sim = Sim.new(workers=1, approval="auto")
    sim.add(ticket("t"))
    (eff,) = sim.take(C.StartAgent)
    sim.start(eff)
    sim.exit(eff)
    (push,) = sim.take(C.Push)
    assert not push.ci


def test_request_changes_sends_the_comments_back_then_approve():
    sim = reviewed_sim(max_attempts=1)
    sim.add(ticket("t"))
    first = to_review(sim)
    answer(sim, first, "request_changes", COMMENT)
    rec = sim.rec("t")
    assert rec.state == S.QUEUED or rec.state == S.RUNNING
    (again,) = [e for e in sim.effects if isinstance(e, C.StartAgent)]
    assert again.attempt == 2  # a new attempt, though max_attempts is 1: rounds are bounded
    assert "The reviewer (round 1 of 2) requested changes" in again.feedback
    assert "- app.py:3: name the constant" in again.feedback
    second = to_review(sim)
    assert second.round == 2 and second.gen > first.gen
    answer(sim, second, "approve")
    assert sim.state("t") == S.AWAITING_APPROVAL
    check_invariants(sim.core)


def test_max_rounds_reached_waits_for_a_person():
    sim = reviewed_sim(approval="auto", max_rounds=2)
    sim.add(ticket("t"))
    answer(sim, to_review(sim), "request_changes", COMMENT)
    answer(sim, to_review(sim), "request_changes", COMMENT, COMMENT)
    rec = sim.rec("t")
    assert rec.state == S.AWAITING_APPROVAL  # even with auto approval: a person decides
    assert rec.reason == "review: changes requested 2 rounds; needs a person"
    assert sim.take(C.StartAgent) == []
    # a person's reject sends it back, and the reviewer looks afresh
    assert sim.command("reject", "t", feedback="do it differently").ok
    review = to_review(sim)
    assert review.round == 1
    check_invariants(sim.core)


def test_a_review_error_waits_for_a_person_who_may_approve():
    sim = reviewed_sim(approval="auto")
    sim.add(ticket("t"))
    review = to_review(sim)
    out = answer(sim, review, "error", error="the reviewer exited with code 3")
    rec = sim.rec("t")
    assert rec.state == S.AWAITING_APPROVAL
    assert rec.reason.startswith("review error: the reviewer exited with code 3")
    assert [e.kind for e in out.events].count("review.error") == 1
    assert sim.command("approve", "t").ok
    assert sim.state("t") == S.MERGING


def test_a_red_ci_is_never_reviewed_and_an_approval_does_not_turn_it_green():
    sim = reviewed_sim(approval="auto", max_attempts=1)
    sim.add(ticket("t"))
    (eff,) = sim.take(C.StartAgent)
    sha = sim.run_to_ci(eff)
    sim.ci(sha, "fail", tail="1 failed")
    assert sim.take(C.Review) == []
    assert sim.state("t") == S.FAILED
    # a reviewer's approval arriving anyway (any generation) changes nothing
    for gen in range(3):
        sim.feed(C.ReviewResult("t", gen, ReviewStatus.APPROVE, sim.now))
    assert sim.state("t") == S.FAILED
    assert sim.take(C.Stack) == [] and sim.take(C.FastForward) == []


def test_an_approval_while_ci_runs_is_ignored():
    sim = reviewed_sim(approval="auto")
    sim.add(ticket("t"))
    (eff,) = sim.take(C.StartAgent)
    sha = sim.run_to_ci(eff)
    sim.feed(C.ReviewResult("t", 0, ReviewStatus.APPROVE, sim.now))
    sim.feed(C.ReviewResult("t", 1, ReviewStatus.APPROVE, sim.now))
    assert sim.state("t") == S.CI_RUNNING
    sim.ci(sha, "error")
    assert sim.state("t") in (S.QUEUED, S.RUNNING)
    assert sim.take(C.Review) == []


def test_stop_while_reviewing_then_continue_reviews_again_and_ignores_the_old_result():
    sim = reviewed_sim()
    sim.add(ticket("t"))
    review = to_review(sim)
    assert sim.command("stop", "t").ok
    assert sim.state("t") == S.STOPPED
    assert sim.take(C.StopReview) == [C.StopReview("t", review.gen)]  # the shell ends it
    answer(sim, review, "approve")  # the old reviewer's answer: nobody waits for it
    assert sim.state("t") == S.STOPPED
    sim.command("continue", "t")
    (again,) = sim.take(C.Review)
    assert again.round == review.round and again.gen > review.gen
    answer(sim, review, "approve")  # still the old one
    assert sim.state("t") == S.REVIEWING
    answer(sim, again, "approve")
    assert sim.state("t") == S.AWAITING_APPROVAL
    check_invariants(sim.core)


def test_restore_runs_the_review_again():
    sim = reviewed_sim()
    sim.add(ticket("t", locks=["a"]))
    review = to_review(sim)
    records = [
        msgspec.json.decode(msgspec.json.encode(r), type=C.TicketRecord)
        for r in sim.core.tickets.values()
    ]
    fresh = reviewed_sim()
    out = fresh.core.restore(records, sim.now + 5)
    (again,) = [e for e in out.effects if isinstance(e, C.Review)]
    assert (again.round, again.sha) == (1, review.sha) and again.gen > review.gen
    assert fresh.state("t") == S.REVIEWING and len(fresh.core.locks) == 1
    check_invariants(fresh.core)


def test_a_reviewer_that_never_answers_is_a_review_error():
    sim = reviewed_sim()
    sim.add(ticket("t"))
    to_review(sim)
    sim.tick(30)
    assert sim.state("t") == S.REVIEWING
    sim.tick(60 + C.REVIEW_REPORT_MARGIN_S)
    assert sim.state("t") == S.AWAITING_APPROVAL
    assert "the reviewer did not report in time" in sim.rec("t").reason


# --- the reviewer's answer -------------------------------------------------------


def test_parse_a_plain_answer():
    got = parse_review(b'{"verdict": "approve", "comments": []}\n')
    assert got == ReviewAnswer(verdict="approve", comments=[])


def test_parse_takes_the_json_after_chatter_and_a_code_fence():
    out = (
        b"Let me look at the diff.\n{not json}\nDone.\n```json\n"
        b'{\n  "verdict": "request_changes",\n  "comments": [\n'
        b'    {"path": "a.py", "line": null, "body": "x"}\n  ]\n}\n```\n'
    )
    got = parse_review(out)
    assert isinstance(got, ReviewAnswer)
    assert got.verdict == "request_changes"
    assert got.comments == [ReviewComment(path="a.py", line=None, body="x")]


def test_parse_refuses_what_is_not_an_answer():
    assert parse_review(b"") == "the reviewer printed nothing on stdout"
    assert (
        parse_review(b"LGTM!\n") == "the reviewer printed no JSON object (its last line: 'LGTM!')"
    )
    wrong = parse_review(b'{"verdict": "maybe"}')
    assert isinstance(wrong, str) and "not a review answer" in wrong and "$.verdict" in wrong
    extra = parse_review(b'{"verdict": "approve", "score": 3}')
    assert isinstance(extra, str) and "score" in extra
    typed = parse_review(b'{"verdict": "approve", "comments": [{"path": "a", "line": "7"}]}')
    assert isinstance(typed, str) and "\n" not in typed


def test_tasks_md_has_an_in_review_section_with_the_summary():
    from orchestrator.daemon.homefiles import render_tasks

    sim = reviewed_sim()
    sim.add(ticket("t"))
    review = to_review(sim)
    text = render_tasks(sim.core.ticket_views(sim.now), sim.now)
    assert "## In review (1)" in text and "(review round 1 of 2: running)" in text
    answer(sim, review, "approve", COMMENT, COMMENT)
    text = render_tasks(sim.core.ticket_views(sim.now), sim.now)
    assert "## Awaiting approval (1)" in text
    assert "(review round 1 of 2: approve, 2 comments)" in text
