"""Generic tests of every loss, parametrized from ``compile_losses.registry.LOSSES``.

Each loss, variant and reduction is checked against its float64 reference (``reference64``, every
loss) and, where torch has the loss, against the torch function (values and gradients, float64 and
float32), with gradcheck / gradgradcheck in float64, and through the project's own backend adapters
(``compile_losses.backends.BACKENDS``: ``script``, ``compile-aot_eager`` / ``compile-dynamo``, which
are ``torch.compile(fullgraph=True)``, and ``onnx``, the torch.export-based exporter as shipped, with
a dynamic batch dimension, forward and loss-and-gradient graphs), so these tests check the graphs
users get; for its error inputs, its ``"none"`` shape (``none_shape``), what ``"mean"`` divides by
(``mean_divisor``) and empty batches. Every per-loss fact is read from the registry entry: the
checks below also run for a loss registered by a test alone (test_registry_extension.py). The default
run covers every loss once on the expensive paths (compile, ONNX: the default variant with "mean";
inductor for MSE only) and every variant and reduction on the cheap ones (TorchScript and
gradgradcheck: the default variant with every reduction, every variant with "mean"); the rest is
marked ``slow``. Per-loss math lives in test_losses_math.py.
"""
from typing import Any, Callable, List, Optional, Sequence, Tuple

import pytest
import torch
from torch import Tensor
from torch.testing import assert_close

from compile_losses import functional, losses
from compile_losses._reduction import REDUCTIONS
from compile_losses.backends import BACKENDS
from compile_losses.registry import LOSSES, LossSpec, SampleInput, sample_inputs, variant_id

NAMES = sorted(LOSSES)
WITH_REFERENCE = [n for n in NAMES if LOSSES[n].reference is not None]
TWICE = [n for n in NAMES if LOSSES[n].twice_differentiable]
# Batches checked by default; the largest registry batch (64) runs too, gradcheck in fast mode.
SMALL_BATCHES = (1, 7)
ALL_BATCHES = (1, 7, 64)


def _variant_id(spec: LossSpec, index: int) -> str:
    return variant_id(spec, index)


def _cases(names: Sequence[str], reductions: Sequence[str] = tuple(REDUCTIONS),
           default: Optional[Callable[[int, str], bool]] = None):
    """(name, variant index, reduction) params. ``default(index, reduction)`` picks the cases of
    the default run; the others are marked slow (None: every case runs by default)."""
    params = []
    for name in names:
        spec = LOSSES[name]
        for index in range(len(spec.variants)):
            for reduction in reductions:
                slow = default is not None and not default(index, reduction)
                params.append(pytest.param(name, index, reduction, marks=[pytest.mark.slow] if slow else [],
                                           id="{}-{}-{}".format(name, _variant_id(spec, index), reduction)))
    return params


def _once(index: int, reduction: str) -> bool:
    return index == 0 and reduction == "mean"


def _default_variant_or_mean(index: int, reduction: str) -> bool:
    return index == 0 or reduction == "mean"


def _samples(name: str, index: int, reduction: str, dtype: torch.dtype,
             batches: Sequence[int] = ALL_BATCHES) -> List[SampleInput]:
    return list(sample_inputs(LOSSES[name], dtype, batches=batches, reductions=(reduction,),
                              only_variant=index, noncontiguous=False))


def _noncontiguous(name: str, dtype: torch.dtype) -> SampleInput:
    out = [s for s in sample_inputs(LOSSES[name], dtype, batches=(), reductions=()) if s.desc.startswith("non-contiguous")]
    assert len(out) == 1
    return out[0]


def _grad_indices(spec: LossSpec, init_kwargs: Any) -> List[int]:
    """Argument positions gradcheck differentiates: the prediction and the smooth targets."""
    return [0] + [1 + i for i in spec.smooth_targets(init_kwargs)]


def _float_indices(args: Sequence[Tensor]) -> List[int]:
    return [i for i, a in enumerate(args) if a.is_floating_point()]


