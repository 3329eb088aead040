"""torch's own import-time noise, kept out of our users' logs where we trigger it.

Inductor's graph passes import ``torch.utils.mkldnn``, whose ``torch.jit.script_method``
decorators print 14 DeprecationWarnings (in torch 2.10+) the first time anything compiles with
inductor or its decompositions. They are about torch's code, not the user's, and only that import
is filtered: every later warning, torch's or the user's, is shown as usual.
"""
import functools
import warnings


@functools.lru_cache(maxsize=None)
def import_inductor_dependencies() -> None:
    """Import what inductor imports lazily and warns about, once, under a filter for that message."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script_method` is deprecated",
                                category=DeprecationWarning)
        try:
            import torch.utils.mkldnn  # noqa: F401
        except Exception:  # a torch without it: nothing to quieten, and inductor reports its own errors
            pass
