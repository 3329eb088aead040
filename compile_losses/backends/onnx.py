"""ONNX: two exporters, two runtimes.

- ``onnx``: the torch.export-based exporter (``torch.onnx.export(..., dynamo=True)``), run in
  onnxruntime; ``onnx-legacy``: the TorchScript-based exporter (``dynamo=False``), in onnxruntime;
  ``onnx-ref``: the ``onnx`` graph run by ``onnx.reference.ReferenceEvaluator`` (numpy), so that an
  exporter error can be told from a runtime error; ``onnx-cuda``: onnxruntime's CUDA provider.
- Every export traces inside :func:`compile_losses._reduction.faithful_reductions`: reductions
  accumulate in float64 in the graph, because onnxruntime's float32 ReduceSum/ReduceMean over
  2^24 elements is off from float64 by ~1e-3 relative (eager: ~1e-8). :func:`faithful_cost`
  measures what that costs.
- Dim 0 of every input is dynamic: the batch where it equals the first input's, a dim of its own
  otherwise (unpaired negatives ``(M, D)``); so is every dim marked dynamic on the inputs
  (:mod:`compile_losses.dims`: the net's declared sequence length or image size). The export runs
  on a small example.
- onnxruntime sessions come from :mod:`compile_losses.sessions` (one intra-op thread), the same
  factory the training graphs and the benchmarks use. Its graph optimization level and thread
  count are settings (``ort_opt_level``, ``ort_threads``: see ``Backend.settings_scope``), taken by
  every graph this adapter runs (forward, loss-and-gradient, train step).

Gradient rows come from the training graphs (:mod:`compile_losses.training`), exported with the
torch.export-based exporter only.
"""
import contextlib
import inspect
import io
import logging
import os
import re
import tempfile
import time
import warnings
from typing import Any, Callable, Dict, Iterator, List, NoReturn, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .. import training
from .._onnx_ops import translation_table
from .._reduction import ONNX_OPTIMIZE, faithful_reductions
from ..diagnose import quiet_failure, unsupported
from ..errors import UsageError
from ..sessions import DEFAULT_OPT_LEVEL, INTRA_OP_THREADS, check_ort_settings, cuda_provider_options, ort_session
from ..signature import OPSET
from .base import Backend, TrainStepResult, Unsupported, export_example, input_dims, register_cache, structure_key

# training's per-process store of what this adapter runs, forgotten by clear_cache
register_cache(training.ONNX_GRAPHS)

__all__ = ["OnnxBackend", "OPSET", "INTRA_OP_THREADS", "export_onnx", "onnx_program", "ort_session", "faithful_cost"]

_EXPORTS: Dict[Tuple[Any, ...], bytes] = {}


