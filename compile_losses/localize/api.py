"""``localize(net, loss, inputs, target, backend=...)`` and its result."""
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from torch import Tensor, nn

__all__ = ["GraphFinding", "Localization", "find_modules", "link_failures", "localize", "piecewise_backend"]


@dataclass
class GraphFinding:
    """One graph's localization. ``status``: ``"diverges"`` (``node`` is the first diverging
    node, ``fault`` whether the graph as exported diverges, ``"exporter"``, or only with
    onnxruntime's optimizations on, ``"runtime optimizer"``), ``"clean"`` (every compared value
    passes the rule at both levels), ``"hidden"`` (the graph's own outputs fail but not with its
    values made outputs: an optimizer fusion that marking values prevents), ``"unsupported"`` /
    ``"error"`` (``detail`` says why)."""

    kind: str
    status: str
    detail: str = ""
    fault: Optional[str] = None
    node: Optional[Dict[str, Any]] = None
    levels: Dict[str, Any] = field(default_factory=dict)
    outputs: Dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    repro: Optional[str] = None
    stage: Optional[Dict[str, Any]] = None  # by-stage bisection: the first failing stage and graph
    export_seconds: Optional[float] = None  # of ``seconds``: exporting and the eager reference values
    # inside inductor (the first failing stage is inductor): torch's compiler bisector's finding
    # (:func:`.stages.bisect_inductor`: backend, subsystem, bisect_number, debug_info), or why none
    bisector: Optional[Dict[str, Any]] = None

    def line(self) -> str:
        if self.stage is not None and self.status == "diverges":
            s = self.stage
            return "{:<14} diverges first at stage {} ({} graph, {} shapes, output {}){}".format(
                self.kind, s["stage"], s["graph"], "dynamic" if s["dynamic"] else "static", s["output"],
                _bisector_line(self.bisector))
        if self.status != "diverges" or self.node is None:
            return "{:<14} {}{}".format(self.kind, self.status, ": " + self.detail if self.detail else "")
        n = self.node
        if n.get("scope") is not None:
            out = n["outputs"][0] if n["outputs"] else {}
            err = ("error vs float64 {:.3g}, eager's {:.3g}".format(out["err_backend64"], out["err_eager64"])
                   if "err_backend64" in out else out.get("detail", out.get("status", "")))
            return "{:<14} diverges at module {} ({}), ONNX {} {} [{}], {}: {}; {}".format(
                self.kind, n["scope"], n["module_class"], n["op_type"], n["name"], self.fault,
                "x".join(str(d) for d in out.get("shape", [])) or "scalar", err, n["note"])
        src = n.get("source")
        where = "{}:{}".format(src["file"], src["line"]) if src else "no source line recorded"
        out = next((o for o in n["outputs"] if "err_backend64" in o), n["outputs"][0] if n["outputs"] else {})
        err = ("error vs float64 {:.3g}, eager's {:.3g}".format(out["err_backend64"], out["err_eager64"])
               if "err_backend64" in out else out.get("detail", out.get("status", "")))
        return "{:<14} diverges at {} {}{} (FX {} {}) [{}], {}: {}; {}".format(
            self.kind, n["op_type"], n["name"], " (absent from the graph)" if n.get("absent") else "",
            n["fx_node"], n["fx_target"], self.fault, where,
            "x".join(str(d) for d in out.get("shape", [])) or "scalar", err)


def _bisector_line(b: Optional[Dict[str, Any]]) -> str:
    if b is None:
        return ""
    if b["status"] == "found":
        return "; compiler bisector: {} / {} #{} ({})".format(b["backend"], b["subsystem"], b["bisect_number"],
                                                               b["debug_info"])
    return "; compiler bisector {}: {}".format(b["status"], b.get("detail", ""))


