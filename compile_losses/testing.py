"""Parity inside your own tests.

    from compile_losses.testing import assert_parity
    assert_parity(net, loss, x, target, backends="eager,script,onnx")

:func:`assert_parity` runs :func:`compile_losses.verify` and raises ``AssertionError`` whose
message is the failing rows' table (every failing output, what it says, and a one-line verdict);
it returns the :class:`~compile_losses.parity.ParityReport` when every row passes. The pytest
plugin (:mod:`compile_losses.pytest_plugin`) wraps it as the ``parity`` fixture. Importing this
module imports nothing heavy: torch and the backends load on the first call.
"""
from typing import TYPE_CHECKING, Any, Sequence, Union

if TYPE_CHECKING:  # pragma: no cover
    from .parity import ParityReport

__all__ = ["assert_parity", "ParityAssertionError"]


class ParityAssertionError(AssertionError):
    """An ``AssertionError`` that carries the whole report (``.report``) besides its table."""

    def __init__(self, message: str, report: "ParityReport") -> None:
        super().__init__(message)
        self.report = report


def assert_parity(net: Any, loss: Any, inputs: Any, target: Any,
                  backends: Union[None, str, Sequence[str]] = None, **verify_options: Any) -> "ParityReport":
    """Verify (``net``, ``loss``) on ``inputs`` and ``target`` through ``backends`` (a list or
    ``"a,b"``; default every backend) and raise :class:`ParityAssertionError` (an
    ``AssertionError``) if any row fails. ``verify_options`` go to :func:`compile_losses.verify`
    (``lr``, ``label``, ``spec``, ``audit``, ``strict_audit``, ...). Backends that cannot run
    here are rows that say why, never passes, and do not fail the assertion."""
    from .parity import verify

    report = verify(net, loss, inputs, target, backends=backends, **verify_options)
    if not report.ok:
        raise ParityAssertionError("parity failed\n" + report.failure_text(), report)
    return report
