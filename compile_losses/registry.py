"""The one declarative table of losses (in the spirit of PyTorch's OpInfo) and nets.

Each :class:`LossSpec` holds every per-loss fact: the loss's function and module, how to make its
inputs (alone, or as targets for a net's prediction) and how its prediction is read
(``input_kind``), its error inputs with the message they must raise, its float64 reference
(``reference64``, every loss) and the torch function it must equal (``reference``, if any), the
shape of ``reduction="none"`` (``none_shape``), what ``"mean"`` divides by when it is not the element
count (``mean_divisor``), which targets are smooth (``differentiable_targets``), other kinds of
target some variants take (``variant_targets``: probabilities, one-hot, explicit negatives), and
any per-backend exception with a written reason (``skips``: not run; ``variant_skips``: one
variant not run; ``known_failures``: run, expected to fail; ``tolerances``: loosened). Generic
tests iterate this table and read nothing per loss from anywhere else: adding a loss is its
function (math in ``functional.py``), its module (``losses.py``), one entry here, and its row in
the README's catalogue.
"""
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Type

import torch
import torch.nn.functional as TF
from torch import Tensor, nn

from . import functional as F
from . import losses as L
from . import nets as N
from ._reduction import REDUCTIONS

TargetMaker = Callable[[Tensor, torch.Generator], Tuple[Tensor, ...]]


@dataclass(frozen=True)
class SampleInput:
    """One call of a loss: ``module(input, *targets)`` built with ``init_kwargs``."""

    input: Tensor
    targets: Tuple[Tensor, ...]
    init_kwargs: Dict[str, Any]
    desc: str

    def args(self) -> Tuple[Tensor, ...]:
        return (self.input,) + self.targets


@dataclass(frozen=True)
class ErrorInput:
    """A call that must fail: ``build(dtype) -> (init_kwargs, args)``, the exception type and a
    regex its message must match. ``at`` is ``"init"`` when the module's constructor must raise."""

    build: Callable[[torch.dtype], Tuple[Dict[str, Any], Tuple[Any, ...]]]
    error_type: Type[Exception]
    match: str
    at: str = "call"
    desc: str = ""


@dataclass(frozen=True)
class Tolerance:
    """A loosened tolerance for one backend, with the reason it is needed (printed in reports)."""

    rtol: float
    atol: float
    reason: str


@dataclass(frozen=True)
class LossSpec:
    name: str
    family: str
    module: Type[nn.Module]
    function: Callable[..., Tensor]
    # Features the net's prediction needs per sample: (N, net_out).
    net_out: int
    # Makes the targets for a prediction of shape (N, net_out) (or the loss's own input shape).
    make_targets: TargetMaker
    # Settings worth covering beyond the defaults (each also runs with every reduction).
    variants: Sequence[Dict[str, Any]] = ({},)
    # The loss's natural input shape for a batch of N: (N,) + feature_shape.
    feature_shape: Tuple[int, ...] = (1,)
    # Pointwise in its input: large cases use 2^20+ elements, where reduction order matters.
    elementwise: bool = False
    # A torch function to equal: reference(input, *targets, **init_kwargs mapped) -> Tensor.
    reference: Optional[Callable[..., Tensor]] = None
    error_inputs: Sequence[ErrorInput] = ()
    # backend name -> reason: known not to work there (reported, never counted as a pass).
    skips: Dict[str, str] = field(default_factory=dict)
    # backend name -> Tolerance: loosened comparison, with a reason.
    tolerances: Dict[str, Tolerance] = field(default_factory=dict)
    twice_differentiable: bool = True
    # Positive-valued input (a rate), for losses whose input is not a free logit.
    make_input: Optional[Callable[[Tuple[int, ...], torch.dtype, torch.Generator], Tensor]] = None
    # Indices into the targets of those the loss is smooth in (gradcheck differentiates them too);
    # labels, counts and masks (where a tiny step crosses a threshold) are left out. A callable of
    # the settings when a setting changes it (an ignore_index turns a target into a label).
    differentiable_targets: Any = ()
    # The loss's float64 reference, for EVERY loss: reference64(input, *targets, **init_kwargs) ->
    # Tensor, in float64 whatever the inputs' dtype, written with plain torch ops independently of
    # compile_losses.functional (the torch function itself where torch has the loss).
    reference64: Optional[Callable[..., Tensor]] = None
    # How the prediction is read, which decides the value regimes it must stay finite in: "free"
    # (any real), "logits" (through sigmoid/softmax: +-30 and +-100 must not overflow), "log_rate"
    # (exp(input)), "rate" (a positive rate), "log_probs" (a log_softmax). A callable of the
    # settings when a setting changes it (Poisson's log_input).
    input_kind: Any = "free"
    # Shape of reduction="none" for a prediction (N, ...): "input" (the prediction's), "target"
    # (a class-index target's: the prediction without dim 1) or "sample" (one value per sample, (N,)).
    none_shape: str = "input"
    # What "mean" divides the sum of "none" by when that is not its element count:
    # mean_divisor(input, *targets, **init_kwargs) -> Tensor (class weights of the counted targets).
    mean_divisor: Optional[Callable[..., Tensor]] = None
    # The targets may equal the prediction (same shape and meaning: regression, embeddings).
    target_like_input: bool = False
    # backend name -> finding: runs, expected to fail (xfail, never counted as a pass), with the
    # minimal example. Unlike ``skips``, the case still runs.
    known_failures: Dict[str, str] = field(default_factory=dict)
    # variant index -> the target maker that variant uses instead of ``make_targets`` (another
    # kind of target for the same loss: probabilities or one-hot instead of class indices).
    variant_targets: Dict[int, TargetMaker] = field(default_factory=dict)
    # variant index -> {backend name -> reason}: that variant is known not to work there.
    variant_skips: Dict[int, Dict[str, str]] = field(default_factory=dict)

    def skip_reason(self, backend: str, variant: int = 0) -> Optional[str]:
        """Why ``backend`` does not run this loss (or this variant of it), or None."""
        return self.skips.get(backend) or self.variant_skips.get(variant, {}).get(backend)

    def smooth_targets(self, init_kwargs: Optional[Dict[str, Any]] = None) -> Tuple[int, ...]:
        """Indices of the targets the loss is smooth in under these settings."""
        if callable(self.differentiable_targets):
            return tuple(self.differentiable_targets(init_kwargs or {}))
        return tuple(self.differentiable_targets)

    def kind(self, init_kwargs: Optional[Dict[str, Any]] = None) -> str:
        """The input kind under these settings."""
        return self.input_kind(init_kwargs or {}) if callable(self.input_kind) else self.input_kind

    def none_shape_of(self, pred: Tensor) -> Tuple[int, ...]:
        """The documented shape of ``reduction="none"`` for a prediction ``pred``."""
        if self.none_shape == "input":
            return tuple(pred.shape)
        if self.none_shape == "target":
            return (pred.shape[0],) + tuple(pred.shape[2:])
        if self.none_shape == "sample":
            return (pred.shape[0],)
        raise ValueError("none_shape must be 'input', 'target' or 'sample', got {!r}".format(self.none_shape))

    def build(self, **init_kwargs: Any) -> nn.Module:
        return self.module(**init_kwargs)

    def input_for(self, batch: int, dtype: torch.dtype = torch.float32, seed: int = 0,
                  feature_shape: Optional[Tuple[int, ...]] = None, variant: int = 0) -> Tuple[Tensor, Tuple[Tensor, ...]]:
        """A prediction of shape (batch,) + feature_shape and its targets (of the kind
        ``variants[variant]`` takes), reproducibly."""
        gen = torch.Generator().manual_seed(seed)
        shape = (batch,) + (self.feature_shape if feature_shape is None else feature_shape)
        if self.make_input is not None:
            pred = self.make_input(shape, dtype, gen)
        else:
            pred = torch.randn(shape, generator=gen, dtype=dtype)
        return pred, self.variant_targets.get(variant, self.make_targets)(pred, gen)


