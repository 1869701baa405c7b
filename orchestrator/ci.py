"""CI for pushed commits: the one implementation behind hooks/post-receive and ci.sh.

Both shipped scripts are thin shell; the Python they start is the interpreter
recorded in repo.git's git config (``orchestrator.python``):

- hooks/post-receive runs ``python -m orchestrator.cihook`` (:mod:`orchestrator.cihook`,
  = ``orchestrator ci hook``): for every pushed ``refs/heads/agent-*`` (unless the
  push carries the push option ``ci=skip``) and ``refs/orchestrator/queue/*`` (merge
  queue commits) it forks a detached child (own session, output to
  ``ci-status/<sha>.log``) that runs :func:`job` in the same interpreter, so
  ``git push`` returns at once and no second Python starts.
- ``ci job`` (:func:`job`; by hand ``python -m orchestrator.ci job GIT_DIR SHA REF``):
  throw-away checkout of the sha, runs ci.sh in it, writes an ``error`` status
  itself when ci.sh could not, then sends ``ci_notify`` to the daemon
  (:func:`notify`). When ci.sh is the shipped template (:func:`is_shipped_ci_sh`),
  whose only action is ``ci run``, the job runs :func:`run` itself.
- ``ci run`` (ci.sh execs ``python -m orchestrator.ci run``; :mod:`orchestrator.cirun`):
  runs ``$CI_COMMAND`` under coreutils ``timeout`` and writes the status document
  (:mod:`orchestrator.shared.cistatus`) atomically.
- ``ci notify SHA`` (``orchestrator ci notify``): the notification alone.

Every CI run goes through this module, so it does not go through the command
line (:mod:`orchestrator.cli`, argparse, the protocol, the ticket models,
PyYAML): it imports only the standard library (and shared/errors.py and
shared/terminal.py, which are no more); msgspec and shared/cistatus.py are
imported where a status is written, ``orchestrator.ciSetup`` decoded or the
tests run (:mod:`orchestrator.cirun`).
``orchestrator ci job|run|notify`` call the same functions.

The contract (files, environment, exit codes, timeouts) is docs/ci.md.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from orchestrator.cihook import without_git_env
from orchestrator.shared.errors import DaemonNotRunning, OrchestratorError, ProtocolError
from orchestrator.shared.terminal import terminal_safe

#: How long the job waits for the daemon's reply to ``ci_notify``.
NOTIFY_TIMEOUT_S = 2.0
#: The daemon's protocol version, :data:`orchestrator.shared.protocol.PROTOCOL_VERSION`,
#: repeated here so that the job need not import the protocol module (msgspec and every
#: message struct); tests/integration/test_ci_entry.py checks that the two are equal.
PROTOCOL_VERSION = 6
#: Longest line read from the daemon (bytes); a ``ci_notify`` reply is one short line.
MAX_REPLY_BYTES = 1 << 20
USAGE = "usage: python -m orchestrator.ci job GIT_DIR SHA REF | run"


def run(env: Mapping[str, str], out: TextIO = sys.stdout, cwd: Path | None = None) -> int:
    """``ci run``: :func:`orchestrator.cirun.run` (see there), imported on call so that
    ``ci job`` loads msgspec only when it runs the tests itself."""
    from orchestrator.cirun import run as run_ci

    return run_ci(env, out, cwd)


def is_shipped_ci_sh(ci_script: Path) -> bool:
    """Whether ``ci_script`` is byte for byte the shipped ci.sh template
    (:func:`orchestrator.shared.assets.asset`), whose only action is to exec
    ``$ORCH_PYTHON -m orchestrator.ci run``: then :func:`job` calls :func:`run` itself
    instead of starting bash and another Python. False when either cannot be read."""
    from orchestrator.shared.assets import asset

    try:
        template = asset("ci.sh")
        return ci_script.read_bytes() == template.read_bytes()
    except (OSError, OrchestratorError):
        return False


# --- ci notify ----------------------------------------------------------------


def notify(socket_path: Path, sha: str, timeout_s: float = NOTIFY_TIMEOUT_S) -> str:
    """Send ``ci_notify`` for ``sha`` and return the daemon's reply as one line.

    The one-shot exchange of :func:`orchestrator.shared.client.request` (docs/protocol.md),
    spoken with the standard library: read the daemon's ``hello`` (refuse another
    protocol version), send ``{"type": "ci_notify", "sha": SHA, "req": "1"}``, read
    lines until the ``reply`` with ``req`` ``"1"``.

    Returns:
        ``ok: <message>`` or ``refused: <message>`` (control characters escaped).

    Raises:
        DaemonNotRunning: nothing listens on ``socket_path``.
        ProtocolError: another protocol version, an unreadable line, the connection
            closed or failed, or no reply within ``timeout_s`` seconds.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        sock.connect(str(socket_path))
    except OSError as exc:
        sock.close()
        raise DaemonNotRunning(
            f"no daemon answers on {socket_path} ({exc.strerror or exc}); start it with "
            "`orchestrator daemon --config CONFIG` or `systemctl --user start orchestrator`"
        ) from None
    with sock, sock.makefile("rb") as reader:
        try:
            hello = _read_message(reader, timeout_s)
            if hello.get("type") != "hello":
                raise ProtocolError(f"expected a hello from the daemon, got {hello.get('type')!r}")
            if hello.get("version") != PROTOCOL_VERSION:
                raise ProtocolError(
                    f"the daemon speaks protocol version {hello.get('version')}, this client "
                    f"{PROTOCOL_VERSION}: restart the daemon after upgrading (or use the same "
                    "version)"
                )
            command = {"type": "ci_notify", "sha": sha, "req": "1"}
            sock.sendall(json.dumps(command, separators=(",", ":")).encode() + b"\n")
            while True:
                message = _read_message(reader, timeout_s)
                if message.get("type") == "reply" and message.get("req") == "1":
                    verdict = "ok" if message.get("ok") is True else "refused"
                    return f"{verdict}: {terminal_safe(str(message.get('message', '')))}"
        except OSError as exc:
            raise ProtocolError(f"the connection to the daemon failed: {exc}") from None


