"""The gate's statistics (compile_losses/bench/stats.py) on hand-worked examples and on synthetic
timings with a known answer. No timing happens here."""
import json
import math
import random

import pytest

from compile_losses.bench import gate, stats
from compile_losses.bench.results import load
from compile_losses.cli import main


# --- the U test against examples worked by hand ------------------------------------------------
def test_complete_separation_of_three_against_three():
    # x entirely below y: no pair (x, y) with x > y, so U = 0; of the C(6, 3) = 20 equally likely
    # orderings only this one has U = 0: one-sided p = 1/20, two-sided 1/10.
    t = stats.mann_whitney_u([1, 2, 3], [4, 5, 6])
    assert (t.u, t.method) == (0, "exact")
    assert t.p_less == pytest.approx(0.05) and t.p == pytest.approx(0.1) and t.p_greater == pytest.approx(1.0)


def test_interleaved_three_against_two():
    # x = 1, 3, 5 and y = 2, 4: pairs with x > y: (3, 2), (5, 2), (5, 4) -> U = 3. With y's ranks
    # a < b among 1..5, U = 9 - a - b; over the 10 choices of (a, b), U = 0..6 occurs 1, 1, 2, 2, 2,
    # 1, 1 times, so P(U >= 3) = P(U <= 3) = 6/10 and the two-sided p is capped at 1.
    t = stats.mann_whitney_u([1, 3, 5], [2, 4])
    assert t.u == 3
    assert t.p_greater == pytest.approx(0.6) and t.p_less == pytest.approx(0.6) and t.p == 1.0
    assert stats._u_counts(3, 2) == (1, 1, 2, 2, 2, 1, 1)


def test_ties_use_midranks_and_the_corrected_normal_approximation():
    # x = 1 2 2 3, y = 2 3 3 4. Sorted: 1x 2x 2x 2y 3x 3y 3y 4y; midranks 1, 3, 3, 3, 6, 6, 6, 8.
    # R_x = 1 + 3 + 3 + 6 = 13, U = 13 - 4*5/2 = 3 (= 0 + 1/2 + 1/2 + 2 counted by pairs).
    # mean n*m/2 = 8; variance with ties (two groups of 3: sum t^3 - t = 48; N = 8):
    # 16/12 * (9 - 48/56) = 76/7 = 10.857; z = (|3 - 8| - 1/2) / sqrt(76/7) = 1.3657;
    # two-sided p = 2 * (1 - Phi(1.3657)) = 2 * 0.08601 = 0.1720 (normal table).
    t = stats.mann_whitney_u([1, 2, 2, 3], [2, 3, 3, 4])
    assert (t.u, t.method) == (3, "normal")
    assert t.p == pytest.approx(0.1720, abs=2e-4)
    assert t.p_less < t.p_greater


def test_the_exact_distribution_counts_every_ordering_once():
    for n, m in [(1, 1), (2, 3), (5, 4), (8, 8)]:
        counts = stats._u_counts(n, m)
        assert sum(counts) == math.comb(n + m, n)
        assert counts == counts[::-1]  # U and n*m - U are equally likely under the null


def test_large_samples_use_the_normal_approximation():
    # 30 vs 30 separated: U = 0, z = (450 - 0.5) / sqrt(900 * 61 / 12) = 6.65 -> p about 3e-11
    t = stats.mann_whitney_u(range(30), range(30, 60))
    assert (t.u, t.method) == (0, "normal")
    assert 1e-12 < t.p < 1e-10


def test_all_values_equal_is_no_evidence():
    assert stats.mann_whitney_u([1.0] * 5, [1.0] * 7).p == 1.0
    assert stats.decide([1.0] * 5, [1.0] * 7).verdict == stats.NO_EVIDENCE


def test_errors_name_what_was_given():
    with pytest.raises(ValueError, match=r"at least one value in each sample, got 0 and 2"):
        stats.mann_whitney_u([], [1, 2])
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\), got 1.5"):
        stats.decide([1.0], [2.0], alpha=1.5)


# --- synthetic timings with a known answer ------------------------------------------------------
def _rounds(rng, n, scale=1.0):
    # per-round ratios: lognormal noise of 20% around the case's ratio, as rounds scatter on a
    # shared machine, and an occasional preempted round 3x slower
    return [scale * rng.lognormvariate(0, 0.2) * (3.0 if rng.random() < 0.03 else 1.0) for _ in range(n)]


def test_identical_distributions_give_no_evidence_in_19_of_20_seeds():
    verdicts = [stats.decide(_rounds(random.Random(2 * s), 100), _rounds(random.Random(2 * s + 1), 100)).verdict
                for s in range(20)]
    assert sum(v == stats.NO_EVIDENCE for v in verdicts) >= 19, verdicts


def test_a_planted_2x_slowdown_is_slower_with_confidence():
    for s in range(20):
        base, cur = _rounds(random.Random(2 * s), 100), _rounds(random.Random(2 * s + 1), 100, 2.0)
        ev = stats.decide(base, cur)
        assert ev.verdict == stats.SLOWER and ev.p < 1e-6
        assert ev.median_change == pytest.approx(2.0, rel=0.15)
        assert stats.decide(cur, base).verdict == stats.FASTER
    # even with 5 rounds a side (compile time): complete separation has exact p = 2/252 < 0.01
    assert stats.decide([1.0, 1.1, 0.9, 1.05, 0.95], [2.0, 2.2, 1.8, 2.1, 1.9]).verdict == stats.SLOWER


