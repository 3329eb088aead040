"""The three programs every consumer runs, written once: forward, loss-and-gradient, train step.

Backends lower these (compile, script, export) and parity, export fixtures, the fast paths'
eager candidates and the benchmarks' references call them; nobody writes its own copy.

* ``autograd_loss_and_grad(fn)``: ``(pred, *targets) -> (value, d value / d pred)`` by autograd
  through any callable ``fn`` computing the loss (eager, scripted or compiled). A loss that does not
  reduce to a scalar (``reduction="none"``) gets the vector-Jacobian product with :func:`cotangent`,
  a fixed seeded random tensor shaped like the loss (as ``torch.autograd.gradcheck`` checks with
  random ``grad_outputs``): ones would only check the gradient of the loss's sum.
* ``autograd_train_step(fn, named_params, lr)``: ``(x, *targets) -> TrainStepResult``: the loss
  ``fn(x, *targets)`` (which reads ``named_params``), their gradients and :func:`sgd_update`; no
  parameter and no ``.grad`` is changed.
* ``eager_loss_and_grad(loss)`` / ``eager_train_step(net, loss, lr)``: the eager reference of both.
* ``sgd_update``: the one update rule, ``p - lr * grad``.

The train step's names and order are :class:`compile_losses.signature.TrainStepSignature`'s.
"""
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .signature import OptimStepSignature, TrainStepResult, TrainStepSignature

__all__ = ["TrainStepResult", "TrainStepSignature", "autograd_loss_and_grad", "autograd_train_step", "check_lr",
           "COTANGENT_SEED", "cotangent", "cotangent_for", "eager_loss_and_grad", "eager_train_step", "sgd_update",
           "seed_grad", "trainable"]


def check_lr(lr: object, name: str = "lr") -> float:
    """A learning rate as a float: a real number (Python or numpy scalar), finite and > 0."""
    import math
    import numbers

    if isinstance(lr, bool) or not isinstance(lr, numbers.Real):
        raise TypeError("{} must be a real number, got {}".format(name, type(lr).__name__))
    value = float(lr)
    if not math.isfinite(value) or value <= 0:
        raise ValueError("{} must be a finite number > 0, got {!r}".format(name, value))
    return value


# The seed of every non-scalar loss's cotangent: eager, every autograd backend, every exported
# loss-and-gradient graph's fixtures and parity's float64 reference draw the same values.
COTANGENT_SEED = 20261202


def cotangent(shape: Sequence[int], dtype: torch.dtype, device: "torch.device | str" = "cpu") -> Tensor:
    """The fixed cotangent of a non-scalar loss of ``shape``: standard normal draws from
    :data:`COTANGENT_SEED`, made in float64 and rounded to ``dtype``, so a float32 and a float64
    run get the same vector (to float32's rounding); it depends on the shape only."""
    gen = torch.Generator().manual_seed(COTANGENT_SEED)
    return torch.randn(tuple(int(s) for s in shape), generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)


def cotangent_for(shape: Sequence[Any], batch: int, dtype: torch.dtype,
                  device: "torch.device | str" = "cpu") -> Tensor:
    """:func:`cotangent` for an exported graph's cotangent input, whose declared shape has a name
    (``"batch"``) for the dynamic batch dimension: that dimension is ``batch``."""
    return cotangent([batch if isinstance(d, str) else int(d) for d in shape], dtype, device)


def seed_grad(value: Tensor) -> Optional[Tensor]:
    """The cotangent of a loss value: none for a scalar, :func:`cotangent` for an unreduced loss."""
    return None if value.dim() == 0 else cotangent(value.shape, value.dtype, value.device)


def sgd_update(params: Dict[str, Tensor], grads: Dict[str, Tensor], lr: "float | Tensor") -> Dict[str, Tensor]:
    """One plain SGD step, ``p - lr * grad`` per parameter (no parameter is changed in place)."""
    return {n: params[n] - lr * grads[n] for n in params}


def trainable(net: nn.Module) -> List[Tuple[str, Tensor]]:
    """The parameters a train step updates: every ``requires_grad`` one, in ``named_parameters`` order."""
    return [(n, p) for n, p in net.named_parameters() if p.requires_grad]


