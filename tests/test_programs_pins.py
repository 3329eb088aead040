"""The eager programs and the train-step signature, pinned: the SGD update, the learning rate's
checks, the cotangent of an unreduced loss, the gradients of unused parameters, and every name and
order of the train-step calling convention.

The mutation run (``scripts/mutation.sh programs``) holds ``compile_losses/programs.py`` and
``compile_losses/signature.py`` to these tests. Expected values are worked out here by hand.
"""
import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from compile_losses import losses as L
from compile_losses import programs as P
from compile_losses import signature as S


# --- check_lr ------------------------------------------------------------------------------------
@pytest.mark.parametrize("lr", [0.5, 3, np.float32(0.25), np.int64(2)])
def test_check_lr_takes_real_numbers_above_zero(lr: object) -> None:
    out = P.check_lr(lr)
    assert type(out) is float and out == float(lr)


@pytest.mark.parametrize("lr, kind, message", [
    (True, TypeError, "lr must be a real number, got bool"),
    ("0.1", TypeError, "lr must be a real number, got str"),
    (None, TypeError, "lr must be a real number, got NoneType"),
    (0, ValueError, "lr must be a finite number > 0, got 0.0"),
    (-0.5, ValueError, "lr must be a finite number > 0, got -0.5"),
    (float("nan"), ValueError, "lr must be a finite number > 0, got nan"),
    (float("inf"), ValueError, "lr must be a finite number > 0, got inf"),
])
def test_check_lr_refuses_with_the_argument_named(lr: object, kind: type, message: str) -> None:
    with pytest.raises(kind) as err:
        P.check_lr(lr)
    assert str(err.value) == message


def test_check_lr_names_the_argument_it_was_given() -> None:
    with pytest.raises(ValueError, match=r"^--lr must be a finite number > 0, got -1.0$"):
        P.check_lr(-1, "--lr")


# --- the update and the cotangent ------------------------------------------------------------------
def test_sgd_update_is_p_minus_lr_times_grad_and_changes_nothing_in_place() -> None:
    p = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.5])}
    g = {"w": torch.tensor([0.5, -1.0]), "b": torch.tensor([2.0])}
    out = P.sgd_update(p, g, 0.25)
    assert torch.equal(out["w"], torch.tensor([0.875, 2.25])) and torch.equal(out["b"], torch.tensor([0.0]))
    assert torch.equal(p["w"], torch.tensor([1.0, 2.0]))  # inputs untouched
    assert list(out) == ["w", "b"]
    # a tensor lr, as the traced graphs pass it
    assert torch.equal(P.sgd_update(p, g, torch.tensor(2.0))["b"], torch.tensor([-3.5]))


def test_seed_grad_is_none_for_a_scalar_and_the_seeded_cotangent_for_an_unreduced_loss() -> None:
    assert P.seed_grad(torch.tensor(3.0)) is None
    seed = P.seed_grad(torch.zeros(2, 3, dtype=torch.float64))
    # standard normal draws from the fixed seed, in float64 (written out here, not by the code)
    expected = torch.randn(2, 3, generator=torch.Generator().manual_seed(P.COTANGENT_SEED), dtype=torch.float64)
    assert seed is not None and seed.dtype == torch.float64 and torch.equal(seed, expected)
    assert len(set(seed.reshape(-1).tolist())) == 6  # not ones: every entry weighs differently
    # float32 gets the same draws rounded, and the values depend on the shape only
    assert torch.equal(P.seed_grad(torch.zeros(2, 3)), expected.float())
    assert torch.equal(P.cotangent((2, 3), torch.float64), expected)
    assert P.COTANGENT_SEED == 20261202
    one = P.seed_grad(torch.zeros(1))
    assert one is not None and one.shape == (1,) and torch.equal(one, expected.reshape(-1)[:1].float())


def test_cotangent_for_a_graph_input_takes_the_batch_for_the_named_dimension() -> None:
    got = P.cotangent_for(["batch", 3], 2, torch.float32)
    assert torch.equal(got, P.cotangent((2, 3), torch.float32))
    assert torch.equal(P.cotangent_for([4], 9, torch.float64), P.cotangent((4,), torch.float64))


def test_trainable_keeps_requires_grad_parameters_in_order() -> None:
    net = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    net[0].bias.requires_grad_(False)
    assert [n for n, _ in P.trainable(net)] == ["0.weight", "1.weight", "1.bias"]


