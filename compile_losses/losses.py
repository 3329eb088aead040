"""Loss modules: each stores validated settings and its ``forward`` is one call into
:mod:`compile_losses.functional`, as ``torch.nn.MSELoss`` wraps ``F.mse_loss``.

Every module here scripts with ``torch.jit.script``, compiles with ``torch.compile(fullgraph=True)``
and exports to ONNX with a dynamic batch dimension. Settings are checked once, as Python numbers,
when the module is built; inside ``forward`` only shapes and dtypes are checked.
"""
from typing import List, Optional

import torch  # noqa: F401  (the doctests below run in this module's namespace)
from torch import Tensor, nn

from . import functional as F
from ._checks import (
    check_in_closed_interval,
    check_in_open_interval,
    check_non_negative,
    check_positive,
)
from ._reduction import validate_reduction

__all__ = [
    "MSELoss",
    "L1Loss",
    "HuberLoss",
    "SmoothL1Loss",
    "LogCoshLoss",
    "CharbonnierLoss",
    "QuantileLoss",
    "MultiQuantileLoss",
    "GaussianNLLLoss",
    "PoissonNLLLoss",
    "CrossEntropyLoss",
    "BinaryFocalLoss",
    "FocalLoss",
    "BCEWithLogitsLoss",
    "DiceLoss",
    "TverskyLoss",
    "MultiClassDiceLoss",
    "MultiClassTverskyLoss",
    "KLDivLoss",
    "InfoNCELoss",
    "NTXentLoss",
    "SupConLoss",
    "TripletMarginLoss",
    "CosineEmbeddingLoss",
]

_REDUCTION_DOC = """reduction (str, optional): ``'none'`` | ``'mean'`` | ``'sum'``. ``'none'``: no reduction;
            ``'mean'``: the mean of the output; ``'sum'``: the sum. Default: ``'mean'``."""


class _Loss(nn.Module):
    __constants__ = ["reduction"]
    reduction: str

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = validate_reduction(reduction)

    def extra_repr(self) -> str:
        return "reduction={!r}".format(self.reduction)


def _optional_buffer(module: nn.Module, name: str, value: Optional[Tensor]) -> None:
    if value is not None and not isinstance(value, Tensor):
        raise TypeError("{} must be a tensor or None, got {}".format(name, type(value).__name__))
    module.register_buffer(name, value)


# ---------------------------------------------------------------------------------------------
# regression
# ---------------------------------------------------------------------------------------------
class MSELoss(_Loss):
    r"""Mean squared error between each element of the input :math:`x` and target :math:`y`.

    The unreduced loss is :math:`\ell_n = w_n (x_n - y_n)^2`, with :math:`w_n = 1` unless a
    per-element ``weight`` is passed to ``forward``. Then ``'mean'`` divides the sum by the number
    of elements and ``'sum'`` sums. Equal to :func:`torch.nn.functional.mse_loss` without weight.

    Args:
        reduction (str, optional): ``'none'`` | ``'mean'`` | ``'sum'``. Default: ``'mean'``.

    Shape:
        - Input: any shape. Target and optional weight: the same shape (never broadcast).
        - Output: scalar, or the input's shape with ``'none'``.

    Example::

        >>> import torch
        >>> from compile_losses.losses import MSELoss
        >>> MSELoss()(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0]))
        tensor(2.5000)
    """

    def forward(self, input: Tensor, target: Tensor, weight: Optional[Tensor] = None) -> Tensor:
        return F.mse_loss(input, target, weight=weight, reduction=self.reduction)


class L1Loss(_Loss):
    r"""Mean absolute error :math:`\ell_n = w_n |x_n - y_n|`; equal to ``F.l1_loss`` without weight.

    Args:
        reduction (str, optional): ``'none'`` | ``'mean'`` | ``'sum'``. Default: ``'mean'``.

    Shape:
        - Input: any shape. Target and optional weight: the same shape.
        - Output: scalar, or the input's shape with ``'none'``.

    Example::

        >>> import torch
        >>> from compile_losses.losses import L1Loss
        >>> L1Loss(reduction="sum")(torch.tensor([1.0, -2.0]), torch.tensor([0.0, 0.0]))
        tensor(3.)
    """

    def forward(self, input: Tensor, target: Tensor, weight: Optional[Tensor] = None) -> Tensor:
        return F.l1_loss(input, target, weight=weight, reduction=self.reduction)


class HuberLoss(_Loss):
    r"""Huber loss: quadratic near zero, linear beyond ``delta``.

    .. math::
        \ell_n = w_n \begin{cases} \tfrac12 (x_n - y_n)^2 & |x_n - y_n| < \delta \\
                 \delta (|x_n - y_n| - \tfrac12 \delta) & \text{otherwise} \end{cases}

    Equal to ``F.huber_loss`` without weight.

    Args:
        delta (float, optional): where the loss turns linear, > 0. Default: 1.0.
        reduction (str, optional): ``'none'`` | ``'mean'`` | ``'sum'``. Default: ``'mean'``.

    Shape:
        - Input: any shape. Target and optional weight: the same shape.
        - Output: scalar, or the input's shape with ``'none'``.

    Example::

        >>> import torch
        >>> from compile_losses.losses import HuberLoss
        >>> HuberLoss(delta=1.0, reduction="none")(torch.tensor([0.5, 3.0]), torch.zeros(2))
        tensor([0.1250, 2.5000])
    """

    __constants__ = ["reduction", "delta"]
    delta: float

    def __init__(self, delta: float = 1.0, reduction: str = "mean") -> None:
        super().__init__(reduction)
        check_positive(delta, "delta")
        self.delta = float(delta)

    def forward(self, input: Tensor, target: Tensor, weight: Optional[Tensor] = None) -> Tensor:
        return F.huber_loss(input, target, weight=weight, delta=self.delta, reduction=self.reduction)


class SmoothL1Loss(_Loss):
    r"""Smooth L1 loss: Huber loss divided by ``beta`` (L1 when ``beta`` is 0).

    .. math::
        \ell_n = w_n \begin{cases} \tfrac12 (x_n - y_n)^2 / \beta & |x_n - y_n| < \beta \\
                 |x_n - y_n| - \tfrac12 \beta & \text{otherwise} \end{cases}

    Equal to ``F.smooth_l1_loss`` without weight.

    Args:
        beta (float, optional): where the loss turns linear, >= 0. Default: 1.0.
        reduction (str, optional): ``'none'`` | ``'mean'`` | ``'sum'``. Default: ``'mean'``.

    Shape:
        - Input: any shape. Target and optional weight: the same shape.
        - Output: scalar, or the input's shape with ``'none'``.

    Example::

        >>> import torch
        >>> from compile_losses.losses import SmoothL1Loss
        >>> SmoothL1Loss(beta=2.0, reduction="none")(torch.tensor([1.0, 3.0]), torch.zeros(2))
        tensor([0.2500, 2.0000])
    """

    __constants__ = ["reduction", "beta"]
    beta: float

    def __init__(self, beta: float = 1.0, reduction: str = "mean") -> None:
        super().__init__(reduction)
        check_non_negative(beta, "beta")
        self.beta = float(beta)

    def forward(self, input: Tensor, target: Tensor, weight: Optional[Tensor] = None) -> Tensor:
        return F.smooth_l1_loss(input, target, weight=weight, beta=self.beta, reduction=self.reduction)


