"""Bad input where a case enters the library (``verify``, ``export_bundle``, and the CLI through
them): checked once, before any backend runs, so the error names the argument, what was expected and
what was given, instead of surfacing as a backend's traceback or a silently failing row.

Checked: every input and target is a tensor; the number of targets the loss's ``forward`` takes;
a non-empty batch, the same in every tensor; floating inputs in the net's parameter dtype; class
indices inside the prediction's class dimension (or ``ignore_index``); that the net's output fits
the loss (one eager call, whose error is repeated with the shapes). ``finite=True`` (export) also
refuses NaN/Inf examples, whose outputs would become the bundle's fixtures; ``verify`` lets them
through on purpose: NaN and Inf propagate as in torch, and its rows say ``non-finite``.

Values are read here, once per call at the entry point, never inside a loss body.
"""
import inspect
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .errors import UsageError

__all__ = ["InputError", "InputTypeError", "target_names", "check_arity", "class_index_ranges",
           "check_class_indices", "run_net", "check_case"]


class InputError(UsageError):
    """A case that cannot run as given (exit 2 in the CLI, like any bad input)."""


class InputTypeError(InputError, TypeError):
    """Bad input of the wrong type, dtype or number."""


def target_names(loss: nn.Module) -> Tuple[List[str], List[str], bool]:
    """The loss's targets after its prediction: (required names, optional names, takes *args)."""
    try:
        params = list(inspect.signature(loss.forward).parameters.values())[1:]
    except (TypeError, ValueError):
        return [], [], True
    required = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    optional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is not p.empty]
    return required, optional, any(p.kind == p.VAR_POSITIONAL for p in params)


def _name(loss: nn.Module) -> str:
    return type(loss).__name__


def check_arity(loss: nn.Module, targets: Sequence[Any]) -> List[str]:
    """The targets' names, or :class:`InputTypeError` ``loss MSELoss takes 1 target (target), got 2``."""
    required, optional, star = target_names(loss)
    n = len(targets)
    if star:
        return (required + optional + ["target{}".format(i) for i in range(n)])[:n]
    lo, hi = len(required), len(required) + len(optional)
    if not lo <= n <= hi:
        count = str(lo) if lo == hi else "{} to {}".format(lo, hi)
        names = ", ".join(required + [o + "?" for o in optional])
        raise InputTypeError("loss {} takes {} target{} ({}), got {}".format(
            _name(loss), count, "" if hi == 1 else "s", names, n))
    return (required + optional)[:n]


def _shape(t: Tensor, batch: bool = True) -> str:
    dims = ["N" if batch and i == 0 else str(d) for i, d in enumerate(t.shape)]
    return "({})".format(", ".join(dims) + ("," if len(dims) == 1 else ""))


def class_index_ranges(loss: nn.Module, pred: Tensor, targets: Sequence[Tensor]) -> Dict[int, Dict[str, int]]:
    """Targets that are class indices into ``pred``'s dim 1: ``{target index: {"classes": C,
    "ignore_index": i}}``. A loss with an ``ignore_index`` setting (ours and torch's class losses)
    whose integer target has the prediction's shape without dim 1."""
    if not hasattr(loss, "ignore_index") or pred.dim() < 2:
        return {}
    out = {}
    for i, t in enumerate(targets):
        if (isinstance(t, Tensor) and not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool
                and tuple(t.shape) == (pred.shape[0],) + tuple(pred.shape[2:])):
            out[i] = {"classes": int(pred.shape[1]), "ignore_index": int(getattr(loss, "ignore_index"))}
    return out