# --- loss and gradient ---------------------------------------------------------------------------
def test_loss_and_grad_of_a_scalar_loss() -> None:
    pred, target = torch.tensor([[1.0], [3.0]]), torch.tensor([[0.0], [1.0]])
    value, dpred = P.eager_loss_and_grad(L.MSELoss())(pred, target)
    assert float(value) == 2.5                      # (1 + 4) / 2
    assert torch.equal(dpred, torch.tensor([[1.0], [2.0]]))  # 2 (p - t) / 2
    assert not value.requires_grad and not pred.requires_grad and pred.grad is None


def test_loss_and_grad_of_an_unreduced_loss_is_the_vjp_with_the_cotangent() -> None:
    pred, target = torch.tensor([1.0, 3.0]), torch.tensor([0.0, 1.0])
    value, dpred = P.autograd_loss_and_grad(lambda p, t: (p - t) ** 3)(pred, target)
    assert torch.equal(value, torch.tensor([1.0, 8.0]))
    c = P.cotangent((2,), torch.float32)
    assert torch.allclose(dpred, torch.tensor([3.0, 12.0]) * c, rtol=1e-6, atol=0)  # 3 (p - t)^2 * c


# --- the train step --------------------------------------------------------------------------------
def _net() -> nn.Module:
    net = nn.Linear(2, 1)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0, -1.0]]))
        net.bias.copy_(torch.tensor([0.5]))
    return net


def test_eager_train_step_gradients_and_update_by_hand() -> None:
    net = _net()
    x, t = torch.tensor([[1.0, 2.0], [3.0, 1.0]]), torch.tensor([[0.0], [1.0]])
    # pred = [-0.5, 2.5]; residual r = pred - t = [-0.5, 1.5]; loss = (0.25 + 2.25) / 2 = 1.25
    # dL/dpred = r; dL/dw = r^T x = [-0.5 + 4.5, -1 + 1.5] = [4, 0.5]; dL/db = 1
    step = P.eager_train_step(net, L.MSELoss(), 0.5)(x, t)
    assert isinstance(step, S.TrainStepResult)
    assert float(step.loss) == 1.25 and not step.loss.requires_grad
    assert torch.equal(step.grads["weight"], torch.tensor([[4.0, 0.5]]))
    assert torch.equal(step.grads["bias"], torch.tensor([1.0]))
    assert torch.equal(step.new_params["weight"], torch.tensor([[-1.0, -1.25]]))
    assert torch.equal(step.new_params["bias"], torch.tensor([0.0]))
    assert not step.new_params["weight"].requires_grad
    # nothing changed in place, no .grad left behind
    assert torch.equal(net.weight.detach(), torch.tensor([[1.0, -1.0]])) and net.weight.grad is None


def test_eager_train_step_reads_parameters_at_call_time_and_skips_frozen_ones() -> None:
    net = _net()
    step = P.eager_train_step(net, L.MSELoss(), 1.0)
    with torch.no_grad():
        net.bias.copy_(torch.tensor([1.5]))
    net.weight.requires_grad_(False)
    x, t = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0]])
    out = step(x, t)  # pred = 1 - 2 + 1.5 = 0.5; loss 0.25; dL/db = 1
    assert list(out.grads) == ["bias"] and float(out.loss) == 0.25
    assert torch.equal(out.new_params["bias"], torch.tensor([0.5]))


def test_a_parameter_the_loss_does_not_reach_gets_a_zero_gradient() -> None:
    used, unused = torch.tensor([2.0], requires_grad=True), torch.tensor([5.0, 6.0], requires_grad=True)
    step = P.autograd_train_step(lambda x: (used * x).sum(), [("used", used), ("unused", unused)], 0.1)
    out = step(torch.tensor([3.0]))
    assert float(out.loss) == 6.0
    assert torch.equal(out.grads["used"], torch.tensor([3.0])) and torch.equal(out.grads["unused"], torch.zeros(2))
    assert torch.equal(out.new_params["unused"], torch.tensor([5.0, 6.0]))
    assert torch.allclose(out.new_params["used"], torch.tensor([1.7]))


def test_an_unreduced_train_step_loss_is_seeded_with_the_cotangent() -> None:
    w = torch.tensor([2.0], requires_grad=True)
    out = P.autograd_train_step(lambda x: w * x, [("w", w)], 1.0)(torch.tensor([1.0, 3.0]))
    c = P.cotangent((2,), torch.float32)
    expected = c[0] * 1.0 + c[1] * 3.0  # sum of cotangent * x
    assert torch.allclose(out.grads["w"], expected.reshape(1), rtol=1e-6, atol=0)
    assert torch.allclose(out.new_params["w"], 2.0 - expected.reshape(1), rtol=1e-6, atol=0)


