"""The torch.compile audit: graph breaks and recompilations over batch sizes."""
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..backends import BACKENDS, Backend
from .report import _one_line
from .rule import ERROR, FAIL, GRAPH_BREAKS, PASS, UNAVAILABLE


AUDIT_BATCHES = (1, 7, 64, 4096)


def audited(chosen: Sequence[Backend]) -> Optional[Backend]:
    """The backend whose compilations the audit counts, when any chosen backend is ``audited``
    (both torch.compile backends compile through dynamo: ``compile`` for a forward that records
    autograd and for reduction="none" losses); None when none is."""
    for b in chosen:
        if b.audited:
            return b
    return None


def compile_audit(module: nn.Module, make_args: Callable[[int], Tuple[Tensor, ...]], label: str = "",
                  batches: Sequence[int] = AUDIT_BATCHES, backend: Optional[str] = None) -> Dict[str, Any]:
    """Graph breaks (any: status ``graph-breaks``, each with its reason and user line, see
    :mod:`.breaks`) and recompilations of a fresh ``torch.compile`` over ``batches`` (none after the first compile with a dynamic batch: the second batch size's), forward and
    backward through the first argument (and any parameters). ``backend``: an audited backend's
    name (default: the first registered one)."""
    from .breaks import breaks_detail, graph_breaks_at

    b = BACKENDS.get(backend) if backend is not None else audited(list(BACKENDS.values()))
    if b is None:
        raise ValueError("backend must name a registered backend that compiles through dynamo (audited ones: {}), "
                         "got {!r}".format(", ".join(n for n, x in BACKENDS.items() if x.audited), backend))
    entry: Dict[str, Any] = {"case": label or type(module).__name__, "backend": b.name, "batches": list(batches)}
    ok, reason = b.available()
    if not ok:
        return dict(entry, status=UNAVAILABLE, detail=reason)
    try:
        first = make_args(batches[0])
        breaks = graph_breaks_at(module, first)
        if breaks["graph_breaks"]:  # torch.compile's defaults run it; fullgraph=True would not
            return dict(entry, status=GRAPH_BREAKS, graph_breaks=breaks["graph_breaks"], breaks=breaks["breaks"],
                        detail=breaks_detail(breaks))
        fn = b.audit_callable(module, first)
        counts = []
        for n in batches:
            args = list(make_args(n))
            if args[0].is_floating_point():
                args[0] = args[0].detach().requires_grad_(True)
            value = fn(*args)
            grads_of = [a for a in args if a.requires_grad] + [p for p in module.parameters() if p.requires_grad]
            if grads_of:
                torch.autograd.grad(value.sum(), grads_of, allow_unused=True)
            counts.append(b.compile_count(fn))
    except Exception as exc:
        return dict(entry, status=ERROR, detail=_one_line(exc))
    recompiles = counts[-1] - counts[min(1, len(counts) - 1)]
    status = PASS if breaks["graph_breaks"] == 0 and recompiles == 0 else FAIL
    detail = "graph breaks {}; compiled graphs after batch {}: {}; recompiles after the first dynamic compile: {}".format(
        breaks["graph_breaks"], ",".join(map(str, batches)), ",".join(map(str, counts)), recompiles)
    return dict(entry, status=status, detail=detail, graph_breaks=breaks["graph_breaks"], compiles=counts,
                recompiles=recompiles)
