"""Localize a divergence in an exported graph whose nodes carry only module-scope names (the
TorchScript-based exporter's ``/net/fc1/Gemm``, ``/net/Relu``, ``/loss/Sub``): module level.

The reference is the exported module run eagerly in float32 and float64 with forward hooks on
every submodule, each output keyed by the scope the exporter names it by (``/net/fc1``; the
root module's scope is ``/``, its output the graph's output). In the ONNX graph each scope's value
is the output of the last node in that scope whose shape is the hooked output's; every such value
is made a graph output, run in onnxruntime (optimizations disabled and all), and judged by the
project's parity rule (:func:`.onnx_graph.judge_value`). The first failing module in execution
order (the order the hooks finished: a submodule before the module around it) is the divergence.
"""
import copy
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from ..parity.rule import PASS
from .onnx_graph import LEVELS, _brief, judge_value, run_model, value_shape

__all__ = ["ModuleReference", "hooked_outputs", "localize_modules", "module_reference", "scope_values"]

NOTE = "module-level: legacy graphs carry no FX metadata"


def hooked_outputs(module: nn.Module, args: Sequence[Tensor]) -> Tuple[List[Tuple[str, str]], Dict[str, Tensor]]:
    """Run ``module(*args)`` with a forward hook on every submodule: the scopes in the order their
    modules finished, ``[(scope, class name)]``, and scope -> output tensor. A module called more
    than once, or whose output is not one tensor, is left out (its scope names no single value)."""
    names = {m: n for n, m in module.named_modules()}
    stack: List[Tuple[str, str]] = []
    order: List[Tuple[str, str]] = []
    values: Dict[str, Tensor] = {}
    seen: Dict[str, int] = {}

    def pre(m: nn.Module, _args: Any) -> None:
        rel = _unqualified(names[m])
        scope = (stack[-1][1] if stack else "") + ("/" + rel if rel else "")
        stack.append((names[m], scope))

    def post(m: nn.Module, _args: Any, out: Any) -> None:
        scope = stack.pop()[1] or "/"
        seen[scope] = seen.get(scope, 0) + 1
        if isinstance(out, Tensor) and seen[scope] == 1:
            order.append((scope, type(m).__name__))
            values[scope] = out.detach().clone()
        else:
            values.pop(scope, None)

    handles = [m.register_forward_pre_hook(pre) for m in names] + [m.register_forward_hook(post) for m in names]
    try:
        with torch.no_grad():
            module(*args)
    finally:
        for h in handles:
            h.remove()
    order = [(s, c) for s, c in order if s in values]
    return order, values


def _unqualified(name: str) -> str:
    """A module's scope component as the TorchScript-based exporter writes it (its
    ``_unqualified_variable_name``): the dotted name from its last non-numeric atom on
    (``net.fc1`` -> ``fc1``, ``net.body.0`` -> ``body.0``). Scopes nest by call, not by name."""
    atoms = name.split(".")
    for i in range(len(atoms) - 1, -1, -1):
        if not atoms[i].isnumeric():
            return ".".join(atoms[i:])
    return name


class ModuleReference:
    """A scope-named graph and its eager module outputs: ``model`` (ModelProto), ``feeds``,
    ``scopes`` (``[(scope, class)]`` in execution order), ``ref32``/``ref64`` (scope -> tensor)."""

    def __init__(self, kind: str, model: Any, feeds: Dict[str, np.ndarray], scopes: List[Tuple[str, str]],
                 ref32: Dict[str, Tensor], ref64: Dict[str, Tensor], provider: str = "CPUExecutionProvider") -> None:
        self.kind, self.model, self.feeds, self.provider = kind, model, feeds, provider
        self.scopes = [(s, c) for s, c in scopes if s in ref32 and s in ref64]
        self.ref32, self.ref64 = ref32, ref64
        floats = [t.dtype for t in ref32.values() if t.is_floating_point()]
        self.working = min(floats, key=lambda d: torch.finfo(d).bits) if floats else None


