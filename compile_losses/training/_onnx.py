"""Training graphs as ONNX: the torch.export-based exporter over the traced joint graph, and
onnxruntime callables over the result.

Export goes ``make_fx`` (symbolic) -> :func:`faithful_graph` -> ``torch.onnx.export(...,
dynamo=True)`` with the batch dimension dynamic. (``torch.export`` of ``grad_and_value`` itself
fails; of the traced graph module it works.)
"""
import contextlib
import logging
import os
import tempfile
import threading
import time
import warnings
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .._onnx_ops import translation_table
from .._reduction import ONNX_OPTIMIZE
from ..diagnose import quiet_failure, unsupported
from ..sessions import INTRA_OP_THREADS, ort_session
from ..signature import COTANGENT, OPSET, TrainStepResult, TrainStepSignature
from ._decomp import numel_as_sizes
from ._trace import (TracedGraph, faithful_graph, structure_key, trace_loss_and_grad,
                     trace_train_step)


def export_loss_and_grad_onnx(loss: nn.Module, example_inputs: Tuple[Tensor, ...], path: str) -> Dict[str, Any]:
    """Write ``loss_and_grad.onnx``: ``(pred, *targets) -> (loss, grad_pred)``; for a loss that
    does not reduce to a scalar, ``(pred, *targets, cotangent) -> (loss, grad_pred)`` with
    ``grad_pred`` the vector-Jacobian product (the input's role is ``"cotangent"``).

    Returns what a manifest needs: path, kind, opset, inputs/outputs (name, dtype, shape with
    ``"batch"`` for the dynamic dim, role), bytes, node count and export seconds.
    """
    start = time.perf_counter()
    graph = trace_loss_and_grad(loss, example_inputs)
    return _export(graph, path, start, loss, lambda: tuple(example_inputs))


def export_train_step_onnx(net: nn.Module, loss: nn.Module, example_inputs: Tuple[Tensor, ...],
                           path: str) -> Dict[str, Any]:
    """Write ``train_step.onnx``: ``(*params, x, *targets, lr) -> (loss, grad_<p>..., new_<p>...)``.

    One plain SGD step ``new = p - lr * grad``. Parameter inputs are named from
    ``net.named_parameters()`` with ``.`` replaced by ``_`` (``fc1.weight`` -> ``fc1_weight``);
    the returned ``"params"`` list maps each name to its input, gradient and update outputs.
    """
    start = time.perf_counter()
    graph = trace_train_step(net, loss, example_inputs)

    def loss_example() -> Tuple[Tensor, ...]:
        with torch.no_grad():
            return (net(example_inputs[0]),) + tuple(example_inputs[1:])

    info = _export(graph, path, start, loss, loss_example)
    info["optimizer"] = {"name": "sgd", "update": "new = param - lr * grad"}
    return info


def _export(graph: TracedGraph, path: str, start: float, loss: nn.Module,
            loss_example: Callable[[], Tuple[Tensor, ...]]) -> Dict[str, Any]:
    import onnx

    from ..build_cache import build_file

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # the traced graph is the whole input of the export: its text, constants and settings key it
    gm = numel_as_sizes(faithful_graph(graph.module))
    build_file("onnx-graph", _graph_key(gm, graph), path, lambda dest: _program(graph, loss, loss_example, gm=gm).save(dest))
    model = onnx.load(path)
    onnx.checker.check_model(model)
    return {
        "path": os.path.abspath(path),
        "kind": graph.kind,
        "loss": graph.loss_label,
        "opset": _opset(model),
        "inputs": _io(model.graph.input, graph.input_roles),
        "outputs": _io(model.graph.output, None),
        "params": [dict(p) for p in graph.params],
        "batch_dim": "batch",
        "bytes": os.path.getsize(path),
        "nodes": len(model.graph.node),
        "export_seconds": round(time.perf_counter() - start, 3),
    }


