"""Rows and the report: one judged output per row, tables for the terminal, JSON for machines."""
import json
import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch
from torch import Tensor

from .rule import (FAIL, FAILING, PASS, SKIPPED, UNAVAILABLE, UNSUPPORTED, NONDET, ERROR, NONFINITE, REQUIRABLE,
                   UNCOMPILABLE, GRAPH_BREAKS, RECOMPILES)


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
    # the axes the row ran under (None: not one this backend takes)
    dtype: Optional[str] = None
    autocast: Optional[str] = None
    ort_opt_level: Optional[str] = None
    ort_threads: Optional[int] = None
    sizes: Optional[Dict[str, int]] = None
    settings: Optional[Dict[str, Any]] = None

    def axes(self) -> Tuple[Any, ...]:
        """(dtype, autocast, ort_opt_level, ort_threads, other settings, dynamic sizes): what the
        summary groups by (the sizes of the dynamic dims beyond the batch, which every row has)."""
        other = ",".join("{}={}".format(k, v) for k, v in sorted((self.settings or {}).items()))
        dims = ",".join("{}={}".format(k, v) for k, v in (self.sizes or {}).items() if k != "batch")
        return (self.dtype or "-", self.autocast or "-", self.ort_opt_level or "-",
                "-" if self.ort_threads is None else str(self.ort_threads), other or "-", dims or "-")
    required: bool = False  # an uncompilable / graph-breaks / recompiles row of a backend the user required
    localization: Optional[Dict[str, Any]] = None  # verify --localize: where a failing row's graph diverges

    @property
    def failed(self) -> bool:
        """A failing status, or a fact about the code (uncompilable, graph breaks) the user required."""
        return self.status in FAILING or (self.required and self.status in REQUIRABLE)

    def output_key(self) -> Tuple[Any, ...]:
        """(case, backend, output, dtype, autocast, dynamic sizes): one output whatever the
        settings (onnxruntime level and threads, torch.compile settings) it ran under."""
        return (self.case, self.backend, self.output, self.dtype, self.autocast, self.axes()[5])


def _zero_counts() -> Dict[str, int]:
    return {"pass_clause1": 0, "pass_clause2": 0, "fail": 0, "unavailable": 0, "skipped": 0, "unsupported": 0,
            UNCOMPILABLE: 0, GRAPH_BREAKS: 0, RECOMPILES: 0}


def _count(counts: Dict[str, Any], row: "Row") -> None:
    """Count one row: a pass by its clause, any failing row as fail, the rest by status."""
    if row.status == PASS:
        counts["pass_clause1" if row.clause == 1 else "pass_clause2"] += 1
    elif row.failed:
        counts["fail"] += 1
    else:
        counts[row.status] += 1


