"""Messages the connection worker posts to the app (one per thing read from the socket)."""

from __future__ import annotations

from textual.message import Message

from orchestrator.shared.protocol import Event, Hello, Snapshot


class Connected(Message):
    """A connection is up: the daemon's hello and its first snapshot."""

    def __init__(self, hello: Hello, snapshot: Snapshot) -> None:
        super().__init__()
        self.hello = hello
        self.snapshot = snapshot


class DaemonEvents(Message):
    """Events (and mid-stream snapshots, sent when the daemon dropped events for us), in order.

    Coalescing: the reader keeps appending to ``items`` until the app has taken
    the batch (``taken``), then starts a new one. A burst of thousands of events
    is thus a handful of messages, and keys pressed meanwhile are not queued
    behind one message per event.
    """

    def __init__(self) -> None:
        super().__init__()
        self.items: list[Snapshot | Event] = []
        self.taken = False


class Disconnected(Message):
    """A connection attempt failed or the connection ended; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason

    def can_replace(self, message: Message) -> bool:
        # Retries every 0.5 s while the daemon is down; only the latest reason matters.
        return isinstance(message, Disconnected)
