#!/usr/bin/env python3
"""A scripted stand-in for an LLM coding agent, launched as a real process.

It reads its ticket (ORCH_TICKET_FILE) and runs the ticket's description as a
tiny script, one command per line; a line prefixed ``aN:`` runs only on attempt N:

    write PATH TEXT...      create/overwrite PATH with TEXT (\\n becomes a newline)
    append PATH TEXT...     append TEXT and a newline
    print TEXT...           print a line
    sleep SECONDS           sleep (silently)
    spin SECONDS            print a line every 0.2 s for SECONDS
    spin-once SECONDS       the same, but not when this attempt is re-run after a restart
    heartbeat NOTE...       run `orchestrator heartbeat --note NOTE`
    sigstop                 SIGSTOP itself (a hung agent)
    child SECONDS           start a grandchild that sleeps (pid in child.pid beside the prompt)
    setsid-child SECONDS    the same, in a new session (setsid), out of the agent's group
    run ARGV...             run a command (split like a shell, no shell); print its exit
    usage JSON...           print the generic usage line ``ORCH_USAGE JSON``
    cat PATH                print a file (e.g. a recorded agent transcript)
    usage-file TEXT...      append a line to $ORCH_USAGE_FILE (the {usage_file})
    ask PATH QUESTION...    run `orchestrator ask QUESTION` (\\n becomes a newline) and write its
                            answer to PATH, or ``exit N`` when it exits N; when the feedback
                            holds a person's answer (an earlier ask was cut off), that answer
                            is written without asking
    ask-timeout S PATH Q... the same with `--timeout-s S`
    ask-killed S PATH Q...  like ask, but the ask process is killed after S seconds (as an
                            agent CLI ends a long tool call); 4 s later it asks again
    exit CODE               exit now with CODE
"""

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml


def main() -> int:
    attempt = int(os.environ["ORCH_ATTEMPT"])
    ticket = yaml.safe_load(Path(os.environ["ORCH_TICKET_FILE"]).read_text())
    print(f"scripted agent: {os.environ['ORCH_TICKET_ID']} attempt {attempt}", flush=True)
    feedback = os.environ.get("ORCH_FEEDBACK_FILE")
    if feedback:
        print("feedback: " + Path(feedback).read_text().splitlines()[0], flush=True)
    for raw in (ticket.get("description") or "").splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("a") and ":" in line.split()[0]:
            prefix, line = line.split(":", 1)
            if prefix != f"a{attempt}":
                continue
            line = line.strip()
        cmd, _, rest = line.partition(" ")
        if cmd in ("write", "append"):
            path, _, text = rest.partition(" ")
            target = Path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            text = text.replace("\\n", "\n")
            if cmd == "write":
                target.write_text(text)
            else:
                with target.open("a") as f:
                    f.write(text + "\n")
        elif cmd == "print":
            print(rest, flush=True)
        elif cmd == "sleep":
            time.sleep(float(rest))
        elif cmd == "spin-once":  # spin, unless this attempt already spun (a re-run)
            marker = Path(os.environ["ORCH_PROMPT_FILE"]).with_name("spun")
            if marker.exists():
                continue
            marker.write_text("")
            end = time.monotonic() + float(rest)
            while time.monotonic() < end:
                print("working...", flush=True)
                time.sleep(0.2)
        elif cmd == "spin":
            end = time.monotonic() + float(rest)
            while time.monotonic() < end:
                print("working...", flush=True)
                time.sleep(0.2)
        elif cmd == "heartbeat":
            subprocess.run(
                [sys.executable, "-m", "orchestrator", "heartbeat", "--note", rest], check=False
            )
        elif cmd == "sigstop":
            os.kill(os.getpid(), signal.SIGSTOP)
        elif cmd == "child":
            child = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({rest})"])
            Path(os.environ["ORCH_PROMPT_FILE"]).with_name("child.pid").write_text(str(child.pid))
        elif cmd == "setsid-child":  # a grandchild that leaves the agent's session
            child = subprocess.Popen(
                [sys.executable, "-c", f"import time; time.sleep({rest})"],
                start_new_session=True,
            )
            Path(os.environ["ORCH_PROMPT_FILE"]).with_name("child.pid").write_text(str(child.pid))
        elif cmd == "run":  # run a command (argv split like a shell, no shell)
            done = subprocess.run(shlex.split(rest), capture_output=True, text=True, check=False)
            print(f"run: exit {done.returncode}: {done.stderr.strip()}", flush=True)
        elif cmd == "usage":
            print(f"ORCH_USAGE {rest}", flush=True)
        elif cmd == "cat":
            sys.stdout.write(Path(rest).read_text())
            sys.stdout.flush()
        elif cmd == "usage-file":
            with open(os.environ["ORCH_USAGE_FILE"], "a") as f:
                f.write(rest + "\n")
        elif cmd in ("ask", "ask-timeout", "ask-killed"):
            ask(cmd, rest)
        elif cmd == "exit":
            return int(rest)
    return 0


def ask(cmd: str, rest: str) -> None:
    timeout = []
    kill_after_s = None
    if cmd == "ask-timeout":
        seconds, _, rest = rest.partition(" ")
        timeout = ["--timeout-s", seconds]
    elif cmd == "ask-killed":
        seconds, _, rest = rest.partition(" ")
        kill_after_s = float(seconds)
    path, _, question = rest.partition(" ")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    feedback = os.environ.get("ORCH_FEEDBACK_FILE")
    given = Path(feedback).read_text() if feedback else ""
    if "The answer:\n" in given:
        answer = given.split("The answer:\n", 1)[1].split("\n\n", 1)[0]
        print("ask: the answer came with the feedback", flush=True)
        Path(path).write_text(answer + "\n")
        return
    argv = [sys.executable, "-m", "orchestrator", "ask", *timeout, question.replace("\\n", "\n")]
    if kill_after_s is not None:
        try:
            subprocess.run(argv, capture_output=True, timeout=kill_after_s, check=False)
        except subprocess.TimeoutExpired:  # killed (SIGKILL), like a tool call cut off
            print("ask: killed", flush=True)
            time.sleep(4)
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    print(f"ask: exit {done.returncode}: {done.stderr.strip()}", flush=True)
    Path(path).write_text(done.stdout if done.returncode == 0 else f"exit {done.returncode}\n")


if __name__ == "__main__":
    sys.exit(main())
