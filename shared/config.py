"""config.yaml: the project's settings, and the paths derived from it.

Every key is documented in docs/config.md. The file sits in the project home;
all other paths (backlog, repo.git, state) are derived from its directory.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from orchestrator.shared.errors import ConfigError
from orchestrator.shared.models import RelPath
from orchestrator.shared.usage import Price
from orchestrator.shared.yamlsafe import decode_yaml

#: Shortest interval or timeout accepted (s): below it a timer loop spins the CPU.
MIN_INTERVAL_S = 0.1
Interval = Annotated[float, msgspec.Meta(ge=MIN_INTERVAL_S)]

#: AF_UNIX sun_path holds 108 bytes including the terminating NUL (unix(7)).
MAX_SOCKET_PATH_BYTES = 107


class AgentConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    command: Annotated[list[str], msgspec.Meta(min_length=1)]
    """argv list; items may contain {prompt}, {prompt_file}, {ticket_file}, {ticket_id},
    {worktree}, {branch}, {attempt}, {feedback_file}, {run_dir}, {usage_file}."""
    stop_grace_s: Interval = 10.0
    env: dict[str, str] = msgspec.field(default_factory=dict)


class CIConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    command: str = ""
    """The repo's test command, run by ci.sh with ``bash -c`` in a throw-away checkout."""
    timeout_s: Annotated[int, msgspec.Meta(ge=1)] = 600
    setup: bool = False
    """Run ``worktree.copy`` and ``worktree.setup`` in the CI checkout before the command."""
    parallel: Annotated[int, msgspec.Meta(ge=1, le=32)] | None = None
    """How many merge queue entries may run CI at once (docs/ci.md); None: as many as
    the queue stacks (:attr:`Config.ci_parallel`)."""


class ReviewConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The reviewer stage (docs/review.md)."""

    command: list[str] = msgspec.field(default_factory=list)
    """argv of the reviewer (no shell); the agent placeholders plus ``{diff_file}``.
    Empty: no reviewer."""
    max_rounds: Annotated[int, msgspec.Meta(ge=1, le=20)] = 2
    """Reviews of one ticket before a person decides (changes requested each time)."""
    timeout_s: Annotated[int, msgspec.Meta(ge=1)] = 600
    """The reviewer is killed (its process group) after this long: a review error."""


class MergeConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    depth: Annotated[int, msgspec.Meta(ge=1, le=32)] | None = None
    """How many merge queue entries are stacked (and tested) ahead of main at once;
    None: twice ``workers``, at least 4 (:attr:`Config.queue_depth`)."""
    batch: Annotated[int, msgspec.Meta(ge=1, le=32)] = 1
    """At most this many consecutive entries form a batch whose CI runs on its last
    commit only, bisected on failure (docs/scheduling.md, "Batches"); 1: every entry
    is tested on its own tree."""


class UsageConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """How agent token usage is priced (docs/usage.md)."""

    model: str = ""
    """The model assumed when the agent's output names none (e.g. Codex's events)."""
    prices: dict[str, Price] = msgspec.field(default_factory=dict)
    """Model name (or prefix) -> USD per million tokens; over the built-in table."""


class BudgetConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    max_cost_usd: Annotated[float, msgspec.Meta(gt=0)] | None = None
    """Per ticket, over all its attempts; a ticket's own ``budget.max_cost_usd`` wins."""


class MetricsConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Where metrics go (docs/metrics.md)."""

    textfile: bool = True
    """Write ``metrics/orchestrator.prom`` (Prometheus text format, for node_exporter)."""
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] | None = None
    """Serve the same metrics on http://127.0.0.1:PORT/metrics (opt-in)."""


class WorktreeConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What a worktree gets before each agent starts (docs/config.md#worktree-setup)."""

    exclude: list[str] = msgspec.field(default_factory=list)
    """gitignore patterns of files agents leave that are never committed (e.g. ``.aider*``);
    written to the shared clone's ``info/exclude`` at every daemon start."""
    copy: list[RelPath] = msgspec.field(default_factory=list)
    """Files or directories copied from the source repository (e.g. ``.env``); never
    committed (they join the exclude block)."""
    source: str | None = None
    """Where ``copy`` copies from; default: the directory repo.git was cloned from."""
    setup: list[str] = msgspec.field(default_factory=list)
    """argv run in the worktree before each agent starts (e.g. install dependencies)."""
    setup_timeout_s: Annotated[int, msgspec.Meta(ge=1)] = 600


class TuiConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """How ``orchestrator tui`` behaves (docs/config.md, section ``tui``)."""

    confirm_merge: bool = True
    """Ask before ``c`` approves a ticket (approving merges it into main)."""
    notify: Literal["auto", "off"] = "auto"
    """Desktop notification when a ticket needs a person; ``auto``: when there is a display."""
    bell: bool = True
    """Ring the terminal bell when a ticket needs a person."""


class RayConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Where and how agents run with ``runner: ray`` (docs/scale-out.md, docs/config.md)."""

    address: str = ""
    """The cluster's GCS address ``HOST:PORT`` (as given to ``ray start --address``);
    empty: start a local Ray on this machine (for development and the demo)."""
    num_cpus: Annotated[float, msgspec.Meta(ge=0)] = 1.0
    """CPUs each agent reserves on its node (Ray's ``num_cpus``)."""
    memory_mb: Annotated[int, msgspec.Meta(ge=0)] = 0
    """Memory each agent reserves on its node, in MiB (Ray's ``memory``); 0: none."""
    resources: dict[str, Annotated[float, msgspec.Meta(gt=0)]] = msgspec.field(default_factory=dict)
    """Custom resources each agent needs, e.g. ``{agent: 1}`` to pin agents to the nodes
    started with ``ray start --resources '{"agent": 4}'``."""
    wip_push_s: Interval = 30.0
    """While an agent runs, its work is pushed to ``refs/orchestrator/wip/<ticket>`` at
    least this often (s): what a lost node loses at most."""
    cache_dir: str = ""
    """Node-local directory of the git cache and the agents' worktrees (``~`` expands on
    the node); empty: ``~/.cache/orchestrator/ray``."""


class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The decoded config.yaml (see docs/config.md for each key)."""

    agent: AgentConfig
    workers: Annotated[int, msgspec.Meta(ge=1, le=32)] = 3
    approval: Literal["manual", "auto"] = "manual"
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=50)] = 3
    ci: CIConfig = msgspec.field(default_factory=CIConfig)
    merge: MergeConfig = msgspec.field(default_factory=MergeConfig)
    review: ReviewConfig = msgspec.field(default_factory=ReviewConfig)
    lock_policy: Literal["reject", "warn"] = "reject"
    heartbeat_interval_s: Interval = 5.0
    lease_ttl_s: Interval = 60.0
    stale_after_s: Interval = 600.0
    stale_grace_s: Interval = 120.0
    starvation_after_s: Interval = 900.0
    aging_interval_s: Interval = 300.0
    rescan_interval_s: Interval = 2.0
    socket: str | None = None
    usage: UsageConfig = msgspec.field(default_factory=UsageConfig)
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    budget: BudgetConfig = msgspec.field(default_factory=BudgetConfig)
    worktree: WorktreeConfig = msgspec.field(default_factory=WorktreeConfig)
    tui: TuiConfig = msgspec.field(default_factory=TuiConfig)
    runner: Literal["local", "ray"] = "local"
    """Where agents run: ``local`` processes, or a Ray cluster (``ray``, docs/scale-out.md)."""
    ray: RayConfig = msgspec.field(default_factory=RayConfig)
    repo_url: str = ""
    """The URL of repo.git as the Ray nodes reach it (an ``ssh://`` URL or a path on a
    shared file system); empty: repo.git's path on this machine."""

    @property
    def queue_depth(self) -> int:
        """``merge.depth``, by default ``2 * workers`` (at least 4, at most 32).

        Why twice the workers (Little's law): W agents of A seconds each hand in W/A
        tickets a second, and each stays about C + overhead seconds in the queue (its
        CI run), so W·C/A entries must be under test at once for the queue to keep
        up; the default covers CI up to about twice the agents' time per ticket
        (docs/performance.md, throughput).
        """
        if self.merge.depth is not None:
            return self.merge.depth
        return min(32, max(4, 2 * self.workers))

    @property
    def ci_parallel(self) -> int:
        """``ci.parallel``, by default :attr:`queue_depth` (every stacked entry's CI runs)."""
        return self.ci.parallel if self.ci.parallel is not None else self.queue_depth


@dataclass(frozen=True)
class Home:
    """The project home and every path the daemon keeps under it."""

    root: Path
    config: Config

    @property
    def config_file(self) -> Path:
        return self.root / "config.yaml"

    @property
    def backlog(self) -> Path:
        return self.root / "backlog"

    @property
    def done_dir(self) -> Path:
        return self.backlog / "done"

    @property
    def rejected_dir(self) -> Path:
        return self.backlog / "rejected"

    @property
    def repo(self) -> Path:
        return self.root / "repo.git"

    @property
    def repo_url(self) -> str:
        """repo.git as Ray nodes reach it: ``repo_url`` of the config, else its path."""
        return self.config.repo_url or str(self.repo)

    @property
    def ci_status_dir(self) -> Path:
        return self.repo / "ci-status"

    @property
    def work(self) -> Path:
        """A non-bare clone of repo.git; the agents' worktrees belong to it."""
        return self.root / "work"

    @property
    def worktrees(self) -> Path:
        return self.root / "worktrees"

    @property
    def runs(self) -> Path:
        """runs/<ticket>/<attempt>/: prompt, feedback and agent log per attempt."""
        return self.root / "runs"

    @property
    def metrics_dir(self) -> Path:
        """metrics/: ``tickets.csv`` (a row per ended ticket) and ``orchestrator.prom``."""
        return self.root / "metrics"

    @property
    def tasks_file(self) -> Path:
        """TASKS.md: the Markdown board of tickets by state, kept current by the daemon."""
        return self.root / "TASKS.md"

    @property
    def state_db(self) -> Path:
        return self.root / "state.db"

    @property
    def lock_file(self) -> Path:
        return self.root / "daemon.lock"

    @property
    def socket_path(self) -> Path:
        return socket_path_for(self.root, self.config.socket)


def load_config(path: Path) -> Home:
    """Read config.yaml and return the project home it describes.

    Raises:
        ConfigError: missing file, invalid YAML, unknown key or wrong type; the
            message names the file and the key.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such config file "
            "(create a project with `orchestrator init DIR --from REPO`)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        config = decode_yaml(data, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {_with_key(str(exc))}") from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{path}: invalid YAML: {str(exc).splitlines()[0]}") from None
    if config.lease_ttl_s <= config.heartbeat_interval_s:
        raise ConfigError(f"{path}: lease_ttl_s must be greater than heartbeat_interval_s")
    why = _invalid_value(config)
    if why:
        raise ConfigError(f"{path}: {why}")
    return Home(root=path.resolve().parent, config=config)


def _invalid_value(config: Config) -> str:
    """Why a decoded config cannot be used as it is (values msgspec types cannot express)."""
    strings = {f"agent.command[{i}]": v for i, v in enumerate(config.agent.command)}
    strings |= {f"agent.env.{k}": v for k, v in config.agent.env.items()}
    strings |= {f"review.command[{i}]": v for i, v in enumerate(config.review.command)}
    strings |= {"ci.command": config.ci.command, "socket": config.socket or ""}
    strings |= {"repo_url": config.repo_url, "ray.address": config.ray.address}
    strings |= {"ray.cache_dir": config.ray.cache_dir}
    for key, value in strings.items():
        if "\0" in value:
            return f"{key}: must not contain a NUL character"
    address = config.ray.address
    if address and (":" not in address or not address.rpartition(":")[2].isdigit()):
        return f"ray.address: {address!r} is not HOST:PORT (e.g. 10.0.0.5:6379)"
    for key in config.agent.env:
        if not key or "=" in key or "\0" in key:
            return f"agent.env: {key!r} is not a valid environment variable name (no '=' or NUL)"
    return ""


def _with_key(message: str) -> str:
    if " - at `$." in message:
        reason, _, key = message.partition(" - at `$.")
        if reason.startswith("Expected `str` matching regex '^(?!/)"):  # RelPath
            reason = "must be a path relative to the repository root (no leading /, no ..)"
        return f"{key.rstrip('`')}: {reason}"
    return message


def default_config_path() -> Path:
    """``$ORCH_CONFIG``, else ./config.yaml."""
    return Path(os.environ.get("ORCH_CONFIG", "config.yaml"))


def runtime_dir() -> Path:
    """A private directory (mode 0700, owned by us) for sockets.

    ``$XDG_RUNTIME_DIR/orchestrator`` when that is set (XDG Base Directory
    Specification), else ``/tmp/orchestrator-<uid>``.

    Raises:
        ConfigError: the fallback directory exists but is not ours or not private.
    """
    base = os.environ.get("XDG_RUNTIME_DIR")
    path = Path(base) / "orchestrator" if base else Path(f"/tmp/orchestrator-{os.getuid()}")
    try:
        path.mkdir(mode=0o700, parents=False, exist_ok=True)
    except FileNotFoundError:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise ConfigError(f"{path}: socket directory is not a directory owned by you")
    if info.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def socket_path_for(root: Path, configured: str | None) -> Path:
    """The daemon socket of the home at ``root``.

    Raises:
        ConfigError: the path does not fit in AF_UNIX's 107 bytes.
    """
    if configured:
        path = Path(configured).expanduser()
        if not path.is_absolute():
            path = root / path
    else:
        digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:10]
        path = runtime_dir() / f"{root.name[:20]}-{digest}.sock"
    if len(os.fsencode(path)) > MAX_SOCKET_PATH_BYTES:
        raise ConfigError(
            f"socket path {path} is {len(os.fsencode(path))} bytes, more than AF_UNIX allows "
            f"({MAX_SOCKET_PATH_BYTES}); set `socket:` in config.yaml to a shorter path"
        )
    return path
