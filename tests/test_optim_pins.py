"""The functional optimizers' contract, pinned word for word: every refusal of ``optimizer()`` and
``with_hyper()`` (whole messages, the boundaries each check draws), the layout helpers, and
``state_from_torch`` (torch's state read into this module's layout, before and after steps).

The mutation run (``scripts/mutation.sh optim``) holds ``compile_losses/optim.py`` to these tests
and tests/test_optim.py (which checks the updates against torch.optim). Expected messages are
written out here from the documented argument names; expected states are worked out by hand.
"""
import math

import pytest
import torch

from compile_losses.optim import flat_state, hyper_from, optimizer, unflat_state

SGD_TAKES = "lr, momentum, dampening, weight_decay, nesterov, maximize"
ADAM_TAKES = "lr, beta1, beta2, eps, weight_decay, amsgrad, maximize, betas"


@pytest.mark.parametrize("name, args, kind, message", [
    ("rmsprop", {}, ValueError, "optimizer must be one of 'sgd', 'adam', 'adamw', got 'rmsprop'"),
    (3, {}, ValueError, "optimizer must be one of 'sgd', 'adam', 'adamw', got 3"),
    ("sgd", {"betas": (0.9, 0.9)}, ValueError,
     "optimizer_args for sgd take {}, got unknown 'beta1', 'beta2'".format(SGD_TAKES)),
    ("adam", {"momentum": 0.9, "alpha": 1}, ValueError,
     "optimizer_args for adam take {}, got unknown 'alpha', 'momentum'".format(ADAM_TAKES)),
    ("adamw", {"lr": "fast"}, TypeError, "optimizer_args['lr'] must be a real number, got str"),
    ("adamw", {"eps": True}, TypeError, "optimizer_args['eps'] must be a real number, got bool"),
    ("sgd", {"lr": float("nan")}, ValueError, "optimizer_args['lr'] must be finite, got nan"),
    ("sgd", {"weight_decay": float("-inf")}, ValueError, "optimizer_args['weight_decay'] must be finite, got -inf"),
    ("adam", {"betas": (0.9,)}, ValueError, "optimizer_args['betas'] must be a pair (beta1, beta2), got (0.9,)"),
    ("adam", {"betas": 0.9}, ValueError, "optimizer_args['betas'] must be a pair (beta1, beta2), got 0.9"),
    ("adam", {"betas": (0.9, 0.99), "beta2": 0.9}, ValueError, "optimizer_args gives both 'betas' and 'beta1'/'beta2'"),
    ("adam", {"betas": (0.9, 0.99), "beta1": 0.9}, ValueError, "optimizer_args gives both 'betas' and 'beta1'/'beta2'"),
    ("adamw", {"amsgrad": 1}, TypeError, "optimizer_args['amsgrad'] must be a bool, got 1"),
    ("sgd", {"nesterov": "yes"}, TypeError, "optimizer_args['nesterov'] must be a bool, got 'yes'"),
    ("sgd", {"lr": -1}, ValueError, "optimizer_args['lr'] must be >= 0, got -1.0"),
    ("adam", {"weight_decay": -1e-9}, ValueError, "optimizer_args['weight_decay'] must be >= 0, got -1e-09"),
    ("sgd", {"momentum": -0.5}, ValueError, "optimizer_args['momentum'] must be >= 0, got -0.5"),
    ("sgd", {"nesterov": True}, ValueError,
     "nesterov momentum requires momentum > 0 and dampening 0, got momentum=0.0 dampening=0.0"),
    ("sgd", {"nesterov": True, "momentum": 0.9, "dampening": 0.1}, ValueError,
     "nesterov momentum requires momentum > 0 and dampening 0, got momentum=0.9 dampening=0.1"),
    ("adam", {"eps": -1}, ValueError, "optimizer_args['eps'] must be >= 0, got -1.0"),
    ("adam", {"beta1": 1.0}, ValueError, "optimizer_args['beta1'] must be in [0, 1), got 1.0"),
    ("adamw", {"beta2": -0.1}, ValueError, "optimizer_args['beta2'] must be in [0, 1), got -0.1"),
    ("adamw", {"beta2": 1.5}, ValueError, "optimizer_args['beta2'] must be in [0, 1), got 1.5"),
])
def test_every_refusal_word_for_word(name, args, kind, message):
    with pytest.raises(kind) as err:
        optimizer(name, **args)
    assert str(err.value) == message


