"""Hypothesis strategies over the registry, shared by the eager properties (test_properties.py) and
the backend properties (test_property_backends.py): random batches (1 included), value regimes from
tiny to large (logits of +-30 and +-100 where stable formulations matter), exact zeros, targets equal
to inputs, every reduction and both float dtypes."""
from typing import Dict, Optional, Tuple

import torch
from hypothesis import strategies as st

from compile_losses.registry import LossSpec

# Per-loss facts (how the prediction is read, the "none" shape, whether a target may equal the
# prediction) live in the registry: LossSpec.kind(), none_shape_of(), target_like_input.
SCALES: Dict[str, Tuple[float, ...]] = {
    "free": (0.0, 1e-6, 1.0, 1e3),
    "logits": (0.0, 1e-6, 1.0, 30.0, 100.0),
    "log_rate": (0.0, 1e-6, 1.0, 30.0),
    "rate": (0.0, 1e-6, 1.0, 30.0),
    "log_probs": (0.0, 1.0, 30.0, 100.0),
}
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
    if variant_index is None:
        variant_index = draw(st.integers(0, len(spec.variants) - 1))
    variant = spec.variants[variant_index]
    seed = draw(st.integers(min_value=0, max_value=2**31 - 1))
    kind = spec.kind(variant)
    scale = draw(st.sampled_from(SCALES[kind]))
    equal_target = spec.target_like_input and draw(st.booleans())
    pred, targets = spec.input_for(batch, dtype, seed=seed, variant=variant_index)
    if kind == "log_probs":
        pred = torch.log_softmax(torch.randn(pred.shape, dtype=dtype,
                                             generator=torch.Generator().manual_seed(seed)) * scale, dim=1)
    elif kind == "rate":
        pred = pred.abs() * max(scale, 1e-6) + 1e-3 * (scale == 0.0)  # a rate: positive
    else:
        pred = pred * scale
    if equal_target:
        targets = (pred.clone(),) + tuple(targets[1:])
    return pred, targets, dict(cast_kwargs(variant, dtype), reduction=reduction), "{} batch={} scale={} equal={} {} {}".format(
        variant, batch, scale, equal_target, reduction, str(dtype).replace("torch.", ""))


def none_shape(spec: LossSpec, pred: torch.Tensor) -> Tuple[int, ...]:
    return spec.none_shape_of(pred)
