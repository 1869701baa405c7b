"""3. Scheduling: with 10,000 queued tickets and 1,000 held lock paths, the time to
choose the next assignment when a worker frees up.

Runs the pure :class:`daemon.core.Core` in this process (it is what decides; the
daemon only feeds it inputs). Every ticket locks 10 paths drawn from 10,000
files under 500 directories (one ticket in 20 locks a whole directory and 9
files). 100 workers each run one, so 1,000 lock paths are held; 10,000 more
are queued, about two in three waiting for a held path. One sample: a running
ticket is stopped (``Command(Stop)``, then its ``AgentExited``), which frees
its worker and its locks; the core then picks the most urgent eligible ticket.
``schedule.choose_*`` times that pick (``Core._schedule``), ``schedule.free_to_assign_*``
the whole ``handle(AgentExited)`` (the pick plus the events it emits). After
each sample a new ticket is queued, so the queue stays at 10,000 and the held
paths at about 1,000.

``schedule.hot_lock_*`` is a harder queue: 9,000 of the 10,000 queued tickets,
all more urgent than the rest, wait for one file a running ticket holds.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable
from typing import Any

from benchmarks.harness import Figure, median, percentile
from orchestrator.daemon.core import AgentExited, Command, Core, TicketRead
from orchestrator.shared import protocol as P
from orchestrator.shared.config import AgentConfig, Config
from orchestrator.shared.lockspec import normalize_lock
from orchestrator.shared.models import Ticket, TicketState

TARGET_P99_MS = 1.0
WORKERS = 100
LOCKS_PER_TICKET = 10
QUEUED = 10_000
FILES = 10_000
DIRS = 500


class _Bench:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        config = Config(agent=AgentConfig(command=["true"]))
        self.core = Core(config, {f"agent-{k}": f"/wt/agent-{k}" for k in range(1, WORKERS + 1)})
        self.ids = itertools.count()
        self.now = 1_000_000.0
        self.choose_s: list[float] = []
        schedule = self.core._schedule

        def timed(now: float) -> None:
            t0 = time.perf_counter()
            schedule(now)
            self.choose_s.append(time.perf_counter() - t0)

        self._timed = timed
        self._plain = schedule

    def file(self) -> str:
        n = self.rng.randrange(FILES)
        return f"pkg{n % DIRS}/m{n}.py"

    def read(self, locks: list[str], priority: int, prefix: str = "q") -> str:
        ticket_id = f"{prefix}{next(self.ids)}"
        self.now += 0.001
        # Locks normalised as shared.models.parse_ticket does at intake (which also
        # warms the lock parser's cache, as in the daemon).
        ticket = Ticket(
            title=ticket_id,
            id=ticket_id,
            priority=priority,
            locks=[normalize_lock(x) for x in locks],
        )
        self.core.handle(TicketRead(path=f"/backlog/{ticket_id}.yaml", now=self.now, ticket=ticket))
        return ticket_id

    def fill_running(self, wanted: int) -> None:
        """Queue P0 tickets with 10 free files each until ``wanted`` workers run one."""
        while self.busy() < wanted:
            locks: set[str] = set()
            while len(locks) < LOCKS_PER_TICKET:
                f = self.file()
                if not self.core.locks.conflicts([f]):
                    locks.add(f)
            self.read(sorted(locks), priority=0, prefix="r")

    def busy(self) -> int:
        return sum(1 for w in self.core.workers.values() if w.ticket is not None)

    def queued(self) -> int:
        return sum(1 for r in self.core.tickets.values() if r.state == TicketState.QUEUED)

    def mixed_locks(self) -> list[str]:
        locks: set[str] = set()
        if self.rng.random() < 0.05:
            locks.add(f"pkg{self.rng.randrange(DIRS)}/")
        while len(locks) < LOCKS_PER_TICKET:
            locks.add(self.file())
        return sorted(locks)

    def free_one(self, timed: bool) -> float:
        """Stop one running ticket; return the duration of the handle() that frees it."""
        busy = [w for w in self.core.workers.values() if w.ticket is not None]
        worker = self.rng.choice(busy)
        assert worker.ticket is not None
        rec = self.core.tickets[worker.ticket]
        self.now += 0.01
        self.core.handle(Command(P.Stop(ticket=rec.id), self.now))
        self.now += 0.01
        exited = AgentExited(
            agent=worker.name, ticket=rec.id, attempt=rec.attempt, exit_code=-15, now=self.now
        )
        self.core._schedule = self._timed if timed else self._plain  # type: ignore[method-assign]
        t0 = time.perf_counter()
        self.core.handle(exited)
        elapsed = time.perf_counter() - t0
        self.core._schedule = self._plain  # type: ignore[method-assign]
        return elapsed


def _nothing(*args: Any, **kwargs: Any) -> list[Any]:
    """Stands in for ``Core.lease_views`` or ``Core._refresh_blocked`` (any signature)."""
    return []


def _without_refresh(core: Core) -> Callable[[], None]:
    """Skip ``_refresh_blocked`` while building the queue; return the undo.

    None of these tickets has ``depends_on``, so the refresh never changes
    anything, but up to commit 84d7694 it walks every ticket on every intake
    (O(N) per ticket, see docs/performance.md): 10,000 intakes took minutes.
    """
    original: Any = core._refresh_blocked
    core._refresh_blocked = _nothing  # type: ignore[method-assign, assignment]

    def undo() -> None:
        core._refresh_blocked = original  # type: ignore[method-assign]

    return undo


def _mixed(
    samples: int, queued: int, stub_leases: bool = False
) -> tuple[list[float], list[float], tuple[int, int], list[int]]:
    """Returns pick times, handle times, (min, max) held paths and, with
    ``stub_leases``, how many queued tickets each pick examined."""
    bench = _Bench(seed=3)
    examined = [0]
    counts: list[int] = []
    if stub_leases:
        bench.core.lease_views = _nothing  # type: ignore[method-assign]
        ineligible = bench.core._ineligible

        def counting(*args: Any) -> Any:
            examined[0] += 1
            return ineligible(*args)

        bench.core._ineligible = counting  # type: ignore[method-assign, assignment]
    undo = _without_refresh(bench.core)
    bench.fill_running(WORKERS)
    for _ in range(queued):
        bench.read(bench.mixed_locks(), priority=bench.rng.randrange(5))
    bench.core._schedule(bench.now)  # the first pass notes why each ticket waits
    held = [len(bench.core.locks)]
    handle_s = []
    for i in range(samples + 20):
        undo()
        examined[0] = 0
        elapsed = bench.free_one(timed=True)
        if i >= 20:  # warm-up
            handle_s.append(elapsed)
            counts.append(examined[0])
        else:
            bench.choose_s.clear()
        undo = _without_refresh(bench.core)
        bench.fill_running(WORKERS)
        while bench.queued() < queued:
            bench.read(bench.mixed_locks(), priority=bench.rng.randrange(5))
        held.append(len(bench.core.locks))
    undo()
    return bench.choose_s, handle_s, (min(held), max(held)), counts


def _hot_lock(samples: int, queued: int) -> tuple[list[float], list[float]]:
    bench = _Bench(seed=4)
    undo = _without_refresh(bench.core)
    bench.fill_running(WORKERS - 1)
    hot = "pkg0/hot.py"
    bench.read([hot, "pkg1/m1.py"], priority=0, prefix="h")  # the holder of the hot file
    for _ in range(queued * 9 // 10):
        bench.read([hot], priority=1)
    for _ in range(queued - queued * 9 // 10):
        bench.read(bench.mixed_locks(), priority=3)
    bench.core._schedule(bench.now)
    holder = next(w for w in bench.core.workers.values() if w.ticket and w.ticket.startswith("h"))
    for _ in range(samples):
        # Free any worker but the hot file's holder.
        busy = [w for w in bench.core.workers.values() if w.ticket and w is not holder]
        worker = bench.rng.choice(busy)
        assert worker.ticket is not None
        rec = bench.core.tickets[worker.ticket]
        bench.now += 0.01
        bench.core.handle(Command(P.Stop(ticket=rec.id), bench.now))
        bench.now += 0.01
        bench.core._schedule = bench._timed  # type: ignore[method-assign]
        bench.core.handle(
            AgentExited(
                agent=worker.name, ticket=rec.id, attempt=rec.attempt, exit_code=-15, now=bench.now
            )
        )
        bench.core._schedule = bench._plain  # type: ignore[method-assign]
        while bench.queued() < queued:
            bench.read(bench.mixed_locks(), priority=3)
    undo()
    # The first pick examines the whole queue (nothing was examined while every
    # worker was busy); the others show the steady state.
    return bench.choose_s[:1], bench.choose_s[1:]


def _timed_call(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(quick: bool) -> list[Figure]:
    samples = 200 if quick else 500
    choose_s, handle_s, held, _ = _mixed(samples, QUEUED)
    pick_s, _, _, examined = _mixed(samples, QUEUED, stub_leases=True)
    hot_first_s, hot_s = _hot_lock(20 if quick else 100, QUEUED)
    bench = _Bench(seed=5)
    bench.fill_running(WORKERS)
    views_ms = [(_timed_call(bench.core.lease_views)) * 1000 for _ in range(20)]
    ms = [x * 1000 for x in choose_s]
    hms = [x * 1000 for x in handle_s]
    hot_ms = [x * 1000 for x in hot_s]
    pick_ms = [x * 1000 for x in pick_s]
    setup = (
        f"{QUEUED} queued, {held[0]}-{held[1]} held lock paths ({WORKERS} running "
        f"tickets x {LOCKS_PER_TICKET} locks), pure Core in-process"
    )
    return [
        Figure(
            "schedule.choose_p50",
            percentile(ms, 50),
            "ms",
            TARGET_P99_MS,
            samples=len(ms),
            note=f"Core._schedule after a worker frees; {setup}",
        ),
        Figure(
            "schedule.choose_p99",
            percentile(ms, 99),
            "ms",
            TARGET_P99_MS,
            samples=len(ms),
            note=f"Core._schedule after a worker frees; {setup}",
        ),
        Figure(
            "schedule.free_to_assign_p99",
            percentile(hms, 99),
            "ms",
            None,
            samples=len(hms),
            note="the whole handle(AgentExited) that frees the worker "
            "and assigns the next ticket, events included",
        ),
        Figure(
            "schedule.pick_only_p99",
            percentile(pick_ms, 99),
            "ms",
            None,
            samples=len(pick_ms),
            note="the same picks with Core.lease_views stubbed out (the choice without the "
            f"lease events); queued tickets examined per pick: median "
            f"{median([float(x) for x in examined]):.0f}, max {max(examined)}",
        ),
        Figure(
            "schedule.lease_views",
            median(views_ms),
            "ms",
            None,
            samples=len(views_ms),
            note=f"one full Core.lease_views() with {len(bench.core.locks)} leases (in every "
            "snapshot; in every lease event up to commit 84d7694)",
        ),
        Figure(
            "schedule.hot_lock_first_pick",
            hot_first_s[0] * 1000,
            "ms",
            None,
            samples=1,
            note="the first pick after 9,000 more urgent tickets queued for one held file "
            "while every worker was busy (it examines all of them)",
        ),
        Figure(
            "schedule.hot_lock_choose_p99",
            percentile(hot_ms, 99),
            "ms",
            None,
            samples=len(hot_ms),
            note="the picks after it: Core._schedule when 9,000 more "
            "urgent queued tickets "
            "wait for one held file",
        ),
    ]
