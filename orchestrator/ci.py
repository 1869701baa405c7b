"""CI for pushed agent branches: the one implementation behind ci.sh and hooks/post-receive.

Both shipped scripts are thin shell that run ``<python> -m orchestrator ci ...``
with the interpreter recorded in repo.git's git config (``orchestrator.python``):

- ``ci hook`` (hooks/post-receive): reads git's ``<old> <new> <ref>`` lines and,
  for every pushed ``refs/heads/agent-*`` (unless the push carries the push
  option ``ci=skip``) and ``refs/orchestrator/queue/*`` (merge queue commits),
  starts ``ci job`` detached (own
  session, output to ``ci-status/<sha>.log``), so ``git push`` returns at once.
- ``ci job GIT_DIR SHA REF``: throw-away checkout of the sha, runs ci.sh in it,
  writes an ``error`` status itself when ci.sh could not, then ``ci_notify``\\ s
  the daemon over the shared client (:func:`orchestrator.shared.client.request`).
- ``ci run`` (ci.sh): runs ``$CI_COMMAND`` under coreutils ``timeout`` and writes
  the status document (:mod:`orchestrator.shared.cistatus`) atomically.
- ``ci notify SHA``: the notification alone.

The contract (files, environment, exit codes, timeouts) is docs/ci.md.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TextIO

import msgspec

from orchestrator.cihook import without_git_env
from orchestrator.shared.cistatus import CheckResult, make_status, write_status
from orchestrator.shared.errors import OrchestratorError
from orchestrator.shared.models import AcceptanceCheck, CIVerdict

#: Exit codes of ``ci run`` (and so of ci.sh).
EXIT_PASS, EXIT_NOT_PASS, EXIT_NOT_WRITTEN = 0, 1, 2
#: ``timeout`` sends SIGKILL this long after SIGTERM.
KILL_AFTER_S = 10
#: How long the job waits for the daemon's reply to ``ci_notify``.
NOTIFY_TIMEOUT_S = 2.0
#: Bytes of output kept in memory for ``log_tail`` (always covers 8000 characters).
_KEEP_BYTES = 64 << 10


# --- ci run (ci.sh) -----------------------------------------------------------


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


def _git_head() -> str:
    try:
        proc = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False
        )
    except OSError:
        return ""
    return proc.stdout.strip() if proc.returncode == 0 else ""


def run(env: Mapping[str, str], out: TextIO = sys.stdout) -> int:
    """Run the test command once in the current directory and record the result.

    Args:
        env: ``CI_COMMAND`` (run with ``bash -c``; empty: status ``error``),
            ``CI_ACCEPTANCE_FILE`` (the ticket's acceptance checks as JSON, run after
            the command; a failing one makes a passing run ``fail``),
            ``CI_TIMEOUT_S`` (whole seconds, default 600; SIGTERM on expiry,
            SIGKILL 10 s later), ``CI_SHA`` (default ``git rev-parse HEAD``),
            ``CI_REF``, ``CI_STATUS_FILE`` (written atomically; unset: the JSON
            is printed as the last line of output).
        out: where the command's combined stdout+stderr is echoed.

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
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        ) as proc:
            assert proc.stdout is not None
            while chunk := os.read(proc.stdout.fileno(), 1 << 16):
                log.write(chunk)
        exit_code = proc.returncode
        verdict = _verdict(exit_code, log, timeout_s)
        checks, failed = _run_acceptance(env.get("CI_ACCEPTANCE_FILE", ""), timeout_s, log)
        if failed and verdict == CIVerdict.PASS:
            verdict = CIVerdict.FAIL
    status = make_status(
        sha=env.get("CI_SHA") or _git_head(),
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


_checks_decoder = msgspec.json.Decoder(list[AcceptanceCheck])


def _run_acceptance(path: str, timeout_s: int, log: _Log) -> tuple[list[CheckResult], bool]:
    """Run the acceptance checks listed in ``path`` (JSON) at the checkout's root.

    Returns the results and whether any did not pass. Check argv never reaches a
    shell; each check gets ``timeout_s``. docs/tickets.md#acceptance-checks.
    """
    if not path:
        return [], False
    try:
        checks = _checks_decoder.decode(Path(path).read_bytes())
    except (OSError, msgspec.DecodeError) as exc:
        log.note(f"acceptance: cannot read the checks in {path}: {exc}")
        return [
            CheckResult(name="acceptance checks", status=CIVerdict.ERROR, output_tail=str(exc))
        ], True
    results = [_check(check, Path.cwd(), timeout_s) for check in checks]
    for r in results:
        log.note(f"acceptance: {r.name}: {r.status}")
        if r.status != CIVerdict.PASS and r.output_tail:
            log.write(r.output_tail.encode() + (b"" if r.output_tail.endswith("\n") else b"\n"))
    return results, any(r.status != CIVerdict.PASS for r in results)


def _check(check: AcceptanceCheck, root: Path, timeout_s: int) -> CheckResult:
    name = check.label

    def result(status: CIVerdict, output: str) -> CheckResult:
        return CheckResult(name=name, status=status, output_tail=output[-2000:])

    if check.run is not None:
        try:
            proc = subprocess.Popen(
                check.run,
                cwd=root,
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


# --- ci notify ----------------------------------------------------------------


def notify(socket_path: Path, sha: str, timeout_s: float = NOTIFY_TIMEOUT_S) -> str:
    """Send ``ci_notify`` for ``sha`` and return the daemon's reply line.

    Raises:
        OrchestratorError: no daemon answers, or it did not reply in time.
    """
    from orchestrator.shared import protocol as P
    from orchestrator.shared.client import request

    reply = request(socket_path, P.CINotify(sha=sha), timeout_s=timeout_s)
    return f"{'ok' if reply.ok else 'refused'}: {reply.message}"


# --- ci job (started by the post-receive hook, orchestrator/cihook.py) ----------


def _log(text: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(f"[{stamp}] {text}", flush=True)


def _git_config(git_dir: Path, key: str) -> str | None:
    proc = subprocess.run(
        ["git", f"--git-dir={git_dir}", "config", "--get", key],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


def job(git_dir: Path, sha: str, ref: str) -> int:
    """The detached CI job for one pushed commit; logs to stdout (``ci-status/<sha>.log``).

    Reads ``orchestrator.ciScript``, ``ciCommand``, ``ciTimeoutS`` and ``socket``
    from repo.git's git config. Leaves ``ci-status/<sha>.json`` behind (ci.sh's,
    or an ``error`` status of its own; if even that cannot be written, the log
    says why) and returns 0.
    """
    clean = without_git_env(os.environ)
    os.environ.clear()
    os.environ.update(clean)
    ci_script = Path(_git_config(git_dir, "orchestrator.ciScript") or git_dir.parent / "ci.sh")
    ci_command = _git_config(git_dir, "orchestrator.ciCommand") or ""
    ci_timeout = _git_config(git_dir, "orchestrator.ciTimeoutS") or "600"
    socket_path = _git_config(git_dir, "orchestrator.socket") or ""
    status_file = git_dir / "ci-status" / f"{sha}.json"
    status_file.unlink(missing_ok=True)  # a status file that exists is final
    started = time.time()
    _log(f"CI for {sha} ({ref}) started")

    def fail(exit_code: int, message: str) -> None:
        _log(message)
        status = make_status(
            sha=sha,
            ref=ref,
            status=CIVerdict.ERROR,
            exit_code=exit_code,
            started_s=started,
            finished_s=time.time(),
            log=message.encode(),
        )
        try:
            write_status(status_file, status)
        except OSError as exc:
            _log(f"could not write the status file {status_file}: {exc}")
            return
        _log(f"wrote status 'error' to {status_file}")

    if not ci_command:
        fail(2, "no CI command configured (git config orchestrator.ciCommand)")
    elif not ci_script.is_file():
        fail(2, f"CI script not found: {ci_script} (git config orchestrator.ciScript)")
    else:
        _run_script(git_dir, sha, ref, ci_script, ci_command, ci_timeout, status_file, fail)
    _notify_daemon(socket_path, sha)
    _log(f"CI for {sha} done")
    return 0


def _run_script(
    git_dir: Path,
    sha: str,
    ref: str,
    ci_script: Path,
    ci_command: str,
    ci_timeout: str,
    status_file: Path,
    fail: Callable[[int, str], None],
) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="orch-ci."))
    try:
        checkout = tmp / "src"
        for argv in (
            ["git", "clone", "--quiet", "--shared", "--no-checkout", str(git_dir), str(checkout)],
            ["git", "-C", str(checkout), "checkout", "--quiet", "--detach", sha],
        ):
            proc = subprocess.run(argv, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                output = (proc.stdout + proc.stderr).strip()
                fail(128, f"checkout of {sha} failed:\n{output}")
                return
        setup_failed = _ci_setup(git_dir, checkout)
        if setup_failed:
            fail(2, setup_failed)
            return
        runner = [str(ci_script)] if os.access(ci_script, os.X_OK) else ["bash", str(ci_script)]
        env = dict(os.environ)
        env.update(
            CI_COMMAND=ci_command,
            CI_TIMEOUT_S=ci_timeout,
            CI_SHA=sha,
            CI_REF=ref,
            CI_STATUS_FILE=str(status_file),
            ORCH_PYTHON=sys.executable,
        )
        acceptance = _acceptance_file(git_dir, ref)
        if acceptance is not None:
            env["CI_ACCEPTANCE_FILE"] = str(acceptance)
        sys.stdout.flush()
        rc = subprocess.run(runner, cwd=checkout, env=env, stdin=subprocess.DEVNULL).returncode
        _log(f"ci.sh exited with {rc}")
        if not status_file.exists():
            fail(
                rc,
                f"ci.sh ({ci_script}) exited with {rc} without writing a status file; "
                f"see {status_file.with_suffix('.log')}",
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _acceptance_file(git_dir: Path, ref: str) -> Path | None:
    """``<home>/runs/<ticket>/acceptance.json`` for a pushed ``refs/heads/agent-K/<ticket>``
    or merge queue commit ``refs/orchestrator/queue/<ticket>`` (written by the daemon
    before it pushes the branch), when it exists."""
    parts = ref.split("/")
    queue = parts[:3] == ["refs", "orchestrator", "queue"]
    if len(parts) != 4 or not (parts[:2] == ["refs", "heads"] or queue):
        return None
    path = git_dir.parent / "runs" / parts[3] / "acceptance.json"
    return path if path.is_file() else None


def _ci_setup(git_dir: Path, checkout: Path) -> str:
    """``ci.setup``: copy ``worktree.copy`` and run ``worktree.setup`` in the checkout, as
    recorded in git config ``orchestrator.ciSetup`` (JSON); why it failed, or ""."""
    raw = _git_config(git_dir, "orchestrator.ciSetup") or "{}"
    try:
        spec = msgspec.json.decode(raw, type=_CISetup)
    except msgspec.DecodeError as exc:
        return f"ci.setup: invalid git config orchestrator.ciSetup: {exc}"
    for rel in spec.copy:
        src, dst = Path(spec.source) / rel, checkout / rel
        try:
            if src.is_dir():
                shutil.copytree(src, dst, dirs_exist_ok=True, symlinks=True)
            elif src.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
            else:
                return f"ci.setup: worktree.copy: {src} does not exist"
        except OSError as exc:
            return f"ci.setup: worktree.copy: cannot copy {src}: {exc.strerror or exc}"
    if not spec.setup:
        return ""
    name = " ".join(spec.setup)[:200]
    _log(f"setup: {name}")
    sys.stdout.flush()
    try:
        proc = subprocess.Popen(
            spec.setup,
            cwd=checkout,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        return f"ci.setup: worktree.setup `{name}` cannot start: {exc.strerror or exc}"
    try:
        output, _ = proc.communicate(timeout=spec.timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        reason = f"ci.setup: worktree.setup `{name}` timed out after {spec.timeout_s} s"
    else:
        code = proc.returncode
        reason = f"ci.setup: worktree.setup `{name}` exited with code {code}" if code else ""
    sys.stdout.buffer.write(output)
    sys.stdout.flush()
    if reason:
        return f"{reason}\n{output.decode(errors='replace')[-4000:]}"
    return ""


class _CISetup(msgspec.Struct, forbid_unknown_fields=True):
    copy: list[str] = msgspec.field(default_factory=list)
    source: str = ""
    setup: list[str] = msgspec.field(default_factory=list)
    timeout_s: int = 600


def _notify_daemon(socket_path: str, sha: str) -> None:
    later = "the status file stays and is picked up when the daemon starts"
    if not socket_path or not Path(socket_path).is_socket():
        where = socket_path or "(orchestrator.socket unset)"
        _log(f"daemon socket {where} not available; {later}")
        return
    try:
        answer = notify(Path(socket_path), sha)
    except OrchestratorError as exc:
        _log(f"daemon not notified ({exc}); {later}")
    else:
        _log(f"notified daemon at {socket_path}: {answer}")
