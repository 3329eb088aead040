"""The K-step accumulate-then-update program as one graph (K micro-batches of one size in, the
weighted update out): traced, and exported to ONNX and run in onnxruntime, against eager
``torch.optim`` accumulating ``.grad`` the usual way, computed here, by the parity rule."""
import copy

import numpy as np
import pytest
import torch

from compile_losses.losses import CrossEntropyLoss, MSELoss
from compile_losses.nets import SeedNet
from compile_losses.optim import optimizer
from compile_losses.parity import judge
from compile_losses.programs import frozen, trainable

K = 4
ADAMW = {"lr": 1e-2, "weight_decay": 0.05}


def _net(out=1):
    torch.manual_seed(0)
    net = SeedNet(out_features=out).eval()
    net.fc1.requires_grad_(False)
    return net


def _micro(batch, seed, classes=None):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(K):
        x = torch.randn(batch, 32, generator=gen)
        y = torch.randn(batch, 1, generator=gen) if classes is None else torch.randint(0, classes, (batch,), generator=gen)
        out.append((x, y))
    return out


def _eager(net, loss, micro, dtype, weights):
    """torch.optim.AdamW (foreach=False): sum_i w_i / sum w * loss_i, backward, one step."""
    net = copy.deepcopy(net).to(dtype)
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], foreach=False, **ADAMW)
    total = 0.0
    for (x, y), w in zip(micro, weights):
        value = loss(net(x.to(dtype)), y.to(dtype) if y.is_floating_point() else y) * (w / sum(weights))
        value.backward()
        total = total + value.detach()
    opt.step()
    return total, {n: p.detach() for n, p in net.named_parameters() if p.requires_grad}, opt


def _flat(sig, net, opt, micro):
    params = {n: p.detach() for n, p in trainable(net)}
    return sig.flat_inputs(params, {n: p.detach() for n, p in frozen(net)}, micro, opt.init_state(params),
                           opt.hyper_tensors())


def _judge(sig, outs, net, loss, micro, weights):
    got = sig.result(outs)
    value, params, _ = _eager(net, loss, micro, torch.float32, weights)
    value64, params64, _ = _eager(net, loss, micro, torch.float64, weights)
    verdicts = {"loss": judge(torch.as_tensor(got.loss).reshape(()), value, value64)}
    for n in params:
        verdicts[n] = judge(torch.as_tensor(got.new_params[n]), params[n], params64[n])
    assert sorted(params) == sorted(got.new_params) == ["fc2.bias", "fc2.weight"]  # fc1 frozen
    assert {k: v["status"] for k, v in verdicts.items()} == {k: "pass" for k in verdicts}, verdicts


def test_traced_k_step_program_is_the_eager_accumulation():
    from compile_losses.programs import optim_signature
    from compile_losses.signature import AccumStepSignature
    from compile_losses.training import trace_accumulated_step

    net, loss, opt = _net(), MSELoss(), optimizer("adamw", **ADAMW)
    graph = trace_accumulated_step(net, loss, _micro(5, 1), opt)
    # fc2's two trained parameters, fc1's two frozen ones, then the micro-batches
    assert graph.input_names[4:12] == ["x_0", "target_0", "x_1", "target_1", "x_2", "target_2", "x_3", "target_3"]
    sig = AccumStepSignature(optim_signature(net, loss, 1, opt), K)
    assert graph.input_names == sig.input_names and graph.output_names == sig.output_names
    micro = _micro(7, 2)  # another batch size than traced: the micro-batch size is symbolic
    _judge(sig, graph.module(*_flat(sig, net, opt, micro)), net, loss, micro, [1.0] * K)


def test_k_step_program_refuses_unequal_or_single_micro_batches():
    from compile_losses.training import trace_accumulated_step

    net, loss, opt = _net(), MSELoss(), optimizer("adamw", **ADAMW)
    with pytest.raises(ValueError, match="of one batch size"):
        trace_accumulated_step(net, loss, _micro(5, 1)[:3] + _micro(6, 1)[:1], opt)
    with pytest.raises(ValueError, match="at least 2 micro-batches"):
        trace_accumulated_step(net, loss, _micro(5, 1)[:1], opt)


@pytest.mark.slow
@pytest.mark.onnx
@pytest.mark.parametrize("case", ["mse", "cross_entropy-ignore_index"])
def test_k_step_graph_in_onnxruntime(case, tmp_path):
    """One session.run for K micro-batches; cross-entropy with ignored targets is weighted by each
    micro-batch's counted targets (the registry's mean_divisor), not averaged per micro-batch."""
    import onnxruntime as ort

    from compile_losses.programs import equal_micro_batch_weight
    from compile_losses.registry import LOSSES
    from compile_losses.signature import AccumStepSignature, OptimStepSignature
    from compile_losses.training import export_accumulated_step_onnx

    opt = optimizer("adamw", **ADAMW)
    if case == "mse":
        net, loss, weight, classes = _net(), MSELoss(), None, None
    else:
        net, loss, classes = _net(5), CrossEntropyLoss(ignore_index=2), 5
        weight = equal_micro_batch_weight(loss, LOSSES["cross_entropy"].mean_divisor, {"ignore_index": 2})
    info = export_accumulated_step_onnx(net, loss, _micro(6, 1, classes), opt, str(tmp_path / "k.onnx"), weight)
    d = info["signature"]
    sig = AccumStepSignature(OptimStepSignature.from_description(d), d["micro_batches"])
    assert [i["name"] for i in info["inputs"]] == sig.input_names
    session = ort.InferenceSession(str(tmp_path / "k.onnx"), providers=["CPUExecutionProvider"])
    for batch in (3, 9):
        micro = _micro(batch, batch, classes)
        feeds = {n: np.ascontiguousarray(a.numpy()) for n, a in zip(sig.input_names, _flat(sig, net, opt, micro))}
        outs = session.run(None, feeds)
        weights = [1.0] * K if classes is None else [float((y != 2).sum()) for _, y in micro]
        _judge(sig, outs, net, loss, micro, weights)
