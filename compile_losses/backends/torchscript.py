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
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Tuple

import torch
from torch import Tensor, nn

from .base import Backend, export_example

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


class ScriptBackend(Backend):
    """``torch.jit.script(module)``."""

    supports_autograd = True
    cost = 0.2
    markers = ("script",)

    def _available(self) -> Tuple[bool, str]:
        return _jit_available()

    def _optimizer_step(self, net: nn.Module, loss: nn.Module, example_inputs: Tuple[Tensor, ...],
                        opt: Any) -> Callable[..., Any]:
        # TorchScript cannot hold torch.func: the net and loss run scripted, the rest in Python
        return self._autograd_optimizer_step(net, loss, example_inputs, opt)

    def _compile(self, module: nn.Module, example_inputs: Tuple[Tensor, ...]) -> Tuple[Callable[..., Any], nn.Module]:
        with _quiet_jit():
            scripted = torch.jit.script(module)
        return scripted, module  # a scripted module shares its parameters with the original


class TraceBackend(Backend):
    """``torch.jit.trace(module, example)`` at a small example batch."""

    supports_autograd = True
    cost = 0.2
    markers = ("script",)

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
        try:
            scripted, method = torch.jit.script(module), "script"
        except Exception as exc:  # TorchScript's frontend raises many types for unsupported Python
            scripted = torch.jit.trace(module, export_example(example), check_trace=False)
            method = "trace (script failed: {})".format((str(exc).strip().splitlines() or [type(exc).__name__])[0][:200])
        scripted.save(str(path))
    return {"method": method}


def load_torchscript(source: Any) -> Any:
    """Load a TorchScript archive from a path or a file object (runs code: trusted files only)."""
    with _quiet_jit():
        return torch.jit.load(source)
