"""Issue 16's named pitfalls that tests/test_precision.py and tests/test_dynamic_dims.py do not
already hold: onnxruntime's constant folding (onnxruntime 29788) and TF32 on CUDA (item 6).

The others, for the record: optimization levels changing outputs (onnxruntime 20321, 23210;
optimum 978): test_precision.py::test_every_graph_same_verdict_at_every_ort_level_and_thread_count;
a dropped ``dtype=float64`` in a mean (onnxscript 3008): test_precision.py::
test_exporter_keeps_dtype_float64_of_a_sum_and_a_mean and the graph-level faithful-reduction
checks; bf16 under torch.compile (pytorch 168126, 158699): test_precision.py::
test_emulate_precision_casts_changes_the_bf16_verdict_to_clause_1; dynamic shapes fixed at export
(pytorch 122321, 149065): test_dynamic_dims.py.
"""
import pytest
import torch

from compile_losses.backends import BACKENDS
from compile_losses.backends.base import tf32_scope
from compile_losses.parity import PASS, verify
from compile_losses.resolve import make_case


def _optimized(model_bytes, level, path):
    import onnx
    import onnxruntime as ort

    from compile_losses.sessions import session_options

    options = session_options(1, level)
    options.optimized_model_filepath = str(path)
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    return session, onnx.load(str(path))


@pytest.mark.onnx
@pytest.mark.parametrize("loss_name,dtype", [
    ("cross_entropy", torch.float64),  # the default run: one export; the rest in the slow run
    pytest.param("cross_entropy", torch.float32, marks=pytest.mark.slow),
    pytest.param("focal", torch.float64, marks=pytest.mark.slow),
    pytest.param("focal", torch.float32, marks=pytest.mark.slow)])
def test_constant_folding_changes_no_value(loss_name, dtype, tmp_path):
    """onnxruntime 29788: constant folding (a "basic" rewrite) must not change what a graph computes.
    The graphs here have constants to fold (they lose nodes at "basic"); their outputs equal the
    unfolded graph's and eager's within the dtype's default tolerance."""
    from compile_losses.backends.onnx import export_onnx

    case = make_case(None, loss_name, batch=7, dtype=dtype)
    args = case.inputs + case.targets
    model = export_onnx(case.loss, args).SerializeToString()
    expected = case.loss(*args).detach()
    outs, nodes = {}, {}
    for level in ("disabled", "basic", "all"):
        session, optimized = _optimized(model, level, tmp_path / "{}.onnx".format(level))
        feeds = {i.name: a.numpy() for i, a in zip(session.get_inputs(), args)}
        outs[level] = torch.from_numpy(session.run(None, feeds)[0])
        nodes[level] = len(optimized.graph.node)
    assert nodes["basic"] < nodes["disabled"], nodes  # something was folded
    for level, value in outs.items():
        torch.testing.assert_close(value, outs["disabled"], msg=lambda m: "{} vs disabled: {}".format(level, m))
        torch.testing.assert_close(value, expected, msg=lambda m: "{} vs eager: {}".format(level, m))


def test_tf32_scope_sets_both_flags_and_restores_them():
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    with tf32_scope(not before[0]):
        assert torch.backends.cuda.matmul.allow_tf32 is (not before[0])
        assert torch.backends.cudnn.allow_tf32 is (not before[0])
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
    with pytest.raises(ValueError, match="tf32 must be True or False, got 'on'"):
        with tf32_scope("on"):
            pass


def test_tf32_is_a_setting_of_every_cuda_adapter_only():
    for b in BACKENDS.values():
        takes = "tf32" in b.setting_defaults
        assert takes == b.device.startswith("cuda"), b.name
        if takes:
            assert b.setting_defaults["tf32"] is False  # the reference stays float32 unless asked


_CUDA_TORCH = [b.name for b in BACKENDS.values() if "tf32" in b.setting_defaults and b.supports_autograd]


