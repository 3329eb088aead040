"""The gate's statistical decision: a Mann-Whitney U test over the rounds of a case.

The threshold gate (``gate.py``) asks "did the ratio grow by more than x?"; this module asks "is
there evidence that it grew at all?", as Google Benchmark's ``compare.py`` does with its U test
over repetitions. A row then reads "slower with confidence", "faster with confidence" or "no
evidence", and the gate fails a case only when both say so: its change is beyond the threshold
*and* the rounds are significantly slower (``evidence_gate``). Rows without rounds on either side
(an old baseline, synthetic JSON) keep the threshold's decision and say "no rounds".

The samples are the per-round paired ratios the suite records (``extra_info["paired"][metric]
["rounds"]``: each timed round over its reference's call made right before it, a bounded
systematic sample in round order, see ``tests/benchmarks/conftest.py``).

Caveat, measured on the shared machine: rounds within one run are not independent draws (a
neighbour's load drifts over seconds), so with thousands of rounds the test calls even a few
percent "significant". That is why the threshold stays: the U test removes the false alarms of
few, noisy rounds (compile time, large cases), the threshold removes those of tiny shifts.

The test is implemented here, not imported, because scipy is not a dependency of the project
(and would be its largest); it is a few lines: exact null distribution for small samples without
ties, else the normal approximation with tie and continuity corrections (as ``scipy.stats.
mannwhitneyu(method="asymptotic")`` does).
"""
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

if TYPE_CHECKING:  # annotations only: the U test itself needs nothing from the gate
    from .gate import GateReport, Row
    from .results import Run

DEFAULT_ALPHA = 0.01  # two-sided; a false alarm in 1 of 100 unchanged reruns per case
EXACT_MAX_PRODUCT = 400  # n * m up to which the exact distribution is used (no ties)
SAMPLE_ROUNDS = 100  # rounds kept per case and metric in the JSON (and in committed baselines)

SLOWER = "slower with confidence"
FASTER = "faster with confidence"
NO_EVIDENCE = "no evidence"
NO_ROUNDS = "no rounds"


@dataclass(frozen=True)
class UTest:
    u: float  # U of the first sample: pairs (x, y) with x > y, ties counted one half
    p: float  # two-sided p-value
    p_greater: float  # one-sided: the first sample is stochastically larger
    p_less: float
    method: str  # "exact" | "normal"


