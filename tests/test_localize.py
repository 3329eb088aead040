"""compile_losses.localize: the first diverging node of an exported graph, its repro, the self-test."""
import inspect
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import compile_losses as cl
from compile_losses.localize.inject import self_test

from localize_user_loss import RootLoss


def _eps_line() -> int:
    lines, start = inspect.getsourcelines(RootLoss.forward)
    return start + next(i for i, text in enumerate(lines) if "the epsilon line" in text)


def _eps_case():
    x = torch.randn(8, 1, generator=torch.Generator().manual_seed(0))
    y = x.clone()
    y[::2] += 0.5  # half the rows have pred == target: there the epsilon is the whole value
    return x, y


@pytest.fixture(scope="module")
def eps_localized(tmp_path_factory):
    x, y = _eps_case()
    repro = tmp_path_factory.mktemp("repro")
    return cl.localize(None, RootLoss(), x, y, backend="onnx", optimize=True, kinds=["forward", "loss_and_grad"],
                       repro_dir=str(repro))


@pytest.mark.slow
@pytest.mark.onnx
def test_the_optimizer_deletes_the_epsilon_here():
    """The premise of the worked example, checked on this torch/onnxscript: the Add exists in the
    graph exported without the optimizer and is gone with it."""
    from compile_losses.backends.onnx import onnx_program

    x, y = _eps_case()
    ops = {opt: [n.op_type for n in onnx_program(RootLoss(), (x, y), optimize=opt).model_proto.graph.node]
           for opt in (False, True)}
    assert "Add" in ops[False]
    assert "Add" not in ops[True]


@pytest.mark.onnx
@pytest.mark.parametrize("kind", ["forward", "loss_and_grad"])
def test_optimizer_deleted_epsilon_is_localized_to_the_add_and_the_users_line(eps_localized, kind):
    finding = eps_localized.finding(kind)
    assert finding.status == "diverges"
    node = finding.node
    assert node["op_type"] == "Add"
    assert node["fx_target"] == "torch.ops.aten.add.Tensor"
    assert node["source"]["file"] == os.path.abspath(inspect.getsourcefile(RootLoss))
    assert node["source"]["line"] == _eps_line()
    assert finding.fault == "exporter"  # the graph as exported diverges (onnxruntime's optimizer is not to blame)
    assert not eps_localized.ok


