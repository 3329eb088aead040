"""Bundles with an optimizer: ``export --optimizer``, the manifest's record, the trajectory in the
fixtures that ``check()`` re-runs, and the runtime's ``bundle.trainer()`` (step, params, state,
save/load), against eager ``torch.optim`` computed here (never by the code under test)."""
import subprocess
import threading

import numpy as np
import pytest
import torch

from bundle_helpers import PYTHON, ROOT, copy_bundle, manifest, resign, write_manifest
from compile_losses.runtime import BadArgumentError, BundleError, TrainerStateError, load_bundle

pytestmark = pytest.mark.onnx

ADAMW = {"lr": 3e-3, "weight_decay": 0.05}


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    """SeedNet + MSE with AdamW, exported by the CLI (no TorchScript, AOTI or parity run)."""
    from compile_losses.cli import main

    out = tmp_path_factory.mktemp("optim-bundles")
    argv = ["export", "--net", "seed", "--loss", "mse", "--out", str(out), "--name", "seed-adamw",
            "--optimizer", "adamw", "--optim-arg", "lr=0.003", "--optim-arg", "weight_decay=0.05",
            "--skip", "torchscript,aoti,parity", "--quiet"]
    assert main(argv) == 0
    return out / "seed-adamw"


@pytest.fixture(scope="module")
def bundle(bundle_dir):
    return load_bundle(bundle_dir)


def _net(params, dtype=torch.float32):
    """SeedNet rebuilt in torch from the bundle's weights."""
    from compile_losses.nets import SeedNet

    net = SeedNet().eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(torch.from_numpy(np.array(params[name])))
    return net.to(dtype)


