"""What the TUI knows about the daemon: the last snapshot with every event applied.

The daemon sends a :class:`~shared.protocol.Snapshot` when we subscribe (and again when
it dropped events for a slow client), then :class:`~shared.protocol.Event` lines
(docs/protocol.md). Views in an event are complete, so applying an event means
replacing what we hold; we never interpret ``kind`` beyond ``agent.output``.

No textual import here: the board is plain data, repainted by the app at a
bounded rate from the ``dirty`` flags set below.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from orchestrator.shared.models import (
    ACTIVE_STATES,
    FINAL_STATES,
    AgentView,
    LeaseView,
    TicketState,
    TicketView,
)
from orchestrator.shared.protocol import Event, EventKind, Hello, Snapshot

#: Lines of agent output kept per ticket (and per agent) for the detail pane.
OUTPUT_LINES = 500
#: Event-log entries kept until the log widget takes them (it keeps its own 1000).
LOG_BACKLOG = 1000

#: Sort groups of the tickets panel: what needs a person or holds a worker
#: first, then the queue in the daemon's order, then tickets parked by a person.
_GROUP_ACTIVE = 0
_GROUP_QUEUED = 1
_GROUP_PARKED = 2
_GROUP_FINAL = 3


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One line of the event log: Unix time (s), dotted kind, human message."""

    ts: float
    kind: str
    message: str


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


@dataclass
class Board:
    """The client-side state: tickets, agents, leases, output tails and pending log lines.

    Attributes:
        dirty_tickets / dirty_agents: a table needs repainting.
        touched: ticket ids and :func:`agent_key` keys whose view or output changed
            since the app last looked (the detail pane repaints when its selection is in it).
        pending_log: entries the event-log widget has not shown yet, oldest first.
    """

    hello: Hello | None = None
    connected: bool = False
    approval: str = "manual"
    last_event_id: int = 0
    tickets: dict[str, TicketView] = field(default_factory=dict)
    agents: dict[str, AgentView] = field(default_factory=dict)
    leases: list[LeaseView] = field(default_factory=list)
    output: dict[str, deque[str]] = field(default_factory=dict)
    pending_log: deque[LogEntry] = field(default_factory=lambda: deque(maxlen=LOG_BACKLOG))
    dirty_tickets: bool = True
    dirty_agents: bool = True
    touched: set[str] = field(default_factory=set)

    def load(self, snapshot: Snapshot) -> None:
        """Replace everything with ``snapshot`` (output tails are kept: snapshots carry none)."""
        self.approval = snapshot.approval
        self.last_event_id = snapshot.last_event_id
        self.tickets = {t.id: t for t in snapshot.tickets}
        self.agents = {a.name: a for a in sorted(snapshot.agents, key=_agent_sort_key)}
        self.leases = list(snapshot.leases)
        self.dirty_tickets = self.dirty_agents = True
        self.touched.update(self.tickets)
        self.touched.update(agent_key(name) for name in self.agents)

    def apply(self, event: Event) -> None:
        """Apply one event: replace the views it carries, keep output, queue a log line."""
        self.last_event_id = max(self.last_event_id, event.id)
        if event.ticket_view is not None:
            view = event.ticket_view
            if self.tickets.get(view.id) != view:
                self.tickets[view.id] = view
                self.dirty_tickets = True
                self.touched.add(view.id)
        if event.agent_view is not None:
            view_a = event.agent_view
            if self.agents.get(view_a.name) != view_a:
                is_new = view_a.name not in self.agents
                self.agents[view_a.name] = view_a
                if is_new:
                    ordered = sorted(self.agents.values(), key=_agent_sort_key)
                    self.agents = {a.name: a for a in ordered}
                self.dirty_agents = True
                self.touched.add(agent_key(view_a.name))
        if event.leases is not None:  # that ticket's leases after the change
            self.leases = [lease for lease in self.leases if lease.ticket != event.ticket]
            self.leases += event.leases
        if event.kind == EventKind.AGENT_OUTPUT:
            self._add_output(event)
            return
        self.pending_log.append(LogEntry(event.ts, event.kind, _event_message(event)))

    def note(self, ts: float, kind: str, message: str) -> None:
        """Queue a log line that did not come from the daemon (connection changes)."""
        self.pending_log.append(LogEntry(ts, kind, message))

    def _add_output(self, event: Event) -> None:
        if not event.text:
            return
        lines = event.text.splitlines()
        ticket = event.ticket
        if ticket is None and event.agent and event.agent in self.agents:
            ticket = self.agents[event.agent].ticket
        keys = [k for k in (ticket, agent_key(event.agent) if event.agent else None) if k]
        for key in keys:
            buffer = self.output.get(key)
            if buffer is None:
                buffer = self.output[key] = deque(maxlen=OUTPUT_LINES)
            buffer.extend(lines)
            self.touched.add(key)

    def queue(self, *, finished: bool) -> list[TicketView]:
        """Tickets in panel order; final ones (merged, cancelled, rejected) only if ``finished``."""
        tickets = (
            self.tickets.values()
            if finished
            else (t for t in self.tickets.values() if t.state not in FINAL_STATES)
        )
        return sorted(tickets, key=queue_key)

    def finished_count(self) -> int:
        return sum(1 for t in self.tickets.values() if t.state in FINAL_STATES)

    def ticket_of_agent(self, name: str) -> TicketView | None:
        agent = self.agents.get(name)
        if agent is None or agent.ticket is None:
            return None
        return self.tickets.get(agent.ticket)

    def agent_of_ticket(self, ticket_id: str) -> AgentView | None:
        ticket = self.tickets.get(ticket_id)
        if ticket is not None and ticket.agent and ticket.agent in self.agents:
            return self.agents[ticket.agent]
        for agent in self.agents.values():
            if agent.ticket == ticket_id:
                return agent
        return None

    def take_touched(self) -> set[str]:
        touched, self.touched = self.touched, set()
        return touched


def _agent_sort_key(agent: AgentView) -> tuple[int, str]:
    """agent-2 before agent-10."""
    head, _, tail = agent.name.rpartition("-")
    return (int(tail), head) if tail.isdigit() else (1 << 30, agent.name)


def _event_message(event: Event) -> str:
    if event.message:
        return event.message
    return " ".join(part for part in (event.ticket, event.agent) if part)
