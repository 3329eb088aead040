"""The math of each loss, checked against things the code under test did not compute.

Every loss's float64 reference formula lives in its registry entry (``LossSpec.reference64``) and
the generic tests (test_losses_registry.py) compare every variant and reduction against it. Here:

- Hand-derived derivatives (log-cosh, Charbonnier, quantile) and hand-computed values (worked out
  on paper; the arithmetic is in the comments).
- Degenerate-case equivalences with torch built-ins: FocalLoss(gamma=0) is F.cross_entropy,
  BinaryFocalLoss(alpha<0, gamma=0) is BCE-with-logits, Tversky(0.5, 0.5) is Dice, Quantile(0.5) is
  half L1, SmoothL1(beta) is Huber(beta) / beta, InfoNCE is cross-entropy over cosine logits.
- Edge cases the generic tests cannot state: per-element weights, the class-weighted mean, spatial
  class targets, clamped variance, 0 log 0, overflow-free extremes, out-of-range class indices.
"""
import math
from typing import Callable, List

import pytest
import torch
import torch.nn.functional as TF
from torch import Tensor
from torch.testing import assert_close

from compile_losses import functional as F
from compile_losses import losses as L

REDUCTIONS = ["none", "mean", "sum"]
f64 = torch.float64


def _rand(*shape: int, seed: int = 0, scale: float = 1.0) -> Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=f64) * scale


def _grad(fn: Callable[..., Tensor], *args: Tensor) -> List[Tensor]:
    leaves = [a.detach().clone().requires_grad_() for a in args]
    return list(torch.autograd.grad(fn(*leaves).sum(), leaves))


# ---------------------------------------------------------------------------------------------
# log-cosh
# ---------------------------------------------------------------------------------------------
def test_log_cosh_derivative_is_tanh():
    x, t = _rand(6, 3, seed=1, scale=3.0), _rand(6, 3, seed=2)
    # d/dx log cosh(x - t) = tanh(x - t)
    (gx,) = _grad(lambda a: L.LogCoshLoss(reduction="none")(a, t), x)
    assert_close(gx, torch.tanh(x - t))


def test_log_cosh_hand_values_and_no_overflow():
    # log cosh 1 = log((e + 1/e) / 2) = 0.433780830483027; log cosh 0 = 0
    out = F.log_cosh_loss(torch.tensor([1.0, 0.0], dtype=f64), torch.zeros(2, dtype=f64), reduction="none")
    assert_close(out, torch.tensor([0.4337808304830271, 0.0], dtype=f64))
    # cosh(100) overflows float32; log cosh(100) = 100 - log 2 = 99.30685281944005, slope tanh(100) = 1
    x = torch.tensor([100.0, -100.0], requires_grad=True)
    out = F.log_cosh_loss(x, torch.zeros(2), reduction="none")
    assert_close(out, torch.tensor([99.30685281944005] * 2))
    (g,) = torch.autograd.grad(out.sum(), x)
    assert_close(g, torch.tensor([1.0, -1.0]))


# ---------------------------------------------------------------------------------------------
# Charbonnier
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("eps", [1e-3, 0.5])
def test_charbonnier_derivative(eps: float):
    x, t = _rand(5, 4, seed=3), _rand(5, 4, seed=4)
    # d/dx sqrt(d^2 + eps^2) = d / sqrt(d^2 + eps^2)
    (gx,) = _grad(lambda a: L.CharbonnierLoss(eps=eps, reduction="none")(a, t), x)
    d = (x - t).flatten().tolist()
    assert_close(gx, torch.tensor([v / math.hypot(v, eps) for v in d], dtype=f64).reshape(x.shape))


def test_charbonnier_hand_value():
    # sqrt(3^2 + 4^2) = 5; slope 3 / 5
    x = torch.tensor([3.0], dtype=f64, requires_grad=True)
    out = F.charbonnier_loss(x, torch.zeros(1, dtype=f64), eps=4.0)
    assert out.item() == 5.0
    assert torch.autograd.grad(out, x)[0].item() == pytest.approx(0.6, abs=1e-15)


# ---------------------------------------------------------------------------------------------
# quantile (pinball)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("q", [0.1, 0.5, 0.9])
def test_quantile_slopes(q: float):
    x, t = _rand(8, 2, seed=5), _rand(8, 2, seed=6)
    # under-prediction costs q per unit (slope -q), over-prediction 1 - q (slope 1 - q)
    slopes = [-q if b >= a else 1.0 - q for a, b in zip(x.flatten().tolist(), t.flatten().tolist())]
    (gx,) = _grad(lambda a: L.QuantileLoss(quantile=q, reduction="none")(a, t), x)
    assert_close(gx, torch.tensor(slopes, dtype=f64).reshape(x.shape))


def test_quantile_hand_values():
    # q = 0.9: predicting 0 for 1 costs 0.9 * 1; predicting 2 for 1 costs 0.1 * 1
    out = F.quantile_loss(torch.tensor([0.0, 2.0], dtype=f64), torch.ones(2, dtype=f64), quantile=0.9, reduction="none")
    assert_close(out, torch.tensor([0.9, 0.1], dtype=f64))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_quantile_half_is_half_l1(reduction: str):
    x, t = _rand(9, 3, seed=7), _rand(9, 3, seed=8)
    ours = lambda a: L.QuantileLoss(quantile=0.5, reduction=reduction)(a, t)  # noqa: E731
    half_l1 = lambda a: 0.5 * TF.l1_loss(a, t, reduction=reduction)  # noqa: E731
    assert_close(ours(x), half_l1(x))
    assert_close(_grad(ours, x), _grad(half_l1, x))