@pytest.mark.onnx
def test_repro_runs_standalone_without_compile_losses_or_torch(eps_localized, tmp_path):
    src = eps_localized.finding("forward").repro
    dest = tmp_path / "copied"
    shutil.copytree(src, dest)
    blocker = ("import sys, runpy; sys.modules['compile_losses'] = None; sys.modules['torch'] = None; "
               "runpy.run_path('repro.py', run_name='__main__')")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    done = subprocess.run([sys.executable, "-I", "-c", blocker], cwd=dest, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "reproduced: True" in done.stdout
    assert "float64:" in done.stdout and "eager:" in done.stdout and "backend:" in done.stdout
    found = json.loads((dest / "finding.json").read_text())
    assert found["node"]["op_type"] == "Add"


@pytest.mark.slow
@pytest.mark.onnx
def test_a_clean_case_is_clean_at_every_value():
    from compile_losses.resolve import make_case

    case = make_case("seed", "mse", batch=7)
    loc = cl.localize(case.net, case.loss, case.inputs, case.targets, backend="onnx")
    assert [g.kind for g in loc.graphs] == ["forward", "loss_and_grad", "train_step"]
    assert loc.ok, str(loc)
    for g in loc.graphs:
        assert g.status == "clean"
        assert all(level["compared"] > 0 for level in g.levels.values())


def test_a_backend_without_piecewise_graphs_says_so():
    from compile_losses.resolve import make_case

    case = make_case(None, "mse", batch=4)
    loc = cl.localize(case.net, case.loss, case.inputs, case.targets, backend="eager")
    assert {g.status for g in loc.graphs} == {"unsupported"}
    assert all("value by value" in g.detail for g in loc.graphs)


@pytest.mark.onnx
def test_self_test_tiny():
    """The default run's self-test: one case's graphs (the slow ones run more)."""
    result = self_test(4, seed=3, cases=((None, "charbonnier"),))
    assert result["trials"] == 4
    assert result["localized"] == 4, json.dumps(result["misses"], indent=1, default=str)
    assert set(result["by_graph"]) <= {"forward", "loss_and_grad"}


@pytest.mark.slow
@pytest.mark.onnx
def test_self_test_small():
    result = self_test(12, seed=3, cases=(("seed", "mse"), (None, "charbonnier")))
    assert result["trials"] == 12
    assert result["localized"] >= 11, json.dumps(result["misses"], indent=1, default=str)
    assert all(m["why"] for m in result["misses"])
    assert set(result["by_graph"]) <= {"forward", "loss_and_grad", "train_step"}


@pytest.mark.slow
@pytest.mark.onnx
@pytest.mark.parametrize("seed", [0, 1])
def test_self_test_200_faults_per_seed(seed, tmp_path):
    from compile_losses.cli import main

    out = tmp_path / "inject.json"
    assert main(["localize", "--inject", "200", "--seed", str(seed), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["trials"] == 200
    assert result["localized"] >= 180
    for kind, row in result["by_graph"].items():
        assert row["localized"] >= 0.9 * row["trials"], kind
    assert len(result["misses"]) == 200 - result["localized"]


@pytest.mark.onnx
def test_failing_rows_link_to_their_localization():
    """A failing row (here made by hand: the graphs themselves are fine) gets its graph's finding."""
    from compile_losses.localize.api import link_failures
    from compile_losses.parity.report import ParityReport, Row
    from compile_losses.resolve import make_case

    case = make_case(None, "mse", batch=5)
    report = ParityReport([Row(case.label, "onnx", "dpred", "fail"), Row(case.label, "eager", "loss", "fail"),
                           Row(case.label, "onnx", "loss", "pass", clause=1)])
    locs = link_failures(report, [case])
    assert len(locs) == 1
    onnx_row, eager_row, passing = report.rows
    assert onnx_row.localization["graph"] == "loss_and_grad"
    assert onnx_row.localization["status"] == "clean"
    assert eager_row.localization["status"] == "unsupported"
    assert passing.localization is None
    assert "localization" in report.to_json()


def test_verify_localize_refuses_all(capsys):
    from compile_losses.cli import main

    assert main(["verify", "--all", "--localize"]) == 2
    assert "--localize takes one --loss" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.compile
def test_an_inductor_only_backward_fault_is_localized_to_inductor_backward(monkeypatch):
    """A planted fault in inductor's lowering of aten.sign (twice the sign): L1's forward has no
    sign, its backward does (sgn, decomposed to sign), and only inductor lowers it."""
    import torch._inductor.config as inductor_config
    from torch._inductor import lowering

    from compile_losses.resolve import make_case

    aten = torch.ops.aten
    original = lowering.lowerings[aten.sign.default]

    def doubled(x):
        y = original(x)
        return lowering.lowerings[aten.add.Tensor](y, y)

    monkeypatch.setitem(lowering.lowerings, aten.sign.default, doubled)
    case = make_case(None, "l1", batch=7)
    with inductor_config.patch(fx_graph_cache=False):
        loc = cl.localize(case.net, case.loss, case.inputs, case.targets, backend="compile-dynamo", dynamic=(False,))
    finding = loc.finding("loss_and_grad")
    assert finding.status == "diverges", str(loc)
    assert finding.stage["stage"] == "inductor"
    assert finding.stage["graph"] == "backward"
    assert finding.stage["output"] == "dpred"
    assert finding.levels["static"]["aot_eager_decomp_partition"]["dpred"]["status"] == "pass"
    # inside inductor, torch's compiler bisector (the parity rule its test) names the lowering:
    # disabling lowerings (falling back to aten) fixes it, and bisecting them ends at the FX node sign
    b = finding.bisector
    assert b["status"] == "found", json.dumps(b, indent=1, default=str)
    assert (b["backend"], b["subsystem"], b["debug_info"]) == ("inductor", "lowerings", "sign")
    assert isinstance(b["bisect_number"], int)
    assert "compiler bisector: inductor / lowerings" in finding.line()
    assert "bisector" in loc.to_json()


@pytest.mark.script
def test_torchscript_stage_level_script_vs_trace():
    from localize_user_loss import ScriptedDiffers

    x = torch.randn(6, 1, generator=torch.Generator().manual_seed(1))
    y = torch.randn(6, 1, generator=torch.Generator().manual_seed(2))
    script = cl.localize(None, ScriptedDiffers(), x, y, backend="script").finding("loss_and_grad")
    trace = cl.localize(None, ScriptedDiffers(), x, y, backend="trace").finding("loss_and_grad")
    assert script.status == "diverges"
    assert script.stage == {"stage": "script", "graph": "forward", "dynamic": False, "output": "value"}
    assert trace.status == "clean"
    assert script.bisector is None  # torch's compiler bisector looks inside inductor only


@pytest.mark.compile
def test_a_perturbed_decomposition_is_drawn_from_the_ops_the_loss_reaches():
    """The cheap half of the decomposition trial (the slow self-test compiles): L1 reaches sgn
    (abs's backward), the one op of the drawn list it reaches, and the perturbation goes into the
    table inductor's select_decomp_table() serves."""
    import random

    from torch._inductor.decomposition import select_decomp_table

    from compile_losses.localize.inject import _ops_reached, _perturbation
    from compile_losses.resolve import make_case

    reached = _ops_reached(make_case(None, "l1", batch=5))
    assert torch.ops.aten.sgn.default in reached
    for seed in range(3):
        name, tables, op, what = _perturbation("decomposition", random.Random(seed), reached)
        assert (name, op) == ("sgn.default", torch.ops.aten.sgn.default)
        assert any(t is select_decomp_table() for t in tables)
    assert _perturbation("decomposition", random.Random(0), set()) is None


@pytest.mark.slow
@pytest.mark.compile
@pytest.mark.parametrize("fault", ["lowering", "decomposition"])
def test_self_test_perturbed_inductor_lowerings_and_decompositions(fault):
    result = self_test(2, seed=0, backends="compile-dynamo", cases=((None, "l1"), (None, "mse")),
                       compile_faults=(fault,))
    assert result["trials"] == 2
    assert result["by_fault"] == {fault: {"trials": 2, "localized": result["localized"]}}
    assert result["localized"] == 2, json.dumps(result["misses"], indent=1, default=str)
    expected = {"lowering": "inductor", "decomposition": "aot_eager_decomp_partition"}[fault]
    assert {t["found"] for t in result["results"]} == {expected}


@pytest.mark.onnx
def test_cli_localize_writes_json(tmp_path, capsys):
    from compile_losses.cli import main

    out = tmp_path / "loc.json"
    assert main(["localize", "--net", "none", "--loss", "mse", "--batch", "4", "--json", str(out)]) == 0
    found = json.loads(out.read_text())
    assert [g["kind"] for g in found[0]["graphs"]] == ["forward", "loss_and_grad"]
    assert all(g["status"] == "clean" for g in found[0]["graphs"])
    assert "clean" in capsys.readouterr().out


def test_cli_localize_refuses_a_bad_count(capsys):
    from compile_losses.cli import main

    assert main(["localize", "--inject", "0"]) == 2
    assert "--inject must be a positive integer, got 0" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.compile
def test_a_failing_compile_row_links_to_its_stage_bisection(monkeypatch):
    """verify's failing torch.compile row (a planted inductor-only fault) is localized by stage, not
    left 'unsupported'."""
    import torch._inductor.config as inductor_config
    from torch._inductor import lowering

    from compile_losses.localize.api import link_failures
    from compile_losses.resolve import make_case

    aten = torch.ops.aten
    original = lowering.lowerings[aten.sign.default]
    monkeypatch.setitem(lowering.lowerings, aten.sign.default,
                        lambda x: lowering.lowerings[aten.add.Tensor](original(x), original(x)))
    case = make_case(None, "l1", batch=7)
    with inductor_config.patch(fx_graph_cache=False):
        report = cl.verify(None, case.loss, case.inputs, case.targets, ["compile-dynamo"], label=case.label)
        failing = [r for r in report.failures if r.backend == "compile-dynamo"]
        assert failing, str(report)
        link_failures(report, [case])
    loc = failing[0].localization
    assert loc["status"] == "diverges", loc
    assert loc["stage"]["stage"] == "inductor" and loc["stage"]["graph"] == "backward"


def _legacy_seednet_case():
    from compile_losses.nets import SeedNet

    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    return SeedNet().eval(), torch.nn.MSELoss(), torch.randn(8, 32, generator=gen), torch.randn(8, 1, generator=gen)


@pytest.mark.onnx
def test_a_clean_legacy_graph_localizes_clean_at_module_level():
    net, loss, x, y = _legacy_seednet_case()
    loc = cl.localize(net, loss, x, y, backend="onnx-legacy")
    forward = loc.finding("forward")
    assert forward.status == "clean", str(loc)
    assert "module-level: legacy graphs carry no FX metadata" in forward.detail
    for level in ("disabled", "all"):
        # fc1, fc2, the net, the loss and the wrapper: each hooked output found and judged
        assert set(forward.levels[level]["modules"]) == {"/net/fc1", "/net/fc2", "/net", "/loss", "/"}
        assert forward.levels[level]["not_found"] == []
    # the legacy exporter writes no gradient graphs: said, never clean
    assert {g.status for g in loc.graphs if g.kind != "forward"} == {"unsupported"}


@pytest.mark.onnx
def test_a_planted_fault_in_fc2s_gemm_is_localized_to_fc2():
    import onnx
    from onnx import numpy_helper

    from compile_losses.backends import get_backends
    from compile_losses.localize.api import find_modules
    from compile_losses.localize.modules import module_reference

    net, loss, x, y = _legacy_seednet_case()
    got = get_backends(["onnx-legacy"])[0].module_graph(net, loss, (x, y))
    ref = module_reference("forward", got["model"], got["module"], (x, y))
    gemm = next(n for n in ref.model.graph.node if n.op_type == "Gemm" and n.name.startswith("/net/fc2/"))
    faulty = onnx.ModelProto()
    faulty.CopyFrom(ref.model)
    init = next(i for i in faulty.graph.initializer if i.name == gemm.input[2])  # fc2's bias
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + 1e-3, init.name))
    g = find_modules(ref, faulty)
    assert g.status == "diverges", g.line()
    assert g.fault == "exporter"  # seen with optimizations disabled: in the graph as written
    assert g.node["scope"] == "/net/fc2"
    assert g.node["module_class"] == "Linear"
    assert (g.node["op_type"], g.node["name"]) == ("Gemm", gemm.name)
    assert g.node["outputs"][0]["shape"] == [8, 1]
    assert g.node["outputs"][0]["err_backend64"] > 1e-4
    assert g.levels["disabled"]["modules"]["/net/fc1"]["status"] == "pass"  # before the fault
    assert "module-level" in g.line()
    assert find_modules(ref).status == "clean"  # the unperturbed graph, same reference


@pytest.mark.onnx
def test_a_failing_legacy_row_links_to_its_module_level_finding():
    from compile_losses.localize.api import link_failures
    from compile_losses.parity.report import ParityReport, Row
    from compile_losses.resolve import make_case

    case = make_case("seed", "mse", batch=5)
    report = ParityReport([Row(case.label, "onnx-legacy", "loss", "fail")])
    locs = link_failures(report, [case])
    assert [loc.backend for loc in locs] == ["onnx-legacy"]
    row = report.rows[0]
    assert row.localization["graph"] == "forward"
    assert row.localization["status"] == "clean"


@pytest.mark.onnx
def test_hooked_scopes_are_the_legacy_exporters_scope_names():
    """Scopes nest by call and name a module as the exporter does (``body.0`` inside ``body``):
    checked against the node names the TorchScript-based exporter itself writes."""
    from compile_losses.backends.onnx import export_onnx
    from compile_losses.localize.modules import hooked_outputs
    from compile_losses.nets import NetWithLoss

    net = torch.nn.Sequential()
    net.body = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1))
    module = NetWithLoss(net.eval(), torch.nn.MSELoss())
    x, y = torch.randn(4, 6), torch.randn(4, 1)
    scopes, values = hooked_outputs(module, (x, y))
    assert [s for s, _ in scopes] == ["/net/body/body.0", "/net/body/body.1", "/net/body/body.2", "/net/body",
                                      "/net", "/loss", "/"]
    assert values["/net/body/body.2"].shape == (4, 1)
    names = [n.name for n in export_onnx(module, (x, y), exporter="legacy").graph.node]
    for scope, _ in scopes[:-1]:
        assert any(n.startswith(scope + "/") for n in names), (scope, names)