def _midranks(values: Sequence[float]) -> Tuple[List[float], List[int]]:
    """Ranks 1..N with ties given their mean rank, and the sizes of the tie groups."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    ties: List[int] = []
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        if j > i:
            ties.append(j - i + 1)
        i = j + 1
    return ranks, ties


@lru_cache(maxsize=None)
def _u_counts(n: int, m: int) -> Tuple[int, ...]:
    """How many of the C(n+m, n) orderings give U = 0, 1, ..., n*m (no ties).

    The largest of all n+m values belongs to the first sample (then it beats all m of the other:
    U grows by m) or to the second: f(n, m, u) = f(n-1, m, u-m) + f(n, m-1, u)."""
    if n == 0 or m == 0:
        return (1,)
    a, b = _u_counts(n - 1, m), _u_counts(n, m - 1)
    out = [0] * (n * m + 1)
    for u, c in enumerate(a):
        out[u + m] += c
    for u, c in enumerate(b):
        out[u] += c
    return tuple(out)


def mann_whitney_u(x: Sequence[float], y: Sequence[float]) -> UTest:
    """The Mann-Whitney U test of ``x`` against ``y`` (both need at least one value)."""
    n, m = len(x), len(y)
    if n < 1 or m < 1:
        raise ValueError("mann_whitney_u needs at least one value in each sample, got {} and {}".format(n, m))
    ranks, ties = _midranks(list(x) + list(y))
    u = sum(ranks[:n]) - n * (n + 1) / 2
    if not ties and n * m <= EXACT_MAX_PRODUCT:
        counts = _u_counts(n, m)
        total = sum(counts)
        k = int(round(u))
        p_greater = sum(counts[k:]) / total
        p_less = sum(counts[:k + 1]) / total
        return UTest(u, min(1.0, 2 * min(p_greater, p_less)), p_greater, p_less, "exact")
    big_n = n + m
    mean = n * m / 2
    var = n * m / 12 * ((big_n + 1) - sum(t ** 3 - t for t in ties) / (big_n * (big_n - 1)))
    if var <= 0:  # every value equal: no evidence either way
        return UTest(u, 1.0, 1.0, 1.0, "normal")
    sd = math.sqrt(var)

    def upper(z: float) -> float:  # P(Z >= z)
        return 0.5 * math.erfc(z / math.sqrt(2))

    p_greater = upper((u - mean - 0.5) / sd)
    p_less = upper((mean - u - 0.5) / sd)
    p = min(1.0, 2 * upper((abs(u - mean) - 0.5) / sd))
    return UTest(u, p, p_greater, p_less, "normal")


@dataclass(frozen=True)
class Evidence:
    verdict: str  # SLOWER | FASTER | NO_EVIDENCE | NO_ROUNDS
    p: Optional[float] = None
    n_baseline: int = 0
    n_current: int = 0
    median_change: Optional[float] = None  # median of current's rounds / median of baseline's


def decide(baseline: Optional[Sequence[float]], current: Optional[Sequence[float]],
           alpha: float = DEFAULT_ALPHA) -> Evidence:
    """Is ``current`` (per-round values, larger = slower) slower or faster than ``baseline``?"""
    if not 0 < alpha < 1:
        raise ValueError("alpha must be in (0, 1), got {!r}".format(alpha))
    if not baseline or not current:
        return Evidence(NO_ROUNDS, None, len(baseline or ()), len(current or ()))
    test = mann_whitney_u(current, baseline)
    base_median = _median(baseline)
    change = _median(current) / base_median if base_median > 0 else None
    verdict = NO_EVIDENCE
    if test.p < alpha:
        verdict = SLOWER if test.u > len(current) * len(baseline) / 2 else FASTER
    return Evidence(verdict, test.p, len(baseline), len(current), change)


def _median(values: Sequence[float]) -> float:
    s = sorted(values)
    k = len(s) // 2
    return s[k] if len(s) % 2 else (s[k - 1] + s[k]) / 2


def sample_rounds(values: Sequence[float], k: int = SAMPLE_ROUNDS) -> List[float]:
    """At most ``k`` of ``values``, evenly spaced in round order (the first and last included),
    each to 4 significant digits: what the suite stores per case, so committed baselines stay small."""
    values = list(values)
    if len(values) > k:
        values = [values[round(i * (len(values) - 1) / (k - 1))] for i in range(k)] if k > 1 else values[:1]
    return [float("{:.4g}".format(v)) for v in values]


def paired_rounds(extra: Dict, metric: str) -> Optional[List[float]]:
    """The per-round ratios a result recorded for ``metric`` ("vs_eager" | "vs_triad"), if any."""
    rounds = ((extra.get("paired") or {}).get(metric) or {}).get("rounds")
    return [float(v) for v in rounds] if rounds else None


# ---------------------------------------------------------------------------------------------
# the ratio gate with evidence
# ---------------------------------------------------------------------------------------------
@dataclass
class EvidenceGate:
    """A threshold gate report (``gate.GateReport``) with each row's evidence from the rounds."""

    report: "GateReport"
    evidence: Dict[Tuple[str, str], Evidence]
    alpha: float
    test: str = "Mann-Whitney U over per-round paired ratios"

    def evidence_for(self, row: "Row") -> Evidence:
        return self.evidence.get((row.key, row.metric), Evidence(NO_ROUNDS))

    def decision(self, row: "Row") -> str:
        """FAIL: beyond the threshold and slower with confidence (or beyond it with no rounds to
        judge by, as the threshold gate alone decides); "pass (no evidence)": beyond the threshold,
        but the rounds do not show it; otherwise the threshold gate's status."""
        if row.status != "SLOWER":
            return row.status
        verdict = self.evidence_for(row).verdict
        if verdict in (SLOWER, NO_ROUNDS):
            return "FAIL"
        return "pass ({})".format(verdict)

    @property
    def failures(self) -> List["Row"]:
        return [r for r in self.report.rows if self.decision(r) == "FAIL"]

    @property
    def ok(self) -> bool:
        return not self.failures and bool(self.report.compared)

    @property
    def threshold_only(self) -> bool:
        """No compared row has baseline rounds (a baseline recorded before the rounds were kept):
        the gate is the threshold alone, and says so."""
        compared = self.report.compared
        return bool(compared) and all(self.evidence_for(r).n_baseline == 0 for r in compared)

    def to_json(self) -> Dict:
        data = self.report.to_json()
        data.update(ok=self.ok, alpha=self.alpha, test=self.test, threshold_only=self.threshold_only)
        for row, out in zip(self.report.rows, data["rows"]):
            ev = self.evidence_for(row)
            out.update(evidence=ev.verdict, p=ev.p, rounds=[ev.n_baseline, ev.n_current], decision=self.decision(row))
        return data

    def to_markdown(self, only_notable: bool = False) -> str:
        r = self.report
        rows = [row for row in r.rows if not only_notable or self.decision(row) != "ok"]
        head = ("Gate ({}, {} of each run; {}, alpha {}): {} compared, {} beyond threshold, "
                "{} of them slower with confidence or without rounds, {} new, {} missing: {}").format(
            r.mode, r.statistic, self.test, self.alpha, len(r.compared), len(r.failures), len(self.failures),
            sum(x.status == "new" for x in r.rows), sum(x.status == "missing" for x in r.rows),
            "PASS" if self.ok else "FAIL")
        lines = [head, ""]
        if self.threshold_only:
            lines += [RE_RECORD, ""]
        lines += ["| case | backend | metric | baseline | current | change | threshold (why) | status "
                 "| evidence (p, rounds) | decision |", "|---|---|---|---:|---:|---:|---:|---|---|---|"]
        for row in rows:
            workload, case, device, backend = row.key.split(" ")
            ev = self.evidence_for(row)
            detail = "" if ev.p is None else " (p={:.2g}, {}/{})".format(ev.p, ev.n_baseline, ev.n_current)
            lines.append("| {} {} {} | {} | {} | {} | {} | {} | {} ({}) | {} | {}{} | {} |".format(
                workload, case, device, backend, row.metric, _fmt(row.baseline), _fmt(row.current),
                "-" if row.change is None else "{:.2f}x".format(row.change),
                "-" if row.threshold is None else "{:.2f}".format(row.threshold), row.reason, row.status,
                ev.verdict, detail, self.decision(row)))
        return "\n".join(lines)


