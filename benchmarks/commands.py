"""7. Command round trip: ``approve`` / ``stop`` sent on the socket -> the daemon's
reply, while the daemon streams about 1,000 events/s.

Five workers run a chatty agent each (benchmarks/agent.py, 200 lines/s, each
line an ``agent.output`` event to every client), and a second client listens
to the stream, so the daemon really is streaming while the commands run; the
rate it actually delivered is in the note. Commands alternate, 10-30 ms apart,
on one connection: ``stop`` of a queued ticket (it becomes stopped: a real
state change, committed to SQLite before the reply) and ``approve`` of a
queued ticket (refused, since only awaiting_approval can be approved; the
same path through the daemon's loop, without a state change). Each round trip
is timed from sending the line to receiving the reply.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from pathlib import Path

from benchmarks.harness import (
    BenchmarkError,
    Connection,
    Figure,
    Project,
    percentile,
    wait_until,
)
from orchestrator.shared import protocol as P

TARGET_P99_MS = 20.0
WORKERS = 5
LINES_PER_S = 200
AGENT = Path(__file__).with_name("agent.py")


def run(quick: bool) -> list[Figure]:
    samples = 100 if quick else 400
    stops = samples // 2
    output_times: list[float] = []
    started: set[str] = set()
    lock = threading.Lock()

    def on_message(t: float, message: P.ServerMessage) -> None:
        if isinstance(message, P.Event):
            if message.kind == "agent.output":
                with lock:
                    output_times.append(t)
            elif message.kind == "agent.started" and message.ticket:
                started.add(message.ticket)

    agent = [sys.executable, str(AGENT), "chatty", str(LINES_PER_S)]
    with Project(
        workers=WORKERS, agent_command=agent, config={"heartbeat_interval_s": "5"}
    ) as project:
        project.start()
        ids = [f"k{i:04d}" for i in range(WORKERS + stops)]
        backlog = project.home.backlog
        with Connection(project.socket_path, on_message) as listener:
            for ticket_id in ids:
                staged = project.stage_ticket(ticket_id, locks=[f"bench/{ticket_id}.txt"])
                tmp = staged.rename(backlog / f".{staged.name}.tmp")
                tmp.rename(backlog / staged.name)
            wait_until(lambda: len(started) >= WORKERS, 30, f"{WORKERS} agents to start", project)
            running = set(started)
            queued = [i for i in ids if i not in running]
            time.sleep(1.0)  # the stream is at full rate
            rng = random.Random(7)
            rtt_ms = []
            approve_ms = []
            stop_ms = []
            with Connection(project.socket_path, decode=False) as conn:
                t_start = time.monotonic()
                for i in range(samples):
                    target = queued[i // 2]
                    if i % 2 == 0:
                        reply, rtt = conn.request(P.Approve(ticket=target))
                        approve_ms.append(rtt * 1000)
                    else:
                        reply, rtt = conn.request(P.Stop(ticket=target))
                        if not reply.ok:
                            raise BenchmarkError(f"stop {target}: {reply.message}")
                        stop_ms.append(rtt * 1000)
                    rtt_ms.append(rtt * 1000)
                    time.sleep(rng.uniform(0.010, 0.030))
                t_end = time.monotonic()
            project.alive()
            if listener.error is not None:
                raise BenchmarkError(f"the listening client failed: {listener.error}")
    with lock:
        streamed = sum(1 for t in output_times if t_start <= t <= t_end)
    rate = streamed / (t_end - t_start)
    note = (
        f"approve/stop alternating on one connection while the daemon streamed "
        f"{rate:.0f} agent.output events/s to a listening client"
    )
    return [
        Figure(
            "command.roundtrip_p50",
            percentile(rtt_ms, 50),
            "ms",
            TARGET_P99_MS,
            samples=len(rtt_ms),
            note=note,
        ),
        Figure(
            "command.roundtrip_p99",
            percentile(rtt_ms, 99),
            "ms",
            TARGET_P99_MS,
            samples=len(rtt_ms),
            note=f"approve p99 {percentile(approve_ms, 99):.1f} ms, stop p99 "
            f"{percentile(stop_ms, 99):.1f} ms",
        ),
        Figure(
            "command.stream_rate",
            rate,
            "events/s",
            None,
            note="agent.output events received by the listening client during the commands",
        ),
    ]
