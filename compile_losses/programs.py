"""The three programs every consumer runs, written once: forward, loss-and-gradient, train step.

Backends lower these (compile, script, export) and parity, export fixtures, the fast paths'
eager candidates and the benchmarks' references call them; nobody writes its own copy.

* ``autograd_loss_and_grad(fn)``: ``(pred, *targets) -> (value, d value / d pred)`` by autograd
  through any callable ``fn`` computing the loss (eager, scripted or compiled). A loss that does not
  reduce to a scalar (``reduction="none"``) gets the vector-Jacobian product with ones, as
  ``value.backward(torch.ones_like(value))`` gives.
* ``autograd_train_step(fn, named_params, lr)``: ``(x, *targets) -> TrainStepResult``: the loss
  ``fn(x, *targets)`` (which reads ``named_params``), their gradients and :func:`sgd_update`; no
  parameter and no ``.grad`` is changed.
* ``eager_loss_and_grad(loss)`` / ``eager_train_step(net, loss, lr)``: the eager reference of both.
* ``sgd_update``: the one update rule, ``p - lr * grad``.

The train step's names and order are :class:`compile_losses.signature.TrainStepSignature`'s.
"""
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .signature import TrainStepResult, TrainStepSignature

__all__ = ["TrainStepResult", "TrainStepSignature", "autograd_loss_and_grad", "autograd_train_step", "check_lr",
           "eager_loss_and_grad", "eager_train_step", "sgd_update", "seed_grad", "trainable"]


def check_lr(lr: object, name: str = "lr") -> float:
    """A learning rate as a float: a real number (Python or numpy scalar), finite and > 0."""
    import math
    import numbers

    if isinstance(lr, bool) or not isinstance(lr, numbers.Real):
        raise TypeError("{} must be a real number, got {}".format(name, type(lr).__name__))
    value = float(lr)
    if not math.isfinite(value) or value <= 0:
        raise ValueError("{} must be a finite number > 0, got {!r}".format(name, value))
    return value


def seed_grad(value: Tensor) -> Optional[Tensor]:
    """The cotangent of a loss value: none for a scalar, ones for an unreduced loss."""
    return None if value.dim() == 0 else torch.ones_like(value)


def sgd_update(params: Dict[str, Tensor], grads: Dict[str, Tensor], lr: "float | Tensor") -> Dict[str, Tensor]:
    """One plain SGD step, ``p - lr * grad`` per parameter (no parameter is changed in place)."""
    return {n: params[n] - lr * grads[n] for n in params}


def trainable(net: nn.Module) -> List[Tuple[str, Tensor]]:
    """The parameters a train step updates: every ``requires_grad`` one, in ``named_parameters`` order."""
    return [(n, p) for n, p in net.named_parameters() if p.requires_grad]


def autograd_loss_and_grad(fn: Callable[..., Tensor]) -> Callable[..., Tuple[Tensor, Tensor]]:
    """``(pred, *targets) -> (value, d value / d pred)`` by autograd through ``fn``."""

    def loss_and_grad(pred: Tensor, *targets: Tensor) -> Tuple[Tensor, Tensor]:
        leaf = pred.detach().requires_grad_(True)
        value = fn(leaf, *targets)
        (dpred,) = torch.autograd.grad(value, leaf, grad_outputs=seed_grad(value))
        return value.detach(), dpred

    return loss_and_grad


def autograd_train_step(fn: Callable[..., Tensor], named_params: Sequence[Tuple[str, Tensor]],
                        lr: float) -> Callable[..., TrainStepResult]:
    """``(x, *targets) -> TrainStepResult``: ``fn(x, *targets)`` (which reads ``named_params``),
    every parameter's gradient (zeros for one the loss does not reach) and the SGD update."""
    names = [n for n, _ in named_params]
    params = [p for _, p in named_params]

    def train_step(x: Tensor, *targets: Tensor) -> TrainStepResult:
        value = fn(x, *targets)
        grads = torch.autograd.grad(value, params, grad_outputs=seed_grad(value), allow_unused=True)
        grads_by_name = {n: torch.zeros_like(p) if g is None else g for n, p, g in zip(names, params, grads)}
        detached = {n: p.detach() for n, p in zip(names, params)}
        return TrainStepResult(value.detach(), grads_by_name, sgd_update(detached, grads_by_name, lr))

    return train_step


def eager_loss_and_grad(loss: nn.Module) -> Callable[..., Tuple[Tensor, Tensor]]:
    """The eager reference: autograd through the loss module, a fresh gradient every call."""
    return autograd_loss_and_grad(loss)


def eager_train_step(net: nn.Module, loss: nn.Module, lr: float) -> Callable[..., TrainStepResult]:
    """The eager reference train step, from the net's parameters at call time (a parameter replaced
    after this call is seen)."""
    lr = float(lr)

    def step(x: Tensor, *targets: Tensor) -> TrainStepResult:
        return autograd_train_step(lambda x_, *t: loss(net(x_), *t), trainable(net), lr)(x, *targets)

    return step