@pytest.mark.gpu
@pytest.mark.parametrize("backend", _CUDA_TORCH)
@pytest.mark.parametrize("tf32", [False, True])
def test_tf32_on_and_off_for_eager_and_compile_on_cuda(backend, tf32):
    """TF32 off: CUDA matches the CPU reference by the rule. On: the rows record it; a 10-bit
    mantissa in every matmul of a wide layer is less accurate than float32 eager, and the rule must
    see that (fail), not pass it."""
    ok, why = BACKENDS[backend].available()
    if not ok:
        pytest.skip(why)
    case = make_case("mlp", "cross_entropy", batch=64)
    report = verify(case.net, case.loss, case.inputs, case.targets, [backend], settings={"tf32": tf32})
    assert all(r.settings.get("tf32") is tf32 for r in report.rows), [r.settings for r in report.rows]
    if not tf32:
        assert report.ok and {r.status for r in report.rows} == {PASS}, report
    else:
        assert any(r.clause != 1 for r in report.rows), report  # TF32 is never equal to float32 eager


# -- half precision in the exported graphs (found by the exhaustive matrix) ---------------------------
@pytest.mark.onnx
@pytest.mark.parametrize("loss_name", ["mse", "charbonnier"])
def test_a_float16_mean_over_more_elements_than_float16_counts_is_finite(loss_name):
    """2^20 float16 losses: their sum and their count are past float16's largest finite value
    (65504). The faithful mean divides in float64 and rounds once; it used to round the float64
    sum to float16 first (inf) and divide by the count in float16 (inf): NaN in onnxruntime's and
    the reference evaluator's runs of the graph, while eager gives the mean."""
    import onnxruntime as ort
    from onnx.reference import ReferenceEvaluator

    from compile_losses.backends.onnx import export_onnx

    case = make_case(None, loss_name, batch=1 << 20, dtype=torch.float16)
    args = case.inputs + case.targets
    model = export_onnx(case.loss, args)
    feed = {v.name: a.numpy() for v, a in zip(model.graph.input, args)}
    want = case.loss(*args).double()
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for got in (session.run(None, feed)[0], ReferenceEvaluator(model).run(None, feed)[0]):
        got = torch.from_numpy(got).double()
        assert torch.isfinite(got), got
        torch.testing.assert_close(got, want, rtol=2 ** -10, atol=0)  # float16's own resolution


@pytest.mark.onnx
def test_half_precision_matrix_products_are_exported_as_atens_float_products():
    """ATen multiplies bfloat16/float16 matrices with float32 accumulation and rounds once (the
    bias of addmm added before); the exporter wrote the Gemm in bfloat16, which the reference
    evaluator ran with a second rounding (seed+charbonnier under bfloat16 autocast failed its row:
    4.5x eager's loss error). Every Gemm/MatMul of the exported graph now reads float operands."""
    import onnx

    from compile_losses.backends.onnx import export_onnx
    from compile_losses.parity.precision import autocast_modules

    case = make_case("seed", "charbonnier", batch=7)
    net, _ = autocast_modules(case.net, case.loss, len(case.inputs), len(case.targets), torch.bfloat16)
    model = export_onnx(net, case.inputs)
    producers = {o: n for n in model.graph.node for o in n.output}
    products = [n for n in model.graph.node if n.op_type in ("Gemm", "MatMul")]
    assert len(products) == 2
    for n in products:
        for name in n.input:
            src = producers.get(name)
            while src is not None and src.op_type == "Transpose":
                src = producers.get(src.input[0])
            assert src is not None and src.op_type == "Cast" and \
                {a.name: a.i for a in src.attribute}["to"] == onnx.TensorProto.FLOAT, (n.name, name)
    report = verify(case.net, case.loss, case.inputs, case.targets, ["onnx-ref"], autocast=torch.bfloat16)
    assert report.ok and all(r.status == PASS for r in report.rows if r.output == "loss"), report


