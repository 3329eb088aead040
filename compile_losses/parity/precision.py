"""Mixed precision as a parity axis: parameters stay float32, compute runs under
``torch.autocast(device, dtype)``.

:func:`autocast_modules` wraps a case's net and loss so that every backend receives the same
modules: eager and the compilers run the autocast region as torch does, the exporters trace it (the
casts autocast inserts become graph nodes). The float64 reference of an autocast case is the same
wrappers in float64: autocast leaves float64 tensors alone, so it is the case computed in float64.
"""
from typing import Any, Optional, Tuple

import torch
from torch import Tensor, nn

__all__ = ["AUTOCAST_DTYPES", "Autocast", "autocast_modules", "check_autocast"]

AUTOCAST_DTYPES = (torch.bfloat16, torch.float16)


class Autocast(nn.Module):
    """``module(*inputs)`` under ``torch.autocast(device_type, dtype)``. Use :func:`autocast_wrap`
    (a fixed-arity subclass: TorchScript and the exporters need named arguments)."""

    device_type: str
    autocast_dtype: torch.dtype
    # read by the script adapter (TorchScript's autocast takes only literal device and dtype)
    jit_unsupported = ("torch.autocast inside a scripted module needs its device and dtype as literals, "
                       "and the autocast dtype here is a setting")

    def __init__(self, module: nn.Module, device_type: str = "cpu", dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.module = module
        self.device_type = device_type
        self.autocast_dtype = dtype


class Autocast1(Autocast):
    def forward(self, input: Tensor) -> Tensor:
        with torch.autocast(self.device_type, dtype=self.autocast_dtype):
            return self.module(input)


# The loss under autocast runs as autocast runs torch's own losses (mse_loss, cross_entropy, ... are
# on its float32 list): floating inputs cast up to the widest among them (the float32 target; float64
# in the reference), autocast off inside, so every sum and mean of the loss accumulates in float32.
def _widest(*tensors: Tensor) -> torch.dtype:
    dtype = torch.float16
    for t in tensors:
        if t.is_floating_point():
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _up(t: Tensor, dtype: torch.dtype) -> Tensor:
    return t.to(dtype) if t.is_floating_point() else t


class AutocastLoss1(Autocast):
    def forward(self, input: Tensor) -> Tensor:
        with torch.autocast(self.device_type, enabled=False):
            return self.module(_up(input, torch.promote_types(input.dtype, torch.float32)))


class AutocastLoss2(Autocast):
    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        d = _widest(input, target)
        with torch.autocast(self.device_type, enabled=False):
            return self.module(_up(input, d), _up(target, d))


class AutocastLoss3(Autocast):
    def forward(self, input: Tensor, target0: Tensor, target1: Tensor) -> Tensor:
        d = _widest(input, target0, target1)
        with torch.autocast(self.device_type, enabled=False):
            return self.module(_up(input, d), _up(target0, d), _up(target1, d))


class AutocastLoss4(Autocast):
    def forward(self, input: Tensor, target0: Tensor, target1: Tensor, target2: Tensor) -> Tensor:
        d = _widest(input, target0, target1, target2)
        with torch.autocast(self.device_type, enabled=False):
            return self.module(_up(input, d), _up(target0, d), _up(target1, d), _up(target2, d))


_LOSS_ARITY = {1: AutocastLoss1, 2: AutocastLoss2, 3: AutocastLoss3, 4: AutocastLoss4}


def autocast_wrap(module: nn.Module, n_inputs: int, dtype: torch.dtype, device_type: str = "cpu",
                  loss: bool = False) -> Autocast:
    table = _LOSS_ARITY if loss else {1: Autocast1}
    if n_inputs not in table:
        raise ValueError("n_inputs must be one of {}, got {}".format(sorted(table), n_inputs))
    wrapped = table[n_inputs](module, device_type, dtype)
    wrapped.train(module.training)
    return wrapped


def check_autocast(dtype: Any) -> Optional[torch.dtype]:
    """None, or one of :data:`AUTOCAST_DTYPES` (an error naming the argument otherwise)."""
    if dtype is None or dtype in AUTOCAST_DTYPES:
        return dtype
    raise ValueError("autocast must be None or one of {}, got {!r}".format(
        ", ".join(str(d).replace("torch.", "") for d in AUTOCAST_DTYPES), dtype))


def autocast_modules(net: Optional[nn.Module], loss: nn.Module, n_inputs: int, n_targets: int,
                     dtype: torch.dtype, device_type: str = "cpu") -> Tuple[Optional[nn.Module], nn.Module]:
    """The case's (net, loss): the net under autocast (parameters keep their dtype), the loss on
    its inputs cast up to float32 with autocast off, as autocast treats torch's own losses."""
    net_w = None if net is None else autocast_wrap(net, n_inputs, dtype, device_type)
    return net_w, autocast_wrap(loss, 1 + n_targets, dtype, device_type, loss=True)
