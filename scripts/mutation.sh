#!/usr/bin/env bash
# Mutation run over the modules that pin the product's core (issue "One data path"): the parity rule
# and its float64 reference, the reductions, the training update and the regression gate. Each
# module is mutated with mutmut 2.5.1's operators (mutations applied on disk one at a time, so
# TorchScript still compiles the mutated code) and checked by the tests that own it. Run it in a scratch clone or
# worktree: it rewrites the files while it runs (and restores them).
#
#   bash scripts/mutation.sh            # every target; survivors and their diffs printed at the end
#   bash scripts/mutation.sh gate       # one target: rule | reduction | programs | gate | optim
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
"$PY" -m pip install -q "mutmut==2.5.1" >/dev/null 2>&1 || true
PYTEST="pytest -x -q -p no:cacheprovider -p no:xdist --no-header"
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
  [programs]="$PYTEST tests/test_programs_pins.py tests/test_signature_pins.py tests/test_optim_programs.py"
  [gate]="$PYTEST tests/test_gate_pins.py tests/test_bench_gate.py"
  [optim]="$PYTEST tests/test_optim_pins.py tests/test_optim.py tests/test_optim_programs.py"
)
targets=("${@:-rule reduction programs gate optim}")
status=0
for t in ${targets[@]}; do
  echo "== $t: ${PATHS[$t]}"
  # mutmut's operators, our loop (scripts/mutation_run.py says why); verdicts in
  # .mutation-<target>.jsonl, so a rerun resumes; MUTATION_FRESH=1 starts over
  [ -n "${MUTATION_FRESH:-}" ] && rm -f ".mutation-$t.jsonl"
  # MUTATION_SINCE=REV mutates only the lines changed since REV (after a complete run at REV);
  # MUTATION_KEEP_KILLED=1 keeps earlier kills and reruns the rest (after tests were only added)
  keep=${MUTATION_KEEP_KILLED:+--keep-killed}
  "$PY" scripts/mutation_run.py --paths "${PATHS[$t]}" --runner "${RUNNERS[$t]}" --log ".mutation-$t.jsonl" \
    ${MUTATION_SINCE:+--since "$MUTATION_SINCE"} $keep
  rc=$?
  echo "== $t: exit $rc (0: every mutant killed; 2 survivors, 4 timeouts)"
  "$PY" scripts/mutation_run.py --paths "${PATHS[$t]}" --runner true --log ".mutation-$t.jsonl" --report $keep
  [ $rc -eq 0 ] || status=1
done
exit $status
