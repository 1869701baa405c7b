"""CI status intake: repo.git/ci-status/<sha>.json files (shared/cistatus.py, docs/ci.md).

hooks/post-receive writes each file atomically, then sends ``ci_notify`` on the
socket. The daemon also watches the directory and rescans it, and reads every
file at start, so a result that arrived while it was down is applied.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import msgspec

from orchestrator.daemon.backlog import Watcher
from orchestrator.daemon.core import CIResult, Input
from orchestrator.shared.cistatus import CIStatus, decode_status
from orchestrator.shared.saferead import MAX_CI_STATUS_BYTES, FileRefused, read_file

#: A commit id as git prints it (SHA-1, or SHA-256 in a sha256 repository).
SHA_RE = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def is_sha(text: str) -> bool:
    """Whether ``text`` is a full lowercase hex commit id (and so a safe file stem)."""
    return SHA_RE.fullmatch(text) is not None


def read_status(path: Path) -> CIStatus:
    """Decode one status file (read with shared.saferead: a regular file of at most 1 MiB,
    inside repo.git).

    Raises:
        OSError: unreadable; FileRefused: a FIFO, device, too big or a symlink out of
        repo.git; msgspec.DecodeError: not valid JSON or wrong schema.
    """
    return decode_status(read_file(path, MAX_CI_STATUS_BYTES, inside=path.parent.parent))


class CIStatusDir:
    """Turns status files into :class:`CIResult` inputs (each file once per mtime)."""

    def __init__(
        self,
        directory: Path,
        submit: Callable[[list[Input]], None],
        warn: Callable[[str], None],
        rescan_interval_s: float,
    ) -> None:
        self.directory = directory
        self.submit = submit
        self.warn = warn
        self.rescan_interval_s = rescan_interval_s
        self.seen: dict[str, int] = {}

    async def read_now(self, sha: str) -> bool:
        """Read ``<sha>.json`` now (after a ci_notify or a push); True if it exists.

        The file is read in a worker thread, never on the event loop. ``sha`` must
        be a full hex commit id (:func:`is_sha`), so the read stays inside
        ci-status/; anything else is False.
        """
        if not is_sha(sha):
            return False
        path = self.directory / f"{sha}.json"
        return await self._apply(path, force=True)

    async def _apply(self, path: Path, force: bool = False) -> bool:
        if not is_sha(path.stem) or path.parent != self.directory:
            return False
        loaded = await anyio.to_thread.run_sync(_load, path)
        if loaded is None:
            return False
        mtime, status = loaded
        if not force and self.seen.get(path.name) == mtime:
            return True
        self.seen[path.name] = mtime
        self._take(path, status)
        return True

    def _take(self, path: Path, status: CIStatus | str) -> None:
        if isinstance(status, str):
            self.warn(f"ci-status/{path.name}: unreadable CI status ({status}); ignored")
            return
        if status.sha != path.stem:
            self.warn(f"ci-status/{path.name}: its sha field is {status.sha!r}; ignored")
            return
        self.submit(
            [
                CIResult(
                    sha=status.sha,
                    status=status.status,
                    now=time.time(),
                    exit_code=status.exit_code,
                    duration_s=status.duration_s,
                    log_tail=status.log_tail,
                )
            ]
        )

    async def scan(self) -> None:
        """Apply every status file that is new or changed since it was last read."""
        mtimes = await anyio.to_thread.run_sync(_mtimes, self.directory)
        changed = sorted(n for n, m in mtimes.items() if self.seen.get(n) != m)
        for name in changed:
            await self._apply(self.directory / name)

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        watcher = Watcher(self.directory)
        watcher.start()
        try:
            await self.scan()
            task_status.started()
            while True:
                await watcher.wait(self.rescan_interval_s)
                changed = [p for p in watcher.take() if p.endswith(".json")]
                if changed:
                    for p in changed:
                        await self._apply(Path(p))
                else:
                    await self.scan()
        finally:
            watcher.stop()


def _load(path: Path) -> tuple[int, CIStatus | str] | None:
    """(mtime_ns, the document or why it is unreadable), or None when absent. Blocking."""
    try:
        mtime = path.stat().st_mtime_ns
    except FileNotFoundError:
        return None
    except OSError as exc:
        return 0, str(exc)
    try:
        return mtime, read_status(path)
    except FileNotFoundError:
        return None
    except (OSError, FileRefused, msgspec.DecodeError) as exc:
        return mtime, str(exc)


def _mtimes(directory: Path) -> dict[str, int]:
    """``{name: mtime_ns}`` of the ``*.json`` files in ``directory`` ({} if absent). Blocking."""
    found = {}
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.endswith(".json"):
                    try:
                        found[entry.name] = entry.stat().st_mtime_ns
                    except FileNotFoundError:
                        continue
    except FileNotFoundError:
        pass
    return found