def _graph_key(gm: torch.fx.GraphModule, graph: TracedGraph) -> str:
    """The build-cache key of exporting ``gm`` (the traced joint graph): its code with every
    node's shape, stride and device, the bytes of every tensor it holds, the inputs' names, roles,
    example dtypes and shapes and which are batched, the export settings and the versions."""
    import hashlib

    from .. import build_cache

    h = hashlib.sha256()
    h.update(gm.print_readable(print_output=False, include_stride=True, include_device=True).encode())
    for name, t in sorted(list(gm.named_parameters()) + list(gm.named_buffers())):
        build_cache._tensor_digest(h, name, t)
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            value = gm
            for part in str(node.target).split("."):
                value = getattr(value, part)
            build_cache._tensor_digest(h, "attr:" + str(node.target), value)
    h.update(repr((graph.kind, graph.input_names, graph.input_roles, graph.output_names, graph.batched,
                   [(str(t.dtype), tuple(t.shape)) for t in graph.example], OPSET, ONNX_OPTIMIZE)).encode())
    return build_cache.record_key("torch.onnx.export", h.hexdigest(), build_cache.package_versions("onnx", "onnxscript"))


def _program(graph: TracedGraph, loss: nn.Module, loss_example: Callable[[], Tuple[Tensor, ...]],
             optimize: bool = ONNX_OPTIMIZE, gm: Optional[torch.fx.GraphModule] = None) -> Any:
    gm = numel_as_sizes(faithful_graph(graph.module)) if gm is None else gm  # gm: the rewritten graph, made already
    with warnings.catch_warnings(), _quiet_registry():
        # Every batched input shares one Dim; the exporter says it keeps only one name for it.
        warnings.filterwarnings("ignore", message=r".*axis name: .* will not be used", category=UserWarning)
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
        try:
            with quiet_failure():
                return torch.onnx.export(gm, graph.example, dynamo=True, dynamic_shapes=graph.dynamic_shapes(),
                                         input_names=graph.input_names, output_names=graph.output_names,
                                         opset_version=OPSET, verbose=False, optimize=optimize,
                                         custom_translation_table=translation_table())
        except Exception as exc:  # the exporter raises several unrelated types; all end here
            raise unsupported(exc, loss, "its {} graph, to ONNX".format(graph.kind), loss_example(),
                              opset=OPSET) from None


def training_program(kind: str, net: Optional[nn.Module], loss: nn.Module, example_inputs: Tuple[Tensor, ...],
                     optimize: bool = ONNX_OPTIMIZE) -> Tuple[Any, TracedGraph]:
    """The ``ONNXProgram`` of a training graph (``kind`` ``"loss_and_grad"``: example ``(pred,
    *targets)``; ``"train_step"``: ``(x, *targets)``), exported as ``export_*_onnx`` export it,
    and the traced graph it came from (names, roles, parameter table), for tools that run the
    graph value by value."""
    if kind == "loss_and_grad":
        graph = trace_loss_and_grad(loss, example_inputs)
        return _program(graph, loss, lambda: tuple(example_inputs), optimize), graph
    if kind == "train_step":
        if net is None:
            raise ValueError("a train_step graph needs a net, got net=None")
        graph = trace_train_step(net, loss, example_inputs)

        def loss_example() -> Tuple[Tensor, ...]:
            with torch.no_grad():
                return (net(example_inputs[0]),) + tuple(example_inputs[1:])

        return _program(graph, loss, loss_example, optimize), graph
    raise ValueError("kind must be 'loss_and_grad' or 'train_step', got {!r}".format(kind))


@contextlib.contextmanager
def _quiet_registry() -> Iterator[None]:
    # The exporter logs a warning per torchvision op it cannot register when torchvision is absent.
    log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _opset(model: Any) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _io(values: Any, roles: Optional[List[str]]) -> List[Dict[str, Any]]:
    import onnx

    out = []
    for i, v in enumerate(values):
        t = v.type.tensor_type
        shape = [d.dim_param if d.HasField("dim_param") else int(d.dim_value) for d in t.shape.dim]
        entry = {"name": v.name, "dtype": str(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)), "shape": shape}
        if roles is not None:
            entry["role"] = roles[i]
        out.append(entry)
    return out


# ---------------------------------------------------------------------------------------------
# onnxruntime callables (torch tensors in, torch tensors out)
# ---------------------------------------------------------------------------------------------
_CACHE: Dict[Tuple[Any, ...], Tuple[bytes, Dict[str, Any]]] = {}
_LOCK = threading.Lock()


def _exported(key: Tuple[Any, ...], export: Callable[[str], Dict[str, Any]]) -> Tuple[bytes, Dict[str, Any]]:
    # One export per graph structure per process: the batch is dynamic, so parity at 1, 7 and
    # 4096 and every backend row reuse the same graph.
    with _LOCK:
        if key not in _CACHE:
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "graph.onnx")
                info = export(path)
                with open(path, "rb") as f:
                    _CACHE[key] = (f.read(), info)
        return _CACHE[key]


