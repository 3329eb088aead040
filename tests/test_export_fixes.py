"""What the zoo (tests/zoo_table.py) found wrong in the export pipeline, each pinned by a small
loss written the way the library wrote it, so these run without the zoo's libraries:

* info_nce: ``torch.arange(len(query))`` reads the batch as a Python int; the exporter's
  non-strict capture specialized it and silently wrote a graph for the example batch only.
* F.cross_entropy's gradient graph: the exporter's ``nll_loss_forward`` returns ``total_weight``
  as the constant 1, so a "mean" gradient came out batch-size times too large.
* pytorch_msssim: ``x.squeeze(dim=d)`` of a dim whose size is not 1 (a no-op) became an ONNX
  Squeeze that onnxruntime refuses.
* kornia's PSNR: the exporter decomposes ``mse_loss_backward`` into ``aten.sym_numel``, which has
  no ONNX form, so F.mse_loss's gradient graph did not export.
* monai: a failure inside the user's code (``.tolist()`` while tracing the gradient) names the
  user's line, found in the traceback when the message has none.
"""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.testing import assert_close

from compile_losses.backends import BACKENDS
from compile_losses.errors import ExportUnsupportedError
from compile_losses.training import trace_loss_and_grad

pytestmark = pytest.mark.onnx


class LenLabels(nn.Module):
    """InfoNCE without negatives: the diagonal of the query-key similarities is the positive."""

    def forward(self, query: Tensor, key: Tensor) -> Tensor:
        logits = query @ key.transpose(0, 1)
        return F.cross_entropy(logits / 0.1, torch.arange(len(query)))


class SqueezeTrailing(nn.Module):
    """pytorch_msssim's habit: squeeze every trailing dim (a no-op where its size is not 1)."""

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        for d in range(len(x.shape) - 1, 1, -1):
            x = x.squeeze(dim=d)
            y = y.squeeze(dim=d)
        return ((x - y) ** 2).mean()


class ToListAxes(nn.Module):
    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        axes = torch.arange(1, pred.dim()).tolist()  # monai's reduce_axis
        return ((pred - target) ** 2).sum(axes).mean()


def _grad(loss: nn.Module, pred: Tensor, *targets: Tensor):
    leaf = pred.detach().clone().requires_grad_(True)
    value = loss(leaf, *targets)
    value.backward()
    return value.detach(), leaf.grad


def _pair(n: int, *shape: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=gen), torch.randn(n, *shape, generator=gen)


def test_a_loss_that_reads_the_batch_as_an_int_exports_with_a_dynamic_batch() -> None:
    loss = LenLabels()
    forward = BACKENDS["onnx"].prepare(loss, _pair(4, 8))
    lg = BACKENDS["onnx"].prepare_loss_and_grad(loss, _pair(4, 8))
    for n in (2, 5, 9):  # one graph of each, any batch
        q, k = _pair(n, 8, seed=n)
        value, grad = _grad(loss, q, k)
        assert_close(forward(q, k), value)
        got_value, got_grad = lg(q, k)
        assert_close(got_value, value)
        assert_close(got_grad, grad)


def test_cross_entropy_mean_gradient_is_not_scaled_by_the_batch() -> None:
    loss = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(1)
    pred, target = torch.randn(4, 3, generator=gen), torch.randint(0, 3, (4,), generator=gen)
    lg = BACKENDS["onnx"].prepare_loss_and_grad(loss, (pred, target))
    for n in (1, 5):
        p, t = torch.randn(n, 3, generator=gen), torch.randint(0, 3, (n,), generator=gen)
        _, grad = _grad(loss, p, t)
        # softmax - one-hot, over the batch: written out, not taken from autograd
        expected = (torch.softmax(p, 1) - F.one_hot(t, 3).float()) / n
        assert_close(grad, expected)
        assert_close(lg(p, t)[1], expected)


def test_mse_loss_gradient_graph_exports_with_a_dynamic_batch() -> None:
    loss = nn.MSELoss()
    lg = BACKENDS["onnx"].prepare_loss_and_grad(loss, _pair(4, 1, 8, 8))
    for n in (1, 3):
        p, t = _pair(n, 1, 8, 8, seed=n)
        got_value, got_grad = lg(p, t)
        assert_close(got_value, ((p - t) ** 2).mean())
        assert_close(got_grad, 2 * (p - t) / p.numel())  # written out


def test_a_no_op_squeeze_exports_as_identity() -> None:
    loss = SqueezeTrailing()
    x, y = _pair(2, 1, 8, 8)
    forward = BACKENDS["onnx"].prepare(loss, (x, y))
    lg = BACKENDS["onnx"].prepare_loss_and_grad(loss, (x, y))
    x, y = _pair(3, 1, 8, 8, seed=2)
    value, grad = _grad(loss, x, y)
    assert_close(forward(x, y), value)
    assert_close(lg(x, y)[1], grad)


def test_a_gradient_graph_failure_inside_user_code_names_the_line() -> None:
    with pytest.raises(ExportUnsupportedError) as info:
        trace_loss_and_grad(ToListAxes(), _pair(4, 3))
    where = info.value.source or ""
    line = next(i for i, text in enumerate(Path(__file__).read_text().splitlines(), 1) if "monai's reduce_axis" in text)
    assert where.startswith("{}:{}:".format(__file__, line)) and ".tolist()" in where, where
    assert where in str(info.value)
