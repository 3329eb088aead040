"""Before/after measurements of the fast paths: ratios within one run, medians with their spread.

Run ``python scripts/measure_fast_paths.py`` (``--help`` for options). Sections:

* ``losses``: every elementwise registry loss, forward+backward at 2^24 float32 elements: eager
  autograd, ``torch.compile`` + autograd, the fused path (bare and behind autograd), and the
  streaming triad ``torch.add(x, y, out=z)`` into a reused buffer over the same bytes; plus the
  fused path's arithmetic floor (the same elements in cache-resident 2^20 slices).
* ``train``: SeedNet + MSE train step at batch 10 and 4096: eager autograd, ``torch.compile`` of
  the eager step, the guard-free compiled graph, dynamo over ``torch.func``, onnxruntime.
* ``compile``: cold (empty inductor cache, fresh process) and warm (same cache, fresh process)
  time to the first result; process start and imports are reported apart.
* ``memory``: peak resident memory of one steady-state forward+backward above the resident memory
  just before it (Linux: ``/proc/self/clear_refs`` resets the high-water mark ``VmHWM``), one fresh
  process per case, plus the bytes a path keeps between calls (the fused path's buffer), which
  the pre-call baseline would otherwise hide. tracemalloc cannot see torch's allocations.

Timings interleave the paths round by round, so a burst of load on a shared machine hits all of
them alike; each number is the median over rounds, with min and max beside it.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

ELEMENTWISE_POLY = ("mse", "l1", "huber", "smooth_l1", "quantile", "charbonnier")
FLOOR_SLICE = 1 << 20  # elements per cache-resident slice of the arithmetic floor (4 MB of float32)


def _spread(samples: Sequence[float]) -> Dict[str, float]:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples), "n": len(samples)}


def interleaved(paths: Dict[str, Callable[[], Any]], rounds: int, calls: Optional[Dict[str, int]] = None,
                sync: Callable[[], None] = lambda: None) -> Dict[str, Dict[str, float]]:
    """Seconds per call for each path: ``rounds`` interleaved rounds of ``calls[name]`` calls
    (``sync`` waits for the device inside the timer)."""
    calls = calls or {}
    samples: Dict[str, List[float]] = {n: [] for n in paths}
    for _ in range(rounds):
        for name, fn in paths.items():
            k = calls.get(name, 1)
            sync()
            start = time.perf_counter()
            for _ in range(k):
                fn()
            sync()
            samples[name].append((time.perf_counter() - start) / k)
    return {n: _spread(s) for n, s in samples.items()}


# ---------------------------------------------------------------------------------------------
# loss paths (each returns a zero-argument callable doing one forward+backward)
# ---------------------------------------------------------------------------------------------
def loss_paths(loss: torch.nn.Module, pred: torch.Tensor, targets: tuple) -> Dict[str, Callable[[], Any]]:
    from ..programs import eager_loss_and_grad
    from .fused import FusedLoss, FusedLossAndGrad

    eager = eager_loss_and_grad(loss)
    compiled = torch.compile(loss)
    fused = FusedLossAndGrad(loss)
    fused_module = FusedLoss(loss)
    leaf = pred.detach().requires_grad_(True)
    z = torch.empty_like(pred)
    t0 = targets[0]

    def compile_fb() -> Any:
        value = compiled(leaf, *targets)
        return torch.autograd.grad(value, leaf)

    def fused_autograd() -> Any:
        value = fused_module(leaf, *targets)
        return torch.autograd.grad(value, leaf)

    paths = {
        "triad": lambda: torch.add(pred, t0, out=z),
        "eager": lambda: eager(pred, *targets),
        "compile": compile_fb,
        "fused": lambda: fused(pred, *targets),
        "fused-autograd": fused_autograd,
    }
    # The arithmetic floor: the same fused pass over the same number of elements, in slices small
    # enough to stay in the last-level cache (4 MB per tensor), so memory bandwidth is out of the
    # picture. A loss whose floor is already above its target multiple of the triad is bound by
    # its arithmetic on these cores, not by memory traffic.
    n = pred.shape[0]
    piece = FLOOR_SLICE if n % FLOOR_SLICE == 0 and n > FLOOR_SLICE else 0
    if piece:
        sliced = FusedLossAndGrad(loss)
        small = (pred[:piece].clone(),) + tuple(t[:piece].clone() for t in targets)
        repeats = n // piece

        def floor() -> Any:
            for _ in range(repeats):
                sliced(*small)

        paths["fused-cache-floor"] = floor
    return paths


def measure_losses(names: Sequence[str], numel: int, rounds: int, log: Callable[[str], None],
                   device: str = "cpu") -> Dict[str, Any]:
    from ..registry import LOSSES

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    out: Dict[str, Any] = {}
    for name in names:
        spec = LOSSES[name]
        loss = spec.build().to(device)
        pred, targets = spec.input_for(numel, torch.float32, seed=0)
        pred, targets = pred.to(device), tuple(t.to(device) for t in targets)
        paths = loss_paths(loss, pred, targets)
        start = time.perf_counter()
        for fn in paths.values():  # compile and fault in the buffers outside the timer
            fn()
            fn()
        sync()
        warm = time.perf_counter() - start
        res = interleaved(paths, rounds, sync=sync)
        med = {k: v["median"] for k, v in res.items()}
        out[name] = {"paths": res, "prepare_s": warm,
                     "fused_vs_triad": med["fused"] / med["triad"],
                     "fused_autograd_vs_triad": med["fused-autograd"] / med["triad"],
                     "eager_vs_fused": med["eager"] / med["fused"],
                     "eager_vs_fused_autograd": med["eager"] / med["fused-autograd"],
                     "compile_vs_eager": med["compile"] / med["eager"],
                     "cache_floor_vs_triad": (med["fused-cache-floor"] / med["triad"]
                                              if "fused-cache-floor" in med else None),
                     "family": "polynomial/piecewise" if name in ELEMENTWISE_POLY else "transcendental"}
        log("  {:<16} triad {:7.2f} ms  eager {:8.2f}  compile {:7.2f}  fused {:7.2f} ({:.2f}x triad, {:.1f}x faster "
            "than eager)  fused-autograd {:7.2f} ({:.2f}x triad)".format(
                name, med["triad"] * 1e3, med["eager"] * 1e3, med["compile"] * 1e3, med["fused"] * 1e3,
                out[name]["fused_vs_triad"], out[name]["eager_vs_fused"], med["fused-autograd"] * 1e3,
                out[name]["fused_autograd_vs_triad"])
            + ("  cache-resident floor {:.2f}x triad".format(out[name]["cache_floor_vs_triad"])
               if out[name]["cache_floor_vs_triad"] is not None else ""))
    return out


# ---------------------------------------------------------------------------------------------
# train step
# ---------------------------------------------------------------------------------------------
def train_paths(batch: int, lr: float = 0.01) -> Dict[str, Callable[[], Any]]:
    from ..losses import MSELoss
    from ..nets import SeedNet
    from ..registry import NETS
    from ..programs import eager_train_step
    from .train_step import CompiledTrainStep

    torch.manual_seed(0)
    net, loss = SeedNet().eval(), MSELoss()
    x = NETS["seed"].example_input(batch)
    target = torch.randn(batch, 1, generator=torch.Generator().manual_seed(1))
    eager = eager_train_step(net, loss, lr)
    steps: Dict[str, Callable[..., Any]] = {
        "eager": eager,
        "compile-autograd": torch.compile(eager_train_step(net, loss, lr)),
        "compile-graph": CompiledTrainStep(net, loss, lr, mode="graph"),
        "compile-dynamo": CompiledTrainStep(net, loss, lr, mode="dynamo"),
    }
    try:
        from ..training import prepare_onnx_train_step

        steps["onnx"] = prepare_onnx_train_step(net, loss, (x, target), lr)
    except Exception as exc:  # reported as unavailable, never timed
        steps["onnx"] = exc  # type: ignore[assignment]
    return {k: (v if isinstance(v, Exception) else (lambda f=v: f(x, target))) for k, v in steps.items()}


def measure_train(batches: Sequence[int], rounds: int, log: Callable[[str], None]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for batch in batches:
        paths = train_paths(batch)
        unavailable = {k: "{}: {}".format(type(v).__name__, str(v).splitlines()[0] if str(v) else "")
                       for k, v in paths.items() if isinstance(v, Exception)}
        paths = {k: v for k, v in paths.items() if k not in unavailable}
        calls = {}
        for name, fn in paths.items():
            fn()
            fn()
            start = time.perf_counter()
            fn()
            calls[name] = max(1, int(0.05 / max(time.perf_counter() - start, 1e-7)))
        res = interleaved(paths, rounds, calls)
        eager = res["eager"]["median"]
        ratios = {k: v["median"] / eager for k, v in res.items()}
        out[str(batch)] = {"paths": res, "ratio_to_eager": ratios, "unavailable": unavailable,
                           "fastest": min(ratios, key=ratios.__getitem__)}
        log("  batch {:<5} ".format(batch) + "  ".join(
            "{} {:.1f} us ({:.2f}x)".format(k, res[k]["median"] * 1e6, ratios[k]) for k in res)
            + "".join("  {} unavailable: {}".format(k, v) for k, v in unavailable.items()))
    return out


# ---------------------------------------------------------------------------------------------
# cold / warm compile and peak memory: one fresh process per case
# ---------------------------------------------------------------------------------------------
_COMPILE_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
from compile_losses.nets import SeedNet
from compile_losses.losses import MSELoss
from compile_losses.fast import CompiledTrainStep, FusedLossAndGrad
t_import = time.perf_counter() - t0
what = sys.argv[1]
torch.manual_seed(0)
if what == "train-graph":
    fn, args = CompiledTrainStep(SeedNet(), MSELoss(), 0.01, mode="graph"), (torch.randn(10, 32), torch.randn(10, 1))
elif what == "train-compile":  # the compile backend: its compiled step plus the timing against eager
    from compile_losses.backends import BACKENDS
    net, args = SeedNet(), (torch.randn(10, 32), torch.randn(10, 1))
    fn = lambda *a: BACKENDS["compile"].prepare_train_step(net, MSELoss(), a, 0.01)(*a)
else:
    fn, args = FusedLossAndGrad(MSELoss()), (torch.randn(4096, 1), torch.randn(4096, 1))
t1 = time.perf_counter(); fn(*args); first = time.perf_counter() - t1
print(json.dumps({"import_s": t_import, "first_call_s": first}))
"""


