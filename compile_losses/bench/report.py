"""The markdown summary table and the PNG plot of one benchmark run.

Per result: time per call (microseconds below a millisecond, so small-batch cases read as
us/call), throughput (GB/s for the loss-alone cases and the triad, samples/s for nets), the ratio
to eager in the same group, a loss's time as a multiple of the triad over its size (``x triad``;
1.0 would be memory speed) and its peak memory next to eager's.
"""
from collections import defaultdict
from typing import Dict, List, Optional

from .results import LOSS_WORKLOADS, Result, Run

_WORKLOAD_ORDER = ("loss-fwdbwd", "loss-fwd", "triad", "seed-train", "seed-infer", "net-train", "net-infer")
_WORKLOAD_TITLES = {
    "loss-fwdbwd": "Loss alone, forward + backward",
    "loss-fwd": "Loss alone, forward",
    "triad": "Streaming triad (torch.add(x, y, out=z), reused buffer): the memory roofline",
    "seed-train": "SeedNet train step (forward, loss, backward, SGD)",
    "seed-infer": "SeedNet inference loss",
    "net-train": "Larger nets, train step",
    "net-infer": "Larger nets, inference loss",
}


def fmt_time(seconds: float) -> str:
    if seconds < 1e-3:
        return "{:.1f} us".format(seconds * 1e6)
    if seconds < 1.0:
        return "{:.2f} ms".format(seconds * 1e3)
    return "{:.2f} s".format(seconds)


def _fmt_rate(value: float, unit: str) -> str:
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return "{:.2f} {}{}".format(value / scale, prefix, unit)
    return "{:.1f} {}".format(value, unit)


def throughput(result: Result, statistic: str = "median") -> Optional[float]:
    t = result.time(statistic)
    if t <= 0 or result.workload.startswith("compile-"):  # compile time is read as seconds
        return None
    if "bytes_per_call" in result.extra:
        return result.extra["bytes_per_call"] / t
    return result.extra.get("samples", 0) / t


def _throughput_text(result: Result, statistic: str) -> str:
    value = throughput(result, statistic)
    if value is None:
        return "-"
    return _fmt_rate(value, "B/s" if "bytes_per_call" in result.extra else " samples/s")


def _workload_key(workload: str) -> tuple:
    if workload in _WORKLOAD_ORDER:
        return (0, _WORKLOAD_ORDER.index(workload), workload)
    return (1, 0, workload)


def summary_markdown(run: Run, statistic: str = "median", title: str = "Benchmark summary") -> str:
    by_workload: Dict[str, List[Result]] = defaultdict(list)
    for result in run.results.values():
        by_workload[result.workload].append(result)
    info = next(iter(run.results.values())).extra if run.results else {}
    versions = info.get("versions", {})
    lines = ["# {}".format(title), "",
             "{} of each case; device {}; {} threads; torch {}, onnxruntime {}, python {}.".format(
                 statistic, info.get("device_name", "?"), info.get("threads", "?"), versions.get("torch", "?"),
                 versions.get("onnxruntime", "?"), versions.get("python", "?")),
             "`vs eager`: time / eager's time for the same work (< 1 is faster). `x triad`: time / the "
             "triad's over as many elements (1.0 = memory speed). First from each case's own steady-state "
             "time; `(paired)`: median per-round ratio with the reference run right before each timed call "
             "(what the gate uses: robust to a shared machine's drifting load). `peak mem`: peak resident memory of one "
             "forward+backward above the process before its inputs were built, and as a multiple of eager's.", ""]
    for workload in sorted(by_workload, key=_workload_key):
        results = sorted(by_workload[workload], key=lambda r: (r.device, r.case, r.backend != _ref_name(r), r.backend))
        lines += ["## " + _WORKLOAD_TITLES.get(workload, workload.replace("compile-", "Compile time, ")), ""]
        loss = workload in LOSS_WORKLOADS
        header = "| case | device | backend | time/call | throughput | vs eager | (paired) |"
        if loss:
            header += " x triad | (paired) | peak mem |"
        lines += [header, "|" + "---|" * (header.count("|") - 1)]
        for r in results:
            ref = run.reference(r)
            eager = r.backend == _ref_name(r)
            row = "| {} | {} | {} | {} | {} | {} | {} |".format(
                r.case, r.device, r.backend + (" (planted x{})".format(r.extra["planted_slowdown"])
                                               if "planted_slowdown" in r.extra else ""),
                fmt_time(r.time(statistic)), _throughput_text(r, statistic),
                "1.00" if eager else _fmt_ratio(run.ratio(r, "vs_eager", statistic, paired=False)),
                "" if eager else _fmt_ratio(run.ratio(r, "vs_eager", statistic)))
            if loss:
                row += " {} | {} | {} |".format(_fmt_ratio(run.ratio(r, "vs_triad", statistic, paired=False)),
                                                _fmt_ratio(run.ratio(r, "vs_triad", statistic)), _memory_text(r, ref))
            lines.append(row)
        lines.append("")
        choices = [r for r in results if r.extra.get("choice")]
        if choices:  # backends that choose per case (compile's settings or eager fallback, fast's pick)
            lines += ["What the choosing backends chose (timed on the case at preparation):", ""]
            lines += ["- {} {}: {}".format(r.case, r.backend, r.extra["choice"]) for r in choices]
            lines.append("")
    return "\n".join(lines)


