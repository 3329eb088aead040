"""compile-losses export: write a deployment bundle (the main job with no arguments).

With no arguments: the reference net (``seed``) with the default loss (``mse``) into
``models/seed-mse/``, parity table printed. ``--net``/``--loss`` take registry names or
``package.module:Class`` import paths; a user's classes get their init arguments as JSON and
their example inputs and targets as tensor specs (``float32[N,32]``, ``int64[N]{0..9}`` for class
indices, ``float32[N,1]{0.1:2}`` for a uniform range; ``N`` is the batch, exported dynamic).
Progress goes to stderr; the table and the summary to stdout.

``--optimizer sgd|adam|adamw`` with ``--optim-arg KEY=VALUE`` (repeatable) puts that optimizer
into ``train_step.onnx`` (state and hyper-parameters as graph inputs and outputs) and a short
trajectory into the fixtures.
"""
import argparse
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional

from ..errors import UsageError
from ._args import add_init_arguments, add_optimizer_arguments, init_kwargs, lr_arg, optimizer_kwargs



def _parts() -> tuple:
    from ..bundle_format import PARTS  # the bundle format's optional parts, named after their artifacts

    return PARTS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--net", default="seed", metavar="N",
                        help="registry net, pkg.mod:Class, or 'none' (the loss alone: --input specs are the "
                             "predictions; default: seed)")
    parser.add_argument("--loss", default=None, metavar="L",
                        help="registry loss or pkg.mod:Class (default: mse for registry nets' defaults)")
    parser.add_argument("--out", default="models", metavar="DIR", help="parent folder of the bundle (default: models)")
    parser.add_argument("--name", default=None, help="bundle folder name (default: <net>-<loss>)")
    parser.add_argument("--json", metavar="PATH", help="also write the result (manifest, check, parity) as JSON")
    add_init_arguments(parser)
    parser.add_argument("--input", action="append", default=None, metavar="SPEC",
                        help="example input spec of the net, repeatable, e.g. float32[N,32]")
    parser.add_argument("--target", action="append", default=None, metavar="SPEC",
                        help="target spec in the loss's order, repeatable, e.g. int64[N]{0..9}")
    parser.add_argument("--batch", type=int, default=8, help="example batch size (default: 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights and example data (default: 0)")
    parser.add_argument("--lr", type=lr_arg, default=0.01, help="SGD rate in the train-step fixtures (default: 0.01)")
    add_optimizer_arguments(parser)
    parser.add_argument("--skip", default="", metavar="PARTS",
                        help="comma list of parts to leave out: " + ", ".join(_parts()))
    parser.add_argument("--no-aoti", action="store_true",
                        help="leave out the AOTInductor package, forward.pt2 (saves ~20-40 s)")
    parser.add_argument("--backends", default=None, metavar="A,B",
                        help="backends for the embedded parity report (default: those the bundle holds)")
    parser.add_argument("--install-failing", action="store_true",
                        help="install a bundle that fails parity at <out>/<name> all the same (default: it goes "
                             "to <name>.failed beside it, and a good bundle there stays)")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


def _skips(args: argparse.Namespace) -> List[str]:
    from ..bundle_format import part_of

    skips = [s.strip() for s in args.skip.split(",") if s.strip()]
    bad = [s for s in skips if s not in _parts()]
    if bad:
        raise UsageError("--skip takes a comma list of {}, got {!r}".format(", ".join(_parts()), ",".join(bad)))
    if args.no_aoti:
        skips.append(part_of("aoti_forward"))
    return skips


