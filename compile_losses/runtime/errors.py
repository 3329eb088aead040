"""The runtime's exceptions: a bundle refused (every fault found, each naming its file), a graph run
stopped at its time bound, and a bad argument to a call."""
import re
from typing import List, Tuple

_PLAIN = re.compile(r"^[A-Za-z0-9_.+=@,/ -]*$")


def quote(name: object) -> str:
    """``name`` as printed in an error: as-is when it is plain, else ``ascii()``-quoted, so a name
    from a bundle (a file name, a tensor name) cannot forge extra lines or hide characters."""
    text = str(name)
    return text if _PLAIN.match(text) else ascii(text)


def _one_line(text: str) -> str:
    # Messages embed names and onnxruntime's own words; anything unprintable (a newline, a lone
    # surrogate, a bidi control) is escaped so that each fault stays exactly one line.
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


class BundleError(ValueError):
    """A bundle that must not be used: each fault is ``(file, what is wrong)``.

    The message lists every fault found, one per line, so a tampered bundle is diagnosed in one go.
    ``faults`` keeps the file names as found; the message quotes any that are not plain.
    """

    def __init__(self, bundle: str, faults: List[Tuple[str, str]]) -> None:
        self.bundle = bundle
        self.faults = list(faults)
        lines = [_one_line("{}: {}".format(quote(f), why)) for f, why in self.faults]
        head = _one_line("bundle {} refused".format(quote(bundle)))
        super().__init__(head + (": " + lines[0] if len(lines) == 1 else ":\n  " + "\n  ".join(lines)))


class BundleTimeoutError(BundleError):
    """A graph run stopped at its time bound (``timeout_s``): a bundle whose graph does not finish
    (e.g. a Loop of 2**62 trips) is refused like any other faulty bundle."""

    def __init__(self, bundle: str, graph: str, timeout_s: float) -> None:
        self.graph = graph
        self.timeout_s = timeout_s
        super().__init__(bundle, [(graph, "did not finish within timeout_s={:g} s; the run was stopped".format(timeout_s))])


class BadArgumentError(ValueError):
    """A call's argument has the right type but an unusable value (e.g. ``lr`` NaN or not positive)."""
