"""Run the runtime on prepared bundles in a process of its own and print one JSON line per case.

Needs only numpy and onnxruntime (and compile_losses on PYTHONPATH), so the same cases run under
the newest onnxruntime and under the lowest allowed one (a venv with only those two installed);
a native crash or hang is the parent's to see, not this process's to hide.

    python tests/runtime_probe.py CASES.json      # [{"name", "dir", "action", ...}, ...]
"""
import json
import os
import sys
import traceback


def _swap_after_verify(case):
    """Overwrite a listed file right after verification, before the sessions are built: the graphs
    must still be built from the verified bytes (a racing writer cannot substitute data)."""
    from compile_losses.runtime import bundle as bundle_mod

    real = bundle_mod.verify_bundle

    def verify_then_swap(*args, **kwargs):
        vb = real(*args, **kwargs)
        path = os.path.join(case["dir"], case["swap"])
        size = os.path.getsize(path)
        with open(path, "r+b") as fh:
            fh.write(b"\x7f" * size)  # float32 NaN-ish garbage of the same size
        return vb

    bundle_mod.verify_bundle = verify_then_swap
    try:
        return bundle_mod.load_bundle(case["dir"])
    finally:
        bundle_mod.verify_bundle = real


def run(case):
    import numpy as np
    import onnxruntime

    from compile_losses.runtime import BundleError, BundleTimeoutError, load_bundle

    out = {"name": case["name"], "onnxruntime": onnxruntime.__version__}
    try:
        b = _swap_after_verify(case) if case["action"] == "swap_after_verify" else load_bundle(case["dir"])
        if case["action"] == "load":
            out["result"] = "loaded"
        elif case["action"] in ("check", "swap_after_verify"):
            report = b.check(timeout_s=case.get("timeout_s", 60))
            out["result"] = "check ok" if report.ok else "check failed"
            out["failed"] = sorted({r.graph for r in report.rows if not r.ok})
        elif case["action"] == "forward_timeout":
            b.forward(np.zeros((2, 32), np.float32), timeout_s=case["timeout_s"])
            out["result"] = "finished"
    except BundleTimeoutError as exc:
        out.update(result="timeout", faults=exc.faults, message=str(exc))
    except BundleError as exc:
        out.update(result="refused", faults=exc.faults, message=str(exc))
    except Exception:  # anything else is a bug the parent test reports
        out.update(result="exception", traceback=traceback.format_exc())
    return out


def main():
    with open(sys.argv[1]) as fh:
        cases = json.load(fh)
    for case in cases:
        print("START", case["name"], flush=True)
        print("RESULT", json.dumps(run(case), ensure_ascii=True), flush=True)
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
