"""Structure-aware fuzzing of a real bundle: its manifest (as JSON), its npz files (their arrays,
their zip and .npy headers) and its ONNX graphs (their tensors, external data, nodes, signatures,
wire format). Every example, re-signed so that only the deeper checks stand in the way, must be
refused with :class:`BundleError` (a time-out included) or load and run its check; anything else,
a hang past the time bound or unbounded memory, fails.

Examples under CI=true: 900 manifests, 550 npz files, 550 graphs (2,000 in all); 40 each otherwise.
Run with ``-s`` to see how many were refused and how many loaded.
"""
import hashlib
import io
import json
import os
import resource
import struct
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bundle_helpers import copy_bundle, default_bundle
from compile_losses.runtime import BundleError, load_bundle

pytestmark = pytest.mark.onnx
CI = os.environ.get("CI") == "true"
FUZZ_EXAMPLES = {"manifest": 900, "npz": 550, "onnx": 550} if CI else {"manifest": 40, "npz": 40, "onnx": 40}
EXAMPLE_SECONDS = 20.0       # wall-clock bound per example (the check itself is bounded at 2 s)
MEMORY_GROWTH = 1 << 30      # peak RSS may grow at most this much over a whole fuzz test


def fuzz(kind: str) -> settings:
    return settings(max_examples=FUZZ_EXAMPLES[kind], deadline=None, derandomize=CI, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much])

NASTY = ["../x", "/etc/hostname", "*/_ORT_MEM_ADDR_/*", "a/../../b", "weights.bin", "fixtures.npz", "",
         "x\ny", "\ud800", "C:x", "a\\b", "./a", "a//b", "~/a", "\u202e.onnx", "forward.onnx", "a" * 300]
JSON_LEAF = (st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70)
             | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12) | st.sampled_from(NASTY))
JSON = st.recursive(JSON_LEAF, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                    max_leaves=6)


class Workspace:
    """One copy of the bundle; each example writes its mutation, loads, and puts the bytes back."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.original = {p.name: p.read_bytes() for p in root.iterdir()}
        self.peak0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.outcomes: dict = {}
        # held for the whole test: the runtime shares sessions between live bundles, so the
        # graphs an example leaves unchanged are not compiled again
        self.pristine = load_bundle(root)

    def manifest(self) -> dict:
        return json.loads(self.original["manifest.json"])

    def run(self, files: dict, manifest_text=None, resign=True) -> str:
        """Write ``files`` (name -> bytes), re-sign them, load and check; the outcome's name."""
        m = self.manifest()
        if resign:
            for art in m["artifacts"]:
                if art["path"] in files:
                    art["sha256"] = hashlib.sha256(files[art["path"]]).hexdigest()
                    art["bytes"] = len(files[art["path"]])
        text = manifest_text if manifest_text is not None else json.dumps(m)
        try:
            for name, data in files.items():
                (self.root / name).write_bytes(data)
            (self.root / "manifest.json").write_bytes(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
            t0 = time.monotonic()
            try:
                bundle = load_bundle(self.root, timeout_s=2)
                bundle.check(timeout_s=2)
                outcome = "loaded"
            except BundleError:
                outcome = "refused"
            assert time.monotonic() - t0 < EXAMPLE_SECONDS, "one example took {:.1f} s".format(time.monotonic() - t0)
        finally:
            for name in list(files) + ["manifest.json"]:
                (self.root / name).write_bytes(self.original[name])
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        assert peak - self.peak0 < MEMORY_GROWTH, "peak memory grew by {} bytes".format(peak - self.peak0)
        return outcome


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    src = default_bundle(tmp_path_factory)
    workspace = Workspace(copy_bundle(src, tmp_path_factory.mktemp("fuzz") / "bundle"))
    yield workspace
    print("\nfuzzed bundles:", workspace.outcomes)


# -- manifest ---------------------------------------------------------------------------------
def _mutate_json(data, node, depth=0):
    """Replace, delete or add at a drawn place in the JSON tree (returns the new node)."""
    if isinstance(node, (dict, list)) and node and depth < 6 and data.draw(st.booleans()):
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        k = data.draw(st.sampled_from(keys))
        node[k] = _mutate_json(data, node[k], depth + 1)
        return node
    op = data.draw(st.sampled_from(["replace", "delete", "add", "duplicate"]))
    if op == "replace" or not isinstance(node, (dict, list)) or not node:
        return data.draw(JSON)
    keys = list(node) if isinstance(node, dict) else list(range(len(node)))
    k = data.draw(st.sampled_from(keys))
    if op == "delete":
        del node[k]
    elif op == "add":
        if isinstance(node, dict):
            node[data.draw(st.text(max_size=10) | st.sampled_from(["classes", "roles", "kind", "path", "bytes"]))] = data.draw(JSON)
        else:
            node.insert(k, data.draw(JSON))
    elif isinstance(node, list):
        node.append(json.loads(json.dumps(node[k])))
    return node


@fuzz("manifest")
@given(data=st.data())
def test_fuzz_manifest(ws, data):
    m = ws.manifest()
    for _ in range(data.draw(st.integers(1, 3))):
        m = _mutate_json(data, m)
    if data.draw(st.integers(0, 9)) == 0:  # now and then, damage the text itself
        text = bytearray(json.dumps(m).encode())
        for _ in range(data.draw(st.integers(1, 4))):
            text[data.draw(st.integers(0, len(text) - 1))] = data.draw(st.integers(0, 255))
        ws.run({}, bytes(text), resign=False)
    else:
        ws.run({}, json.dumps(m), resign=False)


# -- npz --------------------------------------------------------------------------------------
def _arrays(raw: bytes) -> dict:
    with np.load(io.BytesIO(raw)) as npz:
        return {k: npz[k] for k in npz.files}


def _savez(arrays: dict) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:  # no zip64 extras: fields sit at fixed offsets
        for k, v in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, v)
            zf.writestr(k + ".npy", member.getvalue())
    return buf.getvalue()


