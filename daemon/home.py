"""``orchestrator init``: create a project home (config, backlog, bare repo with its hook).

Layout (docs/config.md): ``DIR/config.yaml``, ``DIR/backlog/{,done,rejected}``,
``DIR/repo.git`` (bare clone, hooks/post-receive installed), ``DIR/ci.sh``,
``DIR/work`` (the clone the agents' worktrees belong to), ``DIR/worktrees``,
``DIR/runs`` and ``DIR/state.db`` (created by the daemon).
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from pathlib import Path

from orchestrator.daemon.git import git_sync
from orchestrator.shared.assets import asset
from orchestrator.shared.config import Home, load_config
from orchestrator.shared.errors import GitError, HomeError
from orchestrator.shared.fsutil import atomic_write

DEFAULT_AGENT = ["claude", "-p", "{prompt}", "--permission-mode", "acceptEdits"]


def render_config(
    workers: int,
    agent_command: list[str],
    ci_command: str,
    approval: str,
    extra: str = "",
    agent_env: dict[str, str] | None = None,
) -> str:
    """config.yaml text with a comment per key (see docs/config.md).

    ``extra`` holds top-level ``key: value`` lines that replace the defaults;
    ``agent_env`` becomes ``agent.env`` (extra environment of every agent).
    """
    text = (
        "# orchestrator project settings; every key is described in docs/config.md\n"
        f"workers: {workers}            # agent workers agent-1..N\n"
        "agent:\n"
        "  # argv list, never a shell; placeholders: {prompt} {prompt_file} {ticket_file}\n"
        "  # {ticket_id} {worktree} {branch} {attempt} {feedback_file}\n"
        f"  command: {json.dumps(agent_command)}\n"
        "  stop_grace_s: 10       # SIGTERM -> SIGKILL grace when stopping an agent\n"
        + (f"  env: {json.dumps(agent_env)}\n" if agent_env else "")
        + f"approval: {approval}       # manual (approve with c / orchestrator approve) or auto\n"
        "max_attempts: 3          # attempts per ticket before it is failed\n"
        "ci:\n"
        f"  command: {json.dumps(ci_command)}   # run by ci.sh in a throw-away checkout\n"
        "  timeout_s: 600\n"
        "lock_policy: reject      # reject or warn when an agent changes paths outside its locks\n"
        "heartbeat_interval_s: 5\n"
        "lease_ttl_s: 60\n"
        "stale_after_s: 600       # no output / worktree change this long -> stale\n"
        "stale_grace_s: 120       # then stopped (work committed) and requeued\n"
        "starvation_after_s: 900  # a ticket waiting this long for locks reserves them\n"
        "aging_interval_s: 300    # a waiting ticket gains one priority level per interval\n"
        "rescan_interval_s: 2     # backlog / CI status rescan (events are the fast path)\n"
    )
    return _merge_settings(text, extra)


def _merge_settings(text: str, extra: str) -> str:
    """Apply ``key: value`` lines of ``extra`` to top-level keys of ``text`` (replace or add)."""
    lines = text.splitlines()
    for setting in extra.splitlines():
        key = setting.split(":", 1)[0].strip()
        if not key or setting.startswith((" ", "#")):
            continue
        for i, line in enumerate(lines):
            if line.startswith(f"{key}:"):
                lines[i] = setting
                break
        else:
            lines.append(setting)
    return "\n".join(lines) + "\n"


def init_home(
    root: Path,
    source: str,
    *,
    ci_command: str,
    workers: int,
    agent_command: list[str] | None = None,
    approval: str = "manual",
    force: bool = False,
    extra_config: str = "",
    agent_env: dict[str, str] | None = None,
) -> Path:
    """Create (or with ``force``, refresh) a project home; return its config.yaml path.

    Never deletes anything: with ``force`` an existing repo.git and work clone
    are kept, the old config.yaml is saved as config.yaml.bak, and the hook and
    git settings are reinstalled.

    ``source`` may be a path relative to the current directory (git would read
    it relative to the home). When cloning fails, a home directory this call
    created is removed again, so a retry starts clean.

    Raises:
        HomeError: the home exists (without ``force``) or REPO cannot be cloned.
    """
    root = root.resolve()
    if Path(source).expanduser().exists():  # a local path, not a URL
        source = str(Path(source).expanduser().resolve())
    config_file = root / "config.yaml"
    repo = root / "repo.git"
    if (config_file.exists() or repo.exists()) and not force:
        raise HomeError(
            f"{root} already holds a project home; use --force to refresh its "
            "config and hook (nothing is deleted)"
        )
    if not (1 <= workers <= 32):
        raise HomeError("--workers must be between 1 and 32")
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    try:
        if not repo.exists():
            git_sync(root, "clone", "--quiet", "--bare", "--no-local", "--", source, str(repo))
        _ensure_main(repo)
        _install_hook(root, repo)
        work = root / "work"
        if not work.exists():
            git_sync(root, "clone", "--quiet", "--", str(repo), str(work))
        git_sync(work, "config", "user.name", "orchestrator")
        git_sync(work, "config", "user.email", "orchestrator@localhost")
    except GitError as exc:
        if created:  # only what this call made: nothing of the person's is deleted
            shutil.rmtree(root, ignore_errors=True)
        raise HomeError(f"cannot set up repo.git from {source}: {exc}") from None
    for d in ("backlog", "backlog/done", "backlog/rejected", "worktrees", "runs"):
        (root / d).mkdir(parents=True, exist_ok=True)
    if config_file.exists():
        shutil.copy2(config_file, root / "config.yaml.bak")
    atomic_write(
        config_file,
        render_config(
            workers, agent_command or DEFAULT_AGENT, ci_command, approval, extra_config, agent_env
        ),
    )
    sync_repo_config(load_config(config_file))
    return config_file


def _ensure_main(repo: Path) -> None:
    """The orchestrator merges into ``main``; create it from HEAD when the repo has none."""
    if _has_ref(repo, "refs/heads/main"):
        return
    head = git_sync(repo, "rev-parse", "--verify", "--quiet", "HEAD", check=False)
    if not head:
        raise HomeError(f"{repo}: the source repository has no commits; commit something first")
    git_sync(repo, "update-ref", "refs/heads/main", head)
    git_sync(repo, "symbolic-ref", "HEAD", "refs/heads/main")


def _has_ref(repo: Path, ref: str) -> bool:
    import subprocess

    return (
        subprocess.run(
            ["git", "-C", str(repo), "show-ref", "--verify", "--quiet", ref], check=False
        ).returncode
        == 0
    )


def _install_hook(root: Path, repo: Path) -> None:
    (repo / "hooks").mkdir(exist_ok=True)
    for name in ("post-receive", "update"):
        hook = repo / "hooks" / name
        shutil.copyfile(asset(f"hooks/{name}"), hook)
        hook.chmod(0o755)
    ci_script = root / "ci.sh"
    if not ci_script.exists():
        shutil.copyfile(asset("ci.sh"), ci_script)
        ci_script.chmod(0o755)
    git_sync(repo, "config", "orchestrator.ciScript", str(ci_script))


def sync_repo_config(home: Home) -> None:
    """Copy the CI settings of config.yaml into repo.git's git config, where the hook reads them.

    Called by init and at every daemon start, so config.yaml stays the one place to edit.
    """
    for key, value in (
        ("orchestrator.ciCommand", home.config.ci.command),
        ("orchestrator.ciTimeoutS", str(home.config.ci.timeout_s)),
        ("orchestrator.python", sys.executable),
        ("orchestrator.socket", str(home.socket_path)),
        # A reflog for every ref, so each move of main can be audited (all fast-forwards).
        ("core.logAllRefUpdates", "always"),
        # ci.setup: the CI job copies worktree.copy and runs worktree.setup first.
        ("orchestrator.ciSetup", _ci_setup_json(home)),
        # `git push -o ci=skip` reaches hooks/post-receive (no branch CI under auto approval).
        ("receive.advertisePushOptions", "true"),
    ):
        git_sync(home.repo, "config", key, value)
    sync_worktree_excludes(home)


def _ci_setup_json(home: Home) -> str:
    """``{"copy": [...], "source": DIR, "setup": [argv], "timeout_s": N}`` or "{}"."""
    if not home.config.ci.setup:
        return "{}"
    from orchestrator.daemon.setup import source_repo

    wt = home.config.worktree
    source = source_repo(home)
    return json.dumps(
        {
            "copy": wt.copy,
            "source": str(source) if source else "",
            "setup": wt.setup,
            "timeout_s": wt.setup_timeout_s,
        }
    )


EXCLUDE_BEGIN = "# BEGIN orchestrator worktree.exclude (config.yaml; rewritten at daemon start)"
EXCLUDE_END = "# END orchestrator worktree.exclude"


def sync_worktree_excludes(home: Home) -> None:
    """Write ``worktree.exclude`` into ``work/.git/info/exclude``, shared by every worktree.

    git reads ``$GIT_COMMON_DIR/info/exclude`` in all linked worktrees
    (gitrepository-layout(5)), so files an agent leaves that match (e.g. aider's
    ``.aider*`` history and caches) are never committed. Lines outside the marked
    block are kept. Does nothing before ``work`` is cloned.
    """
    info = home.work / ".git" / "info"
    if not info.parent.is_dir():
        return
    path = info / "exclude"
    try:
        old = path.read_text().splitlines()
    except FileNotFoundError:
        old = []
    kept, inside = [], False
    for line in old:
        if line == EXCLUDE_BEGIN:
            inside = True
        elif line == EXCLUDE_END:
            inside = False
        elif not inside:
            kept.append(line)
    wt = home.config.worktree
    patterns = [*wt.exclude, *(f"/{p.rstrip('/')}" for p in wt.copy)]
    block = [EXCLUDE_BEGIN, *patterns, EXCLUDE_END] if patterns else []
    text = "\n".join(kept + block) + "\n"
    if text != "\n".join(old) + "\n":
        info.mkdir(exist_ok=True)
        atomic_write(path, text)


def quote_command(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)
