"""TorchScript: ``torch.jit.script`` and ``torch.jit.trace``.

Both are deprecated in torch 2.13 and emit DeprecationWarnings there; they are filtered here, by
category and message, where we call them. If a future torch drops ``torch.jit``, both backends
report themselves unavailable with the reason.

``trace`` records the module at a small example batch (see ``export_example``); parity then runs it
at every batch size, which is how users run a traced model, and catches a batch size baked into
the trace.
"""
import contextlib
import warnings
import weakref
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Tuple

import torch
from torch import Tensor, nn

from .base import Backend, Unsupported, export_example

__all__ = ["ScriptBackend", "TraceBackend", "save_torchscript", "load_torchscript"]


def _jit_available() -> Tuple[bool, str]:
    jit = getattr(torch, "jit", None)
    if jit is None or not hasattr(jit, "script") or not hasattr(jit, "trace"):
        return False, "this torch has no TorchScript (torch.jit.script / torch.jit.trace)"
    return True, ""


@contextlib.contextmanager
def _quiet_jit() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*(TorchScript|torch\.jit).*")
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*(TorchScript|torch\.jit).*")
        # Shape checks read sizes as Python values while tracing; parity checks other batches.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


_SCRIPT_FAILURES: "weakref.WeakKeyDictionary[type, Exception]" = weakref.WeakKeyDictionary()


def _forget_failed_classes() -> None:
    """Drop the classes a failed ``torch.jit.script`` left half-registered: else scripting another
    module that shares a submodule class fails with "Can't redefine method" instead of its own reason."""
    try:
        torch._C._jit_clear_class_registry()
        torch.jit._recursive.concrete_type_store = torch.jit._recursive.ConcreteTypeStore()
        torch.jit._state._clear_class_state()
    except AttributeError:  # private hooks; without them only the message of a later failure suffers
        pass


class ScriptBackend(Backend):
    """``torch.jit.script(module)``."""

    supports_autograd = True
    cost = 0.2
    markers = ("script",)
    stages = ("script",)  # localize: one stage against eager
    stage_shapes = (False,)

    def _available(self) -> Tuple[bool, str]:
        return _jit_available()

    def _optimizer_step(self, net: nn.Module, loss: nn.Module, example_inputs: Tuple[Tensor, ...],
                        opt: Any) -> Callable[..., Any]:
        # TorchScript cannot hold torch.func: the net and loss run scripted, the rest in Python
        return self._autograd_optimizer_step(net, loss, example_inputs, opt)

    def _compile(self, module: nn.Module, example_inputs: Tuple[Tensor, ...]) -> Tuple[Callable[..., Any], nn.Module]:
        reasons = [getattr(m, "jit_unsupported", "") for m in module.modules()]
        if any(reasons):  # a module that says TorchScript cannot script it, and why
            raise Unsupported("TorchScript: " + next(r for r in reasons if r))
        failed = _SCRIPT_FAILURES.get(type(module))
        if failed is not None:  # a second attempt on a class TorchScript refused says "Can't redefine method"
            raise failed
        with _quiet_jit():
            try:
                scripted = torch.jit.script(module)
            except (RuntimeError, torch.jit.frontend.FrontendError) as exc:  # the code, not the numbers
                from ..diagnose import script_unsupported

                _SCRIPT_FAILURES[type(module)] = script_unsupported(exc, module)
                _forget_failed_classes()
                raise _SCRIPT_FAILURES[type(module)] from None
        from ..diagnose import script_miscompiled

        wrong = script_miscompiled(scripted, module)  # scripts, but would compute other values
        if wrong is not None:
            _SCRIPT_FAILURES[type(module)] = wrong
            raise wrong
        return scripted, module  # a scripted module shares its parameters with the original


class TraceBackend(Backend):
    """``torch.jit.trace(module, example)`` at a small example batch."""

    supports_autograd = True
    cost = 0.2
    markers = ("script",)
    stages = ("trace",)  # localize: one stage against eager
    stage_shapes = (False,)

    def _available(self) -> Tuple[bool, str]:
        return _jit_available()

    def _optimizer_step(self, net: nn.Module, loss: nn.Module, example_inputs: Tuple[Tensor, ...],
                        opt: Any) -> Callable[..., Any]:
        # TorchScript cannot hold torch.func: the net and loss run scripted, the rest in Python
        return self._autograd_optimizer_step(net, loss, example_inputs, opt)

    def _compile(self, module: nn.Module, example_inputs: Tuple[Tensor, ...]) -> Tuple[Callable[..., Any], nn.Module]:
        example = export_example(example_inputs)
        with _quiet_jit():
            traced = torch.jit.trace(module, example, check_trace=False)
        return traced, module  # shares the parameters, like script


def save_torchscript(module: nn.Module, example: Tuple[Tensor, ...], path: Path) -> Dict[str, Any]:
    """Write ``module`` as a TorchScript archive the way the ``script`` backend makes it (as the
    ``trace`` backend does, for a module that does not script); returns ``{"method": ...}`` saying
    which, for the manifest."""
    with _quiet_jit():
        from ..diagnose import script_miscompiled

        try:
            scripted, method = torch.jit.script(module), "script"
            wrong = script_miscompiled(scripted, module)
            if wrong is not None:  # a scripted archive would compute other values than eager
                raise wrong
        except Exception as exc:  # TorchScript's frontend raises many types for unsupported Python
            scripted = torch.jit.trace(module, export_example(example), check_trace=False)
            method = "trace (script failed: {})".format((str(exc).strip().splitlines() or [type(exc).__name__])[0][:200])
        scripted.save(str(path))
    return {"method": method}


def load_torchscript(source: Any) -> Any:
    """Load a TorchScript archive from a path or a file object (runs code: trusted files only)."""
    with _quiet_jit():
        return torch.jit.load(source)
