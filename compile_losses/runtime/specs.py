"""What the manifest says about each graph (inputs, outputs, class-index ranges) and about the train
step (roles), validated at load so that a malformed manifest is refused by name there, not found
out by a KeyError or a wrong answer at the first ``train_step``."""
from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

import numpy as np

from ..bundle_format import OPTIMIZERS
from .errors import quote
from .integrity import is_int

DTYPES = {"float16": np.float16, "float32": np.float32, "float64": np.float64, "int64": np.int64,
          "int32": np.int32, "bool": np.bool_}
MAX_NAME = 256
MAX_RANK = 16


class SignatureError(ValueError):
    """One fault in a manifest entry; the loader reports it as a BundleError for that file."""


@dataclass(frozen=True)
class Signature:
    inputs: List[Tuple[str, np.dtype, Tuple[Any, ...]]]   # name, dtype, shape (int or symbol)
    outputs: List[str]
    classes: Dict[str, Tuple[int, int]]                   # input -> (classes, ignore_index)


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_NAME or not value.isprintable():
        raise SignatureError("{} must be a printable, non-empty name of at most {} characters, got {}".format(
            what, MAX_NAME, ascii(value)[:80]))
    return value


def _spec(spec: Any, where: str) -> Tuple[str, np.dtype, Tuple[Any, ...]]:
    if not isinstance(spec, dict):
        raise SignatureError("{} must be an object, got {}".format(where, type(spec).__name__))
    name = _name(spec.get("name"), where + " name")
    dtype = spec.get("dtype")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise SignatureError("{} ({}) dtype must be one of {}, got {}".format(where, quote(name), ", ".join(DTYPES), ascii(dtype)[:40]))
    shape = spec.get("shape")
    if not isinstance(shape, list) or len(shape) > MAX_RANK:
        raise SignatureError("{} ({}) shape must be a list of at most {} sizes, got {}".format(where, quote(name), MAX_RANK, ascii(shape)[:80]))
    dims: List[Any] = []
    for d in shape:
        if is_int(d) and d >= 0:
            dims.append(d)
        elif isinstance(d, str) and d.isidentifier() and len(d) <= 64:
            dims.append(d)
        else:
            raise SignatureError("{} ({}) shape entries must be sizes >= 0 or symbol names, got {}".format(where, quote(name), ascii(d)[:40]))
    return name, np.dtype(DTYPES[dtype]), tuple(dims)


def parse_signature(art: Dict[str, Any]) -> Signature:
    """The graph's signature from its manifest entry; raises SignatureError naming the field."""
    ins, outs = art.get("inputs"), art.get("outputs")
    if not isinstance(ins, list) or not isinstance(outs, list) or not outs:
        raise SignatureError("manifest entry lacks a valid inputs/outputs signature (lists of specs)")
    inputs = [_spec(s, "inputs[{}]".format(i)) for i, s in enumerate(ins)]
    outputs = [_spec(s, "outputs[{}]".format(i))[0] for i, s in enumerate(outs)]
    for names, what in ((inputs and [n for n, _, _ in inputs], "inputs"), (outputs, "outputs")):
        if names and len(set(names)) != len(names):
            raise SignatureError("{} names must be unique, got {}".format(what, ascii(names)[:200]))
    classes: Dict[str, Tuple[int, int]] = {}
    for spec, (name, dtype, _) in zip(ins, inputs):
        if "classes" not in spec and "ignore_index" not in spec:
            continue
        c, ignore = spec.get("classes"), spec.get("ignore_index", -100)
        # an index outside the recorded range reads garbage in the graph, so the range must be exact
        if not is_int(c) or c < 1:
            raise SignatureError("input {} classes must be an integer >= 1, got {}".format(quote(name), ascii(c)[:40]))
        if not is_int(ignore):
            raise SignatureError("input {} ignore_index must be an integer, got {}".format(quote(name), ascii(ignore)[:40]))
        if dtype.kind not in "iu":
            raise SignatureError("input {} has classes but dtype {}, not an integer dtype".format(quote(name), dtype))
        classes[name] = (c, ignore)
    return Signature(inputs, outputs, classes)


