"""``orchestrator tui`` as a person runs it: the real command in a real terminal (tmux).

Each test uses its own tmux server (``-L``) without any user configuration, so a
person's tmux sessions are never touched.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ORCHESTRATOR = Path(sys.executable).with_name("orchestrator")
TIMEOUT_S = 60.0


def _env() -> dict[str, str]:
    """The environment for tmux (its server passes it on to the pane): without COLUMNS
    and LINES, which the TUI would obey instead of the pane's 120×36. They can be there:
    GNU readline (loaded by pytest) exports COLUMNS=80 LINES=24 to the C environ, which a
    child started with env=None inherits, and pytest-xdist's workers are such children."""
    return {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}


class Tmux:
    """One detached session of a private tmux server, 120×36, running one command."""

    def __init__(self, status_file: Path) -> None:
        self.server = f"orch-test-{uuid.uuid4().hex[:10]}"
        self.session = "tui"
        self.status_file = status_file

    def run(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-L", self.server, "-f", "/dev/null", *args],
            capture_output=True,
            text=True,
            timeout=30,
            env=_env(),
        )
        if done.returncode != 0:
            raise AssertionError(f"tmux {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def start(self, command: list[str], env: dict[str, str]) -> None:
        """Run ``command`` in the pane; its exit status goes to :attr:`status_file`.

        Not tmux's ``pane_dead_status``: tmux 3.3a now and then leaves the exited
        process a zombie it never reaps, and then never reports a status.
        """
        flags = [arg for name, value in env.items() for arg in ("-e", f"{name}={value}")]
        status = shlex.quote(str(self.status_file))
        script = f'"$@"; echo $? > {status}.tmp && mv {status}.tmp {status}'
        self.run(
            "new-session",
            "-d",
            "-s",
            self.session,
            "-x",
            "120",
            "-y",
            "36",
            *flags,
            shlex.join(["sh", "-c", script, "sh", *command]),
        )
        # Keep the pane after its process exits, so a failure can show the screen.
        self.run("set-option", "-t", self.session, "remain-on-exit", "on")

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", self.session, *keys)

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", self.session)

    def wait_screen(self, predicate: Callable[[str], bool], what: str) -> str:
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            text = self.screen()
            if predicate(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; the screen:\n{text}")
            time.sleep(0.1)

    def wait_exit(self) -> int:
        """Wait until the command exited; its exit status."""
        deadline = time.monotonic() + TIMEOUT_S
        while not self.status_file.exists():
            if time.monotonic() > deadline:
                raise AssertionError(f"the command did not exit; the screen:\n{self.screen()}")
            time.sleep(0.1)
        return int(self.status_file.read_text())

    def kill(self) -> None:
        subprocess.run(
            ["tmux", "-L", self.server, "kill-server"],
            capture_output=True,
            timeout=30,
            check=False,
            env=_env(),
        )


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    if shutil.which("tmux") is None:
        reason = "tmux is required; .ci/run installs it"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    session = Tmux(tmp_path / "exit-status")
    try:
        yield session
    finally:
        session.kill()


def test_approve_and_quit_in_a_real_terminal(tmux: Tmux, make_project) -> None:
    project = make_project(workers=1)
    project.ticket("T-tmux", description="write src/tmux.py X = 1\\n")
    project.wait_state("T-tmux", "awaiting_approval")

    tmux.start(
        [str(ORCHESTRATOR), "tui", "--config", str(project.config)],
        {"XDG_RUNTIME_DIR": os.environ["XDG_RUNTIME_DIR"], "TERM": "xterm-256color"},
    )
    screen = tmux.wait_screen(
        lambda s: "awaiting_approval" in s and "T-tmux" in s, "T-tmux awaiting approval"
    )
    assert "Agents" in screen and "Tickets" in screen
    assert "agent-1" in screen
    assert max(len(line.rstrip()) for line in screen.splitlines()) > 100, "drawn 120 wide"

    tmux.keys("Tab")  # the tickets panel; T-tmux is its only row
    tmux.wait_screen(lambda s: "keys act on T-tmux" in s, "the footer naming the subject")
    tmux.keys("c")
    tmux.wait_screen(lambda s: "Merge T-tmux" in s, "the merge confirmation")
    tmux.keys("y")
    project.wait_state("T-tmux", "merged")
    tmux.keys("f")  # merged tickets are hidden until f
    tmux.wait_screen(
        lambda s: any("T-tmux" in line and "merged" in line for line in s.splitlines()),
        "the T-tmux row merged",
    )

    tmux.keys("q")
    assert tmux.wait_exit() == 0, tmux.screen()
    assert {t.id: str(t.state) for t in project.snapshot().tickets} == {"T-tmux": "merged"}
    assert project.proc is not None and project.proc.poll() is None, "the daemon keeps running"


def test_without_a_daemon_one_line_and_non_zero_exit(make_project) -> None:
    project = make_project(start=False)
    done = subprocess.run(
        [str(ORCHESTRATOR), "tui", "--config", str(project.config), "--wait-s", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"orchestrator: no daemon answers on {project.home.socket_path}")


#: An editor that needs the terminal: it sets the terminal's mode (as editors do: the one
#: the TUI leaves behind is not the editor's business), says so, reads a line typed
#: there, writes a ticket.
TERMINAL_EDITOR = """\
import subprocess, sys
draft = sys.argv[-1]
subprocess.run(["stty", "sane"], check=True)
print("EDITOR HAS THE TERMINAL", flush=True)
word = sys.stdin.readline().strip()
with open(draft, "w") as f:
    f.write(f"title: Typed in a terminal\\ndescription: |\\n  write typed.txt {word}\\n")
"""


def test_n_hands_the_terminal_to_the_editor_and_enqueues_what_was_written(
    tmux: Tmux, make_project, tmp_path: Path
) -> None:
    project = make_project(workers=1)
    editor = tmp_path / "editor.py"
    editor.write_text(TERMINAL_EDITOR)
    tmux.start(
        [str(ORCHESTRATOR), "tui", "--config", str(project.config)],
        {
            "XDG_RUNTIME_DIR": os.environ["XDG_RUNTIME_DIR"],
            "TERM": "xterm-256color",
            "EDITOR": f"{sys.executable} {editor}",
        },
    )
    tmux.wait_screen(lambda s: "Agents" in s and "Tickets" in s, "the TUI")
    tmux.keys("n")
    screen = tmux.wait_screen(lambda s: "EDITOR HAS THE TERMINAL" in s, "the editor")
    assert "Tickets" not in screen  # the TUI gave the screen up
    tmux.keys("hello", "Enter")  # typed into the editor, through the terminal
    project.wait_state(
        "typed-in-a-terminal", "queued", "running", "ci_running", "awaiting_approval"
    )
    tmux.wait_screen(lambda s: "Tickets" in s and "typed-in-a-terminal" in s, "the TUI back")
    tmux.keys("q")
    assert tmux.wait_exit() == 0, tmux.screen()
