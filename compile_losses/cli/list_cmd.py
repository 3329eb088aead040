"""compile-losses list: the registry's losses and nets, and every backend with its availability."""
import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", metavar="PATH", help="also write the listing as JSON")


def run(args: argparse.Namespace) -> int:
    from .. import registry

    losses = [{"name": s.name, "family": s.family, "module": s.module.__name__,
               "reference": "torch" if s.reference is not None else "float64 formula (tests)"}
              for s in registry.LOSSES.values()]
    nets = [{"name": s.name, "class": s.factory.__name__, "input": list(s.input_shape), "loss": s.loss}
            for s in registry.NETS.values()]
    from ..backends import BACKENDS

    backends = []
    for name, backend in BACKENDS.items():
        ok, reason = backend.available()
        backends.append(dict({"name": name, "available": ok, "reason": reason}, **backend.facts()))
    print("losses ({}):".format(len(losses)))
    for row in losses:
        print("  {:<18} {:<15} {:<22} checked against {}".format(row["name"], row["family"], row["module"], row["reference"]))
    print("nets ({}):".format(len(nets)))
    for row in nets:
        print("  {:<18} {:<15} input (N, {}) trained with {}".format(
            row["name"], row["class"], ", ".join(map(str, row["input"])), row["loss"]))
    print("backends ({}):".format(len(backends)))
    for row in backends:
        kind = ", ".join([w for w, on in (("reference", row["reference"]), ("autograd", row["autograd"]),
                                          ("exported", row["exported"])) if on] + ["~{:g} s to prepare".format(row["cost"])])
        print("  {:<18} {:<44} {}".format(row["name"], kind, "available" if row["available"] else
                                          "unavailable: " + row["reason"]))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"losses": losses, "nets": nets, "backends": backends}, fh, indent=2)
    return 0