def _value_and_grads(fn: Callable[..., Tensor], args: Sequence[Tensor], wrt: Sequence[int],
                     seed: int = 0) -> Tuple[Tensor, List[Tensor]]:
    """fn(*args) and the vector-Jacobian product with a fixed random cotangent for each of ``wrt``."""
    leaves = [a.detach().clone().requires_grad_(i in wrt) for i, a in enumerate(args)]
    out = fn(*leaves)
    gen = torch.Generator().manual_seed(seed)
    cot = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.dtype)  # the same in every dtype
    grads = torch.autograd.grad(out, [leaves[i] for i in wrt], cot, allow_unused=True)
    return out.detach(), [torch.zeros_like(leaves[i]) if g is None else g for i, g in zip(wrt, grads)]


def _prepare(backend: str, module: torch.nn.Module, example: Tuple[Tensor, ...], grad: bool = False) -> Callable[..., Any]:
    """The callable users get from ``BACKENDS[backend]`` (forward, or loss-and-gradient); a skip
    with the reason where the backend cannot run here."""
    b = BACKENDS[backend]
    ok, reason = b.available()
    if not ok:
        pytest.skip("unavailable: " + reason)
    return b.prepare_loss_and_grad(module, example) if grad else b.prepare(module, example)


# ---------------------------------------------------------------------------------------------
# completeness
# ---------------------------------------------------------------------------------------------
def test_every_public_loss_has_a_registry_entry():
    modules = {spec.module.__name__ for spec in LOSSES.values()}
    assert set(losses.__all__) == modules, "no registry entry: {}; entry without a public class: {}".format(
        sorted(set(losses.__all__) - modules), sorted(modules - set(losses.__all__)))
    assert len(modules) == len(LOSSES), "two entries share a module"


def test_every_public_function_belongs_to_an_entry():
    functions = {spec.function.__name__ for spec in LOSSES.values()}
    assert set(functional.__all__) == functions
    for spec in LOSSES.values():
        assert getattr(functional, spec.function.__name__) is spec.function
        assert getattr(losses, spec.module.__name__) is spec.module


def test_every_loss_class_documents_a_runnable_example():
    # the examples run as doctests (pytest --doctest-modules over compile_losses)
    for spec in LOSSES.values():
        doc = spec.module.__doc__ or ""
        assert ">>> " in doc and "Shape:" in doc, "{} lacks a runnable example or its shapes".format(spec.module.__name__)
        assert "compile_losses.losses." in (spec.function.__doc__ or ""), "{} does not point to its class".format(
            spec.function.__name__)


def test_every_entry_states_its_per_loss_facts():
    # what generic tests read instead of tables of their own (tests/strategies.py, the known
    # failures of the backend properties, the "none" shape, the weighted mean)
    for spec in LOSSES.values():
        assert callable(spec.reference64), "{} has no float64 reference".format(spec.name)
        assert spec.none_shape in ("input", "target", "sample"), spec.name
        assert (spec.none_shape == "input") == spec.elementwise, "{}: pointwise losses keep the input's shape".format(spec.name)
        for variant in spec.variants:
            assert spec.kind(variant) in ("free", "logits", "log_rate", "rate", "log_probs"), spec.name
        for table in [spec.skips, spec.known_failures, spec.tolerances] + list(spec.variant_skips.values()):
            unknown = set(table) - set(BACKENDS)
            assert not unknown, "{}: no such backend {}".format(spec.name, sorted(unknown))
        for backend, reason in list(spec.skips.items()) + list(spec.known_failures.items()):
            assert len(reason) > 20, "{} on {}: say why".format(spec.name, backend)


def test_registry_is_at_least_the_issue_catalogue():
    # the 16+ losses issue 2 asks for, across every family
    assert len(LOSSES) >= 16
    assert {s.family for s in LOSSES.values()} == {"regression", "classification", "dense", "distribution", "metric"}


