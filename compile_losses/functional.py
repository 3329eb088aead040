"""Functional core of every loss: the math lives here.

Each ``<name>_loss`` takes the prediction first, its targets next, then settings, and ends with
``reduction`` (``"none" | "mean" | "sum"``, default ``"mean"``). The module of the same name in
:mod:`compile_losses.losses` carries the full documentation; these functions point there.

Signatures are positional-or-keyword rather than keyword-only because TorchScript cannot compile
keyword-only parameters, and every function here must script (call the settings by keyword all the
same). Bodies check shapes and dtypes, never tensor values, and branch only on Python settings, so
they compile with ``fullgraph=True`` and export to ONNX with a dynamic batch dimension.
"""
import math
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import (
    check_class_indices,
    check_floating,
    check_in_closed_interval,
    check_in_open_interval,
    check_min_ndim,
    check_ndim,
    check_non_negative,
    check_positive,
    check_same_dtype,
    check_same_shape,
    fmt_shape,
)
from ._reduction import _faithful_mode, apply_reduction, validate_reduction

__all__ = [
    "mse_loss",
    "l1_loss",
    "huber_loss",
    "smooth_l1_loss",
    "log_cosh_loss",
    "charbonnier_loss",
    "quantile_loss",
    "multi_quantile_loss",
    "gaussian_nll_loss",
    "poisson_nll_loss",
    "cross_entropy_loss",
    "binary_focal_loss",
    "focal_loss",
    "bce_with_logits_loss",
    "dice_loss",
    "tversky_loss",
    "multiclass_dice_loss",
    "multiclass_tversky_loss",
    "kl_div_loss",
    "info_nce_loss",
    "nt_xent_loss",
    "sup_con_loss",
    "triplet_margin_loss",
    "cosine_embedding_loss",
]


# ---------------------------------------------------------------------------------------------
# shared pieces
# ---------------------------------------------------------------------------------------------
def _check_pair(input: Tensor, target: Tensor) -> None:
    check_floating(input, "input")
    check_same_dtype(input, target, "input", "target")
    check_same_shape(input, target, "input", "target")


def _weighted(loss: Tensor, weight: Optional[Tensor], reduction: str) -> Tensor:
    # A per-element weight rescales each element, as ``F.binary_cross_entropy_with_logits``'s
    # ``weight`` does; "mean" still divides by the element count (use "sum" / weight.sum() for a
    # masked mean).
    if weight is not None:
        check_same_shape(loss, weight, "input", "weight")
        check_same_dtype(loss, weight, "input", "weight")
        loss = loss * weight
    return apply_reduction(loss, reduction)


def _check_class_weight(weight: Optional[Tensor], input: Tensor, name: str) -> None:
    if weight is not None:
        if weight.dim() != 1 or weight.shape[0] != input.shape[1]:
            raise ValueError(
                "{} must be a 1-D tensor with one entry per class ({},), got {}".format(
                    name, input.shape[1], fmt_shape(list(weight.shape))
                )
            )
        check_same_dtype(input, weight, "input", name)


def _check_class_target(input: Tensor, target: Tensor) -> None:
    check_floating(input, "input")
    check_min_ndim(input, "input", 2, "(N, C, ...)")
    check_class_indices(target, "target")
    expected: List[int] = [input.shape[0]]
    for s in input.shape[2:]:
        expected.append(s)
    if list(target.shape) != expected:
        raise ValueError(
            "target must have the shape of input without its class dimension {}, got input {} and target {}".format(
                fmt_shape(expected), fmt_shape(list(input.shape)), fmt_shape(list(target.shape))
            )
        )


def _check_probability_target(input: Tensor, target: Tensor) -> None:
    # a floating-point target holds class probabilities of the input's shape (N, C, ...)
    check_floating(input, "input")
    check_min_ndim(input, "input", 2, "(N, C, ...)")
    if target.shape != input.shape:
        expected: List[int] = [input.shape[0]]
        for s in input.shape[2:]:
            expected.append(s)
        raise ValueError(
            "target must hold class indices of shape {} (int64) or class probabilities of the input's "
            "shape {}, got a floating-point target of shape {}".format(
                fmt_shape(expected), fmt_shape(list(input.shape)), fmt_shape(list(target.shape))))
    check_same_dtype(input, target, "input", "target")


def _class_view(weight: Tensor, ndim: int) -> Tensor:
    shape: List[int] = [1, weight.shape[0]]
    for _ in range(ndim - 2):
        shape.append(1)
    return weight.view(shape)


def _per_sample_sum(x: Tensor) -> Tensor:
    # sums every non-batch dimension: (N, ...) -> (N,); flatten, not reshape(N, -1), which cannot
    # infer -1 for an empty batch.
    return x.flatten(1).sum(1)


# ---------------------------------------------------------------------------------------------
# regression
# ---------------------------------------------------------------------------------------------
def mse_loss(input: Tensor, target: Tensor, weight: Optional[Tensor] = None, reduction: str = "mean") -> Tensor:
    """Mean squared error. See :class:`compile_losses.losses.MSELoss`."""
    validate_reduction(reduction)
    _check_pair(input, target)
    diff = input - target
    return _weighted(diff * diff, weight, reduction)


