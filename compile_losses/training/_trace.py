"""Loss-and-gradient and train-step functions, eager (``torch.func``) and traced (``make_fx``).

Nothing here knows any particular loss: the gradient comes from ``torch.func.grad_and_value`` of
whatever ``loss(pred, *targets)`` computes, so a user's loss exports the same way ours do.

Traced graphs are flat: ``(pred, *targets) -> (loss, grad_pred)`` and
``(*params, x, *targets, lr) -> (loss, *grads, *new_params)``, so every exporter sees plain
positional tensors and the names in :class:`TracedGraph` line up one to one.
"""
import hashlib
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.fx.experimental.proxy_tensor import make_fx

from .._reduction import faithful_reductions
from ..dims import carry_dims, dims_of, distinct_sizes, resize_dims, symbolic_shape
from ..diagnose import traceback_frame, unsupported, user_frame
from ..errors import ExportUnsupportedError
from ..programs import cotangent, sgd_update
from ..signature import COTANGENT, TrainStepResult, TrainStepSignature, target_names
from ._decomp import LinearAs2D, export_decompositions

BATCH = "batch"


# ---------------------------------------------------------------------------------------------
# eager torch.func versions: the reference the exported graphs are judged against
# ---------------------------------------------------------------------------------------------
def loss_and_grad(loss: nn.Module) -> Callable[..., Tuple[Tensor, Tensor]]:
    """``(pred, *targets) -> (loss value, d loss / d pred)`` with ``torch.func``; targets get no
    gradient (integer class indices pass through)."""

    def run(pred: Tensor, *targets: Tensor) -> Tuple[Tensor, Tensor]:
        grad, value = torch.func.grad_and_value(_scalar_loss(loss, targets))(pred)
        return value, grad

    return run


def loss_and_vjp(loss: nn.Module) -> Callable[..., Tuple[Tensor, Tensor]]:
    """``(pred, *targets, cotangent) -> (loss value, cotangent^T d loss / d pred)`` with
    ``torch.func.vjp``: the gradient program of a loss that does not reduce to a scalar."""

    def run(pred: Tensor, *rest: Tensor) -> Tuple[Tensor, Tensor]:
        targets, cot = rest[:-1], rest[-1]
        value, pullback = torch.func.vjp(lambda p: loss(p, *targets), pred)
        (grad,) = pullback(cot)
        return value, grad

    return run


def train_step(net: nn.Module, loss: nn.Module, lr: float) -> Callable[..., TrainStepResult]:
    """``(params, x, *targets) -> TrainStepResult``: one plain SGD step with ``torch.func``,
    computed from ``params`` (a dict like ``dict(net.named_parameters())``) without touching the
    net. Parameters missing from ``params`` and buffers are taken from the net as constants."""

    def run(params: Dict[str, Tensor], x: Tensor, *targets: Tensor) -> TrainStepResult:
        names = [n for n in params]
        fixed = _fixed_state(net, names)

        def compute(p: Dict[str, Tensor]) -> Tensor:
            return _scalar_loss(loss, targets)(torch.func.functional_call(net, {**fixed, **p}, (x,)))

        grads, value = torch.func.grad_and_value(compute)(dict(params))
        return TrainStepResult(value, grads, sgd_update(dict(params), grads, lr))

    return run


def _scalar_loss(loss: nn.Module, targets: Sequence[Tensor]) -> Callable[[Tensor], Tensor]:
    def value(pred: Tensor) -> Tensor:
        out = loss(pred, *targets)
        if out.dim() != 0:
            raise ValueError(
                "loss must return a scalar to be differentiated (reduction 'mean' or 'sum'), got {} "
                "returning shape {}".format(loss_label(loss), tuple(out.shape)))
        return out

    return value


def _fixed_state(net: nn.Module, trained: Sequence[str]) -> Dict[str, Tensor]:
    # Frozen parameters and buffers enter the graph as constants, as they would in eager.
    state = {n: p.detach() for n, p in net.named_parameters() if n not in trained}
    state.update(dict(net.named_buffers()))
    return state


