"""The parity rule's every decision, pinned on tensors built by hand (no backend runs here).

These tests are what the mutation run (``scripts/mutation.sh rule``) holds ``parity/rule.py`` to:
each branch of :func:`judge`, each number it reports, the statuses' JSON spellings, the float64
copies of a case and the bitwise self-agreement check. Every expected value is worked out here from
the planted inputs, never read back from the code under test.
"""
import math

import pytest
import torch
from torch import nn

from compile_losses.parity import rule
from compile_losses.parity.rule import judge
from compile_losses.registry import Tolerance

F32 = torch.float32
REF = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)


def test_status_spellings_are_the_json_contract() -> None:
    assert (rule.PASS, rule.FAIL, rule.ERROR, rule.NONFINITE, rule.NONDET) == (
        "pass", "fail", "error", "non-finite", "nondeterministic")
    assert (rule.UNAVAILABLE, rule.SKIPPED, rule.UNSUPPORTED) == ("unavailable", "skipped", "unsupported")
    assert rule.FAILING == ("fail", "error", "non-finite", "nondeterministic")
    assert (rule.UNCOMPILABLE, rule.GRAPH_BREAKS, rule.RECOMPILES) == ("uncompilable", "graph-breaks", "recompiles")
    assert rule.REQUIRABLE == ("uncompilable", "graph-breaks", "recompiles")
    assert rule.ULPS == 4


# --- refusals before any number -----------------------------------------------------------------
def test_a_non_tensor_fails_and_says_what_it_got() -> None:
    assert judge(0.5, REF.float(), REF) == {"status": "fail", "detail": "returned float, not a tensor"}


def test_a_tolerance_is_reported_even_on_a_refusal() -> None:
    out = judge([1.0], REF.float(), REF, tolerance=Tolerance(rtol=0.25, atol=1e-3, reason="why"))
    assert out == {"tolerance": "rtol=0.25 atol=0.001: why", "status": "fail", "detail": "returned list, not a tensor"}


def test_shape_and_dtype_mismatches_fail_with_both_sides() -> None:
    eager = REF.float()
    assert judge(eager.reshape(3, 1), eager, REF) == {"status": "fail", "detail": "shape (3, 1) where eager gives (3,)"}
    assert judge(eager.double(), eager, REF) == {
        "status": "fail", "detail": "dtype torch.float64 where eager gives torch.float32"}


@pytest.mark.parametrize("where, name", [(0, "backend"), (1, "eager"), (2, "float64 eager")])
def test_a_non_finite_value_anywhere_is_its_own_status_naming_the_side(where: int, name: str) -> None:
    sides = [REF.float(), REF.float(), REF.clone()]
    sides[where] = sides[where].clone()
    sides[where][0] = math.inf
    sides[where][2] = math.nan
    out = judge(*sides)
    assert out == {"status": "non-finite", "detail": "{} gives 2 non-finite value(s)".format(name)}


def test_integer_outputs_are_compared_not_checked_for_finiteness() -> None:
    t = torch.tensor([1, 2, 3])
    out = judge(t.clone(), t, t)
    assert out["status"] == "pass" and out["clause"] == 1 and out["max_abs"] == 0.0


def test_empty_outputs_pass_clause_one_with_zero_error() -> None:
    e = torch.zeros(0, 2)
    assert judge(e.clone(), e, e.double()) == {"status": "pass", "clause": 1, "max_abs": 0.0, "max_rel": 0.0,
                                                "detail": "empty"}


# --- the numbers every judged row carries ------------------------------------------------------
def test_errors_ratio_and_relative_error_are_the_hand_computed_ones() -> None:
    reference = torch.tensor([1.0, 4.0, 0.0], dtype=torch.float64)
    expected = torch.tensor([1.0, 4.5, 0.0], dtype=F32)   # eager: off by 0.5 at [1]
    actual = torch.tensor([1.25, 4.0, 0.0], dtype=F32)    # backend: off by 0.25 at [0], 0.5 from eager at [1]
    out = judge(actual, expected, reference)
    assert out["max_abs"] == 0.5                 # |4.0 - 4.5|
    assert out["max_rel"] == 0.25                # 0.25 / 1.0 beats 0.5 / 4.5
    assert out["err_backend64"] == 0.25 and out["err_eager64"] == 0.5
    assert out["ratio"] == 0.5
    assert out["status"] == "pass" and out["clause"] == 2
    assert "cosine" not in out                   # values carry no cosine