def l1_loss(input: Tensor, target: Tensor, weight: Optional[Tensor] = None, reduction: str = "mean") -> Tensor:
    """Mean absolute error. See :class:`compile_losses.losses.L1Loss`."""
    validate_reduction(reduction)
    _check_pair(input, target)
    return _weighted((input - target).abs(), weight, reduction)


def huber_loss(
    input: Tensor, target: Tensor, weight: Optional[Tensor] = None, delta: float = 1.0, reduction: str = "mean"
) -> Tensor:
    """Huber loss. See :class:`compile_losses.losses.HuberLoss`."""
    validate_reduction(reduction)
    check_positive(delta, "delta")
    _check_pair(input, target)
    return _weighted(_huber(input - target, delta), weight, reduction)


def _huber(diff: Tensor, delta: float) -> Tensor:
    # 0.5 d^2 inside |d| < delta, delta (|d| - delta/2) outside; written with a clamp instead of
    # torch.where so that neither branch can produce a NaN gradient.
    ad = diff.abs()
    q = ad.clamp(max=delta)
    return delta * (ad - q) + 0.5 * q * q


def smooth_l1_loss(
    input: Tensor, target: Tensor, weight: Optional[Tensor] = None, beta: float = 1.0, reduction: str = "mean"
) -> Tensor:
    """Smooth L1 loss. See :class:`compile_losses.losses.SmoothL1Loss`."""
    validate_reduction(reduction)
    check_non_negative(beta, "beta")
    _check_pair(input, target)
    diff = input - target
    if beta == 0.0:
        return _weighted(diff.abs(), weight, reduction)
    return _weighted(_huber(diff, beta) / beta, weight, reduction)


def log_cosh_loss(input: Tensor, target: Tensor, weight: Optional[Tensor] = None, reduction: str = "mean") -> Tensor:
    """Log-cosh loss. See :class:`compile_losses.losses.LogCoshLoss`."""
    validate_reduction(reduction)
    _check_pair(input, target)
    # log(cosh(d)) = |d| + log1p(exp(-2|d|)) - log 2: cosh overflows float32 at |d| ~ 89.
    ad = (input - target).abs()
    return _weighted(ad + torch.log1p(torch.exp(-2.0 * ad)) - math.log(2.0), weight, reduction)


def charbonnier_loss(
    input: Tensor, target: Tensor, weight: Optional[Tensor] = None, eps: float = 1e-3, reduction: str = "mean"
) -> Tensor:
    """Charbonnier loss. See :class:`compile_losses.losses.CharbonnierLoss`."""
    validate_reduction(reduction)
    check_positive(eps, "eps")
    _check_pair(input, target)
    diff = input - target
    return _weighted(torch.sqrt(diff * diff + eps * eps), weight, reduction)


def quantile_loss(
    input: Tensor, target: Tensor, weight: Optional[Tensor] = None, quantile: float = 0.5, reduction: str = "mean"
) -> Tensor:
    """Quantile (pinball) loss. See :class:`compile_losses.losses.QuantileLoss`."""
    validate_reduction(reduction)
    check_in_open_interval(quantile, "quantile", 0.0, 1.0)
    _check_pair(input, target)
    diff = target - input
    return _weighted(torch.maximum(quantile * diff, (quantile - 1.0) * diff), weight, reduction)


def _check_quantiles(quantiles: List[float]) -> None:
    if len(quantiles) == 0:
        raise ValueError("quantiles must hold at least one quantile, got []")
    for q in quantiles:
        check_in_open_interval(q, "each quantile", 0.0, 1.0)


def multi_quantile_loss(
    input: Tensor, target: Tensor, quantiles: Optional[List[float]] = None, reduction: str = "mean"
) -> Tensor:
    """Pinball loss of several quantiles at once. See :class:`compile_losses.losses.MultiQuantileLoss`."""
    validate_reduction(reduction)
    if quantiles is None:
        quantiles = [0.1, 0.5, 0.9]
    _check_quantiles(quantiles)
    check_floating(input, "input")
    check_same_dtype(input, target, "input", "target")
    if input.dim() < 1 or input.shape[-1] != len(quantiles):
        raise ValueError("input's last dimension must hold one prediction per quantile ({}), got input {}".format(
            len(quantiles), fmt_shape(list(input.shape))))
    if list(target.shape) != list(input.shape[:-1]):
        raise ValueError("target must have the shape of input without its last (quantile) dimension {}, "
                         "got input {} and target {}".format(fmt_shape(list(input.shape[:-1])),
                                                             fmt_shape(list(input.shape)), fmt_shape(list(target.shape))))
    # one column per quantile with q as a Python float: torch.tensor(quantiles) would round them to
    # float32 under TorchScript (a float64 loss off by 2e-7 relative)
    columns: List[Tensor] = []
    for k, q in enumerate(quantiles):
        diff = target - input[..., k]
        columns.append(torch.maximum(q * diff, (q - 1.0) * diff))
    return apply_reduction(torch.stack(columns, dim=-1), reduction)


def gaussian_nll_loss(
    input: Tensor, target: Tensor, var: Tensor, full: bool = False, eps: float = 1e-6, reduction: str = "mean"
) -> Tensor:
    """Gaussian negative log-likelihood. See :class:`compile_losses.losses.GaussianNLLLoss`."""
    validate_reduction(reduction)
    check_positive(eps, "eps")
    _check_pair(input, target)
    check_same_shape(input, var, "input", "var")
    check_same_dtype(input, var, "input", "var")
    # Clamp var to eps in the forward pass only, so the gradient flows as if unclamped, exactly as
    # F.gaussian_nll_loss does with its in-place clamp under no_grad.
    var = var + (var.clamp(min=eps) - var).detach()
    diff = input - target
    loss = 0.5 * (torch.log(var) + diff * diff / var)
    if full:
        loss = loss + 0.5 * math.log(2.0 * math.pi)
    return apply_reduction(loss, reduction)


