"""Eager PyTorch and ``torch.compile``, on the CPU or (when present) a CUDA device.

``compile-dynamo`` (and ``compile-cuda``, ``compile-aot_eager``) is ``torch.compile(fullgraph=True)``
with torch's own dynamic-shape policy: the first call compiles for its shapes, a second batch size
compiles one graph with a symbolic batch dimension, and that graph serves every later batch (the
audit in :mod:`compile_losses.parity` checks it). Preparation makes the first call, so compiling
stays outside any timer. Each prepared callable compiles its own code object, so preparations never
share (or exhaust) dynamo's per-function recompile budget, and each keeps a count of its
compilations for the audit.

``compile`` is the same compiler with the settings picked per kind of work, because the default
ones are slower than eager where the work is small (SeedNet at batch 10: an autograd train step
through ``torch.compile`` took 1.4-1.8x eager's time, its inference loss 1.6x):

* a train step: the whole step (forward, loss, backward, SGD) as one guard-free inductor graph
  (:class:`compile_losses.fast.CompiledTrainStep`, ``mode="graph"``), for a loss that reduces to a
  scalar;
* a loss and its gradient: the joint forward+backward as one compiled pass into a reused buffer
  (:class:`compile_losses.fast.FusedLossAndGrad`), for a loss that reduces to a scalar;
* a forward (inference): ``torch.compile`` when autograd must record, else a guard-free inductor
  graph (:class:`compile_losses.fast.CompiledForward`);
* ``reduction="none"`` losses: ``torch.compile`` with autograd, as ``compile-dynamo``.

Then it times the compiled callable against eager on the example inputs (interleaved rounds,
about 0.2 s) and keeps eager where eager is faster: ``compile`` is never slower than eager on the
case it was prepared for, and the callable's ``note`` says what it chose and the timings behind it.
"""
import contextlib
import copy
import os
import shutil
import threading
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..nets import NetWithLoss
from .base import Backend, _as_tuple, move

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
    (``"inductor"``, or ``"aot_eager"`` to tell a dynamo/autograd problem from an inductor one).
    ``tuned``: settings per kind of work and an eager fallback, as the module docstring says."""

    supports_autograd = True
    cacheable = True

    def __init__(self, name: str = "compile", compiler: str = "inductor", device: str = "cpu",
                 tuned: bool = False) -> None:
        super().__init__(name)
        self.compiler = compiler
        self.device = device
        self.tuned = tuned
        self._local = threading.local()
        if tuned and (compiler != "inductor" or device != "cpu"):
            raise ValueError("tuned=True is measured for inductor on the CPU only, got compiler {!r} on {!r}".format(
                compiler, device))

    # -- tuned: one compiled candidate per kind of work, kept only where it beats eager -------------
    def prepare(self, module: nn.Module, example_inputs: Tuple[Tensor, ...]) -> Callable[..., Any]:
        if not self.tuned:
            return super().prepare(module, example_inputs)
        self._require()
        example_inputs = _as_tuple(example_inputs)

        def compiled(forced: bool) -> Callable[..., Any]:
            from ..fast import CompiledForward, Lazy

            # torch.compile only once a call needs autograd (a no-grad user never pays for it)
            fn = CompiledForward(module, differentiable=Lazy(lambda: self._build_forward(module, example_inputs)[0]))
            # parity compares forward values: verify the guard-free graph, which only this backend
            # runs (its autograd path is compile-dynamo's, verified under that name)
            return _without_grad(fn) if forced else fn

        return self._tuned(("forward",), module, example_inputs, lambda: module, compiled,
                           "forward: guard-free inductor graph without autograd, torch.compile with it")

    def prepare_loss_and_grad(self, loss: nn.Module, example_inputs: Tuple[Tensor, ...]) -> Callable[..., Tuple[Tensor, Tensor]]:
        if not self.tuned:
            return super().prepare_loss_and_grad(loss, example_inputs)
        self._require()
        example_inputs = _as_tuple(example_inputs)
        if _reduces_to_scalar(loss):
            from ..fast import FusedLossAndGrad

            compiled, how = (lambda forced: FusedLossAndGrad(loss)), "joint forward+backward in one compiled pass"
        else:
            compiled, how = (lambda forced: self._autograd_loss_and_grad(loss, example_inputs)), "torch.compile + autograd"
        return self._tuned(("loss_and_grad",), loss, example_inputs,
                           lambda: _EAGER.prepare_loss_and_grad(loss, example_inputs), compiled, how)

    def prepare_train_step(self, net: nn.Module, loss: nn.Module, example_inputs: Tuple[Tensor, ...],
                           lr: float) -> Callable[..., Any]:
        if not self.tuned:
            return super().prepare_train_step(net, loss, example_inputs, lr)
        self._require()
        example_inputs = _as_tuple(example_inputs)
        wrapped = NetWithLoss(net, loss, n_targets=len(example_inputs) - 1)
        if _reduces_to_scalar(loss):
            from ..fast import CompiledTrainStep

            compiled, how = (lambda forced: CompiledTrainStep(net, loss, lr, mode="graph")), "whole step as one guard-free graph"
        else:
            compiled, how = (lambda forced: self._autograd_train_step(wrapped, example_inputs, lr)), "torch.compile + autograd"
        return self._tuned(("train_step", float(lr)), wrapped, example_inputs,
                           lambda: _EAGER.prepare_train_step(net, loss, example_inputs, lr), compiled, how,
                           owners=(net, loss))

    def _tuned(self, kind: Tuple[Any, ...], module: nn.Module, example_inputs: Tuple[Tensor, ...],
               eager: Callable[[], Callable[..., Any]], compiled: Callable[[bool], Callable[..., Any]], how: str,
               owners: Optional[Tuple[nn.Module, ...]] = None) -> Any:
        """The cached choice between ``eager()`` and ``compiled(forced)`` for one case; forced (parity
        mode) and timed choices are cached apart."""
        forced = self._forced()

        def build() -> Tuple[Any, None]:
            return _keep_faster({"eager": eager, "compile": lambda: compiled(forced)}, example_inputs, how, forced), None

        return self._cached(kind + (forced,), module, example_inputs, build, owners=owners)[0]

    @contextlib.contextmanager
    def parity_mode(self) -> Iterator[None]:
        """While parity verifies this backend, prepare the compiled path whatever the timing says:
        eager, the fallback, is parity's reference already, so a case where eager measured faster
        would otherwise leave the compiled code unverified."""
        before = self._forced()
        self._local.forced = True
        try:
            yield
        finally:
            self._local.forced = before

    def _forced(self) -> bool:
        return bool(getattr(self._local, "forced", False))

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


_EAGER = EagerBackend("eager")  # the fallback: exactly what the eager backend runs


def _without_grad(fn: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        with torch.no_grad():
            return fn(*args)

    return call


def _reduces_to_scalar(loss: nn.Module) -> bool:
    return getattr(loss, "reduction", "mean") != "none"


def _keep_faster(candidates: Dict[str, Callable[[], Callable[..., Any]]], example_inputs: Tuple[Tensor, ...],
                 how: str, forced: bool = False) -> Any:
    """The compiled candidate, or eager where eager measured faster (``pick_fastest``'s note says
    which, with the timings); a compiled candidate that fails to build is an error, not a fallback.
    ``forced``: the compiled candidate, untimed (parity mode)."""
    from ..fast import Selected, pick_fastest

    if forced:
        fn = candidates["compile"]()
        fn(*example_inputs)  # compile now, as a timed choice would
        chosen = Selected("compile", fn, {}, {}, "eager")
    else:
        chosen = pick_fastest(candidates, example_inputs, baseline="eager", strict=True)
    chosen.settings = how
    return chosen


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
