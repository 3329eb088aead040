"""Tampered bundles: every fault class is refused by load_bundle with a message naming the file
and the fault, before anything in the bundle is parsed (the ONNX files are only handed to
onnxruntime once their checksums hold)."""
import json
import os
import random
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bundle_helpers import PYTHON, ROOT, copy_bundle, default_bundle, manifest, resign, write_manifest
from compile_losses.runtime import MANIFEST_MAX_BYTES, BundleError, load_bundle

pytestmark = pytest.mark.onnx
LISTED = ["forward.onnx", "loss.onnx", "loss_and_grad.onnx", "train_step.onnx", "forward.pt", "loss.pt",
          "params.npz", "fixtures.npz"]


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return default_bundle(tmp_path_factory)


@pytest.fixture
def b(src, tmp_path):
    return copy_bundle(src, tmp_path / "bundle")


def refused(bundle, *patterns):
    """load_bundle must raise; every pattern must match one fault line ("<file>: <fault>")."""
    with pytest.raises(BundleError) as info:
        load_bundle(bundle)
    lines = ["{}: {}".format(f, why) for f, why in info.value.faults]
    import re

    for pattern in patterns:
        assert any(re.search(pattern, line) for line in lines), (pattern, lines)
    assert str(bundle) in str(info.value)
    return info.value


def test_listing_matches_the_bundle(src):
    assert sorted(a["path"] for a in manifest(src)["artifacts"]) == sorted(LISTED)


