#!/usr/bin/env bash
# ci.sh - run a project's test command once and record the result as a status JSON.
#
# This is the CI template used by the orchestrator.  `orchestrator init` copies it
# to <home>/ci.sh; the post-receive hook of <home>/repo.git runs it inside a
# throw-away checkout of every pushed agent branch.  It works for any repository:
# the test command comes from the environment, so usually nothing here needs to
# change (see docs/ci.md, "Customizing ci.sh").
#
# Usage (run from the root of a checkout):
#     CI_COMMAND='python3 -m unittest discover -s tests -q' ./ci.sh
#
# Environment:
#     CI_COMMAND      shell command that runs the tests (run with `bash -c` in the
#                     current directory).  Empty/unset -> status "error".
#     CI_TIMEOUT_S    timeout in whole seconds (default 600).  On timeout the
#                     command gets SIGTERM, then SIGKILL 10 s later.
#     CI_SHA          commit being tested (default: `git rev-parse HEAD`, or "").
#     CI_REF          ref being tested, e.g. refs/heads/agent-1/foo (default "").
#     CI_STATUS_FILE  where to write the status JSON (written atomically: tmp file,
#                     fsync, rename).  Unset -> the JSON is printed to stdout as the
#                     last line of output.
#     ORCH_PYTHON     Python 3 interpreter used to write the JSON (default python3).
#
# Output: the command's combined stdout+stderr is echoed to stdout while it runs.
# Status: exit 0 -> "pass"; 124/137 (timeout) -> "error"; 127 (command not
# found) -> "error"; any other non-zero exit -> "fail".
# Status JSON fields: sha, ref, status, exit_code, started_at, finished_at,
# duration_s, log_tail (last 100 lines, at most 8000 characters).
#
# Exit status of this script: 0 if the status is "pass", 1 otherwise
# (2 if the status JSON could not be written).
set -euo pipefail

PY=${ORCH_PYTHON:-python3}
TIMEOUT_S=${CI_TIMEOUT_S:-600}

now() {
    # Seconds since the epoch with sub-second precision.
    if [[ -n ${EPOCHREALTIME:-} ]]; then
        printf '%s\n' "${EPOCHREALTIME/,/.}"
    else
        "$PY" -c 'import time; print(repr(time.time()))'
    fi
}

log_file=$(mktemp "${TMPDIR:-/tmp}/ci-log.XXXXXX")
trap 'rm -f "$log_file"' EXIT

note() {
    # Append a line to the log (so it ends up in log_tail) and echo it.
    printf '[ci] %s\n' "$*" | tee -a "$log_file"
}

started=$(now)
exit_code=0
status=pass

if [[ -z ${CI_COMMAND:-} ]]; then
    note "no CI command configured (git config orchestrator.ciCommand)"
    exit_code=2
    status=error
elif ! [[ $TIMEOUT_S =~ ^[0-9]+$ ]] || ((10#$TIMEOUT_S <= 0)); then
    note "invalid CI_TIMEOUT_S: '$TIMEOUT_S' (expected a positive integer)"
    exit_code=2
    status=error
else
    TIMEOUT_S=$((10#$TIMEOUT_S))
    set +e
    timeout --kill-after=10 "$TIMEOUT_S" bash -c "$CI_COMMAND" </dev/null 2>&1 | tee -a "$log_file"
    codes=("${PIPESTATUS[@]}")
    set -e
    exit_code=${codes[0]}
    case $exit_code in
        0) status=pass ;;
        124 | 137)
            status=error
            note "timed out after $TIMEOUT_S s (exit $exit_code)"
            ;;
        127)
            status=error
            note "command not found (exit 127)"
            ;;
        *) status=fail ;;
    esac
fi

finished=$(now)

sha=${CI_SHA:-}
if [[ -z $sha ]]; then
    sha=$(git rev-parse HEAD 2>/dev/null) || sha=""
fi
ref=${CI_REF:-}

out=${CI_STATUS_FILE:-}
tmp_out=""
if [[ -n $out ]]; then
    mkdir -p "$(dirname "$out")"
    tmp_out="$out.tmp.$$"
fi

# All values go in as argv; nothing is interpolated into the Python source.
write_rc=0
"$PY" - "$log_file" "$tmp_out" "$sha" "$ref" "$status" "$exit_code" "$started" "$finished" <<'PY' || write_rc=$?
import datetime
import json
import os
import sys

log_path, out_path, sha, ref, status, exit_code, started, finished = sys.argv[1:9]
MAX_LINES, MAX_CHARS = 100, 8000


def iso(ts: float) -> str:
    dt = datetime.datetime.fromtimestamp(ts, datetime.timezone.utc)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def tail(path: str) -> str:
    # Only the end of the file matters; 64 KiB always covers 8000 characters.
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 65536))
        data = f.read()
    text = data.decode("utf-8", errors="replace")
    text = "".join(text.splitlines(keepends=True)[-MAX_LINES:])
    return text[-MAX_CHARS:]


t0, t1 = float(started), float(finished)
doc = {
    "sha": sha,
    "ref": ref,
    "status": status,
    "exit_code": int(exit_code),
    "started_at": iso(t0),
    "finished_at": iso(t1),
    "duration_s": round(max(0.0, t1 - t0), 3),
    "log_tail": tail(log_path),
}
if out_path:
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
else:
    sys.stdout.write(json.dumps(doc) + "\n")
PY

if ((write_rc != 0)); then
    [[ -n $tmp_out ]] && rm -f "$tmp_out"
    echo "ci.sh: failed to write the status JSON (python exit $write_rc)" >&2
    exit 2
fi
if [[ -n $tmp_out ]]; then
    mv -f "$tmp_out" "$out"
fi

if [[ $status == pass ]]; then
    exit 0
fi
exit 1
