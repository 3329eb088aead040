"""Eager PyTorch on the CPU or (when present) a CUDA device: the reference every other backend is
compared with (``reference = True``)."""
import copy
from typing import Any, Callable, Tuple

import torch
from torch import Tensor, nn

from .base import Backend, move

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

    def _available(self) -> Tuple[bool, str]:
        return cuda_available() if self.device.startswith("cuda") else (True, "")

    def _compile(self, module: nn.Module, example_inputs: Tuple[Tensor, ...]) -> Tuple[Callable[..., Any], nn.Module]:
        if self.device == "cpu":
            return module, module
        used = copy.deepcopy(module).to(self.device)

        def run(*inputs: Tensor) -> Any:
            return used(*move(inputs, self.device))

        return run, used