@pytest.mark.parametrize("rel", LISTED)
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_flipped_byte(b, rel, where):
    p = b / rel
    data = bytearray(p.read_bytes())
    i = {"first": 0, "middle": len(data) // 2, "last": len(data) - 1}[where]
    data[i] ^= 0x01
    p.write_bytes(bytes(data))
    refused(b, r"^{}: sha256 mismatch: manifest [0-9a-f]{{64}}, file [0-9a-f]{{64}}$".format(rel.replace(".", r"\.")))


def test_flipped_byte_in_manifest_is_caught_by_a_pin(b):
    pin = load_bundle(b).manifest_sha256
    text = (b / "manifest.json").read_text()
    (b / "manifest.json").write_text(text.replace('"seed-mse"', '"seed-msf"', 1))
    load_bundle(b)  # a valid edited manifest is indistinguishable without a pin (documented)
    with pytest.raises(BundleError, match=r"manifest.json: sha256 [0-9a-f]{64} is not the pinned"):
        load_bundle(b, manifest_sha256=pin)


@pytest.mark.parametrize("rel", LISTED)
def test_truncated(b, rel):
    p = b / rel
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    refused(b, r"^{}: is \d+ bytes, the manifest says \d+ \(truncated".format(rel.replace(".", r"\.")))


@pytest.mark.parametrize("rel", LISTED)
def test_grown(b, rel):
    with open(b / rel, "ab") as fh:
        fh.write(b"\0")
    refused(b, r"^{}: is \d+ bytes, the manifest says".format(rel.replace(".", r"\.")))


@pytest.mark.parametrize("rel", LISTED + ["manifest.json"])
def test_missing(b, rel):
    (b / rel).unlink()
    refused(b, r"^{}: missing$".format(rel.replace(".", r"\.")))


@pytest.mark.parametrize("extra", ["notes.txt", ".hidden", "sub/evil.onnx", "forward.onnx.data"])
def test_extra_unlisted_file(b, extra):
    p = b / extra
    p.parent.mkdir(exist_ok=True)
    p.write_bytes(b"x")
    refused(b, r"^{}: file not listed in the manifest$".format(extra.replace(".", r"\.")))


def test_extra_empty_folder(b):
    (b / "empty").mkdir()
    refused(b, r"^empty/: folder not listed in the manifest$")


@pytest.mark.parametrize("content, fault", [
    (b"{not json", r"is not valid JSON"),
    (b"\xff\xfe{}", r"is not valid JSON"),
    (b"[1, 2]", r"must hold a JSON object, got list"),
    (b'{"format_version": 1, "format_version": 1, "artifacts": []}', r"duplicate key 'format_version'"),
    (b'{"format_version": NaN, "artifacts": []}', r"non-standard JSON constant NaN"),
    (b'{"format_version": 2, "artifacts": [{"path": "a", "kind": "x", "sha256": "' + b"0" * 64 + b'", "bytes": 0}]}',
     r"format_version must be 1, got 2"),
    (b'{"format_version": 1, "artifacts": []}', r"artifacts must be a list of 1 to \d+ entries"),
])
def test_manifest_not_valid(b, content, fault):
    (b / "manifest.json").write_bytes(content)
    refused(b, r"^manifest\.json: .*" + fault)


def test_manifest_over_cap_is_not_read(b):
    with open(b / "manifest.json", "ab") as fh:
        fh.write(b" " * MANIFEST_MAX_BYTES)
    refused(b, r"^manifest\.json: is \d+ bytes, over the 1048576-byte limit$")


@pytest.mark.parametrize("field, value, fault", [
    ("sha256", "ABC", r"sha256 must be 64 lowercase hex digits"),
    ("bytes", -1, r"bytes must be an integer"),
    ("bytes", True, r"bytes must be an integer"),
    ("kind", 3, r"kind must be a string"),
])
def test_manifest_entry_fields(b, field, value, fault):
    data = manifest(b)
    data["artifacts"][0][field] = value
    write_manifest(b, data)
    refused(b, r"^forward\.onnx: " + fault)


@pytest.mark.parametrize("path, fault", [
    ("/etc/passwd", r"is absolute"),
    ("~/x", r"is absolute"),
    ("../outside.onnx", r"escapes the bundle folder"),
    ("sub/../../outside.onnx", r"escapes the bundle folder"),
    ("..", r"escapes the bundle folder"),
    ("./forward.onnx", r"not normalized"),
    ("sub//forward.onnx", r"not normalized"),
    ("forward.onnx/", r"not normalized"),
    ("..\\outside.onnx", r"NUL, backslash or colon"),
    ("C:forward.onnx", r"NUL, backslash or colon"),
    ("", r"non-empty string"),
])
def test_bad_listed_path(b, tmp_path, path, fault):
    (tmp_path / "outside.onnx").write_bytes((b / "forward.onnx").read_bytes())
    data = manifest(b)
    data["artifacts"][0]["path"] = path
    write_manifest(b, data)
    refused(b, fault)


def test_listed_twice(b):
    data = manifest(b)
    data["artifacts"].append(dict(data["artifacts"][0]))
    write_manifest(b, data)
    refused(b, r"^forward\.onnx: listed twice")


def test_symlinked_file_to_identical_content_inside(b):
    """Even a symlink whose target is the right bytes is refused: the file must be itself."""
    os.rename(b / "forward.onnx", b / "real.onnx")
    os.symlink("real.onnx", b / "forward.onnx")
    refused(b, r"^forward\.onnx: is a symlink$", r"^real\.onnx: file not listed")


def test_symlink_escaping(b, tmp_path):
    outside = tmp_path / "outside.onnx"
    outside.write_bytes((b / "forward.onnx").read_bytes())
    (b / "forward.onnx").unlink()
    os.symlink(outside, b / "forward.onnx")
    refused(b, r"^forward\.onnx: is a symlink$")


def test_symlinked_folder(b, tmp_path):
    real = tmp_path / "realdir"
    real.mkdir()
    os.rename(b / "params.npz", real / "params.npz")
    os.symlink(real, b / "sub")
    data = manifest(b)
    next(a for a in data["artifacts"] if a["path"] == "params.npz")["path"] = "sub/params.npz"
    write_manifest(b, data)
    refused(b, r"^sub/params\.npz: lies under a symlinked folder 'sub'$")


def test_unlisted_symlink(b):
    os.symlink("/etc/hostname", b / "extra")
    refused(b, r"^extra: is a symlink and not listed")


def test_bundle_folder_itself_may_be_a_symlink(src, tmp_path):
    link = tmp_path / "current"
    os.symlink(src, link)
    assert load_bundle(link).check().ok


def test_hard_link(b, tmp_path):
    os.link(b / "loss.onnx", tmp_path / "elsewhere.onnx")
    refused(b, r"^loss\.onnx: is a hard link \(2 links\)$")


def test_every_fault_reported_at_once(b):
    (b / "loss.pt").unlink()
    (b / "stray").write_bytes(b"")
    data = bytearray((b / "forward.onnx").read_bytes())
    data[10] ^= 0xFF
    (b / "forward.onnx").write_bytes(bytes(data))
    err = refused(b, r"^loss\.pt: missing", r"^stray: file not listed", r"^forward\.onnx: sha256 mismatch")
    assert len(err.faults) == 3


# ---------------------------------------------------------------------------------------------
# ONNX external data: a valid bundle with it loads; every location fault is refused
# ---------------------------------------------------------------------------------------------
def _externalize(b, location="weights.bin"):
    """forward.onnx with its initializers in a separate file, listed as onnx_external_data."""
    import onnx
    from onnx.external_data_helper import convert_model_to_external_data

    model = onnx.load(str(b / "forward.onnx"))
    convert_model_to_external_data(model, all_tensors_to_one_file=True, location=location, size_threshold=0)
    onnx.save_model(model, str(b / "forward.onnx"))
    data = manifest(b)
    data["artifacts"].append({"path": location, "kind": "onnx_external_data", "sha256": "0" * 64, "bytes": 0})
    write_manifest(b, data)
    resign(b)
    return model


def _set_location(b, tensor_index, **entries):
    import onnx

    model = onnx.load(str(b / "forward.onnx"), load_external_data=False)
    tensor = model.graph.initializer[tensor_index]
    kept = {e.key: e.value for e in tensor.external_data}
    kept.update({k: str(v) for k, v in entries.items()})
    del tensor.external_data[:]
    for k, v in kept.items():
        entry = tensor.external_data.add()
        entry.key, entry.value = k, v
    (b / "forward.onnx").write_bytes(model.SerializeToString())  # onnx.save_model would touch the location
    resign(b)


def test_external_data_valid_bundle_loads_and_checks(b, src):
    _externalize(b)
    bundle = load_bundle(b)
    x = np.random.default_rng(0).standard_normal((4, 32), dtype=np.float32)
    np.testing.assert_array_equal(bundle.forward(x), load_bundle(src).forward(x))
    assert bundle.check().ok


@pytest.mark.parametrize("location, fault", [
    ("/etc/passwd", r"is absolute"),
    ("../weights.bin", r"escapes the bundle folder"),
    ("sub/../../weights.bin", r"escapes the bundle folder"),
    ("..\\weights.bin", r"backslash"),
    ("fixtures.npz", r"is not listed in the manifest as onnx_external_data"),
    ("nothere.bin", r"is not listed in the manifest as onnx_external_data"),
])
def test_external_data_bad_location(b, location, fault):
    _externalize(b)
    _set_location(b, 0, location=location)
    refused(b, r"^forward\.onnx: external data of tensor '[\w.]+': .*" + fault)


def test_external_data_range_outside_file(b):
    _externalize(b)
    size = (b / "weights.bin").stat().st_size
    _set_location(b, 0, offset=size - 4, length=4096)
    refused(b, r"^forward\.onnx: external data of tensor '[\w.]+': bytes \[\d+, \d+\) lie outside weights\.bin")


def test_external_data_file_symlinked(b, tmp_path):
    _externalize(b)
    outside = tmp_path / "w.bin"
    os.rename(b / "weights.bin", outside)
    os.symlink(outside, b / "weights.bin")
    refused(b, r"^weights\.bin: is a symlink$")


def test_external_data_file_unlisted(b):
    _externalize(b)
    data = manifest(b)
    data["artifacts"] = [a for a in data["artifacts"] if a["path"] != "weights.bin"]
    write_manifest(b, data)
    refused(b, r"^weights\.bin: file not listed in the manifest$")


def test_external_data_is_checked_only_after_the_checksum(b):
    """A tampered ONNX file is refused for its checksum; its protobuf is never walked."""
    _externalize(b)
    _set_location(b, 0, location="/etc/passwd")
    data = manifest(b)
    next(a for a in data["artifacts"] if a["path"] == "forward.onnx")["sha256"] = "1" * 64
    write_manifest(b, data)
    err = refused(b, r"^forward\.onnx: sha256 mismatch")
    assert not any("external data" in why for _, why in err.faults)


def test_external_data_marked_without_location(b):
    import onnx

    model = onnx.load(str(b / "forward.onnx"))
    model.graph.initializer[0].data_location = onnx.TensorProto.EXTERNAL
    (b / "forward.onnx").write_bytes(model.SerializeToString())
    resign(b)
    refused(b, r"^forward\.onnx: external data of tensor '[\w.]+' is inconsistent")


# ---------------------------------------------------------------------------------------------
# mutated ONNX graphs (checksums re-signed, so only the deeper checks and onnxruntime stand in
# the way), run in a subprocess so a native crash or hang is a reported failure
# ---------------------------------------------------------------------------------------------
_WORKER = r"""
import hashlib, json, shutil, sys, tempfile, os
from pathlib import Path
from compile_losses.runtime import BundleError, load_bundle
src, cases, start = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
names = sorted(p.name for p in cases.iterdir())
for i, name in enumerate(names):
    if i < start:
        continue
    print("START", i, flush=True)
    target, sign = name.split("__")[1], name.endswith("__signed")
    with tempfile.TemporaryDirectory() as tmp:
        b = Path(tmp) / "b"
        shutil.copytree(src, b)
        data = (cases / name).read_bytes()
        (b / target).write_bytes(data)
        if sign:
            m = json.loads((b / "manifest.json").read_text())
            for a in m["artifacts"]:
                if a["path"] == target:
                    a["sha256"], a["bytes"] = hashlib.sha256(data).hexdigest(), len(data)
            (b / "manifest.json").write_text(json.dumps(m))
        try:
            bundle = load_bundle(b)
        except BundleError as exc:
            out = {"case": name, "result": "refused", "faults": exc.faults}
        else:
            report = bundle.check()
            out = {"case": name, "result": "check ok" if report.ok else "check failed",
                   "failed": [[r.graph, r.output, r.clause] for r in report.rows if not r.ok]}
    print("RESULT", json.dumps(out), flush=True)
print("DONE", flush=True)
"""


def _mutations(src: Path, count: int, seed: int = 0):
    """(target file, bytes) pairs: byte-level and structural damage to each ONNX graph."""
    import onnx

    rng = random.Random(seed)
    graphs = ["forward.onnx", "loss.onnx", "loss_and_grad.onnx", "train_step.onnx"]

    def structural(model, k):
        g = model.graph
        choice = k % 8
        if choice == 0 and g.node:
            g.node[rng.randrange(len(g.node))].op_type = "NoSuchOp"
        elif choice == 1 and g.node:
            del g.node[rng.randrange(len(g.node))]
        elif choice == 2 and g.node:
            n = g.node[rng.randrange(len(g.node))]
            if n.input:
                n.input[0] = "missing_value"
        elif choice == 3:
            model.opset_import[0].version = 99
        elif choice == 4 and g.initializer:
            t = g.initializer[rng.randrange(len(g.initializer))]
            if t.raw_data:
                t.raw_data = t.raw_data[: len(t.raw_data) // 2]
            else:
                t.dims.append(3)
        elif choice == 5 and g.node:  # a cycle: a node eats its own output
            n = g.node[-1]
            n.input.append(n.output[0])
        elif choice == 6:
            g.input[0].type.tensor_type.elem_type = onnx.TensorProto.STRING
        else:
            model.ir_version = 1
        return model.SerializeToString()

    out = []
    for k in range(count):
        target = graphs[k % len(graphs)]
        data = bytearray((src / target).read_bytes())
        kind = k % 5
        if kind == 0:
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif kind == 1:
            data = data[: rng.randrange(1, len(data))]
        elif kind == 2:
            i = rng.randrange(len(data))
            data[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif kind == 3:
            i = rng.randrange(len(data))
            data[i:i + rng.randint(1, 64)] = b"\xff" * 10  # e.g. a runaway varint / length
        else:
            data = bytearray(structural(onnx.load_from_string(bytes(data)), k))
        out.append((target, bytes(data)))
    return out


def _run_mutations(src: Path, tmp_path: Path, count: int):
    cases = tmp_path / "cases"
    cases.mkdir()
    for i, (target, data) in enumerate(_mutations(src, count)):
        # every mutation twice: as delivered (checksum stale) and re-signed
        (cases / "{:04d}__{}__raw".format(i, target)).write_bytes(data)
        (cases / "{:04d}__{}__signed".format(i, target)).write_bytes(data)
    total = 2 * count
    results, crashes, start = {}, [], 0
    while start < total:
        try:
            proc = subprocess.run([PYTHON, "-c", _WORKER, str(src), str(cases), str(start)], capture_output=True,
                                  text=True, timeout=30 + 2 * total, cwd=ROOT)
            stdout, code = proc.stdout, proc.returncode
        except subprocess.TimeoutExpired as exc:
            stdout, code = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or ""), "timeout"
        last = start
        for line in stdout.splitlines():
            if line.startswith("START"):
                last = int(line.split()[1])
            elif line.startswith("RESULT"):
                r = json.loads(line[7:])
                results[r["case"]] = r
        if "DONE" in stdout:
            break
        crashes.append((sorted(p.name for p in cases.iterdir())[last], code))
        start = last + 1
    return results, crashes, total


@pytest.mark.parametrize("count", [
    pytest.param(10, id="10-quick"),
    pytest.param(110, id="220-cases", marks=pytest.mark.slow),
])
def test_mutated_onnx_graphs_never_crash_the_loader(src, tmp_path, count):
    results, crashes, total = _run_mutations(src, tmp_path, count)
    assert not crashes, crashes  # a native crash or hang in a subprocess is a failure
    assert len(results) == total
    for name, r in results.items():
        target = name.split("__")[1]
        if name.endswith("__raw"):
            assert r["result"] == "refused" and [f for f, _ in r["faults"]] == [target], r
            assert "sha256 mismatch" in r["faults"][0][1] or "bytes, the manifest says" in r["faults"][0][1], r
        elif r["result"] == "refused":
            assert all(f == target for f, _ in r["faults"]), r
        # a re-signed mutation that loads is judged by its fixtures: "check ok" means it still
        # computes what eager computed (e.g. a flipped bit in a doc string), "check failed" is caught
    outcome = {}
    for r in results.values():
        outcome[r["result"]] = outcome.get(r["result"], 0) + 1
    print("mutations:", total, outcome)
