"""The pure state machine at the heart of the daemon.

``Core.handle(input)`` takes one input (a ticket file read, an agent exit, a CI
result, a command, a clock tick...) and returns an :class:`Outcome`: the effects
the shell must perform, the events to persist and publish, and for commands the
reply. It performs no I/O and never reads the clock: time arrives in the inputs
(``now`` is Unix time in seconds). The rules it applies are documented in
docs/architecture.md (state machine), docs/scheduling.md (order, eligibility,
aging, starvation) and docs/liveness.md (heartbeats, staleness).
"""

from __future__ import annotations

import enum
import gc
import heapq
import itertools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import PurePath as Path

import msgspec

from orchestrator.daemon.locks import LockConflict, LockTable
from orchestrator.shared import protocol as P
from orchestrator.shared.config import Config
from orchestrator.shared.lockspec import paths_outside
from orchestrator.shared.models import (
    ACTIVE_STATES,
    FINAL_STATES,
    AgentState,
    AgentView,
    CIState,
    CIVerdict,
    CIView,
    LeaseView,
    QuestionView,
    ReviewComment,
    ReviewStatus,
    ReviewView,
    Ticket,
    TicketState,
    TicketView,
)
from orchestrator.shared.protocol import Event
from orchestrator.shared.protocol import EventKind as K

#: A dependency that is still unknown this long after its dependent arrived
#: rejects the dependent (it may simply not have been read yet before that).
UNKNOWN_DEPENDENCY_GRACE_S = 5.0
#: CI that has not reported this long after its time limit counts as an error.
CI_REPORT_MARGIN_S = 120.0
#: Stacking attempts after a git error before the ticket waits for a person.
QUEUE_ERROR_RETRIES = 3
#: How much of a log goes into the next attempt's feedback.
FEEDBACK_TAIL_CHARS = 4000
#: A reviewer that has not reported this long after ``review.timeout_s`` is a review error
#: (the shell kills it at ``timeout_s``; this is the safety net).
REVIEW_REPORT_MARGIN_S = 60.0
#: The start of a running ticket's reason while its agent waits for room on the cluster.
WAITING_PREFIX = "waiting for Ray resources: "

#: A line that git would read as a trailer (``Key: value``, see git-interpret-trailers(1)).
_TRAILER_LIKE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*[ \t]*:", re.MULTILINE)

S = TicketState
#: States in which the ticket's agent process may run (it holds a worker).
AGENT_STATES = frozenset({S.RUNNING, S.NEEDS_INPUT})
#: CI verdicts that fail a merge queue entry (or its batch).
FAILED_CI = frozenset({CIState.FAIL, CIState.ERROR})
#: A ticket in these states may be re-submitted under the same id.
REPLACEABLE = frozenset({S.CANCELLED, S.REJECTED})


class StopReason(enum.StrEnum):
    """Why a running agent is being stopped (persisted in ``TicketRecord.stop_requested``)."""

    NONE = ""
    """Not being stopped (falsy)."""
    STOP = "stop"
    """A person's ``stop`` command: the ticket ends ``stopped``."""
    STALE = "stale"
    """No progress past ``stale_after_s + stale_grace_s``: requeued."""
    EXPIRED = "expired"
    """Its lease expired: requeued."""
    SHUTDOWN = "shutdown"
    """The daemon stops: requeued without counting the attempt."""
    BUDGET = "budget"
    """The ticket spent more than its budget: the ticket ends ``stopped``."""


class StackOutcome(enum.StrEnum):
    """What :class:`Stack` did (see :class:`Stacked`)."""

    STACKED = "stacked"
    MERGED = "merged"
    CONFLICT = "conflict"
    EMPTY = "empty"
    ERROR = "error"


class MergeOutcome(enum.StrEnum):
    """What :class:`FastForward` did (see :class:`MergeResult`)."""

    MERGED = "merged"
    MOVED = "moved"
    ERROR = "error"


class TicketRecord(msgspec.Struct, kw_only=True):
    """Everything the daemon knows about one ticket; persisted as JSON."""

    ticket: Ticket
    file: str
    state: TicketState
    seq: int
    queued_at: float
    state_since: float
    attempt: int = 0
    max_attempts: int = 3
    agent: str | None = None
    branch: str | None = None
    reason: str = ""
    feedback: str = ""
    """Feedback for the next attempt (log tail, CI log, conflict, reviewer text)."""
    ci: CIView | None = None
    ci_sha: str | None = None
    """The commit whose CI result the ticket waits for."""
    ci_started: float = 0.0
    rebuild: bool = False
    """The next attempt starts its branch afresh from main (after a merge conflict)."""
    stop_requested: StopReason = StopReason.NONE
    """Why the running agent is being stopped (empty: it is not)."""
    approved_at: float = 0.0
    """Unix time (s) it entered the merge queue (its order among equal priorities)."""
    verified_sha: str = ""
    """The pushed branch commit CI passed on (manual approval), else empty."""
    queue_sha: str = ""
    """Its merge queue commit (net change stacked on ``queue_parent``); empty: not stacked."""
    queue_parent: str = ""
    """The commit ``queue_sha`` is built on: main or the commit of the entry ahead."""
    queue_gen: int = 0
    """Bumped whenever its stack is discarded, so late results for it are ignored."""
    queue_errors: int = 0
    """Stacking errors in a row (a git failure); after ``QUEUE_ERROR_RETRIES`` a person
    looks (``awaiting_approval``)."""
    merged_sha: str | None = None
    log_file: str = ""
    feedback_file: str = ""
    reserved: bool = False
    resume: str = ""
    """Where ``continue`` resumes a ticket stopped after its agent finished:
    ``ci_running`` or ``awaiting_approval`` (empty: run the agent again)."""
    pushed_sha: str | None = None
    """The branch commit last pushed (an attempt must add something new to it)."""
    agent_pid: int | None = None
    """The running agent's pid (= its process group), to end it after a crash."""
    priority_override: int | None = None
    """A person's ``priority`` command; wins over the file's priority, edits included."""
    granted_attempts: int = 0
    """The attempt limit a person's ``continue``/``reject`` raised it to; a later
    edit of the file's ``max_attempts`` never lowers the limit below it."""
    run_id: str = ""
    """The running agent's ``ORCH_RUN_ID``; only it may ``ask`` (empty: none runs)."""
    question: str = ""
    """The open question of its agent (``needs_input``); empty: none."""
    asked_at: float = 0.0
    """Unix time (s) ``question`` was asked."""
    asked_by: str = ""
    """The worker whose agent asked ``question``."""
    review: ReviewView | None = None
    """Its latest reviewer round (docs/review.md)."""
    review_round: int = 0
    """Reviewer rounds run since a person last sent it back (``review.max_rounds``)."""
    review_gen: int = 0
    """Bumped at each :class:`Review` effect, so a late result of an earlier one is ignored."""
    answered: tuple[str, str] | None = None
    """(question, answer) last answered for the running attempt's agent: the same
    question asked again (its ``ask`` was killed before the answer arrived) gets this
    answer at once. Cleared when an attempt starts."""

    @property
    def id(self) -> str:
        assert self.ticket.id is not None
        return self.ticket.id


@dataclass
class Worker:
    """A worker ``agent-K`` (not persisted: derived from tickets on start)."""

    name: str
    worktree: str
    ticket: str | None = None
    state_since: float = 0.0
    pid: int | None = None
    last_activity: float = 0.0
    note: str = ""
    stale_since: float | None = None
    node: str = ""
    """The Ray node id its agent runs on ("" on this machine)."""
    host: str = ""


# --- inputs -----------------------------------------------------------------


@dataclass(frozen=True)
class TicketRead:
    """A backlog file was read: ``ticket`` when valid, else ``error``."""

    path: str
    now: float
    ticket: Ticket | None = None
    error: str = ""


@dataclass(frozen=True)
class TicketFileGone:
    path: str
    now: float


@dataclass(frozen=True)
class FileMoved:
    ticket: str
    path: str
    now: float


@dataclass(frozen=True)
class AgentStarted:
    agent: str
    ticket: str
    attempt: int
    pid: int
    log_file: str
    feedback_file: str
    now: float
    run_id: str = ""
    """The attempt's ``ORCH_RUN_ID`` (its agent proves who it is with it in ``ask``)."""
    node: str = ""
    """The Ray node id the agent runs on ("" on this machine); ``host`` its host name."""
    host: str = ""


@dataclass(frozen=True)
class AgentWaiting:
    """The agent of ``ticket``'s ``attempt`` cannot start yet: ``reason`` says why (no
    room for it on the Ray cluster)."""

    agent: str
    ticket: str
    attempt: int
    reason: str
    now: float


@dataclass(frozen=True)
class AgentExited:
    """The agent process ended and the worker committed what it left.

    ``exit_code`` is None when it could not be started (``reason`` says why).
    ``changed`` lists the paths the branch changes against main; ``head`` is
    the branch's commit after the worker committed what the agent left.
    """

    agent: str
    ticket: str
    attempt: int
    exit_code: int | None
    now: float
    changed: tuple[str, ...] = ()
    head: str = ""
    log_tail: str = ""
    reason: str = ""
    lost: str = ""
    """Why the agent's node was lost mid-attempt ("" when it was not): the attempt is
    requeued without counting it; ``head`` is its last WIP push."""


@dataclass(frozen=True)
class Pushed:
    ticket: str
    attempt: int
    sha: str
    now: float
    error: str = ""


@dataclass(frozen=True)
class CIResult:
    sha: str
    status: CIVerdict
    now: float
    exit_code: int | None = None
    duration_s: float | None = None
    log_tail: str = ""


@dataclass(frozen=True)
class ReviewResult:
    """A :class:`Review` effect's result for generation ``gen``: ``status`` ``approve`` or
    ``request_changes`` with ``comments``, or ``error`` with a one-line ``error``."""

    ticket: str
    gen: int
    status: ReviewStatus
    now: float
    comments: tuple[ReviewComment, ...] = ()
    error: str = ""
    duration_s: float | None = None


@dataclass(frozen=True)
class Stacked:
    """A :class:`Stack` effect's result for generation ``gen`` of a queue entry.

    ``outcome``: ``stacked`` (``sha`` is the commit on ``parent``; ``verified``
    when its tree is the tree CI already passed on; ``test`` echoes the effect's: it
    was pushed for CI), ``merged`` (the merger's record
    ``refs/orchestrator/merged/<id>`` is in main: merged before, ``sha``), ``conflict``
    (``text`` names the files), ``empty`` (changes nothing on ``parent``) or ``error``.
    """

    ticket: str
    gen: int
    outcome: StackOutcome
    now: float
    sha: str = ""
    parent: str = ""
    verified: bool = False
    text: str = ""
    test: bool = True


@dataclass(frozen=True)
class MergeResult:
    """A :class:`FastForward` effect's result. ``outcome``: ``merged`` (main is at
    ``sha``), ``moved`` (main is not the entry's parent: moved outside the queue) or
    ``error`` (``text`` says why)."""

    ticket: str
    outcome: MergeOutcome
    now: float
    sha: str = ""
    text: str = ""


@dataclass(frozen=True)
class Progress:
    """Signs of life from an agent: output, a worktree change or a heartbeat call."""

    agent: str
    now: float
    note: str = ""


@dataclass(frozen=True)
class Tick:
    now: float


@dataclass(frozen=True)
class BudgetExceeded:
    """The ticket's agents have cost ``cost_usd`` so far, more than ``limit_usd``
    (``budget.max_cost_usd``); sent by the shell's budget watch (docs/usage.md)."""

    ticket: str
    attempt: int
    cost_usd: float
    limit_usd: float
    now: float


@dataclass(frozen=True)
class AskTimedOut:
    """An ``ask`` of the agent with ``run_id`` got no answer within its ``timeout_s``
    (the shell times it); the open question is withdrawn."""

    ticket: str
    run_id: str
    now: float


@dataclass(frozen=True)
class Command:
    """A command about one ticket, as received on the socket (approve, stop, continue,
    reject, priority, heartbeat)."""

    command: P.TicketCommands
    now: float


