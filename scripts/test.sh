#!/usr/bin/env bash
# The test command: sets up .venv, then runs the suite. Under CI (CI=true) the slow cases run too
# and hypothesis draws its larger CI profile; see tests/conftest.py. Tests are independent of order
# and process, so they run in parallel.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# pytest-xdist spreads the tests over one process per core (-n auto; PYTEST_WORKERS overrides, 0 runs
# in this process): on 2 cores under CI the suite took 28 min this way, with other work on the machine.
exec .venv/bin/python -m pytest -n "${PYTEST_WORKERS:-auto}" "$@"
