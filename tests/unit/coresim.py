"""A driver for the pure Core: performs its effects the way the shell would, in memory."""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from orchestrator.daemon import core as C
from orchestrator.shared import protocol as P
from orchestrator.shared.config import AgentConfig, Config
from orchestrator.shared.models import ACTIVE_STATES, Ticket, TicketState

_TICKET_COMMANDS = (
    P.Approve,
    P.Stop,
    P.Continue,
    P.Reject,
    P.SetPriority,
    P.Heartbeat,
    P.Ask,
    P.Answer,
)


def make_config(**overrides: object) -> Config:
    values: dict[str, object] = {"agent": AgentConfig(command=["agent"]), "workers": 3}
    values.update(overrides)
    return Config(**values)  # type: ignore[arg-type]


def ticket(
    tid: str,
    priority: int = 2,
    locks: list[str] | None = None,
    depends_on: list[str] | None = None,
    max_attempts: int | None = None,
) -> Ticket:
    """A ticket as parse_ticket makes it: no locks declared means the whole repo."""
    return Ticket(
        id=tid,
        title=f"ticket {tid}",
        priority=priority,
        locks=locks or ["."],
        depends_on=depends_on or [],
        max_attempts=max_attempts,
    )


def run_id(eff: C.StartAgent) -> str:
    """The ORCH_RUN_ID the simulated shell gives an attempt."""
    return f"run-{eff.ticket}-{eff.attempt}"


