"""Dynamic dimensions beyond the batch: which dims of an input are symbolic, and the sizes of them.

A net declares its own in the registry (``NetSpec.dynamic_dims``: the encoder's sequence length,
the dense net's height and width); everything else is derived from that one fact. A tensor carries
its dims as a mark (:func:`mark_dims`: ``{dim index: symbol name}``, dim 0 excluded, which is the
batch or a dim of its own as before), in the spirit of ``torch._dynamo.mark_dynamic``; the adapters
read the marks (export with those dims dynamic, cache one preparation for every size) and never a
net's name. Marks live on the tensor object: copies made while preparing carry them
(:func:`carry_dims`).

Symbol names are identifiers (they become ONNX ``dim_param`` names and the bundle manifest's shape
entries); ``batch`` is the batch's own.
"""
from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["mark_dims", "dims_of", "carry_dims", "check_dims", "resize_dims", "infer_output_dims",
           "sizes_of", "distinct_sizes", "symbolic_shape", "marked_aliases"]

_ATTR = "_compile_losses_dims"
BATCH = "batch"


def check_dims(dims: Any, what: str = "dynamic_dims") -> Dict[int, str]:
    """``{dim index >= 1: identifier}`` (an error naming ``what`` otherwise)."""
    if not isinstance(dims, Mapping):
        raise TypeError("{} must be a dict of dim index -> symbol name, got {}".format(what, type(dims).__name__))
    out: Dict[int, str] = {}
    for d, name in dims.items():
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise ValueError("{} keys must be dim indices >= 1 (dim 0 is the batch), got {!r}".format(what, d))
        if not isinstance(name, str) or not name.isidentifier() or name == BATCH:
            raise ValueError("{} names must be identifiers other than 'batch', got {!r} for dim {}".format(what, name, d))
        out[int(d)] = name
    return out


def mark_dims(t: Tensor, dims: Mapping[int, str]) -> Tensor:
    """Mark ``t``'s dims ``{index: symbol}`` as dynamic (in place on the object; returns ``t``)."""
    dims = check_dims(dims)
    bad = [d for d in dims if d >= t.dim()]
    if bad:
        raise ValueError("dynamic_dims names dim(s) {} of a tensor of shape {}".format(bad, tuple(t.shape)))
    if dims:
        setattr(t, _ATTR, dict(dims))
    elif hasattr(t, _ATTR):
        delattr(t, _ATTR)
    return t


def dims_of(t: Any) -> Dict[int, str]:
    """The dynamic dims marked on ``t`` (empty when none)."""
    return dict(getattr(t, _ATTR, None) or {})


def carry_dims(src: Tensor, dst: Tensor) -> Tensor:
    """``dst`` marked with ``src``'s dims (same rank: a copy, a cast, a resize); returns ``dst``."""
    dims = dims_of(src)
    if dims and dst.dim() == src.dim():
        setattr(dst, _ATTR, dims)
    return dst


def symbolic_shape(t: Tensor, batch: Any = None) -> Tuple[Any, ...]:
    """``t``'s shape with each marked dynamic dim as its symbol (dim 0 as ``batch`` if given)."""
    marked = dims_of(t)
    shape: List[Any] = [marked.get(d, int(s)) for d, s in enumerate(t.shape)]
    if batch is not None and shape:
        shape[0] = batch
    return tuple(shape)


def sizes_of(tensors: Sequence[Tensor]) -> Dict[str, int]:
    """``{symbol: size}`` over the marked tensors; a symbol with two sizes is an error naming both."""
    out: Dict[str, Tuple[int, int]] = {}
    for i, t in enumerate(tensors):
        for d, name in dims_of(t).items():
            seen = out.setdefault(name, (int(t.shape[d]), i))
            if seen[0] != t.shape[d]:
                raise ValueError("dynamic dim {!r} is {} in input {} but {} in input {}".format(
                    name, t.shape[d], i, seen[0], seen[1]))
    return {k: v[0] for k, v in out.items()}


def distinct_sizes(tensors: Sequence[Tensor], taken: Sequence[int] = ()) -> Dict[str, int]:
    """A size per marked symbol to trace or export with: its own size unless that is 0 or 1 (which
    the tracers specialize) or equals another size of the inputs (which "duck sizing" would give
    the same symbol); then the smallest size >= 2 that none has."""
    static = set(taken)
    for t in tensors:
        marked = dims_of(t)
        static.update(int(s) for d, s in enumerate(t.shape) if d not in marked)
    chosen: Dict[str, int] = {}
    for name, size in sizes_of(tensors).items():
        if size < 2 or size in static or size in chosen.values():
            size = 2
            while size in static or size in chosen.values():
                size += 1
        chosen[name] = size
    return chosen


def resize_dims(tensors: Sequence[Tensor], sizes: Mapping[str, int]) -> Tuple[Tensor, ...]:
    """Each tensor with its marked dims repeated (or cut) to ``sizes[symbol]``; marks carried.
    Values are the tensor's own, cycled: what tracing needs, never what parity compares."""
    out = []
    for t in tensors:
        r = t
        for d, name in dims_of(t).items():
            want = sizes.get(name, t.shape[d])
            if want != r.shape[d]:
                r = r.index_select(d, (torch.arange(want) % t.shape[d]).to(t.device))
        out.append(carry_dims(t, r) if r is not t else t)
    return tuple(out)


def infer_output_dims(fn: Callable[..., Tensor], inputs: Sequence[Tensor]) -> Dict[int, str]:
    """Which dims of ``fn(*inputs)``'s output follow each marked symbol of the inputs: per symbol,
    the output dims whose size changes when only that symbol grows by one. A symbol that moves no
    output dim (pooled away) leaves none."""
    sizes = sizes_of(inputs)
    if not sizes:
        return {}
    with torch.no_grad():
        base = tuple(fn(*inputs).shape)
        out: Dict[int, str] = {}
        for name, size in sizes.items():
            grown = tuple(fn(*resize_dims(inputs, {name: size + 1})).shape)
            for d, (a, b) in enumerate(zip(base, grown)):
                if a != b and d >= 1:
                    out[d] = name
    return out


def marked_aliases(inputs: Tuple[Tensor, ...], targets: Tuple[Tensor, ...], dims: Any) -> Tuple[Tuple[Tensor, ...], Tuple[Tensor, ...]]:
    """Aliases of the tensors (the caller's are left unmarked) marked with ``dims``: one
    ``{dim index: symbol}`` per tensor of ``inputs + targets``, a shorter list leaving the rest."""
    if not isinstance(dims, (list, tuple)):
        raise TypeError("dynamic_dims must be a list with one {{dim index: symbol}} dict per input and target, "
                        "got {}".format(type(dims).__name__))
    everything = inputs + targets
    if len(dims) > len(everything):
        raise ValueError("dynamic_dims has {} entries but the case has {} inputs and targets".format(
            len(dims), len(everything)))
    out = tuple(t.detach() for t in everything)
    for t, src in zip(out, everything):
        carry_dims(src, t)
    for i, d in enumerate(dims):
        if d is not None:
            mark_dims(out[i], check_dims(d, "dynamic_dims[{}]".format(i)))
    sizes_of(out)  # one size per symbol, or an error naming it
    return out[:len(inputs)], out[len(inputs):]
