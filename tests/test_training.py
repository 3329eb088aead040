"""Training graphs (compile_losses.training): the gradient of every loss and a whole SGD step,
exported to ONNX (and compiled by AOTInductor), against eager autograd by the parity rule.

Expected values come from plain ``torch.autograd`` (``backward()`` on a copy of the net), never
from the code under test; each output is judged by ``compile_losses.parity.judge`` against eager
in float32 and eager in float64.

Default run: every registry loss with SeedNet, both graphs, exported at batch 5 and run at batch 7
(a batch the graph was not traced at). Slow: batches 1, 7 and 4096, the larger nets, AOTInductor.
"""
import copy
import importlib.util
import os
import re
from typing import Dict, Tuple

import pytest
import torch
from torch import Tensor, nn

from compile_losses import training as T
from compile_losses.nets import SeedNet
from compile_losses.parity import judge
from compile_losses.registry import LOSSES, NETS

pytestmark = pytest.mark.onnx

LR = 0.01
EXPORT_BATCH = 5
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------------------------
# cases and independent expectations
# ---------------------------------------------------------------------------------------------
def _seed_case(name: str, batch: int, seed: int = 0) -> Tuple[nn.Module, nn.Module, Tensor, Tuple[Tensor, ...]]:
    spec = LOSSES[name]
    torch.manual_seed(0)
    net = SeedNet(out_features=spec.net_out).eval()
    x = NETS["seed"].example_input(batch, seed=seed)
    with torch.no_grad():
        pred = net(x)
    return net, spec.build(), x, spec.make_targets(pred, torch.Generator().manual_seed(seed + 1))


def _net_case(net_name: str, batch: int, seed: int = 0) -> Tuple[nn.Module, nn.Module, Tensor, Tuple[Tensor, ...]]:
    ns = NETS[net_name]
    torch.manual_seed(0)
    net = ns.build().eval()
    x = ns.example_input(batch, seed=seed)
    with torch.no_grad():
        pred = net(x)
    spec = LOSSES[ns.loss]
    return net, spec.build(**ns.loss_kwargs), x, spec.make_targets(pred, torch.Generator().manual_seed(seed + 1))


def _f64(t: Tensor) -> Tensor:
    return t.double() if t.is_floating_point() else t


def _autograd_loss_and_grad(loss: nn.Module, pred: Tensor, targets: Tuple[Tensor, ...]) -> Tuple[Tensor, Tensor]:
    p = pred.detach().clone().requires_grad_(True)
    value = loss(p, *targets)
    value.backward()
    return value.detach(), p.grad


def _autograd_step(net: nn.Module, loss: nn.Module, x: Tensor, targets: Tuple[Tensor, ...]) -> Dict[str, Tensor]:
    net = copy.deepcopy(net)
    net.zero_grad()
    value = loss(net(x), *targets)
    value.backward()
    out = {"loss": value.detach()}
    with torch.no_grad():
        for k, p in net.named_parameters():
            out["grad:" + k] = p.grad.clone()
            out["new:" + k] = p - LR * p.grad
    return out


def _judge_all(got: Dict[str, Tensor], eager: Dict[str, Tensor], eager64: Dict[str, Tensor], label: str) -> None:
    assert set(got) == set(eager), "{}: outputs {} where eager has {}".format(label, sorted(got), sorted(eager))
    failures = []
    for k in eager:
        verdict = judge(got[k], eager[k], eager64[k], gradient=k.startswith(("dpred", "grad:")))
        if verdict["status"] != "pass":
            failures.append("{}: {}".format(k, verdict))
    assert not failures, "{}:\n".format(label) + "\n".join(failures)


def _check_loss_and_grad(run, loss: nn.Module, pred: Tensor, targets: Tuple[Tensor, ...], label: str) -> None:
    value, dpred = run(pred, *targets)
    ev, eg = _autograd_loss_and_grad(loss, pred, targets)
    ev64, eg64 = _autograd_loss_and_grad(copy.deepcopy(loss).double(), _f64(pred), tuple(_f64(t) for t in targets))
    _judge_all({"loss": value, "dpred": dpred}, {"loss": ev, "dpred": eg}, {"loss": ev64, "dpred": eg64}, label)


