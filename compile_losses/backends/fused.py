"""``fused``: the loss's value and gradient in one compiled pass into a reused buffer
(:mod:`compile_losses.fast.fused`), and a train step as one guard-free compiled graph
(:mod:`compile_losses.fast.train_step`)."""
from typing import Any, Callable, Dict, Optional, Tuple

from torch import Tensor, nn

from ..fast import CompiledTrainStep, FusedLoss, FusedLossAndGrad
from .base import Backend, Unsupported, _as_tuple
from .compile import INDUCTOR_SETTINGS, CompileBackend, check_inductor_settings, inductor_settings_context

__all__ = ["FusedBackend", "check_scalar", "split_case"]


class FusedBackend(Backend):
    supports_autograd = True
    cost = 10.0  # an inductor build
    markers = ("compile",)
    # inductor's numerics settings, as compile's (emulate_precision_casts: round low-precision
    # intermediates as eager does); compiled under them at the first call, inside the scope
    setting_defaults = dict(INDUCTOR_SETTINGS)

    def check_settings(self, applied: Dict[str, Any]) -> None:
        check_inductor_settings(applied)

    def _settings_context(self, applied: Dict[str, Any]) -> Any:
        return inductor_settings_context(applied)

    def _available(self) -> Tuple[bool, str]:
        return CompileBackend(self.name)._available()

    def prepare(self, module: nn.Module, example_inputs: Tuple[Tensor, ...]) -> Callable[..., Tensor]:
        self._require()
        net, loss = split_case(module)
        fused = FusedLoss(loss)
        return fused if net is None else _Composed(net, fused)

    def prepare_loss_and_grad(self, loss: nn.Module, example_inputs: Tuple[Tensor, ...]) -> Callable[..., Tuple[Tensor, Tensor]]:
        self._require()
        check_scalar(loss)
        return FusedLossAndGrad(loss)

    def prepare_train_step(self, net: nn.Module, loss: nn.Module, example_inputs: Tuple[Tensor, ...],
                           lr: float) -> Callable[..., Any]:
        self._require()
        _as_tuple(example_inputs)
        check_scalar(loss)
        return CompiledTrainStep(net, loss, lr, mode="graph")

    def _optimizer_step(self, net: nn.Module, loss: nn.Module, example_inputs: Tuple[Tensor, ...],
                        opt: Any) -> Callable[..., Any]:
        raise Unsupported("{}: its train step is the plain-SGD guard-free graph; the optimizer train step is "
                          "compiled by 'compile' and chosen by 'fast'".format(self.name))


def split_case(module: nn.Module) -> Tuple[Optional[nn.Module], nn.Module]:
    """A NetWithLoss (net + loss) as ``(net, loss)``; a bare loss as ``(None, loss)``."""
    net, loss = getattr(module, "net", None), getattr(module, "loss", None)
    if isinstance(net, nn.Module) and isinstance(loss, nn.Module):
        return net, loss
    return None, module


def check_scalar(loss: nn.Module) -> None:
    if getattr(loss, "reduction", "mean") == "none":
        raise Unsupported("reduction 'none' returns no scalar: a gradient pass needs 'mean' or 'sum'")


class _Composed(nn.Module):
    def __init__(self, net: nn.Module, loss: nn.Module) -> None:
        super().__init__()
        self.net, self.loss = net, loss

    def forward(self, x: Tensor, *targets: Tensor) -> Tensor:
        return self.loss(self.net(x), *targets)