@dataclass
class Sim:
    """Holds a Core, a clock and the effects it asked for."""

    core: C.Core
    now: float = 1000.0
    effects: list[C.Effect] = field(default_factory=list)
    events: list = field(default_factory=list)
    shas: int = 0
    heads: int = 0
    main: str = "0" * 40
    merged: list[str] = field(default_factory=list)
    """Ticket ids in the order main was fast-forwarded to them."""
    parents: dict[str, str] = field(default_factory=dict)
    """Queue commit -> its parent (the merger's commits)."""
    pushed: list[str] = field(default_factory=list)
    """Queue commits pushed for CI (``Stack.test``), in order: one CI run each."""

    @classmethod
    def new(cls, workers: int = 3, **config: object) -> Sim:
        cfg = make_config(workers=workers, **config)
        names = {f"agent-{k}": f"/wt/agent-{k}" for k in range(1, workers + 1)}
        return cls(C.Core(cfg, names))

    def feed(self, item: C.Input) -> C.Outcome:
        out = self.core.handle(item)
        self.effects += out.effects
        self.events += out.events
        return out

    def add(self, t: Ticket, path: str | None = None) -> C.Outcome:
        return self.feed(C.TicketRead(path=path or f"/backlog/{t.id}.yaml", now=self.now, ticket=t))

    def tick(self, dt: float = 1.0) -> C.Outcome:
        self.now += dt
        return self.feed(C.Tick(self.now))

    def command(self, name: str, tid: str, **kw: object) -> C.Outcome:
        """Feed the ticket command whose wire ``type`` is ``name`` (``approve``, ``reject``...)."""
        kind = next(t for t in _TICKET_COMMANDS if t.__struct_config__.tag == name)
        return self.feed(C.Command(kind(ticket=tid, **kw), self.now))  # type: ignore[arg-type]

    def take(self, kind: type) -> list:
        found = [e for e in self.effects if isinstance(e, kind)]
        self.effects = [e for e in self.effects if not isinstance(e, kind)]
        return found

    def state(self, tid: str) -> TicketState:
        return self.core.tickets[tid].state

    def rec(self, tid: str) -> C.TicketRecord:
        return self.core.tickets[tid]

    # --- acting out an attempt ------------------------------------------

    def start(self, eff: C.StartAgent, pid: int = 100) -> None:
        self.feed(
            C.AgentStarted(
                eff.agent, eff.ticket, eff.attempt, pid, "/log", "", self.now, run_id=run_id(eff)
            )
        )

    def ask(self, eff: C.StartAgent, question: str = "which way?") -> C.Outcome:
        """The attempt's agent runs ``orchestrator ask`` (with its own ORCH_RUN_ID)."""
        return self.command("ask", eff.ticket, question=question, run_id=run_id(eff))

    def exit(
        self,
        eff: C.StartAgent,
        code: int = 0,
        changed: tuple[str, ...] | None = None,
        new_work: bool = True,
        tail: str = "",
    ) -> None:
        if changed is None:
            lock = self.rec(eff.ticket).ticket.locks[0]
            changed = ("file.txt",) if lock == "." else (lock,)
        self.heads += 1
        head = f"head{self.heads}" if new_work else (self.rec(eff.ticket).pushed_sha or "")
        self.feed(
            C.AgentExited(
                eff.agent,
                eff.ticket,
                eff.attempt,
                code,
                self.now,
                changed=changed,
                head=head,
                log_tail=tail,
            )
        )

    def push(self, push: C.Push) -> str:
        """Answer a Push as the shell would; returns the pushed commit (the attempt's
        head, which the core already waits for CI on)."""
        sha = self.rec(push.ticket).pushed_sha or ""
        self.feed(C.Pushed(push.ticket, push.attempt, sha, self.now))
        return sha

    def ci(self, sha: str, status: str = "pass", tail: str = "") -> None:
        self.feed(C.CIResult(sha=sha, status=status, now=self.now, exit_code=0, log_tail=tail))

    def stack(self, eff: C.Stack, outcome: str = "stacked", verified: bool = False) -> str:
        """Answer a Stack effect as the merger would; returns the commit (``reuse`` when
        it was built on the same parent before: the same tree, as the merger checks)."""
        parent = eff.parent or self.main
        if eff.reuse and self.parents.get(eff.reuse) == parent:
            sha = eff.reuse
        else:
            self.shas += 1
            sha = f"{self.shas:040x}"
            self.parents[sha] = parent
        if eff.test and outcome == "stacked" and not verified:
            self.pushed.append(sha)
        self.feed(
            C.Stacked(
                eff.ticket,
                eff.gen,
                outcome,
                self.now,
                sha=sha,
                parent=parent,
                verified=verified,
                text="conflicting files: a.py" if outcome == "conflict" else "",
                test=eff.test,
            )
        )
        return sha

    def fast_forward(self, eff: C.FastForward, outcome: str = "merged") -> None:
        """Answer a FastForward as the merger would (``moved`` when main is elsewhere)."""
        if outcome == "merged" and eff.parent != self.main:
            outcome = "moved"
        if outcome == "merged":
            self.main = eff.sha
            self.merged += [t for t, _ in eff.batch] + [eff.ticket]
        self.feed(C.MergeResult(eff.ticket, outcome, self.now, sha=eff.sha))

    def settle(self, fail: frozenset[str] = frozenset(), rounds: int = 100) -> None:
        """Run the merge queue to rest: stack, CI (``fail`` ids fail), fast-forward."""
        for _ in range(rounds):
            stacks, ffs = self.take(C.Stack), self.take(C.FastForward)
            if not stacks and not ffs:
                return
            for eff in stacks:
                self.stack(eff)
            for rec in list(self.core.tickets.values()):
                if rec.state == TicketState.MERGING and rec.ci_sha:
                    self.ci(rec.ci_sha, "fail" if rec.id in fail else "pass")
            for ff in ffs:
                self.fast_forward(ff)
        raise AssertionError("the merge queue did not settle")

    def run_to_ci(self, eff: C.StartAgent) -> str:
        """Start + successful exit + push; returns the pushed sha."""
        self.start(eff)
        self.exit(eff)
        (push,) = self.take(C.Push)
        return self.push(push)