@pytest.mark.parametrize("name, args", [
    ("sgd", {"lr": 0.0}), ("sgd", {"weight_decay": 0.0, "momentum": 0.0}),
    ("sgd", {"momentum": 0.9, "dampening": 0.0, "nesterov": True}),
    ("adam", {"eps": 0.0, "beta1": 0.0, "beta2": 0.0}), ("ADAMW", {"betas": [0.5, 0.25]}),
])
def test_the_boundaries_each_check_draws_are_accepted(name, args):
    opt = optimizer(name, **args)
    assert opt.name == name.lower()
    if "betas" in args:
        assert (opt.hyper_value("beta1"), opt.hyper_value("beta2")) == (0.5, 0.25)


def test_momentum_decides_the_buffer_and_which_hyper_parameters_are_inputs():
    plain, heavy = optimizer("sgd", momentum=0.0, dampening=0.3), optimizer("sgd", momentum=0.9, dampening=0.3)
    assert (plain.has_momentum, plain.hyper_names) == (False, ("lr", "weight_decay"))
    assert (heavy.has_momentum, heavy.hyper_names) == (True, ("lr", "momentum", "dampening", "weight_decay"))
    assert (optimizer("adam").has_momentum, optimizer("adamw").has_momentum) == (False, False)
    assert optimizer("sgd").torch_kwargs() == {"lr": 1e-3, "weight_decay": 0.0, "nesterov": False, "maximize": False}
    assert optimizer("adam", betas=(0.5, 0.75)).torch_kwargs() == {
        "lr": 1e-3, "betas": (0.5, 0.75), "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False, "maximize": False}


def test_with_hyper_refusals_word_for_word():
    heavy = optimizer("sgd", lr=0.1, momentum=0.9)
    with pytest.raises(ValueError) as err:
        heavy.with_hyper(eps=1.0, beta1=0.5)
    assert str(err.value) == ("overrides must be hyper-parameters of sgd (lr, momentum, dampening, weight_decay), "
                              "got beta1, eps")
    with pytest.raises(ValueError) as err:
        heavy.with_hyper(momentum=0.0)
    assert str(err.value) == ("momentum cannot change between 0 and non-zero after construction (it decides whether "
                              "SGD keeps a momentum buffer), got momentum=0.0")
    # a change that keeps momentum non-zero, and flags carried over
    nesterov = optimizer("sgd", lr=0.1, momentum=0.9, nesterov=True).with_hyper(momentum=0.5, lr=0.2)
    assert (nesterov.hyper_value("momentum"), nesterov.hyper_value("lr"), nesterov.flag("nesterov")) == (0.5, 0.2, True)
    adam = optimizer("adam", amsgrad=True).with_hyper(betas=(0.5, 0.6))
    assert (adam.hyper_value("beta1"), adam.hyper_value("beta2"), adam.flag("amsgrad")) == (0.5, 0.6, True)


def test_layout_helpers():
    opt = optimizer("adam")
    names = ["w", "b"]
    state = {n: {k: torch.full((1,), float(10 * i + j)) for j, k in enumerate(opt.state_names)}
             for i, n in enumerate(names)}
    flat = flat_state(opt, names, state)
    assert [float(t) for t in flat] == [0.0, 1.0, 2.0, 10.0, 11.0, 12.0]
    back = unflat_state(opt, names, flat)
    assert {n: {k: float(v) for k, v in s.items()} for n, s in back.items()} == {
        "w": {"step": 0.0, "exp_avg": 1.0, "exp_avg_sq": 2.0}, "b": {"step": 10.0, "exp_avg": 11.0, "exp_avg_sq": 12.0}}
    with pytest.raises(ValueError) as err:
        unflat_state(opt, names, flat[:5])
    assert str(err.value) == "optimizer state has 2 x 3 tensors, got 5"

    hyper = hyper_from(opt, {"lr": 0.5, "eps": torch.tensor(2.0, dtype=torch.float64)})
    assert list(hyper) == list(opt.hyper_names)
    assert all(t.dtype == torch.float64 and t.dim() == 0 for t in hyper.values())
    assert (float(hyper["lr"]), float(hyper["eps"]), float(hyper["beta1"])) == (0.5, 2.0, 0.9)
    with pytest.raises(ValueError) as err:
        hyper_from(optimizer("sgd"), {"eps": 1.0})
    assert str(err.value) == "hyper must name hyper-parameters of sgd (lr, weight_decay), got 'eps'"


def test_init_state_is_torchs_lazy_state():
    p = {"w": torch.ones(2, 3, dtype=torch.float64).t(), "b": torch.ones(3)}  # a transposed (non-contiguous) one
    state = optimizer("adam", amsgrad=True).init_state(p)
    for n, t in p.items():
        s = state[n]
        assert list(s) == ["step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"]
        assert s["step"].dtype == torch.float64 and s["step"].dim() == 0 and float(s["step"]) == 0.0
        for k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            assert s[k].shape == t.shape and s[k].dtype == t.dtype and s[k].is_contiguous()
            assert not s[k].requires_grad and float(s[k].abs().sum()) == 0.0


def _leaf(*values):
    return torch.tensor(values, dtype=torch.float64, requires_grad=True)


def test_state_from_torch_before_any_step_is_the_initial_state():
    w = _leaf(1.0, 2.0)
    for opt in (optimizer("sgd", momentum=0.9), optimizer("sgd"), optimizer("adam", amsgrad=True)):
        torch_opt = opt.torch_optimizer([w])
        got = opt.state_from_torch(torch_opt, {id(w): "w"})
        assert list(got) == ["w"] and list(got["w"]) == list(opt.state_names)
        assert all(float(t.abs().sum()) == 0.0 for t in got["w"].values())
        assert got["w"]["step"].dtype == torch.float64


def test_state_from_torch_reads_sgd_momentum_and_counts_the_steps_it_is_told():
    # SGD(lr=0.5, momentum=0.5), gradients 2 then 4 on w = [1]: buf 2, then 0.5*2 + 4 = 5
    w = _leaf(1.0)
    opt = optimizer("sgd", lr=0.5, momentum=0.5)
    torch_opt = opt.torch_optimizer([w])
    assert torch_opt.defaults["foreach"] is False
    assert opt.torch_optimizer([w], foreach=None).defaults["foreach"] is None
    for g in (2.0, 4.0):
        w.grad = torch.tensor([g], dtype=torch.float64)
        torch_opt.step()
    got = opt.state_from_torch(torch_opt, {id(w): "w"}, steps=2)["w"]
    assert float(got["momentum_buffer"]) == 5.0 and float(got["step"]) == 2.0
    assert got["step"].dtype == torch.float64
    assert got["momentum_buffer"].data_ptr() != torch_opt.state[w]["momentum_buffer"].data_ptr()  # a copy
    assert float(opt.state_from_torch(torch_opt, {id(w): "w"})["w"]["step"]) == 0.0  # steps not told
    # plain SGD: torch keeps a None buffer, ours keeps only the step
    plain = optimizer("sgd", lr=0.5)
    torch_plain = plain.torch_optimizer([w])
    w.grad = torch.tensor([1.0], dtype=torch.float64)
    torch_plain.step()
    assert list(plain.state_from_torch(torch_plain, {id(w): "w"}, steps=1)["w"]) == ["step"]


def test_state_from_torch_reads_adams_moments_as_copies_and_its_step_in_float64():
    # Adam(betas=(0.5, 0.75)), one gradient 2 on a float32 w: exp_avg 0.5*2 = 1, exp_avg_sq 0.25*4 = 1
    w = torch.tensor([1.0], requires_grad=True)
    opt = optimizer("adam", betas=(0.5, 0.75), amsgrad=True)
    torch_opt = opt.torch_optimizer([w])
    w.grad = torch.tensor([2.0])
    torch_opt.step()
    got = opt.state_from_torch(torch_opt, {id(w): "w"}, steps=7)["w"]  # Adam counts its own steps
    assert list(got) == ["step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"]
    assert got["step"].dtype == torch.float64 and float(got["step"]) == 1.0
    assert [float(got[k]) for k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")] == [1.0, 1.0, 1.0]
    assert got["exp_avg"].dtype == torch.float32
    assert got["exp_avg"].data_ptr() != torch_opt.state[w]["exp_avg"].data_ptr()
    assert math.isclose(float(w.detach()), 1.0 - 1e-3 * (1.0 / 0.5) / (1.0 / math.sqrt(0.25) + 1e-8 / 1.0),
                        rel_tol=1e-6)


def test_the_default_optimizer_is_plain_sgd_with_torchs_defaults():
    opt = optimizer()
    assert opt.name == "sgd" and not opt.has_momentum
    assert opt.state_names == ("step",)
    assert dict(opt.hyper) == {"lr": 1e-3, "weight_decay": 0.0}  # no momentum: no momentum inputs
    assert dict(opt.flags) == {"nesterov": False, "maximize": False}
