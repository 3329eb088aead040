"""compile-losses verify: parity of loss values and gradients against eager, per backend.

    compile-losses verify                       # seed net + mse, and mse alone
    compile-losses verify --loss huber --loss-arg delta=0.5 --backends eager,onnx
    compile-losses verify --all --json parity.json
    compile-losses verify --net my.pkg:Net --input 'float32[N,32]' --loss my.pkg:Loss --target 'float32[N,1]'

Exit 0 when every row passes by the rule, 1 on any failing row, 2 on bad usage. Rows that say the
user's code cannot be compiled (``uncompilable``), breaks torch.compile's graph (``graph-breaks``,
the audit's fullgraph check) or makes it recompile (``recompiles``: a guard on the user's own code)
fail the run only for the backends named by ``--require`` (recompiles also under ``--strict-audit``).
"""
import argparse
import itertools
import sys
from typing import Any, Dict, List

import torch

from ..errors import UsageError
from ._args import add_init_arguments, add_optimizer_arguments, init_kwargs, lr_arg, optimizer_kwargs

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--net", default="seed", help="registry net, package.module:Class, or 'none' (the loss alone); default seed")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--loss", help="registry loss, package.module:Class, or a comma-separated list of registry losses "
                                     "(default: the registry's default loss)")
    what.add_argument("--all", action="store_true", help="every registry loss (and each larger net with its loss)")
    parser.add_argument("--backends", help="comma-separated backend names (default: all; see 'compile-losses list')")
    parser.add_argument("--require", metavar="BACKENDS",
                        help="comma-separated backends whose 'uncompilable' (and, for the audited compile backend, "
                             "'graph-breaks' and 'recompiles') rows fail the run (default: none; they are reported)")
    parser.add_argument("--json", metavar="PATH", help="write the whole report as JSON")
    parser.add_argument("--batch", default="1,7,64", help="batch sizes, comma-separated (default 1,7,64)")
    parser.add_argument("--large", type=int, default=2 ** 20, metavar="ELEMENTS",
                        help="elements of the large case for elementwise registry losses alone (default 2^20; 0: none)")
    parser.add_argument("--dtype", default="float32,float64", help="dtypes, comma-separated (default float32,float64)")
    parser.add_argument("--autocast", default="", metavar="DTYPES",
                        help="also run each float32 case under torch.autocast in these dtypes (bfloat16,float16)")
    parser.add_argument("--ort-opt-level", default="", metavar="LEVELS",
                        help="onnxruntime graph optimization levels, comma-separated from disabled,basic,extended,all "
                             "(default: all)")
    parser.add_argument("--ort-threads", default="", metavar="COUNTS",
                        help="onnxruntime intra-op thread counts, comma-separated (0: all cores; default 1)")
    parser.add_argument("--dynamic-dims", action="store_true",
                        help="run each case of a net that declares dynamic dims (encoder: seq; convseg: height, width) "
                             "with them dynamic, at its declared shape and at each of its registry sizes")
    parser.add_argument("--compile-setting", action="append", default=[], metavar="KEY=VALUE",
                        help="torch.compile setting that changes numerics (emulate_precision_casts, fallback_random: "
                             "true/false; dynamic: auto/true/false); repeatable; KEY=false,true runs each value "
                             "(the backends that take it only), and the summary lists the verdicts a setting changes")
    parser.add_argument("--no-alone", action="store_true", help="skip the loss-alone cases")
    parser.add_argument("--no-audit", action="store_true", help="skip the torch.compile audit")
    parser.add_argument("--strict-audit", action="store_true",
                        help="fail the audit on every recompilation, compiler-internal ones too (default: "
                             "user-avoidable ones are a 'recompiles' row, failing with --require; "
                             "compiler-internal ones pass)")
    add_init_arguments(parser)
    parser.add_argument("--input", action="append", default=[], metavar="SPEC",
                        help="net input (or the prediction with --net none) spec, e.g. 'float32[N,32]' (repeatable)")
    parser.add_argument("--target", action="append", default=[], metavar="SPEC",
                        help="target spec, e.g. 'int64[N]{0..9}' or 'float32[N,1]{0.1:2}' (repeatable)")
    parser.add_argument("--lr", type=lr_arg, default=0.01, help="learning rate of the checked train step (default 0.01)")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights and inputs (default 0)")
    add_optimizer_arguments(parser)
    parser.add_argument("--steps", type=int, default=32,
                        help="with --optimizer: trajectory length checked against eager torch.optim (default 32)")
    parser.add_argument("--accumulate", type=int, default=1, metavar="K",
                        help="with --optimizer: micro-batches per step (default 1)")
    parser.add_argument("--detail", action="store_true", help="print every row, not one line per case and backend")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.add_argument("--localize", action="store_true",
                        help="for each failing row, find where it diverges: the first node of an exported graph, the first compiler stage, or the first module of a legacy graph")
    parser.add_argument("--repro", metavar="DIR", help="with --localize: write a standalone repro per divergence under DIR")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="--all or a list of losses: run the cases in N worker processes (0: one per core), "
                             "merged into the serial run's report (default 1: in this process)")