Input = (
    TicketRead
    | TicketFileGone
    | FileMoved
    | AgentStarted
    | AgentWaiting
    | AgentExited
    | Pushed
    | CIResult
    | ReviewResult
    | Stacked
    | MergeResult
    | Progress
    | Tick
    | BudgetExceeded
    | AskTimedOut
    | Command
)

# --- effects ----------------------------------------------------------------


@dataclass(frozen=True)
class StartAgent:
    agent: str
    ticket: str
    attempt: int
    branch: str
    feedback: str
    rebuild: bool
    ticket_file: str = ""


@dataclass(frozen=True)
class StopAgent:
    agent: str
    ticket: str
    reason: StopReason


@dataclass(frozen=True)
class Push:
    """Push ``branch`` to repo.git; ``ci`` False asks the hook not to run CI on it (the
    merge queue run will be its CI)."""

    agent: str
    ticket: str
    attempt: int
    branch: str
    ci: bool = True


@dataclass(frozen=True)
class Review:
    """Run the reviewer (``review.command``) on ``sha``, the ticket's branch commit CI
    passed on: its net diff against its merge base with main goes to ``{diff_file}``.
    Answered by :class:`ReviewResult` (always, also when the reviewer fails)."""

    ticket: str
    gen: int
    round: int
    attempt: int
    branch: str
    sha: str
    ticket_file: str = ""


@dataclass(frozen=True)
class StopReview:
    """End the reviewer of generation ``gen`` (the ticket was stopped while reviewing);
    its late answer, if any, is ignored."""

    ticket: str
    gen: int


@dataclass(frozen=True)
class Stack:
    """Build a merge queue commit: the net change of ``branch`` (its tip against its
    merge base with main) applied onto ``parent`` (empty: main as it is now), with
    ``message``; when ``test``, push it to ``refs/orchestrator/queue/<ticket>`` (the
    hook runs CI) unless its tree equals ``verified_sha``'s tree. ``reuse``: a commit
    built for the entry before (a batch's bisection, a restart); when it has the same
    parent and tree it is the answer, unchanged, so CI results on it still hold.
    Answered by :class:`Stacked`."""

    ticket: str
    gen: int
    branch: str
    parent: str = ""
    verified_sha: str = ""
    message: str = ""
    test: bool = True
    reuse: str = ""


@dataclass(frozen=True)
class FastForward:
    """Fast-forward main from ``parent`` to ``sha`` (CI passed on exactly its tree) and
    record ``refs/orchestrator/merged/<ticket>``, in one atomic update; ``batch`` lists
    the (ticket, commit) entries between ``parent`` and ``sha`` that reach main with
    it (a batch, ``merge.batch``), each recorded too. Answered by :class:`MergeResult`."""

    ticket: str
    sha: str
    parent: str
    batch: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class MoveFile:
    """Move a backlog file into ``dest`` (``done`` or ``rejected``); ``error`` goes
    beside it as ``<name>.error``. ``ticket`` is None for files that never parsed."""

    path: str
    dest: str
    ticket: str | None = None
    error: str = ""


@dataclass(frozen=True)
class QuestionClosed:
    """The ticket's question is closed: answer every ``ask`` that waits on it with
    ``answer`` (a person answered), ``timed_out``, or else ``message`` (why it closed
    without an answer)."""

    ticket: str
    answer: str | None = None
    timed_out: bool = False
    message: str = ""


Effect = (
    StartAgent
    | StopAgent
    | Push
    | Review
    | StopReview
    | Stack
    | FastForward
    | MoveFile
    | QuestionClosed
)


@dataclass
class Outcome:
    effects: list[Effect] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    ok: bool = True
    message: str = ""
    dirty: set[str] = field(default_factory=set)
    """Ids of tickets whose record changed (to persist)."""


_EncodedView = tuple[int, float, int, bytes, bytes, int, float]
"""A ticket's cached encoded view (``Core._encode_view``): order key (group, rank, seq),
its JSON before and after the value of ``effective_priority``, priority, queued_at."""