def test_relative_error_where_eager_is_zero_is_zero_or_infinite() -> None:
    zero = torch.zeros(2, dtype=F32)
    same = judge(zero.clone(), zero, zero.double(), tolerance=Tolerance(0.0, 0.0, "exact"))
    assert same["max_rel"] == 0.0 and same["ratio"] == 1.0 and same["clause"] == 1
    off = judge(torch.tensor([0.0, 1e-3]), zero, zero.double())
    assert off["max_rel"] == math.inf
    # eager exact against float64 and the backend not: the ratio is infinite and the row fails
    assert off["ratio"] == math.inf and off["status"] == "fail"


def test_cosine_of_gradients() -> None:
    expected = torch.tensor([1.0, 0.0], dtype=F32)
    actual = torch.tensor([1.0, 1.0], dtype=F32)
    out = judge(actual, expected, expected.double(), gradient=True)
    assert out["cosine"] == pytest.approx(1 / math.sqrt(2), rel=1e-12)
    anti = judge(-expected, expected, expected.double(), gradient=True)
    assert anti["cosine"] == pytest.approx(-1.0, rel=1e-12)
    zeros = torch.zeros(3, dtype=F32)
    assert judge(zeros.clone(), zeros, zeros.double(), gradient=True)["cosine"] == 1.0
    # one side zero, the other not: cosine 0
    one_zero = judge(torch.tensor([0.0, 0.0, 1e-3]), zeros, zeros.double(), gradient=True)
    assert one_zero["cosine"] == 0.0
    reverse = judge(zeros.clone(), torch.tensor([0.0, 0.0, 1e-3]), torch.tensor([0.0, 0.0, 1e-3], dtype=torch.float64),
                    gradient=True)
    assert reverse["cosine"] == 0.0


@pytest.mark.parametrize("scale", [1e-160, 1.2e-150, 1e200])
def test_cosine_of_tiny_and_huge_gradients_neither_underflows_nor_overflows(scale: float) -> None:
    g = torch.tensor([3.0, 4.0], dtype=torch.float64) * scale   # |g|^2 under- or overflows float64
    assert judge(g.clone(), g, g, gradient=True)["cosine"] == pytest.approx(1.0, rel=1e-12)
    h = torch.tensor([4.0, -3.0], dtype=torch.float64) * scale  # orthogonal
    assert judge(h, g, g, gradient=True)["cosine"] == pytest.approx(0.0, abs=1e-12)


# --- clause 1 ------------------------------------------------------------------------------------
def test_clause_one_is_assert_close_default_for_the_dtype() -> None:
    # float32 defaults: rtol 1.3e-6, atol 1e-5. 1 + 2e-6 is inside (|d| <= 1e-5 + 1.3e-6), 1 + 2e-5 is not.
    reference = torch.tensor([1.0], dtype=torch.float64)
    expected = torch.tensor([1.0], dtype=F32)
    inside = judge(torch.tensor([1.0 + 2e-6]), expected, reference)
    assert inside["status"] == "pass" and inside["clause"] == 1
    outside = judge(torch.tensor([1.0 + 2e-5]), expected, reference)
    assert outside["status"] == "fail" and "clause" not in outside


