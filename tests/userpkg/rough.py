"""Losses written as real ones are: code TorchScript refuses, a data-dependent branch (a graph break)."""
import torch
from torch import nn


class UnscriptableLoss(nn.Module):
    """Mean squared error with a shape check TorchScript cannot compile (a starred list of sizes)."""

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.shape != target.shape:
            raise ValueError("expected {}".format(torch.Size((pred.shape[0], *pred.shape[1:]))))  # SCRIPT-LINE
        return ((pred - target) ** 2).mean()


class BranchyLoss(nn.Module):
    """Mean absolute error that branches on the data: torch.compile breaks the graph there."""

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        diff = (pred - target).abs()
        if diff.max() > 1e6:  # BREAK-LINE
            return diff.clamp(max=1e6).mean()
        return diff.mean()
