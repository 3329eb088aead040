"""A user's loss for the localizer's tests: a Charbonnier-style root with an epsilon of 1e-9, which
the exporter's onnxscript optimizer (``optimize=True``) deletes in this torch version."""
import torch
from torch import nn


class RootLoss(nn.Module):
    def __init__(self, eps: float = 1e-9) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        d = input - target
        return torch.sqrt(d * d + self.eps).mean()  # the epsilon line


class ScriptedDiffers(nn.Module):
    """MSE, except under torch.jit.script (a planted script-only forward fault)."""

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        d = input - target
        if torch.jit.is_scripting():
            return (d * d).mean() * 1.01
        return (d * d).mean()