class LogCoshLoss(_Loss):
    r"""Log-cosh loss :math:`\ell_n = w_n \log\cosh(x_n - y_n)`: about :math:`d^2/2` near zero and
    :math:`|d| - \log 2` far out, smooth everywhere. Computed without overflow for any :math:`d`.

    Args:
        reduction (str, optional): ``'none'`` | ``'mean'`` | ``'sum'``. Default: ``'mean'``.

    Shape:
        - Input: any shape. Target and optional weight: the same shape.
        - Output: scalar, or the input's shape with ``'none'``.

    Example::

        >>> import torch
        >>> from compile_losses.losses import LogCoshLoss
        >>> LogCoshLoss(reduction="none")(torch.tensor([0.0, 100.0]), torch.zeros(2))
        tensor([ 0.0000, 99.3069])
    """

    def forward(self, input: Tensor, target: Tensor, weight: Optional[Tensor] = None) -> Tensor:
        return F.log_cosh_loss(input, target, weight=weight, reduction=self.reduction)


class CharbonnierLoss(_Loss):
    r"""Charbonnier loss :math:`\ell_n = w_n \sqrt{(x_n - y_n)^2 + \epsilon^2}`, a differentiable L1.

    Args:
        eps (float, optional): smoothing scale, > 0. Default: 1e-3.
        reduction (str, optional): ``'none'`` | ``'mean'`` | ``'sum'``. Default: ``'mean'``.

    Shape:
        - Input: any shape. Target and optional weight: the same shape.
        - Output: scalar, or the input's shape with ``'none'``.

    Example::

        >>> import torch
        >>> from compile_losses.losses import CharbonnierLoss
        >>> CharbonnierLoss(eps=0.75, reduction="none")(torch.tensor([1.0]), torch.zeros(1))
        tensor([1.2500])
    """

    __constants__ = ["reduction", "eps"]
    eps: float

    def __init__(self, eps: float = 1e-3, reduction: str = "mean") -> None:
        super().__init__(reduction)
        check_positive(eps, "eps")
        self.eps = float(eps)

    def forward(self, input: Tensor, target: Tensor, weight: Optional[Tensor] = None) -> Tensor:
        return F.charbonnier_loss(input, target, weight=weight, eps=self.eps, reduction=self.reduction)


class QuantileLoss(_Loss):
    r"""Quantile (pinball) loss for predicting the ``quantile``-th quantile of the target.

    .. math::
        \ell_n = w_n \max\big(q (y_n - x_n),\ (q - 1)(y_n - x_n)\big)

    With ``quantile=0.5`` it is half the L1 loss.

    Args:
        quantile (float, optional): the quantile :math:`q`, in (0, 1). Default: 0.5.
        reduction (str, optional): ``'none'`` | ``'mean'`` | ``'sum'``. Default: ``'mean'``.

    Shape:
        - Input: any shape. Target and optional weight: the same shape.
        - Output: scalar, or the input's shape with ``'none'``.

    Example::

        >>> import torch
        >>> from compile_losses.losses import QuantileLoss
        >>> QuantileLoss(quantile=0.9, reduction="none")(torch.tensor([0.0, 2.0]), torch.ones(2))
        tensor([0.9000, 0.1000])
    """

    __constants__ = ["reduction", "quantile"]
    quantile: float

    def __init__(self, quantile: float = 0.5, reduction: str = "mean") -> None:
        super().__init__(reduction)
        check_in_open_interval(quantile, "quantile", 0.0, 1.0)
        self.quantile = float(quantile)

    def forward(self, input: Tensor, target: Tensor, weight: Optional[Tensor] = None) -> Tensor:
        return F.quantile_loss(input, target, weight=weight, quantile=self.quantile, reduction=self.reduction)


class MultiQuantileLoss(_Loss):
    r"""Pinball loss of several quantiles at once: the input's last dimension holds one prediction
    per quantile, the target one value per prediction (pytorch-forecasting's ``QuantileLoss``).

    .. math::
        \ell_{n,k} = \max\big(q_k (y_n - x_{n,k}),\ (q_k - 1)(y_n - x_{n,k})\big)

    ``'mean'`` divides by the number of predictions (targets times quantiles). pytorch-forecasting
    reports twice this value (it doubles the pinball loss so that the median's is the L1 loss);
    :class:`QuantileLoss` is the one-quantile case (same convention, no factor 2).

    Args:
        quantiles (list of float, optional): the quantiles :math:`q_k`, each in (0, 1).
            Default: ``[0.1, 0.5, 0.9]``.
        reduction (str, optional): ``'none'`` | ``'mean'`` | ``'sum'``. Default: ``'mean'``.

    Shape:
        - Input: ``(N, ..., K)`` with :math:`K` = ``len(quantiles)``. Target: ``(N, ...)``.
        - Output: scalar, or the input's shape with ``'none'``.

    Example::

        >>> import torch
        >>> from compile_losses.losses import MultiQuantileLoss
        >>> MultiQuantileLoss([0.1, 0.9], reduction="none")(torch.tensor([[0.0, 2.0]]), torch.ones(1))
        tensor([[0.1000, 0.1000]])
    """

    quantiles: List[float]
    quantiles_text: str

    def __init__(self, quantiles: Optional[List[float]] = None, reduction: str = "mean") -> None:
        super().__init__(reduction)
        quantiles = [0.1, 0.5, 0.9] if quantiles is None else [float(q) for q in quantiles]
        if len(quantiles) == 0:
            raise ValueError("quantiles must hold at least one quantile, got []")
        for q in quantiles:
            check_in_open_interval(q, "each quantile", 0.0, 1.0)
        self.quantiles = quantiles
        # The same quantiles as a plain string setting: what is keyed on a module's plain settings
        # (the backends' and training graphs' caches of prepared graphs) reads str, not lists.
        self.quantiles_text = ",".join(repr(q) for q in quantiles)

    def extra_repr(self) -> str:
        return "quantiles={}, reduction={!r}".format(self.quantiles, self.reduction)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.multi_quantile_loss(input, target, quantiles=self.quantiles, reduction=self.reduction)