def not_run_rows(backend: Any, label: str, spec: Any) -> List[Row]:
    """The one row of a backend that does not run on this case (a registry skip, or unavailable
    here, with the reason); empty when it runs."""
    skips = getattr(spec, "skips", {}) or {}
    if backend.name in skips:
        return [Row(label, backend.name, "*", SKIPPED, detail=skips[backend.name])]
    ok, reason = backend.available()
    return [] if ok else [Row(label, backend.name, "*", UNAVAILABLE, detail=reason)]


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
        """No failing row (fail, error, non-finite, nondeterministic, and uncompilable, graph-breaks
        or recompiles rows of required backends). Unavailable, skipped, unsupported and unrequired
        uncompilable / graph-breaks / recompiles rows do not fail a report, and are never counted as passes."""
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
            _count(per.setdefault(r.backend, _zero_counts()), r)
        loosened = sorted({"{}: {}".format(r.backend, r.tolerance) for r in self.rows if r.tolerance})
        return {"ok": self.ok, "cases": len(self.cases), "rows": len(self.rows), "failures": len(self.failures),
                "backends": per, "loosened": loosened, "audits_ok": all(a["status"] == PASS for a in self.audits),
                "seconds": round(self.seconds, 1), "torch": torch.__version__}

    def to_dict(self) -> Dict[str, Any]:
        return {"summary": dict(self.summary(), by_axes=self.by_axes(), setting_changes=self.setting_changes()),
                "cases": self.cases, "audits": self.audits, "rows": [asdict(r) for r in self.rows]}

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
        # rows of one case under several settings: say which (ort level/threads, other settings)
        several = len({(r.ort_opt_level, r.ort_threads, r.axes()[4]) for r in self.rows}) > 1
        if several:
            header.insert(2, "settings")
        for group in (self._groups() if not detail else [[r] for r in self.rows]):
            r = _worst(group)
            status = r.status if r.status != PASS else PASS
            output = r.output if len(group) == 1 else "{} outputs (worst: {})".format(len(group), r.output)
            clauses = sorted({g.clause for g in group if g.clause is not None})
            lines.append([r.case, r.backend, output, status, ",".join(map(str, clauses)) or "-", _num(r.max_abs),
                          _num(r.max_rel), _num(_min(g.cosine for g in group), 7), _num(r.err_backend64),
                          _num(r.err_eager64), _num(r.ratio, 3)])
            if several:
                ort = "ort={}/{}".format(r.ort_opt_level, r.ort_threads) if r.ort_opt_level is not None else ""
                lines[-1].insert(2, " ".join(x for x in (ort, r.axes()[4] if r.settings else "") if x) or "-")
        return _format(header, lines)

    def __str__(self) -> str:
        parts = [self.table()]
        notes = [r for r in self.rows if r.status != PASS]
        if notes:
            parts.append("not passed:")
            seen = set()
            for r in notes:
                key = (r.backend, r.status, r.detail) if r.status in (UNAVAILABLE, SKIPPED, UNSUPPORTED) + REQUIRABLE else id(r)
                if key in seen:
                    continue
                seen.add(key)
                where = "every case" if r.status in (UNAVAILABLE, SKIPPED, UNSUPPORTED) else r.case
                status = r.status + (" (required)" if r.required and r.status in REQUIRABLE else "")
                parts.append("  {} {} [{}] {}: {}".format(r.backend, r.output, where, status, r.detail))
        loosened = self.summary()["loosened"]
        if loosened:
            parts.append("loosened tolerances (from the registry):")
            parts += ["  " + t for t in loosened]
        if self.audits:
            parts.append("torch.compile audit:")
            parts += ["  {:<28} {:<5} {}".format(a["case"], a["status"], a["detail"]) for a in self.audits]
        changes = self.setting_changes()
        if changes:
            parts.append("verdicts a setting changes:")
            for c in changes:
                parts.append("  {} {} [{}] {}{}: {}".format(
                    c["backend"], c["output"], c["case"], c["dtype"],
                    " autocast=" + c["autocast"] if c["autocast"] else "", "; ".join(
                        "{} {}".format(_variant(v, c["verdicts"]), v["status"]) for v in c["verdicts"])))
        parts.append(self.summary_table())
        return "\n".join(parts)

    def verdict(self) -> str:
        """One line: OK or FAILED with the count of failing rows, cases, rows and seconds."""
        s = self.summary()
        verdict = "OK" if s["ok"] else "FAILED ({} failing rows)".format(s["failures"])
        return "{}: {} cases, {} rows, {:.1f} s".format(verdict, s["cases"], s["rows"], self.seconds)

    def failure_text(self) -> str:
        """The failing rows only: their table (every row), what each failure says, and the verdict
        (``assert_parity``'s message; empty rows give the verdict alone)."""
        failing = self.failures
        if not failing:
            return self.verdict()
        parts = [ParityReport(failing).table(detail=True), "failures:"]
        parts += ["  {} {} [{}] {}: {}".format(r.backend, r.output, r.case, r.status, r.detail or "-") for r in failing]
        parts.append(self.verdict())
        return "\n".join(parts)

    def by_axes(self) -> List[Dict[str, Any]]:
        """Counts per (backend, dtype, autocast, ort_opt_level, ort_threads, other settings, sizes)."""
        per: Dict[Tuple[Any, ...], Dict[str, Any]] = {}
        for r in self.rows:
            key = (r.backend,) + r.axes()
            _count(per.setdefault(key, dict(zip(("backend", "dtype", "autocast", "ort_opt_level", "ort_threads",
                                                 "settings", "sizes"), key), **_zero_counts())), r)
        return list(per.values())

    def setting_changes(self) -> List[Dict[str, Any]]:
        """The outputs whose verdict a setting changes: rows of one (case, backend, output, dtype,
        autocast, sizes) run under several settings (onnxruntime level and threads, torch.compile
        settings) where some fail and some do not, each with its verdict per setting."""
        groups: Dict[Tuple[Any, ...], List[Row]] = {}
        for r in self.rows:
            groups.setdefault(r.output_key(), []).append(r)
        changes = []
        for (case, backend, output, dtype, autocast, sizes), rows in groups.items():
            if len({r.failed for r in rows}) > 1:
                changes.append({"case": case, "backend": backend, "output": output, "dtype": dtype,
                                "autocast": autocast, "sizes": sizes,
                                "verdicts": [{"ort_opt_level": r.ort_opt_level, "ort_threads": r.ort_threads,
                                              "settings": r.settings, "status": r.status, "clause": r.clause}
                                             for r in rows]})
        return changes

    def summary_table(self) -> str:
        header = ["backend", "dtype", "autocast", "ort opt", "ort thr", "settings", "sizes", "pass (1)", "pass (2)", "fail",
                  "unavailable", "skipped", "unsupported", UNCOMPILABLE, GRAPH_BREAKS, RECOMPILES]
        lines = [[c["backend"], c["dtype"], c["autocast"], c["ort_opt_level"], c["ort_threads"], c["settings"], c["sizes"],
                  str(c["pass_clause1"]), str(c["pass_clause2"]), str(c["fail"]), str(c["unavailable"]),
                  str(c["skipped"]), str(c["unsupported"]), str(c[UNCOMPILABLE]), str(c[GRAPH_BREAKS]),
                  str(c[RECOMPILES])]
                 for c in self.by_axes()]
        return "{}\n{}".format(_format(header, lines), self.verdict())

    def _groups(self) -> List[List[Row]]:
        groups: Dict[Tuple[Any, ...], List[Row]] = {}
        for r in self.rows:
            groups.setdefault((r.case, r.backend) + r.axes(), []).append(r)
        return list(groups.values())


_RANK = {NONDET: 0, ERROR: 1, NONFINITE: 2, FAIL: 3, UNCOMPILABLE: 4, GRAPH_BREAKS: 4, RECOMPILES: 4, UNSUPPORTED: 4, UNAVAILABLE: 5,
         SKIPPED: 6, PASS: 7}


def _variant(v: Dict[str, Any], among: List[Dict[str, Any]]) -> str:
    """One row's settings as the verdict-change list shows them: those that vary ``among`` the rows."""
    ort = "ort={}/{}".format(v["ort_opt_level"], v["ort_threads"]) if len(
        {(u["ort_opt_level"], u["ort_threads"]) for u in among}) > 1 else ""
    varying = sorted(k for k in (v["settings"] or {}) if len({repr((u["settings"] or {}).get(k)) for u in among}) > 1)
    other = ",".join("{}={}".format(k, v["settings"][k]) for k in varying)
    return " ".join(x for x in (ort, other) if x) or "-"


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


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return "{}: {}".format(type(exc).__name__, text[0] if text else "")[:300]