def _check_step(run, net: nn.Module, loss: nn.Module, x: Tensor, targets: Tuple[Tensor, ...], label: str) -> None:
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    step = run(x, *targets)
    got = {"loss": step.loss}
    got.update({"grad:" + k: g for k, g in step.grads.items()})
    got.update({"new:" + k: p for k, p in step.new_params.items()})
    eager = _autograd_step(net, loss, x, targets)
    eager64 = _autograd_step(copy.deepcopy(net).double(), copy.deepcopy(loss).double(), _f64(x),
                             tuple(_f64(t) for t in targets))
    _judge_all(got, eager, eager64, label)
    for k, v in net.state_dict().items():  # the step never touches the net
        assert torch.equal(v, before[k]), "{}: the train step changed {}".format(label, k)


# ---------------------------------------------------------------------------------------------
# every registry loss with SeedNet: both graphs exported, run in onnxruntime, judged
# ---------------------------------------------------------------------------------------------
DEFAULT_BATCHES = [7]
ALL_BATCHES = [pytest.param(1, marks=pytest.mark.slow), 7, pytest.param(4096, marks=pytest.mark.slow)]


@pytest.mark.parametrize("batch", ALL_BATCHES)
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_and_grad_onnx_matches_autograd(name: str, batch: int) -> None:
    net, loss, x, targets = _seed_case(name, EXPORT_BATCH)
    run = T.prepare_onnx_loss_and_grad(loss, (net(x).detach(),) + targets)
    net2, _, x2, targets2 = _seed_case(name, batch, seed=batch)
    _check_loss_and_grad(run, loss, net2(x2).detach(), targets2, "{} loss_and_grad.onnx batch={}".format(name, batch))


@pytest.mark.parametrize("batch", ALL_BATCHES)
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_train_step_onnx_matches_autograd(name: str, batch: int) -> None:
    net, loss, x, targets = _seed_case(name, EXPORT_BATCH)
    run = T.prepare_onnx_train_step(net, loss, (x,) + targets, LR)
    _, _, x2, targets2 = _seed_case(name, batch, seed=batch)
    _check_step(run, net, loss, x2, targets2, "{} train_step.onnx batch={}".format(name, batch))


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 7, 4096])
@pytest.mark.parametrize("net_name", ["mlp", "convseg", "encoder"])
def test_larger_nets_train_step_onnx(net_name: str, batch: int) -> None:
    net, loss, x, targets = _net_case(net_name, EXPORT_BATCH)
    run = T.prepare_onnx_train_step(net, loss, (x,) + targets, LR)
    _, _, x2, targets2 = _net_case(net_name, batch, seed=batch)
    _check_step(run, net, loss, x2, targets2, "{} train_step.onnx batch={}".format(net_name, batch))


@pytest.mark.slow
@pytest.mark.parametrize("net_name", ["mlp", "convseg", "encoder"])
def test_larger_nets_loss_and_grad_onnx(net_name: str) -> None:
    net, loss, x, targets = _net_case(net_name, EXPORT_BATCH)
    run = T.prepare_onnx_loss_and_grad(loss, (net(x).detach(),) + targets)
    for batch in (1, 7, 4096):
        _, _, x2, targets2 = _net_case(net_name, batch, seed=batch)
        _check_loss_and_grad(run, loss, net(x2).detach(), targets2, "{} loss_and_grad.onnx batch={}".format(net_name, batch))


# ---------------------------------------------------------------------------------------------
# what the graphs look like: names, shapes, opset, faithful sums
# ---------------------------------------------------------------------------------------------
def test_train_step_graph_io_is_documented(tmp_path) -> None:
    import onnx

    net, loss, x, targets = _seed_case("cross_entropy", EXPORT_BATCH)
    info = T.export_train_step_onnx(net, loss, (x,) + targets, str(tmp_path / "train_step.onnx"))
    onnx.checker.check_model(onnx.load(info["path"]))
    assert info["kind"] == "train_step" and info["opset"] == T.OPSET and info["bytes"] == os.path.getsize(info["path"])
    inputs = {i["name"]: i for i in info["inputs"]}
    assert list(inputs) == ["fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias", "x", "target", "lr"]
    assert inputs["fc1_weight"] == {"name": "fc1_weight", "dtype": "float32", "shape": [16, 32], "role": "param"}
    assert inputs["x"]["shape"] == ["batch", 32]
    # integer class indices pass through as int64, batched, with no gradient output
    assert inputs["target"]["dtype"] == "int64" and inputs["target"]["shape"] == ["batch"]
    assert inputs["lr"] == {"name": "lr", "dtype": "float32", "shape": [], "role": "lr"}
    names = [o["name"] for o in info["outputs"]]
    assert names == ["loss", "grad_fc1_weight", "grad_fc1_bias", "grad_fc2_weight", "grad_fc2_bias",
                     "new_fc1_weight", "new_fc1_bias", "new_fc2_weight", "new_fc2_bias"]
    assert info["params"][0] == {"name": "fc1.weight", "input": "fc1_weight", "grad": "grad_fc1_weight",
                                 "new": "new_fc1_weight"}