# ---------------------------------------------------------------------------------------------
# Huber / smooth L1
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("beta", [0.25, 1.0, 2.5])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_smooth_l1_is_huber_over_beta(reduction: str, beta: float):
    x, t = _rand(10, 2, seed=9, scale=2.0), _rand(10, 2, seed=10)
    ours = lambda a: L.SmoothL1Loss(beta=beta, reduction=reduction)(a, t)  # noqa: E731
    huber = lambda a: L.HuberLoss(delta=beta, reduction=reduction)(a, t) / beta  # noqa: E731
    assert_close(ours(x), huber(x))
    assert_close(_grad(ours, x), _grad(huber, x))


def test_smooth_l1_beta_zero_is_l1():
    x, t = _rand(10, seed=11), _rand(10, seed=12)
    assert_close(F.smooth_l1_loss(x, t, beta=0.0), TF.l1_loss(x, t))


def test_huber_hand_values():
    # |d| = 0.5 < 1: 0.5 * 0.25 = 0.125; |d| = 3: 1 * (3 - 0.5) = 2.5; delta = 2, |d| = 3: 2 * (3 - 1) = 4
    z = torch.zeros(2, dtype=f64)
    assert_close(F.huber_loss(torch.tensor([0.5, 3.0], dtype=f64), z, reduction="none"), torch.tensor([0.125, 2.5], dtype=f64))
    assert F.huber_loss(torch.tensor([3.0], dtype=f64), z[:1], delta=2.0).item() == 4.0


# ---------------------------------------------------------------------------------------------
# per-element weights (regression and BCE)
# ---------------------------------------------------------------------------------------------
_WEIGHTED = [
    (F.mse_loss, {}), (F.l1_loss, {}), (F.huber_loss, {"delta": 0.5}), (F.smooth_l1_loss, {"beta": 0.5}),
    (F.log_cosh_loss, {}), (F.charbonnier_loss, {}), (F.quantile_loss, {"quantile": 0.8}),
    (F.bce_with_logits_loss, {}),
]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("fn,kwargs", _WEIGHTED, ids=[f.__name__ for f, _ in _WEIGHTED])
def test_weight_rescales_each_element(fn, kwargs, reduction: str):
    x, t, w = _rand(7, 3, seed=13), torch.rand(7, 3, dtype=f64), torch.rand(7, 3, dtype=f64)
    unweighted = fn(x, t, reduction="none", **kwargs)
    weighted = w * unweighted
    expected = {"none": weighted, "sum": weighted.sum(), "mean": weighted.mean()}[reduction]
    assert_close(fn(x, t, weight=w, reduction=reduction, **kwargs), expected)
    # a zero weight is a mask: those elements get no gradient
    mask = (torch.arange(21).reshape(7, 3) % 2).to(f64)
    (g,) = _grad(lambda a: fn(a, t, weight=mask, reduction="sum", **kwargs), x)
    assert (g[mask == 0] == 0).all() and (g[mask == 1] != 0).any()


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_weight_matches_torch(reduction: str):
    x, t, w = _rand(6, 4, seed=14), torch.rand(6, 4, dtype=f64), torch.rand(6, 4, dtype=f64)
    pw = torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=f64)
    ours = lambda a: L.BCEWithLogitsLoss(pos_weight=pw, reduction=reduction)(a, t, w)  # noqa: E731
    ref = lambda a: TF.binary_cross_entropy_with_logits(a, t, weight=w, pos_weight=pw, reduction=reduction)  # noqa: E731
    assert_close(ours(x), ref(x))
    assert_close(_grad(ours, x), _grad(ref, x))


# ---------------------------------------------------------------------------------------------
# cross-entropy and multi-class focal
# ---------------------------------------------------------------------------------------------
def test_focal_hand_value():
    # two equal logits: p = 1/2, loss = (1/2)^2 * log 2 = 0.17328679513998632
    out = F.focal_loss(torch.zeros(1, 2, dtype=f64), torch.tensor([0]), gamma=2.0)
    assert_close(out, torch.tensor(0.25 * math.log(2.0), dtype=f64))
    assert out.item() == pytest.approx(0.17328679513998632, rel=1e-15)


_CLASS_VARIANTS = [
    {}, {"weight": torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0], dtype=f64)}, {"ignore_index": 1},
    {"weight": torch.tensor([0.2, 2.0, 0.5, 1.0, 3.0], dtype=f64), "ignore_index": 3},
]


