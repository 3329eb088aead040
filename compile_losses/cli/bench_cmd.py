"""compile-losses bench: run the throughput benchmarks, write JSON + plot + summary, and gate.

    compile-losses bench --quick                          # JSON, PNG plot, markdown table
    compile-losses bench --quick --compare auto           # + ratio gate vs this machine's baseline
    compile-losses bench --quick --gate-against-ref HEAD  # + interleaved gate vs a git ref
    compile-losses bench --from-json run.json --compare base.json   # gate existing results only
    compile-losses bench --quick --record --history-plot history.png  # append to the history, plot it

Exit codes: 0 done (gate passed, if asked); 1 the gate found a slowdown or the run failed;
2 bad usage. pytest-benchmark's own ``--benchmark-compare`` stays available for absolute
comparison on dedicated hardware: ``pytest tests/benchmarks --benchmark-only --benchmark-compare``.
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

from ..errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="a representative subset at smaller sizes (under 3 minutes on 2 cores)")
    parser.add_argument("--gpu", action="store_true", help="the CUDA cases (pytest -m gpu) instead of the CPU ones")
    parser.add_argument("--json", metavar="PATH", help="pytest-benchmark JSON (default: bench-<mode>-<device>.json)")
    parser.add_argument("--plot", metavar="PATH", help="PNG plot (default: next to the JSON)")
    parser.add_argument("--summary", metavar="PATH", help="markdown summary (default: next to the JSON)")
    parser.add_argument("--compare", metavar="BASELINE",
                        help="ratio gate against a baseline JSON; 'auto' = tests/benchmarks/baselines/<machine kind>[-quick].json")
    parser.add_argument("--gate-against-ref", metavar="GITREF",
                        help="interleaved gate: run GITREF (temporary git worktree) and this tree alternately")
    parser.add_argument("--rounds", type=int, default=2, help="baseline/current rounds for --gate-against-ref (default 2)")
    parser.add_argument("--thresholds", metavar="FILE",
                        help="per-case thresholds JSON (default tests/benchmarks/baselines/thresholds.json)")
    parser.add_argument("--statistic", choices=("median", "min", "mean"), default=None,
                        help="which statistic of each case the gates compare (default: min for --compare, "
                             "median for --gate-against-ref); the table always shows medians")
    parser.add_argument("--alpha", type=_alpha, default=None,
                        help="--compare (and --gate-against-ref) fail a case beyond its threshold only when a "
                             "Mann-Whitney U test over the per-round ratios (times) says slower at this two-sided level (default 0.01); rows "
                             "without rounds keep the threshold's decision")
    parser.add_argument("--record", metavar="PATH", nargs="?", const="", default=None,
                        help="append this run (commit, date, versions, per-case medians and ratios) as one JSON line "
                             "to a history file (default .benchmarks/history.jsonl at the checkout's root)")
    parser.add_argument("--history-plot", metavar="PNG",
                        help="plot the history (--record's file, or --history) over commits: each case's ratio to "
                             "eager, one colour per backend; without --record it only plots, running nothing")
    parser.add_argument("--history", metavar="PATH", help="the history file --history-plot reads (default: as --record)")
    parser.add_argument("--from-json", metavar="PATH", nargs="+",
                        help="summarize / gate existing pytest-benchmark JSON instead of running")
    parser.add_argument("--record-baseline", action="store_true",
                        help="write JSON, plot and summary to tests/benchmarks/baselines/<machine kind>[-quick].*")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default 1 on the CPU, like the onnxruntime sessions; "
                             "0 = torch's default); recorded with every result")
    parser.add_argument("-k", dest="select", metavar="EXPR", help="pytest -k expression to run a subset")


def _alpha(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError("--alpha must be a number in (0, 1), got {!r}".format(text))
    return value


def _default_thresholds() -> Optional[str]:
    from ..bench.runner import repo_root

    path = repo_root() / "tests" / "benchmarks" / "baselines" / "thresholds.json"
    return str(path) if path.is_file() else None


def _baseline_path(gpu: bool, quick: bool) -> Path:
    from ..bench.runner import machine_kind, repo_root

    name = machine_kind("cuda" if gpu else "cpu") + ("-quick" if quick else "")
    return repo_root() / "tests" / "benchmarks" / "baselines" / (name + ".json")


def _exit_on_sigterm() -> None:
    """SIGTERM (a CI job's timeout) unwinds like Ctrl-C, so the suite subprocess is stopped too."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def run(args: argparse.Namespace) -> int:
    from ..bench import gate, report, runner
    from ..bench.results import load

    if args.history_plot and args.record is None:
        others = [flag for flag, given in (("--from-json", args.from_json), ("--compare", args.compare),
                                           ("--gate-against-ref", args.gate_against_ref),
                                           ("--record-baseline", args.record_baseline)) if given]
        if others:
            raise UsageError("--history-plot without --record only plots the history; it takes no {} "
                             "(add --record to record this run first)".format(", ".join(others)))
        return _plot_history(args)
    mode = "quick" if args.quick else "full"
    device = "cuda" if args.gpu else "cpu"
    if args.gate_against_ref and args.from_json:
        raise UsageError("--gate-against-ref runs the suite; it cannot be combined with --from-json")
    if args.record_baseline:
        base = _baseline_path(args.gpu, args.quick)
        json_path = base
        base.parent.mkdir(parents=True, exist_ok=True)
    else:
        json_path = Path(args.json or "bench-{}-{}.json".format(mode, device))
    plot_path = Path(args.plot) if args.plot else json_path.with_suffix(".png")
    summary_path = Path(args.summary) if args.summary else json_path.with_suffix(".md")
    thresholds = gate.Thresholds.load(args.thresholds or _default_thresholds())
    compare_path = None
    if args.compare:
        compare_path = _baseline_path(args.gpu, args.quick) if args.compare == "auto" else Path(args.compare)
        if not compare_path.is_file():
            raise UsageError("--compare: baseline {} not found".format(compare_path))

    if not args.from_json:
        _exit_on_sigterm()
    threads = args.threads if args.threads is not None else (0 if args.gpu else 1)
    if threads < 0:
        raise UsageError("--threads must be >= 0 (0: torch's default), got {}".format(threads))
    failed = False
    if args.gate_against_ref:
        out_dir = Path(tempfile.mkdtemp(prefix="cl-bench-interleaved-"))
        base_runs, cur_runs = runner.run_interleaved(args.gate_against_ref, out_dir, rounds=args.rounds, mode=mode,
                                                     gpu=args.gpu, select=args.select, threads=threads)
        from ..bench import stats

        interleaved = stats.interleaved_evidence(
            gate.compare_interleaved(base_runs, cur_runs, thresholds, args.statistic or "median"), base_runs, cur_runs,
            stats.DEFAULT_ALPHA if args.alpha is None else args.alpha)
        # The last working-tree round is this run's result for the table, the plot and --compare.
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(Path(cur_runs[-1].sources[0]).read_text())
        (json_path.with_suffix(".gate.json")).write_text(json.dumps(interleaved.to_json(), indent=2))
        print(interleaved.to_markdown())
        print("interleaved runs kept in {}".format(out_dir))
        failed |= not interleaved.ok
        current = load([str(json_path)])
    elif args.from_json:
        current = load(args.from_json)
    else:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        code = runner.run_suite(json_path, mode=mode, gpu=args.gpu, select=args.select, threads=threads)
        if not json_path.is_file():
            print("compile-losses bench: the suite wrote no results (pytest exit {})".format(code), file=sys.stderr)
            return 1
        if code not in (0, 5):  # 5: nothing collected (e.g. -m gpu without CUDA cases) is not a crash
            print("compile-losses bench: some benchmarks failed (pytest exit {}); results so far kept".format(code),
                  file=sys.stderr)
            failed = True
        current = load([str(json_path)])

    if args.record_baseline and not args.from_json:
        _strip_raw_timings(json_path)
    if not current.results:
        print("compile-losses bench: no benchmark results (all skipped?)", file=sys.stderr)
        return 1
    first = next(iter(current.results.values())).extra
    title = "compile_losses benchmarks ({}, {})".format(
        first.get("mode", mode), runner.machine_kind(device) if not args.from_json else first.get("device_name", "?"))
    summary = report.summary_markdown(current, "median", title)
    print(summary)
    if compare_path is not None:
        from ..bench import stats

        alpha = stats.DEFAULT_ALPHA if args.alpha is None else args.alpha
        baseline = load([str(compare_path)])
        result = stats.evidence_gate(gate.compare_ratios(current, baseline, thresholds, args.statistic or "min"),
                                     current, baseline, alpha)
        summary += "\n" + result.to_markdown() + "\n"
        print(result.to_markdown(only_notable=True))
        failed |= not result.ok
    if not args.from_json or args.summary:
        summary_path.write_text(summary)
    if not args.from_json or args.plot:
        report.plot(current, str(plot_path), "median", title)
    written = _written(args, json_path, plot_path, summary_path)
    if args.record is not None:
        from ..bench import history

        record_path = Path(args.record) if args.record else history.default_path()
        history.append(record_path, history.entry(current))
        written.append(record_path)
        if args.history_plot:
            _plot_history(args, record_path)
            written.append(Path(args.history_plot))
    print("wrote {}".format(", ".join(str(p) for p in written)))
    return 1 if failed else 0


def _plot_history(args: argparse.Namespace, path: Optional[Path] = None) -> int:
    from ..bench import history

    path = path or (Path(args.history) if args.history else (Path(args.record) if args.record else history.default_path()))
    history.plot(history.read(path), args.history_plot)
    if args.record is None:
        print("wrote {}".format(args.history_plot))
    return 0


def _strip_raw_timings(path: Path) -> None:
    """A committed baseline keeps each case's statistics, not every round's time (megabytes)."""
    data = json.loads(path.read_text())
    for bench in data.get("benchmarks", []):
        bench.get("stats", {}).pop("data", None)
    path.write_text(json.dumps(data, indent=1))


def _written(args: argparse.Namespace, json_path: Path, plot_path: Path, summary_path: Path) -> List[Path]:
    paths = [] if args.from_json else [json_path]
    if not args.from_json or args.plot:
        paths.append(plot_path)
    if not args.from_json or args.summary:
        paths.append(summary_path)
    return paths
