"""Dynamic dimensions beyond the batch (issue 16, item 3): the encoder's sequence length and the
dense net's height and width, declared once in the registry, exported dynamic, checked at several
sizes (1 and sizes the export never saw) for the forward and training graphs; bundles record them
and the torch-free runtime takes any size there and refuses the others by name.

Each test here would fail if a dynamic dim came back fixed at export (pytorch 122321, 149065).
"""
import json

import numpy as np
import pytest
import torch

from compile_losses import training
from compile_losses.backends import BACKENDS, clear_cache, export_example
from compile_losses.backends.onnx import export_onnx
from compile_losses.cli import main
from compile_losses.dims import check_dims, dims_of, distinct_sizes, mark_dims, marked_aliases, resize_dims
from compile_losses.errors import UsageError
from compile_losses.nets import TinyEncoder
from compile_losses.parity import PASS, verify
from compile_losses.registry import NETS
from compile_losses.resolve import make_case
from matrix_dump import assert_matrix_ok, dump, full_grid

pytestmark = pytest.mark.onnx

DYNAMIC = [n for n, s in NETS.items() if s.dynamic_dims]


def _sizes_run(case, sizes_list, backends):
    """The case at each sizes, one report each; every row must say the sizes it ran."""
    reports = []
    for sizes in sizes_list:
        c = case.with_sizes(sizes)
        report = verify(c.net, c.loss, c.inputs, c.targets, backends, label=c.label)
        want = dict({"batch": c.description["batch"]}, **c.description["sizes"])
        assert all(r.sizes == want for r in report.rows), [r.sizes for r in report.rows]
        reports.append(report)
    return reports


# -- the registry fact ---------------------------------------------------------------------------
def test_transformer_and_dense_nets_declare_their_dims_with_sizes_the_export_never_saw():
    assert NETS["encoder"].dynamic_dims == {1: "seq"}
    assert NETS["convseg"].dynamic_dims == {2: "height", 3: "width"}
    for name in DYNAMIC:
        spec = NETS[name]
        declared = {n: spec.input_shape[d - 1] for d, n in spec.dynamic_dims.items()}
        for symbol in declared:
            sizes = {z[symbol] for z in spec.dynamic_sizes}
            assert 1 in sizes, (name, symbol)
            assert sizes - {declared[symbol]}, (name, symbol)  # a size other than the exported one


def test_marks_are_checked_and_named():
    t = torch.zeros(2, 3, 4)
    with pytest.raises(ValueError, match="dim 0 is the batch"):
        mark_dims(t, {0: "seq"})
    with pytest.raises(ValueError, match="identifiers other than 'batch'"):
        mark_dims(t, {1: "batch"})
    with pytest.raises(ValueError, match=r"names dim\(s\) \[5\] of a tensor of shape \(2, 3, 4\)"):
        mark_dims(t, {5: "seq"})
    with pytest.raises(TypeError, match="dict of dim index -> symbol name, got list"):
        check_dims([1])
    a, b = torch.zeros(2, 3), torch.zeros(2, 4)
    with pytest.raises(ValueError, match="dynamic dim 'seq' is 4 in input 1 but 3 in input 0"):
        marked_aliases((a,), (b,), [{1: "seq"}, {1: "seq"}])
    assert dims_of(a) == {} and dims_of(b) == {}  # the caller's tensors are left unmarked


def test_trace_sizes_avoid_one_and_duck_sizing():
    x = mark_dims(torch.zeros(4, 3, 1, 16), {2: "height", 3: "width"})
    y = mark_dims(torch.zeros(4, 1, 1, 16), {2: "height", 3: "width"})
    sizes = distinct_sizes([x, y], taken=[4])
    assert sizes["height"] >= 2 and len({sizes["height"], sizes["width"], 3, 1, 4}) == 5, sizes
    rx, ry = resize_dims([x, y], sizes)
    assert rx.shape[2:] == ry.shape[2:] == (sizes["height"], sizes["width"])
    assert dims_of(rx) == {2: "height", 3: "width"}


