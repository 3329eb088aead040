"""Trajectory parity: ``steps`` optimizer steps from the same start on fresh batches, per backend,
against eager ``torch.optim`` (``foreach=False``), judged by the float64 rule.

Rows per backend: ``trajectory.loss`` (the loss before each step, all ``steps`` of them judged as
one vector), ``final:<param>`` (each trained parameter after the last step) and
``state:<param>.<key>`` (the optimizer state after it). The reference is eager ``torch.optim`` in
the case's dtype (run twice: it must agree with itself bit for bit) and in float64 from the same
start on the same batches; clause 2 of the rule then lets a backend's error grow with the step
count exactly as eager's own does, with no tolerance set here. Where a row fails against eager's
own order, eager's error is taken over equally valid evaluation orders of the same trajectory (:func:`equivalent_orders`: rows permuted,
a batch cut into micro-batches; each kept only where its float64 run equals the reference), not
from eager's one order: in float32, Adam turns a sum that cancels to 0 in one order and to 1 ulp
in another into an lr-sized step (seed+multi_quantile: eager 2.7e-8 from float64 in its own
order, 3.4e-3 with the batch cut at row 2), and a backend's order is as valid as any of them.

Fresh batches: step ``i`` trains on the given case's rows permuted by a seeded generator, its
net input plus seeded Gaussian noise (scale 0.1 of its spread), so any loss's targets stay what
they are while every step sees a new batch. With ``accumulate=K`` a step's batch is cut into ``K``
micro-batches of unequal sizes; eager accumulates ``.grad`` over ``(loss_i * w_i / sum w)`` and a
backend computes each micro-batch's loss and gradients with its own train-step program (the
update of that call unused), the weighted sum and the update then by the functional optimizer.
"""
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..backends import Backend, Unsupported, get_backends, reference_for
from .report import ParityReport, Row, _one_line, not_run_rows
from .rule import ERROR, FAIL, NONDET, UNSUPPORTED, _bitwise_equal, judge

__all__ = ["equivalent_orders", "fresh_batches", "verify_trajectory"]

Batch = Tuple[Tensor, ...]


def fresh_batches(inputs: Sequence[Tensor], targets: Sequence[Tensor], steps: int, accumulate: int = 1,
                  seed: int = 0) -> List[List[Batch]]:
    """``steps`` lists of ``accumulate`` micro-batches ``(x, *targets)`` made from the case's rows
    (see the module docstring); targets whose dim 0 is not the batch are kept whole."""
    x = inputs[0]
    n = x.shape[0]
    if accumulate < 1 or accumulate > n:
        raise ValueError("accumulate must be between 1 and the batch size ({}), got {}".format(n, accumulate))
    gen = torch.Generator().manual_seed(seed)
    scale = float(x.detach().double().std()) if x.numel() > 1 and x.is_floating_point() else 1.0
    weights = torch.arange(1, accumulate + 1, dtype=torch.float64)
    sizes = torch.floor(weights / weights.sum() * (n - accumulate)).long() + 1
    sizes[-1] += n - int(sizes.sum())
    out: List[List[Batch]] = []
    for _ in range(steps):
        perm = torch.randperm(n, generator=gen)
        xi = x[perm]
        if xi.is_floating_point():
            xi = xi + (0.1 * scale) * torch.randn(xi.shape, generator=gen, dtype=torch.float64).to(xi.dtype)
        ts = tuple(t[perm] if t.dim() >= 1 and t.shape[0] == n else t for t in targets)
        micro, start = [], 0
        for size in sizes.tolist():
            end = start + size
            micro.append((xi[start:end],) + tuple(t[start:end] if t.dim() >= 1 and t.shape[0] == n else t for t in ts))
            start = end
        out.append(micro)
    return out


