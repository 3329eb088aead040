"""Dim 0 of an exported input is the batch only where it equals the prediction's: unpaired
InfoNCE negatives (M, D) get a dynamic dim of their own, so one graph takes any N and any M."""
import pytest
import torch
from torch.testing import assert_close

from compile_losses import losses as L
from compile_losses.backends import BACKENDS, export_example, structure_key

pytestmark = pytest.mark.onnx


def _case(n: int, m: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(s, 8, generator=gen) for s in (n, n, m))


@pytest.mark.parametrize("backend", ["onnx", "onnx-legacy"])
def test_unpaired_negatives_keep_a_dim_of_their_own(backend: str):
    loss = L.InfoNCELoss(reduction="none")
    run = BACKENDS[backend].prepare(loss, _case(4, 5, seed=0))
    for n, m in ((3, 5), (17, 2), (6, 6), (1, 40)):  # M = N and M != N from one graph
        args = _case(n, m, seed=n + m)
        with torch.no_grad():
            assert_close(run(*args), loss(*args))


def test_export_example_never_ties_an_input_of_its_own_to_the_batch():
    # negatives with M = 4 rows: the batch is traced at 5 rows, not the default 4
    example = export_example(_case(2, 4, seed=1))
    assert [t.shape[0] for t in example] == [5, 5, 4]
    # the gradient graphs (M static there) are keyed on M, so M = 5 and M = 7 never share one
    assert structure_key(L.InfoNCELoss(), _case(4, 5, 2)) != structure_key(L.InfoNCELoss(), _case(4, 7, 2))
    assert structure_key(L.InfoNCELoss(), _case(4, 5, 2)) == structure_key(L.InfoNCELoss(), _case(9, 5, 2))


def test_gradient_graph_of_unpaired_negatives_matches_eager_for_two_sizes_of_m():
    loss = L.InfoNCELoss()
    for m in (5, 7):
        args = _case(4, m, seed=m)
        value, grad = BACKENDS["onnx"].prepare_loss_and_grad(loss, args)(*_case(9, m, seed=m + 1))
        leaf = _case(9, m, seed=m + 1)[0].requires_grad_()
        expected = loss(leaf, *_case(9, m, seed=m + 1)[1:])
        (expected_grad,) = torch.autograd.grad(expected, leaf)
        assert_close(value, expected.detach())
        assert_close(grad, expected_grad)