class OnnxBackend(Backend):
    cacheable = True
    exported = True
    cost = 1.0  # an export

    def __init__(self, name: str, exporter: str = "dynamo", runner: str = "ort",
                 provider: str = "CPUExecutionProvider", **facts: Any) -> None:
        facts.setdefault("markers", ("onnx",) + (("gpu",) if provider.startswith("CUDA") else ()))
        super().__init__(name, **facts)
        if exporter not in ("dynamo", "legacy"):
            raise ValueError("exporter must be 'dynamo' or 'legacy', got {!r}".format(exporter))
        if runner not in ("ort", "ref"):
            raise ValueError("runner must be 'ort' or 'ref', got {!r}".format(runner))
        self.exporter = exporter
        self.runner = runner
        # the torch.export-based graph in onnxruntime: its values map to FX nodes (localize)
        self.piecewise = exporter == "dynamo" and runner == "ort"
        # the TorchScript-based graph in onnxruntime: its nodes carry module scopes only (localize
        # at module level)
        self.module_scoped = exporter == "legacy" and runner == "ort"
        self.provider = provider
        self.device = "cuda" if provider.startswith("CUDA") else "cpu"
        # onnxruntime's graph optimization level and intra-op threads, for every graph it runs
        self.setting_defaults = ({"ort_opt_level": DEFAULT_OPT_LEVEL, "ort_threads": INTRA_OP_THREADS}
                                 if runner == "ort" else {})
        if runner == "ort" and self.device == "cuda":
            self.setting_defaults["tf32"] = False  # the CUDA provider's use_tf32 (see eager's tf32)

    def piecewise_graph(self, kind: str, net: Optional[nn.Module], loss: nn.Module,
                        example_inputs: Tuple[Tensor, ...], optimize: Optional[bool] = None) -> Dict[str, Any]:
        if not self.piecewise:
            return super().piecewise_graph(kind, net, loss, example_inputs, optimize)
        self._require()
        optimize = ONNX_OPTIMIZE if optimize is None else bool(optimize)
        example = export_example(example_inputs)
        if kind == "forward":
            from ..nets import NetWithLoss

            module = loss if net is None else NetWithLoss(net, loss, n_targets=len(example_inputs) - 1)
            return {"program": onnx_program(module, example, optimize=optimize), "traced": None,
                    "provider": self.provider}
        program, traced = training.training_program(kind, net, loss, example, optimize=optimize)
        return {"program": program, "traced": traced, "provider": self.provider}

    def module_graph(self, net: Optional[nn.Module], loss: nn.Module,
                     example_inputs: Tuple[Tensor, ...]) -> Dict[str, Any]:
        if not self.module_scoped:
            return super().module_graph(net, loss, example_inputs)
        self._require()
        from ..nets import NetWithLoss

        module = loss if net is None else NetWithLoss(net, loss, n_targets=len(example_inputs) - 1)
        model = export_onnx(module, export_example(example_inputs), exporter=self.exporter)
        return {"model": model, "module": module, "provider": self.provider}

    def check_settings(self, applied: Dict[str, Any]) -> None:
        if self.runner == "ort":
            check_ort_settings(applied["ort_opt_level"], applied["ort_threads"])
        if "tf32" in applied:
            cuda_provider_options(applied["tf32"])

    def provider_spec(self, applied: Dict[str, Any]) -> Any:
        """The provider as onnxruntime takes it under ``applied`` settings: its name, or
        ``(name, options)`` where a setting is a provider option (the CUDA provider's TF32)."""
        if "tf32" in applied:
            return (self.provider, cuda_provider_options(applied["tf32"]))
        return self.provider

    def _session(self, model: bytes) -> Any:
        return ort_session(model, **self._ort_kwargs())

    def _ort_kwargs(self) -> Dict[str, Any]:
        s = self.applied_settings(self._settings)
        return {"provider": self.provider_spec(s), "threads": s["ort_threads"], "opt_level": s["ort_opt_level"]}

    def _available(self) -> Tuple[bool, str]:
        import onnx  # noqa: F401  (a missing package is reported by available())

        if "dynamo" not in inspect.signature(torch.onnx.export).parameters:
            return False, "this torch's torch.onnx.export has no dynamo= switch"
        if self.exporter == "dynamo":
            import onnxscript  # noqa: F401  (the torch.export-based exporter needs it)
        if self.runner == "ref":
            from onnx.reference import ReferenceEvaluator  # noqa: F401
            return True, ""
        import onnxruntime as ort

        if self.provider not in ort.get_available_providers():
            return False, "onnxruntime has no {} (installed: {})".format(
                self.provider, ", ".join(ort.get_available_providers()))
        return True, ""

    def _compile(self, module: nn.Module, example_inputs: Tuple[Tensor, ...]) -> Tuple[Callable[..., Any], nn.Module]:
        key = (self.exporter,) + structure_key(module, example_inputs)
        if key not in _EXPORTS:
            _EXPORTS[key] = export_onnx(module, example_inputs, exporter=self.exporter).SerializeToString()
        try:
            return self._runner(_EXPORTS[key]), module
        except Exception as exc:
            # the TorchScript-based exporter types a bfloat16 mean's division as complex128: a graph
            # onnxruntime refuses. Its limitation, said as such (any other invalid graph is a failure).
            if (self.exporter == "legacy" and "INVALID_GRAPH" in str(exc)
                    and any(t.dtype == torch.bfloat16 for t in example_inputs)):
                raise Unsupported("the TorchScript-based exporter writes an invalid bfloat16 graph: {}".format(
                    str(exc).split("Type Error:")[-1].strip()[:200])) from None
            raise

    def _runner(self, model: bytes) -> Callable[..., Any]:
        import numpy as np

        if self.runner == "ref":
            import onnx
            from onnx.reference import ReferenceEvaluator

            proto = onnx.load_from_string(model)
            evaluator = ReferenceEvaluator(proto)
            names = [i.name for i in proto.graph.input]
            execute = lambda feeds: evaluator.run(None, feeds)  # noqa: E731
        else:
            with self._kernels_or_unsupported():
                session = self._session(model)
            names = [i.name for i in session.get_inputs()]
            provider = self.provider

            def execute(feeds: Dict[str, Any]) -> Any:
                try:
                    return session.run(None, feeds)
                except Exception as exc:
                    raise_unsupported_or_again(exc, provider)

        def run(*inputs: Tensor) -> Any:
            if len(inputs) != len(names):
                raise TypeError("the graph takes {} inputs ({}), got {}".format(len(names), ", ".join(names), len(inputs)))
            outs = [torch.from_numpy(np.array(o)) for o in execute(_feeds(names, inputs))]
            return outs[0] if len(outs) == 1 else tuple(outs)

        return run

    def _kernels_or_unsupported(self) -> Any:
        return kernels_or_unsupported(self.provider)

    # -- gradients through the training graphs -------------------------------------------------
    def _exported_loss_and_grad(self, loss: nn.Module, example_inputs: Tuple[Tensor, ...]) -> Callable[..., Tuple[Tensor, Tensor]]:
        self._training_exporter()
        example = export_example(example_inputs)
        if self.runner == "ref":
            return self._cached("loss_and_grad", loss, example_inputs, lambda: (self._ref_graph(
                lambda p: training.export_loss_and_grad_onnx(loss, example, p), params=None), None))[0]
        with self._kernels_or_unsupported():
            return _numpy_feedable(training.prepare_onnx_loss_and_grad(loss, example, **self._ort_kwargs()),
                                   self.provider)

    def _exported_train_step(self, net: nn.Module, loss: nn.Module, example_inputs: Tuple[Tensor, ...],
                             lr: float) -> Callable[..., TrainStepResult]:
        self._training_exporter()
        example = export_example(example_inputs)
        if self.runner == "ref":
            from ..nets import NetWithLoss

            key_module = NetWithLoss(net, loss, n_targets=len(example_inputs) - 1)
            return self._cached(("train_step", float(lr)), key_module, example_inputs, lambda: (self._ref_graph(
                lambda p: training.export_train_step_onnx(net, loss, example, p), params=(net, lr)), None),
                owners=(net, loss))[0]
        with self._kernels_or_unsupported():
            return _numpy_feedable(training.prepare_onnx_train_step(net, loss, example, lr, **self._ort_kwargs()),
                                   self.provider)

    def _optimizer_step(self, net: nn.Module, loss: nn.Module, example_inputs: Tuple[Tensor, ...],
                        opt: Any) -> Callable[..., Any]:
        self._training_exporter()
        if self.runner == "ref":
            raise Unsupported("{}: the optimizer train step runs in onnxruntime ('onnx'); the reference "
                              "evaluator is for single graphs".format(self.name))
        with self._kernels_or_unsupported():
            return training.prepare_onnx_optimizer_step(net, loss, export_example(example_inputs), opt,
                                                        provider=self._ort_kwargs()["provider"])

    def _training_exporter(self) -> None:
        if self.exporter != "dynamo":
            raise Unsupported("{}: the training graphs are exported with the torch.export-based exporter only "
                              "(their gradient rows are those of 'onnx')".format(self.name))

    def _ref_graph(self, export: Callable[[str], Dict[str, Any]], params: Optional[Tuple[nn.Module, float]]) -> Callable[..., Any]:
        """A training graph run by the reference evaluator, fed as the training runtime feeds it."""
        import onnx
        from onnx.reference import ReferenceEvaluator

        with tempfile.TemporaryDirectory() as tmp:
            info = export(os.path.join(tmp, "graph.onnx"))
            proto = onnx.load(info["path"])
        evaluator = ReferenceEvaluator(proto)
        names = [i["name"] for i in info["inputs"]]
        if params is None:
            with_cotangent = training.cotangent_input(info)

            def loss_and_grad(pred: Tensor, *targets: Tensor) -> Tuple[Tensor, Tensor]:
                value, grad = evaluator.run(None, _feeds(names, with_cotangent((pred,) + targets)))
                return _tensor(value), _tensor(grad)

            return loss_and_grad
        net, lr = params
        signature = training.signature_of(info)

        def train_step(x: Tensor, *targets: Tensor) -> TrainStepResult:
            state = dict(net.named_parameters())  # the net's parameters now, not at prepare time
            rate = torch.tensor(lr, dtype=state[signature.params[0]].dtype)
            feeds = _feeds(names, signature.flat_inputs(state, x, targets, rate))
            return signature.result([_tensor(o) for o in evaluator.run(None, feeds)])

        return train_step