def equivalent_orders(batches: List[List[Batch]], seed: int = 1) -> List[List[List[Batch]]]:
    """Other evaluation orders of the same trajectory: every step's micro-batches with their rows
    permuted, and its largest micro-batch cut in two at a quarter, a half, three quarters and one
    row from either end. Each is the same computation only for a loss that is invariant to row
    order / sums over samples; :func:`verify_trajectory` keeps those its float64 run shows equal
    to the reference's."""
    gen = torch.Generator().manual_seed(seed)

    def rows(t: Tensor, index: Any, n: int) -> Tensor:
        return t[index] if t.dim() >= 1 and t.shape[0] == n else t

    permuted = []
    for micro in batches:
        step = []
        for b in micro:
            n = b[0].shape[0]
            perm = torch.randperm(n, generator=gen)
            step.append(tuple(rows(t, perm, n) for t in b))
        permuted.append(step)
    out = [permuted]
    biggest = max(b[0].shape[0] for micro in batches for b in micro)
    for cut in sorted({1, biggest // 4, biggest // 2, 3 * biggest // 4, biggest - 1} - {0, biggest}):
        split = []
        for micro in batches:
            i = max(range(len(micro)), key=lambda j: micro[j][0].shape[0])
            n = micro[i][0].shape[0]
            if not 0 < cut < n:
                break
            halves = [tuple(rows(t, slice(0, cut), n) for t in micro[i]), tuple(rows(t, slice(cut, n), n) for t in micro[i])]
            split.append(list(micro[:i]) + halves + list(micro[i + 1:]))
        else:
            out.append(split)
    return out


def _cast64(batches: List[List[Batch]]) -> List[List[Batch]]:
    return [[tuple(t.double() if t.is_floating_point() else t for t in b) for b in micro] for micro in batches]


def _flatten(losses: Sequence[Tensor], params: Dict[str, Tensor], state: Dict[str, Dict[str, Tensor]]
             ) -> Dict[str, Tensor]:
    out = {"trajectory.loss": torch.stack([l.detach().cpu().reshape(()) for l in losses])}
    for n, p in params.items():
        out["final:" + n] = p.detach().cpu()
    for n, s in state.items():
        for k, v in s.items():
            out["state:{}.{}".format(n, k)] = v.detach().cpu()
    return out


def _backend_trajectory(backend: Backend, net: nn.Module, loss: nn.Module, opt: Any,
                        batches: List[List[Batch]], weight: Any) -> Dict[str, Tensor]:
    from ..programs import apply_accumulated, frozen, trainable

    step = backend.prepare_optimizer_step(net, loss, batches[0][0], opt)
    params = {n: p.detach().clone() for n, p in trainable(net)}
    fixed = {n: p.detach().clone() for n, p in frozen(net)}
    state, hyper = opt.init_state(params), opt.hyper_tensors()
    apply = apply_accumulated(opt, normalize=weight is not None)
    losses: List[Tensor] = []
    for micro in batches:
        if len(micro) == 1:
            out = step(params, fixed, *micro[0], state=state, hyper=hyper)
        else:
            acc: Optional[Dict[str, Any]] = None
            for b in micro:
                part = step(params, fixed, *b, state=state, hyper=hyper)
                w = torch.ones((), dtype=torch.float64) if weight is None else weight(
                    _pred(net, params, fixed, b[0]), *b[1:])
                wv = w.to(part.loss.dtype)
                grads = {n: g * wv for n, g in part.grads.items()}
                acc = {"loss": part.loss * wv, "weight": w, "grads": grads} if acc is None else {
                    "loss": acc["loss"] + part.loss * wv, "weight": acc["weight"] + w,
                    "grads": {n: acc["grads"][n] + g for n, g in grads.items()}}
            out = apply(params, acc, state, hyper)
        losses.append(out.loss)
        params, state = out.new_params, out.new_state
    return _flatten(losses, params, state)


def _pred(net: nn.Module, params: Dict[str, Tensor], fixed: Dict[str, Tensor], x: Tensor) -> Tensor:
    with torch.no_grad():
        return torch.func.functional_call(net, {**dict(net.named_buffers()), **fixed, **params}, (x,))


def verify_trajectory(net: nn.Module, loss: nn.Module, inputs: Any, target: Any,
                      backends: Any = None, *, optimizer: str = "sgd", optimizer_args: Optional[Dict[str, Any]] = None,
                      steps: int = 32, accumulate: int = 1, seed: int = 0, label: Optional[str] = None,
                      spec: Any = None) -> ParityReport:
    """The trajectory check of one case (see the module docstring); ``backends`` as in
    :func:`compile_losses.verify`. Frozen parameters (``requires_grad=False``) stay as they are."""
    from ..optim import optimizer as make_optimizer
    from ..programs import eager_optimizer_trajectory
    from .rule import float64_case

    start = time.perf_counter()
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError("steps must be an integer >= 1, got {!r}".format(steps))
    if isinstance(accumulate, bool) or not isinstance(accumulate, int) or accumulate < 1:
        raise ValueError("accumulate must be an integer >= 1, got {!r}".format(accumulate))
    opt = make_optimizer(optimizer, **dict(optimizer_args or {}))
    inputs = (inputs,) if isinstance(inputs, Tensor) else tuple(inputs)
    targets = (target,) if isinstance(target, Tensor) else tuple(target)
    spec = spec or _spec_of(loss)
    label = label or "{}+{} {} batch={} {} x{}{}".format(
        type(net).__name__, type(loss).__name__, str(inputs[0].dtype).replace("torch.", ""), inputs[0].shape[0],
        opt.name, steps, " K={}".format(accumulate) if accumulate > 1 else "")
    weight = _micro_batch_weight(loss, spec) if accumulate > 1 else None
    batches = fresh_batches(inputs, targets, steps, accumulate, seed)
    modes = [(m, m.training) for m in (net, loss)]
    for m, _ in modes:
        m.eval()
    rows: List[Row] = []
    try:
        first = _flatten(*eager_optimizer_trajectory(net, loss, opt, batches, weight))
        second = _flatten(*eager_optimizer_trajectory(net, loss, opt, batches, weight))
        nondet = {k for k in first if not _bitwise_equal(first[k], second[k])}
        net64, loss64, _, _ = float64_case(net, loss, (), ())
        weight64 = _micro_batch_weight(loss64, spec) if accumulate > 1 else None
        ref64 = _flatten(*eager_optimizer_trajectory(net64, loss64, opt, _cast64(batches), weight64))
        spread: List[List[Dict[str, Tensor]]] = []  # eager over equivalent orders, run once, when a row needs it

        def variants() -> List[Dict[str, Tensor]]:
            if not spread:
                spread.append(_eager_variants(net, loss, net64, loss64, opt, batches, spec, ref64))
            return spread[0]

        for backend in get_backends(backends):
            rows += _rows(backend, net, loss, opt, batches, weight, first, second, ref64, nondet, label, spec,
                          variants)
    finally:
        for m, mode in modes:
            m.train(mode)
    case = {"case": label, "net": type(net).__name__, "loss": type(loss).__name__, "optimizer": opt.describe(),
            "steps": steps, "accumulate": accumulate,
            "frozen": [n for n, p in net.named_parameters() if not p.requires_grad],
            "inputs": [[str(t.dtype).replace("torch.", ""), list(t.shape)] for t in inputs],
            "targets": [[str(t.dtype).replace("torch.", ""), list(t.shape)] for t in targets]}
    return ParityReport(rows, [case], [], time.perf_counter() - start)


def _eager_variants(net: nn.Module, loss: nn.Module, net64: nn.Module, loss64: nn.Module, opt: Any,
                    batches: List[List[Batch]], spec: Any, ref64: Dict[str, Tensor]) -> List[Dict[str, Tensor]]:
    """Eager's trajectory in the case's dtype by each of :func:`equivalent_orders` whose float64
    trajectory equals the reference (``assert_close`` in float64): the spread of eager's own
    rounding over equally valid orders. Adam's ``m / sqrt(v)`` on a gradient that cancels to 0
    makes a 1-ulp difference in a sum an lr-sized step; which order cancels exactly is luck."""
    from ..programs import eager_optimizer_trajectory

    try:
        weight, weight64 = _micro_batch_weight(loss, spec), _micro_batch_weight(loss64, spec)
    except ValueError:  # a loss accumulation cannot weight: no cut orders
        weight = weight64 = None
    out = []
    for order in equivalent_orders(batches):
        cut = any(len(a) != len(b) for a, b in zip(order, batches))
        if cut and getattr(loss, "reduction", "mean") not in ("mean", "sum"):
            continue
        try:
            got64 = _flatten(*eager_optimizer_trajectory(net64, loss64, opt, _cast64(order), weight64))
            for k, v in ref64.items():
                torch.testing.assert_close(got64[k], v)
        except Exception:  # not the same computation for this loss (or it cannot run so): not an order of it
            continue
        out.append(_flatten(*eager_optimizer_trajectory(net, loss, opt, order, weight)))
    return out


def _micro_batch_weight(loss: nn.Module, spec: Any) -> Any:
    """:func:`~compile_losses.programs.micro_batch_weight` of ``loss`` with the registry entry's
    ``mean_divisor`` and the loss's own init settings."""
    from ..programs import micro_batch_weight

    settings = {k: v for k, v in vars(loss).items() if not k.startswith("_")}
    return micro_batch_weight(loss, getattr(spec, "mean_divisor", None), _init_kwargs(loss, settings))


def _spec_of(loss: nn.Module) -> Any:
    from ..registry import LOSSES

    return next((s for s in LOSSES.values() if type(loss) is s.module), None)


def _init_kwargs(loss: nn.Module, settings: Dict[str, Any]) -> Dict[str, Any]:
    # the loss's init settings as the registry's mean_divisor takes them (only those it names)
    import inspect

    try:
        names = set(inspect.signature(type(loss).__init__).parameters) - {"self"}
    except (TypeError, ValueError):
        return {}
    out = {k: v for k, v in settings.items() if k in names}
    for k in names:  # tensors a loss keeps as buffers (class weights)
        if k not in out and k in dict(loss.named_buffers()):
            out[k] = dict(loss.named_buffers())[k]
    return out


def _rows(backend: Backend, net: nn.Module, loss: nn.Module, opt: Any, batches: List[List[Batch]], weight: Any,
          first: Dict[str, Tensor], second: Dict[str, Tensor], ref64: Dict[str, Tensor], nondet: set, label: str,
          spec: Any, variants: Callable[[], Sequence[Dict[str, Tensor]]] = list) -> List[Row]:
    name = backend.name
    not_run = not_run_rows(backend, label, spec)
    if not_run:
        return not_run
    tolerance = (getattr(spec, "tolerances", {}) or {}).get(name)
    if backend is reference_for("cpu"):
        got: Dict[str, Tensor] = second
    else:
        try:
            with backend.parity_mode():
                got = _backend_trajectory(backend, net, loss, opt, batches, weight)
        except Unsupported as exc:
            return [Row(label, name, "trajectory", UNSUPPORTED, detail=str(exc))]
        except Exception as exc:  # a failure to build or run is a row, never a pass
            return [Row(label, name, "trajectory", ERROR, detail=_one_line(exc))]
    rows = []
    for output, expected in first.items():
        if output not in got:
            rows.append(Row(label, name, output, ERROR, detail="backend did not return this output"))
        elif output in nondet:
            rows.append(Row(label, name, output, NONDET, detail="eager run twice differs (bitwise)"))
        else:
            verdict = judge(got[output], expected, ref64[output], tolerance=tolerance)
            if verdict["status"] == FAIL:  # against eager's own order: judged by its spread over orders
                verdict = judge(got[output], expected, ref64[output], tolerance=tolerance,
                                eager_variants=[v[output] for v in variants()])
            rows.append(Row(label, name, output, **verdict))
    return rows
