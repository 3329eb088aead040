"""Bad input, everywhere it enters: the Python API (verify, export_bundle), the CLI (exit 2, one
line on stderr, no traceback) and the runtime (a loaded bundle). Each case asserts its message:
the argument, what was expected, what was given.

Documented behaviour rather than an error: NaN and Inf propagate as in torch, and ``verify`` reports
them as ``non-finite`` rows (never a pass); non-contiguous and channels-last tensors work and match
their contiguous copies.
"""
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

from compile_losses import verify
from compile_losses.backends import BACKENDS
from compile_losses.cli import main
from compile_losses.export import export_bundle
from compile_losses.losses import CrossEntropyLoss, DiceLoss, GaussianNLLLoss, MSELoss
from compile_losses.nets import SeedNet
from compile_losses.validate import InputError, InputTypeError

CHEAP = ["eager", "script"]


def _seed(out: int = 1) -> torch.nn.Module:
    torch.manual_seed(0)
    return SeedNet(out_features=out).eval()


def _x(n: int = 4, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(n, 32, generator=torch.Generator().manual_seed(1), dtype=dtype)


# ---------------------------------------------------------------------------------------------
# Python API: verify and export_bundle refuse before any backend runs
# ---------------------------------------------------------------------------------------------
BAD_CASES = [
    # (description, net, loss, inputs, targets, error type, message regex)
    ("shape mismatch", _seed(), MSELoss(), _x(), torch.zeros(4, 5), InputError,
     r"^the net's output \(N, 1\) does not fit loss MSELoss: input and target must have the same shape, "
     r"got input \(4, 1\) and target \(4, 5\)$"),
    ("net output does not fit", _seed(5), MSELoss(), _x(), torch.zeros(4, 1), InputError,
     r"^the net's output \(N, 5\) does not fit loss MSELoss: input and target must have the same shape"),
    ("input of the wrong width", _seed(), MSELoss(), torch.zeros(4, 31), torch.zeros(4, 1), InputError,
     r"^inputs \(N, 31\) do not fit net SeedNet: .*31"),
    ("input dtype", _seed(), MSELoss(), _x(dtype=torch.float64), torch.zeros(4, 1), InputTypeError,
     r"^inputs\[0\] must have dtype float32 \(the net's parameters\), got float64$"),
    ("target dtype", None, MSELoss(), torch.zeros(4, 1), torch.zeros(4, 1, dtype=torch.float64), InputTypeError,
     r"^the prediction \(N, 1\) does not fit loss MSELoss: input and target must have the same dtype, "
     r"got input float32 and target float64$"),
    ("integer target of a regression loss", None, MSELoss(), torch.zeros(4, 1), torch.zeros(4, 1, dtype=torch.int64),
     InputTypeError, r"input and target must have the same dtype, got input float32 and target int64"),
    ("class index too large", None, CrossEntropyLoss(), torch.zeros(4, 5), torch.tensor([0, 1, 7, 2]), InputError,
     r"^target must hold class indices 0 <= target < 5 \(the prediction's dim 1\) or ignore_index -100, "
     r"got 7 at position \(2,\) \(1 bad value\)$"),
    ("negative class index", _seed(5), CrossEntropyLoss(), _x(), torch.tensor([0, -1, -3, 2]), InputError,
     r"^target must hold class indices 0 <= target < 5 .* got -1 at position \(1,\) \(2 bad values\)$"),
    ("too many targets", None, CrossEntropyLoss(), torch.zeros(4, 5), (torch.zeros(4, dtype=torch.int64),) * 2,
     InputTypeError, r"^loss CrossEntropyLoss takes 1 target \(target\), got 2$"),
    ("too few targets", None, GaussianNLLLoss(), torch.zeros(4, 1), (torch.zeros(4, 1),), InputTypeError,
     r"^loss GaussianNLLLoss takes 2 targets \(target, var\), got 1$"),
    ("optional target counted", None, MSELoss(), torch.zeros(4, 1), (torch.zeros(4, 1),) * 3, InputTypeError,
     r"^loss MSELoss takes 1 to 2 targets \(target, weight\?\), got 3$"),
    ("empty batch", None, MSELoss(), torch.zeros(0, 1), torch.zeros(0, 1), InputError,
     r"^prediction must have a batch dimension with at least one sample, got shape \(0, 1\)$"),
    ("batch sizes differ", None, MSELoss(), torch.zeros(4, 1), torch.zeros(3, 1), InputError,
     r"^target must have the batch size of prediction \(4\), got shape \(3, 1\)$"),
    ("not a tensor", None, MSELoss(), torch.zeros(4, 1), ([0.0] * 4,), InputTypeError,
     r"^target\[0\] must be a tensor, got list$"),
]


@pytest.mark.parametrize("desc,net,loss,inputs,targets,error,match", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_verify_refuses_bad_input(desc, net, loss, inputs, targets, error, match) -> None:
    with pytest.raises(error, match=match):
        verify(net, loss, inputs, targets, backends=CHEAP)


@pytest.mark.parametrize("desc,net,loss,inputs,targets,error,match",
                         [c for c in BAD_CASES if c[1] is not None], ids=[c[0] for c in BAD_CASES if c[1] is not None])
def test_export_refuses_bad_input(desc, net, loss, inputs, targets, error, match, tmp_path) -> None:
    with pytest.raises(error, match=match):
        export_bundle(net, loss, inputs, targets, tmp_path, name="bad", aoti=False, torchscript=False, parity=False)
    assert list(tmp_path.iterdir()) == [], "a refused export leaves nothing behind"


def test_export_refuses_non_finite_example(tmp_path) -> None:
    x = _x()
    x[1, 3] = float("nan")
    with pytest.raises(InputError, match=r"^inputs\[0\] holds 1 NaN/Inf value: an export's example must be finite"):
        export_bundle(_seed(), MSELoss(), x, torch.zeros(4, 1), tmp_path, name="nan", aoti=False, parity=False)
    y = torch.zeros(4, 1)
    y[0, 0], y[2, 0] = float("inf"), -float("inf")
    with pytest.raises(InputError, match=r"^target holds 2 NaN/Inf values"):
        export_bundle(_seed(), MSELoss(), _x(), y, tmp_path, name="inf", aoti=False, parity=False)


def test_ignore_index_is_in_range() -> None:
    target = torch.tensor([0, -100, 4, 2])
    report = verify(None, CrossEntropyLoss(), torch.randn(4, 5), target, backends=CHEAP)
    assert report.ok, str(report)


# ---------------------------------------------------------------------------------------------
# NaN and Inf: propagate like torch; verify flags them as non-finite rows, never a pass
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_propagates_like_torch(bad: float) -> None:
    pred, target = torch.randn(4, 1), torch.randn(4, 1)
    pred[2, 0] = bad
    ours = MSELoss()(pred, target)
    torch.testing.assert_close(ours, TF.mse_loss(pred, target), equal_nan=True)
    assert not torch.isfinite(ours)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_verify_flags_non_finite_rows(bad: float) -> None:
    x = _x()
    x[0, 0] = bad
    report = verify(_seed(), MSELoss(), x, torch.zeros(4, 1), backends=["eager", "script", "trace"])
    assert not report.ok
    statuses = {r.status for r in report.rows}
    assert "pass" not in statuses and statuses <= {"non-finite", "nondeterministic"}, str(report)
    assert any("non-finite value" in r.detail for r in report.rows)


# ---------------------------------------------------------------------------------------------
# non-contiguous and channels-last: work, and match the contiguous copies
# ---------------------------------------------------------------------------------------------
def _dice_inputs():
    gen = torch.Generator().manual_seed(3)
    pred = torch.randn(3, 4, 6, 6, generator=gen)
    target = (torch.rand(3, 4, 6, 6, generator=gen) < 0.5).float()
    return pred, target


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
@pytest.mark.parametrize("backend", ["eager", "script", "trace", "onnx"])
def test_layouts_match_contiguous(backend: str, layout: str) -> None:
    ok, reason = BACKENDS[backend].available()
    if not ok:
        pytest.skip("unavailable: " + reason)
    pred, target = _dice_inputs()
    if layout == "channels_last":
        odd = (pred.to(memory_format=torch.channels_last), target.to(memory_format=torch.channels_last))
    else:
        odd = tuple(torch.stack([t, torch.zeros_like(t)], dim=-1)[..., 0] for t in (pred, target))
    assert not odd[0].is_contiguous()
    loss = DiceLoss(reduction="none")
    fn = BACKENDS[backend].prepare(loss, (pred, target))
    torch.testing.assert_close(fn(*odd), fn(pred, target), rtol=0, atol=0)
    torch.testing.assert_close(fn(*odd), loss(pred, target))


def test_verify_non_contiguous_case() -> None:
    x = _x(6)
    strided = torch.stack([x, x], dim=-1)[..., 0]
    assert not strided.is_contiguous()
    report = verify(_seed(), MSELoss(), strided, torch.randn(6, 1).t().contiguous().t(), backends=["eager", "script", "trace"])
    assert report.ok, str(report)


# ---------------------------------------------------------------------------------------------
# CLI: exit 2, one line on stderr, no traceback
# ---------------------------------------------------------------------------------------------
VERIFY = ["verify", "--backends", "eager", "--no-audit", "--quiet", "--batch", "4", "--dtype", "float32"]
CLI_CASES = [
    ("class index out of range", VERIFY + ["--net", "none", "--loss", "cross_entropy", "--input", "float32[N,5]",
                                           "--target", "int64[N]{5..9}"],
     r"target must hold class indices 0 <= target < 5 .* got [5-9] at position \(0,\)"),
    ("too many targets", VERIFY + ["--net", "none", "--loss", "cross_entropy", "--input", "float32[N,5]",
                                   "--target", "int64[N]{0..4}", "--target", "int64[N]{0..4}"],
     r"loss CrossEntropyLoss takes 1 target \(target\), got 2"),
    ("net output does not fit", VERIFY + ["--net", "seed", "--no-alone", "--loss", "mse", "--target", "float32[N,3]"],
     r"the net's output \(N, 1\) does not fit loss MSELoss: input and target must have the same shape, "
     r"got input \(4, 1\) and target \(4, 3\)"),
    ("wrong target dtype", VERIFY + ["--net", "none", "--loss", "mse", "--input", "float32[N,1]",
                                     "--target", "float64[N,1]"],
     r"does not fit loss MSELoss: input and target must have the same dtype, got input float32 and target float64"),
    ("input of the wrong width", VERIFY + ["--net", "seed", "--loss", "mse", "--input", "float32[N,31]"],
     r"do not fit net SeedNet"),
    ("export: class index out of range", ["export", "--net", "seed", "--loss", "cross_entropy", "--target",
                                          "int64[N]{5..9}", "--skip", "aoti,torchscript,training,parity", "--quiet"],
     r"target must hold class indices 0 <= target < 5 .* got [5-9] at position \(0,\)"),
    ("export: too many targets", ["export", "--net", "seed", "--loss", "cross_entropy", "--target", "int64[N]{0..4}",
                                  "--target", "int64[N]{0..4}", "--skip", "aoti,torchscript,training,parity", "--quiet"],
     r"loss CrossEntropyLoss takes 1 target \(target\), got 2"),
]


@pytest.mark.parametrize("desc,argv,match", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input(desc, argv, match, capsys, tmp_path) -> None:
    if argv[0] == "export":
        argv = argv + ["--out", str(tmp_path)]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("compile-losses: error: ")
    assert re.search(match, lines[0]), lines[0]


# ---------------------------------------------------------------------------------------------
# runtime: a loaded bundle refuses bad input by name, and ranges come from the manifest
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ce_bundle(tmp_path_factory):
    from compile_losses.runtime import load_bundle

    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(8, 32, generator=gen), torch.randint(0, 5, (8,), generator=gen)
    path = export_bundle(_seed(5), CrossEntropyLoss(), x, y, tmp_path_factory.mktemp("ce"), name="seed-ce",
                         aoti=False, torchscript=False, parity=False)
    return load_bundle(path), x.numpy(), y.numpy()


def test_manifest_records_class_ranges(ce_bundle) -> None:
    b, _, _ = ce_bundle
    arts = {a["kind"]: a for a in b.manifest["artifacts"]}
    assert arts["loss"]["inputs"][1]["classes"] == 5 and arts["loss"]["inputs"][1]["ignore_index"] == -100
    assert b.manifest["targets"][0]["classes"] == 5
    targets = [s for s in arts["train_step"]["inputs"] if "classes" in s]
    assert [s["name"] for s in targets] == [arts["train_step"]["roles"]["data"][-1]]


def test_runtime_class_index_out_of_range(ce_bundle) -> None:
    b, x, y = ce_bundle
    pred = b.forward(x)
    bad = y.copy()
    bad[3] = 5
    with pytest.raises(ValueError, match=r"^loss: target must hold class indices 0 <= target < 5 or ignore_index -100, "
                                         r"got 5 at position \(3,\) \(1 bad value\)$"):
        b.loss(pred, bad)
    with pytest.raises(ValueError, match=r"^loss_and_grad: target must hold class indices"):
        b.loss_and_grad(pred, bad)
    with pytest.raises(ValueError, match=r"^train_step: \w+ must hold class indices 0 <= \w+ < 5"):
        b.train_step(x, bad, lr=0.1)
    ignored = y.copy()
    ignored[0] = -100  # ignore_index is in range
    assert np.isfinite(b.loss(pred, ignored))


def test_runtime_wrong_number_of_targets(ce_bundle) -> None:
    b, x, y = ce_bundle
    pred = b.forward(x)
    with pytest.raises(TypeError, match=r"^loss: loss CrossEntropyLoss takes 1 target \(target\), got 2$"):
        b.loss(pred, y, y)
    with pytest.raises(TypeError, match=r"^loss_and_grad: loss CrossEntropyLoss takes 1 target \(target\), got 0$"):
        b.loss_and_grad(pred)


def test_runtime_dtype_and_shape(ce_bundle) -> None:
    b, x, y = ce_bundle
    with pytest.raises(TypeError, match=r"^forward: x must have dtype float32, got float64$"):
        b.forward(x.astype(np.float64))
    with pytest.raises(ValueError, match=r"^forward: x must have shape \(N, 32\), got \(8, 31\)$"):
        b.forward(x[:, :31])
    pred = b.forward(x)
    with pytest.raises(ValueError, match=r"^loss: target has N=7, but pred has N=8$"):
        b.loss(pred, y[:7])
    with pytest.raises(TypeError, match=r"^loss: target must have dtype int64, got float32$"):
        b.loss(pred, y.astype(np.float32))


def test_runtime_nan_propagates_and_layouts_match(ce_bundle) -> None:
    b, x, y = ce_bundle
    pred = b.forward(x)
    nan_pred = pred.copy()
    nan_pred[1, 2] = np.nan
    assert np.isnan(b.loss(nan_pred, y))  # like torch: NaN in, NaN out, no error
    wide = np.stack([x, np.zeros_like(x)], axis=-1)[..., 0]  # a strided, non-contiguous view
    fortran = np.asfortranarray(x)
    assert not wide.flags.c_contiguous and not fortran.flags.c_contiguous
    np.testing.assert_array_equal(b.forward(wide), pred)
    np.testing.assert_array_equal(b.forward(fortran), pred)


def test_runtime_empty_batch_follows_torch(ce_bundle) -> None:
    # verify/export refuse an empty example (see BAD_CASES); a deployed graph follows torch:
    # an empty forward, and the mean over no sample is NaN, as F.cross_entropy gives
    b, x, y = ce_bundle
    assert b.forward(x[:0]).shape == (0, 5)
    expected = TF.cross_entropy(torch.zeros(0, 5), torch.zeros(0, dtype=torch.int64))
    assert np.isnan(b.loss(np.zeros((0, 5), np.float32), y[:0])) and torch.isnan(expected)
    value, grad = b.loss_and_grad(np.zeros((0, 5), np.float32), y[:0])
    assert np.isnan(value) and grad.shape == (0, 5)


# ---------------------------------------------------------------------------------------------
# a user's broken code and absurd arguments: one named line, exit 2, never a traceback
# ---------------------------------------------------------------------------------------------
_BROKEN = {
    "syntax_err.py": "class Net(:\n    pass\n",
    "user_nets.py": (
        "import torch\n"
        "class Raises(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        raise RuntimeError('boom in init')\n"
        "class Lin(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.l = torch.nn.Linear(3, 1)\n"
        "    def forward(self, x):\n"
        "        return self.l(x)\n"
        "class MedianLoss(torch.nn.Module):\n"
        "    def forward(self, input, target):\n"
        "        return (input - target).abs().median()\n"
        "class BranchLoss(torch.nn.Module):\n"
        "    def forward(self, input, target):\n"
        "        d = input - target\n"
        "        if d.sum() > 0:\n"
        "            return d.pow(2).mean()\n"
        "        return d.abs().mean()\n"),
}


@pytest.fixture
def broken_pkg(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    for name, text in _BROKEN.items():
        (tmp_path / name).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("argv, message", [
    (["verify", "--net", "syntax_err:Net", "--input", "float32[N,3]"],
     r"net 'syntax_err:Net': importing 'syntax_err' failed: SyntaxError: invalid syntax \(syntax_err.py, line 1\)"),
    (["export", "--net", "user_nets:Raises", "--input", "float32[N,3]"],
     r"net 'user_nets:Raises' raised in __init__ with no arguments: RuntimeError: boom in init \(at .*user_nets.py:5: "),
    (["verify", "--net", "user_nets:Lin", "--input", "float32[N,100000000000]"],
     r"tensor spec dimensions must be N or integers from 1 to 2147483647, got '100000000000'"),
    (["verify", "--net", "user_nets:Lin", "--input", "float32[N,100000,100000]"],
     r"tensor spec 'float32\[N,100000,100000\]' at batch \d+ is 37.3 GiB, more than the 4 GiB"),
    (["export", "--lr", "nan"], r"--lr must be a finite number > 0, got nan"),
    (["export", "--lr", "inf"], r"--lr must be a finite number > 0, got inf"),
    (["verify", "--lr", "0"], r"--lr must be a finite number > 0, got 0.0"),
    (["verify", "--lr", "fast"], r"--lr must be a number, got 'fast'"),
])
def test_broken_user_code_and_absurd_arguments_exit_2_in_one_line(broken_pkg, argv, message, capsys, tmp_path):
    from compile_losses.cli import main

    argv = argv + (["--out", str(tmp_path / "m"), "--quiet"] if argv[0] == "export" else ["--quiet"])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert re.search(message, err), err


@pytest.mark.onnx
@pytest.mark.parametrize("loss, message", [
    ("MedianLoss", r"user_nets.MedianLoss cannot be exported \(.*\): it uses aten.median.default at "
                   r".*user_nets.py:14: return \(input - target\).abs\(\).median\(\), which has no ONNX form"),
    ("BranchLoss", r"user_nets.BranchLoss cannot be exported \(.*\): Python control flow or a shape that depends "
                   r"on a tensor's values at .*user_nets.py:18: if d.sum\(\) > 0:"),
])
def test_export_of_unsupported_user_code_names_the_op_the_class_and_the_line(broken_pkg, loss, message, capfd):
    import importlib

    from compile_losses.backends.onnx import export_onnx
    from compile_losses.errors import ExportUnsupportedError

    module = getattr(importlib.import_module("user_nets"), loss)()
    with pytest.raises(ExportUnsupportedError) as info:
        export_onnx(module, (torch.randn(4, 1), torch.randn(4, 1)))
    assert re.search(message, str(info.value)) and len(str(info.value).splitlines()) == 1, str(info.value)
    assert info.value.source is not None and "user_nets.py" in info.value.source
    assert "def forward" not in capfd.readouterr().err  # torch's graph dumps of the failed attempt are held back


def test_library_lr_is_checked_once_by_name():
    from compile_losses.programs import check_lr

    assert check_lr(np.float32(0.5)) == 0.5 and check_lr(1) == 1.0
    for bad, err in ((float("nan"), ValueError), (0.0, ValueError), (-1e-3, ValueError), (True, TypeError),
                     ("0.1", TypeError)):
        with pytest.raises(err, match="lr must be"):
            check_lr(bad)
