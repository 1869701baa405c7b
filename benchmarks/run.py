"""``python -m benchmarks [--quick] [--json] [--only NAME ...]``: run the benchmarks.

Each benchmark module has ``run(quick) -> list[Figure]`` and starts what it
measures itself (usually a real daemon on a temporary project). The table goes
to stdout; with ``--json`` stdout has one JSON object per figure instead
(name, value, unit, target, floor and ratio where one is measured, verdict).
Progress and errors go to stderr. Exit status: 0 when every benchmark ran,
whatever the figures (they are measurements, not tests); 1 when one could not
run; 2 on bad arguments. docs/performance.md describes every figure.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import signal
import sys
import time
import traceback

from benchmarks.harness import Figure, machine

#: Module names under benchmarks/, in the order they run (issue order).
BENCHMARKS = [
    "intake",
    "burst",
    "scheduling",
    "fanout",
    "ci_path",
    "idle",
    "commands",
    "tui",
    "patterns",
    "throughput",
]
#: Run only when named with ``--only`` (they start more than a daemon: ``ray`` starts
#: a two-node Ray cluster and needs ``orchestrator[ray]``).
ON_REQUEST = ["ray"]


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description="Run the performance benchmarks."
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smaller counts and shorter windows (~90 s; what CI runs)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per figure")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=BENCHMARKS + ON_REQUEST,
        metavar="NAME",
        help=f"run only these: {', '.join(BENCHMARKS + ON_REQUEST)} ({', '.join(ON_REQUEST)}: "
        "only when named)",
    )
    args = parser.parse_args(argv)
    # SIGTERM (a CI timeout, kill) unwinds like Ctrl-C, so every daemon started is stopped
    # and every temporary project removed.
    signal.signal(signal.SIGTERM, _terminate)
    info = machine()
    print(
        f"machine: {info['nproc']} cores, {info['cpu']}, Python {info['python']}, "
        f"Linux {info['kernel']}, {info['date']}",
        file=sys.stderr,
    )
    figures: list[Figure] = []
    failed = []
    for name in args.only or BENCHMARKS:
        print(f"[{name}] running{' (quick)' if args.quick else ''}...", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        try:
            module = importlib.import_module(f"benchmarks.{name}")
            got = module.run(args.quick)
        except Exception:
            failed.append(name)
            print(f"[{name}] could not run:\n{traceback.format_exc()}", file=sys.stderr)
            continue
        print(f"[{name}] done in {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
        figures += got
        if args.json:
            for figure in got:
                print(json.dumps(figure.to_json()), flush=True)
    if not args.json:
        print(table(figures))
    if failed:
        print(f"could not run: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _num(x: float | None) -> str:
    if x is None:
        return ""
    if math.isnan(x):
        return "nan"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.3g}" if abs(x) < 1 else f"{x:.2f}"


def table(figures: list[Figure]) -> str:
    """The figures as a Markdown table (name, value, unit, target, floor, verdict)."""
    rows = [("figure", "value", "unit", "target", "floor (ratio)", "verdict")]
    for f in figures:
        target = "" if f.target is None else ("≥ " if f.higher_is_better else "≤ ") + _num(f.target)
        floor = ""
        if f.floor is not None:
            ratio = f.ratio
            floor = _num(f.floor) + (f" (x{ratio:.1f})" if ratio is not None else "")
        value = ("> " if f.lower_bound else "") + _num(f.value)
        rows.append((f.name, value, f.unit, target, floor, f.verdict))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for k, row in enumerate(rows):
        cells = [
            c.ljust(w) if i in (0, 2, 5) else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("| " + " | ".join(cells) + " |")
        if k == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
