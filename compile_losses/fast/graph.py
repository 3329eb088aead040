"""Guard-free compiled graphs: a function of tensors traced to a flat aten graph by ``make_fx``
and compiled by inductor once per input signature (shapes, strides, dtypes, devices).

A call is a dictionary lookup and the compiled kernel: no dynamo guards, no autograd wrapper.
That is what wins where the work is a few microseconds (SeedNet at batch 10: eager is ~30 small op
dispatches; ``torch.compile`` adds guard checks and an autograd runtime wrapper per call and ends
up slower than eager). The price: shapes are static (a new batch size compiles again, kept in a
small per-object cache), and nothing records autograd (the function must compute its own
gradients, as the train step does, or run where no gradient is wanted).

The graph is compiled under a fake-tensor mode with a shape environment, which is what inductor's
on-disk FX graph cache needs to key the graph (without one it bypasses the cache: "No shape env"),
so a second process with the same cache directory loads the compiled kernels instead of building
them again. A graph built ahead of time (:mod:`.precompiled`, ``COMPILE_LOSSES_PRECOMPILE=1`` in an
earlier process) is loaded from the build cache instead, without importing inductor's compiler.
"""
import collections
import threading
from typing import Any, Callable, List, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["CompiledForward", "GraphCache", "Lazy", "compile_graph"]


def compile_graph(fn: Callable[..., Any], args: Sequence[Tensor]) -> Callable[..., Any]:
    """``fn`` traced on ``args`` and compiled by inductor; call it with tensors shaped like ``args``."""
    from torch._guards import TracingContext, tracing
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    from .. import build_cache
    from . import precompiled

    # make_fx's real-mode tracing records each value's metadata under the tracing context's fake
    # mode, and builds a new FakeTensorMode per value where there is none (a third of a warm start)
    with tracing(TracingContext(FakeTensorMode())):
        gm = make_fx(fn)(*args)
    key = build_cache.graph_key(gm, args) if build_cache.enabled() else ""
    form = precompiled.output_form(gm)  # before inductor's build rewrites the graph's output
    ready = precompiled.load(key, form) if key else None
    if ready is not None:  # built ahead of time by an earlier process: no inductor import, no build
        return ready
    build_cache.prime_cpu_isa()  # inductor's vector-ISA probe answered from the cache
    try:
        fake_mode = FakeTensorMode(shape_env=ShapeEnv())
        fake_args = [fake_mode.from_tensor(a) for a in args]
        with tracing(TracingContext(fake_mode)):
            compiled = torch._inductor.compile(gm, fake_args)
    except Exception as exc:  # these are private APIs: if a torch moves them, compile without the disk cache
        CACHE_BYPASSES.append("{}: {}".format(type(exc).__name__, (str(exc).splitlines() or [""])[0]))
        compiled = torch._inductor.compile(gm, list(args))
    if key and precompiled.requested():
        precompiled.build(key, gm, args, compiled, form)
    return compiled


# Why a graph was compiled without inductor's on-disk cache (normally empty; read by tests).
CACHE_BYPASSES: List[str] = []


def signature(args: Sequence[Tensor]) -> Tuple[Any, ...]:
    return tuple((tuple(a.shape), a.stride(), a.dtype, a.device) for a in args)


class GraphCache:
    """``fn``'s compiled graphs by input signature, at most ``size`` of them (least recently used
    dropped): a parity run over batches 1, 7, 64 and 2^20 holds four."""

    def __init__(self, fn: Callable[..., Any], size: int = 8) -> None:
        self.fn = fn
        self.size = size
        self.compiles = 0
        self._graphs: "collections.OrderedDict[Tuple[Any, ...], Callable[..., Any]]" = collections.OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, *args: Tensor) -> Any:
        return self.graph_for(args)(*args)

    def graph_for(self, args: Sequence[Tensor]) -> Callable[..., Any]:
        key = signature(args)
        graph = self._graphs.get(key)
        if graph is not None:
            if len(self._graphs) > 1:
                with self._lock:
                    if key in self._graphs:
                        self._graphs.move_to_end(key)
        else:
            with self._lock:
                graph = self._graphs.get(key)
                if graph is None:
                    graph = compile_graph(self.fn, args)
                    self.compiles += 1
                    self._graphs[key] = graph
                    while len(self._graphs) > self.size:
                        self._graphs.popitem(last=False)
        return graph


class CompiledForward:
    """``module(*inputs)`` as a guard-free compiled graph wherever no gradient is recorded.

    The graph reads the module's parameters and buffers at call time (``torch.func.functional_call``),
    one graph per input signature and train/eval mode. Where autograd must record (grad mode on and a
    parameter or an input requires grad), the call goes to ``differentiable(*inputs)`` instead
    (``torch.compile`` of the module, in the ``compile`` backend), so gradients always flow.

    Example::

        >>> import torch
        >>> from compile_losses.nets import SeedNet
        >>> net = SeedNet().eval()
        >>> forward = CompiledForward(net, differentiable=net)
        >>> with torch.no_grad():
        ...     torch.testing.assert_close(forward(torch.ones(3, 32)), net(torch.ones(3, 32)))
    """

    def __init__(self, module: torch.nn.Module, differentiable: Callable[..., Any]) -> None:
        self.module = module
        self.differentiable = differentiable
        self._modules = list(module.modules())
        self._bind()

    def _bind(self) -> None:
        """Record (owner, kind, name, tensor) for every parameter and buffer, read per call without
        walking the module tree (that walk alone costs a third of a batch-10 SeedNet forward)."""
        self.names: List[str] = []
        self._slots: List[Tuple[torch.nn.Module, str, str, Tensor]] = []
        for kind, named in (("_parameters", self.module.named_parameters()), ("_buffers", self.module.named_buffers())):
            for full_name, t in named:
                prefix, _, name = full_name.rpartition(".")
                self.names.append(full_name)
                self._slots.append((self.module.get_submodule(prefix), kind, name, t))
        self._graphs: dict = {}  # train/eval flags of every submodule -> GraphCache

    def _flat(self, *args: Tensor) -> Any:
        k = len(self.names)
        return torch.func.functional_call(self.module, dict(zip(self.names, args[:k])), tuple(args[k:]))

    def _state(self) -> List[Tensor]:
        state = []
        for owner, kind, name, t in self._slots:  # one pass: this is the per-call hot path
            if getattr(owner, kind).get(name) is not t:
                self._bind()  # a tensor replaced since (module.weight = nn.Parameter(...)): read afresh
                return [slot[3] for slot in self._slots]
            state.append(t)
        return state

    def __call__(self, *inputs: Tensor) -> Any:
        state = self._state()
        if torch.is_grad_enabled() and (any(t.requires_grad for t in state)
                                        or any(isinstance(t, Tensor) and t.requires_grad for t in inputs)):
            return self.differentiable(*inputs)
        modes = tuple(m.training for m in self._modules)
        graphs = self._graphs.get(modes)
        if graphs is None:
            graphs = self._graphs.setdefault(modes, GraphCache(self._flat))
        return graphs(*state, *inputs)


class Lazy:
    """A callable built by ``factory`` at its first call (a compile nobody needs is never paid for)."""

    def __init__(self, factory: Callable[[], Callable[..., Any]]) -> None:
        self._factory: Any = factory
        self._fn: Any = None
        self._lock = threading.Lock()

    def __call__(self, *args: Any) -> Any:
        if self._fn is None:
            with self._lock:
                if self._fn is None:
                    self._fn = self._factory()
                    self._factory = None
        return self._fn(*args)
