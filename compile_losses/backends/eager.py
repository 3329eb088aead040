"""Eager PyTorch and ``torch.compile``, on the CPU or (when present) a CUDA device.

``compile`` is ``torch.compile(fullgraph=True)`` with torch's own dynamic-shape policy: the
first call compiles for its shapes, a second batch size compiles one graph with a symbolic batch
dimension, and that graph serves every later batch (the audit in :mod:`compile_losses.parity`
checks it). Preparation makes the first call, so compiling stays outside any timer. Each prepared callable compiles its own code object, so preparations never share (or exhaust)
dynamo's per-function recompile budget, and each keeps a count of its compilations for the audit.
"""
import copy
import shutil
import os
from typing import Any, Callable, Dict, List, Sequence, Tuple

import torch
from torch import Tensor, nn

from .base import Backend, export_example, move

__all__ = ["EagerBackend", "CompileBackend", "graph_breaks"]


def _cuda_available() -> Tuple[bool, str]:
    if not torch.cuda.is_available():
        return False, "no CUDA device (torch.cuda.is_available() is False)"
    return True, ""


class EagerBackend(Backend):
    """The module itself: the reference every other backend is compared with."""

    supports_autograd = True

    def __init__(self, name: str = "eager", device: str = "cpu") -> None:
        super().__init__(name)
        self.device = device

    def _available(self) -> Tuple[bool, str]:
        return _cuda_available() if self.device.startswith("cuda") else (True, "")

    def _compile(self, module: nn.Module, example_inputs: Tuple[Tensor, ...]) -> Tuple[Callable[..., Any], nn.Module]:
        if self.device == "cpu":
            return module, module
        used = copy.deepcopy(module).to(self.device)

        def run(*inputs: Tensor) -> Any:
            return used(*move(inputs, self.device))

        return run, used


class CompileBackend(Backend):
    """``torch.compile(fullgraph=True)``, dynamic batch; ``compiler`` is a dynamo backend name
    (``"inductor"``, or ``"aot_eager"`` to tell a dynamo/autograd problem from an inductor one)."""

    supports_autograd = True
    cacheable = True

    def __init__(self, name: str = "compile", compiler: str = "inductor", device: str = "cpu") -> None:
        super().__init__(name)
        self.compiler = compiler
        self.device = device

    def _available(self) -> Tuple[bool, str]:
        if not hasattr(torch, "compile"):
            return False, "this torch has no torch.compile"
        if self.device.startswith("cuda"):
            return _cuda_available()
        if self.compiler == "inductor" and not _cxx_compiler():
            return False, "inductor on the CPU needs a C++ compiler (set CXX or install g++)"
        return True, ""

    def _compile(self, module: nn.Module, example_inputs: Tuple[Tensor, ...]) -> Tuple[Callable[..., Any], nn.Module]:
        from torch._dynamo.testing import CompileCounterWithBackend

        used = module if self.device == "cpu" else copy.deepcopy(module).to(self.device)
        counter = CompileCounterWithBackend(self.compiler)
        compiled = torch.compile(_own_code(used), backend=counter, fullgraph=True)
        device = self.device

        def run(*inputs: Tensor) -> Any:
            if device != "cpu":
                inputs = tuple(move(inputs, device))
            return compiled(*inputs)

        run.compile_counter = counter  # type: ignore[attr-defined]
        return run, used

    def _warm_up(self, fn: Callable[..., Any], example_inputs: Tuple[Tensor, ...]) -> None:
        fn(*example_inputs)  # compile now, outside any timer; other batch sizes recompile once

    def compile_count(self, fn: Callable[..., Any]) -> int:
        """How many graphs a callable prepared here has compiled so far."""
        counter = getattr(fn, "compile_counter", None)
        return -1 if counter is None else int(counter.frame_count)


def _own_code(module: nn.Module) -> Callable[..., Any]:
    """``module(*inputs)`` as a function with a code object of its own (dynamo caches compiled
    graphs per code object, and limits recompilations per code object)."""

    def call(*inputs: Tensor) -> Any:
        return module(*inputs)

    call.__code__ = call.__code__.replace(co_name="compiled_{}_{}".format(type(module).__name__, id(call)))
    return call


def _cxx_compiler() -> bool:
    return any(shutil.which(c) for c in (os.environ.get("CXX", ""), "g++", "c++", "clang++") if c)


def graph_breaks(module: nn.Module, inputs: Sequence[Tensor]) -> Dict[str, Any]:
    """Graph breaks of ``module(*inputs)`` under dynamo (``torch._dynamo.explain``): count and
    one line per break reason."""
    explanation = torch._dynamo.explain(_own_code(module))(*inputs)
    reasons: List[str] = []
    for br in explanation.break_reasons:
        reasons.append(str(getattr(br, "reason", br)).strip().splitlines()[0])
    return {"graph_breaks": int(explanation.graph_break_count), "graphs": int(explanation.graph_count),
            "reasons": reasons}
