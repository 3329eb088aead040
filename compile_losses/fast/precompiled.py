"""Guard-free graphs built ahead of time: an AOTInductor package per graph in the build cache,
loaded by a later process through torch's C++ loader, without importing inductor's compiler.

A fresh process that loads inductor's own cached build of a graph still imports the compiler
(``torch._inductor.compile_fx`` and what it pulls in: about 1 s on this machine) before it can run
it; that import is most of a warm ``compile`` start. A package built by AOTInductor from the same
traced graph is a shared library plus its metadata, and ``torch._C._aoti.AOTIModelPackageLoader``
runs it with nothing but torch itself.

Building one costs 10-20 s (the C++ wrapper is compiled with the full AOTInductor runtime), against
about 1.5 s for inductor's in-process build, so it is done only where asked:
``COMPILE_LOSSES_PRECOMPILE=1`` makes a process that builds a graph build its package too (the job
that fills a CI cache); every process looks packages up. A package is kept only if it gives
bitwise the outputs of the in-process build on the inputs it was traced with (else the reason is
in :data:`REFUSED`), and it is keyed by :func:`compile_losses.build_cache.graph_key` (the graph's
code and constants, the inputs' layout, inductor's config, the thread count, the versions), so a
changed op, constant or setting misses.
"""
import os
import tempfile
import threading
from typing import Any, Callable, List, Optional, Sequence

import torch
from torch import Tensor

from .. import build_cache

__all__ = ["ENV", "KIND", "REFUSED", "requested", "load", "build"]

ENV = "COMPILE_LOSSES_PRECOMPILE"
KIND = "precompiled"

# why a requested package was not stored (normally empty; read by tests and the export's notes)
REFUSED: List[str] = []
_LOCK = threading.Lock()


def requested() -> bool:
    return os.environ.get(ENV, "").strip().lower() in ("1", "true", "yes", "on")


def output_form(gm: torch.fx.GraphModule) -> Optional[type]:
    """How ``gm`` returns its outputs: ``Tensor`` (one), ``tuple`` or ``list`` (of tensors); None
    for anything else (nested, or with non-tensor leaves), which is not precompiled."""
    out = next(n for n in reversed(gm.graph.nodes) if n.op == "output").args[0]
    if isinstance(out, torch.fx.Node):
        return Tensor
    if isinstance(out, (tuple, list)) and all(isinstance(o, torch.fx.Node) for o in out):
        return type(out)
    return None


class PrecompiledGraph:
    """A loaded package as the callable inductor's build of the same graph is: flat tensors in,
    outputs in the graph's own form (one tensor, a tuple or a list)."""

    def __init__(self, path: str, form: type) -> None:
        self.path = path
        self.form = form
        self.loader = _loader(path)

    def __call__(self, *args: Tensor) -> Any:
        out = self.loader.run(list(args))
        return out[0] if self.form is Tensor else self.form(out)

    def __repr__(self) -> str:
        return "PrecompiledGraph({!r})".format(self.path)


def _loader(path: str) -> Any:
    aoti = getattr(torch._C, "_aoti", None)
    make = getattr(aoti, "AOTIModelPackageLoader", None)
    if make is None:
        raise RuntimeError("this torch has no torch._C._aoti.AOTIModelPackageLoader")
    # (path, model name, run single-threaded, runners, device index), as torch's load_package passes them
    return make(path, "model", False, 1, -1)


def load(key: str, form: Optional[type]) -> Optional[PrecompiledGraph]:
    """The package stored under ``key``, loaded, returning ``form`` (:func:`output_form` of its
    graph); None where there is none, it does not load or the form is not one precompiled."""
    entry = build_cache.entry_path(KIND, key, ".pt2") if form is not None else None
    if entry is None or not entry.is_file():
        if entry is not None:
            build_cache.count(KIND, "miss")
        return None
    try:
        graph = PrecompiledGraph(str(entry), form)
    except Exception:  # unreadable, or built by a torch whose runtime this one cannot load
        build_cache.count(KIND, "miss")
        return None
    build_cache.count(KIND, "hit")
    return graph


def build(key: str, gm: torch.fx.GraphModule, args: Sequence[Tensor], built: Callable[..., Any],
          form: Optional[type]) -> bool:
    """Build ``gm``'s package for inputs like ``args`` and store it under ``key`` if its outputs on
    ``args``, in ``form`` (:func:`output_form` of ``gm`` as traced: inductor's build rewrites the
    graph's output into a list), equal ``built``'s (the in-process build) bitwise. Returns whether
    it was stored."""
    if form is None:
        return _refuse("the graph returns a nested or non-tensor structure")
    with tempfile.TemporaryDirectory(prefix="cl-precompile-") as tmp:
        path = os.path.join(tmp, "graph.pt2")
        try:
            program = torch.export.export(gm, tuple(args), strict=False)
            torch._inductor.aoti_compile_and_package(program, package_path=path)
            got = PrecompiledGraph(path, form)(*args)
        except Exception as exc:
            return _refuse("{}: {}".format(type(exc).__name__, (str(exc).splitlines() or [""])[0]))
        want = built(*args)
        if isinstance(want, Tensor) != (form is Tensor):
            return _refuse("inductor's build returns a {}, the graph {}".format(
                type(want).__name__, "one tensor" if form is Tensor else "a sequence"))
        got, want = ((got,), (want,)) if form is Tensor else (got, want)
        if len(got) != len(want):
            return _refuse("{} outputs from the package, {} from inductor's build".format(len(got), len(want)))
        for i, (g, w) in enumerate(zip(got, want)):
            try:
                torch.testing.assert_close(g, w, rtol=0, atol=0, equal_nan=True)
            except AssertionError as exc:
                return _refuse("output {} differs from inductor's build: {}".format(i, str(exc).splitlines()[0]))
        return build_cache.store_file(KIND, key, path)


def _refuse(why: str) -> bool:
    with _LOCK:
        REFUSED.append(why)
    return False