@dataclass
class Localization:
    backend: str
    case: str
    graphs: List[GraphFinding]
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when no graph diverges (nothing to localize)."""
        return all(g.status not in ("diverges", "hidden") for g in self.graphs)

    def finding(self, kind: str) -> Optional[GraphFinding]:
        return next((g for g in self.graphs if g.kind == kind), None)

    def to_dict(self) -> Dict[str, Any]:
        return {"backend": self.backend, "case": self.case, "ok": self.ok, "seconds": round(self.seconds, 3),
                "graphs": [asdict(g) for g in self.graphs]}

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def __str__(self) -> str:
        head = "localize {} through {} ({:.1f} s)".format(self.case, self.backend, self.seconds)
        return "\n".join([head] + ["  " + g.line() for g in self.graphs])


def piecewise_backend(backend: Any = None) -> Any:
    """The adapter to localize through: a name, an adapter, or None for the first registered
    ``piecewise`` backend available here."""
    from ..backends import BACKENDS, Backend, get_backends

    if isinstance(backend, Backend):
        return backend
    if backend is None:
        for b in BACKENDS.values():
            if b.piecewise and b.available()[0]:
                return b
        raise ValueError("backend: no piecewise backend (an exported graph run value by value) is available here")
    if not isinstance(backend, str):
        raise TypeError("backend must be a backend name or adapter, got {}".format(type(backend).__name__))
    return get_backends([backend])[0]


def localize(net: Optional[nn.Module], loss: nn.Module, inputs: Any, target: Any, backend: Any = None, *,
             kinds: Optional[Sequence[str]] = None, lr: float = 0.01, optimize: Optional[bool] = None,
             repro_dir: Optional[str] = None, label: Optional[str] = None,
             dynamic: Sequence[bool] = (False, True), bisect: bool = True) -> Localization:
    """Find where each of ``backend``'s graphs for this case starts to diverge from eager.

    ``net`` None: ``inputs`` is the prediction (as in :func:`compile_losses.verify`). ``kinds``:
    a subset of ``("forward", "loss_and_grad", "train_step")`` (default all the case has).
    ``optimize``: export with the exporter's onnxscript optimizer on or off (default the
    project's setting). ``repro_dir``: write a standalone repro per diverging graph under it
    (:mod:`compile_losses.localize.repro`). A backend with compiler ``stages`` (torch.compile) is
    bisected by stage instead (:mod:`.stages`; ``dynamic``: the shape modes tried), its
    ``loss_and_grad`` and ``train_step`` programs: the finding's ``stage`` names the first stage and
    graph (forward, backward) that diverges; where that stage is inductor and ``bisect``, torch's
    compiler bisector looks inside it (the finding's ``bisector``). A backend with neither gives ``"unsupported"``
    findings that say why, never a clean result.
    """
    from ..validate import check_case
    from .graphs import KINDS, case_graphs, graph_reference

    start = time.perf_counter()
    adapter = piecewise_backend(backend)
    inputs = (inputs,) if isinstance(inputs, Tensor) else tuple(inputs)
    targets = (target,) if isinstance(target, Tensor) else tuple(target)
    check_case(net, loss, inputs, targets)
    wanted = case_graphs(net, loss) if kinds is None else list(kinds)
    bad = [k for k in wanted if k not in KINDS]
    if bad:
        raise ValueError("kinds must be among {}, got {}".format(list(KINDS), bad))
    modes = [(m, m.training) for m in (net, loss) if m is not None]
    for m, _ in modes:
        m.eval()
    findings: List[GraphFinding] = []
    try:
        if not adapter.piecewise and adapter.module_scoped:
            findings = _by_module(adapter, net, loss, inputs, targets, wanted)
            wanted = []
        elif not adapter.piecewise and adapter.stages:
            findings = _by_stage(adapter, net, loss, inputs, targets, wanted, dynamic, bisect)
            wanted = []
        for kind in wanted:
            t0 = time.perf_counter()
            findings.append(_graph_finding(
                kind, t0, lambda: graph_reference(adapter, kind, net, loss, inputs, targets, lr=lr, optimize=optimize),
                lambda ref: find(ref, repro_dir=repro_dir, start=t0)))
    finally:
        for m, mode in modes:
            m.train(mode)
    name = label or "{}{}".format("" if net is None else type(net).__name__ + "+", type(loss).__name__)
    return Localization(adapter.name, name, findings, time.perf_counter() - start)


def find(ref: Any, model: Any = None, repro_dir: Optional[str] = None, start: Optional[float] = None) -> GraphFinding:
    """Localize one graph (``model``, default the reference's own) against its reference."""
    from .onnx_graph import final_outputs, localize_model

    t0 = time.perf_counter() if start is None else start
    model = ref.model if model is None else model
    found = localize_model(ref, model)
    outputs = {level: final_outputs(ref, model, level) for level in found["levels"]}
    failing = any(j and j.get("status") != "pass" for o in outputs.values() for j in o.values())
    if found["node"] is not None:
        g = GraphFinding(ref.kind, "diverges", fault=found["fault"], node=found["node"], levels=found["levels"],
                         outputs=outputs)
        if repro_dir is not None:
            from .repro import write_repro

            g.repro = write_repro(ref, model, found["node"], repro_dir, found["level"], found["values"])
    elif failing:
        g = GraphFinding(ref.kind, "hidden", "the graph's outputs fail the rule, but no value does once every "
                         "value is an output (an optimizer fusion that marking values prevents)",
                         levels=found["levels"], outputs=outputs)
    else:
        g = GraphFinding(ref.kind, "clean", "every compared value passes the parity rule at both optimization levels",
                         levels=found["levels"], outputs=outputs)
    g.seconds = round(time.perf_counter() - t0, 3)
    return g


def find_modules(ref: Any, model: Any = None, start: Optional[float] = None) -> GraphFinding:
    """Localize one module-scoped graph (``model``, default the reference's own) at module level
    (:mod:`.modules`) against its reference."""
    from .modules import NOTE, localize_modules

    t0 = time.perf_counter() if start is None else start
    found = localize_modules(ref, model)
    outputs = found["outputs"]
    if found["node"] is not None:
        g = GraphFinding(ref.kind, "diverges", NOTE, fault=found["fault"], node=found["node"],
                         levels=found["levels"], outputs=outputs)
    elif not any(level["compared"] for level in found["levels"].values()):
        g = GraphFinding(ref.kind, "error", "no module's output was found in the graph ({})".format(NOTE),
                         levels=found["levels"], outputs=outputs)
    else:
        g = GraphFinding(ref.kind, "clean", "every hooked module's output passes the parity rule at both "
                         "optimization levels ({})".format(NOTE), levels=found["levels"], outputs=outputs)
    g.seconds = round(time.perf_counter() - t0, 3)
    return g


def graph_of_output(output: str) -> Optional[str]:
    """The graph a parity row's output comes from (``loss``; ``lg.loss``/``dpred``; the train
    step's ``step.loss``, ``grad:<p>``, ``new:<p>``)."""
    if output == "loss":
        return "forward"
    if output in ("lg.loss", "dpred", "loss_and_grad"):
        return "loss_and_grad"
    if output.startswith(("step.", "grad:", "new:")) or output == "train_step":
        return "train_step"
    return None


def link_failures(report: Any, cases: Sequence[Any], repro_dir: Optional[str] = None, lr: float = 0.01) -> List[Localization]:
    """Localize each failing row of ``report`` (one localization per case and backend) and link
    it from the row (``row.localization``): the graph's finding, or why there is none."""
    from ..backends import get_backends

    by_label = {c.label: c for c in cases}
    done: Dict[Any, Localization] = {}
    for row in report.failures:
        kind = graph_of_output(row.output)
        case = by_label.get(row.case)
        if kind is None or case is None:
            row.localization = {"status": "not localized", "detail": "no graph for output {!r} of case {!r}".format(
                row.output, row.case)}
            continue
        backend = get_backends([row.backend])[0]
        if not backend.piecewise and not backend.stages and not backend.module_scoped:
            row.localization = {"status": "unsupported", "detail": "{} runs no graph value by value and has no "
                                "compiler stages to bisect".format(backend.name)}
            continue
        if not backend.piecewise and not backend.module_scoped and kind == "forward":
            kind = "loss_and_grad"  # stage bisection judges the loss value with its gradients
        key = (row.case, backend.name)
        if key not in done:
            done[key] = localize(case.net, case.loss, case.inputs, case.targets, backend=backend, lr=lr,
                                 repro_dir=repro_dir, label=case.label)
        g = done[key].finding(kind)
        row.localization = {"status": "not run"} if g is None else {
            "graph": kind, "status": g.status, "line": g.line(), "fault": g.fault, "repro": g.repro,
            "stage": g.stage, "bisector": g.bisector,
            "node": None if g.node is None else {k: g.node.get(k) for k in ("op_type", "name", "fx_node", "fx_target",
                                                                              "source", "scope", "module_class")
                                                 if k in g.node}}
    return list(done.values())


def _by_module(adapter: Any, net: Optional[nn.Module], loss: nn.Module, inputs: Tuple[Tensor, ...],
               targets: Tuple[Tensor, ...], kinds: Sequence[str]) -> List[GraphFinding]:
    from .modules import module_reference

    out = []
    for kind in kinds:
        t0 = time.perf_counter()
        if kind != "forward":
            out.append(GraphFinding(kind, "unsupported", "{} exports the forward graph only; it is localized at "
                                    "module level".format(adapter.name)))
            continue

        def build() -> Any:
            got = adapter.module_graph(net, loss, inputs + targets)
            return module_reference(kind, got["model"], got["module"], inputs + targets, provider=got["provider"])

        out.append(_graph_finding(kind, t0, build, lambda ref: find_modules(ref, start=t0)))
    return out


def _graph_finding(kind: str, t0: float, build: Callable[[], Any], judge: Callable[[Any], GraphFinding]) -> GraphFinding:
    """One graph's finding: ``build()`` exports it with its reference, ``judge(ref)`` localizes it.
    An unsupported or failing export is said in the finding, never a clean result."""
    from ..backends import Unsupported

    try:
        ref = build()
    except Unsupported as exc:
        return GraphFinding(kind, "unsupported", str(exc), seconds=time.perf_counter() - t0)
    except Exception as exc:  # the exporters raise many types: one finding that names it
        return GraphFinding(kind, "error", "{}: {}".format(type(exc).__name__, str(exc)[:300]),
                            seconds=time.perf_counter() - t0)
    exported = time.perf_counter() - t0
    g = judge(ref)
    g.export_seconds = round(exported, 3)
    return g


def _by_stage(adapter: Any, net: Optional[nn.Module], loss: nn.Module, inputs: Tuple[Tensor, ...],
              targets: Tuple[Tensor, ...], kinds: Sequence[str], dynamic: Sequence[bool],
              bisect: bool = True) -> List[GraphFinding]:
    import torch

    from ..nets import NetWithLoss
    from .stages import BISECTED, bisect_inductor, bisect_stages

    out = []
    for kind in kinds:
        t0 = time.perf_counter()
        if kind == "forward":
            continue  # the value is judged in the loss_and_grad and train_step runs (their forward graph)
        if kind == "loss_and_grad":
            if net is None:
                pred = inputs[0]
            else:
                with torch.no_grad():
                    pred = net(*inputs)
            module, args, wrt_first = loss, (pred,) + targets, True
        else:
            module, args, wrt_first = NetWithLoss(net, loss, n_targets=len(targets)), inputs + targets, False
        result = bisect_stages(adapter, kind, module, args, wrt_first, dynamic)
        first = result["first"]
        g = GraphFinding(kind, "diverges" if first else "clean",
                         "" if first else "every stage passes the parity rule, forward and backward",
                         fault=None if first is None else "{} {}".format(first["stage"], first["graph"]),
                         levels=result["runs"], stage=first)
        if bisect and first is not None and first["stage"] == BISECTED and first["graph"] != "build":
            g.bisector = bisect_inductor(adapter, module, args, wrt_first, first["dynamic"])
        g.seconds = round(time.perf_counter() - t0, 3)
        out.append(g)
    return out