def _ints(text: str, what: str, minimum: int = 1) -> List[int]:
    kind = "positive integers" if minimum == 1 else "integers >= {}".format(minimum)
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError("{} must be comma-separated {}, got {!r}".format(what, kind, text)) from None
    if not values or any(v < minimum for v in values):
        raise UsageError("{} must be comma-separated {}, got {!r}".format(what, kind, text))
    return values


def _dtypes(text: str, what: str = "--dtype") -> List[torch.dtype]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    allowed = _DTYPES if what == "--dtype" else {k: v for k, v in _DTYPES.items() if k in ("bfloat16", "float16")}
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise UsageError("{} must be comma-separated from {}, got {!r}".format(what, ", ".join(allowed), text))
    return [_DTYPES[n] for n in names]


def _grid(args: argparse.Namespace) -> List[dict]:
    """The settings combinations: every (ort level, ort threads), with the compile settings."""
    from ..sessions import OPT_LEVELS

    levels = [v.strip() for v in args.ort_opt_level.split(",") if v.strip()] or [None]
    bad = [v for v in levels if v is not None and v not in OPT_LEVELS]
    if bad:
        raise UsageError("--ort-opt-level must be comma-separated from {}, got {!r}".format(
            ", ".join(OPT_LEVELS), args.ort_opt_level))
    threads = [None] if not args.ort_threads.strip() else _ints(args.ort_threads, "--ort-threads", minimum=0)
    compile_values: Dict[str, List[Any]] = {}  # KEY=a,b: each value a run of its own (a parity axis)
    words = {"true": True, "false": False, "auto": "auto"}
    for item in args.compile_setting:
        key, sep, value = item.partition("=")
        values = [v.strip().lower() for v in value.split(",")]
        if not sep or not key.strip() or any(v not in words for v in values):
            raise UsageError("--compile-setting must be KEY=VALUE[,VALUE...] with values from true, false, auto, "
                             "got {!r}".format(item))
        compile_values[key.strip()] = list(dict.fromkeys(words[v] for v in values))
    compiles = [dict(zip(compile_values, combo)) for combo in itertools.product(*compile_values.values())]
    return [dict(extra, **{k: v for k, v in (("ort_opt_level", lv), ("ort_threads", t)) if v is not None})
            for extra in compiles for lv in levels for t in threads]


