"""Fresh processes, as each CI job is one: seconds until a prepared ``compile`` train step for
SeedNet + MSE has given its first result, and the wall time of ``compile-losses export`` (the
default bundle, AOTInductor package included), with cold caches (every round empty folders) and
warm ones (inductor's and compile_losses' build caches kept from an untimed first run), or
``precompiled`` ones (warm, and the untimed first run had ``COMPILE_LOSSES_PRECOMPILE=1``: the
step's graph is loaded as an AOTInductor package, without importing inductor's compiler).

Each round is one subprocess; the benchmark's time is the whole process (what a job pays), and
``extra_info`` has the child's own split (imports, prepare + first call) per round and, from the
same run, the floor no cache removes: a process that only imports torch and inductor's
``compile_fx``.
"""
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

from .conftest import MODE

ROOT = Path(__file__).resolve().parents[2]

if MODE == "smoke":  # the default run: one child process, a cold compile start (about 10 s)
    PHASES = [("compile", "cold")]
elif MODE == "quick":
    PHASES = [("compile", "cold"), ("compile", "warm"), ("compile", "precompiled")]
else:
    PHASES = [("compile", "cold"), ("compile", "warm"), ("compile", "precompiled"), ("export", "cold"),
              ("export", "warm")]
ROUNDS = {"full": 3, "quick": 2}.get(MODE, 1)

_COMPILE_CHILD = r"""
import json, time
t0 = time.perf_counter()
import torch
from compile_losses.backends import BACKENDS
from compile_losses.losses import MSELoss
from compile_losses.nets import SeedNet
t_import = time.perf_counter() - t0
torch.manual_seed(0)
net, args = SeedNet(), (torch.randn(10, 32), torch.randn(10, 1))
t1 = time.perf_counter()
step = BACKENDS["compile"].prepare_train_step(net, MSELoss(), args, 0.01)
step(*args)
start_s = time.perf_counter() - t1
import sys
from compile_losses import build_cache
print(json.dumps({"import_s": t_import, "start_s": start_s, "note": step.note,
                  "precompiled": build_cache.STATS.get("precompiled", {}),
                  "compiler_imported": "torch._inductor.compile_fx" in sys.modules}))
"""

_FLOOR_CHILD = r"""
import json, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
import torch._inductor.compile_fx
print(json.dumps({"torch_s": t1 - t0, "inductor_s": time.perf_counter() - t1}))
"""


def _env(cache: Path, precompile: bool = False) -> Dict[str, str]:
    from compile_losses.fast.precompiled import ENV

    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TORCHINDUCTOR_CACHE_DIR=str(cache / "inductor"), COMPILE_LOSSES_CACHE_DIR=str(cache / "compile_losses"))
    env.pop("COMPILE_LOSSES_NO_CACHE", None)
    env.pop(ENV, None)
    if precompile:
        env[ENV] = "1"
    return env


def _run(cmd: List[str], env: Dict[str, str]) -> str:
    proc = subprocess.run(cmd, cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _json_line(out: str) -> Dict[str, Any]:
    import json

    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.compile
@pytest.mark.parametrize("device", ["cpu"])  # the bench fixture's device: the CPU, as measured
@pytest.mark.parametrize("what,phase", PHASES, ids=["-".join(p) for p in PHASES])
def test_fresh_process_start(what, phase, device, bench):
    from compile_losses.backends import BACKENDS

    ok, reason = BACKENDS["compile"].available()
    if not ok:
        pytest.skip("unavailable: " + reason)
    if what == "export":
        ok, reason = BACKENDS["aoti"].available()
        if not ok:
            pytest.skip("unavailable: the default export builds an AOTInductor package: " + reason)
    root = Path(tempfile.mkdtemp(prefix="cl-bench-start-"))
    state = {"round": 0, "cache": root / "warm"}
    children: List[Dict[str, Any]] = []
    out_dir = root / "models"

    def command() -> List[str]:
        if what == "compile":
            return [sys.executable, "-c", _COMPILE_CHILD]
        return [sys.executable, "-m", "compile_losses", "export", "--out", str(out_dir), "--quiet"]

    def setup() -> None:
        state["round"] += 1
        if phase == "cold":
            state["cache"] = root / "cold{}".format(state["round"])

    def fresh_process() -> None:
        start = time.perf_counter()
        out = _run(command(), _env(state["cache"]))
        child = _json_line(out) if what == "compile" else {}
        child["process_s"] = time.perf_counter() - start
        children.append(child)

    try:
        if phase in ("warm", "precompiled"):
            _run(command(), _env(state["cache"], precompile=phase == "precompiled"))  # fills the caches, untimed
        floor = {} if MODE == "smoke" else _json_line(_run([sys.executable, "-c", _FLOOR_CHILD], _env(root / "floor")))
        bench.run_rounds(fresh_process, setup, ROUNDS, workload="compile-fresh-{}-{}".format(what, phase),
                         case="seed+mse-b10", backend="compile" if what == "compile" else "export", samples=1,
                         batch=10)
        info = bench.benchmark.extra_info
        info["children"] = children
        if floor:
            info["floor_torch_import_s"] = floor["torch_s"]
            info["floor_inductor_import_s"] = floor["inductor_s"]
        info["process_s_median"] = statistics.median(c["process_s"] for c in children)
        if what == "compile":
            info["start_s_median"] = statistics.median(c["start_s"] for c in children)
            info["choice"] = children[-1]["note"]
            if phase == "precompiled":  # the timed rounds ran the package, not inductor's compiler
                assert all(c["precompiled"] == {"hit": 1, "miss": 0} and not c["compiler_imported"]
                           for c in children), children
    finally:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
