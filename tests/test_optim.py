"""The functional optimizers against torch.optim's single-tensor implementation (foreach=False),
step by step over a short run of fresh gradients, in float32 and float64, every option combination."""
import itertools

import pytest
import torch

from compile_losses.optim import OPTIMIZERS, Optimizer, optimizer

SGD_CASES = [dict(lr=0.1)] + [
    dict(lr=0.05, momentum=m, dampening=d, weight_decay=wd, nesterov=n, maximize=mx)
    for m, d, wd, n, mx in itertools.product((0.0, 0.9), (0.0, 0.3), (0.0, 0.01), (False, True), (False, True))
    if not (n and (m == 0 or d != 0))]
ADAM_CASES = [dict(lr=3e-3, betas=(b1, 0.99), weight_decay=wd, amsgrad=a, maximize=mx, eps=1e-6)
              for b1, wd, a, mx in itertools.product((0.9, 0.5, 0.3, 0.0), (0.0, 0.05), (False, True), (False, True))]
# beta1 0.5 and 0.3: lerp's weight 1 - beta1 at and above 0.5, where ATen takes its other branch
CASES = [("sgd", c) for c in SGD_CASES] + [(n, c) for n in ("adam", "adamw") for c in ADAM_CASES]
STEPS = 6
# torch's vectorized CPU kernels fuse a * b + c (Vectorized::fmadd) on every ISA but the plain
# DEFAULT build; the functional updates emulate that fused rounding below float64, so there the
# two agree bit for bit (float64 has no wider type to emulate it in: to rounding).
FUSED_CPU = torch.backends.cpu.get_cpu_capability() != "DEFAULT"


def _tolerance(dtype):
    return dict(rtol=0, atol=0) if dtype == torch.float32 and FUSED_CPU else {}


def _run(name, args, dtype):
    gen = torch.Generator().manual_seed(0)
    shapes = {"w": (5, 30), "b": (3,)}  # 150 elements: the vectorized loop and its tail
    start = {n: torch.randn(s, generator=gen, dtype=dtype) for n, s in shapes.items()}
    grads = [{n: torch.randn(s, generator=gen, dtype=dtype) for n, s in shapes.items()} for _ in range(STEPS)]
    opt = optimizer(name, **args)

    leaves = {n: t.clone().requires_grad_(True) for n, t in start.items()}
    ref = opt.torch_optimizer(leaves.values())
    ids = {id(p): n for n, p in leaves.items()}
    params = {n: t.clone() for n, t in start.items()}
    state = opt.init_state(params)
    hyper = opt.hyper_tensors()
    for i in range(STEPS):
        for n, p in leaves.items():
            p.grad = grads[i][n].clone()
        ref.step()
        params, state = opt.apply(params, grads[i], state, hyper)
        expect = opt.state_from_torch(ref, ids)
        for n in shapes:
            torch.testing.assert_close(params[n], leaves[n].detach(), **_tolerance(dtype),
                                       msg=lambda m: "step {} {}: {}".format(i, n, m))
            assert list(state[n]) == list(opt.state_names)
            assert float(state[n]["step"]) == i + 1  # torch's SGD keeps no step: counted here
            for k in opt.state_names[1:]:
                torch.testing.assert_close(state[n][k], expect[n][k], **_tolerance(dtype),
                                           msg=lambda m: "step {} {}.{}: {}".format(i, n, k, m))
    return params, leaves


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name,args", CASES, ids=lambda v: v if isinstance(v, str) else ",".join(
    "{}={}".format(k, v[k]) for k in sorted(v)))
def test_matches_torch_optim(name, args, dtype):
    _run(name, args, dtype)


def test_names_and_defaults():
    assert OPTIMIZERS == ("sgd", "adam", "adamw")
    assert optimizer("sgd").state_names == ("step",)
    assert optimizer("sgd", momentum=0.9).state_names == ("step", "momentum_buffer")
    assert optimizer("adam", amsgrad=True).state_names == ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    assert optimizer("adamw").hyper_value("weight_decay") == torch.optim.AdamW([torch.zeros(1)]).defaults["weight_decay"]
    assert optimizer("adam").hyper_names == ("lr", "beta1", "beta2", "eps", "weight_decay")


@pytest.mark.parametrize("name,cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                       ("adamw", torch.optim.AdamW)])
def test_defaults_are_torchs(name, cls):
    # every default hyper-parameter and flag is torch.optim's own (read from torch, not from us)
    torch_defaults = dict(cls([torch.zeros(1, requires_grad=True)]).defaults)
    if "betas" in torch_defaults:
        torch_defaults["beta1"], torch_defaults["beta2"] = torch_defaults.pop("betas")
    opt = optimizer(name)
    ours = dict(opt.hyper)
    ours.update(opt.flags)
    assert ours == {k: torch_defaults[k] for k in ours}
    assert set(ours) >= {"lr", "weight_decay", "maximize"}


def test_an_optimizer_is_frozen_and_describes_itself():
    import dataclasses

    opt = optimizer("adam", lr=0.5, amsgrad=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        opt.name = "sgd"  # type: ignore[misc]
    assert opt.describe() == {
        "name": "adam",
        "hyper": {"lr": 0.5, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0},
        "flags": {"amsgrad": True, "maximize": False},
        "state": ["step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"],
        "torch": "Adam",
    }
    # built directly, an SGD optimizer has no momentum buffer unless it says so
    plain = Optimizer("sgd", optimizer("sgd").hyper, optimizer("sgd").flags)
    assert plain.state_names == ("step",)
    assert plain.with_hyper(lr=0.1).hyper_value("lr") == 0.1


def test_with_hyper_names_overrides_in_its_errors():
    with pytest.raises(ValueError) as err:
        optimizer("adam").with_hyper(betas=(0.9,))
    assert str(err.value) == "overrides['betas'] must be a pair (beta1, beta2), got (0.9,)"


@pytest.mark.parametrize("name,args,error,match", [
    ("rmsprop", {}, ValueError, r"optimizer must be one of 'sgd', 'adam', 'adamw', got 'rmsprop'"),
    ("sgd", {"betas": (0.9, 0.9)}, ValueError, r"got unknown 'beta1', 'beta2'"),
    ("sgd", {"nesterov": True}, ValueError, r"nesterov momentum requires momentum > 0 and dampening 0"),
    ("adam", {"lr": "fast"}, TypeError, r"optimizer_args\['lr'\] must be a real number, got str"),
    ("adam", {"beta1": 1.0}, ValueError, r"optimizer_args\['beta1'\] must be in \[0, 1\), got 1.0"),
    ("adamw", {"amsgrad": 1}, TypeError, r"optimizer_args\['amsgrad'\] must be a bool, got 1"),
    ("adamw", {"weight_decay": -1}, ValueError, r"optimizer_args\['weight_decay'\] must be >= 0, got -1.0"),
])
def test_bad_arguments(name, args, error, match):
    with pytest.raises(error, match=match):
        optimizer(name, **args)


def test_with_hyper_drives_a_schedule():
    opt = optimizer("sgd", lr=0.1, momentum=0.9)
    assert opt.with_hyper(lr=0.01).hyper_value("lr") == 0.01
    with pytest.raises(ValueError, match="momentum cannot change between 0 and non-zero"):
        opt.with_hyper(momentum=0.0)
    with pytest.raises(ValueError, match=r"overrides must be hyper-parameters of sgd .* got eps"):
        opt.with_hyper(eps=1.0)
