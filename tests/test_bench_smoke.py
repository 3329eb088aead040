"""Every benchmark runs once (``--benchmark-disable``) at tiny sizes, so the suite never rots.

The default run covers every benchmark test and case with eager, and every other backend on the
first case of the loss, train-step and compile-time tests (``COMPILE_LOSSES_BENCH_MODE=smoke``);
the slow variant runs every case through every backend, AOTInductor included.
"""
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest

from compile_losses.bench.runner import MALLOC_ENV

ROOT = Path(__file__).resolve().parents[1]
BENCHMARK_TESTS = {"test_loss_forward", "test_loss_forward_backward", "test_triad", "test_seed_inference",
                   "test_seed_train_step", "test_compile_time", "test_net_inference", "test_net_train_step",
                   "test_seed_adamw_step", "test_seed_adamw_trainer"}


def _run_suite(tmp_path: Path, mode: str, markers: str) -> Counter:
    junit = tmp_path / "smoke.xml"
    env = dict(os.environ, COMPILE_LOSSES_BENCH_MODE=mode, COMPILE_LOSSES_BENCH_THREADS="1", PYTHONSAFEPATH="1",
               **MALLOC_ENV)
    env.pop("COMPILE_LOSSES_BENCH_PLANT_SLOWDOWN", None)
    cmd = [sys.executable, "-m", "pytest", str(ROOT / "tests" / "benchmarks"), "-q", "-p", "no:cacheprovider",
           # the project's addopts skip benchmarks; keep its strictness, drop --benchmark-skip
           "-o", "addopts=--strict-markers --strict-config", "--benchmark-disable", "-m", markers,
           "--junitxml", str(junit)]
    proc = subprocess.run(cmd, cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    outcomes: Counter = Counter()
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = case.get("name", "").split("[")[0]
        skipped = case.find("skipped") is not None
        outcomes[(name, "skipped" if skipped else "passed")] += 1
    return outcomes


def _assert_every_benchmark_ran(outcomes: Counter) -> None:
    ran = {name for (name, outcome) in outcomes if outcome == "passed"}
    assert ran == BENCHMARK_TESTS, "benchmarks that never ran: {}".format(sorted(BENCHMARK_TESTS - ran))


@pytest.mark.benchmark_smoke
def test_every_benchmark_runs_once(tmp_path):
    _assert_every_benchmark_ran(_run_suite(tmp_path, "smoke", "not gpu and not aoti"))


@pytest.mark.benchmark_smoke
@pytest.mark.exhaustive  # every case on every backend, AOTInductor included: far past CI's budget
def test_every_benchmark_runs_once_on_every_backend(tmp_path):
    _assert_every_benchmark_ran(_run_suite(tmp_path, "smoke-all", "not gpu"))