def _check_feedable(inputs: Sequence[Tensor]) -> None:
    for i, t in enumerate(inputs):
        if t.dtype == torch.bfloat16:
            raise Unsupported("onnxruntime's Python API is fed numpy arrays, and numpy has no bfloat16 "
                              "(input {} is bfloat16)".format(i))


def raise_unsupported_or_again(exc: BaseException, provider: str) -> NoReturn:
    """Raise ``exc`` as 'unsupported' where it says onnxruntime lacks a kernel, else raise it as it
    is: one onnxruntime does not register (float64 Conv on the CPU: the session refuses the graph,
    NOT_IMPLEMENTED) or one that refuses a dtype when it runs (float16 ScatterElements with reduction
    'add': "MLFloat16 data type is not supported with ScatterElements opset 16 when reduction is
    'add'", a RUNTIME_EXCEPTION). Called from a plain ``except`` on the per-call paths: a try costs
    nothing unless it raises, a context manager costs a generator per call."""
    text = "" if isinstance(exc, Unsupported) else str(exc)
    if "NOT_IMPLEMENTED" in text:
        why = text.split("NOT_IMPLEMENTED :")[-1].strip().splitlines()[0]
    elif re.search(r"data type is not supported", text):
        why = text.split("Status Message:")[-1].strip().splitlines()[0]
    else:
        raise exc
    raise Unsupported("onnxruntime ({}) has no kernel for this graph: {}".format(provider, why)) from None