def test_case_marks_inputs_and_the_targets_that_follow_them():
    seg = make_case("convseg", "dice", batch=2).with_sizes({"height": 9})
    assert seg.inputs[0].shape == (2, 3, 9, 16) and seg.targets[0].shape == (2, 1, 9, 16)
    assert dims_of(seg.inputs[0]) == dims_of(seg.targets[0]) == {2: "height", 3: "width"}
    assert seg.label.endswith("batch=2 height=9 width=16")
    enc = make_case("encoder", "info_nce", batch=2).with_sizes({"seq": 5})
    assert dims_of(enc.inputs[0]) == {1: "seq"} and all(not dims_of(t) for t in enc.targets)
    assert enc.with_batch(3).inputs[0].shape == (3, 5, 32)  # keeps its sizes at another batch
    with pytest.raises(UsageError, match=r"sizes names \['depth'\] but net 'encoder' has dynamic dims \['seq'\]"):
        make_case("encoder", "info_nce", batch=2).with_sizes({"depth": 3})
    with pytest.raises(UsageError, match="need a registry net that declares dynamic dims"):
        make_case("seed", "mse", batch=2).with_sizes({})


# -- the exported graph itself: the dim is symbolic, not the traced size -------------------------------
def test_forward_graph_keeps_the_marked_dim_symbolic_and_an_unmarked_one_fixed():
    net = TinyEncoder().eval()
    x = torch.randn(4, 8, 32)

    def input_dims(model):
        return [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]

    assert input_dims(export_onnx(net, (x,))) == ["batch", 8, 32]  # the control: fixed at export
    assert input_dims(export_onnx(net, (mark_dims(x.clone(), {1: "seq"}),))) == ["batch", "seq", 32]


@pytest.mark.slow  # a second trace of the encoder's train step (the parity test below runs its export)
def test_training_graphs_declare_the_marked_dims_to_the_exporter():
    case = make_case("encoder", "info_nce", batch=3).with_sizes({"seq": 1})  # 1: traced at another size
    example = export_example(case.inputs + case.targets)
    assert example[0].shape[1] >= 2 and dims_of(example[0]) == {1: "seq"}
    graph = training.trace_train_step(case.net, case.loss, example)
    shapes = graph.dynamic_shapes()
    x = graph.input_roles.index("input")
    assert {d: s.__name__ for d, s in shapes[x].items()} == {0: "batch", 1: "seq"}


# -- parity at several sizes, forward and training graphs ---------------------------------------------
@pytest.mark.slow  # ~1 min: eager and onnx (forward, loss-and-gradient, train step) at three lengths
def test_encoder_passes_at_every_sequence_length_from_one_export():
    from compile_losses.backends import onnx as onnx_backend

    onnx = "onnx"
    clear_cache()
    case = make_case("encoder", "info_nce", batch=3)
    before = len(onnx_backend._EXPORTS)
    reports = _sizes_run(case, [{}, {"seq": 1}, {"seq": 13}], ["eager", onnx])  # 1, and one never seen
    for report in reports:
        statuses = {(r.backend, r.output): r.status for r in report.rows}
        assert {("onnx", "loss"), ("onnx", "dpred"), ("onnx", "step.loss")} <= set(statuses), statuses
        assert all(s == PASS for s in statuses.values()), report
    assert len(onnx_backend._EXPORTS) - before == 1  # the forward graph was exported once for every seq


@pytest.mark.script
def test_traced_loss_gradient_keeps_the_prediction_and_target_sizes_together():
    """The autograd backends' loss-and-gradient copy of the prediction keeps its marks: a traced
    example resizes the prediction and the dense target alike (they once parted: (4,1,16,16) vs
    (4,1,2,3))."""
    case = make_case("convseg", "dice", batch=3)
    for report in _sizes_run(case, [{"height": 9, "width": 5}], ["eager", "trace"]):
        assert report.ok and {r.status for r in report.rows} == {PASS}, report


@pytest.mark.slow  # ~1-2 min: the conv net's training graphs with height and width dynamic
def test_dense_net_passes_at_every_height_and_width_from_one_export():
    case = make_case("convseg", "dice", batch=2)
    # 1x1, and a size the export never saw (every declared size: the exhaustive test below)
    for report in _sizes_run(case, [{"height": 1, "width": 1}, {"height": 23, "width": 11}], ["eager", "onnx"]):
        assert report.ok and {r.status for r in report.rows} == {PASS}, report
        assert {"loss", "dpred", "step.loss", "grad:body.0.weight"} <= {r.output for r in report.rows}


