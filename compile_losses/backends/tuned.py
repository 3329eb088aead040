"""``compile``: inductor with the settings picked per kind of work, and eager where eager is faster.

torch.compile's default settings are slower than eager where the work is small (SeedNet at batch
10: an autograd train step through ``torch.compile`` took 1.4-1.8x eager's time, its inference loss
1.6x), so this adapter is a selection over the fast paths of :mod:`compile_losses.fast` and the
eager adapter:

* a train step: the whole step (forward, loss, backward, SGD) as one guard-free inductor graph
  (:class:`compile_losses.fast.CompiledTrainStep`, ``mode="graph"``), for a loss that reduces to a
  scalar;
* a loss and its gradient: the joint forward+backward as one compiled pass into a reused buffer
  (:class:`compile_losses.fast.FusedLossAndGrad`), for a loss that reduces to a scalar;
* a forward (inference): ``torch.compile`` when autograd must record, else a guard-free inductor
  graph (:class:`compile_losses.fast.CompiledForward`);
* ``reduction="none"`` losses: ``torch.compile`` with autograd, as ``compile-dynamo``.

Then it times the compiled callable against eager on the example inputs (interleaved rounds,
about 0.2 s) and keeps eager where eager is faster: ``compile`` is never slower than eager on the
case it was prepared for, and the callable's ``note`` says what it chose and the timings behind it.
"""
import contextlib
import threading
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import torch
from torch import Tensor, nn

from ..fast import CompiledForward, CompiledTrainStep, FusedLossAndGrad, Lazy, Selected, pick_fastest
from ..nets import NetWithLoss
from .base import _as_tuple, structure_key
from .compile import CompileBackend
from .eager import EagerBackend

__all__ = ["TunedCompileBackend"]


class TunedCompileBackend(CompileBackend):
    """The compiled candidate per kind of work, kept only where it beats eager (see the module
    docstring). Measured for inductor on the CPU only."""

    def __init__(self, name: str = "compile", **facts: Any) -> None:
        super().__init__(name, compiler="inductor", device="cpu", **facts)
        self._local = threading.local()
        self._eager = EagerBackend(name + ":eager")  # the fallback: exactly what the eager backend runs
        # where the tuned graph cannot be built (a data-dependent check in the user's loss): what the
        # user gets from torch.compile(loss) with its defaults, graph breaks allowed
        self._default = CompileBackend(name + ":torch.compile", compiler="inductor", fullgraph=False)
        self.setting_defaults = dict(self.setting_defaults)
        del self.setting_defaults["dynamic"]  # it builds its own graphs (guard-free, fused): inductor flags only

    def prepare(self, module: nn.Module, example_inputs: Tuple[Tensor, ...]) -> Callable[..., Any]:
        self._require()
        example_inputs = _as_tuple(example_inputs)

        def compiled(forced: bool) -> Callable[..., Any]:
            # torch.compile only once a call needs autograd (a no-grad user never pays for it)
            fn = CompiledForward(module, differentiable=Lazy(lambda: self._build_forward(module, example_inputs)[0]))
            # parity compares forward values: verify the guard-free graph, which only this backend
            # runs (its autograd path is compile-dynamo's, verified under that name)
            return _without_grad(fn) if forced else fn

        return self._tuned(("forward",), module, example_inputs, lambda: module, compiled,
                           "forward: guard-free inductor graph without autograd, torch.compile with it",
                           lambda: self._default.prepare(module, example_inputs))

    def prepare_loss_and_grad(self, loss: nn.Module, example_inputs: Tuple[Tensor, ...]) -> Callable[..., Tuple[Tensor, Tensor]]:
        self._require()
        example_inputs = _as_tuple(example_inputs)
        if _reduces_to_scalar(loss):
            compiled, how = (lambda forced: FusedLossAndGrad(loss)), "joint forward+backward in one compiled pass"
        else:
            compiled, how = (lambda forced: self._autograd_loss_and_grad(loss, example_inputs)), "torch.compile + autograd"
        return self._tuned(("loss_and_grad",), loss, example_inputs,
                           lambda: self._eager.prepare_loss_and_grad(loss, example_inputs), compiled, how,
                           lambda: self._default.prepare_loss_and_grad(loss, example_inputs))

    def prepare_train_step(self, net: nn.Module, loss: nn.Module, example_inputs: Tuple[Tensor, ...],
                           lr: float) -> Callable[..., Any]:
        self._require()
        example_inputs = _as_tuple(example_inputs)
        wrapped = NetWithLoss(net, loss, n_targets=len(example_inputs) - 1)
        if _reduces_to_scalar(loss):
            compiled, how = (lambda forced: CompiledTrainStep(net, loss, lr, mode="graph")), "whole step as one guard-free graph"
        else:
            compiled, how = (lambda forced: self._autograd_train_step(wrapped, example_inputs, lr)), "torch.compile + autograd"
        return self._tuned(("train_step", float(lr)), wrapped, example_inputs,
                           lambda: self._eager.prepare_train_step(net, loss, example_inputs, lr), compiled, how,
                           lambda: self._default.prepare_train_step(net, loss, example_inputs, lr), owners=(net, loss))

    def _tuned(self, kind: Tuple[Any, ...], module: nn.Module, example_inputs: Tuple[Tensor, ...],
               eager: Callable[[], Callable[..., Any]], compiled: Callable[[bool], Callable[..., Any]], how: str,
               default: Callable[[], Callable[..., Any]], owners: Optional[Tuple[nn.Module, ...]] = None) -> Any:
        """The cached choice between ``eager()`` and ``compiled(forced)`` for one case (``default()``,
        plain torch.compile, where the compiled one cannot be built); forced (parity mode) and timed
        choices are cached apart."""
        forced = self._forced()

        def build() -> Tuple[Any, None]:
            if forced:
                built, how_built = _first_that_builds(lambda: compiled(forced), how, default, example_inputs)
                return _keep_faster({"eager": eager, "compile": lambda: built}, example_inputs, how_built, forced), None
            return self._decided(kind, module, example_inputs, eager, compiled, how, default), None

        return self._cached(kind + (forced,), module, example_inputs, build, owners=owners)[0]

    def _decided(self, kind: Tuple[Any, ...], module: nn.Module, example_inputs: Tuple[Tensor, ...],
                 eager: Callable[[], Callable[..., Any]], compiled: Callable[[bool], Callable[..., Any]], how: str,
                 default: Callable[[], Callable[..., Any]]) -> Selected:
        """Timed choice between eager and compiled, or the choice an earlier process made for the
        same case on this machine (from the build cache: then only the chosen one is built)."""
        from ..build_cache import load_record, record_key, store_record

        key = record_key(self.name, kind, sorted(self._settings.items()), structure_key(module, example_inputs),
                         tuple((str(t.dtype), tuple(t.shape)) for t in example_inputs), torch.get_num_threads())
        record = load_record("compile-choice", key)
        if record is not None and record.get("choice") in ("eager", "compile"):
            timings = {k: float(v) for k, v in record.get("timings", {}).items()}
            if record["choice"] == "eager":
                chosen = Selected("eager", eager(), timings, {}, "eager")
                chosen.settings = str(record.get("settings", how))
            else:
                built, how_built = _first_that_builds(lambda: compiled(False), how, default, example_inputs)
                chosen = Selected("compile", built, timings, {}, "eager")
                chosen.settings = how_built
            chosen.source = "decided in an earlier process on this machine, from the build cache"
            return chosen
        built, how_built = _first_that_builds(lambda: compiled(False), how, default, example_inputs)
        chosen = _keep_faster({"eager": eager, "compile": lambda: built}, example_inputs, how_built, False)
        store_record("compile-choice", key, {"choice": chosen.choice, "timings": chosen.timings, "settings": how_built})
        return chosen

    @contextlib.contextmanager
    def parity_mode(self) -> Iterator[None]:
        """While parity verifies this backend, prepare the compiled path whatever the timing says:
        eager, the fallback, is parity's reference already, so a case where eager measured faster
        would otherwise leave the compiled code unverified."""
        before = self._forced()
        self._local.forced = True
        try:
            yield
        finally:
            self._local.forced = before

    def _forced(self) -> bool:
        return bool(getattr(self._local, "forced", False))


