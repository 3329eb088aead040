"""The reference walkthrough (scripts/seed_walkthrough.py): its results are checked here against
values computed independently with plain torch, and the script runs once as a user runs it."""
import importlib.util
import os
import subprocess
import sys
from types import ModuleType

import pytest
import torch
import torch.nn.functional as TF
from torch import nn
from torch.testing import assert_close

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "seed_walkthrough.py")


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("seed_walkthrough", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def walk(tmp_path_factory):
    lines = []
    plot = tmp_path_factory.mktemp("walkthrough") / "adamw.png"
    w = _load().run_walkthrough(out=lines.append, plot=str(plot))
    w.lines = lines
    return w


def test_every_check_of_the_walkthrough_holds(walk):
    assert walk.checks, "the walkthrough recorded no checks"
    assert [c.name for c in walk.checks if not c.ok] == []
    assert walk.ok


def test_data_is_seeded_as_in_the_original(walk):
    torch.manual_seed(1)
    inputs = torch.randn(10, 32)
    targets = torch.randn(10).view(1, -1)
    assert_close(walk.inputs, inputs, rtol=0, atol=0)
    assert_close(walk.targets, targets, rtol=0, atol=0)
    assert walk.targets.shape == (1, 10)
    assert_close(walk.targets[0, :4], torch.tensor([0.1924, 0.7161, -0.8120, -1.4617]), rtol=0, atol=5e-5)


def test_net_is_the_seed_net_and_outputs_are_viewed_as_a_row(walk):
    net = walk.fresh_net()
    assert [tuple(p.shape) for p in net.parameters()] == [(16, 32), (16,), (1, 16), (1,)]
    start = walk.start
    expected = TF.linear(torch.relu(TF.linear(walk.inputs, start["fc1.weight"], start["fc1.bias"])),
                         start["fc2.weight"], start["fc2.bias"]).view(1, -1)
    assert walk.results["outputs"].shape == (1, 10)
    assert_close(walk.results["outputs"], expected)


def test_three_losses_agree_with_an_independent_mse(walk):
    outputs, targets = walk.results["outputs"], walk.targets
    by_hand = ((outputs - targets) ** 2).sum() / 10
    for key in ("loss_compile_losses", "loss_functional", "loss_nn"):
        assert walk.results[key].shape == ()
        assert_close(walk.results[key], by_hand)
    assert_close(walk.results["loss_nn"], nn.MSELoss()(outputs, targets))


def test_gradient_appears_only_after_backward(walk):
    assert walk.results["grad_before_backward"] is None
    grad = walk.results["grad_after_backward"]
    assert grad.shape == (1, 16)
    # independent gradient of the MSE w.r.t. fc2.weight at the starting parameters
    net = walk.fresh_net()
    loss = TF.mse_loss(net(walk.inputs).view(1, -1), walk.targets)
    (expected,) = torch.autograd.grad(loss, [net.fc2.weight])
    assert_close(grad, expected)


def test_manual_step_lowers_the_loss_and_matches_sgd(walk):
    r = walk.results
    assert r["loss_after_manual_step"].item() < r["loss_before_step"].item()
    net = walk.fresh_net()
    loss = TF.mse_loss(net(walk.inputs).view(1, -1), walk.targets)
    grads = torch.autograd.grad(loss, list(net.parameters()))
    for (name, p), g in zip(net.named_parameters(), grads):
        assert_close(r["params_manual"][name], p.detach() - 0.01 * g)
        assert_close(r["params_optim"][name], r["params_manual"][name])
        assert not torch.equal(r["params_manual"][name], walk.start[name]), "{} did not move".format(name)


def test_walkthrough_prints_each_step(walk):
    text = "\n".join(walk.lines)
    for needle in ("== 1.", "== 2.", "== 3.", "== 4.", "== 5.", "== 6.", "== 7.", "fc2.weight.grad = None",
                   "torch.nn.MSELoss", "step         eager   onnxruntime"):
        assert needle in text


def test_adamw_leg_matches_an_independent_eager_adamw(walk):
    """The trainer's 32 losses and final parameters against torch.optim.AdamW with its default
    implementation, run here on the ten samples from the walkthrough's start."""
    net = walk.fresh_net()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=1e-2)
    losses = []
    for _ in range(32):
        opt.zero_grad()
        value = TF.mse_loss(net(walk.inputs), walk.targets.view(-1, 1))
        value.backward()
        opt.step()
        losses.append(value.detach())
    got = walk.results["adamw_ort_losses"]
    assert got.shape == (32,)
    assert_close(got, torch.stack(losses))
    for name, p in net.named_parameters():
        assert_close(walk.results["adamw_ort_params"][name], p.detach(), rtol=1e-5, atol=1e-6)
    assert float(got[-1]) < 0.1 * float(got[0])
    rows = [line for line in walk.lines if line[:4].strip().isdigit()]
    assert len(rows) == 32 and rows[0].split()[0] == "1" and rows[-1].split()[0] == "32"


def test_adamw_leg_writes_the_plot(walk):
    path = walk.results["adamw_plot"]
    with open(path, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(path) > 5000


def test_legs_can_be_appended():
    module = _load()
    seen = []

    def extra(w):
        seen.append((tuple(w.inputs.shape), sorted(w.results)))
        w.check("an appended leg ran", True)

    w = module.run_walkthrough(out=lambda _: None, legs=[module.leg_data, extra])
    assert seen == [((10, 32), ["targets"])] and w.checks[-1].name == "an appended leg ran"


def test_main_exit_code_follows_the_checks(capsys, monkeypatch):
    module = _load()
    monkeypatch.setattr(module, "LEGS", [module.leg_data])
    assert module.main([]) == 0
    assert "1 of 1 checks hold" in capsys.readouterr().out
    monkeypatch.setattr(module, "LEGS", [module.leg_data, lambda w: w.check("a failing check", False, "on purpose")])
    assert module.main([]) == 1
    captured = capsys.readouterr()
    assert "1 of 2 checks hold" in captured.out and "FAILED: a failing check (on purpose)" in captured.err


def test_script_runs_as_a_user_runs_it():
    # --quick: the AdamW leg (a bundle export) runs in-process above, and in full in the slow test below
    proc = subprocess.run([sys.executable, SCRIPT, "--quick"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "FAIL" not in proc.stdout
    assert "0.1924" in proc.stdout and "checks hold" in proc.stdout and "== 7." not in proc.stdout


@pytest.mark.slow
def test_script_with_the_plot_runs_as_a_user_runs_it(tmp_path):
    png = tmp_path / "curves.png"
    proc = subprocess.run([sys.executable, SCRIPT, "--plot", str(png)], capture_output=True, text=True, timeout=600,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "== 7." in proc.stdout and "12 of 12 checks hold" in proc.stdout
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_quick_and_plot_together_are_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        _load().main(["--quick", "--plot", "x.png"])
    assert exc.value.code == 2 and "--plot draws the AdamW leg" in capsys.readouterr().err
