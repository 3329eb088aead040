"""Localize a divergence inside an ONNX graph: every intermediate value made a graph output,
run in onnxruntime (optimizations disabled and all on), judged against the same value computed
by eager torch (float32) with the float64 run as reference, by the project's parity rule.

Each ONNX value the torch.export-based exporter named after an FX node is compared; the other
values (pieces of one FX op's translation: Shape, Constant, CastLike, ...) are not, and belong to
the FX node their ``pkg.torch.onnx.fx_node`` metadata names. The first node (graph order, which
is topological) with a failing output is the divergence.

Disabled optimizations run the graph as exported: a divergence there is the exporter's (or a
kernel's); one seen only with optimizations on is the runtime optimizer's.
"""
import math
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from ..parity.rule import FAIL, NONFINITE, PASS, judge
from ..sessions import ort_session
from .reference import fx_node_of

__all__ = ["GraphReference", "localize_model", "node_metadata", "source_of", "LEVELS"]

LEVELS = ("disabled", "all")  # the graph as exported; onnxruntime's default optimizations


def node_metadata(node: Any) -> Dict[str, str]:
    return {p.key: p.value for p in node.metadata_props}


_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')


def source_of(metadata: Dict[str, str]) -> Optional[Dict[str, Any]]:
    """The user's source line of an ONNX node (innermost frame of its FX node's stack trace
    outside torch), or None when the exporter recorded none."""
    frames = _FRAME.findall(metadata.get("pkg.torch.onnx.stack_trace", ""))
    user = [f for f in frames if "/torch/" not in f[0] and not f[0].startswith("<")]
    if not user:
        return None
    path, line, func = user[-1]
    return {"file": path, "line": int(line), "function": func}


class GraphReference:
    """A graph under test and its eager values: ``model`` (ModelProto), ``feeds`` (input name ->
    numpy array), ``ref32``/``ref64`` (FX node name -> tensor). Built once, reused across runs
    (fault injection plants faults into copies of ``model``)."""

    def __init__(self, kind: str, model: Any, feeds: Dict[str, np.ndarray], ref32: Dict[str, Tensor],
                 ref64: Dict[str, Tensor], provider: str = "CPUExecutionProvider",
                 fx_nodes: Optional[Dict[str, Dict[str, Any]]] = None) -> None:
        self.kind, self.model, self.feeds, self.provider = kind, model, feeds, provider
        self.fx_nodes = fx_nodes or {}  # FX node name -> {"target", "args", "source"}
        self.ref32, self.ref64 = ref32, ref64
        self.output_names = [o.name for o in model.graph.output]
        floats = [torch.from_numpy(np.asarray(v[:0] if np.ndim(v) else v)).dtype for v in feeds.values()
                  if np.issubdtype(np.asarray(v).dtype, np.floating)]
        # the case's float dtype (narrowest float input): what widened intermediates are judged in
        self.working = min(floats, key=lambda d: torch.finfo(d).bits) if floats else None

    def key_of(self, node: Any, value: str) -> Optional[str]:
        """The FX node name whose eager value ``value`` (an output of ``node``) is, or None."""
        if value in self.ref32:
            return value
        fx = fx_node_of(node_metadata(node))
        if fx and value in self.output_names and node.name == "node_" + fx and fx in self.ref32:
            return fx
        return None