def _batches(steps, batch=10, seed=5):
    """Fresh batches of one learnable task (a fixed linear teacher plus noise)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        x = torch.randn(batch, 32, generator=gen)
        out.append((x, 0.3 * x[:, :4].sum(1, keepdim=True) + 0.1 * torch.randn(batch, 1, generator=gen)))
    return out


def _eager(params, batches, dtype, **hyper):
    """Eager torch.optim.AdamW (foreach=False) over ``batches``: losses, final params and state."""
    net = _net(params, dtype)
    return _train_mse(net, torch.optim.AdamW(net.parameters(), foreach=False, **dict(ADAMW, **hyper)), batches, dtype)


def _train_mse(net, opt, batches, dtype):
    """``opt`` steps ``net`` under MSE over ``batches``: the losses, the final params and the state
    of every parameter that has one."""
    losses = []
    for x, y in batches:
        opt.zero_grad()
        value = torch.nn.functional.mse_loss(net(x.to(dtype)), y.to(dtype))
        value.backward()
        opt.step()
        losses.append(value.detach())
    state = {n: opt.state[p] for n, p in net.named_parameters() if p in opt.state}
    return torch.stack(losses), {n: p.detach() for n, p in net.named_parameters()}, state


def test_manifest_records_the_optimizer(bundle_dir):
    from compile_losses.nets import SeedNet
    from compile_losses.losses import MSELoss
    from compile_losses.optim import optimizer
    from compile_losses.programs import optim_signature

    m = manifest(bundle_dir)
    rec = m["train_step"]
    assert rec["optimizer"] == "adamw"
    assert rec["optimizer_args"]["lr"] == 0.003 and rec["optimizer_args"]["weight_decay"] == 0.05
    assert rec["optimizer_args"]["amsgrad"] is False
    assert rec["state"] == ["step", "exp_avg", "exp_avg_sq"]
    assert rec["trajectory_steps"] >= 2
    art = next(a for a in m["artifacts"] if a["kind"] == "train_step")
    sig = optim_signature(SeedNet(), MSELoss(), 1, optimizer("adamw", **ADAMW))
    assert [i["name"] for i in art["inputs"]] == sig.input_names
    assert [o["name"] for o in art["outputs"]] == sig.output_names
    import onnx

    graph = onnx.load(str(bundle_dir / art["path"])).graph
    assert [i.name for i in graph.input] == sig.input_names
    assert {i["name"]: i["dtype"] for i in art["inputs"]}["lr"] == "float64"


def test_check_reruns_the_trajectory(bundle):
    report = bundle.check()
    assert report.ok, str(report)
    traj = [r.output for r in report.rows if r.graph == "trajectory"]
    names = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert traj == ["loss"] + ["final/" + n for n in names] + [
        "state/{}/{}".format(n, k) for n in names for k in ("step", "exp_avg", "exp_avg_sq")]


def test_check_fails_when_the_trajectory_disagrees(bundle_dir, tmp_path):
    b = copy_bundle(bundle_dir, tmp_path / "b")
    with np.load(b / "fixtures.npz") as npz:
        arrays = dict(npz)
    for tag in ("eager", "ref64"):  # both moved: the re-run trajectory no longer matches
        arrays["trajectory/{}/final/fc2.bias".format(tag)] = arrays["trajectory/{}/final/fc2.bias".format(tag)] + 1e-3
    np.savez(b / "fixtures.npz", **arrays)
    resign(b, "fixtures.npz")
    report = load_bundle(b).check()
    assert not report.ok
    assert [(r.graph, r.output) for r in report.rows if not r.ok] == [("trajectory", "final/fc2.bias")]


def test_trainer_matches_eager_adamw_over_32_steps(bundle):
    """The parity rule over 32 steps: the trainer against eager AdamW in float32, float64 eager
    from the same start as the reference (lr overridden at the trainer)."""
    from compile_losses.parity import judge

    batches = _batches(32)
    t = bundle.trainer(lr=1e-2)
    losses = torch.tensor([t.step(x.numpy(), y.numpy()) for x, y in batches], dtype=torch.float32)
    eager = _eager(bundle.params, batches, torch.float32, lr=1e-2)
    ref = _eager(bundle.params, batches, torch.float64, lr=1e-2)
    verdicts = {"loss": judge(losses, eager[0], ref[0])}
    for n in eager[1]:
        verdicts["final:" + n] = judge(torch.from_numpy(t.params[n]), eager[1][n], ref[1][n])
        for k in ("exp_avg", "exp_avg_sq"):
            verdicts["state:{}.{}".format(n, k)] = judge(torch.from_numpy(t.state[n][k]), eager[2][n][k], ref[2][n][k])
        assert float(t.state[n]["step"]) == 32.0 == float(eager[2][n]["step"])
    failing = {k: v for k, v in verdicts.items() if v["status"] != "pass"}
    assert not failing, failing
    assert float(losses[-4:].mean()) < float(losses[:4].mean())  # it trained


def test_step_returns_the_loss_before_the_update(bundle):
    t = bundle.trainer()
    x, y = _batches(1)[0]
    start = t.params
    value = t.step(x.numpy(), y.numpy())
    with torch.no_grad():
        want = torch.nn.functional.mse_loss(_net(start)(x), y)
    torch.testing.assert_close(torch.tensor(value, dtype=torch.float32), want)
    assert not np.array_equal(t.params["fc1.weight"], start["fc1.weight"])
    assert isinstance(value, float)


def test_params_and_state_are_copies(bundle):
    t = bundle.trainer()
    t.params["fc1.bias"][:] = 99.0
    t.state["fc1.bias"]["exp_avg"][:] = 99.0
    assert not (t.params["fc1.bias"] == 99.0).any() and not (t.state["fc1.bias"]["exp_avg"] == 99.0).any()
    np.testing.assert_array_equal(t.params["fc1.bias"], bundle.params["fc1.bias"])


def test_save_load_round_trip(bundle, tmp_path):
    batches = [(x.numpy(), y.numpy()) for x, y in _batches(5)]
    a = bundle.trainer(lr=2e-3)
    for x, y in batches[:3]:
        a.step(x, y)
    path = a.save(tmp_path / "ckpt.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.npz"]  # no temporary file left
    after_a = [a.step(x, y) for x, y in batches[3:]]
    b = bundle.trainer()                       # other lr: the checkpoint's comes back
    b.load(path)
    assert b.hyper["lr"] == 2e-3
    after_b = [b.step(x, y) for x, y in batches[3:]]
    assert after_a == after_b
    for n, p in a.params.items():
        assert p.tobytes() == b.params[n].tobytes()
        for k, v in a.state[n].items():
            assert v.tobytes() == b.state[n][k].tobytes()
    a.save(path)                               # replaces the file in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.npz"]


def _tampered(arrays):
    def edit(key, value=None):
        out = dict(arrays)
        if value is None:
            del out[key]
        else:
            out[key] = value
        return out

    w = arrays["param/fc1.weight"]
    return {
        "missing": (edit("state/fc1.weight/exp_avg"), "lacks state/fc1.weight/exp_avg"),
        "extra": (dict(arrays, **{"param/fc9.weight": w}), "holds param/fc9.weight"),
        "dtype": (edit("param/fc1.weight", w.astype(np.float64)), "param/fc1.weight is float64"),
        "shape": (edit("param/fc1.weight", w[:3]), r"param/fc1.weight is float32 \(3, 32\)"),
        "nan": (edit("param/fc2.bias", np.full_like(arrays["param/fc2.bias"], np.nan)), "param/fc2.bias holds non-finite"),
        "step": (edit("state/fc2.bias/step", np.asarray(-1.5)), "state/fc2.bias/step must be a whole number"),
        "lr": (edit("hyper/lr", np.asarray(-1.0)), "lr must be a finite number"),
    }


@pytest.mark.parametrize("case", ["missing", "extra", "dtype", "shape", "nan", "step", "lr", "not-npz"])
def test_load_refuses_a_bad_checkpoint_and_keeps_its_state(bundle, tmp_path, case):
    t = bundle.trainer()
    x, y = (a.numpy() for a in _batches(1)[0])
    t.step(x, y)
    good = t.save(tmp_path / "good.npz")
    before = t.params, t.state, t.hyper
    bad = tmp_path / "bad.npz"
    if case == "not-npz":
        bad.write_bytes(b"PK\x03\x04 not a zip")
        match = "is not a readable npz"
    else:
        with np.load(good) as npz:
            arrays, match = _tampered(dict(npz))[case]
        np.savez(bad, **arrays)
    with pytest.raises(TrainerStateError, match=match):
        t.load(bad)
    assert t.hyper == before[2]
    for n, p in before[0].items():
        np.testing.assert_array_equal(t.params[n], p)
        np.testing.assert_array_equal(t.state[n]["exp_avg"], before[1][n]["exp_avg"])


@pytest.mark.parametrize("kwargs, error, match", [
    ({"lr": -1.0}, BadArgumentError, r"lr must be a finite number in \[0.0, inf\]"),
    ({"lr": float("nan")}, BadArgumentError, "lr must be a finite"),
    ({"beta2": 1.0}, BadArgumentError, r"beta2 must be a finite number in \[0.0, 1.0\)"),
    ({"lr": "0.1"}, TypeError, "lr must be a real number, got str"),
    ({"momentum": 0.9}, TypeError, "hyper-parameters of this train step are lr, beta1, beta2, eps, weight_decay, got 'momentum'"),
    ({"betas": (0.9,)}, BadArgumentError, "betas must be a pair"),
])
def test_trainer_overrides_are_checked(bundle, kwargs, error, match):
    with pytest.raises(error, match=match):
        bundle.trainer(**kwargs)


def test_set_hyper_drives_a_schedule(bundle):
    x, y = (a.numpy() for a in _batches(1)[0])
    t = bundle.trainer()
    t.set_hyper(lr=0.0, weight_decay=0.0)
    start = t.params
    t.step(x, y)
    for n, p in t.params.items():  # lr 0: moments move, parameters do not
        np.testing.assert_array_equal(p, start[n])
    assert float(t.state["fc1.weight"]["step"]) == 1.0
    with pytest.raises(BadArgumentError, match="set_hyper: eps must be"):
        t.set_hyper(eps=-1.0)


def test_plain_train_step_is_refused_on_an_optimizer_bundle(bundle):
    x, y = (a.numpy() for a in _batches(1)[0])
    with pytest.raises(NotImplementedError, match=r"carries adamw state: train with bundle.trainer\(\)"):
        bundle.train_step(x, y, lr=0.01)


def test_trainers_in_threads_match_sequential(bundle):
    batches = [(x.numpy(), y.numpy()) for x, y in _batches(12)]
    seq = bundle.trainer()
    want = [seq.step(x, y) for x, y in batches]
    results, errors = [None] * 4, []

    def worker(i):
        try:
            t = bundle.trainer()
            results[i] = ([t.step(x, y) for x, y in batches], t.params)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    shared = bundle.trainer()  # one trainer shared by threads: every step counted once
    steppers = [threading.Thread(target=lambda: [shared.step(*batches[0]) for _ in range(5)]) for _ in range(3)]
    for th in steppers:
        th.start()
    for th in threads + steppers:
        th.join()
    assert not errors
    for losses, params in results:
        assert losses == want
        for n, p in params.items():
            assert p.tobytes() == seq.params[n].tobytes()
    assert float(shared.state["fc2.bias"]["step"]) == 15.0


_EDITS = {
    "optimizer-name": (lambda m, a: a["roles"].update(optimizer="rmsprop"), "train_step optimizer must be one of sgd, adam, adamw"),
    "hyper-type": (lambda m, a: a["optimizer"]["hyper"].update(lr="0.1"), r"optimizer.hyper\[lr\] must be a finite number"),
    "hyper-bool": (lambda m, a: a["optimizer"]["hyper"].update(lr=True), r"optimizer.hyper\[lr\] must be a finite number"),
    "state-names": (lambda m, a: a["roles"].update(state=["exp_avg", "step"]), "roles.state must start with 'step'"),
    "param-name": (lambda m, a: a["roles"]["params"].__setitem__(0, 7), r"roles.params\[0\] must be a printable"),
    "duplicate": (lambda m, a: a["roles"].update(frozen=["fc1.bias"]), "roles.params and roles.frozen share"),
    "record": (lambda m, a: m["train_step"]["optimizer_args"].update(lr=0.5), "train_step.optimizer_args is"),
    "steps": (lambda m, a: m["train_step"].update(trajectory_steps=True), "trajectory_steps must be an integer"),
    "flags": (lambda m, a: a["optimizer"].update(flags={"amsgrad": "yes"}), "optimizer.flags must map names to true/false"),
    "dtype": (lambda m, a: next(i for i in a["inputs"] if i["name"] == "lr").update(dtype="float32"),
              "hyper-parameter lr must be a 0-d float64 input"),
}


@pytest.mark.parametrize("edit", sorted(_EDITS))
def test_manifest_optimizer_fields_are_validated(bundle_dir, tmp_path, edit):
    change, match = _EDITS[edit]
    b = copy_bundle(bundle_dir, tmp_path / "b")
    data = manifest(b)
    change(data, next(a for a in data["artifacts"] if a["kind"] == "train_step"))
    write_manifest(b, data)
    with pytest.raises(BundleError, match=match):
        load_bundle(b)


def test_the_trainer_never_imports_torch(bundle_dir, tmp_path):
    code = """