def test_a_registry_tolerance_replaces_both_rtol_and_atol() -> None:
    reference = torch.tensor([100.0], dtype=torch.float64)
    expected = torch.tensor([100.0], dtype=F32)
    actual = torch.tensor([100.5], dtype=F32)
    # |d| = 0.5: inside atol 0.6 alone, inside rtol 0.01 alone (0.01 * 100 = 1), outside their sum at 0.3 + 0.001 * 100
    assert judge(actual, expected, reference, tolerance=Tolerance(0.0, 0.6, "a"))["clause"] == 1
    assert judge(actual, expected, reference, tolerance=Tolerance(0.01, 0.0, "r"))["clause"] == 1
    tight = judge(actual, expected, reference, tolerance=Tolerance(0.001, 0.3, "t"))
    assert tight["status"] == "fail" and tight["tolerance"] == "rtol=0.001 atol=0.3: t"


# --- clause 2 ------------------------------------------------------------------------------------
def test_clause_two_holds_exactly_at_twice_eagers_error_plus_floor() -> None:
    # float64 throughout so every number is exact: reference 0, eager off by 2^-10, floor 4 * eps64 * tiny-free max|r|.
    reference = torch.tensor([0.0, 1.0], dtype=torch.float64)
    e = 2.0 ** -10
    expected = torch.tensor([e, 1.0], dtype=torch.float64)
    floor = 4 * torch.finfo(torch.float64).eps * 1.0
    at = judge(torch.tensor([-2 * e - floor, 1.0], dtype=torch.float64), expected, reference)
    assert at["err_backend64"] == 2 * e + floor
    assert at["status"] == "pass" and at["clause"] == 2
    beyond = judge(torch.tensor([-2 * e - 2 * floor, 1.0], dtype=torch.float64), expected, reference)
    assert beyond["status"] == "fail"
    assert beyond["detail"] == "error vs float64 {:.3g} > 2 x eager's {:.3g} + 4 ulps ({:.3g})".format(
        2 * e + 2 * floor, e, floor)


def test_clause_two_floor_uses_the_dtypes_tiny_when_the_reference_is_zero() -> None:
    reference = torch.zeros(1, dtype=torch.float64)
    expected = torch.zeros(1, dtype=F32)
    tiny = torch.finfo(F32).tiny
    floor = 4 * torch.finfo(F32).eps * tiny
    ok = judge(torch.tensor([floor * 0.5], dtype=F32), expected, reference, tolerance=Tolerance(0.0, 0.0, "exact"))
    assert ok["status"] == "pass" and ok["clause"] == 2
    bad = judge(torch.tensor([tiny], dtype=F32), expected, reference, tolerance=Tolerance(0.0, 0.0, "exact"))
    assert bad["status"] == "fail"


def test_clause_two_scales_its_floor_with_the_largest_reference_magnitude() -> None:
    # eager exact; backend off by 3 ulps of the largest |r| (at another element): inside 4 ulps of max|r|
    reference = torch.tensor([1.0, -1024.0], dtype=torch.float64)
    expected = reference.float()
    ulp = torch.finfo(F32).eps * 1024.0
    actual = torch.tensor([1.0 + 3 * ulp, -1024.0], dtype=F32)
    out = judge(actual, expected, reference, tolerance=Tolerance(0.0, 0.0, "exact"))
    assert out["status"] == "pass" and out["clause"] == 2


