"""The regression gate's decisions and its report, pinned exactly: threshold parsing and its messages,
row statuses at their boundaries, the JSON keys and the markdown text.

The mutation run (``scripts/mutation.sh gate``) holds ``compile_losses/bench/gate.py`` to these tests
and tests/test_bench_gate.py. Every expected string and number is written out here by hand.
"""
import dataclasses
import json

import pytest

from compile_losses.bench import gate
from compile_losses.bench.results import load
from compile_losses.errors import UsageError
from test_bench_gate import _bench_json, _write


def _row(baseline, current, threshold=1.5, key="loss-fwdbwd mse-16x1 cpu compile", metric="vs_eager", reason="default"):
    return gate.Row(key, metric, baseline, current, threshold, reason)


# --- thresholds ------------------------------------------------------------------------------------
def test_rules_and_rows_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        gate.Rule("*", 2.0, "r").threshold = 3.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        _row(1.0, 1.0).current = 9.0  # type: ignore[misc]


def test_default_threshold_and_its_reason() -> None:
    assert gate.DEFAULT_THRESHOLD == 1.5
    assert gate.Thresholds().for_row("a b c d", "vs_eager") == (1.5, "default")
    assert gate.Thresholds.from_dict({}).for_row("a b c d", "time") == (1.5, "default")


def test_the_last_matching_rule_wins_and_gate_false_rules_do_not_stop_the_list() -> None:
    t = gate.Thresholds.from_dict({"default": 1.2, "rules": [
        {"match": "seed-* *", "threshold": 1.8, "reason": "small"},
        {"match": "seed-train * * onnx *", "gate": False, "reason": "noisy"},
        {"match": "seed-train * * onnx vs_triad", "threshold": 3, "reason": "late"},
    ]})
    assert t.default == 1.2 and len(t.rules) == 3
    assert t.for_row("seed-train b10 cpu compile", "vs_eager") == (1.8, "small")
    assert t.for_row("seed-train b10 cpu onnx", "vs_eager") == (None, "noisy")
    assert t.for_row("seed-train b10 cpu onnx", "vs_triad") == (3.0, "late")
    assert t.for_row("loss-fwdbwd x cpu onnx", "vs_eager") == (1.2, "default")


@pytest.mark.parametrize("data, message", [
    ({"rules": ["x"]}, "thresholds: rules[0] must have a 'match' pattern, a 'threshold' and a 'reason', got 'x'"),
    ({"rules": [{"match": 5, "threshold": 2, "reason": "r"}]},
     "thresholds: rules[0] must have a 'match' pattern, a 'threshold' and a 'reason', got "
     "{'match': 5, 'threshold': 2, 'reason': 'r'}"),
    ({"rules": [{"match": "*", "threshold": 2}]},
     "thresholds: rules[0] must have a 'match' pattern, a 'threshold' and a 'reason', got {'match': '*', 'threshold': 2}"),
    ({"rules": [{"match": "*", "gate": False, "threshold": 2, "reason": "r"}]},
     "thresholds: rules[0] has 'gate': false, so it takes no threshold"),
    ({"default": 0.99}, "thresholds: default threshold must be a number >= 1.0 (a ratio of times), got 0.99"),
    ({"default": True}, "thresholds: default threshold must be a number >= 1.0 (a ratio of times), got True"),
    ({"default": "2"}, "thresholds: default threshold must be a number >= 1.0 (a ratio of times), got '2'"),
    ({"rules": [{"match": "*", "reason": "r"}]},
     "thresholds: rules[0] threshold must be a number >= 1.0 (a ratio of times), got None"),
])
def test_bad_thresholds_are_refused_with_exact_messages(data, message) -> None:
    with pytest.raises(UsageError) as err:
        gate.Thresholds.from_dict(data)
    assert str(err.value) == message


def test_a_threshold_of_exactly_one_is_allowed() -> None:
    assert gate.Thresholds.from_dict({"default": 1}).default == 1.0
    assert gate.Thresholds.from_dict({"rules": [{"match": "*", "threshold": 1.0, "reason": "r"}]}).rules[0].threshold == 1.0


def test_thresholds_load(tmp_path) -> None:
    assert gate.Thresholds.load(None) == gate.Thresholds()
    good = tmp_path / "t.json"
    good.write_text(json.dumps({"default": 2.5}))
    assert gate.Thresholds.load(str(good)).default == 2.5
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"default": 0.5}))
    with pytest.raises(UsageError, match=r"^{}: default threshold".format(bad)):
        gate.Thresholds.load(str(bad))
    with pytest.raises(UsageError, match=r"^cannot read thresholds {}: ".format(tmp_path / "missing.json")):
        gate.Thresholds.load(str(tmp_path / "missing.json"))
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(UsageError, match=r"^thresholds {} is not JSON: ".format(broken)):
        gate.Thresholds.load(str(broken))


