"""The one reduction helper, pinned: each branch of ``apply_reduction``, the float64-accumulated
("faithful") sums that exported graphs trace, the weight-sum division and the vocabulary's message.

The mutation run (``scripts/mutation.sh reduction``) holds ``compile_losses/_reduction.py`` to these
tests. Expected values are worked out by hand from the planted inputs.
"""
import math

import pytest
import torch

from compile_losses import _reduction as R
from compile_losses import functional as F

# float32 sums that lose the 1: 1e8 + 1 rounds to 1e8 in float32, so a float32 sum of these is 0
# (or 2 or -2 in other orders) while the exact sum, accumulated in float64, is 1.
CANCEL = torch.tensor([1e8, 1.0, -1e8, 0.0], dtype=torch.float32)


def test_vocabulary_and_its_message() -> None:
    assert R.REDUCTIONS == ["none", "mean", "sum"]
    for name in ("none", "mean", "sum"):
        assert R.validate_reduction(name) == name
    with pytest.raises(ValueError) as err:
        R.validate_reduction("avg")
    assert str(err.value) == "reduction must be one of 'none', 'mean', 'sum', got 'avg'"
    with pytest.raises(ValueError) as err:
        R.apply_reduction(torch.ones(2), "batchmean")
    assert str(err.value) == "reduction must be one of 'none', 'mean', 'sum', got 'batchmean'"


def test_exports_skip_onnxscripts_optimizer() -> None:
    assert R.ONNX_OPTIMIZE is False


def test_none_sum_and_mean_outside_export() -> None:
    x = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    assert R.apply_reduction(x, "none") is x
    assert float(R.apply_reduction(x, "sum")) == 12.0
    assert float(R.apply_reduction(x, "mean")) == 3.0
    assert R.apply_reduction(x, "mean").dtype == torch.float32


def test_a_denominator_replaces_the_element_count() -> None:
    x = torch.tensor([1.0, 2.0, 3.0])
    out = R.apply_reduction(x, "mean", torch.tensor(4.0))
    assert out.shape == () and float(out) == 1.5
    # "sum" ignores the denominator
    assert float(R.apply_reduction(x, "sum", torch.tensor(4.0))) == 6.0


def test_a_zero_weight_sum_gives_nan_with_a_zero_gradient() -> None:
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    out = R.apply_reduction(x * 0.0, "mean", torch.tensor(0.0))
    assert out.shape == () and math.isnan(float(out.detach()))
    (g,) = torch.autograd.grad(out, x)
    assert torch.equal(g, torch.zeros(2))
    # a non-zero denominator: the gradient is 1 / denominator
    y = torch.tensor([1.0, 2.0], requires_grad=True)
    (g,) = torch.autograd.grad(R.apply_reduction(y, "mean", torch.tensor(4.0)), y)
    assert torch.equal(g, torch.full((2,), 0.25))


def test_empty_losses_behave_as_torchs() -> None:
    e = torch.zeros(0)
    assert math.isnan(float(R.apply_reduction(e, "mean")))
    assert float(R.apply_reduction(e, "sum")) == 0.0
    assert R.apply_reduction(e, "none").numel() == 0


def test_faithful_mode_is_on_only_inside_the_block_and_restored_after() -> None:
    assert not R._faithful_mode()
    with R.faithful_reductions():
        assert R._faithful_mode()
        with R.faithful_reductions():
            assert R._faithful_mode()
        assert R._faithful_mode()  # the inner block restores the outer's state, not "off"
    assert not R._faithful_mode()
    with pytest.raises(RuntimeError):
        with R.faithful_reductions():
            raise RuntimeError("boom")
    assert not R._faithful_mode()


def test_plain_sums_are_float32_and_faithful_sums_accumulate_in_float64() -> None:
    plain_sum, plain_mean = float(R.apply_reduction(CANCEL, "sum")), float(R.apply_reduction(CANCEL, "mean"))
    assert plain_sum != 1.0 and plain_mean != 0.25  # float32 loses the 1 (the premise of the test)
    with R.faithful_reductions():
        s, m = R.apply_reduction(CANCEL, "sum"), R.apply_reduction(CANCEL, "mean")
        w = R.apply_reduction(CANCEL, "mean", torch.tensor(2.0))
    assert s.dtype == m.dtype == w.dtype == torch.float32
    assert float(s) == 1.0 and float(m) == 0.25 and float(w) == 0.5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_faithful_sums_of_half_types_come_back_in_their_dtype(dtype: torch.dtype) -> None:
    x = torch.tensor([256.0, 0.5, -256.0, 0.25], dtype=dtype)
    with R.faithful_reductions():
        s, m = R.apply_reduction(x, "sum"), R.apply_reduction(x, "mean")
    assert s.dtype == m.dtype == dtype
    assert float(s) == 0.75 and float(m) == 0.1875


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_faithful_mean_of_half_types_divides_before_it_rounds(dtype: torch.dtype) -> None:
    # 2^17 losses of 3.0: their sum (393216) and their count (131072) are past float16's largest
    # finite value (65504); rounded to float16 first they are inf, and inf / inf is NaN. Divided in
    # float64 and rounded once, the mean is exactly 3. bfloat16 (range to 3e38) rounds the sum
    # only: 393216 is exact in it, so the planted sum 393216.75 tells one rounding from two.
    x = torch.full((1 << 17,), 3.0, dtype=dtype)
    with R.faithful_reductions():
        m = R.apply_reduction(x, "mean")
        w = R.apply_reduction(x, "mean", torch.tensor(float(1 << 17), dtype=torch.float32))
    assert m.dtype == w.dtype == dtype and float(m) == 3.0 and float(w) == 3.0
    y = torch.tensor([393216.0, 0.75] + [0.0] * 2, dtype=torch.float32).to(dtype)
    with R.faithful_reductions():
        m = R.apply_reduction(y, "mean")
        w = R.apply_reduction(y, "mean", torch.tensor(4.0, dtype=dtype))
    exact = torch.tensor((float(y[0]) + float(y[1])) / 4, dtype=torch.float64).to(dtype)
    assert float(m) == float(exact) and float(w) == float(exact)


def test_float64_needs_no_help_and_keeps_its_dtype() -> None:
    x = CANCEL.double()
    with R.faithful_reductions():
        s, m = R.apply_reduction(x, "sum"), R.apply_reduction(x, "mean")
    assert s.dtype == m.dtype == torch.float64 and float(s) == 1.0 and float(m) == 0.25


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_scripted_losses_use_their_own_kernels() -> None:
    scripted = torch.jit.script(F.mse_loss)
    pred, target = torch.tensor([[1.0], [3.0]]), torch.tensor([[0.0], [1.0]])
    for reduction, want in (("mean", 2.5), ("sum", 5.0)):
        assert float(scripted(pred, target, reduction=reduction)) == want
    assert torch.equal(scripted(pred, target, reduction="none"), torch.tensor([[1.0], [4.0]]))