# --- the signature ---------------------------------------------------------------------------------
def test_opset_and_safe_names() -> None:
    assert S.OPSET == 18
    assert S.onnx_safe_name("fc1.weight") == "fc1_weight"
    assert S.onnx_safe_name("a-b.c_d9") == "a_b_c_d9"


class _TwoTargets(nn.Module):
    def forward(self, input, target, var, *, eps=1.0):  # noqa: ANN001
        return ((input - target) ** 2 / var).mean()


def test_target_names_follow_the_forward_signature_then_number_the_rest() -> None:
    assert S.target_names(_TwoTargets(), 2) == ["target", "var"]
    assert S.target_names(_TwoTargets(), 1) == ["target"]
    assert S.target_names(_TwoTargets(), 4) == ["target", "var", "target2", "target3"]
    assert S.target_names(object(), 2) == ["target0", "target1"]  # no forward: numbered


def test_signature_names_roles_and_order() -> None:
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    net[0].bias.requires_grad_(False)
    sig = S.TrainStepSignature.of(net, _TwoTargets(), 2)
    assert sig.params == ("0.weight", "2.weight", "2.bias") and sig.targets == ("target", "var")
    assert sig.input == "x" and sig.lr == "lr"
    assert sig.param_inputs == ["0_weight", "2_weight", "2_bias"]
    assert sig.input_names == ["0_weight", "2_weight", "2_bias", "x", "target", "var", "lr"]
    assert sig.input_roles == ["param", "param", "param", "input", "target", "target", "lr"]
    assert sig.output_names == ["loss", "grad_0_weight", "grad_2_weight", "grad_2_bias",
                                "new_0_weight", "new_2_weight", "new_2_bias"]
    assert sig.param_table[1] == {"name": "2.weight", "input": "2_weight", "grad": "grad_2_weight",
                                  "new": "new_2_weight"}
    assert len(sig.param_table) == 3


