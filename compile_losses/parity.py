"""Parity: each backend's loss value and gradients against eager, judged by a float64 reference.

For each output (the loss, the loss and ``d loss / d pred`` of the loss-and-gradient callable,
and for a net the train step's loss, every parameter's gradient and every updated parameter):

1. pass if within ``torch.testing.assert_close``'s default tolerance of eager in the same dtype
   (or a loosened one, which lives only in the registry with its reason, printed in the report);
2. else pass if its max error against eager run in float64 is at most twice eager's own
   (plus a floor of ``ULPS`` ulps of the reference's magnitude): as accurate as eager, only
   different;
3. else fail.

Eager runs twice first and must agree with itself bit for bit, else the output's rows say
``nondeterministic``. A non-finite output is its own failing status. A backend that cannot run
here, a registry skip, or a gradient a backend cannot give yet is a row that says so: never a pass.

    report = verify(net, loss, inputs, target)        # one case, every backend
    report.ok, report.rows, report.summary(), report.to_json(), print(report)
"""
import copy
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, TextIO, Tuple, Union

import torch
from torch import Tensor, nn

from .backends import BACKENDS, Backend, Unsupported, get_backends, reference_for
from .backends.base import to_cpu
from .nets import NetWithLoss

__all__ = ["Row", "ParityReport", "verify", "verify_registry", "compile_audit", "audited", "judge", "ULPS", "FAILING"]

ULPS = 4  # the floor of clause 2, in ulps of the float64 reference's largest magnitude
PASS, FAIL, ERROR, NONFINITE, NONDET = "pass", "fail", "error", "non-finite", "nondeterministic"
UNAVAILABLE, SKIPPED, UNSUPPORTED = "unavailable", "skipped", "unsupported"
FAILING = (FAIL, ERROR, NONFINITE, NONDET)


@dataclass
class Row:
    """One judged output of one backend on one case (or a note that it did not run, and why)."""

    case: str
    backend: str
    output: str
    status: str
    clause: Optional[int] = None
    max_abs: Optional[float] = None
    max_rel: Optional[float] = None
    cosine: Optional[float] = None
    err_backend64: Optional[float] = None
    err_eager64: Optional[float] = None
    ratio: Optional[float] = None
    tolerance: Optional[str] = None
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.status in FAILING


# ---------------------------------------------------------------------------------------------
# the rule
# ---------------------------------------------------------------------------------------------
def judge(actual: Any, expected: Tensor, reference64: Tensor, *, gradient: bool = False,
          tolerance: Any = None) -> Dict[str, Any]:
    """Judge one output by the rule. ``tolerance`` is a registry ``Tolerance`` (rtol, atol,
    reason) replacing assert_close's default in clause 1. Returns Row fields."""
    out: Dict[str, Any] = {}
    if tolerance is not None:
        out["tolerance"] = "rtol={:g} atol={:g}: {}".format(tolerance.rtol, tolerance.atol, tolerance.reason)
    if not isinstance(actual, Tensor):
        return dict(out, status=FAIL, detail="returned {}, not a tensor".format(type(actual).__name__))
    actual = actual.detach().cpu()
    if tuple(actual.shape) != tuple(expected.shape):
        return dict(out, status=FAIL, detail="shape {} where eager gives {}".format(tuple(actual.shape), tuple(expected.shape)))
    if actual.dtype != expected.dtype:
        return dict(out, status=FAIL, detail="dtype {} where eager gives {}".format(actual.dtype, expected.dtype))
    for name, t in (("backend", actual), ("eager", expected), ("float64 eager", reference64)):
        bad = int((~torch.isfinite(t)).sum()) if t.is_floating_point() else 0
        if bad:
            return dict(out, status=NONFINITE, detail="{} gives {} non-finite value(s)".format(name, bad))
    a, e, r = actual.double(), expected.double(), reference64.double()
    diff = (a - e).abs()
    if diff.numel() == 0:
        return dict(out, status=PASS, clause=1, max_abs=0.0, max_rel=0.0, detail="empty")
    out["max_abs"] = float(diff.max())
    rel = torch.where(e != 0, diff / e.abs(), torch.where(diff == 0, torch.zeros_like(diff), torch.full_like(diff, math.inf)))
    out["max_rel"] = float(rel.max())
    if gradient:
        na, ne = a.flatten().norm(), e.flatten().norm()
        out["cosine"] = 1.0 if float(na) == 0.0 and float(ne) == 0.0 else float(
            torch.dot(a.flatten(), e.flatten()) / (na * ne).clamp_min(1e-300))
    err_b = float((a - r).abs().max())
    err_e = float((e - r).abs().max())
    out["err_backend64"], out["err_eager64"] = err_b, err_e
    out["ratio"] = err_b / err_e if err_e > 0 else (1.0 if err_b == 0 else math.inf)
    try:
        if tolerance is None:
            torch.testing.assert_close(actual, expected)
        else:
            torch.testing.assert_close(actual, expected, rtol=tolerance.rtol, atol=tolerance.atol)
        return dict(out, status=PASS, clause=1)
    except AssertionError:
        pass
    floor = ULPS * torch.finfo(expected.dtype).eps * max(float(r.abs().max()), torch.finfo(expected.dtype).tiny)
    if err_b <= 2 * err_e + floor:
        return dict(out, status=PASS, clause=2)
    return dict(out, status=FAIL, detail="error vs float64 {:.3g} > 2 x eager's {:.3g} + {} ulps ({:.3g})".format(
        err_b, err_e, ULPS, floor))


