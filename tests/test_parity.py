"""The parity rule, the report, planted faults, and the matrix: every registry loss x every backend.

The matrix is parametrized from the registry and the backends table. A default run covers every
loss through the cheap backends and a representative few through the costly ones (inductor
compiles, torch.export-based ONNX exports and AOTInductor builds take seconds to ~20 s each on two
cores); the rest, float64 and the large shapes run with --run-slow (CI). AOTInductor builds once by
default (mse alone: its forward, plus the training graph's loss-and-gradient); builds are cached per
process on the module's structure and weights, so one build serves every batch size.
"""
import math
from typing import List

import pytest
import torch
from torch import Tensor, nn

from backend_params import SLOW_COST
from compile_losses import losses as L
from compile_losses.backends import BACKENDS, Backend, Unsupported
from compile_losses.backends.eager import EagerBackend
from compile_losses.parity import ParityReport, Row, compile_audit, judge, verify
from compile_losses.registry import LOSSES, NETS, Tolerance
from compile_losses.resolve import make_case

# ---------------------------------------------------------------------------------------------
# the rule, on tensors built by hand
# ---------------------------------------------------------------------------------------------
REF = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)


def test_clause_1_within_assert_close_default() -> None:
    eager = REF.float()
    out = judge(eager.clone(), eager, REF)
    assert out["status"] == "pass" and out["clause"] == 1 and out["max_abs"] == 0.0


def test_clause_2_as_accurate_as_eager_against_float64() -> None:
    # eager is off from float64 by 1e-3 (say, a bad reduction); the backend by 1.5e-3 the other
    # way: not close to eager, but within 2x eager's own error
    eager = (REF + torch.tensor([1e-3, 0, 0], dtype=torch.float64)).float()
    backend = (REF - torch.tensor([1.5e-3, 0, 0], dtype=torch.float64)).float()
    out = judge(backend, eager, REF)
    assert out["status"] == "pass" and out["clause"] == 2
    assert out["ratio"] == pytest.approx(1.5, rel=1e-3)


def test_clause_3_less_accurate_than_eager_fails() -> None:
    eager = REF.float()
    backend = eager + torch.tensor([1e-3, 0.0, 0.0])
    out = judge(backend, eager, REF, gradient=True)
    assert out["status"] == "fail" and out.get("clause") is None
    assert "2 x eager's" in out["detail"] and 0.99 < out["cosine"] < 1.0


def test_non_finite_shape_and_dtype_never_pass() -> None:
    eager = REF.float()
    assert judge(torch.tensor([math.nan, -2.0, 3.0]), eager, REF)["status"] == "non-finite"
    assert judge(eager[:2], eager, REF)["detail"] == "shape (2,) where eager gives (3,)"
    assert judge(eager.double(), eager, REF)["status"] == "fail"
    assert judge("0.5", eager, REF)["status"] == "fail"


def test_a_registry_tolerance_is_used_and_printed() -> None:
    eager = REF.float()
    backend = eager + torch.tensor([1e-3, 0.0, 0.0])
    out = judge(backend, eager, REF, tolerance=Tolerance(rtol=1e-2, atol=1e-2, reason="because"))
    assert out["status"] == "pass" and out["clause"] == 1 and out["tolerance"] == "rtol=0.01 atol=0.01: because"


# ---------------------------------------------------------------------------------------------
# planted faults: each is caught and reported in the right row
# ---------------------------------------------------------------------------------------------
class _Perturbed(EagerBackend):
    """Eager, except ``d loss / d pred`` is scaled by (1 + 1e-3)."""

    def prepare_loss_and_grad(self, loss, example_inputs):  # type: ignore[no-untyped-def]
        inner = super().prepare_loss_and_grad(loss, example_inputs)

        def run(pred: Tensor, *targets: Tensor):  # type: ignore[no-untyped-def]
            value, dpred = inner(pred, *targets)
            return value, dpred * (1 + 1e-3)

        return run


class _Unavailable(Backend):
    def _available(self):  # type: ignore[no-untyped-def]
        return False, "needs a machine we do not have"