def test_signature_flat_inputs_and_result() -> None:
    sig = S.TrainStepSignature(("a", "b"), ("target",))
    flat = sig.flat_inputs({"b": 2, "a": 1, "extra": 9}, "X", ["T"], 0.1)
    assert flat == (1, 2, "X", "T", 0.1)
    with pytest.raises(KeyError) as err:
        sig.flat_inputs({"a": 1}, "X", ["T"], 0.1)
    assert err.value.args[0] == "params is missing ['b'] (the train step trains ['a', 'b'])"
    with pytest.raises(TypeError) as err:
        sig.flat_inputs({"a": 1, "b": 2}, "X", [], 0.1)
    assert str(err.value) == "the train step takes (x, target), got 1 tensors"
    with pytest.raises(TypeError) as err:
        sig.flat_inputs({"a": 1, "b": 2}, "X", ["T", "U"], 0.1)
    assert str(err.value) == "the train step takes (x, target), got 3 tensors"
    one = S.TrainStepSignature(("w",), ())
    assert one.result(["L", "g", "n"]) == S.TrainStepResult("L", {"w": "g"}, {"w": "n"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        one.input = "y"  # type: ignore[misc]
    res = sig.result(["L", "ga", "gb", "na", "nb"])
    assert res == S.TrainStepResult("L", {"a": "ga", "b": "gb"}, {"a": "na", "b": "nb"})
    with pytest.raises(ValueError) as err:
        sig.result(["L", "ga", "gb", "na"])
    assert str(err.value) == "a train step returns 1 + 2 x 2 outputs, got 4"


def test_signature_refuses_nets_without_trainable_parameters_and_clashing_names() -> None:
    frozen = nn.Linear(2, 1).requires_grad_(False)
    with pytest.raises(ValueError) as err:
        S.TrainStepSignature.of(frozen, L.MSELoss(), 1)
    assert str(err.value) == "net must have at least one parameter with requires_grad=True, got none in Linear"
    with pytest.raises(ValueError) as err:
        S.TrainStepSignature(("a.b", "a_b"), ("target",)).check_unique("owner")
    assert str(err.value) == ("graph input/output names must be unique, got 'a_b' twice (parameter names after "
                              "replacing '.' by '_', targets of owner)")

    class XTarget(nn.Module):
        def forward(self, input, x):  # noqa: ANN001  (a target named like the net's input)
            return (input - x).abs().mean()

    with pytest.raises(ValueError) as err:
        S.TrainStepSignature.of(nn.Linear(2, 1), XTarget(), 1)
    assert str(err.value).endswith("got 'x' twice (parameter names after replacing '.' by '_', targets of "
                                   "{}.{})".format(__name__, XTarget.__qualname__))
    S.TrainStepSignature(("a", "b"), ("target",)).check_unique("owner")  # distinct names pass


# --- the optimizer train step's refusals ----------------------------------------------------------
class _NetWithBeta1(nn.Module):
    """A net whose parameter is called ``beta1``: the name of Adam's hyper-parameter input (not an
    input of the plain train step, so only the optimizer step's own check can see the clash)."""

    def __init__(self) -> None:
        super().__init__()
        self.beta1 = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.beta1


def test_optimizer_signature_refuses_a_parameter_named_like_a_hyper_parameter() -> None:
    from compile_losses.optim import optimizer

    P.TrainStepSignature.of(_NetWithBeta1(), L.MSELoss(), 1)  # the plain train step has no beta1
    with pytest.raises(ValueError) as err:
        P.optim_signature(_NetWithBeta1(), L.MSELoss(), 1, optimizer("adam"))
    assert str(err.value) == ("graph input/output names must be unique, got 'beta1' twice (parameter names "
                              "after replacing '.' by '_', targets of compile_losses.losses.MSELoss)")


def test_optimizer_step_refuses_an_unreduced_loss_naming_its_shape() -> None:
    from compile_losses.optim import optimizer

    opt = optimizer("sgd")
    net = nn.Linear(3, 1)
    step = P.optimizer_train_step(net, L.MSELoss(reduction="none"), opt)
    params = dict(net.named_parameters())
    state = {n: {"step": torch.zeros(())} for n in params}
    hyper = {k: torch.tensor(v) for k, v in opt.hyper}
    with pytest.raises(ValueError) as err:
        step(params, {}, torch.ones(4, 3), torch.ones(4, 1), state=state, hyper=hyper)
    assert str(err.value) == ("loss must return a scalar to train with an optimizer (reduction 'mean' or "
                              "'sum'), got shape (4, 1)")


# --- micro-batch weights -------------------------------------------------------------------------
class _MeanWithoutReductionAttribute(nn.Module):
    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (pred - target).abs().mean()


def test_a_loss_without_a_reduction_attribute_counts_as_a_mean_over_samples() -> None:
    weight = P.micro_batch_weight(_MeanWithoutReductionAttribute())
    w = weight(torch.zeros(5, 3), torch.zeros(5, 3))
    assert w.dtype == torch.float64 and w.item() == 5.0


def test_the_divisor_gets_the_loss_settings_but_not_its_reduction() -> None:
    def counted(pred: torch.Tensor, target: torch.Tensor, *, ignore_index: int) -> torch.Tensor:
        return (target != ignore_index).sum()  # a user divisor that takes no `reduction`

    weight = P.micro_batch_weight(L.MSELoss(), counted, {"reduction": "mean", "ignore_index": 1})
    w = weight(torch.zeros(4, 3), torch.tensor([1, 0, 1, 2]))
    assert w.dtype == torch.float64 and w.item() == 2.0


# --- the eager torch.optim reference of a trajectory -------------------------------------------------
# y = x @ w for a Linear(2, 1) without bias, so MSE's value and gradient have a closed form,
# written here in numpy: mean: ((Xw - t)^2).mean(), 2/n X^T (Xw - t); sum: n times those.
_W0 = np.array([[1.0], [-0.5]])
_X1, _T1 = np.array([[1.0, 2.0], [0.5, -1.0], [2.0, 0.0]]), np.array([[0.5], [1.0], [3.0]])
_XA, _TA = np.array([[1.0, 1.0]]), np.array([[2.0]])
_XB, _TB = np.array([[0.0, 1.0], [3.0, -1.0]]), np.array([[1.0], [0.5]])


def _mse(w: np.ndarray, x: np.ndarray, t: np.ndarray, total: bool = False) -> "tuple[float, np.ndarray]":
    r = x @ w - t
    scale = 1.0 if total else 1.0 / len(x)
    return float((r ** 2).sum() * scale), 2.0 * scale * x.T @ r


def _linear_net() -> nn.Module:
    net = nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        net.weight.copy_(torch.from_numpy(_W0.T))
    return net


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a)


def _trajectory(reduction: str, weight_of, micro_weights) -> None:  # type: ignore[no-untyped-def]
    """Two SGD(lr=0.1, momentum=0.5) steps: one whole batch, then two uneven micro-batches whose
    gradients combine with ``micro_weights`` (normalized when the loss is a mean)."""
    from compile_losses.optim import optimizer

    total = reduction == "sum"
    net = _linear_net()
    losses, params, state = P.eager_optimizer_trajectory(
        net, L.MSELoss(reduction=reduction), optimizer("sgd", lr=0.1, momentum=0.5),
        [[(_t(_X1), _t(_T1))], [(_t(_XA), _t(_TA)), (_t(_XB), _t(_TB))]], weight=weight_of)
    # by hand
    l1, g1 = _mse(_W0, _X1, _T1, total)
    buf = g1
    w1 = _W0 - 0.1 * buf
    (la, ga), (lb, gb) = _mse(w1, _XA, _TA, total), _mse(w1, _XB, _TB, total)
    wa, wb = micro_weights
    norm = 1.0 if total else wa + wb
    l2, g2 = (wa * la + wb * lb) / norm, (wa * ga + wb * gb) / norm
    buf = 0.5 * buf + g2
    w2 = w1 - 0.1 * buf
    assert [round(float(v), 12) for v in losses] == [round(l1, 12), round(l2, 12)]
    assert list(params) == ["weight"] and list(state) == ["weight"]
    np.testing.assert_allclose(params["weight"].numpy(), w2.T, rtol=1e-12, atol=0)
    assert list(state["weight"]) == ["step", "momentum_buffer"] and float(state["weight"]["step"]) == 2.0
    np.testing.assert_allclose(state["weight"]["momentum_buffer"].numpy(), buf.T, rtol=1e-12, atol=0)
    assert torch.equal(net.weight.detach(), _t(_W0.T))  # the net handed in is not trained


def test_trajectory_of_a_mean_loss_weighs_micro_batches_by_their_samples() -> None:
    loss = L.MSELoss()
    _trajectory("mean", P.micro_batch_weight(loss), (1.0, 2.0))


def test_trajectory_weighs_micro_batches_by_the_weight_it_is_given() -> None:
    # a weight that reads the prediction and the targets: sum of targets + 0 * prediction's sum
    def weight(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        assert pred.shape == target.shape and not pred.requires_grad
        return target.sum() + 0.0 * pred.sum()

    _trajectory("mean", weight, (float(_TA.sum()), float(_TB.sum())))


def test_trajectory_of_a_sum_loss_adds_the_micro_batches() -> None:
    _trajectory("sum", None, (1.0, 1.0))


def test_trajectory_steps_adam_with_torch_and_returns_its_state() -> None:
    from compile_losses.optim import optimizer

    net = _linear_net()
    steps = [[(_t(_X1), _t(_T1))], [(_t(_XB), _t(_TB))], [(_t(_XA), _t(_TA))]]
    losses, params, state = P.eager_optimizer_trajectory(net, L.MSELoss(), optimizer("adam", lr=0.05), steps)
    # Adam by hand: m = b1 m + (1-b1) g, v = b2 v + (1-b2) g^2, w -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps)
    w, m, v = _W0.copy(), np.zeros_like(_W0), np.zeros_like(_W0)
    expect = []
    for k, (x, t) in enumerate([(_X1, _T1), (_XB, _TB), (_XA, _TA)], 1):
        value, g = _mse(w, x, t)
        expect.append(value)
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        w = w - 0.05 / (1 - 0.9 ** k) * m / (np.sqrt(v) / np.sqrt(1 - 0.999 ** k) + 1e-8)
    np.testing.assert_allclose([float(x) for x in losses], expect, rtol=1e-12)
    np.testing.assert_allclose(params["weight"].numpy(), w.T, rtol=1e-10)
    s = state["weight"]
    assert float(s["step"]) == 3.0 and s["step"].dtype == torch.float64
    np.testing.assert_allclose(s["exp_avg"].numpy(), m.T, rtol=1e-10)
    np.testing.assert_allclose(s["exp_avg_sq"].numpy(), v.T, rtol=1e-10)


def test_trajectory_leaves_frozen_parameters_alone_and_without_state() -> None:
    from compile_losses.optim import optimizer

    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1)).double()
    net[0].requires_grad_(False)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    _, params, state = P.eager_optimizer_trajectory(net, L.MSELoss(), optimizer("sgd", lr=0.1),
                                                     [[(_t(_X1), _t(_T1))]] * 2)
    assert list(params) == ["1.weight", "1.bias"] and list(state) == ["1.weight", "1.bias"]
    assert not torch.equal(params["1.weight"], before["1.weight"])
    assert all(float(s["step"]) == 2.0 for s in state.values())


