"""Graph breaks under torch.compile's default settings, each with its reason and the user's line.

``torch.compile`` with its defaults runs code it cannot put in one graph by breaking the graph
there (a data-dependent check, an unsupported call); ``fullgraph=True`` refuses such code. The
audit reports every break (``fullgraph`` is then the named check that fails) instead of failing
the compile backend itself:

    found = graph_breaks_at(loss, (pred, target))
    found["graph_breaks"], found["breaks"]   # [{"reason": ..., "source": "path:line: code"}]
"""
import linecache
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

from ..diagnose import _not_user_dirs

__all__ = ["graph_breaks_at", "breaks_detail"]


def _user_line(frames: Sequence[Any]) -> Optional[str]:
    """``path:line: code`` of the innermost frame outside torch and compile_losses, or None."""
    skip = _not_user_dirs()
    for frame in reversed(list(frames or ())):
        path = getattr(frame, "filename", "")
        if not path or path.startswith("<") or path.startswith(skip):
            continue
        line = getattr(frame, "lineno", None)
        code = (getattr(frame, "line", None) or linecache.getline(path, line or 0)).strip()
        return "{}:{}: {}".format(path, line, code)
    return None


def graph_breaks_at(module: nn.Module, inputs: Sequence[Tensor]) -> Dict[str, Any]:
    """Graph breaks of ``module(*inputs)`` under dynamo (``torch._dynamo.explain``): their count,
    the graphs, and per break its reason (first line) and the user's source line."""
    from ..backends.compile import own_code

    explanation = torch._dynamo.explain(own_code(module))(*inputs)
    breaks: List[Dict[str, Optional[str]]] = []
    for br in explanation.break_reasons:
        reason = str(getattr(br, "reason", br)).strip().splitlines()
        breaks.append({"reason": reason[0][:300] if reason else "", "source": _user_line(getattr(br, "user_stack", ()))})
    return {"graph_breaks": int(explanation.graph_break_count), "graphs": int(explanation.graph_count),
            "breaks": breaks}


def breaks_detail(found: Dict[str, Any], limit: int = 3) -> str:
    """One line: ``fullgraph: N graph break(s) at path:line: code (reason) | ...``."""
    parts = ["at {} ({})".format(b["source"] or "an unknown line", b["reason"]) for b in found["breaks"][:limit]]
    more = len(found["breaks"]) - limit
    return "fullgraph: {} graph break(s) {}{}".format(found["graph_breaks"], " | ".join(parts),
                                                     " | and {} more".format(more) if more > 0 else "")