class _NoGradients(EagerBackend):
    def prepare_loss_and_grad(self, loss, example_inputs):  # type: ignore[no-untyped-def]
        raise Unsupported("this backend gives no gradients")

    def prepare_train_step(self, net, loss, example_inputs, lr):  # type: ignore[no-untyped-def]
        raise Unsupported("this backend gives no gradients")


@pytest.fixture
def planted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(BACKENDS, "perturbed", _Perturbed("perturbed"))
    monkeypatch.setitem(BACKENDS, "nowhere", _Unavailable("nowhere"))
    monkeypatch.setitem(BACKENDS, "no-grads", _NoGradients("no-grads"))


def _rows(report: ParityReport, backend: str) -> List[Row]:
    return [r for r in report.rows if r.backend == backend]


def test_a_planted_gradient_mismatch_is_caught_in_its_row(planted: None) -> None:
    case = make_case("seed", "mse", batch=7)
    report = verify(case.net, case.loss, case.inputs, case.targets, ["eager", "perturbed"], label=case.label)
    assert not report.ok
    failed = report.failures
    assert [(r.backend, r.output, r.status) for r in failed] == [("perturbed", "dpred", "fail")]
    assert failed[0].max_rel == pytest.approx(1e-3, rel=1e-3) and failed[0].ratio > 2
    assert all(r.status == "pass" for r in _rows(report, "eager"))
    # the loss and every parameter gradient of the perturbed backend are still right
    assert all(r.status == "pass" for r in _rows(report, "perturbed") if r.output != "dpred")
    assert "perturbed" in str(report) and "FAILED (1 failing rows)" in str(report)
    assert report.summary()["backends"]["perturbed"]["fail"] == 1


def test_unavailable_and_unsupported_are_reported_never_passed(planted: None) -> None:
    case = make_case("seed", "mse", batch=3)
    report = verify(case.net, case.loss, case.inputs, case.targets, ["nowhere", "no-grads"])
    assert report.ok  # nothing failed ...
    nowhere = _rows(report, "nowhere")
    assert [(r.status, r.detail) for r in nowhere] == [("unavailable", "needs a machine we do not have")]
    grads = {r.output: r.status for r in _rows(report, "no-grads")}
    assert grads == {"loss": "pass", "loss_and_grad": "unsupported", "train_step": "unsupported"}
    summary = report.summary()["backends"]  # ... and nothing that did not run counts as a pass
    assert summary["nowhere"] == {"pass_clause1": 0, "pass_clause2": 0, "fail": 0, "unavailable": 1, "skipped": 0,
                                  "unsupported": 0, "uncompilable": 0, "graph-breaks": 0,
                                  "recompiles": 0}
    assert "unavailable: needs a machine we do not have" in str(report)


class _Noisy(nn.Module):
    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return ((input - target) ** 2).mean() + 1e-3 * torch.rand(())


def test_a_nondeterministic_eager_is_flagged_not_judged() -> None:
    pred, target = torch.randn(5, 1), torch.randn(5, 1)
    report = verify(None, _Noisy(), pred, target, ["eager", "script"])
    statuses = {(r.backend, r.output): r.status for r in report.rows}
    assert statuses[("eager", "loss")] == "nondeterministic" and statuses[("script", "lg.loss")] == "nondeterministic"
    assert statuses[("script", "dpred")] == "pass"  # the gradient does not depend on the noise
    assert not report.ok


def test_registry_skips_are_rows_with_their_reason() -> None:
    case = make_case(None, "focal", batch=4)
    report = verify(case.net, case.loss, case.inputs, case.targets, ["onnx-legacy"])
    (row,) = report.rows
    assert row.status == "skipped" and "aten::expm1" in row.detail and report.ok