def poisson_nll_loss(
    input: Tensor,
    target: Tensor,
    log_input: bool = True,
    full: bool = False,
    eps: float = 1e-8,
    reduction: str = "mean",
) -> Tensor:
    """Poisson negative log-likelihood. See :class:`compile_losses.losses.PoissonNLLLoss`."""
    validate_reduction(reduction)
    check_positive(eps, "eps")
    _check_pair(input, target)
    if log_input:
        loss = torch.exp(input) - target * input
    else:
        loss = input - target * torch.log(input + eps)
    if full:
        # Stirling's approximation of log(target!), applied where target > 1 as torch does.
        safe = torch.where(target > 1.0, target, torch.ones_like(target))
        stirling = safe * torch.log(safe) - safe + 0.5 * torch.log(2.0 * math.pi * safe)
        loss = loss + torch.where(target > 1.0, stirling, torch.zeros_like(stirling))
    return apply_reduction(loss, reduction)


# ---------------------------------------------------------------------------------------------
# classification
# ---------------------------------------------------------------------------------------------
def cross_entropy_loss(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor] = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> Tensor:
    """Cross-entropy over class logits. See :class:`compile_losses.losses.CrossEntropyLoss`."""
    validate_reduction(reduction)
    check_in_closed_interval(label_smoothing, "label_smoothing", 0.0, 1.0)
    num_classes = input.shape[1] if input.dim() > 1 else 1
    if target.is_floating_point():
        # class probabilities (mixup, distillation), as F.cross_entropy takes them: smoothing mixes
        # in the uniform distribution, ignore_index does not apply, "mean" divides by N * d1 * ...
        _check_probability_target(input, target)
        _check_class_weight(weight, input, "weight")
        logp = F.log_softmax(input, dim=1)
        if weight is not None:
            logp = logp * _class_view(weight, input.dim())
        if label_smoothing > 0.0:
            target = target * (1.0 - label_smoothing) + label_smoothing / num_classes
        return apply_reduction(-(target * logp).sum(1), reduction)
    _check_class_target(input, target)
    _check_class_weight(weight, input, "weight")
    logp = F.log_softmax(input, dim=1)
    valid = target != ignore_index
    safe = torch.where(valid, target, torch.zeros_like(target))
    nll = -logp.gather(1, safe.unsqueeze(1)).squeeze(1)
    if weight is not None:
        w_t = weight[safe] * valid.to(input.dtype)
        smooth = -(logp * _class_view(weight, input.dim())).sum(1)
    else:
        w_t = valid.to(input.dtype)
        smooth = -logp.sum(1)
    loss = (1.0 - label_smoothing) * w_t * nll
    if label_smoothing > 0.0:
        loss = loss + (label_smoothing / num_classes) * smooth * valid.to(input.dtype)
    # "mean" divides by the summed weights of the non-ignored targets, as F.cross_entropy does.
    return apply_reduction(loss, reduction, w_t.sum() if reduction == "mean" else None)


def binary_focal_loss(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor] = None,
    alpha: float = 0.25,
    gamma: float = 2.0,
    pos_weight: Optional[Tensor] = None,
    ignore_index: Optional[int] = None,
    normalization: str = "elements",
    class_alpha: Optional[Tensor] = None,
    reduction: str = "mean",
) -> Tensor:
    """Binary (sigmoid) focal loss. See :class:`compile_losses.losses.BinaryFocalLoss`."""
    validate_reduction(reduction)
    if alpha >= 0.0:
        check_in_closed_interval(alpha, "alpha", 0.0, 1.0)
    check_non_negative(gamma, "gamma")
    if normalization != "elements" and normalization != "positives":
        raise ValueError("normalization must be one of 'elements', 'positives', got '{}'".format(normalization))
    _check_pair(input, target)
    _check_pos_weight(input, pos_weight)
    _check_last_dim_weight(input, class_alpha, "class_alpha")
    valid = torch.ones_like(target)
    if ignore_index is not None:
        # ignored elements count nowhere: loss 0, left out of what "mean" divides by
        valid = (target != ignore_index).to(input.dtype)
        target = target * valid
    ce = _bce_with_logits(input, target, pos_weight)
    loss = ce
    if gamma != 0.0:
        # 1 - p_t written without the cancellation of 1 - sigmoid(x), which saturates to 0 in
        # float32 at |x| ~ 17 and would make the gradient of (1 - p_t)^gamma undefined.
        one_minus_pt = _sigmoid(input) * (1.0 - target) + _sigmoid(-input) * target
        loss = ce * _focal_factor(one_minus_pt, gamma)
    if class_alpha is not None:
        # one alpha per class of the last dimension (multi-label detection heads), replacing alpha
        loss = (class_alpha * target + (1.0 - class_alpha) * (1.0 - target)) * loss
    elif alpha >= 0.0:
        loss = (alpha * target + (1.0 - alpha) * (1.0 - target)) * loss
    if weight is not None:
        check_same_shape(input, weight, "input", "weight")
        check_same_dtype(input, weight, "input", "weight")
        loss = loss * weight
    if ignore_index is not None:
        loss = loss * valid
    if reduction != "mean":
        return apply_reduction(loss, reduction)
    if normalization == "positives":
        # RetinaNet: the sum over the number of positives (at least 1), torchvision's detection recipe
        return apply_reduction(loss, reduction, (target * valid).sum().clamp(min=1.0))
    if ignore_index is not None:
        return apply_reduction(loss, reduction, valid.sum())
    return apply_reduction(loss, reduction)


