"""Arguments the verbs share, parsed the same on every one.

Init arguments of a net or loss: ``--net-arg KEY=VALUE`` (repeatable) and
``--net-args JSON`` (an object), likewise ``--loss-arg`` / ``--loss-args``; both may be given (a key
in both is refused). VALUE follows one rule (:func:`compile_losses.resolve.parse_value`): a JSON
literal, else a Python literal (``True``, ``None``), else the text; each is then checked against
the class's parameter (its annotation or default) when the module is built."""
import argparse
import json
from typing import Any, Dict, Optional

from ..errors import UsageError

HELP = ("VALUE is a JSON literal (true, null, 0.5, [1, 2], {\"k\": 1}), else a Python literal (True, None), "
        "else text; checked against the class's parameter")


def add_init_arguments(parser: argparse.ArgumentParser) -> None:
    for which in ("net", "loss"):
        parser.add_argument("--{}-arg".format(which), dest="{}_arg".format(which), action="append", default=[],
                            metavar="KEY=VALUE", help="{} init argument, repeatable; {}".format(which, HELP))
        parser.add_argument("--{}-args".format(which), dest="{}_args".format(which), default=None, metavar="JSON",
                            help="{} init arguments as one JSON object (with or instead of --{}-arg)".format(
                                which, which))


def init_kwargs(args: argparse.Namespace, which: str) -> Optional[Dict[str, Any]]:
    """The ``which`` (``"net"`` or ``"loss"``) init arguments given, or None when none was."""
    from ..resolve import parse_kwargs

    text = getattr(args, which + "_args")
    items = getattr(args, which + "_arg")
    if text is None and not items:
        return None
    out: Dict[str, Any] = {}
    if text is not None:
        flag = "--{}-args".format(which)
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise UsageError("{} must be a JSON object, got {!r} ({})".format(flag, text, exc)) from None
        if not isinstance(value, dict):
            raise UsageError("{} must be a JSON object, got {}".format(flag, type(value).__name__))
        out.update(value)
    pairs = parse_kwargs(items, "--{}-arg".format(which))
    both = sorted(set(out) & set(pairs))
    if both:
        raise UsageError("--{0}-args and --{0}-arg both give {1}".format(which, ", ".join(repr(k) for k in both)))
    out.update(pairs)
    return out


def lr_arg(text: str) -> float:
    """``--lr``: a finite number > 0 (argparse reports the message on one line, exit 2)."""
    from ..programs import check_lr

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("--lr must be a number, got {!r}".format(text)) from None
    try:
        return check_lr(value, "--lr")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_optimizer_arguments(parser: argparse.ArgumentParser) -> None:
    """``--optimizer sgd|adam|adamw`` and ``--optim-arg KEY=VALUE`` (repeatable; torch.optim's names,
    ``beta1``/``beta2`` or ``betas=[b1, b2]``)."""
    from ..bundle_format import OPTIMIZERS

    parser.add_argument("--optimizer", choices=OPTIMIZERS, default=None,
                        help="train with this optimizer (torch.optim's single-tensor update)")
    parser.add_argument("--optim-arg", dest="optim_arg", action="append", default=[], metavar="KEY=VALUE",
                        help="optimizer argument, repeatable (lr, momentum, dampening, weight_decay, nesterov, "
                             "beta1, beta2, betas, eps, amsgrad, maximize); " + HELP.split(";")[0])


def optimizer_kwargs(args: argparse.Namespace) -> Dict[str, Any]:
    """The ``--optim-arg`` pairs, checked by :func:`compile_losses.optim.optimizer` (a bad one is a
    usage error naming the flag)."""
    from ..optim import optimizer
    from ..resolve import parse_kwargs

    pairs = parse_kwargs(args.optim_arg, "--optim-arg")
    if pairs and args.optimizer is None:
        raise UsageError("--optim-arg needs --optimizer (sgd, adam or adamw)")
    if args.optimizer is not None:
        try:
            optimizer(args.optimizer, **pairs)
        except (TypeError, ValueError) as exc:
            raise UsageError("--optim-arg: {}".format(exc)) from None
    return pairs
