"""Where a parity failure comes from: the first diverging operation of an exported graph, judged
by the parity rule against eager torch and its float64 run, and a standalone repro of it.

    loc = cl.localize(net, loss, inputs, target, backend=...)  # -> Localization
    loc.ok, loc.graphs, loc.to_json(), print(loc)

Modules: :mod:`.reference` (the FX graph's values in float32 and float64), :mod:`.onnx_graph`
(every ONNX value an output, onnxruntime at two optimization levels, the first failing node),
:mod:`.graphs` (the case's forward, loss-and-gradient and train-step graphs), :mod:`.inject`
(the fault-injection self-test), :mod:`.repro` (the standalone repro directory), :mod:`.modules`
(module-level localization of graphs named by module scope only: ``onnx-legacy``).
"""
import sys
import types
from typing import Any

from .api import GraphFinding, Localization, localize

__all__ = ["GraphFinding", "Localization", "localize"]


class _CallableModule(types.ModuleType):
    # ``import compile_losses.localize`` binds the package's ``localize`` attribute to this
    # module, so the module itself answers ``cl.localize(net, loss, inputs, target, backend=...)``.
    def __call__(self, *args: Any, **kwargs: Any) -> Localization:
        return localize(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
