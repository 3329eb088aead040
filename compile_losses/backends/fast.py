"""``fast``: per case, the fastest of the paths the project offers (a forward: eager, the compiled
graph, TorchScript; a loss and gradient: eager, fused; a train step: eager, the compiled graph,
dynamo, onnxruntime), measured on the example inputs at prepare time, eager included, so it is
never slower than eager by construction; the returned callable's ``note`` says what was chosen
and the timings behind it.

The selection (3-10 s: every candidate built, warmed up and timed) is made once per case structure
and kept for the process: the same modules (by identity, as their live parameters are read) with
the same settings, weights, dtypes and non-batch shapes reuse it at any batch size, as every other
backend reuses its build. The choice is timed at the first batch seen.
"""
import collections
from typing import Any, Callable, Dict, Tuple

import torch
from torch import Tensor, nn

from ..fast import CompiledForward, CompiledTrainStep, FusedLossAndGrad, Lazy, Selected, pick_fastest
from ..programs import eager_loss_and_grad, eager_train_step
from .base import Backend, owned_lru, register_cache, structure_key
from .compile import own_code
from .fused import check_scalar
from .torchscript import ScriptBackend

__all__ = ["FastBackend"]

_SELECTIONS: "collections.OrderedDict[Tuple[Any, ...], Tuple[Tuple[Any, ...], Selected]]" = register_cache(
    collections.OrderedDict())
_SELECTIONS_SIZE = 64


class FastBackend(Backend):
    supports_autograd = True
    cost = 60.0  # every candidate built and timed
    markers = ("compile", "onnx")

    def prepare(self, module: nn.Module, example_inputs: Tuple[Tensor, ...]) -> Selected:
        return _selection("forward", module, (module,), example_inputs, lambda: pick_fastest(
            {"eager": lambda: module, "compile": lambda: _compiled_forward(module),
             "script": lambda: ScriptBackend(self.name + ":script").prepare(module, tuple(example_inputs))},
            tuple(example_inputs)))

    def prepare_loss_and_grad(self, loss: nn.Module, example_inputs: Tuple[Tensor, ...]) -> Selected:
        check_scalar(loss)
        return _selection("loss_and_grad", loss, (loss,), example_inputs, lambda: pick_fastest(
            {"eager": lambda: eager_loss_and_grad(loss), "fused": lambda: FusedLossAndGrad(loss)},
            tuple(example_inputs)))

    def prepare_train_step(self, net: nn.Module, loss: nn.Module, example_inputs: Tuple[Tensor, ...],
                           lr: float) -> Selected:
        check_scalar(loss)
        candidates: Dict[str, Callable[[], Callable[..., Any]]] = {
            "eager": lambda: eager_train_step(net, loss, lr),
            "compile-graph": lambda: CompiledTrainStep(net, loss, lr, mode="graph"),
            "compile-dynamo": lambda: CompiledTrainStep(net, loss, lr, mode="dynamo"),
        }
        if all(t.device.type == "cpu" for t in example_inputs):
            candidates["onnx"] = lambda: _onnx_step(net, loss, example_inputs, lr)
        from ..nets import NetWithLoss

        return _selection(("train_step", float(lr)), NetWithLoss(net, loss, n_targets=len(example_inputs) - 1),
                          (net, loss), example_inputs, lambda: pick_fastest(candidates, tuple(example_inputs)))


def _selection(kind: Any, key_module: nn.Module, owners: Tuple[nn.Module, ...], example_inputs: tuple,
               select: Callable[[], Selected]) -> Selected:
    key = (kind,) + structure_key(key_module, tuple(example_inputs))
    return owned_lru(_SELECTIONS, _SELECTIONS_SIZE, key, owners, select)


def _compiled_forward(module: nn.Module) -> CompiledForward:
    # a guard-free graph where no gradient is recorded; torch.compile (built at its first call) where
    # one is, of a function with a code object of its own (dynamo keeps at most 8 graphs per code
    # object, and every NetWithLoss shares one forward)
    return CompiledForward(module, differentiable=Lazy(lambda: torch.compile(own_code(module))))


def _onnx_step(net: nn.Module, loss: nn.Module, example_inputs: tuple, lr: float) -> Callable[..., Any]:
    from ..training import prepare_onnx_train_step

    return prepare_onnx_train_step(net, loss, tuple(example_inputs), lr)