@pytest.mark.parametrize("spatial", [False, True], ids=["flat", "spatial"])
@pytest.mark.parametrize("kwargs", _CLASS_VARIANTS, ids=["plain", "weight", "ignore", "weight+ignore"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_focal_gamma_zero_is_cross_entropy(reduction: str, kwargs, spatial: bool):
    shape = (6, 5, 3, 2) if spatial else (11, 5)
    x = _rand(*shape, seed=18)
    y = torch.randint(0, 5, (shape[0],) + shape[2:], generator=torch.Generator().manual_seed(19))
    ours = lambda a: L.FocalLoss(gamma=0.0, reduction=reduction, **kwargs)(a, y)  # noqa: E731
    ref = lambda a: TF.cross_entropy(a, y, reduction=reduction, **kwargs)  # noqa: E731
    assert_close(ours(x), ref(x))
    assert_close(_grad(ours, x), _grad(ref, x))
    # and our own cross-entropy, with label smoothing too
    ce = lambda a: L.CrossEntropyLoss(label_smoothing=0.15, reduction=reduction, **kwargs)(a, y)  # noqa: E731
    ce_ref = lambda a: TF.cross_entropy(a, y, label_smoothing=0.15, reduction=reduction, **kwargs)  # noqa: E731
    assert_close(ce(x), ce_ref(x))
    assert_close(_grad(ce, x), _grad(ce_ref, x))


def test_class_weighted_mean_divides_by_weights_of_kept_targets():
    x = _rand(4, 3, seed=20)
    y = torch.tensor([0, 1, 2, 1])
    w = torch.tensor([1.0, 2.0, 4.0], dtype=f64)
    for module in (L.CrossEntropyLoss, L.FocalLoss):
        none = module(weight=w, ignore_index=2, reduction="none")(x, y)
        mean = module(weight=w, ignore_index=2, reduction="mean")(x, y)
        assert none[2].item() == 0.0
        assert_close(mean, none.sum() / (1.0 + 2.0 + 2.0))  # weights of targets 0, 1, 1


def test_all_targets_ignored_mean_is_nan_with_zero_gradient_as_torch():
    x = _rand(3, 4, seed=21).requires_grad_()
    y = torch.full((3,), 2)
    for fn in (lambda a: F.cross_entropy_loss(a, y, ignore_index=2), lambda a: F.focal_loss(a, y, ignore_index=2)):
        out = fn(x)
        assert torch.isnan(out)
        (g,) = torch.autograd.grad(out, x)
        assert_close(g, torch.autograd.grad(TF.cross_entropy(x, y, ignore_index=2), x)[0])
        assert (g == 0).all()


def test_focal_is_finite_when_confident():
    # p_t rounds to 1 in float32: loss ~ 0 and a finite gradient, for gamma below and above 1
    x = torch.tensor([[100.0, 0.0, -100.0]], requires_grad=True)
    for gamma in (0.5, 2.0):
        out = F.focal_loss(x, torch.tensor([0]), gamma=gamma)
        (g,) = torch.autograd.grad(out, x)
        assert out.item() == pytest.approx(0.0, abs=1e-30) and torch.isfinite(g).all()


def test_class_index_out_of_range_raises_in_eager():
    # documented: torch's own index error in eager (a value check would cost a graph break)
    for fn in (F.cross_entropy_loss, F.focal_loss):
        with pytest.raises((IndexError, RuntimeError), match="out of bounds"):
            fn(torch.zeros(3, 4), torch.tensor([0, 4, 1]))


# ---------------------------------------------------------------------------------------------
# binary focal
# ---------------------------------------------------------------------------------------------
def test_binary_focal_hand_value():
    # x = 0, t = 1: CE = log 2, p_t = 1/2, (1/2)^2 = 1/4, alpha_t = 1/4 -> log(2) / 16 = 0.043321698784996576
    out = F.binary_focal_loss(torch.zeros(1, dtype=f64), torch.ones(1, dtype=f64), alpha=0.25, gamma=2.0)
    assert out.item() == pytest.approx(math.log(2.0) / 16.0, rel=1e-15)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_binary_focal_without_alpha_and_gamma_is_bce(reduction: str):
    x, t = _rand(5, 3, seed=24, scale=3.0), torch.rand(5, 3, dtype=f64)
    ours = lambda a: L.BinaryFocalLoss(alpha=-1.0, gamma=0.0, reduction=reduction)(a, t)  # noqa: E731
    ref = lambda a: TF.binary_cross_entropy_with_logits(a, t, reduction=reduction)  # noqa: E731
    assert_close(ours(x), ref(x))
    assert_close(_grad(ours, x), _grad(ref, x))


def test_binary_focal_is_finite_at_extreme_logits():
    x = torch.tensor([-40.0, 40.0, -40.0, 40.0], requires_grad=True)
    t = torch.tensor([0.0, 1.0, 1.0, 0.0])
    for gamma in (0.5, 2.0):
        out = F.binary_focal_loss(x, t, gamma=gamma, reduction="none")
        (g,) = torch.autograd.grad(out.sum(), x)
        assert torch.isfinite(out).all() and torch.isfinite(g).all()
        # confidently right: ~0; confidently wrong: ~ alpha_t * 40
        assert out[:2].max().item() < 1e-12
        assert_close(out[2:], torch.tensor([0.25 * 40.0, 0.75 * 40.0]), rtol=1e-6, atol=0)


# ---------------------------------------------------------------------------------------------
# Dice and Tversky
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("smooth", [0.0, 1.0])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_tversky_half_half_is_dice(reduction: str, smooth: float):
    x = _rand(5, 3, 4, 4, seed=29)
    t = (torch.rand(5, 3, 4, 4, generator=torch.Generator().manual_seed(30)) < 0.5).to(f64)
    # (TP + s) / (TP + FP/2 + FN/2 + s) = (2 TP + 2s) / (sum p + sum t + 2s): Dice with smooth 2s
    tv = lambda a: L.TverskyLoss(alpha=0.5, beta=0.5, smooth=smooth, reduction=reduction)(a, t)  # noqa: E731
    dice = lambda a: L.DiceLoss(smooth=2.0 * smooth, reduction=reduction)(a, t)  # noqa: E731
    assert_close(tv(x), dice(x))
    assert_close(_grad(tv, x), _grad(dice, x))
    # gradient of Dice against autograd of the independent torch formula
    def indep(a: Tensor) -> Tensor:
        p = torch.sigmoid(a).flatten(1)
        tt = t.flatten(1)
        return 1 - (2 * (p * tt).sum(1) + smooth) / (p.sum(1) + tt.sum(1) + smooth)

    assert_close(_grad(lambda a: L.DiceLoss(smooth=smooth, reduction="none")(a, t), x), _grad(indep, x))


def test_dice_and_tversky_hand_values():
    # p = 1/2 everywhere, target (1, 1, 1, 1), smooth 0: Dice = 1 - 2*2 / (2 + 4) = 1/3
    z = torch.zeros(1, 4, dtype=f64)
    assert_close(F.dice_loss(z, torch.ones(1, 4, dtype=f64), smooth=0.0), torch.tensor(1.0 / 3.0, dtype=f64))
    # target (1, 1, 0, 0): TP = 1, FP = 1, FN = 1; alpha 0.3, beta 0.7: 1 - 1 / (1 + 0.3 + 0.7) = 1/2
    t = torch.tensor([[1.0, 1.0, 0.0, 0.0]], dtype=f64)
    assert_close(F.tversky_loss(z, t, alpha=0.3, beta=0.7, smooth=0.0), torch.tensor(0.5, dtype=f64))
    # an empty mask with an all-negative prediction is perfect thanks to smooth: 1 - s / s = 0
    assert F.dice_loss(torch.full((1, 4), -100.0), torch.zeros(1, 4), smooth=1.0).item() == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# KL divergence, Gaussian and Poisson NLL edge cases
# ---------------------------------------------------------------------------------------------
def test_kl_div_zero_target_probability_is_finite():
    # 0 log 0 = 0: a target with zeros contributes nothing there, gradients stay finite
    logq = torch.log_softmax(_rand(3, 4, seed=31), dim=1)
    p = torch.tensor([[0.0, 0.5, 0.5, 0.0], [1.0, 0.0, 0.0, 0.0], [0.25] * 4], dtype=f64)
    ours = lambda a, b: F.kl_div_loss(a, b, reduction="none")  # noqa: E731
    ref = lambda a, b: TF.kl_div(a, b, reduction="none").sum(1)  # noqa: E731
    assert_close(ours(logq, p), ref(logq, p))
    assert_close(_grad(ours, logq, p)[0], _grad(ref, logq, p)[0])
    # by hand: row 2 is one-hot on class 0, KL = -log q_0
    assert_close(ours(logq, p)[1], -logq[1, 0])


def test_gaussian_nll_clamps_variance_value_not_gradient_as_torch():
    x, t = _rand(4, seed=32), _rand(4, seed=33)
    var = torch.tensor([1e-9, 1e-3, 0.5, 2.0], dtype=f64)
    ours = lambda a, v: F.gaussian_nll_loss(a, t, v, eps=1e-6, reduction="sum")  # noqa: E731
    ref = lambda a, v: TF.gaussian_nll_loss(a, t, v, eps=1e-6, reduction="sum")  # noqa: E731
    assert_close(ours(x, var), ref(x, var))
    for g, rg in zip(_grad(ours, x, var), _grad(ref, x, var)):
        assert_close(g, rg)
    # by hand: x = t, var = 1, not full: 0.5 * (log 1 + 0) = 0; full adds 0.5 log(2 pi)
    one = torch.ones(1, dtype=f64)
    assert F.gaussian_nll_loss(one, one, one).item() == 0.0
    assert F.gaussian_nll_loss(one, one, one, full=True).item() == pytest.approx(0.5 * math.log(2 * math.pi), rel=1e-15)


def test_poisson_nll_full_target_gradient_is_finite():
    # torch's Stirling term gives d/dtarget = NaN at target 0 (0 * log 0 through masked_fill);
    # ours is the true limit. d/dt [exp(x) - t x + stirling(t) 1{t > 1}] = -x (+ log t + 1/(2t) for t > 1)
    x = torch.tensor([0.3, -0.2, 0.1], dtype=f64)
    t = torch.tensor([0.0, 1.0, 3.0], dtype=f64)
    (gt,) = _grad(lambda b: F.poisson_nll_loss(x, b, full=True, reduction="sum"), t)
    expected = torch.tensor([-0.3, 0.2, -0.1 + math.log(3.0) + 1.0 / 6.0], dtype=f64)
    assert_close(gt, expected)


# ---------------------------------------------------------------------------------------------
# InfoNCE
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_info_nce_is_cross_entropy_over_cosine_logits(reduction: str):
    a, p = _rand(7, 4, seed=36), _rand(7, 4, seed=37)
    labels = torch.arange(7)
    ours = lambda x, y: L.InfoNCELoss(temperature=0.2, reduction=reduction)(x, y)  # noqa: E731

    def ref(x: Tensor, y: Tensor) -> Tensor:
        logits = TF.cosine_similarity(x[:, None, :], y[None, :, :], dim=-1) / 0.2
        return TF.cross_entropy(logits, labels, reduction=reduction)

    assert_close(ours(a, p), ref(a, p))
    for g, rg in zip(_grad(ours, a, p), _grad(ref, a, p)):
        assert_close(g, rg)


def test_info_nce_hand_value():
    # orthonormal pairs, tau = 1: logits = I, loss = -log(e / (e + 1)) = log(1 + 1/e) = 0.31326168751822286
    e = torch.eye(2, dtype=f64)
    assert F.info_nce_loss(e, e, temperature=1.0).item() == pytest.approx(0.31326168751822286, rel=1e-15)


# ---------------------------------------------------------------------------------------------
# the classic pitfall
# ---------------------------------------------------------------------------------------------
def test_column_prediction_never_broadcasts_against_flat_target():
    # nn.MSELoss would broadcast (10, 1) against (10,) to (10, 10) with only a warning
    with pytest.raises(ValueError, match=r"got input \(10, 1\) and target \(10,\)"):
        L.MSELoss()(torch.zeros(10, 1), torch.zeros(10))


# ---------------------------------------------------------------------------------------------
# issue 17's defects: each test fails on the code before its fix
# ---------------------------------------------------------------------------------------------
def test_info_nce_is_not_nt_xent_and_says_which_negatives_count():
    # InfoNCELoss called itself SimCLR's NT-Xent; it is the CLIP-style loss (N - 1 cross-view negatives)
    doc = L.InfoNCELoss.__doc__ or ""
    assert "(NT-Xent)" not in doc and "N - 1" in doc and "NTXentLoss" in doc
    a, p = _rand(6, 5, seed=40), _rand(6, 5, seed=41)
    assert abs(F.info_nce_loss(a, p, temperature=0.5).item() - F.nt_xent_loss(a, p, temperature=0.5).item()) > 0.1


def test_nt_xent_hand_value():
    # z = (e1, e2, e1, e2), tau = 1: view 0's positive has cosine 1, its 2N - 2 = 2 negatives cosine 0
    # (one of them the other anchor): -1 + log(e^1 + e^0 + e^0) = log(2 + e) - 1 = 0.5514447139320511
    e = torch.eye(2, dtype=f64)
    assert F.nt_xent_loss(e, e, temperature=1.0).item() == pytest.approx(math.log(2.0 + math.e) - 1.0, rel=1e-15)
    # InfoNCE on the same batch has only the cross-view negative: log(1 + 1/e)
    assert F.info_nce_loss(e, e, temperature=1.0).item() == pytest.approx(math.log(1.0 + math.exp(-1.0)), rel=1e-15)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_nt_xent_is_cross_entropy_over_all_other_views(reduction: str):
    a, p = _rand(5, 4, seed=42), _rand(5, 4, seed=43)
    ours = lambda x, y: L.NTXentLoss(temperature=0.3, reduction=reduction)(x, y)  # noqa: E731

    def ref(x: Tensor, y: Tensor) -> Tensor:  # SimCLR's formulation with torch's cross-entropy
        z = torch.cat([x, y])
        logits = TF.cosine_similarity(z[:, None, :], z[None, :, :], dim=-1) / 0.3
        logits = logits - torch.diag(torch.full((10,), float("inf"), dtype=f64)).nan_to_num(posinf=1e30)
        labels = torch.cat([torch.arange(5, 10), torch.arange(0, 5)])
        per_view = TF.cross_entropy(logits, labels, reduction="none")
        per_pair = 0.5 * (per_view[:5] + per_view[5:])
        return {"none": per_pair, "mean": per_view.mean(), "sum": per_pair.sum()}[reduction]

    assert_close(ours(a, p), ref(a, p))
    for g, rg in zip(_grad(ours, a, p), _grad(ref, a, p)):
        assert_close(g, rg)


@pytest.mark.parametrize("dtype", [torch.float32, f64], ids=["float32", "float64"])
@pytest.mark.parametrize("logit", [-100.0, -200.0, -1000.0])
def test_empty_mask_with_smooth_zero_is_the_limit_not_nan(logit: float, dtype: torch.dtype):
    # an empty target and a saturated prediction: 0/0 before the fix (float32 from -104 down)
    x = torch.full((2, 1, 3, 3), logit, dtype=dtype, requires_grad=True)
    t = torch.zeros(2, 1, 3, 3, dtype=dtype)
    for fn in (lambda a: F.dice_loss(a, t, smooth=0.0, reduction="sum"),
               lambda a: F.tversky_loss(a, t, alpha=0.3, beta=0.7, smooth=0.0, reduction="sum"),
               lambda a: F.tversky_loss(a, t, alpha=0.0, beta=1.0, smooth=0.0, reduction="sum")):
        out = fn(x)
        (g,) = torch.autograd.grad(out, x)
        assert out.item() == 2.0  # each sample scores 1, as 1 - 0 / sum(p) does for any p > 0
        assert torch.isfinite(g).all() and (g == 0).all()
    # with smooth > 0 an empty mask predicted empty is a perfect score
    assert F.dice_loss(x.detach(), t, smooth=1.0).item() == pytest.approx(0.0, abs=1e-6)


_TAIL_LOGITS = [-50.0, -30.0, -15.0, -8.0, -3.0, 0.0, 3.0, 8.0, 15.0, 30.0, 50.0]


@pytest.mark.parametrize("target", [0.0, 1.0])
def test_bce_is_exact_for_confident_correct_logits_in_float32(target: float):
    # (1 - t) x + softplus(-x) cancels for t = 0, x = -15 (value 3.06e-7 lost in float32)
    x = torch.tensor(_TAIL_LOGITS)
    t = torch.full_like(x, target)
    ours = lambda a: F.bce_with_logits_loss(a, t, reduction="none")  # noqa: E731
    exact = lambda a: t.double() * torch.log1p(torch.exp(-a)) + (1 - t.double()) * torch.log1p(torch.exp(a))  # noqa: E731
    assert_close(ours(x), exact(x.double()).float(), rtol=2e-6, atol=0.0)
    # gradient: sigmoid(x) - t, to full relative accuracy as well (written as -sigmoid(-x) for t = 1)
    x64, t64 = x.double(), t.double()
    slope = (1 - t64) * torch.sigmoid(x64) - t64 * torch.sigmoid(-x64)
    assert_close(_grad(ours, x)[0], slope.float(), rtol=2e-6, atol=0.0)


@pytest.mark.parametrize("target", [0.0, 1.0])
def test_binary_focal_is_exact_for_confident_correct_logits_in_float32(target: float):
    # target 0, logit -15: 2.1e-20 (was 0.0); logit -8: was off by 8.6e-4 relative
    x = torch.tensor([v for v in _TAIL_LOGITS if abs(v) <= 15.0])
    t = torch.full_like(x, target)
    ours = lambda a: F.binary_focal_loss(a, t, reduction="none")  # noqa: E731

    def exact(a: Tensor) -> Tensor:
        t64 = t.double()
        ce = t64 * torch.log1p(torch.exp(-a)) + (1 - t64) * torch.log1p(torch.exp(a))
        one_minus_pt = t64 * torch.sigmoid(-a) + (1 - t64) * torch.sigmoid(a)
        return (0.25 * t64 + 0.75 * (1 - t64)) * one_minus_pt ** 2 * ce

    assert_close(ours(x), exact(x.double()).float(), rtol=1e-5, atol=0.0)
    if target == 0.0:
        assert ours(x)[0].item() == pytest.approx(2.1e-20, rel=0.01)  # the value at -15
    assert_close(_grad(ours, x)[0], _grad(exact, x.double())[0].float(), rtol=1e-5, atol=0.0)


# ---------------------------------------------------------------------------------------------
# multi-class Dice and Tversky (softmax over classes)
# ---------------------------------------------------------------------------------------------
def _seg(n: int = 3, c: int = 4, h: int = 5, seed: int = 50):
    x = _rand(n, c, h, h, seed=seed, scale=2.0)
    y = torch.randint(0, c, (n, h, h), generator=torch.Generator().manual_seed(seed + 1))
    return x, y


@pytest.mark.parametrize("average", ["macro", "micro"])
def test_multiclass_tversky_half_half_is_multiclass_dice(average: str):
    x, y = _seg()
    tv = lambda a: L.MultiClassTverskyLoss(alpha=0.5, beta=0.5, smooth=0.5, average=average, reduction="none")(a, y)  # noqa: E731
    dice = lambda a: L.MultiClassDiceLoss(smooth=1.0, average=average, reduction="none")(a, y)  # noqa: E731
    assert_close(tv(x), dice(x))
    assert_close(_grad(tv, x), _grad(dice, x))


def test_multiclass_dice_of_two_classes_without_background_is_binary_dice():
    # softmax over logits (0, x) is sigmoid(x): class 1 alone is the sigmoid Dice of x
    x = _rand(4, 1, 3, 3, seed=52, scale=2.0)
    y = (torch.rand(4, 3, 3, generator=torch.Generator().manual_seed(53)) < 0.5).long()
    ours = lambda a: L.MultiClassDiceLoss(include_background=False, reduction="none")(  # noqa: E731
        torch.cat([torch.zeros_like(a), a], dim=1), y)
    binary = lambda a: L.DiceLoss(reduction="none")(a, y[:, None].to(f64))  # noqa: E731
    assert_close(ours(x), binary(x))
    assert_close(_grad(ours, x), _grad(binary, x))


def test_multiclass_one_hot_target_equals_index_target():
    x, y = _seg(seed=54)
    one_hot = TF.one_hot(y, 4).movedim(-1, 1).to(f64)
    for module in (L.MultiClassDiceLoss(average="generalized"), L.MultiClassTverskyLoss(gamma=2.0)):
        assert_close(module(x, one_hot), module(x, y))


def test_multiclass_ignored_pixels_count_nowhere():
    # ignoring pixels equals dropping them: one sample, pixels flattened
    x, y = _seg(n=1, seed=56)
    y[0, 0, :3] = 2
    keep = (y != 2).flatten()
    flat_x, flat_y = x.flatten(2), y.flatten(1)
    dropped_y = torch.where(flat_y == 2, torch.zeros_like(flat_y), flat_y)
    for cls, kw in ((L.MultiClassDiceLoss, {"jaccard": True}), (L.MultiClassTverskyLoss, {"alpha": 0.3, "beta": 0.7})):
        ours = cls(ignore_index=2, **kw)(x, y)
        ref = cls(**kw)(flat_x[:, :, keep], dropped_y[:, keep])
        assert_close(ours, ref)


def test_multiclass_dice_hand_values():
    # saturated logits, 2 classes, 4 pixels: target (0, 0, 1, 1), prediction (0, 1, 1, 1), smooth 0
    x = torch.tensor([[[40.0, -40.0, -40.0, -40.0], [-40.0, 40.0, 40.0, 40.0]]], dtype=f64)
    y = torch.tensor([[0, 0, 1, 1]])
    # class 0: I = 1, S = 1 + 2 = 3, D = 2/3; class 1: I = 2, S = 3 + 2 = 5, D = 4/5
    # macro: 1 - (2/3 + 4/5)/2 = 4/15; micro: 1 - 2*3 / 8 = 1/4; jaccard macro: 1 - (1/2 + 2/3)/2 = 5/12
    assert_close(F.multiclass_dice_loss(x, y, smooth=0.0), torch.tensor(4.0 / 15.0, dtype=f64))
    assert_close(F.multiclass_dice_loss(x, y, smooth=0.0, average="micro"), torch.tensor(0.25, dtype=f64))
    assert_close(F.multiclass_dice_loss(x, y, smooth=0.0, jaccard=True), torch.tensor(5.0 / 12.0, dtype=f64))
    # generalized: volumes 2 and 2, equal weights 1/4: the same as micro here
    assert_close(F.multiclass_dice_loss(x, y, smooth=0.0, average="generalized"), torch.tensor(0.25, dtype=f64))
    # target (0, 0, 0, 1): volumes 3 and 1, weights 1/9 and 1; class 0: I = 1, S = 4; class 1: I = 1, S = 4
    y2 = torch.tensor([[0, 0, 0, 1]])
    gdl = 1.0 - 2.0 * (1 / 9 * 1 + 1 * 1) / (1 / 9 * 4 + 1 * 4)
    assert_close(F.multiclass_dice_loss(x, y2, smooth=0.0, average="generalized"), torch.tensor(gdl, dtype=f64))
    # focal Tversky, alpha 0.3, beta 0.7, gamma 2, class 1 of y: TP = 2, FP = 1, FN = 0: T = 2 / 2.3
    t1 = 2.0 / 2.3
    # class 0: TP = 1, FP = 0, FN = 1: T = 1 / 1.7
    t0 = 1.0 / 1.7
    expected = 0.5 * ((1 - t0) ** 2 + (1 - t1) ** 2)
    assert_close(F.multiclass_tversky_loss(x, y, alpha=0.3, beta=0.7, gamma=2.0, smooth=0.0),
                 torch.tensor(expected, dtype=f64))


def test_log_dice_and_squared_pred_hand_values():
    x = torch.tensor([[[40.0, -40.0, -40.0, -40.0], [-40.0, 40.0, 40.0, 40.0]]], dtype=f64)
    y = torch.tensor([[0, 0, 1, 1]])
    # per-class Dice 2/3 and 4/5 (see above): log-Dice macro averages -log of each, micro -log(3/4)
    expected = 0.5 * (-math.log(2.0 / 3.0) - math.log(4.0 / 5.0))
    assert_close(F.multiclass_dice_loss(x, y, smooth=0.0, log_loss=True), torch.tensor(expected, dtype=f64))
    assert_close(F.multiclass_dice_loss(x, y, smooth=0.0, log_loss=True, average="micro"),
                 torch.tensor(-math.log(0.75), dtype=f64))
    # Milletari's denominator: p = 1/2 on 4 pixels, all positive: 1 - 2*2 / (4 * 1/4 + 4) = 1/5
    z = torch.zeros(1, 4, dtype=f64)
    assert_close(F.dice_loss(z, torch.ones(1, 4, dtype=f64), smooth=0.0, squared_pred=True), torch.tensor(0.2, dtype=f64))


# ---------------------------------------------------------------------------------------------
# cross-entropy with probability targets (mixup, distillation)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spatial", [False, True], ids=["flat", "spatial"])
@pytest.mark.parametrize("kwargs", [{}, {"label_smoothing": 0.2},
                                    {"weight": torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0], dtype=f64), "label_smoothing": 0.1}],
                         ids=["plain", "smoothing", "weight+smoothing"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_with_probability_targets_is_torchs(reduction: str, kwargs, spatial: bool):
    shape = (6, 5, 3, 2) if spatial else (9, 5)
    x = _rand(*shape, seed=60)
    t = torch.softmax(_rand(*shape, seed=61), dim=1)
    ours = lambda a, b: L.CrossEntropyLoss(reduction=reduction, **kwargs)(a, b)  # noqa: E731
    ref = lambda a, b: TF.cross_entropy(a, b, reduction=reduction, **kwargs)  # noqa: E731
    assert_close(ours(x, t), ref(x, t))
    for g, rg in zip(_grad(ours, x, t), _grad(ref, x, t)):
        assert_close(g, rg)


def test_cross_entropy_one_hot_probabilities_equal_class_indices():
    x = _rand(7, 4, seed=62)
    y = torch.randint(0, 4, (7,), generator=torch.Generator().manual_seed(63))
    one_hot = TF.one_hot(y, 4).to(f64)
    for reduction in REDUCTIONS:
        assert_close(F.cross_entropy_loss(x, one_hot, label_smoothing=0.3, reduction=reduction),
                     F.cross_entropy_loss(x, y, label_smoothing=0.3, reduction=reduction))
    # mixup: a convex mix of two one-hot targets is the same mix of the two losses
    y2 = torch.roll(y, 1)
    mixed = 0.7 * one_hot + 0.3 * TF.one_hot(y2, 4).to(f64)
    assert_close(F.cross_entropy_loss(x, mixed, reduction="none"),
                 0.7 * F.cross_entropy_loss(x, y, reduction="none") + 0.3 * F.cross_entropy_loss(x, y2, reduction="none"))


# ---------------------------------------------------------------------------------------------
# binary focal, Dice, Tversky: ignore_index, pos_weight, weights, RetinaNet's normalization
# ---------------------------------------------------------------------------------------------
def _binary_with_void(seed: int):
    x = _rand(1, 12, seed=seed, scale=2.0)
    t = (torch.rand(1, 12, generator=torch.Generator().manual_seed(seed + 1)) < 0.5).to(f64)
    t[0, ::4] = 255.0
    return x, t, t[0] != 255.0


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_ignored_elements_equal_dropped_elements(reduction: str):
    x, t, keep = _binary_with_void(70)
    xs, ts = x[:, keep], t[:, keep]
    for fn, kw in ((F.binary_focal_loss, {"gamma": 1.5}), (F.dice_loss, {"smooth": 0.5}),
                   (F.tversky_loss, {"alpha": 0.3, "beta": 0.7})):
        assert_close(fn(x, t, ignore_index=255, reduction=reduction, **kw), fn(xs, ts, reduction=reduction, **kw))
        (g,) = _grad(lambda a: fn(a, t, ignore_index=255, reduction=reduction, **kw), x)
        assert (g[0, ~keep] == 0).all()


def test_binary_focal_positives_normalization_is_retinanets():
    # torchvision's RetinaNet: sigmoid_focal_loss(..., reduction="sum") / max(1, number of positives)
    x, t, keep = _binary_with_void(72)
    none = F.binary_focal_loss(x, t, ignore_index=255, reduction="none")
    positives = float(((t == 1.0) & keep).sum())
    assert_close(F.binary_focal_loss(x, t, ignore_index=255, normalization="positives"), none.sum() / max(1.0, positives))
    # no positive at all: divided by 1, not 0
    zeros = torch.zeros_like(x)
    assert_close(F.binary_focal_loss(x, zeros, normalization="positives"), F.binary_focal_loss(x, zeros, reduction="sum"))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_binary_focal_pos_weight_and_weight_without_focusing_are_torchs_bce(reduction: str):
    x, t, w = _rand(6, 3, seed=74, scale=3.0), torch.rand(6, 3, dtype=f64), torch.rand(6, 3, dtype=f64)
    pw = torch.tensor([0.5, 2.0, 3.0], dtype=f64)
    ours = lambda a: L.BinaryFocalLoss(alpha=-1.0, gamma=0.0, pos_weight=pw, reduction=reduction)(a, t, w)  # noqa: E731
    ref = lambda a: TF.binary_cross_entropy_with_logits(a, t, weight=w, pos_weight=pw, reduction=reduction)  # noqa: E731
    assert_close(ours(x), ref(x))
    assert_close(_grad(ours, x), _grad(ref, x))


# ---------------------------------------------------------------------------------------------
# contrastive: explicit negatives (info-nce-pytorch) and label-based positives (SupCon)
# ---------------------------------------------------------------------------------------------
def test_info_nce_with_negatives_is_cross_entropy_with_the_positive_first():
    a, p = _rand(5, 4, seed=80), _rand(5, 4, seed=81)
    for negatives in (_rand(7, 4, seed=82), _rand(5, 3, 4, seed=83)):
        n = TF.normalize(negatives, dim=-1)
        neg = TF.normalize(a, dim=1) @ n.t() if n.dim() == 2 else torch.einsum("nd,nmd->nm", TF.normalize(a, dim=1), n)
        logits = torch.cat([TF.cosine_similarity(a, p, dim=1)[:, None], neg], dim=1) / 0.2
        ref = TF.cross_entropy(logits, torch.zeros(5, dtype=torch.long), reduction="none")
        assert_close(F.info_nce_loss(a, p, negatives, temperature=0.2, reduction="none"), ref)
    # hand value: orthonormal positive and one orthogonal negative, tau = 1: log(1 + e^-1)
    e = torch.eye(2, dtype=f64)
    assert F.info_nce_loss(e[:1], e[:1], e[1:], temperature=1.0).item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-15)


def test_sup_con_hand_values_and_pairs_as_nt_xent():
    # x0 = x1 = e1 (label 0), x2 = e2 (label 1), tau = 1: anchor 0's positive has s = 1, its other
    # candidate s = 0: log(1 + e^-1); x2 has no positive: 0, left out of the mean
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=f64)
    y = torch.tensor([0, 0, 1])
    expected = math.log(1 + math.exp(-1))
    assert_close(F.sup_con_loss(x, y, temperature=1.0, reduction="none"), torch.tensor([expected, expected, 0.0], dtype=f64))
    assert F.sup_con_loss(x, y, temperature=1.0).item() == pytest.approx(expected, rel=1e-15)
    # two views of N samples labelled by sample: exactly NT-Xent (one positive, 2N - 2 negatives)
    a, p = _rand(4, 5, seed=84), _rand(4, 5, seed=85)
    labels = torch.cat([torch.arange(4), torch.arange(4)])
    assert_close(F.sup_con_loss(torch.cat([a, p]), labels, temperature=0.3),
                 F.nt_xent_loss(a, p, temperature=0.3))
    # no anchor with a positive (distinct labels, or a batch of 1): 0 with a zero gradient, as pml
    for labels, xs in ((torch.tensor([0, 1, 2]), x), (torch.tensor([4]), x[:1])):
        xs = xs.clone().requires_grad_()
        out = F.sup_con_loss(xs, labels)
        assert out.item() == 0.0 and (torch.autograd.grad(out, xs)[0] == 0).all()


