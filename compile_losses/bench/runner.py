"""Running the benchmark suite (``tests/benchmarks``) in a pytest subprocess, for this checkout or,
in the interleaved gate, alternately for a baseline git ref checked out in a temporary worktree.

The suite is the instrument and always comes from this checkout; ``PYTHONPATH`` chooses whose
``compile_losses`` it measures, and every result records the path it imported it from, which is
checked here, so a baseline round can never silently measure the working tree.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..errors import UsageError
from .results import Run, load

# glibc's mmap threshold, fixed where its dynamic rule would settle in a long-running process
# (32 MiB; trim threshold twice that). Left dynamic, whether a 16 MiB tensor is page-faulted in
# afresh on every call (~5 ms) or reused from the heap depends on which cases ran earlier in the
# process: measured, MSE's eager forward at 2^22 elements took 6.7 ms in one run and 18-35 ms in the
# next. Pinned, it is the same in every run. (Tensors of 32 MiB and more are mapped afresh either way.)
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2 ** 20), "MALLOC_TRIM_THRESHOLD_": str(64 * 2 ** 20)}

# pytest-benchmark timing per mode: quick keeps CI under 3 minutes on 2 cores; full is steadier.
TIMING = {
    "quick": ["--benchmark-min-rounds=5", "--benchmark-max-time=0.15"],
    "full": ["--benchmark-min-rounds=5", "--benchmark-max-time=0.5"],
}


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def suite_dir() -> Path:
    path = repo_root() / "tests" / "benchmarks"
    if not (path / "conftest.py").is_file():
        raise UsageError("benchmark suite not found at {} (bench runs from a source checkout)".format(path))
    return path


def machine_kind(device: str = "cpu") -> str:
    """A file-name-safe label for this kind of machine: cpu-<model>-<n>c or gpu-<device name>."""
    if device == "cuda":
        import torch

        name = torch.cuda.get_device_name()
    else:
        name = _cpu_model()
        name = "{}-{}c".format(name, os.cpu_count())
    return "{}-{}".format("gpu" if device == "cuda" else "cpu", re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-"))


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def run_suite(json_path: Path, *, mode: str, gpu: bool = False, code_root: Optional[Path] = None,
              select: Optional[str] = None, extra_args: Sequence[str] = (), env: Optional[Dict[str, str]] = None,
              threads: int = 0, quiet: bool = True) -> int:
    """Run the suite once into ``json_path``; returns pytest's exit code.

    ``code_root`` is the checkout whose ``compile_losses`` is measured (default: this one).
    """
    code_root = (code_root or repo_root()).resolve()
    cmd = [sys.executable, "-m", "pytest", str(suite_dir()), "--benchmark-only",
           "--benchmark-json={}".format(json_path), "-p", "no:cacheprovider", "-m", "gpu" if gpu else "not gpu"]
    cmd += TIMING["full" if mode == "full" else "quick"]
    cmd += ["-q", "-rs"] if quiet else ["-v", "-rs"]
    if select:
        cmd += ["-k", select]
    cmd += list(extra_args)
    child_env = dict(os.environ)
    child_env.update(MALLOC_ENV)
    child_env.update(env or {})
    child_env["COMPILE_LOSSES_BENCH_MODE"] = mode
    child_env["COMPILE_LOSSES_BENCH_THREADS"] = str(threads)
    # No current directory on sys.path (python -m would add it): PYTHONPATH alone picks the code.
    child_env["PYTHONSAFEPATH"] = "1"
    child_env["PYTHONPATH"] = os.pathsep.join([str(code_root)] + [p for p in child_env.get("PYTHONPATH", "").split(os.pathsep) if p])
    print("$ COMPILE_LOSSES_BENCH_MODE={} COMPILE_LOSSES_BENCH_THREADS={} PYTHONPATH={} {}".format(
        mode, threads, code_root, " ".join(cmd)), flush=True)
    proc = subprocess.Popen(cmd, cwd=str(repo_root()), env=child_env)
    try:
        return proc.wait()
    finally:  # interrupted (Ctrl-C, a CI timeout): never leave the suite running behind us
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def check_measured(run: Run, code_root: Path) -> None:
    """Every result must have imported compile_losses from ``code_root``."""
    expected = str((code_root / "compile_losses").resolve())
    wrong = {r.extra.get("compile_losses_path") for r in run.results.values()} - {expected}
    if wrong:
        raise RuntimeError("results in {} measured compile_losses from {}, expected {}".format(
            ", ".join(run.sources), ", ".join(sorted(map(str, wrong))), expected))


def _git(*args: str) -> str:
    proc = subprocess.run(["git", "-C", str(repo_root())] + list(args), capture_output=True, text=True)
    if proc.returncode != 0:
        raise UsageError("git {} failed: {}".format(" ".join(args), proc.stderr.strip().splitlines()[-1:] or proc.returncode))
    return proc.stdout.strip()


def run_interleaved(ref: str, out_dir: Path, *, rounds: int, mode: str, gpu: bool = False,
                    select: Optional[str] = None, extra_args: Sequence[str] = (),
                    env: Optional[Dict[str, str]] = None, threads: int = 0) -> Tuple[List[Run], List[Run]]:
    """Check ``ref`` out into a temporary worktree and run baseline, working tree, baseline, ...

    Returns (baseline runs, working-tree runs). The worktree is removed afterwards, whatever happens.
    """
    if rounds < 1:
        raise UsageError("--rounds must be >= 1, got {}".format(rounds))
    try:
        commit = _git("rev-parse", "--verify", "--quiet", ref + "^{commit}")
    except UsageError:
        raise UsageError("--gate-against-ref: {!r} is not a commit in {}".format(ref, repo_root())) from None
    tmp = Path(tempfile.mkdtemp(prefix="cl-bench-ref-"))
    worktree = tmp / "baseline"
    _git("worktree", "add", "--detach", str(worktree), commit)
    baseline_runs: List[Run] = []
    current_runs: List[Run] = []
    try:
        for i in range(rounds):
            for label, root, runs in (("baseline", worktree, baseline_runs), ("current", repo_root(), current_runs)):
                path = out_dir / "{}-{}.json".format(label, i)
                print("== round {}/{}: {} ({})".format(i + 1, rounds, label, commit[:12] if label == "baseline" else "working tree"),
                      flush=True)
                code = run_suite(path, mode=mode, gpu=gpu, code_root=root, select=select, extra_args=extra_args,
                                 env=env, threads=threads)
                if not path.is_file():
                    raise RuntimeError("{} round {} wrote no results (pytest exit {})".format(label, i + 1, code))
                run = load([str(path)])
                check_measured(run, root)
                runs.append(run)
    finally:
        subprocess.run(["git", "-C", str(repo_root()), "worktree", "remove", "--force", str(worktree)],
                       capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run(["git", "-C", str(repo_root()), "worktree", "prune"], capture_output=True)
    return baseline_runs, current_runs