def test_missing_rounds_say_so():
    assert stats.decide(None, [1.0]).verdict == stats.NO_ROUNDS
    assert stats.decide([1.0, 2.0], []).verdict == stats.NO_ROUNDS


def test_sample_rounds_keeps_first_last_and_even_spacing():
    assert stats.sample_rounds(list(range(10)), 4) == [0, 3, 6, 9]
    assert stats.sample_rounds([1.234567, 2.0]) == [1.235, 2.0]
    assert len(stats.sample_rounds([1.0] * 20000)) == stats.SAMPLE_ROUNDS


# --- the ratio gate with evidence, and the CLI --------------------------------------------------
def _json(onnx_rounds, eager_rounds=None):
    """Two backends of one train step with per-round paired ratios (onnx vs eager)."""
    def bench(backend, median, paired=None):
        info = {"workload": "seed-train", "case": "seed+mse-b10", "device": "cpu", "backend": backend,
                "samples": 10, "batch": 10}
        if paired is not None:
            info["paired"] = {"vs_eager": {"median": stats._median(paired), "min": min(paired),
                                           "mean": sum(paired) / len(paired), "rounds": paired}}
        t = median
        return {"group": "g", "name": backend, "fullname": "x::" + backend, "extra_info": info,
                "stats": {"min": t, "max": t, "mean": t, "median": t, "stddev": 0.0, "rounds": 5}}
    return {"benchmarks": [bench("eager", 80e-6), bench("onnx", 40e-6, onnx_rounds)]}


