"""Generic tests of every loss, parametrized from ``compile_losses.registry.LOSSES``.

Each loss, variant and reduction is checked against its torch reference (values and gradients,
float64 and float32), with gradcheck / gradgradcheck in float64, under TorchScript,
``torch.compile(fullgraph=True, dynamic=True)`` and the torch.export-based ONNX exporter with a
dynamic batch dimension, for its error inputs, its ``"none"`` shape and empty batches. The default
run covers every loss once on the expensive paths (compile, ONNX: the default variant with "mean";
inductor for MSE only) and every variant and reduction on the cheap ones (TorchScript and
gradgradcheck: the default variant with every reduction, every variant with "mean"); the rest is
marked ``slow``. Per-loss math lives in test_losses_math.py.
"""
import os
import tempfile
import warnings
from typing import Any, Callable, List, Optional, Sequence, Tuple

import pytest
import torch
from torch import Tensor
from torch.testing import assert_close

from compile_losses import functional, losses
from compile_losses._reduction import REDUCTIONS
from compile_losses.registry import LOSSES, LossSpec, SampleInput, sample_inputs

NAMES = sorted(LOSSES)
WITH_REFERENCE = [n for n in NAMES if LOSSES[n].reference is not None]
TWICE = [n for n in NAMES if LOSSES[n].twice_differentiable]
# Batches checked by default; the largest registry batch (64) runs too, gradcheck in fast mode.
SMALL_BATCHES = (1, 7)
ALL_BATCHES = (1, 7, 64)
# Class-index losses whose "mean" divides by the summed class weights (checked in the math tests).
WEIGHTED_MEAN = {"cross_entropy", "focal"}


def _fmt_value(v: Any) -> str:
    return str(v.tolist() if isinstance(v, Tensor) else v)


def _variant_id(spec: LossSpec, index: int) -> str:
    variant = spec.variants[index]
    return ",".join("{}={}".format(k, _fmt_value(v)) for k, v in variant.items()) or "default"


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


def _grad_indices(spec: LossSpec) -> List[int]:
    """Argument positions gradcheck differentiates: the prediction and the smooth targets."""
    return [0] + [1 + i for i in spec.differentiable_targets]


def _float_indices(args: Sequence[Tensor]) -> List[int]:
    return [i for i, a in enumerate(args) if a.is_floating_point()]


def _value_and_grads(fn: Callable[..., Tensor], args: Sequence[Tensor], wrt: Sequence[int],
                     seed: int = 0) -> Tuple[Tensor, List[Tensor]]:
    """fn(*args) and the vector-Jacobian product with a fixed random cotangent for each of ``wrt``."""
    leaves = [a.detach().clone().requires_grad_(i in wrt) for i, a in enumerate(args)]
    out = fn(*leaves)
    gen = torch.Generator().manual_seed(seed)
    cot = torch.randn(out.shape, generator=gen, dtype=out.dtype)
    grads = torch.autograd.grad(out, [leaves[i] for i in wrt], cot, allow_unused=True)
    return out.detach(), [torch.zeros_like(leaves[i]) if g is None else g for i, g in zip(wrt, grads)]


def _none_shape(spec: LossSpec, pred: Tensor, targets: Tuple[Tensor, ...]) -> Tuple[int, ...]:
    """The documented shape of reduction="none": pointwise losses keep the input's shape, class-index
    losses the target's, per-sample losses (dense, distribution, metric) are (N,)."""
    if spec.elementwise:
        return tuple(pred.shape)
    if spec.name in WEIGHTED_MEAN:
        return tuple(targets[0].shape)
    return tuple(pred.shape[:1])


def _script(module: torch.nn.Module) -> torch.jit.ScriptModule:
    if not hasattr(torch.jit, "script"):
        pytest.skip("unavailable: this torch has no torch.jit.script")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=DeprecationWarning)
        return torch.jit.script(module)


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
# gradcheck / gradgradcheck in float64
# ---------------------------------------------------------------------------------------------
def _gradcheck_inputs(spec: LossSpec, s: SampleInput):
    module = spec.build(**s.init_kwargs)
    args = s.args()
    wrt = _grad_indices(spec)
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
        pred, targets = spec.input_for(batch, torch.float64, seed=batch)
        variant = {k: (v.double() if isinstance(v, Tensor) else v) for k, v in spec.variants[index].items()}
        none = spec.build(reduction="none", **variant)(pred, *targets)
        total = spec.build(reduction="sum", **variant)(pred, *targets)
        mean = spec.build(reduction="mean", **variant)(pred, *targets)
        assert tuple(none.shape) == _none_shape(spec, pred, targets)
        assert total.shape == () and mean.shape == ()
        assert_close(total, none.sum())
        if name not in WEIGHTED_MEAN:
            assert_close(mean, none.mean(), equal_nan=True)


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
        assert tuple(out.shape) == _none_shape(spec, pred, targets) and out.numel() == 0
    elif reduction == "mean":
        assert out.shape == () and torch.isnan(out)  # the mean of nothing, as torch's losses
    else:
        assert out.shape == () and out.item() == 0.0
    if spec.reference is not None:
        assert_close(out, spec.reference(pred, *targets, reduction=reduction), equal_nan=True)
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
    scripted = _script(spec.build(**kwargs))
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
    scripted = _script(module)
    for s in samples:
        wrt = _float_indices(s.args())
        expected, expected_grads = _value_and_grads(module, s.args(), wrt)
        # twice: the profiling executor optimises the graph on a later run
        for _ in range(2):
            got, got_grads = _value_and_grads(scripted, s.args(), wrt)
            assert_close(got, expected, equal_nan=True, msg=lambda m: "{}: {}".format(s.desc, m))
            assert_close(got_grads, expected_grads, equal_nan=True)


