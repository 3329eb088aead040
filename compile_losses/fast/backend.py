"""The fast paths as backends (interfaces.md's adapter), so parity, the CLI and the benchmarks reach
them by name like any other backend:

* ``fused``: the loss's value and gradient in one compiled pass into a reused buffer
  (:mod:`.fused`); a train step as one guard-free compiled graph (:mod:`.train_step`).
* ``fast``: per case, the fastest of the paths the project offers (a forward: eager, the
  compiled graph, TorchScript; a loss and gradient: eager, fused; a train step: eager, the
  compiled graph, dynamo, onnxruntime), measured on the example inputs at prepare time, eager
  included, so it is never slower than eager by construction; the returned callable's ``note``
  says what was chosen and the timings behind it.
"""
import collections
from typing import Any, Callable, Dict, Tuple

import torch
from torch import Tensor, nn

from .fused import FusedLoss, FusedLossAndGrad
from .graph import CompiledForward, Lazy
from .select import Selected, pick_fastest
from .train_step import CompiledTrainStep, eager_train_step


def _unsupported(reason: str) -> Exception:
    try:  # the backends package owns the exception type; it imports us, so look it up late
        from ..backends import Unsupported
    except ImportError:
        return NotImplementedError(reason)
    return Unsupported(reason)


def _compile_available() -> Tuple[bool, str]:
    if not hasattr(torch, "compile"):
        return False, "torch.compile is missing from torch {}".format(torch.__version__)
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception as exc:  # no C++ compiler, or a torch whose inductor moved
        return False, "inductor cannot compile here: {}".format(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    return True, ""


def _split(module: nn.Module) -> Tuple[Any, nn.Module]:
    # A NetWithLoss (net + loss) or a bare loss.
    net, loss = getattr(module, "net", None), getattr(module, "loss", None)
    if isinstance(net, nn.Module) and isinstance(loss, nn.Module):
        return net, loss
    return None, module


def _check_scalar(loss: nn.Module) -> None:
    if getattr(loss, "reduction", "mean") == "none":
        raise _unsupported("reduction 'none' returns no scalar: a gradient pass needs 'mean' or 'sum'")


def eager_loss_and_grad(loss: nn.Module) -> Callable[..., Tuple[Tensor, Tensor]]:
    """The eager baseline: autograd through the loss, a fresh gradient every call."""

    def run(pred: Tensor, *targets: Tensor) -> Tuple[Tensor, Tensor]:
        pred = pred.detach().requires_grad_(True)
        value = loss(pred, *targets)
        (grad,) = torch.autograd.grad(value, pred)
        return value.detach(), grad

    return run


class _Composed(nn.Module):
    def __init__(self, net: nn.Module, loss: nn.Module) -> None:
        super().__init__()
        self.net, self.loss = net, loss

    def forward(self, x: Tensor, *targets: Tensor) -> Tensor:
        return self.loss(self.net(x), *targets)


class FusedBackend:
    name = "fused"
    supports_autograd = True

    def available(self) -> Tuple[bool, str]:
        return _compile_available()

    def prepare(self, module: nn.Module, example_inputs: tuple) -> Callable[..., Tensor]:
        net, loss = _split(module)
        fused = FusedLoss(loss)
        return fused if net is None else _Composed(net, fused)

    def prepare_loss_and_grad(self, loss: nn.Module, example_inputs: tuple) -> Callable[..., Tuple[Tensor, Tensor]]:
        _check_scalar(loss)
        return FusedLossAndGrad(loss)

    def prepare_train_step(self, net: nn.Module, loss: nn.Module, example_inputs: tuple, lr: float) -> Callable[..., Any]:
        _check_scalar(loss)
        return CompiledTrainStep(net, loss, lr, mode="graph")


class FastBackend:
    """The selection (3-10 s: every candidate built, warmed up and timed) is made once per case
    structure and kept for the process: the same modules (by identity, as their live parameters
    are read) with the same settings, weights, dtypes and non-batch shapes reuse it at any batch
    size, as every other backend reuses its build. The choice is timed at the first batch seen."""

    name = "fast"
    supports_autograd = True

    def available(self) -> Tuple[bool, str]:
        return True, ""  # eager is always a candidate; compiled ones drop out with their reason

    def prepare(self, module: nn.Module, example_inputs: tuple) -> Selected:
        return _selection("forward", module, (module,), example_inputs, lambda: pick_fastest(
            {"eager": lambda: module, "compile": lambda: _compiled_forward(module),
             "script": lambda: _scripted(module, example_inputs)}, tuple(example_inputs)))

    def prepare_loss_and_grad(self, loss: nn.Module, example_inputs: tuple) -> Selected:
        _check_scalar(loss)
        return _selection("loss_and_grad", loss, (loss,), example_inputs, lambda: pick_fastest(
            {"eager": lambda: eager_loss_and_grad(loss), "fused": lambda: FusedLossAndGrad(loss)},
            tuple(example_inputs)))

    def prepare_train_step(self, net: nn.Module, loss: nn.Module, example_inputs: tuple, lr: float) -> Selected:
        _check_scalar(loss)
        candidates: Dict[str, Callable[[], Callable[..., Any]]] = {
            "eager": lambda: eager_train_step(net, loss, lr),
            "compile-graph": lambda: CompiledTrainStep(net, loss, lr, mode="graph"),
            "compile-dynamo": lambda: CompiledTrainStep(net, loss, lr, mode="dynamo"),
        }
        if all(t.device.type == "cpu" for t in example_inputs):
            candidates["onnx"] = lambda: _onnx_step(net, loss, example_inputs, lr)
        return _selection(("train_step", float(lr)), _Composed(net, loss), (net, loss), example_inputs,
                          lambda: pick_fastest(candidates, tuple(example_inputs)))


_SELECTIONS: "collections.OrderedDict[Tuple[Any, ...], Tuple[Tuple[Any, ...], Selected]]" = collections.OrderedDict()
_SELECTIONS_SIZE = 64


def _selection(kind: Any, key_module: nn.Module, owners: Tuple[nn.Module, ...], example_inputs: tuple,
               select: Callable[[], Selected]) -> Selected:
    from ..backends.base import owned_lru, structure_key  # the backends package imports this module

    key = (kind,) + structure_key(key_module, tuple(example_inputs))
    return owned_lru(_SELECTIONS, _SELECTIONS_SIZE, key, owners, select)


def _scripted(module: nn.Module, example_inputs: tuple) -> Callable[..., Any]:
    # TorchScript runs a small net's forward in C++ (SeedNet at batch 10 under no_grad: 0.55x
    # eager's time, torch.compile's graph 0.81x); a module that does not script drops out with why
    from ..backends import BACKENDS

    return BACKENDS["script"].prepare(module, tuple(example_inputs))


def _compiled_forward(module: nn.Module) -> CompiledForward:
    # a guard-free graph where no gradient is recorded; torch.compile (built at its first call) where
    # one is, of a function with a code object of its own (dynamo keeps at most 8 graphs per code
    # object, and every NetWithLoss shares one forward)
    from ..backends.eager import _own_code  # the backends package imports this module

    return CompiledForward(module, differentiable=Lazy(lambda: torch.compile(_own_code(module))))


def _onnx_step(net: nn.Module, loss: nn.Module, example_inputs: tuple, lr: float) -> Callable[..., Any]:
    from ..training import prepare_onnx_train_step

    return prepare_onnx_train_step(net, loss, tuple(example_inputs), lr)


FAST_BACKENDS: Dict[str, Any] = {b.name: b for b in (FusedBackend(), FastBackend())}
