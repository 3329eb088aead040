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
from .base import Backend, optimizer_key, owned_lru, register_cache, structure_key
from .compile import INDUCTOR_SETTINGS, check_inductor_settings, inductor_settings_context, own_code
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

    # inductor's numerics settings, as compile's and fused's: every compiled candidate is built
    # (and timed) under them, and a selection is kept per settings
    setting_defaults = dict(INDUCTOR_SETTINGS)

    def check_settings(self, applied: Dict[str, Any]) -> None:
        check_inductor_settings(applied)

    def _settings_context(self, applied: Dict[str, Any]) -> Any:
        return inductor_settings_context(applied)

    def _selection(self, kind: Any, key_module: nn.Module, owners: Tuple[nn.Module, ...], example_inputs: tuple,
                   select: Callable[[], Selected]) -> Selected:
        key = (kind, tuple(sorted(self._settings.items()))) + structure_key(key_module, tuple(example_inputs))
        return owned_lru(_SELECTIONS, _SELECTIONS_SIZE, key, owners, select)

    def prepare(self, module: nn.Module, example_inputs: Tuple[Tensor, ...]) -> Selected:
        return self._selection("forward", module, (module,), example_inputs, lambda: pick_fastest(
            {"eager": lambda: module, "compile": lambda: _compiled_forward(module),
             "script": lambda: ScriptBackend(self.name + ":script").prepare(module, tuple(example_inputs))},
            tuple(example_inputs)))

    def prepare_loss_and_grad(self, loss: nn.Module, example_inputs: Tuple[Tensor, ...]) -> Selected:
        check_scalar(loss)
        return self._selection("loss_and_grad", loss, (loss,), example_inputs, lambda: pick_fastest(
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

        return self._selection(("train_step", float(lr)), NetWithLoss(net, loss, n_targets=len(example_inputs) - 1),
                          (net, loss), example_inputs, lambda: pick_fastest(candidates, tuple(example_inputs)))

    def _optimizer_step(self, net: nn.Module, loss: nn.Module, example_inputs: Tuple[Tensor, ...],
                        opt: Any) -> Callable[..., Any]:
        # the fastest of the functional step in eager, compiled (torch.compile, and the guard-free
        # make_fx graph as the SGD step's "compile-graph") and in onnxruntime, timed on the net's
        # parameters and the optimizer's initial state
        from ..fast.graph import GraphCache
        from ..programs import OptimStepModule, dict_step, flat_optimizer_step, optim_flat_example
        from .compile import CompileBackend
        from .onnx import OnnxBackend

        check_scalar(loss)
        sig, _ = optim_flat_example(net, loss, example_inputs, opt)
        params = {n: p.detach() for n, p in net.named_parameters() if n in sig.params}
        fixed = {n: p.detach() for n, p in net.named_parameters() if n in sig.frozen}
        args = (params, fixed) + tuple(example_inputs) + (opt.init_state(params), opt.hyper_tensors())

        def compiled_step() -> Callable[..., Any]:
            inner = CompileBackend(self.name + ":compile")
            with inner.settings_scope(self._settings):  # built (and cached) under this selection's settings
                return inner.prepare_optimizer_step(net, loss, example_inputs, opt)

        def positional(build: Callable[[], Callable[..., Any]]) -> Callable[[], Callable[..., Any]]:
            def make() -> Callable[..., Any]:
                step = build()
                return lambda *a: step(*a[:-2], state=a[-2], hyper=a[-1])
            return make

        candidates: Dict[str, Callable[[], Callable[..., Any]]] = {
            "eager": positional(lambda: Backend._optimizer_step(_Eager(), net, loss, example_inputs, opt)),
            "compile": positional(compiled_step),
            "compile-graph": positional(lambda: dict_step(sig, GraphCache(flat_optimizer_step(net, loss, opt, sig)))),
        }
        if all(t.device.type == "cpu" for t in example_inputs):
            candidates["onnx"] = positional(lambda: OnnxBackend(self.name + ":onnx").prepare_optimizer_step(
                net, loss, example_inputs, opt))
        selected = self._selection(optimizer_key(opt), OptimStepModule(net, loss, opt, sig), (net, loss), example_inputs,
                              lambda: pick_fastest(candidates, args))

        def run(params: Dict[str, Tensor], fixed: Dict[str, Tensor], x: Tensor, *targets: Tensor,
                state: Dict[str, Dict[str, Tensor]], hyper: Dict[str, Tensor]) -> Any:
            return selected(params, fixed, x, *targets, state, hyper)

        run.selected = selected  # type: ignore[attr-defined]
        run.note = selected.note  # type: ignore[attr-defined]
        return run


def _compiled_forward(module: nn.Module) -> CompiledForward:
    # a guard-free graph where no gradient is recorded; torch.compile (built at its first call) where
    # one is, of a function with a code object of its own (dynamo keeps at most 8 graphs per code
    # object, and every NetWithLoss shares one forward)
    return CompiledForward(module, differentiable=Lazy(lambda: torch.compile(own_code(module))))


def _onnx_step(net: nn.Module, loss: nn.Module, example_inputs: tuple, lr: float) -> Callable[..., Any]:
    from ..training import prepare_onnx_train_step

    return prepare_onnx_train_step(net, loss, tuple(example_inputs), lr)


class _Eager(Backend):
    """The functional optimizer step run as it is (the ``fast`` selection's baseline)."""

    supports_autograd = True

    def __init__(self) -> None:
        super().__init__("fast:eager")

    def _compile(self, module: nn.Module, example_inputs: Tuple[Tensor, ...]) -> Tuple[Callable[..., Any], nn.Module]:
        return module, module