def _child_env(extra: Dict[str, str]) -> Dict[str, str]:
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def _child(code: str, args: Sequence[str], env: Dict[str, str], timeout: float = 600) -> Dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", code] + list(args), capture_output=True, text=True,
                          env=env, timeout=timeout)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["exit {}".format(proc.returncode)])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_compile(log: Callable[[str], None]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for what in ("train-graph", "train-compile", "fused-loss"):
        with tempfile.TemporaryDirectory(prefix="compile_losses_inductor_") as cache:
            env = _child_env({"TORCHINDUCTOR_CACHE_DIR": cache,  # cold: both caches empty
                              "COMPILE_LOSSES_CACHE_DIR": os.path.join(cache, "compile_losses")})
            cold = _child(_COMPILE_CHILD, [what], env)
            warm = _child(_COMPILE_CHILD, [what], env)
        out[what] = {"cold": cold, "warm": warm}
        log("  {:<12} cold {}  warm {}  (imports {} / {})".format(
            what, _fmt_s(cold, "first_call_s"), _fmt_s(warm, "first_call_s"), _fmt_s(cold, "import_s"),
            _fmt_s(warm, "import_s")))
    return out


def _fmt_s(d: Dict[str, Any], key: str) -> str:
    return "{:.2f} s".format(d[key]) if key in d else "error: {}".format(d.get("error"))


_MEMORY_CHILD = r"""
import gc, json, sys
import torch
from compile_losses.registry import LOSSES
from compile_losses.fast.measure import loss_paths

def status():
    vals = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                vals[k] = int(v.split()[0]) * 1024
    return vals

name, path, numel = sys.argv[1], sys.argv[2], int(sys.argv[3])
spec = LOSSES[name]
pred, targets = spec.input_for(numel, torch.float32, seed=0)
fn = loss_paths(spec.build(), pred, targets)[path]
for _ in range(2):
    fn()  # compile and fault in whatever the path keeps; results dropped as a training loop would
gc.collect()
before = status()["VmRSS"]
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the high-water mark VmHWM to the current RSS
result = fn()
peak = status()["VmHWM"]
del result
held = 0
cells = [c.cell_contents for c in (fn.__closure__ or ()) if hasattr(c, "cell_contents")]
for obj in cells:
    pool = getattr(obj, "pool", None) or getattr(getattr(obj, "_runner", None), "pool", None)
    if pool is not None:
        held += pool.held_bytes
print(json.dumps({"peak_above_baseline": peak - before, "held_between_calls": held,
                  "peak_total": peak - before + held}))
"""


def measure_memory(names: Sequence[str], numel: int, paths: Sequence[str], log: Callable[[str], None]) -> Dict[str, Any]:
    if not os.path.exists("/proc/self/clear_refs"):
        return {"unavailable": "needs Linux /proc/self/clear_refs to reset the peak-RSS mark"}
    out: Dict[str, Any] = {}
    env = _child_env({})
    for name in names:
        out[name] = {p: _child(_MEMORY_CHILD, [name, p, str(numel)], env) for p in paths}
        log("  {:<16} ".format(name) + "  ".join(
            "{} {}".format(p, "{:.0f} MB".format(r["peak_total"] / 2 ** 20) if "peak_total" in r else r.get("error"))
            for p, r in out[name].items()))
    return out


def environment() -> Dict[str, Any]:
    info: Dict[str, Any] = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                            "cpu_count": os.cpu_count(), "python": sys.version.split()[0]}
    try:
        info["loadavg"] = os.getloadavg()
    except OSError:
        pass
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return info
