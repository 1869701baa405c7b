"""Agents on a Ray cluster: ``runner: ray`` (docs/scale-out.md).

The daemon stays the control plane (queue, leases, merge queue, CI gate, store);
only the agent processes run on the cluster. Code travels through git, never
through Ray's object store:

1. The worker prepares the ticket's branch in its local worktree as for a local
   agent; :meth:`RayRunner.start` points the ticket's private WIP ref
   ``refs/orchestrator/wip/<ticket>`` in repo.git at that commit (set there
   directly when repo.git has it, else pushed) and draws a per-attempt
   WIP token (its SHA-256 goes to ``repo.git/orchestrator-wip/<ticket>.sha256``,
   hooks/update lets only its holder push that ref).
2. Each worker ``agent-K`` has a detached, named Ray actor (:class:`NodeAgent`,
   ``orch-<home>-agent-K``), placed by Ray's scheduler with the configured resources
   (``ray.num_cpus``, ``ray.memory_mb``, ``ray.resources``) when the daemon starts
   and reused for all the worker's attempts (no process start per attempt); a new
   one is placed when its node was lost. On its node it fetches the WIP ref from
   ``repo_url`` into a node-local bare cache (incremental fetches), adds a worktree
   on the ticket's branch, and runs the same agent argv with the same ``ORCH_*``
   environment (paths mapped to the node's). Every ``ray.wip_push_s`` it pushes a
   snapshot of the worktree (a commit on a private index) to the WIP ref.
3. The daemon long-polls the actor for output (:meth:`NodeAgent.read`); output and
   worktree changes feed the same progress and heartbeat rules as a local agent.
4. When the agent exits (or is stopped: the signal goes to its process group on the
   node), the node commits what it left and pushes it to the WIP ref; the daemon
   fetches the WIP ref and fast-forwards the local branch to it. From there the
   attempt ends exactly like a local one: the worker's commit and lock check, the
   core's Push effect, hooks/post-receive, CI and the merge queue are unchanged.

A node lost mid-attempt (the actor dies with it) requeues the ticket without
counting the attempt, from its last WIP push. After a daemon crash,
:meth:`RayRunner.recover` finds the worker's actor by name, stops its agent,
and brings its work home the same way; the actor serves the worker again.

Ray is imported only here, and only when ``runner: ray`` is configured: the base
install does not need it (``pip install 'orchestrator[ray]'``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import ipaddress
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio

from orchestrator.daemon.contain import RUN_ID_VAR, end_attempt_processes
from orchestrator.daemon.git import GIT_ENV, REF_TOKEN_VAR, git, run_git
from orchestrator.daemon.runner import kill_group
from orchestrator.shared.config import Home
from orchestrator.shared.errors import GitError, RunnerError
from orchestrator.shared.fsutil import atomic_write

log = logging.getLogger(__name__)

#: Ray namespace of the actors (their names carry the home's id).
NAMESPACE = "orchestrator"
WIP_REF_PREFIX = "refs/orchestrator/wip/"
#: The environment variable a node pushes the WIP ref with (checked by hooks/update).
WIP_TOKEN_VAR = "ORCH_WIP_TOKEN"  # noqa: S105 (a variable name)
#: Directory of repo.git holding each running attempt's WIP token hash.
WIP_TOKEN_DIR = "orchestrator-wip"  # noqa: S105 (a directory name)
#: How long one :meth:`NodeAgent.read` waits on the node for output (s): a long poll.
READ_WAIT_S = 1.0
#: An agent not started after this long is reported as waiting for resources (s);
#: starting one takes a few hundred ms when its node has room.
WAITING_AFTER_S = 2.0
#: How long a connection to ``ray.address`` may take before the cluster counts as
#: unreachable (s). ray.init itself retries for minutes.
PROBE_TIMEOUT_S = 5.0
#: A node that stays unreachable this long after its agent was killed is lost (s).
LOST_AFTER_KILL_S = 15.0
#: Pause before asking an unavailable actor again (s); Ray declares it dead or back.
UNAVAILABLE_RETRY_S = 1.0
#: How long ending an attempt on its node may take before it is given up (s).
FINISH_TIMEOUT_S = 120.0
#: Object store of the local Ray started when ``ray.address`` is empty (bytes): agents
#: exchange nothing large through it (code travels through git).
LOCAL_OBJECT_STORE_BYTES = 100_000_000
#: Node address of that local Ray. Ray replaces 127.0.0.1 by the machine's outward
#: address (resolve_ip_for_localhost); another loopback address keeps a development
#: cluster, which has no authentication by default, off the network.
LOCAL_NODE_IP = "127.0.0.2"
#: The most output one read returns (bytes).
MAX_CHUNK_BYTES = 1 << 16
#: The most of a node's usage file sent back (bytes).
MAX_USAGE_BYTES = 1 << 20
#: git config of every git call on a node (like daemon.git's, but ssh and credential
#: helpers stay usable: a node may reach repo_url over ssh).
NODE_GIT_ARGS = (
    "-c",
    "core.fsmonitor=false",
    "-c",
    "core.hooksPath=/dev/null",
    "-c",
    "core.pager=cat",
    "-c",
    "protocol.ext.allow=never",
)


def home_id(home: Home) -> str:
    """A short id of the project home, in its actors' names (several homes may share
    a cluster)."""
    return hashlib.sha256(str(home.root).encode()).hexdigest()[:10]


def actor_name(home: str, agent: str) -> str:
    """The name of worker ``agent``'s actor (namespace :data:`NAMESPACE`)."""
    return f"orch-{home}-{agent}"


