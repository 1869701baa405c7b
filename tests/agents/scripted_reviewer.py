#!/usr/bin/env python3
"""A scripted stand-in for an LLM reviewer (``review.command``), launched as a real process.

    scripted_reviewer.py MODE DIFF_FILE

MODE:
    once      request changes in round 1 (``ORCH_REVIEW_ROUND``), approve after
    always    always request changes
    approve   always approve
    garbage   print 600 KB that is no JSON, exit 0
    exit3     print an approval, then exit with code 3
    hang      sleep 120 s (past any review.timeout_s of the tests)
    slow-once the first run writes its pid to reviewer.pid in ORCH_RUN_DIR and sleeps
              120 s; a later run (the same round again) approves at once
    child     start a grandchild in a new session (setsid) that sleeps 120 s, write
              its pid to child.pid in ORCH_RUN_DIR, approve

It prints some chatter before its answer, as agents do, and checks that the diff
file is there (it names a changed file from it in its comments).
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    mode, diff_file = sys.argv[1], Path(sys.argv[2])
    diff = diff_file.read_text()
    changed = [line[6:] for line in diff.splitlines() if line.startswith("+++ b/")]
    round_ = int(os.environ["ORCH_REVIEW_ROUND"])
    print(f"scripted reviewer: {os.environ['ORCH_TICKET_ID']} round {round_}, mode {mode}")
    print(f"reviewing {len(diff)} bytes of diff touching {', '.join(changed) or 'nothing'}")
    comment = {"path": changed[0] if changed else "?", "line": 1, "body": "please add NOTES.md"}
    if mode == "garbage":
        sys.stdout.write("not json " * 70_000)
        return 0
    run_dir = Path(os.environ["ORCH_RUN_DIR"])
    if mode == "hang":
        time.sleep(120)
        return 0
    if mode == "slow-once" and not (run_dir / "reviewer.pid").exists():
        (run_dir / "reviewer.pid").write_text(str(os.getpid()))
        time.sleep(120)
        return 0
    if mode == "child":
        child = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True
        )
        (run_dir / "child.pid").write_text(str(child.pid))
        mode = "approve"
    if mode in ("approve", "slow-once") or (mode == "once" and round_ > 1):
        print(json.dumps({"verdict": "approve", "comments": []}))
        return 0
    if mode == "exit3":
        print(json.dumps({"verdict": "approve", "comments": []}))
        return 3
    print(json.dumps({"verdict": "request_changes", "comments": [comment]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
