"""Every way to run a module, behind one interface: ``BACKENDS[name]`` is a :class:`Backend`.

    from compile_losses.backends import BACKENDS
    fn = BACKENDS["onnx"].prepare(loss, (pred, target))      # torch tensors in, torch tensors out
    value, dpred = BACKENDS["compile"].prepare_loss_and_grad(loss, (pred, target))(pred, target)
    step = BACKENDS["script"].prepare_train_step(net, loss, (x, target), lr=0.01)(x, target)

``available()`` says whether a backend can run here, and if not, why; nothing that did not run is
ever reported as a pass. CUDA variants are always listed and say "unavailable" without a GPU.
Each adapter declares its facts (device, autograd, exported, cost, reference, audited,
benchmarked, markers: see :mod:`.base`); parity, export, the benchmarks, the CLI and the tests read
those, never a backend's name. :func:`register` adds an adapter (a user's, or a test's) that every
one of them then sees.
"""
from typing import Dict, List, Optional

from ..errors import UsageError
from .aoti import AotiBackend
from .base import Backend, TrainStepResult, Unsupported, clear_cache, export_example, structure_key
from .compile import CompileBackend
from .eager import EagerBackend
from .fast import FastBackend
from .fused import FusedBackend
from .onnx import OnnxBackend
from .torchscript import ScriptBackend, TraceBackend
from .tuned import TunedCompileBackend

__all__ = ["Backend", "Unsupported", "TrainStepResult", "BACKENDS", "get_backends", "register", "unregister",
           "reference_for", "clear_cache", "export_example", "structure_key"]

_DYNAMO_NOTE = ("torch.compile's default settings (graph breaks allowed; the audit's fullgraph check reports "
                "each break), kept for parity and the graph-break audit; "
                "`compile` times its own settings against eager per case and notes the choice")

BACKENDS: Dict[str, Backend] = {
    b.name: b
    for b in [
        EagerBackend("eager"),
        TunedCompileBackend("compile", audited=True, times_build=True),
        CompileBackend("compile-dynamo", compiler="inductor", fullgraph=False, audited=True,
                       not_benchmarked=_DYNAMO_NOTE),
        CompileBackend("compile-aot_eager", compiler="aot_eager", quick_bench=False, cost=1.0),
        ScriptBackend("script", checks_artifacts=("torchscript_forward",)),
        TraceBackend("trace"),
        OnnxBackend("onnx", exporter="dynamo", checks_artifacts=("forward",)),
        OnnxBackend("onnx-legacy", exporter="legacy"),
        OnnxBackend("onnx-ref", exporter="dynamo", runner="ref",
                    not_benchmarked="numpy reference interpreter, for telling an exporter bug from a runtime bug; "
                                    "not a path anyone runs for speed"),
        AotiBackend("aoti"),
        EagerBackend("eager-cuda", device="cuda"),
        CompileBackend("compile-cuda", compiler="inductor", device="cuda", times_build=True),
        OnnxBackend("onnx-cuda", exporter="dynamo", provider="CUDAExecutionProvider"),
        FusedBackend("fused"),
        FastBackend("fast"),
    ]
}


def register(backend: Backend, replace: bool = False) -> Backend:
    """Add an adapter to :data:`BACKENDS` (``list``, ``verify``, the benchmarks and the generic tests
    all iterate it). An existing name is refused unless ``replace``."""
    if not isinstance(backend, Backend):
        raise TypeError("backend must be a compile_losses.backends.Backend, got {}".format(type(backend).__name__))
    if not backend.name:
        raise ValueError("backend.name must be a non-empty string, got {!r}".format(backend.name))
    if isinstance(backend.cost, bool) or not isinstance(backend.cost, (int, float)) or not backend.cost >= 0:
        raise ValueError("backend.cost must be a number of seconds >= 0, got {!r}".format(backend.cost))
    if backend.name in BACKENDS and not replace:
        raise ValueError("a backend named {!r} is registered already (pass replace=True)".format(backend.name))
    BACKENDS[backend.name] = backend
    return backend


def unregister(name: str) -> Optional[Backend]:
    """Remove an adapter added by :func:`register`; returns it (None if there was none)."""
    return BACKENDS.pop(name, None)


def reference_for(device: str = "cpu") -> Backend:
    """The eager reference adapter of ``device`` (what every other backend is compared with)."""
    for b in BACKENDS.values():
        if b.reference and b.device == device:
            return b
    raise UsageError("no reference backend for device {!r} (devices with one: {})".format(
        device, ", ".join(sorted({b.device for b in BACKENDS.values() if b.reference}))))


def get_backends(names: "str | List[str] | None" = None) -> List[Backend]:
    """Backends by name (a list or ``"a,b"``); ``None`` is all of them. Unknown names raise
    :class:`~compile_losses.errors.UsageError` listing the known ones."""
    if names is None:
        return list(BACKENDS.values())
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        raise UsageError("unknown backend {} (known: {})".format(", ".join(repr(n) for n in unknown), ", ".join(BACKENDS)))
    if not names:
        raise UsageError("backends must name at least one of: {}".format(", ".join(BACKENDS)))
    return [BACKENDS[n] for n in names]
