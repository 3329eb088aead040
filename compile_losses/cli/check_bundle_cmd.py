"""compile-losses check-bundle: check a bundle with the runtime alone (onnxruntime + numpy, no
torch): manifest size and JSON, every file's path, type, size and sha256, no unlisted files,
external-data locations, then the fixtures re-run and judged by the parity rule, under a time bound
(``--timeout``, 60 s by default: a graph that does not finish is a refused bundle).

Exit 0: the bundle is intact and every fixture passes; 1: refused or a fixture fails (or the
manifest records a parity failure at export); 2: DIR is not a folder.
"""
import argparse
import json
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", metavar="DIR", help="the bundle folder, e.g. models/seed-mse")
    parser.add_argument("--json", metavar="PATH", help="also write the check as JSON")
    parser.add_argument("--manifest-sha256", default=None, metavar="HEX",
                        help="refuse the bundle unless manifest.json has this sha256 (pins who wrote it)")
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help="time bound of the whole fixture check (default 60); a graph still running is stopped")


def run(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..runtime import DEFAULT_CHECK_TIMEOUT_S, BundleError, load_bundle
    from ..runtime.timeouts import check_timeout

    if not os.path.isdir(args.dir):
        raise UsageError("DIR must be a bundle folder, got {!r} ({})".format(
            args.dir, "not a folder" if os.path.exists(args.dir) else "does not exist"))
    if args.json and not os.access(os.path.dirname(os.path.abspath(args.json)), os.W_OK):
        raise UsageError("--json: cannot write {}".format(args.json))
    try:
        timeout_s = check_timeout("--timeout", DEFAULT_CHECK_TIMEOUT_S if args.timeout is None else args.timeout)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    result = {"bundle": args.dir, "ok": False}
    try:
        bundle = load_bundle(args.dir, manifest_sha256=args.manifest_sha256, timeout_s=timeout_s)
        report = bundle.check(timeout_s=timeout_s)
    except BundleError as exc:
        print("compile-losses: {}".format(exc), file=sys.stderr)
        result["refused"] = [{"file": f, "fault": why} for f, why in exc.faults]
        code = 1
    else:
        print(report)
        parity = bundle.manifest.get("parity") if isinstance(bundle.manifest.get("parity"), dict) else {}
        export_ok = parity.get("ok", True) is not False
        if not export_ok:
            print("manifest records a parity failure at export time: {}".format(json.dumps(parity)[:500]))
        print("{} {}: manifest sha256 {}; {} graphs checked; trusted-only (not loaded): {}".format(
            "OK" if report.ok and export_ok else "FAIL", args.dir, bundle.manifest_sha256, len(bundle.graphs),
            ", ".join(bundle.trusted_only) or "none"))
        result.update(json.loads(report.to_json()), manifest_sha256=bundle.manifest_sha256, export_parity_ok=export_ok)
        result["ok"] = report.ok and export_ok
        code = 0 if result["ok"] else 1
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return code
