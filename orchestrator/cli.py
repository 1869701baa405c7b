"""The ``orchestrator`` command line (argparse), dispatching lazily.

``cli(argv)`` returns an exit code so tests can call it directly; every
:class:`OrchestratorError` becomes one line on stderr and exit code 2. Every
error line starts with :data:`ERROR_PREFIX`, whether the problem was found here
or by the daemon. A closed stdout (``orchestrator events | head -1``) ends the
command quietly. Heavy
modules (the daemon, textual) are imported only by the subcommands that need
them, so ``orchestrator status`` stays fast and the daemon never imports textual.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import msgspec

from orchestrator.shared import protocol as P
from orchestrator.shared.config import Home, default_config_path, load_config
from orchestrator.shared.errors import OrchestratorError, TicketError
from orchestrator.shared.models import FINAL_STATES, LeaseView, TicketState
from orchestrator.shared.terminal import sanitize_message, terminal_safe

#: The start of every error line the command prints.
ERROR_PREFIX = "orchestrator: "


def _error(text: str) -> None:
    print(f"{ERROR_PREFIX}{terminal_safe(text)}", file=sys.stderr)


def _config(args: argparse.Namespace) -> Home:
    return load_config(Path(args.config) if args.config else default_config_path())


def _request(args: argparse.Namespace, command: P.Command) -> P.Reply:
    from orchestrator.shared.client import request

    if command.client is None:
        command = msgspec.structs.replace(command, client="cli")
    return request(_config(args).socket_path, command)


def _snapshot(args: argparse.Namespace) -> P.Snapshot:
    from orchestrator.shared.client import request

    return request(_config(args).socket_path, P.Status()).snapshot


class _RawStatus(msgspec.Struct):
    """A status reply whose snapshot is kept as the daemon's JSON (not decoded)."""

    ok: bool
    message: str = ""
    snapshot: msgspec.Raw = msgspec.field(default_factory=lambda: msgspec.Raw(b""))


class _LeasesOnly(msgspec.Struct):
    """The part of a snapshot ``locks`` needs; msgspec skips the tickets unparsed."""

    leases: list[LeaseView]


def _raw_snapshot(args: argparse.Namespace, tickets: bool = True) -> msgspec.Raw:
    """The daemon's snapshot JSON, undecoded (100,000 tickets: 40 MB, decoded in ~1 s).

    ``tickets=False`` asks for agents and leases only.
    """
    from orchestrator.shared.client import request_line

    line = request_line(_config(args).socket_path, P.Status(client="cli", tickets=tickets))
    try:
        reply = msgspec.json.decode(line, type=_RawStatus)
    except msgspec.DecodeError as exc:
        raise OrchestratorError(f"the daemon sent an unreadable status: {exc}") from None
    if not reply.ok or not len(reply.snapshot):
        raise OrchestratorError(reply.message or "the daemon sent no snapshot")
    return reply.snapshot


def _answer(reply: P.Reply) -> int:
    if reply.ok:
        print(terminal_safe(reply.message))
    else:
        _error(reply.message)
    return 0 if reply.ok else 1


# --- subcommands -------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    import shlex

    from orchestrator.daemon.home import init_home

    agent = shlex.split(args.agent_command) if args.agent_command else None
    config = init_home(
        Path(args.dir),
        args.source,
        ci_command=args.ci_command,
        workers=args.workers,
        agent_command=agent,
        force=args.force,
    )
    print(f"created {config}")
    print(f"  edit agent.command there, then run: orchestrator daemon --config {config}")
    print(f"  drop ticket YAML files into {config.parent / 'backlog'}")
    return 0


def cmd_daemon(args: argparse.Namespace) -> int:
    from orchestrator.daemon.service import main

    return main(_config(args))


def cmd_validate(args: argparse.Namespace) -> int:
    from orchestrator.shared.models import load_ticket

    bad = 0
    for name in args.files:
        try:
            ticket = load_ticket(Path(name))
        except TicketError as exc:
            _error(str(exc))
            bad += 1
        else:
            print(f"{name}: ok ({ticket.id}, P{ticket.priority})")
    return 1 if bad else 0


