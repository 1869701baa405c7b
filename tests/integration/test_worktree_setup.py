"""worktree.copy and worktree.setup with a real daemon: files copied from the source
repository (and never committed), a setup step run before the agent, a failing setup
step failing the attempt with a reason naming it and its log as feedback."""

from __future__ import annotations

import json
import sys

from tests.integration.conftest import git


def test_copy_and_setup_before_the_agent(make_project, source_repo):
    (source_repo / ".env").write_text("SECRET=from-source\n")  # untracked, like a real .env
    (source_repo / "config" / "local").mkdir(parents=True)
    (source_repo / "config" / "local" / "db.ini").write_text("[db]\n")
    setup = [sys.executable, "-c", "import pathlib; pathlib.Path('.deps').write_text('ok')"]
    project = make_project(
        workers=1,
        extra="worktree: "
        + json.dumps({"copy": [".env", "config/local"], "setup": setup, "exclude": [".deps"]})
        + "\n",
    )
    project.ticket(
        "t1",
        description=(
            "write seen.txt placeholder\n"  # the agent sees the copied and set-up files:
            "append app.py # t1\n"
        ),
    )
    snap = project.wait_state("t1", "awaiting_approval")
    (view,) = [t for t in snap.tickets if t.id == "t1"]
    wt = project.home.worktrees / "agent-1"
    assert (wt / ".env").read_text() == "SECRET=from-source\n"
    assert (wt / "config" / "local" / "db.ini").exists() and (wt / ".deps").exists()
    tree = git(project.home.work, "ls-tree", "-r", "--name-only", view.branch).splitlines()
    assert ".env" not in tree and not [p for p in tree if p.startswith(("config/", ".deps"))]
    log = (project.home.runs / "t1" / "1" / "setup.log").read_text()
    assert "setup exited with code 0" in log


def test_a_failing_setup_step_fails_the_attempt_naming_it(make_project):
    setup = [sys.executable, "-c", "import sys; print('npm ERR! missing lockfile'); sys.exit(3)"]
    project = make_project(workers=1, extra="worktree: " + json.dumps({"setup": setup}) + "\n")
    project.ticket("t1", description="append app.py # t1\n", max_attempts=2)
    snap = project.wait_state("t1", "failed")
    (view,) = [t for t in snap.tickets if t.id == "t1"]
    assert "worktree.setup" in view.reason and "exited with code 3" in view.reason
    assert "\n" not in view.reason
    feedback = (project.home.runs / "t1" / "2" / "feedback.md").read_text()
    assert "npm ERR! missing lockfile" in feedback
    assert not (project.home.runs / "t1" / "1" / "agent.log").exists()  # the agent never ran


def test_copy_of_a_missing_file_fails_with_its_path(make_project, source_repo):
    project = make_project(workers=1, extra='worktree: {copy: [".env.local"]}\n')
    project.ticket("t1", description="append app.py # t1\n", max_attempts=1)
    snap = project.wait_state("t1", "failed")
    (view,) = [t for t in snap.tickets if t.id == "t1"]
    assert f"worktree.copy: {source_repo / '.env.local'} does not exist" in view.reason


def test_ci_setup_runs_the_same_setup_in_the_ci_checkout(make_project, source_repo):
    (source_repo / ".env").write_text("SECRET=1\n")
    (source_repo / "tests" / "test_env.py").write_text(
        "import pathlib, unittest\n\n\nclass Env(unittest.TestCase):\n"
        "    def test_setup_ran(self):\n"
        "        self.assertTrue(pathlib.Path('.env').exists())\n"
        "        self.assertTrue(pathlib.Path('.deps').exists())\n"
    )
    git(source_repo, "add", "tests/test_env.py")
    git(source_repo, "commit", "--quiet", "-m", "a test that needs the setup")
    setup = [sys.executable, "-c", "import pathlib; pathlib.Path('.deps').write_text('ok')"]
    worktree = {"copy": [".env"], "setup": setup, "exclude": [".deps"]}
    project = make_project(workers=1, extra="worktree: " + json.dumps(worktree) + "\n", start=False)
    text = project.config.read_text()
    assert "\nci:\n" in text
    project.config.write_text(text.replace("\nci:\n", "\nci:\n  setup: true\n", 1))
    project.start()
    project.ticket("t1", description="append app.py # t1\n")
    project.wait_state("t1", "awaiting_approval")  # CI passed: the checkout had both files
