"""What the TUI knows about the daemon: the last snapshot with every event applied.

The daemon sends a :class:`~shared.protocol.Snapshot` when we subscribe (and again when
it dropped events for a slow client), then :class:`~shared.protocol.Event` lines
(docs/protocol.md). Views in an event are complete, so applying an event means
replacing what we hold; we never interpret ``kind`` beyond ``agent.output``.

No textual import here: the board is plain data. It records *which* tickets and
agents changed (:meth:`Board.take_changes`), so the app updates only those rows,
and it answers "why does this ticket wait?" from the current state of the other
tickets and the lease table (:meth:`Board.why`), so the answer is never stale.
"""

from __future__ import annotations

import bisect
import itertools
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from operator import itemgetter

from orchestrator.shared.lockspec import locks_overlap
from orchestrator.shared.models import (
    ACTIVE_STATES,
    FINAL_STATES,
    AgentState,
    AgentView,
    LeaseView,
    TicketState,
    TicketView,
)
from orchestrator.shared.protocol import Event, EventKind, Hello, Snapshot

#: Lines of agent output kept per ticket (and per agent) for the detail pane.
OUTPUT_LINES = 500
#: Marks the start of an attempt in an output buffer: ``ATTEMPT_MARK + "2"``.
ATTEMPT_MARK = "\x00attempt "
#: Event-log entries kept (the log widget re-reads them when its filter changes).
LOG_BACKLOG = 1000

#: Sort groups of the tickets panel: what needs a person or holds a worker
#: first, then the queue in the daemon's order, then tickets parked by a person.
_GROUP_ACTIVE = 0
_GROUP_QUEUED = 1
_GROUP_PARKED = 2
_GROUP_FINAL = 3


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One line of the event log: Unix time (s), dotted kind, human message, ticket id."""

    ts: float
    kind: str
    message: str
    ticket: str | None = None


@dataclass(slots=True)
class Changes:
    """What changed since the app last looked (see :meth:`Board.take_changes`).

    Attributes:
        reloaded: a snapshot replaced everything; rebuild, ignore the sets.
        tickets: ids of tickets added or whose view changed.
        agents: names of agents added or whose view changed.
        order: a ticket was added or its panel sort key changed.
        queue: the queued set or its order changed (queue positions moved).
        leases: the lease table changed.
        log: new event-log entries, oldest first.
        touched: ticket ids and :func:`agent_key` keys whose view or output changed.
    """

    reloaded: bool = False
    tickets: set[str] = field(default_factory=set)
    agents: set[str] = field(default_factory=set)
    order: bool = False
    queue: bool = False
    leases: bool = False
    log: list[LogEntry] = field(default_factory=list)
    touched: set[str] = field(default_factory=set)

    @property
    def empty(self) -> bool:
        return not (
            self.reloaded
            or self.tickets
            or self.agents
            or self.order
            or self.queue
            or self.leases
            or self.log
            or self.touched
        )


#: The states between an agent's push and main, in the order the merge queue view shows.
MERGE_STATES = (
    TicketState.MERGING,
    TicketState.AWAITING_APPROVAL,
    TicketState.REVIEWING,
    TicketState.CI_RUNNING,
)


def ticket_group(state: TicketState) -> int:
    if state in ACTIVE_STATES:
        return _GROUP_ACTIVE
    if state == TicketState.QUEUED:
        return _GROUP_QUEUED
    if state in FINAL_STATES:
        return _GROUP_FINAL
    return _GROUP_PARKED


def queue_key(ticket: TicketView) -> tuple[int, float, float, str]:
    """Sort key of the tickets panel; queued tickets sort by ``rank`` then ``queued_at``."""
    return (ticket_group(ticket.state), ticket.rank, ticket.queued_at, ticket.id)


def agent_key(name: str) -> str:
    """Output-buffer key of an agent's own output (tickets use their id)."""
    return f"@{name}"


def ordinal(n: int) -> str:
    """``1st``, ``2nd``, ``3rd``, ``11th``, ``22nd``."""
    if 10 <= n % 100 <= 20:
        return f"{n}th"
    return f"{n}{({1: 'st', 2: 'nd', 3: 'rd'}).get(n % 10, 'th')}"


