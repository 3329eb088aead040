"""Every backend's optimizer train step against the functional program run eagerly: a few
steps with a frozen layer, through the adapter interface (no backend named here)."""
import pytest
import torch

from compile_losses import losses as L
from compile_losses import programs
from compile_losses.backends import BACKENDS, Unsupported
from compile_losses.nets import SeedNet
from compile_losses.optim import optimizer

from backend_params import backend_params


def _case():
    torch.manual_seed(0)
    net = SeedNet()
    net.fc1.requires_grad_(False)
    gen = torch.Generator().manual_seed(5)
    batches = [(torch.randn(b, 32, generator=gen), torch.randn(b, 1, generator=gen)) for b in (10, 3, 10)]
    return net, L.MSELoss(), batches


@pytest.mark.parametrize("backend", backend_params())
def test_optimizer_step(backend):
    net, loss, batches = _case()
    opt = optimizer("adamw", lr=1e-2, weight_decay=0.1, amsgrad=True)
    b = BACKENDS[backend]
    ok, reason = b.available()
    if not ok:
        pytest.skip("unavailable: " + reason)
    try:
        step = b.prepare_optimizer_step(net, loss, batches[0], opt)
    except Unsupported as exc:
        assert str(exc)  # a reason, never silence
        pytest.skip("unsupported: {}".format(exc))
    ref = programs.optimizer_train_step(net, loss, opt)
    params = {n: p.detach().clone() for n, p in programs.trainable(net)}
    fixed = {n: p.detach().clone() for n, p in programs.frozen(net)}
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    state, hyper = opt.init_state(params), opt.hyper_tensors()
    mine, mine_state = dict(params), state
    for i, (x, t) in enumerate(batches):
        want = ref(params, fixed, x, t, state=state, hyper=hyper)
        got = step(mine, fixed, x, t, state=mine_state, hyper=hyper)
        torch.testing.assert_close(got.loss, want.loss, msg=lambda m: "step {}: {}".format(i, m))
        assert set(got.grads) == set(want.grads) == {"fc2.weight", "fc2.bias"}
        torch.testing.assert_close(got.new_params, want.new_params)
        torch.testing.assert_close(got.new_state, want.new_state)
        params, state = want.new_params, want.new_state
        mine, mine_state = got.new_params, got.new_state
    for n, p in net.named_parameters():  # nothing changed in place
        assert torch.equal(p.detach(), before[n]), n
