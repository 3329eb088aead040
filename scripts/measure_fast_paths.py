#!/usr/bin/env python
"""Before/after table for the fast paths (issue 6): big losses, small train steps, compile times,
peak memory. Ratios are within one run; rerun on a quiet machine for absolute numbers.

    python scripts/measure_fast_paths.py                 # everything (~5 min on 2 busy cores)
    python scripts/measure_fast_paths.py --quick         # 3 losses, fewer rounds
    python scripts/measure_fast_paths.py --json out.json --sections losses,train
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from compile_losses.fast import measure  # noqa: E402
from compile_losses.registry import LOSSES  # noqa: E402

SECTIONS = ("losses", "train", "compile", "memory")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="mse, huber, log_cosh only; 5 rounds")
    p.add_argument("--numel", type=int, default=1 << 24, help="elements per loss input (default 2^24)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds per case (default 9, quick 5)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads before measuring")
    p.add_argument("--losses", default=None, help="comma-separated registry names (default: every elementwise loss)")
    p.add_argument("--sections", default=",".join(SECTIONS), help="subset of " + ",".join(SECTIONS))
    p.add_argument("--device", default="cpu", help="device for the losses section (cuda: synchronized timers)")
    p.add_argument("--memory-losses", default=None, help="losses for the memory section (default: mse,huber,log_cosh,bce_with_logits)")
    p.add_argument("--json", default=None, help="write all results here")
    args = p.parse_args(argv)
    sections = [s for s in args.sections.split(",") if s]
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        p.error("--sections must be among {}, got {}".format(",".join(SECTIONS), ",".join(bad)))
    if args.threads:
        torch.set_num_threads(args.threads)
    rounds = args.rounds or (5 if args.quick else 9)
    names = (args.losses.split(",") if args.losses else
             (["mse", "huber", "log_cosh"] if args.quick else [n for n, s in LOSSES.items() if s.elementwise]))
    for n in names:
        if n not in LOSSES:
            p.error("--losses must name registry losses, got {!r}".format(n))
    log = lambda s: print(s, flush=True)  # noqa: E731
    results = {"device": args.device, "environment": measure.environment(), "numel": args.numel, "rounds": rounds}
    log("environment: {}".format(results["environment"]))
    if "losses" in sections:
        log("loss forward+backward at {} float32 elements (median of {} interleaved rounds):".format(args.numel, rounds))
        results["losses"] = measure.measure_losses(names, args.numel, rounds, log, device=args.device)
    if "train" in sections:
        log("SeedNet + MSE train step (median us per call; ratio to eager):")
        results["train"] = measure.measure_train((10, 4096), rounds, log)
    if "compile" in sections:
        log("compile time to first result, fresh process (cold: empty inductor cache; warm: same cache):")
        results["compile"] = measure.measure_compile(log)
    if "memory" in sections:
        mem_names = (args.memory_losses.split(",") if args.memory_losses else
                     ["mse", "huber"] if args.quick else ["mse", "huber", "log_cosh", "bce_with_logits"])
        log("peak memory of one forward+backward above the pre-call RSS, plus bytes held between calls:")
        results["memory"] = measure.measure_memory(mem_names, args.numel, ("eager", "compile", "fused", "fused-autograd"), log)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2, default=str)
        log("wrote {}".format(args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
