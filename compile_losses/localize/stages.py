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

__all__ = ["bisect_stages", "bisect_inductor", "BISECTED"]

BISECTED = "inductor"  # the stage inside which torch's compiler bisector looks further


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


def _references(module: nn.Module, args: Tuple[Tensor, ...], wrt_first: bool) -> Tuple[List[str], Any, Any]:
    names = (["dpred"] if wrt_first else []) + ["grad:" + n for n, p in module.named_parameters() if p.requires_grad]
    expected = _outputs(module, module, args, wrt_first, names)
    module64 = copy.deepcopy(module).double()
    reference = _outputs(module64, module64, tuple(_widen(a) for a in args), wrt_first, names)
    return names, expected, reference


def bisect_stages(backend: Any, kind: str, module: nn.Module, args: Tuple[Tensor, ...], wrt_first: bool,
                  dynamic: Sequence[bool] = (False, True)) -> Dict[str, Any]:
    """``module(*args)``'s value and gradients (w.r.t. ``args[0]`` when ``wrt_first``, and every
    trained parameter) after each of ``backend.stages``. Returns ``{"first": {"stage", "graph",
    "dynamic", "output"} or None, "runs": {"static"|"dynamic": {stage: {output: judgement}}}}``."""
    names, expected, reference = _references(module, args, wrt_first)
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


def bisect_inductor(backend: Any, module: nn.Module, args: Tuple[Tensor, ...], wrt_first: bool,
                    dynamic: bool) -> Dict[str, Any]:
    """Inside inductor: torch's compiler bisector (``torch._inductor.compiler_bisector``) run with
    the parity rule as its good/bad test (good: the value and every gradient pass). It compiles
    ``module`` through each of its backends in turn, then with inductor's subsystems (pre-grad,
    joint-graph and post-grad passes, config changes, lowerings) disabled one at a time, and
    bisects the one that fixes it down to the application that breaks it. Returns
    ``{"status": "found", "backend", "subsystem", "bisect_number", "debug_info", "runs", "log"}``
    (``debug_info``: for a lowering, the FX node lowered; for a pass, the pass), ``"not found"``
    (the bisector saw no failure, or named no subsystem) or ``"unavailable"`` with ``detail``."""
    import contextlib
    import io

    try:
        from torch._inductor.compiler_bisector import CompilerBisector
        import torch._inductor.config as inductor_config
    except ImportError as exc:
        return {"status": "unavailable", "detail": "torch {} has no compiler bisector: {}".format(torch.__version__, exc)}
    if not hasattr(CompilerBisector, "do_bisect") or not hasattr(CompilerBisector, "get_backend"):
        return {"status": "unavailable", "detail": "torch {}'s CompilerBisector has no do_bisect/get_backend".format(
            torch.__version__)}
    names, expected, reference = _references(module, args, wrt_first)
    runs: List[Dict[str, Any]] = []

    def good() -> bool:
        stage = CompilerBisector.get_backend()
        subsystem = CompilerBisector.get_subsystem() if hasattr(CompilerBisector, "get_subsystem") else None
        torch._dynamo.reset()
        if stage not in backend.stages:  # a bisector backend the adapter has no stage for (a cross-check mode)
            runs.append({"backend": stage, "subsystem": subsystem, "good": True, "detail": "not a stage of {}; "
                         "taken as good".format(backend.name)})
            return True
        try:
            got = _outputs(backend.stage_callable(stage, module, args, dynamic), module, args, wrt_first, names)
        except Exception as exc:  # a build that fails is bad, said
            runs.append({"backend": stage, "subsystem": subsystem, "good": False,
                         "detail": "{}: {}".format(type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "")})
            return False
        failing = [k for k in expected
                   if judge(got[k], expected[k], reference[k], gradient=(k != "value"))["status"] != PASS]
        runs.append({"backend": stage, "subsystem": subsystem, "good": not failing, "failing": failing})
        return not failing

    log = io.StringIO()
    try:
        # caches off: a cached graph would skip the passes and lowerings the bisector turns off
        patches = {"fx_graph_cache": False}
        with inductor_config.patch(patches), _autograd_cache_off(), contextlib.redirect_stdout(log):
            result = CompilerBisector.do_bisect(good)
    except Exception as exc:
        return {"status": "unavailable", "detail": "torch {}'s compiler bisector failed: {}: {}".format(
            torch.__version__, type(exc).__name__, str(exc)[:300]), "runs": runs, "log": log.getvalue().splitlines()}
    finally:
        torch._dynamo.reset()
    out: Dict[str, Any] = {"runs": runs, "log": log.getvalue().splitlines(), "dynamic": dynamic}
    if result is None:
        out.update(status="not found", detail="the bisector found every backend good under the parity rule")
    elif result.subsystem is None:
        out.update(status="not found", backend=result.backend,
                   detail="the bisector names backend {} but no subsystem of it".format(result.backend))
    else:
        out.update(status="found", backend=result.backend, subsystem=result.subsystem,
                   bisect_number=result.bisect_number, debug_info=result.debug_info)
    return out


def _autograd_cache_off() -> Any:
    import contextlib

    try:
        import torch._functorch.config as functorch_config
    except ImportError:
        return contextlib.nullcontext()
    if not hasattr(functorch_config, "enable_autograd_cache"):
        return contextlib.nullcontext()
    return functorch_config.patch(enable_autograd_cache=False)
