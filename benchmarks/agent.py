"""Stand-in agents for the benchmarks (an LLM is the one thing not run here).

``python benchmarks/agent.py write`` writes ``bench/<ticket id>.txt`` in its
working directory (the worktree) and exits 0, so the daemon commits, pushes
and waits for CI. ``python benchmarks/agent.py chatty RATE`` prints RATE lines
per second, evenly paced, until it is stopped, so the daemon streams
``agent.output`` events. ``python benchmarks/agent.py work SECONDS`` works
SECONDS (sleeps), then writes ``bench/<ticket id>.txt``; for a ticket whose id
starts with ``fail`` its first attempt writes ``FAIL`` there, which the
throughput benchmark's test suite rejects. Stdlib only.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    mode = argv[0] if argv else "write"
    if mode == "write":
        ticket = os.environ.get("ORCH_TICKET_ID", "ticket")
        out = Path("bench") / f"{ticket}.txt"
        out.parent.mkdir(exist_ok=True)
        out.write_text(f"work for {ticket}\n")
        return 0
    if mode == "work":
        time.sleep(float(argv[1]))
        ticket = os.environ.get("ORCH_TICKET_ID", "ticket")
        attempt = int(os.environ.get("ORCH_ATTEMPT", "1"))
        out = Path("bench") / f"{ticket}.txt"
        out.parent.mkdir(exist_ok=True)
        bad = ticket.startswith("fail") and attempt == 1
        out.write_text("FAIL\n" if bad else f"work for {ticket}, attempt {attempt}\n")
        return 0
    if mode == "chatty":
        rate = float(argv[1])
        interval = 1.0 / rate
        line = b"agent output line: working on the ticket, step %d\n"
        start = time.monotonic()
        i = 0
        while True:
            os.write(1, line % i)
            i += 1
            delay = start + i * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