def autograd_loss_and_grad(fn: Callable[..., Tensor]) -> Callable[..., Tuple[Tensor, Tensor]]:
    """``(pred, *targets) -> (value, d value / d pred)`` by autograd through ``fn``."""

    def loss_and_grad(pred: Tensor, *targets: Tensor) -> Tuple[Tensor, Tensor]:
        leaf = pred.detach().requires_grad_(True)
        value = fn(leaf, *targets)
        (dpred,) = torch.autograd.grad(value, leaf, grad_outputs=seed_grad(value))
        return value.detach(), dpred

    return loss_and_grad


def autograd_train_step(fn: Callable[..., Tensor], named_params: Sequence[Tuple[str, Tensor]],
                        lr: float) -> Callable[..., TrainStepResult]:
    """``(x, *targets) -> TrainStepResult``: ``fn(x, *targets)`` (which reads ``named_params``),
    every parameter's gradient (zeros for one the loss does not reach) and the SGD update."""
    names = [n for n, _ in named_params]
    params = [p for _, p in named_params]

    def train_step(x: Tensor, *targets: Tensor) -> TrainStepResult:
        value = fn(x, *targets)
        grads = torch.autograd.grad(value, params, grad_outputs=seed_grad(value), allow_unused=True)
        grads_by_name = {n: torch.zeros_like(p) if g is None else g for n, p, g in zip(names, params, grads)}
        detached = {n: p.detach() for n, p in zip(names, params)}
        return TrainStepResult(value.detach(), grads_by_name, sgd_update(detached, grads_by_name, lr))

    return train_step


def eager_loss_and_grad(loss: nn.Module) -> Callable[..., Tuple[Tensor, Tensor]]:
    """The eager reference: autograd through the loss module, a fresh gradient every call."""
    return autograd_loss_and_grad(loss)


def eager_train_step(net: nn.Module, loss: nn.Module, lr: float) -> Callable[..., TrainStepResult]:
    """The eager reference train step, from the net's parameters at call time (a parameter replaced
    after this call is seen)."""
    lr = float(lr)

    def step(x: Tensor, *targets: Tensor) -> TrainStepResult:
        return autograd_train_step(lambda x_, *t: loss(net(x_), *t), trainable(net), lr)(x, *targets)

    return step


# ---------------------------------------------------------------------------------------------
# train steps with an optimizer (compile_losses.optim), frozen parameters and accumulation
# ---------------------------------------------------------------------------------------------
# Inputs ``(*params, *frozen, x, *targets, *state, *hyper)`` -> ``(loss, *grads, *new_params,
# *new_state)`` as :class:`compile_losses.signature.OptimStepSignature` names them. Frozen
# parameters (``requires_grad=False``) are inputs: no gradient, no state, no update. Buffers are
# the net's, as constants.

def frozen(net: nn.Module) -> List[Tuple[str, Tensor]]:
    """The parameters a train step reads but does not train: every ``requires_grad=False`` one."""
    return [(n, p) for n, p in net.named_parameters() if not p.requires_grad]


def optim_signature(net: nn.Module, loss: nn.Module, n_targets: int, opt: Any) -> "OptimStepSignature":
    """The optimizer train step's signature for ``loss(net(x), *targets)`` and ``opt``
    (a :class:`compile_losses.optim.Optimizer`)."""
    from .signature import OptimStepSignature, target_names

    base = TrainStepSignature.of(net, loss, n_targets)  # refuses a net with nothing to train
    sig = OptimStepSignature(base.params, tuple(n for n, _ in frozen(net)), tuple(target_names(loss, n_targets)),
                             tuple(opt.state_names), tuple(opt.hyper_names), opt.name)
    sig.check_unique("{}.{}".format(type(loss).__module__, type(loss).__qualname__))
    return sig


def _functional_loss(net: nn.Module, loss: nn.Module) -> Callable[..., Tuple[Tensor, Tensor]]:
    buffers = {n: b for n, b in net.named_buffers()}

    def compute(params: Dict[str, Tensor], fixed: Dict[str, Tensor], x: Tensor,
                targets: Sequence[Tensor]) -> Tuple[Tensor, Tensor]:
        pred = torch.func.functional_call(net, {**buffers, **fixed, **params}, (x,))
        value = loss(pred, *targets)
        if value.dim() != 0:
            raise ValueError("loss must return a scalar to train with an optimizer (reduction 'mean' or 'sum'), "
                             "got shape {}".format(tuple(value.shape)))
        return value, pred.detach()

    return compute


