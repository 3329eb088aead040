"""The torch.compile audit: graph breaks and recompilations over batch sizes, each recompilation
with the guard that caused it, where that guard came from, and whether user code could avoid it."""
import os
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..backends import BACKENDS, Backend
from .report import Row, _one_line
from .rule import ERROR, FAIL, GRAPH_BREAKS, PASS, RECOMPILES, REQUIRABLE, UNAVAILABLE


AUDIT_BATCHES = (1, 7, 64, 4096)

# A recompilation's kind: "user" (user-avoidable: a guard that dynamo added while running the
# user's own Python on a size or value, or any cause not traced to torch) or "compiler"
# (compiler-internal: a guard that inductor, a decomposition or a fake kernel added inside torch).
USER, COMPILER = "user", "compiler"


def audited(chosen: Sequence[Backend]) -> Optional[Backend]:
    """The backend whose compilations the audit counts, when any chosen backend is ``audited``
    (both torch.compile backends compile through dynamo: ``compile`` for a forward that records
    autograd and for reduction="none" losses); None when none is."""
    for b in chosen:
        if b.audited:
            return b
    return None


def audit_rows(audits: Sequence[Dict[str, Any]], require: Sequence[str] = (), required_all: bool = False) -> List[Row]:
    """A row for each audit that did not pass. A ``graph-breaks`` or ``recompiles`` audit fails the
    report only where its backend is in ``require`` (or ``required_all``: the catalogue, written to
    compile whole and once); every other non-pass status fails it."""
    return [Row(a["case"] + " (audit)", a["backend"], "audit", a["status"], detail=a["detail"],
                required=required_all or a["backend"] in require or a["status"] not in REQUIRABLE)
            for a in audits if a["status"] != PASS]


def compile_audit(module: nn.Module, make_args: Callable[[int], Tuple[Tensor, ...]], label: str = "",
                  batches: Sequence[int] = AUDIT_BATCHES, backend: Optional[str] = None,
                  strict: bool = False) -> Dict[str, Any]:
    """Graph breaks (must be 0) and recompilations of a fresh ``torch.compile`` over ``batches``
    (none after the first compile with a dynamic batch: the second batch size's), forward and
    backward through the first argument (and any parameters). ``backend``: an audited backend's
    name (default: the first registered one).

    Graph breaks get the status ``graph-breaks``, each with its reason and user line (see
    :mod:`.breaks`). Each recompilation after the first dynamic compile is explained in ``recompile_causes``: the
    batch that caused it, the failed guard, the guard's source (user line, and the torch frame that
    added it) and its ``kind`` (:data:`USER` or :data:`COMPILER`). User-avoidable recompilations
    give the status ``recompiles`` (torch.compile's defaults run the code, recompiling, as graph
    breaks still run: a fact about the user's code, failing where required); compiler-internal
    ones pass. With ``strict`` every recompilation, of either kind, fails the audit."""
    from .breaks import breaks_detail, graph_breaks_at

    b = BACKENDS.get(backend) if backend is not None else audited(list(BACKENDS.values()))
    if b is None:
        raise ValueError("backend must name a registered backend that compiles through dynamo (audited ones: {}), "
                         "got {!r}".format(", ".join(n for n, x in BACKENDS.items() if x.audited), backend))
    entry: Dict[str, Any] = {"case": label or type(module).__name__, "backend": b.name, "batches": list(batches),
                             "strict": bool(strict)}
    ok, reason = b.available()
    if not ok:
        return dict(entry, status=UNAVAILABLE, detail=reason)
    causes: List[Dict[str, Any]] = []
    kinds = {USER: 0, COMPILER: 0}
    try:
        first = make_args(batches[0])
        breaks = graph_breaks_at(module, first)
        if breaks["graph_breaks"]:  # torch.compile's defaults run it; fullgraph=True would not
            return dict(entry, status=GRAPH_BREAKS, graph_breaks=breaks["graph_breaks"], breaks=breaks["breaks"],
                        detail="user-avoidable " + breaks_detail(breaks))
        fn = b.audit_callable(module, first)
        counts = []
        for i, n in enumerate(batches):
            args = list(make_args(n))
            if args[0].is_floating_point():
                args[0] = args[0].detach().requires_grad_(True)
            seen = _guard_failures_seen()
            value = fn(*args)
            grads_of = [a for a in args if a.requires_grad] + [p for p in module.parameters() if p.requires_grad]
            if grads_of:
                torch.autograd.grad(value.sum(), grads_of, allow_unused=True)
            counts.append(b.compile_count(fn))
            new = counts[-1] - (counts[-2] if len(counts) > 1 else 0)
            if i >= 2 and new > 0:  # after the first dynamic compile
                step = _explain(n, new, _new_guard_failures(seen))
                causes += step
                # a recompilation is user-avoidable when any guard that failed for it is
                kinds[USER if any(c["kind"] == USER for c in step) else COMPILER] += new
    except Exception as exc:
        return dict(entry, status=ERROR, detail=_one_line(exc))
    recompiles = counts[-1] - counts[min(1, len(counts) - 1)]
    user, compiler = kinds[USER], kinds[COMPILER]
    if strict:
        status = FAIL if user + compiler else PASS
    else:
        status = RECOMPILES if user else PASS
    detail = "graph breaks {}; compiled graphs after batch {}: {}; recompiles after the first dynamic compile: {}".format(
        breaks["graph_breaks"], ",".join(map(str, batches)), ",".join(map(str, counts)), recompiles)
    if causes:  # the causes first (each names its guard and the user's line), so a short form keeps them
        detail = "{} ({} user-avoidable, {} compiler-internal{}); {}".format(
            " | ".join(_describe(c) for c in causes), user, compiler,
            ", failing under strict" if strict and user + compiler else "", detail)
    return dict(entry, status=status, detail=detail, graph_breaks=breaks["graph_breaks"], compiles=counts,
                recompiles=recompiles, user_recompiles=user, compiler_recompiles=compiler, recompile_causes=causes)