@contextlib.contextmanager
def kernels_or_unsupported(provider: str) -> Iterator[None]:
    """Around a session's creation: :func:`raise_unsupported_or_again`."""
    try:
        yield
    except Exception as exc:
        raise_unsupported_or_again(exc, provider)


def _numpy_feedable(fn: Callable[..., Any], provider: str) -> Callable[..., Any]:
    def run(*inputs: Tensor) -> Any:
        _check_feedable(inputs)
        try:
            return fn(*inputs)
        except Exception as exc:
            raise_unsupported_or_again(exc, provider)

    run.graph_info = getattr(fn, "graph_info", None)  # type: ignore[attr-defined]
    return run


def _feeds(names: Sequence[str], inputs: Sequence[Tensor]) -> Dict[str, Any]:
    import numpy as np

    _check_feedable(inputs)
    return {n: np.ascontiguousarray(t.detach().cpu().numpy()) for n, t in zip(names, inputs)}


def _tensor(value: Any) -> Tensor:
    import numpy as np

    return torch.from_numpy(np.array(value))


# ---------------------------------------------------------------------------------------------
# export and sessions
# ---------------------------------------------------------------------------------------------
def export_onnx(module: nn.Module, example_inputs: Sequence[Tensor], exporter: str = "dynamo",
                faithful: bool = True, opset: int = OPSET) -> Any:
    """Export ``module(*inputs)`` to an ONNX ``ModelProto`` with dim 0 of every input dynamic
    (``"batch"`` where it equals the first input's, ``"<name>_dim0"`` of its own otherwise: unpaired
    negatives ``(M, D)``); inputs named after ``module.forward``'s parameters, the output ``"output"``.

    ``faithful=False`` exists to show what the faithful reductions fix; do not ship its graphs.
    An export that fails raises :class:`~compile_losses.errors.ExportUnsupportedError` naming the
    op, the module's class and the user's source line where they can be found.
    """
    if exporter not in ("dynamo", "legacy"):
        raise ValueError("exporter must be 'dynamo' or 'legacy', got {!r}".format(exporter))
    example = export_example(example_inputs)
    names = input_names(module, len(example))
    reductions = faithful_reductions() if faithful else _plain_reductions()
    try:
        with quiet_failure():
            return _export(module, example, names, exporter, opset, reductions)
    except (UsageError, TypeError):
        raise
    except Exception as exc:  # the exporters raise many unrelated types: one line naming op, class and line
        raise unsupported(exc, module, "{} exporter, to ONNX".format(
            "torch.export-based" if exporter == "dynamo" else "TorchScript-based"), example, opset=opset) from None


def onnx_program(module: nn.Module, example_inputs: Sequence[Tensor], opset: int = OPSET,
                 optimize: bool = ONNX_OPTIMIZE) -> Any:
    """The torch.export-based exporter's ``ONNXProgram`` of ``module(*inputs)``, exported as
    :func:`export_onnx` exports it (its ``model_proto`` is that graph; its ``exported_program`` the
    FX graph it was translated from), for tools that run the graph value by value. ``optimize``:
    the exporter's onnxscript optimizer (off in the project's graphs)."""
    example = export_example(example_inputs)
    names = input_names(module, len(example))
    kept: List[Any] = []
    with quiet_failure():
        _export(module, example, names, "dynamo", opset, faithful_reductions(), optimize=optimize, kept=kept)
    return kept[0]