def with_all_outputs(model: Any) -> Tuple[Any, List[str]]:
    """A copy of ``model`` whose every node output is also a graph output (the original outputs
    first, in order), and the names of all its outputs."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    have = {o.name for o in out.graph.output}
    typed = {v.name: v for v in out.graph.value_info}
    initializers = {i.name for i in out.graph.initializer}
    for node in out.graph.node:
        for name in node.output:
            if name and name not in have and name not in initializers:
                info = typed.get(name)
                out.graph.output.append(info if info is not None else onnx.helper.make_empty_tensor_value_info(name))
                have.add(name)
    return out, [o.name for o in out.graph.output]


def run_model(model: Any, feeds: Dict[str, np.ndarray], provider: str, level: str,
              names: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
    session = ort_session(model.SerializeToString(), provider, threads=1, opt_level=level)
    wanted = list(names) if names is not None else [o.name for o in session.get_outputs()]
    inputs = {i.name: feeds[i.name] for i in session.get_inputs()}
    return dict(zip(wanted, session.run(wanted, inputs)))


def judge_value(actual: np.ndarray, expected: Tensor, reference64: Tensor,
                working: Optional[torch.dtype] = None) -> Dict[str, Any]:
    """The parity rule on one intermediate value. Non-finite entries (a mask's -inf) must match
    eager's exactly; the finite ones are judged. Integer and bool values must equal eager's (or
    the float64 run's: a comparison on a tie may go either way)."""
    a = torch.from_numpy(np.array(actual))
    if tuple(a.shape) != tuple(expected.shape) and a.numel() == expected.numel():
        a = a.reshape(expected.shape)  # onnxruntime may return a 0-d value as (1,)
    if tuple(a.shape) != tuple(expected.shape):
        return {"status": FAIL, "detail": "shape {} where eager gives {}".format(tuple(a.shape), tuple(expected.shape))}
    if not expected.is_floating_point():
        same = a.to(expected.dtype).equal(expected) or a.to(reference64.dtype).equal(reference64)
        return {"status": PASS if same else FAIL, "detail": "" if same else "integer/bool values differ from eager's"}
    if a.dtype != expected.dtype:
        return {"status": FAIL, "detail": "dtype {} where eager gives {}".format(a.dtype, expected.dtype)}
    finite = torch.isfinite(expected) & torch.isfinite(reference64)
    if not bool(finite.all()):
        if not bool((torch.isfinite(a) == torch.isfinite(expected)).all()):
            return {"status": NONFINITE, "detail": "non-finite where eager is finite, or the other way round"}
        special = ~torch.isfinite(expected)
        if not bool((a[special].nan_to_num(1.0) == expected[special].nan_to_num(1.0)).all()):
            return {"status": FAIL, "detail": "non-finite entries differ from eager's"}
        a, expected, reference64 = a[finite], expected[finite], reference64[finite]
    if a.numel() == 0:
        return {"status": PASS, "detail": "empty"}
    if working is not None and expected.dtype != working and expected.element_size() > torch.finfo(working).bits // 8:
        # a value widened on its way (the faithful reductions' float64 casts) carries the case's
        # float32 error: judged at the precision it was computed in, not the wider dtype's
        a, expected = a.to(working), expected.to(working)
    return judge(a, expected, reference64)


def value_shape(name: str, values: Dict[str, np.ndarray], feeds: Dict[str, np.ndarray]) -> Dict[str, Any]:
    """``{"name", "shape", "dtype"}`` of a graph value as the run computed it, or of a graph input
    as it was fed; only the name for anything else (an initializer, a value not kept)."""
    entry: Dict[str, Any] = {"name": name}
    if name in values:
        entry["shape"] = list(np.shape(values[name]))
        entry["dtype"] = str(np.asarray(values[name]).dtype)
    elif name in feeds:
        entry["shape"], entry["dtype"] = list(feeds[name].shape), str(feeds[name].dtype)
    return entry


def _brief(j: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    if j is None:
        return None
    keys = ("status", "clause", "max_abs", "max_rel", "err_backend64", "err_eager64", "ratio", "detail")
    return {k: _plain(j[k]) for k in keys if k in j and j[k] not in (None, "")}


def _plain(v: Any) -> Any:
    # JSON has no NaN or infinity: say them as text
    return str(v) if isinstance(v, float) and not math.isfinite(v) else v


def judge_run(ref: GraphReference, values: Dict[str, np.ndarray], model: Any) -> Dict[str, Any]:
    """Judge every compared value of one run; returns ``{"first": node index or None,
    "judged": {value: judgement}, "compared": n}``."""
    judged: Dict[str, Dict[str, Any]] = {}
    first = None
    for index, node in enumerate(model.graph.node):
        for name in node.output:
            key = ref.key_of(node, name) if name in values else None
            if key is None or key not in ref.ref64:
                continue
            j = judge_value(values[name], ref.ref32[key], ref.ref64[key], ref.working)
            j["fx"] = key
            judged[name] = j
            if first is None and j["status"] != PASS:
                first = index
    return {"first": first, "judged": judged, "compared": len(judged)}


def describe_node(ref: GraphReference, model: Any, index: int, judged: Dict[str, Dict[str, Any]],
                  values: Dict[str, np.ndarray]) -> Dict[str, Any]:
    """What a user needs about the diverging node: op, names, FX node, source line, shapes,
    the judgement of each input and output, and the other ONNX nodes of its FX op."""
    node = model.graph.node[index]
    meta = node_metadata(node)
    fx = fx_node_of(meta)
    graph_inputs = {i.name for i in model.graph.input}
    initializers = {i.name for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}

    def value_entry(name: str) -> Dict[str, Any]:
        entry = value_shape(name, values, ref.feeds)
        if name in judged:
            entry["fx"] = judged[name]["fx"]
            entry.update(_brief(judged[name]) or {})
        elif name in graph_inputs:
            entry["status"] = "graph input"
        elif name in initializers:
            entry["status"] = "initializer"
        elif name in producers:
            entry["status"] = "not compared (no FX value: part of {}'s translation)".format(
                fx_node_of(node_metadata(producers[name])) or producers[name].op_type)
        else:
            entry["status"] = "absent (optional input)"
        return entry

    target = re.search(r"target=([^\]]+)\]", meta.get("pkg.torch.onnx.fx_node", ""))
    group = [n.name for n in model.graph.node if fx and fx_node_of(node_metadata(n)) == fx]
    return {"index": index, "op_type": node.op_type, "name": node.name, "fx_node": fx or None,
            "fx_target": target.group(1) if target else None, "source": source_of(meta),
            "inputs": [value_entry(n) for n in node.input if n], "outputs": [value_entry(n) for n in node.output if n],
            "fx_group": group}


def localize_model(ref: GraphReference, model: Optional[Any] = None,
                   levels: Sequence[str] = LEVELS) -> Dict[str, Any]:
    """Run ``model`` (default the reference's) with every value an output at each of ``levels``
    and find the first diverging node. Returns ``{"levels": {level: {"node": ... or None,
    "compared", "outputs": {graph output: judgement}}}, "fault": "exporter" | "runtime
    optimizer" | None, "node": the first divergence (disabled level first)}``."""
    model = ref.model if model is None else model
    full, names = with_all_outputs(model)
    out: Dict[str, Any] = {"levels": {}, "fault": None, "node": None, "level": None, "values": None}
    for level in levels:
        values = run_model(full, ref.feeds, ref.provider, level, names)
        run = judge_run(ref, values, model)
        outputs = {o: _brief(run["judged"].get(o)) for o in ref.output_names}
        found = None if run["first"] is None else describe_node(ref, model, run["first"], run["judged"], values)
        if found is not None:
            found = _absent_input(ref, model, found)
        out["levels"][level] = {"node": found, "compared": run["compared"], "values": len(names), "outputs": outputs}
        if found is not None and out["node"] is None:
            out["node"], out["level"], out["values"] = found, level, values
            out["fault"] = "exporter" if level == "disabled" else "runtime optimizer"
    return out


def _absent_input(ref: GraphReference, model: Any, found: Dict[str, Any]) -> Dict[str, Any]:
    """A node whose compared inputs all pass but which fails may be fed past an FX op the graph
    lost (an optimizer that deletes ``x + 1e-9``): name that op, its user line and its consumer."""
    if any(i.get("status") not in ("pass", "graph input", "initializer") and "fx" in i for i in found["inputs"]):
        return found
    fx = ref.fx_nodes.get(found["fx_node"] or "")
    if fx is None:
        return found
    produced = {o for n in model.graph.node for o in n.output} | {n.name[5:] for n in model.graph.node}
    for arg in fx["args"]:
        info = ref.fx_nodes.get(arg)
        if info is None or arg in produced or arg not in ref.ref32 or not info["target"].startswith("aten."):
            continue
        op = info["target"].split(".")[1]
        return {"index": found["index"], "op_type": op[:1].upper() + op[1:].rstrip("_"), "name": arg,
                "fx_node": arg, "fx_target": "torch.ops." + info["target"], "source": info["source"],
                "absent": "FX node {} ({}) has no ONNX node: {} {} reads past it".format(
                    arg, info["target"], found["op_type"], found["name"]),
                "inputs": [{"name": a, "fx": a} for a in info["args"]],
                "outputs": [dict(o, name=arg, note="value of the ONNX node reading past it")
                            for o in found["outputs"][:1]],
                "consumer": found, "fx_group": []}
    return found


def fx_node_table(ep: Any) -> Dict[str, Dict[str, Any]]:
    """FX node name -> target (``aten.add.Tensor``), tensor-node arguments and user source line."""
    table = {}
    for node in ep.graph.nodes:
        if node.op != "call_function":
            continue
        args = [a.name for a in node.all_input_nodes]
        table[node.name] = {"target": str(node.target), "args": args,
                            "source": source_of({"pkg.torch.onnx.stack_trace": node.meta.get("stack_trace") or ""})}
    return table


def final_outputs(ref: GraphReference, model: Optional[Any] = None, level: str = "all") -> Dict[str, Dict[str, Any]]:
    """The graph's own outputs (no value added as an output, so every fusion happens) judged."""
    model = ref.model if model is None else model
    values = run_model(model, ref.feeds, ref.provider, level)
    out = {}
    for node in model.graph.node:
        for name in node.output:
            if name in ref.output_names:
                key = ref.key_of(node, name)
                out[name] = (_brief(judge_value(values[name], ref.ref32[key], ref.ref64[key], ref.working)) if key is not None
                             else {"status": "not compared", "detail": "no FX value"})
    return out
