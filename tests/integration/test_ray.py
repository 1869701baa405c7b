"""runner: ray against a real two-node Ray cluster on this machine (issue 14).

The cluster (tests/integration/conftest.py, ``ray_cluster``) starts once for this module:
a head and a second node carrying the custom resource ``agent2``. Agents are the
scripted agent, as everywhere; code travels through git between the daemon and
the nodes' git cache (``ray.cache_dir``, here under the test's tmp_path).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest

from orchestrator.shared import protocol as P
from tests.integration.conftest import Project, RayCluster, git, main_log

#: With pytest-xdist (``--dist loadgroup``) every test here runs in one worker: they share
#: one cluster, and a second cluster would double the load for nothing.
pytestmark = pytest.mark.xdist_group("ray")


def ray_config(cluster: RayCluster, cache: Path, resources: str = "{}", wip_s: float = 0.5) -> str:
    return (
        "runner: ray\n"
        f"ray: {{address: '{cluster.address}', num_cpus: 0.25, resources: {resources}, "
        f"wip_push_s: {wip_s}, cache_dir: '{cache}'}}\n"
    )


def until_marker(marker: Path, folder: str, sleep_s: float = 20) -> str:
    """A scripted-agent line: before ``marker`` exists, write FOLDER/before.txt and sleep;
    after, write FOLDER/after.txt saying whether before.txt came back (a WIP push)."""
    code = (
        f"import os, time, pathlib; d = pathlib.Path({folder!r}); d.mkdir(exist_ok=True); "
        f"p = d / 'before.txt'; m = os.path.exists({str(marker)!r}); "
        "(d / 'after.txt').write_text('saw before.txt: %s' % p.exists()) if m "
        f"else (p.write_text('written before\\n'), time.sleep({sleep_s}))"
    )
    return f"run {shlex.quote(sys.executable)} -c {shlex.quote(code)}"


def until_exists(marker: Path, timeout_s: float = 90) -> str:
    """A scripted-agent line that waits (at most ``timeout_s``) until ``marker`` exists, so
    the agent stays on its node while the test looks at it."""
    code = (  # one line: the ticket's description is one command a line
        f"import os, time; end = time.monotonic() + {timeout_s}; any(time.sleep(0.1) for _ in "
        f"iter(lambda: os.path.exists({str(marker)!r}) or time.monotonic() > end, True))"
    )
    return f"run {shlex.quote(sys.executable)} -c {shlex.quote(code)}"


def wait_path(pattern: str, root: Path, timeout_s: float = 60) -> Path:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = sorted(root.glob(pattern))
        if found:
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"no {pattern} under {root} within {timeout_s} s")


def events(project: Project) -> list[P.Event]:
    out = project.cli("events", "--since", "0", "--json")
    return [msgspec.json.decode(line, type=P.Event) for line in out.stdout.splitlines() if line]


def test_pipeline_passes_with_runner_ray(make_project, ray_cluster, tmp_path):
    project = make_project(
        workers=2, approval="auto", extra=ray_config(ray_cluster, tmp_path / "cache")
    )
    project.ticket("r1", description="print hello from a node\nwrite r1.txt one", locks=["r1.txt"])
    project.ticket("r2", description="spin 1\nwrite r2.txt two", locks=["r2.txt"])
    seen_nodes: set[str] = set()

    def merged(snap: P.Snapshot) -> bool:
        seen_nodes.update(a.node for a in snap.agents if a.node)
        return all(t.state == "merged" for t in snap.tickets) and len(snap.tickets) == 2

    project.wait_for(merged, timeout_s=90, what="both tickets merged")
    assert git(project.home.repo, "show", "main:r1.txt") == "one"
    assert git(project.home.repo, "show", "main:r2.txt") == "two"
    assert sum("r1" in s for s in main_log(project)) == 1
    assert seen_nodes <= set(ray_cluster.node_ids().values()) and seen_nodes
    log = (project.home.runs / "r1" / "1" / "agent.log").read_text()
    assert "hello from a node" in log
    # The node checked the branch out of its own git cache, not the daemon's worktree.
    assert list((tmp_path / "cache" / "git").glob("*.git"))
    started = [e.message for e in events(project) if e.kind == "agent.started"]
    assert any("Ray node" in m for m in started), started


def test_agent_pinned_to_second_node_runs_there(make_project, ray_cluster, tmp_path):
    project = make_project(
        workers=1,
        approval="auto",
        extra=ray_config(ray_cluster, tmp_path / "cache", resources="{agent2: 1}"),
    )
    looked = tmp_path / "looked"  # the agent runs until the test has looked at it
    project.ticket(
        "p1", description=f"{until_exists(looked)}\nwrite p1.txt pinned", locks=["p1.txt"]
    )
    snap = project.wait_for(
        lambda s: any(a.ticket == "p1" and a.node for a in s.agents), what="p1 on a node"
    )
    agent = next(a for a in snap.agents if a.ticket == "p1")
    assert agent.node == ray_cluster.node_ids()[RayCluster.NODE2_IP]
    assert agent.host  # the node's host name
    status = project.cli("status")
    assert agent.host in status.stdout, status.stdout
    looked.write_text("")
    project.wait_state("p1", "merged", timeout_s=60)


def test_lost_node_requeues_from_its_wip_push(make_project, ray_cluster, tmp_path):
    marker = tmp_path / "node-replaced"
    project = make_project(
        workers=1,
        approval="auto",
        extra=ray_config(ray_cluster, tmp_path / "cache", resources="{agent2: 1}"),
    )
    project.ticket("l1", description=until_marker(marker, "l1"), locks=["l1/"])
    wait_path("worktrees/*-agent-1/l1/before.txt", tmp_path / "cache")
    # The WIP push (every 0.5 s) carries before.txt to repo.git.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done = subprocess.run(
            [
                "git",
                "-C",
                str(project.home.repo),
                "cat-file",
                "-e",
                "refs/orchestrator/wip/l1:l1/before.txt",
            ],
            capture_output=True,
        )
        if done.returncode == 0:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("before.txt never reached the WIP ref")
    ray_cluster.kill_node2()
    try:
        # Requeued at once, the next attempt waits for a node with agent2, visibly.
        snap = project.wait_for(
            lambda s: any(
                t.id == "l1" and "waiting for Ray resources" in t.reason for t in s.tickets
            ),
            timeout_s=60,
            what="l1 waiting for a node with agent2 after its node was lost",
        )
        ticket = next(t for t in snap.tickets if t.id == "l1")
        assert ticket.attempt == 1, "the lost attempt is not counted"
        lost = [e.message for e in events(project) if "lost mid-attempt" in e.message]
        assert lost and "attempt not counted" in lost[0], lost
        marker.write_text("")
    finally:
        ray_cluster.start_node2()
    project.wait_state("l1", "merged", timeout_s=90)
    assert git(project.home.repo, "show", "main:l1/after.txt") == "saw before.txt: True"
    final = next(t for t in project.snapshot().tickets if t.id == "l1")
    assert final.attempt == 1


def test_stop_ends_the_remote_process_tree(make_project, ray_cluster, tmp_path):
    project = make_project(workers=1, extra=ray_config(ray_cluster, tmp_path / "cache"))
    project.ticket("s1", description="write kept.txt kept\nchild 120\nspin 120", locks=["kept.txt"])
    pid_file = wait_path("runs/*-s1-1/child.pid", tmp_path / "cache")
    deadline = time.monotonic() + 10
    while not pid_file.read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchild = int(pid_file.read_text())
    assert Path(f"/proc/{grandchild}").exists()
    assert project.send(P.Stop(ticket="s1")).ok
    project.wait_state("s1", "stopped", timeout_s=60)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{grandchild}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{grandchild}").exists(), "the agent's grandchild outlived the stop"
    branch = next(t.branch for t in project.snapshot().tickets if t.id == "s1")
    assert git(project.home.work, "show", f"{branch}:kept.txt") == "kept"


def test_daemon_kill9_with_remote_agents_loses_nothing(make_project, ray_cluster, tmp_path):
    marker = tmp_path / "restarted"
    project = make_project(
        workers=2, approval="auto", extra=ray_config(ray_cluster, tmp_path / "cache", wip_s=30)
    )
    for tid in ("k1", "k2"):
        project.ticket(tid, description=until_marker(marker, tid), locks=[f"{tid}/"])
    wait_path("worktrees/*-agent-*/k1/before.txt", tmp_path / "cache")
    wait_path("worktrees/*-agent-*/k2/before.txt", tmp_path / "cache")
    project.kill9()
    marker.write_text("")
    project.start()
    project.wait_for(
        lambda s: all(t.state == "merged" for t in s.tickets) and len(s.tickets) == 2,
        timeout_s=120,
        what="both merged after the restart",
    )
    log = main_log(project)
    assert sum(s.startswith("k1") for s in log) == 1, log
    assert sum(s.startswith("k2") for s in log) == 1, log
    for t in project.snapshot().tickets:
        assert t.attempt == 1, (t.id, t.attempt)  # the interrupted attempt is not counted
        assert git(project.home.repo, "show", f"main:{t.id}/after.txt") == "saw before.txt: True"


def test_unreachable_cluster_is_one_line_and_exit_nonzero(make_project, tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.2", 0))
        port = sock.getsockname()[1]  # nothing listens there once closed
    project = make_project(
        start=False,
        extra=f"runner: ray\nray: {{address: '127.0.0.2:{port}'}}\n",
    )
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", "daemon", "--config", str(project.config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, RAY_USAGE_STATS_ENABLED="0"),
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if "cannot reach the Ray cluster" in line]
    assert len(errors) == 1, done.stderr


def test_only_the_current_attempt_pushes_its_wip_ref(make_project, tmp_path):
    """hooks/update: refs/orchestrator/wip/<ticket> takes a push only with the token of
    the ticket's current attempt (no cluster needed: this is the git side)."""
    from orchestrator.daemon.ray_runner import issue_wip_token, revoke_wip_token

    project = make_project(start=False)
    repo = project.home.repo
    clone = tmp_path / "node"
    git(tmp_path, "clone", "--quiet", str(repo), str(clone))
    git(clone, "commit", "--quiet", "--allow-empty", "-m", "wip")

    def push(token: str | None, ticket: str = "w1") -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
        if token is not None:
            env["ORCH_WIP_TOKEN"] = token
        return subprocess.run(
            [
                "git",
                "-C",
                str(clone),
                "push",
                "--quiet",
                "--force",
                str(repo),
                f"HEAD:refs/orchestrator/wip/{ticket}",
            ],
            capture_output=True,
            text=True,
            env=env,
        )

    old = issue_wip_token(repo, "w1")
    current = issue_wip_token(repo, "w1")  # a new attempt: the old token is void
    first = push(None)
    assert first.returncode != 0, first.stderr
    refused = push(old)
    assert refused.returncode != 0 and "current attempt" in refused.stderr, first.stderr
    assert push(current, ticket="w2").returncode != 0  # another ticket's ref
    assert push(current).returncode == 0
    revoke_wip_token(repo, "w1")  # the attempt ended
    git(clone, "commit", "--quiet", "--allow-empty", "-m", "late wip")
    assert push(current).returncode != 0