@dataclass(frozen=True)
class Roles:
    params: List[Dict[str, str]]    # each: name (the net's), input, grad, new (graph names)
    data: List[str]
    lr: str
    loss: str


def parse_roles(raw: Any, sig: Signature) -> Roles:
    """The train step's roles, checked against its graph signature: inputs are exactly every
    param's input, then the data, then lr; outputs hold the loss and every grad and new value."""
    if not isinstance(raw, dict):
        raise SignatureError("train_step roles must be an object with params, data, lr and loss, got {}".format(type(raw).__name__))
    params = raw.get("params")
    if not isinstance(params, list) or not params:
        raise SignatureError("train_step roles.params must be a non-empty list, got {}".format(ascii(params)[:80]))
    parsed = []
    for i, p in enumerate(params):
        if not isinstance(p, dict):
            raise SignatureError("train_step roles.params[{}] must be an object".format(i))
        parsed.append({k: _name(p.get(k), "train_step roles.params[{}].{}".format(i, k)) for k in ("name", "input", "grad", "new")})
    data = raw.get("data")
    if not isinstance(data, list) or not data:
        raise SignatureError("train_step roles.data must be a non-empty list of input names, got {}".format(ascii(data)[:80]))
    data = [_name(d, "train_step roles.data[{}]".format(i)) for i, d in enumerate(data)]
    lr, loss = _name(raw.get("lr"), "train_step roles.lr"), _name(raw.get("loss"), "train_step roles.loss")
    if len({p["name"] for p in parsed}) != len(parsed):
        raise SignatureError("train_step roles.params names must be unique")
    want_in = [p["input"] for p in parsed] + data + [lr]
    got_in = [n for n, _, _ in sig.inputs]
    if want_in != got_in:
        raise SignatureError("train_step roles name inputs {} but the graph's inputs are {}".format(ascii(want_in)[:200], ascii(got_in)[:200]))
    missing = [o for o in [loss] + [p["grad"] for p in parsed] + [p["new"] for p in parsed] if o not in sig.outputs]
    if missing:
        raise SignatureError("train_step roles name outputs {} that the graph does not have".format(ascii(missing)[:200]))
    lr_spec = sig.inputs[len(want_in) - 1]
    if lr_spec[1].kind != "f" or lr_spec[2] != ():
        raise SignatureError("train_step roles.lr {} must be a float scalar input, got {} {}".format(quote(lr), lr_spec[1], lr_spec[2]))
    return Roles(parsed, data, lr, loss)


# ---------------------------------------------------------------------------------------------
# the optimizer train step: roles are an OptimStepSignature description, checked against the graph
# ---------------------------------------------------------------------------------------------
MAX_LIST = 4096


@dataclass(frozen=True)
class OptimRoles:
    signature: Any                  # compile_losses.signature.OptimStepSignature
    hyper: Dict[str, float]         # the exported hyper-parameter values, in graph order
    flags: Dict[str, bool]


def _names(raw: Any, what: str, allow_empty: bool = True) -> Tuple[str, ...]:
    if not isinstance(raw, list) or len(raw) > MAX_LIST or (not raw and not allow_empty):
        raise SignatureError("{} must be a {}list of names, got {}".format(
            what, "" if allow_empty else "non-empty ", ascii(raw)[:80]))
    out = tuple(_name(v, "{}[{}]".format(what, i)) for i, v in enumerate(raw))
    if len(set(out)) != len(out):
        raise SignatureError("{} names must be unique, got {}".format(what, ascii(list(out))[:200]))
    return out


