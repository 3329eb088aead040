"""Fixtures: the example inputs with eager float32 outputs and float64 references of every graph
the bundle holds, computed by the programs of :mod:`compile_losses.programs` (plain autograd),
independent of the traced graphs they check."""
import copy
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from ..programs import autograd_loss_and_grad, autograd_train_step, seed_grad


def _np(t: Tensor) -> np.ndarray:
    return t.detach().cpu().contiguous().numpy()


def _double(t: Tensor) -> Tensor:
    return t.detach().double() if t.is_floating_point() else t.detach()


# steps of the trajectory a bundle with an optimizer holds, re-run by the runtime's check()
TRAJECTORY_STEPS = 4


def _fixtures(net: nn.Module, loss: nn.Module, inputs: Tuple[Tensor, ...], targets: Tuple[Tensor, ...],
              entries: Dict[str, Dict[str, Any]], lr: float, opt: Any = None) -> Dict[str, np.ndarray]:
    net64, loss64 = copy.deepcopy(net).double(), copy.deepcopy(loss).double()
    inputs64, targets64 = tuple(map(_double, inputs)), tuple(map(_double, targets))
    out: Dict[str, np.ndarray] = {}

    def put(kind: str, feeds: Sequence[Tensor], eager: Sequence[Tensor], ref: Sequence[Tensor]) -> None:
        e = entries[kind]
        for spec, t in zip(e["inputs"], feeds):
            out["{}/in/{}".format(kind, spec["name"])] = _np(t)
        for spec, a, b in zip(e["outputs"], eager, ref):
            out["{}/eager/{}".format(kind, spec["name"])] = _np(a)
            out["{}/ref64/{}".format(kind, spec["name"])] = _np(b)

    with torch.no_grad():
        pred, pred64 = net(*inputs), net64(*inputs64)
        put("forward", inputs, [pred], [pred64])
        put("loss", (pred,) + targets, [loss(pred, *targets)], [loss64(pred64.detach(), *targets64)])

    if "loss_and_grad" in entries:
        # the float64 reference runs on the float32 prediction widened, so both see one input
        # a non-scalar loss's graph takes the program's cotangent as its last input
        with torch.no_grad():
            cot = seed_grad(loss(pred, *targets))
        put("loss_and_grad", (pred,) + targets + (() if cot is None else (cot,)),
            autograd_loss_and_grad(loss)(pred, *targets), autograd_loss_and_grad(loss64)(_double(pred), *targets64))
    if "train_step" in entries and opt is not None:
        out.update(_optimizer_fixtures(net, loss, inputs, targets, entries["train_step"], opt, put))
    elif "train_step" in entries:
        roles = entries["train_step"]["roles"]

        def step(n: nn.Module, l: nn.Module, xs: Tuple[Tensor, ...], ts: Tuple[Tensor, ...]) -> List[Tensor]:
            state = dict(n.named_parameters())
            names = [p["name"] for p in roles["params"]]
            k = len(xs)
            out = autograd_train_step(lambda *a: l(n(*a[:k]), *a[k:]), [(m, state[m]) for m in names], lr)(*xs, *ts)
            return [out.loss] + [out.grads[m] for m in names] + [out.new_params[m] for m in names]

        state = dict(net.named_parameters())
        lr_t = torch.tensor(lr, dtype=state[roles["params"][0]["name"]].dtype)
        feeds = [state[p["name"]] for p in roles["params"]] + list(inputs) + list(targets) + [lr_t]
        net64_step = copy.deepcopy(net).double()  # from the float32 weights widened, like net64
        put("train_step", feeds, step(net, loss, inputs, targets), step(net64_step, loss64, inputs64, targets64))
    return out


def _optimizer_fixtures(net: nn.Module, loss: nn.Module, inputs: Tuple[Tensor, ...], targets: Tuple[Tensor, ...],
                        entry: Dict[str, Any], opt: Any, put: Any) -> Dict[str, np.ndarray]:
    """The optimizer train step's fixtures: one step on the example (loss and gradients by
    autograd, the update by eager ``torch.optim``, ``foreach=False``) and a
    :data:`TRAJECTORY_STEPS`-step trajectory on fresh batches (``trajectory/...``: each step's
    batch, the per-step losses, final parameters and state), each in float32 and float64 from the
    float32 weights widened."""
    from ..parity.trajectory import fresh_batches
    from ..programs import eager_optimizer_trajectory, frozen, trainable
    from ..signature import OptimStepSignature

    sig = OptimStepSignature.from_description(entry["roles"])
    net64, loss64 = copy.deepcopy(net).double(), copy.deepcopy(loss).double()

    def one_step(n: nn.Module, l: nn.Module, batch: Tuple[Tensor, ...]) -> List[Tensor]:
        named = trainable(n)
        first = autograd_train_step(lambda x, *t: l(n(x), *t), named, 0.0)(*batch)
        _, new, state = eager_optimizer_trajectory(n, l, opt, [[batch]])
        return ([first.loss] + [first.grads[m] for m in sig.params] + [new[m] for m in sig.params]
                + [state[m][k] for m in sig.params for k in sig.state])

    params = {n: p.detach() for n, p in trainable(net)}
    feeds = sig.flat_inputs(params, {n: p.detach() for n, p in frozen(net)}, inputs[0], targets,
                            opt.init_state(params), opt.hyper_tensors())
    example = inputs + targets
    put("train_step", feeds, one_step(net, loss, example), one_step(net64, loss64, tuple(map(_double, example))))

    out: Dict[str, np.ndarray] = {}
    batches = fresh_batches(inputs, targets, TRAJECTORY_STEPS)
    for i, micro in enumerate(batches):
        for name, t in zip([sig.input] + list(sig.targets), micro[0]):
            out["trajectory/in/{}/{}".format(i, name)] = _np(t)
    batches64 = [[tuple(map(_double, b)) for b in micro] for micro in batches]
    for tag, (n, l, bs) in (("eager", (net, loss, batches)), ("ref64", (net64, loss64, batches64))):
        losses, final, state = eager_optimizer_trajectory(n, l, opt, bs)
        out["trajectory/{}/loss".format(tag)] = _np(torch.stack([v.reshape(()) for v in losses]))
        for m in sig.params:
            out["trajectory/{}/final/{}".format(tag, m)] = _np(final[m])
            for k in sig.state:
                out["trajectory/{}/state/{}/{}".format(tag, m, k)] = _np(state[m][k])
    return out