def test_eager_variants_widen_eagers_error_to_their_largest_and_say_so() -> None:
    # float64 so the numbers are exact: eager 2^-10 off in its own order, 2^-6 in another order
    reference = torch.tensor([0.0, 1.0], dtype=torch.float64)
    e, v = 2.0 ** -10, 2.0 ** -6
    expected = torch.tensor([e, 1.0], dtype=torch.float64)
    variants = [torch.tensor([-e / 2, 1.0], dtype=torch.float64), torch.tensor([v, 1.0], dtype=torch.float64)]
    floor = 4 * torch.finfo(torch.float64).eps
    actual = torch.tensor([2 * v, 1.0], dtype=torch.float64)
    alone = judge(actual, expected, reference)
    assert alone["status"] == "fail" and alone["err_eager64"] == e
    out = judge(actual, expected, reference, eager_variants=variants)
    assert out["status"] == "pass" and out["clause"] == 2 and out["err_eager64"] == v
    assert out["detail"] == "eager's error {:.3g} is the largest over 3 evaluation orders ({:.3g} in its own)".format(v, e)
    beyond = judge(torch.tensor([2 * v + 2 * floor, 1.0], dtype=torch.float64), expected, reference,
                   eager_variants=variants)
    assert beyond["status"] == "fail" and beyond["err_eager64"] == v
    # within 2x eager's own error + floor (at it exactly): no detail, whatever the variants say
    own = judge(torch.tensor([-2 * e - floor, 1.0], dtype=torch.float64), expected, reference, eager_variants=variants)
    assert own["err_backend64"] == 2 * e + floor
    assert own["status"] == "pass" and own["clause"] == 2 and "detail" not in own
    # just beyond 2x eager's own (2.5x), passed by a variant at 2x: the detail says so
    mid = judge(torch.tensor([2.5 * e, 1.0], dtype=torch.float64), expected, reference,
                eager_variants=[torch.tensor([2 * e, 1.0], dtype=torch.float64)])
    assert mid["status"] == "pass" and mid["err_eager64"] == 2 * e and "largest over 2" in mid["detail"]
    # a variant closer to float64 than eager never narrows eager's error
    close = judge(actual, expected, reference, eager_variants=[reference.clone()])
    assert close["status"] == "fail" and close["err_eager64"] == e


# --- the float64 case and the self-agreement check ------------------------------------------------
def test_float64_case_widens_floats_keeps_integers_and_copies_the_modules() -> None:
    net, loss = nn.Linear(2, 1), nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0]))
    x, idx = torch.randn(3, 2), torch.tensor([0, 1, 1])
    net64, loss64, case, lg = rule.float64_case(net, loss, (x, idx), (x.clone(), idx))
    assert net64 is not net and net64.weight.dtype == torch.float64 and net.weight.dtype == F32
    assert torch.equal(net64.weight, net.weight.double())
    assert loss64 is not loss and loss64.weight.dtype == torch.float64
    assert loss.weight.dtype == F32  # the original's buffers are not converted with the copy
    assert case[0].dtype == torch.float64 and torch.equal(case[0], x.double())
    assert case[1].dtype == torch.int64 and lg[1].dtype == torch.int64
    assert lg[0].dtype == torch.float64
    none_net, _, _, _ = rule.float64_case(None, loss, (x,), (x,))
    assert none_net is None


def test_bitwise_equal_tells_every_kind_of_difference() -> None:
    a = torch.tensor([1.0, -0.0])
    assert rule._bitwise_equal(a, a.clone())
    assert not rule._bitwise_equal(a, torch.tensor([1.0, 0.0]))          # -0.0 and 0.0 differ in bits
    nan = torch.tensor([math.nan])
    assert rule._bitwise_equal(nan, nan.clone())                          # the same NaN agrees with itself
    assert not rule._bitwise_equal(a, a.double())
    assert not rule._bitwise_equal(a, a.reshape(2, 1))
    assert rule._bitwise_equal(torch.tensor([1, 2]), torch.tensor([1, 2]))
    assert not rule._bitwise_equal(torch.tensor([1, 2]), torch.tensor([1, 3]))
    h = torch.tensor([1.0, 2.0], dtype=torch.float16)
    assert rule._bitwise_equal(h, h.clone()) and not rule._bitwise_equal(h, h + 1)
    assert rule._bitwise_equal(a.double(), a.double().clone()) and not rule._bitwise_equal(a.double(), a.double() * 2)
    assert rule._bitwise_equal({"x": a, "y": (a, [a])}, {"x": a.clone(), "y": (a.clone(), [a.clone()])})
    assert not rule._bitwise_equal({"x": a}, {"z": a})
    assert not rule._bitwise_equal({"x": a, "y": a}, {"x": a, "y": a + 1})
    assert not rule._bitwise_equal((a, a), (a,))
    assert not rule._bitwise_equal([a, a], [a, a * 2])