def _bitwise_equal(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_bitwise_equal(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_bitwise_equal(x, y) for x, y in zip(a, b))
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point():
        bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
        return bool((a.contiguous().view(bits) == b.contiguous().view(bits)).all())
    return bool(torch.equal(a, b))


# ---------------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------------
class ParityReport:
    """Rows of a parity run (one or many cases), the compile audits, and how to show them."""

    def __init__(self, rows: Optional[List[Row]] = None, cases: Optional[List[Dict[str, Any]]] = None,
                 audits: Optional[List[Dict[str, Any]]] = None, seconds: float = 0.0) -> None:
        self.rows: List[Row] = list(rows or [])
        self.cases: List[Dict[str, Any]] = list(cases or [])
        self.audits: List[Dict[str, Any]] = list(audits or [])
        self.seconds = seconds

    @property
    def ok(self) -> bool:
        """No failing row (fail, error, non-finite, nondeterministic). Unavailable, skipped and
        unsupported rows do not fail a report, and are never counted as passes."""
        return not any(r.failed for r in self.rows)

    @property
    def failures(self) -> List[Row]:
        return [r for r in self.rows if r.failed]

    def extend(self, other: "ParityReport") -> "ParityReport":
        self.rows += other.rows
        self.cases += other.cases
        self.audits += other.audits
        self.seconds += other.seconds
        return self

    def summary(self) -> Dict[str, Any]:
        """A small dict (embedded in bundles): ok, counts per backend, loosened tolerances."""
        per: Dict[str, Dict[str, int]] = {}
        for r in self.rows:
            c = per.setdefault(r.backend, {"pass_clause1": 0, "pass_clause2": 0, "fail": 0, "unavailable": 0,
                                           "skipped": 0, "unsupported": 0})
            if r.status == PASS:
                c["pass_clause1" if r.clause == 1 else "pass_clause2"] += 1
            elif r.failed:
                c["fail"] += 1
            else:
                c[r.status] += 1
        loosened = sorted({"{}: {}".format(r.backend, r.tolerance) for r in self.rows if r.tolerance})
        return {"ok": self.ok, "cases": len(self.cases), "rows": len(self.rows), "failures": len(self.failures),
                "backends": per, "loosened": loosened, "audits_ok": all(a["status"] == PASS for a in self.audits),
                "seconds": round(self.seconds, 1), "torch": torch.__version__}

    def to_dict(self) -> Dict[str, Any]:
        return {"summary": self.summary(), "cases": self.cases, "audits": self.audits,
                "rows": [asdict(r) for r in self.rows]}

    def to_json(self, path: Optional[str] = None) -> str:
        """The whole report as JSON text (non-finite numbers as strings); written to ``path`` if given."""
        text = json.dumps(_json_safe(self.to_dict()), indent=1)
        if path:
            with open(path, "w") as fh:
                fh.write(text + "\n")
        return text

    # -- text --------------------------------------------------------------------------------------
    def table(self, detail: bool = False) -> str:
        """One line per (case, backend) with its worst output, or every row with ``detail``."""
        header = ["case", "backend", "output", "status", "clause", "max abs", "max rel", "cosine",
                  "err64 backend", "err64 eager", "ratio"]
        lines: List[List[str]] = []
        for group in (self._groups() if not detail else [[r] for r in self.rows]):
            r = _worst(group)
            status = r.status if r.status != PASS else PASS
            output = r.output if len(group) == 1 else "{} outputs (worst: {})".format(len(group), r.output)
            clauses = sorted({g.clause for g in group if g.clause is not None})
            lines.append([r.case, r.backend, output, status, ",".join(map(str, clauses)) or "-", _num(r.max_abs),
                          _num(r.max_rel), _num(_min(g.cosine for g in group), 7), _num(r.err_backend64),
                          _num(r.err_eager64), _num(r.ratio, 3)])
        return _format(header, lines)

    def __str__(self) -> str:
        parts = [self.table()]
        notes = [r for r in self.rows if r.status != PASS]
        if notes:
            parts.append("not passed:")
            seen = set()
            for r in notes:
                key = (r.backend, r.status, r.detail) if r.status in (UNAVAILABLE, SKIPPED, UNSUPPORTED) else id(r)
                if key in seen:
                    continue
                seen.add(key)
                where = "every case" if r.status in (UNAVAILABLE, SKIPPED, UNSUPPORTED) else r.case
                parts.append("  {} {} [{}] {}: {}".format(r.backend, r.output, where, r.status, r.detail))
        loosened = self.summary()["loosened"]
        if loosened:
            parts.append("loosened tolerances (from the registry):")
            parts += ["  " + t for t in loosened]
        if self.audits:
            parts.append("torch.compile audit:")
            parts += ["  {:<28} {:<5} {}".format(a["case"], a["status"], a["detail"]) for a in self.audits]
        parts.append(self.summary_table())
        return "\n".join(parts)

    def summary_table(self) -> str:
        s = self.summary()
        header = ["backend", "pass (1)", "pass (2)", "fail", "unavailable", "skipped", "unsupported"]
        lines = [[name, str(c["pass_clause1"]), str(c["pass_clause2"]), str(c["fail"]), str(c["unavailable"]),
                  str(c["skipped"]), str(c["unsupported"])] for name, c in s["backends"].items()]
        verdict = "OK" if s["ok"] else "FAILED ({} failing rows)".format(s["failures"])
        return "{}\n{}: {} cases, {} rows, {:.1f} s".format(_format(header, lines), verdict, s["cases"], s["rows"],
                                                          self.seconds)

    def _groups(self) -> List[List[Row]]:
        groups: Dict[Tuple[str, str], List[Row]] = {}
        for r in self.rows:
            groups.setdefault((r.case, r.backend), []).append(r)
        return list(groups.values())


_RANK = {NONDET: 0, ERROR: 1, NONFINITE: 2, FAIL: 3, UNSUPPORTED: 4, UNAVAILABLE: 5, SKIPPED: 6, PASS: 7}


def _worst(rows: List[Row]) -> Row:
    return min(rows, key=lambda r: (_RANK.get(r.status, 0), -(r.clause or 0),
                                    -(r.ratio if r.ratio is not None and not math.isnan(r.ratio) else 0.0)))


def _min(values: Iterable[Optional[float]]) -> Optional[float]:
    vals = [v for v in values if v is not None]
    return min(vals) if vals else None


def _num(v: Optional[float], digits: int = 2) -> str:
    if v is None:
        return "-"
    if v == 0:
        return "0"
    if math.isinf(v) or math.isnan(v):
        return str(v)
    return "{:.{}g}".format(v, digits + 1) if digits != 2 else "{:.2e}".format(v)


def _format(header: List[str], lines: List[List[str]]) -> str:
    widths = [max([len(h)] + [len(l[i]) for l in lines]) for i, h in enumerate(header)]
    fmt = "  ".join("{:<%d}" % w for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*["-" * w for w in widths])] + [fmt.format(*l) for l in lines])


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and (math.isinf(obj) or math.isnan(obj)):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, Tensor):
        return obj.tolist()
    if isinstance(obj, torch.dtype):
        return str(obj)
    return obj


