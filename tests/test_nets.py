"""The reference nets: SeedNet is exactly Linear(32,16)-ReLU-Linear(16,1); every net in
``registry.NETS`` scripts, compiles with fullgraph and a dynamic batch, and exports to ONNX with a
dynamic batch, matching eager (in eval mode); each trains with the loss the registry pairs it with.
"""
import os
import tempfile
import warnings
from typing import Tuple

import pytest
import torch
import torch.nn.functional as TF
from torch import Tensor, nn
from torch.testing import assert_close

from compile_losses import nets
from compile_losses.registry import LOSSES, NETS

NET_NAMES = sorted(NETS)


def _net(name: str) -> nn.Module:
    torch.manual_seed(0)
    return NETS[name].build().eval()


def _script(module: nn.Module) -> torch.jit.ScriptModule:
    if not hasattr(torch.jit, "script"):
        pytest.skip("unavailable: this torch has no torch.jit.script")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=DeprecationWarning)
        return torch.jit.script(module)


def _out_and_param_grads(net: nn.Module, x: Tensor) -> Tuple[Tensor, Tuple[Tensor, ...]]:
    out = net(x)
    cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad(out, [p for p in net.parameters()], cot)
    return out.detach(), grads


def test_seed_net_is_the_reference_net():
    net = nets.SeedNet()
    assert isinstance(net.fc1, nn.Linear) and isinstance(net.fc2, nn.Linear)
    assert (net.fc1.in_features, net.fc1.out_features) == (32, 16)
    assert (net.fc2.in_features, net.fc2.out_features) == (16, 1)
    assert [tuple(p.shape) for p in net.parameters()] == [(16, 32), (16,), (1, 16), (1,)]
    x = torch.randn(10, 32)
    expected = TF.linear(torch.relu(TF.linear(x, net.fc1.weight, net.fc1.bias)), net.fc2.weight, net.fc2.bias)
    assert_close(net(x), expected, rtol=0, atol=0)


def test_registry_lists_the_reference_net_and_three_real_nets():
    assert NETS["seed"].factory is nets.SeedNet
    assert {NETS[n].factory for n in NET_NAMES} >= {nets.SeedNet, nets.MLPClassifier, nets.ConvSegNet, nets.TinyEncoder}


def test_tiny_encoder_rejects_indivisible_heads():
    with pytest.raises(ValueError, match=r"d_model must be divisible by heads, got d_model 30 and heads 4"):
        nets.TinyEncoder(d_model=30, heads=4)


@pytest.mark.parametrize("name", NET_NAMES)
def test_net_trains_with_its_registry_loss(name: str):
    spec = NETS[name]
    net = _net(name)
    loss_spec = LOSSES[spec.loss]
    loss = loss_spec.build(**spec.loss_kwargs)
    x = spec.example_input(6)
    pred = net(x)
    targets = loss_spec.make_targets(pred.detach(), torch.Generator().manual_seed(0))
    value = loss(pred, *targets)
    assert value.shape == () and torch.isfinite(value)
    grads = torch.autograd.grad(value, list(net.parameters()))
    assert all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("loss_name", sorted(LOSSES))
def test_every_loss_takes_a_seed_net_prediction(loss_name: str):
    # the (SeedNet, loss) case of the interfaces: SeedNet(out_features=net_out), targets from the spec
    s = LOSSES[loss_name]
    net = nets.SeedNet(out_features=s.net_out).eval()
    pred = net(NETS["seed"].example_input(5))
    targets = s.make_targets(pred.detach(), torch.Generator().manual_seed(0))
    case = nets.NetWithLoss(net, s.build())
    value = case(NETS["seed"].example_input(5), *targets)
    assert_close(value, s.build()(pred, *targets))
    assert value.shape == () and torch.isfinite(value)


@pytest.mark.script
@pytest.mark.parametrize("name", NET_NAMES)
def test_net_scripts_and_matches_eager(name: str):
    net = _net(name)
    scripted = _script(net)
    for batch in (1, 5):
        x = NETS[name].example_input(batch, seed=batch)
        out, grads = _out_and_param_grads(net, x)
        for _ in range(2):  # the profiling executor optimises on a later run
            got, got_grads = _out_and_param_grads(scripted, x)
            assert_close(got, out)
            assert_close(got_grads, grads)


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


# The "eager" backend runs the full dynamo capture (graph breaks, guards, recompiles) cheaply;
# "aot_eager" also traces the backward, about 10 s per net here for the conv and attention nets.
_COMPILE_CASES = [pytest.param(n, "eager", id="{}-eager".format(n)) for n in NET_NAMES] + [
    pytest.param(n, "aot_eager", id="{}-aot_eager".format(n), marks=[] if n == "seed" else [pytest.mark.slow])
    for n in NET_NAMES
]


@pytest.mark.compile
@pytest.mark.parametrize("name,backend", _COMPILE_CASES)
def test_net_compiles_fullgraph_dynamic_and_matches_eager(name: str, backend: str, fresh_dynamo):
    net = _net(name)
    compiled = torch.compile(net, backend=backend, fullgraph=True, dynamic=True)
    # the batch dim stays symbolic. Batch sizes differ from every other dim: duck shaping gives
    # equal sizes one symbol, so a batch of 3 would specialize with ConvSegNet's 3 input channels.
    with torch._dynamo.config.patch(error_on_recompile=True):
        for batch in (5, 11):
            x = NETS[name].example_input(batch, seed=batch)
            out, grads = _out_and_param_grads(net, x)
            got, got_grads = _out_and_param_grads(compiled, x)
            assert_close(got, out)
            assert_close(got_grads, grads)


@pytest.mark.compile
@pytest.mark.slow
@pytest.mark.parametrize("name", NET_NAMES)
def test_net_compiles_with_inductor(name: str, fresh_dynamo):
    net = _net(name)
    compiled = torch.compile(net, fullgraph=True, dynamic=True)
    for batch in (5, 11):
        x = NETS[name].example_input(batch, seed=batch)
        with torch.no_grad():
            assert_close(compiled(x), net(x))


@pytest.mark.onnx
@pytest.mark.parametrize("name", NET_NAMES)
def test_net_exports_to_onnx_with_dynamic_batch(name: str):
    onnx = pytest.importorskip("onnx", reason="unavailable: onnx not installed")
    ort = pytest.importorskip("onnxruntime", reason="unavailable: onnxruntime not installed")
    net = _net(name)
    spec = NETS[name]
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "net.onnx")
        torch.onnx.export(net, (spec.example_input(4),), path, dynamo=True,
                          dynamic_shapes=({0: torch.export.Dim.DYNAMIC},), verbose=False)
        onnx.checker.check_model(path, full_check=True)
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert isinstance(inp.shape[0], str), "batch dimension is fixed: {}".format(inp.shape)
    for batch in (1, 13):
        x = spec.example_input(batch, seed=batch)
        (got,) = session.run(None, {inp.name: x.numpy()})
        with torch.no_grad():
            assert_close(torch.from_numpy(got), net(x))
