"""``torch.compile`` with torch's own dynamic-shape policy: ``compile-dynamo`` with its default
settings (graph breaks allowed, as users run it; the audit reports each break), ``compile-aot_eager``
and ``compile-cuda`` with ``fullgraph=True``.

The first call compiles for its shapes, a second batch size compiles one graph with a symbolic
batch dimension, and that graph serves every later batch (the audit in :mod:`compile_losses.parity`
checks it). Preparation makes the first call, so compiling stays outside any timer. Each prepared
callable compiles its own code object, so preparations never share (or exhaust) dynamo's
per-function recompile budget, and each keeps a count of its compilations for the audit.
"""
import contextlib
import copy
import os
import shutil
from typing import Any, Callable, Dict, Tuple

import torch
from torch import Tensor, nn

from .._torch_imports import import_inductor_dependencies
from .base import Backend, move, tf32_scope
from .eager import cuda_available

__all__ = ["CompileBackend", "INDUCTOR_SETTINGS", "check_inductor_settings", "inductor_settings_context", "own_code",
           "cxx_compiler"]

# inductor config flags that change numerics, with torch's defaults (a test checks they are torch's)
INDUCTOR_SETTINGS: Dict[str, bool] = {"emulate_precision_casts": False, "fallback_random": False}


class CompileBackend(Backend):
    """``torch.compile(fullgraph=True)``, dynamic batch; ``compiler`` is a dynamo backend name
    (``"inductor"``, or ``"aot_eager"`` to tell a dynamo/autograd problem from an inductor one)."""

    supports_autograd = True
    cacheable = True
    cost = 10.0  # an inductor build (aot_eager: ~1 s; see __init__)

    def __init__(self, name: str = "compile-dynamo", compiler: str = "inductor", device: str = "cpu",
                 fullgraph: bool = True, **facts: Any) -> None:
        facts.setdefault("markers", ("compile",) + (("gpu",) if device.startswith("cuda") else ()))
        super().__init__(name, **facts)
        self.compiler = compiler
        self.device = device
        self.fullgraph = fullgraph  # False: graph breaks allowed, as torch.compile's own default
        # Settings that change numerics (parity axes): inductor's emulate_precision_casts (round
        # low-precision intermediates as eager does) and fallback_random, and torch.compile's
        # dynamic= ("auto": static first, dynamic on a second shape; True; False).
        self.setting_defaults = dict(INDUCTOR_SETTINGS if compiler == "inductor" else {}, dynamic="auto")
        if device.startswith("cuda"):
            self.setting_defaults["tf32"] = False  # TF32 matmuls/convolutions (see eager's)
        # dynamo alone, + AOTAutograd, + inductor's decompositions and partitioner, + inductor
        pipeline = ("eager", "aot_eager", "aot_eager_decomp_partition", "inductor")
        self.stages = pipeline[:pipeline.index(compiler) + 1] if compiler in pipeline and device == "cpu" else ()

    def stage_callable(self, stage: str, module: nn.Module, example_inputs: Tuple[Tensor, ...],
                       dynamic: bool) -> Callable[..., Any]:
        if stage not in self.stages:
            raise ValueError("stage must be one of {}, got {!r}".format(list(self.stages), stage))
        self._require()
        return torch.compile(own_code(module), backend=stage, fullgraph=self.fullgraph, dynamic=dynamic)

    def check_settings(self, applied: Dict[str, Any]) -> None:
        check_inductor_settings(applied)
        if "dynamic" in applied and applied["dynamic"] not in ("auto", True, False):
            raise ValueError("dynamic must be 'auto', True or False, got {!r}".format(applied["dynamic"]))
        if "tf32" in applied and not isinstance(applied["tf32"], bool):
            raise ValueError("tf32 must be True or False, got {!r}".format(applied["tf32"]))

    def _settings_context(self, applied: Dict[str, Any]) -> Any:
        stack = contextlib.ExitStack()
        if "tf32" in applied:
            stack.enter_context(tf32_scope(applied["tf32"]))
        stack.enter_context(inductor_settings_context(applied))
        return stack

    def _available(self) -> Tuple[bool, str]:
        if not hasattr(torch, "compile"):
            return False, "this torch has no torch.compile"
        if self.device.startswith("cuda"):
            return cuda_available()
        if self.compiler == "inductor" and not cxx_compiler():
            return False, "inductor on the CPU needs a C++ compiler (set CXX or install g++)"
        return True, ""

    def _compile(self, module: nn.Module, example_inputs: Tuple[Tensor, ...]) -> Tuple[Callable[..., Any], nn.Module]:
        from torch._dynamo.testing import CompileCounterWithBackend

        from ..build_cache import prime_cpu_isa

        if self.compiler == "inductor":
            prime_cpu_isa()  # the vector-ISA probe from the cache, before inductor's first build
        used = module if self.device == "cpu" else copy.deepcopy(module).to(self.device)
        counter = CompileCounterWithBackend(self.compiler)
        dynamic = self._settings.get("dynamic", "auto")
        compiled = torch.compile(own_code(used), backend=counter, fullgraph=self.fullgraph,
                                 dynamic=None if dynamic == "auto" else dynamic)
        device = self.device

        def run(*inputs: Tensor) -> Any:
            if device != "cpu":
                inputs = tuple(move(inputs, device))
            return compiled(*inputs)

        run.compile_counter = counter  # type: ignore[attr-defined]
        return run, used

    def _warm_up(self, fn: Callable[..., Any], example_inputs: Tuple[Tensor, ...]) -> None:
        fn(*example_inputs)  # compile now, outside any timer; other batch sizes recompile once

    def audit_callable(self, module: nn.Module, example_inputs: Tuple[Tensor, ...]) -> Callable[..., Any]:
        self._require()
        return self._compile(module, example_inputs)[0]


def check_inductor_settings(applied: Dict[str, Any]) -> None:
    """Refuse a non-bool value of one of :data:`INDUCTOR_SETTINGS` in ``applied``."""
    for key in INDUCTOR_SETTINGS:
        if key in applied and not isinstance(applied[key], bool):
            raise ValueError("{} must be True or False, got {!r}".format(key, applied[key]))


def inductor_settings_context(applied: Dict[str, Any]) -> Any:
    """inductor's config patched with the :data:`INDUCTOR_SETTINGS` of ``applied`` (a no-op
    context, importing nothing, where there are none)."""
    patch = {k: applied[k] for k in INDUCTOR_SETTINGS if k in applied}
    if not patch:
        return contextlib.nullcontext()
    import torch._inductor.config as inductor_config

    return inductor_config.patch(**patch)


def own_code(module: nn.Module) -> Callable[..., Any]:
    """``module(*inputs)`` as a function with a code object of its own (dynamo caches compiled
    graphs per code object, and limits recompilations per code object). Every torch.compile of
    ours goes through here, so torch's import-time deprecation noise is quietened here too."""
    import_inductor_dependencies()

    def call(*inputs: Tensor) -> Any:
        return module(*inputs)

    call.__code__ = call.__code__.replace(co_name="compiled_{}_{}".format(type(module).__name__, id(call)))
    return call


def cxx_compiler() -> bool:
    return any(shutil.which(c) for c in (os.environ.get("CXX", ""), "g++", "c++", "clang++") if c)