# ---------------------------------------------------------------------------------------------
# values and gradients against torch
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name,index,reduction", _cases(WITH_REFERENCE))
def test_matches_torch_reference(name: str, index: int, reduction: str, dtype: torch.dtype):
    spec = LOSSES[name]
    assert spec.reference is not None
    for s in _samples(name, index, reduction, dtype):
        _check_against_reference(spec, s, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name", WITH_REFERENCE)
def test_noncontiguous_matches_torch_reference(name: str, dtype: torch.dtype):
    spec = LOSSES[name]
    s = _noncontiguous(name, dtype)
    assert not s.input.is_contiguous()
    _check_against_reference(spec, s, dtype)


def _check_against_reference(spec: LossSpec, s: SampleInput, dtype: torch.dtype) -> None:
    module = spec.build(**s.init_kwargs)
    reference = spec.reference
    assert reference is not None
    args = s.args()
    wrt = _float_indices(args)
    out, grads = _value_and_grads(module, args, wrt)
    ref, ref_grads = _value_and_grads(lambda *a: reference(*a, **s.init_kwargs), args, wrt)
    assert out.dtype == dtype
    assert_close(out, ref, equal_nan=True, msg=lambda m: "{} value: {}".format(s.desc, m))
    for i, g, rg in zip(wrt, grads, ref_grads):
        if i > 0:
            # Where torch's gradient w.r.t. a target is NaN (poisson_nll full=True at target 0:
            # 0 * log 0 through masked_fill), ours is finite; test_losses_math pins its value.
            rg = torch.where(rg.isnan() & g.isfinite(), g, rg)
        assert_close(g, rg, equal_nan=True, msg=lambda m, i=i: "{} grad of argument {}: {}".format(s.desc, i, m))


# ---------------------------------------------------------------------------------------------
# values and gradients against the float64 reference (every loss)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name,index,reduction", _cases(NAMES))
def test_matches_float64_reference(name: str, index: int, reduction: str, dtype: torch.dtype):
    spec = LOSSES[name]
    for s in _samples(name, index, reduction, dtype) + ([_noncontiguous(name, dtype)] if index == 0 else []):
        _check_against_float64(spec, s, dtype)


def _check_against_float64(spec: LossSpec, s: SampleInput, dtype: torch.dtype) -> None:
    """The loss in ``dtype`` against ``reference64`` on the same inputs in float64: float64 to
    float64 precision, float32 to float32's (torch's default tolerances for the dtype)."""
    assert spec.reference64 is not None
    module = spec.build(**s.init_kwargs)
    args = s.args()
    wrt = _float_indices(args)
    out, grads = _value_and_grads(module, args, wrt)
    args64 = tuple(a.double() if a.is_floating_point() else a for a in args)
    ref, ref_grads = _value_and_grads(lambda *a: spec.reference64(*a, **s.init_kwargs), args64, wrt)
    assert out.dtype == dtype and ref.dtype == torch.float64
    assert_close(out, ref.to(dtype), equal_nan=True, msg=lambda m: "{} value vs float64: {}".format(s.desc, m))
    for i, g, rg in zip(wrt, grads, ref_grads):
        if i > 0:
            # a reference's NaN gradient w.r.t. a target where ours is finite (poisson_nll full=True
            # at target 0, torch's own 0 * log 0): test_losses_math pins our value
            rg = torch.where(rg.isnan() & g.isfinite(), g.double(), rg)
        assert_close(g, rg.to(dtype), equal_nan=True,
                     msg=lambda m, i=i: "{} grad of argument {} vs float64: {}".format(s.desc, i, m))


# ---------------------------------------------------------------------------------------------
# gradcheck / gradgradcheck in float64
# ---------------------------------------------------------------------------------------------
def _gradcheck_inputs(spec: LossSpec, s: SampleInput):
    module = spec.build(**s.init_kwargs)
    args = s.args()
    wrt = [i for i in _grad_indices(spec, s.init_kwargs) if i < len(args)]  # of the targets this variant passes
    leaves = tuple(args[i].detach().clone().requires_grad_() for i in wrt)

    def fn(*diff: Tensor) -> Tensor:
        full = list(args)
        for i, d in zip(wrt, diff):
            full[i] = d
        return module(*full)

    return fn, leaves


@pytest.mark.parametrize("name,index,reduction", _cases(NAMES))
def test_gradcheck(name: str, index: int, reduction: str):
    spec = LOSSES[name]
    checked = 0
    for s in _samples(name, index, reduction, torch.float64):
        fn, leaves = _gradcheck_inputs(spec, s)
        if not torch.isfinite(fn(*leaves)).all():
            # the mean of a batch whose every target is ignored is NaN, as in F.cross_entropy
            continue
        # Full Jacobians for the small batches; the largest one in fast mode (random projections).
        fast = s.input.shape[0] > max(SMALL_BATCHES)
        assert torch.autograd.gradcheck(fn, leaves, fast_mode=fast), s.desc
        checked += 1
    assert checked >= 2, "fewer than two finite samples for {}".format(name)


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_noncontiguous(name: str):
    spec = LOSSES[name]
    fn, leaves = _gradcheck_inputs(spec, _noncontiguous(name, torch.float64))
    assert torch.autograd.gradcheck(fn, leaves)


@pytest.mark.parametrize("name,index,reduction", _cases(TWICE, default=_default_variant_or_mean))
def test_gradgradcheck(name: str, index: int, reduction: str):
    spec = LOSSES[name]
    checked = 0
    for s in _samples(name, index, reduction, torch.float64, batches=SMALL_BATCHES):
        fn, leaves = _gradcheck_inputs(spec, s)
        if not torch.isfinite(fn(*leaves)).all():
            continue
        assert torch.autograd.gradgradcheck(fn, leaves, fast_mode=s.input.shape[0] > 1), s.desc
        checked += 1
    assert checked >= 1


# ---------------------------------------------------------------------------------------------
# reductions, shapes, empty batches, dtypes
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,index", [pytest.param(n, i, id="{}-{}".format(n, _variant_id(LOSSES[n], i)))
                                        for n in NAMES for i in range(len(LOSSES[n].variants))])
