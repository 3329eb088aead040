"""The benchmark gate, summary and plot on synthetic pytest-benchmark JSON (no timing happens here).

Every expected number below is worked out by hand from the planted times.
"""
import copy
import json

import pytest

from compile_losses.bench import gate, report
from compile_losses.bench.results import load
from compile_losses.cli import main
from compile_losses.errors import UsageError

# (workload, case, backend, median seconds, extra): a loss at 2^20 elements and its triad, and a
# small SeedNet train step.
_CASES = [
    ("triad", "n1048576", "triad", 1.0e-3, {"numel": 1048576, "bytes_per_call": 12582912}),
    ("loss-fwdbwd", "mse-1048576x1", "eager", 6.0e-3, {"numel": 1048576, "bytes_per_call": 12582912}),
    ("loss-fwdbwd", "mse-1048576x1", "compile", 3.0e-3, {"numel": 1048576, "bytes_per_call": 12582912}),
    ("loss-fwdbwd", "mse-1048576x1", "onnx", 4.0e-3, {"numel": 1048576, "bytes_per_call": 12582912}),
    ("seed-train", "seed+mse-b10", "eager", 80e-6, {"batch": 10}),
    ("seed-train", "seed+mse-b10", "compile", 120e-6, {"batch": 10}),
    ("seed-train", "seed+mse-b10", "onnx", 40e-6, {"batch": 10}),
]


def _bench_json(scale=None, device="cpu"):
    """pytest-benchmark-shaped JSON; ``scale(workload, backend) -> factor`` plants changes."""
    benchmarks = []
    for workload, case, backend, median, extra in _CASES:
        factor = scale(workload, backend) if scale else 1.0
        t = median * factor
        info = dict(extra, workload=workload, case=case, device=device, backend=backend,
                    samples=extra.get("batch", extra.get("numel")), threads=1, device_name="test cpu",
                    versions={"torch": "x", "onnxruntime": "y", "python": "z"})
        benchmarks.append({
            "group": "{} {} {}".format(workload, case, device), "name": "test[{}-{}]".format(case, backend),
            "fullname": "tests/benchmarks/x.py::test[{}-{}]".format(case, backend), "params": {}, "param": None,
            "extra_info": info, "options": {},
            "stats": {"min": t * 0.95, "max": t * 1.3, "mean": t * 1.02, "median": t, "stddev": t * 0.05,
                      "rounds": 20, "iterations": 1},
        })
    return {"machine_info": {"node": "test"}, "commit_info": {"id": "abc"}, "benchmarks": benchmarks,
            "datetime": "2024-01-01T00:00:00", "version": "5.1.0"}


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def _run(tmp_path, name, scale=None):
    return load([_write(tmp_path, name, _bench_json(scale))])


def test_unchanged_run_passes(tmp_path):
    result = gate.compare_ratios(_run(tmp_path, "a.json"), _run(tmp_path, "b.json"), gate.Thresholds())
    assert result.ok
    # 2 non-eager backends x 2 workloads vs eager, plus 3 loss rows vs the triad.
    assert len(result.compared) == 7
    assert {r.status for r in result.rows} == {"ok"}


def test_planted_2x_slowdown_in_one_backend_is_caught(tmp_path):
    slow = _run(tmp_path, "slow.json", lambda w, b: 2.0 if b == "compile" else 1.0)
    result = gate.compare_ratios(slow, _run(tmp_path, "base.json"), gate.Thresholds())
    assert not result.ok
    failed = {(r.key, r.metric) for r in result.failures}
    assert failed == {("loss-fwdbwd mse-1048576x1 cpu compile", "vs_eager"),
                      ("loss-fwdbwd mse-1048576x1 cpu compile", "vs_triad"),
                      ("seed-train seed+mse-b10 cpu compile", "vs_eager")}
    row = next(r for r in result.failures if r.metric == "vs_eager" and r.key.startswith("seed"))
    assert row.baseline == pytest.approx(1.5) and row.current == pytest.approx(3.0) and row.change == pytest.approx(2.0)


def test_a_uniformly_slower_machine_passes_the_ratio_gate(tmp_path):
    # A busy shared machine: everything 25% slower, eager and the triad included.
    busy = _run(tmp_path, "busy.json", lambda w, b: 1.25)
    assert gate.compare_ratios(busy, _run(tmp_path, "base.json"), gate.Thresholds()).ok


def test_a_slower_eager_loss_is_caught_against_the_triad(tmp_path):
    slow = _run(tmp_path, "slow.json", lambda w, b: 2.0 if (w, b) == ("loss-fwdbwd", "eager") else 1.0)
    result = gate.compare_ratios(slow, _run(tmp_path, "base.json"), gate.Thresholds())
    assert [(r.key, r.metric) for r in result.failures] == [("loss-fwdbwd mse-1048576x1 cpu eager", "vs_triad")]
    # The backends now look faster against eager: reported, not failed.
    assert {r.status for r in result.rows if r.metric == "vs_eager" and r.key.startswith("loss")} == {"faster"}