def test_json_and_table() -> None:
    import json

    case = make_case(None, "huber", batch=5)
    report = verify(case.net, case.loss, case.inputs, case.targets, "eager,script", label="huber f32 5")
    data = json.loads(report.to_json())
    assert data["summary"]["ok"] is True and len(data["rows"]) == 6 and data["cases"][0]["case"] == "huber f32 5"
    assert data["rows"][0].keys() >= {"case", "backend", "output", "status", "clause", "max_abs", "max_rel", "cosine",
                                      "err_backend64", "err_eager64", "ratio", "tolerance", "detail"}
    text = str(report)
    assert "err64 backend" in text and "OK: 1 cases, 6 rows" in text


# ---------------------------------------------------------------------------------------------
# faithful reductions: the rule flags an unfaithful export at 2^24 elements; ours passes
# ---------------------------------------------------------------------------------------------
class _UnfaithfulOnnx(Backend):
    """The same ONNX export with the float64-accumulated reductions switched off."""

    def _compile(self, module, example_inputs):  # type: ignore[no-untyped-def]
        from compile_losses.backends.onnx import export_onnx, ort_session

        session = ort_session(export_onnx(module, example_inputs, faithful=False).SerializeToString())
        names = [i.name for i in session.get_inputs()]
        return (lambda *a: torch.from_numpy(session.run(None, {n: t.numpy() for n, t in zip(names, a)})[0]), module)


@pytest.mark.onnx
def test_unfaithful_mean_at_2_24_is_flagged_and_the_faithful_export_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(BACKENDS, "onnx-unfaithful", _UnfaithfulOnnx("onnx-unfaithful"))
    gen = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2 ** 24, 1, generator=gen), torch.randn(2 ** 24, 1, generator=gen)
    report = verify(None, L.MSELoss(), pred, target, ["onnx-unfaithful", "onnx-legacy"])
    rows = {(r.backend, r.output): r for r in report.rows}
    bad = rows[("onnx-unfaithful", "loss")]
    assert bad.status == "fail" and bad.err_backend64 > 100 * bad.err_eager64
    assert rows[("onnx-legacy", "loss")].status == "pass"


# ---------------------------------------------------------------------------------------------
# torch.compile audit
# ---------------------------------------------------------------------------------------------
class _Breaks(nn.Module):
    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        diff = input - target
        torch._dynamo.graph_break()
        return (diff * diff).mean()


@pytest.mark.compile
def test_compile_audit_counts_graph_breaks_and_recompiles() -> None:
    spec = LOSSES["mse"]
    make = lambda n: (lambda p, t: (p,) + t)(*spec.input_for(n))  # noqa: E731
    good = compile_audit(L.MSELoss(), make, backend="compile-aot_eager")
    assert good["status"] == "pass" and good["graph_breaks"] == 0 and good["recompiles"] == 0
    assert good["compiles"][-1] >= 1
    bad = compile_audit(_Breaks(), make, backend="compile-aot_eager")
    assert bad["status"] == "graph-breaks" and bad["graph_breaks"] == 1 and bad["detail"].startswith("user-avoidable fullgraph: 1 graph break(s) at ")


# ---------------------------------------------------------------------------------------------
# the matrix
# ---------------------------------------------------------------------------------------------
# Which cases each backend runs by default, from its declared cost (seconds per preparation): the
# cheap ones (TorchScript, eager) every loss; exports and aot_eager (~1 s) the representative
# losses, the rest under --run-slow (CI); inductor and AOTInductor builds (5-40 s per case) MSE
# only (AOTInductor: alone), the rest exhaustive (`compile-losses verify --all` runs them all).
_REPRESENTATIVE = {"mse", "cross_entropy", "gaussian_nll"}
# The large shapes (2^20 elements, where reduction order matters) run in CI for the loss alone on
# the reference and one exported backend; the rest of the full-shape product is exhaustive.
_CHEAP_COST = 0.5


def _default(backend: Backend, loss: str, alone: bool) -> bool:
    if backend.cost <= _CHEAP_COST or backend.device != "cpu":
        return True
    if backend.cost < SLOW_COST:
        return loss in _REPRESENTATIVE
    return loss == "mse" and (alone or backend.cost < 20.0)  # AOTInductor and fast: the loss alone