# --- the optimizer step programs, by hand ------------------------------------------------------------
# pred = (x @ w + c) * s with w (2, 1) and c (1,) trained and s (1,) frozen, MSE; SGD with
# lr 0.1, momentum 0.5, weight_decay 0.1 (dampening 0). The numpy below is the whole expectation:
#   r = pred - t, dL/dpred = 2 r / n (mean) or 2 r (sum), dw = x^T (dL/dpred * s), dc = sum(dL/dpred * s)
#   g' = g + wd p; buf = g' on the first step, else momentum buf + g'; p <- p - lr buf
_SW0, _SC0, _SS = np.array([[1.0], [-0.5]]), np.array([0.25]), np.array([2.0])
_SGD = dict(lr=0.1, momentum=0.5, weight_decay=0.1)


class _Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.from_numpy(_SW0.copy()))
        self.c = nn.Parameter(torch.from_numpy(_SC0.copy()))
        self.s = nn.Parameter(torch.from_numpy(_SS.copy()), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.w + self.c) * self.s


def _scaled_grads(w, c, x, t, total=False):  # type: ignore[no-untyped-def]
    r = (x @ w + c) * _SS - t
    scale = 1.0 if total else 1.0 / len(x)
    dpred = 2.0 * scale * r * _SS
    return float((r ** 2).sum() * scale), x.T @ dpred, dpred.sum(axis=0)


