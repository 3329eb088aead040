"""The markdown summary table and the PNG plot of one benchmark run.

Per result: time per call (microseconds below a millisecond, so small-batch cases read as
us/call), throughput (GB/s for the loss-alone cases and the triad, samples/s for nets), the ratio
to eager in the same group, a loss's time as a multiple of the triad over its size (``x triad``;
1.0 would be memory speed) and its peak memory next to eager's.
"""
import zlib
from collections import defaultdict
from typing import Dict, Iterable, List, Optional

from .results import LOSS_WORKLOADS, Result, Run

_WORKLOAD_ORDER = ("loss-fwdbwd", "loss-fwd", "triad", "seed-train", "seed-adamw", "seed-infer", "net-train", "net-infer")
_WORKLOAD_TITLES = {
    "loss-fwdbwd": "Loss alone, forward + backward",
    "loss-fwd": "Loss alone, forward",
    "triad": "Streaming triad (torch.add(x, y, out=z), reused buffer): the memory roofline",
    "seed-train": "SeedNet train step (forward, loss, backward, SGD)",
    "seed-adamw": "SeedNet AdamW step (forward, loss, backward, AdamW update), vs eager torch.optim.AdamW",
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


_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
            "#7f7f7f", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#9edae5")
REFERENCE_COLOR = "#000000"
TRIAD_COLOR = "#555555"


def backend_colors(names: Iterable[str]) -> Dict[str, str]:
    """One colour per backend, the same in every panel, plot and run: a backend's place among the
    declared adapters (``compile_losses.backends.BACKENDS``) picks it, so it does not depend on which
    backends a run happened to have; the references (eager) are black; a name no adapter declares
    (an old JSON's) gets a colour from a hash of its name."""
    from ..backends import BACKENDS

    declared = [n for n in BACKENDS if not BACKENDS[n].reference]
    out = {}
    for name in names:
        if name in BACKENDS and BACKENDS[name].reference:
            out[name] = REFERENCE_COLOR
        elif name in declared:
            out[name] = _PALETTE[declared.index(name) % len(_PALETTE)]
        else:
            out[name] = _PALETTE[zlib.crc32(name.encode()) % len(_PALETTE)]
    return out


def plot(run: Run, path: str, statistic: str = "median", title: str = "compile_losses benchmarks") -> None:
    """What a user decides on: each backend's time against eager's for the same work, per case, as
    dots on a log-ratio axis (1.0 = eager, the reference; left of it faster), one panel per workload,
    one colour per backend throughout; in the loss panels the triad over as many elements (the memory
    roofline: a streaming pass reading two tensors and writing one) on the same axis. Compile time (seconds, not a ratio) is its own small
    panel at the bottom. Ratios are the paired ones where the run recorded them (as the gate reads)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    by_workload: Dict[str, List[Result]] = defaultdict(list)
    for result in run.results.values():
        if result.workload != "triad":
            by_workload[result.workload].append(result)
    ratio_workloads = [w for w in sorted(by_workload, key=_workload_key) if not w.startswith("compile-")]
    compile_results = [r for w in by_workload if w.startswith("compile-") for r in by_workload[w]]
    if not ratio_workloads and not compile_results:
        raise ValueError("no results to plot")
    backends = sorted({r.backend for rs in by_workload.values() for r in rs if r.backend != _ref_name(r)})
    colors = backend_colors(backends)

    def rows_of(results: List[Result]) -> List[tuple]:
        return sorted({(r.case, r.device) for r in results})

    panels = [(w, rows_of(by_workload[w])) for w in ratio_workloads]
    compile_rows = sorted({(r.workload[len("compile-"):] + " " + r.case, r.device) for r in compile_results})
    heights = [0.32 * len(rows) + 0.9 for _, rows in panels] + ([0.32 * len(compile_rows) + 0.9] if compile_rows else [])
    fig, axes = plt.subplots(len(heights), 1, figsize=(11, sum(heights) + 1.2), squeeze=False,
                             gridspec_kw={"height_ratios": heights}, constrained_layout=True)
    offsets = {b: (i - (len(backends) - 1) / 2) * min(0.6 / max(len(backends), 1), 0.12) for i, b in enumerate(backends)}
    roofline_drawn = False
    for ax, (workload, rows) in zip(axes[:, 0], panels):
        results = by_workload[workload]
        values: List[float] = [1.0]
        for r in results:
            if r.backend == _ref_name(r):
                continue
            ratio = run.ratio(r, "vs_eager", statistic)
            if ratio:
                y = rows.index((r.case, r.device)) + offsets[r.backend]
                ax.plot([ratio], [y], "o", color=colors[r.backend], markersize=6)
                values.append(ratio)
        if workload in LOSS_WORKLOADS:  # the triad's time over eager's: where memory speed lies
            for r in results:
                if r.backend == _ref_name(r):
                    vs_triad = run.ratio(r, "vs_triad", statistic)
                    if vs_triad:
                        y = rows.index((r.case, r.device))
                        ax.plot([1.0 / vs_triad], [y], "|", color=TRIAD_COLOR, markersize=16, markeredgewidth=2.5)
                        values.append(1.0 / vs_triad)
                        roofline_drawn = True
        ax.axvline(1.0, color=REFERENCE_COLOR, linewidth=1.2)
        ax.set_xscale("log")
        low, high = min(values), max(values)
        ax.set_xlim(low / 1.6, high * 1.6)
        ax.set_ylim(len(rows) - 0.5, -0.5)
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels(["{} {}".format(c, d) for c, d in rows], fontsize=7)
        ax.set_title(_WORKLOAD_TITLES.get(workload, workload), fontsize=9, loc="left")
        ax.set_xlabel("time / eager's for the same work (log; < 1 faster than eager)", fontsize=8)
        _ratio_ticks(ax)
        ax.grid(axis="x", which="both", alpha=0.3)
        ax.tick_params(axis="x", labelsize=7)
    if compile_rows:
        ax = axes[-1, 0]
        for r in compile_results:
            y = compile_rows.index((r.workload[len("compile-"):] + " " + r.case, r.device)) + offsets.get(r.backend, 0.0)
            ax.plot([r.time(statistic)], [y], "o", color=colors.get(r.backend, REFERENCE_COLOR), markersize=6)
        ax.set_xscale("log")
        ax.set_ylim(len(compile_rows) - 0.5, -0.5)
        ax.set_yticks(range(len(compile_rows)))
        ax.set_yticklabels(["{} {}".format(c, d) for c, d in compile_rows], fontsize=7)
        ax.set_title("Compile time: preparation to first result (cold: empty inductor cache; warm: on-disk cache)",
                     fontsize=9, loc="left")
        _ratio_ticks(ax, unit=" s")
        ax.set_xlabel("seconds (log)", fontsize=8)
        ax.grid(axis="x", which="both", alpha=0.3)
        ax.tick_params(axis="x", labelsize=7)
    handles = [Line2D([], [], color=colors[b], marker="o", linestyle="", label=b) for b in backends]
    handles.append(Line2D([], [], color=REFERENCE_COLOR, label="eager: the reference (1.0)"))
    if roofline_drawn:
        handles.append(Line2D([], [], color=TRIAD_COLOR, marker="|", markersize=12, markeredgewidth=2.5, linestyle="",
                              label="triad over as many elements (memory roofline)"))
    # the title heads the shared legend: one block above the panels, nothing drawn over them
    legend = fig.legend(handles=handles, loc="outside upper center", ncol=min(len(handles), 5), fontsize=8,
                        frameon=False, title=title, title_fontproperties={"size": 11, "weight": "bold"})
    legend.get_title().set_ha("center")
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _ratio_ticks(ax, unit: str = "x", axis: str = "x") -> None:  # type: ignore[no-untyped-def]
    """Log-axis ticks at 1, 2, 5 per decade, labelled 0.5x, 1x, 2x (no 10^k notation)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    which = ax.xaxis if axis == "x" else ax.yaxis
    which.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    which.set_major_formatter(FuncFormatter(lambda v, _: "{:g}{}".format(float("{:.2g}".format(v)), unit)))
    which.set_minor_formatter(NullFormatter())
