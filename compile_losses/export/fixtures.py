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


def _fixtures(net: nn.Module, loss: nn.Module, inputs: Tuple[Tensor, ...], targets: Tuple[Tensor, ...],
              entries: Dict[str, Dict[str, Any]], lr: float) -> Dict[str, np.ndarray]:
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
    if "train_step" in entries:
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