import sys
import numpy as np
from compile_losses.runtime import load_bundle
b = load_bundle(sys.argv[1])
t = b.trainer(lr=1e-3)
x = np.ones((5, 32), np.float32); y = np.zeros((5, 1), np.float32)
first = t.step(x, y); t.save(sys.argv[2]); t.load(sys.argv[2]); assert b.check().ok
bad = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
print("TORCH_MODULES", bad)
"""
    out = subprocess.run([PYTHON, "-c", code, str(bundle_dir), str(tmp_path / "c.npz")], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "TORCH_MODULES []" in out.stdout, out.stdout


@pytest.mark.parametrize("kwargs, error, match", [
    ({"optimizer": "rmsprop"}, ValueError, "optimizer must be one of 'sgd', 'adam', 'adamw', got 'rmsprop'"),
    ({"optimizer_args": {"lr": 0.1}}, ValueError, "optimizer_args needs optimizer"),
    ({"optimizer": "adamw", "training": False}, ValueError, "needs training=True"),
    ({"optimizer": "adamw", "optimizer_args": {"momentum": 0.9}}, ValueError, "got unknown 'momentum'"),
    ({"optimizer": "sgd", "optimizer_args": {"lr": -1.0}}, ValueError, r"optimizer_args\['lr'\] must be >= 0"),
])
def test_export_refuses_a_bad_optimizer_before_writing(tmp_path, kwargs, error, match):
    from compile_losses.export import export_bundle
    from compile_losses.losses import MSELoss
    from compile_losses.nets import SeedNet

    with pytest.raises(error, match=match):
        export_bundle(SeedNet(), MSELoss(), torch.randn(4, 32), torch.randn(4, 1), tmp_path, **kwargs)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv, match", [
    (["--optim-arg", "lr=0.1"], "--optim-arg needs --optimizer"),
    (["--optimizer", "adamw", "--optim-arg", "nesterov=true"], "--optim-arg: optimizer_args for adamw take"),
    (["--optimizer", "adamw", "--skip", "training"], "--optimizer needs the training graphs"),
])
def test_cli_export_optimizer_usage_errors(tmp_path, capsys, argv, match):
    from compile_losses.cli import main

    assert main(["export", "--out", str(tmp_path)] + argv) == 2
    assert match in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_frozen_layer_sgd_nesterov_bundle_trains_like_eager(tmp_path):
    """SGD (momentum, nesterov, weight decay) with fc1 frozen: fc1 is an input with no state and no
    update; the trainer's 32 steps match eager torch.optim.SGD by the parity rule."""
    import copy

    from compile_losses.export import export_bundle
    from compile_losses.losses import MSELoss
    from compile_losses.nets import SeedNet
    from compile_losses.parity import judge

    torch.manual_seed(0)
    net = SeedNet()
    for p in net.fc1.parameters():
        p.requires_grad_(False)
    args = {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}
    x, y = _batches(1, batch=8)[0]
    path = export_bundle(net, MSELoss(), x, y, tmp_path, name="frozen", aoti=False, torchscript=False, parity=False,
                         optimizer="sgd", optimizer_args=args)
    b = load_bundle(path)
    assert b.check().ok
    t = b.trainer()
    assert sorted(t.state) == ["fc2.bias", "fc2.weight"] and sorted(t.frozen) == ["fc1.bias", "fc1.weight"]
    batches = _batches(32)
    losses = torch.tensor([t.step(a.numpy(), c.numpy()) for a, c in batches])

    def eager(dtype):
        n = copy.deepcopy(net).to(dtype)
        opt = torch.optim.SGD([p for p in n.parameters() if p.requires_grad], foreach=False, **args)
        return _train_mse(n, opt, batches, dtype)

    e, r = eager(torch.float32), eager(torch.float64)
    assert judge(losses, e[0], r[0])["status"] == "pass"
    for n in ("fc2.weight", "fc2.bias"):
        assert judge(torch.from_numpy(t.params[n]), e[1][n].detach(), r[1][n].detach())["status"] == "pass"
        got = torch.from_numpy(t.state[n]["momentum_buffer"])
        assert judge(got, e[2][n]["momentum_buffer"], r[2][n]["momentum_buffer"])["status"] == "pass"
    for n in ("fc1.weight", "fc1.bias"):
        np.testing.assert_array_equal(t.frozen[n], dict(net.named_parameters())[n].detach().numpy())