# ---------------------------------------------------------------------------------------------
# torch.compile: fullgraph (no graph break), dynamic batch (no recompile), matches eager
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _check_compiled(spec: LossSpec, index: int, reduction: str, backend: Any, batches=(3, 11)) -> None:
    kwargs = dict(spec.variants[index], reduction=reduction)
    module = spec.build(**kwargs)
    compiled = torch.compile(module, backend=backend, fullgraph=True, dynamic=True)
    for seed, batch in enumerate(batches):
        pred, targets = spec.input_for(batch, torch.float32, seed=seed)
        args = (pred,) + targets
        wrt = _float_indices(args)
        expected, expected_grads = _value_and_grads(module, args, wrt)
        got, got_grads = _value_and_grads(compiled, args, wrt)
        assert_close(got, expected, equal_nan=True)
        assert_close(got_grads, expected_grads, equal_nan=True)


@pytest.mark.compile
@pytest.mark.parametrize("name,index,reduction", _cases(NAMES, default=_once))
def test_compile_fullgraph_dynamic_matches_eager(name: str, index: int, reduction: str, fresh_dynamo):
    # aot_eager traces the backward too; a recompile for the second batch size (a batch dimension
    # that did not stay symbolic) is an error.
    with torch._dynamo.config.patch(error_on_recompile=True):
        _check_compiled(LOSSES[name], index, reduction, "aot_eager")


@pytest.mark.compile
# inductor builds take 5-56 s per loss on 2 cores: every loss's graph is already checked under
# aot_eager by default, so inductor for every loss is exhaustive (not in CI's budget).
@pytest.mark.parametrize("name", [pytest.param(n, marks=[] if n == "mse" else [pytest.mark.exhaustive]) for n in NAMES])
def test_compile_inductor_matches_eager(name: str, fresh_dynamo):
    _check_compiled(LOSSES[name], 0, "mean", "inductor")


# ---------------------------------------------------------------------------------------------
# ONNX (torch.export-based exporter) with a dynamic batch dimension, run in onnxruntime
# ---------------------------------------------------------------------------------------------
def export_and_run_onnx(module: torch.nn.Module, example: Tuple[Tensor, ...],
                        make_args: Callable[[int], Tuple[Tensor, ...]], batches: Sequence[int]) -> List[Tuple[Tensor, Tensor]]:
    """Export ``module`` with every input's first dimension dynamic, then run it in onnxruntime at
    each batch size: returns (onnxruntime output, eager output) pairs."""
    onnx = pytest.importorskip("onnx", reason="unavailable: onnx not installed")
    ort = pytest.importorskip("onnxruntime", reason="unavailable: onnxruntime not installed")
    module = module.eval()
    dynamic = tuple({0: torch.export.Dim.DYNAMIC} for _ in example)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.onnx")
        torch.onnx.export(module, example, path, dynamo=True, dynamic_shapes=dynamic, verbose=False)
        onnx.checker.check_model(path, full_check=True)
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    for info in session.get_inputs():
        assert isinstance(info.shape[0], str), "batch of {} is fixed: {}".format(info.name, info.shape)
    pairs = []
    for batch in batches:
        args = make_args(batch)
        feeds = {n: a.numpy() for n, a in zip(names, args)}
        (out,) = session.run(None, feeds)
        with torch.no_grad():
            pairs.append((torch.from_numpy(out), module(*args)))
    return pairs


@pytest.mark.onnx
@pytest.mark.parametrize("name,index,reduction", _cases(NAMES, default=_once))
def test_onnx_dynamic_batch_matches_eager(name: str, index: int, reduction: str):
    spec = LOSSES[name]
    kwargs = dict(spec.variants[index], reduction=reduction)
    pred, targets = spec.input_for(4, torch.float32)

    def make_args(batch: int) -> Tuple[Tensor, ...]:
        p, t = spec.input_for(batch, torch.float32, seed=batch)
        return (p,) + t

    for got, expected in export_and_run_onnx(spec.build(**kwargs), (pred,) + targets, make_args, (3, 17)):
        assert got.shape == expected.shape
        assert_close(got, expected, equal_nan=True)