# ---------------------------------------------------------------------------------------------
# progress on stderr
# ---------------------------------------------------------------------------------------------
class Progress:
    """``[ 12/380] backend case`` on stderr: rewritten in place on a terminal, a line otherwise."""

    def __init__(self, total: int, stream: Optional[TextIO] = None) -> None:
        self.total, self.done = total, 0
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.perf_counter()

    def step(self, text: str) -> None:
        self.done += 1
        width = len(str(self.total))
        line = "[{:>{w}}/{}] {:6.0f}s {}".format(self.done, self.total, time.perf_counter() - self.start, text, w=width)
        if self.tty:
            self.stream.write("\r\033[K" + line[:150])
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


# ---------------------------------------------------------------------------------------------
# verify
# ---------------------------------------------------------------------------------------------
def verify(net: Optional[nn.Module], loss: nn.Module, inputs: Any, target: Any,
           backends: Union[None, str, Sequence[str]] = None, **options: Any) -> ParityReport:
    """Run one case through backends and judge every output against eager.

    ``net`` None checks the loss alone (``inputs`` is then the prediction). ``inputs`` and
    ``target`` are a tensor or a tuple of tensors (targets in the order the loss's forward takes
    them). ``backends`` is a list or ``"a,b"`` (default: every backend; those that cannot run here
    say so). Options: ``lr`` (0.01, the train step's), ``label`` (the case's name in rows),
    ``spec`` (registry entry with ``tolerances``/``skips``; found by the loss's class if omitted),
    ``progress`` (True, a stream, or a :class:`Progress`).
    """
    start = time.perf_counter()
    chosen = get_backends(backends)
    inputs = (inputs,) if isinstance(inputs, Tensor) else tuple(inputs)
    targets = (target,) if isinstance(target, Tensor) else tuple(target)
    from .validate import check_case

    check_case(net, loss, inputs, targets)  # bad input: one named error before any backend runs
    lr = float(options.get("lr", 0.01))
    spec = options.get("spec") or _registry_spec(loss)
    label = options.get("label") or _label(net, loss, inputs)
    progress = options.get("progress")
    own_progress = progress is True or (progress is not None and not isinstance(progress, (bool, Progress)))
    if own_progress:
        progress = Progress(len(chosen), None if progress is True else progress)
    modes = [(m, m.training) for m in (net, loss) if m is not None]
    for m, _ in modes:
        m.eval()
    try:
        ref = _References(net, loss, inputs, targets, lr)
        rows: List[Row] = []
        for backend in chosen:
            if progress:
                progress.step("{:<18} {}".format(backend.name, label))
            rows += _backend_rows(backend, ref, label, spec)
    finally:
        for m, mode in modes:
            m.train(mode)
        if own_progress:
            progress.close()
    case = {"case": label, "net": type(net).__name__ if net is not None else None, "loss": type(loss).__name__,
            "inputs": [[str(t.dtype).replace("torch.", ""), list(t.shape)] for t in inputs],
            "targets": [[str(t.dtype).replace("torch.", ""), list(t.shape)] for t in targets], "lr": lr}
    return ParityReport(rows, [case], [], time.perf_counter() - start)