def cmd_status(args: argparse.Namespace) -> int:
    if args.json:  # passed through as the daemon wrote it
        out = sys.stdout.buffer
        out.write(_raw_snapshot(args))  # 40 MB with 100,000 tickets: not copied
        out.write(b"\n")
        return 0
    snapshot = _snapshot(args)
    now = time.time()
    print(f"{'AGENT':<10} {'STATE':<18} {'TICKET':<24} {'BRANCH':<32} ATTEMPT")
    for a in snapshot.agents:
        print(
            f"{a.name:<10} {a.state:<18} {a.ticket or '-':<24} {a.branch or '-':<32} "
            f"{a.attempt or '-'}" + (f"  on {a.host} (Ray node {a.node[:12]})" if a.node else "")
        )
    print()
    print(f"{'TICKET':<24} {'STATE':<18} {'PRIO':<5} {'EFF':>6} {'AGENT':<9} {'AGE':>6}  REASON")
    for t in snapshot.tickets:
        age = _age(now - t.queued_at)
        reason = t.reason
        if t.state == TicketState.AWAITING_APPROVAL:
            reason += f" (merge: orchestrator approve {t.id})"
        elif t.state == TicketState.NEEDS_INPUT:
            reason += f" (answer: orchestrator answer {t.id} TEXT)"
        print(
            f"{t.id:<24} {t.state:<18} P{t.priority:<4} {t.effective_priority:>6.2f} "
            f"{t.agent or '-':<9} {age:>6}  {reason}"
        )
    reviewed = [t for t in snapshot.tickets if t.review is not None and t.state not in FINAL_STATES]
    if reviewed:
        print()
        print(f"{'REVIEW':<24} RESULT")
        for t in reviewed:
            assert t.review is not None
            print(f"{t.id:<24} {t.review.summary()}")
            for line in t.review.comment_lines():
                print(f"{'':<24}   {line}")
    queue = sorted(
        (t for t in snapshot.tickets if t.queue_position is not None),
        key=lambda t: t.queue_position or 0,
    )
    if queue:
        print()
        print(f"{'MERGE QUEUE':<24} {'STACKED ON':<24} {'COMMIT':<12} CI")
        for t in queue:
            ci = t.ci.status if t.ci is not None and t.ci.sha == t.queue_sha else "-"
            print(
                f"{t.queue_position}. {t.id:<21} {t.stacked_on or '(waiting)':<24} "
                f"{(t.queue_sha or '-')[:10]:<12} {ci}"
            )
    return 0


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.0f}h"


def cmd_locks(args: argparse.Namespace) -> int:
    raw = _raw_snapshot(args, tickets=False)
    leases = sanitize_message(msgspec.json.decode(raw, type=_LeasesOnly).leases)
    if args.json:
        sys.stdout.write(msgspec.json.encode(leases).decode() + "\n")
        return 0
    now = time.time()
    print(f"{'PATH':<40} {'TICKET':<24} {'AGENT':<9} {'AGE':>6} {'EXPIRES':>8}")
    for lease in leases:
        expires = "reserved" if lease.reserved else _age(lease.expires_at - now)
        print(
            f"{lease.path:<40} {lease.ticket:<24} {lease.agent or '-':<9} "
            f"{_age(now - lease.acquired_at):>6} {expires:>8}"
        )
    return 0


def cmd_ticket_command(args: argparse.Namespace) -> int:
    command: P.Command
    if args.command == "approve":
        command = P.Approve(ticket=args.ticket)
    elif args.command == "stop":
        command = P.Stop(ticket=args.ticket)
    elif args.command == "continue":
        command = P.Continue(ticket=args.ticket)
    elif args.command == "reject":
        command = P.Reject(ticket=args.ticket, feedback=args.feedback)
    else:
        command = P.SetPriority(ticket=args.ticket, priority=args.priority)
    return _answer(_request(args, command))


def cmd_enqueue(args: argparse.Namespace) -> int:
    """Validate each file here, then ask the running daemon to take it; report its verdict.

    The daemon refuses a ticket whose id or file name it already has. With no
    daemon running, the file is placed in the backlog directly (the daemon reads
    it when it starts) and the command says so.
    """
    from orchestrator.shared.client import request
    from orchestrator.shared.errors import DaemonNotRunning
    from orchestrator.shared.fsutil import atomic_write
    from orchestrator.shared.models import parse_ticket

    home = _config(args)
    bad = 0
    for name in args.files:
        path = Path(name)
        try:
            data = path.read_bytes()
            ticket = parse_ticket(data, path)
        except OSError as exc:
            _error(f"{name}: cannot read: {exc.strerror}")
            bad += 1
            continue
        except TicketError as exc:
            _error(str(exc))
            bad += 1
            continue
        command = P.Enqueue(name=path.name, yaml=data.decode(), client="cli")
        try:
            reply = request(home.socket_path, command)
        except DaemonNotRunning:
            target = home.backlog / path.name
            if target.exists():
                _error(f"{name}: {target} already exists; rename the file or change the id")
                bad += 1
                continue
            atomic_write(target, data)
            print(f"{ticket.id}: placed in {target} (no daemon running; it is read at start)")
            continue
        if reply.ok:
            print(reply.message)
        else:
            _error(reply.message)
            bad += 1
    return 1 if bad else 0


