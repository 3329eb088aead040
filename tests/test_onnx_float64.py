"""float64 graphs onnxruntime's CPU provider can run: it registers ``Erf`` for float only, so the
exporter's ``Erf`` of a double (GELU's, and erf in gradient graphs) is written as fdlibm's erf in
ops it runs in float64 (``compile_losses._onnx_ops.erf_float64``); float32 graphs keep ``Erf``.
"""

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.testing import assert_close

from compile_losses.backends.onnx import export_onnx
from compile_losses.parity import PASS, verify
from compile_losses.resolve import make_case
from compile_losses.training import export_loss_and_grad_onnx

pytestmark = pytest.mark.onnx
ort = pytest.importorskip("onnxruntime")


class Erf(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.erf(x)


class GeluSum(nn.Module):
    """A loss whose gradient graph holds erf (GELU's backward decomposes into it)."""

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        return (F.gelu(pred) * target).sum()


def _points() -> Tensor:
    special = [0.0, -0.0, 1e-300, -1e-300, 5e-324, 2.0 ** -28, 0.84375, 1.25, 1 / 0.35, 6.0, 27.9, 28.0, 40.0,
               float("inf"), -float("inf"), float("nan")]
    special += [-v for v in special[5:13]]
    gen = torch.Generator().manual_seed(0)
    return torch.cat([torch.tensor(special, dtype=torch.float64), torch.linspace(-7, 7, 40001, dtype=torch.float64),
                      3 * torch.randn(20000, generator=gen, dtype=torch.float64)])


def _run(model: onnx.ModelProto, *inputs: Tensor) -> list:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)})


def _ops(model: onnx.ModelProto) -> set:
    return {n.op_type for n in model.graph.node}


def test_float64_erf_runs_in_onnxruntime_within_one_ulp_of_torch() -> None:
    x = _points()
    model = export_onnx(Erf(), (x,))
    assert "Erf" not in _ops(model)
    got, want = _run(model, x)[0], torch.erf(x).numpy()
    assert got.dtype == np.float64
    finite = np.isfinite(want)
    np.testing.assert_array_equal(got[~finite], want[~finite])  # +-1 at +-inf, NaN at NaN
    ulps = np.abs(got[finite] - want[finite]) / np.spacing(np.abs(want[finite]))
    assert ulps.max() <= 1.0, x[finite][ulps.argmax()]
    assert (got[finite] == want[finite]).mean() > 0.95  # mostly the same double


def test_float32_graphs_keep_onnx_erf() -> None:
    x = torch.linspace(-4, 4, 101)
    model = export_onnx(Erf(), (x,))
    assert "Erf" in _ops(model)
    assert_close(torch.from_numpy(_run(model, x)[0]), torch.erf(x))  # onnxruntime's own float Erf


def test_float64_gelu_forward_and_gradient_graphs_run_and_match_eager(tmp_path) -> None:
    gen = torch.Generator().manual_seed(1)
    pred = torch.cat([_points()[16:], 4 * torch.randn(500, generator=gen, dtype=torch.float64)]).reshape(-1, 1)
    target = torch.randn(pred.shape, generator=gen, dtype=torch.float64)
    forward = export_onnx(nn.GELU(), (pred,))
    assert "Erf" not in _ops(forward)
    assert_close(torch.from_numpy(_run(forward, pred)[0]), F.gelu(pred), rtol=0, atol=4 * 2.0 ** -52 * 7)
    path = str(tmp_path / "loss_and_grad.onnx")
    export_loss_and_grad_onnx(GeluSum(), (pred, target), path)
    model = onnx.load(path)
    assert "Erf" not in _ops(model)
    leaf = pred.clone().requires_grad_(True)
    value = GeluSum()(leaf, target)
    (grad,) = torch.autograd.grad(value, leaf)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    feeds = dict(zip(names, [pred.numpy(), target.numpy()] + [np.ones((), np.float64)] * (len(names) - 2)))
    got_value, got_grad = session.run(None, feeds)[:2]
    assert_close(torch.from_numpy(np.asarray(got_value)).reshape(()), value.detach())
    assert_close(torch.from_numpy(got_grad), grad)


@pytest.mark.slow  # ~20 s: the registry's GELU net in float64, forward, gradient and train-step graphs
def test_registry_gelu_net_float64_passes_in_onnxruntime() -> None:
    case = make_case("mlp", "cross_entropy", batch=7, dtype=torch.float64)
    report = verify(case.net, case.loss, case.inputs, case.targets, ["eager", "onnx"])
    rows = [r for r in report.rows if r.backend == "onnx"]
    assert rows and all(r.status == PASS for r in rows), report  # was 'unsupported': no float64 Erf
    assert {"loss", "dpred", "grad:net.0.weight"} & {r.output for r in rows}