# ---------------------------------------------------------------------------------------------
# target makers: each gets the prediction and a generator and returns the targets after it
# ---------------------------------------------------------------------------------------------
def _like_randn(pred: Tensor, gen: torch.Generator) -> Tuple[Tensor, ...]:
    return (torch.randn(pred.shape, generator=gen, dtype=pred.dtype),)


def _gaussian_targets(pred: Tensor, gen: torch.Generator) -> Tuple[Tensor, ...]:
    target = torch.randn(pred.shape, generator=gen, dtype=pred.dtype)
    var = torch.rand(pred.shape, generator=gen, dtype=pred.dtype) * 1.5 + 0.1
    return target, var


def _drop_last(pred: Tensor, gen: torch.Generator) -> Tuple[Tensor, ...]:
    # one target per row of quantile predictions: (N, ..., K) -> (N, ...)
    return (torch.randn(pred.shape[:-1], generator=gen, dtype=pred.dtype),)


def _counts(pred: Tensor, gen: torch.Generator) -> Tuple[Tensor, ...]:
    return (torch.randint(0, 6, pred.shape, generator=gen).to(pred.dtype),)


def _binary(pred: Tensor, gen: torch.Generator) -> Tuple[Tensor, ...]:
    return ((torch.rand(pred.shape, generator=gen) < 0.5).to(pred.dtype),)


def _smooth_unless_ignored(init_kwargs: Dict[str, Any]) -> Tuple[int, ...]:
    # the target is a smooth probability, unless ignore_index makes one of its values a label or
    # "mean" counts the positives (max(1, sum t) has a kink at 1)
    labels = init_kwargs.get("ignore_index") is not None or init_kwargs.get("normalization") == "positives"
    return () if labels else (0,)


def _binary_ignored(pred: Tensor, gen: torch.Generator) -> Tuple[Tensor, ...]:
    # binary targets with about a fifth of the elements marked 255, the usual "void" label
    (target,) = _binary(pred, gen)
    return (torch.where(torch.rand(pred.shape, generator=gen) < 0.2, torch.full_like(target, 255.0), target),)


def _class_index(pred: Tensor, gen: torch.Generator) -> Tuple[Tensor, ...]:
    shape = (pred.shape[0],) + tuple(pred.shape[2:])
    return (torch.randint(0, pred.shape[1], shape, generator=gen),)


def _one_hot(pred: Tensor, gen: torch.Generator) -> Tuple[Tensor, ...]:
    (index,) = _class_index(pred, gen)
    return (TF.one_hot(index, pred.shape[1]).movedim(-1, 1).to(pred.dtype),)


def _probs(pred: Tensor, gen: torch.Generator) -> Tuple[Tensor, ...]:
    return (torch.softmax(torch.randn(pred.shape, generator=gen, dtype=pred.dtype), dim=1),)


def _two_like(pred: Tensor, gen: torch.Generator) -> Tuple[Tensor, ...]:
    return (
        torch.randn(pred.shape, generator=gen, dtype=pred.dtype),
        torch.randn(pred.shape, generator=gen, dtype=pred.dtype),
    )


def _with_negatives(pred: Tensor, gen: torch.Generator) -> Tuple[Tensor, ...]:
    # a positive per anchor and 5 explicit negatives shared by every anchor (M, D)
    return _like_randn(pred, gen) + (torch.randn((5, pred.shape[1]), generator=gen, dtype=pred.dtype),)


def _with_paired_negatives(pred: Tensor, gen: torch.Generator) -> Tuple[Tensor, ...]:
    # a positive and 3 negatives of its own per anchor (N, M, D)
    return _like_randn(pred, gen) + (torch.randn((pred.shape[0], 3, pred.shape[1]), generator=gen, dtype=pred.dtype),)


def _few_labels(pred: Tensor, gen: torch.Generator) -> Tuple[Tensor, ...]:
    # labels from 3 classes: most anchors have positives, a lone one now and then has none
    return (torch.randint(0, 3, (pred.shape[0],), generator=gen),)


def _pair_labels(pred: Tensor, gen: torch.Generator) -> Tuple[Tensor, ...]:
    other = torch.randn(pred.shape, generator=gen, dtype=pred.dtype)
    labels = torch.where(torch.rand(pred.shape[0], generator=gen) < 0.5, 1.0, -1.0).to(pred.dtype)
    return other, labels


def _log_probs_input(shape: Tuple[int, ...], dtype: torch.dtype, gen: torch.Generator) -> Tensor:
    return torch.log_softmax(torch.randn(shape, generator=gen, dtype=dtype), dim=1)


# ---------------------------------------------------------------------------------------------
# error inputs shared by families
# ---------------------------------------------------------------------------------------------
def _pair_errors(feature: Tuple[int, ...] = (1,), n_targets: int = 1) -> List[ErrorInput]:
    def rest(dtype: torch.dtype, shape: Tuple[int, ...]) -> Tuple[Tensor, ...]:
        return tuple(torch.ones(shape, dtype=dtype) for _ in range(n_targets - 1))

    def mismatch(dtype: torch.dtype):
        return {}, (torch.zeros((10,) + feature, dtype=dtype), torch.zeros(10, dtype=dtype)) + rest(dtype, (10,) + feature)

    def int_target(dtype: torch.dtype):
        return {}, (torch.zeros((4,) + feature, dtype=dtype), torch.zeros((4,) + feature, dtype=torch.int64)) + rest(
            dtype, (4,) + feature
        )

    def int_input(dtype: torch.dtype):
        return {}, (torch.zeros((4,) + feature, dtype=torch.int64), torch.zeros((4,) + feature, dtype=torch.int64)) + rest(
            torch.int64, (4,) + feature
        )

    def bad_reduction(dtype: torch.dtype):
        return {"reduction": "average"}, ()

    return [
        ErrorInput(mismatch, ValueError, r"input and target must have the same shape, got input \(10, 1\) and target \(10,\)"
                   if feature == (1,) else r"must have the same shape", desc="(N, 1) vs (N,) never broadcasts"),
        ErrorInput(int_target, TypeError, r"input and target must have the same dtype, got input float\d+ and target int64",
                   desc="integer target"),
        ErrorInput(int_input, TypeError, r"input must be a floating-point tensor, got dtype int64", desc="integer input"),
        ErrorInput(bad_reduction, ValueError, r"reduction must be one of 'none', 'mean', 'sum', got 'average'",
                   at="init", desc="unknown reduction"),
    ]


def _hyper_error(kwargs: Dict[str, Any], match: str) -> ErrorInput:
    return ErrorInput(lambda dtype: (dict(kwargs), ()), ValueError, match, at="init",
                      desc="bad " + ", ".join(kwargs))


