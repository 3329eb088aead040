"""Exported graphs keep the relative accuracy of eager in the tails of the logit losses.

Both ONNX exporters lower ``log1p`` to ``Log(1 + y)`` and onnxruntime's CPU ``Sigmoid`` is exact
only to ~1e-7 absolute, so before the export-only forms in ``compile_losses.functional``
(``_log1p``, ``_sigmoid``) a confident, correct logit lost every digit there: BCE at target 0,
logit -30 read 0 (exact: 9.4e-14), binary focal at -15 read 37% off, values and gradients alike.
Each check is against an independent float64 formula, at eager's own tolerance (the one
tests/test_losses_math.py holds eager to): forward graphs of both exporters, the loss-and-gradient
graph and the train-step graph.
"""
from typing import Callable, Dict

import pytest
import torch
from torch import Tensor, nn
from torch.testing import assert_close

from compile_losses import functional as F
from compile_losses import losses as L
from compile_losses._reduction import faithful_reductions
from compile_losses.backends import BACKENDS

pytestmark = pytest.mark.onnx

f64 = torch.float64
LOGITS = [-30.0, -15.0, -8.0, -3.0, 0.0, 3.0, 8.0, 15.0, 30.0]


def _softplus64(x: Tensor) -> Tensor:
    return torch.log1p(torch.exp(x))  # exact in float64 for |x| <= 30, its gradient too


def _bce64(x: Tensor, t: Tensor) -> Tensor:
    return t * _softplus64(-x) + (1.0 - t) * _softplus64(x)


def _focal64(x: Tensor, t: Tensor) -> Tensor:
    one_minus_pt = t * torch.sigmoid(-x) + (1.0 - t) * torch.sigmoid(x)
    return (0.25 * t + 0.75 * (1.0 - t)) * one_minus_pt ** 2 * _bce64(x, t)


# loss name -> (module class, float64 formula, eager's tolerance in tests/test_losses_math.py)
CASES: Dict[str, tuple] = {
    "bce_with_logits": (L.BCEWithLogitsLoss, _bce64, 2e-6),
    "binary_focal": (L.BinaryFocalLoss, _focal64, 1e-5),
}


def _exact(formula: Callable[[Tensor, Tensor], Tensor], x: Tensor, t: Tensor):
    x64 = x.double().requires_grad_(True)
    value = formula(x64, t.double())
    (grad,) = torch.autograd.grad(value.sum(), x64)
    return value.detach().float(), grad.float()


@pytest.mark.parametrize("target", [0.0, 1.0])
@pytest.mark.parametrize("backend", ["onnx", "onnx-legacy"])
@pytest.mark.parametrize("loss", list(CASES))
def test_exported_forward_is_exact_in_the_tails(loss: str, backend: str, target: float):
    cls, formula, rtol = CASES[loss]
    x = torch.tensor(LOGITS)
    t = torch.full_like(x, target)
    fn = BACKENDS[backend].prepare(cls(reduction="none"), (x, t))
    assert_close(fn(x, t), _exact(formula, x, t)[0], rtol=rtol, atol=0.0)


@pytest.mark.parametrize("target", [0.0, 1.0])
@pytest.mark.parametrize("loss", list(CASES))
def test_exported_loss_and_grad_is_exact_in_the_tails(loss: str, target: float):
    cls, formula, rtol = CASES[loss]
    x = torch.tensor(LOGITS)
    t = torch.full_like(x, target)
    # reduction "sum": each entry of the gradient is its own logit's d/dx; the value is checked
    # per logit by the train-step test (a sum over mixed magnitudes would hide the tail)
    grad = BACKENDS["onnx"].prepare_loss_and_grad(cls(reduction="sum"), (x, t))(x, t)[1]
    assert_close(grad, _exact(formula, x, t)[1], rtol=rtol, atol=0.0)