# (signature, offset, struct format) of every header field a zip reader trusts
_ZIP_FIELDS = [(b"PK\x03\x04", off, fmt) for off, fmt in ((4, "<H"), (6, "<H"), (8, "<H"), (14, "<I"), (18, "<I"), (22, "<I"), (26, "<H"), (28, "<H"))] + \
              [(b"PK\x01\x02", off, fmt) for off, fmt in ((8, "<H"), (10, "<H"), (16, "<I"), (20, "<I"), (24, "<I"), (28, "<H"), (30, "<H"), (42, "<I"))] + \
              [(b"PK\x05\x06", off, fmt) for off, fmt in ((8, "<H"), (10, "<H"), (12, "<I"), (16, "<I"))]


@fuzz("npz")
@given(data=st.data())
def test_fuzz_npz(ws, data):
    name = data.draw(st.sampled_from(["params.npz", "fixtures.npz"]))
    arrays = _arrays(ws.original[name])
    op = data.draw(st.sampled_from(["value", "dtype", "shape", "drop", "rename", "zipfield", "npyheader", "bytes"]))
    key = data.draw(st.sampled_from(sorted(arrays)))
    if op == "value" and arrays[key].size:
        a = arrays[key].copy()
        a.flat[data.draw(st.integers(0, a.size - 1))] = data.draw(st.floats(allow_nan=True, allow_infinity=True, width=32))
        arrays[key] = a
    elif op == "dtype":
        arrays[key] = arrays[key].astype(data.draw(st.sampled_from([np.float64, np.float16, np.int64, np.int8, np.bool_, np.complex64])))
    elif op == "shape":
        arrays[key] = arrays[key].reshape(-1)[: data.draw(st.integers(0, arrays[key].size))]
    elif op == "drop":
        del arrays[key]
    elif op == "rename":
        arrays[data.draw(st.text(min_size=1, max_size=12).filter(lambda s: "\x00" not in s))] = arrays.pop(key)
    raw = bytearray(_savez(arrays))
    if op == "zipfield":
        sig, off, fmt = data.draw(st.sampled_from(_ZIP_FIELDS))
        hits = [i for i in range(len(raw)) if raw.startswith(sig, i)]
        if hits:
            i = data.draw(st.sampled_from(hits))
            struct.pack_into(fmt, raw, i + off, data.draw(st.integers(0, 2 ** (8 * struct.calcsize(fmt)) - 1)))
    elif op == "npyheader":
        descr = data.draw(st.sampled_from(["<f4", "<f8", "|O", "<U3", "V8", "<i8", "x", "[('a','<f4')]"]))
        shape = data.draw(st.lists(st.integers(-1, 2 ** 45), max_size=3))
        header = "{{'descr': {!r}, 'fortran_order': {}, 'shape': {}, }}".format(
            descr, data.draw(st.booleans()), tuple(shape)).encode("latin1")
        header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
        npy = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + bytes(data.draw(st.integers(0, 64)))
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for k, v in arrays.items():
                member = io.BytesIO()
                np.lib.format.write_array(member, v)
                zf.writestr(k + ".npy", npy if k == key else member.getvalue())
        raw = bytearray(buf.getvalue())
    elif op == "bytes":
        for _ in range(data.draw(st.integers(1, 6))):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    ws.run({name: bytes(raw)})


