"""The compile audit says what caused each recompilation (the failed guard, the user line, the
torch frame that added it) and tells user-avoidable causes (graph breaks, an ``if`` on a size in
user code) from compiler-internal ones (a fake kernel's or inductor's own size guard). The first
kind is the ``recompiles`` status (a fact about the user's code: failing where required, as graph
breaks do); a strict audit fails on either kind."""
import pytest
import torch
from torch import Tensor, nn

from backend_params import SLOW_COST
from compile_losses.backends import BACKENDS
from compile_losses.cli import main
from compile_losses.parity import COMPILER, USER, compile_audit, verify
from compile_losses.parity.audit import _classify
from compile_losses.registry import NETS

pytestmark = pytest.mark.compile

# the cheapest audited-capable compiler that traces the backward (aot_eager), and inductor's
_CHEAP = next(n for n, b in BACKENDS.items() if "compile" in b.markers and b.cost < SLOW_COST
              and b.device == "cpu" and b.supports_autograd)
_INDUCTOR = next(n for n, b in BACKENDS.items() if b.audited and b.device == "cpu"
                 and getattr(b, "compiler", None) == "inductor")


class SizeBranchLoss(nn.Module):
    """Branches in Python on the batch size: dynamo guards the size, so batch 64 recompiles."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        if input.shape[0] > 10:
            return ((input - target) ** 2).mean()
        return (input - target).abs().mean()


class ValueLoss(nn.Module):
    """Converts a tensor's value to a Python int: a graph break."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return ((input - target) ** 2).mean() * int(target.sum() > 0)


def _pair(n: int):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(n)
    return torch.randn(n, 1, generator=g), torch.randn(n, 1, generator=g)


def test_a_size_branch_in_user_code_is_a_user_avoidable_recompile() -> None:
    audit = compile_audit(SizeBranchLoss(), _pair, backend=_CHEAP)
    assert audit["status"] == "recompiles" and audit["recompiles"] == 1, audit
    assert (audit["user_recompiles"], audit["compiler_recompiles"]) == (1, 0), audit
    (cause,) = audit["recompile_causes"]
    assert cause["kind"] == USER and cause["batch"] == 64, cause
    assert "input.shape[0] > 10" in cause["source"] and "forward" in cause["source"], cause
    assert cause["frame"].startswith("_dynamo"), cause  # dynamo ran the user's `if`
    assert "user-avoidable" in audit["detail"] and "input.shape[0] > 10" in audit["detail"]
    assert "test_compile_audit.py:" in audit["detail"]  # the user's own line


def test_a_strict_audit_fails_a_user_avoidable_recompile() -> None:
    audit = compile_audit(SizeBranchLoss(), _pair, backend=_CHEAP, strict=True)
    assert audit["status"] == "fail" and audit["user_recompiles"] == 1, audit
    assert "failing under strict" in audit["detail"], audit


@pytest.mark.parametrize("options,fails", [({}, False), ({"require": _CHEAP}, True), ({"strict_audit": True}, True),
                                           ({"require": "eager"}, False)])
def test_verify_reports_a_users_recompiles_and_fails_only_where_asked(options, fails) -> None:  # type: ignore[no-untyped-def]
    """A user's loss whose values and gradients pass and whose only finding is a recompile on its
    own size branch: ``verify`` reports it and passes, unless the audited backend is required or
    the audit strict."""
    report = verify(None, SizeBranchLoss(), *_pair(3), backends=["eager", _CHEAP], audit=_CHEAP, **options)
    (row,) = [r for r in report.rows if r.output == "audit"]
    assert row.status == ("fail" if options.get("strict_audit") else "recompiles"), row
    assert all(r.status == "pass" for r in report.rows if r.output != "audit"), report
    assert report.ok is not fails and row.failed is fails, report
    assert "input.shape[0] > 10" in row.detail


def test_a_python_value_conversion_is_a_user_avoidable_graph_break() -> None:
    audit = compile_audit(ValueLoss(), _pair, backend=_CHEAP)
    assert audit["status"] == "graph-breaks" and audit["graph_breaks"] >= 1, audit
    assert audit["detail"].startswith("user-avoidable fullgraph: ") and "graph break" in audit["detail"]