def _export(module: nn.Module, example: Tuple[Tensor, ...], names: List[str], exporter: str, opset: int,
            reductions: Any, optimize: bool = ONNX_OPTIMIZE, kept: Optional[List[Any]] = None) -> Any:
    import onnx

    # dim 0 of every input is dynamic: "batch" where it is the batch, its own dim otherwise; and
    # every dim marked dynamic on the example (compile_losses.dims: a sequence length, an image size)
    dims = input_dims(example, own=lambda i: "{}_dim0".format(names[i]))
    with _quiet_export(), reductions, _keep_modes(module):
        if exporter == "dynamo":
            symbols = {s: torch.export.Dim(s) for d in dims for s in d.values()}
            shapes = tuple({i: symbols[s] for i, s in d.items()} for d in dims)
            batched = [n for n, d in zip(names, dims) if d.get(0) == "batch"]

            def export_program() -> Any:
                program = torch.onnx.export(module, example, dynamo=True, input_names=names, output_names=["output"],
                                            dynamic_shapes=shapes, opset_version=opset, optimize=optimize,
                                            custom_translation_table=translation_table(), verbose=False)
                if static_dim0(program.model_proto, batched):
                    # The exporter's non-strict capture specialized dim 0 (``len(query)`` reads it as a
                    # Python int) and re-exported with its own suggested fix, a graph for that one size.
                    # torch.export's strict mode traces such code with the dim symbolic: capture with it.
                    try:
                        captured = torch.export.export(module, example, dynamic_shapes=shapes, strict=True)
                    except Exception as exc:
                        raise RuntimeError("the graph does not allow a dynamic batch dimension: tracing specialized "
                                           "dim 0 of {} to its example size".format(
                                               ", ".join(static_dim0(program.model_proto, batched)))) from exc
                    program = torch.onnx.export(captured, example, dynamo=True, input_names=names,
                                                output_names=["output"], opset_version=opset, optimize=optimize,
                                                custom_translation_table=translation_table(), verbose=False)
                return program

            if kept is not None:  # the caller wants the ONNXProgram itself (localize): no cache
                program = export_program()
                kept.append(program)
                model = program.model_proto
            else:
                def build(dest: str) -> None:
                    with open(dest, "wb") as f:
                        f.write(export_program().model_proto.SerializeToString())

                key = _onnx_key(module, example, shapes, (names, dims, opset, optimize))
                with tempfile.TemporaryDirectory() as tmp:
                    if key is None:  # not capturable for the key (or no cache): the exporter alone decides
                        build(os.path.join(tmp, "graph.onnx"))
                    else:
                        from ..build_cache import build_file

                        build_file("onnx-graph", key, os.path.join(tmp, "graph.onnx"), build)
                    model = onnx.load(os.path.join(tmp, "graph.onnx"))
        else:
            buffer = io.BytesIO()
            torch.onnx.export(module, example, buffer, dynamo=False, input_names=names, output_names=["output"],
                              dynamic_axes={n: dict(d) for n, d in zip(names, dims)}, opset_version=opset)
            model = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(model)
    return model


def _onnx_key(module: nn.Module, example: Tuple[Tensor, ...], shapes: Tuple[Any, ...], settings: Tuple[Any, ...]) -> Optional[str]:
    """The build-cache key of an ONNX export of ``module``: the program ``torch.export`` captures
    (non-strict, as the exporter's first strategy does, and with the exporter's "exporting" flag
    set, so code that asks ``torch.onnx.is_in_onnx_export()`` takes the branch it takes in the
    export) with its weights and constants, the export settings and the onnx/onnxscript versions.
    None where the cache is off or the program cannot be captured that way (then nothing is cached)."""
    from .. import build_cache

    if build_cache.cache_dir() is None:
        return None
    try:
        from torch.onnx._internal.exporter import _flags
    except ImportError:
        return None
    if not hasattr(_flags, "_is_onnx_exporting"):
        return None
    before = _flags._is_onnx_exporting
    _flags._is_onnx_exporting = True
    try:
        program = torch.export.export(module, example, dynamic_shapes=shapes, strict=False)
    except Exception:  # the exporter may still manage with another strategy: export uncached
        return None
    finally:
        _flags._is_onnx_exporting = before
    return build_cache.program_key(program, ("torch.onnx.export", repr(settings), build_cache.package_versions("onnx", "onnxscript")),
                                   inductor=False)


