"""Durable state in SQLite (stdlib sqlite3, WAL journal).

Tables: ``tickets`` (one JSON record per ticket, see daemon.core.TicketRecord)
and ``events`` (the append-only event log). One transaction per batch of
inputs: the daemon commits before it announces anything on the socket.

Durability: ``journal_mode=WAL`` with ``synchronous=NORMAL`` (see
https://www.sqlite.org/pragma.html#pragma_synchronous). A killed daemon
(``kill -9``, OOM) loses nothing that was committed; a power loss or kernel
crash may roll back the transactions of the last moments (since the last WAL
sync), never corrupting the database. docs/architecture.md records this.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

import msgspec

from orchestrator.daemon.core import TicketRecord
from orchestrator.shared.protocol import Event

SCHEMA = """
CREATE TABLE IF NOT EXISTS tickets (id TEXT PRIMARY KEY, seq INTEGER NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY, ts REAL NOT NULL, kind TEXT NOT NULL, ticket TEXT, data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
CREATE INDEX IF NOT EXISTS events_ticket ON events (ticket, id);
"""

#: How long one statement waits for another process's lock before failing (s).
BUSY_TIMEOUT_S = 0.5

_record_decoder = msgspec.json.Decoder(TicketRecord)
_event_decoder = msgspec.json.Decoder(Event)
_encoder = msgspec.json.Encoder()


class Store:
    """The state database of one project home (``state.db``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # A short busy timeout: a lock held by another process must not stall the event
        # loop; the daemon retries a failed commit with backoff (daemon.service).
        self.db = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_S
        )
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        row = self.db.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()
        self.last_event_id: int = row[0]

    def close(self) -> None:
        self.db.close()

    def load(self) -> list[TicketRecord]:
        """Every persisted ticket record, in arrival order."""
        rows = self.db.execute("SELECT data FROM tickets ORDER BY seq").fetchall()
        return [_record_decoder.decode(r[0]) for r in rows]

    def commit(self, records: Iterable[TicketRecord], events: list[Event]) -> list[Event]:
        """Persist records and events in one transaction; return the events with ids.

        Raises:
            sqlite3.Error: the database is busy (locked by another process beyond
                :data:`BUSY_TIMEOUT_S`), the disk is full...; nothing was written
                and ``last_event_id`` is unchanged, so the same call can be retried.
        """
        numbered: list[Event] = []
        first_id = self.last_event_id
        try:
            self._write(records, events, numbered)
        except BaseException:
            self.last_event_id = first_id
            raise
        return numbered

    def _write(
        self, records: Iterable[TicketRecord], events: list[Event], numbered: list[Event]
    ) -> None:
        with self._transaction():
            self.db.executemany(
                "INSERT OR REPLACE INTO tickets (id, seq, data) VALUES (?, ?, ?)",
                [(r.id, r.seq, _encoder.encode(r)) for r in records],
            )
            rows = []
            for event in events:
                self.last_event_id += 1
                event = msgspec.structs.replace(event, id=self.last_event_id)
                numbered.append(event)
                rows.append((event.id, event.ts, event.kind, event.ticket, _encoder.encode(event)))
            self.db.executemany(
                "INSERT INTO events (id, ts, kind, ticket, data) VALUES (?, ?, ?, ?, ?)", rows
            )

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise

    def events(self, since_id: int = 0, since_ts: float = 0.0) -> Iterator[Event]:
        """Persisted events with id > since_id and ts >= since_ts, oldest first."""
        cursor = self.db.execute(
            "SELECT data FROM events WHERE id > ? AND ts >= ? ORDER BY id", (since_id, since_ts)
        )
        for (data,) in cursor:
            yield _event_decoder.decode(data)