def _check_pos_weight(input: Tensor, pos_weight: Optional[Tensor]) -> None:
    _check_last_dim_weight(input, pos_weight, "pos_weight")


def _check_last_dim_weight(input: Tensor, weight: Optional[Tensor], name: str) -> None:
    # one value, or one per entry of the input's last dimension (broadcast over the rest)
    if weight is not None:
        check_same_dtype(input, weight, "input", name)
        last = input.shape[-1] if input.dim() > 0 else 1
        if weight.dim() != 1 or (weight.shape[0] != last and weight.shape[0] != 1):
            raise ValueError(
                "{} must be a 1-D tensor of size 1 or of input's last dimension ({}), got {}".format(
                    name, last, fmt_shape(list(weight.shape))
                )
            )


def _focal_factor(one_minus_pt: Tensor, gamma: float) -> Tensor:
    # (1 - p_t)^gamma. Where p_t rounds to exactly 1 the factor's derivative is infinite for
    # gamma < 1 while the whole term (1 - p_t)^gamma * CE has derivative 0; autograd would multiply
    # inf by 0. Clamping at a tiny positive floor keeps the value (0 to within 1e-30^gamma) and
    # makes the clamped entries' gradient exactly 0, the true limit.
    return torch.pow(one_minus_pt.clamp(min=1e-30), gamma)


def focal_loss(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor] = None,
    gamma: float = 2.0,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> Tensor:
    """Multi-class (softmax) focal loss. See :class:`compile_losses.losses.FocalLoss`."""
    validate_reduction(reduction)
    check_non_negative(gamma, "gamma")
    _check_class_target(input, target)
    _check_class_weight(weight, input, "weight")
    logp = F.log_softmax(input, dim=1)
    valid = target != ignore_index
    safe = torch.where(valid, target, torch.zeros_like(target))
    logp_t = logp.gather(1, safe.unsqueeze(1)).squeeze(1)
    loss = -logp_t
    if gamma != 0.0:
        # 1 - p_t = -expm1(log p_t): exact where p_t is close to 1.
        loss = loss * _focal_factor(-torch.expm1(logp_t), gamma)
    if weight is not None:
        w_t = weight[safe] * valid.to(input.dtype)
    else:
        w_t = valid.to(input.dtype)
    loss = loss * w_t
    return apply_reduction(loss, reduction, w_t.sum() if reduction == "mean" else None)


def _softplus(x: Tensor) -> Tensor:
    # log(1 + exp(x)) to full relative accuracy in both tails (log1p(exp(x)) below 0, where it is
    # tiny; x + log1p(exp(-x)) above), with the exact derivative sigmoid(x) everywhere, x = 0
    # included. Each branch gets a clamped input, so the branch torch.where does not pick stays
    # finite and passes a zero gradient (never 0 * inf).
    pos = x.clamp(min=0.0)
    neg = x.clamp(max=0.0)
    return torch.where(x >= 0.0, pos + _log1p(torch.exp(-pos)), _log1p(torch.exp(neg)))


def _sigmoid(x: Tensor) -> Tensor:
    # torch.sigmoid, except in a graph traced for export: onnxruntime's CPU Sigmoid (MLAS's
    # rational approximation on inputs clamped to [-18, 18]) is exact only to ~1e-7 absolute, so
    # sigmoid(-15) = 3.06e-7 read 37% off and sigmoid(-30) read sigmoid(-18), which the focal
    # factor (1 - p_t)^gamma then raises to a power. There, exp(x) / (1 + exp(x)) on the negative
    # side and 1 / (1 + exp(-x)) on the positive one: Exp and Div are exact to ulps.
    if not torch.jit.is_scripting():
        if _faithful_mode():
            # clamped copies, not |x|: abs passes a zero gradient at x = 0 (clamp passes it whole)
            e_pos = torch.exp(-x.clamp(min=0.0))
            e_neg = torch.exp(x.clamp(max=0.0))
            return torch.where(x >= 0.0, 1.0 / (1.0 + e_pos), e_neg / (1.0 + e_neg))
    return torch.sigmoid(x)


def _log1p(y: Tensor) -> Tensor:
    # torch.log1p, except in a graph traced for export: both ONNX exporters lower log1p to
    # Log(1 + y), which for y below float32's epsilon returns 0 (softplus(-30) = 9.4e-14 read 0,
    # softplus(-15) off by 17%). There, Goldberg's form: log(u) * y / (u - 1) with u = 1 + y
    # rounded (exact to a few ulps, as u - 1 is exact), and y itself where u rounds to 1. The
    # divisor is never 0 in either branch, so the branch torch.where drops passes a zero
    # gradient; autograd through it gives 1/(1 + y) to within a few ulps.
    if not torch.jit.is_scripting():
        if _faithful_mode():
            u = 1.0 + y
            step = u - 1.0
            rounds_to_one = step == 0.0
            safe = torch.where(rounds_to_one, torch.ones_like(step), step)
            return torch.where(rounds_to_one, y, torch.log(u) * (y / safe))
    return torch.log1p(y)


