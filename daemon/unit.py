"""``orchestrator service install|uninstall``: the systemd --user unit.

The unit is rendered from the template ``systemd/orchestrator.service`` shipped
with the package (:mod:`orchestrator.shared.assets`; placeholders ``@ORCHESTRATOR@``,
``@CONFIG@``, ``@DOCS@``) and
written to ``$XDG_CONFIG_HOME/systemd/user/orchestrator.service`` (default
``~/.config/systemd/user/``), where ``systemctl --user`` looks for units
(systemd.unit(5), "User Unit Search Path"). docs/service.md explains the
settings. Nothing here talks to systemd: the commands to run are printed.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from orchestrator.shared.assets import asset
from orchestrator.shared.config import Home
from orchestrator.shared.errors import HomeError, OrchestratorError
from orchestrator.shared.fsutil import atomic_write

UNIT_NAME = "orchestrator.service"
TEMPLATE = "systemd/orchestrator.service"

#: Characters that make a word need double quotes on an Exec line (systemd.service(5)).
_NEEDS_QUOTES = re.compile(r"[\s\"'\\;]")

GENERATED_HEADER = (
    "# Written by `orchestrator service install` from {template};\n"
    "# edits are lost at the next install. See docs/service.md.\n\n"
)


def unit_dir() -> Path:
    """``$XDG_CONFIG_HOME/systemd/user`` (``~/.config/systemd/user`` when unset or relative)."""
    base = os.environ.get("XDG_CONFIG_HOME", "")
    # the XDG Base Directory spec says relative values are to be ignored
    config = Path(base) if base and os.path.isabs(base) else Path.home() / ".config"
    return config / "systemd" / "user"


def unit_path() -> Path:
    """Where ``install`` writes the unit."""
    return unit_dir() / UNIT_NAME


def executable_argv() -> list[str]:
    """How systemd should start the CLI: the ``orchestrator`` script next to the interpreter.

    The interpreter's directory is taken without resolving symlinks, so a venv's
    ``bin/`` stays a venv's ``bin/``. Without that script (e.g. run from a
    install without console scripts), ``python -m orchestrator`` with the same interpreter.
    """
    bindir = Path(os.path.abspath(sys.executable)).parent
    script = bindir / "orchestrator"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [os.path.abspath(sys.executable), "-m", "orchestrator"]


def _exec_word(word: str) -> str:
    """One argument of an Exec line: specifiers (``%``) and variables (``$``) escaped."""
    if "\n" in word:
        raise HomeError(f"{word!r}: a path with a newline cannot go into a systemd unit")
    word = word.replace("%", "%%").replace("$", "$$")
    if _NEEDS_QUOTES.search(word):
        word = '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return word


def render_unit(executable: Path | list[str], config: Path) -> str:
    """The unit text for running ``executable daemon --config CONFIG``.

    Args:
        executable: absolute path of the ``orchestrator`` script, or an argv
            prefix such as ``[python, "-m", "orchestrator"]``.
        config: absolute path of the project's config.yaml.

    Raises:
        OrchestratorError: the template is missing (a broken install).
        HomeError: a path is
            relative or contains a newline.
    """
    argv = [str(executable)] if isinstance(executable, Path) else list(executable)
    if not os.path.isabs(argv[0]) or not config.is_absolute():
        raise HomeError(f"the unit needs absolute paths, got {argv[0]} and {config}")
    template = asset(TEMPLATE)
    # the template's own header comment is about the template; the unit gets its own
    raw = template.read_text()
    text = GENERATED_HEADER.format(template=template) + raw[raw.find("[Unit]") :]
    try:
        docs = asset("docs/service.md")
    except OrchestratorError:
        docs = None
    if docs is not None and not _NEEDS_QUOTES.search(str(docs)) and "%" not in str(docs):
        text = text.replace("@DOCS@", str(docs))
    else:
        text = "".join(line for line in text.splitlines(keepends=True) if "@DOCS@" not in line)
    description = str(config).replace("%", "%%")
    if "\n" in description:
        raise HomeError(f"{config!r}: a path with a newline cannot go into a systemd unit")
    exec_start = " ".join(_exec_word(w) for w in argv)
    lines = []
    for line in text.splitlines(keepends=True):
        if line.startswith("ExecStart="):
            line = line.replace("@ORCHESTRATOR@", exec_start).replace(
                "@CONFIG@", _exec_word(str(config))
            )
        elif line.startswith("Description="):
            line = line.replace("@CONFIG@", description)
        lines.append(line)
    return "".join(lines)


def install(home: Home) -> int:
    """Write the unit for ``home`` and print the systemctl commands to enable it.

    An existing unit is replaced (it is a generated file); when it ran another
    command, the old ``ExecStart=`` line is printed so nothing changes unnoticed.
    Returns the exit code (0).

    Raises:
        HomeError: see :func:`render_unit`. OSError: the unit directory is not writable.
    """
    text = render_unit_for(home)
    path = unit_path()
    old = _read(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text)
    if old is None:
        print(f"wrote {path}")
    elif old == text:
        print(f"{path} is up to date")
    else:
        print(f"replaced {path}")
        before, after = _exec_start(old), _exec_start(text)
        if before != after:
            print(f"  was: {before}")
            print(f"  now: {after}")
    print("enable and start it with:")
    print("  systemctl --user daemon-reload")
    print("  systemctl --user enable --now orchestrator")
    print("follow its log with:")
    print("  journalctl --user -u orchestrator -f")
    print("keep it running after you log out: loginctl enable-linger $USER")
    return 0


def render_unit_for(home: Home) -> str:
    """The unit running this installation's ``orchestrator`` on ``home``'s config.yaml."""
    return render_unit(executable_argv(), home.config_file.resolve())


def uninstall() -> int:
    """Remove the unit file if present and print what to run around it.

    Returns 0, or 1 while the unit is still enabled (a ``*.wants/`` link points
    at it): removing it then would leave systemd with a dangling link and a
    service it can no longer disable by name, so the person disables it first.
    """
    path = unit_path()
    if not path.exists():
        print(f"no unit installed at {path}; nothing to remove")
        return 0
    links = enabled_links()
    if links:
        print(f"orchestrator is still enabled ({', '.join(str(p) for p in links)}); run first:")
        print("  systemctl --user disable --now orchestrator")
        print("then run `orchestrator service uninstall` again")
        return 1
    path.unlink()
    print(f"removed {path}")
    print("if the service still runs, stop it and let systemd forget the unit:")
    print("  systemctl --user stop orchestrator")
    print("  systemctl --user daemon-reload")
    return 0


def enabled_links() -> list[Path]:
    """The ``*.wants/`` links that ``systemctl --user enable`` made for the unit."""
    return sorted(p for p in unit_dir().glob(f"*.wants/{UNIT_NAME}") if p.is_symlink())


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def _exec_start(text: str) -> str:
    return next((line for line in text.splitlines() if line.startswith("ExecStart=")), "?")
