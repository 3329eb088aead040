"""A standalone repro of a localized divergence: the ONNX graph cut down to the diverging node,
its inputs as the backend computed them, eager's float32 output and the float64 reference, and a
script that needs only numpy and onnxruntime.

    <dir>/subgraph.onnx    the diverging node (and the Constants it reads), its inputs as graph inputs
    <dir>/inputs.npz       x0, x1, ...: the subgraph's inputs in order, from the backend's run
    <dir>/expected.npz     eager (float32 eager torch) and float64 (the reference) of its output
    <dir>/repro.py         runs the subgraph in onnxruntime and prints the three and their errors
    <dir>/finding.json     what the localizer said

The directory is built beside its final name and renamed in, so it appears only complete.
"""
import json
import os
import re
import shutil
import tempfile
from typing import Any, Dict, List

import numpy as np

__all__ = ["write_repro", "SCRIPT"]

SCRIPT = '''"""Repro of a divergence found by compile_losses.localize: {title}

Needs numpy and onnxruntime only. Prints the subgraph's result in onnxruntime (optimizations
{level}), eager torch's float32 result and the float64 reference, and their errors.
"""
import os
import sys

import numpy as np
import onnxruntime as ort

HERE = os.path.dirname(os.path.abspath(__file__))
LEVEL = {level!r}


def main():
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = {{"disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                                         "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}}[LEVEL]
    session = ort.InferenceSession(os.path.join(HERE, "subgraph.onnx"), options, providers=["CPUExecutionProvider"])
    saved = np.load(os.path.join(HERE, "inputs.npz"))
    feeds = {{i.name: saved["x{{}}".format(k)] for k, i in enumerate(session.get_inputs())}}
    backend = np.asarray(session.run(None, feeds)[0])
    expected = np.load(os.path.join(HERE, "expected.npz"))
    eager, ref = expected["eager"], expected["float64"]
    backend = backend.reshape(eager.shape) if backend.size == eager.size else backend
    finite = np.isfinite(ref) & np.isfinite(eager)
    err_b = float(np.max(np.abs(np.where(finite, backend.astype(np.float64) - ref, 0)))) if ref.size else 0.0
    err_e = float(np.max(np.abs(np.where(finite, eager.astype(np.float64) - ref, 0)))) if ref.size else 0.0
    np.set_printoptions(precision=9, threshold=12, edgeitems=3)
    print("node:     {title}")
    print("backend:  ", backend.ravel())
    print("eager:    ", eager.ravel())
    print("float64:  ", ref.ravel())
    print("error vs float64: backend {{:.3g}}, eager {{:.3g}}".format(err_b, err_e))
    diverges = not np.array_equal(np.isfinite(backend), np.isfinite(eager)) or err_b > 2 * err_e + 4 * {eps!r} * max(
        float(np.max(np.abs(np.where(finite, ref, 0)))) if ref.size else 0.0, 1e-30)
    print("reproduced: {{}}".format(diverges))
    return 0


if __name__ == "__main__":
    sys.exit(main())
'''


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:80] or "node"


def write_repro(ref: Any, model: Any, node: Dict[str, Any], parent: str, level: str,
                values: Dict[str, np.ndarray]) -> str:
    """Write the repro of ``node`` (a localizer finding on ``model`` run at ``level``, whose
    values were ``values``) under ``parent``; returns its path."""
    import onnx
    import onnx.utils

    at = node.get("consumer", node)  # a lost FX op is shown at the node that reads past it
    onnx_node = model.graph.node[at["index"]]
    key = ref.key_of(onnx_node, onnx_node.output[0])
    if key is None:
        raise ValueError("the diverging node's output has no eager value to compare with")
    producers = {o: n for n in model.graph.node for o in n.output}
    initializers = {i.name for i in model.graph.initializer}
    inputs: List[str] = []
    for name in onnx_node.input:
        if not name or name in initializers or name in inputs:
            continue
        producer = producers.get(name)
        if producer is not None and producer.op_type == "Constant":
            continue
        inputs.append(name)
    full = onnx.shape_inference.infer_shapes(model)
    sub = onnx.utils.Extractor(full).extract_model(inputs, [onnx_node.output[0]])
    feeds = {}
    for k, name in enumerate(inputs):
        feeds["x{}".format(k)] = np.asarray(values[name]) if name in values else ref.feeds[name]
    eager = ref.ref32[key].numpy()
    float64 = ref.ref64[key].numpy()
    os.makedirs(parent, exist_ok=True)
    final = os.path.join(parent, "{}-{}".format(ref.kind, _slug(node["name"])))
    staging = tempfile.mkdtemp(dir=parent, prefix=".repro-")
    try:
        onnx.save(sub, os.path.join(staging, "subgraph.onnx"))
        np.savez(os.path.join(staging, "inputs.npz"), **feeds)
        np.savez(os.path.join(staging, "expected.npz"), eager=eager, float64=float64)
        title = "{} {} (FX {}){}".format(node["op_type"], node["name"], node.get("fx_node"),
                                         " at {}:{}".format(node["source"]["file"], node["source"]["line"])
                                         if node.get("source") else "")
        eps = float(np.finfo(eager.dtype).eps) if np.issubdtype(eager.dtype, np.floating) else 0.0
        with open(os.path.join(staging, "repro.py"), "w") as fh:
            fh.write(SCRIPT.format(title=title.replace('"', "'"), level=level, eps=eps))
        with open(os.path.join(staging, "finding.json"), "w") as fh:
            json.dump({"graph": ref.kind, "level": level, "node": node}, fh, indent=2, default=str)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final