def _bce_with_logits(input: Tensor, target: Tensor, pos_weight: Optional[Tensor]) -> Tensor:
    # -[pw t log sigmoid(x) + (1 - t) log(1 - sigmoid(x))] = pw t softplus(-x) + (1 - t) softplus(x).
    # Not (1 - t) x + softplus(-x), torch's form: for a confident correct negative (t = 0, x = -15)
    # that subtracts two numbers near 15 to get 3e-7 and keeps no correct digit in float32.
    positive = target * _softplus(-input)
    if pos_weight is not None:
        positive = pos_weight * positive
    return positive + (1.0 - target) * _softplus(input)


def bce_with_logits_loss(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor] = None,
    pos_weight: Optional[Tensor] = None,
    reduction: str = "mean",
) -> Tensor:
    """Binary cross-entropy on logits. See :class:`compile_losses.losses.BCEWithLogitsLoss`."""
    validate_reduction(reduction)
    _check_pair(input, target)
    _check_pos_weight(input, pos_weight)
    return _weighted(_bce_with_logits(input, target, pos_weight), weight, reduction)


# ---------------------------------------------------------------------------------------------
# dense prediction
# ---------------------------------------------------------------------------------------------
def _masked_probabilities(input: Tensor, target: Tensor, ignore_index: Optional[int]) -> List[Tensor]:
    # sigmoid probabilities and targets, both 0 where the target is ignore_index (counted nowhere)
    prob = _sigmoid(input)
    if ignore_index is not None:
        valid = (target != ignore_index).to(input.dtype)
        return [prob * valid, target * valid]
    return [prob, target]


def dice_loss(
    input: Tensor,
    target: Tensor,
    smooth: float = 1.0,
    squared_pred: bool = False,
    ignore_index: Optional[int] = None,
    reduction: str = "mean",
) -> Tensor:
    """Soft Dice loss on logits. See :class:`compile_losses.losses.DiceLoss`."""
    validate_reduction(reduction)
    check_non_negative(smooth, "smooth")
    _check_pair(input, target)
    check_min_ndim(input, "input", 2, "(N, ...)")
    masked = _masked_probabilities(input, target, ignore_index)
    prob, target = masked[0], masked[1]
    inter = _per_sample_sum(prob * target)
    if squared_pred:
        total = _per_sample_sum(prob * prob) + _per_sample_sum(target * target)
    else:
        total = _per_sample_sum(prob) + _per_sample_sum(target)
    return apply_reduction(1.0 - _overlap_ratio(2.0 * inter + smooth, total + smooth), reduction)


def _overlap_ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    # numerator / denominator of an overlap score, both sums of non-negative terms with
    # numerator <= denominator. The denominator is 0 only with smooth=0, an empty target and
    # probabilities that underflow to 0 (float32 logits below ~-104): there the score is its limit
    # as the probabilities go to 0, which is 0 (loss 1, as float64 computes it), with gradient 0,
    # instead of 0/0.
    nonzero = denominator > 0.0
    safe = torch.where(nonzero, denominator, torch.ones_like(denominator))
    return torch.where(nonzero, numerator / safe, torch.zeros_like(numerator))


def tversky_loss(
    input: Tensor,
    target: Tensor,
    alpha: float = 0.5,
    beta: float = 0.5,
    smooth: float = 1.0,
    ignore_index: Optional[int] = None,
    reduction: str = "mean",
) -> Tensor:
    """Tversky loss on logits. See :class:`compile_losses.losses.TverskyLoss`."""
    validate_reduction(reduction)
    check_non_negative(alpha, "alpha")
    check_non_negative(beta, "beta")
    check_non_negative(smooth, "smooth")
    _check_pair(input, target)
    check_min_ndim(input, "input", 2, "(N, ...)")
    masked = _masked_probabilities(input, target, ignore_index)
    prob, target = masked[0], masked[1]
    tp = _per_sample_sum(prob * target)
    fp = _per_sample_sum(prob * (1.0 - target))
    fn = _per_sample_sum((1.0 - prob) * target)
    index = _overlap_ratio(tp + smooth, tp + alpha * fp + beta * fn + smooth)
    return apply_reduction(1.0 - index, reduction)


# ---------------------------------------------------------------------------------------------
# multi-class dense prediction: softmax over dim 1, per-class overlaps
# ---------------------------------------------------------------------------------------------
def _check_choice(value: str, name: str, choices: List[str]) -> None:
    if value not in choices:
        raise ValueError("{} must be one of {}, got '{}'".format(
            name, ", ".join(["'" + c + "'" for c in choices]), value))


def _class_targets(input: Tensor, target: Tensor, ignore_index: int) -> List[Tensor]:
    """[one-hot (or probability) target, valid mask (N, 1, ...)] in the input's dtype, from class
    indices (N, ...) int64 or class probabilities of the input's shape; ``ignore_index`` masks
    index targets only."""
    if target.is_floating_point():
        _check_probability_target(input, target)
        return [target, torch.ones_like(input[:, :1])]
    _check_class_target(input, target)
    valid = (target != ignore_index).unsqueeze(1).to(input.dtype)
    classes = torch.arange(input.shape[1], device=input.device)
    one_hot = (target.unsqueeze(1) == _class_view(classes, input.dim())).to(input.dtype)
    return [one_hot * valid, valid]


