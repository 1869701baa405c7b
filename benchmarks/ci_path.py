"""5. CI path: ``git push`` of an agent branch returns quickly (CI runs in the
background); a CI status file written -> the daemon's ``ci.result`` event.

Push: from a separate clone of repo.git, a new commit is pushed to
``agent-1/bench-N`` with ``git push``; the figure is the wall time of that
command, hooks/post-receive included (it starts the CI job detached).

Status -> event: real tickets run through the real daemon with an agent that
writes one file and exits 0 (benchmarks/agent.py), so the daemon commits,
pushes the branch and the ticket waits in ``ci_running`` for that sha. The CI
command configured for the project blocks on a lock this benchmark holds, so
the real CI job never finishes first; once the job has started (its log says
so), the benchmark writes ``repo.git/ci-status/<sha>.json`` itself the way
ci.sh does (temp file in the same directory, then rename) and times until a
socket client receives the ticket's ``ci.result`` event. No ``ci_notify`` is
sent: this is the daemon's own watcher path (the hook's notify, which starts a
Python interpreter first, is the backup). The ticket is then stopped, which
frees its worker for the next one. ``ci.notify_roundtrip`` is what the hook's
notify costs: connect, hello, ``ci_notify``, reply (one-shot: no snapshot).
"""

from __future__ import annotations

import fcntl
import json
import os
import queue
import sys
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from benchmarks.harness import (
    BenchmarkError,
    Connection,
    Figure,
    Project,
    git,
    percentile,
    wait_until,
)
from orchestrator.shared import protocol as P
from orchestrator.shared.client import request

TARGET_PUSH_S = 1.0
TARGET_EVENT_MS = 100.0
AGENT = Path(__file__).with_name("agent.py")


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def write_status(directory: Path, sha: str, ref: str) -> float:
    """Write a passing status file atomically, as ci.sh does; return the rename time."""
    now = time.time()
    doc = {
        "sha": sha,
        "ref": ref,
        "status": "pass",
        "exit_code": 0,
        "started_at": _iso(now - 1),
        "finished_at": _iso(now),
        "duration_s": 1.0,
        "log_tail": "benchmark: tests passed\n",
    }
    tmp = directory / f"{sha}.json.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    t0 = time.monotonic()
    os.replace(tmp, directory / f"{sha}.json")
    return t0


