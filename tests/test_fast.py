"""The fast paths (compile_losses.fast): parity of values and gradients with eager for every
elementwise registry loss and the SeedNet train step, the reused-buffer contract, and the
per-case selection. Speed is measured by scripts/measure_fast_paths.py, never asserted here."""
import gc

import pytest
import torch
from torch.testing import assert_close

from compile_losses.backends.fast import FastBackend
from compile_losses.backends.fused import FusedBackend
from compile_losses.fast import CompiledForward, CompiledTrainStep, FusedLoss, FusedLossAndGrad, GraphCache, pick_fastest
from compile_losses.programs import eager_loss_and_grad, eager_train_step
from compile_losses.losses import HuberLoss, MSELoss
from compile_losses.nets import SeedNet
from compile_losses.registry import LOSSES, NETS, sample_inputs

ELEMENTWISE = [name for name, spec in LOSSES.items() if spec.elementwise]
VARIANTS = [(name, i) for name in ELEMENTWISE for i in range(1, len(LOSSES[name].variants))]


def _case(name, variant=0, batch=64, seed=0):
    spec = LOSSES[name]
    loss = spec.build(**spec.variants[variant])
    pred, targets = spec.input_for(batch, torch.float32, seed=seed)
    return loss, pred, targets


def _check_fused(loss, pred, targets):
    value, grad = FusedLossAndGrad(loss)(pred, *targets)
    ref_value, ref_grad = eager_loss_and_grad(loss)(pred, *targets)
    assert grad.shape == pred.shape
    assert_close(value, ref_value)
    assert_close(grad, ref_grad)


# ---------------------------------------------------------------------------------------------
# fused loss-and-gradient: parity
# ---------------------------------------------------------------------------------------------
@pytest.mark.compile
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_fused_matches_eager(name):
    _check_fused(*_case(name))


@pytest.mark.compile
@pytest.mark.slow
@pytest.mark.parametrize("name,variant", VARIANTS)
def test_fused_matches_eager_every_variant(name, variant):
    _check_fused(*_case(name, variant))


@pytest.mark.compile
@pytest.mark.slow
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_fused_matches_eager_sum_and_non_contiguous(name):
    spec = LOSSES[name]
    sample = list(sample_inputs(spec, torch.float32, batches=(7,), reductions=("sum",)))[-1]
    assert "non-contiguous" in sample.desc
    _check_fused(spec.build(reduction="sum"), sample.input, sample.targets)


@pytest.mark.compile
@pytest.mark.slow
@pytest.mark.parametrize("name", ["mse", "log_cosh", "bce_with_logits"])
def test_fused_matches_eager_at_2_pow_20(name):
    # Large enough that the reduction's summation order differs from eager's.
    _check_fused(*_case(name, batch=1 << 20))


@pytest.mark.compile
def test_fused_reuses_compiled_graph_across_batches():
    loss = HuberLoss()
    fused = FusedLossAndGrad(loss)
    for batch in (3, 17, 64):
        pred, (target,) = LOSSES["huber"].input_for(batch, torch.float32, seed=batch)
        value, grad = fused(pred, target)
        ref_value, ref_grad = eager_loss_and_grad(loss)(pred, target)
        assert_close(value, ref_value)
        assert_close(grad, ref_grad)


# ---------------------------------------------------------------------------------------------
# the reused buffer: a held gradient is never overwritten
# ---------------------------------------------------------------------------------------------
@pytest.mark.compile
def test_held_gradient_is_not_overwritten_by_the_next_call():
    loss, pred, (target,) = _case("mse", batch=32)
    fused = FusedLossAndGrad(loss)
    _, first = fused(pred, target)
    kept = first.clone()
    _, second = fused(pred * 3.0, target)
    assert_close(first, kept, rtol=0, atol=0)
    assert first.data_ptr() != second.data_ptr()
    assert not torch.equal(first, second)


@pytest.mark.compile
def test_dropped_gradient_buffer_is_reused():
    loss, pred, (target,) = _case("mse", batch=32)
    fused = FusedLossAndGrad(loss)
    _, grad = fused(pred, target)
    ptr, made = grad.data_ptr(), fused.pool.allocations
    del grad
    gc.collect()
    _, grad = fused(pred * 2.0, target)
    assert grad.data_ptr() == ptr
    assert fused.pool.allocations == made
    assert_close(grad, eager_loss_and_grad(loss)(pred * 2.0, target)[1])


