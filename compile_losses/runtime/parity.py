"""The project's parity rule in numpy, for checking a bundle where torch is not installed.

For one output of a graph, against eager PyTorch in the same dtype and eager in float64:
1. pass if within ``torch.testing.assert_close``'s default tolerance for the dtype; otherwise
2. pass if the max error against float64 is at most 2x eager's own, plus a floor of
   ``FLOOR_ULPS`` ulps of the reference's largest magnitude (as accurate as eager, only
   different); otherwise
3. fail.
"""
import json
from dataclasses import asdict, dataclass
from typing import List, Optional

import numpy as np

# torch.testing.assert_close defaults: dtype -> (rtol, atol)
TOLERANCES = {
    np.dtype(np.float16): (1e-3, 1e-5),
    np.dtype(np.float32): (1.3e-6, 1e-5),
    np.dtype(np.float64): (1e-7, 1e-7),
}
ERROR_RATIO = 2.0
FLOOR_ULPS = 4  # compile_losses.parity.ULPS (a test keeps them equal)


@dataclass
class Row:
    graph: str
    output: str
    ok: bool
    clause: str                 # "1 (assert_close)", "2 (as accurate as eager)", or why it failed
    max_abs: float
    max_rel: float
    err_vs_f64: float
    eager_err_vs_f64: float
    ratio: Optional[float]
    cosine: Optional[float]


def _cosine(a: np.ndarray, b: np.ndarray) -> Optional[float]:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if a.size < 2 or na == 0.0 or nb == 0.0:
        return None
    with np.errstate(invalid="ignore", over="ignore"):  # inf in a fixture: a NaN cosine, reported as such
        return float(np.dot(a.ravel(), b.ravel()) / (na * nb))


def compare(graph: str, output: str, got: np.ndarray, eager: np.ndarray, ref64: np.ndarray,
            gradient: bool = False) -> Row:
    """One row of the rule: ``got`` (the bundle) vs ``eager`` (same dtype) and ``ref64``."""
    got, eager, ref64 = np.asarray(got), np.asarray(eager), np.asarray(ref64)
    nan = float("nan")
    if got.shape != eager.shape or got.dtype != eager.dtype:
        return Row(graph, output, False, "fail: got {} {}, eager {} {}".format(
            got.dtype, got.shape, eager.dtype, eager.shape), nan, nan, nan, nan, None, None)
    # the fixtures are data from the bundle: a float64 reference of another shape or kind would
    # broadcast or fail to convert, so it is a failing row, not an exception
    if ref64.shape != got.shape or ref64.dtype.kind not in "biuf":
        return Row(graph, output, False, "fail: got {} {}, float64 reference {} {}".format(
            got.dtype, got.shape, ref64.dtype, ref64.shape), nan, nan, nan, nan, None, None)
    ref64 = ref64.astype(np.float64)
    if not np.issubdtype(got.dtype, np.floating):
        same = bool(np.array_equal(got, eager))
        return Row(graph, output, same, "1 (exact)" if same else "fail: integers differ", 0.0, 0.0, 0.0, 0.0, None, None)
    g64, e64 = got.astype(np.float64), eager.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        diff = np.abs(g64 - e64)
        max_abs = float(diff.max()) if diff.size else 0.0
        max_rel = float((diff / np.abs(e64)).max()) if diff.size else 0.0
        err = float(np.abs(g64 - ref64).max()) if diff.size else 0.0
        eager_err = float(np.abs(e64 - ref64).max()) if diff.size else 0.0
    cosine = _cosine(g64, e64) if gradient else None
    rtol, atol = TOLERANCES.get(got.dtype, TOLERANCES[np.dtype(np.float32)])
    finite = bool(np.isfinite(g64).all() and np.isfinite(e64).all())
    if finite and bool(np.all(diff <= atol + rtol * np.abs(e64))):
        return Row(graph, output, True, "1 (assert_close)", max_abs, max_rel, err, eager_err, None, cosine)
    if not finite:
        return Row(graph, output, False, "fail: non-finite values", max_abs, max_rel, err, eager_err, None, cosine)
    # the floor and ratio exactly as compile_losses.parity.judge computes them
    info = np.finfo(got.dtype)
    scale = float(np.abs(ref64).max()) if ref64.size else 0.0
    floor = FLOOR_ULPS * float(info.eps) * max(scale, float(info.tiny))
    ratio = err / eager_err if eager_err > 0 else (1.0 if err == 0 else float("inf"))
    if err <= ERROR_RATIO * eager_err + floor:
        return Row(graph, output, True, "2 (as accurate as eager)", max_abs, max_rel, err, eager_err, ratio, cosine)
    return Row(graph, output, False, "fail: error vs float64 {:.3g} > {}x eager's {:.3g} + floor {:.3g}".format(
        err, ERROR_RATIO, eager_err, floor), max_abs, max_rel, err, eager_err, ratio, cosine)


@dataclass
class CheckReport:
    """What :meth:`Bundle.check` found: one row per graph output re-run from the fixtures."""

    bundle: str
    rows: List[Row]

    @property
    def ok(self) -> bool:
        return bool(self.rows) and all(r.ok for r in self.rows)

    def to_json(self) -> str:
        return json.dumps({"bundle": self.bundle, "ok": self.ok, "rows": [asdict(r) for r in self.rows]}, indent=2)

    def __str__(self) -> str:
        head = "{:<14} {:<22} {:>10} {:>10} {:>10} {:>10} {:>7}  {}".format(
            "graph", "output", "max_abs", "max_rel", "err_f64", "eager_f64", "ratio", "result")
        lines = [head, "-" * len(head)]
        for r in self.rows:
            lines.append("{:<14} {:<22} {:>10.3g} {:>10.3g} {:>10.3g} {:>10.3g} {:>7}  {}".format(
                r.graph, r.output[:22], r.max_abs, r.max_rel, r.err_vs_f64, r.eager_err_vs_f64,
                "-" if r.ratio is None else "{:.2f}".format(r.ratio), ("pass " if r.ok else "") + r.clause))
        lines.append("{}: {}".format(self.bundle, "all {} outputs pass".format(len(self.rows)) if self.ok
                                     else "{} of {} outputs FAIL".format(sum(not r.ok for r in self.rows), len(self.rows))))
        return "\n".join(lines)
