#!/usr/bin/env python3
"""demo_agent.py - a stand-in coding agent that replays recorded changes.

The orchestrator demo must run without network access and without an LLM, so
instead of thinking this "agent" replays what a real agent once did.  Like any
agent it is started by the daemon with the ticket's worktree as its current
directory; it edits files there and exits.  It never runs git: the daemon
commits whatever the agent leaves behind.

Requires Python 3 and PyYAML (a dependency of the orchestrator itself).

Environment (set by the daemon):
    ORCH_TICKET_ID      ticket id (required); selects recordings/<id>/
    ORCH_ATTEMPT        1-based attempt number (default 1)
    ORCH_FEEDBACK_FILE  optional; on a retry, the file with why the previous
                        attempt failed (e.g. the CI log); its first line is shown
    ORCH_PROMPT_FILE    optional; the rendered prompt; its first line is shown
Environment (demo knobs):
    DEMO_RECORDINGS     recordings directory (default: <this script's dir>/recordings)
    DEMO_AGENT_DELAY_S  pause between progress lines, in seconds (default 0.3)

Recordings: <recordings>/<ticket-id>/attempt-<n>.yaml.  Attempt N replays the
file with the highest n <= N, so attempts beyond the recorded ones repeat the
last recording.

Recording format: a YAML list of operations, applied in order; every path is
relative to the worktree (absolute paths, "..", and .git/ are refused):

    - {op: write,   path: P, content: TEXT}   # create (with parent dirs) or
                                              # overwrite the whole file
    - {op: append,  path: P, text: TEXT}      # add TEXT at the end (creates P);
                                              # skipped if P already ends with TEXT
    - {op: replace, path: P, old: TEXT, new: TEXT}
          # OLD must occur exactly once in P and is replaced by NEW.  If OLD is
          # not found but NEW is already there, the change counts as already
          # applied (a retry on a branch that has it) and is skipped.
    - {op: say,     text: TEXT}               # just print a progress line
    - {op: ask,     question: TEXT, default: TEXT}
          # ask a person with `orchestrator ask QUESTION` (it blocks until the
          # answer); "{answer}" in the string fields of the later operations
          # becomes the answer (its first line; letters, digits, spaces and
          # .,'- only). When a previous attempt's question was answered after
          # that attempt ended, the answer is taken from the feedback. Without
          # a daemon (or on any error) it goes on with DEFAULT and says so.

Use write for new files and append/replace for files that other tickets also
change, so recordings compose with whatever is already on main.

Exit status: 0 all operations applied; 1 an operation could not be applied or
the recording is invalid (reason on stderr); 2 no recording for this ticket or
attempt, or a bad environment.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path, PurePosixPath

import yaml

TICKET_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
ATTEMPT_FILE_RE = re.compile(r"^attempt-(\d+)\.ya?ml$")
REQUIRED_KEYS = {
    "write": ("path", "content"),
    "append": ("path", "text"),
    "replace": ("path", "old", "new"),
    "say": ("text",),
    "ask": ("question", "default"),
}
ANSWER_PLACEHOLDER = "{answer}"
#: What an answer may contain once it is put into a file (the README runs as a doctest).
ANSWER_UNSAFE_RE = re.compile(r"[^A-Za-z0-9 .,'-]")


class ReplayError(Exception):
    """An operation cannot be applied; the message says why."""


class Agent:
    def __init__(self, worktree: Path, delay_s: float) -> None:
        self.worktree = worktree
        self.delay_s = delay_s
        self.changed: list[str] = []
        self.answer = ""

    def say(self, message: str) -> None:
        print(f"[demo-agent] {message}", flush=True)
        if self.delay_s > 0:
            time.sleep(self.delay_s)

    def resolve(self, path: object) -> Path:
        if not isinstance(path, str) or not path.strip():
            raise ReplayError(f"bad path {path!r}")
        pure = PurePosixPath(path)
        if pure.is_absolute() or ".." in pure.parts or (pure.parts and pure.parts[0] == ".git"):
            raise ReplayError(f"{path}: path must be relative to the worktree")
        return self.worktree / pure

    def apply(self, index: int, op: object) -> None:
        if not isinstance(op, dict):
            raise ReplayError(f"operation {index}: expected a mapping, got {type(op).__name__}")
        kind = op.get("op")
        if kind not in REQUIRED_KEYS:
            raise ReplayError(f"operation {index}: unknown op {kind!r}")
        for key in REQUIRED_KEYS[kind]:
            if not isinstance(op.get(key), str):
                raise ReplayError(f"operation {index} ({kind}): '{key}' must be a string")
        if kind == "say":
            self.say(op["text"])
            return
        if kind == "ask":
            self.answer = ask(self, op["question"], op["default"])
            return
        op = {
            k: v.replace(ANSWER_PLACEHOLDER, self.answer) if isinstance(v, str) else v
            for k, v in op.items()
        }
        path = op["path"]
        target = self.resolve(path)
        if kind == "write":
            exists = target.is_file()
            if exists and read(target) == op["content"]:
                self.say(f"{path}: already up to date, skipping")
                return
            self.say(f"{'editing' if exists else 'creating'} {path}")
            write(target, op["content"])
        elif kind == "append":
            current = read(target) if target.exists() else ""
            if current.endswith(op["text"]):
                self.say(f"{path}: already has that text at the end, skipping")
                return
            self.say(f"editing {path}")
            write(target, current + op["text"])
        else:
            before = read(target) if target.is_file() else None
            after = replaced(path, before, op["old"], op["new"])
            if after == before:
                self.say(f"{path}: change already present, skipping")
                return
            self.say(f"editing {path}")
            write(target, after)
        if path not in self.changed:
            self.changed.append(path)


def ask(agent: Agent, question: str, default: str) -> str:
    """A person's answer to ``question`` (made safe to write), or ``default``."""
    feedback = os.environ.get("ORCH_FEEDBACK_FILE")
    given = ""
    if feedback and Path(feedback).is_file():
        text = read(Path(feedback))
        if "The answer:\n" in text:
            given = text.split("The answer:\n", 1)[1]
            agent.say("the answer to my earlier question came with the feedback")
    if not given:
        agent.say(f"asking a person: {question}")
        try:
            done = subprocess.run(
                [sys.executable, "-m", "orchestrator", "ask", question],
                capture_output=True,
                text=True,
                check=False,
            )
        except OSError as exc:
            agent.say(f"cannot ask ({exc}); going on with {default!r}")
            return default
        if done.returncode != 0:
            why = done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]
            agent.say(f"no answer ({why[0]}); going on with {default!r}")
            return default
        given = done.stdout
    lines = given.strip().splitlines()
    answer = ANSWER_UNSAFE_RE.sub("", lines[0] if lines else "").strip()[:80]
    if not answer:
        agent.say(f"the answer has nothing I can use; going on with {default!r}")
        return default
    agent.say(f"the answer: {answer}")
    return answer


