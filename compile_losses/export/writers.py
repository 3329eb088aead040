"""Export writes: one function per artifact kind, each writing one file into a folder and returning
its manifest entry. Nothing here validates or installs."""
import platform
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ExportError


def _onnx_signature(path: Path) -> Tuple[int, List[Dict[str, Any]], List[Dict[str, Any]]]:
    """Opset and (name, dtype, shape) of a written ONNX graph; a symbolic dim 0 becomes "N" (the
    batch), a symbolic dim beyond it keeps its name (a dynamic dim the inputs declared, see
    :mod:`compile_losses.dims`; an expression of sizes in an output becomes ``d<index>``)."""
    import onnx

    model = onnx.load(str(path))
    onnx.checker.check_model(model)

    def io_(values: Any) -> List[Dict[str, Any]]:
        out = []
        for v in values:
            t = v.type.tensor_type
            shape = [int(d.dim_value) if not d.HasField("dim_param") else "N" if i == 0 else
                     d.dim_param if d.dim_param.isidentifier() else "d{}".format(i) for i, d in enumerate(t.shape.dim)]
            out.append({"name": v.name, "dtype": str(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)), "shape": shape})
        return out

    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    return opset, io_(model.graph.input), io_(model.graph.output)


def _export_onnx(module: nn.Module, example: Tuple[Tensor, ...], input_names: List[str],
                 output_names: List[str], path: Path) -> None:
    """The forward and loss graphs come from the onnx backend's exporter (one export path for
    parity and bundles); only the graph's input and output names are set here, for the manifest."""
    from ..backends.onnx import export_onnx

    model = export_onnx(module, example)
    _rename_io(model, input_names, output_names)
    path.write_bytes(model.SerializeToString())


def _rename_io(model: Any, inputs: List[str], outputs: List[str]) -> None:
    graph = model.graph
    old = [v.name for v in graph.input] + [v.name for v in graph.output]
    new = list(inputs) + list(outputs)
    if len(old) != len(new):
        raise ExportError("the exported graph has {} inputs and {} outputs, expected {} and {}".format(
            len(graph.input), len(graph.output), len(inputs), len(outputs)))
    mapping = {a: b for a, b in zip(old, new) if a != b}
    if not mapping:
        return
    taken = {n for node in graph.node for n in list(node.input) + list(node.output)} | {t.name for t in graph.initializer}
    clash = (set(new) - set(old)) & taken
    if clash:
        raise ExportError("cannot name graph inputs/outputs {}: the graph already uses them".format(sorted(clash)))
    for v in list(graph.input) + list(graph.output) + list(graph.value_info):
        v.name = mapping.get(v.name, v.name)
    for node in graph.node:
        node.input[:] = [mapping.get(n, n) for n in node.input]
        node.output[:] = [mapping.get(n, n) for n in node.output]


def _onnx_entry(path: Path, kind: str, **extra: Any) -> Dict[str, Any]:
    opset, inputs, outputs = _onnx_signature(path)
    entry = {"path": path.name, "kind": kind, "opset": opset, "inputs": inputs, "outputs": outputs}
    entry.update(extra)
    return entry


def write_forward_onnx(net: nn.Module, inputs: Tuple[Tensor, ...], folder: Path) -> Dict[str, Any]:
    path = folder / "forward.onnx"
    _export_onnx(net, inputs, _input_names(len(inputs)), ["pred"], path)
    return _onnx_entry(path, "forward")


def write_loss_onnx(loss: nn.Module, pred: Tensor, targets: Tuple[Tensor, ...], folder: Path) -> Dict[str, Any]:
    from ..training._trace import target_names

    path = folder / "loss.onnx"
    _export_onnx(loss, (pred,) + targets, ["pred"] + target_names(loss, len(targets)), ["loss"], path)
    return _onnx_entry(path, "loss")


def write_loss_and_grad_onnx(loss: nn.Module, pred: Tensor, targets: Tuple[Tensor, ...], folder: Path) -> Dict[str, Any]:
    from ..training import export_loss_and_grad_onnx

    path = folder / "loss_and_grad.onnx"
    export_loss_and_grad_onnx(loss, (pred,) + targets, str(path))
    return _onnx_entry(path, "loss_and_grad")


def write_train_step_onnx(net: nn.Module, loss: nn.Module, inputs: Tuple[Tensor, ...], targets: Tuple[Tensor, ...],
                          folder: Path) -> Dict[str, Any]:
    from ..training import export_train_step_onnx

    path = folder / "train_step.onnx"
    info = export_train_step_onnx(net, loss, inputs + targets, str(path))
    roles = {"params": info["params"], "data": [i["name"] for i in info["inputs"] if i.get("role") in ("input", "target")],
             "lr": next(i["name"] for i in info["inputs"] if i.get("role") == "lr"), "loss": info["outputs"][0]["name"]}
    return _onnx_entry(path, "train_step", roles=roles, optimizer=info.get("optimizer"))


def write_optimizer_step_onnx(net: nn.Module, loss: nn.Module, inputs: Tuple[Tensor, ...], targets: Tuple[Tensor, ...],
                              opt: Any, folder: Path) -> Dict[str, Any]:
    """``train_step.onnx`` with ``opt``'s update: state and hyper-parameters as graph inputs and
    outputs, its calling convention (``roles``) the graph's
    :class:`~compile_losses.signature.OptimStepSignature` description."""
    from ..training import export_optimizer_step_onnx

    if len(inputs) != 1:
        raise ValueError("the optimizer train step takes one net input, got {}".format(len(inputs)))
    path = folder / "train_step.onnx"
    info = export_optimizer_step_onnx(net, loss, inputs + targets, opt, str(path))
    return _onnx_entry(path, "train_step", roles=info["signature"], optimizer=info["optimizer"])


def write_torchscript(module: nn.Module, example: Tuple[Tensor, ...], path: Path, kind: str) -> Dict[str, Any]:
    """TorchScript as the TorchScript backend makes it (scripted, or traced for modules that do
    not script; the manifest says which)."""
    from ..backends.torchscript import save_torchscript

    return dict({"path": path.name, "kind": kind, "trusted_only": True}, **save_torchscript(module, example, path))


def write_aoti(net: nn.Module, inputs: Tuple[Tensor, ...], folder: Path) -> Dict[str, Any]:
    """The net's forward as an AOTInductor package, built by the aoti backend (native code:
    trusted-only, and only for this torch version and platform)."""
    from ..backends.aoti import export_aoti

    path = folder / "forward.pt2"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
        export_aoti(net, inputs, package_path=str(path))
    return {"path": path.name, "kind": "aoti_forward", "trusted_only": True,
            "torch": torch.__version__, "platform": "{}-{}".format(sys.platform, platform.machine())}


def write_npz(arrays: Dict[str, np.ndarray], path: Path, kind: str) -> Dict[str, Any]:
    np.savez(str(path), **arrays)
    return {"path": path.name, "kind": kind, "arrays": len(arrays)}


def _input_names(count: int) -> List[str]:
    return ["x"] if count == 1 else ["x{}".format(i) for i in range(count)]