def _read_message(reader: BinaryIO, timeout_s: float) -> dict[str, Any]:
    try:
        line = reader.readline(MAX_REPLY_BYTES)
    except TimeoutError:
        raise ProtocolError(f"the daemon did not answer within {timeout_s:.0f} s") from None
    if not line:
        raise ProtocolError("the daemon closed the connection without answering")
    try:
        message = json.loads(line)
    except ValueError as exc:
        raise ProtocolError(f"the daemon sent an unreadable line: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"the daemon sent an unreadable line: {line[:200]!r}")
    return message


# --- ci job (started by the post-receive hook, orchestrator/cihook.py) ----------


def _log(text: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(f"[{stamp}] {text}", flush=True)


def read_config(git_dir: Path) -> dict[str, str]:
    """Every ``orchestrator.*`` key of ``git_dir``'s git config, with one ``git config`` call.

    Keys as git prints them, lower-cased (``orchestrator.ciscript``); for a key set
    more than once the last value wins (as with ``git config --get``); values are
    stripped. Empty when none is set or git fails.
    """
    proc = subprocess.run(
        ["git", f"--git-dir={git_dir}", "config", "-z", "--get-regexp", r"^orchestrator\."],
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:  # 1: no key matches
        return {}
    config: dict[str, str] = {}
    for entry in proc.stdout.split(b"\0"):
        key, _, value = entry.decode(errors="replace").partition("\n")
        if key:
            config[key] = value.strip()
    return config


def job(git_dir: Path, sha: str, ref: str) -> int:
    """The detached CI job for one pushed commit; logs to stdout (``ci-status/<sha>.log``).

    Reads ``orchestrator.ciScript``, ``ciCommand``, ``ciTimeoutS``, ``socket`` and
    ``ciSetup`` from repo.git's git config (:func:`read_config`). Leaves
    ``ci-status/<sha>.json`` behind (ci.sh's, or an ``error`` status of its own, also
    when the job itself fails with an exception, whose traceback goes to the log; if
    even that cannot be written, the log says why), notifies the daemon and returns 0.
    """
    clean = without_git_env(os.environ)
    os.environ.clear()
    os.environ.update(clean)
    status_file = git_dir / "ci-status" / f"{sha}.json"
    started = time.time()
    socket_path = ""

    def fail(exit_code: int, message: str) -> None:
        from orchestrator.shared.cistatus import CIVerdict, make_status, write_status

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

    try:
        status_file.unlink(missing_ok=True)  # a status file that exists is final
        _log(f"CI for {sha} ({ref}) started")
        config = read_config(git_dir)
        socket_path = config.get("orchestrator.socket", "")
        ci_script = Path(config.get("orchestrator.ciscript") or git_dir.parent / "ci.sh")
        ci_command = config.get("orchestrator.cicommand", "")
        ci_timeout = config.get("orchestrator.citimeouts") or "600"
        if not ci_command:
            fail(2, "no CI command configured (git config orchestrator.ciCommand)")
        elif not ci_script.is_file():
            fail(2, f"CI script not found: {ci_script} (git config orchestrator.ciScript)")
        else:
            _run_script(
                git_dir, config, sha, ref, ci_script, ci_command, ci_timeout, status_file, fail
            )
    except Exception as exc:  # a bug or an unusable host: still a status for the daemon
        import traceback

        traceback.print_exc(file=sys.stdout)
        fail(1, f"the CI job failed: {type(exc).__name__}: {exc} (traceback in the log)")
    _notify_daemon(socket_path, sha)
    _log(f"CI for {sha} done")
    return 0


def _run_script(
    git_dir: Path,
    config: Mapping[str, str],
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
        setup_failed = _ci_setup(config.get("orchestrator.cisetup", ""), checkout)
        if setup_failed:
            fail(2, setup_failed)
            return
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
        if is_shipped_ci_sh(ci_script):
            # All the shipped template does is exec `$ORCH_PYTHON -m orchestrator.ci run`.
            _log(f"ci.sh ({ci_script}) is the shipped template: `ci run` in this process")
            rc = run(env, sys.stdout, cwd=checkout)
        else:
            runner = [str(ci_script)] if os.access(ci_script, os.X_OK) else ["bash", str(ci_script)]
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


def _ci_setup(raw: str, checkout: Path) -> str:
    """``ci.setup``: copy ``worktree.copy`` and run ``worktree.setup`` in the checkout, as
    recorded in git config ``orchestrator.ciSetup`` (JSON ``raw``; "" or ``{}``: nothing
    to do, and msgspec is not even imported); why it failed, or ""."""
    if raw.strip() in ("", "{}"):
        return ""
    import msgspec

    from orchestrator.shared.cistatus import decode_setup

    try:
        spec = decode_setup(raw)
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


def _notify_daemon(socket_path: str, sha: str) -> None:
    later = "the status file stays and is picked up when the daemon starts"
    if not socket_path or not Path(socket_path).is_socket():
        where = socket_path or "(orchestrator.socket unset)"
        _log(f"daemon socket {where} not available; {later}")
        return
    try:
        answer = notify(Path(socket_path), sha)
    except (DaemonNotRunning, ProtocolError) as exc:
        _log(f"daemon not notified ({exc}); {later}")
    else:
        _log(f"notified daemon at {socket_path}: {answer}")


def main(argv: list[str]) -> int:
    """``python -m orchestrator.ci job GIT_DIR SHA REF`` or ``... run`` (no argparse: a
    customised ci.sh starts ``run`` for every CI run); a wrong call gets the usage
    line on stderr and exit code 2."""
    match argv:
        case ["job", git_dir, sha, ref]:
            return job(Path(git_dir), sha, ref)
        case ["run"]:
            return run(os.environ)
        case _:
            print(f"orchestrator.ci: {USAGE}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
