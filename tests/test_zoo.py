"""The zoo: real losses (tests/zoo_table.py) through ``compile-losses verify --net none`` by import
path, as a user runs them. Every cell passes, or says why not with a status that names the user's
source line (``uncompilable``, ``graph-breaks``, ``recompiles``), or is a known failure with its finding.

Runs only where the libraries are installed (``pip install -e .[zoo]``); each row skips with the
missing library's name otherwise. Cheap backends in the default run, ONNX in the slow run,
inductor in the exhaustive one."""
import importlib
import json
import sys
from pathlib import Path

import pytest

from compile_losses.cli import main
from compile_losses.parity.rule import FAILING, GRAPH_BREAKS, PASS, RECOMPILES, UNAVAILABLE, UNCOMPILABLE, UNSUPPORTED

sys.path.insert(0, str(Path(__file__).parent))
from zoo_table import CHEAP, EXHAUSTIVE, FINDINGS, KNOWN_FAILURES, NO_SOURCE_LINE, SLOW, ZOO  # noqa: E402

_MARKS = {**{b: [pytest.mark.zoo] for b in CHEAP}, **{b: [pytest.mark.zoo, pytest.mark.slow] for b in SLOW},
          **{b: [pytest.mark.zoo, pytest.mark.exhaustive] for b in EXHAUSTIVE}}
_CELLS = [pytest.param(z, b, id="{}-{}".format(z.id, b), marks=_MARKS[b]) for b in CHEAP + SLOW + EXHAUSTIVE
          for z in ZOO]


def run_cell(z, backend, tmp_path):  # type: ignore[no-untyped-def]
    """``verify`` of one zoo loss on ``eager`` and ``backend``: (exit code, rows of the JSON report)."""
    out = tmp_path / "report.json"
    backends = "eager" if backend == "eager" else "eager," + backend
    argv = ["verify"] + z.argv() + ["--batch", "2", "--dtype", "float32", "--backends", backends, "--quiet",
                                    "--json", str(out)]
    if backend not in EXHAUSTIVE:
        argv.append("--no-audit")  # the audit compiles with inductor: its own (exhaustive) column
    rc = main(argv)
    return rc, json.loads(out.read_text())["rows"]


def test_the_table_has_30_losses_from_5_libraries() -> None:
    assert len({z.id for z in ZOO}) == len(ZOO) >= 30
    assert len({z.library for z in ZOO}) >= 5


@pytest.mark.parametrize("z,backend", _CELLS)
def test_zoo_cell(z, backend, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    try:
        importlib.import_module(z.path.split(":")[0])
    except ImportError as exc:
        pytest.skip("the zoo extra is not installed ({}): pip install -e .[zoo]".format(exc))
    rc, rows = run_cell(z, backend, tmp_path)
    capsys.readouterr()
    eager = [r for r in rows if r["backend"] == "eager"]
    assert eager and all(r["status"] == PASS for r in eager), eager
    mine = [r for r in rows if r["backend"] == backend]
    known = KNOWN_FAILURES.get((z.id, backend))
    failing = [r for r in mine if r["status"] in FAILING]
    if known:
        assert rc == 1 and failing, "known failure {} now passes: remove it from KNOWN_FAILURES".format(known)
        return
    assert rc == 0 and not failing, [(r["output"], r["status"], r["detail"]) for r in failing]
    unnamed = []
    for r in mine:
        assert r["status"] in (PASS, UNCOMPILABLE, GRAPH_BREAKS, RECOMPILES, UNSUPPORTED, UNAVAILABLE), r
        if r["status"] in (UNCOMPILABLE, GRAPH_BREAKS, RECOMPILES) and ".py:" not in r["detail"] and " uses aten." not in r["detail"]:
            unnamed.append(r["output"] + ": " + r["detail"])  # names neither the user's line nor the op
    finding = FINDINGS.get((z.id, backend))
    if finding:
        found = [r for r in mine if r["status"] == finding[0]]
        assert found and all(finding[1] in r["detail"] for r in found), (finding, mine)
    if (z.id, backend) in NO_SOURCE_LINE:
        assert unnamed, "{} {} now names its line: remove it from NO_SOURCE_LINE".format(z.id, backend)
    else:
        assert not unnamed, unnamed
