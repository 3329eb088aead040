"""compile-losses verify: not built yet (its issue is open)."""
import argparse

from ..errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise UsageError("'verify' is not available yet")
