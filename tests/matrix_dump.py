"""Where the exhaustive matrices keep their rows: with ``COMPILE_LOSSES_MATRIX_JSON=<dir>`` set,
each exhaustive test writes its whole report there as ``<test id>.json`` (passing or not), so a
run of the full product leaves the rows the per-axis verdict table is counted from
(``python scripts/matrix_table.py <dir>``)."""
import os
import re

ENV = "COMPILE_LOSSES_MATRIX_JSON"


def dump(report, name: str) -> None:
    folder = os.environ.get(ENV, "").strip()
    if not folder:
        return
    os.makedirs(folder, exist_ok=True)
    report.to_json(os.path.join(folder, re.sub(r"[^A-Za-z0-9_.-]+", "_", name) + ".json"))


def full_grid():
    """The settings product of the exhaustive matrices: every onnxruntime level x threads (1, all
    cores), each under inductor's default rounding and under emulate_precision_casts=True (the
    backends that take neither run once; see compile_losses.parity.settings_runs)."""
    from compile_losses.sessions import OPT_LEVELS

    return [{"ort_opt_level": level, "ort_threads": threads, "emulate_precision_casts": emulate}
            for emulate in (False, True) for level in OPT_LEVELS for threads in (1, 0)]


def assert_matrix_ok(report) -> None:
    """The matrix verdict: no failing row under emulate_precision_casts=True, and a row failing
    under inductor's default rounding only where that setting changes its verdict (a sibling under
    the other setting passes) and the row says so (pytorch 158699: torch's issue, recorded, not hidden)."""
    from compile_losses.parity import ParityReport

    changed = {(c["case"], c["backend"], c["output"], c["dtype"], c["autocast"], c["sizes"])
               for c in report.setting_changes()}
    bad = [r for r in report.failures
           if (r.settings or {}).get("emulate_precision_casts") is not False
           or r.output_key() not in changed
           or "emulate_precision_casts=true" not in r.detail]
    assert not bad, ParityReport(bad).failure_text()