def _load(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def test_gate_fails_only_with_evidence_beyond_the_threshold(tmp_path):
    rng = random.Random(0)
    base = _load(tmp_path, "base.json", _json(_rounds(rng, 100, 0.5)))
    same = _load(tmp_path, "same.json", _json(_rounds(rng, 100, 0.5)))
    slow = _load(tmp_path, "slow.json", _json(_rounds(rng, 100, 1.0)))
    # beyond the threshold on the minimum, but 5 overlapping rounds: no evidence -> pass
    noisy_base = _load(tmp_path, "nb.json", _json([0.5, 1.5, 0.9, 2.0, 1.2]))
    noisy = _load(tmp_path, "n.json", _json([0.8, 1.0, 2.2, 1.4, 1.7]))
    thresholds = gate.Thresholds()

    def judged(cur, b):
        c, bl = load([cur]), load([b])
        return stats.evidence_gate(gate.compare_ratios(c, bl, thresholds, "median"), c, bl)

    assert judged(same, base).ok
    slow_gate = judged(slow, base)
    assert not slow_gate.ok
    (row,) = slow_gate.failures
    assert (row.key, slow_gate.decision(row), slow_gate.evidence_for(row).verdict) == (
        "seed-train seed+mse-b10 cpu onnx", "FAIL", stats.SLOWER)
    c, bl = load([noisy]), load([noisy_base])
    report = gate.compare_ratios(c, bl, thresholds, "min")
    assert [r.status for r in report.rows] == ["SLOWER"]  # 0.8 / 0.5 = 1.6 > 1.5
    noisy_gate = stats.evidence_gate(report, c, bl)
    assert noisy_gate.ok and noisy_gate.decision(report.rows[0]) == "pass (no evidence)"
    assert "| pass (no evidence) |" in noisy_gate.to_markdown()

    assert main(["bench", "--from-json", same, "--compare", base]) == 0
    assert main(["bench", "--from-json", slow, "--compare", base]) == 1
    assert main(["bench", "--from-json", noisy, "--compare", noisy_base]) == 0
    assert main(["bench", "--from-json", noisy, "--compare", noisy_base, "--alpha", "0.5"]) == 0


def test_rows_without_rounds_keep_the_threshold_decision(tmp_path):
    base = load([_load(tmp_path, "b.json", _json(None))])
    cur_data = _json(None)
    cur_data["benchmarks"][1]["stats"]["median"] = 120e-6  # 1.5 -> 1.5x vs eager... 0.5 -> 1.5
    cur = load([_load(tmp_path, "c.json", cur_data)])
    report = gate.compare_ratios(cur, base, gate.Thresholds(default=1.2), "median")
    judged = stats.evidence_gate(report, cur, base)
    (row,) = report.rows
    assert judged.evidence_for(row).verdict == stats.NO_ROUNDS and judged.decision(row) == "FAIL"


def _timed(tmp_path, name, rng, onnx_scale):
    """One interleaved round's run: each backend's per-round times in stats "data"."""
    data = _json(None)
    for b in data["benchmarks"]:
        scale = onnx_scale if b["extra_info"]["backend"] == "onnx" else 1.0
        b["stats"]["data"] = [t * scale * b["stats"]["median"] for t in _rounds(rng, 200)]
        b["stats"]["median"] = stats._median(b["stats"]["data"])
    return load([_load(tmp_path, name, data)])


def test_interleaved_gate_reads_the_rounds_times(tmp_path):
    rng = random.Random(1)
    base = [_timed(tmp_path, "b{}.json".format(i), rng, 1.0) for i in range(2)]
    same = [_timed(tmp_path, "s{}.json".format(i), rng, 1.0) for i in range(2)]
    slow = [_timed(tmp_path, "x{}.json".format(i), rng, 2.0) for i in range(2)]
    assert base[0].results["seed-train seed+mse-b10 cpu onnx"].rounds  # the data came through load()
    judged = stats.interleaved_evidence(gate.compare_interleaved(base, same, gate.Thresholds()), base, same)
    assert judged.ok and {judged.evidence_for(r).n_current for r in judged.report.rows} == {2 * stats.SAMPLE_ROUNDS}
    judged = stats.interleaved_evidence(gate.compare_interleaved(base, slow, gate.Thresholds()), base, slow)
    assert [(r.key, judged.decision(r)) for r in judged.failures] == [("seed-train seed+mse-b10 cpu onnx", "FAIL")]
    assert judged.evidence_for(judged.failures[0]).verdict == stats.SLOWER
    assert "per-round times" in judged.to_json()["test"]


def test_cli_interleaved_gate_uses_the_evidence(tmp_path, monkeypatch, capsys):
    from compile_losses.bench import runner

    rng = random.Random(2)
    base = [_timed(tmp_path, "b{}.json".format(i), rng, 1.0) for i in range(2)]
    slow = [_timed(tmp_path, "x{}.json".format(i), rng, 2.0) for i in range(2)]
    monkeypatch.setattr(runner, "run_interleaved", lambda *a, **k: (base, slow))
    out = tmp_path / "cur.json"
    assert main(["bench", "--gate-against-ref", "HEAD", "--json", str(out), "--plot", str(tmp_path / "p.png")]) == 1
    gate_json = json.loads(out.with_suffix(".gate.json").read_text())
    assert [(r["key"], r["decision"]) for r in gate_json["rows"]
            if r["decision"] != "ok"] == [("seed-train seed+mse-b10 cpu onnx", "FAIL")]
    assert "slower with confidence" in capsys.readouterr().out


def _committed_baseline():  # type: ignore[no-untyped-def]
    from pathlib import Path

    path = Path(__file__).resolve().parent / "benchmarks" / "baselines" / "cpu-amd-epyc-2c-quick.json"
    return path, load([str(path)])


def test_the_committed_baseline_keeps_rounds_so_its_rows_get_a_statistical_test():
    path, baseline = _committed_baseline()
    with_rounds = [k for k, r in baseline.results.items() if stats.paired_rounds(r.extra, "vs_eager")]
    assert len(with_rounds) >= 50, "re-record it with `compile-losses bench --quick --record-baseline`"
    thresholds = gate.Thresholds.load(str(path.parent / "thresholds.json"))
    judged = stats.evidence_gate(gate.compare_ratios(baseline, baseline, thresholds, "min"), baseline, baseline)
    assert judged.ok and not judged.threshold_only
    verdicts = {judged.evidence_for(r).verdict for r in judged.report.compared if r.key in with_rounds}
    assert verdicts == {stats.NO_EVIDENCE}  # the same rounds on both sides


def test_a_baseline_without_rounds_gates_by_threshold_alone_and_says_so():
    """A baseline recorded before the rounds were kept (the committed one, its rounds stripped):
    every row says "no rounds", the gate still decides by the thresholds (a 2x slower row fails),
    and its summary says that no statistical test ran and how to re-record."""
    import copy

    path, baseline = _committed_baseline()
    for r in baseline.results.values():
        for metric in (r.extra.get("paired") or {}).values():
            metric.pop("rounds", None)
    thresholds = gate.Thresholds.load(str(path.parent / "thresholds.json"))
    judged = stats.evidence_gate(gate.compare_ratios(baseline, baseline, thresholds, "min"), baseline, baseline)
    assert judged.ok and judged.threshold_only and judged.to_json()["threshold_only"] is True
    assert {judged.evidence_for(r).verdict for r in judged.report.compared} == {stats.NO_ROUNDS}
    assert stats.RE_RECORD in judged.to_markdown(only_notable=True) and "--record-baseline" in stats.RE_RECORD

    slower = copy.deepcopy(baseline)
    key = next(k for k, r in slower.results.items() if r.backend != "eager" and r.extra.get("paired", {}).get("vs_eager"))
    for stat in ("min", "median", "mean"):
        if stat in slower.results[key].stats:
            slower.results[key].stats[stat] *= 2.0
    for metric in slower.results[key].extra.get("paired", {}).values():
        for stat in ("min", "median", "mean"):
            if stat in metric:
                metric[stat] *= 2.0
    judged = stats.evidence_gate(gate.compare_ratios(slower, baseline, thresholds, "min"), slower, baseline)
    assert not judged.ok and key in {r.key for r in judged.failures}
    assert all(judged.evidence_for(r).verdict == stats.NO_ROUNDS for r in judged.failures)