def trainable_names(net: nn.Module) -> List[str]:
    """The parameters a train step updates: every ``requires_grad`` one, in ``named_parameters`` order."""
    return [n for n, p in net.named_parameters() if p.requires_grad]


# ---------------------------------------------------------------------------------------------
# traced graphs
# ---------------------------------------------------------------------------------------------
@dataclass
class TracedGraph:
    """A flat joint graph and everything an exporter needs to name and shape its inputs."""

    kind: str                      # "loss_and_grad" | "train_step"
    module: torch.fx.GraphModule
    example: Tuple[Tensor, ...]    # flat example inputs (trace batch; see _trace_batch)
    input_names: List[str]
    input_roles: List[str]         # "pred" | "param" | "input" | "target" | "lr" | "cotangent"
    output_names: List[str]
    batched: List[bool]            # input has the dynamic batch as dim 0
    params: List[Dict[str, str]]   # {"name", "input", "grad", "new"} per trained parameter
    loss_label: str

    @property
    def signature(self) -> TrainStepSignature:
        """A train step's signature (names and order of its inputs and outputs)."""
        return TrainStepSignature(tuple(p["name"] for p in self.params),
                                  tuple(n for n, r in zip(self.input_names, self.input_roles) if r == "target"))

    def dynamic_shapes(self) -> Tuple[Optional[Dict[int, Any]], ...]:
        """The batch on dim 0 of the batched inputs, and every dim marked dynamic on the example
        (:mod:`compile_losses.dims`), one ``torch.export.Dim`` per symbol."""
        symbols = {BATCH: torch.export.Dim(BATCH)}
        out: List[Optional[Dict[int, Any]]] = []
        for t, b in zip(self.example, self.batched):
            dims = {0: BATCH} if b else {}
            dims.update(dims_of(t))
            for name in dims.values():
                symbols.setdefault(name, torch.export.Dim(name))
            out.append({d: symbols[n] for d, n in dims.items()} or None)
        return tuple(out)


def loss_label(loss: nn.Module) -> str:
    cls = type(loss)
    return "{}.{}".format(cls.__module__, cls.__qualname__)


def trace_loss_and_grad(loss: nn.Module, example_inputs: Sequence[Tensor], target: str = "onnx") -> TracedGraph:
    """``make_fx`` (symbolic) of ``(pred, *targets) -> (loss, d loss / d pred)``, with the op
    rewrites ``target`` (``"onnx"`` or ``"aoti"``) needs (see :func:`export_decompositions`).
    A loss that does not reduce to a scalar gets the graph ``(pred, *targets, cotangent) -> (loss,
    grad_pred)`` (:func:`loss_and_vjp`), the cotangent an input shaped like the loss (its dim 0
    the dynamic batch when the loss's dim 0 is the batch)."""
    pred, targets = _split_pred(example_inputs, "example_inputs", "(pred, *targets)")
    batched = [True] + [_has_batch(t, pred.shape[0]) for t in targets]
    names = ["pred"] + target_names(loss, len(targets))
    roles = ["pred"] + ["target"] * len(targets)
    args: Tuple[Tensor, ...] = (pred,) + tuple(targets)
    value = _loss_value(loss, args)
    if value is not None and value.dim() != 0:
        shape = tuple(value.shape)
        args += (cotangent(shape, value.dtype, pred.device),)
        batched.append(shape[0] == pred.shape[0])
        names.append(COTANGENT)
        roles.append(COTANGENT)
        program = loss_and_vjp
    else:
        program = loss_and_grad
    _check_unique(names, loss)
    n_loss_args = 1 + len(targets)
    graph = _dynamic_traced(program, args, batched, loss, target, args[:n_loss_args],
                            batched[:n_loss_args])
    return TracedGraph("loss_and_grad", graph.module, graph.example, names, roles, ["loss", "grad_pred"], batched, [],
                       loss_label(loss))


def _loss_value(loss: nn.Module, args: Tuple[Tensor, ...]) -> Optional[Tensor]:
    """The loss on ``args`` from one eager run (its shape says whether the graph takes a
    cotangent); a loss that fails here is left to the trace, which reports it."""
    try:
        with torch.no_grad():
            value = loss(*args)
    except Exception:  # noqa: BLE001 - the trace below names the failure
        return None
    return value if isinstance(value, Tensor) else None


