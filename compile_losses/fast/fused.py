"""Fused loss-and-gradient: the loss value and d loss / d prediction in one compiled pass.

For any loss (nothing is written per loss), ``torch.func.grad_and_value`` of the loss's own
functional code gives the joint forward+backward; ``torch.compile`` turns it into a few fused
loops that read the prediction and targets once or twice and write the gradient straight into a
reused buffer (:mod:`compile_losses.fast.buffers`). Eager runs the same math as a chain of
separate ops, each allocating and streaming a full-size temporary.

:class:`FusedLoss` puts this behind autograd, as fused cross-entropy kernels do: the forward
computes the value *and* the gradient, the backward only scales the saved gradient by
``grad_output`` (and hands it over untouched when ``grad_output`` is 1, the usual
``loss.backward()``). Trade-offs: the gradient is computed even if ``backward`` never runs, only
the prediction gets a gradient (a target that requires grad sends the call to the plain loss), the
loss must reduce to a scalar (``reduction="none"`` uses the plain loss), and a second backward
through the same graph (``retain_graph=True``) raises, because the buffer was handed over.
"""
import types
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .buffers import BufferPool


def _joint(loss: nn.Module) -> Callable[..., Tensor]:
    def joint(out: Tensor, pred: Tensor, *targets: Tensor) -> Tensor:
        grad, value = torch.func.grad_and_value(lambda p: loss(p, *targets))(pred)
        out.copy_(grad)  # inductor writes the gradient loop's result straight into ``out``
        return value

    return private_code(joint)


def private_code(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A copy of ``fn`` with its own code object. Dynamo keeps its compiled graphs per code object
    (at most 8), so closures over different losses would otherwise evict each other and, with
    ``fullgraph=True``, fail once the ninth loss is compiled."""
    return types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)


class FusedLossAndGrad:
    """``(pred, *targets) -> (loss value, d loss / d pred)`` from one compiled joint graph.

    The gradient lives in a reused buffer: it stays valid as long as you hold it (a held gradient
    is never overwritten; the next call then allocates a fresh buffer), and is recycled once you
    drop it. ``compile=False`` runs the same joint graph eagerly (for parity tests and fallbacks).

    Example::

        >>> import torch
        >>> from compile_losses.losses import MSELoss
        >>> fused = FusedLossAndGrad(MSELoss(), compile=False)
        >>> value, grad = fused(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0]))
        >>> value.item(), grad.tolist()
        (2.5, [1.0, 2.0])
    """

    def __init__(self, loss: nn.Module, compile: bool = True, options: Optional[Dict[str, Any]] = None) -> None:
        if not isinstance(loss, nn.Module):
            raise TypeError("loss must be an nn.Module, got {}".format(type(loss).__name__))
        if getattr(loss, "reduction", "mean") == "none":
            raise ValueError("loss must reduce to a scalar to be fused (reduction 'mean' or 'sum'), got "
                             "{} with reduction 'none'".format(type(loss).__name__))
        self.loss = loss
        self.pool = BufferPool()
        joint = _joint(loss)
        # fullgraph: a graph break would split the joint pass and lose the fusion, so fail loudly.
        if compile:
            from ..build_cache import prime_cpu_isa

            prime_cpu_isa()
        self._run = torch.compile(joint, fullgraph=True, options=options) if compile else joint
        self.compiled = compile

    def __call__(self, pred: Tensor, *targets: Tensor) -> Tuple[Tensor, Tensor]:
        if not isinstance(pred, Tensor) or not pred.is_floating_point():
            raise TypeError("pred must be a floating-point tensor, got {}".format(
                pred.dtype if isinstance(pred, Tensor) else type(pred).__name__))
        buf, handout = self.pool.take(pred)
        with torch.no_grad():
            value = self._run(buf, pred.detach(), *[t.detach() for t in targets])
        return value, handout


class _FusedFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, runner: FusedLossAndGrad, pred: Tensor, *targets: Tensor) -> Tensor:
        value, grad = runner(pred, *targets)
        ctx.grad = grad
        ctx.n_targets = len(targets)
        return value

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: Tensor) -> Tuple[Optional[Tensor], ...]:
        grad = getattr(ctx, "grad", None)
        if grad is None:
            raise RuntimeError("FusedLoss: backward ran twice through the same graph; its gradient buffer "
                               "was handed over on the first. Use the plain loss with retain_graph=True.")
        # Drop our reference so autograd may adopt the tensor as ``.grad`` without a copy.
        del ctx.grad
        if not _is_one(grad_output):
            grad = grad * grad_output
        return (None, grad) + (None,) * ctx.n_targets


def _is_one(t: Tensor) -> bool:
    # Reading the value syncs a GPU; there, scale unconditionally (one cheap pass, no sync).
    return t.device.type == "cpu" and t.numel() == 1 and bool(t.item() == 1.0)


class FusedLoss(nn.Module):
    """Wraps a loss so that its forward also computes the gradient in the same compiled pass.

    ``FusedLoss(loss)(pred, *targets)`` returns the same value as ``loss(pred, *targets)``; its
    backward scales the gradient computed in the forward. Without grad (``torch.no_grad()``, a
    prediction that does not require grad), with ``reduction="none"`` or with a target that
    requires grad, it calls the wrapped loss unchanged.

    Example::

        >>> import torch
        >>> from compile_losses.losses import HuberLoss
        >>> pred = torch.tensor([0.5, 3.0], requires_grad=True)
        >>> FusedLoss(HuberLoss(), compile=False)(pred, torch.zeros(2)).backward()
        >>> pred.grad.tolist()
        [0.25, 0.5]
    """

    def __init__(self, loss: nn.Module, compile: bool = True, options: Optional[Dict[str, Any]] = None) -> None:
        super().__init__()
        self.loss = loss
        self._compile = compile
        self._options = options
        self._runner: Optional[FusedLossAndGrad] = None

    @property
    def fusable(self) -> bool:
        return getattr(self.loss, "reduction", "mean") != "none"

    def forward(self, pred: Tensor, *targets: Tensor) -> Tensor:
        if (not self.fusable or not torch.is_grad_enabled() or not pred.requires_grad
                or any(t.requires_grad for t in targets)):
            return self.loss(pred, *targets)
        if self._runner is None:
            self._runner = FusedLossAndGrad(self.loss, compile=self._compile, options=self._options)
        return _FusedFunction.apply(self._runner, pred, *targets)

    def extra_repr(self) -> str:
        return "compile={}".format(self._compile)