def test_reductions_agree_and_none_keeps_documented_shape(name: str, index: int):
    spec = LOSSES[name]
    for batch in ALL_BATCHES:
        pred, targets = spec.input_for(batch, torch.float64, seed=batch, variant=index)
        variant = {k: (v.double() if isinstance(v, Tensor) else v) for k, v in spec.variants[index].items()}
        none = spec.build(reduction="none", **variant)(pred, *targets)
        total = spec.build(reduction="sum", **variant)(pred, *targets)
        mean = spec.build(reduction="mean", **variant)(pred, *targets)
        assert tuple(none.shape) == spec.none_shape_of(pred)
        assert total.shape == () and mean.shape == ()
        assert_close(total, none.sum())
        if spec.mean_divisor is None:
            assert_close(mean, none.mean(), equal_nan=True)
        else:
            assert_close(mean, none.sum() / spec.mean_divisor(pred, *targets, **variant), equal_nan=True)


def test_default_reduction_is_mean():
    for spec in LOSSES.values():
        assert spec.build().reduction == "mean", spec.name


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", NAMES)
def test_empty_batch_behaves_as_torch(name: str, reduction: str):
    spec = LOSSES[name]
    pred, targets = spec.input_for(0, torch.float64)
    assert pred.shape[0] == 0
    leaf = pred.clone().requires_grad_()
    out = spec.build(reduction=reduction)(leaf, *targets)
    if reduction == "none":
        assert tuple(out.shape) == spec.none_shape_of(pred) and out.numel() == 0
    elif reduction == "mean":
        assert out.shape == () and torch.isnan(out)  # the mean of nothing, as torch's losses
    else:
        assert out.shape == () and out.item() == 0.0
    if spec.reference is not None:
        assert_close(out, spec.reference(pred, *targets, reduction=reduction), equal_nan=True)
    assert_close(out, spec.reference64(pred, *targets, reduction=reduction), equal_nan=True)
    (grad,) = torch.autograd.grad(out.sum(), leaf, allow_unused=True)
    assert grad is None or grad.shape == pred.shape