def _fmt_ratio(value: Optional[float]) -> str:
    return "-" if value is None else "{:.2f}".format(value)


def _ref_name(result: Result) -> str:
    return "eager" if result.device == "cpu" else "eager-" + result.device


def _memory_text(result: Result, ref: Optional[Result]) -> str:
    peak = result.extra.get("peak_memory_bytes")
    if peak is None:
        return "-"
    text = "{:.0f} MB".format(peak / 1e6)
    ref_peak = ref.extra.get("peak_memory_bytes") if ref is not None else None
    if ref_peak:
        text += " ({:.2f}x)".format(peak / ref_peak)
    return text


def plot(run: Run, path: str, statistic: str = "median", title: str = "compile_losses throughput") -> None:
    """Throughput per backend and case (log scale), one panel per workload; triad bars in loss panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_workload: Dict[str, List[Result]] = defaultdict(list)
    for result in run.results.values():
        if result.workload != "triad":
            by_workload[result.workload].append(result)
    workloads = sorted(by_workload, key=_workload_key)
    if not workloads:
        raise ValueError("no results to plot")
    backends = sorted({r.backend for rs in by_workload.values() for r in rs} | {"triad"})
    colors = {b: plt.get_cmap("tab20")(i % 20) for i, b in enumerate(backends)}
    heights = [max(2.0, 0.35 * len({(r.case, r.device) for r in by_workload[w]}) * 2 + 1.2) for w in workloads]
    fig, axes = plt.subplots(len(workloads), 1, figsize=(12, sum(heights)),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, workload in zip(axes[:, 0], workloads):
        results = by_workload[workload]
        cases = sorted({(r.case, r.device) for r in results})
        names = sorted({r.backend for r in results}) + (["triad"] if workload in LOSS_WORKLOADS else [])
        values_seen: List[float] = []
        width = 0.8 / max(len(names), 1)
        compile_time = workload.startswith("compile-")
        for j, name in enumerate(names):
            ys, xs = [], []
            for i, (case, device) in enumerate(cases):
                r = next((r for r in results if (r.case, r.device, r.backend) == (case, device, name)), None)
                if name == "triad":
                    loss = next(r for r in results if (r.case, r.device) == (case, device))
                    r = run.triad(loss)
                value = None
                if r is not None:
                    value = r.time(statistic) if compile_time else throughput(r, statistic)
                if value:
                    ys.append(i + (j - (len(names) - 1) / 2) * width)
                    xs.append(value)
                    values_seen.append(value)
            ax.barh(ys, xs, height=width, color=colors[name], label=name)
        ax.set_yticks(range(len(cases)))
        ax.set_yticklabels(["{} {}".format(c, d) for c, d in cases], fontsize=7)
        ax.set_xscale("log")
        if values_seen:  # bars on a log axis start at its left edge: keep it well below the shortest
            ax.set_xlim(min(values_seen) / 3, max(values_seen) * 1.5)
        unit = "bytes/s" if workload in LOSS_WORKLOADS else ("seconds to first result" if compile_time else "samples/s")
        ax.set_xlabel(unit, fontsize=8)
        ax.set_title(_WORKLOAD_TITLES.get(workload, workload), fontsize=9)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.grid(axis="x", which="both", alpha=0.3)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
