"""The localizer's self-test: plant one random fault in an exported graph, localize, check.

Faults (one node each, into a copy of a registry case's forward, loss-and-gradient or train-step
graph): ``constant`` (a float Constant or initializer scaled by 1.25 and shifted by 0.1),
``swap`` (the two operands of a Sub, Div or Pow exchanged), ``replace`` (an elementwise op
replaced by another of its arity), ``epsilon`` (an ``x + eps``, ``max(x, eps)`` or ``clamp(x, min=eps)`` with
a small constant ``0 < |eps| <= 1e-2`` deleted, its consumers fed ``x``, as an optimizer that
drops it would).

Through a backend that lowers with inductor (``stages``, e.g. ``compile-dynamo``), a trial doubles
the output of inductor's lowering of one op (``lowering``) or of one op's decomposition in
inductor's decomposition table (``decomposition``) and bisects the loss-and-gradient program by
stage: localized when the first failing stage is ``inductor`` (a lowering) or
``aot_eager_decomp_partition`` (a decomposition: the first stage that applies inductor's table).

A draw that leaves every graph output within the parity rule (the fault has no effect here), or
that onnxruntime refuses (swapped operands that do not broadcast), is drawn again; those counts
are reported. A trial is **localized** when the localizer's node is the planted node, or, where
the planted node's outputs are not compared (no FX value: a Constant, a piece of one FX op's
translation), the first compared node its value reaches (forward through uncompared values
only): the first place the fault can be seen. For a deleted ``x + eps`` it is the deleted FX
node. Each miss says what was planted, what was expected and what was found.
"""
import random
import time
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

__all__ = ["FAULTS", "COMPILE_FAULTS", "CASES", "plant", "expected_nodes", "self_test"]

FAULTS = ("constant", "swap", "replace", "epsilon")
LOWERED = "inductor"  # the stage whose lowerings a torch.compile trial perturbs
COMPILE_FAULTS = ("lowering", "decomposition")
# the stage each torch.compile fault enters at: inductor's decompositions are applied from
# aot_eager_decomp_partition on (the stage that is AOTAutograd with inductor's table), lowerings only by inductor
EXPECTED_STAGE = {"lowering": LOWERED, "decomposition": "aot_eager_decomp_partition"}

# (net, loss): registry cases spanning the loss families (regression, classification, overlap,
# contrastive), alone and through SeedNet (which adds the train step)
CASES = (("seed", "mse"), ("seed", "huber"), ("seed", "log_cosh"), (None, "charbonnier"), (None, "cross_entropy"),
         (None, "focal"), (None, "dice"), (None, "gaussian_nll"), (None, "kl_div"), (None, "info_nce"))

TIES = ("charbonnier",)  # also run with pred == target on half the rows (see _cases)

_BINARY = ("Add", "Sub", "Mul", "Div")
_UNARY = ("Exp", "Log", "Sqrt", "Neg", "Abs", "Tanh", "Sigmoid", "Relu", "Reciprocal", "Softplus")
_NONCOMMUTATIVE = ("Sub", "Div", "Pow")
_FLOAT_TYPES = (1, 10, 11, 16)  # FLOAT, FLOAT16, DOUBLE, BFLOAT16


def _copy(model: Any) -> Any:
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _float_constant(node: Any) -> Optional[Any]:
    if node.op_type != "Constant":
        return None
    for a in node.attribute:
        if a.name == "value" and a.t.data_type in _FLOAT_TYPES:
            return a
    return None


def _small_constants(model: Any) -> Dict[str, float]:
    """Value name -> value of every scalar float constant or initializer with 0 < |v| <= 1e-2."""
    from onnx import numpy_helper

    out = {}
    for node in model.graph.node:
        a = _float_constant(node)
        if a is not None:
            v = numpy_helper.to_array(a.t)
            if v.size == 1 and 0 < abs(float(v.reshape(()))) <= 1e-2:
                out[node.output[0]] = float(v.reshape(()))
    for init in model.graph.initializer:
        if init.data_type in _FLOAT_TYPES:
            v = numpy_helper.to_array(init)
            if v.size == 1 and 0 < abs(float(v.reshape(()))) <= 1e-2:
                out[init.name] = float(v.reshape(()))
    for node in model.graph.node:  # the exporter casts a Python float to the tensor's type first
        if node.op_type in ("Cast", "CastLike") and node.input and node.input[0] in out:
            out[node.output[0]] = out[node.input[0]]
    return out