def trace_train_step(net: nn.Module, loss: nn.Module, example_inputs: Sequence[Tensor],
                     target: str = "onnx") -> TracedGraph:
    """``make_fx`` (symbolic) of ``(*params, x, *targets, lr) -> (loss, *grads, *new_params)``,
    with the op rewrites ``target`` (``"onnx"`` or ``"aoti"``) needs."""
    x, targets = _split_pred(example_inputs, "example_inputs", "(x, *targets)")
    signature = TrainStepSignature.of(net, loss, len(targets))
    with torch.no_grad():
        value = _loss_value(loss, (net(x),) + tuple(targets))
    if value is not None and value.dim() != 0:
        raise ExportUnsupportedError(
            "{} returns shape {}, not a scalar: a train step needs a scalar loss (reduction 'mean' or 'sum'); "
            "its gradient is exported as loss_and_grad, with the cotangent as an input".format(
                loss_label(loss), tuple(value.shape)), loss=loss_label(loss))
    names = list(signature.params)
    state = dict(net.named_parameters())
    params = [state[n].detach() for n in names]
    lr = torch.tensor(0.01, dtype=params[0].dtype if params[0].is_floating_point() else torch.float32)
    fixed = _fixed_state(net, names)
    n = len(names)

    def program(used: nn.Module) -> Callable[..., Tuple[Tensor, ...]]:
        def step(*args: Tensor) -> Tuple[Tensor, ...]:
            p = dict(zip(names, args[:n]))
            xs, ts, rate = args[n], args[n + 1:-1], args[-1]

            def compute(q: Dict[str, Tensor]) -> Tensor:
                return _scalar_loss(used, ts)(torch.func.functional_call(net, {**fixed, **q}, (xs,)))

            grads, value = torch.func.grad_and_value(compute)(p)
            new = sgd_update(p, grads, rate)
            return (value,) + tuple(grads[k] for k in names) + tuple(new[k] for k in names)

        return step

    batched = [False] * n + [True] + [_has_batch(t, x.shape[0]) for t in targets] + [False]
    with torch.no_grad():
        pred = net(x)
    graph = _dynamic_traced(program, tuple(params) + (x,) + tuple(targets) + (lr,), batched, loss, target,
                            (pred,) + tuple(targets), [True] + batched[n + 1:-1])
    return TracedGraph("train_step", graph.module, graph.example, signature.input_names, signature.input_roles,
                       signature.output_names, batched, signature.param_table, loss_label(loss))


# Each node keeps the user's source line (the exporters carry it into the graph's metadata, where
# compile_losses.localize reads it); make_fx takes the switch in the torch versions that have it.
_STACK_TRACES = ({"record_stack_traces": True}
                 if "record_stack_traces" in inspect.signature(make_fx).parameters else {})


def _dynamic_traced(program: Callable[[nn.Module], Callable[..., Any]], args: Tuple[Tensor, ...], batched: List[bool],
                    loss: nn.Module, target: str, loss_args: Tuple[Tensor, ...], loss_batched: List[bool]) -> "_Traced":
    """``make_fx`` of ``program(loss)``; when tracing specialized the batch (``len(query)`` or
    ``int(x.shape[0])`` in the loss read it as a Python int, so the graph would take its trace batch
    only), the loss is captured first by ``torch.export``'s strict mode with the batch dynamic (Dynamo
    keeps such sizes symbolic) and the program traced through that capture."""
    graph = _make_fx(program(loss), args, batched, loss, target)
    if not _static_batch(graph, batched):
        return graph
    batch = torch.export.Dim(BATCH)
    example = _trace_batch(loss_args, loss_batched)
    try:
        with faithful_reductions():
            captured = torch.export.export(loss, example, dynamic_shapes=tuple({0: batch} if b else None
                                                                               for b in loss_batched), strict=True)
    except Exception as exc:  # torch.export raises many types: one line naming the op, class and line
        raise unsupported(exc, loss, "its gradient graph: tracing specialized the batch dimension, and "
                                     "torch.export's strict capture failed") from None
    graph = _make_fx(program(captured.module()), args, batched, loss, target)
    if _static_batch(graph, batched):
        raise ExportUnsupportedError("cannot trace the gradient of {} with a dynamic batch: tracing specializes "
                                     "the batch dimension to its example size".format(loss_label(loss)),
                                     loss=loss_label(loss))
    return graph