@pytest.mark.parametrize("strict", [False, True])
def test_convsegs_fake_conv_kernel_guard_is_compiler_internal(strict: bool) -> None:
    """torch's fake conv kernel guards a dynamic batch as ``2 <= batch <= 15``: batch 17 compiles
    once more, which no user code can avoid; it fails the audit only when strict."""
    torch.manual_seed(0)
    net = NETS["convseg"].build().eval()
    audit = compile_audit(net, lambda n: (NETS["convseg"].example_input(n, seed=n),), batches=(5, 11, 17),
                          backend=_CHEAP, strict=strict)
    assert audit["recompiles"] == 1 and (audit["user_recompiles"], audit["compiler_recompiles"]) == (0, 1), audit
    (cause,) = audit["recompile_causes"]
    assert cause["kind"] == COMPILER and cause["batch"] == 17
    assert "<= 15" in cause["guard"] and "fake_impls" in cause["frame"] and "conv" in cause["source"], cause
    assert audit["status"] == ("fail" if strict else "pass"), audit
    assert "compiler-internal" in audit["detail"]


# Guard lines as torch 2.13's dynamo records them (torch._dynamo.utils.guard_failures), the parser's input.
_INDUCTOR_MM = ("2 <= inputs[0].size()[0] <= 24  # return F.linear(input, self.weight, self.bias)  # "
                "nn/modules/linear.py:134 in forward (user code shown is first use of this value--the guard itself "
                "is not due user code but due to 0/1 specialization in the framework; to avoid specialization try "
                "torch._dynamo.decorators.mark_unbacked(tensor, dim)) and (_inductor/decomposition.py:454 in mm)")
_USER_IF = ("Eq(s0, 64)  # if x.shape[0] == 64:  # home/me/proj/losses.py:9 in forward "
            "(_dynamo/variables/tensor.py:2606 in evaluate_expr)")


@pytest.mark.parametrize("line, kind, frame", [
    (_INDUCTOR_MM, COMPILER, "_inductor/decomposition.py:454 in mm"),
    (_USER_IF, USER, "_dynamo/variables/tensor.py:2606 in evaluate_expr"),
    ("L['self'].scale == 2.0", USER, None),  # a Python attribute's value: the user's to change
])
def test_classify_reads_the_guard_its_source_and_the_frame_that_added_it(line: str, kind: str, frame: str) -> None:
    got = _classify(line)
    assert (got["kind"], got["frame"]) == (kind, frame), got
    assert got["guard"] == line.split("  #")[0]


def test_verify_option_audits_the_case() -> None:
    """``verify(..., audit=...)`` audits the case itself: every value and gradient passes, the
    user-avoidable recompilation of a required backend fails the report as its own row."""
    pred, target = _pair(4)
    report = verify(None, SizeBranchLoss(), pred, target, backends=[_CHEAP], audit=_CHEAP, require=_CHEAP)
    (audit,) = report.audits
    assert audit["user_recompiles"] == 1 and not report.ok, report
    assert [r.output for r in report.failures] == ["audit"], report
    assert "user-avoidable" in str(report)


@pytest.mark.slow
def test_inductors_own_size_guard_on_a_user_net_is_compiler_internal() -> None:
    """The issue's case: a user net whose values and gradients all pass, recompiled by inductor's
    own matmul decomposition guard on the batch; it no longer fails the audit, strict fails it."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))
    from compile_losses.nets import NetWithLoss
    from compile_losses.losses import MSELoss

    module = NetWithLoss(net, MSELoss(), n_targets=1)
    make = lambda n: (torch.randn(n, 3), torch.randn(n, 1))  # noqa: E731
    audit = compile_audit(module, make, backend=_INDUCTOR)
    assert audit["recompiles"] >= 1 and audit["user_recompiles"] == 0, audit
    assert audit["compiler_recompiles"] == audit["recompiles"], audit
    # added by inductor's decomposition, or re-checked by AOTAutograd's cache when the graph is
    # loaded from it: a torch frame outside dynamo's tracing of Python either way
    assert all(c["frame"].startswith(("_inductor", "_functorch")) for c in audit["recompile_causes"]), audit
    assert all("linear" in c["source"] for c in audit["recompile_causes"]), audit
    assert audit["status"] == "pass", audit
    strict = compile_audit(module, make, backend=_INDUCTOR, strict=True)
    assert strict["status"] == "fail", strict


def test_cli_help_names_strict_audit(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["verify", "--help"])
    assert "--strict-audit" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("strict", [False, True])
def test_cli_audits_with_and_without_strict(strict: bool, capsys: pytest.CaptureFixture) -> None:
    args = ["verify", "--net", "none", "--loss", "mse", "--backends", _INDUCTOR, "--dtype", "float32",
            "--batch", "3", "--large", "0", "--quiet"] + (["--strict-audit"] if strict else [])
    assert main(args) == 0  # mse alone recompiles for neither reason
    out = capsys.readouterr().out
    assert "torch.compile audit" in out and "recompiles after the first dynamic compile: 0" in out