def _label(net: Optional[nn.Module], loss: nn.Module, inputs: Tuple[Tensor, ...]) -> str:
    name = type(loss).__name__ if net is None else "{}+{}".format(type(net).__name__, type(loss).__name__)
    return "{} {} batch={}".format(name, str(inputs[0].dtype).replace("torch.", ""), inputs[0].shape[0])


def _registry_spec(loss: nn.Module) -> Any:
    from .registry import LOSSES

    for spec in LOSSES.values():
        if type(loss) is spec.module:
            return spec
    return None


def _cast64(t: Tensor) -> Tensor:
    return t.double() if t.is_floating_point() else t


class _References:
    """Eager results (run twice, compared bit for bit) and the float64 eager reference."""

    def __init__(self, net: Optional[nn.Module], loss: nn.Module, inputs: Tuple[Tensor, ...],
                 targets: Tuple[Tensor, ...], lr: float) -> None:
        self.net, self.loss, self.inputs, self.targets, self.lr = net, loss, inputs, targets, lr
        self.case_module: nn.Module = loss if net is None else NetWithLoss(net, loss, n_targets=len(targets))
        # The wrapper in the net's mode: a fresh module is in training mode, and an exporter that
        # restores "the model's mode" recursively would put the eval-mode net back in training.
        self.case_module.train(net.training if net is not None else loss.training)
        self.case_args = inputs + targets
        if net is None:
            pred = inputs[0]
        else:
            with torch.no_grad():
                pred = net(*inputs)
        self.lg_args = (pred.detach(),) + targets
        self.train = net is not None and any(p.requires_grad for p in net.parameters())
        eager = reference_for("cpu")
        self.first = _run_all(eager, self, self.case_module, loss, net, self.case_args, self.lg_args)
        self.second = _run_all(eager, self, self.case_module, loss, net, self.case_args, self.lg_args)
        self.nondeterministic = {k for k in self.first if k in self.second and not isinstance(self.first[k], Exception)
                                 and not _bitwise_equal(self.first[k], self.second[k])}
        # float64: the same modules and inputs, cast (integer targets stay integers)
        loss64 = copy.deepcopy(loss).double()
        net64 = copy.deepcopy(net).double() if net is not None else None
        case64 = loss64 if net64 is None else NetWithLoss(net64, loss64, n_targets=len(targets))
        args64 = tuple(_cast64(t) for t in self.case_args)
        lg64 = tuple(_cast64(t) for t in self.lg_args)
        self.float64 = _run_all(eager, self, case64, loss64, net64, args64, lg64)


