"""Adding a loss is its function, its module and one registry entry: shown with a loss that exists
only in this test module.

The fixture inserts the entry into ``compile_losses.registry.LOSSES`` for one test and removes it
after; each test then runs the very same generic checks the registry's own losses get (they read
every per-loss fact from the entry): sample inputs against the float64 reference, error inputs,
reductions and the ``"none"`` shape, empty batches, gradcheck, TorchScript, ``torch.compile
(fullgraph=True)`` and ONNX (forward and loss-and-gradient graphs) through the backend adapters,
and the hypothesis properties. Nothing else in the project (tests/strategies.py, tables in tests)
needs to know the loss.
"""
from typing import Iterator

import pytest
import torch
from torch import Tensor, nn

import test_losses_registry as generic
import test_properties as properties
import test_property_backends as backend_properties
from compile_losses import registry
from compile_losses._checks import check_floating, check_positive, check_same_dtype, check_same_shape
from compile_losses._reduction import REDUCTIONS, apply_reduction, validate_reduction

NAME = "test_only_cauchy"
fresh_dynamo = generic.fresh_dynamo  # the generic tests' fixture, used here too


# ---------------------------------------------------------------------------------------------
# the loss: its function and its module, as functional.py / losses.py would hold them
# ---------------------------------------------------------------------------------------------
def cauchy_loss(input: Tensor, target: Tensor, scale: float = 1.0, reduction: str = "mean") -> Tensor:
    """Cauchy (Lorentzian) loss ``log(1 + ((x - y) / c)^2)``; test-only."""
    validate_reduction(reduction)
    check_positive(scale, "scale")
    check_floating(input, "input")
    check_same_dtype(input, target, "input", "target")
    check_same_shape(input, target, "input", "target")
    d = (input - target) / scale
    return apply_reduction(torch.log1p(d * d), reduction)


class CauchyLoss(nn.Module):
    r"""Cauchy loss :math:`\ell_n = \log(1 + ((x_n - y_n) / c)^2)` (test-only).

    Shape:
        - Input and target: the same shape. Output: scalar, or the input's shape with ``'none'``.

    Example::

        >>> import torch
        >>> CauchyLoss(reduction="none")(torch.tensor([0.0]), torch.tensor([0.0]))
        tensor([0.])
    """

    __constants__ = ["reduction", "scale"]
    reduction: str
    scale: float

    def __init__(self, scale: float = 1.0, reduction: str = "mean") -> None:
        super().__init__()
        check_positive(scale, "scale")
        self.reduction = validate_reduction(reduction)
        self.scale = float(scale)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return cauchy_loss(input, target, scale=self.scale, reduction=self.reduction)


def _cauchy64(input: Tensor, target: Tensor, scale: float = 1.0, reduction: str = "mean") -> Tensor:
    # written apart from cauchy_loss: log of 1 + squared scaled residual, reduced by hand
    r = ((input - target) / scale) ** 2
    loss = torch.log(1.0 + r)
    return {"none": loss, "sum": loss.sum(), "mean": loss.mean()}[reduction]


# ---------------------------------------------------------------------------------------------
# its one registry entry
# ---------------------------------------------------------------------------------------------
SPEC = registry.LossSpec(
    NAME, "regression", CauchyLoss, cauchy_loss, 1, registry._like_randn, elementwise=True,
    variants=({}, {"scale": 0.5}), reference64=registry._in_float64(_cauchy64),
    error_inputs=registry._pair_errors() + [registry._hyper_error({"scale": 0.0}, r"scale must be > 0, got 0.0")],
    differentiable_targets=(0,), target_like_input=True,
)


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    assert NAME not in registry.LOSSES
    monkeypatch.setitem(registry.LOSSES, NAME, SPEC)
    assert generic.LOSSES is registry.LOSSES  # the generic tests read the same table
    yield NAME
    # monkeypatch removes the entry after the test


# ---------------------------------------------------------------------------------------------
# the generic checks, run for it
# ---------------------------------------------------------------------------------------------
VARIANTS = range(len(SPEC.variants))


def test_entry_states_every_fact(registered: str):
    generic.test_every_entry_states_its_per_loss_facts()
    generic.test_every_loss_has_error_inputs()
    generic.test_default_reduction_is_mean()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_sample_inputs_match_float64_reference(registered: str, dtype: torch.dtype):
    for index in VARIANTS:
        for reduction in REDUCTIONS:
            generic.test_matches_float64_reference(registered, index, reduction, dtype)


def test_error_inputs(registered: str):
    for index in range(len(SPEC.error_inputs)):
        for dtype in (torch.float32, torch.float64):
            generic.test_error_input_raises(registered, index, dtype)
        if SPEC.error_inputs[index].at == "call":
            generic.test_error_input_message_survives_torchscript(registered, index)


def test_reductions_shapes_empty_batches_dtypes(registered: str):
    for index in VARIANTS:
        generic.test_reductions_agree_and_none_keeps_documented_shape(registered, index)
    for reduction in REDUCTIONS:
        generic.test_empty_batch_behaves_as_torch(registered, reduction)
    generic.test_float32_in_float32_out(registered)


def test_gradcheck(registered: str):
    for index in VARIANTS:
        for reduction in REDUCTIONS:
            generic.test_gradcheck(registered, index, reduction)
    generic.test_gradcheck_noncontiguous(registered)
    generic.test_gradgradcheck(registered, 0, "mean")


@pytest.mark.script
def test_script(registered: str):
    for reduction in REDUCTIONS:
        generic.test_torchscript_matches_eager(registered, 0, reduction)


@pytest.mark.compile
def test_compile_fullgraph(registered: str, fresh_dynamo):
    generic.test_compile_fullgraph_dynamic_matches_eager(registered, 0, "mean", None)
    generic.test_compile_inductor_matches_eager(registered, None)  # BACKENDS["compile-dynamo"]


@pytest.mark.onnx
def test_onnx_forward_and_loss_and_grad(registered: str):
    generic.test_onnx_dynamic_batch_matches_eager(registered, 1, "none")
    generic.test_onnx_loss_and_grad_graph_matches_eager(registered, 0, "mean")


def test_hypothesis_properties(registered: str):
    properties.test_finite_and_shaped(registered)
    properties.test_reductions_agree_with_none(registered)


@pytest.mark.script
def test_backend_property_script(registered: str):
    backend_properties._check("script", registered, slow=False, examples=10)


def test_entry_is_gone_after_the_fixture():
    assert NAME not in registry.LOSSES