def _matrix(cases):  # type: ignore[no-untyped-def]
    params = []
    for net, loss, alone in cases:
        for name, backend in BACKENDS.items():
            marks = [getattr(pytest.mark, m) for m in backend.markers]
            if not _default(backend, loss, alone):
                marks.append(pytest.mark.exhaustive if backend.cost >= SLOW_COST else pytest.mark.slow)
            params.append(pytest.param(net, loss, name, marks=marks,
                                       id="{}-{}-{}".format(net or "alone", loss, name)))
    return params


def _large_in_ci(backend: Backend) -> bool:
    return backend.reference or (backend.exported and backend.cost < SLOW_COST and backend is _first_exported())


def _first_exported() -> Backend:
    return next(b for b in BACKENDS.values() if b.exported and b.device == "cpu")


_CASES = [("seed", name, False) for name in LOSSES] + [(None, name, True) for name in LOSSES] + [
    (spec.name, spec.loss, False) for spec in NETS.values() if spec.name != "seed"]


def _check(report: ParityReport, backend: str) -> None:
    rows = _rows(report, backend)
    ok, reason = BACKENDS[backend].available()
    if not ok:
        assert [r.status for r in rows] == ["unavailable"] and rows[0].detail == reason
        return
    failures = ["{} {} {}: {}".format(r.case, r.output, r.status, r.detail) for r in rows if r.failed]
    assert not failures, "\n".join(failures)
    statuses = {r.status for r in rows}
    assert statuses <= {"pass", "unsupported", "skipped"}
    if BACKENDS[backend].supports_autograd and "skipped" not in statuses:
        assert "unsupported" not in statuses and any(r.output == "dpred" for r in rows)


@pytest.mark.parametrize("net, loss, backend", _matrix(_CASES))
def test_matrix(net: str, loss: str, backend: str) -> None:
    case = make_case(net, loss, batch=7)
    for batch in (7, 1):  # one preparation serves both
        c = case if batch == 7 else case.with_batch(batch)
        _check(verify(c.net, c.loss, c.inputs, c.targets, [backend], label=c.label), backend)


def _full_shape_params():  # type: ignore[no-untyped-def]
    params = []
    for p in _matrix([c for c in _CASES if c[0] in (None, "seed")]):
        net, loss, backend = p.values
        if BACKENDS[backend].device != "cpu":
            continue
        in_ci = net is None and _large_in_ci(BACKENDS[backend]) and BACKENDS[backend].device == "cpu"
        marks = [m for m in p.marks if m.name not in ("slow", "exhaustive")]
        marks.append(pytest.mark.slow if in_ci else pytest.mark.exhaustive)
        params.append(pytest.param(net, loss, backend, marks=marks, id=p.id))
    return params


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("net, loss, backend", _full_shape_params())
def test_matrix_full_shapes(net: str, loss: str, backend: str, dtype: torch.dtype) -> None:
    case = make_case(net, loss, batch=1, dtype=dtype)
    batches = [1, 7, 64]
    if net is None and LOSSES[loss].elementwise:
        batches.append(2 ** 20)
    for batch in batches:
        c = case if batch == 1 else case.with_batch(batch)
        _check(verify(c.net, c.loss, c.inputs, c.targets, [backend], label=c.label), backend)


@pytest.mark.onnx
def test_one_backend_cannot_leave_the_net_in_training_mode_for_the_next() -> None:
    # verify's NetWithLoss wrapper was created in training mode; the TorchScript-based exporter
    # restored "its" mode recursively and so put the net's Dropout in training for every backend
    # after it (onnx-ref's rows at the first batch of mlp+cross_entropy, in the full matrix only).
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 16), nn.Dropout(0.5), nn.Linear(16, 1)).eval()
    x, target = torch.randn(3, 5), torch.randn(3, 1)
    report = verify(net, L.MSELoss(), x, target, ["onnx-legacy", "onnx-ref"])
    assert not any(m.training for m in net.modules())
    rows = {(r.backend, r.output): r.status for r in report.rows}
    assert rows[("onnx-ref", "loss")] == "pass" and rows[("onnx-ref", "step.loss")] == "pass"
    assert report.ok, str(report)


