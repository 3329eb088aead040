"""From names and specs to modules and tensors: what the CLI (and export) turn their arguments into.

A net or loss is a registry name (``seed``, ``mse``) or an import path ``package.module:Class``;
a tensor is a spec such as ``float32[N,32]`` (standard normal), ``int64[N]{0..9}`` (integers in
the closed range) or ``float32[N,1]{0.1:2}`` (uniform), where ``N`` is the batch size and must
come first (every backend takes a dynamic batch dimension). Every bad input raises
:class:`~compile_losses.errors.UsageError` with one line saying what was expected and given.
"""
import importlib
import inspect
import math
import re
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .diagnose import user_frame
from .errors import UsageError

# Bounds of a tensor spec: a dimension larger than this, or one example tensor larger than
# MAX_SPEC_BYTES, is refused by name before anything is allocated.
MAX_DIM = 2 ** 31 - 1
MAX_SPEC_BYTES = 4 * 2 ** 30

__all__ = ["TensorSpec", "Case", "resolve_net", "resolve_loss", "parse_tensor_spec", "parse_kwargs", "parse_value",
           "coerce_init_args", "make_case"]

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
           "float64": torch.float64, "int32": torch.int32, "int64": torch.int64, "bool": torch.bool}
_SPEC = re.compile(r"^\s*(?P<dtype>[a-z0-9]*)\s*\[(?P<dims>[^\]]*)\]\s*(?:\{(?P<range>[^}]*)\})?\s*$")