def _run_all(backend: Backend, ref: _References, case_module: nn.Module, loss: nn.Module, net: Optional[nn.Module],
             case_args: Tuple[Tensor, ...], lg_args: Tuple[Tensor, ...]) -> Dict[str, Any]:
    """Every output of one backend, by name; a failure to prepare or run is stored as the exception."""
    out: Dict[str, Any] = {}
    try:
        out["loss"] = to_cpu(backend.prepare(case_module, case_args)(*case_args))
    except Exception as exc:  # reported as a row: the message, never a pass
        out["loss"] = exc
    try:
        value, dpred = backend.prepare_loss_and_grad(loss, lg_args)(*lg_args)
        out["lg.loss"], out["dpred"] = to_cpu(value), to_cpu(dpred)
    except Exception as exc:
        out["loss_and_grad"] = exc
    if ref.train:
        try:
            step = backend.prepare_train_step(net, loss, case_args, ref.lr)(*case_args)
            out["step.loss"] = to_cpu(step.loss)
            for name, g in step.grads.items():
                out["grad:" + name] = to_cpu(g)
            for name, p in step.new_params.items():
                out["new:" + name] = to_cpu(p)
        except Exception as exc:
            out["train_step"] = exc
    return out


def _backend_rows(backend: Backend, ref: _References, label: str, spec: Any) -> List[Row]:
    name = backend.name
    skips = getattr(spec, "skips", {}) or {}
    if name in skips:
        return [Row(label, name, "*", SKIPPED, detail=skips[name])]
    ok, reason = backend.available()
    if not ok:
        return [Row(label, name, "*", UNAVAILABLE, detail=reason)]
    tolerance = (getattr(spec, "tolerances", {}) or {}).get(name)
    # the reference's rows: its second run judged against its first
    if backend is reference_for("cpu"):
        got = ref.second
    else:
        # a backend that chooses between its own compiled code and eager verifies the compiled code
        with backend.parity_mode():
            got = _run_all(backend, ref, ref.case_module, ref.loss, ref.net, ref.case_args, ref.lg_args)
    rows: List[Row] = []
    for output, value in got.items():
        if isinstance(value, Unsupported):
            rows.append(Row(label, name, output, UNSUPPORTED, detail=str(value)))
            continue
        if isinstance(value, Exception):
            rows.append(Row(label, name, output, ERROR, detail=_one_line(value)))
            continue
        expected = ref.first.get(output)
        if isinstance(expected, Exception) or expected is None:
            rows.append(Row(label, name, output, ERROR, detail="eager failed: {}".format(
                _one_line(expected) if expected is not None else "no such output in eager")))
            continue
        if output in ref.nondeterministic:
            rows.append(Row(label, name, output, NONDET, detail="eager run twice differs (bitwise)"))
            continue
        gradient = output.startswith(("dpred", "grad:"))
        rows.append(Row(label, name, output, **judge(value, expected, ref.float64[output], gradient=gradient,
                                                     tolerance=tolerance)))
    missing = [k for k in ref.first if k not in got and not any(isinstance(v, Exception) for v in got.values())]
    for output in missing:  # e.g. a train step that returns fewer gradients than the net has
        rows.append(Row(label, name, output, FAIL, detail="backend did not return this output"))
    return rows


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return "{}: {}".format(type(exc).__name__, text[0] if text else "")[:300]