def _sgd_by_hand(p, g, buf, first):  # type: ignore[no-untyped-def]
    g = g + 0.1 * p
    buf = g if first else 0.5 * buf + g
    return p - 0.1 * buf, buf


def _sgd():  # type: ignore[no-untyped-def]
    from compile_losses.optim import optimizer

    return optimizer("sgd", **_SGD)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy()


def test_optim_flat_example_and_flat_step_order_two_sgd_steps_by_hand() -> None:
    net, loss, opt = _Scaled(), L.MSELoss(), _sgd()
    x, t = _t(_X1), _t(np.array([[1.0], [0.0], [2.0]]))
    sig, flat = P.optim_flat_example(net, loss, (x, t), opt)
    assert sig.params == ("w", "c") and sig.frozen == ("s",) and sig.targets == ("target",)
    assert sig.state == ("step", "momentum_buffer") and sig.hyper == ("lr", "momentum", "dampening", "weight_decay")
    assert sig.optimizer == "sgd"
    assert len(flat) == len(sig.input_names) == 13
    w, c, s, xx, tt, sw, bw, sc, bc, lr, mom, damp, wd = flat
    assert torch.equal(w, _t(_SW0)) and torch.equal(c, _t(_SC0)) and torch.equal(s, _t(_SS))
    assert xx is x and tt is t
    assert float(sw) == 0.0 and float(sc) == 0.0 and torch.equal(bw, torch.zeros(2, 1, dtype=torch.float64))
    assert [float(v) for v in (lr, mom, damp, wd)] == [0.1, 0.5, 0.0, 0.1] and lr.dtype == torch.float64
    assert not w.requires_grad

    run = P.flat_optimizer_step(net, loss, opt, sig)
    out = run(*flat)
    assert len(out) == len(sig.output_names) == 9
    l1, gw, gc = _scaled_grads(_SW0, _SC0, _X1, _np(t))
    w1, bufw = _sgd_by_hand(_SW0, gw, None, True)
    c1, bufc = _sgd_by_hand(_SC0, gc, None, True)
    np.testing.assert_allclose(float(out[0]), l1, rtol=1e-12)
    np.testing.assert_allclose(_np(out[1]), gw, rtol=1e-12)
    np.testing.assert_allclose(_np(out[2]), gc, rtol=1e-12)
    np.testing.assert_allclose(_np(out[3]), w1, rtol=1e-12)
    np.testing.assert_allclose(_np(out[4]), c1, rtol=1e-12)
    assert float(out[5]) == 1.0 and float(out[7]) == 1.0
    np.testing.assert_allclose(_np(out[6]), bufw, rtol=1e-12)
    np.testing.assert_allclose(_np(out[8]), bufc, rtol=1e-12)

    # the second step from the first one's outputs: the momentum buffers now count
    x2, t2 = _t(_XB), _t(_TB)
    out2 = run(out[3], out[4], s, x2, t2, out[5], out[6], out[7], out[8], lr, mom, damp, wd)
    l2, gw2, gc2 = _scaled_grads(w1, c1, _XB, _TB)
    w2, bufw2 = _sgd_by_hand(w1, gw2, bufw, False)
    c2, bufc2 = _sgd_by_hand(c1, gc2, bufc, False)
    np.testing.assert_allclose(float(out2[0]), l2, rtol=1e-12)
    np.testing.assert_allclose(_np(out2[3]), w2, rtol=1e-12)
    np.testing.assert_allclose(_np(out2[4]), c2, rtol=1e-12)
    assert float(out2[5]) == 2.0
    np.testing.assert_allclose(_np(out2[6]), bufw2, rtol=1e-12)
    np.testing.assert_allclose(_np(out2[8]), bufc2, rtol=1e-12)
    # the hyper-parameters are read from the inputs: another lr, another update
    out3 = run(*flat[:9], torch.tensor(0.2, dtype=torch.float64), mom, damp, wd)
    np.testing.assert_allclose(_np(out3[3]), _SW0 - 0.2 * bufw, rtol=1e-12)
    assert torch.equal(net.w.detach(), _t(_SW0))  # nothing trained in place


