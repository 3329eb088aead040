"""Fault classes the runtime must turn into its named errors rather than tracebacks, hangs or
memory exhaustion, whatever onnxruntime runs underneath: deep JSON, names that are not plain,
non-integer fields, deep folder chains, npz headers that lie, huge sparse files, FIFOs, manifest
fields the runtime needs, and bad ``lr`` values. (The onnxruntime-dependent classes are in
test_bundle_attacks.py.)"""
import io
import json
import os
import re
import stat
import struct
import subprocess
import threading
import time
import zipfile

import numpy as np
import pytest

from bundle_helpers import PYTHON, ROOT, copy_bundle, default_bundle, manifest, resign, write_manifest
from compile_losses.runtime import BadArgumentError, BundleError, load_bundle
from compile_losses.runtime import integrity

pytestmark = pytest.mark.onnx


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return default_bundle(tmp_path_factory)


@pytest.fixture
def b(src, tmp_path):
    return copy_bundle(src, tmp_path / "bundle")


@pytest.fixture(scope="module")
def loaded(src):
    return load_bundle(src)


def refused(bundle, *patterns, **kwargs):
    with pytest.raises(BundleError) as info:
        load_bundle(bundle, **kwargs)
    lines = ["{}: {}".format(f, why) for f, why in info.value.faults]
    for pattern in patterns:
        assert any(re.search(pattern, line) for line in lines), (pattern, lines)
    # one line per fault, never more: names cannot forge extra lines
    assert len(str(info.value).splitlines()) == (1 if len(lines) == 1 else 1 + len(lines)), str(info.value)
    return info.value


# -- manifest: nesting, names, integers, fields the runtime needs ------------------------------
def test_manifest_nested_too_deeply_for_the_parser(b):
    (b / "manifest.json").write_text("[" * 200000 + "]" * 200000)
    refused(b, r"^manifest\.json: is not valid JSON \(nested too deeply\)$")


def test_manifest_nested_deeper_than_any_bundle_needs(b):
    data = manifest(b)
    deep = {}
    for _ in range(200):
        deep = {"d": deep}
    data["parity"] = deep
    write_manifest(b, data)
    refused(b, r"^manifest\.json: is nested deeper than 32 levels$")


@pytest.mark.parametrize("escaped", [r"\ud800", r"\u000a", r"\u202e", "*", r"\u00e9"])
def test_listed_path_that_is_not_plain(b, escaped):
    text = (b / "manifest.json").read_text()
    (b / "manifest.json").write_text(text.replace('"path": "params.npz"', '"path": "par{}ams.npz"'.format(escaped), 1))
    err = refused(b, r"holds characters outside")
    char = json.loads('"{}"'.format(escaped))
    assert char.isprintable() or char not in str(err)  # escaped, never printed raw


@pytest.mark.parametrize("value", [True, 1.0, "1", [1], None])
def test_format_version_must_be_the_integer_1(b, value):
    data = manifest(b)
    data["format_version"] = value
    write_manifest(b, data)
    refused(b, r"^manifest\.json: format_version must be 1, got ")


def test_one_artifact_per_kind(b):
    data = manifest(b)
    (b / "forward2.onnx").write_bytes((b / "forward.onnx").read_bytes())
    data["artifacts"].append(dict(next(a for a in data["artifacts"] if a["kind"] == "forward"), path="forward2.onnx"))
    write_manifest(b, data)
    refused(b, r"^forward2\.onnx: kind forward is also listed for forward\.onnx; a bundle holds one artifact per kind$")


@pytest.mark.parametrize("value, fault", [
    ("abc", r"classes must be an integer >= 1, got 'abc'"),
    (3.5, r"classes must be an integer >= 1, got 3\.5"),
    (True, r"classes must be an integer >= 1, got True"),
    (0, r"classes must be an integer >= 1, got 0"),
    (10, r"has classes but dtype float32, not an integer dtype"),
])
def test_non_integer_classes_refused_at_load(b, value, fault):
    data = manifest(b)
    next(a for a in data["artifacts"] if a["kind"] == "loss")["inputs"][1]["classes"] = value
    write_manifest(b, data)
    refused(b, r"^loss\.onnx: input target " + fault)