def wip_ref(ticket: str) -> str:
    return WIP_REF_PREFIX + ticket


def issue_wip_token(repo: Path, ticket: str) -> str:
    """Draw the WIP token of a new attempt of ``ticket``; keep only its SHA-256 in
    ``repo/orchestrator-wip/<ticket>.sha256`` (0600), replacing an older attempt's.

    Raises:
        OSError: repo.git is not writable.
    """
    token = secrets.token_hex(32)
    digest = hashlib.sha256(token.encode()).hexdigest()
    (repo / WIP_TOKEN_DIR).mkdir(mode=0o700, exist_ok=True)
    atomic_write(repo / WIP_TOKEN_DIR / f"{ticket}.sha256", digest + "\n", mode=0o600)
    return token


def revoke_wip_token(repo: Path, ticket: str) -> None:
    """From now on no node may push ``ticket``'s WIP ref (a lost node coming back)."""
    (repo / WIP_TOKEN_DIR / f"{ticket}.sha256").unlink(missing_ok=True)


async def _get(ref: Any) -> Any:
    """Await a Ray ObjectRef from the event loop (no thread held while it runs)."""
    return await asyncio.wrap_future(ref.future())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


class RayRunner:
    """Runs agents as Ray actors (see the module docstring for the data flow).

    Args:
        home: the project home (``runner: ray``, ``ray.*`` and ``repo_url`` of its config).
    """

    def __init__(self, home: Home) -> None:
        self.home = home
        self.config = home.config.ray
        self.home_id = home_id(home)
        self._ray: Any = None
        self._actor_class: Any = None
        self._slots: dict[str, Any] = {}
        """Worker name -> its actor handle (placed once, reused for its attempts)."""

    # --- connection --------------------------------------------------------

    def connect(self, agents: Sequence[str]) -> None:
        """Connect to ``ray.address``, or start a local Ray when it is empty (blocking),
        and ask Ray to place the actors of the workers named ``agents`` (not waiting for
        them), so that a worker's first attempt does not wait for its actor's process.

        Raises:
            RunnerError: Ray is not installed, or the cluster cannot be reached (one line).
        """
        # Ray's usage statistics would be sent to the internet; opt in explicitly.
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        try:
            import ray
        except ImportError:
            raise RunnerError(
                "runner: ray needs Ray on this machine: pip install 'orchestrator[ray]'"
            ) from None
        address = self.config.address
        options: dict[str, Any] = {
            "namespace": NAMESPACE,
            "log_to_driver": False,
            "logging_level": logging.WARNING,
            "configure_logging": False,
        }
        if address and not address.startswith("ray://"):
            host, _, port = address.rpartition(":")
            try:
                with socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S):
                    pass
            except OSError as exc:
                raise RunnerError(
                    f"ray.address {address}: cannot reach the Ray cluster "
                    f"({exc.strerror or exc}); start it (`ray start --head`) or fix "
                    "ray.address in config.yaml"
                ) from None
            if _is_loopback(host):  # a cluster on this machine: stay on that address
                options["_node_ip_address"] = host
        if not address:
            workers = self.home.config.workers
            options |= {
                "num_cpus": max(os.cpu_count() or 1, int(workers * self.config.num_cpus + 0.999)),
                "resources": {k: v * workers for k, v in self.config.resources.items()},
                "object_store_memory": LOCAL_OBJECT_STORE_BYTES,
                "include_dashboard": False,
                "_node_ip_address": LOCAL_NODE_IP,
            }
        try:
            ray.init(address=address or None, **options)
        except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError...
            raise RunnerError(
                f"ray.address {address or '(local)'}: cannot start or join Ray: {_first_line(exc)}"
            ) from None
        self._ray = ray
        self._actor_class = ray.remote(NodeAgent)
        log.info(
            "runner: ray at %s (%s)",
            address or "a local Ray",
            ", ".join(
                f"{k} {v:g}" for k, v in self._ray.cluster_resources().items() if "node:" not in k
            ),
        )
        for agent in agents:
            self._slot(agent)

    def close(self) -> None:
        """Give the workers' actors back (their resources) and disconnect; a local Ray
        started by :meth:`connect` stops with it. After a crash they stay, and the next
        daemon finds them (:meth:`recover`)."""
        for agent in list(self._slots):
            self._forget(agent)
        if self._ray is not None and self._ray.is_initialized():
            self._ray.shutdown()

    def _slot(self, agent: str) -> Any:
        """Worker ``agent``'s actor: known, found by name (it outlived a daemon), or new
        (Ray places it when a node has room)."""
        actor = self._slots.get(agent)
        if actor is not None:
            return actor
        name = actor_name(self.home_id, agent)
        try:
            actor = self._ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            options: dict[str, Any] = {
                "name": name,
                "namespace": NAMESPACE,
                "lifetime": "detached",
                "max_concurrency": 4,
                "max_restarts": 0,
                "num_cpus": self.config.num_cpus,
                "resources": dict(self.config.resources),
            }
            if self.config.memory_mb:
                options["memory"] = self.config.memory_mb * 2**20
            actor = self._actor_class.options(**options).remote(self.config.cache_dir)
        self._slots[agent] = actor
        return actor

    def _forget(self, agent: str) -> None:
        """Drop (and kill) worker ``agent``'s actor: its node was lost, or a start that
        waited for room was abandoned."""
        actor = self._slots.pop(agent, None)
        if actor is None:
            return
        try:
            self._ray.kill(actor, no_restart=True)
        except self._ray.exceptions.RayError as exc:
            log.warning("%s: cannot kill its Ray actor: %s", agent, _first_line(exc))

    def needs(self) -> str:
        """What one agent asks of a node, e.g. ``num_cpus=1, agent=1``."""
        parts = [f"num_cpus={self.config.num_cpus:g}"]
        if self.config.memory_mb:
            parts.append(f"memory={self.config.memory_mb} MB")
        parts += [f"{k}={v:g}" for k, v in sorted(self.config.resources.items())]
        return ", ".join(parts)

    # --- an attempt ----------------------------------------------------------

    async def start(
        self,
        argv: Sequence[str],
        cwd: Path,
        env: Mapping[str, str],
        waiting: Callable[[str], None] | None = None,
    ) -> RayAgent:
        """Place the agent of the attempt in ``env`` (``ORCH_TICKET_ID``...) on the cluster.

        ``cwd`` is the local worktree on the ticket's branch; its commit is what the node
        checks out. Returns once the agent process runs on its node.

        Raises:
            OSError: it could not be started (FileNotFoundError: no such command on
                the node; otherwise git or Ray said why).
        """
        assert self._actor_class is not None, "connect() first"
        ticket = env["ORCH_TICKET_ID"]
        try:
            token = await anyio.to_thread.run_sync(issue_wip_token, self.home.repo, ticket)
            commit = await self._hand_over(cwd, ticket)
        except (OSError, GitError) as exc:
            raise OSError(f"cannot hand the branch to the cluster: {exc}") from None
        spec = self._spec(argv, cwd, env, token, commit)
        agent = env.get("ORCH_AGENT", "agent")
        errors = self._ray.exceptions
        for again in (True, False):
            actor = self._slot(agent)
            started = asyncio.wrap_future(actor.start.remote(spec).future())
            try:
                with anyio.move_on_after(WAITING_AFTER_S):
                    await asyncio.shield(started)
                if not started.done() and waiting is not None:
                    waiting(f"{self.needs()} (not placed after {WAITING_AFTER_S:g} s)")
                info = await asyncio.shield(started)
                break
            except anyio.get_cancelled_exc_class():
                with anyio.CancelScope(shield=True):
                    if started.done():  # it started meanwhile: end it, keep the actor
                        await self._end_attempt(actor, ticket)
                    else:  # never placed: give its resources back
                        self._forget(agent)
                    await anyio.to_thread.run_sync(revoke_wip_token, self.home.repo, ticket)
                raise
            except errors.RayActorError as exc:  # its node was lost since the last attempt
                self._forget(agent)
                if again:
                    continue
                await anyio.to_thread.run_sync(revoke_wip_token, self.home.repo, ticket)
                raise OSError(f"Ray could not run it: {_first_line(exc)}") from None
            except errors.RayError as exc:
                await anyio.to_thread.run_sync(revoke_wip_token, self.home.repo, ticket)
                raise OSError(f"Ray could not run it: {_first_line(exc)}") from None
        if info.get("error"):
            await anyio.to_thread.run_sync(revoke_wip_token, self.home.repo, ticket)
            if info.get("missing"):
                raise FileNotFoundError(info["error"])
            raise OSError(info["error"])
        usage_file = Path(env["ORCH_USAGE_FILE"]) if env.get("ORCH_USAGE_FILE") else None
        return RayAgent(self, actor, info, ticket, agent, cwd, usage_file)

    async def _hand_over(self, cwd: Path, ticket: str) -> str:
        """Point ``ticket``'s WIP ref in repo.git at ``cwd``'s commit (returned), which
        the node fetches. That commit is nearly always in repo.git already (main, or a branch
        pushed before): then the ref is set there directly, without a push and its
        hooks (a few hundred ms of every dispatch); otherwise (update-ref refuses a
        commit repo.git does not have) it is pushed.

        Raises:
            GitError: git failed.
        """
        head = await git(cwd, "rev-parse", "HEAD")
        if (await run_git(self.home.repo, "update-ref", wip_ref(ticket), head)).returncode != 0:
            await git(cwd, "push", "--quiet", "--force", "origin", f"{head}:{wip_ref(ticket)}")
        return head

    def _spec(
        self, argv: Sequence[str], cwd: Path, env: Mapping[str, str], token: str, commit: str
    ) -> dict[str, Any]:
        """What the node needs: argv and ORCH_* (local paths, mapped there), the files
        they name, the repository URL, and nothing of this machine's environment."""

        def read(name: str) -> str:
            path = env.get(name, "")
            try:
                return Path(path).read_text(errors="replace") if path else ""
            except OSError:
                return ""

        ticket = env["ORCH_TICKET_ID"]
        orch = {k: v for k, v in env.items() if k.startswith("ORCH_") and k != "ORCH_CONFIG"}
        return {
            "home_id": self.home_id,
            "ticket": ticket,
            "attempt": int(env["ORCH_ATTEMPT"]),
            "agent": env.get("ORCH_AGENT", ""),
            "branch": env["ORCH_BRANCH"],
            "repo_url": self.home.repo_url,
            "ref": wip_ref(ticket),
            "commit": commit,
            "token": token,
            "wip_push_s": self.config.wip_push_s,
            "argv": list(argv),
            "env": dict(self.home.config.agent.env) | orch,
            "worktree": str(cwd),
            "run_dir": env.get("ORCH_RUN_DIR", ""),
            "ticket_file": env.get("ORCH_TICKET_FILE", ""),
            "files": {
                "prompt.md": read("ORCH_PROMPT_FILE"),
                "feedback.md": read("ORCH_FEEDBACK_FILE"),
                "ticket.yaml": read("ORCH_TICKET_FILE"),
            },
            "message": f"{ticket}: attempt {env['ORCH_ATTEMPT']} by {env.get('ORCH_AGENT', '')}"
            f"\n\nTicket: {ticket}",
        }

    async def _end_attempt(self, actor: Any, ticket: str, grace_s: float = 0.0) -> None:
        """End the attempt running in ``actor`` (its node commits and pushes the work)."""
        with anyio.move_on_after(grace_s + FINISH_TIMEOUT_S):
            try:
                result = await _get(actor.finish.remote(grace_s))
            except self._ray.exceptions.RayError as exc:
                log.warning("%s: ending the agent on its node failed: %s", ticket, exc)
                return
            if result.get("error"):
                log.warning("%s: %s", ticket, result["error"])

    async def collect(self, ticket: str, worktree: Path) -> None:
        """Fast-forward ``worktree``'s branch to the ticket's WIP ref.

        The WIP ref descends from the commit the attempt started on; when it does not
        (someone moved the branch meanwhile) the branch is kept and a warning logged.
        """
        try:
            await git(worktree, "fetch", "--quiet", "origin", wip_ref(ticket))
            merged = await run_git(worktree, "merge", "--quiet", "--ff-only", "FETCH_HEAD")
            if merged.returncode != 0:  # e.g. it does not descend from the branch
                err = merged.stderr.decode(errors="replace").strip().splitlines()
                log.warning(
                    "%s: cannot fast-forward the branch to its WIP ref (branch kept): %s",
                    ticket,
                    err[-1] if err else merged.returncode,
                )
        except GitError as exc:
            log.warning("%s: cannot bring the node's work home: %s", ticket, exc)

    async def recover(
        self, agent: str, ticket: str, attempt: int, pid: int | None, worktree: Path
    ) -> None:
        """After a daemon crash: find worker ``agent``'s actor, stop the agent running in
        it (SIGTERM, then SIGKILL after ``agent.stop_grace_s``), let the node commit and
        push its work, and fast-forward ``worktree`` to it; the actor serves the worker
        again. An actor that is gone (its node too) leaves the last WIP push, which is
        fetched the same way."""
        try:
            actor = self._ray.get_actor(actor_name(self.home_id, agent), namespace=NAMESPACE)
        except ValueError:
            actor = None
        if actor is not None:
            await self._end_attempt(actor, ticket, self.home.config.agent.stop_grace_s)
            self._slots[agent] = actor
            log.info("%s: found its agent on the cluster after a restart; stopped it", ticket)
        await anyio.to_thread.run_sync(revoke_wip_token, self.home.repo, ticket)
        await self.collect(ticket, worktree)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class RayAgent:
    """One agent running on a Ray node, as a worker sees it (an AgentProcess)."""

    def __init__(
        self,
        runner: RayRunner,
        actor: Any,
        info: dict[str, Any],
        ticket: str,
        agent: str,
        worktree: Path,
        usage_file: Path | None = None,
    ) -> None:
        self._agent = agent
        self._usage_file = usage_file
        self._runner = runner
        self._ray = runner._ray
        self._actor = actor
        self._ticket = ticket
        self._worktree = worktree
        self._pid = int(info["pid"])
        self._node = str(info["node"])
        self._host = str(info["host"])
        self._returncode: int | None = None
        self._lost = ""
        self._status: str | None = None
        self._killed_at: float | None = None
        self._exited = anyio.Event()

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def returncode(self) -> int | None:
        return self._returncode

    @property
    def node(self) -> str:
        return self._node

    @property
    def host(self) -> str:
        return self._host

    @property
    def lost(self) -> str:
        return self._lost

    @property
    def worktree_status(self) -> str | None:
        return self._status or ""

    async def output(self) -> AsyncIterator[bytes]:
        """Long-polls the node for output until the agent exited and all was read;
        a node that dies meanwhile makes the agent :attr:`lost`."""
        offset = 0
        errors = self._ray.exceptions
        try:
            while True:
                try:
                    chunk, offset, code, status = await _get(
                        self._actor.read.remote(offset, READ_WAIT_S)
                    )
                except errors.ActorUnavailableError as exc:
                    if self._killed_at and time.monotonic() - self._killed_at > LOST_AFTER_KILL_S:
                        self._node_lost(f"unreachable: {_first_line(exc)}")
                        return
                    await anyio.sleep(UNAVAILABLE_RETRY_S)  # a backoff: Ray decides soon
                    continue
                except errors.RayError as exc:  # ActorDiedError: its node (or worker) died
                    self._node_lost(_first_line(exc))
                    return
                self._status = status
                if chunk:
                    yield chunk
                elif code is not None:
                    self._returncode = code
                    return
        finally:
            self._exited.set()

    def _node_lost(self, why: str) -> None:
        log.warning(
            "%s: its Ray node %s (%s) was lost: %s", self._ticket, self._node, self._host, why
        )
        self._lost = why
        self._returncode = -int(signal.SIGKILL)

    async def wait(self) -> int:
        await self._exited.wait()
        assert self._returncode is not None
        return self._returncode

    def signal(self, sig: signal.Signals) -> None:
        if sig == signal.SIGKILL and self._killed_at is None:
            self._killed_at = time.monotonic()
        if self._returncode is None:
            self._actor.signal.remote(int(sig))  # fire and forget: a dead node is not an error

    async def settle(self) -> None:
        """The node ends what is left, commits and pushes to the WIP ref; the local
        branch is fast-forwarded to it (also after a lost node: its last WIP push)."""
        errors = self._ray.exceptions
        if not self._lost:
            result: dict[str, Any] = {}
            with anyio.move_on_after(FINISH_TIMEOUT_S):
                try:
                    result = await _get(self._actor.finish.remote(None))
                except errors.RayError as exc:
                    self._node_lost(_first_line(exc))
            if result.get("error"):
                log.warning("%s: %s", self._ticket, result["error"])
            usage = result.get("usage") or b""
            if usage and self._usage_file is not None:
                await anyio.to_thread.run_sync(_append_usage, self._usage_file, usage)
        if self._lost:  # the actor died with its node: the worker gets a new one
            self._runner._forget(self._agent)
        await anyio.to_thread.run_sync(revoke_wip_token, self._runner.home.repo, self._ticket)
        await self._runner.collect(self._ticket, self._worktree)