def _per_class_sum(x: Tensor) -> Tensor:
    # (N, C, ...) -> (N, C)
    if x.dim() > 2:
        return x.flatten(2).sum(2)
    return x


def _class_overlaps(input: Tensor, target: Tensor, weight: Optional[Tensor], ignore_index: int,
                    include_background: bool, squared_pred: bool) -> List[Tensor]:
    """Per (sample, class) sums [TP, sum p, sum t, FP, FN] (squared sums of p and t with
    ``squared_pred``; FP and FN always plain) and the class weights (C,) or (C - 1,)."""
    targets = _class_targets(input, target, ignore_index)
    t, valid = targets[0], targets[1]
    _check_class_weight(weight, input, "weight")
    if not include_background and input.shape[1] < 2:
        raise ValueError("include_background=False needs at least 2 classes, got input of shape {}".format(
            fmt_shape(list(input.shape))))
    p = torch.softmax(input, dim=1) * valid
    if weight is None:
        w = torch.ones(input.shape[1], dtype=input.dtype, device=input.device)
    else:
        w = weight
    if not include_background:
        p, t, w = p[:, 1:], t[:, 1:], w[1:]
    tp = _per_class_sum(p * t)
    fp = _per_class_sum(p * (1.0 - t))
    fn = _per_class_sum((1.0 - p) * t)
    if squared_pred:
        ps, ts = _per_class_sum(p * p), _per_class_sum(t * t)
    else:
        ps, ts = _per_class_sum(p), _per_class_sum(t)
    return [tp, ps, ts, fp, fn, w]


def _class_average(num: Tensor, den: Tensor, w: Tensor, smooth: float, average: str, log: bool = False) -> Tensor:
    """Per-sample score (N,) from per-class numerators and denominators (N, C): macro averages the
    classes' scores with weights w; micro pools the weighted sums first. ``log``: -log of each
    score (floored at 1e-7, as segmentation_models_pytorch's log_loss) instead of the score."""
    if average == "macro":
        score = _overlap_ratio(num + smooth, den + smooth)
        if log:
            score = -torch.log(score.clamp(min=1e-7))
        return (score * w).sum(1) / w.sum()
    score = _overlap_ratio((num * w).sum(1) + smooth, (den * w).sum(1) + smooth)
    if log:
        return -torch.log(score.clamp(min=1e-7))
    return score


def _generalized_weights(volume: Tensor, w: Tensor) -> Tensor:
    # Sudre et al. 2017: 1 / (target volume)^2 per sample and class. A class absent from a sample
    # gets that sample's largest weight (as MONAI does), or 0 when every class is absent.
    present = volume > 0.0
    safe = torch.where(present, volume, torch.ones_like(volume))
    inv = torch.where(present, 1.0 / (safe * safe), torch.zeros_like(volume))
    top = inv.amax(1, keepdim=True)
    return torch.where(present, inv, top.expand_as(inv)) * w


def multiclass_dice_loss(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor] = None,
    smooth: float = 1.0,
    average: str = "macro",
    include_background: bool = True,
    ignore_index: int = -100,
    squared_pred: bool = False,
    jaccard: bool = False,
    log_loss: bool = False,
    reduction: str = "mean",
) -> Tensor:
    """Multi-class soft Dice (or Jaccard) on class logits. See :class:`compile_losses.losses.MultiClassDiceLoss`."""
    validate_reduction(reduction)
    check_non_negative(smooth, "smooth")
    _check_choice(average, "average", ["macro", "micro", "generalized"])
    sums = _class_overlaps(input, target, weight, ignore_index, include_background, squared_pred)
    tp, ps, ts, w = sums[0], sums[1], sums[2], sums[5]
    if jaccard:
        num, den = tp, ps + ts - tp
    else:
        num, den = 2.0 * tp, ps + ts
    if average == "generalized":
        # Sudre's weights use the target volume sum t = TP + FN (not its squares)
        score = _class_average(num, den, _generalized_weights(tp + sums[4], w), smooth, "micro", log_loss)
    else:
        score = _class_average(num, den, w.unsqueeze(0), smooth, average, log_loss)
    if log_loss:
        return apply_reduction(score, reduction)  # already -log of the score(s)
    return apply_reduction(1.0 - score, reduction)


def multiclass_tversky_loss(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor] = None,
    alpha: float = 0.5,
    beta: float = 0.5,
    gamma: float = 1.0,
    smooth: float = 1.0,
    average: str = "macro",
    include_background: bool = True,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> Tensor:
    """Multi-class (focal) Tversky on class logits. See :class:`compile_losses.losses.MultiClassTverskyLoss`."""
    validate_reduction(reduction)
    check_non_negative(alpha, "alpha")
    check_non_negative(beta, "beta")
    check_positive(gamma, "gamma")
    check_non_negative(smooth, "smooth")
    _check_choice(average, "average", ["macro", "micro"])
    sums = _class_overlaps(input, target, weight, ignore_index, include_background, False)
    tp, fp, fn, w = sums[0], sums[3], sums[4], sums[5]
    den = tp + alpha * fp + beta * fn
    if average == "macro":
        # focal Tversky per class, then the weighted class average
        index = _overlap_ratio(tp + smooth, den + smooth)
        per_class = _focal_factor(1.0 - index, gamma) if gamma != 1.0 else 1.0 - index
        loss = (per_class * w.unsqueeze(0)).sum(1) / w.sum()
    else:
        index = _overlap_ratio((tp * w).sum(1) + smooth, (den * w).sum(1) + smooth)
        loss = _focal_factor(1.0 - index, gamma) if gamma != 1.0 else 1.0 - index
    return apply_reduction(loss, reduction)


