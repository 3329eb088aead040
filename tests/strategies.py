"""Hypothesis strategies over the registry, shared by the eager properties (test_properties.py) and
the backend properties (test_property_backends.py): random batches (1 included), value regimes from
tiny to large (logits of +-30 and +-100 where stable formulations matter), exact zeros, targets equal
to inputs, every reduction and both float dtypes."""
from typing import Dict, Optional, Tuple

import torch
from hypothesis import strategies as st

from compile_losses.registry import LossSpec

# How each loss's prediction is read, which decides the value regimes that must stay finite.
# "free": any real (regression residuals, embeddings); "logits": passed through sigmoid/softmax,
# so +-30 and +-100 must not overflow; "log_rate": exp(input), finite up to ~88 in float32;
# "rate": a positive rate; "log_probs": log-probabilities from a log_softmax.
INPUT_KIND: Dict[str, str] = {
    "mse": "free", "l1": "free", "huber": "free", "smooth_l1": "free", "log_cosh": "free",
    "charbonnier": "free", "quantile": "free", "gaussian_nll": "free", "poisson_nll": "log_rate",
    "cross_entropy": "logits", "focal": "logits", "binary_focal": "logits", "bce_with_logits": "logits",
    "dice": "logits", "tversky": "logits", "kl_div": "log_probs", "info_nce": "free",
    "triplet_margin": "free", "cosine_embedding": "free",
}
# Shape of the "none" output for a prediction of shape (N, ...): the prediction's, the class
# target's (prediction without dim 1), or one value per sample.
NONE_SHAPE: Dict[str, str] = {
    "cross_entropy": "target", "focal": "target", "dice": "sample", "tversky": "sample", "kl_div": "sample",
    "info_nce": "sample", "triplet_margin": "sample", "cosine_embedding": "sample",
}
SCALES: Dict[str, Tuple[float, ...]] = {
    "free": (0.0, 1e-6, 1.0, 1e3),
    "logits": (0.0, 1e-6, 1.0, 30.0, 100.0),
    "log_rate": (0.0, 1e-6, 1.0, 30.0),
    "log_probs": (0.0, 1.0, 30.0, 100.0),
}
# Targets equal to the prediction make sense where they share shape and meaning.
SAME_MEANING_TARGET = {"mse", "l1", "huber", "smooth_l1", "log_cosh", "charbonnier", "quantile", "gaussian_nll",
                       "info_nce", "triplet_margin", "cosine_embedding"}
REDUCTIONS = ("none", "mean", "sum")
DTYPES = (torch.float32, torch.float64)


def cast_kwargs(variant: Dict, dtype: torch.dtype) -> Dict:
    """A variant's settings with its float tensors (class weights) in ``dtype``."""
    return {k: (v.to(dtype) if isinstance(v, torch.Tensor) else v) for k, v in variant.items()}


@st.composite
def cases(draw: st.DrawFn, spec: LossSpec, variant_index: Optional[int] = None, reduction: Optional[str] = None,
          dtype: Optional[torch.dtype] = None):
    """``(pred, targets, init_kwargs, description)`` for ``spec``; ``variant_index``, ``reduction``
    and ``dtype`` are drawn unless fixed (the backend properties fix them: one preparation each)."""
    batch = draw(st.integers(min_value=1, max_value=9))
    dtype = draw(st.sampled_from(DTYPES)) if dtype is None else dtype
    reduction = draw(st.sampled_from(REDUCTIONS)) if reduction is None else reduction
    variant = spec.variants[draw(st.integers(0, len(spec.variants) - 1)) if variant_index is None else variant_index]
    seed = draw(st.integers(min_value=0, max_value=2**31 - 1))
    kind = INPUT_KIND[spec.name]
    scale = draw(st.sampled_from(SCALES[kind]))
    equal_target = spec.name in SAME_MEANING_TARGET and draw(st.booleans())
    pred, targets = spec.input_for(batch, dtype, seed=seed)
    if kind == "log_probs":
        pred = torch.log_softmax(torch.randn(pred.shape, dtype=dtype,
                                             generator=torch.Generator().manual_seed(seed)) * scale, dim=1)
    elif spec.name == "poisson_nll" and variant.get("log_input") is False:
        pred = pred.abs() * max(scale, 1e-6) + 1e-3 * (scale == 0.0)  # a rate: positive
    else:
        pred = pred * scale
    if equal_target:
        targets = (pred.clone(),) + tuple(targets[1:])
    return pred, targets, dict(cast_kwargs(variant, dtype), reduction=reduction), "{} batch={} scale={} equal={} {} {}".format(
        variant, batch, scale, equal_target, reduction, str(dtype).replace("torch.", ""))


def none_shape(spec: LossSpec, pred: torch.Tensor) -> Tuple[int, ...]:
    how = NONE_SHAPE.get(spec.name, "input")
    if how == "input":
        return tuple(pred.shape)
    if how == "target":
        return (pred.shape[0],) + tuple(pred.shape[2:])
    return (pred.shape[0],)