def module_reference(kind: str, model: Any, module: nn.Module, tensors: Sequence[Tensor],
                     provider: str = "CPUExecutionProvider") -> ModuleReference:
    """The eager float32 and float64 module outputs of ``module(*tensors)``, for ``model`` (its
    export). The graph's inputs are named after the module's forward arguments, in order; an
    input the exporter dropped (unused) is not fed."""
    scopes, ref32 = hooked_outputs(module, tensors)
    wide = copy.deepcopy(module).double()
    _, ref64 = hooked_outputs(wide, [t.double() if t.is_floating_point() else t for t in tensors])
    from ..backends.onnx import input_names

    names = input_names(module, len(tensors))
    wanted = {i.name for i in model.graph.input}
    feeds = {n: np.ascontiguousarray(t.detach().cpu().numpy()) for n, t in zip(names, tensors) if n in wanted}
    return ModuleReference(kind, model, feeds, scopes, ref32, ref64, provider=provider)


def _in_scope(node: Any, scope: str) -> bool:
    return scope == "/" or node.name.startswith(scope + "/")


def scope_values(ref: ModuleReference, model: Any, shapes: Dict[str, Tuple[int, ...]]) -> Dict[str, Tuple[int, str]]:
    """Scope -> (node index, value name): the last node in the scope with an output of the hooked
    output's shape (``shapes``: every value's shape in one run). The root scope ``/`` is the
    graph's output."""
    out: Dict[str, Tuple[int, str]] = {}
    nodes = list(model.graph.node)
    for scope, _ in ref.scopes:
        want = tuple(ref.ref32[scope].shape)
        for index in range(len(nodes) - 1, -1, -1):
            node = nodes[index]
            if not _in_scope(node, scope):
                continue
            if scope == "/":
                hit = [o for o in node.output if o == model.graph.output[0].name]
            else:
                hit = [o for o in node.output if o in shapes and (shapes[o] == want or (
                    int(np.prod(shapes[o])) == int(np.prod(want)) and len(want) == 0))]
            if hit:
                out[scope] = (index, hit[0])
                break
    return out


def localize_modules(ref: ModuleReference, model: Optional[Any] = None,
                     levels: Sequence[str] = LEVELS) -> Dict[str, Any]:
    """Every scope's value made an output, run at each of ``levels``; the first failing module.
    Returns what :func:`.onnx_graph.localize_model` returns (``levels``, ``fault``, ``node``)."""
    from .onnx_graph import with_all_outputs

    model = ref.model if model is None else model
    full, names = with_all_outputs(model)
    out: Dict[str, Any] = {"levels": {}, "fault": None, "node": None, "level": None, "outputs": {}}
    for level in levels:
        values = run_model(full, ref.feeds, ref.provider, level, names)
        where = scope_values(ref, model, {n: tuple(np.shape(v)) for n, v in values.items()})
        judged: Dict[str, Dict[str, Any]] = {}
        first = None
        for scope, cls in ref.scopes:
            if scope not in where:
                continue
            index, value = where[scope]
            j = judge_value(values[value], ref.ref32[scope], ref.ref64[scope], ref.working)
            judged[scope] = j
            if first is None and j["status"] != PASS:
                node = model.graph.node[index]
                first = {"index": index, "op_type": node.op_type, "name": node.name, "scope": scope,
                         "module_class": cls, "fx_node": None, "fx_target": None, "source": None, "note": NOTE,
                         "inputs": [_entry(n, values, ref) for n in node.input if n],
                         "outputs": [dict(_entry(value, values, ref), **(_brief(j) or {}),
                                          expected_shape=list(ref.ref32[scope].shape))]}
        missing = [s for s, _ in ref.scopes if s not in where]
        out["levels"][level] = {"node": first, "compared": len(judged), "values": len(names),
                                "modules": {s: _brief(j) for s, j in judged.items()}, "not_found": missing}
        if level == "all":
            out["outputs"] = {"/": _brief(judged.get("/"))}
        if first is not None and out["node"] is None:
            out["node"], out["level"] = first, level
            out["fault"] = "exporter" if level == "disabled" else "runtime optimizer"
    return out


def _entry(name: str, values: Dict[str, np.ndarray], ref: ModuleReference) -> Dict[str, Any]:
    entry = value_shape(name, values, ref.feeds)
    if name not in values and name in ref.feeds:
        entry["status"] = "graph input"
    elif name not in values:
        init = next((i for i in ref.model.graph.initializer if i.name == name), None)
        if init is not None:
            entry["shape"] = list(init.dims)
        entry["status"] = "initializer"
    return entry
