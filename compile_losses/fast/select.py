"""Pick, per case, the fastest of several equivalent callables, measured on the case itself.

Compiled code is not always faster (``torch.compile`` of an autograd train step is slower than
eager at batch 10 here), so the fast paths time every candidate on the example inputs and keep
the fastest, eager included, and say which and why (:attr:`Selected.note`).
"""
import statistics
import time
from typing import Any, Callable, Dict, Mapping, Optional


class Selected:
    """The chosen callable, with every candidate's median seconds per call and the reason."""

    def __init__(self, choice: str, fn: Callable[..., Any], timings: Dict[str, float],
                 errors: Dict[str, str], baseline: str) -> None:
        self.choice, self.fn, self.timings, self.errors, self.baseline = choice, fn, timings, errors, baseline
        self.settings = ""  # what the compiled candidate is, when the chooser says (the compile backend)
        self.source = ""  # where the choice came from, when not from timing now (a cached decision)

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)

    @property
    def note(self) -> str:
        parts = ["{} {:.1f} us".format(n, t * 1e6) for n, t in sorted(self.timings.items(), key=lambda kv: kv[1])]
        parts += ["{} unavailable: {}".format(n, e) for n, e in self.errors.items()]
        head = "chose {}".format(self.choice)
        if self.choice == self.baseline and len(self.timings) > 1:
            head += " (compiled paths were slower here: fell back to {})".format(self.baseline)
        if self.settings:
            head += " [compile = {}]".format(self.settings)
        if self.source:
            head += " ({})".format(self.source)
        return head + "; " + (", ".join(parts) if parts else "untimed (parity verifies the compiled path)")

    def __repr__(self) -> str:
        return "Selected({})".format(self.note)


def _time(fn: Callable[..., Any], args: tuple, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn(*args)
    return (time.perf_counter() - start) / calls


def pick_fastest(candidates: Mapping[str, Callable[[], Callable[..., Any]]], args: tuple, baseline: str = "eager",
                 rounds: int = 5, round_seconds: float = 0.02, budget_seconds: Optional[float] = 10.0,
                 strict: bool = False) -> Selected:
    """Build each candidate (``name -> factory``), warm it up (compiles happen here), then time
    them in interleaved rounds (so a burst of load on a shared machine hits all alike) and keep
    the one with the lowest median. A candidate that fails to build or run is reported, not chosen
    (``strict``: it raises, for a chooser whose candidates must all work).
    """
    if baseline not in candidates:
        raise ValueError("baseline must be one of the candidates {}, got {!r}".format(sorted(candidates), baseline))
    built: Dict[str, Callable[..., Any]] = {}
    errors: Dict[str, str] = {}
    calls: Dict[str, int] = {}
    for name, factory in candidates.items():
        try:
            fn = factory()
            fn(*args)  # compile / export / first-call costs stay out of the timing
            once = _time(fn, args, 1)
        except Exception as exc:  # any failure just removes the candidate, with its reason
            if name == baseline or strict:
                raise
            errors[name] = "{}: {}".format(type(exc).__name__, (str(exc).strip().splitlines() or [""])[0])
            continue
        built[name] = fn
        calls[name] = max(1, int(round_seconds / max(once, 1e-7)))
    samples: Dict[str, list] = {n: [] for n in built}
    start = time.perf_counter()
    for r in range(rounds):
        for name, fn in built.items():
            samples[name].append(_time(fn, args, calls[name]))
        if budget_seconds is not None and r >= 2 and time.perf_counter() - start > budget_seconds:
            break
    timings = {n: statistics.median(s) for n, s in samples.items()}
    choice = min(timings, key=timings.__getitem__)
    return Selected(choice, built[choice], timings, errors, baseline)
