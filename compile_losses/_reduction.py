"""The one reduction vocabulary shared by every loss, and the one helper that applies it."""
import contextlib
from typing import Iterator, List, Optional

import torch
from torch import Tensor

REDUCTIONS: List[str] = ["none", "mean", "sum"]

# ``torch.onnx.export(..., optimize=...)`` for every ONNX graph the project writes. onnxscript's
# optimizer (0.7.2) rewrites ``Add(x, c)`` to ``x`` whenever |c| <= 1e-8 (its no-op rule
# ``add_0`` matches the constant 0 with ``abs_tol=1e-8``), which deletes the epsilons that keep
# losses finite at zero (``x * x + 1e-12`` before a sqrt, ``log(rate + 1e-8)``): NaN or wrong
# gradients for an all-zero prediction. onnxruntime optimizes the graph again when it loads it
# (constant folding, fusions), so exports skip onnxscript's pass; tests/test_backends.py keeps
# the epsilon case as a regression test.
ONNX_OPTIMIZE = False

# Set while a graph is traced for export (see faithful_reductions); read as a Python constant by
# the tracers, so the exported graph holds the float64-accumulated reduction.
_FAITHFUL: List[bool] = [False]


@contextlib.contextmanager
def faithful_reductions() -> Iterator[None]:
    """Trace reductions as float64-accumulated sums while the block runs.

    Every exporter in the project (the ONNX exporters, make_fx of the training graphs) traces inside
    this block. ``torch.onnx.is_in_onnx_export()`` alone does not cover graphs traced by ``make_fx``
    before they are handed to the exporter.
    """
    previous = _FAITHFUL[0]
    _FAITHFUL[0] = True
    try:
        yield
    finally:
        _FAITHFUL[0] = previous


def _faithful_mode() -> bool:
    return _FAITHFUL[0] or torch.onnx.is_in_onnx_export()


def validate_reduction(reduction: str) -> str:
    """Check a reduction name once, at construction or at the top of a function."""
    if reduction not in ["none", "mean", "sum"]:
        raise ValueError(
            "reduction must be one of 'none', 'mean', 'sum', got '{}'".format(reduction)
        )
    return reduction


def apply_reduction(loss: Tensor, reduction: str, denominator: Optional[Tensor] = None) -> Tensor:
    """Reduce an unreduced loss.

    ``denominator`` replaces the element count of ``"mean"`` (class-weighted losses divide by the
    summed weights of their targets, as ``F.cross_entropy`` does). Empty input behaves as torch's
    losses do: the mean of nothing is NaN, the sum is 0, ``"none"`` is empty.
    """
    if reduction == "none":
        return loss
    if reduction == "sum":
        return _faithful_sum(loss)
    if reduction == "mean":
        if denominator is None:
            if not torch.jit.is_scripting():
                # float64 needs no help, and the TorchScript-based exporter divides a float64 sum
                # by a float32 element count (a float32 loss out of a float64 graph).
                # Divided in float64 too, then rounded once: a float16 sum of 2^20 losses (and the
                # count 2^20 itself) is past float16's largest finite value, inf / inf a NaN.
                if _faithful_mode() and loss.dtype in (torch.float32, torch.float16, torch.bfloat16):
                    return (loss.sum(dtype=torch.float64) / loss.numel()).to(loss.dtype)
            return loss.mean()
        if not torch.jit.is_scripting():  # (TorchScript drops this block only in exactly this form)
            if _faithful_mode() and loss.dtype in (torch.float16, torch.bfloat16):
                return _divide_by_weight_sum(loss.sum(dtype=torch.float64),
                                             denominator.to(torch.float64)).to(loss.dtype)
        return _divide_by_weight_sum(_faithful_sum(loss), denominator)
    raise ValueError(
        "reduction must be one of 'none', 'mean', 'sum', got '{}'".format(reduction)
    )


def _faithful_sum(loss: Tensor) -> Tensor:
    # onnxruntime's float32 ReduceSum/ReduceMean accumulate serially: over 2^24 elements they are
    # off from float64 by ~1e-3 relative, while eager's cascaded sum is off by ~1e-8. In an ONNX
    # export the sum is accumulated in float64 and cast back, so the exported graph is as faithful
    # as eager. Eager, TorchScript and torch.compile keep their own (already accurate) kernels.
    if not torch.jit.is_scripting():
        if _faithful_mode() and loss.dtype in (torch.float32, torch.float16, torch.bfloat16):
            return loss.sum(dtype=torch.float64).to(loss.dtype)
    return loss.sum()


def _divide_by_weight_sum(total: Tensor, denominator: Tensor) -> Tensor:
    # When every target is ignored the weight sum is 0: the mean is NaN and its gradient 0, as in
    # F.cross_entropy (a plain division would make the gradient NaN too). torch.where, not an
    # `if` on the value, keeps it one graph for compile and export. Computed on 1-element views:
    # the TorchScript-based ONNX exporter types arithmetic between 0-d tensors as float32 (a
    # float32 loss out of a float64 graph); a rank-1 operand keeps the inputs' dtype.
    total, denominator = total.reshape(1), denominator.reshape(1)
    nonzero = denominator != 0
    safe = torch.where(nonzero, denominator, torch.ones_like(denominator))
    return torch.where(nonzero, total / safe, torch.full_like(total, float("nan"))).reshape(())
