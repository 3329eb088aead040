"""pytest-benchmark JSON as results keyed by workload, case, device and backend, and the ratios
measured within one run (backend vs eager in the same group; a loss vs the triad over its size).

Ratios taken inside one run survive a noisy shared machine: a neighbour slowing everything by 25%
slows eager and the backend alike. Absolute times across runs do not.
"""
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

from ..errors import UsageError

STATISTICS = ("median", "min", "mean")
LOSS_WORKLOADS = ("loss-fwd", "loss-fwdbwd")


@dataclass(frozen=True)
class Result:
    workload: str
    case: str
    device: str
    backend: str
    stats: Dict[str, float]
    extra: Dict[str, Any] = field(default_factory=dict)
    rounds: Tuple[float, ...] = ()  # each round's time, when the JSON has them (stats "data")

    @property
    def key(self) -> str:
        """Stable across runs and checkouts: what the gate matches a baseline on."""
        return "{} {} {} {}".format(self.workload, self.case, self.device, self.backend)

    @property
    def group(self) -> str:
        return "{} {} {}".format(self.workload, self.case, self.device)

    def time(self, statistic: str = "median") -> float:
        return float(self.stats[statistic])


@dataclass
class Run:
    """One pytest-benchmark JSON file (or several merged, e.g. one per test file)."""

    results: Dict[str, Result]
    machine_info: Dict[str, Any] = field(default_factory=dict)
    commit_info: Dict[str, Any] = field(default_factory=dict)
    sources: List[str] = field(default_factory=list)

    def reference(self, result: Result) -> Optional[Result]:
        """The eager result of the same group (eager on the same device)."""
        name = "eager" if result.device == "cpu" else "eager-" + result.device
        if result.backend == name:
            return None
        return self.results.get("{} {}".format(result.group, name))

    def triad(self, result: Result) -> Optional[Result]:
        """The triad over as many elements as the loss's prediction, on the same device."""
        if result.workload not in LOSS_WORKLOADS or "numel" not in result.extra:
            return None
        return self.results.get("triad n{} {} triad".format(result.extra["numel"], result.device))

    def ratio(self, result: Result, metric: str, statistic: str = "median", paired: bool = True) -> Optional[float]:
        """``result``'s time over its reference's (``metric``: "vs_eager" | "vs_triad"; > 1 slower).

        ``paired``: per round, when the suite recorded it (``extra_info["paired"]``: the reference
        ran right before each timed round) -- robust to a shared machine's drifting load, though
        alternating two workloads slows both a little. Otherwise, or with ``paired=False``: the two
        tests' own statistics, each timed back to back (steady state), minutes apart.
        """
        pair = (result.extra.get("paired") or {}).get(metric)
        if paired and pair and statistic in pair:
            return float(pair[statistic])
        ref = self.reference(result) if metric == "vs_eager" else self.triad(result)
        if ref is None or ref.time(statistic) <= 0:
            return None
        return result.time(statistic) / ref.time(statistic)

    def ratios(self, statistic: str = "median") -> Dict[Tuple[str, str], float]:
        """(result key, "vs_eager" | "vs_triad") -> time ratio, for every result that has one."""
        out: Dict[Tuple[str, str], float] = {}
        for key, result in self.results.items():
            for metric in ("vs_eager", "vs_triad"):
                value = self.ratio(result, metric, statistic)
                if value is not None:
                    out[(key, metric)] = value
        return out


def _result(bench: Dict[str, Any], source: str) -> Result:
    extra = bench.get("extra_info") or {}
    missing = [k for k in ("workload", "case", "device", "backend") if k not in extra]
    if missing:
        raise UsageError("{}: benchmark {!r} lacks extra_info {} (not from tests/benchmarks?)".format(
            source, bench.get("fullname", "?"), ", ".join(missing)))
    stats = {k: float(bench["stats"][k]) for k in ("min", "max", "mean", "median", "stddev", "rounds")}
    rounds = tuple(float(t) for t in bench["stats"].get("data") or ())
    return Result(extra["workload"], extra["case"], extra["device"], extra["backend"], stats, extra, rounds)


def read_json(path: Any, cannot_read: str, not_json: str) -> Any:
    """``path`` parsed as JSON; a missing file or bad JSON is a UsageError whose message starts
    with ``cannot_read`` or ``not_json`` (each formatted with the path)."""
    try:
        return json.loads(Path(path).read_text())
    except OSError as exc:
        raise UsageError("{}: {}".format(cannot_read.format(path), exc.strerror or exc))
    except json.JSONDecodeError as exc:
        raise UsageError("{}: {}".format(not_json.format(path), exc))


def load(paths: Iterable[str]) -> Run:
    """Read one or more pytest-benchmark JSON files into one run (later files win on a clash)."""
    run = Run({})
    for path in paths:
        data = read_json(path, "cannot read benchmark results {}", "{} is not pytest-benchmark JSON")
        if not isinstance(data, dict) or "benchmarks" not in data:
            raise UsageError("{} is not pytest-benchmark JSON: no 'benchmarks' list".format(path))
        for bench in data["benchmarks"]:
            result = _result(bench, str(path))
            run.results[result.key] = result
        run.machine_info = data.get("machine_info", run.machine_info)
        run.commit_info = data.get("commit_info", run.commit_info)
        run.sources.append(str(path))
    return run


def median_of_runs(runs: List[Run], statistic: str = "median") -> Dict[str, float]:
    """Per result key, the median over runs of each run's statistic (keys present in every run)."""
    if not runs:
        return {}
    keys = set(runs[0].results)
    for run in runs[1:]:
        keys &= set(run.results)
    return {k: statistics.median(run.results[k].time(statistic) for run in runs) for k in sorted(keys)}
