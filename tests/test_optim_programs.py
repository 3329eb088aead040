"""The optimizer train-step program: against eager torch.optim over a few steps, frozen
parameters, and gradient accumulation that equals the whole batch's step."""
import pytest
import torch

from compile_losses import losses as L
from compile_losses import programs
from compile_losses.nets import SeedNet
from compile_losses.optim import optimizer
from compile_losses.registry import LOSSES

OPTS = [("sgd", {"lr": 0.05}), ("sgd", {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
        ("adam", {"lr": 3e-3}), ("adamw", {"lr": 3e-3, "weight_decay": 0.05, "amsgrad": True})]


def _net(dtype, freeze=False):
    torch.manual_seed(0)
    net = SeedNet().to(dtype)
    if freeze:
        net.fc1.requires_grad_(False) if hasattr(net, "fc1") else next(net.children()).requires_grad_(False)
    return net


def _batches(n, dtype, batch=8, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 32, generator=gen, dtype=dtype), torch.randn(batch, 1, generator=gen, dtype=dtype))
            for _ in range(n)]


@pytest.mark.parametrize("freeze", [False, True], ids=["all", "frozen"])
@pytest.mark.parametrize("name,args", OPTS, ids=lambda v: v if isinstance(v, str) else "-".join(sorted(v)))
def test_program_follows_torch_optim(name, args, freeze):
    dtype = torch.float64
    net, loss, opt = _net(dtype, freeze), L.MSELoss(), optimizer(name, **args)
    batches = _batches(5, dtype)
    losses, final, state = programs.eager_optimizer_trajectory(net, loss, opt, [[b] for b in batches])
    sig = programs.optim_signature(net, loss, 1, opt)
    assert (len(sig.frozen) > 0) == freeze
    assert set(sig.params) == set(final)
    params = {n: p.detach() for n, p in programs.trainable(net)}
    fixed = {n: p.detach() for n, p in programs.frozen(net)}
    st, hyper = opt.init_state(params), opt.hyper_tensors()
    step = programs.optimizer_train_step(net, loss, opt)
    for i, (x, t) in enumerate(batches):
        out = step(params, fixed, x, t, state=st, hyper=hyper)
        torch.testing.assert_close(out.loss, losses[i])
        assert set(out.grads) == set(sig.params)
        params, st = out.new_params, out.new_state
    torch.testing.assert_close(params, final)
    for n in final:
        for k in opt.state_names[1:]:
            torch.testing.assert_close(st[n][k], state[n][k])
    if freeze:
        # the frozen layer's values never moved and it has no state
        assert all(n not in st for n in sig.frozen)


def test_flat_step_matches_dict_step():
    net, loss, opt = _net(torch.float64, freeze=True), L.MSELoss(), optimizer("adamw")
    sig = programs.optim_signature(net, loss, 1, opt)
    params = {n: p.detach() for n, p in programs.trainable(net)}
    fixed = {n: p.detach() for n, p in programs.frozen(net)}
    state, hyper = opt.init_state(params), opt.hyper_tensors()
    (x, t), = _batches(1, torch.float64)
    flat = programs.flat_optimizer_step(net, loss, opt, sig)(*sig.flat_inputs(params, fixed, x, [t], state, hyper))
    assert len(flat) == len(sig.output_names)
    got = sig.result(flat)
    want = programs.optimizer_train_step(net, loss, opt)(params, fixed, x, t, state=state, hyper=hyper)
    torch.testing.assert_close(got.new_params, want.new_params, rtol=0, atol=0)
    torch.testing.assert_close(got.new_state, want.new_state, rtol=0, atol=0)


def test_flat_step_reads_the_frozen_values_it_is_given():
    """Frozen parameters are inputs: values other than the net's own must change the loss."""
    net, loss, opt = _net(torch.float64, freeze=True), L.MSELoss(), optimizer("sgd")
    sig = programs.optim_signature(net, loss, 1, opt)
    params = {n: p.detach() for n, p in programs.trainable(net)}
    fixed = {n: p.detach() + 1.0 for n, p in programs.frozen(net)}
    state, hyper = opt.init_state(params), opt.hyper_tensors()
    (x, t), = _batches(1, torch.float64)
    flat = programs.flat_optimizer_step(net, loss, opt, sig)(*sig.flat_inputs(params, fixed, x, [t], state, hyper))
    want = programs.optimizer_train_step(net, loss, opt)(params, fixed, x, t, state=state, hyper=hyper)
    own = programs.optimizer_train_step(net, loss, opt)(params, {n: p.detach() for n, p in programs.frozen(net)},
                                                        x, t, state=state, hyper=hyper)
    torch.testing.assert_close(sig.result(flat).loss, want.loss, rtol=0, atol=0)
    assert not torch.equal(want.loss, own.loss)


def _accumulation_matches_whole_batch(loss, pred_net, x, targets, sizes, mean_divisor=None, kwargs=None):
    opt = optimizer("adam", lr=1e-2)
    weight = programs.micro_batch_weight(loss, mean_divisor, kwargs)
    params = {n: p.detach() for n, p in programs.trainable(pred_net)}
    state, hyper = opt.init_state(params), opt.hyper_tensors()
    whole = programs.optimizer_train_step(pred_net, loss, opt)(params, {}, x, *targets, state=state, hyper=hyper)
    cuts = torch.tensor(sizes).cumsum(0).tolist()
    micro, start = [], 0
    for end in cuts:
        micro.append((x[start:end],) + tuple(t[start:end] for t in targets))
        start = end
    acc = programs.accumulated_train_step(pred_net, loss, opt, weight)(params, {}, micro, state, hyper)
    torch.testing.assert_close(acc.loss, whole.loss)
    torch.testing.assert_close(acc.grads, whole.grads)
    torch.testing.assert_close(acc.new_params, whole.new_params)
    # the pitfall: the mean of the micro-batches' means is not the batch mean when sizes differ
    naive = sum(loss(pred_net(m[0]), *m[1:]) for m in micro) / len(micro)
    return naive, whole.loss


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_accumulation_over_uneven_micro_batches_is_the_whole_batch(reduction):
    gen = torch.Generator().manual_seed(3)
    x, t = torch.randn(10, 32, generator=gen, dtype=torch.float64), torch.randn(10, 1, generator=gen, dtype=torch.float64)
    naive, whole = _accumulation_matches_whole_batch(L.MSELoss(reduction=reduction), _net(torch.float64), x, (t,),
                                                     [3, 5, 1, 1])
    if reduction == "mean":
        assert not torch.allclose(naive, whole)


@pytest.mark.parametrize("kwargs", [{"ignore_index": 2}, {"weight": torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0],
                                                                                 dtype=torch.float64)}],
                         ids=["ignore_index", "weight"])
def test_accumulation_uses_the_registry_mean_divisor(kwargs):
    spec = LOSSES["cross_entropy"]
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(12, 32, generator=gen, dtype=torch.float64)
    t = torch.randint(0, 5, (12,), generator=gen)
    net = SeedNet(out_features=5).double()
    loss = spec.module(**kwargs)
    naive, whole = _accumulation_matches_whole_batch(loss, net, x, (t,), [2, 6, 4], spec.mean_divisor, kwargs)
    assert not torch.allclose(naive, whole)


def test_accumulation_refuses_an_unreduced_loss():
    with pytest.raises(ValueError, match=r"reduction 'mean' or 'sum', got reduction='none' for MSELoss"):
        programs.micro_batch_weight(L.MSELoss(reduction="none"))