def test_loss_and_grad_graph_io_and_faithful_sums(tmp_path) -> None:
    import onnx

    pred, targets = LOSSES["gaussian_nll"].input_for(EXPORT_BATCH)
    info = T.export_loss_and_grad_onnx(LOSSES["gaussian_nll"].build(), (pred,) + targets, str(tmp_path / "lg.onnx"))
    assert [i["name"] for i in info["inputs"]] == ["pred", "target", "var"]
    assert [(o["name"], o["shape"]) for o in info["outputs"]] == [("loss", []), ("grad_pred", ["batch", 1])]
    model = onnx.load(info["path"])
    producers = {out: node for node in model.graph.node for out in node.output}
    reductions = [n for n in model.graph.node if n.op_type in ("ReduceSum", "ReduceMean")]
    assert reductions, "expected the loss's mean as a reduction"
    for node in reductions:  # every reduction reads float64: a Cast(to=DOUBLE) feeds it
        src = producers.get(node.input[0])
        assert src is not None and src.op_type == "Cast" and src.attribute[0].i == onnx.TensorProto.DOUBLE, node


@pytest.mark.slow
def test_large_mean_gradient_graph_is_as_faithful_as_eager() -> None:
    # 2^22 elements: a float32 serial ReduceSum would be off ~1e-4 relative here.
    spec = LOSSES["mse"]
    loss = spec.build()
    pred, targets = spec.input_for(EXPORT_BATCH)
    run = T.prepare_onnx_loss_and_grad(loss, (pred,) + targets)
    pred, targets = spec.input_for(1 << 22, seed=3)
    _check_loss_and_grad(run, loss, pred, targets, "mse loss_and_grad.onnx 2^22")


# ---------------------------------------------------------------------------------------------
# any loss: a user's, one whose constants differ, one that cannot be exported
# ---------------------------------------------------------------------------------------------
class PseudoHuberLoss(nn.Module):
    """A user's loss with a learned-looking constant buffer and two targets."""

    def __init__(self, delta: float = 0.7) -> None:
        super().__init__()
        self.delta = delta
        self.register_buffer("scale", torch.tensor([0.5, 2.0, 1.0]))

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor) -> Tensor:
        d = (pred - target) * self.scale / self.delta
        return (weight * self.delta ** 2 * (torch.sqrt(1 + d * d) - 1)).sum() / pred.shape[0]


def test_user_loss_exports_and_matches_autograd() -> None:
    gen = torch.Generator().manual_seed(0)
    make = lambda n: (torch.randn(n, 3, generator=gen), torch.randn(n, 3, generator=gen), torch.rand(n, 3, generator=gen))
    loss = PseudoHuberLoss()
    run = T.prepare_onnx_loss_and_grad(loss, make(EXPORT_BATCH))
    assert [i["name"] for i in run.graph_info["inputs"]] == ["pred", "target", "weight"]
    pred, target, weight = make(9)
    _check_loss_and_grad(run, loss, pred, (target, weight), "PseudoHuberLoss batch=9")


def test_graphs_follow_a_loss_constants_not_a_stale_cache() -> None:
    spec = LOSSES["cross_entropy"]
    pred, targets = spec.input_for(EXPORT_BATCH)
    for weight in ([1.0, 2.0, 0.5, 1.0, 3.0], [3.0, 1.0, 1.0, 0.2, 1.0]):
        loss = spec.build(weight=torch.tensor(weight))
        run = T.prepare_onnx_loss_and_grad(loss, (pred,) + targets)
        _check_loss_and_grad(run, loss, pred, targets, "cross_entropy weight={}".format(weight))


