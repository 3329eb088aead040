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
