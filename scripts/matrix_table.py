"""Per-axis verdict table of an exhaustive matrix run: counts the rows the exhaustive tests wrote
(``COMPILE_LOSSES_MATRIX_JSON=<dir> pytest --run-exhaustive ...``) by backend and by each axis
value (dtype, autocast, onnxruntime level, threads, inductor's emulate_precision_casts, dynamic
sizes), as pass by clause 1 / pass by
clause 2 / unsupported / failing, and lists the reasons given for ``unsupported``.

    python scripts/matrix_table.py <dir> [--json out.json]
"""
import argparse
import collections
import glob
import json
import os
import sys
from typing import Any, Dict, List


def _verdict(row: Dict[str, Any]) -> str:
    if row["status"] == "pass":
        return "clause {}".format(row.get("clause") or 1)
    return row["status"]


def _axes(row: Dict[str, Any]) -> Dict[str, str]:
    sizes = {k: v for k, v in (row.get("sizes") or {}).items() if k != "batch"}
    return {"dtype": str(row.get("dtype")), "autocast": str(row.get("autocast") or "-"),
            "ort_opt_level": str(row.get("ort_opt_level") or "-"),
            "ort_threads": "-" if row.get("ort_threads") is None else str(row["ort_threads"]),
            "emulate_precision_casts": str((row.get("settings") or {}).get("emulate_precision_casts", "-")),
            "dynamic sizes": ",".join("{}={}".format(k, v) for k, v in sorted(sizes.items())) or "-"}


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--json", help="write the counts here")
    args = parser.parse_args(argv)
    files = sorted(glob.glob(os.path.join(args.folder, "*.json")))
    if not files:
        print("no reports in {}".format(args.folder), file=sys.stderr)
        return 2
    counts: Dict[str, Dict[str, collections.Counter]] = collections.defaultdict(lambda: collections.defaultdict(collections.Counter))
    reasons: collections.Counter = collections.Counter()
    seconds, rows, changes = 0.0, 0, 0
    for path in files:
        with open(path) as f:
            report = json.load(f)
        seconds += float(report["summary"].get("seconds", 0.0))
        changes += len(report["summary"].get("setting_changes", ()))
        for row in report["rows"]:
            rows += 1
            verdict = _verdict(row)
            for axis, value in _axes(row).items():
                counts[axis][(value, row["backend"])][verdict] += 1
            if row["status"] != "pass":
                reasons[(row["backend"], row["status"], (row.get("detail") or "").split(";")[0][:110])] += 1
    order = ["clause 1", "clause 2", "unsupported"]
    print("{} reports, {} rows, {:.0f} s of parity, {} outputs whose verdict a setting changes".format(
        len(files), rows, seconds, changes))
    for axis, table in counts.items():
        print("\n| {} | backend | pass clause 1 | pass clause 2 | unsupported | other |".format(axis))
        print("|---|---|---|---|---|---|")
        for (value, backend), c in sorted(table.items()):
            other = ", ".join("{} {}".format(k, v) for k, v in sorted(c.items()) if k not in order) or "0"
            print("| {} | {} | {} |".format(value, backend, " | ".join(str(c.get(k, 0)) for k in order) + " | " + other))
    print("\n| backend | status | reason | rows |\n|---|---|---|---|")
    for (backend, status, why), n in sorted(reasons.items()):
        print("| {} | {} | {} | {} |".format(backend, status, why.replace("|", "/"), n))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({axis: {"{} {}".format(*k): dict(v) for k, v in t.items()} for axis, t in counts.items()}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