# ---------------------------------------------------------------------------------------------
# torch.compile audit
# ---------------------------------------------------------------------------------------------
AUDIT_BATCHES = (1, 7, 64, 4096)


def audited(chosen: Sequence[Backend]) -> Optional[Backend]:
    """The backend whose compilations the audit counts, when any chosen backend is ``audited``
    (both torch.compile backends compile through dynamo: ``compile`` for a forward that records
    autograd and for reduction="none" losses); None when none is."""
    for b in chosen:
        if b.audited:
            return b
    return None


def compile_audit(module: nn.Module, make_args: Callable[[int], Tuple[Tensor, ...]], label: str = "",
                  batches: Sequence[int] = AUDIT_BATCHES, backend: Optional[str] = None) -> Dict[str, Any]:
    """Graph breaks (must be 0) and recompilations of a fresh ``torch.compile`` over ``batches``
    (none after the first compile with a dynamic batch: the second batch size's), forward and
    backward through the first argument (and any parameters). ``backend``: an audited backend's
    name (default: the first registered one)."""
    from .backends.compile import graph_breaks

    b = BACKENDS.get(backend) if backend is not None else audited(list(BACKENDS.values()))
    if b is None:
        raise ValueError("backend must name a registered backend that compiles through dynamo (audited ones: {}), "
                         "got {!r}".format(", ".join(n for n, x in BACKENDS.items() if x.audited), backend))
    entry: Dict[str, Any] = {"case": label or type(module).__name__, "backend": b.name, "batches": list(batches)}
    ok, reason = b.available()
    if not ok:
        return dict(entry, status=UNAVAILABLE, detail=reason)
    try:
        first = make_args(batches[0])
        breaks = graph_breaks(module, first)
        if breaks["graph_breaks"]:
            return dict(entry, status=FAIL, graph_breaks=breaks["graph_breaks"], detail="graph breaks {}: {}".format(
                breaks["graph_breaks"], " | ".join(breaks["reasons"][:3])))
        fn = b.audit_callable(module, first)
        counts = []
        for n in batches:
            args = list(make_args(n))
            if args[0].is_floating_point():
                args[0] = args[0].detach().requires_grad_(True)
            value = fn(*args)
            grads_of = [a for a in args if a.requires_grad] + [p for p in module.parameters() if p.requires_grad]
            if grads_of:
                torch.autograd.grad(value.sum(), grads_of, allow_unused=True)
            counts.append(b.compile_count(fn))
    except Exception as exc:
        return dict(entry, status=ERROR, detail=_one_line(exc))
    recompiles = counts[-1] - counts[min(1, len(counts) - 1)]
    status = PASS if breaks["graph_breaks"] == 0 and recompiles == 0 else FAIL
    detail = "graph breaks {}; compiled graphs after batch {}: {}; recompiles after the first dynamic compile: {}".format(
        breaks["graph_breaks"], ",".join(map(str, batches)), ",".join(map(str, counts)), recompiles)
    return dict(entry, status=status, detail=detail, graph_breaks=breaks["graph_breaks"], compiles=counts,
                recompiles=recompiles)


