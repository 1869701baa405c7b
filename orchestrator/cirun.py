"""``ci run``: the test command of one CI run and its status document (ci.sh's side).

ci.sh (copied to ``<home>/ci.sh``) execs ``$ORCH_PYTHON -m orchestrator.ci run``,
which lands here (or the CI job calls :func:`run` itself when ci.sh is the shipped
template, :func:`orchestrator.ci.is_shipped_ci_sh`): it runs ``$CI_COMMAND`` under
coreutils ``timeout``,
then the ticket's acceptance checks, and writes the status document
(:mod:`orchestrator.shared.cistatus`) atomically. Every CI run starts a Python
for it, so this module imports only the standard library, msgspec,
shared/cistatus.py and shared/fsutil.py; the ticket models (and with them
PyYAML) only when there are acceptance checks to run (docs/performance.md).

The contract (environment, exit codes, the document) is docs/ci.md.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import msgspec

from orchestrator.shared.cistatus import CheckResult, CIVerdict, make_status, write_status

if TYPE_CHECKING:
    from orchestrator.shared.models import AcceptanceCheck

#: Exit codes of ``ci run`` (and so of ci.sh).
EXIT_PASS, EXIT_NOT_PASS, EXIT_NOT_WRITTEN = 0, 1, 2
#: ``timeout`` sends SIGKILL this long after SIGTERM.
KILL_AFTER_S = 10
#: Bytes of output kept in memory for ``log_tail`` (always covers 8000 characters).
_KEEP_BYTES = 64 << 10


class _Log:
    """The run's output: echoed to ``out`` as it comes, its end kept for ``log_tail``."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.data = bytearray()

    def write(self, chunk: bytes) -> None:
        self.out.buffer.write(chunk)
        self.out.flush()
        self.data += chunk
        del self.data[:-_KEEP_BYTES]

    def note(self, text: str) -> None:
        self.write(f"[ci] {text}\n".encode())


def _verdict(exit_code: int, log: _Log, timeout_s: int) -> CIVerdict:
    if exit_code == 0:
        return CIVerdict.PASS
    if exit_code in (124, 137):
        log.note(f"timed out after {timeout_s} s (exit {exit_code})")
        return CIVerdict.ERROR
    if exit_code == 127:
        log.note("command not found (exit 127)")
        return CIVerdict.ERROR
    return CIVerdict.FAIL


def _git_head(cwd: Path | None) -> str:
    try:
        proc = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=False
        )
    except OSError:
        return ""
    return proc.stdout.strip() if proc.returncode == 0 else ""


def run(env: Mapping[str, str], out: TextIO = sys.stdout, cwd: Path | None = None) -> int:
    """Run the test command once in ``cwd`` (None: the current directory) and record
    the result.

    Args:
        env: ``CI_COMMAND`` (run with ``bash -c``; empty: status ``error``),
            ``CI_ACCEPTANCE_FILE`` (the ticket's acceptance checks as JSON, run after
            the command; a failing one makes a passing run ``fail``),
            ``CI_TIMEOUT_S`` (whole seconds, default 600; SIGTERM on expiry,
            SIGKILL 10 s later), ``CI_SHA`` (default ``git rev-parse HEAD``),
            ``CI_REF``, ``CI_STATUS_FILE`` (written atomically; unset: the JSON
            is printed as the last line of output).
            ``env`` is also the environment of the command and the checks.
        out: where the command's combined stdout+stderr is echoed.
        cwd: the checkout's root, where the command and the checks run.

    Returns:
        0 when the status is ``pass``, 1 otherwise, 2 when the status file could
        not be written.
    """
    log = _Log(out)
    started = time.time()
    checks: list[CheckResult] = []
    command = env.get("CI_COMMAND", "")
    timeout_raw = env.get("CI_TIMEOUT_S", "600")
    timeout_s = 0
    if not command:
        log.note("no CI command configured (git config orchestrator.ciCommand)")
        exit_code, verdict = 2, CIVerdict.ERROR
    elif not timeout_raw.isascii() or not timeout_raw.isdigit() or int(timeout_raw) <= 0:
        log.note(f"invalid CI_TIMEOUT_S: '{timeout_raw}' (expected a positive integer)")
        exit_code, verdict = 2, CIVerdict.ERROR
    else:
        timeout_s = int(timeout_raw)
        argv = ["timeout", f"--kill-after={KILL_AFTER_S}", str(timeout_s), "bash", "-c", command]
        with subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        ) as proc:
            assert proc.stdout is not None
            while chunk := os.read(proc.stdout.fileno(), 1 << 16):
                log.write(chunk)
        exit_code = proc.returncode
        verdict = _verdict(exit_code, log, timeout_s)
        root = cwd if cwd is not None else Path.cwd()
        checks, failed = _run_acceptance(env, root, timeout_s, log)
        if failed and verdict == CIVerdict.PASS:
            verdict = CIVerdict.FAIL
    status = make_status(
        sha=env.get("CI_SHA") or _git_head(cwd),
        ref=env.get("CI_REF", ""),
        status=verdict,
        exit_code=exit_code,
        started_s=started,
        finished_s=time.time(),
        log=bytes(log.data),
        checks=checks,
    )
    target = env.get("CI_STATUS_FILE", "")
    if not target:
        out.write(msgspec.json.encode(status).decode() + "\n")
    else:
        try:
            write_status(Path(target), status)
        except OSError as exc:
            print(f"ci: cannot write the status file {target}: {exc}", file=sys.stderr)
            return EXIT_NOT_WRITTEN
    return EXIT_PASS if verdict == CIVerdict.PASS else EXIT_NOT_PASS


