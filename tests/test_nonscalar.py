"""Losses that do not reduce to a scalar (``reduction="none"``): their gradients are
vector-Jacobian products with the programs' fixed cotangent, in every autograd backend, in the
exported loss-and-gradient graph (which takes the cotangent as an input), in a bundle and in the
runtime; and the loss alone (``net`` None, ``--net none``) exported as a bundle.

Expected gradients are written out by hand here: ``d/dp (p - t)^2 = 2 (p - t)``, times the
cotangent entry of that element."""
import json

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from compile_losses import losses as L
from compile_losses.backends import BACKENDS
from compile_losses.parity import verify
from compile_losses.parity.rule import PASS, UNSUPPORTED
from compile_losses.programs import cotangent
from compile_losses.signature import COTANGENT


class PerFeatureLoss(nn.Module):
    """A non-scalar loss whose dim 0 is not the batch: the squared error's mean over the batch, per feature."""

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        return ((pred - target) ** 2).mean(0)


def _case(n: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=gen), torch.randn(n, 3, generator=gen)


@pytest.mark.onnx
def test_exported_gradient_of_an_unreduced_loss_is_the_vjp_for_every_batch_of_one_graph() -> None:
    loss = L.MSELoss(reduction="none")
    lg = BACKENDS["onnx"].prepare_loss_and_grad(loss, _case(4))
    info = lg.graph_info
    assert [i["name"] for i in info["inputs"]] == ["pred", "target", COTANGENT]
    assert info["inputs"][-1]["role"] == COTANGENT and info["inputs"][-1]["shape"][0] == "batch"
    for n in (1, 7):  # one graph, the batch dynamic in the cotangent too
        pred, target = _case(n, seed=n)
        value, grad = lg(pred, target)
        torch.testing.assert_close(value, (pred - target) ** 2)
        torch.testing.assert_close(grad, 2 * (pred - target) * cotangent((n, 3), torch.float32))


@pytest.mark.onnx
def test_a_loss_whose_dim_0_is_not_the_batch_gets_a_static_cotangent() -> None:
    lg = BACKENDS["onnx"].prepare_loss_and_grad(PerFeatureLoss(), _case(4))
    assert lg.graph_info["inputs"][-1]["shape"] == [3]
    pred, target = _case(5, seed=3)
    value, grad = lg(pred, target)
    torch.testing.assert_close(value, ((pred - target) ** 2).mean(0))
    torch.testing.assert_close(grad, 2 * (pred - target) / 5 * cotangent((3,), torch.float32)[None, :])


@pytest.mark.onnx
def test_verify_judges_the_gradient_of_an_unreduced_loss_in_every_backend_with_one() -> None:
    pred, target = _case(6)
    report = verify(None, L.MSELoss(reduction="none"), (pred,), (target,), backends=["eager", "script", "onnx"],
                    batches=(6,), dtypes=(torch.float32,), audit=False)
    dpred = {r.backend: r.status for r in report.rows if r.output == "dpred"}
    assert dpred == {"eager": PASS, "script": PASS, "onnx": PASS}, report
    assert report.ok, report


@pytest.mark.onnx
def test_an_exported_train_step_of_an_unreduced_loss_is_unsupported_with_the_reason() -> None:
    torch.manual_seed(0)
    net = nn.Linear(3, 3)
    x, target = _case(5)
    report = verify(net, L.MSELoss(reduction="none"), (x,), (target,), backends=["onnx"],
                    dtypes=(torch.float32,), audit=False)
    step = [r for r in report.rows if r.backend == "onnx" and r.output == "train_step"]
    assert step and step[0].status == UNSUPPORTED, report
    assert "needs a scalar loss" in step[0].detail and "(5, 3)" in step[0].detail
    assert all(r.status == PASS for r in report.rows if r.backend == "onnx" and r.output == "dpred"), report


@pytest.mark.onnx
@pytest.mark.slow  # one bundle export with its parity run, ~25 s
def test_the_loss_alone_exports_a_bundle_whose_gradient_takes_the_cotangent(tmp_path) -> None:
    from compile_losses import export_bundle
    from compile_losses.runtime import load_bundle

    pred, target = _case(4)
    path = export_bundle(None, L.MSELoss(reduction="none"), pred, target, tmp_path, name="alone", torchscript=False)
    assert path.ok, path.report
    manifest = json.loads((path / "manifest.json").read_text())
    kinds = {a["kind"]: a for a in manifest["artifacts"]}
    assert "train_step" not in kinds and "aoti_forward" not in kinds and manifest["net"]["alone"] is True
    assert [i["name"] for i in kinds["loss_and_grad"]["inputs"]] == ["pred", "target", COTANGENT]
    assert manifest["unavailable"] == [{"kind": "train_step", "reason": "the loss alone (no net): no parameters to train"}]
    b = load_bundle(path)
    assert b.check().ok
    p, t = _case(9, seed=2)
    assert np.array_equal(b.forward(p.numpy()), p.numpy())  # the identity
    with pytest.raises(TypeError, match=r"not reduced to a scalar: pass cotangent="):
        b.loss_and_grad(p.numpy(), t.numpy())
    c = np.linspace(-1.0, 1.0, 27, dtype=np.float32).reshape(9, 3)
    value, grad = b.loss_and_grad(p.numpy(), t.numpy(), cotangent=c)
    np.testing.assert_allclose(value, ((p - t) ** 2).numpy(), rtol=1e-6)
    np.testing.assert_allclose(grad, (2 * (p - t)).numpy() * c, rtol=1e-6, atol=1e-7)


@pytest.mark.onnx
@pytest.mark.slow  # one bundle export, ~15 s
def test_cli_export_net_none_writes_the_loss_alone(tmp_path, capsys) -> None:
    from compile_losses.cli import main

    rc = main(["export", "--net", "none", "--loss", "compile_losses.losses:MSELoss", "--loss-arg", "reduction=mean",
               "--input", "float32[N,3]", "--out", str(tmp_path), "--skip", "torchscript,parity", "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0, out
    manifest = json.loads((tmp_path / "none-mseloss" / "manifest.json").read_text())
    assert manifest["net"]["alone"] is True
    lg = next(a for a in manifest["artifacts"] if a["kind"] == "loss_and_grad")
    assert [i["name"] for i in lg["inputs"]] == ["pred", "target"]  # a scalar loss: no cotangent


@pytest.mark.aoti
@pytest.mark.slow  # an AOTInductor build, 20-40 s
def test_aoti_gradient_of_an_unreduced_loss_is_the_vjp_for_every_batch() -> None:
    from compile_losses.training import prepare_aoti_loss_and_grad

    lg = prepare_aoti_loss_and_grad(L.MSELoss(reduction="none"), _case(4))
    for n in (1, 6):
        pred, target = _case(n, seed=n)
        value, grad = lg(pred, target)
        torch.testing.assert_close(value, (pred - target) ** 2)
        torch.testing.assert_close(grad, 2 * (pred - target) * cotangent((n, 3), torch.float32))
