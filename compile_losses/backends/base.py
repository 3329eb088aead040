"""The one interface every backend adapter implements, and what the adapters share.

A backend turns a module into a callable that takes and returns torch tensors, so that no caller
(parity, benchmarks, export) ever special-cases one. Autograd backends (eager, compile, script,
trace) get their gradients generically from ``torch.autograd`` (:mod:`compile_losses.programs`);
exporting backends get theirs from the training graphs of :mod:`compile_losses.training`.

Each adapter also declares facts that the layers above read instead of its name: ``device``,
``supports_autograd``, ``exported``, ``cost`` (seconds one preparation takes on 2 cores, roughly:
0 for eager, ~1 for an export, ~10 for an inductor build, 30+ for AOTInductor), ``reference`` (the eager
reference of its device), ``audited`` (parity's torch.compile audit runs when it is chosen),
``not_benchmarked`` (the reason the benchmarks skip it), ``quick_bench`` and ``times_build`` (the
quick benchmark mode runs it / times its preparation), ``markers`` (pytest markers of tests that
run it) and ``checks_artifacts`` (bundle artifact kinds export re-runs through it).

Preparation is cached per process, keyed on the module's structure and weights and on the inputs'
dtypes and non-batch shapes (every backend takes a dynamic batch dimension), so one export or
compile serves every batch size of a parity run.
"""
import collections
import contextlib
import hashlib
import weakref
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..dims import carry_dims, dims_of, distinct_sizes, resize_dims, symbolic_shape
from ..nets import NetWithLoss
from ..programs import autograd_loss_and_grad, autograd_train_step
from ..signature import TrainStepResult

__all__ = ["Backend", "Unsupported", "TrainStepResult", "structure_key", "export_example", "shares_batch", "input_dims",
           "clear_cache",
           "register_cache"]


class Unsupported(Exception):
    """A backend cannot do this; the message is the reason. Reported as a row, never a pass."""


