"""Losses written as real ones are: code TorchScript refuses, code it compiles to other values, a
data-dependent branch (a graph break)."""
from enum import Enum

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


class _StrEnum(str, Enum):
    """A string Enum whose ``str()`` is its value, as monai's ``StrEnum`` (written as monai does)."""

    def __str__(self):  # noqa: ANN204
        return self.value


class Weighting(_StrEnum):
    SQUARE = "square"
    ONES = "ones"


class EnumOptionLoss(nn.Module):
    """A squared error weighted by an option held as a string and compared with ``str()`` of an
    Enum member, as monai's GeneralizedDiceLoss does: TorchScript folds the ``str()`` to
    "Enum<Weighting.SQUARE>" and the scripted loss takes the other branch."""

    def __init__(self, weighting: str = "square") -> None:
        super().__init__()
        self.weighting = weighting

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        diff = (pred - target) ** 2
        if self.weighting == str(Weighting.SQUARE):  # ENUM-LINE
            diff = diff * 3.0
        return diff.mean()