@pytest.mark.onnx
def test_a_kernel_onnxruntime_refuses_a_dtype_at_run_time_is_unsupported_with_its_reason():
    """onnxruntime loads cross_entropy's float16 gradient graph, then refuses to run its
    ScatterElements (reduction 'add' has no float16 kernel): that is 'unsupported', with
    onnxruntime's words, not an error row (found by the exhaustive matrix)."""
    from compile_losses.parity import UNSUPPORTED

    case = make_case("seed", "cross_entropy", batch=1, dtype=torch.float16)
    report = verify(case.net, case.loss, case.inputs, case.targets, ["onnx"])
    rows = {r.output: r for r in report.rows}
    assert rows["loss"].status == PASS, report
    for output in ("loss_and_grad", "train_step"):
        assert rows[output].status == UNSUPPORTED, report
        assert "MLFloat16 data type is not supported with ScatterElements" in rows[output].detail


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("net", ["seed", None])
def test_every_registry_loss_runs_finite_in_each_low_dtype(net, dtype):
    """A constant written for float32 (sup_con's self-similarity fill, -3e38) overflowed float16
    when the case was built ("value cannot be converted to type c10::Half without overflow"): every
    registry loss, with the seed net and alone, builds its case, runs and differentiates in each low
    dtype with finite values (under autocast a loss runs in float32: parity/precision.py)."""
    from compile_losses.registry import LOSSES

    for name in LOSSES:
        case = make_case(net, name, batch=3, dtype=dtype)
        pred = (case.net(*case.inputs) if case.net is not None else case.inputs[0]).detach().requires_grad_(True)
        value = case.loss(pred, *case.targets)
        grad, = torch.autograd.grad(value.sum(), pred)
        assert value.dtype == dtype and torch.isfinite(value).all() and torch.isfinite(grad).all(), (name, value)


def test_tf32_is_a_setting_of_the_cuda_provider_as_its_use_tf32_option():
    """onnxruntime's CUDA provider runs float32 matmuls in TF32 unless told (its use_tf32 option is
    on by default): the onnx CUDA adapter takes the same tf32 setting as the CUDA torch adapters,
    off by default, and hands it to the provider; CPU sessions take provider options the same way."""
    from compile_losses.backends.onnx import export_onnx
    from compile_losses.losses import MSELoss
    from compile_losses.sessions import cuda_provider_options, ort_session

    cuda = [b for b in BACKENDS.values() if getattr(b, "provider", "").startswith("CUDA")]
    assert cuda, "no onnxruntime CUDA adapter registered"
    for b in cuda:
        assert b.setting_defaults["tf32"] is False
        assert b.provider_spec(b.applied_settings({"tf32": True})) == (b.provider, {"use_tf32": "1"})
        assert b.provider_spec(b.applied_settings()) == (b.provider, {"use_tf32": "0"})
        with pytest.raises(ValueError, match="tf32 must be True or False, got 'on'"):
            b.check_settings(b.applied_settings({"tf32": "on"}))
    cpu = BACKENDS["onnx"]
    assert "tf32" not in cpu.setting_defaults and cpu.provider_spec(cpu.applied_settings()) == cpu.provider
    assert cuda_provider_options(False) == {"use_tf32": "0"}
    x = torch.ones(2, 1)
    session = ort_session(export_onnx(MSELoss(), (x, x)).SerializeToString(), ("CPUExecutionProvider", {}))
    assert session.get_providers() == ["CPUExecutionProvider"]


@pytest.mark.gpu
@pytest.mark.parametrize("tf32", [False, True])
def test_tf32_on_and_off_for_onnxruntimes_cuda_provider(tf32):
    """Where onnxruntime's CUDA provider is installed: off, the CUDA graph matches the CPU
    reference by the rule; on, the rows record it. Skipped here otherwise (the reason says why)."""
    cuda = [b for b in BACKENDS.values() if getattr(b, "provider", "").startswith("CUDA")]
    ok, why = cuda[0].available()
    if not ok:
        pytest.skip(why)
    case = make_case("mlp", "cross_entropy", batch=64)
    report = verify(case.net, case.loss, case.inputs, case.targets, [cuda[0].name], settings={"tf32": tf32})
    assert all((r.settings or {}).get("tf32") is tf32 for r in report.rows if r.status == PASS), report
    if not tf32:
        assert report.ok, report
