"""compile_losses.runtime: a bundle run with onnxruntime and numpy alone, checked against eager
PyTorch computed here in the test (never by the code under test)."""
import json
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from bundle_helpers import PYTHON, ROOT, copy_bundle, default_bundle, manifest, resign
from compile_losses.runtime import BundleError, load_bundle

pytestmark = pytest.mark.onnx


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    return default_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def bundle(bundle_dir):
    return load_bundle(bundle_dir)


@pytest.fixture(scope="module")
def torch_pair(bundle_dir):
    """The exported net and loss rebuilt in torch from the bundle's own weights."""
    from compile_losses.losses import MSELoss
    from compile_losses.nets import SeedNet

    net = SeedNet().eval()
    params = load_bundle(bundle_dir).params
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(torch.from_numpy(np.array(params[name])))
    return net, MSELoss()


def _data(batch, seed=3):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, 32), dtype=np.float32), rng.standard_normal((batch, 1), dtype=np.float32)


def test_runtime_never_imports_torch(bundle_dir):
    code = """
import sys
import numpy as np
from compile_losses.runtime import load_bundle
b = load_bundle(sys.argv[1])
x = np.ones((5, 32), np.float32); y = np.zeros((5, 1), np.float32)
pred = b.forward(x); value = b.loss(pred, y); step = b.train_step(x, y, lr=0.05); report = b.check()
assert report.ok, str(report)
from compile_losses.cli import main
assert main(["check-bundle", sys.argv[1]]) == 0
bad = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
print("TORCH_MODULES", bad)
"""
    out = subprocess.run([PYTHON, "-c", code, str(bundle_dir)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "TORCH_MODULES []" in out.stdout, out.stdout


@pytest.mark.parametrize("batch", [1, 7, 300])
def test_forward_loss_match_eager(bundle, torch_pair, batch):
    net, loss = torch_pair
    x, y = _data(batch)
    with torch.no_grad():
        want = net(torch.from_numpy(x))
        want_loss = loss(want, torch.from_numpy(y))
    pred = bundle.forward(x)
    assert pred.shape == (batch, 1) and pred.dtype == np.float32
    torch.testing.assert_close(torch.from_numpy(pred), want)
    torch.testing.assert_close(torch.from_numpy(np.asarray(bundle.loss(pred, y))), want_loss)


def test_loss_and_grad_and_train_step_match_autograd(bundle, torch_pair):
    net, loss = torch_pair
    x, y = _data(9, seed=5)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    value, grad = bundle.loss_and_grad(bundle.forward(x), y)
    p = net(xt).detach().requires_grad_(True)
    want = loss(p, yt)
    torch.testing.assert_close(torch.from_numpy(np.asarray(value)), want.detach())
    torch.testing.assert_close(torch.from_numpy(grad), torch.autograd.grad(want, p)[0])

    step = bundle.train_step(x, y, lr=0.1)
    params = dict(net.named_parameters())
    want = loss(net(xt), yt)
    grads = dict(zip(params, torch.autograd.grad(want, list(params.values()))))
    torch.testing.assert_close(torch.from_numpy(np.asarray(step.loss)), want.detach())
    for name in params:
        torch.testing.assert_close(torch.from_numpy(step.grads[name]), grads[name])
        torch.testing.assert_close(torch.from_numpy(step.new_params[name]), params[name].detach() - 0.1 * grads[name])


def test_train_step_is_functional_and_chains(bundle):
    x, y = _data(16, seed=7)
    before = {k: v.copy() for k, v in bundle.params.items()}
    first = bundle.train_step(x, y, lr=0.05)
    again = bundle.train_step(x, y, lr=0.05)
    for k in before:  # the bundle's own params never change
        np.testing.assert_array_equal(bundle.params[k], before[k])
        np.testing.assert_array_equal(first.new_params[k], again.new_params[k])
    params, losses = bundle.params, []
    for _ in range(20):
        step = bundle.train_step(x, y, lr=0.05, params=params)
        params, losses = step.new_params, losses + [float(step.loss)]
    assert losses[-1] < losses[0] * 0.9  # SGD on a fixed batch goes down
    with pytest.raises(ValueError, match="read-only"):
        bundle.params["fc1.weight"][0, 0] = 1.0


def test_check_passes_on_a_fresh_bundle(bundle):
    report = bundle.check()
    assert report.ok, str(report)
    kinds = {r.graph for r in report.rows}
    assert kinds == {"forward", "loss", "loss_and_grad", "train_step"}
    assert json.loads(report.to_json())["ok"] is True
    assert "all {} outputs pass".format(len(report.rows)) in str(report)


def test_check_fails_when_fixtures_disagree(bundle_dir, tmp_path):
    """Shift the expected forward outputs (eager and float64, re-signed): the graph no longer
    agrees with them, and check() must report exactly that row failing."""
    b = copy_bundle(bundle_dir, tmp_path / "b")
    with np.load(b / "fixtures.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["forward/eager/pred"] = arrays["forward/eager/pred"] + np.float32(1e-3)
    arrays["forward/ref64/pred"] = arrays["forward/ref64/pred"] + 1e-3
    np.savez(b / "fixtures.npz", **arrays)
    resign(b, "fixtures.npz")
    report = load_bundle(b).check()
    assert not report.ok
    bad = [r for r in report.rows if not r.ok]
    assert [(r.graph, r.output) for r in bad] == [("forward", "pred")]
    assert "FAIL" in str(report)


@pytest.mark.parametrize("call, error, match", [
    (lambda b: b.forward(np.zeros((4, 32), np.float64)), TypeError, r"forward: x must have dtype float32, got float64"),
    (lambda b: b.forward(np.zeros((4, 31), np.float32)), ValueError, r"forward: x must have shape \(N, 32\), got \(4, 31\)"),
    (lambda b: b.forward(np.zeros(32, np.float32)), ValueError, r"x must have shape \(N, 32\), got \(32,\)"),
    (lambda b: b.forward(), TypeError, r"forward takes 1 inputs \(x\), got 0"),
    (lambda b: b.loss(np.zeros((4, 1), np.float32)), TypeError, r"loss: loss MSELoss takes 1 target \(target\), got 0"),
    (lambda b: b.loss(np.zeros((4, 1), np.float32), np.zeros((5, 1), np.float32)), ValueError,
     r"loss: target has N=5, but pred has N=4"),
    (lambda b: b.train_step(np.zeros((4, 32), np.float32), np.zeros((4, 1), np.float32), lr="0.1"), TypeError,
     r"lr must be a float, got str"),
    (lambda b: b.train_step(np.zeros((4, 32), np.float32), np.zeros((4, 1), np.float32), params={}), KeyError,
     r"params lacks fc1.weight"),
])
def test_bad_input_named(bundle, call, error, match):
    with pytest.raises(error, match=match):
        call(bundle)


def test_nan_propagates_and_empty_batch_is_nan(bundle):
    x, y = _data(3)
    x[1, 0] = np.nan
    pred = bundle.forward(x)
    assert np.isnan(pred[1, 0]) and np.isfinite(pred[[0, 2]]).all()
    assert np.isnan(bundle.loss(pred, y))  # like torch: NaN in, NaN out
    empty = bundle.forward(np.zeros((0, 32), np.float32))
    assert empty.shape == (0, 1)
    assert np.isnan(bundle.loss(empty, np.zeros((0, 1), np.float32)))  # mean of nothing, as torch


def test_non_contiguous_input(bundle):
    x, y = _data(6)
    wide = np.repeat(x, 2, axis=0)[::2]
    assert not wide.flags.c_contiguous
    np.testing.assert_array_equal(bundle.forward(wide), bundle.forward(x))


def test_eight_threads_bit_identical_to_sequential(bundle):
    rng = np.random.default_rng(11)
    work = [(rng.standard_normal((1 + i % 13, 32), dtype=np.float32), rng.standard_normal((1 + i % 13, 1), dtype=np.float32))
            for i in range(100)]

    def calls(x, y):
        pred = bundle.forward(x)
        step = bundle.train_step(x, y, lr=0.01)
        return [pred, np.asarray(bundle.loss(pred, y))] + [step.loss] + [step.new_params[k] for k in sorted(step.new_params)]

    sequential = [calls(x, y) for x, y in work]
    results = [[None] * len(work) for _ in range(8)]
    errors = []

    def worker(t):
        try:
            for i in range(len(work)):
                j = (i + 13 * t) % len(work)  # each thread walks the work in its own order
                results[t][j] = calls(*work[j])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    for t in range(8):
        for got, want in zip(results[t], sequential):
            for a, b in zip(got, want):
                assert a.tobytes() == b.tobytes()


def test_manifest_pin(bundle_dir):
    digest = load_bundle(bundle_dir).manifest_sha256
    assert load_bundle(bundle_dir, manifest_sha256=digest).manifest_sha256 == digest
    with pytest.raises(BundleError, match=r"manifest.json: sha256 [0-9a-f]{64} is not the pinned 0{64}"):
        load_bundle(bundle_dir, manifest_sha256="0" * 64)


def test_trusted_only_artifacts_are_listed_not_loaded(bundle):
    assert sorted(bundle.trusted_only) == ["forward.pt", "loss.pt"]
    for art in manifest(Path(bundle.path))["artifacts"]:
        assert art.get("trusted_only", False) == art["path"].endswith((".pt", ".pt2"))
