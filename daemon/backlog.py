"""Backlog intake: watchdog events, a scan at start and a periodic rescan.

inotify can drop events (queue overflow) and editors save by rename, so the
watcher (close-write and moved-into events, via watchdog) is only the fast
path; a rescan every ``rescan_interval_s`` compares each file's (mtime, size)
signature and catches anything missed. Files are read with
shared.saferead.read_file (regular files of at most 1 MiB, symlinks only into
the home), in a worker thread. A file that does not parse and was
written less than :data:`SETTLE_S` ago is read again later instead of being
rejected: it may be half-written.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import anyio
from watchdog.events import (
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from orchestrator.daemon.core import Input, TicketFileGone, TicketRead
from orchestrator.shared.errors import TicketError
from orchestrator.shared.models import parse_ticket
from orchestrator.shared.saferead import MAX_TICKET_BYTES, FileRefused, read_file

log = logging.getLogger(__name__)

SETTLE_S = 1.0
SUFFIXES = (".yaml", ".yml")


def is_ticket_name(name: str) -> bool:
    return name.endswith(SUFFIXES) and not name.startswith(".")


class _Handler(FileSystemEventHandler):
    def __init__(self, notify: Callable[[str], None]) -> None:
        self.notify = notify

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, FileMovedEvent):
            self.notify(os.fsdecode(event.src_path))
            self.notify(os.fsdecode(event.dest_path))
        elif isinstance(event, FileClosedEvent | FileDeletedEvent | FileCreatedEvent):
            # A file moved in from another directory arrives as a created event.
            self.notify(os.fsdecode(event.src_path))


class Watcher:
    """A watchdog observer on one directory that wakes an async consumer.

    ``changed`` collects paths reported since the consumer last looked;
    ``wake`` is set whenever there is something.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.changed: set[str] = set()
        self.wake = asyncio.Event()
        self._incoming: collections.deque[str] = collections.deque()
        self._drain_scheduled = False
        self._observer = Observer()
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._observer.schedule(_Handler(self._from_thread), str(self.directory), recursive=False)
        self._observer.daemon = True
        self._observer.start()

    def stop(self) -> None:
        self._observer.stop()

    def _from_thread(self, path: str) -> None:
        # One loop wake-up per burst of events, not one per file (deque.append is
        # thread-safe; a lost race only schedules one extra drain).
        self._incoming.append(path)
        if not self._drain_scheduled:
            self._drain_scheduled = True
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        self._drain_scheduled = False
        while self._incoming:
            self.changed.add(self._incoming.popleft())
        self.wake.set()

    def take(self) -> set[str]:
        changed, self.changed = self.changed, set()
        self.wake.clear()
        return changed

    async def wait(self, timeout_s: float) -> None:
        with anyio.move_on_after(timeout_s):
            await self.wake.wait()


class Backlog:
    """Feeds :class:`TicketRead` and :class:`TicketFileGone` inputs for one backlog dir."""

    def __init__(
        self, directory: Path, submit: Callable[[list[Input]], None], rescan_interval_s: float
    ) -> None:
        self.directory = directory
        self.submit = submit
        self.rescan_interval_s = rescan_interval_s
        self.known: dict[str, tuple[int, int]] = {}
        self.retry: set[str] = set()
        self.watcher = Watcher(directory)
        self.home_root = directory.parent
        """Symlinks in the backlog are followed only to files inside the project home."""

    def forget(self, path: str) -> None:
        """The daemon moved this file away itself."""
        self.known.pop(path, None)

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        self.watcher.start()
        try:
            await self._read(self._listing(), full=True)
            task_status.started()
            next_scan = time.monotonic() + self.rescan_interval_s
            while True:
                timeout = 0.3 if self.retry else max(0.0, next_scan - time.monotonic())
                await self.watcher.wait(timeout)
                paths = {p for p in self.watcher.take() if is_ticket_name(os.path.basename(p))}
                paths |= self.retry
                self.retry = set()
                if time.monotonic() >= next_scan:
                    next_scan = time.monotonic() + self.rescan_interval_s
                    await self._read(self._listing() | paths, full=True)
                elif paths:
                    await self._read(paths, full=False)
        finally:
            self.watcher.stop()

    def _listing(self) -> set[str]:
        try:
            with os.scandir(self.directory) as entries:
                # Anything but a directory: a FIFO or a device under a ticket name is
                # rejected with a reason rather than silently ignored.
                return {
                    e.path
                    for e in entries
                    if is_ticket_name(e.name) and not e.is_dir(follow_symlinks=False)
                }
        except OSError as exc:
            log.error("cannot list backlog %s: %s", self.directory, exc.strerror)
            return set()

    async def _read(self, paths: set[str], full: bool) -> None:
        """Read changed files (in a thread) and submit the results as one batch."""
        inputs = await anyio.to_thread.run_sync(self._read_sync, sorted(paths), full)
        if inputs:
            self.submit(inputs)

    def _read_sync(self, paths: list[str], full: bool) -> list[Input]:
        now = time.time()
        inputs: list[Input] = []
        present = set()
        for path in paths:
            try:
                st = os.stat(path)
            except FileNotFoundError:
                if self.known.pop(path, None) is not None:
                    inputs.append(TicketFileGone(path=path, now=now))
                continue
            except OSError:
                continue
            present.add(path)
            sig = (st.st_mtime_ns, st.st_size)
            if self.known.get(path) == sig:
                continue
            try:
                data = read_file(path, MAX_TICKET_BYTES, inside=self.home_root)
                ticket = parse_ticket(data, Path(path))
            except FileRefused as exc:
                self.known[path] = sig
                inputs.append(TicketRead(path=path, now=now, error=f"{path}: {exc}"))
                continue
            except TicketError as exc:
                if now - st.st_mtime < SETTLE_S:
                    self.retry.add(path)  # maybe half-written: look again shortly
                    continue
                self.known[path] = sig
                inputs.append(TicketRead(path=path, now=now, error=str(exc)))
                continue
            except OSError as exc:
                log.warning("cannot read %s: %s", path, exc.strerror)
                continue
            self.known[path] = sig
            inputs.append(TicketRead(path=path, now=now, ticket=ticket))
        if full:  # a known file missing from a full listing is gone
            for path in [p for p in self.known if p not in present]:
                if not os.path.exists(path):
                    del self.known[path]
                    inputs.append(TicketFileGone(path=path, now=now))
        return inputs