def test_threshold_rules_apply_per_case(tmp_path):
    slower = _run(tmp_path, "s.json", lambda w, b: 1.6 if (w, b) == ("seed-train", "onnx") else 1.0)
    base = _run(tmp_path, "b.json")
    assert not gate.compare_ratios(slower, base, gate.Thresholds(default=1.5)).ok
    rules = gate.Thresholds.from_dict({"default": 1.5, "rules": [
        {"match": "seed-train * cpu * vs_eager", "threshold": 1.8, "reason": "us-scale calls"}]})
    result = gate.compare_ratios(slower, base, rules)
    assert result.ok
    row = next(r for r in result.rows if r.key == "seed-train seed+mse-b10 cpu onnx")
    assert (row.threshold, row.reason) == (1.8, "us-scale calls")


def test_ungated_rules_report_without_failing(tmp_path):
    slow = _run(tmp_path, "s.json", lambda w, b: 3.0 if (w, b) == ("loss-fwdbwd", "onnx") else 1.0)
    rules = gate.Thresholds.from_dict({"rules": [
        {"match": "loss-* vs_triad", "gate": False, "reason": "triad too noisy here"}]})
    result = gate.compare_ratios(slow, _run(tmp_path, "b.json"), rules)
    statuses = {(r.key, r.metric): r.status for r in result.rows}
    assert statuses[("loss-fwdbwd mse-1048576x1 cpu onnx", "vs_triad")] == "ungated"
    assert statuses[("loss-fwdbwd mse-1048576x1 cpu onnx", "vs_eager")] == "SLOWER"
    assert not result.ok
    assert len(result.compared) == 4  # the three vs_triad rows are reported, not compared


@pytest.mark.parametrize("data, match", [
    ({"default": 0.9}, r"default threshold must be a number >= 1.0 .* got 0.9"),
    ({"rules": [{"match": "*", "threshold": 2.0}]}, r"rules\[0\] must have a 'match' pattern, a 'threshold' and a 'reason'"),
    ({"rules": [{"match": "*", "threshold": "2", "reason": "r"}]}, r"rules\[0\] threshold must be a number >= 1.0"),
    ({"rules": [{"match": "*", "gate": False, "threshold": 2.0, "reason": "r"}]}, r"has 'gate': false, so it takes no threshold"),
])
def test_bad_thresholds_are_refused(data, match):
    with pytest.raises(UsageError, match=match):
        gate.Thresholds.from_dict(data)


def test_new_and_missing_cases_are_reported_not_failed(tmp_path):
    base_data = _bench_json()
    base_data["benchmarks"] = [b for b in base_data["benchmarks"] if b["extra_info"]["backend"] != "onnx"]
    result = gate.compare_ratios(_run(tmp_path, "cur.json"), load([_write(tmp_path, "b.json", base_data)]),
                                 gate.Thresholds())
    assert result.ok
    assert sorted(r.status for r in result.rows if r.status != "ok") == ["new", "new", "new"]
    # Nothing in common: nothing was checked, so the gate does not pass.
    other = _bench_json(device="cuda")
    assert not gate.compare_ratios(_run(tmp_path, "c.json"), load([_write(tmp_path, "o.json", other)]),
                                   gate.Thresholds()).ok


def test_interleaved_gate_compares_medians_over_rounds(tmp_path):
    base = [_run(tmp_path, "a{}.json".format(i)) for i in range(3)]
    same = [_run(tmp_path, "b{}.json".format(i)) for i in range(3)]
    assert gate.compare_interleaved(base, same, gate.Thresholds()).ok
    # One round hit by a 3x noise burst on every case: the median over rounds shrugs it off.
    noisy = same[:2] + [_run(tmp_path, "noisy.json", lambda w, b: 3.0)]
    assert gate.compare_interleaved(base, noisy, gate.Thresholds()).ok
    # A 2x slowdown of eager's train step (no in-run reference exists for it) is caught here.
    slow = [_run(tmp_path, "s{}.json".format(i), lambda w, b: 2.0 if (w, b) == ("seed-train", "eager") else 1.0)
            for i in range(3)]
    result = gate.compare_interleaved(base, slow, gate.Thresholds())
    assert [r.key for r in result.failures] == ["seed-train seed+mse-b10 cpu eager"]
    assert result.failures[0].change == pytest.approx(2.0)


def test_statistic_is_selectable(tmp_path):
    base = _bench_json()
    cur = copy.deepcopy(base)
    for b in cur["benchmarks"]:  # medians unchanged, minimum of compile doubled
        if b["extra_info"]["backend"] == "compile":
            b["stats"]["min"] *= 2
    a, b = load([_write(tmp_path, "cur.json", cur)]), load([_write(tmp_path, "base.json", base)])
    assert gate.compare_ratios(a, b, gate.Thresholds(), "median").ok
    assert not gate.compare_ratios(a, b, gate.Thresholds(), "min").ok