def _static_batch(graph: "_Traced", batched: List[bool]) -> bool:
    """Whether a batched input of the traced graph has a fixed dim 0 (the trace specialized it)."""
    from torch.fx.experimental.symbolic_shapes import is_concrete_int

    inputs = [n for n in graph.module.graph.nodes if n.op == "placeholder"]
    for node, b in zip(inputs, batched):
        val = node.meta.get("val")
        if b and isinstance(val, Tensor) and val.dim() and is_concrete_int(val.shape[0]):
            return True
    return False


class _Traced(NamedTuple):
    module: torch.fx.GraphModule
    example: Tuple[Tensor, ...]


def _make_fx(fn: Callable[..., Any], args: Tuple[Tensor, ...], batched: List[bool], loss: nn.Module,
             target: str = "onnx") -> _Traced:
    example = _trace_batch(args, batched)
    table = export_decompositions(target)
    try:
        with faithful_reductions(), LinearAs2D():
            gm = make_fx(torch.func.functionalize(fn, remove="mutations"), decomposition_table=table,
                         tracing_mode="symbolic", _allow_non_fake_inputs=True, **_STACK_TRACES)(*example)
    except (NotImplementedError, RuntimeError) as exc:
        if any(k in str(exc) for k in ("data-dependent", "DataDependent", "_local_scalar_dense")):
            raise unsupported(exc, loss, "its gradient graph") from None
        # e.g. "the derivative for 'zeta' is not implemented": no gradient graph exists at all.
        where = user_frame(str(exc)) or traceback_frame(exc)
        raise ExportUnsupportedError("cannot trace the gradient of {}: {}{}".format(
            loss_label(loss), _first_line(exc), " (at {})".format(where) if where else ""),
            loss=loss_label(loss), source=where) from None
    except (ValueError, TypeError) as exc:
        # The loss's own checks, seen with a symbolic batch (sizes print as s0, s1, ...).
        raise ExportUnsupportedError(
            "cannot trace {} with a dynamic batch: {} (inputs whose dim 0 is the batch get the dynamic "
            "dim, the others keep their shape: {})".format(
                loss_label(loss), _first_line(exc),
                ", ".join("{}{}".format(tuple(a.shape), "*" if b else "") for a, b in zip(args, batched))),
            loss=loss_label(loss)) from None
    gm.eval()  # a graph module is created in training mode; the exporters warn about that
    return _Traced(gm, example)


def _trace_batch(args: Tuple[Tensor, ...], batched: List[bool]) -> Tuple[Tensor, ...]:
    """Example inputs whose batch size is a symbol of its own.

    Symbolic tracing specializes sizes 0 and 1 and gives equal sizes one symbol ("duck sizing"),
    so a batch of 1, or one that equals a feature size, would be baked into the graph. Rows are
    repeated to the smallest batch >= 2 that no other dimension has; values never matter here.
    """
    batch = next(a.shape[0] for a, b in zip(args, batched) if b)
    if batch == 0:
        raise ValueError("example_inputs must have a batch of at least 1 to trace, got batch 0")
    other = {s for a, b in zip(args, batched) for s in (a.shape[1:] if b else a.shape)}
    size = batch
    if size < 2 or size in other:
        size = 2
        while size in other:
            size += 1
    if size == batch:
        out = tuple(carry_dims(a, a.detach()) for a in args)
    else:
        rows = torch.arange(size) % batch
        out = tuple(carry_dims(a, a.detach().index_select(0, rows.to(a.device)) if b else a.detach())
                    for a, b in zip(args, batched))
    # dims marked dynamic beyond the batch (a sequence length, an image size): the same two rules
    return resize_dims(out, distinct_sizes(out, taken=[size]))