def read(path: Path) -> str:
    with open(path, encoding="utf-8", newline="") as f:
        return f.read()


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)


def replaced(path: str, text: str | None, old: str, new: str) -> str:
    """TEXT with OLD replaced by NEW, or TEXT itself if NEW is already applied."""
    if not old:
        raise ReplayError(f"replace in {path}: 'old' is empty")
    if text is None:
        raise ReplayError(f"replace in {path}: no such file")
    count = text.count(old)
    # Already applied: every occurrence of OLD is accounted for by NEW (this
    # also covers insertions, where NEW contains OLD).
    if new and new in text and count == text.count(new) * new.count(old):
        return text
    if count != 1:
        where = "not found" if count == 0 else f"found {count} times (must be unique)"
        first = old.strip().splitlines()[0] if old.strip() else old
        raise ReplayError(f"replace in {path}: text to replace {where}: {first!r}")
    return text.replace(old, new, 1)


def first_line(path: Path) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.strip():
                    return line.strip()[:200]
    except OSError:
        return None
    return None


def pick_recording(directory: Path, attempt: int) -> tuple[int, Path] | None:
    found = []
    if directory.is_dir():
        for entry in directory.iterdir():
            match = ATTEMPT_FILE_RE.match(entry.name)
            if match and int(match.group(1)) <= attempt:
                found.append((int(match.group(1)), entry))
    return max(found) if found else None


def fail(message: str, code: int) -> int:
    print(f"demo-agent: {message}", file=sys.stderr, flush=True)
    return code


def main() -> int:
    ticket_id = os.environ.get("ORCH_TICKET_ID", "")
    if not TICKET_ID_RE.match(ticket_id):
        return fail(f"ORCH_TICKET_ID is missing or invalid: {ticket_id!r}", 2)
    try:
        attempt = int(os.environ.get("ORCH_ATTEMPT") or "1")
        delay_s = float(os.environ.get("DEMO_AGENT_DELAY_S") or "0.3")
    except ValueError as exc:
        return fail(f"bad ORCH_ATTEMPT or DEMO_AGENT_DELAY_S: {exc}", 2)
    if attempt < 1:
        return fail(f"ORCH_ATTEMPT must be >= 1, got {attempt}", 2)
    default_dir = Path(__file__).resolve().parent / "recordings"
    recordings = Path(os.environ.get("DEMO_RECORDINGS") or default_dir)
    picked = pick_recording(recordings / ticket_id, attempt)
    if picked is None:
        return fail(
            f"no recording for ticket {ticket_id!r} attempt {attempt} "
            f"(looked for attempt-<n>.yaml with n <= {attempt} in {recordings / ticket_id})",
            2,
        )
    number, recording = picked
    try:
        ops = yaml.safe_load(read(recording))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        return fail(f"{recording}: cannot read recording: {exc}", 1)
    if not isinstance(ops, list):
        return fail(f"{recording}: expected a YAML list of operations", 1)

    agent = Agent(Path.cwd(), max(0.0, delay_s))
    agent.say(f"reading ticket {ticket_id} (attempt {attempt})")
    prompt_file = os.environ.get("ORCH_PROMPT_FILE")
    if prompt_file and (line := first_line(Path(prompt_file))):
        agent.say(f"prompt: {line}")
    feedback_file = os.environ.get("ORCH_FEEDBACK_FILE")
    if feedback_file and Path(feedback_file).is_file():
        agent.say(f"feedback: {first_line(Path(feedback_file)) or '(empty)'}")
    agent.say(f"replaying {len(ops)} recorded step(s) from {recording.name}")
    if number != attempt:
        agent.say(f"(no recording for attempt {attempt}; repeating attempt {number})")
    try:
        for index, op in enumerate(ops, 1):
            agent.apply(index, op)
    except (ReplayError, OSError) as exc:
        return fail(f"{recording.name}: {exc}", 1)
    changed = ", ".join(agent.changed) or "nothing"
    agent.say(f"done: changed {changed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