# ---------------------------------------------------------------------------------------------
# the rule's numbers, pinned (a changed factor, floor or reference dtype must fail here)
# ---------------------------------------------------------------------------------------------
def _judged(ratio: float) -> dict:
    """A float32 output whose eager error against float64 is ~1e-4 and the backend's ``ratio``
    times that, far outside assert_close's float32 tolerance of eager."""
    reference = torch.tensor([1.0], dtype=torch.float64)
    expected = torch.tensor([1.0001], dtype=torch.float32)
    err_eager = float(expected.double() - reference)
    actual = torch.tensor([1.0 + ratio * err_eager], dtype=torch.float32)
    return judge(actual, expected, reference)


@pytest.mark.parametrize("ratio, status, clause", [(0.0, "pass", 2), (1.5, "pass", 2), (1.99, "pass", 2),
                                                   (2.01, "fail", None), (2.5, "fail", None), (19.0, "fail", None)])
def test_clause_two_allows_twice_eagers_error_and_no_more(ratio: float, status: str, clause: object) -> None:
    out = _judged(ratio)
    assert out["status"] == status and out.get("clause") == clause, out
    if status == "pass":
        assert out["ratio"] == pytest.approx(ratio, abs=0.01)


def test_clause_two_floor_is_a_few_ulps_of_the_reference() -> None:
    reference = torch.tensor([1000.0], dtype=torch.float64)
    expected = torch.tensor([1000.0], dtype=torch.float32)  # eager exact: clause 2 has only its floor
    ulp = torch.finfo(torch.float32).eps * 1000.0
    inside = judge(torch.tensor([1000.0 + 3 * ulp]), expected, reference, tolerance=Tolerance(0.0, 0.0, "test"))
    outside = judge(torch.tensor([1000.0 + 6 * ulp]), expected, reference, tolerance=Tolerance(0.0, 0.0, "test"))
    assert inside["status"] == "pass" and inside["clause"] == 2
    assert outside["status"] == "fail"


def test_verify_builds_its_reference_in_float64() -> None:
    # err64 of eager's own rows is eager float32 against an independent float64 computation from
    # the same inputs: a reference built in float32 would give 0 here (or another number)
    gen = torch.Generator().manual_seed(3)
    pred, target = torch.randn(4096, 1, generator=gen), torch.randn(4096, 1, generator=gen)
    report = verify(None, L.MSELoss(), pred, target, ["eager"])
    rows = {r.output: r for r in report.rows}
    exact = torch.nn.functional.mse_loss(pred.double(), target.double())
    own = torch.nn.functional.mse_loss(pred, target).double()
    assert float((own - exact).abs()) > 0
    assert rows["loss"].err_eager64 == pytest.approx(float((own - exact).abs()), rel=1e-9)
    grad64 = 2 * (pred.double() - target.double()) / pred.numel()
    grad32 = (2 * (pred - target) / pred.numel()).double()
    assert rows["dpred"].err_eager64 == pytest.approx(float((grad32 - grad64).abs().max()), rel=1e-6, abs=1e-15)


def test_verify_train_step_uses_the_given_lr() -> None:
    torch.manual_seed(0)
    net = nn.Linear(3, 1)
    x, t = torch.randn(5, 3), torch.randn(5, 1)
    report = verify(net, L.MSELoss(), x, t, ["eager", "script"], lr=0.37)
    assert report.ok, str(report)
    net.zero_grad()
    L.MSELoss()(net(x), t).backward()
    ref = verify(net, L.MSELoss(), x, t, ["eager"], lr=0.37)
    assert report.cases[0]["lr"] == ref.cases[0]["lr"] == 0.37
    # the eager reference's updated weight is w - 0.37 * grad, computed independently here
    from compile_losses.backends import reference_for

    step = reference_for("cpu").prepare_train_step(net, L.MSELoss(), (x, t), 0.37)(x, t)
    torch.testing.assert_close(step.new_params["weight"], net.weight.detach() - 0.37 * net.weight.grad)
