"""compile-losses export / check-bundle and compile_losses.export: what a bundle holds, the CLI's
contract (exit codes, one-line errors), a user's own net and loss by import path, and the
trusted-only artifacts."""
import hashlib
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from bundle_helpers import PYTHON, ROOT, copy_bundle, default_bundle, env_with_tests_on_path, manifest
from compile_losses import export as ex
from compile_losses.cli import main
from compile_losses.runtime import BundleError, load_bundle

pytestmark = pytest.mark.onnx
USER = ["--net", "userpkg.models:TinyClassifier", "--loss", "userpkg.models:MarginClassLoss",
        "--net-args", '{"classes": 4}', "--loss-args", '{"margin": 0.5}',
        "--input", "float32[N,6]", "--target", "int64[N]{0..3}"]


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    return default_bundle(tmp_path_factory)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# the manifest
# ---------------------------------------------------------------------------------------------
def test_manifest_contents(bundle_dir):
    m = manifest(bundle_dir)
    assert m["format_version"] == 1 and m["name"] == "seed-mse"
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", m["created_utc"])
    assert set(m["versions"]) >= {"python", "torch", "onnx", "onnxruntime", "compile_losses"}
    assert m["versions"]["torch"] == torch.__version__
    assert m["net"]["import_path"] == "compile_losses.nets:SeedNet"
    assert m["loss"] == {"import_path": "compile_losses.losses:MSELoss", "init_args": {"reduction": "mean"},
                         "init_args_complete": True}
    assert m["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["N", 32]}]
    assert m["outputs"] == [{"name": "pred", "dtype": "float32", "shape": ["N", 1]}]
    assert m["targets"] == [{"name": "target", "dtype": "float32", "shape": ["N", 1]}]
    assert m["parity"] == {"status": "skipped"}


def test_artifacts_are_hashed_sized_and_typed(bundle_dir):
    m = manifest(bundle_dir)
    kinds = {a["kind"]: a for a in m["artifacts"]}
    assert set(kinds) == {"forward", "loss", "loss_and_grad", "train_step", "torchscript_forward",
                          "torchscript_loss", "params", "fixtures"}
    for a in m["artifacts"]:
        p = bundle_dir / a["path"]
        assert a["sha256"] == _sha(p) and a["bytes"] == p.stat().st_size
        assert a.get("trusted_only", False) == (a["kind"].startswith("torchscript") or a["kind"].startswith("aoti"))
    for kind in ("forward", "loss", "loss_and_grad", "train_step"):
        assert kinds[kind]["opset"] == 18
        batched = next(i for i in kinds[kind]["inputs"] if i["name"] in ("x", "pred"))
        assert batched["shape"][0] == "N"
    roles = kinds["train_step"]["roles"]
    assert [p["name"] for p in roles["params"]] == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert roles["data"] == ["x", "target"] and roles["lr"] == "lr"
    assert kinds["torchscript_forward"]["check"]["status"] == "pass"


def test_fixtures_are_plain_arrays(bundle_dir):
    with np.load(bundle_dir / "fixtures.npz", allow_pickle=False) as npz:
        keys = set(npz.files)
    for graph in ("forward", "loss", "loss_and_grad", "train_step"):
        assert any(k.startswith(graph + "/in/") for k in keys)
        assert any(k.startswith(graph + "/eager/") for k in keys) and any(k.startswith(graph + "/ref64/") for k in keys)
    with np.load(bundle_dir / "fixtures.npz", allow_pickle=False) as npz:
        assert npz["forward/ref64/pred"].dtype == np.float64 and npz["forward/eager/pred"].dtype == np.float32


def test_runtime_rule_matches_parity_module():
    from compile_losses import parity
    from compile_losses.runtime import parity as rparity

    assert rparity.FLOOR_ULPS == parity.ULPS
    rng = np.random.default_rng(0)
    ref = rng.standard_normal(1000)
    eager = ref.astype(np.float32)
    for scale in (0.0, 1e-7, 3e-7, 1e-3):
        got = (ref + scale * rng.standard_normal(1000)).astype(np.float32)
        mine = rparity.compare("g", "o", got, eager, ref)
        theirs = parity.judge(torch.from_numpy(got), torch.from_numpy(eager), torch.from_numpy(ref))
        assert mine.ok == (theirs["status"] == "pass"), (scale, mine, theirs)


# ---------------------------------------------------------------------------------------------
# the CLI
# ---------------------------------------------------------------------------------------------
def test_cli_export_and_check_bundle(tmp_path, capsys):
    """The main job's path, minus the AOTInductor build (its own slow test runs it all)."""
    out = tmp_path / "models"
    assert main(["export", "--out", str(out), "--no-aoti", "--json", str(tmp_path / "r.json"), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"SeedNet\+MSELoss float32 batch=8 +onnx .* pass", printed), printed
    assert "bundle {}: 9 artifacts".format(out / "seed-mse") not in printed  # no aoti: 8
    assert "parity ok" in printed
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["ok"] is True and result["manifest"]["parity"]["ok"] is True
    assert set(result["manifest"]["parity"]["backends"]) == {"onnx", "script"}
    assert result["manifest"]["net"]["registry_name"] == "seed" and result["manifest"]["loss"]["registry_name"] == "mse"
    assert main(["check-bundle", str(out / "seed-mse"), "--json", str(tmp_path / "c.json")]) == 0
    assert "OK " in capsys.readouterr().out
    assert json.loads((tmp_path / "c.json").read_text())["ok"] is True


def test_user_net_and_loss_by_import_path(tmp_path, capsys):
    out = tmp_path / "models"
    assert main(["export"] + USER + ["--out", str(out), "--skip", "aoti,parity", "--quiet"]) == 0
    bundle = out / "tinyclassifier-marginclassloss"
    m = manifest(bundle)
    assert m["net"]["import_path"] == "userpkg.models:TinyClassifier" and m["net"]["init_args"]["classes"] == 4
    assert m["loss"]["import_path"] == "userpkg.models:MarginClassLoss" and m["loss"]["init_args"]["margin"] == 0.5
    assert m["targets"] == [{"name": "target", "dtype": "int64", "shape": ["N"]}]
    assert main(["check-bundle", str(bundle)]) == 0
    # the runtime needs neither torch nor the user's package
    code = ("import sys, numpy as np; from compile_losses.runtime import load_bundle; b = load_bundle(sys.argv[1]); "
            "x = np.ones((3, 6), np.float32); t = np.array([0, 3, 1]); s = b.train_step(x, t); "
            "assert b.check().ok and b.forward(x).shape == (3, 4) and np.isfinite(s.loss); "
            "print(sorted(m for m in sys.modules if m.startswith(('torch', 'userpkg')))) ")
    proc = subprocess.run([PYTHON, "-c", code, str(bundle)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr
    # against the user's own classes, in torch, by hand
    from userpkg.models import MarginClassLoss, TinyClassifier

    b = load_bundle(bundle)
    net = TinyClassifier(classes=4).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(torch.from_numpy(np.array(b.params[name])))
    x = torch.randn(5, 6)
    t = torch.tensor([0, 1, 2, 3, 1])
    torch.testing.assert_close(torch.from_numpy(b.forward(x.numpy())), net(x).detach())
    want = MarginClassLoss(margin=0.5)(net(x), t)
    torch.testing.assert_close(torch.from_numpy(np.asarray(b.loss(net(x).detach().numpy(), t.numpy()))), want.detach())


@pytest.mark.parametrize("argv, message", [
    (["export", "--loss", "nope"], r"loss must be one of .* or package.module:Class, got 'nope'"),
    (["export", "--net", "nope"], r"net must be one of .*got 'nope'"),
    (["export", "--net", "no_such_pkg.mod:Net", "--input", "float32[N,3]"], r"cannot import 'no_such_pkg.mod'"),
    (["export", "--net", "userpkg.models:Missing", "--input", "float32[N,3]"], r"has no attribute 'Missing'"),
    (["export", "--net", "userpkg.models:TinyClassifier"], r"give its inputs, e.g. --input"),
    (["export"] + USER[:4] + ["--input", "float32[6,N]"], r"must start with the batch dimension N"),
    (["export"] + USER[:4] + ["--input", "float32[N,x]"], r"dimensions must be N or integers from 1 to 2147483647"),
    (["export"] + USER[:4] + ["--input", "float32[N,6]", "--target", "float32[N,5]"], r"do not fit the example inputs"),
    (["export", "--net-args", "{bad"], r"--net-args must be a JSON object"),
    (["export", "--loss-args", "[1]"], r"--loss-args must be a JSON object, got list"),
    (["export", "--skip", "aoti,everything"], r"--skip takes a comma list of .*got 'everything'"),
    (["export", "--batch", "0"], r"--batch must be >= 1, got 0"),
    (["export", "--backends", "onnx,warp"], r"unknown backend 'warp'"),
    (["export", "--json", "/no/such/dir/r.json"], r"--json: cannot write"),
    (["export", "--frobnicate"], r"unrecognized arguments: --frobnicate"),
    (["check-bundle", "/no/such/bundle"], r"DIR must be a bundle folder, got '/no/such/bundle' \(does not exist\)"),
])
def test_bad_arguments_one_line_exit_2(argv, message, capsys, tmp_path):
    argv = argv + (["--out", str(tmp_path / "m"), "--quiet"] if argv[0] == "export" else [])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert re.search(message, err), err


def test_unwritable_out(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["export", "--out", str(blocker / "models"), "--quiet", "--skip", "aoti,parity"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"--out: cannot create .*file/models", err) and len(err.strip().splitlines()) == 1


def test_check_bundle_refuses_tampered(bundle_dir, tmp_path, capsys):
    b = copy_bundle(bundle_dir, tmp_path / "b")
    data = bytearray((b / "train_step.onnx").read_bytes())
    data[100] ^= 0x10
    (b / "train_step.onnx").write_bytes(bytes(data))
    assert main(["check-bundle", str(b), "--json", str(tmp_path / "c.json")]) == 1
    assert re.search(r"train_step\.onnx: sha256 mismatch", capsys.readouterr().err)
    report = json.loads((tmp_path / "c.json").read_text())
    assert report["ok"] is False and report["refused"][0]["file"] == "train_step.onnx"


def test_export_script_shim():
    proc = subprocess.run([PYTHON, "scripts/export.py", "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0 and "--out DIR" in proc.stdout


# ---------------------------------------------------------------------------------------------
# the API's own argument checks
# ---------------------------------------------------------------------------------------------
def test_export_bundle_argument_errors(tmp_path):
    from compile_losses.errors import UsageError
    from compile_losses.losses import MSELoss
    from compile_losses.nets import SeedNet

    x, y = torch.randn(4, 32), torch.randn(4, 1)
    with pytest.raises(TypeError, match=r"net and loss must be torch.nn.Module instances, got function and MSELoss"):
        ex.export_bundle(lambda t: t, MSELoss(), x, y, tmp_path)
    with pytest.raises(TypeError, match=r"inputs must be a tensor or a tuple of tensors, got \('ndarray',\)"):
        ex.export_bundle(SeedNet(), MSELoss(), (np.zeros((4, 32)),), y, tmp_path)
    with pytest.raises(UsageError, match=r"name must be .*got '../escape'"):
        ex.export_bundle(SeedNet(), MSELoss(), x, y, tmp_path, name="../escape")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# trusted-only artifacts
# ---------------------------------------------------------------------------------------------
def test_trusted_artifacts_refused_without_trust(bundle_dir):
    with pytest.raises(ex.UntrustedArtifactError, match=r"forward\.pt: torchscript_forward is runnable code \(trusted-only\)"):
        ex.load_trusted_artifact(bundle_dir, "torchscript_forward")
    with pytest.raises(ValueError, match=r"kind must be one of"):
        ex.load_trusted_artifact(bundle_dir, "forward", trust=True)
    with pytest.raises(FileNotFoundError, match=r"has no aoti_forward artifact"):
        ex.load_trusted_artifact(bundle_dir, "aoti_forward", trust=True)


def test_trusted_artifact_with_trust_runs_and_matches(bundle_dir):
    scripted = ex.load_trusted_artifact(bundle_dir, "torchscript_forward", trust=True)
    x = torch.randn(6, 32)
    np.testing.assert_allclose(scripted(x).detach().numpy(), load_bundle(bundle_dir).forward(x.numpy()), rtol=1e-5, atol=1e-6)


def test_trusted_artifact_checksum_holds_even_with_trust(bundle_dir, tmp_path):
    b = copy_bundle(bundle_dir, tmp_path / "b")
    data = bytearray((b / "forward.pt").read_bytes())
    data[-1] ^= 0x01
    (b / "forward.pt").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"forward\.pt: sha256 mismatch"):
        ex.load_trusted_artifact(b, "torchscript_forward", trust=True)


@pytest.mark.slow
@pytest.mark.aoti
def test_main_job_with_no_arguments(tmp_path):
    """`compile-losses export` with no arguments, as the README runs it: models/seed-mse with AOTI."""
    env = env_with_tests_on_path()
    proc = subprocess.run([PYTHON, "-m", "compile_losses", "export"], capture_output=True, text=True, timeout=900,
                          cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "parity ok" in proc.stdout and "[export] building forward.pt2" in proc.stderr
    bundle = tmp_path / "models" / "seed-mse"
    kinds = {a["kind"]: a for a in manifest(bundle)["artifacts"]}
    assert kinds["aoti_forward"]["trusted_only"] is True and kinds["aoti_forward"]["check"]["status"] == "pass"
    check = subprocess.run([PYTHON, "-m", "compile_losses", "check-bundle", "models/seed-mse"], capture_output=True,
                           text=True, timeout=300, cwd=tmp_path, env=env)
    assert check.returncode == 0, check.stdout + check.stderr
    runner = ex.load_trusted_artifact(bundle, "aoti_forward", trust=True)
    x = torch.randn(5, 32)
    out = runner(x)
    out = out[0] if isinstance(out, (list, tuple)) else out  # one output: a tensor or a 1-list by version
    np.testing.assert_allclose(out.numpy(), load_bundle(bundle).forward(x.numpy()), rtol=1e-5, atol=1e-6)