def check_class_indices(loss: nn.Module, pred: Tensor, targets: Sequence[Tensor], names: Sequence[str]) -> None:
    """:class:`InputError` for a class index outside ``0 <= t < C`` that is not ``ignore_index``
    (eager would raise torch's bare IndexError, and an exported graph would read garbage)."""
    for i, r in class_index_ranges(loss, pred, targets).items():
        t = targets[i]
        bad = ~(((t >= 0) & (t < r["classes"])) | (t == r["ignore_index"]))
        if bool(bad.any()):
            where = tuple(int(v) for v in bad.nonzero()[0])
            raise InputError("{} must hold class indices 0 <= {} < {} (the prediction's dim 1) or ignore_index {}, "
                             "got {} at position {} ({} bad value{})".format(
                                 names[i], names[i], r["classes"], r["ignore_index"], int(t[where]), where,
                                 int(bad.sum()), "" if int(bad.sum()) == 1 else "s"))


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def run_net(net: nn.Module, inputs: Sequence[Tensor]) -> Tensor:
    """``net(*inputs)`` without gradients; an error becomes :class:`InputError` with the shapes."""
    with torch.no_grad():
        try:
            pred = net(*inputs)
        except (ValueError, TypeError, RuntimeError, IndexError) as exc:
            raise InputError("inputs {} do not fit net {}: {}".format(
                ", ".join(_shape(t) for t in inputs), type(net).__name__, _first_line(exc))) from None
    if not isinstance(pred, Tensor):
        raise InputTypeError("net {} must return one tensor, got {}".format(type(net).__name__, type(pred).__name__))
    return pred


def check_case(net: Optional[nn.Module], loss: nn.Module, inputs: Sequence[Any], targets: Sequence[Any], *,
               finite: bool = False) -> None:
    """Refuse a case that cannot run as given, with one clear line (see the module docstring).
    ``net`` None: ``inputs`` is ``(prediction,)``."""
    what = "prediction" if net is None else "inputs"
    for label, items in ((what, inputs), ("target", targets)):
        for i, t in enumerate(items):
            if not isinstance(t, Tensor):
                raise InputTypeError("{}[{}] must be a tensor, got {}".format(label, i, type(t).__name__))
    if not inputs:
        raise InputTypeError("{} must hold at least one tensor, got none".format(what))
    names = check_arity(loss, targets)
    labelled = [("{}[{}]".format(what, i) if net is not None or len(inputs) > 1 else what, t) for i, t in enumerate(inputs)]
    labelled += list(zip(names, targets))
    first_label, first = labelled[0]
    if first.dim() == 0 or first.shape[0] == 0:
        raise InputError("{} must have a batch dimension with at least one sample, got shape {}".format(
            first_label, tuple(first.shape)))
    for label, t in labelled[1:]:
        if t.dim() == 0 or t.shape[0] != first.shape[0]:
            raise InputError("{} must have the batch size of {} ({}), got shape {}".format(
                label, first_label, first.shape[0], tuple(t.shape)))
    if finite:
        for label, t in labelled:
            if t.is_floating_point():
                n_bad = int((~torch.isfinite(t)).sum())
                if n_bad:
                    raise InputError("{} holds {} NaN/Inf value{}: an export's example must be finite (its outputs "
                                     "become the bundle's fixtures)".format(label, n_bad, "" if n_bad == 1 else "s"))
    if net is not None:
        dtypes = {p.dtype for p in net.parameters() if p.is_floating_point()}
        for label, t in labelled[:len(inputs)]:
            if len(dtypes) == 1 and t.is_floating_point() and t.dtype not in dtypes:
                raise InputTypeError("{} must have dtype {} (the net's parameters), got {}".format(
                    label, str(next(iter(dtypes))).replace("torch.", ""), str(t.dtype).replace("torch.", "")))
        pred = run_net(net, inputs)
    else:
        pred = inputs[0]
    check_class_indices(loss, pred, targets, names)
    with torch.no_grad():
        try:
            loss(pred, *targets)
        except (ValueError, TypeError, RuntimeError, IndexError) as exc:
            whose = "the prediction" if net is None else "the net's output"
            error = InputTypeError if isinstance(exc, TypeError) else InputError
            raise error("{} {} does not fit loss {}: {}".format(whose, _shape(pred), _name(loss), _first_line(exc))) from None
