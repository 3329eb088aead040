"""Bundles built the way an attacker would, from a real exported bundle, for the fault classes whose
outcome rests on what onnxruntime is handed: each has a builder and the outcome the runtime must
give whatever onnxruntime version runs it (see test_bundle_attacks.py and runtime_probe.py)."""
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List

from bundle_helpers import manifest, resign, write_manifest

SECRET = b"SECRET-SECRET-SECRET-SECRET-SECR"  # 32 bytes a graph could return as 8 float32


@dataclass
class Attack:
    name: str
    build: Callable[[Path], None]
    action: str                       # runtime_probe action: load, check, forward_timeout, swap_after_verify
    result: str                       # refused, timeout, check ok, check failed
    pattern: str = ""                 # a fault line ("<file>: <fault>") must match it
    extra: Dict[str, Any] = field(default_factory=dict)


def _externalize(b: Path, rel: str = "forward.onnx", location: str = "weights.bin") -> None:
    import onnx
    from onnx.external_data_helper import convert_model_to_external_data

    model = onnx.load(str(b / rel))
    convert_model_to_external_data(model, all_tensors_to_one_file=True, location=location, size_threshold=0)
    onnx.save_model(model, str(b / rel))
    data = manifest(b)
    data["artifacts"].append({"path": location, "kind": "onnx_external_data", "sha256": "0" * 64, "bytes": 0})
    write_manifest(b, data)
    resign(b)


def _set_location(b: Path, rel: str, **entries: str) -> None:
    import onnx

    model = onnx.load(str(b / rel), load_external_data=False)
    tensor = model.graph.initializer[0]
    kept = {e.key: e.value for e in tensor.external_data}
    kept.update(entries)
    del tensor.external_data[:]
    for k, v in kept.items():
        e = tensor.external_data.add()
        e.key, e.value = k, v
    (b / rel).write_bytes(model.SerializeToString())  # onnx.save_model would touch the location
    resign(b)


def _rename(b: Path, old: str, new: str) -> None:
    os.rename(b / old, b / new)
    data = manifest(b)
    next(a for a in data["artifacts"] if a["path"] == old)["path"] = new
    write_manifest(b, data)


def graph_not_named_onnx(b: Path) -> None:
    """forward graph listed as forward.bin, its external data pointing outside the bundle."""
    (b.parent / "secret.txt").write_bytes(SECRET)
    _externalize(b)
    _rename(b, "forward.onnx", "forward.bin")
    _set_location(b, "forward.bin", location="../secret.txt", offset="0", length="32")


def graph_absolute_location(b: Path) -> None:
    (b.parent / "secret.txt").write_bytes(SECRET)
    _externalize(b)
    _rename(b, "forward.onnx", "model.dat")
    _set_location(b, "model.dat", location=str(b.parent / "secret.txt"), offset="0", length="32")


def ort_memory_tag(b: Path) -> None:
    """The location onnxruntime reads as 'offset is a pointer into this process' (a crash in 1.20)."""
    _externalize(b)
    _set_location(b, "forward.onnx", location="*/_ORT_MEM_ADDR_/*", offset="8", length="32")


def ort_memory_tag_listed(b: Path) -> None:
    """The same, with a file really listed at that path (folder '*', file '*')."""
    _externalize(b)
    tag = "*/_ORT_MEM_ADDR_/*"
    (b / "*" / "_ORT_MEM_ADDR_").mkdir(parents=True)
    shutil.copy(b / "weights.bin", b / tag)
    data = manifest(b)
    data["artifacts"].append({"path": tag, "kind": "onnx_external_data", "sha256": "0" * 64, "bytes": 0})
    write_manifest(b, data)
    _set_location(b, "forward.onnx", location=tag, offset="0")