def _args(case: Any) -> Tuple[Tensor, ...]:
    return tuple(case.inputs) + tuple(case.targets)


# ---------------------------------------------------------------------------------------------
# the registry matrix
# ---------------------------------------------------------------------------------------------
def verify_registry(losses: Optional[Sequence[str]] = None, net: Optional[str] = "seed", alone: bool = True,
                    net_cases: bool = True, batches: Sequence[int] = (1, 7, 64), large: int = 2 ** 20,
                    dtypes: Sequence[torch.dtype] = (torch.float32, torch.float64),
                    backends: Union[None, str, Sequence[str]] = None, audit: bool = True, lr: float = 0.01,
                    progress: Any = None) -> ParityReport:
    """Every registry loss (or ``losses``) with ``net`` and alone, at ``batches`` and, for the
    elementwise losses alone, at ``large`` elements; in each of ``dtypes``; plus (``net_cases``)
    each larger registry net with its representative loss. One module per (case, dtype) serves
    every batch size, so each backend prepares once per case and runs every batch.
    ``audit`` adds the torch.compile audit of each loss (float32)."""
    from .registry import LOSSES, NETS
    from .resolve import make_case

    names = list(LOSSES) if losses is None else list(losses)
    plan: List[Tuple[Optional[str], str, torch.dtype, List[int]]] = []
    for loss_name in names:
        spec = LOSSES.get(loss_name)
        for case_net in ([net] if net not in (None, "none") else []) + ([None] if alone else []):
            for dtype in dtypes:
                bs = list(batches)
                if case_net is None and spec is not None and spec.elementwise and large:
                    per_sample = int(torch.tensor(spec.feature_shape).prod())
                    bs.append(max(1, large // per_sample))
                plan.append((case_net, loss_name, dtype, bs))
    if net_cases and losses is None:
        for net_spec in NETS.values():
            if net_spec.name != net:
                plan += [(net_spec.name, net_spec.loss, dtype, list(batches)) for dtype in dtypes]
    chosen = get_backends(backends)
    auditor = audited(chosen) if audit else None
    audits = [n for n in names if n in LOSSES] if auditor is not None else []
    steps = sum(len(bs) for *_, bs in plan) * len(chosen) + len(audits)
    bar = progress if isinstance(progress, Progress) else (Progress(steps, None if progress is True else progress)
                                                           if progress else None)
    report = ParityReport()
    start = time.perf_counter()
    try:
        for case_net, loss_name, dtype, bs in plan:
            case = make_case(case_net, loss_name, batch=bs[0], dtype=dtype)
            for n in bs:
                c = case if n == bs[0] else case.with_batch(n)
                report.extend(verify(c.net, c.loss, c.inputs, c.targets, [b.name for b in chosen], lr=lr,
                                     label=c.label, progress=bar))
        for loss_name in audits:
            if bar:
                bar.step("compile audit {}".format(loss_name))
            case = make_case(None, loss_name, batch=1, dtype=torch.float32)
            report.audits.append(compile_audit(case.loss, lambda n, c=case: _args(c.with_batch(n)), label=loss_name,
                                               backend=auditor.name))
    finally:
        if bar and bar is not progress:
            bar.close()
    for a in report.audits:  # an audit that fails is a failing row too
        if a["status"] != PASS:
            report.rows.append(Row(a["case"] + " (audit)", a["backend"], "audit", a["status"], detail=a["detail"]))
    report.seconds = time.perf_counter() - start
    return report
