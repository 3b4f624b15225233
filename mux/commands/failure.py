"""How a command fails: one line on stderr and an exit status.

Kept apart from mux.commands.reach so that the entry point can catch CommandError without
importing the client library: every `xenmux` process (the sim, the bench's children) pays
for what mux.cli imports before it even parses its arguments."""

from __future__ import annotations

EXIT_ERROR = 1
EXIT_USAGE = 2


class CommandError(Exception):
    """Ends a command: `xenmux COMMAND: message` on stderr, and `status`."""

    def __init__(self, message: str, status: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.status = status