class GaussianNLLLoss(_Loss):
    r"""Gaussian negative log-likelihood of the target under :math:`\mathcal N(x, \sigma^2)`.

    .. math::
        \ell_n = \tfrac12 \Big(\log \max(\sigma^2_n, \epsilon) + \frac{(x_n - y_n)^2}{\max(\sigma^2_n, \epsilon)}\Big)
                 \ (+ \tfrac12 \log 2\pi \text{ if full})

    The clamp applies to the value only; the gradient flows as if unclamped, as in
    ``F.gaussian_nll_loss``, which this equals (with ``var`` of the input's shape).

    Args:
        full (bool, optional): add the constant term. Default: False.
        eps (float, optional): lower clamp of the variance, > 0. Default: 1e-6.
        reduction (str, optional): ``'none'`` | ``'mean'`` | ``'sum'``. Default: ``'mean'``.

    Shape:
        - Input, target, var: the same shape (var is never broadcast).
        - Output: scalar, or the input's shape with ``'none'``.

    Example::

        >>> import torch
        >>> from compile_losses.losses import GaussianNLLLoss
        >>> GaussianNLLLoss()(torch.zeros(2), torch.ones(2), torch.ones(2))
        tensor(0.5000)
    """

    __constants__ = ["reduction", "full", "eps"]
    full: bool
    eps: float

    def __init__(self, full: bool = False, eps: float = 1e-6, reduction: str = "mean") -> None:
        super().__init__(reduction)
        check_positive(eps, "eps")
        self.full = bool(full)
        self.eps = float(eps)

    def forward(self, input: Tensor, target: Tensor, var: Tensor) -> Tensor:
        return F.gaussian_nll_loss(input, target, var, full=self.full, eps=self.eps, reduction=self.reduction)


class PoissonNLLLoss(_Loss):
    r"""Poisson negative log-likelihood of counts :math:`y` given a rate.

    With ``log_input`` the input is the log-rate: :math:`\ell_n = e^{x_n} - y_n x_n`; otherwise the
    rate: :math:`\ell_n = x_n - y_n \log(x_n + \epsilon)`. ``full`` adds Stirling's approximation of
    :math:`\log y_n!` where :math:`y_n > 1`. Equal to ``F.poisson_nll_loss``.

    Args:
        log_input (bool, optional): the input is a log-rate. Default: True.
        full (bool, optional): add the Stirling term. Default: False.
        eps (float, optional): keeps the log finite when ``log_input`` is False, > 0. Default: 1e-8.
        reduction (str, optional): ``'none'`` | ``'mean'`` | ``'sum'``. Default: ``'mean'``.

    Shape:
        - Input and target: the same shape.
        - Output: scalar, or the input's shape with ``'none'``.

    Example::

        >>> import torch
        >>> from compile_losses.losses import PoissonNLLLoss
        >>> PoissonNLLLoss()(torch.zeros(2), torch.tensor([1.0, 3.0]))
        tensor(1.)
    """

    __constants__ = ["reduction", "log_input", "full", "eps"]
    log_input: bool
    full: bool
    eps: float

    def __init__(self, log_input: bool = True, full: bool = False, eps: float = 1e-8, reduction: str = "mean") -> None:
        super().__init__(reduction)
        check_positive(eps, "eps")
        self.log_input = bool(log_input)
        self.full = bool(full)
        self.eps = float(eps)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.poisson_nll_loss(
            input, target, log_input=self.log_input, full=self.full, eps=self.eps, reduction=self.reduction
        )


# ---------------------------------------------------------------------------------------------
# classification
# ---------------------------------------------------------------------------------------------
class CrossEntropyLoss(_Loss):
    r"""Cross-entropy between class logits and class-index or class-probability targets, with
    class weights, ``ignore_index`` and label smoothing.

    .. math::
        \ell_n = (1 - \varepsilon)\, w_{y_n} (-\log p_{n, y_n})
                 + \frac{\varepsilon}{C} \sum_c w_c (-\log p_{n,c}),
        \quad p_n = \mathrm{softmax}(x_n)

    and :math:`\ell_n = 0` where :math:`y_n` is ``ignore_index``. ``'mean'`` divides the sum by
    :math:`\sum_n w_{y_n}` over the targets not ignored. Equal to ``F.cross_entropy``.

    A floating-point target of the input's shape holds class probabilities (mixup, distillation):
    :math:`\ell_n = -\sum_c w_c \tilde y_{n,c} \log p_{n,c}` with
    :math:`\tilde y = (1 - \varepsilon) y + \varepsilon / C`; ``ignore_index`` does not apply and
    ``'mean'`` divides by the number of samples (times spatial positions), not by the weights, as
    ``F.cross_entropy`` does (timm's ``SoftTargetCrossEntropy`` is the unweighted ``'mean'``). Class indices
    out of range raise torch's index error in eager; ``verify`` and the CLI check them up front.

    Args:
        weight (Tensor, optional): one weight per class, shape ``(C,)``. Default: None.
        ignore_index (int, optional): a target value that contributes nothing. Default: -100.
        label_smoothing (float, optional): :math:`\varepsilon` in [0, 1]. Default: 0.0.
        reduction (str, optional): ``'none'`` | ``'mean'`` | ``'sum'``. Default: ``'mean'``.

    Shape:
        - Input: ``(N, C)`` or ``(N, C, d1, ...)`` logits, floating point.
        - Target: ``(N,)`` or ``(N, d1, ...)`` int64 class indices, or class probabilities of the
          input's shape and dtype.
        - Output: scalar, or ``(N,)`` / ``(N, d1, ...)`` with ``'none'``.

    Example::

        >>> import torch
        >>> from compile_losses.losses import CrossEntropyLoss
        >>> CrossEntropyLoss()(torch.zeros(2, 4), torch.tensor([0, 3]))
        tensor(1.3863)
    """

    __constants__ = ["reduction", "ignore_index", "label_smoothing"]
    ignore_index: int
    label_smoothing: float
    weight: Optional[Tensor]

    def __init__(
        self,
        weight: Optional[Tensor] = None,
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
    ) -> None:
        super().__init__(reduction)
        check_in_closed_interval(label_smoothing, "label_smoothing", 0.0, 1.0)
        _optional_buffer(self, "weight", weight)
        self.ignore_index = int(ignore_index)
        self.label_smoothing = float(label_smoothing)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy_loss(
            input,
            target,
            weight=self.weight,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            reduction=self.reduction,
        )


