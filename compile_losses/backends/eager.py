"""Eager PyTorch on the CPU or (when present) a CUDA device: the reference every other backend is
compared with (``reference = True``)."""
import copy
from typing import Any, Callable, Dict, Tuple

import torch
from torch import Tensor, nn

from .base import Backend, move, tf32_scope

__all__ = ["EagerBackend", "cuda_available"]


def cuda_available() -> Tuple[bool, str]:
    if not torch.cuda.is_available():
        return False, "no CUDA device (torch.cuda.is_available() is False)"
    return True, ""


class EagerBackend(Backend):
    """The module itself: the reference every other backend is compared with."""

    supports_autograd = True
    reference = True

    def __init__(self, name: str = "eager", device: str = "cpu", **facts: Any) -> None:
        facts.setdefault("markers", ("gpu",) if device.startswith("cuda") else ())
        super().__init__(name, **facts)
        self.device = device
        # TF32 matmuls/convolutions on CUDA: a setting that changes numerics (off: torch's default
        # for matmuls, so the reference stays float32)
        self.setting_defaults = {"tf32": False} if device.startswith("cuda") else {}

    def check_settings(self, applied: Dict[str, Any]) -> None:
        if "tf32" in applied and not isinstance(applied["tf32"], bool):
            raise ValueError("tf32 must be True or False, got {!r}".format(applied["tf32"]))

    def _settings_context(self, applied: Dict[str, Any]) -> Any:
        return tf32_scope(applied["tf32"]) if "tf32" in applied else super()._settings_context(applied)

    def _available(self) -> Tuple[bool, str]:
        return cuda_available() if self.device.startswith("cuda") else (True, "")

    def _compile(self, module: nn.Module, example_inputs: Tuple[Tensor, ...]) -> Tuple[Callable[..., Any], nn.Module]:
        if self.device == "cpu":
            return module, module
        used = copy.deepcopy(module).to(self.device)

        def run(*inputs: Tensor) -> Any:
            return used(*move(inputs, self.device))

        return run, used