def _fmt(value: Optional[float]) -> str:
    return "-" if value is None else "{:.3g}".format(value)


RE_RECORD = ("The baseline holds no per-round data, so no row has a statistical test: each is decided by its "
             "threshold alone. Re-record it on a quiet machine with `compile-losses bench --quick --record-baseline` "
             "(see tests/benchmarks/baselines/README.md).")


def evidence_gate(report: "GateReport", current: "Run", baseline: "Run", alpha: float = DEFAULT_ALPHA) -> EvidenceGate:
    """Each ratio row of ``report`` (from ``gate.compare_ratios(current, baseline, ...)``) judged
    by the U test over the two runs' per-round paired ratios."""
    evidence: Dict[Tuple[str, str], Evidence] = {}
    for row in report.rows:
        cur, base = current.results.get(row.key), baseline.results.get(row.key)
        evidence[(row.key, row.metric)] = decide(paired_rounds(base.extra, row.metric) if base else None,
                                                 paired_rounds(cur.extra, row.metric) if cur else None, alpha)
    return EvidenceGate(report, evidence, alpha)


def interleaved_evidence(report: "GateReport", baseline_runs: Sequence["Run"], current_runs: Sequence["Run"],
                         alpha: float = DEFAULT_ALPHA) -> EvidenceGate:
    """Each row of ``report`` (from ``gate.compare_interleaved``) judged by the U test over the
    rounds' times (pytest-benchmark's per-round data), each run's sampled to ``SAMPLE_ROUNDS`` so
    every run weighs the same, pooled over the runs of each side."""
    def pooled(runs: Sequence["Run"], key: str) -> Optional[List[float]]:
        out: List[float] = []
        for run in runs:
            result = run.results.get(key)
            if result is None or not result.rounds:
                return None
            out += sample_rounds(result.rounds)
        return out or None

    evidence = {(row.key, row.metric): decide(pooled(baseline_runs, row.key), pooled(current_runs, row.key), alpha)
                for row in report.rows}
    return EvidenceGate(report, evidence, alpha, "Mann-Whitney U over per-round times, pooled over runs")