@dataclass(frozen=True)
class TensorSpec:
    """A tensor to generate: ``dtype`` (None: the case's dtype), ``shape`` with ``"N"`` for the
    batch, and a value range: ``("int", lo, hi)`` inclusive, ``("uniform", lo, hi)``, or None for
    standard normal (floating point only)."""

    dtype: Optional[torch.dtype]
    shape: Tuple[Any, ...]
    range: Optional[Tuple[str, float, float]] = None
    text: str = ""

    def make(self, batch: int, dtype: torch.dtype, gen: torch.Generator) -> Tensor:
        # a spec's dtype is kept, except that the float64 case (verify's reference precision) widens
        # every floating spec: verify runs float32 and float64 from one float32[N,...] spec, and an
        # explicit float64 target against a float32 input is still refused as a mismatch
        widen = dtype == torch.float64 and self.dtype is not None and self.dtype.is_floating_point
        dt = dtype if self.dtype is None or widen else self.dtype
        shape = tuple(batch if d == "N" else d for d in self.shape)
        size = math.prod(shape) * (torch.finfo(dt).bits if dt.is_floating_point else torch.iinfo(dt).bits) // 8
        if size > MAX_SPEC_BYTES:
            raise UsageError("tensor spec {!r} at batch {} is {:.3g} GiB, more than the {} GiB an example tensor may "
                             "take".format(self.text, batch, size / 2 ** 30, MAX_SPEC_BYTES // 2 ** 30))
        if self.range is None:
            return torch.randn(shape, generator=gen, dtype=dt)
        kind, lo, hi = self.range
        if kind == "int":
            return torch.randint(int(lo), int(hi) + 1, shape, generator=gen).to(dt)
        return torch.rand(shape, generator=gen, dtype=torch.float64).mul(hi - lo).add(lo).to(dt)


def parse_tensor_spec(text: str) -> TensorSpec:
    """``"float32[N,32]"``, ``"int64[N]{0..9}"``, ``"float32[N,1]{0.1:2}"``, ``"[N,8]"`` (case dtype)."""
    m = _SPEC.match(text)
    if not m:
        raise UsageError("tensor spec must look like float32[N,32], int64[N]{{0..9}} or float32[N,1]{{0.1:2}}, "
                         "got {!r}".format(text))
    name = m.group("dtype")
    if name and name not in _DTYPES:
        raise UsageError("tensor spec dtype must be one of {}, got {!r} in {!r}".format(", ".join(_DTYPES), name, text))
    dtype = _DTYPES[name] if name else None
    dims: List[Any] = []
    for d in (x.strip() for x in m.group("dims").split(",")):
        if d == "N":
            dims.append("N")
        elif d.isdigit() and 0 < int(d) <= MAX_DIM:
            dims.append(int(d))
        else:
            raise UsageError("tensor spec dimensions must be N or integers from 1 to {}, got {!r} in {!r}".format(
                MAX_DIM, d, text))
    if not dims or dims[0] != "N":
        raise UsageError("tensor spec must start with the batch dimension N, got {!r}".format(text))
    rng = _parse_range(m.group("range"), text)
    integer = dtype is not None and not dtype.is_floating_point
    if integer and (rng is None or rng[0] != "int"):
        raise UsageError("an integer tensor spec needs an integer range such as {{0..9}}, got {!r}".format(text))
    return TensorSpec(dtype, tuple(dims), rng, text)


def _parse_range(text: Optional[str], spec: str) -> Optional[Tuple[str, float, float]]:
    if text is None:
        return None
    try:
        if ".." in text:
            lo, hi = (int(v) for v in text.split(".."))
            kind = "int"
        elif ":" in text:
            lo, hi = (float(v) for v in text.split(":"))
            kind = "uniform"
        else:
            raise ValueError
    except ValueError:
        raise UsageError("tensor spec range must be {{lo..hi}} (integers) or {{lo:hi}} (uniform), got {{{}}} in {!r}"
                         .format(text, spec)) from None
    if hi < lo:
        raise UsageError("tensor spec range must have lo <= hi, got {{{}}} in {!r}".format(text, spec))
    return (kind, lo, hi)


def parse_value(raw: str) -> Any:
    """One KEY=VALUE value: a JSON literal (``true``, ``null``, ``0.5``, ``[1, 2]``, ``{"a": 1}``),
    else a Python literal (``True``, ``None``, ``(1, 2)``, ``'text'``), else the text itself."""
    import ast
    import json

    try:
        return json.loads(raw)
    except ValueError:
        pass
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return raw


def parse_kwargs(items: Sequence[str], what: str) -> Dict[str, Any]:
    """``["delta=0.5", "sigmoid=true", "name=abc"]`` -> ``{"delta": 0.5, "sigmoid": True, "name": "abc"}``
    (values by :func:`parse_value`); each value is checked against the module's parameter when it
    is built (:func:`coerce_init_args`)."""
    out: Dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise UsageError("{} must be key=value, got {!r}".format(what, item))
        if key.strip() in out:
            raise UsageError("{} gives {!r} twice".format(what, key.strip()))
        out[key.strip()] = parse_value(raw)
    return out


def _expects(param: inspect.Parameter) -> Tuple[set, bool]:
    """What a parameter takes, from its annotation or its default: a set of type names among
    bool/int/float/str/tensor/list (empty: anything) and whether None is allowed."""
    ann = param.annotation
    text = ann if isinstance(ann, str) else ("" if ann is inspect.Parameter.empty else repr(ann))
    kinds = set()
    for name, words in (("bool", ("bool",)), ("int", ("int",)), ("float", ("float",)), ("str", ("str",)),
                        ("tensor", ("Tensor",)), ("list", ("List", "list", "Sequence", "Tuple", "tuple"))):
        if any(re.search(r"\b{}\b".format(w), text) for w in words):
            kinds.add(name)
    if ann in (bool, int, float, str):
        kinds = {ann.__name__}
    default = param.default
    if not kinds and default is not inspect.Parameter.empty and default is not None:
        kinds = {"tensor" if isinstance(default, Tensor) else type(default).__name__} & {
            "bool", "int", "float", "str", "tensor", "list", "tuple"}
    optional = default is None or "Optional" in text or "None" in text
    return kinds, optional


def coerce_init_args(factory: Callable[..., Any], kwargs: Dict[str, Any], what: str, name: str) -> Dict[str, Any]:
    """Check (and convert) init arguments against ``factory``'s signature: an unknown keyword, or a
    value of the wrong kind for a parameter's annotation or default, is a UsageError naming both.
    Lists of numbers become float tensors where a tensor is expected (class weights), and where
    nothing is said and the default is None."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin or C extension: nothing to check against
        return dict(kwargs)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    out: Dict[str, Any] = {}
    for key, value in kwargs.items():
        param = params.get(key)
        if param is None or param.kind in (param.VAR_POSITIONAL, param.POSITIONAL_ONLY):
            if takes_any:
                out[key] = value
                continue
            names = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
            raise UsageError("{} {!r} takes no argument {!r} (it takes: {})".format(what, name, key, ", ".join(names)))
        kinds, optional = _expects(param)
        numbers = isinstance(value, (list, tuple)) and bool(value) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        if value is None and (optional or not kinds):
            out[key] = value
        elif numbers and ("tensor" in kinds or (not kinds and param.default is None)):
            out[key] = torch.tensor(value, dtype=torch.float32)
        elif not kinds or isinstance(value, Tensor):
            out[key] = value
        elif isinstance(value, bool):
            if "bool" not in kinds:
                raise _kind_error(what, name, key, value, kinds)
            out[key] = value
        elif isinstance(value, int) and kinds & {"int", "float"}:
            out[key] = value if "int" in kinds else float(value)
        elif isinstance(value, float) and "float" in kinds:
            out[key] = value
        elif isinstance(value, str) and "str" in kinds:
            out[key] = value
        elif isinstance(value, (list, tuple)) and kinds & {"list", "tuple", "tensor"}:
            out[key] = torch.tensor(value, dtype=torch.float32) if numbers and "tensor" in kinds else value
        else:
            raise _kind_error(what, name, key, value, kinds)
    return out


def _kind_error(what: str, name: str, key: str, value: Any, kinds: set) -> UsageError:
    return UsageError("{} {!r}: {} must be {}{}, got {!r} ({})".format(
        what, name, key, " or ".join(sorted(kinds)), "", value, type(value).__name__))


def _import(path: str, what: str) -> Any:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise UsageError("{} must be a registry name or package.module:Class, got {!r}".format(what, path))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError("{} {!r}: cannot import {!r} ({})".format(what, path, module_name, exc)) from None
    except Exception as exc:  # the user's module itself fails: a syntax error, an error at import time
        where = user_frame(traceback.format_exc())
        raise UsageError("{} {!r}: importing {!r} failed: {}: {}{}".format(
            what, path, module_name, type(exc).__name__, _first_line(exc), " (at {})".format(where) if where else "")
        ) from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UsageError("{} {!r}: {!r} has no attribute {!r}".format(what, path, module_name, attr))
        obj = getattr(obj, part)
    return obj


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _build(factory: Callable[..., Any], kwargs: Dict[str, Any], what: str, name: str,
           signature_of: Optional[Callable[..., Any]] = None) -> nn.Module:
    kwargs = coerce_init_args(signature_of or factory, kwargs, what, name)
    try:
        module = factory(**kwargs)
    except (TypeError, ValueError) as exc:
        raise UsageError("{} {!r} with {}: {}".format(what, name, kwargs or "no arguments", exc)) from None
    except Exception as exc:  # the user's __init__ raised: their error, in one line, with their line
        where = user_frame(traceback.format_exc())
        raise UsageError("{} {!r} raised in __init__ with {}: {}: {}{}".format(
            what, name, kwargs or "no arguments", type(exc).__name__, _first_line(exc),
            " (at {})".format(where) if where else "")) from None
    if not isinstance(module, nn.Module):
        raise UsageError("{} {!r} must build a torch.nn.Module, got {}".format(what, name, type(module).__name__))
    return module


def resolve_net(name_or_path: str, init_kwargs: Optional[Dict[str, Any]] = None) -> nn.Module:
    """A registry net (``seed``, ``mlp``, ...) or ``package.module:Class`` built with ``init_kwargs``."""
    from .registry import NETS

    return _resolve("net", NETS, name_or_path, init_kwargs)


def resolve_loss(name_or_path: str, init_kwargs: Optional[Dict[str, Any]] = None) -> nn.Module:
    """A registry loss (``mse``, ...) or ``package.module:Class`` built with ``init_kwargs``."""
    from .registry import LOSSES

    return _resolve("loss", LOSSES, name_or_path, init_kwargs)


def _resolve(what: str, table: Dict[str, Any], name_or_path: str, init_kwargs: Optional[Dict[str, Any]]) -> nn.Module:
    kwargs = dict(init_kwargs or {})
    if name_or_path in table:
        spec = table[name_or_path]  # checked against the class the registry entry builds
        return _build(spec.build, kwargs, what, name_or_path, getattr(spec, "module", None) or getattr(spec, "factory", None))
    if ":" not in name_or_path:
        raise UsageError("{} must be one of {} or package.module:Class, got {!r}".format(
            what, ", ".join(table), name_or_path))
    return _build(_import(name_or_path, what), kwargs, what, name_or_path)


@dataclass
class Case:
    """One (net, loss) case: ``loss(net(*inputs), *targets)``, or the loss alone when ``net`` is
    None (then ``inputs`` is ``(prediction,)``). :meth:`with_batch` makes the same case (same
    modules) at another batch size."""

    net: Optional[nn.Module]
    loss: nn.Module
    inputs: Tuple[Tensor, ...]
    targets: Tuple[Tensor, ...]
    description: Dict[str, Any]
    _make: Callable[[int, int], Tuple[Tuple[Tensor, ...], Tuple[Tensor, ...]]] = field(repr=False, default=None)  # type: ignore[assignment]

    def with_batch(self, batch: int, seed: Optional[int] = None) -> "Case":
        """The same case at another batch size (at the same dynamic sizes, if any)."""
        return self._at(batch, seed, self.description.get("sizes"))

    def with_sizes(self, sizes: Dict[str, int], batch: Optional[int] = None) -> "Case":
        """The same case with the net's dynamic dims (registry ``NetSpec.dynamic_dims``) at
        ``sizes`` ({symbol: size}), every tensor marked with the dims it has
        (:mod:`compile_losses.dims`), so that backends prepare once for every size."""
        return self._at(self.description["batch"] if batch is None else batch, None, dict(sizes))

    def _at(self, batch: int, seed: Optional[int], sizes: Optional[Dict[str, int]]) -> "Case":
        seed = self.description["seed"] if seed is None else seed
        if sizes is not None:
            sizes = dict(self.description.get("dynamic") or {}, **sizes)
        inputs, targets = self._make(batch, seed) if sizes is None else self._make(batch, seed, sizes)
        description = dict(self.description, batch=batch, seed=seed, inputs=[tuple(t.shape) for t in inputs],
                           targets=[tuple(t.shape) for t in targets])
        if sizes is not None:
            description["sizes"] = dict(sizes)
            _mark_case(inputs + targets, lambda sz: self._make(batch, seed, sz), sizes)
        return Case(self.net, self.loss, inputs, targets, description, self._make)

    @property
    def label(self) -> str:
        d = self.description
        extra = "".join(" {}={}".format(k, v) for k, v in (d.get("sizes") or {}).items())
        return "{} {} batch={}{}".format(d["name"], d["dtype"], d["batch"], extra)


def _mark_case(tensors: Tuple[Tensor, ...], make: Callable[[Dict[str, int]], Any], sizes: Dict[str, int]) -> None:
    """Mark each tensor's dims that follow a symbol: those whose size changes when only that
    symbol's size does (inputs and targets alike: a dense target has the image's height)."""
    from .dims import mark_dims

    found: List[Dict[int, str]] = [{} for _ in tensors]
    for name, size in sizes.items():
        ins, ts = make(dict(sizes, **{name: size + 1}))
        for i, (a, b) in enumerate(zip(tensors, ins + ts)):
            for d in range(1, min(a.dim(), b.dim())):
                if a.shape[d] != b.shape[d]:
                    found[i][d] = name
    for t, dims in zip(tensors, found):
        mark_dims(t, dims)


def make_case(net_name: Optional[str], loss_name: str, *, batch: int, dtype: torch.dtype = torch.float32,
              input_specs: Optional[Sequence[str]] = None, target_specs: Optional[Sequence[str]] = None,
              net_kwargs: Optional[Dict[str, Any]] = None, loss_kwargs: Optional[Dict[str, Any]] = None,
              seed: int = 0) -> Case:
    """Build a case. ``net_name`` None (or ``"none"``) is the loss alone on its own inputs.

    Registry losses make their registry targets; a user loss gets ``target_specs`` (default: one
    float target shaped like the prediction). A user net needs ``input_specs``. Weights are drawn
    from ``seed``, so the same arguments give the same case.
    """
    from .registry import LOSSES, NETS

    if batch < 1:
        raise UsageError("batch must be a positive integer, got {}".format(batch))
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise UsageError("dtype must be a floating-point torch dtype, got {}".format(dtype))
    alone = net_name is None or net_name == "none"
    spec = LOSSES.get(loss_name)
    net_spec = None if alone else NETS.get(net_name)  # type: ignore[arg-type]
    loss_kwargs = dict(loss_kwargs or {})
    if net_spec is not None and loss_name == net_spec.loss and not loss_kwargs:
        loss_kwargs = dict(net_spec.loss_kwargs)  # the settings the net is trained with
    inputs_parsed = [parse_tensor_spec(s) for s in (input_specs or ())]
    targets_parsed = [parse_tensor_spec(s) for s in (target_specs or ())]

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        loss = resolve_loss(loss_name, loss_kwargs)
        net: Optional[nn.Module] = None
        if not alone:
            kwargs = dict(net_kwargs or {})
            if net_name == "seed" and spec is not None:
                kwargs.setdefault("out_features", spec.net_out)
            net = resolve_net(net_name, kwargs)  # type: ignore[arg-type]
    loss = loss.to(dtype).eval()
    if net is not None:
        net = net.to(dtype).eval()
    if net is not None and net_spec is None and not inputs_parsed:
        raise UsageError("net {!r} is not in the registry: give its inputs, e.g. --input 'float32[N,32]'".format(net_name))
    if alone and spec is None and not inputs_parsed:
        raise UsageError("loss {!r} alone is not in the registry: give its prediction, e.g. --input 'float32[N,1]'"
                         .format(loss_name))

    def make(b: int, s: int, sizes: Optional[Dict[str, int]] = None) -> Tuple[Tuple[Tensor, ...], Tuple[Tensor, ...]]:
        if sizes is not None and (net_spec is None or inputs_parsed or not net_spec.dynamic_dims):
            raise UsageError("dynamic sizes need a registry net that declares dynamic dims, got net {!r}".format(
                net_name))
        gen = torch.Generator().manual_seed(s)
        if inputs_parsed:
            inputs = tuple(p.make(b, dtype, gen) for p in inputs_parsed)
        elif alone:
            pred, targets = spec.input_for(b, dtype, seed=s)  # type: ignore[union-attr]
            return (pred,), (targets if not targets_parsed else tuple(p.make(b, dtype, gen) for p in targets_parsed))
        else:
            try:
                inputs = (net_spec.example_input(b, dtype, seed=s, sizes=sizes),)  # type: ignore[union-attr]
            except ValueError as exc:
                raise UsageError(str(exc)) from None
        if alone:
            pred = inputs[0]
        else:
            from .validate import run_net

            pred = run_net(net, inputs)  # type: ignore[arg-type]  (a bad --input: a named error)
        if targets_parsed:
            targets = tuple(p.make(b, dtype, gen) for p in targets_parsed)
        elif spec is not None:
            targets = spec.make_targets(pred.detach(), gen)
        else:
            targets = (torch.randn(pred.shape, generator=gen, dtype=pred.dtype),)
        return inputs, targets

    inputs, targets = make(batch, seed)
    name = loss_name if alone else "{}+{}".format(net_name, loss_name)
    description = {"name": name, "net": None if alone else net_name, "loss": loss_name,
                   "net_kwargs": dict(net_kwargs or {}), "loss_kwargs": {k: _plain(v) for k, v in loss_kwargs.items()},
                   "batch": batch, "dtype": str(dtype).replace("torch.", ""), "seed": seed,
                   "inputs": [tuple(t.shape) for t in inputs], "targets": [tuple(t.shape) for t in targets]}
    if net_spec is not None and net_spec.dynamic_dims and not inputs_parsed:
        # the net's declared dynamic dims at the declared shape (Case.with_sizes starts from these)
        description["dynamic"] = {n: net_spec.input_shape[d - 1] for d, n in net_spec.dynamic_dims.items()}
    return Case(net, loss, inputs, targets, description, make)


def _plain(value: Any) -> Any:
    return value.tolist() if isinstance(value, Tensor) else value
