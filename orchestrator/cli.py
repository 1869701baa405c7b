"""The ``orchestrator`` command line (argparse), dispatching lazily.

``cli(argv)`` returns an exit code so tests can call it directly; every
:class:`OrchestratorError` becomes one line on stderr and exit code 2. Heavy
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
from orchestrator.shared.models import TicketState


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


def _answer(reply: P.Reply) -> int:
    print(reply.message, file=sys.stdout if reply.ok else sys.stderr)
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
            print(str(exc), file=sys.stderr)
            bad += 1
        else:
            print(f"{name}: ok ({ticket.id}, P{ticket.priority})")
    return 1 if bad else 0


def cmd_status(args: argparse.Namespace) -> int:
    snapshot = _snapshot(args)
    if args.json:
        sys.stdout.write(msgspec.json.encode(snapshot).decode() + "\n")
        return 0
    now = time.time()
    print(f"{'AGENT':<10} {'STATE':<18} {'TICKET':<24} {'BRANCH':<32} ATTEMPT")
    for a in snapshot.agents:
        print(
            f"{a.name:<10} {a.state:<18} {a.ticket or '-':<24} {a.branch or '-':<32} "
            f"{a.attempt or '-'}"
        )
    print()
    print(f"{'TICKET':<24} {'STATE':<18} {'PRIO':<5} {'EFF':>6} {'AGENT':<9} {'AGE':>6}  REASON")
    for t in snapshot.tickets:
        age = _age(now - t.queued_at)
        reason = t.reason
        if t.state == TicketState.AWAITING_APPROVAL:
            reason += f" (merge: orchestrator approve {t.id})"
        print(
            f"{t.id:<24} {t.state:<18} P{t.priority:<4} {t.effective_priority:>6.2f} "
            f"{t.agent or '-':<9} {age:>6}  {reason}"
        )
    return 0


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.0f}h"


def cmd_locks(args: argparse.Namespace) -> int:
    snapshot = _snapshot(args)
    if args.json:
        sys.stdout.write(msgspec.json.encode(snapshot.leases).decode() + "\n")
        return 0
    now = time.time()
    print(f"{'PATH':<40} {'TICKET':<24} {'AGENT':<9} {'AGE':>6} {'EXPIRES':>8}")
    for lease in snapshot.leases:
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
            print(f"{name}: cannot read: {exc.strerror}", file=sys.stderr)
            bad += 1
            continue
        except TicketError as exc:
            print(str(exc), file=sys.stderr)
            bad += 1
            continue
        target = home.backlog / path.name
        if target.exists():
            print(
                f"{name}: {target} already exists; rename the file or change the id",
                file=sys.stderr,
            )
            bad += 1
            continue
        atomic_write(target, data)
        print(f"{ticket.id}: queued as {target}")
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


def _replay(args: argparse.Namespace) -> int:
    from orchestrator.daemon.store import Store

    home = _config(args)
    since = args.since
    since_id, since_ts = 0, 0.0
    if since.isdigit():
        since_id = int(since)
    else:
        from datetime import datetime

        try:
            since_ts = datetime.fromisoformat(since).timestamp()
        except ValueError:
            raise OrchestratorError(
                f"--since {since!r}: give an event id or an ISO 8601 time (e.g. 2026-11-21T10:00)"
            ) from None
    if not home.state_db.exists():
        raise OrchestratorError(f"{home.state_db}: no state yet (the daemon has not run)")
    store = Store(home.state_db)
    try:
        for event in store.events(since_id, since_ts):
            _print_event(event, args.json)
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
        return ci.hook(sys.stdin, Path(os.environ.get("GIT_DIR", ".")).resolve())
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
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--config", help="path of config.yaml (default $ORCH_CONFIG or ./config.yaml)"
        )
        return p

    p = sub.add_parser("init", help="create a project home")
    p.add_argument("dir")
    p.add_argument("--from", dest="source", required=True, help="git repository (path or URL)")
    p.add_argument(
        "--ci-command",
        default="python3 -m pytest -q",
        help="the repo's test command (default: %(default)s)",
    )
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--agent-command", help="agent argv as one shell-quoted string")
    p.add_argument(
        "--force",
        action="store_true",
        help="refresh config and hook of an existing home (deletes nothing)",
    )
    p.set_defaults(func=cmd_init)

    with_config(sub.add_parser("daemon", help="run the daemon")).set_defaults(func=cmd_daemon)

    p = with_config(sub.add_parser("validate", help="check ticket files"))
    p.add_argument("files", nargs="+")
    p.set_defaults(func=cmd_validate)

    p = with_config(sub.add_parser("status", help="tickets and agents"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = with_config(sub.add_parser("locks", help="held path locks (leases)"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_locks)

    for name, text in (
        ("approve", "merge a ticket that passed CI"),
        ("stop", "stop a ticket (its work stays on its branch)"),
        ("continue", "resume a stopped/failed ticket, or approve"),
    ):
        p = with_config(sub.add_parser(name, help=text))
        p.add_argument("ticket")
        p.set_defaults(func=cmd_ticket_command)
    p = with_config(sub.add_parser("reject", help="send a ticket back with feedback"))
    p.add_argument("ticket")
    p.add_argument("feedback")
    p.set_defaults(func=cmd_ticket_command)
    p = with_config(sub.add_parser("priority", help="change a ticket's priority (0..4)"))
    p.add_argument("ticket")
    p.add_argument("priority", type=int)
    p.set_defaults(func=cmd_ticket_command)

    p = with_config(
        sub.add_parser("enqueue", help="validate tickets and place them in the backlog")
    )
    p.add_argument("files", nargs="+")
    p.set_defaults(func=cmd_enqueue)

    p = with_config(sub.add_parser("events", help="follow the event stream, or replay it"))
    p.add_argument("--since", help="replay persisted events after an ID or since a time")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_events)

    p = with_config(sub.add_parser("report", help="Markdown summary of the run"))
    p.add_argument("--out")
    p.set_defaults(func=cmd_report)

    p = with_config(sub.add_parser("metrics", help="per-attempt metrics, tokens and cost"))
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="attempts and totals as JSON")
    fmt.add_argument("--csv", action="store_true", help="a row per attempt, then a TOTAL row")
    p.set_defaults(func=cmd_metrics)

    p = with_config(sub.add_parser("heartbeat", help="(inside an agent) report progress"))
    p.add_argument("--note", default="")
    p.set_defaults(func=cmd_heartbeat)

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
    p.add_argument("--timeout-s", type=float, default=600.0)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("ci", help="CI of pushed branches (used by ci.sh and the post-receive hook)")
    ci_sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    ci_sub.add_parser("run", help="run $CI_COMMAND here and write the status JSON (ci.sh)")
    ci_sub.add_parser("hook", help="post-receive: start CI for pushed agent branches")
    job = ci_sub.add_parser("job", help="(internal) the detached CI job of one commit")
    job.add_argument("git_dir")
    job.add_argument("sha")
    job.add_argument("ref")
    notify = with_config(ci_sub.add_parser("notify", help="tell the daemon a status is ready"))
    notify.add_argument("sha")
    notify.add_argument("--socket", help="the daemon's socket (default: from --config)")
    p.set_defaults(func=cmd_ci)

    p = sub.add_parser("schema", help="print the JSON Schema of a ticket or CI status file")
    p.add_argument("document", choices=["ticket", "ci-status"])
    p.set_defaults(func=cmd_schema)

    p = with_config(sub.add_parser("service", help="manage the systemd --user unit"))
    p.add_argument("action", choices=["install", "uninstall"])
    p.set_defaults(func=cmd_service)
    return parser


def cli(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except OrchestratorError as exc:
        print(f"orchestrator: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def main() -> None:
    sys.exit(cli())
