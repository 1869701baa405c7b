#!/usr/bin/env python3
"""demo_reviewer.py - a stand-in reviewer agent for the demo (``review.command``).

Like demo_agent.py it needs no LLM and no network: it reads the change's diff
(``{diff_file}``, its only argument), prints a few progress lines, and answers
with the JSON object the orchestrator expects on its last lines
(docs/review.md):

    {"verdict": "approve" | "request_changes",
     "comments": [{"path": ..., "line": ... or null, "body": ...}]}

Scripted verdicts: in round 1 (``ORCH_REVIEW_ROUND``) it requests changes on the
tickets listed in REQUESTS, with those comments; everything else is approved.
So the demo shows one review round sending a ticket back to its agent, whose
next attempt (recordings/<ticket>/attempt-2.yaml) addresses the comment.

Environment: ORCH_TICKET_ID, ORCH_REVIEW_ROUND (set by the daemon),
DEMO_AGENT_DELAY_S (pause between progress lines, default 0.3).
Exit status: 0 with an answer; 2 on a bad command line or environment.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

#: ticket id -> the comments of round 1 (then: approve).
REQUESTS: dict[str, list[dict[str, object]]] = {
    "readme-examples": [
        {
            "path": "README.md",
            "line": None,
            "body": "Say how to run the examples yourself (python -m doctest README.md).",
        }
    ],
}


def main() -> int:
    if len(sys.argv) != 2 or "ORCH_TICKET_ID" not in os.environ:
        print("usage: demo_reviewer.py DIFF_FILE (run by the orchestrator)", file=sys.stderr)
        return 2
    ticket = os.environ["ORCH_TICKET_ID"]
    round_ = int(os.environ.get("ORCH_REVIEW_ROUND", "1"))
    delay_s = float(os.environ.get("DEMO_AGENT_DELAY_S", "0.3"))
    diff = Path(sys.argv[1]).read_text(errors="replace")
    files = [line[6:] for line in diff.splitlines() if line.startswith("+++ b/")]
    print(f"demo reviewer: {ticket}, round {round_}", flush=True)
    time.sleep(delay_s)
    print(f"reading the diff: {len(files)} file(s): {', '.join(files)}", flush=True)
    time.sleep(delay_s)
    comments = REQUESTS.get(ticket, []) if round_ == 1 else []
    verdict = "request_changes" if comments else "approve"
    print(json.dumps({"verdict": verdict, "comments": comments}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