def _append_usage(path: Path, usage: bytes) -> None:
    """Add the node's usage lines to the attempt's local usage file (docs/usage.md)."""
    with open(path, "ab") as out:
        out.write(usage)


# --- the node side --------------------------------------------------------------


def _node_git(cwd: Path, *args: str, env: Mapping[str, str] | None = None) -> str:
    """git on a node; returns stdout. Raises GitError with git's last stderr line."""
    full = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("GIT_") and k not in (REF_TOKEN_VAR, WIP_TOKEN_VAR, "ORCH_BRANCH")
    }
    full |= GIT_ENV
    full |= env or {}
    result = subprocess.run(
        ["git", *NODE_GIT_ARGS, "-C", str(cwd), *args], capture_output=True, env=full, check=False
    )
    if result.returncode != 0:
        err = result.stderr.decode(errors="replace").strip().splitlines()
        raise GitError(f"git {' '.join(args[:2])}: {err[-1] if err else result.returncode}")
    return result.stdout.decode(errors="replace").strip()


class NodeAgent:
    """A worker's actor on a Ray node: runs its attempts one after the other. Its
    methods run in threads (``max_concurrency``), so reads, signals and the finish
    of an attempt overlap.

    Args:
        cache_dir: ``ray.cache_dir`` (empty: ``~/.cache/orchestrator/ray`` on the node).
    """

    def __init__(self, cache_dir: str) -> None:
        self.cache_dir = cache_dir
        self.attempt: NodeAttempt | None = None

    def start(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Start an attempt (ending one left running first); see :meth:`NodeAttempt.start`."""
        if self.attempt is not None:
            self.attempt.finish(0.0)
        self.attempt = NodeAttempt(spec, self.cache_dir)
        return self.attempt.start()

    def read(self, offset: int, wait_s: float) -> tuple[bytes, int, int | None, str]:
        assert self.attempt is not None
        return self.attempt.read(offset, wait_s)

    def signal(self, sig: int) -> None:
        if self.attempt is not None:
            self.attempt.signal(sig)

    def finish(self, grace_s: float | None) -> dict[str, Any]:
        if self.attempt is None:
            return {"head": "", "usage": b"", "error": "", "ticket": ""}
        return self.attempt.finish(grace_s)


class NodeAttempt:
    """One attempt on a node: the worktree, the agent process, its output, WIP pushes.

    Args:
        spec: built by :meth:`RayRunner._spec` (plain data: argv, env, files, URL, token).
        cache_dir: see :class:`NodeAgent`.
    """

    def __init__(self, spec: dict[str, Any], cache_dir: str) -> None:
        self.spec = spec
        root = Path(os.path.expanduser(cache_dir or "~/.cache/orchestrator/ray"))
        url_key = hashlib.sha256(spec["repo_url"].encode()).hexdigest()[:16]
        key = f"{spec['home_id']}-{spec['ticket']}-{spec['attempt']}"
        self.mirror = root / "git" / f"{url_key}.git"
        #: The worker's worktree on this node, kept from one attempt to the next (like
        #: a local worker's): each checkout changes only the files that differ.
        self.worktree = root / "worktrees" / f"{spec['home_id']}-{spec['agent'] or 'agent'}"
        self.run_dir = root / "runs" / key
        self.proc: subprocess.Popen[bytes] | None = None
        self.buf = bytearray()
        self.base = 0
        """Output offset of ``buf[0]`` (what the daemon read before is dropped)."""
        self.cond = threading.Condition()
        self.eof = False
        self.exited_at: float | None = None
        self.tree = ""
        """The tree of the last WIP push (also the worktree digest the daemon sees)."""
        self.stop_wip = threading.Event()
        self.git_lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.finished: dict[str, Any] | None = None

    # --- start ---

    def start(self) -> dict[str, Any]:
        """Check out the branch and start the agent; ``{"pid", "node", "host"}`` or
        ``{"error": why}`` (``"missing": True`` when the command does not exist)."""
        import ray

        host = socket.gethostname()
        self.finished = {"head": "", "usage": b"", "error": "", "ticket": self.spec["ticket"]}
        try:
            self._checkout()
            argv, env = self._materialise()
        except (GitError, OSError) as exc:
            self._cleanup()
            return {"error": f"cannot prepare the worktree on {host}: {exc}"}
        try:
            self.proc = subprocess.Popen(
                argv,
                cwd=self.worktree,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except FileNotFoundError as exc:
            self._cleanup()
            if exc.filename != argv[0]:  # the worktree vanished meanwhile
                return {"error": f"cannot start agent {argv[0]} on {host}: {exc}"}
            return {"error": f"agent command not found on {host}: {argv[0]}", "missing": True}
        except OSError as exc:
            self._cleanup()
            return {"error": f"cannot start agent {argv[0]} on {host}: {exc.strerror or exc}"}
        self.finished = None
        for target in (self._pump, self._wip_loop):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self.threads.append(thread)
        return {
            "pid": self.proc.pid,
            "node": ray.get_runtime_context().get_node_id(),
            "host": host,
        }

    def _checkout(self) -> None:
        """Bring the attempt's commit into the node's cache (fetched only when the
        cache lacks it); check the branch out at it in the worker's worktree (added
        when missing or unusable). What the last attempt left there was committed and
        pushed by :meth:`finish`; files git ignores stay, as in a local worker's
        worktree. The cache's lock is held only for what changes the cache itself."""
        spec = self.spec
        branch, commit = spec["branch"], spec["commit"]
        with self._cache_lock():
            if not (self.mirror / "HEAD").exists():
                _node_git(self.mirror.parent, "init", "--quiet", "--bare", str(self.mirror))
            try:
                _node_git(self.mirror, "cat-file", "-e", f"{commit}^{{commit}}")
            except GitError:
                ref = spec["ref"]
                _node_git(
                    self.mirror, "fetch", "--quiet", "--force", spec["repo_url"], f"+{ref}:{ref}"
                )
            reuse = (self.worktree / ".git").exists()
            if not reuse:
                self._add_worktree()
        if reuse:
            try:  # another worker's idle worktree may still have the branch
                _node_git(
                    self.worktree,
                    "checkout",
                    "--quiet",
                    "--force",
                    "--ignore-other-worktrees",
                    "-B",
                    branch,
                    commit,
                )
            except GitError as exc:
                log.warning("%s: worktree not reusable, adding it again: %s", branch, exc)
                with self._cache_lock():
                    self._add_worktree()

    @contextlib.contextmanager
    def _cache_lock(self) -> Iterator[None]:
        """The node's git cache is shared by the workers on the node (``flock``)."""
        self.mirror.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{self.mirror}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _add_worktree(self) -> None:
        """(Re)create the worker's worktree on the branch (the cache's lock held)."""
        if self.worktree.exists():
            shutil.rmtree(self.worktree)
        _node_git(self.mirror, "worktree", "prune")
        _node_git(
            self.mirror,
            "worktree",
            "add",
            "--quiet",
            "--force",
            "-B",
            self.spec["branch"],
            str(self.worktree),
            self.spec["commit"],
        )

    def _materialise(self) -> tuple[list[str], dict[str, str]]:
        """The argv and environment with the daemon's paths mapped to this node's."""
        spec = self.spec
        if self.run_dir.exists():
            shutil.rmtree(self.run_dir)
        self.run_dir.mkdir(parents=True)
        ticket_file = self.run_dir / "ticket.yaml"
        for name, text in spec["files"].items():
            (self.run_dir / name).write_text(text)
        mapping = sorted(
            (
                (spec["worktree"], str(self.worktree)),
                (spec["run_dir"], str(self.run_dir)),
                (spec["ticket_file"], str(ticket_file)),
            ),
            key=lambda pair: -len(pair[0]),
        )

        def local(value: str) -> str:
            for old, new in mapping:
                if old:
                    value = value.replace(old, new)
            return value

        env = {
            k: v
            for k, v in os.environ.items()
            if k not in (REF_TOKEN_VAR, WIP_TOKEN_VAR, "NOTIFY_SOCKET")
        }
        env |= {k: local(v) for k, v in spec["env"].items()}
        if not spec["files"]["feedback.md"]:
            env["ORCH_FEEDBACK_FILE"] = ""
        return [local(a) for a in spec["argv"]], env

    # --- while it runs ---

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while chunk := os.read(fd, MAX_CHUNK_BYTES):
            with self.cond:
                self.buf.extend(chunk)
                self.cond.notify_all()
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def read(self, offset: int, wait_s: float) -> tuple[bytes, int, int | None, str]:
        """Output from ``offset`` on (waiting up to ``wait_s`` for some), as
        ``(chunk, next offset, exit code or None, worktree digest)``. The exit code
        comes once all output was read (or 1 s after the exit, when a leftover
        process still holds the pipe open)."""
        assert self.proc is not None
        with self.cond:
            if offset > self.base:
                del self.buf[: offset - self.base]
                self.base = offset
            if not self.buf and not self.eof:
                self.cond.wait(wait_s)
            chunk = bytes(self.buf[:MAX_CHUNK_BYTES])
            code = None
            if not chunk:
                code = self.proc.poll()
                if code is not None and not self.eof:
                    self.exited_at = self.exited_at or time.monotonic()
                    if time.monotonic() - self.exited_at < 1.0:
                        code = None
            return chunk, self.base + len(chunk), code, self.tree

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the agent's process group (SIGCONT after SIGTERM: a stopped
        agent must see it)."""
        if self.proc is not None and self.proc.poll() is None:
            kill_group(self.proc.pid, signal.Signals(sig))

    def _wip_loop(self) -> None:
        while not self.stop_wip.wait(self.spec["wip_push_s"]):
            try:
                self._push_wip()
            except (GitError, OSError) as exc:
                log.warning("%s: WIP push failed: %s", self.spec["ticket"], exc)

    def _push_wip(self) -> None:
        """Push a snapshot of the worktree (a commit built on a private index, so the
        agent's own index is untouched) when it changed since the last push."""
        with self.git_lock:
            index = {"GIT_INDEX_FILE": str(self.run_dir / "wip.index")}
            _node_git(self.worktree, "read-tree", "HEAD", env=index)
            _node_git(self.worktree, "add", "-A", env=index)
            tree = _node_git(self.worktree, "write-tree", env=index)
            if tree == self.tree:
                return
            head = _node_git(self.worktree, "rev-parse", "HEAD")
            commit = head
            if tree != _node_git(self.worktree, "rev-parse", "HEAD^{tree}"):
                spec = self.spec
                message = f"WIP of {spec['ticket']} attempt {spec['attempt']} (orchestrator)"
                commit = _node_git(self.worktree, "commit-tree", tree, "-p", head, "-m", message)
            self._push(commit)
            self.tree = tree

    def _push(self, commit: str) -> None:
        spec = self.spec
        _node_git(
            self.worktree,
            "push",
            "--quiet",
            "--force",
            spec["repo_url"],
            f"{commit}:{spec['ref']}",
            env={WIP_TOKEN_VAR: spec["token"]},
        )

    # --- the end ---

    def finish(self, grace_s: float | None) -> dict[str, Any]:
        """End the agent (``grace_s`` given: SIGTERM to its group, that long, then SIGKILL)
        and everything it left, commit what is in the worktree, push it to the WIP ref.
        Returns ``{"head", "usage", "error"}``; called again, the same answer."""
        if self.finished is not None:
            return self.finished
        proc = self.proc
        if proc is not None:
            if grace_s is not None and proc.poll() is None:
                kill_group(proc.pid, signal.SIGTERM)
                kill_group(proc.pid, signal.SIGCONT)
                try:
                    proc.wait(grace_s)
                except subprocess.TimeoutExpired:
                    pass
            kill_group(proc.pid, signal.SIGKILL)
            proc.wait()
            end_attempt_processes(proc.pid, self.spec["env"].get(RUN_ID_VAR, "-"))
        self.stop_wip.set()
        for thread in self.threads:
            thread.join(10)
        result: dict[str, Any] = {"head": "", "usage": b"", "error": "", "ticket": ""}
        result["ticket"] = self.spec["ticket"]
        try:
            if proc is not None:
                with self.git_lock:
                    _node_git(self.worktree, "add", "-A")
                    if _node_git(self.worktree, "status", "--porcelain"):
                        _node_git(
                            self.worktree,
                            "commit",
                            "--quiet",
                            "--no-verify",
                            "-m",
                            self.spec["message"],
                        )
                    result["head"] = _node_git(self.worktree, "rev-parse", "HEAD")
                    self._push(result["head"])
            usage = self.run_dir / "usage.jsonl"
            if usage.exists():
                result["usage"] = usage.read_bytes()[:MAX_USAGE_BYTES]
        except (GitError, OSError) as exc:
            result["error"] = f"cannot commit and push the agent's work on its node: {exc}"
        finally:
            self._cleanup()
        self.finished = result
        return result

    def _cleanup(self) -> None:
        """Remove the attempt's run directory (the worktree stays for the worker's next
        attempt)."""
        shutil.rmtree(self.run_dir, ignore_errors=True)
