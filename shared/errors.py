"""The project's exception tree: one root, one subclass per area.

The CLI catches :class:`OrchestratorError`, prints its message as one line on
stderr and exits 2, so every message here must be something a person can act on.
"""


class OrchestratorError(Exception):
    """Root of every error the orchestrator reports to a person."""


class ConfigError(OrchestratorError):
    """config.yaml is missing, unreadable or invalid."""


class TicketError(OrchestratorError):
    """A ticket file is invalid (the message names the file, field and reason)."""


class ProtocolError(OrchestratorError):
    """A socket peer sent something that is not a valid protocol message."""


class DaemonNotRunning(OrchestratorError):
    """No daemon answers on the configured socket."""


class GitError(OrchestratorError):
    """A git command failed (the message carries git's own stderr)."""


class HomeError(OrchestratorError):
    """A project home cannot be created or used."""
