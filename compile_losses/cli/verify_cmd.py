"""compile-losses verify: parity of loss values and gradients against eager, per backend.

    compile-losses verify                       # seed net + mse, and mse alone
    compile-losses verify --loss huber --loss-arg delta=0.5 --backends eager,onnx
    compile-losses verify --all --json parity.json
    compile-losses verify --net my.pkg:Net --input 'float32[N,32]' --loss my.pkg:Loss --target 'float32[N,1]'

Exit 0 when every row passes by the rule, 1 on any failing row, 2 on bad usage.
"""
import argparse
import sys
from typing import List

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
    parser.add_argument("--json", metavar="PATH", help="write the whole report as JSON")
    parser.add_argument("--batch", default="1,7,64", help="batch sizes, comma-separated (default 1,7,64)")
    parser.add_argument("--large", type=int, default=2 ** 20, metavar="ELEMENTS",
                        help="elements of the large case for elementwise registry losses alone (default 2^20; 0: none)")
    parser.add_argument("--dtype", default="float32,float64", help="dtypes, comma-separated (default float32,float64)")
    parser.add_argument("--no-alone", action="store_true", help="skip the loss-alone cases")
    parser.add_argument("--no-audit", action="store_true", help="skip the torch.compile audit")
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


def _ints(text: str, what: str) -> List[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError("{} must be comma-separated positive integers, got {!r}".format(what, text)) from None
    if not values or any(v < 1 for v in values):
        raise UsageError("{} must be comma-separated positive integers, got {!r}".format(what, text))
    return values


def _dtypes(text: str) -> List[torch.dtype]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    bad = [n for n in names if n not in _DTYPES]
    if bad or not names:
        raise UsageError("--dtype must be comma-separated from {}, got {!r}".format(", ".join(_DTYPES), text))
    return [_DTYPES[n] for n in names]


def run(args: argparse.Namespace) -> int:
    from ..backends import get_backends
    from ..parity import ParityReport, Progress, audited, compile_audit, verify, verify_registry
    from ..registry import DEFAULT_LOSS, LOSSES
    from ..resolve import make_case

    batches = _ints(args.batch, "--batch")
    dtypes = _dtypes(args.dtype)
    backends = [b.name for b in get_backends(args.backends)] if args.backends else None
    net_kwargs = init_kwargs(args, "net") or {}
    loss_kwargs = init_kwargs(args, "loss") or {}
    net = None if args.net == "none" else args.net
    if args.large < 0:
        raise UsageError("--large must be >= 0, got {}".format(args.large))
    progress = None if args.quiet else sys.stderr
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
        if args.detail:
            print(report.table(detail=True))
        print(report)
        if args.json:
            report.to_json(args.json)
        return 0 if report.ok else 1

    several = args.loss is not None and "," in args.loss
    if args.all or several:
        if net_kwargs or loss_kwargs or args.input or args.target:
            raise UsageError("--all and a list of losses run the registry's own settings: drop --net-arg(s), --loss-arg(s), "
                             "--input, --target")
        names = None if args.all else [n.strip() for n in args.loss.split(",") if n.strip()]
        unknown = [n for n in names or () if n not in LOSSES]
        if unknown:
            raise UsageError("a list of losses takes registry names ({}), got {}".format(", ".join(LOSSES), ", ".join(unknown)))
        report = verify_registry(losses=names, net=net, alone=not args.no_alone, batches=batches, large=args.large,
                                 dtypes=dtypes, backends=backends, audit=not args.no_audit, lr=args.lr,
                                 progress=progress)
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
                cases += [case if n == batches[0] else case.with_batch(n) for n in sizes]
        n_backends = len(get_backends(backends))
        auditor = None if args.no_audit else audited(get_backends(backends))
        audit = auditor is not None
        bar = Progress(len(cases) * n_backends + int(audit), progress) if progress else None
        report = ParityReport()
        for case in cases:
            report.extend(verify(case.net, case.loss, case.inputs, case.targets, backends, lr=args.lr,
                                 label=case.label, progress=bar))
        if audit:
            if bar:
                bar.step("compile audit {}".format(loss_name))
            # per loss: the loss alone when there is such a case, else the whole (net, loss) case
            first = next((c for c in cases if c.net is None), cases[0])
            module = first.loss if first.net is None else _case_module(first)
            entry = compile_audit(module, lambda n: _args(first.with_batch(n)), label=first.description["name"],
                                  backend=auditor.name)
            report.audits.append(entry)
            if entry["status"] != "pass":
                from ..parity import Row

                report.rows.append(Row(entry["case"] + " (audit)", entry["backend"], "audit", entry["status"],
                                       detail=entry["detail"]))
        if bar:
            bar.close()
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