def test_train_step_reads_the_net_parameters_at_call_time() -> None:
    net, loss, x, targets = _seed_case("mse", EXPORT_BATCH)
    run = T.prepare_onnx_train_step(net, loss, (x,) + targets, LR)
    with torch.no_grad():
        net.fc2.bias.add_(1.0)
    _check_step(run, net, loss, x, targets, "mse after changing fc2.bias")


class DrawdownLoss(nn.Module):
    """Test-only: the mean drawdown of the cumulative error, which needs a running max
    (``torch.cummax``), an op with no ONNX form."""

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        equity = (pred - target).cumsum(0)
        return (torch.cummax(equity, 0).values - equity).mean()


def test_loss_with_an_op_without_onnx_form_names_the_op_and_the_loss(tmp_path) -> None:
    pred, target = torch.randn(6, 1), torch.randn(6, 1)
    DrawdownLoss()(pred, target)  # fine in eager
    with pytest.raises(T.ExportUnsupportedError) as info:
        T.export_loss_and_grad_onnx(DrawdownLoss(), (pred, target), str(tmp_path / "lg.onnx"))
    message = str(info.value)
    assert "DrawdownLoss" in message and "cummax" in message, message
    assert len(message.splitlines()) == 1 and "Traceback" not in message
    assert info.value.op == "aten.cummax.default" and info.value.loss.endswith("DrawdownLoss")
    assert isinstance(info.value, ValueError)
    assert not (tmp_path / "lg.onnx").exists()


class ZetaLoss(nn.Module):
    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        return torch.special.zeta(pred.exp() + 1.5, target.abs() + 1.0).mean()


def test_loss_without_a_gradient_says_so() -> None:
    with pytest.raises(T.ExportUnsupportedError, match=r"cannot trace the gradient of .*ZetaLoss: .*zeta"):
        T.trace_loss_and_grad(ZetaLoss(), (torch.randn(4, 1), torch.randn(4, 1)))


def test_non_scalar_loss_is_refused_with_its_shape() -> None:
    spec = LOSSES["mse"]
    pred, targets = spec.input_for(4)
    with pytest.raises(ValueError, match=r"loss must return a scalar .*got .*MSELoss returning shape \(4, 1\)"):
        T.loss_and_grad(spec.build(reduction="none"))(pred, *targets)


# ---------------------------------------------------------------------------------------------
# the eager torch.func versions, and the rewrites the traced graphs rely on
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mse", "cross_entropy", "triplet_margin"])
def test_eager_torch_func_versions_match_autograd(name: str) -> None:
    net, loss, x, targets = _seed_case(name, 7)
    pred = net(x).detach()
    value, dpred = T.loss_and_grad(loss)(pred, *targets)
    ev, eg = _autograd_loss_and_grad(loss, pred, targets)
    torch.testing.assert_close(value, ev)
    torch.testing.assert_close(dpred, eg)
    step = T.train_step(net, loss, LR)(dict(net.named_parameters()), x, *targets)
    eager = _autograd_step(net, loss, x, targets)
    torch.testing.assert_close(step.loss, eager["loss"])
    for k in step.grads:
        torch.testing.assert_close(step.grads[k], eager["grad:" + k])
        torch.testing.assert_close(step.new_params[k], eager["new:" + k])