def _feed(names: Sequence[str], tensors: Sequence[Tensor]) -> Dict[str, Any]:
    import numpy as np

    return {n: np.ascontiguousarray(t.detach().cpu().numpy()) for n, t in zip(names, tensors)}


def prepare_onnx_loss_and_grad(loss: nn.Module, example_inputs: Tuple[Tensor, ...],
                               provider: str = "CPUExecutionProvider", threads: int = INTRA_OP_THREADS,
                               opt_level: Optional[str] = None) -> Callable[..., Tuple[Tensor, Tensor]]:
    """``(pred, *targets) -> (loss, d loss / d pred)`` computed by ``loss_and_grad.onnx`` in
    onnxruntime, as torch tensors on the prediction's device."""
    key = structure_key("loss_and_grad", None, loss, example_inputs)
    model, info = _exported(key, lambda p: export_loss_and_grad_onnx(loss, example_inputs, p))
    session = ort_session(model, provider, threads=threads, opt_level=opt_level)
    names = [i["name"] for i in info["inputs"]]
    with_cotangent = cotangent_input(info)

    def run(pred: Tensor, *targets: Tensor) -> Tuple[Tensor, Tensor]:
        feeds = with_cotangent((pred,) + targets)
        _check_arity(names, len(feeds))
        value, grad = session.run(None, _feed(names, feeds))
        return torch.from_numpy(value).to(pred.device), torch.from_numpy(grad).to(pred.device)

    run.graph_info = info  # type: ignore[attr-defined]
    return run


def prepare_onnx_train_step(net: nn.Module, loss: nn.Module, example_inputs: Tuple[Tensor, ...], lr: float,
                            provider: str = "CPUExecutionProvider", threads: int = INTRA_OP_THREADS,
                            opt_level: Optional[str] = None) -> Callable[..., TrainStepResult]:
    """``(x, *targets) -> TrainStepResult`` computed by ``train_step.onnx`` in onnxruntime from
    the net's parameters at call time; the net itself is never changed."""
    key = structure_key("train_step", net, loss, example_inputs)
    model, info = _exported(key, lambda p: export_train_step_onnx(net, loss, example_inputs, p))
    session = ort_session(model, provider, threads=threads, opt_level=opt_level)
    names = [i["name"] for i in info["inputs"]]
    signature = signature_of(info)

    def run(x: Tensor, *targets: Tensor) -> TrainStepResult:
        state = dict(net.named_parameters())  # the net's parameters now, not at prepare time
        rate = torch.tensor(lr, dtype=state[signature.params[0]].dtype)
        feeds = _feed(names, signature.flat_inputs(state, x, targets, rate))
        return signature.result([torch.from_numpy(o).to(x.device) for o in session.run(None, feeds)])

    run.graph_info = info  # type: ignore[attr-defined]
    return run


def cotangent_input(info: Dict[str, Any]) -> Callable[[Tuple[Tensor, ...]], Tuple[Tensor, ...]]:
    """``(pred, *targets) -> feeds`` for a loss-and-gradient graph's info: the program's cotangent
    (:func:`compile_losses.programs.cotangent_for`, the batch from ``pred``) appended when the
    graph takes one (a non-scalar loss), the inputs unchanged otherwise."""
    from ..programs import cotangent_for

    spec = next((i for i in info["inputs"] if i.get("role") == COTANGENT), None)
    if spec is None:
        return lambda feeds: feeds
    dtype = getattr(torch, spec["dtype"])

    def feeds(args: Tuple[Tensor, ...]) -> Tuple[Tensor, ...]:
        return args + (cotangent_for(spec["shape"], args[0].shape[0], dtype, args[0].device),)

    return feeds


def signature_of(info: Dict[str, Any]) -> TrainStepSignature:
    """The train step's signature from an exported graph's info (or a manifest entry)."""
    return TrainStepSignature(tuple(p["name"] for p in info["params"]),
                              tuple(i["name"] for i in info["inputs"] if i.get("role") == "target"))


def _check_arity(names: Sequence[str], given: int) -> None:
    if given != len(names):
        raise TypeError("the graph takes ({}), got {} tensors".format(", ".join(names), given))


__all__ = ["OPSET", "cotangent_input", "signature_of", "training_program", "export_loss_and_grad_onnx", "export_train_step_onnx", "prepare_onnx_loss_and_grad",
           "prepare_onnx_train_step"]