@dataclass
class Board:
    """The client-side state: tickets, agents, leases, output tails and the event log."""

    hello: Hello | None = None
    connected: bool = False
    approval: str = "manual"
    last_event_id: int = 0
    tickets: dict[str, TicketView] = field(default_factory=dict)
    agents: dict[str, AgentView] = field(default_factory=dict)
    leases: list[LeaseView] = field(default_factory=list)
    output: dict[str, deque[str]] = field(default_factory=dict)
    log: deque[LogEntry] = field(default_factory=lambda: deque(maxlen=LOG_BACKLOG))
    changes: Changes = field(default_factory=lambda: Changes(reloaded=True))
    #: Every ticket as ``(queue_key, id)``, kept sorted: the panel order without a sort.
    _order: list[tuple[tuple[int, float, float, str], str]] = field(default_factory=list)
    _output_attempt: dict[str, int] = field(default_factory=dict)

    def load(self, snapshot: Snapshot) -> None:
        """Replace everything with ``snapshot`` (output tails are kept: snapshots carry none)."""
        self.approval = snapshot.approval
        self.last_event_id = snapshot.last_event_id
        self.tickets = {t.id: t for t in snapshot.tickets}
        self._order = sorted((queue_key(t), t.id) for t in snapshot.tickets)
        self.agents = {a.name: a for a in sorted(snapshot.agents, key=_agent_sort_key)}
        self.leases = list(snapshot.leases)
        log = self.changes.log
        self.changes = Changes(reloaded=True, log=log)

    def apply(self, event: Event) -> None:
        """Apply one event: replace the views it carries, keep output, log a line."""
        self.last_event_id = max(self.last_event_id, event.id)
        changes = self.changes
        if event.ticket_view is not None:
            view = event.ticket_view
            old = self.tickets.get(view.id)
            if old != view:
                self.tickets[view.id] = view
                changes.tickets.add(view.id)
                changes.touched.add(view.id)
                if old is None or queue_key(old) != queue_key(view):
                    changes.order = True
                    if old is not None:
                        del self._order[bisect.bisect_left(self._order, (queue_key(old), old.id))]
                    bisect.insort(self._order, (queue_key(view), view.id))
                if (
                    old is None
                    or (old.state == TicketState.QUEUED) != (view.state == TicketState.QUEUED)
                    or (view.state == TicketState.QUEUED and queue_key(old) != queue_key(view))
                ):
                    changes.queue = True
        if event.agent_view is not None:
            view_a = event.agent_view
            if self.agents.get(view_a.name) != view_a:
                is_new = view_a.name not in self.agents
                self.agents[view_a.name] = view_a
                if is_new:
                    ordered = sorted(self.agents.values(), key=_agent_sort_key)
                    self.agents = {a.name: a for a in ordered}
                    changes.reloaded = True  # rare: a worker was added
                changes.agents.add(view_a.name)
                changes.touched.add(agent_key(view_a.name))
        if event.leases is not None:  # that ticket's leases after the change
            self.leases = [lease for lease in self.leases if lease.ticket != event.ticket]
            self.leases += event.leases
            changes.leases = True
        if event.kind == EventKind.AGENT_OUTPUT:
            self._add_output(event)
            return
        entry = LogEntry(event.ts, event.kind, _event_message(event), event.ticket)
        self.log.append(entry)
        changes.log.append(entry)

    def note(self, ts: float, kind: str, message: str) -> None:
        """Log a line that did not come from the daemon (connection changes)."""
        entry = LogEntry(ts, kind, message)
        self.log.append(entry)
        self.changes.log.append(entry)

    def take_changes(self) -> Changes:
        """What changed since the last call; the board starts collecting anew."""
        changes, self.changes = self.changes, Changes()
        return changes

    def _add_output(self, event: Event) -> None:
        if not event.text:
            return
        lines = event.text.splitlines()
        ticket = event.ticket
        if ticket is None and event.agent and event.agent in self.agents:
            ticket = self.agents[event.agent].ticket
        view = self.tickets.get(ticket) if ticket else None
        keys = [k for k in (ticket, agent_key(event.agent) if event.agent else None) if k]
        for key in keys:
            buffer = self.output.get(key)
            if buffer is None:
                buffer = self.output[key] = deque(maxlen=OUTPUT_LINES)
            if view is not None and view.attempt and key == ticket:
                if self._output_attempt.get(key) != view.attempt:
                    self._output_attempt[key] = view.attempt
                    buffer.append(f"{ATTEMPT_MARK}{view.attempt}")
            buffer.extend(lines)
            self.changes.touched.add(key)

    # --- queries ----------------------------------------------------------------

    def queue(self, *, finished: bool) -> list[TicketView]:
        """Tickets in panel order; final ones (merged, cancelled, rejected) only if ``finished``."""
        return list(map(self.tickets.__getitem__, self.queue_ids(finished=finished)))

    def queue_ids(self, *, finished: bool) -> list[str]:
        """The ids of :meth:`queue`, without building a list of views (10,000 tickets:
        a slice of the ordered list; final tickets sort last)."""
        order = self._order
        end = len(order) if finished else bisect.bisect_left(order, ((_GROUP_FINAL,),))
        return list(map(itemgetter(1), itertools.islice(order, end)))

    def merge_queue(self) -> list[TicketView]:
        """Tickets on their way to main: merging, then awaiting approval, then in CI,
        each oldest first (by the time they entered that state)."""
        waiting = [t for t in self.tickets.values() if t.state in MERGE_STATES]
        waiting.sort(key=lambda t: (MERGE_STATES.index(t.state), t.state_since, t.id))
        return waiting

    def finished_count(self) -> int:
        return sum(1 for t in self.tickets.values() if t.state in FINAL_STATES)

    def queue_position(self, ticket_id: str) -> int:
        """1-based place of a queued ticket in the daemon's order; 0 when not queued.

        Two binary searches in the panel order, where queued tickets are one run
        sorted by :func:`queue_key` (O(log n), so the Why cells on screen can be
        computed after every change).
        """
        ticket = self.tickets.get(ticket_id)
        if ticket is None or ticket.state != TicketState.QUEUED:
            return 0
        order = self._order
        first = bisect.bisect_left(order, ((_GROUP_QUEUED,),))
        return bisect.bisect_left(order, (queue_key(ticket), ticket_id)) - first + 1

    def ticket_of_agent(self, name: str) -> TicketView | None:
        agent = self.agents.get(name)
        if agent is None or agent.ticket is None:
            return None
        return self.tickets.get(agent.ticket)

    def agent_of_ticket(self, ticket_id: str) -> AgentView | None:
        """The agent working on ``ticket_id`` now, or None.

        Only an agent whose own view names this ticket counts: a ticket's ``agent``
        field keeps its last agent after the attempt ended, and that agent may
        have moved on to another ticket.
        """
        ticket = self.tickets.get(ticket_id)
        if ticket is not None and ticket.agent:
            agent = self.agents.get(ticket.agent)
            if agent is not None and agent.ticket == ticket_id:
                return agent
        for agent in self.agents.values():
            if agent.ticket == ticket_id:
                return agent
        return None

    def agent_label(self, ticket: TicketView) -> str:
        """The Agent cell of a ticket: its agent only while that agent works on it."""
        agent = self.agent_of_ticket(ticket.id)
        return agent.name if agent is not None else "-"

    def agent_since(self, agent: AgentView) -> float:
        """When the agent entered the state shown (Unix s).

        The agent's own ``state_since`` is set when an attempt starts; its shown
        state follows its ticket (running, ci_running, awaiting_approval, merging),
        so the later of the two is when the shown state began.
        """
        ticket = self.ticket_of_agent(agent.name)
        if ticket is None or agent.state in (AgentState.IDLE, AgentState.STALE):
            return agent.state_since
        return max(agent.state_since, ticket.state_since)

    def lease_in_way(self, ticket: TicketView) -> LeaseView | None:
        """A lease or reservation of another ticket that overlaps one of ``ticket``'s locks."""
        for lease in self.leases:
            if lease.ticket == ticket.id:
                continue
            if any(locks_overlap(lock, lease.path) for lock in ticket.locks or (".",)):
                return lease
        return None

    def why(self, ticket: TicketView) -> str:
        """Why ``ticket`` is where it is, from the current board (never a stale copy).

        For a queued ticket, the first of: a dependency that has not merged (with
        its current state), a lease of another ticket on one of its locks (with
        that ticket's current state), or its place in line for a free agent.
        Other states show the daemon's ``reason``.
        """
        if ticket.state != TicketState.QUEUED:
            return ticket.reason
        for dep in ticket.depends_on:
            other = self.tickets.get(dep)
            if other is None:
                return f"waits for unknown ticket {dep}"
            if other.state != TicketState.MERGED:
                return f"waits for {dep} ({other.state})"
        lease = self.lease_in_way(ticket)
        if lease is not None:
            holder = self.tickets.get(lease.ticket)
            state = f" ({holder.state})" if holder is not None else ""
            verb = "reserved for" if lease.reserved else "held by"
            return f"lock {lease.path} {verb} {lease.ticket}{state}"
        position = self.queue_position(ticket.id)
        busy = sum(1 for a in self.agents.values() if a.ticket)
        place = "next" if position == 1 else f"{ordinal(position)} in line"
        return f"{place} for a free agent ({busy}/{len(self.agents)} busy)"

    def matching(self, tickets: Iterable[TicketView], text: str) -> list[TicketView]:
        """Tickets whose id, title, state, agent or why contain ``text`` (case-insensitive)."""
        needle = text.casefold()
        return [
            t
            for t in tickets
            if needle in t.id.casefold()
            or needle in t.title.casefold()
            or needle in str(t.state)
            or needle in self.why(t).casefold()
        ]


def _agent_sort_key(agent: AgentView) -> tuple[int, str]:
    """agent-2 before agent-10."""
    head, _, tail = agent.name.rpartition("-")
    return (int(tail), head) if tail.isdigit() else (1 << 30, agent.name)


def _event_message(event: Event) -> str:
    if event.message:
        return event.message
    return " ".join(part for part in (event.ticket, event.agent) if part)