def test_convolution_backward_rewrite_equals_aten() -> None:
    from compile_losses.training._decomp import convolution_backward

    aten = torch.ops.aten
    gen = torch.Generator().manual_seed(0)
    configs = [  # (spatial, groups, transposed, stride, padding, dilation, kernel, size, output_padding)
        (2, 1, False, [1, 1], [1, 1], [1, 1], [3, 3], [6, 6], [0, 0]),
        (2, 2, False, [2, 3], [1, 0], [1, 2], [3, 2], [7, 9], [0, 0]),
        (1, 3, False, [2], [2], [2], [3], [9], [0]),
        (3, 1, False, [1, 2, 1], [0, 1, 1], [2, 1, 1], [2, 3, 1], [5, 6, 5], [0, 0, 0]),
        (2, 1, True, [2, 2], [1, 0], [1, 1], [3, 3], [5, 4], [1, 0]),
        (1, 2, True, [3], [1], [2], [2], [6], [1]),
    ]
    for sp, g, transposed, stride, pad, dil, k, size, opad in configs:
        cin, cout = 2 * g, 3 * g
        x = torch.randn([3, cin] + size, generator=gen, dtype=torch.float64)
        w = torch.randn(([cin, cout // g] if transposed else [cout, cin // g]) + k, generator=gen, dtype=torch.float64)
        y = aten.convolution(x, w, None, stride, pad, dil, transposed, opad, g)
        go = torch.randn(y.shape, generator=gen, dtype=torch.float64)
        args = (go, x, w, [y.shape[1]], stride, pad, dil, transposed, opad, g, [True, True, True])
        for ref, got in zip(aten.convolution_backward(*args), convolution_backward(*args)):
            torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


def test_diagonal_backward_rewrite_equals_aten() -> None:
    from compile_losses.training._decomp import diagonal_backward

    for shape, offset, d1, d2 in [((4, 4), 0, 0, 1), ((3, 5), 2, 0, 1), ((5, 3), -1, 1, 0), ((2, 4, 3), 1, 2, 0)]:
        x = torch.randn(shape)
        g = torch.randn(x.diagonal(offset, d1, d2).shape)
        ref = torch.ops.aten.diagonal_backward(g, list(shape), offset, d1, d2)
        assert torch.equal(diagonal_backward(g, list(shape), offset, d1, d2), ref)


class _Tokens(nn.Module):
    """Linear on a 3-D input: under torch.func.grad, make_fx would bake the batch in."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(6, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).mean(dim=1)


def test_traced_train_step_keeps_the_batch_symbolic_for_3d_linear() -> None:
    torch.manual_seed(0)
    net, loss = _Tokens(), LOSSES["mse"].build()
    x, target = torch.randn(5, 3, 6), torch.randn(5, 4)
    graph = T.trace_train_step(net, loss, (x, target))
    assert "_tensor_constant" not in graph.module.code and "[15, 6]" not in graph.module.code
    x, target = torch.randn(9, 3, 6), torch.randn(9, 4)
    params = [p.detach() for p in net.parameters()]
    out = graph.module(*params, x, target, torch.tensor(LR))
    eager = _autograd_step(net, loss, x, (target,))
    torch.testing.assert_close(out[0], eager["loss"])
    torch.testing.assert_close(out[1], eager["grad:proj.weight"])


@pytest.mark.parametrize("batch", [1, 32])
def test_trace_batch_avoids_sizes_that_would_be_specialized(batch: int) -> None:
    # batch 1 is specialized by symbolic tracing, and 32 equals SeedNet's input width
    net, loss, x, targets = _seed_case("mse", batch)
    graph = T.trace_train_step(net, loss, (x,) + targets)
    traced = graph.example[graph.input_names.index("x")].shape[0]
    assert traced >= 2 and traced not in (16, 32)
    _, _, x2, t2 = _seed_case("mse", 3, seed=3)
    out = graph.module(*[p.detach() for p in net.parameters()], x2, *t2, torch.tensor(LR))
    torch.testing.assert_close(out[0], _autograd_step(net, loss, x2, t2)["loss"])


# ---------------------------------------------------------------------------------------------
# AOTInductor: the same joint graphs compiled (slow: ~20 s per build on 2 cores)
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.aoti
def test_aoti_loss_and_grad_and_train_step_match_autograd() -> None:
    net, loss, x, targets = _seed_case("cross_entropy", EXPORT_BATCH)
    lg = T.prepare_aoti_loss_and_grad(loss, (net(x).detach(),) + targets)
    step = T.prepare_aoti_train_step(net, loss, (x,) + targets, LR)
    for batch in (1, 7, 4096):
        _, _, x2, t2 = _seed_case("cross_entropy", batch, seed=batch)
        _check_loss_and_grad(lg, loss, net(x2).detach(), t2, "aoti cross_entropy loss_and_grad batch={}".format(batch))
        _check_step(step, net, loss, x2, t2, "aoti cross_entropy train_step batch={}".format(batch))


# ---------------------------------------------------------------------------------------------
# the walkthrough's onnxruntime leg
# ---------------------------------------------------------------------------------------------
def test_walkthrough_onnx_leg_gives_the_same_step_as_eager() -> None:
    path = os.path.join(ROOT, "scripts", "seed_walkthrough.py")
    spec = importlib.util.spec_from_file_location("seed_walkthrough_training", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.leg_onnx_train_step in module.LEGS
    lines = []
    w = module.run_walkthrough(out=lines.append)
    leg = [c for c in w.checks if "train_step.onnx" in c.name]
    assert len(leg) == 3 and all(c.ok for c in leg), leg
    # independently: one plain SGD step on the walkthrough's data, from its starting parameters
    net = SeedNet()
    net.load_state_dict(w.start)
    before = nn.MSELoss()(net(w.inputs).view(1, -1), w.targets)
    before.backward()
    with torch.no_grad():
        expected = {k: p - w.lr * p.grad for k, p in net.named_parameters()}
        net.load_state_dict(expected)
        after = nn.MSELoss()(net(w.inputs).view(1, -1), w.targets)
    for k, v in expected.items():
        torch.testing.assert_close(torch.from_numpy(w.results["params_onnx"][k]), v)
    torch.testing.assert_close(torch.tensor(w.results["onnx_loss_before_step"]), before.detach())
    torch.testing.assert_close(torch.tensor(w.results["onnx_loss_after_step"]), after)
    assert w.results["onnx_loss_after_step"] < w.results["onnx_loss_before_step"]
    assert any(re.search(r"onnxruntime: loss before [\d.]+, after [\d.]+", line) for line in lines)


# ---------------------------------------------------------------------------------------------
# regressions found by `compile-losses verify --all`
# ---------------------------------------------------------------------------------------------
class _NormNet(nn.Module):
    """Linear -> LayerNorm -> ReLU -> Linear: layer norm's backward without Erf (which
    onnxruntime lacks in float64 on the CPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.norm, self.fc2 = nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.relu(self.norm(self.fc1(x))))


def test_float64_layer_norm_train_step_loads_and_matches_autograd() -> None:
    # The exporter's LayerNormalization gives float32 statistics (ONNX allows no float64 there), so
    # a float64 train step subtracted a float32 mean in layer norm's backward and failed to load.
    torch.manual_seed(0)
    net = _NormNet().double().eval()
    loss = LOSSES["cross_entropy"].build()
    x = torch.randn(EXPORT_BATCH, 6, dtype=torch.float64)
    targets = (torch.randint(0, 3, (EXPORT_BATCH,)),)
    step = T.prepare_onnx_train_step(net, loss, (x,) + targets, LR)
    x7 = torch.randn(7, 6, dtype=torch.float64)
    t7 = (torch.randint(0, 3, (7,)),)
    assert step(x7, *t7).loss.dtype == torch.float64
    _check_step(step, net, loss, x7, t7, "float64 layer-norm train_step batch=7")


def test_export_decompositions_rewrite_convolution_backward_for_onnx_only() -> None:
    from compile_losses.training._decomp import export_decompositions

    conv = torch.ops.aten.convolution_backward.default
    assert conv in export_decompositions("onnx") and conv not in export_decompositions("aoti")
    with pytest.raises(ValueError, match="target must be 'onnx' or 'aoti', got 'tvm'"):
        export_decompositions("tvm")
    # the AOTInductor graph keeps the native op (inductor compiles it with a dynamic batch)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 1, 1)).eval()
    x, target = torch.randn(4, 2, 5, 5), torch.rand(4, 1, 5, 5)
    loss = LOSSES["mse"].build()
    ops = {n.target for n in T.trace_train_step(net, loss, (x, target), target="aoti").module.graph.nodes}
    assert conv in ops
    ops = {n.target for n in T.trace_train_step(net, loss, (x, target)).module.graph.nodes}
    assert conv not in ops


@pytest.mark.slow
@pytest.mark.aoti
def test_aoti_conv_train_step_is_right_at_batches_it_was_not_traced_at() -> None:
    # Our convolution_backward rewrite puts the batch in a convolution's channel dimension, which
    # AOTInductor silently bakes in: NaN at batch 1, ~1e-3 errors at 7 with the ONNX rewrite.
    net, loss, x, targets = _net_case("convseg", EXPORT_BATCH)
    step = T.prepare_aoti_train_step(net, loss, (x,) + targets, LR)
    for batch in (1, 7):
        _, _, x2, t2 = _net_case("convseg", batch, seed=batch)
        _check_step(step, net, loss, x2, t2, "aoti convseg train_step batch={}".format(batch))
