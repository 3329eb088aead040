"""Property tests over the registry (hypothesis): random batches (1 included), value regimes from
tiny to large (logits of +-30 and +-100 where stable formulations matter), exact zeros, targets equal
to inputs, every reduction and both float dtypes.

- losses and their gradients are finite wherever the math is finite and representable;
- ``"none"`` keeps the documented shape, and ``"sum"`` / ``"mean"`` are its sum / mean;
- scripted modules agree with eager bit for bit or by the parity rule (see test_property_backends).
"""
from typing import Dict, Tuple

import pytest
import torch
from hypothesis import assume, given, strategies as st

from compile_losses.registry import LOSSES, LossSpec

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


def test_every_loss_is_classified() -> None:
    assert set(INPUT_KIND) == set(LOSSES), "classify new losses in INPUT_KIND"


@st.composite
def cases(draw: st.DrawFn, spec: LossSpec):
    batch = draw(st.integers(min_value=1, max_value=9))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    reduction = draw(st.sampled_from(["none", "mean", "sum"]))
    variant = draw(st.sampled_from(list(spec.variants)))
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
    kwargs = {k: (v.to(dtype) if isinstance(v, torch.Tensor) else v) for k, v in variant.items()}
    return pred, targets, dict(kwargs, reduction=reduction), "{} batch={} scale={} equal={} {}".format(
        variant, batch, scale, equal_target, reduction)


def _none_shape(spec: LossSpec, pred: torch.Tensor) -> Tuple[int, ...]:
    how = NONE_SHAPE.get(spec.name, "input")
    if how == "input":
        return tuple(pred.shape)
    if how == "target":
        return (pred.shape[0],) + tuple(pred.shape[2:])
    return (pred.shape[0],)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_finite_and_shaped(name: str) -> None:
    spec = LOSSES[name]

    @given(cases(spec))
    def check(case) -> None:
        pred, targets, kwargs, desc = case
        if "ignore_index" in kwargs and kwargs["reduction"] == "mean":
            # the mean over no counted target is 0/0, NaN, as in F.cross_entropy
            assume(bool((targets[0] != kwargs["ignore_index"]).any()))
        pred = pred.detach().requires_grad_(True)
        module = spec.build(**kwargs)
        out = module(pred, *targets)
        if kwargs["reduction"] == "none":
            assert tuple(out.shape) == _none_shape(spec, pred), desc
        else:
            assert out.dim() == 0, desc
        assert torch.isfinite(out).all(), "{}: non-finite loss {}".format(desc, out)
        (grad,) = torch.autograd.grad(out.sum(), pred)
        assert torch.isfinite(grad).all(), "{}: non-finite gradient".format(desc)

    check()


def _plain(variant_kwargs: dict) -> bool:
    # class weights / ignore_index change what "mean" divides by (as in F.cross_entropy)
    return "weight" not in variant_kwargs and "ignore_index" not in variant_kwargs


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_reductions_agree_with_none(name: str) -> None:
    spec = LOSSES[name]

    @given(cases(spec))
    def check(case) -> None:
        pred, targets, kwargs, desc = case
        if not _plain(kwargs):
            return
        kw = {k: v for k, v in kwargs.items() if k != "reduction"}
        none = spec.build(reduction="none", **kw)(pred, *targets)
        total = spec.build(reduction="sum", **kw)(pred, *targets)
        mean = spec.build(reduction="mean", **kw)(pred, *targets)
        torch.testing.assert_close(total, none.sum(), msg=desc)
        torch.testing.assert_close(mean, none.mean(), msg=desc)

    check()