def test_step_checks_the_batch_and_what_the_graph_returns(bundle, monkeypatch):
    t = bundle.trainer()
    x, y = (a.numpy() for a in _batches(1)[0])
    with pytest.raises(TypeError, match="train_step: x must have dtype float32, got float64"):
        t.step(x.astype(np.float64), y)
    with pytest.raises(ValueError, match=r"train_step: x must have shape \(N, 32\), got \(10, 31\)"):
        t.step(x[:, :31], y)
    with pytest.raises(TypeError, match=r"step takes \(x, target\), got 1 arrays"):
        t.step(x)
    graph, real = t._graph, t._graph.run

    def shrunk(args, timeout_s, trusted=()):
        outs = real(args, timeout_s, trusted)
        outs[-1] = np.zeros((2,), np.float32)  # a graph that hands back a state of another shape
        return outs

    before = t.state
    monkeypatch.setattr(graph, "run", shrunk)
    with pytest.raises(BundleError, match=r"returned new_state_fc2_bias_exp_avg_sq as float32 \(2,\), it takes float32 \(1,\) back"):
        t.step(x, y)
    monkeypatch.undo()
    assert float(t.state["fc1.weight"]["step"]) == float(before["fc1.weight"]["step"])  # nothing half applied


def test_trainer_from_given_params(bundle):
    start = {n: np.asfortranarray(p) for n, p in bundle.params.items()}  # any layout: copied to C order
    start["fc2.bias"] = np.full_like(start["fc2.bias"], 0.5)
    t = bundle.trainer(params=start)
    x, y = (a.numpy() for a in _batches(1)[0])
    t.step(x, y)
    u = bundle.trainer(params={n: np.ascontiguousarray(p) for n, p in start.items()})
    u.step(x, y)
    for n in start:
        assert t.params[n].tobytes() == u.params[n].tobytes()
    with pytest.raises(KeyError, match="missing"):
        bundle.trainer(params={"fc1.weight": start["fc1.weight"]})
    with pytest.raises(TypeError, match=r"params\['fc1.bias'\] must be float32 \(16,\)"):
        bundle.trainer(params=dict(start, **{"fc1.bias": start["fc1.bias"].astype(np.float64)}))


