"""The backend adapters: one interface, torch tensors out, dynamic batch, honest unavailability."""
import pytest
import torch

from compile_losses import losses as L
from backend_params import backend_params
from compile_losses.backends import BACKENDS, Backend, Unsupported, export_example, get_backends, structure_key
from compile_losses.errors import UsageError
from compile_losses.nets import NetWithLoss, SeedNet

REQUIRED = {"eager", "compile", "script", "trace", "onnx", "onnx-legacy", "onnx-ref", "aoti",
            "eager-cuda", "compile-cuda", "onnx-cuda"}


def _seed_case(batch: int = 7):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    net = SeedNet().eval()
    gen = torch.Generator().manual_seed(batch)
    return net, L.MSELoss(), torch.randn(batch, 32, generator=gen), torch.randn(batch, 1, generator=gen)


def test_the_table_has_every_backend_and_each_says_whether_it_runs() -> None:
    assert REQUIRED <= set(BACKENDS)
    for name, backend in BACKENDS.items():
        assert isinstance(backend, Backend) and backend.name == name and isinstance(backend.supports_autograd, bool)
        assert backend.cost >= 0 and isinstance(backend.markers, tuple)
        for method in ("available", "prepare", "prepare_loss_and_grad", "prepare_train_step"):
            assert callable(getattr(backend, method)), (name, method)
        ok, reason = backend.available()
        assert isinstance(ok, bool) and isinstance(reason, str)
        assert ok or reason, "{} is unavailable without a reason".format(name)
    autograd = {n for n, b in BACKENDS.items() if b.supports_autograd}
    exported = {n for n, b in BACKENDS.items() if b.exported}
    assert {"eager", "compile", "compile-aot_eager", "script", "trace", "eager-cuda", "compile-cuda"} <= autograd
    assert {"onnx", "onnx-legacy", "onnx-ref", "onnx-cuda", "aoti"} <= exported and not autograd & exported
    assert [n for n, b in BACKENDS.items() if b.reference] == ["eager", "eager-cuda"]


def test_cuda_backends_report_unavailable_without_cuda() -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    for name in ("eager-cuda", "compile-cuda"):
        ok, reason = BACKENDS[name].available()
        assert not ok and "CUDA" in reason
        with pytest.raises(Unsupported, match="unavailable: .*CUDA"):
            BACKENDS[name].prepare(L.MSELoss(), (torch.zeros(2, 1), torch.zeros(2, 1)))


def test_a_backend_that_cannot_run_raises_unsupported_with_its_reason() -> None:
    class Gone(Backend):
        def _available(self):  # type: ignore[no-untyped-def]
            raise ImportError("onnxruntime is not installed")

    gone = Gone("gone")
    assert gone.available() == (False, "ImportError: onnxruntime is not installed")
    for call in (lambda: gone.prepare(L.MSELoss(), (torch.zeros(2, 1), torch.zeros(2, 1))),
                 lambda: gone.prepare_loss_and_grad(L.MSELoss(), (torch.zeros(2, 1), torch.zeros(2, 1))),
                 lambda: gone.prepare_train_step(SeedNet(), L.MSELoss(), (torch.zeros(2, 32), torch.zeros(2, 1)), 0.1)):
        with pytest.raises(Unsupported, match="onnxruntime is not installed"):
            call()


def test_get_backends_rejects_unknown_names() -> None:
    assert [b.name for b in get_backends("eager, onnx")] == ["eager", "onnx"]
    with pytest.raises(UsageError, match=r"unknown backend 'tensorrt' \(known: eager, "):
        get_backends("eager,tensorrt")