class BinaryFocalLoss(_Loss):
    r"""Binary focal loss on logits (Lin et al., 2017, "Focal Loss for Dense Object Detection"),
    as ``torchvision.ops.sigmoid_focal_loss``.

    .. math::
        \ell_n = \alpha_t (1 - p_t)^\gamma \, \mathrm{BCE}(x_n, y_n),\quad
        p_t = p y + (1 - p)(1 - y),\ \alpha_t = \alpha y + (1 - \alpha)(1 - y),\ p = \sigma(x_n)

    With ``gamma=0`` and ``alpha<0`` it is ``F.binary_cross_entropy_with_logits``. The cross-entropy
    is computed as :math:`p_c y \,\mathrm{softplus}(-x) + (1 - y)\,\mathrm{softplus}(x)`, exact
    for confident correct logits in float32 (torch's and torchvision's form cancels there).
    ``pos_weight`` scales the positive term as in ``BCEWithLogitsLoss``; a per-element ``weight``
    passed to ``forward`` scales each element. Elements whose target equals ``ignore_index`` count
    nowhere. ``'mean'`` divides by the number of elements not ignored, or with
    ``normalization='positives'`` by the sum of the targets not ignored (at least 1): RetinaNet's
    normalization by the number of positive anchors, as torchvision's detection code does with
    ``reduction='sum'``.

    Args:
        alpha (float, optional): weight of the positive class in [0, 1]; negative disables. Default: 0.25.
        gamma (float, optional): focusing exponent, >= 0. Default: 2.0.
        pos_weight (Tensor, optional): weight of positives, shape ``(1,)`` or ``(C,)`` for the last
            dimension. Default: None.
        ignore_index (int, optional): a target value (e.g. 255) whose elements count nowhere. Default: None.
        normalization (str, optional): what ``'mean'`` divides by: ``'elements'`` | ``'positives'``.
            Default: ``'elements'``.
        class_alpha (Tensor, optional): one alpha in [0, 1] per class of the last dimension,
            shape ``(C,)`` (or ``(1,)``), replacing ``alpha``. Default: None.
        reduction (str, optional): ``'none'`` | ``'mean'`` | ``'sum'``. Default: ``'mean'``.

    Shape:
        - Input: any shape of logits. Target and optional weight: the same shape, targets in [0, 1]
          (or ``ignore_index``).
        - Output: scalar, or the input's shape with ``'none'``.

    Example::

        >>> import torch
        >>> from compile_losses.losses import BinaryFocalLoss
        >>> BinaryFocalLoss(alpha=-1.0, gamma=0.0)(torch.zeros(2), torch.ones(2))
        tensor(0.6931)
    """

    __constants__ = ["reduction", "alpha", "gamma", "normalization"]
    alpha: float
    gamma: float
    normalization: str
    ignore_index: Optional[int]
    pos_weight: Optional[Tensor]
    class_alpha: Optional[Tensor]

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, pos_weight: Optional[Tensor] = None,
                 ignore_index: Optional[int] = None, normalization: str = "elements",
                 class_alpha: Optional[Tensor] = None, reduction: str = "mean") -> None:
        super().__init__(reduction)
        if alpha >= 0:
            check_in_closed_interval(alpha, "alpha", 0.0, 1.0)
        check_non_negative(gamma, "gamma")
        if normalization not in ("elements", "positives"):
            raise ValueError("normalization must be one of 'elements', 'positives', got '{}'".format(normalization))
        _optional_buffer(self, "pos_weight", pos_weight)
        _optional_buffer(self, "class_alpha", class_alpha)
        self.alpha = float(alpha)
        self.gamma = float(gamma)
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self.normalization = normalization

    def forward(self, input: Tensor, target: Tensor, weight: Optional[Tensor] = None) -> Tensor:
        return F.binary_focal_loss(
            input, target, weight=weight, alpha=self.alpha, gamma=self.gamma, pos_weight=self.pos_weight,
            ignore_index=self.ignore_index, normalization=self.normalization, class_alpha=self.class_alpha,
            reduction=self.reduction,
        )


class FocalLoss(_Loss):
    r"""Multi-class (softmax) focal loss with per-class weights and ``ignore_index``.

    .. math::
        \ell_n = -w_{y_n} (1 - p_{n,y_n})^\gamma \log p_{n,y_n},\quad p_n = \mathrm{softmax}(x_n)

    ``'mean'`` divides by :math:`\sum_n w_{y_n}` over the targets not ignored, so with ``gamma=0``
    it equals ``F.cross_entropy`` with the same weights.

    Args:
        weight (Tensor, optional): per-class weights :math:`w` (the "alpha" of the paper), ``(C,)``.
        gamma (float, optional): focusing exponent, >= 0. Default: 2.0.
        ignore_index (int, optional): a target value that contributes nothing. Default: -100.
        reduction (str, optional): ``'none'`` | ``'mean'`` | ``'sum'``. Default: ``'mean'``.

    Shape:
        - Input: ``(N, C)`` or ``(N, C, d1, ...)`` logits. Target: ``(N,)`` or ``(N, d1, ...)`` int64.
        - Output: scalar, or the target's shape with ``'none'``.

    Example::

        >>> import torch
        >>> from compile_losses.losses import FocalLoss
        >>> FocalLoss(gamma=0.0)(torch.zeros(2, 4), torch.tensor([0, 3]))
        tensor(1.3863)
    """

    __constants__ = ["reduction", "gamma", "ignore_index"]
    gamma: float
    ignore_index: int
    weight: Optional[Tensor]

    def __init__(
        self, weight: Optional[Tensor] = None, gamma: float = 2.0, ignore_index: int = -100, reduction: str = "mean"
    ) -> None:
        super().__init__(reduction)
        check_non_negative(gamma, "gamma")
        _optional_buffer(self, "weight", weight)
        self.gamma = float(gamma)
        self.ignore_index = int(ignore_index)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.focal_loss(
            input, target, weight=self.weight, gamma=self.gamma, ignore_index=self.ignore_index, reduction=self.reduction
        )


