"""compile_losses: custom PyTorch losses through every compiler and exporter, with proof of parity.

    import compile_losses as cl
    cl.functional.mse_loss(pred, target, reduction="mean")
    cl.losses.MSELoss()
    cl.nets.SeedNet()
    cl.registry.LOSSES, cl.backends.BACKENDS
    report = cl.verify(net, loss, inputs, target)
    loc = cl.localize(net, loss, inputs, target, backend="onnx")   # first diverging node
    path = cl.export_bundle(net, loss, inputs, target, out_dir)

Heavy parts (backends, parity, export) are imported on first use, so ``import compile_losses``
stays cheap and :mod:`compile_losses.runtime` never pulls in torch.
"""
import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY_MODULES = {"functional", "losses", "nets", "registry", "backends", "parity", "training", "export", "runtime"}
_LAZY_ATTRS = {"verify": ("parity", "verify"), "ParityReport": ("parity", "ParityReport"),
               "export_bundle": ("export", "export_bundle"), "localize": ("localize", "localize")}

__all__ = sorted(_LAZY_MODULES | set(_LAZY_ATTRS)) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY_MODULES:
        return importlib.import_module("." + name, __name__)
    if name in _LAZY_ATTRS:
        module, attr = _LAZY_ATTRS[name]
        return getattr(importlib.import_module("." + module, __name__), attr)
    raise AttributeError("module 'compile_losses' has no attribute {!r}".format(name))