def _without_grad(fn: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        with torch.no_grad():
            return fn(*args)

    return call


def _reduces_to_scalar(loss: nn.Module) -> bool:
    return getattr(loss, "reduction", "mean") != "none"


def _first_that_builds(compiled: Callable[[], Callable[..., Any]], how: str, default: Callable[[], Callable[..., Any]],
                       example_inputs: Tuple[Tensor, ...]) -> Tuple[Callable[..., Any], str]:
    """The tuned compiled callable, built and run once; where that fails (a data-dependent check
    the guard-free graph cannot trace), torch.compile with its default settings, and the reason.
    If that fails too, the tuned one's error is raised: never a silent eager."""
    try:
        fn = compiled()
        fn(*example_inputs)
        return fn, how
    except Exception as exc:  # any build failure of the tuned graph: try what plain torch.compile does
        first = "{}: {}".format(type(exc).__name__, (str(exc).strip().splitlines() or [""])[0][:200])
        try:
            fn = default()
            fn(*example_inputs)
        except Exception:
            raise exc from None
        return fn, "torch.compile's default settings (graph breaks allowed): {} failed: {}".format(how, first)


def _keep_faster(candidates: Dict[str, Callable[[], Callable[..., Any]]], example_inputs: Tuple[Tensor, ...],
                 how: str, forced: bool = False) -> Any:
    """The compiled candidate, or eager where eager measured faster (``pick_fastest``'s note says
    which, with the timings); a compiled candidate that fails to build is an error, not a fallback.
    ``forced``: the compiled candidate, untimed (parity mode)."""
    if forced:
        fn = candidates["compile"]()  # built and run once already (_first_that_builds)
        chosen = Selected("compile", fn, {}, {}, "eager")
    else:
        chosen = pick_fastest(candidates, example_inputs, baseline="eager", strict=True)
    chosen.settings = how
    return chosen