@pytest.mark.compile
def test_a_held_view_of_the_gradient_also_protects_it():
    loss, pred, (target,) = _case("mse", batch=32)
    fused = FusedLossAndGrad(loss)
    _, grad = fused(pred, target)
    view = grad[:4]
    kept = view.clone()
    del grad
    fused(pred * 5.0, target)
    assert_close(view, kept, rtol=0, atol=0)


@pytest.mark.compile
def test_new_shape_gets_a_new_buffer():
    loss = MSELoss()
    fused = FusedLossAndGrad(loss)
    _, small = fused(torch.ones(4, 1), torch.zeros(4, 1))
    del small
    _, big = fused(torch.ones(9, 1), torch.zeros(9, 1))
    assert big.shape == (9, 1)
    assert_close(big, torch.full((9, 1), 2.0 / 9))


# ---------------------------------------------------------------------------------------------
# FusedLoss behind autograd
# ---------------------------------------------------------------------------------------------
@pytest.mark.compile
@pytest.mark.parametrize("name", ["mse", "log_cosh", "gaussian_nll"])
def test_fused_module_backward_matches_eager(name):
    loss, pred, targets = _case(name)
    leaf = pred.clone().requires_grad_(True)
    ref = pred.clone().requires_grad_(True)
    value = FusedLoss(loss)(leaf, *targets)
    (3.0 * value).backward()  # grad_output 3: the saved gradient is scaled
    ref_value = loss(ref, *targets)
    (3.0 * ref_value).backward()
    assert_close(value.detach(), ref_value.detach())
    assert_close(leaf.grad, ref.grad)


@pytest.mark.compile
def test_fused_module_in_a_net_trains_like_eager():
    torch.manual_seed(0)
    net, ref_net = SeedNet(), SeedNet()
    ref_net.load_state_dict(net.state_dict())
    x = NETS["seed"].example_input(16)
    target = torch.randn(16, 1)
    FusedLoss(MSELoss())(net(x), target).backward()
    MSELoss()(ref_net(x), target).backward()
    for (n, p), (_, q) in zip(net.named_parameters(), ref_net.named_parameters()):
        assert_close(p.grad, q.grad, msg=n)


def test_fused_module_falls_back_to_the_plain_loss_where_it_cannot_fuse():
    loss = MSELoss(reduction="none")
    pred = torch.randn(5, 1, requires_grad=True)
    target = torch.randn(5, 1)
    out = FusedLoss(loss, compile=False)(pred, target)
    assert out.shape == (5, 1)
    # A target that requires grad gets its gradient through the plain loss.
    target = target.requires_grad_(True)
    FusedLoss(MSELoss(), compile=False)(pred, target).backward()
    assert_close(target.grad, -2.0 * (pred - target).detach() / 5)


def test_second_backward_through_the_same_graph_raises():
    pred = torch.randn(5, 1, requires_grad=True)
    value = FusedLoss(MSELoss(), compile=False)(pred, torch.zeros(5, 1))
    value.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        value.backward()


def test_fused_errors_name_the_argument():
    with pytest.raises(TypeError, match="loss must be an nn.Module, got function"):
        FusedLossAndGrad(lambda p, t: p)
    with pytest.raises(ValueError, match="loss must reduce to a scalar.*got MSELoss with reduction 'none'"):
        FusedLossAndGrad(MSELoss(reduction="none"))
    with pytest.raises(TypeError, match="pred must be a floating-point tensor, got torch.int64"):
        FusedLossAndGrad(MSELoss(), compile=False)(torch.zeros(3, dtype=torch.int64), torch.zeros(3))


# ---------------------------------------------------------------------------------------------
# whole train step
# ---------------------------------------------------------------------------------------------
def _step_case(loss_name, batch):
    torch.manual_seed(0)
    spec = LOSSES[loss_name]
    net = SeedNet(out_features=spec.net_out).eval()
    x = NETS["seed"].example_input(batch)
    targets = spec.make_targets(net(x).detach(), torch.Generator().manual_seed(1))
    return net, spec.build(), x, targets


def _assert_same_step(out, ref):
    assert_close(out.loss, ref.loss)
    assert out.grads.keys() == ref.grads.keys() == out.new_params.keys()
    for n in ref.grads:
        assert_close(out.grads[n], ref.grads[n], msg=n)
        assert_close(out.new_params[n], ref.new_params[n], msg=n)


