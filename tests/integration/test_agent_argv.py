"""The agent's argv and worktree as a real daemon runs them: an over-long {prompt} is an
explained failure, {run_dir}/{usage_file} reach the agent, worktree.exclude keeps an
agent's own files out of its commits."""

from __future__ import annotations

import sys

from tests.integration.conftest import AGENT, git


def test_a_prompt_over_the_argv_item_limit_fails_with_its_reason(make_project):
    project = make_project(workers=1, agent=[sys.executable, str(AGENT), "{prompt}"])
    description = "write a.txt never written\n" + "note " + "x" * 140_000 + "\n"
    project.ticket("huge", description=description, max_attempts=1)
    snap = project.wait_state("huge", "failed")
    (view,) = [t for t in snap.tickets if t.id == "huge"]
    assert "E2BIG" in view.reason and "{prompt_file}" in view.reason
    log = (project.home.runs / "huge" / "1" / "agent.log").read_text()
    assert "over Linux's limit" in log
    # the same ticket through {prompt_file} runs fine
    other = make_project(workers=1, agent=[sys.executable, str(AGENT), "{prompt_file}"])
    other.ticket("huge", description="write a.txt done\\n\n" + "note " + "x" * 140_000)
    other.wait_state("huge", "awaiting_approval")


def test_run_dir_usage_file_and_worktree_exclude(make_project):
    project = make_project(
        workers=1,
        agent=[sys.executable, str(AGENT), "{run_dir}", "{usage_file}"],
        extra='worktree: {exclude: [".aider*", "scratch/"]}\n',
    )
    info_exclude = project.home.work / ".git" / "info" / "exclude"
    assert ".aider*" in info_exclude.read_text()
    project.ticket(
        "t1",
        description=(
            "write app.py def answer():\\n    return 42\\n# touched\\n\n"
            "write .aider.tags.cache.v4/cache.db binary\n"
            "write .aider.chat.history.md chat\n"
            "write scratch/notes.txt notes\n"
            'usage-file {"type":"turn.completed","usage":{"input_tokens":5,"output_tokens":6}}\n'
        ),
    )
    snap = project.wait_state("t1", "awaiting_approval")
    (view,) = [t for t in snap.tickets if t.id == "t1"]
    tree = git(project.home.work, "ls-tree", "-r", "--name-only", view.branch).splitlines()
    assert "app.py" in tree
    assert not [p for p in tree if p.startswith((".aider", "scratch"))], tree
    run_dir = project.home.runs / "t1" / "1"
    assert "turn.completed" in (run_dir / "usage.jsonl").read_text()
    assert f"$ {sys.executable} {AGENT} {run_dir} {run_dir / 'usage.jsonl'}" in (
        (run_dir / "agent.log").read_text()
    )
