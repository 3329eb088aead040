"""A user net and loss that live outside compile_losses (importable as ``userpkg.models``)."""
import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TinyClassifier(nn.Module):
    """``(N, in_features) -> (N, classes)`` logits: Linear -> Tanh -> Linear."""

    def __init__(self, in_features: int = 6, hidden: int = 12, classes: int = 3) -> None:
        super().__init__()
        self.inp = nn.Linear(in_features, hidden)
        self.out = nn.Linear(hidden, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.tanh(self.inp(x)))


class MarginClassLoss(nn.Module):
    """Multi-class hinge on class-index targets, plus a small logit penalty:
    ``mean_n sum_{c != y_n} relu(margin - z_{n,y} + z_{n,c}) + penalty * mean(z^2)``."""

    def __init__(self, margin: float = 1.0, penalty: float = 0.01) -> None:
        super().__init__()
        self.margin = float(margin)
        self.penalty = float(penalty)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        right = input.gather(1, target.unsqueeze(1))
        hinge = F.relu(self.margin - right + input)
        others = hinge * (1.0 - F.one_hot(target, input.shape[1]).to(input.dtype))
        return others.sum(dim=1).mean() + self.penalty * (input * input).mean()


class ValueBranchNet(nn.Module):
    """Branches in Python on a tensor's value: no graph can hold that, so it does not export."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 1)

    def forward(self, x: Tensor) -> Tensor:
        if float(x.sum()) > 0:
            return self.lin(x)
        return -self.lin(x)


class ConfiguredLoss(nn.Module):
    """MSE with every kind of init argument a command line must carry: a flag, a number, a text, a
    list, a nested object and an optional value (each recorded so a test can read it back)."""

    def __init__(self, sigmoid: bool = False, scale: float = 1.0, name: str = "mse", offsets: list = None,
                 extra: dict = None, cap=None) -> None:  # noqa: RUF013 (None defaults as users write them)
        super().__init__()
        self.sigmoid, self.scale, self.label = sigmoid, scale, name
        self.offsets, self.extra, self.cap = offsets, extra, cap

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        pred = torch.sigmoid(input) if self.sigmoid else input
        return self.scale * F.mse_loss(pred, target)
