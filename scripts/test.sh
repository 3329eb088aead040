#!/usr/bin/env bash
# The test command: sets up .venv, then runs the suite. Under CI (CI=true) the slow cases run too
# and hypothesis draws its larger CI profile; see tests/conftest.py.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