def static_dim0(model: Any, batched: Sequence[str]) -> List[str]:
    """The inputs among ``batched`` (exported with the batch as a dynamic dim 0) whose dim 0 is a
    fixed size in ``model``: such a graph takes its example batch only."""
    out = []
    for v in model.graph.input:
        dims = v.type.tensor_type.shape.dim
        if v.name in batched and len(dims) and not dims[0].HasField("dim_param"):
            out.append(v.name)
    return out


@contextlib.contextmanager
def _keep_modes(module: nn.Module) -> Iterator[None]:
    # The TorchScript-based exporter ends with module.train(<the top module's mode>), which
    # recurses: a wrapper left in training mode (a fresh NetWithLoss) would switch the eval-mode
    # net inside it back to training, so Dropout fires in every later export and run. Restore
    # every submodule's own mode instead.
    modes = [(m, m.training) for m in module.modules()]
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


@contextlib.contextmanager
def _plain_reductions() -> Iterator[None]:
    # The exporters would trace the faithful form anyway (it keys on is_in_onnx_export too):
    # switch it off entirely, to show and time what it fixes.
    from .. import _reduction

    previous = _reduction._faithful_mode
    _reduction._faithful_mode = lambda: False
    try:
        yield
    finally:
        _reduction._faithful_mode = previous


def input_names(module: nn.Module, count: int) -> List[str]:
    """Graph input names: ``module.forward``'s parameter names, else ``input0``, ``input1``, ..."""
    try:
        params = [p for p in inspect.signature(module.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    names = [p.name for p in params[:count]]
    return names + ["input{}".format(i) for i in range(len(names), count)]


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    log = logging.getLogger("torch.onnx._internal.exporter._registration")  # torchvision ops, absent
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*legacy TorchScript-based ONNX export")
            warnings.filterwarnings("ignore", category=DeprecationWarning, message=r"The feature will be removed")
            warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*(TorchScript|torch\.jit).*")
            warnings.filterwarnings("ignore", category=UserWarning, message=r"Exporting a model while it is in training mode")
            warnings.filterwarnings("ignore", category=UserWarning, message=r".*axis name: .* will not be used")
            warnings.filterwarnings("ignore", category=FutureWarning, message=r".*isinstance\(treespec, LeafSpec\)")
            # Shape checks read sizes as Python values while tracing; parity runs other batches.
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            yield
    finally:
        log.setLevel(level)


def faithful_cost(elements: int = 2 ** 24, repeats: int = 20, dtype: torch.dtype = torch.float32) -> Dict[str, Any]:
    """Time the faithful (float64-accumulated) mean against the plain ReduceMean in onnxruntime,
    in the same run: MSE over ``elements`` values exported both ways. Returns both medians (ms),
    their ratio and both relative errors against float64."""
    import numpy as np

    from ..losses import MSELoss

    gen = torch.Generator().manual_seed(0)
    pred = torch.randn(elements, 1, generator=gen, dtype=dtype)
    target = torch.randn(elements, 1, generator=gen, dtype=dtype)
    exact = torch.nn.functional.mse_loss(pred.double(), target.double()).item()
    feeds = {"input": pred.numpy(), "target": target.numpy()}
    out: Dict[str, Any] = {"elements": elements, "dtype": str(dtype).replace("torch.", ""), "repeats": repeats,
                           "intra_op_threads": INTRA_OP_THREADS, "eager_rel_err": abs(
                               torch.nn.functional.mse_loss(pred, target).item() - exact) / exact}
    sessions = {kind: ort_session(export_onnx(MSELoss(), (pred[:4], target[:4]), faithful=(kind == "faithful"))
                                  .SerializeToString()) for kind in ("plain", "faithful")}
    times: Dict[str, List[float]] = {kind: [] for kind in sessions}
    for kind, session in sessions.items():  # warm up both before timing either
        value = float(session.run(None, feeds)[0])
        out[kind + "_rel_err"] = abs(value - exact) / exact
    for _ in range(repeats):  # interleaved, so both see the same machine load
        for kind, session in sessions.items():
            start = time.perf_counter()
            session.run(None, feeds)
            times[kind].append((time.perf_counter() - start) * 1e3)
    for kind in sessions:
        out[kind + "_ms"] = float(np.median(times[kind]))
    out["ratio"] = out["faithful_ms"] / out["plain_ms"]
    return out
