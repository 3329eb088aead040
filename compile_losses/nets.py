"""Reference nets: the seed net the project grew from, and a few nets users really train with
these losses. Every net scripts, compiles and exports to ONNX with a dynamic batch dimension.

Parity runs nets in ``eval()`` mode so that dropout is the identity and results are deterministic.
"""
import inspect
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SeedNet", "MLPClassifier", "ConvSegNet", "TinyEncoder", "NetWithLoss"]


class SeedNet(nn.Module):
    """The reference net: ``Linear(32, 16) -> ReLU -> Linear(16, 1)``.

    ``out_features`` widens the last layer for losses that need one logit per class or an
    embedding; the default is the reference net itself.

    Shape:
        - Input: ``(N, 32)``. Output: ``(N, out_features)``.

    Example::

        >>> import torch
        >>> from compile_losses.nets import SeedNet
        >>> SeedNet()(torch.zeros(10, 32)).shape
        torch.Size([10, 1])
    """

    def __init__(self, in_features: int = 32, hidden: int = 16, out_features: int = 1) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, out_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.relu(self.fc1(x)))


class MLPClassifier(nn.Module):
    """A classifier MLP with LayerNorm and dropout: ``(N, in_features) -> (N, num_classes)`` logits.

    Example::

        >>> import torch
        >>> from compile_losses.nets import MLPClassifier
        >>> MLPClassifier()(torch.zeros(4, 64)).shape
        torch.Size([4, 10])
    """

    def __init__(self, in_features: int = 64, hidden: int = 128, num_classes: int = 10, dropout: float = 0.1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.LayerNorm(hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.LayerNorm(hidden),
            nn.GELU(),
            nn.Dropout(dropout),
        )
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


class ConvSegNet(nn.Module):
    """A small fully convolutional net for dense prediction:
    ``(N, in_channels, H, W) -> (N, out_channels, H, W)`` per-pixel logits (GroupNorm, so batch
    statistics never couple samples).

    Example::

        >>> import torch
        >>> from compile_losses.nets import ConvSegNet
        >>> ConvSegNet()(torch.zeros(2, 3, 16, 16)).shape
        torch.Size([2, 1, 16, 16])
    """

    def __init__(self, in_channels: int = 3, width: int = 16, out_channels: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.GroupNorm(4, width),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.GroupNorm(4, width),
            nn.ReLU(),
        )
        self.head = nn.Conv2d(width, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


class TinyEncoder(nn.Module):
    """A one-block transformer encoder producing embeddings: ``(N, T, d_model) -> (N, embed_dim)``
    (pre-norm self-attention and MLP, mean-pooled over tokens, projected).

    Written out rather than with ``nn.TransformerEncoderLayer``, whose fused inference fast path
    takes a different code path under TorchScript and export than in eager.

    Example::

        >>> import torch
        >>> from compile_losses.nets import TinyEncoder
        >>> TinyEncoder()(torch.zeros(2, 8, 32)).shape
        torch.Size([2, 16])
    """

    def __init__(self, d_model: int = 32, heads: int = 4, embed_dim: int = 16) -> None:
        super().__init__()
        if d_model % heads != 0:
            raise ValueError("d_model must be divisible by heads, got d_model {} and heads {}".format(d_model, heads))
        self.heads = heads
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 2 * d_model), nn.GELU(), nn.Linear(2 * d_model, d_model))
        self.out = nn.Linear(d_model, embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        n, t, d = x.shape
        h = self.heads
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        q = q.reshape(n, t, h, d // h).transpose(1, 2)
        k = k.reshape(n, t, h, d // h).transpose(1, 2)
        v = v.reshape(n, t, h, d // h).transpose(1, 2)
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(d // h))
        att = torch.softmax(scores, dim=-1) @ v
        x = x + self.proj(att.transpose(1, 2).reshape(n, t, d))
        x = x + self.mlp(self.norm2(x))
        return self.out(x.mean(dim=1))


class NetWithLoss(nn.Module):
    """``loss(net(input), *targets)`` as one module: what gets compiled or exported when a whole
    (net, loss) pair runs through a backend. Targets are passed through in the order the loss's
    ``forward`` takes them after its prediction.

    ``NetWithLoss(net, loss)`` builds a fixed-arity subclass (TorchScript and the exporters need
    named arguments, not ``*targets``): ``n_targets`` defaults to the number of required arguments
    after the prediction in ``loss.forward`` (MSE: 1, GaussianNLL: 2); pass it to use optional ones.

    Example::

        >>> import torch
        >>> from compile_losses.nets import NetWithLoss, SeedNet
        >>> m = NetWithLoss(SeedNet(), torch.nn.MSELoss())
        >>> type(m).__name__, m(torch.zeros(4, 32), torch.zeros(4, 1)).shape
        ('NetWithLoss1', torch.Size([]))
    """

    def __new__(cls, net: Optional[nn.Module] = None, loss: Optional[nn.Module] = None,
                n_targets: Optional[int] = None) -> "NetWithLoss":
        # Defaults only so that copy/pickle (which call cls.__new__(cls) on the subclass) work.
        if cls is NetWithLoss:
            n = _required_targets(loss) if n_targets is None else n_targets
            if n not in _FIXED_ARITY:
                raise ValueError("n_targets must be one of {}, got {}".format(sorted(_FIXED_ARITY), n))
            cls = _FIXED_ARITY[n]
        return super().__new__(cls)

    def __init__(self, net: nn.Module, loss: nn.Module, n_targets: Optional[int] = None) -> None:
        super().__init__()
        self.net = net
        self.loss = loss


class NetWithLoss0(NetWithLoss):
    n_targets = 0

    def forward(self, input: Tensor) -> Tensor:
        return self.loss(self.net(input))


class NetWithLoss1(NetWithLoss):
    n_targets = 1

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return self.loss(self.net(input), target)


class NetWithLoss2(NetWithLoss):
    n_targets = 2

    def forward(self, input: Tensor, target0: Tensor, target1: Tensor) -> Tensor:
        return self.loss(self.net(input), target0, target1)


class NetWithLoss3(NetWithLoss):
    n_targets = 3

    def forward(self, input: Tensor, target0: Tensor, target1: Tensor, target2: Tensor) -> Tensor:
        return self.loss(self.net(input), target0, target1, target2)


_FIXED_ARITY = {0: NetWithLoss0, 1: NetWithLoss1, 2: NetWithLoss2, 3: NetWithLoss3}


def _required_targets(loss: nn.Module) -> int:
    """Required positional arguments of ``loss.forward`` after the prediction."""
    try:
        params = list(inspect.signature(loss.forward).parameters.values())
    except (TypeError, ValueError):  # a compiled or scripted loss may hide its signature
        return 1
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [p for p in params if p.kind in kinds and p.default is inspect.Parameter.empty]
    return max(len(required) - 1, 0)
