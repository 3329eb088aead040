"""The parity rule: :func:`judge` and what it needs (statuses, the ulp floor, float64 copies of a case).

Parity: each backend's loss value and gradients against eager, judged by a float64 reference.

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
import math
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn


ULPS = 4  # the floor of clause 2, in ulps of the float64 reference's largest magnitude


PASS, FAIL, ERROR, NONFINITE, NONDET = "pass", "fail", "error", "non-finite", "nondeterministic"


UNAVAILABLE, SKIPPED, UNSUPPORTED = "unavailable", "skipped", "unsupported"


FAILING = (FAIL, ERROR, NONFINITE, NONDET)


# Facts about the user's code, not numeric mismatches: a compiler that cannot take it (TorchScript,
# torch.export, ONNX export), with the compiler's message and the user's source line; graph
# breaks under torch.compile's defaults (which still run); and recompilations that the user's own
# code causes (a branch on a size, which torch.compile's defaults also run, recompiling). They fail
# a run only where required (``verify(..., require=[backend])``, ``--require``; recompiles also
# under ``strict_audit``, and all three for the catalogue's own losses).
UNCOMPILABLE, GRAPH_BREAKS, RECOMPILES = "uncompilable", "graph-breaks", "recompiles"


REQUIRABLE = (UNCOMPILABLE, GRAPH_BREAKS, RECOMPILES)


def judge(actual: Any, expected: Tensor, reference64: Tensor, *, gradient: bool = False,
          tolerance: Any = None, eager_variants: Sequence[Tensor] = ()) -> Dict[str, Any]:
    """Judge one output by the rule. ``tolerance`` is a registry ``Tolerance`` (rtol, atol,
    reason) replacing assert_close's default in clause 1. ``eager_variants``: eager's own results
    in the same dtype by other, equally valid evaluation orders of the same computation (a
    trajectory's batches with rows permuted or cut into micro-batches, each shown equal to the
    reference in float64); eager's error in clause 2 is then the largest of its errors, as eager's
    own error is a spread over orders, not one draw. Returns Row fields."""
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
        out["cosine"] = _cosine(a.flatten(), e.flatten())
    err_b = float((a - r).abs().max())
    err_e = own = float((e - r).abs().max())
    for v in eager_variants:
        err_e = max(err_e, float((v.detach().cpu().double() - r).abs().max()))
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
        if err_b > 2 * own + floor:  # passed by another order's error (own alone fails it): say so
            out["detail"] = "eager's error {:.3g} is the largest over {} evaluation orders ({:.3g} in its own)".format(
                err_e, len(eager_variants) + 1, own)
        return dict(out, status=PASS, clause=2)
    return dict(out, status=FAIL, detail="error vs float64 {:.3g} > 2 x eager's {:.3g} + {} ulps ({:.3g})".format(
        err_b, err_e, ULPS, floor))


def _cosine(a: Tensor, e: Tensor) -> float:
    """Cosine similarity of two float64 vectors: 1 when both are zero, 0 when one is. Each is scaled
    by its largest magnitude, then by its norm, so tiny (1e-160) and huge (1e200) gradients neither
    underflow nor overflow the squares (``Tensor.norm`` does not scale)."""
    ma, me = float(a.abs().max()), float(e.abs().max())
    if ma == 0.0 or me == 0.0:
        return 1.0 if ma == me else 0.0
    a, e = a / ma, e / me
    return float(torch.dot(a / a.norm(), e / e.norm()))


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


def _cast64(t: Tensor) -> Tensor:
    return t.double() if t.is_floating_point() else t


def float64_case(net: Optional[nn.Module], loss: nn.Module, case_args: Tuple[Tensor, ...],
                 lg_args: Tuple[Tensor, ...]) -> Tuple[Optional[nn.Module], nn.Module, Tuple[Tensor, ...], Tuple[Tensor, ...]]:
    """The reference's case: copies of the modules and the same inputs in float64 (integer targets
    stay integers), from the float32 values widened, so eager and its float64 run see one input."""
    loss64 = copy.deepcopy(loss).double()
    net64 = copy.deepcopy(net).double() if net is not None else None
    return net64, loss64, tuple(_cast64(t) for t in case_args), tuple(_cast64(t) for t in lg_args)