def plant(model: Any, rng: random.Random, fault: str) -> Optional[Tuple[Any, Dict[str, Any]]]:
    """A copy of ``model`` with one ``fault`` planted, and what was planted (``node``: the planted
    node's name, or the initializer's; ``deleted``: the FX node of a deleted op); None when the
    graph has no node that fault applies to."""
    from onnx import numpy_helper

    from .onnx_graph import node_metadata
    from .reference import fx_node_of

    out = _copy(model)
    nodes = list(out.graph.node)
    if fault == "constant":
        consts = [(i, n) for i, n in enumerate(nodes) if _float_constant(n) is not None]
        inits = [t for t in out.graph.initializer if t.data_type in _FLOAT_TYPES]
        choices = [("node", c) for c in consts] + [("init", t) for t in inits]
        if not choices:
            return None
        what, item = rng.choice(choices)
        tensor = _float_constant(item[1]).t if what == "node" else item
        value = numpy_helper.to_array(tensor)
        tensor.CopyFrom(numpy_helper.from_array((value * 1.25 + 0.1).astype(value.dtype), tensor.name))
        name = item[1].name if what == "node" else item.name
        return out, {"fault": fault, "node": name, "initializer": what == "init",
                     "detail": "{} scaled by 1.25 and shifted by 0.1".format(name)}
    if fault == "swap":
        cands = [n for n in nodes if n.op_type in _NONCOMMUTATIVE and len(n.input) == 2 and n.input[0] != n.input[1]]
        if not cands:
            return None
        n = rng.choice(cands)
        a, b = n.input[0], n.input[1]
        n.input[0], n.input[1] = b, a
        return out, {"fault": fault, "node": n.name, "detail": "{} {}({}, {}) -> ({}, {})".format(n.op_type, n.name, a, b, b, a)}
    if fault == "replace":
        cands = [n for n in nodes if n.op_type in _BINARY + _UNARY]
        if not cands:
            return None
        n = rng.choice(cands)
        pool = _BINARY if n.op_type in _BINARY else _UNARY
        new = rng.choice([p for p in pool if p != n.op_type])
        old = n.op_type
        n.op_type = new
        return out, {"fault": fault, "node": n.name, "detail": "{} {} replaced by {}".format(old, n.name, new)}
    if fault == "epsilon":
        small = _small_constants(out)
        outputs = {o.name for o in out.graph.output}
        cands = [n for n in nodes if n.op_type in ("Add", "Max", "Clip") and len(n.input) >= 2
                 and n.output[0] not in outputs and n.input[0] not in small and n.input[1] in small
                 or n.op_type in ("Add", "Max") and len(n.input) == 2 and n.input[0] in small
                 and n.input[1] not in small and n.output[0] not in outputs]
        if not cands:
            return None
        n = rng.choice(cands)
        keep = n.input[1] if n.input[0] in small else n.input[0]
        eps = small[n.input[0] if n.input[0] in small else n.input[1]]
        if n.op_type == "Clip" and len(n.input) > 2 and n.input[2]:
            return None  # a clamp to a range is not an epsilon
        for user in out.graph.node:
            for k, name in enumerate(user.input):
                if name == n.output[0]:
                    user.input[k] = keep
        out.graph.node.remove(n)
        fx = fx_node_of(node_metadata(n))
        return out, {"fault": fault, "node": n.name, "deleted": fx,
                     "detail": "{} {} (with {:g}) deleted, its consumers fed {}".format(n.op_type, n.name, eps, keep)}
    raise ValueError("fault must be one of {}, got {!r}".format(list(FAULTS), fault))


def expected_nodes(ref: Any, model: Any, planted: Dict[str, Any]) -> Set[str]:
    """The node names a correct localization may give: the planted node if its outputs are
    compared, else the first compared nodes its value reaches through uncompared values."""
    if planted.get("deleted"):
        return {planted["deleted"]}
    users: Dict[str, List[Any]] = {}
    for n in model.graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    start = next((n for n in model.graph.node if n.name == planted["node"]), None)
    if start is not None and any(ref.key_of(start, o) for o in start.output):
        return {start.name}
    frontier: Set[str] = set()
    seen: Set[str] = set()
    todo = list(start.output) if start is not None else [planted["node"]]
    while todo:
        value = todo.pop()
        for user in users.get(value, []):
            if user.name in seen:
                continue
            seen.add(user.name)
            if any(ref.key_of(user, o) for o in user.output):
                frontier.add(user.name)
            else:
                todo.extend(user.output)
    return frontier | ({start.name} if start is not None else set())


