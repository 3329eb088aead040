"""Bisect a compiler's pipeline by stage: the same loss value and gradients computed after each
stage (for torch.compile: dynamo alone, + AOTAutograd, + inductor's decompositions and
partitioner, + inductor; TorchScript: script or trace, one stage), static and dynamic shapes, each judged by the parity rule against eager
float32 with eager float64 as reference. The first stage whose forward (the value) or backward
(the gradients) fails is where the divergence enters."""
import copy
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..parity.rule import PASS, judge
from ..programs import seed_grad

__all__ = ["bisect_stages"]


def _outputs(fn: Callable[..., Any], module: nn.Module, args: Tuple[Tensor, ...], wrt_first: bool,
             names: List[str]) -> Dict[str, Tensor]:
    leaf = args[0].detach().requires_grad_(wrt_first)
    value = fn(leaf, *args[1:])
    params = [p for _, p in module.named_parameters() if p.requires_grad]
    wrt = ([leaf] if wrt_first else []) + params
    grads = torch.autograd.grad(value, wrt, grad_outputs=seed_grad(value), allow_unused=True)
    out = {"value": value.detach()}
    for n, g, w in zip(names, grads, wrt):
        out[n] = torch.zeros_like(w) if g is None else g.detach()
    return out


def _widen(t: Tensor) -> Tensor:
    return t.double() if t.is_floating_point() else t


def bisect_stages(backend: Any, kind: str, module: nn.Module, args: Tuple[Tensor, ...], wrt_first: bool,
                  dynamic: Sequence[bool] = (False, True)) -> Dict[str, Any]:
    """``module(*args)``'s value and gradients (w.r.t. ``args[0]`` when ``wrt_first``, and every
    trained parameter) after each of ``backend.stages``. Returns ``{"first": {"stage", "graph",
    "dynamic", "output"} or None, "runs": {"static"|"dynamic": {stage: {output: judgement}}}}``."""
    names = (["dpred"] if wrt_first else []) + ["grad:" + n for n, p in module.named_parameters() if p.requires_grad]
    expected = _outputs(module, module, args, wrt_first, names)
    module64 = copy.deepcopy(module).double()
    reference = _outputs(module64, module64, tuple(_widen(a) for a in args), wrt_first, names)
    runs: Dict[str, Dict[str, Any]] = {}
    firsts: Dict[str, Optional[Dict[str, Any]]] = {}
    for dyn in [d for d in dynamic if d in backend.stage_shapes]:
        label = "dynamic" if dyn else "static"
        runs[label], found = {}, None
        for stage in backend.stages:
            torch._dynamo.reset()
            try:
                got = _outputs(backend.stage_callable(stage, module, args, dyn), module, args, wrt_first, names)
            except Exception as exc:  # a stage that cannot build this: said, never a pass
                runs[label][stage] = {"error": "{}: {}".format(type(exc).__name__, str(exc).splitlines()[0][:200])}
                found = {"stage": stage, "graph": "build", "dynamic": dyn, "output": None}
                break
            judged = {k: judge(got[k], expected[k], reference[k], gradient=(k != "value")) for k in expected}
            runs[label][stage] = {k: {f: v for f, v in j.items() if f in _KEEP} for k, j in judged.items()}
            failing = [k for k, j in judged.items() if j["status"] != PASS]
            if failing:  # the forward (the value) first when both fail at this stage
                k = "value" if "value" in failing else failing[0]
                found = {"stage": stage, "graph": "forward" if k == "value" else "backward", "dynamic": dyn,
                         "output": k}
                break  # later stages include this one
        firsts[label] = found
    first = next((f for f in firsts.values() if f is not None), None)
    return {"kind": kind, "first": first, "firsts": firsts, "runs": runs, "stages": list(backend.stages)}


_KEEP = ("status", "clause", "max_abs", "err_backend64", "err_eager64", "ratio", "detail")