@pytest.mark.slow
def test_class_index_targets_are_range_checked_in_the_trainer(tmp_path):
    """Cross-entropy with Adam: the manifest records the class range on train_step.onnx's target
    input, so the trainer refuses an index the graph would read out of range, by name."""
    from compile_losses.export import export_bundle
    from compile_losses.losses import CrossEntropyLoss
    from compile_losses.nets import SeedNet

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(8, 32, generator=gen), torch.randint(0, 5, (8,), generator=gen)
    path = export_bundle(SeedNet(out_features=5), CrossEntropyLoss(), x, y, tmp_path, name="ce", aoti=False,
                         torchscript=False, parity=False, optimizer="adam", optimizer_args={"lr": 1e-2})
    b = load_bundle(path)
    assert b.check().ok
    art = next(a for a in manifest(path)["artifacts"] if a["kind"] == "train_step")
    assert next(i for i in art["inputs"] if i["name"] == "target")["classes"] == 5
    t = b.trainer()
    t.step(x.numpy(), y.numpy())
    with pytest.raises(ValueError, match=r"train_step: target must hold class indices 0 <= target < 5"):
        t.step(x.numpy(), np.full(8, 7, dtype=np.int64))
    assert float(t.state["fc1.weight"]["step"]) == 1.0


def test_an_optimizer_bundles_parity_checks_its_own_optimizers_trajectory(tmp_path):
    """The embedded parity of an AdamW bundle holds the 32-step AdamW trajectory rows (per-step
    loss, final parameters, state) of the exported graph against eager torch.optim, besides the
    plain step's rows, and they count in the manifest's summary."""
    from compile_losses.export import export_bundle
    from compile_losses.losses import MSELoss
    from compile_losses.nets import SeedNet

    torch.manual_seed(0)
    x, y = torch.randn(6, 32), torch.randn(6, 1)
    path = export_bundle(SeedNet(), MSELoss(), x, y, tmp_path, name="adamw", aoti=False, torchscript=False,
                         parity=["onnx"], optimizer="adamw", optimizer_args=ADAMW)
    rows = [r for r in path.report.rows if r.backend == "onnx"]
    trajectory = [r for r in rows if r.output == "trajectory.loss" or r.output.startswith(("final:", "state:"))]
    names = {p for p, _ in SeedNet().named_parameters()}
    assert {r.output for r in trajectory} == ({"trajectory.loss"} | {"final:" + n for n in names}
                                              | {"state:{}.{}".format(n, k) for n in names
                                                 for k in ("step", "exp_avg", "exp_avg_sq")})
    assert all(r.status == "pass" for r in trajectory), [(r.output, r.status, r.detail) for r in trajectory]
    assert any(c.get("optimizer", {}).get("name") == "adamw" and c["steps"] == 32 for c in path.report.cases)
    assert len(rows) > len(trajectory)  # the forward / loss / plain-step rows are still there
    summary = manifest(path)["parity"]
    onnx = summary["backends"]["onnx"]
    assert summary["ok"] is True and summary["rows"] == len(path.report.rows)
    assert onnx["pass_clause1"] + onnx["pass_clause2"] == len(rows) and onnx["fail"] == 0


