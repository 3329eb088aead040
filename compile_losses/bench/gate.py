"""The performance-regression gate.

Two ways to compare, both with a threshold per case:

* **Ratio gate** (``compare_ratios``): a run against a saved baseline JSON, by the ratios each run
  measured within itself -- a backend's time over eager's in the same group (``vs_eager``), and a
  loss's time over the triad of the same size (``vs_triad``). A case fails when its ratio grew by
  more than its threshold: ``current_ratio / baseline_ratio > threshold``. A shared machine that
  is 25% slower today moves both sides of a ratio, so this survives CI noise that absolute times
  do not. Eager's own net cases have no in-run reference; they are covered by the interleaved mode
  (and by pytest-benchmark's ``--benchmark-compare`` on dedicated hardware).
  The CLI compares each ratio's *minimum* by default (fastest round of the case over fastest of
  its paired reference): over 10 unchanged reruns of ``--quick`` on the shared 2-core machine,
  every ``vs_eager`` ratio stayed within 1.41x of the baseline's with minima (``vs_triad``: 2.14x
  in a run during a load spike), against up to 4.6x with medians, whose tails follow the
  neighbours' load. A planted 2x slowdown moves both by about 2x.
* **Interleaved gate** (``compare_interleaved``): baseline and working tree measured alternately
  in the same job (A B A B ...); per case, the median over rounds of each run's statistic; a case
  fails when ``current / baseline > threshold``. Spread within one job is far smaller than
  between jobs, so absolute times are comparable here, eager included.

Thresholds live in a JSON file (default ``tests/benchmarks/baselines/thresholds.json``)::

    {"default": 1.5,
     "rules": [{"match": "seed-* *-b10 * * *", "threshold": 1.8, "reason": "..."}]}

``match`` is an fnmatch pattern over ``"<workload> <case> <device> <backend> <metric>"`` (metric is
``vs_eager``, ``vs_triad`` or ``time`` for the interleaved gate); the last matching rule wins.
A threshold below 1.0 is refused, and every rule needs a reason (it is printed with the row).
A rule with ``"gate": false`` (and no threshold) keeps matching rows in the report, marked
``ungated``, without failing on them: for cases whose spread on the machine was measured to exceed
any useful threshold.
"""
import fnmatch
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..errors import UsageError
from .results import Run, median_of_runs, read_json

DEFAULT_THRESHOLD = 1.5


@dataclass(frozen=True)
class Rule:
    match: str
    threshold: Optional[float]  # None: reported, never failed ("gate": false)
    reason: str


@dataclass
class Thresholds:
    default: float = DEFAULT_THRESHOLD
    rules: List[Rule] = field(default_factory=list)

    def for_row(self, key: str, metric: str) -> Tuple[Optional[float], str]:
        subject = "{} {}".format(key, metric)
        threshold, reason = self.default, "default"
        for rule in self.rules:
            if fnmatch.fnmatchcase(subject, rule.match):
                threshold, reason = rule.threshold, rule.reason
        return threshold, reason

    @classmethod
    def from_dict(cls, data: Dict[str, Any], source: str = "thresholds") -> "Thresholds":
        default = _threshold(data.get("default", DEFAULT_THRESHOLD), "{}: default".format(source))
        rules = []
        for i, raw in enumerate(data.get("rules", [])):
            where = "{}: rules[{}]".format(source, i)
            if not isinstance(raw, dict) or not isinstance(raw.get("match"), str) or not raw.get("reason"):
                raise UsageError("{} must have a 'match' pattern, a 'threshold' and a 'reason', got {!r}".format(where, raw))
            if raw.get("gate", True) is False:
                if "threshold" in raw:
                    raise UsageError("{} has 'gate': false, so it takes no threshold".format(where))
                rules.append(Rule(raw["match"], None, str(raw["reason"])))
                continue
            rules.append(Rule(raw["match"], _threshold(raw.get("threshold"), where), str(raw["reason"])))
        return cls(default, rules)

    @classmethod
    def load(cls, path: Optional[str]) -> "Thresholds":
        if path is None:
            return cls()
        data = read_json(path, "cannot read thresholds {}", "thresholds {} is not JSON")
        return cls.from_dict(data, str(path))


