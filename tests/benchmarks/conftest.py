"""The benchmark suite's case tables, backend parametrization and timing helper.

Run it with ``compile-losses bench`` (or ``pytest tests/benchmarks --benchmark-only``); the default
test run skips it (``--benchmark-skip``) and ``tests/test_bench_smoke.py`` runs it once, tiny.

Environment (read once, at collection):
  COMPILE_LOSSES_BENCH_MODE   full (default) | quick | smoke | smoke-all: which cases, what sizes.
  COMPILE_LOSSES_BENCH_THREADS  torch intra-op threads (unset or 0: torch's default). The CLI sets 1
      on the CPU: onnxruntime's sessions use one thread too, and on a shared machine a two-thread op
      waits for a descheduled thread (Linear(32, 16) at batch 10: 5 us alone, 12-24 ms under load 7).
  COMPILE_LOSSES_BENCH_PLANT_SLOWDOWN  "<backend>[:<factor>]": that backend's callable does its
      work <factor> times (default 2). Only for the gate experiment; recorded in extra_info.

This file is the measuring instrument: it imports only the code under test (registry, nets,
backends), never compile_losses.bench, so the interleaved gate can point it at an older checkout.
Every callable comes from ``compile_losses.backends`` (one data path); nothing is compiled here.
"""
import contextlib
import gc
import importlib
import math
import os
import platform
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest
import torch

from compile_losses import registry
from compile_losses.backends import BACKENDS, Unsupported, reference_for

MODE = os.environ.get("COMPILE_LOSSES_BENCH_MODE", "full")
if MODE not in ("full", "quick", "smoke", "smoke-all"):
    raise pytest.UsageError("COMPILE_LOSSES_BENCH_MODE must be one of full, quick, smoke, smoke-all, got {!r}".format(MODE))
SMOKE = MODE.startswith("smoke")
_THREADS = int(os.environ.get("COMPILE_LOSSES_BENCH_THREADS", "0") or 0)
if _THREADS > 0:
    torch.set_num_threads(_THREADS)  # before anything compiles: inductor bakes it into its kernels
WARMUP_CALLS = 1 if SMOKE else 2
MAX_ROUNDS = 20000
LR = 0.01


def _planted() -> Tuple[str, int]:
    text = os.environ.get("COMPILE_LOSSES_BENCH_PLANT_SLOWDOWN", "")
    if not text:
        return "", 1
    name, _, factor = text.partition(":")
    return name, int(factor or 2)


PLANTED_BACKEND, PLANTED_FACTOR = _planted()


# ---------------------------------------------------------------------------------------------
# cases
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LossCase:
    """One loss alone: a prediction of shape (batch,) + feature and its registry targets."""

    loss: str
    batch: int
    feature: Tuple[int, ...]

    @property
    def id(self) -> str:
        return "{}-{}".format(self.loss, "x".join(map(str, (self.batch,) + self.feature)))

    @property
    def numel(self) -> int:
        n = self.batch
        for d in self.feature:
            n *= d
        return n

    def make(self, device: str) -> Tuple[torch.nn.Module, Tuple[torch.Tensor, ...]]:
        spec = registry.LOSSES[self.loss]
        pred, targets = spec.input_for(self.batch, torch.float32, seed=0, feature_shape=self.feature)
        return spec.build().to(device), tuple(t.to(device) for t in (pred,) + targets)


@dataclass(frozen=True)
class NetCase:
    """A registry net with a loss: ``loss(net(x), *targets)`` at one batch size."""

    net: str
    loss: str
    batch: int

    @property
    def id(self) -> str:
        return "{}+{}-b{}".format(self.net, self.loss, self.batch)

    def make(self, device: str) -> Tuple[torch.nn.Module, torch.nn.Module, Tuple[torch.Tensor, ...]]:
        loss_spec = registry.LOSSES[self.loss]
        net_spec = registry.NETS[self.net]
        torch.manual_seed(0)
        overrides = {"out_features": loss_spec.net_out} if self.net == "seed" else {}
        net = net_spec.build(**overrides).eval()
        kwargs = net_spec.loss_kwargs if self.loss == net_spec.loss else {}
        loss = loss_spec.build(**kwargs)
        x = net_spec.example_input(self.batch)
        with torch.no_grad():
            pred = net(x)
        targets = loss_spec.make_targets(pred, torch.Generator().manual_seed(1))
        return net.to(device), loss.to(device), tuple(t.to(device) for t in (x,) + targets)