# ---------------------------------------------------------------------------------------------
# distributions
# ---------------------------------------------------------------------------------------------
def kl_div_loss(input: Tensor, target: Tensor, log_target: bool = False, reduction: str = "mean") -> Tensor:
    """KL divergence from log-probabilities. See :class:`compile_losses.losses.KLDivLoss`."""
    validate_reduction(reduction)
    _check_pair(input, target)
    check_min_ndim(input, "input", 2, "(N, C, ...)")
    if log_target:
        pointwise = torch.exp(target) * (target - input)
    else:
        pointwise = torch.xlogy(target, target) - target * input
    # One value per sample, so "mean" is the batch mean (F.kl_div's "batchmean"), the one that is
    # a KL divergence.
    return apply_reduction(_per_sample_sum(pointwise), reduction)


# ---------------------------------------------------------------------------------------------
# metric learning
# ---------------------------------------------------------------------------------------------
def _check_embeddings(a: Tensor, b: Tensor, name_a: str, name_b: str) -> None:
    check_floating(a, name_a)
    check_ndim(a, name_a, 2, "embeddings (N, D)")
    check_same_dtype(a, b, name_a, name_b)
    check_same_shape(a, b, name_a, name_b)


def info_nce_loss(
    input: Tensor,
    target: Tensor,
    negatives: Optional[Tensor] = None,
    temperature: float = 0.1,
    symmetric: bool = False,
    reduction: str = "mean",
) -> Tensor:
    """InfoNCE (CLIP-style, N - 1 cross-view negatives, or explicit ones). See :class:`compile_losses.losses.InfoNCELoss`."""
    validate_reduction(reduction)
    check_positive(temperature, "temperature")
    _check_embeddings(input, target, "input", "target")
    a = F.normalize(input, dim=1)
    p = F.normalize(target, dim=1)
    if negatives is not None:
        return apply_reduction(_explicit_negatives(a, p, negatives, temperature, symmetric), reduction)
    logits = a @ p.t() / temperature
    # Cross-entropy with labels arange(N), written as the log-softmax diagonal: F.cross_entropy
    # exports to an ONNX SoftmaxCrossEntropyLoss whose output shape fails ONNX shape inference.
    # The diagonal is gathered, not taken with .diagonal(): the TorchScript-based exporter turns a
    # dynamic diagonal into an ONNX If whose empty branch is float32 (invalid for float64 inputs).
    rows = torch.arange(logits.shape[0], device=logits.device).unsqueeze(1)
    loss = -torch.log_softmax(logits, dim=1).gather(1, rows).squeeze(1)
    if symmetric:
        loss = 0.5 * (loss - torch.log_softmax(logits, dim=0).gather(1, rows).squeeze(1))
    return apply_reduction(loss, reduction)


def _explicit_negatives(a: Tensor, p: Tensor, negatives: Tensor, temperature: float, symmetric: bool) -> Tensor:
    # info-nce-pytorch's negative_keys: (M, D) shared by every anchor ("unpaired") or (N, M, D),
    # M per anchor ("paired"); the other positives are then no negatives.
    if symmetric:
        raise ValueError("symmetric=True needs the in-batch negatives, got explicit negatives")
    check_same_dtype(a, negatives, "input", "negatives")
    if negatives.dim() == 2:
        if negatives.shape[1] != a.shape[1]:
            raise ValueError("negatives must be (M, D) or (N, M, D) with D = {}, got {}".format(
                a.shape[1], fmt_shape(list(negatives.shape))))
        neg = a @ F.normalize(negatives, dim=1).t()
    elif negatives.dim() == 3:
        if negatives.shape[0] != a.shape[0] or negatives.shape[2] != a.shape[1]:
            raise ValueError("negatives must be (M, D) or (N, M, D) with N = {} and D = {}, got {}".format(
                a.shape[0], a.shape[1], fmt_shape(list(negatives.shape))))
        neg = (a.unsqueeze(1) * F.normalize(negatives, dim=2)).sum(2)
    else:
        raise ValueError("negatives must be (M, D) or (N, M, D) with D = {}, got {}".format(
            a.shape[1], fmt_shape(list(negatives.shape))))
    logits = torch.cat([(a * p).sum(1, keepdim=True), neg], dim=1) / temperature
    return -torch.log_softmax(logits, dim=1)[:, 0]