def test_load_errors_name_the_file_and_what_is_wrong(tmp_path):
    with pytest.raises(UsageError, match=r"cannot read benchmark results .*nope.json"):
        load([str(tmp_path / "nope.json")])
    with pytest.raises(UsageError, match=r"is not pytest-benchmark JSON: no 'benchmarks' list"):
        load([_write(tmp_path, "x.json", {"a": 1})])
    data = _bench_json()
    del data["benchmarks"][0]["extra_info"]["workload"]
    with pytest.raises(UsageError, match=r"benchmark 'tests/benchmarks/x.py::test\[n1048576-triad\]' lacks extra_info workload"):
        load([_write(tmp_path, "y.json", data)])


def test_summary_reports_ratios_triad_multiples_and_microseconds(tmp_path):
    text = report.summary_markdown(_run(tmp_path, "a.json"))
    # compile: 3 ms vs eager 6 ms -> 0.50; vs the 1 ms triad -> 3.00; 12582912 B / 3 ms = 4.19 GB/s.
    assert "| mse-1048576x1 | cpu | compile | 3.00 ms | 4.19 GB/s | 0.50 | 0.50 | 3.00 | 3.00 |" in text
    # Small batches read in microseconds per call: onnx 40 us, 10 samples -> 250 k samples/s, 40/80.
    assert "| seed+mse-b10 | cpu | onnx | 40.0 us | 250.00 k samples/s | 0.50 | 0.50 |" in text


def test_plot_writes_a_png(tmp_path):
    path = tmp_path / "p.png"
    report.plot(_run(tmp_path, "a.json"), str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_gates_existing_json(tmp_path, capsys):
    base = _write(tmp_path, "base.json", _bench_json())
    same = _write(tmp_path, "same.json", _bench_json())
    slow = _write(tmp_path, "slow.json", _bench_json(lambda w, b: 2.0 if b == "onnx" else 1.0))
    summary = tmp_path / "s.md"
    assert main(["bench", "--from-json", same, "--compare", base, "--summary", str(summary)]) == 0
    assert "PASS" in summary.read_text()
    assert main(["bench", "--from-json", slow, "--compare", base]) == 1
    assert "SLOWER" in capsys.readouterr().out
    assert main(["bench", "--from-json", same, "--compare", str(tmp_path / "missing.json")]) == 2
    assert "--compare: baseline" in capsys.readouterr().err


def _with_paired(data, paired_scale=None):
    """Record per-round pairs as the suite does: the reference time next to each case's own."""
    medians = {(b["extra_info"]["workload"], b["extra_info"]["backend"]): b["stats"]["median"]
               for b in data["benchmarks"]}
    for b in data["benchmarks"]:
        info = b["extra_info"]
        factor = paired_scale(info["workload"], info["backend"]) if paired_scale else 1.0
        eager = medians.get((info["workload"], "eager"))
        if info["backend"] != "eager" and eager:
            ratio = b["stats"]["median"] / eager * factor
            info["paired"] = {"vs_eager": {"median": ratio, "min": ratio, "mean": ratio}}
    return data


def test_paired_ratios_shrug_off_a_burst_between_tests(tmp_path):
    # Eager's own test of the train step ran during a 2x noise burst; the pairs (eager timed right
    # before each round of the other backends) did not: the gate reads the pairs and passes.
    base = load([_write(tmp_path, "base.json", _with_paired(_bench_json()))])
    burst = _with_paired(_bench_json())
    for b in burst["benchmarks"]:
        if (b["extra_info"]["workload"], b["extra_info"]["backend"]) == ("seed-train", "eager"):
            for k in ("min", "median", "mean"):
                b["stats"][k] *= 2
    cur = load([_write(tmp_path, "burst.json", burst)])
    assert gate.compare_ratios(cur, base, gate.Thresholds()).ok
    # The same run's steady-state table still shows the burst, against separately timed eager.
    onnx = cur.results["seed-train seed+mse-b10 cpu onnx"]
    assert cur.ratio(onnx, "vs_eager", paired=False) == pytest.approx(0.25)
    assert cur.ratio(onnx, "vs_eager") == pytest.approx(0.5)


def test_planted_2x_in_the_pairs_is_caught(tmp_path):
    base = load([_write(tmp_path, "base.json", _with_paired(_bench_json()))])
    slow = load([_write(tmp_path, "slow.json", _with_paired(
        _bench_json(), lambda w, b: 2.0 if (w, b) == ("seed-train", "fast") or b == "onnx" else 1.0))])
    result = gate.compare_ratios(slow, base, gate.Thresholds())
    assert sorted(r.key for r in result.failures if r.metric == "vs_eager") == [
        "loss-fwdbwd mse-1048576x1 cpu onnx", "seed-train seed+mse-b10 cpu onnx"]


@pytest.mark.parametrize("change, status", [(1.5, "ok"), (1.5 * (1 + 1e-9), "SLOWER"), (1 / 1.5, "ok"),
                                            (1 / 1.5 * (1 - 1e-9), "faster")])
def test_a_change_exactly_at_the_threshold_passes_and_just_beyond_it_does_not(change, status):
    # the threshold is the largest allowed change: `>` against it, not `>=`
    row = gate.Row("seed-train seed+mse-b10 cpu compile vs_eager", "vs_eager", 1.0, change, 1.5, "")
    assert row.status == status
