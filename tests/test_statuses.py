"""Statuses for what a compiler cannot take (``uncompilable``) and for graph breaks (``graph-breaks``):
facts about the user's code, with the compiler's reason and the user's source line, that fail a run
only for the backends the user requires."""
import warnings
from pathlib import Path

import torch

from compile_losses.cli import main
from compile_losses.parity import verify
from compile_losses.parity.breaks import breaks_detail, graph_breaks_at
from compile_losses.parity.rule import GRAPH_BREAKS, PASS, UNCOMPILABLE

ROUGH = Path(__file__).parent / "userpkg" / "rough.py"


def _line(marker: str) -> int:
    return next(i for i, text in enumerate(ROUGH.read_text().splitlines(), 1) if marker in text)


def _case() -> tuple:
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)


def test_a_loss_torchscript_refuses_is_uncompilable_with_its_line_and_passes_unless_required() -> None:
    from userpkg.rough import UnscriptableLoss

    pred, target = _case()
    report = verify(None, UnscriptableLoss(), pred, target, backends="eager,script")
    script = [r for r in report.rows if r.backend == "script"]
    assert script and all(r.status == UNCOMPILABLE for r in script), [(r.status, r.detail) for r in script]
    where = "rough.py:{}:".format(_line("SCRIPT-LINE"))
    assert all(where in r.detail and "TorchScript" in r.detail for r in script), [r.detail for r in script]
    assert all(r.status == PASS for r in report.rows if r.backend == "eager")
    assert report.ok and not report.failures
    required = verify(None, UnscriptableLoss(), pred, target, backends="eager,script", require=["script"])
    assert not required.ok and {r.backend for r in required.failures} == {"script"}
    assert "uncompilable (required)" in str(required)
    assert verify(None, UnscriptableLoss(), pred, target, backends="eager,script", require="eager").ok


def test_a_loss_torchscript_would_miscompile_is_uncompilable_with_the_folded_constant_and_its_line() -> None:
    """``str()`` of an Enum member scripts to "Enum<Weighting.SQUARE>" (Python: "square"): the
    scripted loss is 3x off, so the adapter refuses it from the graph, naming the line."""
    from userpkg.rough import EnumOptionLoss

    pred, target = _case()
    loss = EnumOptionLoss()
    with torch.no_grad(), warnings.catch_warnings():  # the miscompilation itself: the refusal is no guess
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit\.script.*")
        assert not torch.allclose(torch.jit.script(loss)(pred, target), loss(pred, target))
    report = verify(None, EnumOptionLoss(), pred, target, backends="eager,script")
    script = [r for r in report.rows if r.backend == "script"]
    assert script and all(r.status == UNCOMPILABLE for r in script), [(r.status, r.detail) for r in script]
    where = "rough.py:{}:".format(_line("ENUM-LINE"))
    assert all(where in r.detail and "'Enum<Weighting.SQUARE>'" in r.detail for r in script), [r.detail for r in script]
    assert report.ok
    assert not verify(None, EnumOptionLoss(), pred, target, backends="eager,script", require=["script"]).ok
    # refused whatever the option: the scripted code is wrong for "square" even where "ones" agrees
    ones = verify(None, EnumOptionLoss("ones"), pred, target, backends="eager,script")
    assert ones.ok and {r.status for r in ones.rows if r.backend == "script"} == {UNCOMPILABLE}


def test_a_torchscript_archive_of_a_miscompiled_loss_is_traced_instead(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from compile_losses.backends.torchscript import load_torchscript, save_torchscript
    from userpkg.rough import EnumOptionLoss

    pred, target = _case()
    info = save_torchscript(EnumOptionLoss(), (pred, target), tmp_path / "loss.pt")
    assert info["method"].startswith("trace (script failed: ") and "miscompiled" in info["method"], info
    torch.testing.assert_close(load_torchscript(str(tmp_path / "loss.pt"))(pred, target), EnumOptionLoss()(pred, target))


def test_verify_exits_0_unless_the_uncompilable_backend_is_required(monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    argv = ["verify", "--net", "none", "--loss", "userpkg.rough:UnscriptableLoss", "--input", "float32[N,3]",
            "--target", "float32[N,3]", "--batch", "2", "--dtype", "float32", "--backends", "eager,script",
            "--no-audit", "--quiet"]
    assert main(argv) == 0
    assert "uncompilable" in capsys.readouterr().out
    assert main(argv + ["--require", "script"]) == 1
    assert main(argv + ["--require", "nosuch"]) == 2


def test_graph_breaks_are_reported_with_reason_and_the_users_line() -> None:
    from userpkg.rough import BranchyLoss

    found = graph_breaks_at(BranchyLoss(), _case())
    assert found["graph_breaks"] >= 1
    where = "rough.py:{}:".format(_line("BREAK-LINE"))
    assert any(b["source"] and where in b["source"] for b in found["breaks"]), found["breaks"]
    assert all(b["reason"] for b in found["breaks"])
    detail = breaks_detail(found)
    assert detail.startswith("fullgraph: ") and where in detail


def test_the_audit_gives_graph_breaks_its_own_status_and_the_catalogue_still_fails_on_them() -> None:
    from compile_losses.backends import BACKENDS
    from compile_losses.parity.audit import compile_audit
    from compile_losses.parity.report import Row

    from userpkg.rough import BranchyLoss

    name = next(n for n, b in BACKENDS.items() if b.audited and b.available()[0])
    entry = compile_audit(BranchyLoss(), lambda n: tuple(torch.randn(n, 3) for _ in range(2)), backend=name)
    assert entry["status"] == GRAPH_BREAKS and "rough.py:{}:".format(_line("BREAK-LINE")) in entry["detail"]
    assert not Row("c", name, "audit", GRAPH_BREAKS).failed  # a user's loss: reported, not failed
    assert Row("c", name, "audit", GRAPH_BREAKS, required=True).failed  # --require, or the registry's own losses