@pytest.mark.compile
@pytest.mark.parametrize("mode", ["graph", "dynamo"])
@pytest.mark.parametrize("batch", [10, pytest.param(4096, marks=pytest.mark.slow)])
def test_compiled_train_step_matches_eager(mode, batch):
    net, loss, x, targets = _step_case("mse", batch)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    out = CompiledTrainStep(net, loss, lr=0.05, mode=mode)(x, *targets)
    _assert_same_step(out, eager_train_step(net, loss, 0.05)(x, *targets))
    for n, p in net.named_parameters():  # computed from the net, never written back
        assert torch.equal(p.detach(), before[n]), n


@pytest.mark.compile
@pytest.mark.slow
@pytest.mark.parametrize("loss_name", [n for n in ELEMENTWISE if n != "mse"])
def test_compiled_train_step_matches_eager_every_elementwise_loss(loss_name):
    net, loss, x, targets = _step_case(loss_name, 10)
    out = CompiledTrainStep(net, loss, lr=0.05, mode="graph")(x, *targets)
    _assert_same_step(out, eager_train_step(net, loss, 0.05)(x, *targets))


@pytest.mark.compile
def test_compiled_train_step_follows_the_nets_current_parameters():
    net, loss, x, targets = _step_case("mse", 10)
    step = CompiledTrainStep(net, loss, lr=0.05)
    first = step(x, *targets)
    with torch.no_grad():
        for n, p in net.named_parameters():
            p.copy_(first.new_params[n])
    second = step(x, *targets)
    _assert_same_step(second, eager_train_step(net, loss, 0.05)(x, *targets))
    assert second.loss < first.loss


def test_train_step_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"mode must be one of \['graph', 'dynamo', 'eager'\], got 'fast'"):
        CompiledTrainStep(SeedNet(), MSELoss(), 0.1, mode="fast")
    with pytest.raises(TypeError, match="lr must be a Python float, got Tensor"):
        CompiledTrainStep(SeedNet(), MSELoss(), torch.tensor(0.1))


# ---------------------------------------------------------------------------------------------
# backends: fused and fast (fastest measured path, eager included)
# ---------------------------------------------------------------------------------------------
@pytest.mark.compile
def test_fast_backend_train_step_picks_a_measured_path_and_matches_eager():
    net, loss, x, targets = _step_case("mse", 10)
    step = FastBackend("fast").prepare_train_step(net, loss, (x,) + targets, lr=0.05)
    assert step.choice in step.timings
    assert step.timings[step.choice] == min(step.timings.values())
    assert "eager" in step.timings and "chose " + step.choice in step.note
    _assert_same_step(step(x, *targets), eager_train_step(net, loss, 0.05)(x, *targets))


@pytest.mark.compile
def test_fast_and_fused_backends_loss_and_grad_match_eager():
    loss, pred, targets = _case("log_cosh", batch=256)
    ref_value, ref_grad = eager_loss_and_grad(loss)(pred, *targets)
    for backend in (FusedBackend("fused"), FastBackend("fast")):
        value, grad = backend.prepare_loss_and_grad(loss, (pred,) + targets)(pred, *targets)
        assert_close(value, ref_value)
        assert_close(grad, ref_grad)


@pytest.mark.compile
def test_fused_backend_prepare_runs_a_net_with_loss():
    net, loss, x, targets = _step_case("mse", 10)
    assert isinstance(FusedBackend("fused").prepare(loss, (x,) + targets), FusedLoss)
    from compile_losses.nets import NetWithLoss

    fused = FusedBackend("fused").prepare(NetWithLoss(net, loss), (x,) + targets)
    assert_close(fused(x, *targets), loss(net(x), *targets))


def test_backends_refuse_unreduced_losses_with_a_reason():
    for backend in (FusedBackend("fused"), FastBackend("fast")):
        with pytest.raises(Exception, match="reduction 'none' returns no scalar"):
            backend.prepare_loss_and_grad(MSELoss(reduction="none"), (torch.zeros(3),))


