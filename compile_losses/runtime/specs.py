"""What the manifest says about each graph (inputs, outputs, class-index ranges) and about the train
step (roles), validated at load so that a malformed manifest is refused by name there, not found
out by a KeyError or a wrong answer at the first ``train_step``."""
from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

import numpy as np

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