def _threshold(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 1.0:
        raise UsageError("{} threshold must be a number >= 1.0 (a ratio of times), got {!r}".format(where, value))
    return float(value)


@dataclass(frozen=True)
class Row:
    key: str
    metric: str
    baseline: Optional[float]
    current: Optional[float]
    threshold: Optional[float]
    reason: str

    @property
    def change(self) -> Optional[float]:
        if self.baseline is None or self.current is None or self.baseline <= 0:
            return None
        return self.current / self.baseline

    @property
    def status(self) -> str:
        change = self.change
        if self.baseline is None:
            return "new"
        if self.current is None:
            return "missing"
        if self.threshold is None:
            return "ungated"
        if change is None:  # a baseline of 0 (or less) gives no ratio to hold a run to
            return "invalid"
        if change > self.threshold:
            return "SLOWER"
        if change < 1.0 / self.threshold:
            return "faster"
        return "ok"


@dataclass
class GateReport:
    mode: str
    statistic: str
    rows: List[Row]

    @property
    def failures(self) -> List[Row]:
        return [r for r in self.rows if r.status in ("SLOWER", "invalid")]

    @property
    def compared(self) -> List[Row]:
        """Rows with both sides measured and a threshold to hold them to."""
        return [r for r in self.rows if r.change is not None and r.threshold is not None]

    @property
    def ok(self) -> bool:
        """Passes when nothing got slower beyond its threshold (and no baseline is 0 or less) and at
        least one case was compared."""
        return not self.failures and bool(self.compared)

    def to_json(self) -> Dict[str, Any]:
        return {"mode": self.mode, "statistic": self.statistic, "ok": self.ok,
                "rows": [dict(asdict(r), change=r.change, status=r.status) for r in self.rows]}

    def to_markdown(self, only_notable: bool = False) -> str:
        rows = [r for r in self.rows if not only_notable or r.status != "ok"]
        head = "Gate ({}, {} of each run): {} compared, {} slower beyond threshold, {} new, {} missing: {}".format(
            self.mode, self.statistic, len(self.compared), len(self.failures),
            sum(r.status == "new" for r in self.rows), sum(r.status == "missing" for r in self.rows),
            "PASS" if self.ok else "FAIL")
        lines = [head, "", "| case | backend | metric | baseline | current | change | threshold (why) | status |",
                 "|---|---|---|---:|---:|---:|---:|---|"]
        for r in rows:
            workload, case, device, backend = r.key.split(" ")
            lines.append("| {} {} {} | {} | {} | {} | {} | {} | {} ({}) | {} |".format(
                workload, case, device, backend, r.metric, _fmt(r.baseline), _fmt(r.current),
                "-" if r.change is None else "{:.2f}x".format(r.change),
                "-" if r.threshold is None else "{:.2f}".format(r.threshold), r.reason, r.status))
        return "\n".join(lines)


def _fmt(value: Optional[float]) -> str:
    if value is None:
        return "-"
    return "{:.3g}".format(value)


def compare_ratios(current: Run, baseline: Run, thresholds: Thresholds, statistic: str = "median") -> GateReport:
    """The ratio gate: each in-run ratio of ``current`` against the same ratio in ``baseline``."""
    cur, base = current.ratios(statistic), baseline.ratios(statistic)
    rows = []
    for key, metric in sorted(set(cur) | set(base)):
        threshold, reason = thresholds.for_row(key, metric)
        rows.append(Row(key, metric, base.get((key, metric)), cur.get((key, metric)), threshold, reason))
    return GateReport("ratios vs baseline", statistic, rows)


def compare_interleaved(baseline_runs: Sequence[Run], current_runs: Sequence[Run], thresholds: Thresholds,
                        statistic: str = "median") -> GateReport:
    """The interleaved gate: per case, median over rounds of baseline vs of the working tree."""
    base = median_of_runs(list(baseline_runs), statistic)
    cur = median_of_runs(list(current_runs), statistic)
    rows = []
    for key in sorted(set(base) | set(cur)):
        threshold, reason = thresholds.for_row(key, "time")
        rows.append(Row(key, "time", base.get(key), cur.get(key), threshold, reason))
    return GateReport("interleaved, {} rounds".format(min(len(baseline_runs), len(current_runs))), statistic, rows)