def test_pick_fastest_reports_a_failing_candidate_and_never_chooses_it():
    def broken():
        raise RuntimeError("no compiler here")

    picked = pick_fastest({"eager": lambda: (lambda a: a + 1), "broken": broken}, (torch.ones(2),), rounds=3)
    assert picked.choice == "eager"
    assert picked.errors == {"broken": "RuntimeError: no compiler here"}
    assert "broken unavailable: RuntimeError: no compiler here" in picked.note
    with pytest.raises(ValueError, match=r"baseline must be one of the candidates \['x'\], got 'eager'"):
        pick_fastest({"x": lambda: (lambda: None)}, ())


def test_fast_backends_are_registered():
    from compile_losses import backends

    for name in ("fused", "fast"):
        assert name in backends.BACKENDS, name
        assert backends.BACKENDS[name].available()[0] or backends.BACKENDS[name].available()[1]


def test_pick_fastest_strict_raises_instead_of_dropping_a_broken_candidate():
    def broken():
        raise RuntimeError("inductor failed")

    with pytest.raises(RuntimeError, match="inductor failed"):
        pick_fastest({"eager": lambda: (lambda a: a + 1), "compile": broken}, (torch.ones(2),), rounds=3, strict=True)


def test_pick_fastest_falls_back_to_the_baseline_and_says_so():
    import time

    def slow(a):
        time.sleep(2e-3)
        return a + 1

    picked = pick_fastest({"eager": lambda: (lambda a: a + 1), "compile": lambda: slow}, (torch.ones(2),), rounds=3)
    assert picked.choice == "eager"
    assert "fell back to eager" in picked.note and picked.timings["compile"] > picked.timings["eager"]