# -- ONNX protobufs ---------------------------------------------------------------------------
def _mutate_tensor(data, t):
    import onnx

    op = data.draw(st.sampled_from(["dims", "type", "raw", "external"]))
    if op == "dims":
        del t.dims[:]
        t.dims.extend(data.draw(st.lists(st.integers(-2, 2 ** 40), max_size=3)))
    elif op == "type":
        t.data_type = data.draw(st.integers(0, 25))
    elif op == "raw":
        t.raw_data = bytes(data.draw(st.integers(0, 64)))
    else:
        if data.draw(st.booleans()):
            t.data_location = onnx.TensorProto.EXTERNAL
        for _ in range(data.draw(st.integers(1, 4))):
            e = t.external_data.add()
            e.key = data.draw(st.sampled_from(["location", "offset", "length", "checksum", "basepath", ""]))
            e.value = data.draw(st.sampled_from(NASTY + ["0", "-1", "8", "99999999999999999999", "0x10", " 4"])
                                | st.text(max_size=8)).encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def _mutate_model(data, model):
    import onnx
    from onnx import helper

    g = model.graph
    op = data.draw(st.sampled_from(["tensor", "node", "io", "model", "subgraph"]))
    if op == "tensor" and g.initializer:
        _mutate_tensor(data, g.initializer[data.draw(st.integers(0, len(g.initializer) - 1))])
    elif op == "node" and g.node:
        n = g.node[data.draw(st.integers(0, len(g.node) - 1))]
        what = data.draw(st.sampled_from(["op", "domain", "input", "output", "attr"]))
        if what == "op":
            n.op_type = data.draw(st.sampled_from(["NoSuchOp", "Identity", "Loop", "If", "Scan", "Add", "Constant", "MatMul"]))
        elif what == "domain":
            n.domain = data.draw(st.sampled_from(["com.microsoft", "ai.onnx.ml", "evil", "ai.onnx.preview.training"]))
        elif what == "input" and n.input:
            n.input[0] = data.draw(st.sampled_from(["", "x", "missing", n.output[0] if n.output else "y"]))
        elif what == "output" and n.output:
            n.output[0] = data.draw(st.sampled_from(["", "x", "pred", "loss", "dup"]))
        else:
            t = helper.make_tensor("attr_t", onnx.TensorProto.FLOAT, [1], [1.0])
            _mutate_tensor(data, t)
            n.attribute.append(helper.make_attribute(data.draw(st.sampled_from(["value", "alpha", "body", "to"])), t))
    elif op == "io":
        v = (g.input if data.draw(st.booleans()) else g.output)
        if v:
            tt = v[0].type.tensor_type
            if data.draw(st.booleans()):
                tt.elem_type = data.draw(st.integers(0, 25))
            else:
                del tt.shape.dim[:]
                for d in data.draw(st.lists(st.integers(0, 2 ** 40), max_size=3)):
                    tt.shape.dim.add().dim_value = d
    elif op == "model":
        if data.draw(st.booleans()):
            model.ir_version = data.draw(st.integers(0, 12))
        else:
            model.opset_import[0].version = data.draw(st.integers(1, 30))
    else:  # a tensor with external data buried in a subgraph (If branch), where a shallow walk misses it
        t = helper.make_tensor("deep", onnx.TensorProto.FLOAT, [1], [1.0])
        _mutate_tensor(data, t)
        branch = helper.make_graph([helper.make_node("Constant", [], ["c"], value=t)], "b", [],
                                   [helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, None)])
        g.node.append(helper.make_node("If", ["cond_missing"], ["unused"], then_branch=branch, else_branch=branch))


@fuzz("onnx")
@given(data=st.data())
def test_fuzz_onnx(ws, data):
    import onnx

    name = data.draw(st.sampled_from(["forward.onnx", "loss.onnx", "loss_and_grad.onnx", "train_step.onnx"]))
    raw = ws.original[name]
    if data.draw(st.integers(0, 4)) == 0:  # the wire format itself: bytes, lengths and varints
        buf = bytearray(raw)
        for _ in range(data.draw(st.integers(1, 6))):
            i = data.draw(st.integers(0, len(buf) - 1))
            if data.draw(st.booleans()):
                buf[i] = data.draw(st.integers(0, 255))
            else:
                buf[i:i + data.draw(st.integers(1, 10))] = b"\xff" * data.draw(st.integers(1, 10))
        mutated = bytes(buf)
    else:
        model = onnx.load_from_string(raw)
        for _ in range(data.draw(st.integers(1, 3))):
            _mutate_model(data, model)
        try:
            mutated = model.SerializeToString()
        except Exception:  # protobuf refused to encode the mutation (e.g. invalid UTF-8): nothing to test
            return
    ws.run({name: mutated})