def _cases(backend: Any, names: Sequence[Tuple[Optional[str], str]], batch: int) -> List[Any]:
    from ..resolve import make_case
    from .graphs import case_graphs

    refs = []
    for net_name, loss_name in names:
        case = make_case(net_name, loss_name, batch=batch)
        for kind in case_graphs(case.net, case.loss):
            refs.append(((net_name, loss_name, kind), case, kind))
        if net_name is None and loss_name in TIES:
            # a converged model: pred == target on half the rows, where an epsilon is the whole
            # value (random inputs never make one matter, so a dropped one would have no effect)
            targets = (case.inputs[0].detach().clone(),) + tuple(case.targets[1:])
            targets[0][1::2] = case.targets[0][1::2]
            tied = type(case)(case.net, case.loss, case.inputs, targets, dict(case.description, ties=True))
            for kind in case_graphs(tied.net, tied.loss):
                refs.append(((net_name, loss_name + " (ties)", kind), tied, kind))
    return refs


def self_test(trials: int, seed: int, backends: Any = None, cases: Sequence[Tuple[Optional[str], str]] = CASES,
              batch: int = 7, max_draws: int = 50,
              compile_faults: Sequence[str] = COMPILE_FAULTS) -> Dict[str, Any]:
    """Plant ``trials`` faults (drawn from ``seed``) into ``cases``' graphs through every chosen
    piecewise backend, localize each, and count. Graphs are exported once and reused. Through a
    staged backend (torch.compile) a trial's fault is one of ``compile_faults``."""
    from ..backends import get_backends
    from ..errors import UsageError
    from .graphs import graph_reference
    from .onnx_graph import localize_model

    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise UsageError("inject must be a positive integer, got {!r}".format(trials))
    every = get_backends(backends) if backends is not None else [b for b in get_backends(None) if b.piecewise]
    chosen = [b for b in every if b.piecewise or LOWERED in b.stages]
    if not chosen:
        raise UsageError("backends: none of {} runs a graph value by value (piecewise) or lowers with inductor "
                         "(stages); choose one that does".format(backends))
    chosen = [b for b in chosen if b.available()[0]]
    if not chosen:
        raise UsageError("backends: none of the chosen piecewise or staged backends is available here")
    start = time.perf_counter()
    rng = random.Random(seed)
    slots = [(b, key, case, kind) for b in chosen for key, case, kind in _cases(b, cases, batch)
             if b.piecewise or (kind == "loss_and_grad" and case.net is None)]
    refs: Dict[Tuple[Any, ...], Any] = {}
    export_seconds = 0.0
    results: List[Dict[str, Any]] = []
    redraws = {"no effect": 0, "not applicable": 0, "refused by onnxruntime": 0}
    while len(results) < trials:
        for _ in range(max_draws):
            backend, key, case, kind = rng.choice(slots)
            if not backend.piecewise:
                trial = _compile_trial(backend, key, case, rng, rng.choice(tuple(compile_faults)))
                if trial is None:
                    redraws["no effect"] += 1
                    continue
                break
            trial = None
            fault = rng.choice(FAULTS)
            rkey = (backend.name,) + key
            if rkey not in refs:
                t0 = time.perf_counter()
                refs[rkey] = graph_reference(backend, kind, case.net, case.loss, case.inputs, case.targets)
                export_seconds += time.perf_counter() - t0
            ref = refs[rkey]
            got = plant(ref.model, rng, fault)
            if got is None:
                redraws["not applicable"] += 1
                continue
            model, planted = got
            try:
                found = localize_model(ref, model)
            except Exception:  # onnxruntime refuses the graph (shapes no longer broadcast)
                redraws["refused by onnxruntime"] += 1
                continue
            disabled = found["levels"]["disabled"]
            if all(j is None or j.get("status") == "pass" for j in disabled["outputs"].values()):
                redraws["no effect"] += 1
                continue
            break
        else:
            raise RuntimeError("no effective fault in {} draws".format(max_draws))
        if trial is not None:
            results.append(trial)
            continue
        expected = expected_nodes(ref, model, planted)
        node = found["node"]
        named = None if node is None else node["name"]
        hit = named in expected
        trial = {"backend": backend.name, "case": "{}+{}".format(key[0] or "none", key[1]), "graph": kind,
                 "planted": planted, "expected": sorted(expected), "found": named, "localized": hit}
        if node is not None:
            trial["found_op"], trial["fault_stage"] = node["op_type"], found["fault"]
        if not hit:
            trial["why"] = _explain(found, expected, planted)
        results.append(trial)
    by_kind: Dict[str, Dict[str, int]] = {}
    by_fault: Dict[str, Dict[str, int]] = {}
    for t in results:
        for table, k in ((by_kind, t["graph"]), (by_fault, t["planted"]["fault"])):
            row = table.setdefault(k, {"trials": 0, "localized": 0})
            row["trials"] += 1
            row["localized"] += int(t["localized"])
    localized = sum(t["localized"] for t in results)
    return {"trials": len(results), "localized": localized, "rate": localized / len(results), "seed": seed,
            "backends": [b.name for b in chosen], "by_graph": by_kind, "by_fault": by_fault, "redraws": redraws,
            "misses": [t for t in results if not t["localized"]], "graphs_exported": len(refs),
            "export_seconds": round(export_seconds, 2), "seconds": round(time.perf_counter() - start, 2),
            "hit_rule": "the planted node, or (its outputs not compared) the first compared node its value reaches; "
                        "for a deleted op, its FX node; for a perturbed inductor lowering, the stage inductor; for a "
                        "perturbed decomposition, the stage aot_eager_decomp_partition", "results": results}



