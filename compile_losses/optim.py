"""Functional optimizers: SGD, Adam and AdamW as pure functions over explicit state.

Each update follows ``torch.optim``'s single-tensor implementation (``foreach=False``,
``fused=False``, ``capturable=False``) op for op, so a traced train step (``train_step.onnx``,
AOTInductor, ``torch.compile``) matches eager ``torch.optim`` to rounding:

* the hyper-parameters (``lr``, ``momentum``, ``betas``, ...) are 0-d float64 tensors, inputs of
  the program so a schedule can drive them. Eager torch computes its scalar arithmetic (bias
  corrections, ``lr / bias_correction1``, ``1 - lr * weight_decay``) in Python doubles and casts
  each scalar to the parameter's dtype where it meets a tensor; the functions here do the same
  in float64 and cast at the same place.
* ``step`` is a per-parameter 0-d float64 tensor, incremented before Adam's update (as torch's
  ``state_steps``) and counting SGD's steps so that SGD's first step can set the momentum buffer
  to the gradient itself (torch's ``buf = grad.clone()``) with ``torch.where(step == 0, ...)``.
* what changes the graph's structure is static: ``nesterov``, ``maximize``, ``amsgrad``, and
  whether SGD has momentum at all (``momentum != 0`` at construction; torch keeps no buffer at 0).

    opt = optimizer("adamw", lr=3e-3, weight_decay=0.05)
    state = opt.init_state(params)                   # {param name: {"step", "exp_avg", ...}}
    hyper = opt.hyper_tensors()                      # {"lr": tensor(3e-3, float64), ...}
    new_params, new_state = opt.apply(params, grads, state, hyper)
    opt.torch_optimizer(net.parameters())            # the eager reference, foreach=False
"""
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

import torch
from torch import Tensor

from .bundle_format import OPTIMIZERS  # torch-free, for the CLI's parser and the runtime

__all__ = ["OPTIMIZERS", "Optimizer", "optimizer", "adam_update", "sgd_momentum_update"]