# ---------------------------------------------------------------------------------------------
# guard-free graphs: the compile backend's forward and train step
# ---------------------------------------------------------------------------------------------
class _DropAll(torch.nn.Module):
    """Linear, then dropout(p=1): zeros in train mode, the identity in eval mode (deterministic)."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)
        self.drop = torch.nn.Dropout(p=1.0)
        self.register_buffer("shift", torch.full((3,), 0.5))

    def forward(self, x):
        return self.drop(self.fc(x)) + self.shift


@pytest.mark.compile
def test_compiled_forward_follows_modes_parameters_and_autograd():
    torch.manual_seed(0)
    module = _DropAll().eval()
    calls = []

    def differentiable(*inputs):
        calls.append(1)
        return module(*inputs)

    forward = CompiledForward(module, differentiable=differentiable)
    x = torch.randn(5, 4)
    with torch.no_grad():
        assert_close(forward(x), module(x))
        module.train()  # another mode: another graph, not the eval one
        assert_close(forward(x), torch.full((5, 3), 0.5))
        module.eval()
        module.fc.weight.mul_(2)  # in place (an optimizer step): seen
        assert_close(forward(x), module(x))
        module.fc.weight = torch.nn.Parameter(torch.zeros(3, 4))  # replaced: seen
        assert_close(forward(x), module(x))
    assert not calls
    # with autograd recording, the call goes to the differentiable path and gradients flow
    out = forward(x)
    assert calls and out.requires_grad
    out.sum().backward()
    assert module.fc.weight.grad is not None


@pytest.mark.compile
def test_graph_cache_compiles_once_per_signature_and_hits_inductors_disk_cache(tmp_path, monkeypatch):
    from torch._dynamo.utils import counters

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    fn = lambda a, b: (a * b + 1.0).sum()  # noqa: E731
    cache = GraphCache(fn, size=2)
    for n in (3, 3, 5, 3):
        assert_close(cache(torch.ones(n), torch.ones(n)), torch.tensor(2.0 * n))
    assert cache.compiles == 2
    cache(torch.ones(7), torch.ones(7))  # a third signature evicts the least recently used (5)
    cache(torch.ones(5), torch.ones(5))
    assert cache.compiles == 4
    # a fresh cache object (as in a new process) loads the compiled graph from inductor's FX
    # graph cache: without a shape environment inductor bypasses that cache ("No shape env")
    counters.clear()
    GraphCache(fn)(torch.ones(3), torch.ones(3))
    assert counters["inductor"]["fxgraph_cache_hit"] == 1, dict(counters["inductor"])
    assert counters["inductor"]["fxgraph_cache_bypass"] == 0
    from compile_losses.fast.graph import CACHE_BYPASSES

    assert CACHE_BYPASSES == []


@pytest.mark.compile
@pytest.mark.parametrize("kind", ["train_step", "loss_and_grad", "forward", "forward_no_grad"])
def test_compile_backend_chooses_per_case_says_what_and_matches_eager(kind):
    from compile_losses.backends import BACKENDS
    from compile_losses.nets import NetWithLoss

    torch.manual_seed(0)
    net, loss = SeedNet().eval(), MSELoss()
    x, y = torch.randn(10, 32), torch.randn(10, 1)
    compile_, eager = BACKENDS["compile"], BACKENDS["eager"]
    if kind == "train_step":
        got = compile_.prepare_train_step(net, loss, (x, y), 0.1)
        want = eager.prepare_train_step(net, loss, (x, y), 0.1)
    elif kind == "loss_and_grad":
        x = net(x).detach()  # the prediction
        got, want = compile_.prepare_loss_and_grad(loss, (x, y)), eager.prepare_loss_and_grad(loss, (x, y))
    else:
        module = NetWithLoss(net, loss)
        with torch.no_grad() if kind == "forward_no_grad" else torch.enable_grad():
            got, want = compile_.prepare(module, (x, y)), eager.prepare(module, (x, y))
    assert got.choice in ("eager", "compile") and set(got.timings) == {"eager", "compile"}
    assert "[compile = " in got.note and "chose " + got.choice in got.note
    with torch.no_grad() if kind == "forward_no_grad" else torch.enable_grad():
        for batch in (10, 3):  # another batch size than the one timed
            args = (x[:batch], y[:batch])
            assert_close(got(*args), want(*args))


@pytest.mark.compile
def test_compile_backend_with_an_unreduced_loss_uses_torch_compile_with_autograd():
    from compile_losses.backends import BACKENDS

    loss = MSELoss(reduction="none")
    pred, target = torch.randn(6, 1), torch.randn(6, 1)
    got = BACKENDS["compile"].prepare_loss_and_grad(loss, (pred, target))
    assert "torch.compile + autograd" in got.note
    assert_close(got(pred, target), BACKENDS["eager"].prepare_loss_and_grad(loss, (pred, target))(pred, target))


@pytest.mark.compile
def test_parity_verifies_the_compiled_path_even_where_eager_would_be_chosen():
    from compile_losses.backends import BACKENDS
    from compile_losses.parity import verify

    compile_ = BACKENDS["compile"]
    loss = MSELoss(reduction="none")  # torch.compile + autograd: slower than eager at this size
    pred, target = torch.randn(6, 1), torch.randn(6, 1)
    with compile_.parity_mode():
        forced = compile_.prepare_loss_and_grad(loss, (pred, target))
    assert forced.choice == "compile" and forced.timings == {} and "untimed" in forced.note
    assert compile_.prepare_loss_and_grad(loss, (pred, target)) is not forced  # timed choices cache apart
    report = verify(None, loss, pred, target, ["compile"])
    rows = [r for r in report.rows if r.backend == "compile"]
    assert rows and all(r.status == "pass" for r in rows), [(r.output, r.status, r.detail) for r in rows]


@pytest.mark.compile
def test_a_training_loop_that_holds_the_last_gradient_stops_allocating():
    loss, pred, (target,) = _case("mse", batch=32)
    fused = FusedLossAndGrad(loss)
    grads = []
    value, grad = fused(pred, target)
    for i in range(6):  # the previous gradient is still held while each call runs
        value, grad = fused(pred * (i + 2.0), target)
        grads.append(grad.clone())
        assert_close(grad, eager_loss_and_grad(loss)(pred * (i + 2.0), target)[1])
    assert fused.pool.allocations == 2  # two buffers, alternating
    assert fused.pool.held_bytes == 2 * grad.numel() * grad.element_size()


@pytest.mark.compile
def test_parity_mode_verifies_the_guard_free_forward_graph():
    from compile_losses.backends import BACKENDS
    from compile_losses.nets import NetWithLoss

    torch.manual_seed(0)
    module = NetWithLoss(SeedNet().eval(), MSELoss())
    x, y = torch.randn(7, 32), torch.randn(7, 1)
    with BACKENDS["compile"].parity_mode():
        forced = BACKENDS["compile"].prepare(module, (x, y))
    out = forced(x, y)  # grad mode is on and the net's parameters require grad ...
    assert not out.requires_grad  # ... yet the no-grad graph ran, not torch.compile's autograd path
    assert_close(out, module(x, y).detach())