class Backend:
    """One way to run a module. Subclasses implement :meth:`_compile` (and :meth:`_available`).

    ``prepare*`` raise :class:`Unsupported` (with the reason) when the backend cannot run here or
    cannot do what is asked; any other exception is a real failure of the backend.
    """

    name: str = ""
    supports_autograd: bool = False
    device: str = "cpu"
    # Worth caching: building is slow (compile, export). Eager and TorchScript rebuild every time.
    cacheable: bool = False
    # -- declared facts (see the module docstring) --
    exported: bool = False
    cost: float = 0.0
    reference: bool = False
    audited: bool = False
    not_benchmarked: str = ""
    quick_bench: bool = True
    times_build: bool = False
    markers: Tuple[str, ...] = ()
    checks_artifacts: Tuple[str, ...] = ()

    # Settings that change a backend's numerics, taken per parity run (not new backend names):
    # name -> default. A backend reads its own; see settings_scope.
    setting_defaults: Dict[str, Any] = {}
    _settings: Dict[str, Any] = {}

    _FACTS = ("exported", "cost", "reference", "audited", "not_benchmarked", "quick_bench", "times_build",
              "markers", "checks_artifacts")

    def __init__(self, name: str, **facts: Any) -> None:
        self.name = name
        unknown = sorted(set(facts) - set(self._FACTS))
        if unknown:
            raise TypeError("unknown backend facts {} (known: {})".format(unknown, list(self._FACTS)))
        for key, value in facts.items():
            setattr(self, key, tuple(value) if key in ("markers", "checks_artifacts") else value)

    def __repr__(self) -> str:
        return "<{} backend {!r}>".format(type(self).__name__, self.name)

    def facts(self) -> Dict[str, Any]:
        """The declared facts, as ``list --json`` and the docs show them."""
        return {"device": self.device, "autograd": self.supports_autograd, "exported": self.exported,
                "cost": self.cost, "reference": self.reference, "audited": self.audited,
                "benchmarked": not self.not_benchmarked, "markers": list(self.markers)}

    # -- settings (parity axes) --------------------------------------------------------------
    def applied_settings(self, settings: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """The settings of ``settings`` this backend takes, with its defaults for the rest."""
        settings = settings or {}
        return {k: settings.get(k, d) if settings.get(k) is not None else d for k, d in self.setting_defaults.items()}

    def check_settings(self, applied: Dict[str, Any]) -> None:
        """Refuse a bad value of one of this backend's settings (raise ValueError naming it)."""

    @contextlib.contextmanager
    def settings_scope(self, settings: Optional[Dict[str, Any]] = None) -> Iterator[Dict[str, Any]]:
        """Prepare and run under ``settings`` while the block runs (yields the applied ones);
        preparations are cached per applied settings."""
        applied = self.applied_settings(settings)
        self.check_settings(applied)
        previous = self._settings
        self._settings = applied
        try:
            with self._settings_context(applied):
                yield applied
        finally:
            self._settings = previous

    def _settings_context(self, applied: Dict[str, Any]) -> Any:
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def parity_mode(self) -> Iterator[None]:
        """Entered while parity verifies this backend: a backend that may choose eager over its own
        code (the tuned ``compile``) prepares its own code then, so that it is what gets verified."""
        yield

    def audit_callable(self, module: nn.Module, example_inputs: Tuple[Tensor, ...]) -> Callable[..., Any]:
        """A fresh compiled callable whose compilations :meth:`compile_count` counts (``audited``
        backends only)."""
        raise Unsupported("{} is not audited".format(self.name))

    # Localization (compile_losses.localize): ``piecewise`` backends run an exported graph whose
    # every intermediate value can be made an output (:meth:`piecewise_graph`).
    piecewise: bool = False

    def piecewise_graph(self, kind: str, net: Optional[nn.Module], loss: nn.Module,
                        example_inputs: Tuple[Tensor, ...], optimize: Optional[bool] = None) -> Dict[str, Any]:
        """The graph this backend runs for ``kind`` (``"forward"``: ``module(*example_inputs)`` with
        ``module`` ``loss`` or ``NetWithLoss(net, loss)``; ``"loss_and_grad"``; ``"train_step"``)
        as ``{"program": ONNXProgram, "traced": TracedGraph or None, "provider": str}``;
        ``optimize`` overrides the exporter's own optimizer setting."""
        raise Unsupported("{}: no exported graph to run value by value".format(self.name))

    # Localization at module level: ``module_scoped`` backends export a graph whose nodes are
    # named by module scope only (``/net/fc1/Gemm``), no FX metadata (:meth:`module_graph`).
    module_scoped: bool = False

    def module_graph(self, net: Optional[nn.Module], loss: nn.Module,
                     example_inputs: Tuple[Tensor, ...]) -> Dict[str, Any]:
        """The forward graph this backend runs (``module(*example_inputs)``, ``module`` ``loss`` or
        ``NetWithLoss(net, loss)``) as ``{"model": ModelProto, "module": nn.Module, "provider": str}``."""
        raise Unsupported("{}: no module-scoped graph to run module by module".format(self.name))

    # Localization by stage: the compiler pipeline's stages in order (the last is this backend's
    # own), each a callable from :meth:`stage_callable`; () where the backend has none.
    # TorchScript's one stage is the backend's own compilation (script, trace), static shapes.
    stages: Tuple[str, ...] = ()
    stage_shapes: Tuple[bool, ...] = (False, True)  # the dynamic= modes a bisection tries

    def stage_callable(self, stage: str, module: nn.Module, example_inputs: Tuple[Tensor, ...],
                       dynamic: bool) -> Callable[..., Any]:
        """``module`` compiled up to ``stage`` (one of :attr:`stages`), static or dynamic shapes;
        by default the backend's own compilation, its only stage."""
        if not self.stages:
            raise Unsupported("{}: no compiler stages to bisect".format(self.name))
        if stage not in self.stages:
            raise ValueError("stage must be one of {}, got {!r}".format(list(self.stages), stage))
        self._require()
        return self._compile(module, example_inputs)[0]

    def compile_count(self, fn: Callable[..., Any]) -> int:
        """How many graphs a callable prepared here has compiled so far (-1: not counted)."""
        counter = getattr(fn, "compile_counter", None)
        return -1 if counter is None else int(counter.frame_count)

    # -- availability ----------------------------------------------------------------------
    def available(self) -> Tuple[bool, str]:
        """``(True, "")`` or ``(False, reason)`` when it cannot run here."""
        try:
            return self._available()
        except Exception as exc:  # an import that breaks in a future torch: unavailable, with why
            return False, "{}: {}".format(type(exc).__name__, exc)

    def _available(self) -> Tuple[bool, str]:
        return True, ""

    def _require(self) -> None:
        ok, reason = self.available()
        if not ok:
            raise Unsupported("unavailable: " + reason)

    # -- the interface -----------------------------------------------------------------------
    def prepare(self, module: nn.Module, example_inputs: Tuple[Tensor, ...]) -> Callable[..., Tensor]:
        """``module`` as a callable on ``example_inputs``-like tensors (any batch size)."""
        self._require()
        example_inputs = _as_tuple(example_inputs)
        fn, _ = self._cached("forward", module, example_inputs, lambda: self._build_forward(module, example_inputs))
        return fn

    def prepare_loss_and_grad(self, loss: nn.Module, example_inputs: Tuple[Tensor, ...]) -> Callable[..., Tuple[Tensor, Tensor]]:
        """``(pred, *targets) -> (loss value, d loss / d pred)``."""
        self._require()
        example_inputs = _as_tuple(example_inputs)
        if not self.supports_autograd:
            return self._exported_loss_and_grad(loss, example_inputs)
        return self._cached("loss_and_grad", loss, example_inputs,
                            lambda: (self._autograd_loss_and_grad(loss, example_inputs), None))[0]

    def prepare_train_step(self, net: nn.Module, loss: nn.Module, example_inputs: Tuple[Tensor, ...],
                           lr: float) -> Callable[..., TrainStepResult]:
        """``(x, *targets) -> TrainStepResult`` from the net's current parameters; the net (and
        its ``.grad``) is never changed."""
        self._require()
        example_inputs = _as_tuple(example_inputs)
        if not self.supports_autograd:
            return self._exported_train_step(net, loss, example_inputs, lr)
        wrapped = NetWithLoss(net, loss, n_targets=len(example_inputs) - 1)
        return self._cached(("train_step", float(lr)), wrapped, example_inputs,
                            lambda: (self._autograd_train_step(wrapped, example_inputs, lr), None),
                            owners=(net, loss))[0]

    def prepare_optimizer_step(self, net: nn.Module, loss: nn.Module, example_inputs: Tuple[Tensor, ...],
                               opt: Any) -> Callable[..., Any]:
        """``(params, frozen, x, *targets, state=, hyper=) -> OptimStepResult``: ``loss(net(x),
        *targets)``'s gradients w.r.t. ``params`` (the trained parameters by name; ``frozen`` the
        others) and ``opt``'s update (a :class:`compile_losses.optim.Optimizer`); pure, nothing is
        changed in place. Raises :class:`Unsupported` where this backend has no such step."""
        self._require()
        example_inputs = _as_tuple(example_inputs)
        return self._optimizer_step(net, loss, example_inputs, opt)

    def _optimizer_step(self, net: nn.Module, loss: nn.Module, example_inputs: Tuple[Tensor, ...],
                        opt: Any) -> Callable[..., Any]:
        # autograd backends lower the functional program itself (_compile over it); exporting
        # ones override this with their training graph
        from ..programs import OptimStepModule, dict_step, optim_flat_example

        if not self.supports_autograd:
            raise Unsupported("{}: no optimizer train step".format(self.name))
        sig, flat = optim_flat_example(net, loss, example_inputs, opt)
        module = OptimStepModule(net, loss, opt, sig)

        def build() -> Tuple[Callable[..., Any], None]:
            fn, _ = self._compile(module, flat)
            self._warm_up(fn, flat)
            return fn, None

        fn = self._cached(optimizer_key(opt), module, example_inputs, build, owners=(net, loss))[0]
        return dict_step(sig, fn)

    def _autograd_optimizer_step(self, net: nn.Module, loss: nn.Module, example_inputs: Tuple[Tensor, ...],
                                 opt: Any) -> Callable[..., Any]:
        """For backends that cannot lower ``torch.func`` (TorchScript): this backend's
        ``loss(net(x), *targets)`` on a private copy of the net whose parameters are set from
        ``params``/``frozen`` each call, gradients by autograd, the update by the functional optimizer."""
        import copy

        from ..programs import optim_signature, seed_grad
        from ..signature import OptimStepResult

        sig = optim_signature(net, loss, len(example_inputs) - 1, opt)
        private = copy.deepcopy(net)
        wrapped = NetWithLoss(private, copy.deepcopy(loss), n_targets=len(example_inputs) - 1)
        fn, used = self._compile(wrapped, example_inputs)
        named = dict(used.net.named_parameters())

        def run(params: Dict[str, Tensor], fixed: Dict[str, Tensor], x: Tensor, *targets: Tensor,
                state: Dict[str, Dict[str, Tensor]], hyper: Dict[str, Tensor]) -> Any:
            sig.flat_inputs(params, fixed, x, targets, state, hyper)  # checks names and arity
            with torch.no_grad():
                for n, v in list(params.items()) + list(fixed.items()):
                    named[n].copy_(v)
            value = fn(x, *targets)
            grads = torch.autograd.grad(value, [named[n] for n in sig.params], grad_outputs=seed_grad(value),
                                        allow_unused=True)
            by_name = {n: torch.zeros_like(named[n]) if g is None else g for n, g in zip(sig.params, grads)}
            new_params, new_state = opt.apply({n: params[n] for n in sig.params}, by_name, state, hyper)
            return OptimStepResult(value.detach(), by_name, new_params, new_state)

        return run

    def _build_forward(self, module: nn.Module, example_inputs: Tuple[Tensor, ...]) -> Tuple[Callable[..., Any], nn.Module]:
        fn, used = self._compile(module, example_inputs)
        self._warm_up(fn, example_inputs)
        return fn, used

    # -- what subclasses provide ---------------------------------------------------------------
    def _compile(self, module: nn.Module, example_inputs: Tuple[Tensor, ...]) -> Tuple[Callable[..., Any], nn.Module]:
        """The callable and the module whose parameters it reads (a device copy on CUDA)."""
        raise NotImplementedError

    def _warm_up(self, fn: Callable[..., Any], example_inputs: Tuple[Tensor, ...]) -> None:
        """Run once at preparation (torch.compile compiles here, under its shape settings)."""

    def _exported_loss_and_grad(self, loss: nn.Module, example_inputs: Tuple[Tensor, ...]) -> Callable[..., Tuple[Tensor, Tensor]]:
        raise Unsupported("{}: no gradients".format(self.name))

    def _exported_train_step(self, net: nn.Module, loss: nn.Module, example_inputs: Tuple[Tensor, ...],
                             lr: float) -> Callable[..., TrainStepResult]:
        raise Unsupported("{}: no gradients".format(self.name))

    # -- generic autograd ------------------------------------------------------------------------
    def _autograd_loss_and_grad(self, loss: nn.Module, example_inputs: Tuple[Tensor, ...]) -> Callable[..., Tuple[Tensor, Tensor]]:
        fn, _ = self._compile(loss, _with_grad_first(example_inputs))
        loss_and_grad = autograd_loss_and_grad(fn)
        _keep_counter(loss_and_grad, fn)
        self._warm_up(loss_and_grad, example_inputs)
        return loss_and_grad

    def _autograd_train_step(self, wrapped: nn.Module, example_inputs: Tuple[Tensor, ...],
                             lr: float) -> Callable[..., TrainStepResult]:
        fn, used = self._compile(wrapped, example_inputs)
        train_step = autograd_train_step(fn, [(n, p) for n, p in used.net.named_parameters() if p.requires_grad], lr)
        _keep_counter(train_step, fn)
        self._warm_up(train_step, example_inputs)
        return train_step

    # -- cache ---------------------------------------------------------------------------------
    def _cached(self, kind: Any, module: nn.Module, example_inputs: Tuple[Tensor, ...],
                build: Callable[[], Tuple[Callable[..., Any], Optional[nn.Module]]],
                owners: Optional[Tuple[nn.Module, ...]] = None) -> Tuple[Callable[..., Any], Any]:
        if not self.cacheable:
            return build()
        owners = (module,) if owners is None else owners
        key = (self.name, kind, tuple(sorted(self._settings.items()))) + structure_key(module, example_inputs)
        # Autograd backends read the modules' live parameters: reuse only for the same modules.
        return owned_lru(_CACHE, _CACHE_SIZE, key, owners, build, same_owners=self.supports_autograd)


_CACHE_SIZE = 256
_CACHE: "collections.OrderedDict[Tuple[Any, ...], Tuple[Any, Any]]" = collections.OrderedDict()


def owned_lru(store: "collections.OrderedDict[Any, Tuple[Any, Any]]", size: int, key: Any,
              owners: Tuple[nn.Module, ...], build: Callable[[], Any], same_owners: bool = True) -> Any:
    """``store[key]``'s value, or ``build()`` stored under ``key`` (least recently used dropped past
    ``size``). ``same_owners``: a hit counts only if it was built for these very modules (held by
    weak reference), for values that read the modules' live parameters."""
    hit = store.get(key)
    if hit is not None and (not same_owners or all(r() is m for r, m in zip(hit[0], owners))):
        store.move_to_end(key)
        return hit[1]
    value = build()
    store[key] = (tuple(weakref.ref(m) for m in owners), value)
    while len(store) > size:
        store.popitem(last=False)
    return value


# Every per-process store of prepared callables (adapters with caches of their own register them).
_STORES: List[Any] = [_CACHE]


def register_cache(store: Any) -> Any:
    """Have :func:`clear_cache` clear ``store`` too; returns it."""
    _STORES.append(store)
    return store


def clear_cache() -> None:
    """Forget every prepared callable (tests that need a fresh build call this)."""
    for store in _STORES:
        store.clear()


# Flags torch sets on a module it has compiled (torch.compile marks it "_is_torch_compile"): not
# settings, and they would make every later build of the same case miss the cache.
_RUNTIME_MARKS = frozenset({"_is_torch_compile", "_compiled_call_impl"})


def structure_key(module: nn.Module, example_inputs: Sequence[Tensor]) -> Tuple[Any, ...]:
    """What a prepared callable depends on: module classes, their plain settings, the weights'
    bytes, and the inputs' dtypes and non-batch shapes (the batch dimension is dynamic)."""
    h = hashlib.sha256()
    for name, sub in module.named_modules():
        h.update("{}:{}.{}".format(name, type(sub).__module__, type(sub).__qualname__).encode())
        for attr, value in sorted(vars(sub).items()):
            if attr in _RUNTIME_MARKS:
                continue
            if isinstance(value, (bool, int, float, str, type(None))) or (
                    isinstance(value, tuple) and all(isinstance(v, (bool, int, float, str)) for v in value)):
                h.update("{}={!r};".format(attr, value).encode())
    for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
        h.update("{}:{}:{}:{};".format(name, tensor.dtype, tuple(tensor.shape), tensor.device).encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    batched = shares_batch(example_inputs)
    # an input that does not share the batch (unpaired negatives (M, D)) has a dim 0 of its own:
    # part of the key, since a graph exported with it tied to the batch cannot take another size.
    # A marked dynamic dim (compile_losses.dims) keys on its symbol: one preparation, every size.
    signature = tuple((str(t.dtype), symbolic_shape(t)[1:]) + (() if b else (t.shape[0],))
                      for t, b in zip(example_inputs, batched))
    return (h.hexdigest(), signature)


def input_dims(example_inputs: Sequence[Tensor], own: Callable[[int], str] = "input{}_dim0".format
               ) -> List[Dict[int, str]]:
    """Every input's dynamic dims by symbol: dim 0 ``"batch"`` where it shares the batch, ``own(i)``
    otherwise (a dim of its own), and the marked dims beyond it (:mod:`compile_losses.dims`)."""
    out = []
    for i, (t, b) in enumerate(zip(example_inputs, shares_batch(example_inputs))):
        dims = {0: "batch" if b else own(i)} if t.dim() >= 1 else {}
        dims.update(dims_of(t))
        out.append(dims)
    return out


def shares_batch(example_inputs: Sequence[Tensor]) -> List[bool]:
    """Which inputs have the batch as dim 0: the first input, and every input whose dim 0 equals
    the first's. The others (unpaired negatives (M, D), a 0-d setting) have dim 0 of their own."""
    if not example_inputs:
        return []
    first = example_inputs[0]
    batch = first.shape[0] if first.dim() else None
    return [t.dim() >= 1 and t.shape[0] == batch for t in example_inputs]


def export_example(example_inputs: Sequence[Tensor], rows: int = 4) -> Tuple[Tensor, ...]:
    """A small copy of the inputs to trace or export with: the inputs that share the batch get
    ``rows`` samples (repeated when fewer; more than ``rows`` if an input of its own has that dim 0),
    so a batch of 1 never specializes the batch dimension and a huge batch is not traced whole.
    Inputs with a dim 0 of their own (:func:`shares_batch`) are kept whole."""
    batched = shares_batch(example_inputs)
    own = {t.shape[0] for t, b in zip(example_inputs, batched) if not b and t.dim() >= 1}
    while rows in own:  # an input of its own that looked like the batch would be tied to it
        rows += 1
    out = []
    for t, b in zip(example_inputs, batched):
        if t.dim() == 0:
            raise ValueError("every input needs a batch dimension first, got a 0-d tensor")
        t = t.detach()
        if b:
            if t.shape[0] < rows:
                t = t.repeat((-(-rows // t.shape[0]),) + (1,) * (t.dim() - 1))
            t = t[:rows]
        out.append(t.clone())
    # marked dims get a size that tracing cannot specialize or merge with another (dims.distinct_sizes)
    out = [carry_dims(src, t) for src, t in zip(example_inputs, out)]
    return resize_dims(out, distinct_sizes(out, taken=[rows]))


@contextlib.contextmanager
def tf32_scope(on: bool) -> Iterator[None]:
    """TF32 matmuls and convolutions on CUDA (``torch.backends.cuda.matmul.allow_tf32``,
    ``torch.backends.cudnn.allow_tf32``) set to ``on`` while the block runs, restored after."""
    if not isinstance(on, bool):
        raise ValueError("tf32 must be True or False, got {!r}".format(on))
    previous = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = on
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous


def _as_tuple(inputs: Any) -> Tuple[Tensor, ...]:
    if isinstance(inputs, Tensor):
        return (inputs,)
    inputs = tuple(inputs)
    for i, t in enumerate(inputs):
        if not isinstance(t, Tensor):
            raise TypeError("example_inputs must be tensors, got {} at position {}".format(type(t).__name__, i))
    return inputs


def _with_grad_first(example_inputs: Tuple[Tensor, ...]) -> Tuple[Tensor, ...]:
    first = example_inputs[0]
    return (carry_dims(first, first.detach().requires_grad_(True)),) + tuple(example_inputs[1:])


def _keep_counter(outer: Any, inner: Any) -> None:
    # torch.compile's prepared forward counts its compilations; the wrappers expose the count.
    if hasattr(inner, "compile_counter"):
        outer.compile_counter = inner.compile_counter


def to_cpu(value: Any) -> Any:
    """Tensors (and tensors in tuples/dicts) on the CPU, detached: what parity compares."""
    if isinstance(value, Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*[to_cpu(v) for v in value])
    if isinstance(value, (list, tuple)):
        return type(value)(to_cpu(v) for v in value)
    return value


def move(inputs: Sequence[Tensor], device: str) -> List[Tensor]:
    return [t.to(device) for t in inputs]



def optimizer_key(opt: Any) -> Tuple[Any, ...]:
    """What a prepared optimizer step depends on: the optimizer's kind and static flags (its
    hyper-parameters are inputs)."""
    return ("optimizer_step", opt.name, tuple(opt.flags), opt.has_momentum)