def test_hand_over_sets_the_wip_ref_and_pushes_only_what_repo_git_lacks(make_project, tmp_path):
    """The attempt's commit reaches refs/orchestrator/wip/<ticket> (what the node fetches):
    set in repo.git when it has the commit, pushed when it does not (no cluster needed)."""
    import anyio

    from orchestrator.daemon.git import install_ref_token
    from orchestrator.daemon.ray_runner import RayRunner

    project = make_project(start=False)
    repo = project.home.repo
    install_ref_token(repo)  # as the daemon does at its start
    clone = tmp_path / "attempt"
    git(tmp_path, "clone", "--quiet", str(repo), str(clone))
    runner = RayRunner(project.home)

    main = git(repo, "rev-parse", "refs/heads/main")
    anyio.run(runner._hand_over, clone, "h1")
    assert git(repo, "rev-parse", "refs/orchestrator/wip/h1") == main

    (clone / "new.txt").write_text("only in the attempt's worktree\n")
    git(clone, "add", "new.txt")
    git(clone, "commit", "--quiet", "-m", "not in repo.git yet")
    head = git(clone, "rev-parse", "HEAD")
    anyio.run(runner._hand_over, clone, "h1")
    assert git(repo, "rev-parse", "refs/orchestrator/wip/h1") == head
    assert git(repo, "show", "refs/orchestrator/wip/h1:new.txt") == "only in the attempt's worktree"


def test_demo_runs_on_a_local_ray_with_one_command(tmp_path):
    """docs/scale-out.md's one command: the daemon starts a local Ray (ray.address empty)
    and every sample ticket's agent runs on it, all merged."""
    from tests.integration.conftest import run_group

    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    done = run_group(
        [
            sys.executable,
            "-m",
            "orchestrator",
            "demo",
            "--runner",
            "ray",
            "--headless",
            "--auto-approve",
            "--dir",
            str(tmp_path / "demo"),
        ],
        timeout_s=110,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "demo: every ticket merged into main" in done.stdout
    started = [line for line in done.stdout.splitlines() if "agent.started" in line]
    assert started and all("Ray node" in line for line in started), started
