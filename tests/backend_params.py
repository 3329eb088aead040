"""Backends as pytest parameters, marked from the facts each adapter declares (its ``markers``;
``slow`` for the costly builds), so a new adapter joins every generic test without an edit here."""
from typing import Any, Callable, List

import pytest

from compile_losses.backends import BACKENDS, Backend


def backend_marks(backend: Backend) -> List[Any]:
    marks = [getattr(pytest.mark, m) for m in backend.markers]
    if backend.cost == "minutes" or backend.audited:  # AOTInductor builds and inductor compiles: CI runs them
        marks.append(pytest.mark.slow)
    return marks


def backend_params(select: Callable[[Backend], bool] = lambda b: True) -> List[Any]:
    """``pytest.param(name)`` for every registered backend that ``select`` keeps."""
    return [pytest.param(name, marks=backend_marks(b), id=name) for name, b in BACKENDS.items() if select(b)]
