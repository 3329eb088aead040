"""Every way to run a module, behind one interface: ``BACKENDS[name]`` is a :class:`Backend`.

    from compile_losses.backends import BACKENDS
    fn = BACKENDS["onnx"].prepare(loss, (pred, target))      # torch tensors in, torch tensors out
    value, dpred = BACKENDS["compile"].prepare_loss_and_grad(loss, (pred, target))(pred, target)
    step = BACKENDS["script"].prepare_train_step(net, loss, (x, target), lr=0.01)(x, target)

``available()`` says whether a backend can run here, and if not, why; nothing that did not run is
ever reported as a pass. CUDA variants are always listed and say "unavailable" without a GPU.
"""
from typing import Dict, List

from ..errors import UsageError
from .aoti import AotiBackend
from .base import Backend, TrainStepResult, Unsupported, clear_cache, export_example, structure_key
from .eager import CompileBackend, EagerBackend
from .onnx import OnnxBackend
from .torchscript import ScriptBackend, TraceBackend

__all__ = ["Backend", "Unsupported", "TrainStepResult", "BACKENDS", "AUTOGRAD", "get_backends",
           "clear_cache", "export_example", "structure_key"]

BACKENDS: Dict[str, Backend] = {
    b.name: b
    for b in [
        EagerBackend("eager"),
        CompileBackend("compile", compiler="inductor", tuned=True),
        CompileBackend("compile-dynamo", compiler="inductor"),
        CompileBackend("compile-aot_eager", compiler="aot_eager"),
        ScriptBackend("script"),
        TraceBackend("trace"),
        OnnxBackend("onnx", exporter="dynamo"),
        OnnxBackend("onnx-legacy", exporter="legacy"),
        OnnxBackend("onnx-ref", exporter="dynamo", runner="ref"),
        AotiBackend("aoti"),
        EagerBackend("eager-cuda", device="cuda"),
        CompileBackend("compile-cuda", compiler="inductor", device="cuda"),
        OnnxBackend("onnx-cuda", exporter="dynamo", provider="CUDAExecutionProvider"),
    ]
}

# The fast paths (compile_losses.fast): "fused" loss-and-gradient / compiled train-step graph, and
# "fast", the fastest measured path per case (never slower than eager).
from ..fast.backend import FAST_BACKENDS  # noqa: E402

BACKENDS.update(FAST_BACKENDS)

AUTOGRAD: List[str] = [name for name, b in BACKENDS.items() if b.supports_autograd]


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
