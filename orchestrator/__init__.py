"""orchestrator: run a team of AI coding agents against one git repository.

The installed distribution is this one package. Its subpackages map to the
repository's top-level folders (pyproject.toml, ``[tool.setuptools.package-dir]``):
``orchestrator.shared`` (``shared/``), ``orchestrator.daemon`` (``daemon/``) and
``orchestrator.tui`` (``tui/``). This package holds the composition roots: the
command line (:mod:`orchestrator.cli`) and the demo (:mod:`orchestrator.demo`).

``__version__`` is looked up on first use (PEP 562): importing
``importlib.metadata`` costs tens of milliseconds, which every push's
post-receive hook would otherwise pay (docs/performance.md, throughput).
"""

from __future__ import annotations


def __getattr__(name: str) -> str:
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("orchestrator")
    except PackageNotFoundError:  # imported from a checkout that was never installed
        return "0+unknown"