@pytest.mark.slow  # two train-step exports, ~9 s
@pytest.mark.parametrize("loss", list(CASES))
def test_exported_train_step_is_exact_in_the_tails(loss: str):
    # Linear(1, 1) with weight 1 and bias 0 predicts the logit itself: d/dbias is d/dpred and
    # d/dweight is x d/dpred, one logit per run (a sum over mixed magnitudes would hide the tail)
    cls, formula, rtol = CASES[loss]
    net = nn.Linear(1, 1)
    with torch.no_grad():
        net.weight.fill_(1.0)
        net.bias.zero_()
    x0, t0 = torch.zeros(1, 1), torch.zeros(1, 1)
    step = BACKENDS["onnx"].prepare_train_step(net, cls(reduction="sum"), (x0, t0), lr=0.37)
    for target in (0.0, 1.0):
        for logit in LOGITS:
            x, t = torch.full((1, 1), logit), torch.full((1, 1), target)
            value, grad = _exact(formula, x, t)
            out = step(x, t)
            assert_close(out.loss, value.reshape(()), rtol=rtol, atol=0.0, msg=lambda m: "loss at {}: {}".format(logit, m))
            assert_close(out.grads["bias"], grad.reshape(1), rtol=rtol, atol=0.0, msg=lambda m: "d/dbias at {}: {}".format(logit, m))
            assert_close(out.grads["weight"], (grad * logit).reshape(1, 1), rtol=rtol, atol=0.0,
                         msg=lambda m: "d/dweight at {}: {}".format(logit, m))


@pytest.mark.parametrize("name", ["_log1p", "_sigmoid"])
def test_export_forms_are_exact_in_float32_values_and_gradients(name: str):
    # the forms traced for export, run eagerly in float32 against float64 torch (both tails)
    if name == "_log1p":
        x = torch.cat([torch.logspace(-40, 0, 81), torch.tensor([0.0, 0.3, 0.999])])
        exact = lambda y: (torch.log1p(y), 1.0 / (1.0 + y))  # noqa: E731
    else:
        x = torch.linspace(-60.0, 60.0, 241)

        def exact(y: Tensor):
            # float64 torch.sigmoid's own gradient y(1 - y) reads 0 from x ~ 37 (y rounds to 1)
            e = torch.exp(-y.abs())
            return torch.where(y >= 0, 1.0 / (1.0 + e), e / (1.0 + e)), e / (1.0 + e) ** 2
    xf = x.float().requires_grad_(True)
    with faithful_reductions():
        value = getattr(F, name)(xf)
    (grad,) = torch.autograd.grad(value.sum(), xf)
    x64 = xf.detach().double()
    ref, ref_grad = exact(x64)
    # a few float32 ulps (eps 1.2e-7) relative, everywhere, the subnormal tail included
    assert_close(value.double(), ref, rtol=4e-7, atol=1e-44)
    assert_close(grad.double(), ref_grad, rtol=4e-7, atol=1e-44)


@pytest.mark.parametrize("loss", [L.SupConLoss(), L.NTXentLoss()], ids=["sup_con", "nt_xent"])
def test_float64_gradient_graph_keeps_python_float_settings_in_float64(loss: nn.Module):
    # the exporter stored temperature 0.1 as a float32 Constant cast to double (0.100000001490116):
    # value 1.2e-7 off where eager is exact; now a float64 initializer, exact to float64 rounding
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, 8, generator=gen, dtype=f64) * 1e-6
    t = torch.tensor([0, 1, 0, 1, 2, 2]) if isinstance(loss, L.SupConLoss) else x.clone()
    value, grad = BACKENDS["onnx"].prepare_loss_and_grad(loss, (x, t))(x, t)
    leaf = x.clone().requires_grad_(True)
    expected = loss(leaf, t)
    (expected_grad,) = torch.autograd.grad(expected, leaf)
    assert_close(value, expected.detach(), rtol=1e-13, atol=0.0)
    assert_close(grad, expected_grad, rtol=1e-12, atol=0.0)
