"""A pytest plugin (``-p extra_backend``) that registers one more backend adapter before collection:
``torch.compile`` with dynamo's ``aot_eager_decomp_partition`` backend (autograd traced, decomposed
and partitioned, no inductor). tests/test_add_backend.py runs the generic suites with it to show
that a new adapter needs no edit anywhere else. Importing this module registers nothing (pytest
imports every file under tests/ for doctests); loading it as a plugin does."""
from compile_losses.backends import BACKENDS, Backend, register
from compile_losses.backends.compile import CompileBackend

NAME = "compile-decomp"


def adapter() -> Backend:
    return CompileBackend(NAME, compiler="aot_eager_decomp_partition", cost=1.0)


def pytest_configure(config: object) -> None:
    if NAME not in BACKENDS:
        register(adapter())