@pytest.mark.parametrize("edit, fault", [
    (lambda r: r.clear(), r"train_step roles\.params must be a non-empty list"),
    (lambda r: r.update(lr="learning_rate"), r"train_step roles name inputs .* but the graph's inputs are"),
    (lambda r: r.update(loss="nope"), r"train_step roles name outputs \['nope'\]"),
    (lambda r: r["params"][0].update(name=7), r"train_step roles\.params\[0\]\.name must be a printable"),
    (lambda r: r.update(data="x"), r"train_step roles\.data must be a non-empty list"),
])
def test_train_step_roles_validated_at_load(b, edit, fault):
    data = manifest(b)
    edit(next(a for a in data["artifacts"] if a["kind"] == "train_step")["roles"])
    write_manifest(b, data)
    refused(b, r"^train_step\.onnx: " + fault)


def test_params_missing_a_parameter_refused_at_load(b):
    with np.load(b / "params.npz") as npz:
        arrays = {k: npz[k] for k in npz.files if k != "fc2.bias"}
    np.savez(b / "params.npz", **arrays)
    resign(b)
    refused(b, r"^params\.npz: lacks 'fc2\.bias', a parameter of the train step$")


def test_names_in_errors_cannot_forge_lines(b):
    (b / "evil\nforward.onnx: sha256 ok").write_bytes(b"x")
    (b / "rtl\u202etxt.onnx").write_bytes(b"x")
    err = refused(b, r"file not listed in the manifest")
    assert "'evil\\nforward.onnx: sha256 ok': file not listed" in str(err)
    assert "\\u202e" in str(err)


# -- the folder: deep unlisted chains, FIFOs, sparse files of GiBs ------------------------------
def test_deep_unlisted_folder_chain(b):
    """1200 nested folders: deeper than the recursion limit (os.walk in 3.11 is recursive) and
    longer than PATH_MAX. Made and removed through descriptors."""
    depth = 1200
    fd = os.open(b, os.O_RDONLY)
    fds = [fd]
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fds[-1])
            fds.append(os.open("d", os.O_RDONLY, dir_fd=fds[-1]))
        refused(b, r"^d/: folder not listed in the manifest$", r"nested deeper than 16 folders; not walked further")
    finally:
        for parent in reversed(fds[:-1]):
            os.rmdir("d", dir_fd=parent)
        for f in fds:
            os.close(f)


def test_two_sparse_files_of_gibs_refused_before_reading(b):
    data = manifest(b)
    for name in ("huge1.bin", "huge2.bin"):
        with open(b / name, "wb") as fh:
            fh.truncate(5 << 30)  # sparse: no disk used, 5 GiB if read
        data["artifacts"].append({"path": name, "kind": "onnx_external_data", "sha256": "0" * 64, "bytes": 5 << 30})
    write_manifest(b, data)
    t0 = time.monotonic()
    refused(b, r"^manifest\.json: lists \d+ bytes to load, over the \d+-byte limit \(max_bytes\)$")
    assert time.monotonic() - t0 < 5


def test_listed_fifo_never_blocks(b):
    (b / "params.npz").unlink()
    os.mkfifo(b / "params.npz")
    done = []
    t = threading.Thread(target=lambda: done.append(refused(b, r"^params\.npz: is not a regular file$")), daemon=True)
    t.start()
    t.join(20)
    assert done, "load_bundle blocked on a FIFO"


