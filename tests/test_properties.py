"""Property tests over the registry (hypothesis): random batches (1 included), value regimes from
tiny to large (logits of +-30 and +-100 where stable formulations matter), exact zeros, targets equal
to inputs, every reduction and both float dtypes.

- losses and their gradients are finite wherever the math is finite and representable;
- ``"none"`` keeps the documented shape, and ``"sum"`` / ``"mean"`` are its sum / mean;
- scripted modules agree with eager bit for bit or by the parity rule (see test_property_backends).
"""
import pytest
import torch
from hypothesis import assume, given

from compile_losses.registry import LOSSES
from strategies import SCALES, cases, none_shape


def test_every_loss_is_classified() -> None:
    for spec in LOSSES.values():
        for variant in spec.variants:
            assert spec.kind(variant) in SCALES, "{}: input_kind {!r} has no value regimes".format(
                spec.name, spec.kind(variant))
        assert spec.none_shape in ("input", "target", "sample"), spec.name


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_finite_and_shaped(name: str) -> None:
    spec = LOSSES[name]

    @given(cases(spec))
    def check(case) -> None:
        pred, targets, kwargs, desc = case
        if spec.mean_divisor is not None and kwargs["reduction"] == "mean":
            # the mean over nothing counted (every target ignored, no anchor with a positive) is 0/0
            kw = {k: v for k, v in kwargs.items() if k != "reduction"}
            assume(bool(spec.mean_divisor(pred, *targets, **kw) != 0))
        pred = pred.detach().requires_grad_(True)
        module = spec.build(**kwargs)
        out = module(pred, *targets)
        if kwargs["reduction"] == "none":
            assert tuple(out.shape) == none_shape(spec, pred), desc
        else:
            assert out.dim() == 0, desc
        assert torch.isfinite(out).all(), "{}: non-finite loss {}".format(desc, out)
        (grad,) = torch.autograd.grad(out.sum(), pred)
        assert torch.isfinite(grad).all(), "{}: non-finite gradient".format(desc)

    check()


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_reductions_agree_with_none(name: str) -> None:
    spec = LOSSES[name]

    @given(cases(spec))
    def check(case) -> None:
        pred, targets, kwargs, desc = case
        kw = {k: v for k, v in kwargs.items() if k != "reduction"}
        none = spec.build(reduction="none", **kw)(pred, *targets)
        total = spec.build(reduction="sum", **kw)(pred, *targets)
        mean = spec.build(reduction="mean", **kw)(pred, *targets)
        torch.testing.assert_close(total, none.sum(), msg=desc)
        if spec.mean_divisor is None:
            torch.testing.assert_close(mean, none.mean(), msg=desc)
        else:  # the registry's rule for what "mean" divides by (class weights of counted targets)
            divisor = spec.mean_divisor(pred, *targets, **kw).to(none.dtype)
            torch.testing.assert_close(mean, none.sum() / divisor, msg=desc, equal_nan=True)

    check()