# Sizes: elementwise losses at 2^24 elements; the others at a realistic (batch, classes/pixels/dim).
_FULL_SHAPES = {"classification": (8192, (1000,)), "distribution": (8192, (1000,)),
                "dense": (16, (4, 256, 256)), "metric": (16384, (128,))}
_FULL_SHAPES_BY_NAME = {"info_nce": (4096, (128,))}  # its cost is the N x N similarity matrix


def _loss_case(name: str, mode: str) -> LossCase:
    spec = registry.LOSSES[name]
    per_sample = int(math.prod(spec.feature_shape))  # elementwise losses may take several per sample
    if mode.startswith("smoke"):
        batch = 64 if not spec.elementwise else max(1, 1024 // per_sample)
        return LossCase(name, batch, spec.feature_shape)
    if spec.elementwise:
        return LossCase(name, (2 ** 24 if mode == "full" else 2 ** 22) // per_sample, spec.feature_shape)
    batch, feature = _FULL_SHAPES_BY_NAME.get(name, _FULL_SHAPES[spec.family])
    return LossCase(name, batch if mode == "full" else max(batch // 4, 16), feature)


# quick: one polynomial, one transcendental and one classification loss (each costs ~10 s of exports).
_QUICK_LOSSES = ("mse", "log_cosh", "cross_entropy")


def loss_cases(kind: str) -> List[LossCase]:
    names = list(registry.LOSSES)
    if MODE == "quick":
        names = [n for n in _QUICK_LOSSES if kind == "fwdbwd" or n == "mse"]
    return [_loss_case(n, MODE) for n in names]


def seed_cases() -> List[NetCase]:
    batches = (10, 4096) if not SMOKE else (10, 64)
    return [NetCase("seed", "mse", b) for b in batches]


def net_cases() -> List[NetCase]:
    full = {"mlp": 1024, "convseg": 32, "encoder": 256}
    if SMOKE:
        return [NetCase(n, registry.NETS[n].loss, 4) for n in full]
    if MODE == "quick":
        return [NetCase("mlp", "cross_entropy", full["mlp"])]
    return [NetCase(n, registry.NETS[n].loss, b) for n, b in full.items()]


def compile_cases() -> List[Tuple[str, NetCase]]:
    """Cold (fresh inductor cache) and warm (populated cache, in-memory caches cleared) preparation
    of SeedNet + MSE: the train step (what a user compiles to train), and inference in full mode."""
    case = NetCase("seed", "mse", 10 if not SMOKE else 4)
    kinds = ("train",) if MODE != "full" else ("train", "infer")
    phases = ("cold",) if MODE == "smoke" else ("cold", "warm")
    return [("{}-{}".format(phase, kind), case) for kind in kinds for phase in phases]


COMPILE_ROUNDS = {"full": 2}.get(MODE, 1)


def triad_numels() -> List[int]:
    return sorted({c.numel for kind in ("fwd", "fwdbwd") for c in loss_cases(kind)})


# ---------------------------------------------------------------------------------------------
# backends: which ones each test runs, with markers; skipped (never passed) when unavailable
# ---------------------------------------------------------------------------------------------
def backend_device(name: str) -> str:
    return BACKENDS[name].device


def reference_backend(device: str) -> str:
    return reference_for(device).name


_AVAILABLE: Dict[str, Tuple[bool, str]] = {}


def _marks(name: str) -> List[Any]:
    """From the adapter's declared facts: unavailable or not benchmarked (both skipped with the
    reason, never timed), and its test markers."""
    backend = BACKENDS[name]
    if name not in _AVAILABLE:
        _AVAILABLE[name] = backend.available()
    ok, reason = _AVAILABLE[name]
    marks = [] if ok else [pytest.mark.skip(reason="unavailable: {}".format(reason))]
    if backend.not_benchmarked:
        marks = [pytest.mark.skip(reason="not benchmarked: {}".format(backend.not_benchmarked))]
    return marks + [getattr(pytest.mark, m) for m in backend.markers]


# smoke (the default test run): every case with the eager reference, every other backend only on
# the first case of these tests, so that the run stays short; smoke-all (slow) runs everything.
_SMOKE_ALL_BACKENDS = ("test_loss_forward_backward", "test_seed_train_step", "test_compile_time")


def _backends_for(test: str, first_case: bool, only: Optional[Callable[[str], bool]] = None) -> List[str]:
    names = [n for n in BACKENDS if only is None or only(n)]
    if MODE == "quick":  # backends that say they are not for the quick run (AOTI builds, aot_eager)
        names = [n for n in names if BACKENDS[n].quick_bench]
    if MODE == "smoke" and not (first_case and test in _SMOKE_ALL_BACKENDS):
        names = [n for n in names if BACKENDS[n].reference]
    return names


def _builds_something(name: str) -> bool:
    """Backends whose preparation time is worth timing: all but the references in full mode
    (exports and fast paths included); those that say so (torch.compile) in quick and smoke mode."""
    if MODE in ("full", "smoke-all"):
        return not BACKENDS[name].reference
    return BACKENDS[name].times_build


_TABLES: Dict[str, Callable[[], list]] = {
    "test_loss_forward": lambda: loss_cases("fwd"),
    "test_loss_forward_backward": lambda: loss_cases("fwdbwd"),
    "test_seed_inference": seed_cases,
    "test_seed_train_step": seed_cases,
    "test_seed_adamw_step": seed_cases,
    "test_net_inference": net_cases,
    "test_net_train_step": net_cases,
    "test_compile_time": compile_cases,
}


CASES: Dict[str, Any] = {}  # case id -> LossCase | NetCase; the id is what the JSON records


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    name = metafunc.function.__name__
    if name == "test_triad":
        no_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="unavailable: no CUDA device")
        devices = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=[pytest.mark.gpu, no_cuda])]
        metafunc.parametrize("device", devices)
        metafunc.parametrize("numel", triad_numels(), ids=lambda n: "n{}".format(n))
        return
    if name == "test_seed_adamw_trainer":  # the runtime's trainer: one path, on the CPU (smoke: one case)
        cases = seed_cases()[:1] if SMOKE else seed_cases()
        CASES.update((c.id, c) for c in cases)
        metafunc.parametrize("device", ["cpu"])
        metafunc.parametrize("case", [c.id for c in cases], indirect=True, ids=[c.id for c in cases])
        return
    if name not in _TABLES:
        return
    compile_time = name == "test_compile_time"
    params = []
    for i, case in enumerate(_TABLES[name]()):
        phase = ""
        if compile_time:
            phase, case = case
        CASES[case.id] = case
        for backend in _backends_for(name, i == 0, _builds_something if compile_time else None):
            values = (case.id, backend, phase) if compile_time else (case.id, backend)
            test_id = "-".join(v for v in (phase, case.id, backend) if v)
            params.append(pytest.param(*values, id=test_id, marks=_marks(backend)))
    argnames = ("case", "backend_name", "phase") if compile_time else ("case", "backend_name")
    metafunc.parametrize(argnames, params, indirect=["case"])


@pytest.fixture
def case(request: pytest.FixtureRequest) -> Any:
    return CASES[request.param]


# ---------------------------------------------------------------------------------------------
# context recorded with every result
# ---------------------------------------------------------------------------------------------
def _version(module: str) -> str:
    try:
        return importlib.import_module(module).__version__
    except Exception as exc:  # a missing optional package is context, not an error
        return "unavailable: {}".format(type(exc).__name__)


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _context(device: str) -> Dict[str, Any]:
    import compile_losses

    name = torch.cuda.get_device_name() if device == "cuda" else "{} ({} cpus)".format(_cpu_name(), os.cpu_count())
    return {
        "device": device,
        "device_name": name,
        "threads": torch.get_num_threads(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "onnx": _version("onnx"), "onnxruntime": _version("onnxruntime"),
                     "compile_losses": getattr(compile_losses, "__version__", "?")},
        "compile_losses_path": str(Path(compile_losses.__file__).resolve().parent),
        # glibc's allocator settings (compile-losses bench pins them; see compile_losses/bench/runner.py)
        "malloc_env": {k: os.environ.get(k) for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")},
        "mode": MODE,
    }


# ---------------------------------------------------------------------------------------------
# memory: peak resident set (CPU, via VmHWM, which /proc/self/clear_refs resets) or CUDA allocator
# ---------------------------------------------------------------------------------------------
def _proc_status(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _release_free_memory() -> None:
    """Collect garbage and hand glibc's free heap back to the OS, so resident memory counts live
    memory only (otherwise a freed 16 MB block from an earlier case hides this case's allocation).

    Survivors are frozen (gc.freeze): the next collection scans only newer objects, which keeps it
    at milliseconds instead of the ~0.5 s a full pass over torch, inductor and onnx takes.
    """
    gc.collect()
    gc.freeze()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: resident memory is then an upper bound
        pass


def _memory_now(device: str) -> Optional[int]:
    _release_free_memory()
    if device == "cuda":
        return torch.cuda.memory_allocated()
    return _proc_status("VmRSS")


def _peak_memory_of(call: Callable[[], Any], device: str) -> Optional[int]:
    _release_free_memory()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        call()
        return torch.cuda.max_memory_allocated()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        return None
    call()
    return _proc_status("VmHWM")


PAIRED_ROUNDS = 100


def _sample_rounds(values: List[float], k: int = PAIRED_ROUNDS) -> List[float]:
    """At most ``k`` per-round ratios, evenly spaced in round order, to 4 significant digits: the
    samples of the gate's U test (compile_losses/bench/stats.py; the same rule as its
    ``sample_rounds``, repeated here because the instrument never imports compile_losses.bench),
    small enough for a committed baseline."""
    if len(values) > k:
        values = [values[round(i * (len(values) - 1) / (k - 1))] for i in range(k)]
    return [float("{:.4g}".format(v)) for v in values]


def _no_grad(fn: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        with torch.no_grad():
            return fn(*args)

    return call


def triad(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The memory roofline: reads two tensors, writes one, into a reused buffer (no allocation)."""
    return torch.add(x, y, out=z)


def triad_buffers(numel: int, device: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x, y = (torch.randn(numel, generator=gen).to(device) for _ in range(2))
    return x, y, torch.empty_like(x)


# ---------------------------------------------------------------------------------------------
# the helper every benchmark test uses
# ---------------------------------------------------------------------------------------------
class Bench:
    """Prepares a callable through a backend, warms it up, times it, and records the context.

    One benchmarked callable per test; ``group`` puts backends of one workload side by side.
    """

    def __init__(self, benchmark: Any, device: str, max_time: float, min_rounds: int) -> None:
        self.benchmark = benchmark
        self.device = device
        self.max_time = max_time
        self.min_rounds = min_rounds
        self.compile_rounds = COMPILE_ROUNDS
        self.reference_name = reference_backend(device)
        self.memory_at_start: Optional[int] = None
        self.reserved_bytes = 0  # the triad's buffers: held by the instrument, not by the backend

    def mark_memory(self) -> None:
        """The reference point of ``peak_memory``: call before building inputs and the callable."""
        self.memory_at_start = _memory_now(self.device)

    def prepare(self, backend_name: str, method: str, *args: Any, inference: bool = False,
                **kwargs: Any) -> Callable[..., Any]:
        """``BACKENDS[backend_name].<method>(*args)``; Unsupported becomes a skip with its reason.
        ``inference``: prepared and called under ``torch.no_grad()``, as a user evaluates a loss
        (eager then records no autograd graph either, and backends that choose per case choose for
        that). A backend's choice (``note``: the compile backend's settings or eager fallback, the
        fast backend's pick) goes into ``extra_info["choice"]`` and the report."""
        try:
            with torch.no_grad() if inference else contextlib.nullcontext():
                fn = getattr(BACKENDS[backend_name], method)(*args, **kwargs)
        except Unsupported as exc:
            pytest.skip("unsupported: {}".format(exc))
        if getattr(fn, "note", None):
            self.benchmark.extra_info["choice"] = fn.note
        if inference:
            fn = _no_grad(fn)
        if backend_name == PLANTED_BACKEND:  # gate experiment only: the same work, PLANTED_FACTOR times
            inner = fn

            def fn(*a: Any) -> Any:
                for _ in range(PLANTED_FACTOR - 1):
                    inner(*a)
                return inner(*a)

            self.benchmark.extra_info["planted_slowdown"] = PLANTED_FACTOR
        return fn

    def references(self, backend_name: str, method: str, prepare_args: Tuple[Any, ...], call_args: Tuple[Any, ...],
                   triad_numel: Optional[int] = None, inference: bool = False,
                   **kwargs: Any) -> Dict[str, Tuple[Callable[..., Any], Tuple[Any, ...]]]:
        """What ``run`` pairs each round with: eager's callable for the same work (never planted;
        absent when eager is the backend under test) and, for a loss, the triad over its size."""
        refs: Dict[str, Tuple[Callable[..., Any], Tuple[Any, ...]]] = {}
        reference = reference_backend(self.device)
        if backend_name != reference:
            eager = getattr(BACKENDS[reference], method)(*prepare_args, **kwargs)
            refs["eager"] = (_no_grad(eager) if inference else eager, call_args)
        if triad_numel is not None:
            buffers = triad_buffers(triad_numel, self.device)
            self.reserved_bytes += sum(t.numel() * t.element_size() for t in buffers)
            refs["triad"] = (triad, buffers)
        return refs

    def synced(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        if self.device != "cuda":
            return fn

        def call(*args: Any) -> Any:  # the timer must see the kernels finish
            out = fn(*args)
            torch.cuda.synchronize()
            return out

        return call

    def run(self, fn: Callable[..., Any], args: Tuple[Any, ...], *, workload: str, case: str, backend: str,
            samples: int, bytes_per_call: Optional[int] = None, peak_memory: bool = False,
            references: Optional[Dict[str, Tuple[Callable[..., Any], Tuple[Any, ...]]]] = None,
            **params: Any) -> Any:
        """Warm up, then time ``fn(*args)``; group = workload, case and device, so backends sit together.

        ``references`` (name -> (callable, args)), e.g. eager and the triad, each run once, untimed
        by pytest-benchmark but timed here, right before every timed round. Their per-round ratios
        (``extra_info["paired"]``) compare calls made within milliseconds of each other, which a
        shared machine's shifting load cannot tell apart; ratios of separately timed tests can be
        off by 2x there when a neighbour's job starts in between.
        """
        call = self.synced(fn)
        refs = {name: (self.synced(f), a) for name, (f, a) in (references or {}).items()}
        rounds = self._warm_up(call, args, refs)
        self._describe(workload, case, backend, samples, bytes_per_call, params)
        ref_times: Dict[str, List[float]] = {name: [] for name in refs}

        def run_references() -> None:
            for name, (ref, ref_args) in refs.items():
                start = time.perf_counter()
                ref(*ref_args)
                ref_times[name].append(time.perf_counter() - start)

        out = self.benchmark.pedantic(call, args=args, setup=run_references if refs else None, rounds=rounds)
        if peak_memory and self.memory_at_start is not None:
            peak = _peak_memory_of(lambda: call(*args), self.device)
            if peak is not None:
                self.benchmark.extra_info["peak_memory_bytes"] = max(peak - self.memory_at_start - self.reserved_bytes, 0)
        self._throughput(samples, bytes_per_call)
        self._paired(ref_times)
        return out

    def _paired(self, ref_times: Dict[str, List[float]]) -> None:
        meta = self.benchmark.stats
        if not meta or not ref_times:
            return
        data = list(meta.stats.data)
        paired = {}
        for name, times in ref_times.items():
            times = times[-len(data):]
            if len(times) != len(data) or min(times) <= 0:
                continue
            ratios = [t / r for t, r in zip(data, times)]
            paired["vs_" + name] = {"median": statistics.median(ratios),
                                    "min": min(data) / min(times),
                                    "mean": statistics.fmean(data) / statistics.fmean(times),
                                    "reference_median_s": statistics.median(times),
                                    "rounds": _sample_rounds(ratios)}
        self.benchmark.extra_info["paired"] = paired

    def _warm_up(self, call: Callable[..., Any], args: Tuple[Any, ...],
                 refs: Dict[str, Tuple[Callable[..., Any], Tuple[Any, ...]]]) -> int:
        """Warm up outside the timer (page faults, lazy init, autotuning, TorchScript's profiling
        runs) and choose the rounds.

        The rounds come from the fastest warm-up call (plus its references), not from one
        calibration call that a busy neighbour may have preempted (which leaves a 20 us case with
        5 rounds and a 10 ms median). One call per round: a preemption then spoils one round only.
        """
        disabled = getattr(self.benchmark, "disabled", False)
        per_round = 0.0
        for ref, ref_args in refs.values():
            per_round += min(self._time_calls(ref, ref_args, 1 if disabled else 20))
        times = self._time_calls(call, args, 1 if disabled else 20)
        per_round = max(per_round + min(times), 1e-7)
        return int(min(max(self.max_time / per_round, self.min_rounds), MAX_ROUNDS))

    def _time_calls(self, call: Callable[..., Any], args: Tuple[Any, ...], most: int) -> List[float]:
        times: List[float] = []
        while len(times) < min(WARMUP_CALLS, most) or (len(times) < most and sum(times) < 0.5 * self.max_time):
            start = time.perf_counter()
            call(*args)
            times.append(time.perf_counter() - start)
        return times

    def run_rounds(self, target: Callable[[], Any], setup: Callable[[], None], rounds: int, *, workload: str,
                   case: str, backend: str, samples: int, **params: Any) -> Any:
        """Time ``target()`` once per round, each after an untimed ``setup()`` (e.g. a fresh cache)."""
        self._describe(workload, case, backend, samples, None, params)
        out = self.benchmark.pedantic(self.synced(target), setup=setup, rounds=rounds)
        self._throughput(samples, None)
        return out

    def _describe(self, workload: str, case: str, backend: str, samples: int, bytes_per_call: Optional[int],
                  params: Dict[str, Any]) -> None:
        info = self.benchmark.extra_info
        info.update(_context(self.device))
        info.update(workload=workload, case=case, backend=backend, samples=samples, **params)
        if bytes_per_call is not None:
            info["bytes_per_call"] = bytes_per_call
        self.benchmark.group = "{} {} {}".format(workload, case, self.device)

    triad = staticmethod(triad)

    def triad_buffers(self, numel: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return triad_buffers(numel, self.device)

    @staticmethod
    def nbytes(tensors: Tuple[torch.Tensor, ...]) -> int:
        return sum(t.numel() * t.element_size() for t in tensors)

    def _throughput(self, samples: int, bytes_per_call: Optional[int]) -> None:
        meta = self.benchmark.stats
        if not meta:  # --benchmark-disable: ran once, no statistics
            return
        median = meta.stats.median
        info = self.benchmark.extra_info
        info["median_s"] = median
        info["us_per_call"] = median * 1e6
        info["samples_per_s"] = samples / median
        if bytes_per_call is not None:
            info["bytes_per_s"] = bytes_per_call / median


@pytest.fixture
def bench(benchmark: Any, request: pytest.FixtureRequest) -> Bench:
    callspec = getattr(request.node, "callspec", None)
    params = callspec.params if callspec else {}
    device = params.get("device") or backend_device(params["backend_name"])
    config = request.config
    return Bench(benchmark, device, float(config.getoption("benchmark_max_time")),
                 int(config.getoption("benchmark_min_rounds")))


# ---------------------------------------------------------------------------------------------
# compile time: a fresh (cold) or populated (warm) inductor cache, dynamo reset between rounds
# ---------------------------------------------------------------------------------------------
def _clear_in_memory_caches() -> None:
    import compile_losses.backends as backends_module

    clear_prepared = getattr(backends_module, "clear_cache", None)  # the adapters' per-process cache
    if clear_prepared is not None:
        clear_prepared()
    torch.compiler.reset()
    import torch._inductor.utils as inductor_utils

    clear = getattr(inductor_utils, "clear_caches", None) or getattr(inductor_utils, "clear_inductor_caches", None)
    if clear is not None:
        clear()


class CompileCache:
    """Points TORCHINDUCTOR_CACHE_DIR at private folders for one test and restores it after."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="cl-bench-cache-"))
        self.saved = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
        self.count = 0

    def fresh(self) -> None:
        self.count += 1
        self.use(self.root / "cold{}".format(self.count))

    def use(self, path: Path) -> None:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
        _clear_in_memory_caches()

    def close(self) -> None:
        if self.saved is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = self.saved
        _clear_in_memory_caches()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def compile_cache() -> Any:
    cache = CompileCache()
    yield cache
    cache.close()