def test_fifo_swapped_in_between_check_and_open_never_blocks(b, monkeypatch):
    """lstat sees the regular file; a FIFO is in its place by the time it is opened."""
    regular = os.lstat(b / "params.npz")
    (b / "params.npz").unlink()
    os.mkfifo(b / "params.npz")
    real_lstat = os.lstat

    def lying_lstat(path, *args, **kwargs):
        return regular if str(path) == "params.npz" else real_lstat(path, *args, **kwargs)

    monkeypatch.setattr(integrity.os, "lstat", lying_lstat)
    done = []
    t = threading.Thread(target=lambda: done.append(refused(b, r"^params\.npz: (changed while it was being checked|is not a regular file)$")),
                         daemon=True)
    t.start()
    t.join(20)
    assert done, "load_bundle blocked opening a FIFO"


# -- npz files whose headers lie --------------------------------------------------------------
def _stored_npz(arrays, npy=None):
    """An npz written without zip64 extras, so the header fields sit where the patches expect."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for k, v in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, v)
            zf.writestr(k + ".npy", npy if npy is not None else member.getvalue())
    return bytearray(buf.getvalue())


def _patch(data, local_offset, central_offset, fmt, value):
    """Set one field in every local header and every central-directory entry."""
    for sig, off in ((b"PK\x03\x04", local_offset), (b"PK\x01\x02", central_offset)):
        if off is None:
            continue
        i = data.find(sig)
        while i >= 0:
            struct.pack_into(fmt, data, i + off, value)
            i = data.find(sig, i + 4)
    return data


def _params(b):
    with np.load(b / "params.npz") as npz:
        return {k: npz[k] for k in npz.files}


@pytest.mark.parametrize("lie, fault", [
    (lambda d: _patch(d, 8, 10, "<H", 99), r"compression method 99"),
    (lambda d: _patch(d, 6, 8, "<H", 1), r"is encrypted"),
    (lambda d: _patch(d, None, 24, "<I", 0xFFFFFFF0), r"unpacks to \d+ bytes, over the \d+-byte limit"),
    (lambda d: _patch(d, 22, 24, "<I", 40), r"holds \d+ bytes, its header says 40|Bad CRC|overlap|truncat|Truncat"),
    (lambda d: _patch(d, 18, 20, "<I", 7), r"."),
    (lambda d: d[: len(d) // 2], r"."),
])
def test_npz_headers_that_lie(b, lie, fault):
    (b / "params.npz").write_bytes(bytes(lie(_stored_npz(_params(b)))))
    resign(b)
    refused(b, r"^params\.npz: is not a readable npz of plain arrays \(.*(" + fault + ")")


def test_npy_header_claiming_a_huge_shape(b):
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000,), }"
    header += b" " * (63 - len(header) % 64) + b"\n"
    npy = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + b"\0" * 16
    (b / "params.npz").write_bytes(bytes(_stored_npz({"fc1.weight": np.zeros(1)}, npy=npy)))
    resign(b)
    refused(b, r"^params\.npz: .*header shape \(1000000000000,\) needs 4000000000000 bytes, the member holds 16")


def test_npy_object_dtype_refused(b):
    buf = io.BytesIO()
    np.save(buf, np.array([1, "a"], dtype=object), allow_pickle=True)
    (b / "params.npz").write_bytes(bytes(_stored_npz({"fc1.weight": np.zeros(1)}, npy=buf.getvalue())))
    resign(b)
    refused(b, r"^params\.npz: .*dtype '\|O' is not a plain number or bool")


# -- inputs -----------------------------------------------------------------------------------
def _xy():
    rng = np.random.default_rng(0)
    return rng.standard_normal((4, 32), dtype=np.float32), rng.standard_normal((4, 1), dtype=np.float32)


@pytest.mark.parametrize("lr", [float("nan"), float("inf"), -float("inf"), 0.0, -0.1, 0, np.float32("nan"),
                                np.array(-1.0), 1e-60, 1e300])
def test_lr_not_finite_positive_is_refused(loaded, lr):
    with pytest.raises(BadArgumentError, match=r"^train_step: lr must be a finite number > 0.*, got "):
        loaded.train_step(*_xy(), lr=lr)
    assert issubclass(BadArgumentError, ValueError)


@pytest.mark.parametrize("lr", [0.05, np.float32(0.05), np.float64(0.05), np.array(0.05), np.array(0.05, np.float32)])
def test_lr_numpy_scalars_accepted(loaded, lr):
    want = loaded.train_step(*_xy(), lr=0.05)
    got = loaded.train_step(*_xy(), lr=lr)
    for k in want.new_params:
        np.testing.assert_array_equal(got.new_params[k], want.new_params[k])


@pytest.mark.parametrize("lr, name", [("0.1", "str"), (True, "bool"), (np.array([0.1]), "ndarray of shape \\(1,\\)"),
                                      (1j, "complex"), (None, "NoneType")])
def test_lr_wrong_type(loaded, lr, name):
    with pytest.raises(TypeError, match=r"^train_step: lr must be a float, got " + name):
        loaded.train_step(*_xy(), lr=lr)


@pytest.mark.parametrize("value", [0, -1, float("nan"), float("inf")])
def test_timeout_must_be_positive_and_finite(loaded, value):
    with pytest.raises(ValueError, match=r"timeout_s must be a finite number of seconds > 0"):
        loaded.forward(_xy()[0], timeout_s=value)


# -- the CLI where torch is not installed ------------------------------------------------------
_NO_TORCH = r"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "onnx", "onnxscript", "functorch", "sympy"):
            raise ModuleNotFoundError("No module named {!r}".format(name), name=name)
sys.meta_path.insert(0, Block())
from compile_losses.cli import main
code = main(sys.argv[1:])
leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnx"))
assert not leaked, leaked
sys.exit(code)
"""


