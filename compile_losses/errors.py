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


class ExportUnsupportedError(ValueError):
    """A module (a loss or a net) that cannot be exported: an op with no ONNX form, a gradient torch
    does not implement, data-dependent control flow, or a graph that does not allow a dynamic batch.

    ``op`` names the offending op when one is known (``"aten.median.default"``); ``loss`` is the
    module's import path; ``source`` the user's line (``path:line: code``) when one is found. The
    message is one line that says them."""

    def __init__(self, message: str, op: Optional[str] = None, loss: str = "", source: Optional[str] = None) -> None:
        super().__init__(message)
        self.op = op
        self.loss = loss
        self.source = source