def optimizer_train_step(net: nn.Module, loss: nn.Module, opt: Any) -> Callable[..., Any]:
    """``(params, frozen, x, *targets, state, hyper) -> OptimStepResult``: the loss at ``params``,
    its gradients (``torch.func``) and ``opt``'s update; pure (nothing is changed in place), so
    it traces (``make_fx``), compiles and exports. ``state`` and ``hyper`` are keywords."""
    from .signature import OptimStepResult

    compute = _functional_loss(net, loss)

    def step(params: Dict[str, Tensor], fixed: Dict[str, Tensor], x: Tensor, *targets: Tensor,
             state: Dict[str, Dict[str, Tensor]], hyper: Dict[str, Tensor]) -> "OptimStepResult":
        grads, (value, _) = torch.func.grad_and_value(
            lambda p: compute(p, fixed, x, targets), has_aux=True)(dict(params))
        new_params, new_state = opt.apply(params, grads, state, hyper)
        return OptimStepResult(value, grads, new_params, new_state)

    return step


def flat_optimizer_step(net: nn.Module, loss: nn.Module, opt: Any, signature: Any) -> Callable[..., Tuple[Tensor, ...]]:
    """:func:`optimizer_train_step` over positional tensors in ``signature``'s order (what
    ``make_fx``, ``torch.compile`` and the exporters see)."""
    step = optimizer_train_step(net, loss, opt)
    k, f, t, s = len(signature.params), len(signature.frozen), len(signature.targets), len(signature.state)

    def run(*args: Tensor) -> Tuple[Tensor, ...]:
        params = dict(zip(signature.params, args[:k]))
        fixed = dict(zip(signature.frozen, args[k:k + f]))
        x = args[k + f]
        targets = args[k + f + 1:k + f + 1 + t]
        flat_state = args[k + f + 1 + t:k + f + 1 + t + k * s]
        state = {n: dict(zip(signature.state, flat_state[i * s:(i + 1) * s])) for i, n in enumerate(signature.params)}
        hyper = dict(zip(signature.hyper, args[k + f + 1 + t + k * s:]))
        out = step(params, fixed, x, *targets, state=state, hyper=hyper)
        return ((out.loss,) + tuple(out.grads[n] for n in signature.params)
                + tuple(out.new_params[n] for n in signature.params)
                + tuple(out.new_state[n][key] for n in signature.params for key in signature.state))

    return run


def micro_batch_weight(loss: nn.Module, mean_divisor: Optional[Callable[..., Tensor]] = None,
                       init_kwargs: Optional[Dict[str, Any]] = None) -> Optional[Callable[..., Tensor]]:
    """What a micro-batch's loss counts for when ``K`` of them make one batch: ``None`` for a
    ``"sum"`` loss (the batch's loss is the sum of the micro-batches'), else ``(pred, *targets) ->``
    the micro-batch's ``"mean"`` divisor: the registry's ``mean_divisor`` when the loss has one
    (class weights of the counted targets, ignored targets not counted), else its sample count
    (every other ``"mean"`` divides by a fixed multiple of it). The batch loss is then
    ``sum_i w_i * loss_i / sum_i w_i``: the mean over the whole batch, not the mean of means."""
    reduction = getattr(loss, "reduction", "mean")
    if reduction == "sum":
        return None
    if reduction != "mean":
        raise ValueError("gradient accumulation needs a loss with reduction 'mean' or 'sum', got reduction={!r} "
                         "for {}".format(reduction, type(loss).__name__))
    if mean_divisor is not None:
        kwargs = dict(init_kwargs or {})
        kwargs.pop("reduction", None)
        return lambda pred, *targets: mean_divisor(pred, *targets, **kwargs).to(torch.float64)
    return lambda pred, *targets: torch.tensor(float(pred.shape[0]), dtype=torch.float64)


