"""Benchmark history (compile_losses/bench/history.py), its CLI, and the plots' colours, on
synthetic pytest-benchmark JSON. No timing happens here."""
import datetime
import json
import multiprocessing
from pathlib import Path

import pytest

from compile_losses.backends import BACKENDS
from compile_losses.bench import history, report
from compile_losses.bench.results import load
from compile_losses.cli import main
from compile_losses.errors import UsageError

PNG = b"\x89PNG\r\n\x1a\n"
_REF = next(n for n in BACKENDS if BACKENDS[n].reference and BACKENDS[n].device == "cpu")
_OTHERS = [n for n in BACKENDS if not BACKENDS[n].reference][:2]


def _bench(workload, case, backend, median, extra=None):
    info = dict(extra or {}, workload=workload, case=case, device="cpu", backend=backend, samples=10,
                versions={"torch": "t"}, mode="quick", device_name="test cpu", threads=1)
    return {"group": "g", "name": backend, "fullname": "x::{}-{}".format(case, backend), "extra_info": info,
            "stats": {"min": median, "max": median, "mean": median, "median": median, "stddev": 0.0, "rounds": 5}}


def _json(tmp_path, name, factor=1.0, commit="c0ffee" * 6 + "abcd"):
    a, b = _OTHERS
    data = {"commit_info": {"id": commit, "dirty": False, "branch": "main"}, "benchmarks": [
        _bench("triad", "n1024", "triad", 1e-3, {"numel": 1024, "bytes_per_call": 12288}),
        _bench("loss-fwdbwd", "mse-1024", _REF, 4e-3, {"numel": 1024, "bytes_per_call": 12288}),
        _bench("loss-fwdbwd", "mse-1024", a, 2e-3 * factor, {"numel": 1024, "bytes_per_call": 12288}),
        _bench("seed-train", "seed+mse-b10", _REF, 80e-6),
        _bench("seed-train", "seed+mse-b10", b, 40e-6),
        _bench("compile-cold-train", "seed+mse-b10", a, 1.5),
    ]}
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def test_entry_holds_commit_versions_medians_and_ratios(tmp_path):
    run = load([_json(tmp_path, "a.json")])
    now = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    line = history.entry(run, now=now)
    assert (line["commit"], line["dirty"], line["date"], line["mode"]) == ("c0ffee" * 6 + "abcd", False,
                                                                          "2026-01-02T03:04:05+00:00", "quick")
    a, b = _OTHERS
    # 2 ms over eager's 4 ms, and over the 1 ms triad; eager itself over the triad
    assert line["cases"]["loss-fwdbwd mse-1024 cpu " + a] == {"median_s": 2e-3, "vs_eager": 0.5, "vs_triad": 2.0}
    assert line["cases"]["loss-fwdbwd mse-1024 cpu " + _REF] == {"median_s": 4e-3, "vs_triad": 4.0}
    assert line["cases"]["seed-train seed+mse-b10 cpu " + b]["vs_eager"] == pytest.approx(0.5)


def test_entry_without_a_recorded_commit_asks_git(tmp_path):
    run = load([_json(tmp_path, "a.json", commit="unversioned")])
    line = history.entry(run, root=tmp_path)  # not a git checkout: no commit, said as None
    assert line["commit"] is None
    here = history.entry(run)  # this checkout is one
    assert here["commit"] is None or len(here["commit"]) == 40


def _append_many(path, start):
    for i in range(start, start + 40):
        history.append(Path(path), {"cases": {}, "i": i, "pad": "x" * 5000})


def test_appends_are_whole_lines_even_from_concurrent_processes(tmp_path):
    path = tmp_path / "h.jsonl"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(str(path), k * 100)) for k in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    lines = history.read(path)
    assert sorted(line["i"] for line in lines) == list(range(40)) + list(range(100, 140))


def test_bad_history_files_name_the_line(tmp_path):
    path = tmp_path / "h.jsonl"
    path.write_text('{"cases": {}}\n{oops\n')
    with pytest.raises(UsageError, match=r"h.jsonl line 2 is not JSON"):
        history.read(path)
    path.write_text('{"cases": {}}\n[1]\n')
    with pytest.raises(UsageError, match=r"line 2 has no 'cases' object"):
        history.read(path)
    with pytest.raises(UsageError, match=r"cannot read benchmark history .*nope"):
        history.read(tmp_path / "nope")
    with pytest.raises(UsageError, match=r"history is empty"):
        history.plot([], str(tmp_path / "x.png"))


def test_cli_records_and_plots_the_history(tmp_path, capsys):
    hist = tmp_path / "hist" / "h.jsonl"
    for i, factor in enumerate((1.0, 1.1, 2.0)):
        run = _json(tmp_path, "r{}.json".format(i), factor, commit="{:040x}".format(i))
        assert main(["bench", "--from-json", run, "--record", str(hist)]) == 0
    lines = history.read(hist)
    assert [line["commit"][-1] for line in lines] == ["0", "1", "2"]
    a = _OTHERS[0]
    assert [line["cases"]["loss-fwdbwd mse-1024 cpu " + a]["vs_eager"] for line in lines] == pytest.approx(
        [0.5, 0.55, 1.0])
    png = tmp_path / "h.png"
    assert main(["bench", "--history-plot", str(png), "--history", str(hist)]) == 0
    assert png.read_bytes()[:8] == PNG
    assert main(["bench", "--history-plot", str(png), "--from-json", run]) == 2
    assert "--history-plot without --record only plots the history; it takes no --from-json" in capsys.readouterr().err


def test_plot_writes_a_png_with_ratio_and_compile_panels(tmp_path):
    path = tmp_path / "p.png"
    report.plot(load([_json(tmp_path, "a.json")]), str(path))
    assert path.read_bytes()[:8] == PNG


def test_backend_colours_are_one_per_backend_and_stable():
    names = list(BACKENDS)
    full = report.backend_colors(names)
    # the same colour whichever subset, in whichever order, a run has
    assert report.backend_colors(reversed(names[1:])) == {n: full[n] for n in names[1:]}
    assert report.backend_colors([names[-1]]) == {names[-1]: full[names[-1]]}
    others = [n for n in names if not BACKENDS[n].reference]
    assert len({full[n] for n in others}) == min(len(others), len(report._PALETTE))
    assert {full[n] for n in names if BACKENDS[n].reference} <= {report.REFERENCE_COLOR}
    assert report.REFERENCE_COLOR not in {full[n] for n in others}
    # a name no adapter declares (an old JSON's) still gets the same colour every time
    assert report.backend_colors(["retired-backend"]) == report.backend_colors(["retired-backend"])