def _run_acceptance(
    env: Mapping[str, str], root: Path, timeout_s: int, log: _Log
) -> tuple[list[CheckResult], bool]:
    """Run the acceptance checks listed in ``env["CI_ACCEPTANCE_FILE"]`` (JSON) at the
    checkout's ``root``, with the environment ``env``.

    Returns the results and whether any did not pass. Check argv never reaches a
    shell; each check gets ``timeout_s``. docs/tickets.md#acceptance-checks.
    """
    path = env.get("CI_ACCEPTANCE_FILE", "")
    if not path:
        return [], False
    from orchestrator.shared.models import AcceptanceCheck  # loads PyYAML: only when needed

    try:
        checks = msgspec.json.decode(Path(path).read_bytes(), type=list[AcceptanceCheck])
    except (OSError, msgspec.DecodeError) as exc:
        log.note(f"acceptance: cannot read the checks in {path}: {exc}")
        return [
            CheckResult(name="acceptance checks", status=CIVerdict.ERROR, output_tail=str(exc))
        ], True
    results = [_check(check, root, env, timeout_s) for check in checks]
    for r in results:
        log.note(f"acceptance: {r.name}: {r.status}")
        if r.status != CIVerdict.PASS and r.output_tail:
            log.write(r.output_tail.encode() + (b"" if r.output_tail.endswith("\n") else b"\n"))
    return results, any(r.status != CIVerdict.PASS for r in results)


def _check(
    check: AcceptanceCheck, root: Path, env: Mapping[str, str], timeout_s: int
) -> CheckResult:
    name = check.label

    def result(status: CIVerdict, output: str) -> CheckResult:
        return CheckResult(name=name, status=status, output_tail=output[-2000:])

    if check.run is not None:
        try:
            proc = subprocess.Popen(
                check.run,
                cwd=root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            return result(CIVerdict.ERROR, f"cannot run {check.run[0]}: {exc.strerror or exc}")
        try:
            output, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            text = output.decode(errors="replace")
            return result(CIVerdict.ERROR, f"{text}timed out after {timeout_s} s")
        text = output.decode(errors="replace")
        if proc.returncode != 0:
            return result(CIVerdict.FAIL, f"{text}exited with code {proc.returncode}")
        return result(CIVerdict.PASS, text)
    rel = check.file_exists if check.file_exists is not None else check.contains.path  # type: ignore[union-attr]
    target = (root / rel).resolve()
    if not target.is_relative_to(root.resolve()):
        return result(CIVerdict.FAIL, f"{rel} is outside the repository")
    if check.file_exists is not None:
        if target.exists():
            return result(CIVerdict.PASS, "")
        return result(CIVerdict.FAIL, f"{rel} does not exist")
    assert check.contains is not None
    try:
        content = target.read_text(errors="replace")
    except OSError as exc:
        return result(CIVerdict.FAIL, f"cannot read {rel}: {exc.strerror or exc}")
    if check.contains.text in content:
        return result(CIVerdict.PASS, "")
    return result(CIVerdict.FAIL, f"{rel} does not contain {check.contains.text!r}")
