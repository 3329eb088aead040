#!/usr/bin/env bash
# Mutation run over the modules that pin the product's core (issue "One data path"): the parity rule
# and its float64 reference, the reductions, the training update and the regression gate. Each
# module is mutated by mutmut 2.5.1 (mutations applied on disk one at a time, so TorchScript still
# compiles the mutated code) and checked by the tests that own it. Run it in a scratch clone or
# worktree: it rewrites the files while it runs (and restores them).
#
#   bash scripts/mutation.sh            # about 40-60 min on 2 cores; then `mutmut results`
#   bash scripts/mutation.sh gate       # one target: rule | reduction | programs | gate | optim
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
"$PY" -m pip install -q "mutmut==2.5.1" >/dev/null 2>&1 || true
MUTMUT="$PY -m mutmut"
PYTEST="$PY -m pytest -x -q -p no:cacheprovider --no-header"
declare -A PATHS=(
  [rule]=compile_losses/parity/rule.py
  [reduction]=compile_losses/_reduction.py
  [programs]=compile_losses/programs.py,compile_losses/signature.py
  [gate]=compile_losses/bench/gate.py
  [optim]=compile_losses/optim.py
)
declare -A RUNNERS=(
  [rule]="$PYTEST tests/test_rule_pins.py tests/test_parity.py -k 'test_rule_pins or clause or non_finite or tolerance or planted or nondeterministic or reference_in_float64 or lr'"
  [reduction]="$PYTEST tests/test_reduction_pins.py tests/test_losses_math.py -k 'test_reduction_pins or not (script or compile or onnx)'"
  [programs]="$PYTEST tests/test_programs_pins.py tests/test_optim_programs.py"
  [gate]="$PYTEST tests/test_gate_pins.py tests/test_bench_gate.py"
  [optim]="$PYTEST tests/test_optim.py tests/test_optim_programs.py"
)
targets=("${@:-rule reduction programs gate optim}")
status=0
for t in ${targets[@]}; do
  echo "== $t: ${PATHS[$t]}"
  # one cache per target: mutmut 2.5.1's cache mixes up mutants of an earlier target's file
  # ("Attribute Mutant.line is required") when several targets share it
  # (kept as .mutmut-cache-<target> between runs, so a rerun resumes where a crashed one stopped:
  # mutmut skips mutants it already killed against the same tests; MUTATION_FRESH=1 starts over)
  rm -f .mutmut-cache
  [ -n "${MUTATION_FRESH:-}" ] && rm -f ".mutmut-cache-$t"
  [ -f ".mutmut-cache-$t" ] && cp ".mutmut-cache-$t" .mutmut-cache
  # --test-time-base: a mutant times out only after the clean run's time x 2 + this many seconds, so
  # a loaded machine does not turn slow runs into "timeout" verdicts that prove nothing
  $MUTMUT run --paths-to-mutate "${PATHS[$t]}" --runner "${RUNNERS[$t]}" --tests-dir tests --simple-output \
    --test-time-base "${MUTATION_TIME_BASE:-30}"
  rc=$?
  cp .mutmut-cache ".mutmut-cache-$t"
  echo "== $t: exit $rc (0: every mutant killed; bit 2 survivors, 4 timeouts, 8 suspicious)"
  $MUTMUT results
  [ $rc -eq 0 ] || status=1
done
exit $status