# name -> (runtime hyper-parameters with torch's defaults, static flags with defaults)
_DEFAULTS: Dict[str, Tuple[Dict[str, float], Dict[str, bool]]] = {
    "sgd": ({"lr": 1e-3, "momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0},
            {"nesterov": False, "maximize": False}),
    "adam": ({"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0},
             {"amsgrad": False, "maximize": False}),
    "adamw": ({"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 1e-2},
              {"amsgrad": False, "maximize": False}),
}


@dataclass(frozen=True)
class Optimizer:
    """A validated optimizer: ``name``, its runtime hyper-parameters (``hyper``, Python floats in a
    fixed order) and its static ``flags``. Build with :func:`optimizer`."""

    name: str
    hyper: Tuple[Tuple[str, float], ...]
    flags: Tuple[Tuple[str, bool], ...]
    has_momentum: bool = field(default=False)

    # ----- names and order, fixed once --------------------------------------------------------
    @property
    def hyper_names(self) -> Tuple[str, ...]:
        """The hyper-parameter inputs, in program order."""
        return tuple(k for k, _ in self.hyper)

    @property
    def state_names(self) -> Tuple[str, ...]:
        """Per trained parameter, its state tensors in program order (torch's state keys)."""
        if self.name == "sgd":
            return ("step", "momentum_buffer") if self.has_momentum else ("step",)
        return ("step", "exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if self.flag("amsgrad") else ())

    def flag(self, key: str) -> bool:
        return dict(self.flags)[key]

    def hyper_value(self, key: str) -> float:
        return dict(self.hyper)[key]

    @property
    def args(self) -> Dict[str, Any]:
        """Every hyper-parameter and flag, as :func:`optimizer` takes them back (``optimizer(name, **args)``)."""
        return dict(dict(self.hyper), **dict(self.flags))

    def describe(self) -> Dict[str, Any]:
        """JSON-able description (manifest, report)."""
        return {"name": self.name, "hyper": dict(self.hyper), "flags": dict(self.flags),
                "state": list(self.state_names), "torch": self.torch_class_name()}

    def with_hyper(self, **overrides: Any) -> "Optimizer":
        """The same optimizer with some runtime hyper-parameters replaced (a schedule's next value)."""
        given = _split_betas(overrides, "overrides")
        unknown = sorted(set(given) - set(self.hyper_names))
        if unknown:
            raise ValueError("overrides must be hyper-parameters of {} ({}), got {}".format(
                self.name, ", ".join(self.hyper_names), ", ".join(unknown)))
        out = optimizer(self.name, **dict(self.args, **given))  # given: hyper-parameters only, checked above
        if out.has_momentum != self.has_momentum:
            raise ValueError("momentum cannot change between 0 and non-zero after construction (it decides whether "
                             "SGD keeps a momentum buffer), got momentum={!r}".format(given.get("momentum")))
        return out

    # ----- values -----------------------------------------------------------------------------
    def hyper_tensors(self, device: Any = None) -> Dict[str, Tensor]:
        """The hyper-parameters as 0-d float64 tensors (the program's inputs)."""
        return {k: torch.tensor(v, dtype=torch.float64, device=device) for k, v in self.hyper}

    def init_state(self, params: Mapping[str, Tensor]) -> Dict[str, Dict[str, Tensor]]:
        """The state before the first step, as torch's lazy initialization makes it (zeros; SGD's
        buffer is zeros too, replaced by the first gradient through ``step == 0``)."""
        out: Dict[str, Dict[str, Tensor]] = {}
        for n, p in params.items():
            s = {"step": torch.zeros((), dtype=torch.float64, device=p.device)}
            for k in self.state_names[1:]:
                s[k] = torch.zeros_like(p, memory_format=torch.contiguous_format).detach()
            out[n] = s
        return out

    def update(self, param: Tensor, grad: Tensor, state: Mapping[str, Tensor],
               hyper: Mapping[str, Tensor]) -> Tuple[Tensor, Dict[str, Tensor]]:
        """One parameter's update: ``(new_param, new_state)``; nothing is changed in place."""
        if self.name == "sgd":
            return sgd_momentum_update(param, grad, state, hyper, has_momentum=self.has_momentum,
                                       nesterov=self.flag("nesterov"), maximize=self.flag("maximize"))
        return adam_update(param, grad, state, hyper, amsgrad=self.flag("amsgrad"), maximize=self.flag("maximize"),
                           decoupled=self.name == "adamw")

    def apply(self, params: Mapping[str, Tensor], grads: Mapping[str, Tensor],
              state: Mapping[str, Mapping[str, Tensor]], hyper: Mapping[str, Tensor]
              ) -> Tuple[Dict[str, Tensor], Dict[str, Dict[str, Tensor]]]:
        """Every parameter of ``params`` updated from its gradient and state."""
        new_params: Dict[str, Tensor] = {}
        new_state: Dict[str, Dict[str, Tensor]] = {}
        for n, p in params.items():
            new_params[n], new_state[n] = self.update(p, grads[n], state[n], hyper)
        return new_params, new_state

    # ----- the eager reference ----------------------------------------------------------------
    def torch_class_name(self) -> str:
        return {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}[self.name]

    def torch_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments of the ``torch.optim`` class (``betas`` as a pair)."""
        kw = self.args
        if self.name != "sgd":
            kw["betas"] = (kw.pop("beta1"), kw.pop("beta2"))
        return kw

    def torch_optimizer(self, params: Iterable[Tensor], **implementation: Any) -> torch.optim.Optimizer:
        """``torch.optim.<Class>`` with these settings; ``foreach=False`` unless ``implementation``
        says otherwise (``foreach=None`` gives torch's default implementation)."""
        impl = {"foreach": False}
        impl.update(implementation)
        return getattr(torch.optim, self.torch_class_name())(list(params), **self.torch_kwargs(), **impl)

    def state_from_torch(self, opt: torch.optim.Optimizer, names: Mapping[int, str],
                         steps: Optional[int] = None) -> Dict[str, Dict[str, Tensor]]:
        """A torch optimizer's state in this module's layout (``names``: ``id(param) -> name``);
        a parameter torch has no state for yet gets :meth:`init_state`'s. torch's SGD counts no
        steps: ``steps`` (the number taken) is its ``step`` then."""
        out: Dict[str, Dict[str, Tensor]] = {}
        for group in opt.param_groups:
            for p in group["params"]:
                n = names[id(p)]
                s = opt.state.get(p, {})
                fresh = self.init_state({n: p.detach()})[n]
                if self.name == "sgd":
                    # torch keeps no step for SGD; an SGD state with a buffer has taken a step
                    buf = s.get("momentum_buffer")
                    if buf is not None and self.has_momentum:
                        fresh["momentum_buffer"] = buf.detach().clone()
                    if steps is not None:
                        fresh["step"] = torch.tensor(float(steps), dtype=torch.float64)
                else:
                    for k in self.state_names:
                        if k in s:
                            fresh[k] = s[k].detach().to(torch.float64) if k == "step" else s[k].detach().clone()
                out[n] = fresh
        return out


def _real(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError("optimizer_args[{!r}] must be a real number, got {}".format(key, type(value).__name__))
    v = float(value)
    if not math.isfinite(v):
        raise ValueError("optimizer_args[{!r}] must be finite, got {!r}".format(key, v))
    return v


def _split_betas(args: Dict[str, Any], where: str) -> Dict[str, Any]:
    out = dict(args)
    if "betas" in out:
        betas = out.pop("betas")
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError("{}['betas'] must be a pair (beta1, beta2), got {!r}".format(where, betas))
        if "beta1" in out or "beta2" in out:
            raise ValueError("{} gives both 'betas' and 'beta1'/'beta2'".format(where))
        out["beta1"], out["beta2"] = betas
    return out


def optimizer(name: str = "sgd", **args: Any) -> Optimizer:
    """Validate an optimizer's name and arguments (torch's names and defaults; ``betas=(b1, b2)``
    or ``beta1=``/``beta2=``). Hyper-parameters are checked once, here, as torch checks them."""
    if not isinstance(name, str) or name.lower() not in _DEFAULTS:
        raise ValueError("optimizer must be one of {}, got {!r}".format(", ".join(repr(o) for o in OPTIMIZERS), name))
    name = name.lower()
    hyper_defaults, flag_defaults = _DEFAULTS[name]
    args = _split_betas(args, "optimizer_args")
    unknown = sorted(set(args) - set(hyper_defaults) - set(flag_defaults))
    if unknown:
        raise ValueError("optimizer_args for {} take {}, got unknown {}".format(
            name, ", ".join(list(hyper_defaults) + list(flag_defaults) + ([] if name == "sgd" else ["betas"])),
            ", ".join(repr(k) for k in unknown)))
    hyper = {k: _real(args.get(k, d), k) for k, d in hyper_defaults.items()}
    flags = {}
    for k, d in flag_defaults.items():
        v = args.get(k, d)
        if not isinstance(v, bool):
            raise TypeError("optimizer_args[{!r}] must be a bool, got {!r}".format(k, v))
        flags[k] = v
    if hyper["lr"] < 0:
        raise ValueError("optimizer_args['lr'] must be >= 0, got {!r}".format(hyper["lr"]))
    if hyper["weight_decay"] < 0:
        raise ValueError("optimizer_args['weight_decay'] must be >= 0, got {!r}".format(hyper["weight_decay"]))
    if name == "sgd":
        if hyper["momentum"] < 0:
            raise ValueError("optimizer_args['momentum'] must be >= 0, got {!r}".format(hyper["momentum"]))
        if flags["nesterov"] and (hyper["momentum"] <= 0 or hyper["dampening"] != 0):
            raise ValueError("nesterov momentum requires momentum > 0 and dampening 0, got momentum={!r} "
                             "dampening={!r}".format(hyper["momentum"], hyper["dampening"]))
        has_momentum = hyper["momentum"] != 0
        if not has_momentum:
            # torch keeps no buffer: momentum and dampening are not inputs of the program then
            del hyper["momentum"], hyper["dampening"]
    else:
        has_momentum = False
        if hyper["eps"] < 0:
            raise ValueError("optimizer_args['eps'] must be >= 0, got {!r}".format(hyper["eps"]))
        for b in ("beta1", "beta2"):
            if not 0.0 <= hyper[b] < 1.0:
                raise ValueError("optimizer_args[{!r}] must be in [0, 1), got {!r}".format(b, hyper[b]))
    return Optimizer(name, tuple(hyper.items()), tuple(flags.items()), has_momentum)


# ---------------------------------------------------------------------------------------------
# the updates (torch/optim/sgd.py and adam.py, _single_tensor_*), out of place
# ---------------------------------------------------------------------------------------------
def _c(scalar: Tensor, like: Tensor) -> Tensor:
    # A float64 scalar meeting a tensor: torch casts a Python double to the tensor's dtype there.
    return scalar.to(like.dtype)


def _fma(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """``a * b + c`` rounded once, as torch's vectorized CPU kernels (``add`` with ``alpha``,
    ``addcmul``, ``lerp``: ``Vectorized::fmadd``) and CUDA's contracted code compute it; written
    as two rounded ops it differs from eager in ~10% of float32 elements, an error Adam's
    ``m / sqrt(v)`` amplifies over a trajectory. Below float64 the product of two values is exact
    in float64, so one float64 add and the cast back round (all but never twice) as the fused op;
    ONNX has no fused multiply-add. In float64 itself there is no wider type: two roundings."""
    if c.dtype == torch.float64:
        return a * b + c
    return (a.double() * b.double() + c.double()).to(c.dtype)


def _lerp(start: Tensor, end: Tensor, weight: Tensor) -> Tensor:
    """``torch.lerp(start, end, weight)`` as ATen computes it (``weight`` a 0-d tensor of their dtype):
    ``start + weight * (end - start)`` for ``|weight| < 0.5``, else ``end - (1 - weight) * (end -
    start)``, each fused; exporters decompose ``lerp`` into unfused ops and one branch."""
    diff = end - start
    return torch.where(weight.abs() < 0.5, _fma(weight, diff, start), _fma(-(1 - weight), diff, end))


def sgd_momentum_update(param: Tensor, grad: Tensor, state: Mapping[str, Tensor], hyper: Mapping[str, Tensor], *,
                        has_momentum: bool, nesterov: bool, maximize: bool) -> Tuple[Tensor, Dict[str, Tensor]]:
    """``torch.optim.SGD``'s step for one parameter."""
    g = -grad if maximize else grad
    g = _fma(_c(hyper["weight_decay"], param), param, g)  # grad.add(param, alpha=weight_decay)
    step = state["step"]
    new_state: Dict[str, Tensor] = {}
    if has_momentum:
        m = hyper["momentum"]
        running = _fma(_c(1 - hyper["dampening"], param), g, state["momentum_buffer"] * _c(m, param))
        buf = torch.where(step == 0, g, running)          # the first step: buf = grad.clone()
        new_state["momentum_buffer"] = buf
        g = _fma(_c(m, param), buf, g) if nesterov else buf
    new_state["step"] = step + 1
    new = _fma(_c(-hyper["lr"], param), g, param)         # param.add_(grad, alpha=-lr)
    return new, _ordered(new_state, ("step", "momentum_buffer"))


def adam_update(param: Tensor, grad: Tensor, state: Mapping[str, Tensor], hyper: Mapping[str, Tensor], *,
                amsgrad: bool, maximize: bool, decoupled: bool) -> Tuple[Tensor, Dict[str, Tensor]]:
    """``torch.optim.Adam``'s step (``decoupled``: ``AdamW``'s) for one parameter."""
    g = -grad if maximize else grad
    step = state["step"] + 1
    lr, wd = hyper["lr"], hyper["weight_decay"]
    beta1, beta2, eps = hyper["beta1"], hyper["beta2"], hyper["eps"]
    if decoupled:
        param = param * _c(1 - lr * wd, param)            # param.mul_(1 - lr * weight_decay)
    else:
        g = _fma(_c(wd, param), param, g)                 # grad.add(param, alpha=weight_decay)
    exp_avg = _lerp(state["exp_avg"], g, _c(1 - beta1, param))
    exp_avg_sq = _fma(_c(1 - beta2, param) * g, g, state["exp_avg_sq"] * _c(beta2, param))  # mul_, addcmul_
    bias_correction1 = 1 - torch.pow(beta1, step)
    bias_correction2 = 1 - torch.pow(beta2, step)
    step_size = lr / bias_correction1
    bias_correction2_sqrt = torch.sqrt(bias_correction2)
    new_state = {"step": step, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
    second = exp_avg_sq
    if amsgrad:
        second = torch.maximum(state["max_exp_avg_sq"], exp_avg_sq)
        new_state["max_exp_avg_sq"] = second
    denom = torch.sqrt(second) / _c(bias_correction2_sqrt, param) + _c(eps, param)
    new = param + _c(-step_size, param) * exp_avg / denom  # addcdiv_(exp_avg, denom, value=-step_size)
    return new, new_state


def _ordered(d: Dict[str, Tensor], order: Tuple[str, ...]) -> Dict[str, Tensor]:
    return {k: d[k] for k in order if k in d}


def flat_state(opt: Optimizer, names: List[str], state: Mapping[str, Mapping[str, Tensor]]) -> List[Tensor]:
    """State tensors in program order: per parameter (``names`` order), per :attr:`state_names`."""
    return [state[n][k] for n in names for k in opt.state_names]


def unflat_state(opt: Optimizer, names: List[str], flat: List[Any]) -> Dict[str, Dict[str, Any]]:
    k = len(opt.state_names)
    if len(flat) != k * len(names):
        raise ValueError("optimizer state has {} x {} tensors, got {}".format(len(names), k, len(flat)))
    return {n: dict(zip(opt.state_names, flat[i * k:(i + 1) * k])) for i, n in enumerate(names)}


def hyper_from(opt: Optimizer, hyper: Optional[Mapping[str, Any]], device: Any = None) -> Dict[str, Tensor]:
    """The hyper-parameter tensors: ``opt``'s values, each replaced by ``hyper``'s when given."""
    out = opt.hyper_tensors(device)
    for k, v in (hyper or {}).items():
        if k not in out:
            raise ValueError("hyper must name hyper-parameters of {} ({}), got {!r}".format(
                opt.name, ", ".join(opt.hyper_names), k))
        out[k] = v if isinstance(v, Tensor) else torch.tensor(float(v), dtype=torch.float64, device=device)
    return out