def cmd_events(args: argparse.Namespace) -> int:
    if args.since is not None:
        return _replay(args)
    import asyncio

    from orchestrator.shared.client import Client

    async def follow() -> None:
        async with Client(_config(args).socket_path) as client:
            async for message in client.messages():
                if isinstance(message, P.Event):
                    _print_event(message, args.json)

    try:
        asyncio.run(follow())
    except KeyboardInterrupt:
        pass
    return 0


def _print_event(event: P.Event, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(msgspec.json.encode(event).decode() + "\n")
    elif event.kind == P.EventKind.AGENT_OUTPUT:
        for line in (event.text or "").splitlines():
            print(f"{time.strftime('%H:%M:%S', time.localtime(event.ts))} {event.agent}> {line}")
    else:
        print(
            f"{time.strftime('%H:%M:%S', time.localtime(event.ts))} {event.kind:<16} "
            f"{event.message}"
        )
    sys.stdout.flush()


#: Digits this large are a Unix time, not an event id (ids count from 1).
_UNIX_TIME_MIN = 1_000_000_000
_RELATIVE_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: float) -> tuple[int, float]:
    """``events --since``: ``(after_event_id, since_unix_s)``, one of them set.

    Accepts an event id (``1234``), a relative time (``90s``, ``5m``, ``2h``,
    ``1d``), a clock time today (``HH:MM`` or ``HH:MM:SS``, local time) or an
    ISO 8601 time (``2026-11-21T10:00``, ``2026-11-21 10:00:00+01:00``, local
    time when no offset is given).

    Raises:
        OrchestratorError: anything else, or digits that look like a Unix time
            (refused rather than silently read as an id).
    """
    import re
    from datetime import datetime

    text = text.strip()
    hint = "give an event id, 5m / 2h (ago), HH:MM[:SS] (today) or an ISO 8601 time"
    if text.isdigit():
        if int(text) >= _UNIX_TIME_MIN:
            raise OrchestratorError(
                f"--since {text}: looks like a Unix time, not an event id; "
                "give the time as ISO 8601 (e.g. 2026-11-21T10:00)"
            )
        return int(text), 0.0
    relative = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd])", text)
    if relative:
        return 0, now - float(relative.group(1)) * _RELATIVE_UNITS_S[relative.group(2)]
    clock = re.fullmatch(r"(\d{1,2}):(\d{2})(?::(\d{2}))?", text)
    if clock:
        hour, minute, second = (int(g or 0) for g in clock.groups())
        if hour > 23 or minute > 59 or second > 59:
            raise OrchestratorError(f"--since {text}: not a time of day; {hint}")
        today = datetime.fromtimestamp(now)
        return 0, today.replace(hour=hour, minute=minute, second=second, microsecond=0).timestamp()
    try:
        return 0, datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise OrchestratorError(f"--since {text!r}: {hint}") from None


def _replay(args: argparse.Namespace) -> int:
    from orchestrator.daemon.store import Store

    home = _config(args)
    since_id, since_ts = parse_since(args.since, time.time())
    if not home.state_db.exists():
        raise OrchestratorError(f"{home.state_db}: no state yet (the daemon has not run)")
    store = Store(home.state_db)
    try:
        for event in store.events(since_id, since_ts):
            _print_event(sanitize_message(event), args.json)
    finally:
        store.close()
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from orchestrator.daemon.report import write_report

    text = write_report(_config(args))
    if args.out:
        from orchestrator.shared.fsutil import atomic_write

        atomic_write(Path(args.out), text)
        print(f"wrote {args.out}")
    else:
        sys.stdout.write(text)
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    from orchestrator.daemon.metrics import attempts_csv, read_metrics, render_text

    metrics = read_metrics(_config(args))
    if args.json:
        sys.stdout.write(msgspec.json.encode(metrics).decode() + "\n")
    elif args.csv:
        sys.stdout.write(attempts_csv(metrics))
    else:
        sys.stdout.write(render_text(metrics))
    return 0