# float ops inductor lowers itself (not decomposed first), whose output a trial doubles
_LOWERINGS = ("mul.Tensor", "add.Tensor", "sub.Tensor", "div.Tensor", "exp.default", "log.default",
              "sign.default", "abs.default", "sqrt.default", "neg.default", "where.self", "maximum.default")
# ops with a decomposition in inductor's table that registry losses (or their backward) reach
_DECOMPOSITIONS = ("sgn.default", "mse_loss.default", "mse_loss_backward.default", "smooth_l1_loss.default",
                   "smooth_l1_loss_backward.default", "huber_loss.default", "huber_loss_backward.default",
                   "log_sigmoid_forward.default", "_log_softmax.default", "_softmax.default",
                   "_log_softmax_backward_data.default", "_softmax_backward_data.default",
                   "sigmoid_backward.default", "tanh_backward.default", "nll_loss_forward.default",
                   "nll_loss_backward.default", "threshold_backward.default", "rsub.Scalar", "rsub.Tensor",
                   "logsumexp.default", "softplus.default", "softplus_backward.default", "xlogy.Tensor",
                   "linalg_vector_norm.default")


def _ops_reached(case: Any) -> Set[Any]:
    """The aten ops of the case's loss-and-gradient graphs as AOTAutograd traces them without
    decompositions (forward and backward): the ops whose decomposition can matter."""
    import torch
    from functorch.compile import aot_function, make_boxed_func

    ops: Set[Any] = set()

    def grab(gm: Any, _: Any) -> Any:
        ops.update(n.target for n in gm.graph.nodes if n.op == "call_function")
        return make_boxed_func(gm.forward)

    fn = aot_function(lambda p, *t: case.loss(p, *t), fw_compiler=grab, bw_compiler=grab)
    pred = case.inputs[0].detach().requires_grad_(True)
    fn(pred, *case.targets).sum().backward()
    torch._dynamo.reset()
    return ops


def _perturbation(fault: str, rng: random.Random, reached: Optional[Set[Any]] = None) -> Optional[Tuple[str, Any, Any, str]]:
    """(op name, tables, op, what) for one torch.compile fault: ``lowering``: inductor's lowering
    of one op doubled; ``decomposition``: the decomposition of one op in inductor's table doubled
    (first output of a tuple), drawn among the ops in ``reached`` when given. None when this
    torch has no entry for the op drawn (or none of ``reached`` has one)."""
    from torch._inductor import lowering

    if fault == "lowering":
        name, tables, what = rng.choice(_LOWERINGS), (lowering.lowerings,), "inductor's lowering of aten.{} doubled"
    elif fault == "decomposition":
        from torch._inductor import decomposition

        # inductor's table, and the copy its select_decomp_table() serves (a cached dict in
        # recent torch: a change to the table alone is not seen once it has been made)
        tables = tuple({id(t): t for t in (decomposition.decompositions, decomposition.select_decomp_table())}.values())
        pool = [n for n in _DECOMPOSITIONS if reached is None or _op(n) in reached]
        if not pool:
            return None
        name = rng.choice(pool)
        what = "aten.{}'s decomposition in inductor's table doubled"
    else:
        raise ValueError("compile fault must be one of {}, got {!r}".format(list(COMPILE_FAULTS), fault))
    op = _op(name)
    if any(t.get(op) is None for t in tables):
        return None
    return name, tables, op, what.format(name)