@pytest.mark.parametrize("name", NAMES)
def test_float32_in_float32_out(name: str):
    spec = LOSSES[name]
    pred, targets = spec.input_for(7, torch.float32)
    for reduction in REDUCTIONS:
        assert spec.build(reduction=reduction)(pred, *targets).dtype == torch.float32


# ---------------------------------------------------------------------------------------------
# error inputs
# ---------------------------------------------------------------------------------------------
_ERROR_CASES = [
    pytest.param(n, i, id="{}-{}".format(n, e.desc or i)) for n in NAMES for i, e in enumerate(LOSSES[n].error_inputs)
]


def test_every_loss_has_error_inputs():
    for spec in LOSSES.values():
        kinds = {e.at for e in spec.error_inputs}
        assert kinds == {"init", "call"}, "{} needs error inputs at init and at call, has {}".format(spec.name, kinds)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name,index", _ERROR_CASES)
def test_error_input_raises(name: str, index: int, dtype: torch.dtype):
    spec = LOSSES[name]
    err = spec.error_inputs[index]
    kwargs, args = err.build(dtype)
    if err.at == "init":
        with pytest.raises(err.error_type, match=err.match):
            spec.build(**kwargs)
        # the function checks the same setting on its own, with a valid input
        pred, targets = spec.input_for(4, dtype)
        with pytest.raises(err.error_type, match=err.match):
            spec.function(pred, *targets, **kwargs)
    else:
        assert err.at == "call"
        module = spec.build(**kwargs)
        with pytest.raises(err.error_type, match=err.match):
            module(*args)
        with pytest.raises(err.error_type, match=err.match):
            spec.function(*args, **kwargs)


@pytest.mark.script
@pytest.mark.parametrize("name,index", [p for p in _ERROR_CASES
                                        if LOSSES[p.values[0]].error_inputs[p.values[1]].at == "call"])
def test_error_input_message_survives_torchscript(name: str, index: int):
    # TorchScript re-raises as torch.jit.Error, carrying the original type name and message.
    spec = LOSSES[name]
    err = spec.error_inputs[index]
    kwargs, args = err.build(torch.float32)
    scripted = _prepare("script", spec.build(**kwargs), args)
    with pytest.raises(torch.jit.Error, match=err.match) as info:
        scripted(*args)
    assert err.error_type.__name__ in str(info.value)


# ---------------------------------------------------------------------------------------------
# TorchScript
# ---------------------------------------------------------------------------------------------
@pytest.mark.script
@pytest.mark.parametrize("name,index,reduction", _cases(NAMES, default=_default_variant_or_mean))
def test_torchscript_matches_eager(name: str, index: int, reduction: str):
    spec = LOSSES[name]
    samples = _samples(name, index, reduction, torch.float32, batches=SMALL_BATCHES)
    module = spec.build(**samples[0].init_kwargs)
    scripted = _prepare("script", module, samples[0].args())
    for s in samples:
        wrt = _float_indices(s.args())
        expected, expected_grads = _value_and_grads(module, s.args(), wrt)
        # twice: the profiling executor optimises the graph on a later run
        for _ in range(2):
            got, got_grads = _value_and_grads(scripted, s.args(), wrt)
            assert_close(got, expected, equal_nan=True, msg=lambda m: "{}: {}".format(s.desc, m))
            assert_close(got_grads, expected_grads, equal_nan=True)