def cmd_heartbeat(args: argparse.Namespace) -> int:
    ticket = os.environ.get("ORCH_TICKET_ID")
    if not ticket:
        raise OrchestratorError("ORCH_TICKET_ID is not set: run this inside an agent's worktree")
    if not args.config and os.environ.get("ORCH_CONFIG"):
        args.config = os.environ["ORCH_CONFIG"]
    return _answer(_request(args, P.Heartbeat(ticket=ticket, note=args.note)))


#: ``orchestrator ask`` exit codes (docs/protocol.md#asking-a-person, README).
ASK_ANSWERED = 0
ASK_REFUSED = 1
"""The daemon refused the question (ticket not running, not this attempt's agent, empty
question...) or closed it without an answer (the ticket was stopped)."""
ASK_NOT_IN_AGENT = 2
"""Not run inside an agent (no ``ORCH_TICKET_ID``/``ORCH_RUN_ID``), or no usable config."""
ASK_TIMED_OUT = 3
ASK_NO_DAEMON = 4
"""No daemon answers, or the connection to it was lost before an answer."""


def cmd_ask(args: argparse.Namespace) -> int:
    """Ask a person from inside an agent; print the answer. Exit codes: ``ASK_*``."""
    from orchestrator.shared.client import request
    from orchestrator.shared.errors import DaemonNotRunning, ProtocolError

    ticket = os.environ.get("ORCH_TICKET_ID")
    run_id = os.environ.get("ORCH_RUN_ID")
    if not ticket or not run_id:
        _error(
            "ORCH_TICKET_ID and ORCH_RUN_ID are not set: `ask` runs inside an agent "
            "started by the daemon (a person answers with `orchestrator answer`)"
        )
        return ASK_NOT_IN_AGENT
    if args.timeout_s is not None and args.timeout_s <= 0:
        _error("--timeout-s must be more than 0")
        return ASK_NOT_IN_AGENT
    if not args.config and os.environ.get("ORCH_CONFIG"):
        args.config = os.environ["ORCH_CONFIG"]
    try:
        home = _config(args)
    except OrchestratorError as exc:
        _error(str(exc))
        return ASK_NOT_IN_AGENT
    command = P.Ask(
        ticket=ticket, question=args.question, run_id=run_id, timeout_s=args.timeout_s, client="cli"
    )
    try:
        reply = request(home.socket_path, command, timeout_s=None)
    except (DaemonNotRunning, ProtocolError) as exc:
        _error(f"{exc} (no answer)")
        return ASK_NO_DAEMON
    if isinstance(reply, P.AskReply) and reply.ok and reply.answer is not None:
        sys.stdout.write(reply.answer + "\n")
        return ASK_ANSWERED
    if isinstance(reply, P.AskReply) and reply.timed_out:
        _error(f"no answer within {args.timeout_s:g} s; the question is withdrawn")
        return ASK_TIMED_OUT
    _error(reply.message)
    return ASK_REFUSED


def cmd_answer(args: argparse.Namespace) -> int:
    return _answer(_request(args, P.Answer(ticket=args.ticket, text=args.text)))


def cmd_questions(args: argparse.Namespace) -> int:
    from orchestrator.shared.client import request

    reply = request(_config(args).socket_path, P.Questions(client="cli"))
    if not isinstance(reply, P.QuestionsReply) or not reply.ok:
        raise OrchestratorError(reply.message or "the daemon sent no questions")
    questions = sanitize_message(reply.questions)
    if args.json:
        sys.stdout.write(msgspec.json.encode(questions).decode() + "\n")
        return 0
    if not questions:
        print("no open questions")
        return 0
    now = time.time()
    for q in questions:
        waits = q.agent if q.waiting else f"{q.agent} ended; the answer goes to the next attempt"
        print(f"{q.ticket} ({q.title}), asked {_age(now - q.asked_at)} ago by {waits}:")
        for line in q.question.splitlines() or [""]:
            print(f"    {line}")
        print(f"  answer: orchestrator answer {q.ticket} TEXT")
    return 0


def cmd_tui(args: argparse.Namespace) -> int:
    from orchestrator.tui.app import run

    home = _config(args)
    return run(home.socket_path, settings=home.config.tui, wait_s=args.wait_s)


def cmd_demo(args: argparse.Namespace) -> int:
    from orchestrator.demo import run_demo

    return run_demo(
        Path(args.dir) if args.dir else None,
        headless=args.headless,
        auto_approve=args.auto_approve,
        timeout_s=args.timeout_s,
        pace_s=args.pace,
        runner=args.runner,
    )