def test_an_optimizer_bundles_parity_fails_a_wrong_update(monkeypatch):
    """The same check on a planted fault: AdamW's update with the second moment's bias correction
    left out (the traced graph has it wrong; eager torch.optim is the reference) fails the rows."""
    from compile_losses import optim
    from compile_losses.backends.base import clear_cache
    from compile_losses.export import compose
    from compile_losses.losses import MSELoss
    from compile_losses.nets import SeedNet

    right = optim.adam_update

    def wrong(param, grad, state, hyper, **flags):
        hyper = dict(hyper, beta2=hyper["beta2"] * 0.5)
        return right(param, grad, state, hyper, **flags)

    monkeypatch.setattr(optim, "adam_update", wrong)
    clear_cache()  # programs prepared by earlier tests hold the right update
    torch.manual_seed(0)
    x, y = torch.randn(6, 32), torch.randn(6, 1)
    _, report = compose._parity(SeedNet(), MSELoss(), (x,), (y,), {}, ["onnx"], compose._quiet, 0.01,
                                optim.optimizer("adamw", **ADAMW))
    failed = {r.output for r in report.rows if r.failed}
    assert "trajectory.loss" in failed and any(o.startswith("state:") for o in failed), failed
    assert not any(r.failed for r in report.rows if not r.output.startswith(("trajectory", "final:", "state:")))
