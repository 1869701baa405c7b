"""The main pipeline end to end: real daemon, git, hook, ci.sh, socket and agent processes."""

from __future__ import annotations

import json
import time

from orchestrator.shared import protocol as P
from orchestrator.shared.client import request
from tests.integration.conftest import git, main_log

PASSING_TEST = (
    "import unittest\\n\\nclass T(unittest.TestCase):\\n    def test_ok(self):\\n        pass\\n"
)
FAILING_TEST = (
    "import unittest\\n\\nclass T(unittest.TestCase):\\n    def test_ok(self):\\n"
    "        self.fail('deliberate')\\n"
)


def test_priorities_locks_dependency_ci_retry_approval_linear_main(make_project):
    project = make_project(workers=2)
    project.ticket(
        "a-shared",
        priority=0,
        locks=["src/shared.py"],
        description="spin 1.5\nwrite src/shared.py A = 1\\n",
    )
    project.ticket(
        "b-shared",
        priority=1,
        locks=["src/shared.py", "src/b.py"],
        description="append src/shared.py B = 2\nwrite src/b.py b = 1\\n",
    )
    project.ticket(
        "c-child",
        priority=2,
        locks=["src/c.py"],
        depends_on=["a-shared"],
        description="write src/c.py c = 1\\n",
    )
    project.ticket(
        "d-flaky",
        priority=3,
        locks=["tests/test_d.py"],
        description=f"a1: write tests/test_d.py {FAILING_TEST}\n"
        f"a2: write tests/test_d.py {PASSING_TEST}",
    )
    snap = project.wait_for(lambda s: len(s.tickets) == 4, 20, "intake")
    running = {t.id for t in snap.tickets if t.state != "queued"}
    assert running == {"a-shared", "d-flaky"}, "the two most urgent eligible tickets run first"
    waiting = {t.id: t.reason for t in snap.tickets if t.state == "queued"}
    assert "lock src/shared.py held by a-shared" in waiting["b-shared"]
    assert "waits for 'a-shared'" in waiting["c-child"]

    merged: list[str] = []
    deadline = time.monotonic() + 150
    while len(merged) < 4 and time.monotonic() < deadline:
        snap = project.wait_for(
            lambda s: (
                any(t.state in ("awaiting_approval", "failed") for t in s.tickets)
                or sum(t.state == "merged" for t in s.tickets) == 4
            ),
            90,
            "a ticket to approve",
        )
        for t in snap.tickets:
            assert t.state != "failed", (t.id, t.reason)
            if t.state == "awaiting_approval":
                done = project.cli("approve", t.id)
                assert done.returncode == 0, done.stderr
                project.wait_state(t.id, "merged", timeout_s=60)
                merged.append(t.id)
        if sum(t.state == "merged" for t in project.snapshot().tickets) == 4:
            break
    final = {t.id: t for t in project.snapshot().tickets}
    assert {tid: str(t.state) for tid, t in final.items()} == dict.fromkeys(final, "merged")
    assert final["d-flaky"].attempt == 2
    assert final["a-shared"].attempt == 1
    repo = project.home.repo
    assert git(repo, "rev-list", "--merges", "main") == "", "main's history is linear"
    subjects = main_log(project)
    assert subjects[-1] == "initial"
    order = [s.split(":")[0] for s in reversed(subjects[:-1])]
    assert sorted(order) == sorted(final), "each ticket is exactly one commit on main"
    trailers = git(repo, "log", "--format=%(trailers:key=Ticket,valueonly)", "main").split()
    assert sorted(trailers) == sorted(final)
    assert order.index("a-shared") < order.index("c-child"), "the dependency merged first"
    assert order.index("a-shared") < order.index("b-shared"), "the lock holder merged first"
    content = git(repo, "show", "main:src/shared.py")
    assert "A = 1" in content and "B = 2" in content
    status = project.cli("status", "--json")
    assert status.returncode == 0
    done_files = sorted(p.name for p in project.home.done_dir.iterdir())
    assert done_files == ["a-shared.yaml", "b-shared.yaml", "c-child.yaml", "d-flaky.yaml"]


def test_locks_asks_the_daemon_for_leases_only(make_project):
    project = make_project(workers=1)
    project.ticket(
        "holder",
        priority=0,
        locks=["src/held.py"],
        description="spin 20\nwrite src/held.py x = 1\\n",
    )
    project.wait_state("holder", "running", timeout_s=20)

    reply = request(project.home.socket_path, P.Status(tickets=False))
    assert reply.snapshot.tickets == []  # no ticket views built or sent
    assert len(reply.snapshot.agents) == 1
    assert [(lease.path, lease.ticket) for lease in reply.snapshot.leases] == [
        ("src/held.py", "holder")
    ]
    assert [t.id for t in project.snapshot().tickets] == ["holder"]  # the default still has them

    done = project.cli("locks", "--json")
    assert done.returncode == 0, done.stderr
    assert [(lease["path"], lease["ticket"]) for lease in json.loads(done.stdout)] == [
        ("src/held.py", "holder")
    ]
    assert project.send(P.Stop(ticket="holder")).ok