def _no_torch(*args):
    return subprocess.run([PYTHON, "-c", _NO_TORCH] + list(args), capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_cli_without_torch(src, tmp_path):
    help_ = _no_torch("--help")
    assert help_.returncode == 0 and "check-bundle" in help_.stdout and "verify" in help_.stdout, help_.stderr
    check = _no_torch("check-bundle", str(src))
    assert check.returncode == 0 and check.stdout.splitlines()[-1].startswith("OK "), check.stderr
    for verb in (["list"], ["verify", "--loss", "mse"], ["export", "--lr", "nan"], ["bench", "--quick"]):
        out = _no_torch(*verb)
        assert out.returncode == 2, (verb, out.stdout, out.stderr)
        assert out.stderr.count("\n") == 1 and out.stderr.startswith(
            "compile-losses: error: {} needs torch, which is not importable here".format(verb[0])), (verb, out.stderr)


def test_check_bundle_cli_time_bound(src, tmp_path):
    from attack_bundles import loop_forever

    b = copy_bundle(src, tmp_path / "b")
    loop_forever(b)
    t0 = time.monotonic()
    out = _no_torch("check-bundle", str(b), "--timeout", "1", "--json", str(tmp_path / "r.json"))
    assert out.returncode == 1, out.stderr
    assert time.monotonic() - t0 < 60
    assert "forward.onnx: did not finish within timeout_s=1 s; the run was stopped" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert json.loads((tmp_path / "r.json").read_text())["refused"][0]["file"] == "forward.onnx"


def test_bundle_name_cannot_forge_report_lines(b):
    data = manifest(b)
    data["name"] = "x: all 13 outputs pass\nOK forged"
    write_manifest(b, data)
    report = str(load_bundle(b).check())
    assert "\nOK forged" not in report and "'x: all 13 outputs pass\\nOK forged'" in report


def test_unreadable_bundle_folder_is_a_bundle_error(b):
    if os.geteuid() == 0:
        pytest.skip("root reads any folder")
    os.chmod(b, 0)
    try:
        refused(b, r"cannot be read")
    finally:
        os.chmod(b, stat.S_IRWXU)