def _class_errors(probability_targets: bool = False) -> List[ErrorInput]:
    def float_target(dtype: torch.dtype):
        return {}, (torch.zeros(4, 5, dtype=dtype), torch.zeros(4, dtype=dtype))

    def other_dtype_probabilities(dtype: torch.dtype):
        other = torch.float32 if dtype == torch.float64 else torch.float64
        return {}, (torch.zeros(4, 5, dtype=dtype), torch.zeros(4, 5, dtype=other))

    def bad_target_shape(dtype: torch.dtype):
        return {}, (torch.zeros(4, 5, dtype=dtype), torch.zeros(4, 5, dtype=torch.int64))

    def one_dim(dtype: torch.dtype):
        return {}, (torch.zeros(5, dtype=dtype), torch.zeros((), dtype=torch.int64))

    def bad_weight(dtype: torch.dtype):
        return {"weight": torch.ones(3, dtype=dtype)}, (torch.zeros(4, 5, dtype=dtype), torch.zeros(4, dtype=torch.int64))

    def bad_reduction(dtype: torch.dtype):
        return {"reduction": "batchmean"}, ()

    if probability_targets:
        floats = [
            ErrorInput(float_target, ValueError,
                       r"target must hold class indices of shape \(4,\) \(int64\) or class probabilities of the "
                       r"input's shape \(4, 5\), got a floating-point target of shape \(4,\)",
                       desc="float target of index shape"),
            ErrorInput(other_dtype_probabilities, TypeError,
                       r"input and target must have the same dtype, got input float\d+ and target float\d+",
                       desc="probability target of another dtype"),
        ]
    else:
        floats = [ErrorInput(float_target, TypeError, r"target must hold class indices as an int64 tensor, got dtype float",
                             desc="float class target")]
    return floats + [
        ErrorInput(bad_target_shape, ValueError,
                   r"target must have the shape of input without its class dimension \(4,\), got input \(4, 5\) and target \(4, 5\)",
                   desc="one-hot target"),
        ErrorInput(one_dim, ValueError, r"input must have at least 2 dimensions \(N, C, \.\.\.\), got shape \(5,\)",
                   desc="unbatched logits"),
        ErrorInput(bad_weight, ValueError, r"weight must be a 1-D tensor with one entry per class \(5,\), got \(3,\)",
                   desc="class weight of the wrong size"),
        ErrorInput(bad_reduction, ValueError, r"reduction must be one of 'none', 'mean', 'sum', got 'batchmean'",
                   at="init", desc="unknown reduction"),
    ]


def _multiclass_errors(averages: Sequence[str]) -> List[ErrorInput]:
    def other(dtype: torch.dtype) -> torch.dtype:
        return torch.float32 if dtype == torch.float64 else torch.float64

    def call(target: Callable[[torch.dtype], Tensor], classes: int = 5, **kwargs: Any):
        return lambda dtype: (dict(kwargs), (torch.zeros(4, classes, 3, dtype=dtype), target(dtype)))

    listed = ", ".join("'{}'".format(a) for a in averages)
    return [
        ErrorInput(call(lambda d: torch.zeros(4, 3, dtype=d)), ValueError,
                   r"target must hold class indices of shape \(4, 3\) \(int64\) or class probabilities of the input's "
                   r"shape \(4, 5, 3\), got a floating-point target of shape \(4, 3\)", desc="float target of index shape"),
        ErrorInput(call(lambda d: torch.zeros(4, 5, 3, dtype=other(d))), TypeError,
                   r"input and target must have the same dtype, got input float\d+ and target float\d+",
                   desc="probability target of another dtype"),
        ErrorInput(call(lambda d: torch.zeros(4, 3, dtype=torch.int32)), TypeError,
                   r"target must hold class indices as an int64 tensor, got dtype int32", desc="int32 class target"),
        ErrorInput(call(lambda d: torch.zeros(4, 5, dtype=torch.int64)), ValueError,
                   r"target must have the shape of input without its class dimension \(4, 3\), got input \(4, 5, 3\) "
                   r"and target \(4, 5\)", desc="index target of the wrong shape"),
        ErrorInput(lambda d: ({}, (torch.zeros(5, dtype=d), torch.zeros((), dtype=torch.int64))), ValueError,
                   r"input must have at least 2 dimensions \(N, C, \.\.\.\), got shape \(5,\)", desc="unbatched logits"),
        ErrorInput(lambda d: ({}, (torch.zeros(4, 5, 3, dtype=torch.int64), torch.zeros(4, 3, dtype=torch.int64))),
                   TypeError, r"input must be a floating-point tensor, got dtype int64", desc="integer input"),
        ErrorInput(lambda d: ({"weight": torch.ones(3, dtype=d)}, (torch.zeros(4, 5, 3, dtype=d),
                                                                   torch.zeros(4, 3, dtype=torch.int64))),
                   ValueError, r"weight must be a 1-D tensor with one entry per class \(5,\), got \(3,\)",
                   desc="class weight of the wrong size"),
        ErrorInput(call(lambda d: torch.zeros(4, 3, dtype=torch.int64), classes=1, include_background=False), ValueError,
                   r"include_background=False needs at least 2 classes, got input of shape \(4, 1, 3\)",
                   desc="background left out of one class"),
        ErrorInput(lambda d: ({"average": "weighted"}, ()), ValueError,
                   r"average must be one of {}, got 'weighted'".format(listed), at="init", desc="unknown average"),
        _hyper_error({"smooth": -1.0}, r"smooth must be >= 0, got -1.0"),
        ErrorInput(lambda d: ({"reduction": "batchmean"}, ()), ValueError,
                   r"reduction must be one of 'none', 'mean', 'sum', got 'batchmean'", at="init", desc="unknown reduction"),
    ]


def _embedding_errors(n_targets: int) -> List[ErrorInput]:
    def flat(dtype: torch.dtype):
        return {}, tuple(torch.zeros(8, dtype=dtype) for _ in range(n_targets + 1))

    def mismatch(dtype: torch.dtype):
        return {}, (torch.zeros(4, 8, dtype=dtype),) + tuple(torch.zeros(4, 6, dtype=dtype) for _ in range(n_targets))

    return [
        ErrorInput(flat, ValueError, r"input must be 2-dimensional embeddings \(N, D\), got shape \(8,\)",
                   desc="unbatched embeddings"),
        ErrorInput(mismatch, ValueError, r"must have the same shape, got input \(4, 8\) and \w+ \(4, 6\)",
                   desc="embedding width mismatch"),
    ]


# ---------------------------------------------------------------------------------------------
# torch references, adapted to our settings' names where they differ
# ---------------------------------------------------------------------------------------------
def _ref_elementwise(fn: Callable[..., Tensor], rename: Optional[Dict[str, str]] = None) -> Callable[..., Tensor]:
    def ref(input: Tensor, target: Tensor, reduction: str = "mean", **kw: Any) -> Tensor:
        if rename:
            kw = {rename.get(k, k): v for k, v in kw.items()}
        return fn(input, target, reduction=reduction, **kw)

    return ref


def _ref_kl(input: Tensor, target: Tensor, reduction: str = "mean", log_target: bool = False) -> Tensor:
    if reduction == "none":
        return TF.kl_div(input, target, reduction="none", log_target=log_target).flatten(1).sum(1)
    return TF.kl_div(input, target, reduction="batchmean" if reduction == "mean" else "sum", log_target=log_target)


def _ref_bce(input: Tensor, target: Tensor, reduction: str = "mean", pos_weight: Optional[Tensor] = None) -> Tensor:
    return TF.binary_cross_entropy_with_logits(input, target, pos_weight=pos_weight, reduction=reduction)


def _ref_gaussian(input: Tensor, target: Tensor, var: Tensor, reduction: str = "mean", **kw: Any) -> Tensor:
    return TF.gaussian_nll_loss(input, target, var, reduction=reduction, **kw)


def _ref_triplet(input: Tensor, positive: Tensor, negative: Tensor, reduction: str = "mean", **kw: Any) -> Tensor:
    return TF.triplet_margin_loss(input, positive, negative, reduction=reduction, **kw)


def _ref_cosine(input: Tensor, other: Tensor, target: Tensor, reduction: str = "mean", **kw: Any) -> Tensor:
    return TF.cosine_embedding_loss(input, other, target, reduction=reduction, **kw)


def _ref_ce(input: Tensor, target: Tensor, reduction: str = "mean", **kw: Any) -> Tensor:
    return TF.cross_entropy(input, target, reduction=reduction, **kw)


