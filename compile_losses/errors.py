"""Exceptions the CLI maps to exit codes."""


class UsageError(ValueError):
    """Bad usage or bad input from the command line or a spec: exit code 2, one line on stderr."""
