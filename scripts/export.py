#!/usr/bin/env python
"""Thin shim: ``python scripts/export.py [ARGS]`` is ``compile-losses export [ARGS]``."""
import sys

from compile_losses.cli import main

if __name__ == "__main__":
    sys.exit(main(["export"] + sys.argv[1:]))
