#!/usr/bin/env bash
# One prepared call on a lent GPU machine: the GPU tests (pytest -m gpu) and the GPU benchmark
# suite, with results, plots and summaries written to $OUT. About 6 minutes at most.
#
# Runs from a plain copy of the repository (not installed): PYTHONPATH=. and the machine's python3
# (torch, onnx, onnxruntime, pytest, pytest-benchmark, matplotlib, hypothesis already there).
# Needs no network and no pip. Every step has its own time limit and the script goes on after a
# failed or timed-out step, so whatever finished comes back; step exit codes are in $OUT/steps.txt.
#
#   OUT=/some/dir bash scripts/gpu_bench.sh
#
# Afterwards, commit the GPU baseline: copy $OUT/gpu-*.json/.png/.md to tests/benchmarks/baselines/.
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder for results}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1 PIP_NO_INDEX=1 HF_HUB_OFFLINE=1
PY="${PYTHON:-python3}"
START=$(date +%s)
BUDGET="${GPU_BENCH_BUDGET_S:-360}"   # whole script, seconds

left() { echo $(( BUDGET - ($(date +%s) - START) )); }

# step NAME LIMIT_S CMD...: run with a time limit (never more than what is left), log to $OUT.
step() {
  local name="$1" limit="$2"; shift 2
  local remaining; remaining=$(left)
  if (( remaining < 20 )); then
    echo "$name skipped: only ${remaining}s left" | tee -a "$OUT/steps.txt"; return 0
  fi
  (( limit > remaining )) && limit=$remaining
  local t0; t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc (${limit}s limit, took $(( $(date +%s) - t0 ))s)" | tee -a "$OUT/steps.txt"
  tail -n 3 "$OUT/$name.log"
}

: > "$OUT/steps.txt"
{ nvidia-smi || true; "$PY" - <<'EOF'
import platform, torch, onnxruntime, onnx
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "onnx", onnx.__version__, "onnxruntime", onnxruntime.__version__, onnxruntime.get_available_providers())
print("device", torch.cuda.get_device_name() if torch.cuda.is_available() else "NO CUDA")
EOF
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt" | tail -n 2
KIND=$("$PY" -c "from compile_losses.bench.runner import machine_kind; print(machine_kind('cuda'))" 2>/dev/null || echo gpu-unknown)

# 1. GPU tests of the whole project (doctests and CPU tests deselected by the marker).
step gpu-tests 100 "$PY" -m pytest -m gpu tests -q -rs -p no:cacheprovider --junitxml="$OUT/gpu-tests.xml"

# 2. Quick GPU suite: the baseline CI compares against (JSON, plot, summary in one go).
step bench-quick 100 "$PY" -m compile_losses bench --gpu --quick --json "$OUT/$KIND-quick.json"

# 3. Full GPU suite in three parts (each writes its own JSON, so a timeout loses one part only).
#    Forward+backward of every loss at 2^24 (the issue-6 targets); forward-only is in the quick run.
step bench-full-losses 100 "$PY" -m compile_losses bench --gpu -k "test_loss_forward_backward or test_triad" --json "$OUT/full-losses.json"
step bench-full-seed 35 "$PY" -m compile_losses bench --gpu -k "test_seed or test_compile_time" --json "$OUT/full-seed.json"
step bench-full-nets 25 "$PY" -m compile_losses bench --gpu -k "test_net" --json "$OUT/full-nets.json"
parts=$(ls "$OUT"/full-*.json 2>/dev/null)
if [ -n "$parts" ]; then
  # shellcheck disable=SC2086
  step bench-full-merge 20 "$PY" -m compile_losses bench --gpu --from-json $parts \
    --plot "$OUT/$KIND.png" --summary "$OUT/$KIND.md"
  "$PY" - "$OUT/$KIND.json" $parts <<'EOF'
import json, sys
out, parts = sys.argv[1], sys.argv[2:]
merged = json.load(open(parts[0]))
for p in parts[1:]:
    merged["benchmarks"] += json.load(open(p))["benchmarks"]
json.dump(merged, open(out, "w"), indent=2)
EOF
fi
echo "done in $(( $(date +%s) - START ))s; results in $OUT:"
ls -la "$OUT"