# ---------------------------------------------------------------------------------------------
# several quantiles at once
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_multi_quantile_columns_are_quantile_losses(reduction: str):
    x, t = _rand(6, 4, 3, seed=90), _rand(6, 4, seed=91)
    qs = [0.1, 0.5, 0.9]
    columns = torch.stack([F.quantile_loss(x[..., k], t, quantile=q, reduction="none") for k, q in enumerate(qs)], -1)
    expected = {"none": columns, "mean": columns.mean(), "sum": columns.sum()}[reduction]
    assert_close(F.multi_quantile_loss(x, t, quantiles=qs, reduction=reduction), expected)


def test_multi_quantile_hand_value_and_pytorch_forecasting_convention():
    # target 1; predictions 0 (q = 0.1: under by 1 costs 0.1) and 2 (q = 0.9: over by 1 costs 0.1)
    out = F.multi_quantile_loss(torch.tensor([[0.0, 2.0]], dtype=f64), torch.ones(1, dtype=f64), quantiles=[0.1, 0.9])
    assert out.item() == pytest.approx(0.1, rel=1e-15)
    # pytorch-forecasting's QuantileLoss doubles the pinball loss: its median is the L1 loss, ours half of it
    x, t = _rand(5, 1, seed=92), _rand(5, seed=93)
    assert_close(2.0 * F.multi_quantile_loss(x, t, quantiles=[0.5]), TF.l1_loss(x[:, 0], t))


def test_binary_focal_class_alpha_is_one_alpha_per_last_dimension_class():
    x = _rand(5, 3, seed=76, scale=2.0)
    t = (torch.rand(5, 3, generator=torch.Generator().manual_seed(77)) < 0.5).to(f64)
    alphas = [0.1, 0.5, 0.8]
    ours = F.binary_focal_loss(x, t, class_alpha=torch.tensor(alphas, dtype=f64), reduction="none")
    for c, a in enumerate(alphas):  # column c is the scalar-alpha loss with alpha_c
        assert_close(ours[:, c], F.binary_focal_loss(x[:, c], t[:, c], alpha=a, reduction="none"))
