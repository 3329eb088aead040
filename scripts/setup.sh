#!/usr/bin/env bash
# Creates or reuses .venv and installs the project with its test extra. The constraints file pins
# torch's CPU build: an unpinned torch would pull a multi-GB CUDA build. Re-installs only when
# pyproject.toml or constraints.txt changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
# Under CI the zoo extra too (real losses from kornia, monai and others, marker `zoo`): about 80 s
# more to install; constraints.txt keeps torch the pinned CPU build.
extras=test
[ "${CI:-}" = "true" ] && extras=test,zoo
stamp=.venv/.compile_losses-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)-$extras
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
    .venv/bin/python -m pip install -q -c constraints.txt -e ".[$extras]"
    echo "$want" > "$stamp"
fi
# Under CI, a second environment with only numpy and the lowest onnxruntime pyproject.toml allows:
# the runtime's attack tests (marker ort_floor) run there too.
if [ "${CI:-}" = "true" ]; then
    floor=$(sed -n 's/.*"onnxruntime>=\([0-9.]*\)".*/\1/p' pyproject.toml | head -n 1)
    if [ -n "$floor" ] && ! .venv-ort-floor/bin/python -c "import onnxruntime as o, sys; sys.exit(o.__version__ != '$floor')" 2>/dev/null; then
        "$PY" -m venv .venv-ort-floor
        .venv-ort-floor/bin/python -m pip install -q numpy "onnxruntime==$floor" || echo "setup: could not install onnxruntime $floor for the floor tests" >&2
    fi
fi
