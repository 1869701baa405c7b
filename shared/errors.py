"""The project's exception tree: one root, one subclass per area.

The CLI catches :class:`OrchestratorError`, prints its message as one line on
stderr and exits 2, so every message here must be something a person can act on.
"""


class OrchestratorError(Exception):
    """Root of every error the orchestrator reports to a person."""


class _OneLine(OrchestratorError):
    """An error whose message quotes a file written by someone else (keys, values):
    always one line, control characters escaped (shared.terminal), whatever the file
    holds, so it fits an ``.error`` file, a log line and a terminal."""

    def __init__(self, message: str) -> None:
        from orchestrator.shared.terminal import terminal_safe

        super().__init__(terminal_safe(message))


class ConfigError(_OneLine):
    """config.yaml is missing, unreadable or invalid."""


class RunnerError(_OneLine):
    """The configured agent runner cannot be used (Ray not installed, cluster unreachable)."""


class TicketError(_OneLine):
    """A ticket file is invalid (the message names the file, field and reason)."""


class ProtocolError(OrchestratorError):
    """A socket peer sent something that is not a valid protocol message."""


class DaemonNotRunning(OrchestratorError):
    """No daemon answers on the configured socket."""


class GitError(OrchestratorError):
    """A git command failed (the message carries git's own stderr)."""


class HomeError(OrchestratorError):
    """A project home cannot be created or used."""
