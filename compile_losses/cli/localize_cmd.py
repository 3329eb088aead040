"""compile-losses localize: where a backend's graphs start to diverge from eager, and the
localizer's fault-injection self-test.

    compile-losses localize --net seed --loss mse --backends onnx [--optimize] [--repro DIR]
    compile-losses localize --inject 200 --seed 0 [--backends onnx] [--json PATH]

Exit 0 when nothing diverges (or, with --inject, when at least 90% of the planted faults are
localized); 1 otherwise; 2 on bad usage.
"""
import argparse
import json
import os
import tempfile
from typing import Any

from ..errors import UsageError
from ._args import add_init_arguments, init_kwargs, lr_arg

TARGET_RATE = 0.9  # the self-test's bar: at least 90% of the planted faults localized


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--net", default="seed", help="registry net, package.module:Class, or 'none' (default seed)")
    parser.add_argument("--loss", help="registry loss or package.module:Class (default: the registry's default)")
    add_init_arguments(parser)
    parser.add_argument("--input", action="append", default=[], metavar="SPEC", help="a user net's input, e.g. 'float32[N,32]'")
    parser.add_argument("--target", action="append", default=[], metavar="SPEC", help="a target spec")
    parser.add_argument("--batch", type=int, default=7, help="batch size (default 7)")
    parser.add_argument("--lr", type=lr_arg, default=0.01, help="the train step's learning rate (default 0.01)")
    parser.add_argument("--backends", help="comma-separated backends with graphs run value by value, compiler stages or module scopes (default: the first available)")
    parser.add_argument("--optimize", action="store_true", help="export with the exporter's onnxscript optimizer on")
    parser.add_argument("--repro", metavar="DIR", help="write a standalone repro per diverging graph under DIR")
    parser.add_argument("--inject", type=int, metavar="N", help="self-test: plant N random faults and localize each")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights, inputs and planted faults (default 0)")
    parser.add_argument("--json", metavar="PATH", help="write the result as JSON")


def _write_json(path: str, payload: Any) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".localize-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(payload, fh, indent=2, default=str)
        os.replace(tmp, path)  # a reader never sees half a file
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def run(args: argparse.Namespace) -> int:
    from ..backends import get_backends

    backends = [b.name for b in get_backends(args.backends)] if args.backends else None
    if args.inject is not None:
        from ..localize.inject import self_test

        if args.inject < 1:
            raise UsageError("--inject must be a positive integer, got {}".format(args.inject))
        result = self_test(args.inject, args.seed, backends=backends)
        print("localize self-test, seed {}: {} of {} planted faults localized ({:.1%}) in {:.1f} s "
              "({} graphs exported in {:.1f} s)".format(result["seed"], result["localized"], result["trials"],
                                                       result["rate"], result["seconds"], result["graphs_exported"],
                                                       result["export_seconds"]))
        for kind, row in sorted(result["by_graph"].items()):
            print("  {:<14} {:>4} / {:<4}".format(kind, row["localized"], row["trials"]))
        for fault, row in sorted(result["by_fault"].items()):
            print("  {:<14} {:>4} / {:<4}".format(fault, row["localized"], row["trials"]))
        for miss in result["misses"]:
            print("  miss: {} {} {}: {}".format(miss["case"], miss["graph"], miss["planted"]["detail"], miss["why"]))
        if args.json:
            _write_json(args.json, result)
        return 0 if result["rate"] >= TARGET_RATE else 1
    from ..localize import localize
    from ..registry import DEFAULT_LOSS
    from ..resolve import make_case

    if args.batch < 1:
        raise UsageError("--batch must be a positive integer, got {}".format(args.batch))
    case = make_case(None if args.net == "none" else args.net, args.loss or DEFAULT_LOSS, batch=args.batch,
                     input_specs=args.input or None, target_specs=args.target or None,
                     net_kwargs=init_kwargs(args, "net"), loss_kwargs=init_kwargs(args, "loss"), seed=args.seed)
    results = [localize(case.net, case.loss, case.inputs, case.targets, backend=b, lr=args.lr,
                        optimize=True if args.optimize else None, repro_dir=args.repro, label=case.label)
               for b in (backends or [None])]
    for r in results:
        print(r)
    if args.json:
        _write_json(args.json, [r.to_dict() for r in results])
    return 0 if all(r.ok for r in results) else 1
