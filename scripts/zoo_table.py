"""Regenerate README.md's zoo table: loss x backend, ``pass`` or the status and its one-line reason.

    python scripts/zoo_table.py                  # print the markdown table
    python scripts/zoo_table.py --write          # replace it in README.md between the markers
    python scripts/zoo_table.py --backends script,onnx

Runs ``compile-losses verify --net none`` on each loss of tests/zoo_table.py (eager and one backend
at a time, batch 2, float32), as tests/test_zoo.py does. Needs the zoo extra (pip install -e .[zoo]).
"""
import argparse
import contextlib
import io
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

BEGIN, END = "<!-- zoo-table:begin (python scripts/zoo_table.py --write) -->", "<!-- zoo-table:end -->"


def _cell(rows, backend):  # type: ignore[no-untyped-def]
    from compile_losses.parity.rule import PASS

    mine = [r for r in rows if r["backend"] == backend]
    bad = [r for r in mine if r["status"] != PASS]
    if not mine:
        return "no rows"
    if not bad:
        return "pass"
    r = bad[0]
    reason = r["detail"].replace("|", "/").replace("\n", " ")
    reason = re.sub(r"\S*site-packages/", "", reason)  # the library's own path, not this machine's
    return "{}{}: {}".format(r["status"], " ({} outputs)".format(len(bad)) if len(bad) > 1 else "", reason[:220])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="script,onnx,compile,compile-dynamo",
                        help="columns (default script,onnx,compile,compile-dynamo)")
    parser.add_argument("--write", action="store_true", help="replace the table in README.md between its markers")
    args = parser.parse_args()
    import test_zoo
    from zoo_table import ZOO

    backends = [b for b in args.backends.split(",") if b]
    lines = ["| loss | " + " | ".join(backends) + " |", "|---|" + "---|" * len(backends)]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for z in ZOO:
            cells = []
            for b in backends:
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    try:
                        _, rows = test_zoo.run_cell(z, b, Path(tmp))
                        cells.append(_cell(rows, b))
                    except ImportError as exc:
                        cells.append("not installed: {}".format(exc))
            lines.append("| `{}` {} | {} |".format(z.path, " ".join(z.args), " | ".join(cells)))
            print("{} {:.0f} s".format(z.id, time.perf_counter() - start), file=sys.stderr, flush=True)
    lines.append("")
    lines.append("{} losses, batch 2, float32; {:.0f} s on this machine.".format(len(ZOO), time.perf_counter() - start))
    table = "\n".join(lines)
    if not args.write:
        print(table)
        return 0
    readme = ROOT / "README.md"
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit("README.md has no zoo-table markers ({} ... {})".format(BEGIN, END))
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(head + BEGIN + "\n" + table + "\n" + END + tail)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