# ---------------------------------------------------------------------------------------------
# torch.compile through the adapters (fullgraph=True): dynamic batch (no recompile for a third
# batch size), matches eager
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _check_compiled(spec: LossSpec, index: int, reduction: str, backend: str, batches=(3, 11, 17)) -> None:
    kwargs = dict(spec.variants[index], reduction=reduction)
    module = spec.build(**kwargs)
    example, example_targets = spec.input_for(batches[0], torch.float32, seed=100, variant=index)
    compiled = _prepare(backend, module, (example,) + example_targets)
    frames = []
    for seed, batch in enumerate(batches):
        pred, targets = spec.input_for(batch, torch.float32, seed=seed, variant=index)
        args = (pred,) + targets
        wrt = _float_indices(args)
        expected, expected_grads = _value_and_grads(module, args, wrt)
        got, got_grads = _value_and_grads(compiled, args, wrt)
        assert_close(got, expected, equal_nan=True)
        assert_close(got_grads, expected_grads, equal_nan=True)
        frames.append(BACKENDS[backend].compile_count(compiled))
    # torch's dynamic-shape policy: a second batch size may recompile once (dynamic), a third never
    assert frames[0] >= 1 and frames[-1] == frames[-2], \
        "{}: graphs compiled after batches {}: {} (the batch did not stay symbolic)".format(spec.name, batches, frames)


@pytest.mark.compile
@pytest.mark.parametrize("name,index,reduction", _cases(NAMES, default=_once))
def test_compile_fullgraph_dynamic_matches_eager(name: str, index: int, reduction: str, fresh_dynamo):
    # aot_eager traces the backward too, through the same adapter as inductor (fullgraph=True)
    _check_compiled(LOSSES[name], index, reduction, "compile-aot_eager")


@pytest.mark.compile
# inductor builds take 5-56 s per loss on 2 cores: every loss's graph is already checked under
# aot_eager by default, so inductor for every loss is exhaustive (not in CI's budget).
@pytest.mark.parametrize("name", [pytest.param(n, marks=[] if n == "mse" else [pytest.mark.exhaustive]) for n in NAMES])
def test_compile_inductor_matches_eager(name: str, fresh_dynamo):
    _check_compiled(LOSSES[name], 0, "mean", "compile-dynamo")


# ---------------------------------------------------------------------------------------------
# ONNX through the "onnx" adapter (torch.export-based exporter, as shipped: dynamic batch,
# faithful reductions, no onnxscript optimizer), run in onnxruntime
# ---------------------------------------------------------------------------------------------
def _onnx_args(spec: LossSpec, batch: int, index: int = 0) -> Tuple[Tensor, ...]:
    p, t = spec.input_for(batch, torch.float32, seed=batch, variant=index)
    return (p,) + t


@pytest.mark.onnx
@pytest.mark.parametrize("name,index,reduction", _cases(NAMES, default=_once))
def test_onnx_dynamic_batch_matches_eager(name: str, index: int, reduction: str):
    spec = LOSSES[name]
    if spec.skip_reason("onnx", index):
        pytest.skip("registry skip: " + spec.skip_reason("onnx", index))
    module = spec.build(**dict(spec.variants[index], reduction=reduction))
    run = _prepare("onnx", module, _onnx_args(spec, 4, index))
    for batch in (3, 17):
        args = _onnx_args(spec, batch, index)
        got = run(*args)
        with torch.no_grad():
            expected = module(*args)
        assert got.shape == expected.shape
        assert_close(got, expected, equal_nan=True)


@pytest.mark.onnx
@pytest.mark.parametrize("name,index,reduction", _cases(NAMES, reductions=("mean",), default=_once))
def test_onnx_loss_and_grad_graph_matches_eager(name: str, index: int, reduction: str):
    # compile_losses.training's loss-and-gradient graph (make_fx of torch.func, then the exporter)
    spec = LOSSES[name]
    if spec.skip_reason("onnx", index):
        pytest.skip("registry skip: " + spec.skip_reason("onnx", index))
    module = spec.build(**dict(spec.variants[index], reduction=reduction))
    run = _prepare("onnx", module, _onnx_args(spec, 4, index), grad=True)
    for batch in (3, 17):
        args = _onnx_args(spec, batch, index)
        value, dpred = run(*args)
        # the graph differentiates the scalar loss: a cotangent of 1
        leaf = args[0].detach().clone().requires_grad_()
        expected = module(leaf, *args[1:])
        (expected_grad,) = torch.autograd.grad(expected, leaf)
        assert_close(value, expected.detach(), equal_nan=True)
        assert_close(dpred, expected_grad, equal_nan=True)
