"""Run mutmut's mutants one by one, without mutmut's runner.

mutmut 2.5.1 generates the mutants well, but its runner (a mutant queue, a checking process and a
pony/sqlite cache shared between them) crashed on this machine every 20-50 mutants with
"Attribute Mutant.line is required" and then hung. This driver keeps mutmut's mutation operators
(``mutmut.list_mutations`` / ``mutmut.mutate``) and replaces only the loop: apply one mutant on disk,
run the runner command, restore the file (also on Ctrl-C), append the verdict to a JSON-lines log.
A rerun with the same log resumes: mutants already judged against the same source and tests are
skipped.

    python scripts/mutation_run.py --paths a.py,b.py --runner "pytest -x -q tests/t.py" --log L.jsonl
    python scripts/mutation_run.py ... --report      # survivors with their diffs; exit 2 if any
    python scripts/mutation_run.py ... --keep-killed # after adding tests: rerun only the survivors
"""
import argparse
import difflib
import hashlib
import json
import os
import pathlib
import subprocess
import sys
import time

import shlex
import signal

import mutmut
from mutmut import ALL, Context


def _digest(paths):
    h = hashlib.sha256()
    for p in paths:
        h.update(pathlib.Path(p).read_bytes())
    return h.hexdigest()[:16]


def _mutants(path):
    source = pathlib.Path(path).read_text()
    ids = mutmut.list_mutations(Context(source=source, filename=path, mutation_id=ALL))
    for mid in ids:
        mutated, n = mutmut.mutate(Context(source=source, filename=path, mutation_id=mid))
        if n:
            yield mid, source, mutated


def _run(runner, timeout=None):
    """The runner's exit code, or None on timeout. ``pytest ARGS`` runners run in a child forked from
    this process, which has imported torch, numpy and pytest once (importing torch per mutant was
    most of a mutant's cost); compile_losses itself is imported fresh in each child."""
    words = shlex.split(runner)
    if words[:1] != ["pytest"]:
        try:
            return subprocess.run(runner, shell=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                  timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            return None
    pid = os.fork()
    if pid == 0:  # the child: quiet, run pytest in-process, leave without cleanup handlers
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        sys.path.insert(0, os.getcwd())  # the checkout's compile_losses, not an installed one
        import pytest
        os._exit(int(pytest.main(words[1:])))
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if deadline is not None and time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None
        time.sleep(0.05)


def _changed_lines(path, since):
    """1-based line numbers of ``path`` added or changed since git revision ``since``."""
    out = subprocess.run(["git", "diff", "-U0", since, "--", path], capture_output=True, text=True,
                         check=True).stdout
    lines = set()
    for hunk in out.splitlines():
        if hunk.startswith("@@"):
            new = hunk.split("+", 1)[1].split(" ", 1)[0]
            start, _, count = new.partition(",")
            n = int(count) if count else 1
            lines.update(range(int(start), int(start) + n))
    return lines


def _diff(path, source, mutated):
    return "".join(line for line in difflib.unified_diff(
        source.splitlines(True), mutated.splitlines(True), path, path, n=0) if line[:1] in "+-@")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--paths", required=True, help="comma-separated files to mutate")
    ap.add_argument("--runner", required=True, help="shell command; exit 0 means the mutant survived")
    ap.add_argument("--tests", default="tests", help="folder whose content keys the verdicts")
    ap.add_argument("--log", required=True, help="JSON-lines verdicts (resumed when present)")
    ap.add_argument("--timeout", type=float, default=None,
                    help="seconds per mutant (default: 3x the clean run + 60)")
    ap.add_argument("--since", default=None,
                    help="git revision: mutate only lines changed since (incremental, as mutmut's --use-patch-file)")
    ap.add_argument("--report", action="store_true", help="print survivors from the log and exit")
    ap.add_argument("--keep-killed", action="store_true",
                    help="reuse 'killed' verdicts judged against other tests (sound only when tests were added, "
                         "not changed: a mutant an unchanged test kills stays killed); survivors and timeouts rerun")
    args = ap.parse_args(argv)
    paths = [p for p in args.paths.split(",") if p]
    log = pathlib.Path(args.log)
    tests_key = _digest(sorted(str(p) for p in pathlib.Path(args.tests).rglob("*.py")))

    done = {}
    if log.exists():
        for line in log.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("tests") == tests_key or (args.keep_killed and rec["verdict"] == "killed"):
                done[rec["key"]] = rec
    if args.report:
        survivors = [r for r in done.values() if r["verdict"] == "survived"]
        counts = {}
        for r in done.values():
            counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
        print("verdicts:", json.dumps(counts, sort_keys=True))
        for r in survivors:
            print("--- survived: {}:{}\n{}".format(r["path"], r["line_number"], r["diff"]))
        return 2 if survivors else 0

    if shlex.split(args.runner)[:1] == ["pytest"]:
        import numpy, pytest, torch  # noqa: F401  (once, before the children fork)
    started = time.perf_counter()
    clean = _run(args.runner)
    clean_s = time.perf_counter() - started
    if clean != 0:
        print("the runner fails on the unmutated code (exit {}): fix that first".format(clean))
        return 1
    timeout = args.timeout or 3 * clean_s + 60
    todo = [(p, m) for p in paths for m in _mutants(p)]
    if args.since:
        changed = {p: _changed_lines(p, args.since) for p in paths}
        todo = [(p, m) for p, m in todo if m[0].line_number + 1 in changed[p]]
    print("{} mutants in {}; clean run {:.1f} s, timeout {:.0f} s".format(len(todo), ", ".join(paths), clean_s, timeout),
          flush=True)
    counts = {"killed": 0, "survived": 0, "timeout": 0}
    with log.open("a") as out:
        for i, (path, (mid, source, mutated)) in enumerate(todo, 1):
            key = "{}:{}:{}:{}".format(path, mid.line_number, mid.index,
                                       hashlib.sha256(_digest([path]).encode() + mid.line.encode()).hexdigest()[:12])
            if key in done:
                counts[done[key]["verdict"]] += 1
                continue
            target = pathlib.Path(path)
            try:
                target.write_text(mutated)
                rc = _run(args.runner, timeout)
                verdict = "timeout" if rc is None else ("survived" if rc == 0 else "killed")
            finally:
                target.write_text(source)
            counts[verdict] += 1
            rec = {"key": key, "tests": tests_key, "path": path, "line_number": mid.line_number + 1,
                   "verdict": verdict, "diff": _diff(path, source, mutated)}
            out.write(json.dumps(rec) + "\n")
            out.flush()
            print("{}/{} {} {}:{}  (killed {killed}, survived {survived}, timeout {timeout})".format(
                i, len(todo), verdict, path, mid.line_number + 1, **counts), flush=True)
    return 2 if counts["survived"] else (4 if counts["timeout"] else 0)


if __name__ == "__main__":
    sys.exit(main())