@pytest.mark.exhaustive  # inductor and AOTInductor builds for each net
@pytest.mark.parametrize("backend", ["onnx", "compile", "script", "trace", "onnx-legacy", "onnx-ref", "aoti",
                                     "fused", "fast"])
@pytest.mark.parametrize("net", DYNAMIC)
def test_every_backend_at_every_dynamic_size_exhaustive(net, backend, request):
    if not BACKENDS[backend].available()[0]:
        pytest.skip(BACKENDS[backend].available()[1])
    case = make_case(net, NETS[net].loss, batch=2)
    for i, report in enumerate(_sizes_run(case, [{}] + list(NETS[net].dynamic_sizes), ["eager", backend])):
        dump(report, "{}-{}".format(request.node.name, i))
        assert report.ok, report


# -- the CLI and the summary ------------------------------------------------------------------------------
def test_cli_dynamic_dims_rows_and_summary_carry_the_sizes(tmp_path, capsys):
    out = tmp_path / "parity.json"
    code = main(["verify", "--net", "encoder", "--loss", "info_nce", "--backends", "eager", "--batch", "2",
                 "--dtype", "float32", "--dynamic-dims", "--no-audit", "--no-alone", "--quiet", "--json", str(out)])
    assert code == 0, capsys.readouterr()
    data = json.loads(out.read_text())
    seqs = {r["sizes"]["seq"] for r in data["rows"]}
    assert seqs == {8} | {z["seq"] for z in NETS["encoder"].dynamic_sizes}
    assert {c["sizes"] for c in data["summary"]["by_axes"]} == {"seq={}".format(s) for s in seqs}
    assert "sizes" in capsys.readouterr().out


def test_registry_matrix_runs_each_dynamic_net_at_every_declared_size():
    from compile_losses.parity import verify_registry
    from compile_losses.parity.jobs import plan_units

    report = verify_registry(losses=["info_nce"], net="encoder", alone=False, batches=(2,), large=0,
                             dtypes=(torch.float32,), backends=["eager"], audit=False, dynamic_dims=True)
    assert report.ok, report
    assert {r.sizes["seq"] for r in report.rows} == {8} | {z["seq"] for z in NETS["encoder"].dynamic_sizes}
    units = plan_units(losses=["info_nce"], net="encoder", alone=False, dynamic_dims=True)
    assert units and all(u[2]["dynamic_dims"] is True for u in units)  # --jobs workers run the sizes too


def test_cli_dynamic_dims_needs_a_net_that_declares_them(capsys):
    assert main(["verify", "--net", "seed", "--loss", "mse", "--backends", "eager", "--dynamic-dims",
                 "--no-audit", "--quiet"]) == 2
    assert "--dynamic-dims needs a registry net that declares dynamic dims (convseg, encoder), got --net seed" \
        in capsys.readouterr().err


def test_python_api_takes_dynamic_dims_per_tensor():
    case = make_case("encoder", "info_nce", batch=2)
    report = verify(case.net, case.loss, case.inputs, case.targets, "eager", dynamic_dims=[{1: "seq"}])
    assert {r.sizes["seq"] for r in report.rows} == {8} and report.cases[0]["sizes"] == {"batch": 2, "seq": 8}
    with pytest.raises(ValueError, match="dynamic_dims has 3 entries but the case has 2 inputs and targets"):
        verify(case.net, case.loss, case.inputs, case.targets, "eager", dynamic_dims=[{}, {}, {}])


# -- bundles: the manifest records the dims, the runtime takes any size there ------------------------------
@pytest.fixture(scope="module")  # ~30 s: the tests that take it are slow
def encoder_bundle(tmp_path_factory):
    import compile_losses as cl

    case = make_case("encoder", "info_nce", batch=3).with_sizes({})
    path = cl.export_bundle(case.net, case.loss, case.inputs, case.targets, tmp_path_factory.mktemp("b"),
                            aoti=False, torchscript=False, parity=False)
    return path, case


