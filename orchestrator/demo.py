"""``orchestrator demo``: the whole pipeline on a sample project, offline, no LLM.

Copies examples/demo/project into a fresh git repository, creates a project
home for it with the bundled demo agent (which replays recorded changes per
ticket and attempt) and demo reviewer (which requests changes once, on
readme-examples, then approves: docs/review.md), starts a real daemon, drops
the sample tickets into the backlog, then shows the TUI (or, with
``--headless``, the event stream). One ticket's agent (``restock``) asks a
person a question: in the TUI the person answers it (``a``). With
``--headless --auto-approve`` the demo answers it itself with the ``answer``
command, runs to the end and exits 0 only when every ticket was merged into
main of repo.git with a linear history.

Without ``--dir`` everything lives in a temporary directory that is removed at
the end; ``--pace`` slows the demo agent down so a person can follow it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from orchestrator.daemon.git import git_sync
from orchestrator.daemon.home import init_home
from orchestrator.shared import protocol as P
from orchestrator.shared.assets import asset
from orchestrator.shared.client import Client
from orchestrator.shared.config import load_config
from orchestrator.shared.errors import OrchestratorError
from orchestrator.shared.models import FINAL_STATES, TicketState

DEMO_EXTRA_CONFIG = "heartbeat_interval_s: 1\nlease_ttl_s: 30\n"
#: What the headless demo answers when the demo agent asks (as a person would).
DEMO_ANSWER = "the online shop, after a return"


def prepare_demo(
    base: Path, auto_approve: bool, agent_delay_s: float = 0.2, runner: str = "local"
) -> Path:
    """Create the sample repo and its project home under ``base``; return config.yaml.

    ``runner``: ``local``, or ``ray``: the daemon starts a local Ray and runs every
    agent as a Ray actor, its git cache and worktrees under ``base/ray-cache``
    (docs/scale-out.md)."""
    source = base / "project"
    if not source.exists():
        shutil.copytree(
            asset("examples/demo/project"),
            source,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
        git_sync(source, "init", "--quiet", "--initial-branch=main")
        git_sync(source, "add", "-A")
        git_sync(source, "commit", "--quiet", "-m", "Sample inventory project")
    agent = [sys.executable, str(asset("examples/demo/demo_agent.py"))]
    # The demo reviewer requests changes once (on readme-examples), then approves.
    reviewer = [sys.executable, str(asset("examples/demo/demo_reviewer.py")), "{diff_file}"]
    review = json.dumps({"command": reviewer, "max_rounds": 2, "timeout_s": 60})
    ci = f"{_q(sys.executable)} -m unittest discover -s tests -q"
    config = init_home(
        base / "home",
        str(source),
        ci_command=ci,
        workers=3,
        agent_command=agent,
        approval="auto" if auto_approve else "manual",
        force=(base / "home" / "config.yaml").exists(),
        extra_config=DEMO_EXTRA_CONFIG
        + f"review: {review}\n"
        + (_ray_config(base) if runner == "ray" else ""),
        # the demo agent's pace (seconds between its progress lines)
        agent_env={"DEMO_AGENT_DELAY_S": str(agent_delay_s)},
    )
    return config


def _ray_config(base: Path) -> str:
    cache = str(base / "ray-cache")
    return f"runner: ray\nray: {{num_cpus: 0.5, wip_push_s: 5, cache_dir: {cache!r}}}\n"


def _q(path: str) -> str:
    import shlex

    return shlex.quote(path)


def start_daemon(config: Path, log_file: Path) -> subprocess.Popen[bytes]:
    """Start ``orchestrator daemon`` as a child process; wait until its socket answers.

    Raises:
        OrchestratorError: it exited or did not answer within 30 s (its log says why).
    """
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "daemon", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    socket_path = load_config(config).socket_path
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise OrchestratorError(f"the daemon exited with {proc.returncode}; see {log_file}")
        if _answers(socket_path):
            return proc
        time.sleep(0.05)
    proc.terminate()
    raise OrchestratorError(f"the daemon did not start within 30 s; see {log_file}")


def _answers(path: Path) -> bool:
    """True when a daemon accepts connections on ``path`` (a stale socket file does not)."""
    import socket

    with socket.socket(socket.AF_UNIX) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def stop_daemon(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def drop_tickets(backlog: Path) -> list[str]:
    """Copy the sample tickets into the backlog atomically; return their ids."""
    ids = []
    for ticket in sorted(asset("examples/demo/tickets").glob("*.yaml")):
        tmp = backlog / f".{ticket.name}.tmp"
        shutil.copyfile(ticket, tmp)
        os.replace(tmp, backlog / ticket.name)
        ids.append(ticket.stem)
    return ids


async def follow(
    config: Path,
    expected: int,
    timeout_s: float,
    quiet: bool = False,
    answer: str | None = None,
) -> dict[str, str]:
    """Print events until ``expected`` tickets are final (or failed); return id -> state.

    ``answer``: answer every question an agent asks with this text, through the same
    ``answer`` command a person sends (``orchestrator answer``, the TUI's ``a``); None
    prints how to answer instead.
    """
    socket_path = load_config(config).socket_path
    answered: set[tuple[str, float]] = set()
    states: dict[str, str] = {}
    async with Client(socket_path) as client:
        assert client.snapshot is not None
        states = {t.id: t.state for t in client.snapshot.tickets}
        async with asyncio.timeout(timeout_s):
            async for message in client.messages():
                if isinstance(message, P.Snapshot):
                    states = {t.id: t.state for t in message.tickets}
                    continue
                view = message.ticket_view
                if view is not None:
                    states[view.id] = view.state
                if not quiet and message.kind != "agent.output":
                    stamp = time.strftime("%H:%M:%S", time.localtime(message.ts))
                    print(f"{stamp} {message.kind:<17} {message.message}", flush=True)
                if message.kind == P.EventKind.QUESTION_ASKED and view is not None:
                    if answer is None:
                        print(
                            f"demo: {view.id} waits for a person: "
                            f"orchestrator answer {view.id} TEXT --config {config}",
                            flush=True,
                        )
                    elif (view.id, view.asked_at or 0.0) not in answered:
                        answered.add((view.id, view.asked_at or 0.0))
                        await _answer(socket_path, view.id, answer)
                done = [s for s in states.values() if s in FINAL_STATES or s == TicketState.FAILED]
                if len(states) >= expected and len(done) == len(states):
                    return states
    return states


async def _answer(socket_path: Path, ticket: str, text: str) -> None:
    """Answer ``ticket``'s question as a person would (the ``answer`` command)."""
    from orchestrator.shared.client import request

    print(
        f"demo: answering {ticket}'s question automatically with {text!r} (a person would "
        f"press a in the TUI or run `orchestrator answer {ticket} TEXT`)",
        flush=True,
    )
    command = P.Answer(ticket=ticket, text=text, client="demo")
    reply = await asyncio.to_thread(request, socket_path, command)
    print(f"demo: {'answered' if reply.ok else 'answer refused'}: {reply.message}", flush=True)


def check_main(repo: Path, ids: list[str]) -> list[str]:
    """Problems with main in repo.git: non-linear history, a ticket missing or twice."""
    problems = []
    merges = git_sync(repo, "rev-list", "--merges", "main")
    if merges:
        problems.append("main has merge commits (history is not linear)")
    log = git_sync(repo, "log", "--format=%B%x00", "main")
    for ticket_id in ids:
        count = sum(1 for body in log.split("\x00") if f"Ticket: {ticket_id}\n" in body + "\n")
        if count != 1:
            problems.append(f"{ticket_id}: in main {count} times (expected once)")
    return problems


#: Seconds between the demo agent's progress lines by default.
DEFAULT_PACE_S = 0.2


def run_demo(
    directory: Path | None,
    headless: bool,
    auto_approve: bool,
    timeout_s: float = 600.0,
    pace_s: float = DEFAULT_PACE_S,
    runner: str = "local",
) -> int:
    """Run the demo; returns the exit code (0: every ticket merged, headless only).

    Args:
        directory: keep the demo project here; None: a temporary directory,
            removed at the end.
        pace_s: seconds between the demo agent's steps (larger is easier to follow).
        runner: ``local`` or ``ray`` (agents on a local Ray cluster the daemon starts).
    """
    base = directory.resolve() if directory else Path(tempfile.mkdtemp(prefix="orch-demo-"))
    try:
        return _run(base, headless, auto_approve, timeout_s, pace_s, runner)
    finally:
        if directory is None:
            shutil.rmtree(base, ignore_errors=True)
            print(f"removed {base} (use --dir to keep the demo project)")


def _run(
    base: Path, headless: bool, auto_approve: bool, timeout_s: float, pace_s: float, runner: str
) -> int:
    base.mkdir(parents=True, exist_ok=True)
    config = prepare_demo(base, auto_approve, agent_delay_s=pace_s, runner=runner)
    home = load_config(config)
    print(f"demo project home: {home.root}")
    proc = start_daemon(config, base / "daemon.log")
    try:
        ids = drop_tickets(home.backlog)
        print(f"dropped {len(ids)} tickets into {home.backlog}")
        if not headless:
            from orchestrator.tui.app import run

            return run(home.socket_path, settings=home.config.tui)
        if not auto_approve:
            print(
                "approval is manual: approve with "
                f"`orchestrator approve TICKET --config {config}` (or run the TUI); "
                "answer a question with `orchestrator answer TICKET TEXT`"
            )
        answer = DEMO_ANSWER if auto_approve else None
        states = asyncio.run(follow(config, len(ids), timeout_s, answer=answer))
    except TimeoutError:
        print(f"demo: not finished within {timeout_s:.0f} s", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        stop_daemon(proc)
    print("\nsummary:")
    for ticket_id, state in sorted(states.items()):
        print(f"  {ticket_id:<20} {state}")
    problems = check_main(home.repo, ids)
    not_merged = [i for i, s in states.items() if s != TicketState.MERGED]
    for problem in problems:
        print(f"  problem: {problem}")
    head = git_sync(home.repo, "log", "--oneline", "main")
    print(f"\nmain in {home.repo}:\n{head}")
    ok = not problems and not not_merged and len(states) == len(ids)
    print("\ndemo: every ticket merged into main" if ok else "\ndemo: FAILED")
    return 0 if ok else 1