@pytest.mark.parametrize("name", backend_params())
def test_prepare_returns_torch_tensors_at_every_batch_size(name: str) -> None:
    backend = BACKENDS[name]
    ok, reason = backend.available()
    if not ok:
        pytest.skip("unavailable: " + reason)
    net, loss, x, t = _seed_case(7)
    case = NetWithLoss(net, loss)
    fn = backend.prepare(case, (x, t))
    for batch in (1, 7, 64):  # one preparation, any batch: the batch dimension is dynamic
        _, _, xb, tb = _seed_case(batch)
        out = fn(xb, tb)
        assert isinstance(out, torch.Tensor) and out.shape == () and out.dtype == torch.float32
        torch.testing.assert_close(out.cpu(), case(xb, tb).detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", backend_params())
def test_train_step_leaves_the_net_untouched(name: str) -> None:
    backend = BACKENDS[name]
    ok, reason = backend.available()
    if not ok:
        pytest.skip("unavailable: " + reason)
    net, loss, x, t = _seed_case(7)
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    # lr 0.5, not the default 0.01: a train step that ignored its lr would still pass at the default
    try:
        step = backend.prepare_train_step(net, loss, (x, t), lr=0.5)(x, t)
    except Unsupported as exc:  # a fact the adapter states (the legacy exporter has no training graphs)
        pytest.skip("unsupported: {}".format(exc))
    assert set(step.grads) == set(step.new_params) == {n for n, _ in net.named_parameters()}
    for n, p in net.named_parameters():
        assert p.grad is None
        torch.testing.assert_close(p.detach(), before[n], rtol=0, atol=0)
        torch.testing.assert_close(step.new_params[n].cpu(), before[n] - 0.5 * step.grads[n].cpu(), rtol=1e-5, atol=1e-6)
    # the gradient is autograd's: compare with an independent eager backward
    net.zero_grad()
    loss(net(x), t).backward()
    for n, p in net.named_parameters():
        torch.testing.assert_close(step.grads[n].cpu(), p.grad, rtol=1e-5, atol=1e-6)


def test_loss_and_grad_of_a_reduction_none_loss_is_the_vjp_with_the_fixed_cotangent() -> None:
    from compile_losses.programs import cotangent

    pred, target = torch.randn(5, 1), torch.randn(5, 1)
    value, dpred = BACKENDS["script"].prepare_loss_and_grad(L.MSELoss(reduction="none"), (pred, target))(pred, target)
    assert value.shape == (5, 1)
    torch.testing.assert_close(dpred, 2 * (pred - target) * cotangent((5, 1), torch.float32))


def test_export_backends_have_no_autograd_and_say_so_for_legacy() -> None:
    pred, target = torch.randn(4, 1), torch.randn(4, 1)
    with pytest.raises(Unsupported, match="torch.export-based exporter only"):
        BACKENDS["onnx-legacy"].prepare_loss_and_grad(L.MSELoss(), (pred, target))


@pytest.mark.onnx
def test_exports_are_cached_by_structure_and_weights() -> None:
    net, loss, x, t = _seed_case(7)
    fn = BACKENDS["onnx-legacy"].prepare(NetWithLoss(net, loss), (x, t))
    # same structure and weights, another batch, another instance: the same prepared graph
    same = SeedNet().eval()
    same.load_state_dict(net.state_dict())
    assert BACKENDS["onnx-legacy"].prepare(NetWithLoss(same, L.MSELoss()), (x[:3], t[:3])) is fn
    other = SeedNet().eval()  # new weights: a new export
    assert structure_key(NetWithLoss(other, loss), (x, t)) != structure_key(NetWithLoss(net, loss), (x, t))
    assert BACKENDS["onnx-legacy"].prepare(NetWithLoss(other, loss), (x, t)) is not fn


def test_export_example_never_exports_at_batch_one_nor_whole_large_inputs() -> None:
    one = export_example((torch.randn(1, 3), torch.tensor([2])))
    assert [tuple(t.shape) for t in one] == [(4, 3), (4,)]
    big = export_example((torch.randn(2 ** 20, 1),))
    assert big[0].shape == (4, 1)
    with pytest.raises(ValueError, match="batch dimension"):
        export_example((torch.tensor(1.0),))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_net_with_loss_is_fixed_arity_and_scriptable() -> None:
    m = NetWithLoss(SeedNet(), L.GaussianNLLLoss())
    assert m.n_targets == 2 and isinstance(m, NetWithLoss)
    x, t, v = torch.randn(3, 32), torch.randn(3, 1), torch.rand(3, 1) + 0.1
    scripted = torch.jit.script(m)
    torch.testing.assert_close(scripted(x, t, v), m(x, t, v))
    with pytest.raises(ValueError, match="n_targets must be one of"):
        NetWithLoss(SeedNet(), L.MSELoss(), n_targets=7)


@pytest.mark.onnx
def test_legacy_export_keeps_every_submodule_mode() -> None:
    # The TorchScript-based exporter ends with module.train(<top module's mode>), recursively: a
    # fresh NetWithLoss wrapper (training mode) switched the eval-mode net inside it back to
    # training, and its Dropout then fired in every later export of the same process.
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1)).eval()
    wrapper = NetWithLoss(net, L.MSELoss())
    assert wrapper.training and not net.training
    x, t = torch.randn(3, 4), torch.randn(3, 1)
    BACKENDS["onnx-legacy"].prepare(wrapper, (x, t))
    assert wrapper.training and not any(m.training for m in net.modules())