def accumulate_grads(net: nn.Module, loss: nn.Module,
                     weight: Optional[Callable[..., Tensor]]) -> Callable[..., Dict[str, Any]]:
    """The accumulate piece: ``(params, frozen, x, *targets, acc=None) -> acc`` with
    ``acc = {"loss": sum w_i * loss_i, "weight": sum w_i, "grads": {name: sum w_i * grad_i}}``
    (``w_i = 1`` for a ``"sum"`` loss); parameters are not changed."""
    compute = _functional_loss(net, loss)

    def accumulate(params: Dict[str, Tensor], fixed: Dict[str, Tensor], x: Tensor, *targets: Tensor,
                   acc: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        grads, (value, pred) = torch.func.grad_and_value(
            lambda p: compute(p, fixed, x, targets), has_aux=True)(dict(params))
        w = (torch.ones((), dtype=torch.float64) if weight is None else weight(pred, *targets)).to(value.device)
        wv = w.to(value.dtype)
        part = {"loss": value * wv, "weight": w, "grads": {n: g * wv.to(g.dtype) for n, g in grads.items()}}
        if acc is None:
            return part
        return {"loss": acc["loss"] + part["loss"], "weight": acc["weight"] + part["weight"],
                "grads": {n: acc["grads"][n] + g for n, g in part["grads"].items()}}

    return accumulate


def apply_accumulated(opt: Any, normalize: bool = True) -> Callable[..., Any]:
    """The apply piece: ``(params, acc, state, hyper) -> OptimStepResult``: the batch loss and
    gradients (``acc`` divided by the summed weight when ``normalize``, i.e. for a ``"mean"``
    loss) and ``opt``'s update from them."""
    from .signature import OptimStepResult

    def apply(params: Dict[str, Tensor], acc: Dict[str, Any], state: Dict[str, Dict[str, Tensor]],
              hyper: Dict[str, Tensor]) -> "OptimStepResult":
        if normalize:
            total = acc["weight"]
            value = acc["loss"] / total.to(acc["loss"].dtype)
            grads = {n: g / total.to(g.dtype) for n, g in acc["grads"].items()}
        else:
            value, grads = acc["loss"], dict(acc["grads"])
        new_params, new_state = opt.apply(params, grads, state, hyper)
        return OptimStepResult(value, grads, new_params, new_state)

    return apply


def accumulated_train_step(net: nn.Module, loss: nn.Module, opt: Any,
                           weight: Optional[Callable[..., Tensor]]) -> Callable[..., Any]:
    """The K-step program: ``(params, frozen, micro_batches, state, hyper) -> OptimStepResult``
    with ``micro_batches`` a sequence of ``(x, *targets)``; one micro-batch is the plain step."""
    acc_fn = accumulate_grads(net, loss, weight)
    apply = apply_accumulated(opt, normalize=weight is not None)
    single = optimizer_train_step(net, loss, opt)

    def step(params: Dict[str, Tensor], fixed: Dict[str, Tensor], micro_batches: Sequence[Sequence[Tensor]],
             state: Dict[str, Dict[str, Tensor]], hyper: Dict[str, Tensor]) -> Any:
        if len(micro_batches) == 1:
            return single(params, fixed, *micro_batches[0], state=state, hyper=hyper)
        acc = None
        for batch in micro_batches:
            acc = acc_fn(params, fixed, *batch, acc=acc)
        return apply(params, acc, state, hyper)

    return step


def flat_accumulated_step(net: nn.Module, loss: nn.Module, opt: Any, signature: Any,
                          weight: Optional[Callable[..., Tensor]]) -> Callable[..., Tuple[Tensor, ...]]:
    """:func:`accumulated_train_step` over positional tensors in ``signature``'s order (an
    :class:`compile_losses.signature.AccumStepSignature`): one program for K micro-batches, what
    ``make_fx`` and the exporters see."""
    step = accumulated_train_step(net, loss, opt, weight)
    sig = signature.step
    k, s = len(sig.params), len(sig.state)

    def run(*args: Tensor) -> Tuple[Tensor, ...]:
        head, micro, tail = signature.split(args)
        params, fixed = dict(zip(sig.params, head[:k])), dict(zip(sig.frozen, head[k:]))
        state = {n: dict(zip(sig.state, tail[i * s:(i + 1) * s])) for i, n in enumerate(sig.params)}
        out = step(params, fixed, micro, state, dict(zip(sig.hyper, tail[k * s:])))
        return ((out.loss,) + tuple(out.grads[n] for n in sig.params) + tuple(out.new_params[n] for n in sig.params)
                + tuple(out.new_state[n][key] for n in sig.params for key in sig.state))

    return run


def equal_micro_batch_weight(loss: nn.Module, mean_divisor: Optional[Callable[..., Tensor]] = None,
                             init_kwargs: Optional[Dict[str, Any]] = None) -> Optional[Callable[..., Tensor]]:
    """:func:`micro_batch_weight` for micro-batches of one size (the K-step graph's): a sample
    count is then the same for each, so the weight is 1 and nothing in the graph reads a size;
    a registry ``mean_divisor`` (class weights, ignored targets) still counts per micro-batch."""
    weight = micro_batch_weight(loss, mean_divisor, init_kwargs)
    if weight is None or mean_divisor is not None:
        return weight
    return lambda pred, *targets: torch.ones((), dtype=torch.float64, device=pred.device)


def eager_optimizer_trajectory(net: nn.Module, loss: nn.Module, opt: Any, steps: Sequence[Sequence[Sequence[Tensor]]],
                               weight: Optional[Callable[..., Tensor]] = None, **implementation: Any
                               ) -> Tuple[List[Tensor], Dict[str, Tensor], Dict[str, Dict[str, Tensor]]]:
    """The eager reference: ``torch.optim`` training a copy of ``net`` (``foreach=False`` unless
    ``implementation`` says otherwise), each step over its micro-batches (``steps[i]`` a sequence
    of ``(x, *targets)``), accumulating ``.grad`` the usual way: ``(loss_i * w_i / sum w).backward()``
    then ``optimizer.step()``. Returns per-step losses, final trained parameters and state."""
    import copy

    net = copy.deepcopy(net)
    named = trainable(net)
    torch_opt = opt.torch_optimizer([p for _, p in named], **implementation)
    losses: List[Tensor] = []
    for micro in steps:
        torch_opt.zero_grad(set_to_none=True)
        if len(micro) == 1:
            x, *targets = micro[0]
            value = loss(net(x), *targets)
            value.backward()
            losses.append(value.detach())
        else:
            if weight is None:
                scales = [1.0] * len(micro)
            else:
                with torch.no_grad():
                    ws = [float(weight(net(b[0]), *b[1:])) for b in micro]
                scales = [w / sum(ws) for w in ws]
            total = None
            for (x, *targets), scale in zip(micro, scales):
                value = loss(net(x), *targets) * scale
                value.backward()
                total = value.detach() if total is None else total + value.detach()
            losses.append(total)
        torch_opt.step()
    ids = {id(p): n for n, p in named}
    return losses, {n: p.detach().clone() for n, p in named}, opt.state_from_torch(torch_opt, ids, len(steps))


__all__ += ["OptimStepSignature", "accumulate_grads", "accumulated_train_step", "apply_accumulated",
            "equal_micro_batch_weight", "flat_accumulated_step",
            "eager_optimizer_trajectory", "flat_optimizer_step", "frozen", "micro_batch_weight", "optim_signature",
            "optimizer_train_step"]


def optim_flat_example(net: nn.Module, loss: nn.Module, example_inputs: Sequence[Tensor], opt: Any
                       ) -> Tuple["OptimStepSignature", Tuple[Tensor, ...]]:
    """The optimizer step's signature and flat example inputs: the net's parameters now, the
    optimizer's initial state and its hyper-parameters."""
    x, targets = example_inputs[0], tuple(example_inputs[1:])
    sig = optim_signature(net, loss, len(targets), opt)
    params = {n: p.detach() for n, p in trainable(net)}
    fixed = {n: p.detach() for n, p in frozen(net)}
    return sig, tuple(sig.flat_inputs(params, fixed, x, targets, opt.init_state(params), opt.hyper_tensors(x.device)))


class OptimStepModule(nn.Module):
    """:func:`flat_optimizer_step` as a module (what a backend's ``_compile`` takes); it holds the
    net and loss so that a backend's cache keys on them."""

    def __init__(self, net: nn.Module, loss: nn.Module, opt: Any, signature: Any) -> None:
        super().__init__()
        self.net, self.loss = net, loss
        self.optimizer_name = opt.name
        self.optimizer_flags = tuple(opt.flags)
        self._fn = flat_optimizer_step(net, loss, opt, signature)

    def forward(self, *args: Tensor) -> Tuple[Tensor, ...]:
        return self._fn(*args)


def dict_step(signature: Any, flat_fn: Callable[..., Sequence[Tensor]]) -> Callable[..., Any]:
    """A flat optimizer step as ``(params, frozen, x, *targets, state=, hyper=) -> OptimStepResult``."""

    def run(params: Dict[str, Tensor], fixed: Dict[str, Tensor], x: Tensor, *targets: Tensor,
            state: Dict[str, Dict[str, Tensor]], hyper: Dict[str, Tensor]) -> Any:
        return signature.result(list(flat_fn(*signature.flat_inputs(params, fixed, x, targets, state, hyper))))

    return run


__all__ += ["OptimStepModule", "dict_step", "optim_flat_example"]
