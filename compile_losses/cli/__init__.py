"""``compile-losses``: thin glue over the library. ``main(argv) -> int`` is testable in-process.

Exit codes: 0 all good; 1 a parity or check failure; 2 bad usage or bad input (one line on stderr).
Each verb lives in its own module with ``add_arguments(parser)`` and ``run(args) -> int``.
Where only numpy and onnxruntime are installed, ``--help`` and ``check-bundle`` work and the other
verbs say in one line (exit 2) that they need torch.
"""
import argparse
import importlib
import sys
from typing import List, Optional, Tuple

from ..errors import UsageError

VERBS = {
    "list": ("list_cmd", "losses, nets and backends, with availability and reason"),
    "verify": ("verify_cmd", "parity of values and gradients against eager, per backend"),
    "export": ("export_cmd", "write a deployment bundle (the main job with no arguments)"),
    "check-bundle": ("check_bundle_cmd", "check a bundle with the runtime alone: checksums, paths, fixtures"),
    "bench": ("bench_cmd", "throughput benchmarks, plot, summary and regression gate"),
    "localize": ("localize_cmd", "where a graph starts to diverge from eager; --inject: the localizer's self-test"),
}
RUNTIME_VERBS = ("check-bundle",)
# What the runtime side needs; every other dependency of the project is the torch side, and a
# missing one of those is "this verb needs torch", not a bug.
RUNTIME_DEPENDENCIES = ("numpy", "onnxruntime")


def _torch_side() -> Tuple[str, ...]:
    """The project's dependencies the runtime does not need (from the installed metadata), and
    torch's own (functorch, sympy); ``torch`` alone where the project is not installed."""
    import importlib.metadata
    import re

    try:
        requires = importlib.metadata.requires("compile_losses") or []
    except importlib.metadata.PackageNotFoundError:
        requires = []
    names = {re.split(r"[<>=!~ ;\[]", r, maxsplit=1)[0].strip().lower().replace("-", "_")
             for r in requires if "extra ==" not in r}
    return tuple(sorted((names | {"torch"}) - set(RUNTIME_DEPENDENCIES))) + ("functorch", "sympy")


def _missing_torch_side(exc: ImportError) -> bool:
    name = getattr(exc, "name", None) or ""
    return isinstance(exc, ModuleNotFoundError) and name.split(".")[0] in _torch_side()


def _needs_torch(verb: str, exc: ImportError) -> UsageError:
    return UsageError("{} needs torch, which is not importable here ({}); only {} runs with numpy and "
                      "onnxruntime alone".format(verb, exc, ", ".join(RUNTIME_VERBS)))


def _torch_missing() -> Optional[ImportError]:
    """Why torch cannot be imported here, or None. Imported up front for the torch-side verbs
    (they all import it anyway) so that none starts work, e.g. a benchmark subprocess, first."""
    try:
        importlib.import_module("torch")
    except ImportError as exc:
        if _missing_torch_side(exc):
            return exc
        raise
    return None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 too; keep its one-line form
        raise UsageError(message)


def build_parser(verb: Optional[str] = None) -> argparse.ArgumentParser:
    """The parser; with ``verb``, only that verb's module is imported (``check-bundle`` must run
    where only numpy and onnxruntime are installed, so it must not import the torch-side verbs)."""
    parser = _Parser(prog="compile-losses", description="Custom PyTorch losses through every compiler and exporter, with value and gradient parity against eager.")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    sub.required = True
    for name, (module, help_text) in VERBS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if verb is None or name == verb:
            try:
                mod = importlib.import_module("." + module, __name__)
            except ImportError as exc:  # listed in --help all the same; main() refuses to run it
                if not _missing_torch_side(exc):
                    raise
                continue
            mod.add_arguments(p)
            p.set_defaults(_run=mod.run)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    verb = words[0] if words and words[0] in VERBS else None
    try:
        missing = _torch_missing() if verb is not None and verb not in RUNTIME_VERBS else None
        if missing is not None:
            raise _needs_torch(verb, missing)
        args = build_parser(verb).parse_args(argv)
        try:
            return int(args._run(args))
        except ImportError as exc:  # a verb's lazy import of the torch side, where torch is absent
            if not _missing_torch_side(exc):
                raise
            raise _needs_torch(args.verb, exc) from None
    except UsageError as exc:
        print("compile-losses: error: {}".format(_as_flag(exc)), file=sys.stderr)
        return 2


# Library arguments as the CLI spells them, for errors raised below the CLI (UsageError.argument).
FLAGS = {"out_dir": "--out", "name": "--name", "lr": "--lr", "backends": "--backends"}


def _as_flag(exc: UsageError) -> str:
    text, arg = str(exc), getattr(exc, "argument", None)
    if arg in FLAGS and text.startswith(arg):
        return FLAGS[arg] + text[len(arg):]
    return text


def console_main() -> None:
    sys.exit(main())