# ---------------------------------------------------------------------------------------------
# the optimizer train step (state and hyper-parameters as inputs and outputs)
# ---------------------------------------------------------------------------------------------
def export_optimizer_step_onnx(net: nn.Module, loss: nn.Module, example_inputs: Tuple[Tensor, ...], opt: Any,
                               path: str) -> Dict[str, Any]:
    """Write ``train_step.onnx`` with an optimizer: ``(*params, *frozen, x, *targets, *state,
    *hyper) -> (loss, *grads, *new_params, *new_state)``, names from
    :class:`~compile_losses.signature.OptimStepSignature` (``info["signature"]``)."""
    from ._trace import optimizer_example, trace_optimizer_step

    start = time.perf_counter()
    graph = trace_optimizer_step(net, loss, example_inputs, opt)
    sig = optimizer_example(net, loss, example_inputs, opt)[0]

    def loss_example() -> Tuple[Tensor, ...]:
        with torch.no_grad():
            return (net(example_inputs[0]),) + tuple(example_inputs[1:])

    info = _export(graph, path, start, loss, loss_example)
    info["optimizer"] = opt.describe()
    info["signature"] = sig.describe()
    return info


def optimizer_key(opt: Any) -> Tuple[Any, ...]:
    # the graph depends on the optimizer's kind and static flags, not on its hyper-parameter values
    return (opt.name, opt.flags, opt.has_momentum, opt.hyper_names)


def prepare_onnx_optimizer_step(net: nn.Module, loss: nn.Module, example_inputs: Tuple[Tensor, ...], opt: Any,
                                provider: str = "CPUExecutionProvider") -> Callable[..., Any]:
    """``(params, frozen, x, *targets, state=, hyper=) -> OptimStepResult`` computed by the
    optimizer's ``train_step.onnx`` in onnxruntime (torch tensors in and out)."""
    from ..signature import OptimStepSignature

    key = structure_key("optimizer_step", net, loss, example_inputs, extra=optimizer_key(opt))
    model, info = _exported(key, lambda p: export_optimizer_step_onnx(net, loss, example_inputs, opt, p))
    session = ort_session(model, provider)
    names = [i["name"] for i in info["inputs"]]
    sig = OptimStepSignature.from_description(info["signature"])
    ranks = [len(o["shape"]) for o in info["outputs"]]

    def run(params: Dict[str, Tensor], frozen: Dict[str, Tensor], x: Tensor, *targets: Tensor,
            state: Dict[str, Dict[str, Tensor]], hyper: Dict[str, Tensor]) -> Any:
        feeds = _feed(names, sig.flat_inputs(params, frozen, x, targets, state, hyper))
        outs = session.run(None, feeds)
        return sig.result([torch.from_numpy(_declared_rank(o, r)).to(x.device) for o, r in zip(outs, ranks)])

    run.graph_info = info  # type: ignore[attr-defined]
    return run


def _declared_rank(value: Any, rank: int) -> Any:
    # onnxruntime's optimized graph returns a 0-d output (the step count) as shape (1,)
    return value.reshape(()) if rank == 0 and value.shape == (1,) else value


__all__ += ["export_optimizer_step_onnx", "prepare_onnx_optimizer_step"]


def export_accumulated_step_onnx(net: nn.Module, loss: nn.Module, micro_batches: Sequence[Sequence[Tensor]], opt: Any,
                                 path: str, weight: Optional[Callable[..., Tensor]] = None) -> Dict[str, Any]:
    """Write the K-step accumulate-then-update program (:func:`trace_accumulated_step`) as ONNX:
    inputs ``(*params, *frozen, x_0, *targets_0, ..., *state, *hyper)``, names from
    :class:`~compile_losses.signature.AccumStepSignature` (``info["signature"]``)."""
    from ..signature import AccumStepSignature
    from ._trace import optimizer_example, trace_accumulated_step

    start = time.perf_counter()
    graph = trace_accumulated_step(net, loss, micro_batches, opt, weight)
    first = tuple(micro_batches[0])

    def loss_example() -> Tuple[Tensor, ...]:
        with torch.no_grad():
            return (net(first[0]),) + first[1:]

    info = _export(graph, path, start, loss, loss_example)
    info["optimizer"] = opt.describe()
    info["signature"] = AccumStepSignature(optimizer_example(net, loss, first, opt)[0], len(micro_batches)).describe()
    return info


__all__ += ["export_accumulated_step_onnx"]