def test_optim_step_module_holds_what_a_backend_keys_on_and_runs_the_flat_step() -> None:
    from compile_losses.optim import optimizer

    net, loss = _Scaled(), L.MSELoss()
    opt = optimizer("sgd", lr=0.1, momentum=0.5, nesterov=True)
    sig, flat = P.optim_flat_example(net, loss, (_t(_X1), _t(_T1)), opt)
    module = P.OptimStepModule(net, loss, opt, sig)
    assert module.net is net and module.loss is loss
    assert module.optimizer_name == "sgd"
    assert module.optimizer_flags == (("nesterov", True), ("maximize", False))
    got, want = module(*flat), P.flat_optimizer_step(net, loss, opt, sig)(*flat)
    assert len(got) == len(want) == 9 and all(torch.equal(a, b) for a, b in zip(got, want))


def test_dict_step_takes_and_returns_dicts_by_parameter_name() -> None:
    net, loss, opt = _Scaled(), L.MSELoss(), _sgd()
    x, t = _t(_X1), _t(_T1)
    sig, flat = P.optim_flat_example(net, loss, (x, t), opt)
    run = P.dict_step(sig, P.flat_optimizer_step(net, loss, opt, sig))
    params = {"w": _t(_SW0), "c": _t(_SC0)}
    out = run(params, {"s": _t(_SS)}, x, t, state=opt.init_state(params), hyper=opt.hyper_tensors())
    assert isinstance(out, S.OptimStepResult)
    l1, gw, gc = _scaled_grads(_SW0, _SC0, _X1, _T1)
    np.testing.assert_allclose(float(out.loss), l1, rtol=1e-12)
    assert list(out.grads) == ["w", "c"] and list(out.new_params) == ["w", "c"]
    np.testing.assert_allclose(_np(out.grads["c"]), gc, rtol=1e-12)
    np.testing.assert_allclose(_np(out.new_params["w"]), _sgd_by_hand(_SW0, gw, None, True)[0], rtol=1e-12)
    assert list(out.new_state["c"]) == ["step", "momentum_buffer"] and float(out.new_state["c"]["step"]) == 1.0


def _accum_start():  # type: ignore[no-untyped-def]
    opt = _sgd()
    params = {"w": _t(_SW0), "c": _t(_SC0)}
    return opt, params, {"s": _t(_SS)}, opt.init_state(params), opt.hyper_tensors()


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_accumulated_step_over_uneven_micro_batches_is_the_whole_batch_step(reduction: str) -> None:
    loss = L.MSELoss(reduction=reduction)
    opt, params, fixed, state, hyper = _accum_start()
    weight = P.micro_batch_weight(loss)
    assert (weight is None) == (reduction == "sum")
    step = P.accumulated_train_step(_Scaled(), loss, opt, weight)
    out = step(params, fixed, [(_t(_XA), _t(_TA)), (_t(_XB), _t(_TB))], state, hyper)
    # the whole batch of 1 + 2 samples at once, by hand
    xs, ts = np.concatenate([_XA, _XB]), np.concatenate([_TA, _TB])
    value, gw, gc = _scaled_grads(_SW0, _SC0, xs, ts, total=reduction == "sum")
    np.testing.assert_allclose(float(out.loss), value, rtol=1e-12)
    np.testing.assert_allclose(_np(out.grads["w"]), gw, rtol=1e-12)
    np.testing.assert_allclose(_np(out.grads["c"]), gc, rtol=1e-12)
    np.testing.assert_allclose(_np(out.new_params["w"]), _sgd_by_hand(_SW0, gw, None, True)[0], rtol=1e-12)
    np.testing.assert_allclose(_np(out.new_state["c"]["momentum_buffer"]), gc + 0.1 * _SC0, rtol=1e-12)
    assert float(out.new_state["w"]["step"]) == 1.0