def cmd_service(args: argparse.Namespace) -> int:
    from orchestrator.daemon.unit import install, uninstall

    if args.action == "install":
        return install(_config(args))
    return uninstall()


def cmd_ci(args: argparse.Namespace) -> int:
    from orchestrator import ci

    if args.action == "run":
        return ci.run(os.environ)
    if args.action == "hook":
        from orchestrator import cihook

        return cihook.main()
    if args.action == "job":
        return ci.job(Path(args.git_dir), args.sha, args.ref)
    socket_path = Path(args.socket) if args.socket else _config(args).socket_path
    print(ci.notify(socket_path, args.sha))
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    if args.document == "ticket":
        from orchestrator.shared.models import ticket_schema

        schema = ticket_schema()
    else:
        from orchestrator.shared.cistatus import status_schema

        schema = status_schema()
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(schema), indent=2).decode() + "\n")
    return 0


# --- parser -------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orchestrator", description="Run a team of AI coding agents on one repo."
    )
    from orchestrator import __version__

    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}", help="print the version"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--config", help="path of config.yaml (default $ORCH_CONFIG or ./config.yaml)"
        )
        return p

    p = sub.add_parser("init", help="create a project home")
    p.add_argument("dir", help="the project home to create (a new or empty directory)")
    p.add_argument(
        "--from",
        dest="source",
        required=True,
        help="git repository to work on: a path (relative paths are fine) or a URL",
    )
    p.add_argument(
        "--ci-command",
        default="python3 -m pytest -q",
        help="the repo's test command (default: %(default)s)",
    )
    p.add_argument("--workers", type=int, default=3, help="number of agents (default: %(default)s)")
    p.add_argument("--agent-command", help="agent argv as one shell-quoted string")
    p.add_argument(
        "--force",
        action="store_true",
        help="refresh config and hook of an existing home (deletes nothing)",
    )
    p.set_defaults(func=cmd_init)

    with_config(sub.add_parser("daemon", help="run the daemon")).set_defaults(func=cmd_daemon)

    p = with_config(sub.add_parser("validate", help="check ticket files"))
    p.add_argument("files", nargs="+", help="ticket YAML files")
    p.set_defaults(func=cmd_validate)

    p = with_config(sub.add_parser("status", help="tickets and agents"))
    p.add_argument("--json", action="store_true", help="the whole snapshot as one JSON object")
    p.set_defaults(func=cmd_status)

    p = with_config(sub.add_parser("locks", help="held path locks (leases)"))
    p.add_argument("--json", action="store_true", help="the leases as one JSON array")
    p.set_defaults(func=cmd_locks)

    for name, text in (
        ("approve", "merge a ticket that passed CI"),
        ("stop", "stop a ticket (its work stays on its branch)"),
        ("continue", "resume a stopped/failed ticket, or approve"),
    ):
        p = with_config(sub.add_parser(name, help=text))
        p.add_argument("ticket", help="ticket id")
        p.set_defaults(func=cmd_ticket_command)
    p = with_config(sub.add_parser("reject", help="send a ticket back with feedback"))
    p.add_argument("ticket", help="ticket id (it must be awaiting approval)")
    p.add_argument("feedback", help="what the next attempt should do differently")
    p.set_defaults(func=cmd_ticket_command)
    p = with_config(sub.add_parser("priority", help="change a ticket's priority (0..4)"))
    p.add_argument("ticket", help="ticket id")
    p.add_argument("priority", type=int, help="0 (most urgent) .. 4")
    p.set_defaults(func=cmd_ticket_command)

    p = with_config(
        sub.add_parser("enqueue", help="validate tickets and place them in the backlog")
    )
    p.add_argument("files", nargs="+", help="ticket YAML files")
    p.set_defaults(func=cmd_enqueue)

    p = with_config(sub.add_parser("events", help="follow the event stream, or replay it"))
    p.add_argument(
        "--since",
        metavar="WHEN",
        help="replay saved events instead of following: after an event id (1234), "
        "for a while (5m, 2h, 1d), since a clock time today (HH:MM[:SS]) or an ISO 8601 time",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_events)

    p = with_config(sub.add_parser("report", help="Markdown summary of the run"))
    p.add_argument("--out", help="write the report to this file instead of stdout")
    p.set_defaults(func=cmd_report)

    p = with_config(sub.add_parser("metrics", help="per-attempt metrics, tokens and cost"))
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="attempts and totals as JSON")
    fmt.add_argument("--csv", action="store_true", help="a row per attempt, then a TOTAL row")
    p.set_defaults(func=cmd_metrics)

    p = with_config(sub.add_parser("heartbeat", help="(inside an agent) report progress"))
    p.add_argument("--note", default="", help="what the agent is doing (shown in the TUI)")
    p.set_defaults(func=cmd_heartbeat)

    p = with_config(
        sub.add_parser(
            "ask",
            help="(inside an agent) ask a person; prints the answer",
            description="Put the agent's ticket in needs_input until a person answers "
            "(orchestrator answer, or the TUI), then print the answer. Exit codes: 0 answered, "
            "1 refused or closed without an answer (e.g. the ticket was stopped), 2 not run "
            "inside an agent, 3 timed out, 4 no daemon (or the connection was lost).",
        )
    )
    p.add_argument("question", help="the question for a person")
    p.add_argument(
        "--timeout-s",
        type=float,
        default=None,
        help="give up after this many seconds: the question is withdrawn, exit code 3 "
        "(default: wait until answered)",
    )
    p.set_defaults(func=cmd_ask)

    p = with_config(sub.add_parser("answer", help="answer the question a ticket's agent asked"))
    p.add_argument("ticket", help="ticket id (it must be needs_input)")
    p.add_argument("text", help="the answer")
    p.set_defaults(func=cmd_answer)

    p = with_config(sub.add_parser("questions", help="the agents' open questions"))
    p.add_argument("--json", action="store_true", help="the questions as one JSON array")
    p.set_defaults(func=cmd_questions)

    p = with_config(sub.add_parser("tui", help="open the terminal UI"))
    p.add_argument(
        "--wait-s",
        type=float,
        default=30.0,
        help="how long to wait for a daemon that is starting (default: %(default)s s)",
    )
    p.set_defaults(func=cmd_tui)

    p = sub.add_parser("demo", help="run the self-contained demo")
    p.add_argument("--dir", help="keep the demo project here (default: a temporary dir)")
    p.add_argument("--headless", action="store_true", help="print events instead of the TUI")
    p.add_argument("--auto-approve", action="store_true", help="merge whatever passes CI")
    p.add_argument(
        "--pace",
        type=float,
        default=0.2,
        metavar="SECONDS",
        help="seconds between the demo agent's steps (default: %(default)s; 2 is easy to follow)",
    )
    p.add_argument(
        "--timeout-s",
        type=float,
        default=600.0,
        help="give up after this many seconds (default: %(default)s)",
    )
    p.add_argument(
        "--runner",
        choices=("local", "ray"),
        default="local",
        help="where the agents run: local processes, or a local Ray cluster the daemon "
        "starts (needs `pip install 'orchestrator[ray]'`; docs/scale-out.md)",
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("ci", help="CI of pushed branches (used by ci.sh and the post-receive hook)")
    ci_sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    ci_sub.add_parser("run", help="run $CI_COMMAND here and write the status JSON (ci.sh)")
    ci_sub.add_parser("hook", help="post-receive: start CI for pushed agent branches")
    job = ci_sub.add_parser("job", help="(internal) the detached CI job of one commit")
    job.add_argument("git_dir", help="the bare repository")
    job.add_argument("sha", help="the pushed commit")
    job.add_argument("ref", help="the pushed ref")
    notify = with_config(ci_sub.add_parser("notify", help="tell the daemon a status is ready"))
    notify.add_argument("sha", help="the commit whose status file is ready")
    notify.add_argument("--socket", help="the daemon's socket (default: from --config)")
    p.set_defaults(func=cmd_ci)

    p = sub.add_parser("schema", help="print the JSON Schema of a ticket or CI status file")
    p.add_argument("document", choices=["ticket", "ci-status"], help="which file format")
    p.set_defaults(func=cmd_schema)

    p = with_config(sub.add_parser("service", help="manage the systemd --user unit"))
    p.add_argument("action", choices=["install", "uninstall"], help="what to do")
    p.set_defaults(func=cmd_service)
    return parser


def cli(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = int(args.func(args))
        sys.stdout.flush()
        return code
    except OrchestratorError as exc:
        _error(str(exc))
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`| head -1`): stop quietly. Point stdout at /dev/null
        # so the interpreter's final flush does not fail again (Python docs, "Note on SIGPIPE").
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports a command killed by it


def main() -> None:
    sys.exit(cli())