# -- why a graph recompiled ----------------------------------------------------------------------
# dynamo records, per code object, one line per cache entry whose guards failed before a
# recompilation ("<frame>/<entry>: <guard>  # <user line>  # <file:line in fn> (<torch frame>)").
# Each prepared callable has a code object of its own (backends.compile.own_code), so the lines
# that appear during one call are that call's.


def _guard_failures() -> Dict[Any, List[str]]:
    try:
        from torch._dynamo.utils import guard_failures
    except ImportError:  # a torch without it: every recompilation is unexplained (user, failing)
        return {}
    return guard_failures


def _guard_failures_seen() -> Dict[Any, int]:
    return {code: len(lines) for code, lines in _guard_failures().items()}


def _new_guard_failures(seen: Dict[Any, int]) -> List[str]:
    return [str(line) for code, lines in list(_guard_failures().items()) for line in lines[seen.get(code, 0):]]


_ENTRY = re.compile(r"^\s*(\d+)/(\d+): (.*)$", re.S)
_STATIC_MISMATCH = re.compile(r"size mismatch at index \d+\. expected \d+, actual \d+")
# "<code>  # <file>:<line> in <fn> (<torch frame that added the guard>)"; a range guard's upper
# bound may carry the torch frame alone: "... and (<torch frame>)"
_USER_LOC = re.compile(r"#\s*(?P<user>[^\s()#]+:\d+ in [\w<>.]+)")
_FRAME = re.compile(r"\((?P<frame>[^()\s]+\.py:\d+ in [\w<>.]+)\)")


def _explain(batch: int, new: int, lines: List[str]) -> List[Dict[str, Any]]:
    """One cause per failed guard of a cache entry compiled with a dynamic batch (the first,
    static entry fails on every new batch size by design, so its size mismatch is no cause)."""
    causes = []
    for line in lines:
        m = _ENTRY.match(line)
        entry, guard = (int(m.group(2)), m.group(3)) if m else (None, line)
        if entry == 0 and _STATIC_MISMATCH.search(guard):
            continue
        causes.append(dict(_classify(guard), batch=batch))
    while len(causes) < new:  # a compile with no recorded reason: not traced to torch, so it counts
        causes.append({"batch": batch, "guard": "(no guard failure recorded)", "source": None, "frame": None,
                       "kind": USER, "why": "no recorded cause, so not shown to be the compiler's"})
    return causes


def _classify(guard: str) -> Dict[str, Any]:
    """The guard's expression, the user line it was first used at, the torch frame that added it,
    and its kind. Compiler-internal: added outside dynamo's tracing of Python (inductor, a
    decomposition, a fake or meta kernel), or by dynamo while running torch's own Python.
    User-avoidable: added while dynamo ran the user's Python on the value (an ``if`` on a size, an
    ``int()``), or any guard without a torch frame (a Python value, a type, an attribute)."""
    expr = guard.split("  #", 1)[0].strip()
    # a range guard "lo <= s <= hi" carries its lower bound's source, then " and ", then its upper
    # bound's; the lower bound of a dynamic size is the framework's 0/1 specialization (2 <=), so
    # the bound that fails for a larger batch is the last one; its user line, when it has none of
    # its own, is the first use of the value
    frames = list(_FRAME.finditer(guard))
    if not frames:
        return {"guard": expr, "source": None, "frame": None, "kind": USER,
                "why": "a guard on a Python value or object, which user code sets"}
    last = frames[-1]
    frame = last.group("frame")
    users = [u for u in _USER_LOC.finditer(guard) if u.end() <= last.start()]
    own = [u for u in users if not guard[u.end():last.start()].strip()]
    loc = own[-1] if own else (users[0] if users else None)
    user = loc.group("user") if loc is not None else ""
    code = guard[:loc.start()].rstrip().rsplit("  # ", 1)[-1].rsplit(") and ", 1)[-1].strip() if loc else ""
    frame_file = frame.split(":", 1)[0]
    if not frame_file.startswith("_dynamo" + os.sep):
        kind, why = COMPILER, "added by torch's {} (no user code can avoid it)".format(frame_file)
    elif not user or _in_torch(user.split(":", 1)[0]):
        kind, why = COMPILER, "added while tracing torch's own {}".format(user.split(":", 1)[0])
    else:
        kind, why = USER, "user code branches on or converts the value"
    return {"guard": expr, "source": ("{}  # {}".format(code, user) if code else user) or None, "frame": frame, "kind": kind,
            "why": why}


def _in_torch(short: str) -> bool:
    """Whether a file as torch's tracebacks shorten it (relative to torch's folder) is torch's."""
    return os.path.isfile(os.path.join(os.path.dirname(torch.__file__), short))


def _describe(cause: Dict[str, Any]) -> str:
    where = " at {}".format(cause["source"]) if cause["source"] else ""
    frame = " from {}".format(cause["frame"]) if cause["frame"] else ""
    return "batch {}: {} `{}`{}{}".format(cause["batch"], "user-avoidable" if cause["kind"] == USER else
                                          "compiler-internal", cause["guard"], where, frame)
