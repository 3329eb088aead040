"""The runtime's one exception: a bundle refused, with every fault found, each naming its file."""
from typing import List, Tuple


class BundleError(ValueError):
    """A bundle that must not be used: each fault is ``(file, what is wrong)``.

    The message lists every fault found, one per line, so a tampered bundle is diagnosed in one go.
    """

    def __init__(self, bundle: str, faults: List[Tuple[str, str]]) -> None:
        self.bundle = bundle
        self.faults = list(faults)
        lines = ["{}: {}".format(f, why) for f, why in self.faults]
        head = "bundle {} refused".format(bundle)
        super().__init__(head + (": " + lines[0] if len(lines) == 1 else ":\n  " + "\n  ".join(lines)))