def _real(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise SignatureError("{} must be a finite number, got {}".format(what, ascii(value)[:40]))
    return float(value)


def is_optimizer_step(art: Dict[str, Any]) -> bool:
    """A train step that carries an optimizer (its entry names one), not the plain SGD step."""
    return isinstance(art.get("roles"), dict) and "optimizer" in art["roles"]


def parse_optim_roles(art: Dict[str, Any], sig: Signature) -> OptimRoles:
    """The optimizer train step's roles (``art["roles"]``, an OptimStepSignature description)
    and optimizer (``art["optimizer"]``: name, hyper, flags, state), checked against each other
    and the graph: inputs and outputs exactly as the signature names them, parameters and state
    of fixed shapes, hyper-parameters and the step count 0-d float64."""
    from ..signature import OptimStepSignature

    roles, opt = art.get("roles"), art.get("optimizer")
    if not isinstance(roles, dict) or not isinstance(opt, dict):
        raise SignatureError("train_step roles and optimizer must be objects, got {} and {}".format(
            type(roles).__name__, type(opt).__name__))
    name = roles.get("optimizer")
    if name not in OPTIMIZERS or opt.get("name") != name:
        raise SignatureError("train_step optimizer must be one of {} and the same in roles and optimizer, got {} "
                             "and {}".format(", ".join(OPTIMIZERS), ascii(name)[:40], ascii(opt.get("name"))[:40]))
    params = _names(roles.get("params"), "train_step roles.params", allow_empty=False)
    frozen = _names(roles.get("frozen"), "train_step roles.frozen")
    targets = _names(roles.get("targets"), "train_step roles.targets")
    state = _names(roles.get("state"), "train_step roles.state", allow_empty=False)
    hyper_names = _names(roles.get("hyper"), "train_step roles.hyper", allow_empty=False)
    if set(params) & set(frozen):
        raise SignatureError("train_step roles.params and roles.frozen share {}".format(ascii(sorted(set(params) & set(frozen)))))
    if state[0] != "step":
        raise SignatureError("train_step roles.state must start with 'step', got {}".format(ascii(list(state))[:80]))
    hyper, flags = opt.get("hyper"), opt.get("flags")
    if not isinstance(hyper, dict) or list(hyper) != list(hyper_names):
        raise SignatureError("train_step optimizer.hyper must give exactly roles.hyper {}, got {}".format(
            ascii(list(hyper_names))[:120], ascii(hyper)[:120]))
    if not isinstance(flags, dict) or len(flags) > 16 or not all(isinstance(v, bool) for v in flags.values()):
        raise SignatureError("train_step optimizer.flags must map names to true/false, got {}".format(ascii(flags)[:120]))
    if opt.get("state") != list(state):
        raise SignatureError("train_step optimizer.state {} differs from roles.state {}".format(
            ascii(opt.get("state"))[:80], ascii(list(state))[:80]))
    values = {k: _real(v, "train_step optimizer.hyper[{}]".format(quote(k))) for k, v in hyper.items()}
    osig = OptimStepSignature(params, frozen, targets, state, hyper_names, name, _name(roles.get("input", "x"), "train_step roles.input"))
    got_in, got_out = [n for n, _, _ in sig.inputs], list(sig.outputs)
    if osig.input_names != got_in or osig.output_names != got_out:
        raise SignatureError("train_step roles give inputs {} and outputs {}, but the graph's are {} and {}".format(
            ascii(osig.input_names)[:200], ascii(osig.output_names)[:120], ascii(got_in)[:200], ascii(got_out)[:120]))
    specs = {n: (d, s) for n, d, s in sig.inputs}
    for p, safe in zip(params, osig.param_inputs):
        dtype, shape = specs[safe]
        if dtype.kind != "f" or not all(is_int(d) for d in shape):
            raise SignatureError("train_step parameter {} must be a float input of fixed shape, got {} {}".format(
                quote(p), dtype, shape))
        for key in state:
            sd, ss = specs["state_{}_{}".format(safe, key)]
            want = (np.dtype(np.float64), ()) if key == "step" else (dtype, shape)
            if (sd, ss) != want:
                raise SignatureError("train_step state {} of {} must be {} {}, got {} {}".format(
                    quote(key), quote(p), want[0], want[1], sd, ss))
    for h in hyper_names:
        if specs[h] != (np.dtype(np.float64), ()):
            raise SignatureError("train_step hyper-parameter {} must be a 0-d float64 input, got {} {}".format(
                quote(h), *specs[h]))
    return OptimRoles(osig, values, dict(flags))