def sup_con_loss(input: Tensor, target: Tensor, temperature: float = 0.1, reduction: str = "mean") -> Tensor:
    """Supervised contrastive loss over labels. See :class:`compile_losses.losses.SupConLoss`."""
    validate_reduction(reduction)
    check_positive(temperature, "temperature")
    check_floating(input, "input")
    check_ndim(input, "input", 2, "embeddings (N, D)")
    check_class_indices(target, "target")
    if target.dim() != 1 or target.shape[0] != input.shape[0]:
        raise ValueError("target must be a 1-D tensor of labels of shape ({},), got {}".format(
            input.shape[0], fmt_shape(list(target.shape))))
    z = F.normalize(input, dim=1)
    idx = torch.arange(input.shape[0], device=input.device)
    itself = idx.unsqueeze(0) == idx.unsqueeze(1)
    # self-similarity is left out of the softmax with a finite fill (exp gives exactly 0), which
    # keeps a lone anchor's row finite where -inf would make it NaN; the fill is the similarities'
    # own dtype's (float16 tops out at 65504; autocast may compute them in a dtype not the input's)
    sim = z @ z.t() / temperature
    logp = torch.log_softmax(sim.masked_fill(itself, -65504.0 if sim.dtype == torch.float16 else -3.0e38), dim=1)
    positive = (target.unsqueeze(0) == target.unsqueeze(1)) & ~itself
    count = positive.to(input.dtype).sum(1)
    has = count > 0.0
    mean_log_prob = torch.where(positive, logp, torch.zeros_like(logp)).sum(1) / torch.where(
        has, count, torch.ones_like(count))
    loss = torch.where(has, -mean_log_prob, torch.zeros_like(mean_log_prob))
    # "mean" averages over the anchors that have a positive; 0 when none has (a batch of distinct
    # labels must not stop training with a NaN), as pytorch-metric-learning. The divisor is at
    # least 1 but at most N, so an empty batch's mean is still 0/0, NaN, as torch's losses.
    if reduction != "mean":
        return apply_reduction(loss, reduction)
    anchors = torch.ones_like(count).sum()
    return apply_reduction(loss, reduction, torch.minimum(has.to(input.dtype).sum().clamp(min=1.0), anchors))


def nt_xent_loss(input: Tensor, target: Tensor, temperature: float = 0.1, reduction: str = "mean") -> Tensor:
    """SimCLR's NT-Xent (2N - 2 negatives). See :class:`compile_losses.losses.NTXentLoss`."""
    validate_reduction(reduction)
    check_positive(temperature, "temperature")
    _check_embeddings(input, target, "input", "target")
    n = input.shape[0]
    z = F.normalize(torch.cat([input, target], dim=0), dim=1)
    logits = z @ z.t() / temperature
    # Every other embedding of either view is a negative; only self-similarity is left out.
    # The masks come from arange comparisons and the positive is gathered (no eye/diagonal),
    # which export with a dynamic batch on both ONNX exporters.
    idx = torch.arange(2 * n, device=input.device)
    logits = logits.masked_fill(idx.unsqueeze(0) == idx.unsqueeze(1), float("-inf"))
    positive = torch.where(idx < n, idx + n, idx - n).unsqueeze(1)  # the other view
    per_view = -torch.log_softmax(logits, dim=1).gather(1, positive).squeeze(1)
    # one value per pair: the mean of its two views' losses, so "mean" is SimCLR's mean over 2N
    return apply_reduction(0.5 * (per_view[:n] + per_view[n:]), reduction)


def triplet_margin_loss(
    input: Tensor,
    positive: Tensor,
    negative: Tensor,
    margin: float = 1.0,
    p: float = 2.0,
    eps: float = 1e-6,
    swap: bool = False,
    reduction: str = "mean",
) -> Tensor:
    """Triplet margin loss. See :class:`compile_losses.losses.TripletMarginLoss`."""
    validate_reduction(reduction)
    check_positive(margin, "margin")
    check_positive(p, "p")
    check_non_negative(eps, "eps")
    _check_embeddings(input, positive, "input", "positive")
    _check_embeddings(input, negative, "input", "negative")
    d_pos = torch.linalg.vector_norm(input - positive + eps, ord=p, dim=-1)
    d_neg = torch.linalg.vector_norm(input - negative + eps, ord=p, dim=-1)
    if swap:
        d_neg = torch.minimum(d_neg, torch.linalg.vector_norm(positive - negative + eps, ord=p, dim=-1))
    return apply_reduction(torch.clamp(margin + d_pos - d_neg, min=0.0), reduction)


def cosine_embedding_loss(
    input: Tensor, other: Tensor, target: Tensor, margin: float = 0.0, reduction: str = "mean"
) -> Tensor:
    """Cosine embedding loss. See :class:`compile_losses.losses.CosineEmbeddingLoss`."""
    validate_reduction(reduction)
    check_in_closed_interval(margin, "margin", -1.0, 1.0)
    _check_embeddings(input, other, "input", "other")
    check_same_dtype(input, target, "input", "target")
    if target.dim() != 1 or target.shape[0] != input.shape[0]:
        raise ValueError(
            "target must be a 1-D tensor of +1/-1 labels of shape ({},), got {}".format(
                input.shape[0], fmt_shape(list(target.shape))
            )
        )
    eps = 1e-12  # the epsilon F.cosine_embedding_loss adds to each squared norm
    dot = (input * other).sum(1)
    denom = torch.sqrt(((input * input).sum(1) + eps) * ((other * other).sum(1) + eps))
    cos = dot / denom
    zeros = torch.zeros_like(cos)
    pos = torch.where(target == 1.0, 1.0 - cos, zeros)
    neg = torch.where(target == -1.0, torch.clamp(cos - margin, min=0.0), zeros)
    return apply_reduction(pos + neg, reduction)
