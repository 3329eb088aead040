"""Benchmark history: one JSON line per run, appended by ``compile-losses bench --record [PATH]``,
and its plot over commits (``--history-plot PNG``), as ASV and github-action-benchmark keep theirs.

A line holds the commit (the run's own ``commit_info`` from pytest-benchmark, else ``git``), the
date, the machine, the versions and, per case, its median time and its in-run ratios (vs eager,
vs the triad: the numbers that survive a busier or quieter machine, so lines from different days
stay comparable). The default file is ``.benchmarks/history.jsonl`` at the checkout's root
(pytest-benchmark's own storage folder, ignored by git): a CI job keeps it as a cache or an
artifact, or commits it to a branch of its own.

Appending is atomic: the line is written with one ``write`` to a file opened ``O_APPEND`` under an
exclusive ``flock``, so two jobs recording at once interleave whole lines, never parts of them.
"""
import datetime
import json
import os
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..errors import UsageError
from .results import Run

FORMAT = 1


def default_path() -> Path:
    from .runner import repo_root

    return repo_root() / ".benchmarks" / "history.jsonl"


def _git_commit(root: Path) -> Dict[str, Any]:
    def git(*args: str) -> Optional[str]:
        try:
            proc = subprocess.run(["git", "-C", str(root)] + list(args), capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {}
    return {"id": commit, "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
            "branch": git("rev-parse", "--abbrev-ref", "HEAD")}


def entry(run: Run, statistic: str = "median", now: Optional[datetime.datetime] = None,
          root: Optional[Path] = None) -> Dict[str, Any]:
    """The history line of ``run``."""
    from .runner import repo_root

    # pytest-benchmark's own record of the commit measured, unless it had none ("unversioned", "unknown")
    measured = run.commit_info.get("id") not in (None, "", "unversioned", "unknown")
    info = run.commit_info if measured else _git_commit(root or repo_root())
    first = next(iter(run.results.values())).extra if run.results else {}
    ratios = run.ratios(statistic)
    cases: Dict[str, Dict[str, float]] = {}
    for key, result in sorted(run.results.items()):
        case = {statistic + "_s": result.time(statistic)}
        for metric in ("vs_eager", "vs_triad"):
            if (key, metric) in ratios:
                case[metric] = ratios[(key, metric)]
        cases[key] = case
    return {"format": FORMAT, "commit": info.get("id"), "dirty": bool(info.get("dirty", False)),
            "branch": info.get("branch"),
            "date": (now or datetime.datetime.now(datetime.timezone.utc)).isoformat(timespec="seconds"),
            "machine": first.get("device_name"), "mode": first.get("mode"), "threads": first.get("threads"),
            "versions": first.get("versions", {}), "statistic": statistic, "cases": cases}


def append(path: Path, line: Dict[str, Any]) -> None:
    """Append ``line`` as one JSON line, atomically (see the module's docstring)."""
    data = (json.dumps(line, sort_keys=True) + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(str(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
        except (ImportError, OSError):  # no flock (Windows, some network filesystems): O_APPEND alone
            pass
        written = os.write(fd, data)
        if written != len(data):
            raise OSError("short write to {}: {} of {} bytes".format(path, written, len(data)))
    finally:
        os.close(fd)


def read(path: Path) -> List[Dict[str, Any]]:
    """Every line of a history file; a bad line is a UsageError naming the file and line."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise UsageError("cannot read benchmark history {}: {}".format(path, exc.strerror or exc))
    lines = []
    for i, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise UsageError("benchmark history {} line {} is not JSON: {}".format(path, i, exc))
        if not isinstance(line, dict) or not isinstance(line.get("cases"), dict):
            raise UsageError("benchmark history {} line {} has no 'cases' object (not written by bench --record?)".format(
                path, i))
        lines.append(line)
    return lines


def _label(line: Dict[str, Any]) -> str:
    commit = line.get("commit") or "no git"
    return "{}{}\n{}".format(commit[:8], "+" if line.get("dirty") else "", (line.get("date") or "")[:10])


def plot(lines: List[Dict[str, Any]], path: str, metric: str = "vs_eager",
         title: str = "compile_losses benchmark history") -> None:
    """Each case's ``metric`` over the history's runs (in file order), one panel per workload,
    one colour per backend (``report.backend_colors``), one line style per case."""
    if not lines:
        raise UsageError("the benchmark history is empty: nothing to plot (record runs with bench --record)")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from .report import _WORKLOAD_TITLES, _ratio_ticks, _workload_key, backend_colors

    series: Dict[str, Dict[str, List[Optional[float]]]] = {}  # workload -> key -> values per line
    for i, line in enumerate(lines):
        for key, case in line["cases"].items():
            if metric in case:
                workload = key.split(" ")[0]
                values = series.setdefault(workload, {}).setdefault(key, [None] * len(lines))
                values[i] = case[metric]
    if not series:
        raise UsageError("no case in the benchmark history has a {} ratio".format(metric))
    workloads = sorted(series, key=_workload_key)
    colors = backend_colors({k.split(" ")[3] for w in workloads for k in series[w]})
    styles = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "D", "v", "P"]
    fig, axes = plt.subplots(len(workloads), 1, figsize=(max(8, 1.0 * len(lines) + 5), 3.2 * len(workloads)),
                             squeeze=False, constrained_layout=True)
    xs = list(range(len(lines)))
    for ax, workload in zip(axes[:, 0], workloads):
        keys = sorted(series[workload])
        cases = sorted({k.split(" ")[1] for k in keys})
        for key in keys:
            _, case, _, backend = key.split(" ")
            j = cases.index(case)
            points = [(x, v) for x, v in zip(xs, series[workload][key]) if v is not None]
            ax.plot([p[0] for p in points], [p[1] for p in points], color=colors[backend],
                    linestyle=styles[j % len(styles)], marker=markers[j % len(markers)], markersize=4)
        ax.axhline(1.0, color="black", linewidth=1)
        ax.set_yscale("log")
        _ratio_ticks(ax, axis="y")
        ax.set_title(_WORKLOAD_TITLES.get(workload, workload), fontsize=9, loc="left")
        ax.set_ylabel("time / eager's" if metric == "vs_eager" else "time / triad's", fontsize=8)
        ax.set_xticks(xs)
        ax.set_xticklabels([_label(line) for line in lines], fontsize=7)
        ax.grid(axis="y", which="both", alpha=0.3)
        handles = [Line2D([], [], color=colors[b], label=b) for b in sorted({k.split(" ")[3] for k in keys})]
        handles += [Line2D([], [], color="grey", linestyle=styles[j % len(styles)], marker=markers[j % len(markers)],
                           label=c) for j, c in enumerate(cases)]
        handles.append(Line2D([], [], color="black", label="eager = 1 (below: faster)"))
        ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=90)
    plt.close(fig)