class BCEWithLogitsLoss(_Loss):
    r"""Binary cross-entropy on logits, computed stably.

    .. math::
        \ell_n = -w_n \big[ p_c\, y_n \log \sigma(x_n) + (1 - y_n) \log (1 - \sigma(x_n)) \big]

    with :math:`p_c` the ``pos_weight`` of the element's class (last dimension). Equal to
    ``F.binary_cross_entropy_with_logits``.

    Args:
        pos_weight (Tensor, optional): weight of positives, shape ``(1,)`` or ``(C,)`` for the
            last dimension. Default: None.
        reduction (str, optional): ``'none'`` | ``'mean'`` | ``'sum'``. Default: ``'mean'``.

    Shape:
        - Input: any shape of logits. Target and optional weight: the same shape.
        - Output: scalar, or the input's shape with ``'none'``.

    Example::

        >>> import torch
        >>> from compile_losses.losses import BCEWithLogitsLoss
        >>> BCEWithLogitsLoss()(torch.zeros(2), torch.tensor([0.0, 1.0]))
        tensor(0.6931)
    """

    pos_weight: Optional[Tensor]

    def __init__(self, pos_weight: Optional[Tensor] = None, reduction: str = "mean") -> None:
        super().__init__(reduction)
        _optional_buffer(self, "pos_weight", pos_weight)

    def forward(self, input: Tensor, target: Tensor, weight: Optional[Tensor] = None) -> Tensor:
        return F.bce_with_logits_loss(
            input, target, weight=weight, pos_weight=self.pos_weight, reduction=self.reduction
        )


# ---------------------------------------------------------------------------------------------
# dense prediction
# ---------------------------------------------------------------------------------------------
class DiceLoss(_Loss):
    r"""Soft Dice loss on logits, one value per sample (Milletari et al., 2016, V-Net).

    .. math::
        \ell_n = 1 - \frac{2 \sum_i p_{n,i} y_{n,i} + s}{\sum_i p_{n,i} + \sum_i y_{n,i} + s},
        \quad p = \sigma(x)

    where :math:`i` runs over every non-batch element (channels and pixels); with ``squared_pred``
    the denominator is Milletari's :math:`\sum_i p_{n,i}^2 + \sum_i y_{n,i}^2`. An empty target
    with an empty prediction scores 0 with ``smooth > 0`` (:math:`1 - s/s`); with ``smooth=0`` an
    empty target scores 1 whatever the prediction (the limit of :math:`1 - 0/\sum_i p_{n,i}`, also
    where the probabilities underflow to exactly 0), with finite gradients.

    Args:
        smooth (float, optional): :math:`s`, >= 0; > 0 makes an empty mask predicted empty a
            perfect score. Default: 1.0.
        squared_pred (bool, optional): square :math:`p` and :math:`y` in the denominator (V-Net's
            form; MONAI's ``squared_pred``). Default: False.
        ignore_index (int, optional): a target value (e.g. 255) whose elements count nowhere
            (neither prediction nor target). Default: None.
        reduction (str, optional): ``'none'`` | ``'mean'`` | ``'sum'``. Default: ``'mean'``.

    Shape:
        - Input: ``(N, ...)`` logits, at least 2-D. Target: the same shape, in [0, 1].
        - Output: scalar, or ``(N,)`` with ``'none'``.

    Example::

        >>> import torch
        >>> from compile_losses.losses import DiceLoss
        >>> DiceLoss(smooth=0.0)(torch.full((1, 4), 50.0), torch.ones(1, 4))
        tensor(0.)
    """

    __constants__ = ["reduction", "smooth", "squared_pred"]
    smooth: float
    squared_pred: bool
    ignore_index: Optional[int]

    def __init__(self, smooth: float = 1.0, squared_pred: bool = False, ignore_index: Optional[int] = None,
                 reduction: str = "mean") -> None:
        super().__init__(reduction)
        check_non_negative(smooth, "smooth")
        self.smooth = float(smooth)
        self.squared_pred = bool(squared_pred)
        self.ignore_index = None if ignore_index is None else int(ignore_index)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.dice_loss(input, target, smooth=self.smooth, squared_pred=self.squared_pred,
                           ignore_index=self.ignore_index, reduction=self.reduction)


