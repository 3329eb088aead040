"""Backends as pytest parameters, marked from the facts each adapter declares (its ``markers``;
``slow`` for the costly builds), so a new adapter joins every generic test without an edit here."""
from typing import Any, Callable, List

import pytest

from compile_losses.backends import BACKENDS, Backend

# Seconds per preparation from which a backend's generic tests run only with --run-slow (CI), and
# from which its cases beyond the representative ones are exhaustive: inductor builds (~10 s).
SLOW_COST = 5.0


def backend_marks(backend: Backend) -> List[Any]:
    marks = [getattr(pytest.mark, m) for m in backend.markers]
    if backend.cost >= SLOW_COST:  # inductor and AOTInductor builds: CI runs them
        marks.append(pytest.mark.slow)
    return marks


def backend_params(select: Callable[[Backend], bool] = lambda b: True) -> List[Any]:
    """``pytest.param(name)`` for every registered backend that ``select`` keeps."""
    return [pytest.param(name, marks=backend_marks(b), id=name) for name, b in BACKENDS.items() if select(b)]
