"""orchestrator: run a team of AI coding agents against one git repository.

The installed distribution is this one package. Its subpackages map to the
repository's top-level folders (pyproject.toml, ``[tool.setuptools.package-dir]``):
``orchestrator.shared`` (``shared/``), ``orchestrator.daemon`` (``daemon/``) and
``orchestrator.tui`` (``tui/``). This package holds the composition roots: the
command line (:mod:`orchestrator.cli`) and the demo (:mod:`orchestrator.demo`).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("orchestrator")
except PackageNotFoundError:  # imported from a checkout that was never installed
    __version__ = "0+unknown"