class Core:
    """The daemon's state and rules. One instance, mutated only by :meth:`handle`."""

    def __init__(self, config: Config, worktrees: dict[str, str]) -> None:
        """Args:
        config: the project settings.
        worktrees: worker name -> worktree path, e.g. ``{"agent-1": ".../agent-1"}``.
        """
        self.config = config
        self.tickets: dict[str, TicketRecord] = {}
        self.by_file: dict[str, str] = {}
        self.workers: dict[str, Worker] = {n: Worker(n, p) for n, p in worktrees.items()}
        self.locks = LockTable()
        self._heap: list[tuple[float, int, str]] = []
        self._seq = 0
        self._out = Outcome()
        self.dependents: dict[str, set[str]] = {}
        """ticket id -> ids of tickets whose depends_on names it (may hold stale ids)."""
        self._unknown_deps: set[str] = set()
        self._parked: dict[str, set[str]] = {}
        """blocker id -> queued tickets set aside until the blocker changes state."""
        """Queued tickets that named a dependency nobody had submitted yet."""
        self.accepting = True
        """False during shutdown: nothing new is assigned."""
        self.merge_queue: list[str] = []
        """Ids of ``merging`` tickets in merge order (docs/scheduling.md, merge queue)."""
        self.inflight: set[str] = set()
        """Ids of tickets in ``ci_running``, ``reviewing``, ``awaiting_approval`` or ``merging``."""
        self._stacking: tuple[str, int] | None = None
        """(ticket, gen) of the one Stack effect out (stacking is sequential: each entry
        needs the commit of the one ahead). Cleared only by its answer, even when that
        entry was discarded meanwhile, so two pushes of one queue ref never overlap."""
        self._fast_forwarding: tuple[str, ...] = ()
        """The entries whose FastForward effect is out (head first; one unless a batch)."""
        self._split_after: set[str] = set()
        """Entries after which a bisection split a failed batch (merge.batch): each ends
        a batch of its own. In memory only: after a restart a batch is tested whole."""
        self._reuse: dict[str, str] = {}
        """Entry -> its queue commit before the restart, offered to its first Stack, so
        a CI result already on disk for that exact commit is not run again."""
        self._encoded_views: dict[str, _EncodedView] = {}
        """ticket id -> its view's JSON split around the value of ``effective_priority``
        (the one field that changes with time) and its order key; dropped by
        :meth:`_dirty` (:meth:`ticket_views_json`)."""

    # --- public -----------------------------------------------------------

    def restore(self, records: Iterable[TicketRecord], now: float) -> Outcome:
        """Load persisted records after a restart and reconcile what was in flight.

        Running attempts are requeued on their branch (the attempt is re-run,
        not counted again); CI and approval resume without a worker, taking their
        leases again (a branch in CI is pushed again, in case the crash came before
        its push); the merge queue is rebuilt in its order and every entry is
        stacked again, offered its old commit (``Stack.reuse``): where the chain
        below it did not change it gets that exact commit back, so a CI result
        on disk for it holds and is not run again. The shell must stop any agent
        process that outlived the old daemon and commit its work before feeding
        further inputs.
        """
        self._out = Outcome()
        for rec in sorted(records, key=lambda r: r.seq):
            self.tickets[rec.id] = rec
            self._seq = max(self._seq, rec.seq + 1)
            if rec.state not in FINAL_STATES:
                self.by_file[rec.file] = rec.id
            self._index_dependencies(rec)
        for rec in sorted(self.tickets.values(), key=lambda r: r.seq):
            if rec.state in AGENT_STATES and rec.stop_requested == StopReason.STOP:
                rec.stop_requested = StopReason.NONE
                rec.reason = "stopped (the daemon restarted while stopping); work on its branch"
                self._set_state(rec, S.STOPPED, now)
            elif rec.state == S.RUNNING:
                rec.stop_requested = StopReason.NONE
                rec.attempt = max(0, rec.attempt - 1)
                rec.reason = "daemon restarted while the agent ran; its work is on the branch"
                self._set_state(rec, S.QUEUED, now)
            elif rec.state == S.NEEDS_INPUT:  # its agent was ended; the question stays
                rec.stop_requested = StopReason.NONE
                rec.agent = None
                rec.agent_pid = None
                rec.run_id = ""
                self._take_locks(rec, now)  # if taken meanwhile: taken again when it runs
                rec.reason = f"asks: {_one_line(rec.question)} (the daemon restarted; " + (
                    "the answer goes to its next attempt)"
                )
                self._emit(K.QUESTION_ORPHANED, f"{rec.id}: {rec.reason}", rec, now=now)
            elif rec.state in ACTIVE_STATES:
                rec.agent = None
                if not self._take_locks(rec, now):
                    rec.reason = "requeued after restart (its locks are held by another ticket)"
                    self._set_state(rec, S.QUEUED, now)
                else:
                    self.inflight.add(rec.id)
                    if rec.state == S.CI_RUNNING and rec.ci_sha and rec.branch:
                        # pushed again: the push may not have happened before the stop
                        # (a ref that is already there starts nothing; its status is read)
                        self._effect(Push("", rec.id, rec.attempt, rec.branch, True))
                    if rec.state == S.MERGING:
                        if rec.queue_sha:
                            self._reuse[rec.id] = rec.queue_sha
                        self._reset_entry(rec)
                        self.merge_queue.append(rec.id)
                    elif rec.state == S.REVIEWING:  # its reviewer died with the daemon
                        self._start_review(rec, now, again=True)
            if rec.state == S.QUEUED:
                self._push_heap(rec)
                if rec.reserved:
                    try:
                        self.locks.reserve(rec.id, rec.ticket.locks)
                    except LockConflict:
                        rec.reserved = False
            if rec.state == S.MERGED and Path(rec.file).parent.name != "done":
                self._effect(MoveFile(path=rec.file, dest="done", ticket=rec.id))
        self.merge_queue.sort(key=self._queue_key)
        self._schedule(now)
        self._advance_queue(now)
        return self._take()

    def handle(self, event: Input) -> Outcome:
        """Apply one input; return the effects, events and (for commands) reply."""
        self._out = Outcome()
        match event:
            case TicketRead():
                self._on_ticket_read(event)
            case TicketFileGone():
                self._on_file_gone(event)
            case FileMoved():
                rec = self.tickets.get(event.ticket)
                if rec is not None:
                    self.by_file.pop(rec.file, None)
                    rec.file = event.path
                    self._dirty(rec)
            case AgentStarted():
                self._on_agent_started(event)
            case AgentWaiting():
                self._on_agent_waiting(event)
            case AgentExited():
                self._on_agent_exited(event)
            case Pushed():
                self._on_pushed(event)
            case CIResult():
                self._on_ci(event)
            case ReviewResult():
                self._on_review(event)
            case Stacked():
                self._on_stacked(event)
            case MergeResult():
                self._on_merge(event)
            case Progress():
                self._on_progress(event.agent, event.now, event.note)
            case Tick():
                self._on_tick(event.now)
            case BudgetExceeded():
                self._on_budget(event)
            case AskTimedOut():
                self._on_ask_timed_out(event)
            case Command():
                self._on_command(event)
        now = getattr(event, "now", 0.0)
        self._schedule(now)
        self._advance_queue(now)
        return self._take()

    # --- views ------------------------------------------------------------

    def rank(self, rec: TicketRecord) -> float:
        """Queue order key: ``priority + queued_at / aging_interval_s`` (lower first).

        Equivalent to ordering by effective priority ``priority - age /
        aging_interval_s`` at any instant, but constant in time, so the heap
        never needs re-keying as tickets age.
        """
        return rec.ticket.priority + rec.queued_at / self.config.aging_interval_s

    def ticket_view(self, rec: TicketRecord, now: float | None = None) -> TicketView:
        t = rec.ticket
        age_s = max(0.0, (now if now is not None else rec.state_since) - rec.queued_at)
        position, stacked_on = self._queue_place(rec)
        return TicketView(
            id=rec.id,
            title=t.title,
            state=rec.state,
            priority=t.priority,
            effective_priority=round(t.priority - age_s / self.config.aging_interval_s, 3),
            rank=self.rank(rec),
            locks=list(t.locks),
            depends_on=list(t.depends_on),
            agent=rec.agent,
            branch=rec.branch,
            attempt=rec.attempt,
            max_attempts=rec.max_attempts,
            reason=rec.reason,
            queued_at=rec.queued_at,
            state_since=rec.state_since,
            ci=rec.ci,
            file=rec.file,
            log_file=rec.log_file,
            feedback_file=rec.feedback_file,
            queue_position=position,
            stacked_on=stacked_on,
            queue_sha=(rec.queue_sha or None) if position else None,
            question=rec.question or None,
            asked_at=rec.asked_at if rec.question else None,
            review=rec.review,
        )

    def questions(self) -> list[QuestionView]:
        """Every open question, oldest first (``orchestrator questions``)."""
        return [
            QuestionView(
                ticket=rec.id,
                title=rec.ticket.title,
                question=rec.question,
                asked_at=rec.asked_at,
                agent=rec.asked_by,
                waiting=self._worker_of(rec) is not None,
            )
            for rec in sorted(
                (r for r in self.tickets.values() if r.state == S.NEEDS_INPUT and r.question),
                key=lambda r: (r.asked_at, r.seq),
            )
        ]

    def ticket_views(self, now: float) -> list[TicketView]:
        """Every ticket's view, in queue order (a snapshot's ``tickets``).

        The cyclic garbage collector is paused meanwhile: 100,000 views allocate a
        few hundred thousand objects, none of them in cycles, and the collections
        they would trigger (each walking every ticket record) doubled the time of a
        ``status`` at that size (docs/performance.md).
        """
        enabled = gc.isenabled()
        gc.disable()
        try:
            return [self.ticket_view(r, now) for r in self.ordered()]
        finally:
            if enabled:
                gc.enable()

    def snapshot(
        self, now: float, last_event_id: int, approval: str, *, tickets: bool = True
    ) -> P.EncodedSnapshot:
        """The whole state as clients see it (a snapshot line, a ``status`` reply);
        ``tickets=False`` leaves the tickets out. ``now``: Unix time (s)."""
        return P.EncodedSnapshot(
            version=P.PROTOCOL_VERSION,
            last_event_id=last_event_id,
            tickets=msgspec.Raw(self.ticket_views_json(now) if tickets else b"[]"),
            agents=[self.agent_view(w) for w in self.workers.values()],
            leases=self.lease_views(),
            approval=approval,
        )

    def ticket_views_json(self, now: float) -> bytes:
        """The JSON array of :meth:`ticket_views` (byte for byte what
        ``msgspec.json.encode(self.ticket_views(now))`` gives), from a cache.

        Each ticket's encoded view is kept until its record changes (:meth:`_dirty`
        drops it), split around the value of ``effective_priority``, which is computed
        afresh, with the ticket's place in :meth:`ordered`, so that a snapshot touches
        no record that did not change. Tickets in the merge queue, whose views depend
        on the entries ahead, are encoded each time. With 100,000 tickets a status is
        then a sort of cached keys and a join of cached bytes instead of building and
        encoding every view (docs/performance.md). The cache holds about one encoded
        view per ticket (~400 bytes each), filled by the first snapshot.
        """
        cache = self._encoded_views
        merging = []
        for ticket_id in self.tickets.keys() - cache.keys():
            rec = self.tickets[ticket_id]
            if rec.state == S.MERGING:
                merging.append(self._encode_view(rec, now))
            else:
                cache[ticket_id] = self._encode_view(rec, now)
        entries = sorted([*cache.values(), *merging])
        aging_s = self.config.aging_interval_s
        values = msgspec.json.encode(
            [round(e[5] - max(0.0, now - e[6]) / aging_s, 3) for e in entries]
        )
        parts = [b"["]
        parts += itertools.chain.from_iterable(
            zip(
                map(itemgetter(3), entries),
                values[1:-1].split(b","),
                map(itemgetter(4), entries),
                itertools.repeat(b","),
            )
        )
        if entries:
            parts[-1] = b"]"
        else:
            parts.append(b"]")
        return b"".join(parts)

    def _encode_view(self, rec: TicketRecord, now: float) -> _EncodedView:
        """``rec``'s cache entry: its order key, its view's JSON cut around the value of
        ``effective_priority``, and what that value is computed from. The key cannot
        be mistaken for text: inside a JSON string a quote is escaped. The order key
        is ``(0, rank, seq)`` for a queued ticket and ``(1, 0.0, seq)`` for the others,
        the order of :meth:`ordered`."""
        data = msgspec.json.encode(self.ticket_view(rec, now))
        key = b',"effective_priority":'
        start = data.index(key) + len(key)
        end = start
        while data[end] not in b",}":
            end += 1
        queued = rec.state == S.QUEUED
        return (
            0 if queued else 1,
            self.rank(rec) if queued else 0.0,
            rec.seq,
            data[:start],
            data[end:],
            rec.ticket.priority,
            rec.queued_at,
        )

    def forget_encoded_views(self) -> None:
        """Drop every cached encoded view (after an input failed half-applied)."""
        self._encoded_views.clear()

    def _queue_place(self, rec: TicketRecord) -> tuple[int | None, str | None]:
        """(1-based merge queue position, what its commit is stacked on) or (None, None)."""
        if rec.state != S.MERGING or rec.id not in self.merge_queue:
            return None, None
        k = self.merge_queue.index(rec.id)
        if not rec.queue_sha:
            return k + 1, None
        return k + 1, self.merge_queue[k - 1] if k else "main"

    def agent_view(self, worker: Worker) -> AgentView:
        rec = self.tickets.get(worker.ticket) if worker.ticket else None
        if rec is None:
            state = AgentState.IDLE
        elif rec.stop_requested:
            state = AgentState.STOPPING
        elif rec.state == S.NEEDS_INPUT:
            state = AgentState.NEEDS_INPUT
        else:
            state = AgentState.STALE if worker.stale_since is not None else AgentState.RUNNING
        return AgentView(
            name=worker.name,
            state=state,
            worktree=worker.worktree,
            ticket=worker.ticket,
            branch=rec.branch if rec else None,
            attempt=rec.attempt if rec else 0,
            pid=worker.pid,
            state_since=worker.state_since,
            last_activity=worker.last_activity,
            note=worker.note,
            node=worker.node if rec is not None else "",
            host=worker.host if rec is not None else "",
        )

    def lease_views(self, owner: str | None = None) -> list[LeaseView]:
        """Held leases and reservations, sorted by path; only ``owner``'s when given."""
        leases = self.locks.leases() if owner is None else self.locks.held_by(owner)
        reservations = self.locks.reservations()
        if owner is not None:
            reservations = {owner: reservations[owner]} if owner in reservations else {}
        views = [
            LeaseView(
                path=lease.path,
                ticket=lease.owner,
                agent=lease.agent,
                acquired_at=lease.acquired_at_s,
                expires_at=lease.expires_at_s,
            )
            for lease in leases
        ]
        for holder, paths in reservations.items():
            rec = self.tickets[holder]
            views.extend(
                LeaseView(
                    path=p,
                    ticket=holder,
                    agent="",
                    acquired_at=rec.queued_at,
                    expires_at=0.0,
                    reserved=True,
                )
                for p in paths
            )
        return views

    def ordered(self) -> list[TicketRecord]:
        """Queued tickets in the order they will be taken, then all others by arrival."""
        queued = sorted(
            (r for r in self.tickets.values() if r.state == S.QUEUED),
            key=lambda r: (self.rank(r), r.seq),
        )
        rest = sorted(
            (r for r in self.tickets.values() if r.state != S.QUEUED), key=lambda r: r.seq
        )
        return queued + rest

    # --- intake -----------------------------------------------------------

    def _on_ticket_read(self, ev: TicketRead) -> None:
        previous = self.tickets.get(self.by_file.get(ev.path, ""))
        if (
            previous is not None
            and previous.file == ev.path
            and (ev.ticket is None or ev.ticket.id != previous.id)
        ):
            # The file of a known ticket now holds something else: that ticket is gone.
            self._file_lost(
                previous,
                ev.now,
                "its file no longer defines it: "
                + (ev.error or f"it now holds ticket {ev.ticket and ev.ticket.id!r}"),
            )
        if ev.ticket is None:
            self._reject_file(ev.path, ev.error, ev.now)
            return
        ticket = ev.ticket
        assert ticket.id is not None
        rec = self.tickets.get(ticket.id)
        if rec is not None and rec.file != ev.path and rec.state not in REPLACEABLE:
            where = "already merged" if rec.state == S.MERGED else f"from {rec.file}"
            self._reject_file(ev.path, f"id: duplicate ticket id {ticket.id!r} ({where})", ev.now)
            return
        cycle = self._cycle_through(ticket)
        if cycle:
            self._reject_file(ev.path, f"depends_on: dependency cycle {' -> '.join(cycle)}", ev.now)
            return
        if rec is None or rec.state in REPLACEABLE:
            if rec is None:
                rec = TicketRecord(
                    ticket=ticket,
                    file=ev.path,
                    state=S.QUEUED,
                    seq=self._seq,
                    queued_at=ev.now,
                    state_since=ev.now,
                    max_attempts=ticket.max_attempts or self.config.max_attempts,
                )
                self._seq += 1
                self.tickets[ticket.id] = rec
            rec.ticket, rec.file = ticket, ev.path
            self.by_file[ev.path] = ticket.id
            self._index_dependencies(rec)
            self._set_state(rec, S.QUEUED, ev.now, kind=K.TICKET_QUEUED)
            self._push_heap(rec)
            self._refresh_blocked(ev.now, rec.id)
            return
        if rec.priority_override is not None:
            ticket = msgspec.structs.replace(ticket, priority=rec.priority_override)
        if rec.file == ev.path and ticket == rec.ticket:
            return  # same content (a rescan, a restart, a touch): nothing changed
        if rec.state in (S.QUEUED, S.BLOCKED, S.STOPPED, S.FAILED):
            rec.ticket = ticket
            self._index_dependencies(rec)
            rec.max_attempts = max(
                ticket.max_attempts or self.config.max_attempts, rec.granted_attempts
            )
            if rec.state == S.QUEUED:
                self._push_heap(rec)
            self._emit(K.TICKET_UPDATED, f"{rec.id}: ticket file changed", rec, now=ev.now)
            self._refresh_blocked(ev.now, rec.id)
        else:
            self._emit(
                K.WARNING,
                f"{rec.id}: file changed while {rec.state}; the change applies to later attempts",
                rec,
                now=ev.now,
            )
            rec.ticket = ticket
            self._dirty(rec)

    def _index_dependencies(self, rec: TicketRecord) -> None:
        for dep in rec.ticket.depends_on:
            self.dependents.setdefault(dep, set()).add(rec.id)
            if dep not in self.tickets:
                self._unknown_deps.add(rec.id)

    def _on_file_gone(self, ev: TicketFileGone) -> None:
        ticket_id = self.by_file.get(ev.path)
        rec = self.tickets.get(ticket_id) if ticket_id else None
        if rec is not None and rec.file == ev.path:
            self._file_lost(rec, ev.now, "ticket file removed from the backlog")

    def _file_lost(self, rec: TicketRecord, now: float, reason: str) -> None:
        """A queued ticket's file was removed or replaced: the ticket is cancelled."""
        if rec.state not in (S.QUEUED, S.BLOCKED):
            return  # active or finished work is not undone by a file change
        rec.reason = reason
        self.locks.unreserve(rec.id)
        self._set_state(rec, S.CANCELLED, now)
        self.by_file.pop(rec.file, None)
        self._refresh_blocked(now, rec.id)

    def _reject_file(self, path: str, error: str, now: float) -> None:
        self._effect(MoveFile(path=path, dest="rejected", error=error))
        self._emit(K.TICKET_REJECTED, error, now=now)

    def _cycle_through(self, ticket: Ticket) -> list[str]:
        """The dependency path from ``ticket`` back to itself, or [] if none."""
        assert ticket.id is not None
        start = ticket.id
        stack: list[tuple[str, list[str]]] = [(d, [start, d]) for d in ticket.depends_on]
        seen: set[str] = set()
        while stack:
            node, path = stack.pop()
            if node == start:
                return path
            if node in seen:
                continue
            seen.add(node)
            rec = self.tickets.get(node)
            if rec is not None and rec.state != S.CANCELLED:
                stack.extend((d, [*path, d]) for d in rec.ticket.depends_on)
        return []

    # --- scheduling -------------------------------------------------------

    def _push_heap(self, rec: TicketRecord) -> None:
        heapq.heappush(self._heap, (self.rank(rec), rec.seq, rec.id))

    def _blocking_dependency(self, rec: TicketRecord) -> tuple[str, bool, str]:
        """(reason, failed, dep): why the deps are not all merged; failed when one cannot
        be; dep is the dependency in the way."""
        for dep in rec.ticket.depends_on:
            d = self.tickets.get(dep)
            if d is None:
                return f"waits for unknown ticket {dep!r}", False, dep
            if d.state in (S.FAILED, S.REJECTED, S.CANCELLED, S.BLOCKED):
                return f"dependency {dep!r} is {d.state}", True, dep
            if d.state != S.MERGED:
                return f"waits for {dep!r} ({d.state})", False, dep
        return "", False, ""

    def _refresh_blocked(self, now: float, root: str) -> None:
        """After ``root`` changed: move it and the tickets that (transitively) depend on
        it to ``blocked`` when a dependency can no longer merge, and back to ``queued``.

        Walks only the dependents (an index), so intake stays O(1) per ticket.
        """
        stack, seen = [root], set()
        while stack:
            ticket_id = stack.pop()
            if ticket_id in seen:
                continue
            seen.add(ticket_id)
            stack.extend(self.dependents.get(ticket_id, ()))
            rec = self.tickets.get(ticket_id)
            if rec is None or rec.state not in (S.QUEUED, S.BLOCKED):
                continue
            reason, failed, _ = self._blocking_dependency(rec)
            if rec.state == S.QUEUED and failed:
                rec.reason = reason
                self.locks.unreserve(rec.id)
                self._set_state(rec, S.BLOCKED, now)
            elif rec.state == S.BLOCKED and not failed:
                rec.reason = reason
                self._set_state(rec, S.QUEUED, now)
                self._push_heap(rec)

    def _schedule(self, now: float) -> None:
        """Assign eligible queued tickets to idle workers, most urgent first.

        Pops the heap in order; entries that are stale (lazy deletion) are
        dropped. An ineligible ticket is parked outside the heap under the ticket
        in its way (the holder of a conflicting lease or reservation, or the
        dependency it waits for) and goes back into the heap when that ticket
        changes state, so an ineligible head never blocks eligible tickets behind
        it and is not examined again at every pick.
        """
        idle = [w for w in self.workers.values() if w.ticket is None]
        if not self.accepting or not idle or not self._heap:
            return
        seen: set[str] = set()
        again: list[tuple[float, int, str]] = []
        while idle and self._heap:
            entry = heapq.heappop(self._heap)
            rank, _, ticket_id = entry
            rec = self.tickets.get(ticket_id)
            if rec is None or rec.state != S.QUEUED or rank != self.rank(rec):
                continue
            if ticket_id in seen:  # unparked during this pass (an assignment freed it)
                again.append(entry)
                continue
            seen.add(ticket_id)
            reason, blocker = self._ineligible(rec)
            if reason:
                if reason != rec.reason:
                    rec.reason = reason
                    self._emit(K.TICKET_WAITING, f"{rec.id}: {reason}", rec, now=now)
                self._parked.setdefault(blocker, set()).add(rec.id)
                continue
            if self._assign(rec, idle[0], now):
                idle.pop(0)
        for entry in again:
            heapq.heappush(self._heap, entry)

    def _unpark(self, blocker: str) -> None:
        """``blocker`` changed state: the tickets parked behind it may be eligible now."""
        for ticket_id in self._parked.pop(blocker, ()):
            rec = self.tickets.get(ticket_id)
            if rec is not None and rec.state == S.QUEUED:
                self._push_heap(rec)

    def _ineligible(self, rec: TicketRecord) -> tuple[str, str]:
        """(why the ticket cannot start now, the ticket in its way), or ("", "")."""
        reason, _, dep = self._blocking_dependency(rec)
        if reason:
            return reason, dep
        conflict = self.locks.first_conflict(rec.ticket.locks, owner=rec.id)
        if conflict:
            path, owner = conflict
            return f"lock {path} held by {owner}", owner
        return "", ""

    def _take_locks(self, rec: TicketRecord, now: float) -> bool:
        try:
            self.locks.acquire(
                rec.id, rec.agent or "", rec.ticket.locks, now, self.config.lease_ttl_s
            )
        except LockConflict:
            return False
        return True

    def _assign(self, rec: TicketRecord, worker: Worker, now: float) -> bool:
        """Give ``rec`` its leases and ``worker``; False when the worker stays free (a
        ticket resumed into approval or the merge queue needs no agent)."""
        rec.agent = worker.name
        if not self._take_locks(rec, now):  # cannot happen after _ineligible; keep queued
            rec.agent = None
            return False
        rec.reserved = False
        if rec.branch is None:
            rec.branch = f"{worker.name}/{rec.id}"
        if rec.resume == S.CI_RUNNING and not rec.pushed_sha:
            rec.resume = ""  # nothing was handed in: run the agent again
        if rec.resume in (S.CI_RUNNING, S.REVIEWING, S.AWAITING_APPROVAL, S.MERGING):
            resume, rec.resume = rec.resume, ""
            self._emit_leases(rec, now)
            if resume == S.CI_RUNNING:
                rec.reason = "resumed; CI again"
                self._hand_in(rec, rec.pushed_sha or "", now)
                return False
            rec.agent = None
            if resume == S.MERGING:
                self._enter_queue(rec, now, "resumed into the merge queue")
            elif resume == S.REVIEWING:
                self._start_review(rec, now, again=True)
            elif rec.ci is not None and rec.ci.status == CIState.PASS:
                rec.reason = "resumed; CI passed; awaiting approval"
                self._set_state(rec, S.AWAITING_APPROVAL, now)
            else:  # cannot happen: a stop in awaiting_approval came after a CI pass
                rec.reason = "resumed"
                self._set_state(rec, S.QUEUED, now)
                self._push_heap(rec)
            return False
        worker.ticket = rec.id
        worker.state_since = now
        worker.last_activity = now
        worker.stale_since = None
        worker.note = ""
        worker.pid = None
        worker.node = worker.host = ""
        self._start_attempt(rec, worker, now)
        self._emit_leases(rec, now)
        return True

    def _emit_leases(self, rec: TicketRecord, now: float) -> None:
        self._emit(
            K.LEASE_ACQUIRED,
            f"{rec.id}: holds {', '.join(rec.ticket.locks) or 'no locks'}",
            rec,
            now=now,
            leases=True,
        )

    def _branch_ci(self, rec: TicketRecord) -> bool:
        """True when CI runs on the ticket's branch first: a person approves it, or a
        reviewer looks at it (a reviewer only ever sees a change CI passed on)."""
        return self._manual(rec) or bool(self.config.review.command)

    def _manual(self, rec: TicketRecord) -> bool:
        """True when a person approves this ticket (``approval: manual``)."""
        return (rec.ticket.approval or self.config.approval) == "manual"

    def _start_attempt(self, rec: TicketRecord, worker: Worker, now: float) -> None:
        rec.attempt += 1
        rec.answered = None
        rec.stop_requested = StopReason.NONE
        rec.reason = ""
        rec.ci = None
        rec.ci_sha = None
        rec.verified_sha = ""
        self._set_state(rec, S.RUNNING, now)
        assert rec.branch is not None
        self._effect(
            StartAgent(
                worker.name, rec.id, rec.attempt, rec.branch, rec.feedback, rec.rebuild, rec.file
            )
        )
        rec.rebuild = False

    # --- agent lifecycle --------------------------------------------------

    def _worker_of(self, rec: TicketRecord) -> Worker | None:
        w = self.workers.get(rec.agent or "")
        return w if w is not None and w.ticket == rec.id else None

    def _on_agent_started(self, ev: AgentStarted) -> None:
        rec = self.tickets.get(ev.ticket)
        worker = self.workers.get(ev.agent)
        if rec is None or worker is None or rec.attempt != ev.attempt:
            return
        worker.pid = rec.agent_pid = ev.pid
        rec.run_id = ev.run_id
        worker.last_activity = ev.now
        worker.node, worker.host = ev.node, ev.host
        rec.log_file, rec.feedback_file = ev.log_file, ev.feedback_file
        where = f" on {ev.host} (Ray node {ev.node[:12]})" if ev.node else ""
        if rec.reason.startswith(WAITING_PREFIX):
            rec.reason = ""
        self._emit(
            K.AGENT_STARTED,
            f"{ev.agent}: started {ev.ticket} attempt {ev.attempt} (pid {ev.pid}){where}",
            rec,
            worker,
            now=ev.now,
        )

    def _on_agent_waiting(self, ev: AgentWaiting) -> None:
        rec = self.tickets.get(ev.ticket)
        worker = self.workers.get(ev.agent)
        if rec is None or worker is None or rec.attempt != ev.attempt or rec.state != S.RUNNING:
            return
        rec.reason = f"{WAITING_PREFIX}{ev.reason}"
        worker.note = rec.reason
        self._emit(K.TICKET_WAITING, f"{rec.id}: {rec.reason}", rec, worker, now=ev.now)

    def _on_agent_exited(self, ev: AgentExited) -> None:
        rec = self.tickets.get(ev.ticket)
        worker = self.workers.get(ev.agent)
        if (
            rec is None
            or worker is None
            or rec.attempt != ev.attempt
            or rec.state not in AGENT_STATES
        ):
            return
        worker.pid = rec.agent_pid = None
        rec.run_id = ""
        why = rec.stop_requested
        rec.stop_requested = StopReason.NONE
        if rec.state == S.NEEDS_INPUT and why not in (StopReason.STOP, StopReason.BUDGET):
            # Killed, crashed or stopped by a shutdown while it waited: its work is
            # committed; the question stays open and its answer goes to the next attempt.
            self._free_worker(rec, ev.now)
            rec.reason = f"asks: {_one_line(rec.question)} (its agent ended; " + (
                "the answer goes to its next attempt)"
            )
            self._emit(K.QUESTION_ORPHANED, f"{rec.id}: {rec.reason}", rec, now=ev.now)
            self._effect(QuestionClosed(rec.id, message=f"{rec.id}: the asking agent ended"))
            return
        if ev.lost and why not in (StopReason.STOP, StopReason.BUDGET):
            rec.attempt -= 1
            where = f"{worker.host} (Ray node {worker.node[:12]})" if worker.node else "its node"
            saved = f" at {ev.head[:10]}" if ev.head else ""
            rec.reason = (
                f"{where} was lost mid-attempt ({ev.lost}); requeued from its last WIP "
                f"push{saved}, attempt not counted"
            )
            self._emit(
                K.AGENT_EXITED, f"{ev.agent}: {rec.id}: {rec.reason}", rec, worker, now=ev.now
            )
            self._requeue(rec, ev.now, feedback="")
            return
        if why == StopReason.STOP:
            rec.reason = "stopped by request; work committed on " + (rec.branch or "")
            self._release(rec, S.STOPPED, ev.now)
            return
        if why == StopReason.BUDGET:  # rec.reason says how much was spent
            rec.reason += f"; work committed on {rec.branch}"
            self._release(rec, S.STOPPED, ev.now)
            return
        if why:
            rec.reason = {
                StopReason.STALE: "agent stale; requeued, work committed on its branch",
                StopReason.EXPIRED: "lease expired; requeued, work committed on its branch",
                StopReason.SHUTDOWN: "daemon stopped while the agent ran; requeued",
            }[why]
            if why == StopReason.SHUTDOWN:
                rec.attempt -= 1
            self._requeue(
                rec,
                ev.now,
                feedback=ev.log_tail if why != StopReason.SHUTDOWN else rec.feedback,
            )
            return
        if ev.exit_code is None:
            self._fail_attempt(rec, f"agent could not start: {ev.reason}", ev.log_tail, ev.now)
        elif ev.exit_code != 0:
            self._fail_attempt(rec, f"agent exited with code {ev.exit_code}", ev.log_tail, ev.now)
        elif not ev.changed:
            self._fail_attempt(rec, "agent exited 0 but changed nothing", ev.log_tail, ev.now)
        elif ev.head == rec.pushed_sha:
            self._fail_attempt(
                rec, "agent exited 0 but changed nothing since the last CI run", ev.log_tail, ev.now
            )
        else:
            outside = paths_outside(ev.changed, rec.ticket.locks)
            if outside and self.config.lock_policy == "reject":
                listing = ", ".join(outside[:20]) + (" ..." if len(outside) > 20 else "")
                self._fail_attempt(
                    rec,
                    f"changed paths outside its locks: {listing}",
                    f"Your change touched paths outside this ticket's locks "
                    f"({', '.join(rec.ticket.locks) or 'none'}): {listing}. "
                    "Revert those changes or ask for wider locks.",
                    ev.now,
                )
                return
            if outside:
                self._emit(
                    K.WARNING,
                    f"{rec.id}: changed paths outside its locks: {', '.join(outside[:20])}",
                    rec,
                    now=ev.now,
                )
            self._emit(
                K.AGENT_EXITED,
                f"{ev.agent}: {rec.id} attempt {rec.attempt} done at {ev.head[:10]}",
                rec,
                worker,
                now=ev.now,
            )
            self._hand_in(rec, ev.head, ev.now)

    def _hand_in(self, rec: TicketRecord, sha: str, now: float) -> None:
        """The attempt's work is committed at ``sha``: the agent slot is free at once and
        the ticket goes on without one, keeping its leases, into CI on its branch (a
        person approves it) or straight into the merge queue (auto approval). The branch
        is pushed to repo.git meanwhile (:class:`Push`), off the slot's critical path:
        the merge queue builds from the shared clone's branch, not from the push."""
        assert rec.branch is not None
        rec.pushed_sha = sha
        branch_ci = self._branch_ci(rec)
        self._effect(Push(rec.agent or "", rec.id, rec.attempt, rec.branch, branch_ci))
        self._free_worker(rec, now)
        if branch_ci:
            rec.ci_sha = sha
            rec.ci = CIView(sha=sha)
            rec.ci_started = now
            self._set_state(
                rec, S.CI_RUNNING, now, message=f"{rec.id}: pushing {sha[:10]}, CI runs on it"
            )
        else:
            self._enter_queue(rec, now, f"{sha[:10]} auto-approved")

    def _on_pushed(self, ev: Pushed) -> None:
        """A branch push ended. Only CI on the branch needs it: if it failed there, CI
        never starts, so the attempt fails; otherwise a failure is only a warning."""
        rec = self.tickets.get(ev.ticket)
        if rec is None or rec.attempt != ev.attempt or not ev.error:
            return
        if rec.state == S.CI_RUNNING and rec.ci_sha and rec.ci_sha == rec.pushed_sha:
            self._retry(rec, f"push failed: {ev.error}", "", ev.now)
        else:
            self._emit(
                K.WARNING, f"{rec.id}: push of {rec.branch} failed: {ev.error}", rec, now=ev.now
            )

    def _free_worker(self, rec: TicketRecord, now: float) -> None:
        """Release the ticket's worker (agent slot), not its leases."""
        worker = self._worker_of(rec)
        rec.agent = None
        rec.agent_pid = None
        if worker is None:
            return
        worker.ticket = None
        worker.pid = None
        worker.stale_since = None
        worker.state_since = now
        self._emit(K.AGENT_STATE, f"{worker.name}: idle", agent=worker, now=now)

    def _on_ci(self, ev: CIResult) -> None:
        rec = next(
            (
                r
                for r in (self.tickets[i] for i in self.inflight)
                if r.ci_sha == ev.sha and r.state in (S.CI_RUNNING, S.MERGING)
            ),
            None,
        )
        if rec is None:
            return
        rec.ci = CIView(
            sha=ev.sha,
            status=CIState(ev.status),
            duration_s=ev.duration_s,
            log_tail=ev.log_tail[-FEEDBACK_TAIL_CHARS:],
        )
        rec.ci_sha = None
        where = "its merge queue commit" if rec.state == S.MERGING else "its branch"
        self._emit(
            K.CI_RESULT,
            f"{rec.id}: CI {ev.status} on {where} {ev.sha[:10]}",
            rec,
            now=ev.now,
            text=ev.log_tail[-2000:],
        )
        if ev.status == CIVerdict.PASS:
            if rec.state == S.CI_RUNNING:
                rec.verified_sha = ev.sha
                if self.config.review.command:
                    self._start_review(rec, ev.now)
                elif self._manual(rec):
                    rec.reason = "CI passed"
                    self._set_state(rec, S.AWAITING_APPROVAL, ev.now)
                else:
                    self._enter_queue(rec, ev.now, "CI passed; auto-approved")
            return
        if rec.state == S.MERGING and self.config.merge.batch > 1:
            return  # with batches, _settle_failed_batch finds the culprit
        if rec.state == S.MERGING:
            behind = self._leave_queue(rec, ev.now)
            self._retry(
                rec,
                f"CI {ev.status} in the merge queue (exit {ev.exit_code}){behind}",
                "CI failed on your change applied on top of main"
                + (" and the merge queue entries ahead of it" if rec.queue_parent else "")
                + f". Its output ended with:\n{ev.log_tail}",
                ev.now,
            )
        else:
            self._retry(
                rec,
                f"CI {ev.status} (exit {ev.exit_code})",
                f"CI failed on your branch. Its output ended with:\n{ev.log_tail}",
                ev.now,
            )

    # --- the reviewer -------------------------------------------------------

    def _start_review(self, rec: TicketRecord, now: float, again: bool = False) -> None:
        """CI passed on the branch commit ``verified_sha``: run the reviewer on it, as a
        new round (``again``: the same round once more, after a stop or a restart).

        Only ever called with CI passed on ``verified_sha`` (the rule that a reviewer
        never turns a red CI green: a failed CI never reaches this)."""
        limit = self.config.review.max_rounds
        if not again and rec.review_round >= limit:
            rec.reason = f"review: {rec.review_round} rounds done; needs a person"
            self._set_state(rec, S.AWAITING_APPROVAL, now)
            return
        if not again or rec.review_round == 0:
            rec.review_round += 1
        rec.review_gen += 1
        rec.review = ReviewView(round=rec.review_round, max_rounds=limit, sha=rec.verified_sha)
        rec.reason = f"CI passed; review round {rec.review_round} of {limit}"
        self._set_state(rec, S.REVIEWING, now)
        assert rec.branch is not None
        self._effect(
            Review(
                rec.id,
                rec.review_gen,
                rec.review_round,
                rec.attempt,
                rec.branch,
                rec.verified_sha,
                rec.file,
            )
        )
        self._emit(
            K.REVIEW_STARTED,
            f"{rec.id}: review round {rec.review_round} of {limit} on {rec.verified_sha[:10]}",
            rec,
            now=now,
        )

    def _on_review(self, ev: ReviewResult) -> None:
        rec = self.tickets.get(ev.ticket)
        if rec is None or rec.state != S.REVIEWING or ev.gen != rec.review_gen:
            return  # stopped, restarted or reviewed again meanwhile
        if rec.ci is None or rec.ci.status != CIState.PASS or rec.ci.sha != rec.verified_sha:
            # cannot happen (reviewing follows a CI pass); a reviewer never turns red green
            rec.reason = "review: CI has not passed on the reviewed commit; needs a person"
            self._set_state(rec, S.AWAITING_APPROVAL, ev.now)
            return
        n, limit = rec.review_round, self.config.review.max_rounds
        assert rec.review is not None
        rec.review = msgspec.structs.replace(
            rec.review,
            status=ev.status,
            comments=list(ev.comments),
            error=ev.error,
            duration_s=ev.duration_s,
        )
        count = f"{len(ev.comments)} comment{'s' if len(ev.comments) != 1 else ''}"
        if ev.status == ReviewStatus.ERROR:
            rec.reason = f"review error: {ev.error}; needs a person (approve or reject)"
            self._emit(K.REVIEW_ERROR, f"{rec.id}: review round {n}: {ev.error}", rec, now=ev.now)
            self._set_state(rec, S.AWAITING_APPROVAL, ev.now)
            return
        self._emit(
            K.REVIEW_RESULT,
            f"{rec.id}: review round {n} of {limit}: {ev.status}, {count}",
            rec,
            now=ev.now,
            text=format_comments(ev.comments) or None,
        )
        if ev.status == ReviewStatus.APPROVE:
            if self._manual(rec):
                rec.reason = f"CI passed; review approved ({count})"
                self._set_state(rec, S.AWAITING_APPROVAL, ev.now)
            else:
                self._enter_queue(
                    rec, ev.now, f"CI passed; review approved ({count}); auto-approved"
                )
        elif n >= limit:
            rec.reason = (
                f"review: changes requested {n} round{'s' if n != 1 else ''}; needs a person"
            )
            self._set_state(rec, S.AWAITING_APPROVAL, ev.now)
        else:
            # Rework is a new attempt, but a review round does not use up max_attempts
            # (review.max_rounds bounds these), as a person's reject does not.
            rec.max_attempts = max(rec.max_attempts, rec.attempt + 1)
            rec.granted_attempts = max(rec.granted_attempts, rec.max_attempts)
            self._retry(
                rec,
                f"review round {n}: changes requested ({count})",
                f"The reviewer (round {n} of {limit}) requested changes:\n"
                + format_comments(ev.comments),
                ev.now,
            )

    # --- the merge queue ----------------------------------------------------

    def _queue_key(self, ticket_id: str) -> tuple[int, float, int]:
        """Merge order: priority, then approval time (then arrival)."""
        rec = self.tickets[ticket_id]
        return (rec.ticket.priority, rec.approved_at, rec.seq)

    def _started(self, rec: TicketRecord) -> bool:
        """Whether the entry's CI has started (it is stacked or being stacked)."""
        return bool(rec.queue_sha) or self._stacking == (rec.id, rec.queue_gen)

    def _enter_queue(self, rec: TicketRecord, now: float, reason: str) -> None:
        """Approve: put the ticket into the merge queue at its place.

        Rule (docs/scheduling.md): entries whose CI has started keep their places;
        among the others the order is priority, then approval time. So a
        higher-priority ticket approved later goes ahead of every entry not yet
        stacked, and never restarts CI that is running.
        """
        rec.approved_at = now
        rec.reason = reason
        rec.ci_sha = None
        self._reset_entry(rec)
        self._set_state(rec, S.MERGING, now)
        self._place(rec)
        self._emit(
            K.MERGE_QUEUED,
            f"{rec.id}: merge queue position {self.merge_queue.index(rec.id) + 1}",
            rec,
            now=now,
        )

    def _place(self, rec: TicketRecord) -> None:
        queue = self.merge_queue
        if rec.id in queue:
            queue.remove(rec.id)
        key = self._queue_key(rec.id)
        k = 0
        while k < len(queue) and self._started(self.tickets[queue[k]]):
            k += 1
        while k < len(queue) and self._queue_key(queue[k]) <= key:
            k += 1
        queue.insert(k, rec.id)

    def _reset_entry(self, rec: TicketRecord) -> None:
        """Discard the entry's stacked commit (and the CI running on it)."""
        rec.queue_gen += 1
        if rec.queue_sha and rec.ci is not None and rec.ci.sha == rec.queue_sha:
            rec.ci = None
        rec.queue_sha = ""
        rec.queue_parent = ""
        if rec.state == S.MERGING:
            rec.ci_sha = None

    def _leave_queue(self, rec: TicketRecord, now: float) -> str:
        """Take ``rec`` out of the merge queue; the entries behind it are stacked again
        without it (those ahead are untouched). Returns a note for the reason."""
        if rec.id not in self.merge_queue:
            return ""
        k = self.merge_queue.index(rec.id)
        self.merge_queue.pop(k)
        self._split_after.discard(rec.id)
        self._reset_entry(rec)
        n = self._restack_from(k, f"restacked without {rec.id}", now)
        return f"; {n} entr{'y' if n == 1 else 'ies'} behind restacked"

    def _restack_from(self, k: int, reason: str, now: float) -> int:
        """Discard the commits of the started entries from queue index ``k`` on (they are
        built on a commit that changed or failed); returns how many."""
        restacked = [r for r in (self.tickets[t] for t in self.merge_queue[k:]) if self._started(r)]
        for other in restacked:
            self._reset_entry(other)
            other.reason = reason
            self._emit(K.MERGE_RESTACKED, f"{other.id}: {other.reason}", other, now=now)
        return len(restacked)

    def _tested(self, rec: TicketRecord) -> bool:
        """Whether CI runs or ran on the entry's stacked commit (it ends a batch)."""
        return bool(rec.queue_sha) and rec.ci is not None and rec.ci.sha == rec.queue_sha

    def _batch_ends(self, upto: int) -> list[bool]:
        """For the first ``upto`` queue entries, whether each ends a batch (CI runs on the
        last entry of a batch only; docs/scheduling.md, "Batches"): it does when CI
        runs or ran on its commit, when a bisection split its batch after it, when it is
        the ``merge.batch``-th entry of its batch, or when it is the last entry and no
        CI runs ahead of it (while one runs, the entries approved meanwhile gather into
        the next batch, as in bors-ng). With ``merge.batch`` 1 every entry is a batch
        of its own."""
        queue, ends, size, busy = self.merge_queue, [], 0, False
        for k, ticket_id in enumerate(queue[:upto]):
            rec = self.tickets[ticket_id]
            size += 1
            end = (
                size >= self.config.merge.batch
                or (k == len(queue) - 1 and not busy)
                or ticket_id in self._split_after
                or self._tested(rec)
            )
            busy = busy or (self._tested(rec) and rec.ci_sha is not None)
            ends.append(end)
            size = 0 if end else size
        return ends

    def _batch_start(self, k: int) -> int:
        """The queue index of the first entry of the batch that entry ``k`` ends."""
        ends = self._batch_ends(k)
        while k > 0 and not ends[k - 1]:
            k -= 1
        return k

    def _settle_failed_batch(self, now: float) -> None:
        """The first entry whose CI failed, if its batch holds more than one entry
        (``merge.batch``): split the batch in two halves (bisection, as bors-ng does)
        and restack what was built on the failed commit; each half is tested on its
        own, the first half's last commit being tested next. When the failed entry is
        alone in its batch (the halves before it passed and merged), it is the culprit:
        it goes back to its agent with its CI log, like any entry failing CI. Nothing
        is settled while CI still runs ahead of the failed entry."""
        queue = self.merge_queue
        window = max(self.config.queue_depth, self.config.merge.batch)
        for k, ticket_id in enumerate(queue[:window]):  # only these can be stacked
            rec = self.tickets[ticket_id]
            if rec.ci_sha is not None and self._tested(rec):
                return  # CI runs ahead: what fails behind it waits for that result
            if not self._tested(rec) or rec.ci is None or rec.ci.status not in FAILED_CI:
                continue
            start = self._batch_start(k)
            below = self.tickets[queue[k - 1]] if k else None
            if (
                start == k
                and below is not None
                and not (
                    self._tested(below) and below.ci is not None and below.ci.status == CIState.PASS
                )
            ):
                return  # alone, but the tree below it is not known to pass yet
            if start == k:
                status, log_tail = rec.ci.status, rec.ci.log_tail
                behind = self._leave_queue(rec, now)
                self._retry(
                    rec,
                    f"CI {status} in the merge queue (found by bisecting a batch){behind}",
                    "CI failed on your change applied on top of main and the merge queue "
                    f"entries ahead of it. Its output ended with:\n{log_tail}",
                    now,
                )
                self._schedule(now)  # the retry takes a free worker now
                return
            mid = queue[start + (k - start - 1) // 2]
            if mid in self._split_after:
                return  # split already; its first half is being tested
            self._split_after.add(mid)
            self._emit(
                K.MERGE_RESTACKED,
                f"{rec.id}: CI failed on a batch of {k - start + 1}; testing its first "
                f"{queue.index(mid) - start + 1} on their own",
                rec,
                now=now,
            )
            self._restack_from(k + 1, f"restacked: the batch ahead of it failed ({rec.id})", now)
            return

    def _advance_queue(self, now: float) -> None:
        """Settle a failed batch; fast-forward main through the head's batch when CI
        passed on its last commit; stack the next entry within the window."""
        self._settle_failed_batch(now)
        queue = self.merge_queue
        if not queue:
            return
        if not self._fast_forwarding:
            for k, ticket_id in enumerate(queue):
                rec = self.tickets[ticket_id]
                if rec.queue_sha and not self._tested(rec):
                    continue  # in a batch: covered by the CI run on the batch's last commit
                if self._tested(rec) and rec.ci is not None and rec.ci.status == CIState.PASS:
                    ahead = tuple((t, self.tickets[t].queue_sha) for t in queue[:k])
                    self._fast_forwarding = (*queue[:k], rec.id)
                    parent = self.tickets[queue[0]].queue_parent
                    self._effect(FastForward(rec.id, rec.queue_sha, parent, ahead))
                break
        if self._stacking is not None or not self.accepting:
            return
        window = max(self.config.queue_depth, self.config.merge.batch)
        ends = self._batch_ends(window)
        testing = sum(1 for t in queue[:window] if self.tickets[t].ci_sha is not None)
        for k, ticket_id in enumerate(queue[:window]):
            rec = self.tickets[ticket_id]
            if self._tested(rec) and rec.ci is not None and rec.ci.status in FAILED_CI:
                return  # nothing is built on a failed commit (its batch is being bisected)
            if rec.queue_sha and (self._tested(rec) or not ends[k]):
                continue
            if ends[k] and testing >= self.config.ci_parallel:
                return
            parent = self.tickets[queue[k - 1]].queue_sha if k else ""
            # An entry stacked without CI that now ends a batch is offered its commit
            # again: the same commit, so nothing built on it changes.
            reuse = rec.queue_sha or self._reuse.pop(rec.id, "")
            if rec.queue_sha:
                rec.queue_gen += 1  # keeps its commit until the answer (the same one)
            assert rec.branch is not None
            self._stacking = (rec.id, rec.queue_gen)
            self._effect(
                Stack(
                    rec.id,
                    rec.queue_gen,
                    rec.branch,
                    parent,
                    rec.verified_sha,
                    self._merge_message(rec),
                    test=ends[k],
                    reuse=reuse,
                )
            )
            return

    def _on_stacked(self, ev: Stacked) -> None:
        rec = self.tickets.get(ev.ticket)
        if self._stacking == (ev.ticket, ev.gen):
            self._stacking = None
        if rec is None or rec.state != S.MERGING or ev.gen != rec.queue_gen:
            return  # discarded meanwhile (restacked, stopped, failed)
        if ev.outcome == StackOutcome.STACKED:
            rec.queue_errors = 0
            rec.queue_sha, rec.queue_parent = ev.sha, ev.parent
            k = self.merge_queue.index(rec.id)
            on = self.merge_queue[k - 1] if k else "main"
            if ev.verified:
                rec.ci = CIView(
                    sha=ev.sha,
                    status=CIState.PASS,
                    log_tail="same tree as the branch commit CI passed on; not run again\n",
                )
                rec.reason = f"stacked on {on}; CI passed on this tree already"
            elif ev.test:
                rec.ci_sha = ev.sha
                rec.ci = CIView(sha=ev.sha)
                rec.ci_started = ev.now
                rec.reason = f"stacked on {on}; CI running on {ev.sha[:10]}"
            else:
                rec.reason = f"stacked on {on}; in a batch: CI runs on the batch's last commit"
            self._emit(K.MERGE_STACKED, f"{rec.id}: {rec.reason}", rec, now=ev.now)
            nxt = self.tickets[self.merge_queue[k + 1]] if k + 1 < len(self.merge_queue) else None
            if nxt is not None and nxt.queue_sha and nxt.queue_parent != ev.sha:
                self._restack_from(k + 1, f"restacked: {rec.id} got a new commit", ev.now)
        elif ev.outcome == StackOutcome.MERGED:
            self._merged(rec, ev.sha, ev.now, "merged before the restart")
        elif ev.outcome == StackOutcome.CONFLICT:
            behind = self._leave_queue(rec, ev.now)
            rec.rebuild = True
            self._retry(
                rec,
                f"conflict in the merge queue{behind}",
                "Applying your change on top of main and the merge queue entries ahead of "
                f"it conflicted:\n{ev.text}\nYour branch starts again from the current main; "
                "redo the change on top of it.",
                ev.now,
            )
        elif ev.outcome == StackOutcome.EMPTY:
            self._leave_queue(rec, ev.now)
            self._retry(
                rec,
                "the change is empty on top of main",
                "Your branch changes nothing on top of main (its change is already there).",
                ev.now,
            )
        elif rec.queue_errors < QUEUE_ERROR_RETRIES:  # e.g. a push that raced: try again
            rec.queue_errors += 1
            self._reset_entry(rec)
            self._emit(
                K.WARNING,
                f"{rec.id}: merge queue error, stacking again: {ev.text}",
                rec,
                now=ev.now,
            )
        else:
            self._leave_queue(rec, ev.now)
            rec.reason = f"merge queue error: {ev.text}; approve to try again"
            self._set_state(rec, S.AWAITING_APPROVAL, ev.now)

    def _merge_message(self, rec: TicketRecord) -> str:
        attempts = f"{rec.attempt} attempt{'s' if rec.attempt != 1 else ''}"
        # Ticket text never forms a trailer: description lines shaped like one are
        # indented (a continuation line to git-interpret-trailers(1)).
        description = _TRAILER_LIKE_RE.sub(r" \g<0>", rec.ticket.description.strip())
        return (
            f"{rec.id}: {rec.ticket.title}\n\n{description}\n\n"
            f"Merged by orchestrator from {rec.branch} after {attempts}.\n\n"
            f"Ticket: {rec.id}\n"
        )

    def _on_merge(self, ev: MergeResult) -> None:
        batch = self._fast_forwarding if ev.ticket in self._fast_forwarding else (ev.ticket,)
        if self._fast_forwarding and self._fast_forwarding[-1] == ev.ticket:
            self._fast_forwarding = ()
        recs = [self.tickets[t] for t in batch if t in self.tickets]
        recs = [r for r in recs if r.state == S.MERGING]
        if not recs or recs[-1].id != ev.ticket:
            return
        if ev.outcome == MergeOutcome.MERGED:
            with_it = f" with {len(recs) - 1} more" if len(recs) > 1 else ""
            for rec in recs:
                sha = ev.sha if rec.id == ev.ticket else rec.queue_sha
                self._merged(rec, sha, ev.now, f"main fast-forwarded to {ev.sha[:10]}{with_it}")
        elif ev.outcome == MergeOutcome.MOVED:
            self._emit(
                K.WARNING,
                "main moved outside the merge queue; every entry is stacked again",
                now=ev.now,
            )
            for ticket_id in self.merge_queue:
                self._reset_entry(self.tickets[ticket_id])
        else:
            for rec in recs:
                self._leave_queue(rec, ev.now)
                rec.reason = f"fast-forward failed: {ev.text}; approve to try again"
                self._set_state(rec, S.AWAITING_APPROVAL, ev.now)

    def _merged(self, rec: TicketRecord, sha: str, now: float, reason: str) -> None:
        self._split_after.discard(rec.id)
        if self.merge_queue and self.merge_queue[0] == rec.id:
            self.merge_queue.pop(0)  # the entries behind are built on it: untouched
        else:
            self._leave_queue(rec, now)
        rec.merged_sha = sha
        rec.reason = reason
        rec.ci_sha = None
        self._effect(MoveFile(path=rec.file, dest="done", ticket=rec.id))
        self._release(rec, S.MERGED, now)
        self._refresh_blocked(now, rec.id)

    # --- failures -----------------------------------------------------------

    def _fail_attempt(self, rec: TicketRecord, reason: str, feedback: str, now: float) -> None:
        """An attempt failed: run again with feedback on the same worker, or fail."""
        worker = self._worker_of(rec)
        if worker is None:
            self._retry(rec, reason, feedback, now)
            return
        rec.reason = reason
        rec.feedback = f"Attempt {rec.attempt} failed: {reason}\n{feedback[-FEEDBACK_TAIL_CHARS:]}"
        self._emit(
            K.ATTEMPT_FAILED, f"{rec.id}: attempt {rec.attempt} failed: {reason}", rec, now=now
        )
        if rec.attempt >= rec.max_attempts:
            rec.reason = f"{reason} (attempt {rec.attempt} of {rec.max_attempts})"
            self._release(rec, S.FAILED, now)
            self._refresh_blocked(now, rec.id)
            return
        if not self.accepting:  # shutting down: the next attempt runs after the restart
            self._release(rec, S.QUEUED, now)
            return
        worker.state_since = now
        worker.stale_since = None
        worker.last_activity = now
        self._start_attempt(rec, worker, now)
        rec.reason = reason

    def _retry(self, rec: TicketRecord, reason: str, feedback: str, now: float) -> None:
        """A ticket without a worker failed (CI, rejection, conflict): it goes back to the
        scheduler on its own branch, keeping its leases and its age, for the next free
        worker; or it fails when its attempts are used up."""
        rec.reason = reason
        rec.feedback = f"Attempt {rec.attempt} failed: {reason}\n{feedback[-FEEDBACK_TAIL_CHARS:]}"
        rec.ci_sha = None
        self._emit(
            K.ATTEMPT_FAILED, f"{rec.id}: attempt {rec.attempt} failed: {reason}", rec, now=now
        )
        if rec.attempt >= rec.max_attempts:
            rec.reason = f"{reason} (attempt {rec.attempt} of {rec.max_attempts})"
            self._release(rec, S.FAILED, now)
            self._refresh_blocked(now, rec.id)
            return
        self._set_state(rec, S.QUEUED, now)
        self._push_heap(rec)

    def _requeue(self, rec: TicketRecord, now: float, feedback: str) -> None:
        if feedback:
            rec.feedback = feedback[-FEEDBACK_TAIL_CHARS:]
        self._release(rec, S.QUEUED, now)
        if rec.attempt >= rec.max_attempts:
            rec.reason += f"; attempts used up ({rec.attempt})"
            self._set_state(rec, S.FAILED, now)
            self._refresh_blocked(now, rec.id)
            return
        self._push_heap(rec)

    def _release(self, rec: TicketRecord, state: TicketState, now: float) -> None:
        """Free the ticket's worker and leases and move it to ``state``."""
        released = self.locks.release(rec.id)
        rec.agent_pid = None
        worker = self._worker_of(rec)
        if worker is not None:
            worker.ticket = None
            worker.pid = None
            worker.stale_since = None
            worker.state_since = now
        self._set_state(rec, state, now)
        if released:
            self._emit(
                K.LEASE_RELEASED,
                f"{rec.id}: released {len(released)} lock(s)",
                rec,
                now=now,
                leases=True,
            )
        if worker is not None:
            self._emit(K.AGENT_STATE, f"{worker.name}: idle", agent=worker, now=now)

    # --- liveness ---------------------------------------------------------

    def _on_progress(self, agent: str, now: float, note: str) -> None:
        worker = self.workers.get(agent)
        if worker is None or worker.ticket is None:
            return
        rec = self.tickets[worker.ticket]
        worker.last_activity = now
        if note:
            worker.note = note
        self.locks.renew(rec.id, now, self.config.lease_ttl_s)
        if worker.stale_since is not None and rec.state == S.RUNNING:
            worker.stale_since = None
            self._emit(
                K.AGENT_STATE, f"{agent}: progress again, no longer stale", agent=worker, now=now
            )
        elif note:
            self._emit(K.AGENT_HEARTBEAT, f"{agent}: {note}", agent=worker, now=now)

    def _on_tick(self, now: float) -> None:
        cfg = self.config
        # The daemon is the heartbeat of every ticket holding leases: while it runs, the
        # leases live; whether an agent makes progress is judged below (stale_after_s).
        for owner in self.locks.owners():
            self.locks.renew(owner, now, cfg.lease_ttl_s)
        for ticket_id in sorted(self.inflight):
            rec = self.tickets[ticket_id]
            late_s = now - rec.state_since - cfg.review.timeout_s - REVIEW_REPORT_MARGIN_S
            if rec.state == S.REVIEWING and late_s > 0:
                self._on_review(
                    ReviewResult(
                        rec.id,
                        rec.review_gen,
                        ReviewStatus.ERROR,
                        now,
                        error="the reviewer did not report in time",
                    )
                )
            if rec.ci_sha and now - rec.ci_started > cfg.ci.timeout_s + CI_REPORT_MARGIN_S:
                self._on_ci(
                    CIResult(
                        sha=rec.ci_sha,
                        status=CIVerdict.ERROR,
                        now=now,
                        log_tail="CI did not report a result in time",
                    )
                )
        for worker in self.workers.values():
            held = self.tickets.get(worker.ticket) if worker.ticket else None
            if held is None or held.state != S.RUNNING:
                continue
            rec = held
            if rec.stop_requested:
                continue
            idle_s = now - worker.last_activity
            if worker.stale_since is None and idle_s >= cfg.stale_after_s:
                worker.stale_since = now
                self._emit(
                    K.AGENT_STALE,
                    f"{worker.name}: no progress for {idle_s:.0f} s on {rec.id}",
                    rec,
                    worker,
                    now=now,
                )
            elif worker.stale_since is not None and now - worker.stale_since >= cfg.stale_grace_s:
                rec.stop_requested = StopReason.STALE
                self._effect(StopAgent(worker.name, rec.id, StopReason.STALE))
                self._emit(
                    K.AGENT_STOPPING,
                    f"{worker.name}: stale past grace; stopping, work will be committed",
                    rec,
                    worker,
                    now=now,
                )
        for owner in self.locks.expired(now):
            rec = self.tickets[owner]
            holder = self._worker_of(rec)
            if rec.state == S.RUNNING and holder is not None and not rec.stop_requested:
                rec.stop_requested = StopReason.EXPIRED
                self._effect(StopAgent(holder.name, rec.id, StopReason.EXPIRED))
                self._emit(K.LEASE_EXPIRED, f"{rec.id}: lease expired", rec, now=now)
        self._reserve_starved(now)
        for ticket_id in sorted(self._unknown_deps):
            rec = self.tickets[ticket_id]
            unknown = [d for d in rec.ticket.depends_on if d not in self.tickets]
            if rec.state not in (S.QUEUED, S.BLOCKED) or not unknown:
                self._unknown_deps.discard(ticket_id)
            elif now - rec.queued_at > UNKNOWN_DEPENDENCY_GRACE_S:
                self._unknown_deps.discard(ticket_id)
                rec.reason = f"depends_on: unknown ticket {unknown[0]!r}"
                self._set_state(rec, S.REJECTED, now)
                self._effect(
                    MoveFile(path=rec.file, dest="rejected", ticket=rec.id, error=rec.reason)
                )
                self._refresh_blocked(now, rec.id)

    def _reserve_starved(self, now: float) -> None:
        """Reserve the locks of tickets that waited past ``starvation_after_s`` for locks."""
        oldest = now - self.config.starvation_after_s
        starving = [
            r
            for r in self.tickets.values()
            if r.state == S.QUEUED
            and not r.reserved
            and r.queued_at <= oldest
            and r.reason.startswith("lock ")
        ]
        for rec in sorted(starving, key=lambda r: r.queued_at):  # the longest wait wins
            try:
                self.locks.reserve(rec.id, rec.ticket.locks)
            except LockConflict:
                continue  # overlaps an older ticket's reservation; it waits its turn
            rec.reserved = True
            self._emit(
                K.LEASE_RESERVED,
                f"{rec.id}: waited {now - rec.queued_at:.0f} s; its locks are reserved",
                rec,
                now=now,
                leases=True,
            )

    # --- commands ---------------------------------------------------------

    def _on_command(self, cmd: Command) -> None:
        rec = self.tickets.get(cmd.command.ticket)
        if rec is None:
            self._reply(False, f"unknown ticket {cmd.command.ticket!r}")
            return
        _COMMANDS[type(cmd.command)](self, rec, cmd.command, cmd.now)

    def _cmd_approve(self, rec: TicketRecord, _cmd: P.TicketCommand, now: float) -> None:
        st = rec.state
        if st == S.AWAITING_APPROVAL:
            self._enter_queue(rec, now, "approved")
            self._reply(True, f"{rec.id}: approved; {self._position(rec)}")
        elif st in (S.MERGING, S.MERGED):
            self._reply(True, f"{rec.id}: already approved ({st})")
        else:
            self._reply(False, f"{rec.id} is {st}; only awaiting_approval can be approved")

    def _cmd_stop(self, rec: TicketRecord, _cmd: P.TicketCommand, now: float) -> None:
        self._stop(rec, now)

    def _cmd_continue(self, rec: TicketRecord, cmd: P.TicketCommand, now: float) -> None:
        st = rec.state
        if st == S.AWAITING_APPROVAL:
            self._cmd_approve(rec, cmd, now)
        elif st in (S.STOPPED, S.FAILED, S.BLOCKED):
            rec.max_attempts = max(rec.max_attempts, rec.attempt + 1)
            rec.granted_attempts = rec.max_attempts
            rec.reason = f"continued after {st}"
            if not rec.resume:  # the agent runs again: the reviewer looks afresh
                rec.review_round = 0
            if isinstance(cmd, P.Continue) and cmd.feedback:  # a person's words go first
                rec.feedback = f"A person says:\n{cmd.feedback}\n\n{rec.feedback}".rstrip()
            self._set_state(rec, S.QUEUED, now)
            self._push_heap(rec)
            self._refresh_blocked(now, rec.id)
            if rec.state == S.BLOCKED:
                self._reply(False, f"{rec.id}: still blocked: {rec.reason}")
            else:
                self._reply(True, f"{rec.id}: queued again on {rec.branch or 'a new branch'}")
        elif st in (S.QUEUED, S.RUNNING, S.CI_RUNNING, S.REVIEWING, S.MERGING, S.MERGED):
            self._reply(True, f"{rec.id}: already {st}")
        else:
            self._reply(False, f"{rec.id} is {st}; nothing to continue")

    def _cmd_reject(self, rec: TicketRecord, cmd: P.TicketCommand, now: float) -> None:
        assert isinstance(cmd, P.Reject)
        if rec.state not in (S.AWAITING_APPROVAL, S.MERGING):
            self._reply(
                False,
                f"{rec.id} is {rec.state}; only awaiting_approval or merging can be rejected",
            )
            return
        if rec.id in self._fast_forwarding:
            self._reply(False, f"{rec.id}: main is being fast-forwarded to it")
            return
        self._leave_queue(rec, now)
        rec.max_attempts = max(rec.max_attempts, rec.attempt + 1)
        rec.granted_attempts = rec.max_attempts
        rec.review_round = 0  # a person sent it back: the reviewer looks afresh
        self._retry(
            rec,
            "rejected by reviewer",
            f"The reviewer rejected the change:\n{cmd.feedback}",
            now,
        )
        self._reply(True, f"{rec.id}: sent back with feedback for attempt {rec.attempt + 1}")

    def _cmd_priority(self, rec: TicketRecord, cmd: P.TicketCommand, now: float) -> None:
        assert isinstance(cmd, P.SetPriority)
        if not 0 <= cmd.priority <= 4:
            self._reply(False, "priority must be 0..4")
            return
        rec.priority_override = cmd.priority
        rec.ticket = msgspec.structs.replace(rec.ticket, priority=cmd.priority)
        self._dirty(rec)
        if rec.state == S.QUEUED:
            self._push_heap(rec)
        elif rec.state == S.MERGING and not self._started(rec):
            self._place(rec)
        self._emit(K.TICKET_UPDATED, f"{rec.id}: priority P{cmd.priority}", rec, now=now)
        self._reply(True, f"{rec.id}: priority P{cmd.priority}")

    def _cmd_heartbeat(self, rec: TicketRecord, cmd: P.TicketCommand, now: float) -> None:
        assert isinstance(cmd, P.Heartbeat)
        worker = self._worker_of(rec)
        if worker is None or rec.state not in AGENT_STATES:
            self._reply(False, f"{rec.id} is {rec.state}; no running agent to heartbeat")
            return
        self._on_progress(worker.name, now, cmd.note or "heartbeat")
        self._reply(True, f"{rec.id}: lease renewed")

    def _cmd_ask(self, rec: TicketRecord, cmd: P.TicketCommand, now: float) -> None:
        """An agent asks a person: ``running`` -> ``needs_input`` (docs/architecture.md)."""
        assert isinstance(cmd, P.Ask)
        question = cmd.question.strip()
        worker = self._worker_of(rec)
        if rec.state not in AGENT_STATES or worker is None or worker.pid is None:
            self._reply(
                False, f"{rec.id} is {rec.state}; only the agent of a running ticket can ask"
            )
        elif not rec.run_id or cmd.run_id != rec.run_id:
            self._reply(
                False,
                f"{rec.id}: ORCH_RUN_ID does not name its running attempt; only the agent "
                "of that attempt may ask",
            )
        elif rec.stop_requested:
            self._reply(False, f"{rec.id}: its agent is being stopped")
        elif not question:
            self._reply(False, "the question is empty")
        elif len(question) > P.MAX_QUESTION_CHARS:
            self._reply(False, f"the question is longer than {P.MAX_QUESTION_CHARS} characters")
        elif rec.state == S.RUNNING and rec.answered is not None and rec.answered[0] == question:
            # asked again after the answer came (its first ask was killed meanwhile)
            self._effect(QuestionClosed(rec.id, answer=rec.answered[1]))
            self._reply(True, f"{rec.id}: answered before; the answer is sent again")
        elif rec.state == S.NEEDS_INPUT:
            if question == rec.question:  # asked again (its first ask was interrupted)
                self._reply(True, f"{rec.id}: still waiting for the answer")
            else:
                self._reply(
                    False, f"{rec.id}: already asks {_one_line(rec.question)!r}; one at a time"
                )
        else:
            rec.question, rec.asked_at, rec.asked_by = question, now, worker.name
            rec.reason = f"asks: {_one_line(question)}"
            worker.stale_since = None
            self._set_state(
                rec,
                S.NEEDS_INPUT,
                now,
                kind=K.QUESTION_ASKED,
                message=f"{rec.id}: {worker.name} asks: {_one_line(question)}",
                text=question,
            )
            self._reply(True, f"{rec.id}: asked; waiting for a person's answer")

    def _cmd_answer(self, rec: TicketRecord, cmd: P.TicketCommand, now: float) -> None:
        """A person answers: back to ``running`` (its agent waits), else ``queued`` with
        the answer as the next attempt's feedback."""
        assert isinstance(cmd, P.Answer)
        text = cmd.text.strip()
        if rec.state != S.NEEDS_INPUT:
            self._reply(False, f"{rec.id} is {rec.state}; it has no open question")
            return
        if not text:
            self._reply(False, "the answer is empty")
            return
        if len(text) > P.MAX_QUESTION_CHARS:
            self._reply(False, f"the answer is longer than {P.MAX_QUESTION_CHARS} characters")
            return
        question = rec.question
        rec.question, rec.asked_at, rec.asked_by = "", 0.0, ""
        message = f"{rec.id}: answered: {_one_line(text)}"
        worker = self._worker_of(rec)
        if worker is not None:
            rec.answered = (question, text)
            self._effect(QuestionClosed(rec.id, answer=text))
            rec.reason = ""
            worker.last_activity = now  # the stale clock starts again
            worker.stale_since = None
            self._set_state(
                rec, S.RUNNING, now, kind=K.QUESTION_ANSWERED, message=message, text=text
            )
            self._reply(True, f"{rec.id}: answered; its agent continues")
            return
        rec.feedback = (
            f"Your previous attempt asked a person:\n{question}\n\nThe answer:\n{text}\n\n"
            + rec.feedback
        ).rstrip()
        rec.attempt = max(0, rec.attempt - 1)  # the interrupted attempt is run again
        rec.reason = "answered; the answer goes to its next attempt"
        self._set_state(rec, S.QUEUED, now, kind=K.QUESTION_ANSWERED, message=message, text=text)
        self._push_heap(rec)
        self._reply(True, f"{rec.id}: answered; queued again with the answer as feedback")

    def _on_ask_timed_out(self, ev: AskTimedOut) -> None:
        rec = self.tickets.get(ev.ticket)
        if rec is None or rec.state != S.NEEDS_INPUT or rec.run_id != ev.run_id:
            return  # answered, stopped or ended meanwhile
        worker = self._worker_of(rec)
        if worker is None:
            return
        question = rec.question
        rec.question, rec.asked_at, rec.asked_by = "", 0.0, ""
        self._effect(QuestionClosed(rec.id, timed_out=True))
        rec.reason = ""
        worker.last_activity = ev.now
        worker.stale_since = None
        self._set_state(
            rec,
            S.RUNNING,
            ev.now,
            kind=K.QUESTION_WITHDRAWN,
            message=f"{rec.id}: no answer in time; its agent continues without one "
            f"(it asked: {_one_line(question)})",
        )

    def _on_budget(self, ev: BudgetExceeded) -> None:
        """Stop the running agent of a ticket that spent more than its budget."""
        rec = self.tickets.get(ev.ticket)
        worker = self._worker_of(rec) if rec is not None else None
        if (
            rec is None
            or worker is None
            or worker.pid is None  # not started, or already exited: nothing to stop
            or rec.state not in AGENT_STATES
            or rec.attempt != ev.attempt
            or rec.stop_requested
        ):
            return
        rec.stop_requested = StopReason.BUDGET
        rec.reason = (
            f"budget exceeded: ${ev.cost_usd:.2f} spent, budget.max_cost_usd is "
            f"${ev.limit_usd:.2f}; raise it and continue"
        )
        self._effect(StopAgent(worker.name, rec.id, StopReason.BUDGET))
        self._emit(
            K.AGENT_STOPPING, f"{worker.name}: {rec.id}: {rec.reason}", rec, worker, now=ev.now
        )

    def _stop(self, rec: TicketRecord, now: float) -> None:
        st = rec.state
        if st == S.RUNNING or (st == S.NEEDS_INPUT and self._worker_of(rec) is not None):
            worker = self._worker_of(rec)
            if rec.stop_requested:
                self._reply(True, f"{rec.id}: already stopping")
                return
            rec.stop_requested = StopReason.STOP
            assert worker is not None
            self._effect(StopAgent(worker.name, rec.id, StopReason.STOP))
            self._emit(K.AGENT_STOPPING, f"{worker.name}: stopping {rec.id}", rec, worker, now=now)
            self._reply(True, f"{rec.id}: stopping; its work will be committed on {rec.branch}")
        elif st == S.MERGING and rec.id in self._fast_forwarding:
            self._reply(False, f"{rec.id}: main is being fast-forwarded to it; it cannot stop")
        elif st in (
            S.QUEUED,
            S.BLOCKED,
            S.CI_RUNNING,
            S.REVIEWING,
            S.AWAITING_APPROVAL,
            S.MERGING,
            S.NEEDS_INPUT,
        ):
            rec.reason = f"stopped by request while {st}"
            if st == S.NEEDS_INPUT:
                rec.reason += f" (it asked: {_one_line(rec.question)})"
            if st == S.MERGING:
                self._leave_queue(rec, now)
            if st == S.REVIEWING:
                self._effect(StopReview(rec.id, rec.review_gen))
            if st in (S.CI_RUNNING, S.REVIEWING, S.AWAITING_APPROVAL, S.MERGING):
                rec.resume = st
            self.locks.unreserve(rec.id)
            rec.ci_sha = None
            self._release(rec, S.STOPPED, now)
            self._reply(True, f"{rec.id}: stopped")
        elif st == S.STOPPED:
            self._reply(True, f"{rec.id}: already stopped")
        else:
            self._reply(False, f"{rec.id} is {st}; it cannot be stopped now")

    def _position(self, rec: TicketRecord) -> str:
        return f"merge queue position {self.merge_queue.index(rec.id) + 1}"

    def stop_all(self, now: float) -> Outcome:
        """Shutdown: stop every running agent (work committed, ticket requeued)."""
        self._out = Outcome()
        self.accepting = False
        for rec in self.tickets.values():
            worker = self._worker_of(rec)
            if rec.state in AGENT_STATES and worker is not None and not rec.stop_requested:
                rec.stop_requested = StopReason.SHUTDOWN
                self._effect(StopAgent(worker.name, rec.id, StopReason.SHUTDOWN))
        return self._take()

    # --- plumbing ---------------------------------------------------------

    def _set_state(
        self,
        rec: TicketRecord,
        state: TicketState,
        now: float,
        kind: K = K.TICKET_STATE,
        message: str = "",
        text: str | None = None,
    ) -> None:
        if rec.question and state != S.NEEDS_INPUT:  # closed without an answer
            rec.question, rec.asked_at, rec.asked_by = "", 0.0, ""
            self._effect(
                QuestionClosed(rec.id, message=f"the question was closed: {rec.id} is {state}")
            )
        rec.state = state
        rec.state_since = now
        if state in (S.CI_RUNNING, S.REVIEWING, S.AWAITING_APPROVAL, S.MERGING):
            self.inflight.add(rec.id)
        else:
            self.inflight.discard(rec.id)
        self._unpark(rec.id)
        if state == S.QUEUED and kind == K.TICKET_STATE:
            rec.reserved = False
        message = message or f"{rec.id}: {state}" + (f" ({rec.reason})" if rec.reason else "")
        worker = self._worker_of(rec)
        self._emit(kind, message, rec, worker, now=now, text=text)
        if state not in ACTIVE_STATES and state != S.QUEUED:
            released = self.locks.release(rec.id)  # e.g. cancelled or blocked after a retry
            if released:
                self._emit(
                    K.LEASE_RELEASED,
                    f"{rec.id}: released {len(released)} lock(s)",
                    rec,
                    now=now,
                    leases=True,
                )

    def _emit(
        self,
        kind: K,
        message: str,
        rec: TicketRecord | None = None,
        agent: Worker | None = None,
        *,
        now: float,
        leases: bool = False,
        text: str | None = None,
    ) -> None:
        if rec is not None:
            self._dirty(rec)
            if agent is None:
                agent = self._worker_of(rec)
        self._out.events.append(
            Event(
                id=0,
                ts=now,
                kind=kind,
                message=message,
                ticket=rec.id if rec else None,
                agent=agent.name if agent else None,
                ticket_view=self.ticket_view(rec, now) if rec else None,
                agent_view=self.agent_view(agent) if agent else None,
                leases=self.lease_views(rec.id) if leases and rec else None,
                text=text,
            )
        )

    def _dirty(self, rec: TicketRecord) -> None:
        self._out.dirty.add(rec.id)
        self._encoded_views.pop(rec.id, None)

    def _effect(self, effect: Effect) -> None:
        self._out.effects.append(effect)

    def _reply(self, ok: bool, message: str) -> None:
        self._out.ok, self._out.message = ok, message

    def _take(self) -> Outcome:
        out, self._out = self._out, Outcome()
        return out


def format_comments(comments: Iterable[ReviewComment]) -> str:
    """Reviewer comments as feedback lines: ``- path:line: body`` (``- path: body``)."""
    lines = []
    for c in comments:
        where = f"{c.path}:{c.line}" if c.line is not None else c.path
        lines.append(f"- {where}: {c.body}")
    return "\n".join(lines)


#: The handler of each ticket command (``Core._on_command``).
CommandHandler = Callable[[Core, TicketRecord, P.TicketCommand, float], None]
_COMMANDS: dict[type[P.TicketCommand], CommandHandler] = {
    P.Approve: Core._cmd_approve,
    P.Stop: Core._cmd_stop,
    P.Continue: Core._cmd_continue,
    P.Reject: Core._cmd_reject,
    P.SetPriority: Core._cmd_priority,
    P.Heartbeat: Core._cmd_heartbeat,
    P.Ask: Core._cmd_ask,
    P.Answer: Core._cmd_answer,
}


def _one_line(text: str, limit: int = 200) -> str:
    """``text`` on one line (whitespace runs become one space), cut to ``limit`` chars."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