def _split_pred(example_inputs: Sequence[Tensor], name: str, form: str) -> Tuple[Tensor, Tuple[Tensor, ...]]:
    inputs = tuple(example_inputs)
    if not inputs or not all(isinstance(t, Tensor) for t in inputs):
        raise TypeError("{} must be a non-empty tuple of tensors {}, got {}".format(
            name, form, tuple(type(t).__name__ for t in inputs)))
    if inputs[0].dim() == 0:
        raise ValueError("{}[0] must have a batch dimension, got a 0-d tensor".format(name))
    return inputs[0], inputs[1:]


def _has_batch(t: Tensor, batch: int) -> bool:
    # A target shares the dynamic batch when its first dim is the batch (class indices (N,),
    # per-sample targets (N, ...)); anything else (a (C,) table, a 0-d setting) stays static.
    return t.dim() >= 1 and t.shape[0] == batch


def _check_unique(names: List[str], loss: nn.Module) -> None:
    seen = set()
    for n in names:
        if n in seen:
            raise ValueError("graph input/output names must be unique, got {!r} twice (parameter names after "
                             "replacing '.' by '_', targets of {})".format(n, loss_label(loss)))
        seen.add(n)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# float64 accumulation for every float reduction in a graph (autograd's too)
# ---------------------------------------------------------------------------------------------
_SUMS = {torch.ops.aten.sum.dim_IntList, torch.ops.aten.sum.default, torch.ops.aten.mean.dim,
         torch.ops.aten.mean.default}
_NARROW = (torch.float32, torch.float16, torch.bfloat16)