def sparse_constant_outside(b: Path) -> None:
    """A Constant node whose sparse_value's values live in external data outside the bundle
    (onnxruntime up to 1.26 read these without its path validation)."""
    import onnx
    from onnx import TensorProto, helper

    (b.parent / "secret.txt").write_bytes(SECRET)
    model = onnx.load(str(b / "forward.onnx"))
    values = helper.make_tensor("leak_values", TensorProto.FLOAT, [8], [0.0] * 8)
    values.ClearField("float_data")
    values.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "../secret.txt"), ("offset", "0"), ("length", "32")):
        e = values.external_data.add()
        e.key, e.value = k, v
    sparse = helper.make_sparse_tensor(values, helper.make_tensor("leak_idx", TensorProto.INT64, [8], list(range(8))), [8])
    model.graph.node.insert(0, helper.make_node("Constant", [], ["leak"], sparse_value=sparse))
    (b / "forward.onnx").write_bytes(model.SerializeToString())
    resign(b)


def loop_forever(b: Path) -> None:
    """forward.onnx replaced by a graph with the same inputs and outputs whose Loop runs 2**62 trips."""
    import onnx
    from onnx import TensorProto as T
    from onnx import helper

    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Add", ["acc_in", "acc_in"], ["acc_out"])],
        "body",
        [helper.make_tensor_value_info("i", T.INT64, []), helper.make_tensor_value_info("cond_in", T.BOOL, []),
         helper.make_tensor_value_info("acc_in", T.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", T.BOOL, []), helper.make_tensor_value_info("acc_out", T.FLOAT, None)])
    nodes = [helper.make_node("Constant", [], ["trips"], value=helper.make_tensor("t", T.INT64, [], [2 ** 62])),
             helper.make_node("Constant", [], ["go"], value=helper.make_tensor("g", T.BOOL, [], [True])),
             helper.make_node("Loop", ["trips", "go", "x"], ["pred"], body=body)]
    graph = helper.make_graph(nodes, "forever", [helper.make_tensor_value_info("x", T.FLOAT, ["N", 32])],
                              [helper.make_tensor_value_info("pred", T.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    (b / "forward.onnx").write_bytes(model.SerializeToString())
    resign(b)


def swap_external_after_verify(b: Path) -> None:
    _externalize(b)


def replaced_params(b: Path) -> None:
    """params.npz replaced by other weights of the same shapes, manifest re-signed."""
    import numpy as np

    with np.load(b / "params.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    rng = np.random.default_rng(0)
    np.savez(b / "params.npz", **{k: (rng.standard_normal(v.shape) * 30).astype(v.dtype) for k, v in arrays.items()})
    resign(b)


ATTACKS: List[Attack] = [
    Attack("graph-not-named-onnx", graph_not_named_onnx, "load", "refused",
           r"^forward\.bin: external data of tensor '[\w.]+': path '\.\./secret\.txt' escapes the bundle folder"),
    Attack("graph-absolute-location", graph_absolute_location, "load", "refused",
           r"^model\.dat: external data of tensor '[\w.]+': path '/.*secret\.txt' is absolute"),
    Attack("ort-memory-tag", ort_memory_tag, "load", "refused", r"^forward\.onnx: .*in-memory address tag"),
    Attack("ort-memory-tag-listed", ort_memory_tag_listed, "load", "refused", r"in-memory address tag"),
    Attack("sparse-constant-outside", sparse_constant_outside, "load", "refused",
           r"^forward\.onnx: external data of tensor 'leak_values': path '\.\./secret\.txt' escapes"),
    Attack("loop-2**62-check", loop_forever, "check", "timeout", r"^forward\.onnx: did not finish within timeout_s=2 s",
           {"timeout_s": 2}),
    Attack("loop-2**62-forward", loop_forever, "forward_timeout", "timeout",
           r"^forward\.onnx: did not finish within timeout_s=0.5 s", {"timeout_s": 0.5}),
    Attack("external-data-swapped-after-verify", swap_external_after_verify, "swap_after_verify", "check ok", "",
           {"swap": "weights.bin"}),
    Attack("replaced-params", replaced_params, "check", "check failed", "", {"failed": ["train_step"]}),
]


def build_cases(src: Path, root: Path) -> List[Dict[str, Any]]:
    """Every attack built in its own copy of ``src`` under ``root``; the probe's case list."""
    cases = []
    for i, attack in enumerate(ATTACKS):
        b = root / "case{}".format(i) / "bundle"
        b.parent.mkdir(parents=True)
        shutil.copytree(src, b)
        attack.build(b)
        cases.append(dict({"name": attack.name, "dir": str(b), "action": attack.action}, **attack.extra))
    return cases
