#!/usr/bin/env bash
# The main job: sets up .venv, then runs the reference walkthrough.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/seed_walkthrough.py "$@"
