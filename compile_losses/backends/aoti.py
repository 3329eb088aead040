"""AOTInductor: ``torch.export`` with a dynamic batch dimension, compiled by
``torch._inductor.aoti_compile_and_package`` into a ``.pt2`` package and loaded back with
``aoti_load_package``.

A build takes ~10-20 s on two cores, so prepared packages are cached per process (keyed on the
module's structure and weights and the inputs' non-batch shapes: one build serves every batch
size), and on disk across processes by the exported program
(:func:`compile_losses.training.build_package`). Gradient rows
come from the training graphs (:mod:`compile_losses.training`).
"""
import os
import tempfile
import warnings
from typing import Any, Callable, List, Tuple

import torch
from torch import Tensor, nn

from .. import training
from .base import Backend, TrainStepResult, Unsupported, export_example, input_dims, register_cache
from .compile import cxx_compiler

# training's per-process store of what this adapter runs, forgotten by clear_cache
register_cache(training.AOTI_PACKAGES)

__all__ = ["AotiBackend", "export_aoti"]

_DIRS: List[Any] = []  # package folders live as long as the process holds their runners


class AotiBackend(Backend):
    cacheable = True
    exported = True
    cost = 30.0  # an AOTInductor package build on 2 cores
    quick_bench = False  # ~20 s per package build

    def __init__(self, name: str = "aoti", device: str = "cpu", **facts: Any) -> None:
        facts.setdefault("markers", ("aoti",) + (("gpu",) if device.startswith("cuda") else ()))
        super().__init__(name, **facts)
        self.device = device

    def _available(self) -> Tuple[bool, str]:
        inductor = torch._inductor
        for fn in ("aoti_compile_and_package", "aoti_load_package"):
            if not hasattr(inductor, fn):
                return False, "this torch has no torch._inductor.{}".format(fn)
        if not hasattr(torch, "export"):
            return False, "this torch has no torch.export"
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            return False, "no CUDA device (torch.cuda.is_available() is False)"
        if not cxx_compiler():
            return False, "AOTInductor needs a C++ compiler (set CXX or install g++)"
        return True, ""

    def _compile(self, module: nn.Module, example_inputs: Tuple[Tensor, ...]) -> Tuple[Callable[..., Any], nn.Module]:
        runner = export_aoti(module, example_inputs)

        def run(*inputs: Tensor) -> Any:
            out = runner(*[t.contiguous() for t in inputs])
            return out[0] if isinstance(out, (list, tuple)) and len(out) == 1 else out

        return run, module

    def _exported_loss_and_grad(self, loss: nn.Module, example_inputs: Tuple[Tensor, ...]) -> Callable[..., Tuple[Tensor, Tensor]]:
        return training.prepare_aoti_loss_and_grad(loss, export_example(example_inputs))

    def _exported_train_step(self, net: nn.Module, loss: nn.Module, example_inputs: Tuple[Tensor, ...],
                             lr: float) -> Callable[..., TrainStepResult]:
        return training.prepare_aoti_train_step(net, loss, export_example(example_inputs), lr)

    def _optimizer_step(self, net: nn.Module, loss: nn.Module, example_inputs: Tuple[Tensor, ...],
                        opt: Any) -> Callable[..., Any]:
        if self.device != "cpu":
            raise Unsupported("{}: the optimizer train step is built for the CPU only".format(self.name))
        return training.prepare_aoti_optimizer_step(net, loss, export_example(example_inputs), opt)


def export_aoti(module: nn.Module, example_inputs: Tuple[Tensor, ...], package_path: str = "") -> Any:
    """``torch.export`` (dim 0 of every input dynamic) then AOTInductor; returns the loaded runner.
    With ``package_path`` the ``.pt2`` is written there, else into a folder the process keeps."""
    example = export_example(example_inputs)
    # dim 0 of every input, and every dim marked dynamic on the inputs (compile_losses.dims)
    dims = input_dims(example)
    symbols = {s: torch.export.Dim(s) for d in dims for s in d.values()}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
            program = torch.export.export(module, example, dynamic_shapes=tuple(
                {i: symbols[s] for i, s in d.items()} for d in dims))
    except Exception as exc:  # torch.export raises many types; one line says which and why
        first = (str(exc).strip().splitlines() or [""])[0]
        raise RuntimeError("torch.export failed: {}: {}".format(type(exc).__name__, first)) from None
    if not package_path:
        folder = tempfile.TemporaryDirectory(prefix="compile_losses_aoti_")
        _DIRS.append(folder)
        package_path = os.path.join(folder.name, "model.pt2")
    training.build_package(program, package_path)
    return training.load_package(package_path)
