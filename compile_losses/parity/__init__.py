"""Parity: each backend's loss value and gradients against eager, judged by a float64 reference.

The concerns live apart: :mod:`.rule` (the rule: :func:`judge`, the float64 copies of a case),
:mod:`.report` (rows, tables, JSON), :mod:`.verify` (one case through backends; the registry
matrix), :mod:`.audit` (the torch.compile audit) and :mod:`.progress`.

    report = verify(net, loss, inputs, target)        # one case, every backend
    report.ok, report.rows, report.summary(), report.to_json(), print(report)
"""
from .audit import AUDIT_BATCHES, COMPILER, USER, audit_rows, audited, compile_audit
from .progress import Progress
from .report import ParityReport, Row
from .rule import (ERROR, FAIL, FAILING, NONDET, NONFINITE, PASS, SKIPPED, ULPS, UNAVAILABLE, UNSUPPORTED,
                   float64_case, judge)
from .verify import verify, verify_registry

__all__ = ["AUDIT_BATCHES", "COMPILER", "USER", "audit_rows", "ERROR", "FAIL", "FAILING", "NONDET", "NONFINITE", "PASS", "ParityReport", "Progress",
           "Row", "SKIPPED", "ULPS", "UNAVAILABLE", "UNSUPPORTED", "audited", "compile_audit", "float64_case",
           "judge", "verify", "verify_registry"]