def run(args: argparse.Namespace) -> int:
    from ..backends import get_backends
    from ..parity import ParityReport, Progress, audit_rows, audited, compile_audit, verify, verify_registry
    from ..registry import DEFAULT_LOSS, LOSSES
    from ..resolve import make_case

    batches = _ints(args.batch, "--batch")
    dtypes = _dtypes(args.dtype)
    autocasts = [None] + (_dtypes(args.autocast, "--autocast") if args.autocast.strip() else [])
    grid = _grid(args)
    from ..parity.verify import check_settings

    try:
        for settings in grid:
            check_settings(settings)
    except ValueError as exc:
        raise UsageError("--compile-setting: {}".format(exc)) from None
    backends = [b.name for b in get_backends(args.backends)] if args.backends else None
    require = [b.name for b in get_backends(args.require)] if args.require else []
    net_kwargs = init_kwargs(args, "net") or {}
    loss_kwargs = init_kwargs(args, "loss") or {}
    net = None if args.net == "none" else args.net
    if args.large < 0:
        raise UsageError("--large must be >= 0, got {}".format(args.large))
    progress = None if args.quiet else sys.stderr
    if args.localize and (args.all or args.optimizer is not None or (args.loss is not None and "," in args.loss)):
        raise UsageError("--localize takes one --loss (not --all, a list, or --optimizer)")
    if args.repro and not args.localize:
        raise UsageError("--repro needs --localize")
    optim_args = optimizer_kwargs(args)
    if args.optimizer is None and (args.steps != 32 or args.accumulate != 1):
        raise UsageError("--steps and --accumulate need --optimizer (sgd, adam or adamw)")
    if args.optimizer is not None:
        if args.steps < 1:
            raise UsageError("--steps must be >= 1, got {}".format(args.steps))
        if args.accumulate < 1 or args.accumulate > batches[0]:
            raise UsageError("--accumulate must be between 1 and the first --batch ({}), got {}".format(
                batches[0], args.accumulate))
        if net is None or args.all or (args.loss is not None and "," in args.loss):
            raise UsageError("--optimizer trains one net: give --net (not 'none') and one --loss, not --all or a list")
        report = ParityReport()
        for dtype in dtypes:
            case = make_case(net, args.loss or DEFAULT_LOSS, batch=batches[0], dtype=dtype,
                             input_specs=args.input or None, target_specs=args.target or None,
                             net_kwargs=net_kwargs, loss_kwargs=loss_kwargs, seed=args.seed)
            report.extend(verify(case.net, case.loss, case.inputs, case.targets, backends, optimizer=args.optimizer,
                                 optimizer_args=optim_args, steps=args.steps, accumulate=args.accumulate,
                                 seed=args.seed))
        return _finish(report, args)

    several = args.loss is not None and "," in args.loss
    if args.all or several:
        if net_kwargs or loss_kwargs or args.input or args.target:
            raise UsageError("--all and a list of losses run the registry's own settings: drop --net-arg(s), --loss-arg(s), "
                             "--input, --target")
        names = None if args.all else [n.strip() for n in args.loss.split(",") if n.strip()]
        unknown = [n for n in names or () if n not in LOSSES]
        if unknown:
            raise UsageError("a list of losses takes registry names ({}), got {}".format(", ".join(LOSSES), ", ".join(unknown)))
        run_matrix = verify_registry
        if args.jobs != 1:  # N worker processes, the same rows in the same order (parity/jobs.py)
            from functools import partial

            from ..parity.jobs import default_jobs, verify_registry_jobs

            if args.jobs < 0:
                raise UsageError("--jobs must be >= 0 (0: one per core), got {}".format(args.jobs))
            run_matrix = partial(verify_registry_jobs, args.jobs or default_jobs())
        report = run_matrix(losses=names, net=net, alone=not args.no_alone, batches=batches, large=args.large,
                            dtypes=dtypes, backends=backends, audit=not args.no_audit, lr=args.lr,
                            progress=progress, strict_audit=args.strict_audit,
                            autocasts=autocasts, settings_grid=grid, dynamic_dims=args.dynamic_dims)
    else:
        loss_name = args.loss or DEFAULT_LOSS
        plans = [net] + ([None] if net is not None and not args.no_alone and loss_name in LOSSES
                         and not args.input else [])
        cases = []
        for case_net in plans:
            for dtype in dtypes:
                case = make_case(case_net, loss_name, batch=batches[0], dtype=dtype,
                                 input_specs=args.input if case_net == net else None,
                                 target_specs=args.target or None, net_kwargs=net_kwargs, loss_kwargs=loss_kwargs,
                                 seed=args.seed)
                sizes = list(batches)
                spec = LOSSES.get(loss_name)
                if case_net is None and spec is not None and spec.elementwise and args.large and not args.input:
                    sizes.append(max(1, args.large // int(torch.tensor(spec.feature_shape).prod())))
                at_batches = [case if n == batches[0] else case.with_batch(n) for n in sizes]
                cases += [c if z is None else c.with_sizes(z) for c in at_batches
                          for z in _dynamic_sizes(case_net, args)]
        n_backends = len(get_backends(backends))
        auditor = None if args.no_audit else audited(get_backends(backends))
        audit = auditor is not None
        bar = Progress(len(cases) * n_backends + int(audit), progress) if progress else None
        report = ParityReport()
        from ..parity.verify import settings_runs

        runs = [(a, st, bs) for a in autocasts for st, bs in settings_runs(get_backends(backends), grid)]
        if bar:
            bar.total = len(cases) * sum(len(bs) for *_, bs in runs) + int(audit)
        for case in cases:
            for autocast, settings, chosen in runs:
                if autocast is not None and case.inputs[0].dtype != torch.float32:
                    continue  # mixed precision: float32 parameters under autocast
                report.extend(verify(case.net, case.loss, case.inputs, case.targets, chosen, lr=args.lr,
                                     label=case.label, progress=bar, autocast=autocast, settings=settings,
                                     require=require))
        if audit:
            if bar:
                bar.step("compile audit {}".format(loss_name))
            # per loss: the loss alone when there is such a case, else the whole (net, loss) case
            first = next((c for c in cases if c.net is None), cases[0])
            module = first.loss if first.net is None else _case_module(first)
            entry = compile_audit(module, lambda n: _args(first.with_batch(n)), label=first.description["name"],
                                  backend=auditor.name, strict=args.strict_audit)
            report.audits.append(entry)
            report.rows += audit_rows([entry], require)
        if bar:
            bar.close()
        if args.localize:
            from ..localize.api import link_failures

            for loc in link_failures(report, cases, repro_dir=args.repro, lr=args.lr):
                print(loc)
    return _finish(report, args)


def _dynamic_sizes(net, args):  # type: ignore[no-untyped-def]
    """[None] (as given), or with --dynamic-dims the registry net's declared shape ({}) and its sizes."""
    from ..registry import NETS

    spec = NETS.get(net) if args.dynamic_dims and net is not None and not args.input else None
    if args.dynamic_dims and net is not None and (spec is None or not spec.dynamic_dims):
        raise UsageError("--dynamic-dims needs a registry net that declares dynamic dims ({}), got --net {}".format(
            ", ".join(n for n, s in NETS.items() if s.dynamic_dims), net))
    return [None] if spec is None else [{}] + [dict(z) for z in spec.dynamic_sizes]


def _finish(report, args) -> int:  # type: ignore[no-untyped-def]
    """Print the report (with --detail its full table), write --json, and the exit code."""
    if args.detail:
        print(report.table(detail=True))
    print(report)
    if args.json:
        report.to_json(args.json)
    return 0 if report.ok else 1


def _case_module(case):  # type: ignore[no-untyped-def]
    from ..nets import NetWithLoss

    return NetWithLoss(case.net, case.loss, n_targets=len(case.targets))


def _args(case):  # type: ignore[no-untyped-def]
    return tuple(case.inputs) + tuple(case.targets)