def _op(name: str) -> Any:
    import torch

    packet, overload = name.split(".")
    return getattr(getattr(torch.ops.aten, packet, None), overload, None)


def _doubled(fault: str, op: Any, original: Any) -> Any:
    import torch
    from torch._inductor import lowering

    aten = torch.ops.aten
    if fault == "lowering":
        add, sub, neg = (lowering.lowerings[aten.add.Tensor], lowering.lowerings[aten.sub.Tensor],
                         lowering.lowerings[aten.neg.default])

        def doubled_lowering(*args: Any, **kwargs: Any) -> Any:
            y = original(*args, **kwargs)
            return sub(y, neg(y)) if op is aten.add.Tensor else add(y, y)

        return doubled_lowering

    def doubled_decomposition(*args: Any, **kwargs: Any) -> Any:
        y = original(*args, **kwargs)
        if isinstance(y, (tuple, list)):
            return type(y)([y[0] * 2] + list(y[1:]))
        return y * 2

    return doubled_decomposition


_REACHED: Dict[Tuple[Any, ...], Set[Any]] = {}  # case key -> the aten ops its graphs reach


def _compile_trial(backend: Any, key: Tuple[Any, ...], case: Any, rng: random.Random,
                   fault: str) -> Optional[Dict[str, Any]]:
    """One torch.compile trial: perturb inductor's lowering or decomposition of one op, bisect the
    loss-and-gradient program by stage; None when the op does not reach this loss (no effect).
    Localized when the first failing stage is the one that applies it (:data:`EXPECTED_STAGE`)."""
    import torch
    import torch._inductor.config as inductor_config

    from .stages import _autograd_cache_off, bisect_stages

    reached = None
    if fault == "decomposition":
        if key not in _REACHED:
            _REACHED[key] = _ops_reached(case)
        reached = _REACHED[key]
    drawn = _perturbation(fault, rng, reached)
    if drawn is None:
        return None
    name, tables, op, what = drawn
    originals = [t[op] for t in tables]
    for t, original in zip(tables, originals):
        t[op] = _doubled(fault, op, original)
    try:
        # caches off: a graph cached by an earlier compile would not see the perturbation
        with inductor_config.patch(fx_graph_cache=False), _autograd_cache_off():
            result = bisect_stages(backend, "loss_and_grad", case.loss, tuple(case.inputs) + tuple(case.targets),
                                   True, dynamic=(False,))
    finally:
        for t, original in zip(tables, originals):
            t[op] = original
        torch._dynamo.reset()
    first = result["first"]
    if first is None:
        return None
    expected = EXPECTED_STAGE[fault]
    hit = first["stage"] == expected
    trial = {"backend": backend.name, "case": "{}+{}".format(key[0] or "none", key[1]), "graph": "loss_and_grad",
             "planted": {"fault": fault, "node": "aten." + name, "detail": what},
             "expected": [expected], "found": first["stage"], "found_graph": first["graph"], "localized": hit}
    if not hit:
        trial["why"] = "first failing stage {} ({} graph, output {}), not {}".format(
            first["stage"], first["graph"], first["output"], expected)
    return trial


def _explain(found: Dict[str, Any], expected: Set[str], planted: Dict[str, Any]) -> str:
    node = found["node"]
    if node is None:
        return ("the graph's outputs fail but no compared value does at either level (the fault's value is "
                "never compared before the outputs)")
    first = node["outputs"][0] if node["outputs"] else {}
    return ("found {} {} (FX {}, {}) first failing, expected one of {}: the planted change stayed within the "
            "rule where it was made (or there is no compared value between it and the node found); found "
            "node's output: {}".format(node["op_type"], node["name"], node["fx_node"], found["fault"],
                                       sorted(expected), {k: first.get(k) for k in ("status", "err_backend64",
                                                                                    "err_eager64", "detail")
                                                          if k in first}))
