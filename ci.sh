#!/usr/bin/env bash
# ci.sh - run a project's test command once and record the result as a status JSON.
#
# This is the CI template used by the orchestrator.  `orchestrator init` copies it
# to <home>/ci.sh; the post-receive hook of <home>/repo.git runs it inside a
# throw-away checkout of every pushed agent branch.  The work is done by
# `orchestrator ci run` (orchestrator/cirun.py; `python -m orchestrator.ci run` is the
# same without the command line's start-up cost); see docs/ci.md for the contract.
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
#     CI_STATUS_FILE  where to write the status JSON (written atomically).  Unset ->
#                     the JSON is printed to stdout as the last line of output.
#     ORCH_PYTHON     the Python that has orchestrator installed (the hook sets it
#                     from `git config orchestrator.python`; by hand, the
#                     `orchestrator` command on PATH is used when it is unset).
#
# Customize by adding setup here (a virtualenv, services...) before the last line,
# or by changing CI_COMMAND.
#
# Exit status: 0 if the status is "pass", 1 otherwise (2 if the status JSON could
# not be written).
set -euo pipefail

if [[ -n ${ORCH_PYTHON:-} ]]; then
    exec "$ORCH_PYTHON" -m orchestrator.ci run
fi
if command -v orchestrator >/dev/null 2>&1; then
    exec orchestrator ci run
fi
echo "ci.sh: set ORCH_PYTHON to the Python that has orchestrator installed, or put the orchestrator command on PATH" >&2
exit 2
