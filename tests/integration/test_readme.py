"""The README's "Using it on your repository" block, run as written.

The block is taken from README.md and run by bash in a fresh HOME holding a
copy of a small repository at ~/src/myrepo, with ``orchestrator`` on PATH (the
venv of the quick start). Three lines cannot run unattended and are stood in
for, each doing what a person would: ``$EDITOR`` is a script that sets
``agent.command`` to the scripted agent; the ticket's description is a line of
that agent's script; ``orchestrator tui`` (press c when the ticket awaits
approval) is ``orchestrator approve`` once it does. Everything else, including
``git pull`` from repo.git, runs as printed.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from tests.integration.conftest import AGENT, ROOT, run_group

EDITOR = """#!{python}
import json, pathlib, re, sys
path = pathlib.Path(sys.argv[1])
agent = json.dumps([{python!r}, {agent!r}])
text = re.sub(r"(?m)^(  command: )\\[.*$", lambda m: m.group(1) + agent, path.read_text(), count=1)
path.write_text(text)
"""

APPROVE = """
for i in $(seq 300); do
  if orchestrator status | grep -q '^verbose .*awaiting_approval'; then break; fi
  sleep 0.2
done
orchestrator status
orchestrator approve verbose
for i in $(seq 300); do
  if orchestrator status | grep -q '^verbose .*merged'; then break; fi
  sleep 0.2
done
"""


def readme_block() -> str:
    section = (ROOT / "README.md").read_text().split("## Using it on your repository", 1)[1]
    return section.split("```sh\n", 1)[1].split("\n```", 1)[0]


def test_using_it_on_your_repository_works_as_written(tmp_path: Path, source_repo: Path) -> None:
    home = tmp_path / "home"
    (home / "src").mkdir(parents=True)
    shutil.copytree(source_repo, home / "src" / "myrepo")
    editor = tmp_path / "editor.py"
    editor.write_text(EDITOR.format(python=sys.executable, agent=str(AGENT)))
    editor.chmod(0o755)
    runtime = Path("/tmp") / f"orch-readme-{os.getpid()}"
    runtime.mkdir(exist_ok=True)

    block = readme_block()
    assert (
        "orchestrator tui" in block and "git -C ~/src/myrepo pull ~/agents/repo.git main" in block
    )
    script = []
    for line in block.splitlines():
        if line.startswith("orchestrator tui"):
            script.append(APPROVE)
        elif line.startswith("  Add a --verbose flag"):
            script.append("  write src/verbose.py VERBOSE = True\\n")
        else:
            script.append(line)
    body = "\n".join(script)
    run = tmp_path / "readme.sh"
    # The daemon started with & is stopped when the script ends, as a person would.
    run.write_text("set -eu\ntrap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\n" + body + "\n")
    env = {
        "HOME": str(home),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "EDITOR": str(editor),
        "XDG_RUNTIME_DIR": str(runtime),
    }
    try:
        done = run_group(["bash", str(run)], cwd=tmp_path, env=env, timeout_s=110)
    finally:
        shutil.rmtree(runtime, ignore_errors=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # The daemon may still be starting when enqueue runs: then the file is placed directly.
    assert "verbose: placed in " in done.stdout
    pulled = home / "src" / "myrepo" / "src" / "verbose.py"
    assert pulled.read_text() == "VERBOSE = True\n", done.stdout[-2000:]