def check_invariants(core: C.Core) -> None:
    """The rules that must hold after every input."""
    leases = core.locks.leases()
    from orchestrator.shared.lockspec import locks_overlap

    for i, a in enumerate(leases):
        for b in leases[i + 1 :]:
            assert a.owner == b.owner or not locks_overlap(a.path, b.path), (a, b)
    for lease in leases:
        state = core.tickets[lease.owner].state
        assert state in ACTIVE_STATES or state == TicketState.QUEUED, lease
    holders = {w.ticket: w.name for w in core.workers.values() if w.ticket}
    assert len(holders) == sum(1 for w in core.workers.values() if w.ticket)
    for rec in core.tickets.values():
        # only an agent holds a worker (agent slots); the rest of the flight holds none
        if rec.state == TicketState.RUNNING or (
            rec.state == TicketState.NEEDS_INPUT and rec.agent is not None
        ):
            assert holders.get(rec.id) == rec.agent, (rec.id, rec.state, holders)
        else:
            assert rec.id not in holders, (rec.id, rec.state)
        assert isinstance(rec.state, TicketState)
        # an open question exactly while needs_input; never stale while it waits
        assert bool(rec.question) == (rec.state == TicketState.NEEDS_INPUT), rec.id
    for worker in core.workers.values():
        if worker.ticket and core.tickets[worker.ticket].state == TicketState.NEEDS_INPUT:
            assert worker.stale_since is None, worker
    check_queue(core)
    check_encoded_views(core)
    # nothing eligible is left waiting while a worker is idle (parking loses no ticket)
    if core.accepting and any(w.ticket is None for w in core.workers.values()):
        for rec in core.tickets.values():
            if rec.state == TicketState.QUEUED:
                reason, _ = core._ineligible(rec)
                assert reason, f"{rec.id} is eligible but waits while a worker is idle"


def check_encoded_views(core: C.Core) -> None:
    """The cached encoded views (``Core.ticket_views_json``) equal fresh ones, byte for
    byte: every change to a record that a view shows drops its cache entry."""
    now = max((r.state_since for r in core.tickets.values()), default=0.0) + 7.25
    assert core.ticket_views_json(now) == msgspec.json.encode(core.ticket_views(now))


def check_queue(core: C.Core) -> None:
    """The merge queue's rules (docs/scheduling.md, merge queue)."""
    queue = core.merge_queue
    merging = {r.id for r in core.tickets.values() if r.state == TicketState.MERGING}
    assert len(queue) == len(set(queue)) and set(queue) == merging, (queue, merging)
    inflight = {
        r.id
        for r in core.tickets.values()
        if r.state
        in (
            TicketState.CI_RUNNING,
            TicketState.REVIEWING,
            TicketState.AWAITING_APPROVAL,
            TicketState.MERGING,
        )
    }
    assert core.inflight == inflight
    started = [core._started(core.tickets[t]) for t in queue]
    # entries whose CI started form a prefix, no deeper than merge.depth
    assert started == sorted(started, reverse=True), started
    assert sum(started) <= max(core.config.queue_depth, core.config.merge.batch)
    # each stacked entry is built on the commit of the entry ahead of it
    for k in range(1, len(queue)):
        rec = core.tickets[queue[k]]
        if rec.queue_sha:
            assert rec.queue_parent == core.tickets[queue[k - 1]].queue_sha, (queue, k)
    # the rest wait in priority, then approval order
    waiting = [core._queue_key(t) for t, s in zip(queue, started, strict=True) if not s]
    assert waiting == sorted(waiting), waiting
    # main is fast-forwarded only to the head, only after CI passed on its commit
    # (with batches: through the head's batch, after CI passed on its last commit)
    ff = core._fast_forwarding
    if ff and all(t in core.tickets for t in ff):
        if all(core.tickets[t].state == TicketState.MERGING for t in ff):
            assert tuple(queue[: len(ff)]) == ff, (queue, ff)
            tip = core.tickets[ff[-1]]
            assert tip.ci is not None and tip.ci.status == "pass" and tip.ci.sha == tip.queue_sha
            assert len(ff) <= core.config.merge.batch