def run(quick: bool) -> list[Figure]:
    pushes = 5 if quick else 30
    tickets = 10 if quick else 60
    waiting: queue.Queue[tuple[str, str]] = queue.Queue()
    results: dict[str, float] = {}

    def on_message(t: float, message: P.ServerMessage) -> None:
        if not isinstance(message, P.Event) or message.ticket is None:
            return
        view = message.ticket_view
        if (
            message.kind == "ticket.state"
            and view is not None
            and view.state == "ci_running"
            and view.ci is not None
        ):
            waiting.put((message.ticket, view.ci.sha))
        elif message.kind == "ci.result":
            results.setdefault(message.ticket, t)

    with Project(
        workers=3,
        agent_command=[sys.executable, str(AGENT), "write"],
        ci_command="flock -s {base}/ci.lock true",
    ) as project:
        lock_fd = os.open(project.base / "ci.lock", os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(lock_fd, fcntl.LOCK_EX)  # every CI job waits until the end
        shas: list[str] = []
        try:
            project.start()
            push_s, push_shas = _pushes(project, pushes)
            shas += push_shas
            event_ms, flow_shas = _ticket_flow(project, tickets, waiting, results, on_message)
            shas += flow_shas
            notify_ms = []
            for sha in flow_shas[:20]:
                t0 = time.monotonic()
                request(project.socket_path, P.CINotify(sha=sha))
                notify_ms.append((time.monotonic() - t0) * 1000)
        finally:
            fcntl.flock(lock_fd, fcntl.LOCK_UN)
            os.close(lock_fd)
            _wait_ci_jobs(project, shas)
    return [
        Figure(
            "ci.push_p50",
            percentile(push_s, 50),
            "s",
            TARGET_PUSH_S,
            samples=len(push_s),
            note="git push of a new commit to agent-1/bench-N, post-receive hook included",
        ),
        Figure(
            "ci.push_max",
            max(push_s),
            "s",
            TARGET_PUSH_S,
            samples=len(push_s),
            note="the slowest of those pushes",
        ),
        Figure(
            "ci.status_to_event_p50",
            percentile(event_ms, 50),
            "ms",
            TARGET_EVENT_MS,
            samples=len(event_ms),
            note="ci-status/<sha>.json renamed in -> ci.result on a socket client, real "
            "tickets waiting in ci_running",
        ),
        Figure(
            "ci.status_to_event_p99",
            percentile(event_ms, 99),
            "ms",
            TARGET_EVENT_MS,
            samples=len(event_ms),
            note="same, p99 (no ci_notify: the daemon's watcher)",
        ),
        Figure(
            "ci.notify_roundtrip_p99",
            percentile(notify_ms, 99),
            "ms",
            None,
            samples=len(notify_ms),
            note="what the hook's notify costs after its interpreter starts: connect, "
            "hello, ci_notify, reply (no snapshot)",
        ),
    ]


def _pushes(project: Project, count: int) -> tuple[list[float], list[str]]:
    clone = project.base / "pusher"
    git(project.base, "clone", "--quiet", str(project.home.repo), str(clone))
    times = []
    shas = []
    for i in range(count):
        (clone / "pushed.txt").write_text(f"push {i}\n")
        git(clone, "add", "pushed.txt")
        git(clone, "commit", "--quiet", "-m", f"bench push {i}")
        shas.append(git(clone, "rev-parse", "HEAD"))
        t0 = time.monotonic()
        git(clone, "push", "--quiet", "origin", f"HEAD:refs/heads/agent-1/bench-{i}")
        times.append(time.monotonic() - t0)
        git(clone, "checkout", "--quiet", "--detach", "origin/main")
    return times, shas


def _ticket_flow(
    project: Project,
    count: int,
    waiting: queue.Queue[tuple[str, str]],
    results: dict[str, float],
    on_message: object,
) -> tuple[list[float], list[str]]:
    status_dir = project.home.ci_status_dir
    backlog = project.home.backlog
    latencies = []
    shas = []
    with Connection(project.socket_path, on_message) as conn:  # type: ignore[arg-type]
        for i in range(count):
            ticket_id = f"c{i:04d}"
            staged = project.stage_ticket(ticket_id, locks=[f"bench/{ticket_id}.txt"])
            tmp = backlog / f".{staged.name}.tmp"
            os.rename(staged, tmp)
            os.rename(tmp, backlog / staged.name)
        for _ in range(count):
            try:
                ticket_id, sha = waiting.get(timeout=60)
            except queue.Empty:
                project.alive()
                raise BenchmarkError(
                    f"no ticket reached ci_running within 60 s (daemon log: {project.log_tail()})"
                ) from None
            shas.append(sha)
            log = status_dir / f"{sha}.log"
            wait_until(
                partial(_job_started, log),
                20,
                f"the CI job of {sha[:10]} to start",
                project,
                poll_s=0.005,
            )
            t0 = write_status(status_dir, sha, f"refs/heads/{ticket_id}")
            wait_until(
                partial(results.__contains__, ticket_id),
                20,
                f"ci.result of {ticket_id}",
                project,
                poll_s=0.002,
            )
            latencies.append((results[ticket_id] - t0) * 1000)
            reply, _ = conn.request(P.Stop(ticket=ticket_id))
            if not reply.ok:
                raise BenchmarkError(f"stop {ticket_id}: {reply.message}")
    return latencies, shas


def _job_started(log: Path) -> bool:
    """hooks/post-receive logs this line once it has removed any old status file."""
    try:
        return "started" in log.read_text()
    except FileNotFoundError:
        return False


def _wait_ci_jobs(project: Project, shas: list[str]) -> None:
    """Let the CI jobs (released now) finish before the home is removed."""
    deadline = time.monotonic() + 30
    for sha in shas:
        log = project.home.ci_status_dir / f"{sha}.log"
        while time.monotonic() < deadline:
            try:
                if f"CI for {sha} done" in log.read_text():
                    break
            except OSError:
                break
            time.sleep(0.05)
