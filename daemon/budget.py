"""Budgets: stop a running agent whose ticket has cost more than ``budget.max_cost_usd``.

:class:`BudgetWatch` follows the committed events (:meth:`BudgetWatch.on_events`) to
know which tickets have a running agent and a budget (the ticket's own
``budget.max_cost_usd``, else the config's). Its task re-reads the running attempt's
output when there is news of that agent (output comes with ``agent.heartbeat``
events) and at least every ``heartbeat_interval_s``, feeding only the bytes added
since the last read into a :class:`~orchestrator.shared.usage.UsageParser`; the
earlier attempts' cost is parsed once. When the ticket's total cost passes its
limit, it submits :class:`~orchestrator.daemon.core.BudgetExceeded`: the core stops
the agent (its work is committed, as for any stop) and the ticket ends ``stopped``
with the reason ``budget exceeded: $X spent, budget.max_cost_usd is $Y ...``.
docs/usage.md#budgets.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import anyio

from orchestrator.daemon.core import BudgetExceeded, Input
from orchestrator.shared.config import Home
from orchestrator.shared.models import TicketState
from orchestrator.shared.protocol import Event
from orchestrator.shared.usage import MAX_LINE_BYTES, UsageParser, parse_files, price_table

log = logging.getLogger(__name__)

#: Bytes read from one file per check at most (the rest waits for the next check).
READ_CHUNK_BYTES = 16 << 20


class _Tail:
    """Incremental usage of a set of growing files (an attempt's log and usage file)."""

    def __init__(self, paths: list[Path], parser: UsageParser) -> None:
        self.paths = paths
        self.parser = parser
        self.offsets = [0] * len(paths)
        self.partial = [b""] * len(paths)
        self.skipping = [False] * len(paths)

    def update(self) -> float:
        """Read what was appended since the last call; return the cost so far (USD)."""
        for i, path in enumerate(self.paths):
            try:
                with path.open("rb") as f:
                    f.seek(self.offsets[i])
                    data = f.read(READ_CHUNK_BYTES)
            except OSError:
                continue
            self.offsets[i] += len(data)
            lines = (self.partial[i] + data).split(b"\n")
            self.partial[i] = lines.pop()
            for line in lines:
                if self.skipping[i]:  # the end of an over-long line
                    self.skipping[i] = False
                    continue
                self.parser.feed(line)
            if len(self.partial[i]) > MAX_LINE_BYTES:
                self.partial[i] = b""
                self.skipping[i] = True
        return self.parser.result().cost_usd


class BudgetWatch:
    """Submits :class:`BudgetExceeded` for running tickets over their budget.

    Args:
        home: the project home (runs/, prices, heartbeat interval).
        limit_of: the budget (USD) of a ticket id, or None; called on the loop.
        submit: hands inputs to the core.
    """

    def __init__(
        self,
        home: Home,
        limit_of: Callable[[str], float | None],
        submit: Callable[[list[Input]], None],
    ) -> None:
        self.home = home
        self.limit_of = limit_of
        self.submit = submit
        self.running: dict[str, tuple[int, float]] = {}
        """ticket -> (attempt, limit) of running tickets that have a budget."""
        self.tails: dict[tuple[str, int], _Tail] = {}
        self.earlier: dict[tuple[str, int], float] = {}
        """Cost of the attempts before this one (parsed once per attempt)."""
        self.reported: set[tuple[str, int]] = set()
        self._news = anyio.Event()
        self.prices = price_table(home.config.usage.prices)

    def on_events(self, events: list[Event]) -> None:
        """Track running tickets with a budget; wake the check on news of their agents."""
        for ev in events:
            view = ev.ticket_view
            if view is not None:
                # an agent that waits for a person's answer (needs_input) still runs
                runs = view.state == TicketState.RUNNING or (
                    view.state == TicketState.NEEDS_INPUT and view.agent is not None
                )
                limit = self.limit_of(view.id) if runs else None
                if limit is not None:
                    self.running[view.id] = (view.attempt, limit)
                    self._news.set()
                else:
                    self.running.pop(view.id, None)
            elif ev.agent_view is not None and ev.agent_view.ticket in self.running:
                self._news.set()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Check on news, and every ``heartbeat_interval_s`` while an agent with a budget
        runs; until cancelled."""
        task_status.started()
        while True:
            with anyio.move_on_after(
                self.home.config.heartbeat_interval_s if self.running else None
            ):
                await self._news.wait()
            self._news = anyio.Event()
            if not self.running:
                continue
            running = dict(self.running)
            over = await anyio.to_thread.run_sync(self.check, running)
            if over:
                self.submit(over)

    def check(self, running: dict[str, tuple[int, float]]) -> list[Input]:
        """The tickets in ``running`` whose cost passed their limit (in a worker thread)."""
        over: list[Input] = []
        for ticket, (attempt, limit) in running.items():
            key = (ticket, attempt)
            if key in self.reported or attempt < 1:
                continue
            if key not in self.earlier:
                self.earlier[key] = sum(
                    parse_files(self._paths(ticket, n), self.prices, self.model).cost_usd
                    for n in range(1, attempt)
                )
            tail = self.tails.get(key)
            if tail is None:
                parser = UsageParser(self.prices, self.model)
                tail = self.tails[key] = _Tail(self._paths(ticket, attempt), parser)
            cost = self.earlier[key] + tail.update()
            if cost > limit:
                self.reported.add(key)
                log.info("%s: budget exceeded: $%.4f > $%.2f", ticket, cost, limit)
                over.append(BudgetExceeded(ticket, attempt, cost, limit, time.time()))
        for key in [k for k in self.tails if k[0] not in running]:
            del self.tails[key]
        return over

    @property
    def model(self) -> str:
        return self.home.config.usage.model

    def _paths(self, ticket: str, attempt: int) -> list[Path]:
        run_dir = self.home.runs / ticket / str(attempt)
        return [run_dir / "agent.log", run_dir / "usage.jsonl"]