@pytest.mark.onnx
@pytest.mark.parametrize("name", ["cross_entropy", "info_nce"])
def test_legacy_export_of_float64_losses_stays_float64(name: str) -> None:
    # cross_entropy's weight-sum division was typed float32 by the TorchScript-based exporter (0-d
    # operands); info_nce's dynamic .diagonal() became an ONNX If with a float32 branch.
    from compile_losses.resolve import make_case

    case = make_case(None, name, batch=7, dtype=torch.float64)
    args = tuple(case.inputs) + tuple(case.targets)
    out = BACKENDS["onnx-legacy"].prepare(case.loss, args)(*args)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, case.loss(*args))


@pytest.mark.compile
def test_fast_selection_is_made_once_per_case_structure() -> None:
    from compile_losses.backends import clear_cache

    clear_cache()
    loss = L.MSELoss()
    pred, target = torch.randn(4, 1), torch.randn(4, 1)
    fast = BACKENDS["fast"]
    chosen = fast.prepare_loss_and_grad(loss, (pred, target))
    # another batch of the same case: the same selection, and it is right at that batch
    p7, t7 = torch.randn(7, 1), torch.randn(7, 1)
    assert fast.prepare_loss_and_grad(loss, (p7, t7)) is chosen
    value, grad = chosen(p7, t7)
    torch.testing.assert_close(value, torch.nn.functional.mse_loss(p7, t7))
    torch.testing.assert_close(grad, 2 * (p7 - t7) / 7)
    # another module (or another structure) selects again
    assert fast.prepare_loss_and_grad(L.MSELoss(), (pred, target)) is not chosen
    assert fast.prepare_loss_and_grad(L.MSELoss(reduction="sum"), (pred, target)) is not chosen
    clear_cache()


def test_structure_key_ignores_the_mark_torch_compile_leaves_on_a_module() -> None:
    # torch.compile(module) sets module._is_torch_compile: with it in the key, every backend
    # after the "fast" one (which compiles the case module) rebuilt its export for each batch.
    net, loss, x, t = _seed_case(3)
    module = NetWithLoss(net, loss)
    before = structure_key(module, (x, t))
    torch.compile(module)  # wraps only; nothing is compiled until it is called
    assert vars(module).get("_is_torch_compile") is True
    assert structure_key(module, (x, t)) == before
    assert structure_key(NetWithLoss(net, L.MSELoss(reduction="sum")), (x, t)) != before


class _TinyEpsilon(torch.nn.Module):
    """A norm with an epsilon below onnxscript's no-op tolerance (1e-8): finite at zero only if
    the export keeps ``Add(x * x, 1e-12)``."""

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.sqrt((input - target).pow(2).sum(-1) + 1e-12).mean()


@pytest.mark.onnx
def test_onnx_exports_keep_epsilons_below_the_optimizers_no_op_tolerance() -> None:
    zeros = (torch.zeros(3, 4), torch.zeros(3, 4))
    loss = _TinyEpsilon()
    value = BACKENDS["onnx"].prepare(loss, zeros)(*zeros)
    torch.testing.assert_close(value, loss(*zeros))  # 1e-6, not 0
    # the gradient graph too: eager's gradient at zero is 0 (0 / sqrt(1e-12)); without the
    # epsilon it is 0 / 0 = NaN
    pred = zeros[0].clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(loss(pred, zeros[1]), pred)
    got_value, got_grad = BACKENDS["onnx"].prepare_loss_and_grad(loss, zeros)(*zeros)
    torch.testing.assert_close(got_grad, expected)
    torch.testing.assert_close(got_value, loss(*zeros))


class _CheckedLoss(torch.nn.Module):
    """A user's loss with a data-dependent check, as kornia's and monai's have: torch.compile copes
    (a graph break), the guard-free graph of the tuned ``compile`` cannot be traced."""

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if (target < 0).any():
            raise ValueError("target must be >= 0")
        return ((input - target) ** 2).mean()


@pytest.mark.compile
@pytest.mark.slow
def test_tuned_compile_falls_back_to_torch_compile_where_its_graph_cannot_be_built() -> None:
    from compile_losses.backends.tuned import TunedCompileBackend

    tuned = next(b for b in BACKENDS.values() if isinstance(b, TunedCompileBackend))
    p, t = torch.randn(6, 1), torch.rand(6, 1)
    with tuned.parity_mode():
        fn = tuned.prepare_loss_and_grad(_CheckedLoss(), (p, t))
    assert "torch.compile's default settings (graph breaks allowed)" in fn.note and "Data-dependent" in fn.note
    value, grad = fn(p, t)
    torch.testing.assert_close(value, torch.nn.functional.mse_loss(p, t))
    torch.testing.assert_close(grad, 2 * (p - t) / 6)
    with pytest.raises(ValueError, match="target must be >= 0"):  # the user's check still runs
        fn(p, -t)
