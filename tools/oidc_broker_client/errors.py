"""The one error the client reports: what failed, and the next step for the person reading it."""

from __future__ import annotations


class ClientError(Exception):
    """A failure the user can act on. `str()` is the one line of what failed; `next_step` what to do."""

    def __init__(self, message: str, next_step: str | None = None):
        super().__init__(message)
        self.message = message
        self.next_step = next_step

    def diagnostics(self) -> str:
        """The message and, indented under it, the next step: what a command prints before exiting."""
        if not self.next_step:
            return self.message
        return self.message + "\n" + "\n".join("  " + line for line in self.next_step.splitlines())