def test_accumulated_step_of_one_micro_batch_is_the_plain_step() -> None:
    loss = L.MSELoss()
    opt, params, fixed, state, hyper = _accum_start()
    out = P.accumulated_train_step(_Scaled(), loss, opt, P.micro_batch_weight(loss))(
        params, fixed, [(_t(_X1), _t(_T1))], state, hyper)
    value, gw, _ = _scaled_grads(_SW0, _SC0, _X1, _T1)
    np.testing.assert_allclose(float(out.loss), value, rtol=1e-12)
    np.testing.assert_allclose(_np(out.grads["w"]), gw, rtol=1e-12)


def test_apply_normalizes_by_the_summed_weight_unless_told_not_to() -> None:
    opt, params, _, state, hyper = _accum_start()
    acc = {"loss": torch.tensor(6.0, dtype=torch.float64), "weight": torch.tensor(3.0, dtype=torch.float64),
           "grads": {"w": torch.tensor([[3.0], [-6.0]], dtype=torch.float64),
                     "c": torch.tensor([1.5], dtype=torch.float64)}}
    out = P.apply_accumulated(opt)(params, acc, state, hyper)  # normalize by default
    assert float(out.loss) == 2.0
    assert torch.equal(out.grads["w"], torch.tensor([[1.0], [-2.0]], dtype=torch.float64))
    np.testing.assert_allclose(_np(out.new_params["c"]), _SC0 - 0.1 * (0.5 + 0.1 * _SC0), rtol=1e-12)
    raw = P.apply_accumulated(opt, normalize=False)(params, acc, state, hyper)
    assert float(raw.loss) == 6.0 and torch.equal(raw.grads["c"], torch.tensor([1.5], dtype=torch.float64))


def test_flat_accumulated_step_packs_k_micro_batches_in_signature_order() -> None:
    net, loss = _Scaled(), L.MSELoss()
    opt, params, fixed, state, hyper = _accum_start()
    step_sig = P.optim_signature(net, loss, 1, opt)
    sig = S.AccumStepSignature(step_sig, 2)
    xa, ta = _X1[:2], _T1[:2]          # two micro-batches of one size, as the K-step graph takes them
    xb, tb = _X1[1:], _T1[1:]
    flat = sig.flat_inputs(params, fixed, [(_t(xa), _t(ta)), (_t(xb), _t(tb))], state, hyper)
    out = P.flat_accumulated_step(net, loss, opt, sig, P.equal_micro_batch_weight(loss))(*flat)
    assert len(out) == len(sig.output_names) == 9
    la, gwa, gca = _scaled_grads(_SW0, _SC0, xa, ta)
    lb, gwb, gcb = _scaled_grads(_SW0, _SC0, xb, tb)
    np.testing.assert_allclose(float(out[0]), (la + lb) / 2, rtol=1e-12)
    np.testing.assert_allclose(_np(out[1]), (gwa + gwb) / 2, rtol=1e-12)
    np.testing.assert_allclose(_np(out[2]), (gca + gcb) / 2, rtol=1e-12)
    np.testing.assert_allclose(_np(out[3]), _sgd_by_hand(_SW0, (gwa + gwb) / 2, None, True)[0], rtol=1e-12)
    np.testing.assert_allclose(_np(out[4]), _sgd_by_hand(_SC0, (gca + gcb) / 2, None, True)[0], rtol=1e-12)
    assert float(out[5]) == 1.0 and float(out[7]) == 1.0
    np.testing.assert_allclose(_np(out[8]), (gca + gcb) / 2 + 0.1 * _SC0, rtol=1e-12)


def test_equal_micro_batch_weight_is_one_none_or_the_registry_divisor() -> None:
    assert P.equal_micro_batch_weight(L.MSELoss(reduction="sum")) is None
    ones = P.equal_micro_batch_weight(L.MSELoss())
    w = ones(torch.zeros(5, 1), torch.zeros(5, 1))
    assert w.dtype == torch.float64 and w.shape == () and w.item() == 1.0 and w.device.type == "cpu"

    def counted(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (target > 0).sum()

    divisor = P.equal_micro_batch_weight(L.MSELoss(), counted)
    d = divisor(torch.zeros(4, 1), torch.tensor([[1.0], [0.0], [2.0], [3.0]]))
    assert d.dtype == torch.float64 and d.item() == 3.0
    with pytest.raises(ValueError, match="reduction 'mean' or 'sum', got reduction='none'"):
        P.equal_micro_batch_weight(L.MSELoss(reduction="none"))
