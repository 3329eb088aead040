#!/usr/bin/env bash
# The main job: sets up .venv, then the default export (SeedNet + MSE into models/seed-mse, parity
# table printed). Extra arguments go to `compile-losses export`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/compile-losses export "$@"