# --- rows ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("baseline, current, threshold, change, status", [
    (None, 1.0, 1.5, None, "new"),
    (1.0, None, 1.5, None, "missing"),
    (1.0, 3.0, None, 3.0, "ungated"),
    (0.0, 1.0, 1.5, None, "invalid"),      # a zero baseline has no change; never "ok"
    (2.0, 3.0, 1.5, 1.5, "ok"),            # exactly at the threshold
    (2.0, 3.002, 1.5, 1.501, "SLOWER"),
    (3.0, 2.0, 1.5, 2.0 / 3.0, "ok"),      # exactly 1 / threshold
    (3.0, 1.99, 1.5, 1.99 / 3.0, "faster"),
])
def test_row_change_and_status(baseline, current, threshold, change, status) -> None:
    row = _row(baseline, current, threshold)
    assert row.change == (None if change is None else pytest.approx(change, rel=1e-12))
    assert row.status == status


def test_report_ok_failures_compared_and_json() -> None:
    rows = [_row(1.0, 1.0), _row(1.0, 2.0, key="a b c d"), _row(None, 1.0, key="n e w x"), _row(1.0, 5.0, None, key="u n g d")]
    report = gate.GateReport("m", "min", rows)
    assert not report.ok and report.failures == [rows[1]] and report.compared == rows[:2]
    data = report.to_json()
    assert list(data) == ["mode", "statistic", "ok", "rows"]
    assert data["mode"] == "m" and data["statistic"] == "min" and data["ok"] is False
    assert data["rows"][1] == {"key": "a b c d", "metric": "vs_eager", "baseline": 1.0, "current": 2.0,
                               "threshold": 1.5, "reason": "default", "change": 2.0, "status": "SLOWER"}
    assert gate.GateReport("m", "min", [rows[0]]).ok
    assert not gate.GateReport("m", "min", [rows[2]]).ok  # nothing compared is not a pass
    corrupt = gate.GateReport("m", "min", [rows[0], _row(0.0, 1.0, key="z e r o")])
    assert not corrupt.ok and [r.key for r in corrupt.failures] == ["z e r o"]


def test_markdown_text_exactly() -> None:
    rows = [_row(0.002, 0.002), _row(0.001, 0.0031, key="seed-train b10 cpu onnx", metric="vs_triad", reason="why"),
            _row(None, 12.5, key="n e w x"), _row(1.0, None, None, key="m i s s", reason="gone")]
    report = gate.GateReport("ratios vs baseline", "min", rows)
    head = "Gate (ratios vs baseline, min of each run): 2 compared, 1 slower beyond threshold, 1 new, 1 missing: FAIL"
    table = ["| case | backend | metric | baseline | current | change | threshold (why) | status |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    lines = [
        "| loss-fwdbwd mse-16x1 cpu | compile | vs_eager | 0.002 | 0.002 | 1.00x | 1.50 (default) | ok |",
        "| seed-train b10 cpu | onnx | vs_triad | 0.001 | 0.0031 | 3.10x | 1.50 (why) | SLOWER |",
        "| n e w | x | vs_eager | - | 12.5 | - | 1.50 (default) | new |",
        "| m i s | s | vs_eager | 1 | - | - | - (gone) | missing |",
    ]
    assert report.to_markdown() == "\n".join([head, ""] + table + lines)
    assert report.to_markdown(only_notable=True) == "\n".join([head, ""] + table + lines[1:])
    assert gate.GateReport("x", "median", [rows[0]]).to_markdown().splitlines()[0] == (
        "Gate (x, median of each run): 1 compared, 0 slower beyond threshold, 0 new, 0 missing: PASS")


# --- the two comparisons -------------------------------------------------------------------------
def test_compare_ratios_names_its_mode(tmp_path) -> None:
    a = load([_write(tmp_path, "a.json", _bench_json())])
    report = gate.compare_ratios(a, a, gate.Thresholds(), "min")
    assert report.mode == "ratios vs baseline" and report.statistic == "min"
    assert {r.metric for r in report.rows} == {"vs_eager", "vs_triad"}


def test_compare_interleaved_keeps_cases_of_either_side_and_gates_time(tmp_path) -> None:
    full = _bench_json()
    part = dict(full, benchmarks=[b for b in full["benchmarks"] if b["extra_info"]["backend"] != "onnx"])
    base = [load([_write(tmp_path, "b{}.json".format(i), full)]) for i in range(3)]
    cur = [load([_write(tmp_path, "c{}.json".format(i), part)]) for i in range(2)]
    t = gate.Thresholds.from_dict({"rules": [{"match": "* time", "threshold": 1.1, "reason": "time rule"}]})
    report = gate.compare_interleaved(base, cur, t)
    assert report.mode == "interleaved, 2 rounds" and report.statistic == "median"
    assert len(report.rows) == len(full["benchmarks"])
    missing = [r for r in report.rows if r.status == "missing"]
    assert len(missing) == 2 and all(" onnx" in r.key for r in missing)
    assert all(r.metric == "time" and (r.threshold, r.reason) == (1.1, "time rule") for r in report.rows)