def _case(args: argparse.Namespace) -> Any:
    import torch

    from .. import registry

    from ..resolve import make_case

    loss = args.loss
    if loss is None:
        loss = registry.NETS[args.net].loss if args.net in registry.NETS else registry.DEFAULT_LOSS
    if args.batch < 1:
        raise UsageError("--batch must be >= 1, got {}".format(args.batch))
    torch.manual_seed(args.seed)  # the net's initial weights
    case = make_case(args.net, loss, batch=args.batch, dtype=torch.float32, input_specs=args.input,
                     target_specs=args.target, net_kwargs=init_kwargs(args, "net"),
                     loss_kwargs=init_kwargs(args, "loss"), seed=args.seed)
    from ..validate import InputError, check_arity, check_class_indices

    try:  # one eager call: a net whose output does not fit the loss is bad input, not a crash later
        with torch.no_grad():
            pred = case.inputs[0] if case.net is None else case.net(*case.inputs)
            check_class_indices(case.loss, pred, case.targets, check_arity(case.loss, case.targets))
            case.loss(pred, *case.targets)
    except InputError:
        raise  # already names the argument, the range and the bad value
    except (ValueError, TypeError, RuntimeError, IndexError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UsageError("--net {} and --loss {} do not fit the example inputs: {}".format(args.net, loss, first)) from None
    spec = registry.NETS.get(args.net)
    if spec is not None and spec.dynamic_dims and not args.input:
        case = case.with_sizes({})  # the net's declared dynamic dims: the bundle takes any size there
    return loss, case


def _info(kind: str, name: str, module: Any, kwargs: Optional[Dict[str, Any]], description: Dict[str, Any]) -> Dict[str, Any]:
    from ..export import describe_module

    info = describe_module(module)
    from ..export.manifest import _jsonable

    if ":" not in name:
        info["registry_name"] = name
    # what the case was really built with (registry defaults included), over what could be read back
    given = description.get(kind + "_kwargs")
    given = dict(kwargs or {} if given is None else given)
    if kind == "net" and name == "seed" and description.get("loss") in _registry().LOSSES:
        given.setdefault("out_features", _registry().LOSSES[description["loss"]].net_out)  # as make_case builds it
    # the keyword arguments that rebuild the module (the class's defaults for the rest)
    info["init_args"] = dict(info.get("init_args") or {}, **_jsonable(given))
    info["init_args_complete"] = True
    return info


def _registry() -> Any:
    from .. import registry

    return registry


def run(args: argparse.Namespace) -> int:
    skips = _skips(args)
    optim_args = optimizer_kwargs(args)  # a bad --optim-arg is a usage error before any export
    if args.optimizer is not None and "training" in skips:
        raise UsageError("--optimizer needs the training graphs (drop 'training' from --skip)")
    if args.json:
        folder = os.path.dirname(os.path.abspath(args.json))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise UsageError("--json: cannot write {} (folder missing or not writable)".format(args.json))
    say = (lambda msg: None) if args.quiet else (lambda msg: print("[export] " + msg, file=sys.stderr, flush=True))
    backends = None
    if args.backends:
        from ..backends import get_backends

        backends = [b.name for b in get_backends(args.backends)]  # unknown names: UsageError, now
    start = time.perf_counter()
    loss_name, case = _case(args)
    from .. import export as ex

    parity: Any = False if "parity" in skips else (backends or True)
    name = args.name or "{}-{}".format(_short(args.net), _short(loss_name))
    try:
        path = ex.export_bundle(
            case.net, case.loss, case.inputs, case.targets, args.out, name=name, lr=args.lr, parity=parity,
            progress=say, install_failing=args.install_failing,
            optimizer=args.optimizer, optimizer_args=optim_args if args.optimizer else None,
            net_info=None if case.net is None else _info("net", args.net, case.net, init_kwargs(args, "net"),
                                                         case.description),
            loss_info=_info("loss", loss_name, case.loss, init_kwargs(args, "loss"), case.description),
            **{part: part not in skips for part in ex.PARTS if part != "parity"})
    except ex.ExportError as exc:
        print("compile-losses: export failed: {}".format(exc), file=sys.stderr)
        return 1
    seconds = time.perf_counter() - start
    manifest, report = path.manifest, path.report
    if report is not None:
        print(report)
    for a in manifest["artifacts"]:
        if a.get("check", {}).get("status", "pass") != "pass":
            print("  {} FAILS its check against eager: {}".format(a["path"], a["check"]))
    print("bundle {}: {} artifacts, export {:.1f} s; parity {}".format(
        path, len(manifest["artifacts"]), seconds,
        "ok" if path.ok and report is not None else ("FAILED" if not path.ok else manifest["parity"].get("status", "?"))))
    if not path.ok and path.name != name:
        print("  the failing bundle was NOT installed at {}: it is at {} (--install-failing installs it all the same)"
              .format(path.parent / name, path))
    for row in manifest.get("unavailable", []):
        print("  unavailable: {}: {}".format(row["kind"], row["reason"]))
    if args.json:
        result = {"bundle": str(path), "seconds": round(seconds, 3), "ok": path.ok, "failures": path.failures,
                  "manifest": manifest, "parity": json.loads(report.to_json()) if report is not None else None}
        try:
            with open(args.json, "w") as fh:
                json.dump(result, fh, indent=2)
        except OSError as exc:
            raise UsageError("--json: cannot write {}: {}".format(args.json, exc.strerror)) from None
    return 0 if path.ok else 1


def _short(name: str) -> str:
    """A folder-friendly name: the registry name, or the class name of an import path."""
    return name.rsplit(":", 1)[-1].rsplit(".", 1)[-1].lower() if ":" in name else name
