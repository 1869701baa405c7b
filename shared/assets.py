"""Files shipped with orchestrator: the hooks, ci.sh, the systemd unit template, the demo.

In a wheel they are package data under ``orchestrator/assets/`` (pyproject.toml,
``[tool.setuptools.package-data]``), found with :mod:`importlib.resources`. In a
source checkout (``pip install -e .``) they are where the repository keeps them:
``hooks/``, ``ci.sh``, ``systemd/``, ``examples/``, ``docs/`` at its top.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from orchestrator.shared.errors import OrchestratorError


def asset_root() -> Path:
    """The folder that holds ``hooks/``, ``ci.sh``, ``systemd/``, ``examples/`` and ``docs/``."""
    installed = Path(str(files("orchestrator"))) / "assets"
    if installed.is_dir():
        return installed
    return Path(__file__).resolve().parents[1]


def asset(relative: str) -> Path:
    """One shipped file or folder, e.g. ``asset("hooks/post-receive")``.

    Raises:
        OrchestratorError: it is missing (a broken install: reinstall the package).
    """
    path = asset_root() / relative
    if not path.exists():
        raise OrchestratorError(
            f"{relative} is missing from the installation at {asset_root()}; reinstall orchestrator"
        )
    return path