def faithful_graph(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Make every float32/16 sum and mean in ``gm`` accumulate in float64 and cast back.

    ``faithful_reductions()`` covers the loss's own reductions; autograd adds more (a bias
    gradient sums the batch), and onnxruntime's serial float32 ReduceSum over 2^20+ elements
    drifts ~1e-3 relative where eager's cascaded sum stays ~1e-7. Also hands a float64 op's
    Python-float operands (a temperature) over as float64 initializers. Returns a rewritten copy.
    """
    gm = torch.fx.GraphModule(gm, gm.graph)
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in _SUMS or node.kwargs.get("dtype") is not None:
            continue
        val = node.meta.get("val")
        if not isinstance(val, Tensor) or val.dtype not in _NARROW:
            continue
        node.kwargs = dict(node.kwargs, dtype=torch.float64)
        with gm.graph.inserting_after(node):
            cast = gm.graph.call_function(torch.ops.aten._to_copy.default, (node,), {"dtype": val.dtype})
        node.replace_all_uses_with(cast, delete_user_cb=lambda user: user is not cast)
        new_val = val.to(torch.float64)
        node.meta["val"] = new_val
        cast.meta["val"] = val
    _float64_scalars(gm)
    _symbolic_scalars(gm)
    gm.graph.lint()
    gm.recompile()
    return gm


def _symbolic_scalars(gm: torch.fx.GraphModule) -> None:
    # A scalar that depends on a dynamic size (group norm's backward scales by 1 / (C/G * H * W))
    # reaches aten.mul.Scalar as a SymFloat, which the ONNX exporter's Scalar overload cannot
    # take ("float() argument must be ... not 'SymbolicTensor'"). Hand it over as a 0-d tensor.
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not torch.ops.aten.mul.Scalar:
            continue
        if len(node.args) != 2 or not isinstance(node.args[1], torch.fx.Node):
            continue
        val = node.meta.get("val")
        if not isinstance(val, Tensor):
            continue
        with gm.graph.inserting_before(node):
            scalar = gm.graph.call_function(torch.ops.aten.scalar_tensor.default, (node.args[1],),
                                            {"dtype": val.dtype, "device": val.device})
        scalar.meta["val"] = torch.empty((), dtype=val.dtype, device=val.device)
        node.target = torch.ops.aten.mul.Tensor
        node.args = (node.args[0], scalar)


_ELEMENTWISE_TENSOR_OPS = (torch.ops.aten.div.Tensor, torch.ops.aten.mul.Tensor, torch.ops.aten.add.Tensor,
                           torch.ops.aten.sub.Tensor)


def _float64_scalars(gm: torch.fx.GraphModule) -> None:
    # The exporter stores a Python-float operand of a float64 op as a float32 Constant cast to
    # double: a temperature of 0.1 became 0.100000001490116 (1.5e-8 relative in every logit of
    # a float64 graph). Hand it over as a float64 0-d buffer (an initializer) instead.
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in _ELEMENTWISE_TENSOR_OPS:
            continue
        val = node.meta.get("val")
        if not isinstance(val, Tensor) or val.dtype != torch.float64:
            continue
        args = list(node.args)
        for i, a in enumerate(args):
            if isinstance(a, float) and i > 0 and float(torch.tensor(a, dtype=torch.float32)) != a:
                name = "_float64_scalar_{}".format(count)
                count += 1
                gm.register_buffer(name, torch.tensor(a, dtype=torch.float64, device=val.device))
                with gm.graph.inserting_before(node):
                    attr = gm.graph.get_attr(name)
                attr.meta["val"] = torch.empty((), dtype=torch.float64, device=val.device)
                args[i] = attr
        node.args = tuple(args)


# ---------------------------------------------------------------------------------------------
# cache keys: graphs depend on a module's structure and settings, and on the values of what they
# capture as constants (a loss's class weights, a net's buffers), not on trained parameter values
# ---------------------------------------------------------------------------------------------
def structure_key(kind: str, net: Optional[nn.Module], loss: nn.Module, example_inputs: Sequence[Tensor],
                  extra: Tuple[Any, ...] = ()) -> Tuple[Any, ...]:
    # a target whose dim 0 is not the batch (unpaired negatives (M, D)) keys on that dim too: a
    # graph traced with it tied to the batch (M = N) cannot take another M
    first = example_inputs[0] if example_inputs else None
    batch = first.shape[0] if first is not None and first.dim() else None
    inputs = tuple((str(t.dtype), symbolic_shape(t)[1:], t.dim(), str(t.device))
                   + (() if t.dim() == 0 or t.shape[0] == batch else (t.shape[0],)) for t in example_inputs)
    net_key = None
    if net is not None:
        trained = trainable_names(net)
        net_key = (_module_key(net, constants=False),
                   tuple((n, str(p.dtype), tuple(p.shape)) for n, p in net.named_parameters() if n in trained),
                   _tensor_digest(_fixed_state(net, trained)))
    return (kind, net_key, _module_key(loss, constants=True), inputs) + tuple(extra)


def _module_key(module: nn.Module, constants: bool) -> Tuple[Any, ...]:
    parts: List[Any] = []
    for name, m in module.named_modules():
        settings = tuple(sorted((k, repr(v)) for k, v in vars(m).items()
                                if not k.startswith("_") and isinstance(v, (bool, int, float, str, tuple, type(None)))))
        parts.append((name, type(m).__module__, type(m).__qualname__, settings))
    if constants:
        parts.append(_tensor_digest(dict(module.state_dict(keep_vars=False))))
    return tuple(parts)


def _tensor_digest(tensors: Dict[str, Tensor]) -> str:
    h = hashlib.sha1()
    for name in sorted(tensors):
        t = tensors[name]
        if t is None:
            continue
        h.update("{}:{}:{}".format(name, t.dtype, tuple(t.shape)).encode())
        h.update(t.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# the optimizer train step: (*params, *frozen, x, *targets, *state, *hyper) -> (loss, *grads,
# *new_params, *new_state), the same program (compile_losses.programs.flat_optimizer_step)
# ---------------------------------------------------------------------------------------------
def optimizer_example(net: nn.Module, loss: nn.Module, example_inputs: Sequence[Tensor], opt: Any
                      ) -> Tuple[Any, Tuple[Tensor, ...], List[bool]]:
    """The optimizer step's signature, flat example inputs (the net's parameters, the optimizer's
    initial state and hyper-parameters) and which of them carry the batch."""
    from ..programs import optim_flat_example

    x, targets = _split_pred(example_inputs, "example_inputs", "(x, *targets)")
    sig, flat = optim_flat_example(net, loss, (x,) + tuple(targets), opt)
    k, f = len(sig.params), len(sig.frozen)
    batched = ([False] * (k + f) + [True] + [_has_batch(t, x.shape[0]) for t in targets]
               + [False] * (len(flat) - k - f - 1 - len(targets)))
    return sig, tuple(flat), batched


def trace_optimizer_step(net: nn.Module, loss: nn.Module, example_inputs: Sequence[Tensor], opt: Any,
                         target: str = "onnx") -> TracedGraph:
    """``make_fx`` (symbolic) of the optimizer train step, with the op rewrites ``target`` needs."""
    from ..programs import flat_optimizer_step

    sig, flat, batched = optimizer_example(net, loss, example_inputs, opt)
    x, targets = example_inputs[0], tuple(example_inputs[1:])
    with torch.no_grad():
        pred = net(x)
    graph = _dynamic_traced(lambda l: flat_optimizer_step(net, l, opt, sig), flat, batched, loss, target,
                            (pred,) + targets, [True] + [_has_batch(t, x.shape[0]) for t in targets])
    return TracedGraph("train_step", graph.module, graph.example, sig.input_names, sig.input_roles,
                       sig.output_names, batched, sig.param_table, loss_label(loss))


# ---------------------------------------------------------------------------------------------
# the K-step accumulate-then-update program: (*params, *frozen, x_0, *targets_0, ..., x_<K-1>,
# *targets_<K-1>, *state, *hyper) -> the optimizer step's outputs (compile_losses.programs.
# flat_accumulated_step); every micro-batch shares the one dynamic batch size
# ---------------------------------------------------------------------------------------------
def trace_accumulated_step(net: nn.Module, loss: nn.Module, micro_batches: Sequence[Sequence[Tensor]], opt: Any,
                           weight: Optional[Callable[..., Tensor]] = None, target: str = "onnx") -> TracedGraph:
    """``make_fx`` (symbolic) of one program for ``len(micro_batches)`` micro-batches of one
    size: each micro-batch's loss and gradients weighted by ``weight`` (default
    :func:`compile_losses.programs.equal_micro_batch_weight` of the loss: 1 for a ``"mean"``
    loss, no normalization for a ``"sum"`` one), summed, and the optimizer's update."""
    from ..programs import equal_micro_batch_weight, flat_accumulated_step, optim_flat_example
    from ..signature import AccumStepSignature

    batches = [tuple(b) for b in micro_batches]
    if len(batches) < 2:
        raise ValueError("micro_batches must hold at least 2 micro-batches (one is the plain step), got {}".format(
            len(batches)))
    sizes = {b[0].shape[0] if b and isinstance(b[0], Tensor) and b[0].dim() else None for b in batches}
    if len(sizes) != 1 or None in sizes or len({len(b) for b in batches}) != 1:
        raise ValueError("micro_batches must be (x, *targets) tuples of one batch size (the graph's dynamic dim), "
                         "got sizes {}".format(sorted(str(s) for s in sizes)))
    step_sig, flat1 = optim_flat_example(net, loss, batches[0], opt)
    sig = AccumStepSignature(step_sig, len(batches))
    if weight is None:
        weight = equal_micro_batch_weight(loss)
    k, f, n = len(step_sig.params), len(step_sig.frozen), len(batches[0])
    x = batches[0][0]
    flat = tuple(flat1[:k + f]) + tuple(t for b in batches for t in b) + tuple(flat1[k + f + n:])
    per_batch = [True] + [_has_batch(t, x.shape[0]) for t in batches[0][1:]]
    batched = [False] * (k + f) + per_batch * len(batches) + [False] * (len(flat1) - k - f - n)
    graph = _make_fx(flat_accumulated_step(net, loss, opt, sig, weight), flat, batched, loss, target)
    return TracedGraph("train_step", graph.module, graph.example, sig.input_names, sig.input_roles,
                       sig.output_names, batched, step_sig.param_table, loss_label(loss))