@pytest.mark.slow
def test_bundle_manifest_records_the_dims_and_the_runtime_takes_any_size(encoder_bundle):
    from compile_losses.runtime import load_bundle

    path, case = encoder_bundle
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["dynamic_dims"] == ["seq"]
    assert manifest["inputs"][0]["shape"] == ["N", "seq", 32]
    step = next(a for a in manifest["artifacts"] if a["kind"] == "train_step")
    x = step["roles"]["data"][0]
    assert next(i for i in step["inputs"] if i["name"] == x)["shape"] == ["N", "seq", 32]
    bundle = load_bundle(path)
    assert bundle.check().ok
    for seq in (1, 13):  # 13: a length the export never saw
        c = case.with_sizes({"seq": seq})
        x = c.inputs[0]
        with torch.no_grad():
            expected = case.net(x).numpy()
        np.testing.assert_allclose(bundle.forward(x.numpy()), expected, rtol=1e-5, atol=1e-6)
        value = bundle.train_step(x.numpy(), *[t.numpy() for t in c.targets], lr=0.01)
        assert np.isfinite(np.asarray(value[0] if isinstance(value, tuple) else getattr(value, "loss", value))).all()


@pytest.mark.slow
def test_runtime_refuses_a_fixed_dim_by_name_index_size_and_expected(encoder_bundle):
    from compile_losses.runtime import load_bundle

    bundle = load_bundle(encoder_bundle[0])
    with pytest.raises(ValueError, match=r"^forward: x must have shape \(N, seq, 32\), got \(2, 5, 31\): dim 2 is 31, "
                                         r"expected 32 \(only N, seq take any size\)$"):
        bundle.forward(np.zeros((2, 5, 31), np.float32))


@pytest.mark.slow
@pytest.mark.parametrize("bad", [["N"], ["seq", "seq"], "seq", ["no such"], [3]])
def test_integrity_refuses_a_malformed_dynamic_dims_field(encoder_bundle, tmp_path, bad):
    from bundle_helpers import copy_bundle, manifest, write_manifest

    from compile_losses.runtime import BundleError, load_bundle

    b = copy_bundle(encoder_bundle[0], tmp_path / "b")
    data = manifest(b)
    data["dynamic_dims"] = bad
    write_manifest(b, data)
    with pytest.raises(BundleError, match="dynamic_dims must be a list of at most 16 distinct symbol names"):
        load_bundle(b)


@pytest.mark.slow
def test_runtime_refuses_a_shape_symbol_the_manifest_does_not_declare(encoder_bundle, tmp_path):
    from bundle_helpers import copy_bundle, manifest, write_manifest

    from compile_losses.runtime import BundleError, load_bundle

    b = copy_bundle(encoder_bundle[0], tmp_path / "b")
    data = manifest(b)
    data["dynamic_dims"] = []
    write_manifest(b, data)
    with pytest.raises(BundleError, match=r"input x shape \['N', 'seq', 32\] names dim\(s\) \['seq'\] that the "
                                          r"manifest's dynamic_dims \[\] does not declare"):
        load_bundle(b).forward(np.zeros((2, 5, 32), np.float32))


@pytest.mark.exhaustive  # the whole product for the nets with dynamic dims: hours on 2 cores
@pytest.mark.parametrize("net", DYNAMIC)
def test_dynamic_nets_full_product_exhaustive(net, request):
    """dtypes x autocast x onnxruntime levels x threads x dynamic sizes, every backend."""
    from compile_losses.parity import verify_registry

    report = verify_registry(losses=[NETS[net].loss], net=net, alone=False, batches=(1, 7), large=0,
                             dtypes=(torch.float32, torch.float64, torch.bfloat16, torch.float16), audit=False,
                             autocasts=(None, torch.bfloat16), settings_grid=full_grid(), dynamic_dims=True)
    dump(report, request.node.name)
    assert_matrix_ok(report)
    sizes = {tuple(sorted((k, v) for k, v in r.sizes.items() if k != "batch")) for r in report.rows}
    assert len(sizes) == 1 + len(NETS[net].dynamic_sizes)
