"""CI status intake: repo.git/ci-status/<sha>.json files (shared/cistatus.py, docs/ci.md).

hooks/post-receive writes each file atomically, then sends ``ci_notify`` on the
socket. The daemon also watches the directory and rescans it, and reads every
file at start, so a result that arrived while it was down is applied.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import msgspec

from orchestrator.daemon.backlog import Watcher
from orchestrator.daemon.core import CIResult, Input
from orchestrator.shared.cistatus import read_status


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

    def apply(self, sha: str) -> bool:
        """Read ``<sha>.json`` now (after a ci_notify or a push); True if it exists."""
        path = self.directory / f"{sha}.json"
        return self._apply(path, force=True)

    def _apply(self, path: Path, force: bool = False) -> bool:
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            return False
        if not force and self.seen.get(path.name) == mtime:
            return True
        self.seen[path.name] = mtime
        try:
            status = read_status(path)
        except (OSError, msgspec.DecodeError) as exc:
            self.warn(f"ci-status/{path.name}: unreadable CI status ({exc}); ignored")
            return True
        if status.sha != path.stem:
            self.warn(f"ci-status/{path.name}: its sha field is {status.sha!r}; ignored")
            return True
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
        return True

    def scan(self) -> None:
        try:
            names = [n for n in os.listdir(self.directory) if n.endswith(".json")]
        except FileNotFoundError:
            return
        for name in sorted(names):
            self._apply(self.directory / name)

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        watcher = Watcher(self.directory)
        watcher.start()
        try:
            self.scan()
            task_status.started()
            while True:
                await watcher.wait(self.rescan_interval_s)
                changed = [p for p in watcher.take() if p.endswith(".json")]
                if changed:
                    for p in changed:
                        self._apply(Path(p))
                else:
                    self.scan()
        finally:
            watcher.stop()