# ---------------------------------------------------------------------------------------------
# float64 references: plain torch ops in float64, independent of compile_losses.functional
# ---------------------------------------------------------------------------------------------
def _in_float64(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """``fn`` with every floating-point tensor argument (settings included) cast to float64."""

    def cast(v: Any) -> Any:
        return v.double() if isinstance(v, Tensor) and v.is_floating_point() else v

    def ref(*args: Any, **kwargs: Any) -> Tensor:
        return fn(*[cast(a) for a in args], **{k: cast(v) for k, v in kwargs.items()})

    ref.__name__ = getattr(fn, "__name__", "reference64")
    return ref


def _reduce64(loss: Tensor, reduction: str, divisor: Optional[Tensor] = None) -> Tensor:
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean() if divisor is None else loss.sum() / divisor
    raise ValueError("reduction must be one of 'none', 'mean', 'sum', got {!r}".format(reduction))


def _row_sum(x: Tensor) -> Tensor:
    return x.flatten(1).sum(1)


def _log_cosh64(input: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    return _reduce64(torch.log(torch.cosh(input - target)), reduction)


def _charbonnier64(input: Tensor, target: Tensor, eps: float = 1e-3, reduction: str = "mean") -> Tensor:
    d = input - target
    return _reduce64(torch.sqrt(d * d + eps * eps), reduction)


def _quantile64(input: Tensor, target: Tensor, quantile: float = 0.5, reduction: str = "mean") -> Tensor:
    # under-prediction (target above) costs q per unit, over-prediction 1 - q
    d = target - input
    return _reduce64(torch.where(d >= 0, quantile * d, (quantile - 1.0) * d), reduction)


def _multi_quantile64(input: Tensor, target: Tensor, quantiles: Sequence[float] = (0.1, 0.5, 0.9),
                      reduction: str = "mean") -> Tensor:
    # one column per quantile, written column by column
    cols = []
    for k, q in enumerate(quantiles):
        d = target - input[..., k]
        cols.append(torch.where(d >= 0, q * d, (q - 1.0) * d))
    return _reduce64(torch.stack(cols, dim=-1), reduction)


def _class_weights_of_targets(input: Tensor, target: Tensor, weight: Optional[Tensor] = None,
                              ignore_index: int = -100, **_: Any) -> Tensor:
    """The per-target weight w_{y_n} (0 where ignored): what the class-weighted "mean" sums."""
    valid = target != ignore_index
    safe = torch.where(valid, target, torch.zeros_like(target))
    w = torch.ones(input.shape[1], dtype=torch.float64) if weight is None else weight.double()
    return w[safe] * valid.double()


def _class_weight_total(input: Tensor, target: Tensor, **kwargs: Any) -> Tensor:
    if target.is_floating_point():  # probability targets: every sample counts once, as in F.cross_entropy
        return torch.tensor(float(target.numel() // max(target.shape[1], 1)), dtype=torch.float64)
    return _class_weights_of_targets(input, target, **kwargs).sum()


def _focal64(input: Tensor, target: Tensor, weight: Optional[Tensor] = None, gamma: float = 2.0,
             ignore_index: int = -100, reduction: str = "mean") -> Tensor:
    e = torch.exp(input - input.amax(1, keepdim=True))
    p = e / e.sum(1, keepdim=True)
    w_t = _class_weights_of_targets(input, target, weight, ignore_index)
    safe = torch.where(target != ignore_index, target, torch.zeros_like(target))
    p_t = p.gather(1, safe.unsqueeze(1)).squeeze(1)
    loss = -w_t * (1.0 - p_t) ** gamma * torch.log(p_t)
    return _reduce64(loss, reduction, w_t.sum())


def _binary_focal_divisor(input: Tensor, target: Tensor, ignore_index: Optional[int] = None,
                          normalization: str = "elements", **_: Any) -> Tensor:
    """What binary focal's "mean" divides by: the elements not ignored, or the sum of their targets
    (at least 1: RetinaNet's number of positives)."""
    valid = torch.ones_like(target, dtype=torch.float64) if ignore_index is None else (target != ignore_index).double()
    if normalization == "positives":
        return (target.double() * valid).sum().clamp(min=1.0)
    return valid.sum()


def _binary_focal64(input: Tensor, target: Tensor, alpha: float = 0.25, gamma: float = 2.0,
                    pos_weight: Optional[Tensor] = None, ignore_index: Optional[int] = None,
                    normalization: str = "elements", class_alpha: Optional[Tensor] = None,
                    reduction: str = "mean") -> Tensor:
    divisor = _binary_focal_divisor(input, target, ignore_index, normalization)
    valid = torch.ones_like(target) if ignore_index is None else (target != ignore_index).double()
    target = target * valid
    p = torch.sigmoid(input)
    pw = 1.0 if pos_weight is None else pos_weight
    ce = -(pw * target * torch.log(p) + (1.0 - target) * torch.log1p(-p))
    p_t = p * target + (1.0 - p) * (1.0 - target)
    loss = ce * (1.0 - p_t) ** gamma
    a = class_alpha if class_alpha is not None else (alpha if alpha >= 0 else None)
    if a is not None:
        loss = loss * (a * target + (1.0 - a) * (1.0 - target))
    return _reduce64(loss * valid, reduction, divisor)


def _score64(numerator: Tensor, denominator: Tensor) -> Tensor:
    # an overlap score; 0/0 (smooth=0, empty target, probabilities exactly 0) is its limit, 0
    return torch.where(denominator == 0, torch.zeros_like(numerator), numerator / denominator)


def _sigmoid_masked64(input: Tensor, target: Tensor, ignore_index: Optional[int]) -> Tuple[Tensor, Tensor]:
    valid = torch.ones_like(target) if ignore_index is None else (target != ignore_index).double()
    return torch.sigmoid(input) * valid, target * valid


def _dice64(input: Tensor, target: Tensor, smooth: float = 1.0, squared_pred: bool = False,
            ignore_index: Optional[int] = None, reduction: str = "mean") -> Tensor:
    p, target = _sigmoid_masked64(input, target, ignore_index)
    power = 2 if squared_pred else 1
    return _reduce64(1.0 - _score64(2.0 * _row_sum(p * target) + smooth,
                                    _row_sum(p ** power) + _row_sum(target ** power) + smooth), reduction)


def _tversky64(input: Tensor, target: Tensor, alpha: float = 0.5, beta: float = 0.5, smooth: float = 1.0,
               ignore_index: Optional[int] = None, reduction: str = "mean") -> Tensor:
    p, target = _sigmoid_masked64(input, target, ignore_index)
    tp, fp, fn = _row_sum(p * target), _row_sum(p * (1.0 - target)), _row_sum((1.0 - p) * target)
    return _reduce64(1.0 - _score64(tp + smooth, tp + alpha * fp + beta * fn + smooth), reduction)


def _unit(x: Tensor) -> Tensor:
    return x / torch.sqrt((x * x).sum(-1, keepdim=True))


def _info_nce64(input: Tensor, target: Tensor, negatives: Optional[Tensor] = None, temperature: float = 0.1,
                symmetric: bool = False, reduction: str = "mean") -> Tensor:
    # cosine logits; each anchor must pick its own positive among the N targets (CLIP-style), or
    # among itself and the explicit negatives
    a = input / torch.sqrt((input * input).sum(1, keepdim=True))
    b = target / torch.sqrt((target * target).sum(1, keepdim=True))
    if negatives is not None:
        k = _unit(negatives)
        neg = a @ k.t() if k.dim() == 2 else torch.einsum("nd,nmd->nm", a, k)
        pos = (a * b).sum(1) / temperature
        return _reduce64(torch.logsumexp(torch.cat([pos[:, None], neg / temperature], 1), dim=1) - pos, reduction)
    sim = a @ b.t() / temperature
    diag = torch.diagonal(sim)
    loss = torch.logsumexp(sim, dim=1) - diag
    if symmetric:
        loss = 0.5 * (loss + torch.logsumexp(sim, dim=0) - diag)
    return _reduce64(loss, reduction)


def _multiclass_sums64(input: Tensor, target: Tensor, weight: Optional[Tensor], ignore_index: int,
                       include_background: bool) -> Tuple[Tensor, Tensor, Tensor, Callable[[Tensor], Tensor]]:
    """softmax probabilities and one-hot (or probability) targets, both zero on ignored pixels, the
    class weights, and the per-(sample, class) sum over pixels."""
    num_classes = input.shape[1]
    if target.is_floating_point():
        t, valid = target, torch.ones_like(input[:, :1])
    else:
        keep = target != ignore_index
        t = TF.one_hot(torch.where(keep, target, torch.zeros_like(target)), num_classes).movedim(-1, 1).double()
        valid = keep.unsqueeze(1).double()
        t = t * valid
    e = torch.exp(input - input.amax(1, keepdim=True))
    p = e / e.sum(1, keepdim=True) * valid
    w = torch.ones(num_classes, dtype=torch.float64) if weight is None else weight
    if not include_background:
        p, t, w = p[:, 1:], t[:, 1:], w[1:]
    dims = tuple(range(2, input.dim()))
    return p, t, w, (lambda x: x.sum(dims) if dims else x)


def _multiclass_dice64(input: Tensor, target: Tensor, weight: Optional[Tensor] = None, smooth: float = 1.0,
                       average: str = "macro", include_background: bool = True, ignore_index: int = -100,
                       squared_pred: bool = False, jaccard: bool = False, log_loss: bool = False,
                       reduction: str = "mean") -> Tensor:
    p, t, w, total = _multiclass_sums64(input, target, weight, ignore_index, include_background)
    inter = total(p * t)
    both = total(p ** 2) + total(t ** 2) if squared_pred else total(p) + total(t)
    num, den = (inter, both - inter) if jaccard else (2.0 * inter, both)
    floor = (lambda d: -torch.log(torch.clamp(d, min=1e-7))) if log_loss else (lambda d: d)
    if average == "macro":
        score = (floor(_score64(num + smooth, den + smooth)) * w).sum(1) / w.sum()
    else:
        cw = w.expand_as(num)
        if average == "generalized":
            volume = total(t)
            inv = torch.where(volume > 0, volume.clamp(min=1e-300) ** -2.0, torch.zeros_like(volume))
            cw = torch.where(volume > 0, inv, inv.amax(1, keepdim=True).expand_as(inv)) * w
        score = floor(_score64((num * cw).sum(1) + smooth, (den * cw).sum(1) + smooth))
    return _reduce64(score if log_loss else 1.0 - score, reduction)


def _multiclass_tversky64(input: Tensor, target: Tensor, weight: Optional[Tensor] = None, alpha: float = 0.5,
                          beta: float = 0.5, gamma: float = 1.0, smooth: float = 1.0, average: str = "macro",
                          include_background: bool = True, ignore_index: int = -100, reduction: str = "mean") -> Tensor:
    p, t, w, total = _multiclass_sums64(input, target, weight, ignore_index, include_background)
    tp, fp, fn = total(p * t), total(p * (1.0 - t)), total((1.0 - p) * t)
    if average == "macro":
        index = _score64(tp + smooth, tp + alpha * fp + beta * fn + smooth)
        loss = ((1.0 - index) ** gamma * w).sum(1) / w.sum()
    else:
        index = _score64((tp * w).sum(1) + smooth, ((tp + alpha * fp + beta * fn) * w).sum(1) + smooth)
        loss = (1.0 - index) ** gamma
    return _reduce64(loss, reduction)


def _sup_con_anchors(input: Tensor, target: Tensor, **_: Any) -> Tensor:
    """How many anchors have a positive (another sample of their label), at least 1: what SupCon's
    "mean" divides by."""
    same = target[:, None] == target[None, :]
    return torch.minimum(((same.sum(1) - 1) > 0).double().sum().clamp(min=1.0),
                         torch.tensor(float(target.shape[0]), dtype=torch.float64))  # 0 for an empty batch


def _sup_con64(input: Tensor, target: Tensor, temperature: float = 0.1, reduction: str = "mean") -> Tensor:
    z = _unit(input)
    sim = z @ z.t() / temperature
    n = sim.shape[0]
    eye = torch.eye(n, dtype=torch.bool)
    log_denominator = torch.logsumexp(sim.masked_fill(eye, float("-inf")), dim=1) if n > 1 else torch.zeros(n, dtype=sim.dtype)
    positive = (target[:, None] == target[None, :]) & ~eye
    count = positive.double().sum(1)
    total = torch.where(positive, sim - log_denominator[:, None], torch.zeros_like(sim)).sum(1)
    loss = torch.where(count > 0, -total / count.clamp(min=1.0), torch.zeros_like(total))
    return _reduce64(loss, reduction, _sup_con_anchors(input, target))


def _nt_xent64(input: Tensor, target: Tensor, temperature: float = 0.1, reduction: str = "mean") -> Tensor:
    # 2N views; each one's positive is its other view, its negatives every other view (2N - 2)
    z = torch.cat([input, target])
    z = z / torch.sqrt((z * z).sum(1, keepdim=True))
    sim = z @ z.t() / temperature
    n2 = sim.shape[0]
    others = sim.masked_fill(torch.eye(n2, dtype=torch.bool), float("-inf"))
    pos = torch.cat([torch.arange(n2 // 2, n2), torch.arange(0, n2 // 2)])
    per_view = torch.logsumexp(others, dim=1) - sim[torch.arange(n2), pos]
    return _reduce64(0.5 * (per_view[: n2 // 2] + per_view[n2 // 2:]), reduction)


# ---------------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------------
_REGRESSION_ERRORS = _pair_errors()

_INFO_NCE_ONNX_FINDING = (
    "finding: embeddings of scale 1e-6 (norms ~3e-6, gradients ~8e3 from 1/||x||), float32 mean: onnxruntime's "
    "d/dpred is 0.030 from float64 where eager happened to be 0.0033 (clause 2 wants <= 2x eager + 4 ulps). Not the "
    "export: the traced graph run by torch matches eager bit for bit, and over 20 random inputs of that scale eager's "
    "worst error is 0.039 and onnxruntime's 0.033 (float32 noise of an ill-conditioned point; the parity rule is "
    "strict where eager is lucky)")
_TRIPLET_SCRIPT_FINDING = (
    "finding: late in the whole slow run torch.jit.script raises \"Can't redefine method: forward on class "
    "TripletMarginLoss\" (passes alone): TorchScript type-cache clash")

LOSSES: Dict[str, LossSpec] = {
    spec.name: spec
    for spec in [
        LossSpec("mse", "regression", L.MSELoss, F.mse_loss, 1, _like_randn, elementwise=True,
                 reference=_ref_elementwise(TF.mse_loss), reference64=_in_float64(_ref_elementwise(TF.mse_loss)),
                 error_inputs=_REGRESSION_ERRORS, differentiable_targets=(0,), target_like_input=True),
        LossSpec("l1", "regression", L.L1Loss, F.l1_loss, 1, _like_randn, elementwise=True,
                 reference=_ref_elementwise(TF.l1_loss), reference64=_in_float64(_ref_elementwise(TF.l1_loss)),
                 error_inputs=_REGRESSION_ERRORS, twice_differentiable=False,
                 differentiable_targets=(0,), target_like_input=True),
        LossSpec("huber", "regression", L.HuberLoss, F.huber_loss, 1, _like_randn, elementwise=True,
                 variants=({}, {"delta": 0.5}), reference=_ref_elementwise(TF.huber_loss),
                 reference64=_in_float64(_ref_elementwise(TF.huber_loss)),
                 error_inputs=_REGRESSION_ERRORS + [_hyper_error({"delta": 0.0}, r"delta must be > 0, got 0.0")],
                 twice_differentiable=False, differentiable_targets=(0,), target_like_input=True),
        LossSpec("smooth_l1", "regression", L.SmoothL1Loss, F.smooth_l1_loss, 1, _like_randn, elementwise=True,
                 variants=({}, {"beta": 0.5}, {"beta": 0.0}), reference=_ref_elementwise(TF.smooth_l1_loss),
                 reference64=_in_float64(_ref_elementwise(TF.smooth_l1_loss)),
                 error_inputs=_REGRESSION_ERRORS + [_hyper_error({"beta": -1.0}, r"beta must be >= 0, got -1.0")],
                 twice_differentiable=False, differentiable_targets=(0,), target_like_input=True),
        LossSpec("log_cosh", "regression", L.LogCoshLoss, F.log_cosh_loss, 1, _like_randn, elementwise=True,
                 reference64=_in_float64(_log_cosh64), error_inputs=_REGRESSION_ERRORS,
                 differentiable_targets=(0,), target_like_input=True),
        LossSpec("charbonnier", "regression", L.CharbonnierLoss, F.charbonnier_loss, 1, _like_randn, elementwise=True,
                 variants=({}, {"eps": 0.1}), reference64=_in_float64(_charbonnier64),
                 error_inputs=_REGRESSION_ERRORS + [_hyper_error({"eps": 0.0}, r"eps must be > 0, got 0.0")],
                 differentiable_targets=(0,), target_like_input=True),
        LossSpec("quantile", "regression", L.QuantileLoss, F.quantile_loss, 1, _like_randn, elementwise=True,
                 variants=({}, {"quantile": 0.9}), reference64=_in_float64(_quantile64),
                 error_inputs=_REGRESSION_ERRORS + [_hyper_error({"quantile": 1.0}, r"quantile must be in \(0.0, 1.0\), got 1.0")],
                 twice_differentiable=False, differentiable_targets=(0,), target_like_input=True),
        LossSpec("multi_quantile", "regression", L.MultiQuantileLoss, F.multi_quantile_loss, 3, _drop_last,
                 feature_shape=(3,), elementwise=True,
                 # the prediction's last dimension is the number of quantiles: 3 in every variant
                 variants=({}, {"quantiles": [0.02, 0.5, 0.98]}, {"quantiles": [0.9, 0.3, 0.6]}),
                 reference64=_in_float64(_multi_quantile64), twice_differentiable=False,
                 error_inputs=[
                     ErrorInput(lambda d: ({}, (torch.zeros(4, 2, dtype=d), torch.zeros(4, dtype=d))), ValueError,
                                r"input's last dimension must hold one prediction per quantile \(3\), got input \(4, 2\)",
                                desc="fewer predictions than quantiles"),
                     ErrorInput(lambda d: ({}, (torch.zeros(4, 3, dtype=d), torch.zeros(4, 3, dtype=d))), ValueError,
                                r"target must have the shape of input without its last \(quantile\) dimension \(4,\), "
                                r"got input \(4, 3\) and target \(4, 3\)", desc="target with a quantile dimension"),
                     ErrorInput(lambda d: ({}, (torch.zeros(4, 3, dtype=d), torch.zeros(4, dtype=torch.int64))), TypeError,
                                r"input and target must have the same dtype, got input float\d+ and target int64",
                                desc="integer target"),
                     ErrorInput(lambda d: ({}, (torch.zeros(4, 3, dtype=torch.int64), torch.zeros(4, dtype=torch.int64))),
                                TypeError, r"input must be a floating-point tensor, got dtype int64", desc="integer input"),
                     _hyper_error({"quantiles": []}, r"quantiles must hold at least one quantile, got \[\]"),
                     _hyper_error({"quantiles": [0.5, 1.0, 0.2]}, r"each quantile must be in \(0.0, 1.0\), got 1.0"),
                     ErrorInput(lambda d: ({"reduction": "average"}, ()), ValueError,
                                r"reduction must be one of 'none', 'mean', 'sum', got 'average'", at="init",
                                desc="unknown reduction")],
                 differentiable_targets=(0,)),
        LossSpec("gaussian_nll", "regression", L.GaussianNLLLoss, F.gaussian_nll_loss, 1, _gaussian_targets,
                 elementwise=True, variants=({}, {"full": True}), reference=_ref_gaussian,
                 reference64=_in_float64(_ref_gaussian),
                 error_inputs=_pair_errors(n_targets=2) + [_hyper_error({"eps": -1.0}, r"eps must be > 0, got -1.0")],
                 differentiable_targets=(0, 1), target_like_input=True),
        LossSpec("poisson_nll", "regression", L.PoissonNLLLoss, F.poisson_nll_loss, 1, _counts, elementwise=True,
                 variants=({}, {"full": True}, {"log_input": False}), reference=_ref_elementwise(TF.poisson_nll_loss),
                 reference64=_in_float64(_ref_elementwise(TF.poisson_nll_loss)),
                 input_kind=lambda kw: "log_rate" if kw.get("log_input", True) else "rate",
                 make_input=lambda shape, dtype, gen: torch.rand(shape, generator=gen, dtype=dtype) * 2.0 + 0.1,
                 error_inputs=_REGRESSION_ERRORS + [_hyper_error({"eps": 0.0}, r"eps must be > 0, got 0.0")]),
        LossSpec("cross_entropy", "classification", L.CrossEntropyLoss, F.cross_entropy_loss, 5, _class_index,
                 feature_shape=(5,),
                 variants=({}, {"label_smoothing": 0.1}, {"weight": torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0])},
                           {"ignore_index": 1, "label_smoothing": 0.2},
                           {"label_smoothing": 0.1}, {"weight": torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0])}),
                 variant_targets={4: _probs, 5: _probs},
                 reference=_ref_ce, reference64=_in_float64(_ref_ce), input_kind="logits", none_shape="target",
                 mean_divisor=_class_weight_total,
                 error_inputs=_class_errors(probability_targets=True) + [
                     _hyper_error({"label_smoothing": 1.5}, r"label_smoothing must be in \[0.0, 1.0\], got 1.5")]),
        LossSpec("focal", "classification", L.FocalLoss, F.focal_loss, 5, _class_index, feature_shape=(5,),
                 variants=({}, {"gamma": 0.5, "weight": torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0])}, {"ignore_index": 2}),
                 reference64=_in_float64(_focal64), input_kind="logits", none_shape="target",
                 mean_divisor=_class_weight_total,
                 error_inputs=_class_errors() + [_hyper_error({"gamma": -1.0}, r"gamma must be >= 0, got -1.0")],
                 skips={"onnx-legacy": "the TorchScript-based exporter has no ONNX form for aten::expm1 at opset 18 "
                                       "(the torch.export-based 'onnx' exports it)"}),
        LossSpec("binary_focal", "classification", L.BinaryFocalLoss, F.binary_focal_loss, 1, _binary, elementwise=True,
                 variants=({}, {"alpha": -1.0, "gamma": 1.5}, {"ignore_index": 255},
                           {"normalization": "positives", "pos_weight": torch.tensor([2.0])},
                           {"ignore_index": 255, "normalization": "positives", "gamma": 0.5},
                           {"class_alpha": torch.tensor([0.4])}),
                 variant_targets={2: _binary_ignored, 4: _binary_ignored},
                 reference64=_in_float64(_binary_focal64), input_kind="logits", mean_divisor=_binary_focal_divisor,
                 error_inputs=_REGRESSION_ERRORS + [
                     _hyper_error({"alpha": 1.5}, r"alpha must be in \[0.0, 1.0\], got 1.5"),
                     _hyper_error({"normalization": "anchors"},
                                  r"normalization must be one of 'elements', 'positives', got 'anchors'"),
                     ErrorInput(lambda d: ({"pos_weight": torch.ones(3, dtype=d)}, (torch.zeros(4, 1, dtype=d),
                                                                                    torch.zeros(4, 1, dtype=d))),
                                ValueError, r"pos_weight must be a 1-D tensor of size 1 or of input's last dimension "
                                            r"\(1\), got \(3,\)", desc="pos_weight of the wrong size"),
                     ErrorInput(lambda d: ({"class_alpha": torch.ones(2, dtype=d)}, (torch.zeros(4, 3, dtype=d),
                                                                                     torch.zeros(4, 3, dtype=d))),
                                ValueError, r"class_alpha must be a 1-D tensor of size 1 or of input's last dimension "
                                            r"\(3\), got \(2,\)", desc="class_alpha of the wrong size")],
                 differentiable_targets=_smooth_unless_ignored),
        LossSpec("bce_with_logits", "classification", L.BCEWithLogitsLoss, F.bce_with_logits_loss, 1, _binary,
                 elementwise=True, variants=({}, {"pos_weight": torch.tensor([3.0])}), reference=_ref_bce,
                 reference64=_in_float64(_ref_bce), input_kind="logits",
                 error_inputs=_REGRESSION_ERRORS,
                 differentiable_targets=(0,)),
        LossSpec("dice", "dense", L.DiceLoss, F.dice_loss, 4, _binary, feature_shape=(4, 6, 6),
                 variants=({}, {"smooth": 0.0}, {"squared_pred": True}, {"ignore_index": 255}),
                 variant_targets={3: _binary_ignored}, reference64=_in_float64(_dice64), input_kind="logits",
                 none_shape="sample",
                 error_inputs=_pair_errors(feature=(4,)) + [_hyper_error({"smooth": -1.0}, r"smooth must be >= 0, got -1.0")],
                 differentiable_targets=_smooth_unless_ignored),
        LossSpec("tversky", "dense", L.TverskyLoss, F.tversky_loss, 4, _binary, feature_shape=(4, 6, 6),
                 variants=({}, {"alpha": 0.3, "beta": 0.7}, {"alpha": 0.3, "beta": 0.7, "ignore_index": 255}),
                 variant_targets={2: _binary_ignored}, reference64=_in_float64(_tversky64), input_kind="logits",
                 none_shape="sample",
                 error_inputs=_pair_errors(feature=(4,)) + [_hyper_error({"alpha": -0.1}, r"alpha must be >= 0, got -0.1")],
                 differentiable_targets=_smooth_unless_ignored),
        LossSpec("multiclass_dice", "dense", L.MultiClassDiceLoss, F.multiclass_dice_loss, 4, _class_index,
                 feature_shape=(4, 5, 5),
                 variants=({}, {"average": "micro", "squared_pred": True}, {"average": "generalized"},
                           {"include_background": False, "weight": torch.tensor([1.0, 2.0, 0.5, 1.5])},
                           {"ignore_index": 2, "jaccard": True}, {"smooth": 0.5, "average": "micro"},
                           {"jaccard": True, "squared_pred": True}, {"log_loss": True}, {"log_loss": True, "average": "micro"}),
                 variant_targets={5: _one_hot, 6: _probs},
                 reference64=_in_float64(_multiclass_dice64), input_kind="logits", none_shape="sample",
                 error_inputs=_multiclass_errors(["macro", "micro", "generalized"])),
        LossSpec("multiclass_tversky", "dense", L.MultiClassTverskyLoss, F.multiclass_tversky_loss, 4, _class_index,
                 feature_shape=(4, 5, 5),
                 variants=({}, {"alpha": 0.3, "beta": 0.7, "gamma": 0.75},
                           {"average": "micro", "gamma": 2.0, "weight": torch.tensor([1.0, 2.0, 0.5, 1.5])},
                           {"include_background": False, "ignore_index": 1}, {"alpha": 0.7, "beta": 0.3}),
                 variant_targets={4: _one_hot},
                 reference64=_in_float64(_multiclass_tversky64), input_kind="logits", none_shape="sample",
                 error_inputs=_multiclass_errors(["macro", "micro"]) + [
                     _hyper_error({"gamma": 0.0}, r"gamma must be > 0, got 0.0")]),
        LossSpec("kl_div", "distribution", L.KLDivLoss, F.kl_div_loss, 5, _probs, feature_shape=(5,),
                 variants=({}, {"log_target": True}), reference=_ref_kl, reference64=_in_float64(_ref_kl),
                 make_input=_log_probs_input, input_kind="log_probs", none_shape="sample",
                 error_inputs=_pair_errors(feature=(5,)),
                 skips={"onnx-legacy": "the TorchScript-based exporter has no ONNX form for aten::xlogy at opset 18 "
                                       "(the torch.export-based 'onnx' exports it)"},
                 differentiable_targets=(0,)),
        LossSpec("info_nce", "metric", L.InfoNCELoss, F.info_nce_loss, 8, _like_randn, feature_shape=(8,),
                 variants=({}, {"symmetric": True, "temperature": 0.5}, {}, {"temperature": 0.2}),
                 variant_targets={2: _with_negatives, 3: _with_paired_negatives},
                 reference64=_in_float64(_info_nce64),
                 none_shape="sample", target_like_input=True, known_failures={"onnx": _INFO_NCE_ONNX_FINDING},
                 error_inputs=_embedding_errors(1) + [
                     _hyper_error({"temperature": 0.0}, r"temperature must be > 0, got 0.0"),
                     ErrorInput(lambda d: ({}, (torch.zeros(4, 8, dtype=d), torch.zeros(4, 8, dtype=d),
                                                torch.zeros(4, 3, 6, dtype=d))), ValueError,
                                r"negatives must be \(M, D\) or \(N, M, D\) with N = 4 and D = 8, got \(4, 3, 6\)",
                                desc="paired negatives of another width"),
                     ErrorInput(lambda d: ({}, (torch.zeros(4, 8, dtype=d), torch.zeros(4, 8, dtype=d),
                                                torch.zeros(8, dtype=d))), ValueError,
                                r"negatives must be \(M, D\) or \(N, M, D\) with D = 8, got \(8,\)",
                                desc="flat negatives"),
                     ErrorInput(lambda d: ({"symmetric": True}, (torch.zeros(4, 8, dtype=d), torch.zeros(4, 8, dtype=d),
                                                                 torch.zeros(5, 8, dtype=d))), ValueError,
                                r"symmetric=True needs the in-batch negatives, got explicit negatives",
                                desc="symmetric with explicit negatives")],
                 differentiable_targets=(0, 1)),
        LossSpec("sup_con", "metric", L.SupConLoss, F.sup_con_loss, 8, _few_labels, feature_shape=(8,),
                 variants=({}, {"temperature": 0.5}), reference64=_in_float64(_sup_con64), none_shape="sample",
                 mean_divisor=_sup_con_anchors,
                 error_inputs=[
                     ErrorInput(lambda d: ({}, (torch.zeros(8, dtype=d), torch.zeros(8, dtype=torch.int64))), ValueError,
                                r"input must be 2-dimensional embeddings \(N, D\), got shape \(8,\)",
                                desc="unbatched embeddings"),
                     ErrorInput(lambda d: ({}, (torch.zeros(4, 8, dtype=d), torch.zeros(4, dtype=d))), TypeError,
                                r"target must hold class indices as an int64 tensor, got dtype float\d+",
                                desc="float labels"),
                     ErrorInput(lambda d: ({}, (torch.zeros(4, 8, dtype=d), torch.zeros(4, 1, dtype=torch.int64))),
                                ValueError, r"target must be a 1-D tensor of labels of shape \(4,\), got \(4, 1\)",
                                desc="column of labels"),
                     ErrorInput(lambda d: ({}, (torch.zeros(4, 8, dtype=torch.int64), torch.zeros(4, dtype=torch.int64))),
                                TypeError, r"input must be a floating-point tensor, got dtype int64", desc="integer input"),
                     _hyper_error({"temperature": 0.0}, r"temperature must be > 0, got 0.0"),
                     ErrorInput(lambda d: ({"reduction": "batchmean"}, ()), ValueError,
                                r"reduction must be one of 'none', 'mean', 'sum', got 'batchmean'", at="init",
                                desc="unknown reduction")]),
        LossSpec("nt_xent", "metric", L.NTXentLoss, F.nt_xent_loss, 8, _like_randn, feature_shape=(8,),
                 variants=({}, {"temperature": 0.5}), reference64=_in_float64(_nt_xent64),
                 none_shape="sample", target_like_input=True,
                 error_inputs=_embedding_errors(1) + [_hyper_error({"temperature": -1.0}, r"temperature must be > 0, got -1.0")],
                 differentiable_targets=(0,)),
        LossSpec("triplet_margin", "metric", L.TripletMarginLoss, F.triplet_margin_loss, 8, _two_like, feature_shape=(8,),
                 variants=({}, {"margin": 2.0, "p": 1.0, "swap": True}), reference=_ref_triplet,
                 reference64=_in_float64(_ref_triplet), none_shape="sample", target_like_input=True,
                 known_failures={"script": _TRIPLET_SCRIPT_FINDING},
                 error_inputs=_embedding_errors(2) + [_hyper_error({"margin": 0.0}, r"margin must be > 0, got 0.0")],
                 twice_differentiable=False,
                 differentiable_targets=(0, 1)),
        LossSpec("cosine_embedding", "metric", L.CosineEmbeddingLoss, F.cosine_embedding_loss, 8, _pair_labels,
                 feature_shape=(8,), variants=({}, {"margin": 0.3}), reference=_ref_cosine,
                 reference64=_in_float64(_ref_cosine), none_shape="sample", target_like_input=True,
                 error_inputs=_embedding_errors(2) + [
                     _hyper_error({"margin": 2.0}, r"margin must be in \[-1.0, 1.0\], got 2.0")],
                 twice_differentiable=False,
                 differentiable_targets=(0,)),
    ]
}

DEFAULT_LOSS = "mse"


@dataclass(frozen=True)
class NetSpec:
    name: str
    factory: Callable[..., nn.Module]
    # Example input for a batch of N: (N,) + input_shape.
    input_shape: Tuple[int, ...]
    # A loss the net is really trained with, and its settings.
    loss: str
    loss_kwargs: Dict[str, Any] = field(default_factory=dict)
    net_kwargs: Dict[str, Any] = field(default_factory=dict)
    # Dims of the input beyond the batch that take any size: {dim index: symbol} (a sequence
    # length, an image's height and width). The one place they are declared: cases mark them on
    # their tensors (compile_losses.dims), the adapters export them dynamic, bundles record them.
    dynamic_dims: Dict[int, str] = field(default_factory=dict)
    # The sizes ``verify --dynamic-dims`` checks, one {symbol: size} per run: 1 and sizes the
    # export (made at input_shape, see dims.distinct_sizes) never saw.
    dynamic_sizes: Tuple[Dict[str, int], ...] = ()

    def build(self, **overrides: Any) -> nn.Module:
        kwargs = dict(self.net_kwargs)
        kwargs.update(overrides)
        return self.factory(**kwargs)

    def input_shape_at(self, sizes: Optional[Dict[str, int]] = None) -> Tuple[int, ...]:
        """``input_shape`` with the dynamic dims at ``sizes`` (by symbol; the others as declared)."""
        sizes = sizes or {}
        unknown = sorted(set(sizes) - set(self.dynamic_dims.values()))
        if unknown:
            raise ValueError("sizes names {} but net {!r} has dynamic dims {}".format(
                unknown, self.name, sorted(self.dynamic_dims.values()) or "none"))
        shape = list(self.input_shape)
        for d, name in self.dynamic_dims.items():
            if name in sizes:
                if not isinstance(sizes[name], int) or sizes[name] < 1:
                    raise ValueError("size of {!r} must be a positive integer, got {!r}".format(name, sizes[name]))
                shape[d - 1] = sizes[name]
        return tuple(shape)

    def example_input(self, batch: int, dtype: torch.dtype = torch.float32, seed: int = 0,
                      sizes: Optional[Dict[str, int]] = None) -> Tensor:
        gen = torch.Generator().manual_seed(seed)
        return torch.randn((batch,) + self.input_shape_at(sizes), generator=gen, dtype=dtype)


NETS: Dict[str, NetSpec] = {
    spec.name: spec
    for spec in [
        NetSpec("seed", N.SeedNet, (32,), "mse"),
        NetSpec("mlp", N.MLPClassifier, (64,), "cross_entropy", {"label_smoothing": 0.1}),
        NetSpec("convseg", N.ConvSegNet, (3, 16, 16), "dice", dynamic_dims={2: "height", 3: "width"},
                dynamic_sizes=({"height": 1, "width": 1}, {"height": 9, "width": 16}, {"height": 16, "width": 5},
                               {"height": 23, "width": 11})),
        NetSpec("encoder", N.TinyEncoder, (8, 32), "info_nce", dynamic_dims={1: "seq"},
                dynamic_sizes=({"seq": 1}, {"seq": 5}, {"seq": 13})),
    ]
}

DEFAULT_NET = "seed"


def sample_inputs(spec: LossSpec, dtype: torch.dtype = torch.float64, batches: Sequence[int] = (1, 7, 64),
                  reductions: Sequence[str] = tuple(REDUCTIONS), only_variant: Optional[int] = None,
                  noncontiguous: bool = True) -> Iterator[SampleInput]:
    """Every variant of a loss at each batch size and reduction, plus a non-contiguous input.

    ``only_variant`` keeps the samples of ``spec.variants[only_variant]`` (with the seeds they have in
    the full enumeration); ``noncontiguous=False`` leaves out the strided sample."""
    seed = 0
    for index, variant in enumerate(spec.variants):
        for batch in batches:
            for reduction in reductions:
                seed += 1
                if only_variant is not None and index != only_variant:
                    continue
                pred, targets = spec.input_for(batch, dtype, seed=seed - 1, variant=index)
                kwargs = dict(variant, reduction=reduction)
                yield SampleInput(pred, targets, _cast_kwargs(kwargs, dtype),
                                  "{} batch={} {}".format(variant_id(spec, index), batch, reduction))
    if not noncontiguous:
        return
    # Non-contiguous: every tensor a strided view of a wider one.
    pred, targets = spec.input_for(6, dtype, seed=seed)
    yield SampleInput(_strided(pred), tuple(_strided(t) for t in targets), {}, "non-contiguous batch=6")


def _strided(t: Tensor) -> Tensor:
    if t.dim() == 0:
        return t
    wide = torch.stack([t, torch.zeros_like(t)], dim=-1)
    out = wide[..., 0]
    assert not out.is_contiguous() or out.numel() <= 1
    return out


def _cast_kwargs(kwargs: Dict[str, Any], dtype: torch.dtype) -> Dict[str, Any]:
    return {k: (v.to(dtype) if isinstance(v, Tensor) and v.is_floating_point() else v) for k, v in kwargs.items()}


def variant_id(spec: LossSpec, index: int) -> str:
    """A readable id of ``spec.variants[index]``, naming its kind of target when it has its own."""
    out = _fmt_variant(spec.variants[index])
    maker = spec.variant_targets.get(index)
    return out if maker is None else "{}+targets={}".format(out, maker.__name__.strip("_"))


def _fmt_variant(variant: Dict[str, Any]) -> str:
    if not variant:
        return "default"
    return ",".join("{}={}".format(k, v.tolist() if isinstance(v, Tensor) else v) for k, v in variant.items())
