"""Acceptance checks end to end: the real hook and CI job run a ticket's checks in the CI
checkout after the CI command; a failing check fails the first attempt with its output as
feedback, and the status JSON carries every check's result."""

from __future__ import annotations

import json
import sys

from tests.integration.conftest import git


def test_a_failing_check_fails_ci_and_becomes_feedback(make_project):
    project = make_project(workers=1)
    greet_test = "import app; assert app.greet() == 'hi', app.greet()"
    project.ticket(
        "greet",
        locks=["app.py", "docs/"],
        acceptance=[
            {"name": "greet works", "run": [sys.executable, "-c", greet_test]},
            {"file_exists": "docs/GREETING.md"},
            {"contains": {"path": "app.py", "text": "def greet"}},
            # argv, never a shell: the $(...) stays a literal argument
            {"run": [sys.executable, "-c", "import sys; print(sys.argv[1])", "$(touch pwned)"]},
        ],
        description=(
            "a1: append app.py def greet():\\n    return 'hello'\\n\n"
            "a2: write app.py def answer():\\n    return 42\\n\\n\\ndef greet():\\n"
            "    return 'hi'\\n\n"
            "a2: write docs/GREETING.md hi\\n\n"
        ),
    )
    snap = project.wait_state("greet", "awaiting_approval", timeout_s=90)
    (view,) = [t for t in snap.tickets if t.id == "greet"]
    assert view.attempt == 2
    feedback = (project.home.runs / "greet" / "2" / "feedback.md").read_text()
    assert "acceptance: greet works: fail" in feedback and "AssertionError: hello" in feedback
    assert "acceptance: file_exists: docs/GREETING.md: fail" in feedback
    assert "docs/GREETING.md does not exist" in feedback

    statuses = {
        p.name: json.loads(p.read_text()) for p in project.home.ci_status_dir.glob("*.json")
    }
    first = statuses[git(project.home.work, "rev-parse", f"{view.branch}~1") + ".json"]
    last = statuses[git(project.home.work, "rev-parse", view.branch) + ".json"]
    assert first["status"] == "fail" and first["exit_code"] == 0  # the tests passed; checks not
    assert [(c["name"], c["status"]) for c in first["checks"]] == [
        ("greet works", "fail"),
        ("file_exists: docs/GREETING.md", "fail"),
        ("contains: app.py", "pass"),
        (f"run: {sys.executable} -c import sys; print(sys.argv[1]) $(touch pwned)", "pass"),
    ]
    assert last["status"] == "pass" and all(c["status"] == "pass" for c in last["checks"])
    assert "$(touch pwned)" in last["checks"][3]["output_tail"]
    assert not list(project.home.root.rglob("pwned"))


def test_validate_checks_the_acceptance_list(make_project, tmp_path):
    project = make_project(start=False)
    bad = tmp_path / "bad.yaml"
    bad.write_text("title: t\nacceptance:\n  - run: [make, test]\n    file_exists: x\n")
    result = project.cli("validate", str(bad))
    assert result.returncode == 1
    assert "acceptance[0]: give exactly one of run, file_exists, contains" in result.stderr
    bad.write_text("title: t\nacceptance: [{file_exists: ../etc/passwd}]\n")
    result = project.cli("validate", str(bad))
    assert "acceptance[0].file_exists: must be a path relative to the repository root" in (
        result.stderr
    )
