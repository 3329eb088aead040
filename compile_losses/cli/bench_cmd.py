"""compile-losses bench: not built yet (its issue is open)."""
import argparse

from ..errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise UsageError("'bench' is not available yet")
