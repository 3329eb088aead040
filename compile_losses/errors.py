"""Exceptions the CLI maps to exit codes."""
from typing import Optional


class UsageError(ValueError):
    """Bad usage or bad input: exit code 2, one line on stderr. ``argument`` names the library
    argument the message starts with (``out_dir``); the CLI shows its own flag for it (``--out``)."""

    def __init__(self, message: str, argument: Optional[str] = None) -> None:
        super().__init__(message)
        self.argument = argument


class ExportError(RuntimeError):
    """An export that could not produce a valid bundle; the destination is unchanged: exit code 1."""