class TverskyLoss(_Loss):
    r"""Tversky loss on logits, one value per sample (Salehi et al., 2017).

    .. math::
        \ell_n = 1 - \frac{TP + s}{TP + \alpha FP + \beta FN + s},\quad
        TP = \textstyle\sum p y,\ FP = \sum p (1 - y),\ FN = \sum (1 - p) y

    With ``alpha = beta = 0.5`` it is the soft Dice loss with ``smooth`` doubled:
    ``TverskyLoss(0.5, 0.5, smooth=s)`` equals ``DiceLoss(smooth=2 * s)``. With ``smooth=0`` a
    zero denominator (an empty target, probabilities that underflow to 0) is its limit: index 0,
    loss 1, finite gradients.

    Args:
        alpha (float, optional): weight of false positives, >= 0. Default: 0.5.
        beta (float, optional): weight of false negatives, >= 0. Default: 0.5.
        smooth (float, optional): :math:`s`, >= 0. Default: 1.0.
        ignore_index (int, optional): a target value whose elements count nowhere. Default: None.
        reduction (str, optional): ``'none'`` | ``'mean'`` | ``'sum'``. Default: ``'mean'``.

    Shape:
        - Input: ``(N, ...)`` logits, at least 2-D. Target: the same shape, in [0, 1].
        - Output: scalar, or ``(N,)`` with ``'none'``.

    Example::

        >>> import torch
        >>> from compile_losses.losses import TverskyLoss
        >>> TverskyLoss(smooth=0.0)(torch.full((1, 4), 50.0), torch.ones(1, 4))
        tensor(0.)
    """

    __constants__ = ["reduction", "alpha", "beta", "smooth"]
    alpha: float
    beta: float
    smooth: float
    ignore_index: Optional[int]

    def __init__(self, alpha: float = 0.5, beta: float = 0.5, smooth: float = 1.0, ignore_index: Optional[int] = None,
                 reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        check_non_negative(alpha, "alpha")
        check_non_negative(beta, "beta")
        check_non_negative(smooth, "smooth")
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.smooth = float(smooth)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.tversky_loss(
            input, target, alpha=self.alpha, beta=self.beta, smooth=self.smooth, ignore_index=self.ignore_index,
            reduction=self.reduction,
        )


def _check_average(average: str, choices: List[str]) -> str:
    if average not in choices:
        raise ValueError("average must be one of {}, got '{}'".format(", ".join(["'" + c + "'" for c in choices]), average))
    return average


class MultiClassDiceLoss(_Loss):
    r"""Multi-class soft Dice (or Jaccard) loss on class logits, one value per sample
    (Milletari et al., 2016; Sudre et al., 2017, for the generalized form).

    With :math:`p = \mathrm{softmax}(x)` over dim 1 and :math:`t` the one-hot target, per sample
    :math:`n` and class :math:`c` (sums over the pixels :math:`i`):

    .. math::
        I_{nc} = \textstyle\sum_i p_{nci} t_{nci},\quad
        S_{nc} = \sum_i p_{nci}^{(2)} + \sum_i t_{nci}^{(2)},\quad
        D_{nc} = \frac{2 I_{nc} + s}{S_{nc} + s}\ \Big(\text{Jaccard: } \frac{I_{nc} + s}{S_{nc} - I_{nc} + s}\Big)

    (squares only with ``squared_pred``, Milletari's denominator). ``average``:

    - ``'macro'``: :math:`\ell_n = 1 - \sum_c w_c D_{nc} / \sum_c w_c`, each class counts alike
      (MONAI's ``DiceLoss`` with softmax, one-hot target and ``reduction='mean'``);
    - ``'micro'``: the sums are pooled over classes (weighted by :math:`w_c`) before the ratio;
    - ``'generalized'``: pooled with weights :math:`w_c / (\sum_i t_{nci})^2` per sample
      (Sudre's Generalized Dice); a class absent from a sample gets that sample's largest weight,
      as MONAI's ``GeneralizedDiceLoss`` does.

    A class absent from both target and prediction scores :math:`s/s = 1` (loss 0) with
    ``smooth > 0``; with ``smooth=0`` a zero denominator is the limit, score 0 (loss 1), finite
    gradients. Softmax probabilities are never exactly 0, so with a small ``smooth`` an absent class
    costs up to 1 in ``'macro'`` (segmentation_models_pytorch instead drops classes absent from the
    target; ``'micro'`` and ``'generalized'`` are the usual answers).

    Args:
        weight (Tensor, optional): per-class weights :math:`w`, ``(C,)``. Default: None (all 1).
        smooth (float, optional): :math:`s`, >= 0. Default: 1.0.
        average (str, optional): ``'macro'`` | ``'micro'`` | ``'generalized'``. Default: ``'macro'``.
        include_background (bool, optional): False leaves class 0 out. Default: True.
        ignore_index (int, optional): an index target value whose pixels count nowhere (neither
            prediction nor target). Probability targets have no ignored pixels. Default: -100.
        squared_pred (bool, optional): square :math:`p` and :math:`t` in the denominator. Default: False.
        jaccard (bool, optional): the soft Jaccard (IoU) index instead of Dice. Default: False.
        log_loss (bool, optional): :math:`-\log D` instead of :math:`1 - D` (per class, then
            averaged, in ``'macro'``), with :math:`D` floored at 1e-7 as segmentation_models_pytorch
            does. Default: False.
        reduction (str, optional): ``'none'`` | ``'mean'`` | ``'sum'``; ``'mean'`` is the batch mean.
            Default: ``'mean'``.

    Shape:
        - Input: ``(N, C, d1, ...)`` or ``(N, C)`` logits.
        - Target: ``(N, d1, ...)`` int64 class indices, or class probabilities (one-hot) of the
          input's shape and dtype.
        - Output: scalar, or ``(N,)`` with ``'none'``.

    Example::

        >>> import torch
        >>> from compile_losses.losses import MultiClassDiceLoss
        >>> logits = torch.tensor([[[50.0, -50.0], [-50.0, 50.0]]])  # (N=1, C=2, 2 pixels)
        >>> MultiClassDiceLoss(smooth=0.0)(logits, torch.tensor([[0, 1]]))
        tensor(0.)
    """

    __constants__ = ["reduction", "smooth", "average", "include_background", "ignore_index", "squared_pred", "jaccard",
                     "log_loss"]
    smooth: float
    average: str
    include_background: bool
    ignore_index: int
    squared_pred: bool
    jaccard: bool
    log_loss: bool
    weight: Optional[Tensor]

    def __init__(self, weight: Optional[Tensor] = None, smooth: float = 1.0, average: str = "macro",
                 include_background: bool = True, ignore_index: int = -100, squared_pred: bool = False,
                 jaccard: bool = False, log_loss: bool = False, reduction: str = "mean") -> None:
        super().__init__(reduction)
        check_non_negative(smooth, "smooth")
        self.average = _check_average(average, ["macro", "micro", "generalized"])
        _optional_buffer(self, "weight", weight)
        self.smooth = float(smooth)
        self.include_background = bool(include_background)
        self.ignore_index = int(ignore_index)
        self.squared_pred = bool(squared_pred)
        self.jaccard = bool(jaccard)
        self.log_loss = bool(log_loss)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.multiclass_dice_loss(
            input, target, weight=self.weight, smooth=self.smooth, average=self.average,
            include_background=self.include_background, ignore_index=self.ignore_index,
            squared_pred=self.squared_pred, jaccard=self.jaccard, log_loss=self.log_loss, reduction=self.reduction,
        )


class MultiClassTverskyLoss(_Loss):
    r"""Multi-class Tversky and focal Tversky loss on class logits, one value per sample
    (Salehi et al., 2017; Abraham and Khan, 2019).

    With :math:`p = \mathrm{softmax}(x)` over dim 1, :math:`t` the one-hot target and sums over
    the pixels of sample :math:`n`, class :math:`c`: :math:`TP = \sum p t`,
    :math:`FP = \sum p (1 - t)`, :math:`FN = \sum (1 - p) t` and

    .. math::
        T_{nc} = \frac{TP + s}{TP + \alpha FP + \beta FN + s},\quad
        \ell_n = \frac{\sum_c w_c (1 - T_{nc})^\gamma}{\sum_c w_c}\ (\text{'macro'}),\quad
        \ell_n = (1 - T_n)^\gamma\ (\text{'micro'})

    where ``'micro'`` pools :math:`w_c`-weighted TP, FP, FN over classes first. The exponent is
    applied as :math:`(1 - T)^\gamma`, as segmentation_models_pytorch does; Abraham and Khan write
    :math:`1/\gamma`. With ``alpha = beta = 0.5`` and ``gamma = 1`` it is
    :class:`MultiClassDiceLoss` with ``smooth`` doubled. Empty classes as in :class:`MultiClassDiceLoss`.

    Args:
        weight (Tensor, optional): per-class weights :math:`w`, ``(C,)``. Default: None (all 1).
        alpha (float, optional): weight of false positives, >= 0. Default: 0.5.
        beta (float, optional): weight of false negatives, >= 0. Default: 0.5.
        gamma (float, optional): focal exponent, > 0 (1: plain Tversky). Default: 1.0.
        smooth (float, optional): :math:`s`, >= 0. Default: 1.0.
        average (str, optional): ``'macro'`` | ``'micro'``. Default: ``'macro'``.
        include_background (bool, optional): False leaves class 0 out. Default: True.
        ignore_index (int, optional): an index target value whose pixels count nowhere. Default: -100.
        reduction (str, optional): ``'none'`` | ``'mean'`` | ``'sum'``; ``'mean'`` is the batch mean.
            Default: ``'mean'``.

    Shape:
        - Input: ``(N, C, d1, ...)`` or ``(N, C)`` logits.
        - Target: ``(N, d1, ...)`` int64 class indices, or class probabilities of the input's shape.
        - Output: scalar, or ``(N,)`` with ``'none'``.

    Example::

        >>> import torch
        >>> from compile_losses.losses import MultiClassTverskyLoss
        >>> logits = torch.tensor([[[50.0, -50.0], [-50.0, 50.0]]])
        >>> MultiClassTverskyLoss(alpha=0.3, beta=0.7, gamma=2.0)(logits, torch.tensor([[0, 1]]))
        tensor(0.)
    """

    __constants__ = ["reduction", "alpha", "beta", "gamma", "smooth", "average", "include_background", "ignore_index"]
    alpha: float
    beta: float
    gamma: float
    smooth: float
    average: str
    include_background: bool
    ignore_index: int
    weight: Optional[Tensor]

    def __init__(self, weight: Optional[Tensor] = None, alpha: float = 0.5, beta: float = 0.5, gamma: float = 1.0,
                 smooth: float = 1.0, average: str = "macro", include_background: bool = True,
                 ignore_index: int = -100, reduction: str = "mean") -> None:
        super().__init__(reduction)
        check_non_negative(alpha, "alpha")
        check_non_negative(beta, "beta")
        check_positive(gamma, "gamma")
        check_non_negative(smooth, "smooth")
        self.average = _check_average(average, ["macro", "micro"])
        _optional_buffer(self, "weight", weight)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.gamma = float(gamma)
        self.smooth = float(smooth)
        self.include_background = bool(include_background)
        self.ignore_index = int(ignore_index)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.multiclass_tversky_loss(
            input, target, weight=self.weight, alpha=self.alpha, beta=self.beta, gamma=self.gamma,
            smooth=self.smooth, average=self.average, include_background=self.include_background,
            ignore_index=self.ignore_index, reduction=self.reduction,
        )


# ---------------------------------------------------------------------------------------------
# distributions
# ---------------------------------------------------------------------------------------------
class KLDivLoss(_Loss):
    r"""Kullback-Leibler divergence :math:`KL(y \,\|\, q)` with :math:`\log q` as input, one value
    per sample.

    .. math::
        \ell_n = \sum_i y_{n,i} (\log y_{n,i} - x_{n,i})

    (with :math:`0 \log 0 = 0`). ``'mean'`` is the batch mean, ``F.kl_div``'s ``'batchmean'``;
    ``'sum'`` equals its ``'sum'``.

    Args:
        log_target (bool, optional): the target is given as log-probabilities. Default: False.
        reduction (str, optional): ``'none'`` | ``'mean'`` | ``'sum'``. Default: ``'mean'``.

    Shape:
        - Input: ``(N, C, ...)`` log-probabilities. Target: the same shape.
        - Output: scalar, or ``(N,)`` with ``'none'``.

    Example::

        >>> import torch
        >>> from compile_losses.losses import KLDivLoss
        >>> p = torch.tensor([[0.5, 0.5]])
        >>> KLDivLoss()(p.log(), p)
        tensor(0.)
    """

    __constants__ = ["reduction", "log_target"]
    log_target: bool

    def __init__(self, log_target: bool = False, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.log_target = bool(log_target)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.kl_div_loss(input, target, log_target=self.log_target, reduction=self.reduction)


# ---------------------------------------------------------------------------------------------
# metric learning
# ---------------------------------------------------------------------------------------------
class InfoNCELoss(_Loss):
    r"""InfoNCE contrastive loss, CLIP-style: each anchor (row of the input) must pick its own
    positive out of the batch's targets (van den Oord et al., 2018; Radford et al., 2021, CLIP).

    .. math::
        \ell_n = -\log \frac{\exp(\cos(x_n, y_n)/\tau)}{\sum_m \exp(\cos(x_n, y_m)/\tau)}

    The negatives of anchor :math:`n` are the :math:`N - 1` other targets only (cross-view). This is
    not SimCLR's NT-Xent, which also counts the other anchors (:math:`2N - 2` negatives, same view
    included): use :class:`NTXentLoss` for that. ``symmetric`` averages both directions (as CLIP does).

    With ``negatives`` passed to ``forward`` (info-nce-pytorch's ``negative_keys``) the negatives
    are those instead of the other targets: ``(M, D)`` shared by every anchor (``'unpaired'``) or
    ``(N, M, D)``, :math:`M` per anchor (``'paired'``):
    :math:`\ell_n = -\log \frac{e^{\cos(x_n, y_n)/\tau}}{e^{\cos(x_n, y_n)/\tau} + \sum_m e^{\cos(x_n, k_{(n)m})/\tau}}`.

    Args:
        temperature (float, optional): :math:`\tau`, > 0. Default: 0.1.
        symmetric (bool, optional): average anchor-to-positive and positive-to-anchor. Default: False.
        reduction (str, optional): ``'none'`` | ``'mean'`` | ``'sum'``. Default: ``'mean'``.

    Shape:
        - Input (anchors) and target (positives): ``(N, D)`` embeddings.
        - Negatives (optional): ``(M, D)`` or ``(N, M, D)``, the input's dtype.
        - Output: scalar, or ``(N,)`` with ``'none'``.

    Example::

        >>> import torch
        >>> from compile_losses.losses import InfoNCELoss
        >>> e = torch.eye(3)
        >>> InfoNCELoss(temperature=0.01)(e, e)
        tensor(0.)
    """

    __constants__ = ["reduction", "temperature", "symmetric"]
    temperature: float
    symmetric: bool

    def __init__(self, temperature: float = 0.1, symmetric: bool = False, reduction: str = "mean") -> None:
        super().__init__(reduction)
        check_positive(temperature, "temperature")
        self.temperature = float(temperature)
        self.symmetric = bool(symmetric)

    def forward(self, input: Tensor, target: Tensor, negatives: Optional[Tensor] = None) -> Tensor:
        return F.info_nce_loss(
            input, target, negatives=negatives, temperature=self.temperature, symmetric=self.symmetric,
            reduction=self.reduction,
        )


class NTXentLoss(_Loss):
    r"""NT-Xent, SimCLR's normalized temperature-scaled cross-entropy (Chen et al., 2020): the two
    views :math:`x_n, y_n` of each sample are positives, every other embedding of either view a
    negative (:math:`2N - 2` of them, same-view ones included).

    With :math:`z = (x_1, \dots, x_N, y_1, \dots, y_N)`, :math:`s_{ij} = \cos(z_i, z_j) / \tau`
    and :math:`p(i)` the other view of :math:`i`:

    .. math::
        \ell_n = \tfrac12 \big(L_n + L_{n+N}\big),\quad
        L_i = -\log \frac{\exp(s_{i, p(i)})}{\sum_{k \ne i} \exp(s_{ik})}

    so ``'mean'`` is SimCLR's mean over the :math:`2N` views (pytorch-metric-learning's
    ``NTXentLoss`` on labels ``cat([arange(N), arange(N)])``). :class:`InfoNCELoss` is the CLIP-style
    loss with only the :math:`N - 1` cross-view negatives.

    Args:
        temperature (float, optional): :math:`\tau`, > 0. Default: 0.1.
        reduction (str, optional): ``'none'`` | ``'mean'`` | ``'sum'``. Default: ``'mean'``.

    Shape:
        - Input and target (the two views): ``(N, D)`` embeddings.
        - Output: scalar, or ``(N,)`` with ``'none'``.

    Example::

        >>> import torch
        >>> from compile_losses.losses import NTXentLoss
        >>> e = torch.eye(2)
        >>> NTXentLoss(temperature=1.0)(e, e)  # log(2 + e) - 1
        tensor(0.5514)
    """

    __constants__ = ["reduction", "temperature"]
    temperature: float

    def __init__(self, temperature: float = 0.1, reduction: str = "mean") -> None:
        super().__init__(reduction)
        check_positive(temperature, "temperature")
        self.temperature = float(temperature)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.nt_xent_loss(input, target, temperature=self.temperature, reduction=self.reduction)


class SupConLoss(_Loss):
    r"""Supervised contrastive loss (Khosla et al., 2020): every other embedding with the same
    label is a positive, every other embedding a candidate (pytorch-metric-learning's
    ``SupConLoss`` on ``(N, D)`` embeddings and labels).

    With :math:`s_{ij} = \cos(x_i, x_j) / \tau` and :math:`P(i) = \{j \ne i : y_j = y_i\}`:

    .. math::
        \ell_i = -\frac{1}{|P(i)|} \sum_{j \in P(i)} \log \frac{\exp(s_{ij})}{\sum_{k \ne i} \exp(s_{ik})}

    An anchor without positives has :math:`\ell_i = 0` and ``'mean'`` averages over the anchors
    that have one: 0, with zero gradient, when none has (a batch of distinct labels), as
    pytorch-metric-learning returns.

    Args:
        temperature (float, optional): :math:`\tau`, > 0. Default: 0.1.
        reduction (str, optional): ``'none'`` | ``'mean'`` | ``'sum'``. Default: ``'mean'``.

    Shape:
        - Input: ``(N, D)`` embeddings. Target: ``(N,)`` int64 labels.
        - Output: scalar, or ``(N,)`` with ``'none'``.

    Example::

        >>> import torch
        >>> from compile_losses.losses import SupConLoss
        >>> x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
        >>> SupConLoss(temperature=1.0, reduction="none")(x, torch.tensor([0, 0, 1]))  # log(1 + e^-1)
        tensor([0.3133, 0.3133, 0.0000])
    """

    __constants__ = ["reduction", "temperature"]
    temperature: float

    def __init__(self, temperature: float = 0.1, reduction: str = "mean") -> None:
        super().__init__(reduction)
        check_positive(temperature, "temperature")
        self.temperature = float(temperature)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.sup_con_loss(input, target, temperature=self.temperature, reduction=self.reduction)


class TripletMarginLoss(_Loss):
    r"""Triplet margin loss :math:`\ell_n = \max(d(a_n, p_n) - d(a_n, n_n) + m, 0)` with
    :math:`d(x, y) = \|x - y + \epsilon\|_p`. Equal to ``F.triplet_margin_loss``.

    Args:
        margin (float, optional): :math:`m`, > 0. Default: 1.0.
        p (float, optional): the norm degree, > 0. Default: 2.0.
        eps (float, optional): added inside the norm, >= 0. Default: 1e-6.
        swap (bool, optional): use the smaller of :math:`d(a, n)` and :math:`d(p, n)`. Default: False.
        reduction (str, optional): ``'none'`` | ``'mean'`` | ``'sum'``. Default: ``'mean'``.

    Shape:
        - Input (anchors), positive, negative: ``(N, D)``.
        - Output: scalar, or ``(N,)`` with ``'none'``.

    Example::

        >>> import torch
        >>> from compile_losses.losses import TripletMarginLoss
        >>> a = torch.zeros(1, 2)
        >>> TripletMarginLoss(margin=1.0, eps=0.0)(a, a, torch.tensor([[3.0, 4.0]]))
        tensor(0.)
    """

    __constants__ = ["reduction", "margin", "p", "eps", "swap"]
    margin: float
    p: float
    eps: float
    swap: bool

    def __init__(
        self, margin: float = 1.0, p: float = 2.0, eps: float = 1e-6, swap: bool = False, reduction: str = "mean"
    ) -> None:
        super().__init__(reduction)
        check_positive(margin, "margin")
        check_positive(p, "p")
        check_non_negative(eps, "eps")
        self.margin = float(margin)
        self.p = float(p)
        self.eps = float(eps)
        self.swap = bool(swap)

    def forward(self, input: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
        return F.triplet_margin_loss(
            input, positive, negative, margin=self.margin, p=self.p, eps=self.eps, swap=self.swap,
            reduction=self.reduction,
        )


class CosineEmbeddingLoss(_Loss):
    r"""Cosine embedding loss: pull pairs labelled +1 together, push pairs labelled -1 below a
    cosine ``margin``. Equal to ``F.cosine_embedding_loss``.

    .. math::
        \ell_n = \begin{cases} 1 - \cos(x_n, o_n) & y_n = 1 \\
                 \max(0, \cos(x_n, o_n) - m) & y_n = -1 \end{cases}

    Args:
        margin (float, optional): :math:`m` in [-1, 1]. Default: 0.0.
        reduction (str, optional): ``'none'`` | ``'mean'`` | ``'sum'``. Default: ``'mean'``.

    Shape:
        - Input and other: ``(N, D)``. Target: ``(N,)`` of +1/-1, the input's dtype.
        - Output: scalar, or ``(N,)`` with ``'none'``.

    Example::

        >>> import torch
        >>> from compile_losses.losses import CosineEmbeddingLoss
        >>> x = torch.tensor([[1.0, 0.0]])
        >>> CosineEmbeddingLoss()(x, x, torch.tensor([1.0]))
        tensor(0.)
    """

    __constants__ = ["reduction", "margin"]
    margin: float

    def __init__(self, margin: float = 0.0, reduction: str = "mean") -> None:
        super().__init__(reduction)
        check_in_closed_interval(margin, "margin", -1.0, 1.0)
        self.margin = float(margin)

    def forward(self, input: Tensor, other: Tensor, target: Tensor) -> Tensor:
        return F.cosine_embedding_loss(input, other, target, margin=self.margin, reduction=self.reduction)
