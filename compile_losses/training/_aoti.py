"""Training graphs through AOTInductor: ``torch.export`` of the same traced joint graph the ONNX
export uses, compiled to a ``.pt2`` package and loaded back as a callable."""
import os
import shutil
import tempfile
import threading
import warnings
from typing import Any, Callable, Dict, Tuple

import torch
from torch import Tensor, nn

from ..signature import COTANGENT, TrainStepResult
from ..errors import ExportUnsupportedError
from ._trace import TracedGraph, structure_key, trace_loss_and_grad, trace_train_step

# A build takes ~20 s on 2 cores: one per graph structure per process (the batch is dynamic).
_CACHE: Dict[Tuple[Any, ...], Tuple[Any, TracedGraph]] = {}
_LOCK = threading.Lock()
_DIRS: list = []  # package folders live as long as the process holds their runners


def aoti_package(graph: TracedGraph, package_path: str) -> str:
    """Compile ``graph`` with AOTInductor into ``package_path`` (a ``.pt2`` file)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
        try:
            program = torch.export.export(graph.module, graph.example, dynamic_shapes=graph.dynamic_shapes())
        except Exception as exc:  # torch.export raises many types; a clear one-line reason instead
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ExportUnsupportedError("{} cannot be exported for AOTInductor ({} graph): {}: {}".format(
                graph.loss_label, graph.kind, type(exc).__name__, first), loss=graph.loss_label) from None
        build_package(program, package_path)
    return package_path


def build_package(program: Any, package_path: str) -> bool:
    """``program`` compiled by AOTInductor into ``package_path``, or the package built before from
    the same graph, weights, constants, settings and versions, copied from the build cache
    (:mod:`compile_losses.build_cache`). Returns True when it came from the cache."""
    from .._torch_imports import import_inductor_dependencies
    from ..build_cache import build_file, prime_cpu_isa, program_key

    def build(dest: str) -> None:
        import_inductor_dependencies()
        made = torch._inductor.aoti_compile_and_package(program, package_path=dest)
        if os.path.abspath(made) != os.path.abspath(dest):
            shutil.copyfile(made, dest)

    prime_cpu_isa()
    return build_file("aoti-package", program_key(program, ("aoti_compile_and_package",)), package_path, build)


def load_package(path: str) -> Any:
    """``aoti_load_package(path)``, with inductor's vector-ISA probe (which loading runs too)
    answered from the build cache."""
    from ..build_cache import prime_cpu_isa

    prime_cpu_isa()
    return torch._inductor.aoti_load_package(str(path))


def _runner(key: Tuple[Any, ...], trace: Callable[[], TracedGraph]) -> Tuple[Any, TracedGraph]:
    with _LOCK:
        if key not in _CACHE:
            graph = trace()
            folder = tempfile.TemporaryDirectory(prefix="compile_losses_aoti_")
            _DIRS.append(folder)
            path = aoti_package(graph, os.path.join(folder.name, graph.kind + ".pt2"))
            _CACHE[key] = (load_package(path), graph)
        return _CACHE[key]


def prepare_aoti_loss_and_grad(loss: nn.Module, example_inputs: Tuple[Tensor, ...]) -> Callable[..., Tuple[Tensor, Tensor]]:
    """``(pred, *targets) -> (loss, d loss / d pred)`` from an AOTInductor-compiled joint graph."""
    key = structure_key("loss_and_grad", None, loss, example_inputs)
    runner, graph = _runner(key, lambda: trace_loss_and_grad(loss, example_inputs, target="aoti"))

    with_cotangent = _cotangent_input(graph)

    def run(pred: Tensor, *targets: Tensor) -> Tuple[Tensor, Tensor]:
        feeds = with_cotangent((pred,) + targets)
        _check(graph, len(feeds), 0)
        value, grad = runner(*[t.contiguous() for t in feeds])
        return value, grad

    return run


def prepare_aoti_train_step(net: nn.Module, loss: nn.Module, example_inputs: Tuple[Tensor, ...],
                            lr: float) -> Callable[..., TrainStepResult]:
    """``(x, *targets) -> TrainStepResult`` from an AOTInductor-compiled train step, computed from
    the net's parameters at call time without changing the net."""
    key = structure_key("train_step", net, loss, example_inputs)
    runner, graph = _runner(key, lambda: trace_train_step(net, loss, example_inputs, target="aoti"))
    signature = graph.signature

    def run(x: Tensor, *targets: Tensor) -> TrainStepResult:
        state = {k: v.detach().contiguous() for k, v in net.named_parameters()}  # the parameters now
        rate = torch.tensor(lr, dtype=state[signature.params[0]].dtype, device=x.device)
        flat = signature.flat_inputs(state, x.contiguous(), [t.contiguous() for t in targets], rate)
        return signature.result(runner(*flat))

    return run


def _cotangent_input(graph: TracedGraph) -> Callable[[Tuple[Tensor, ...]], Tuple[Tensor, ...]]:
    # the program's cotangent when the graph takes one, shaped from its example (batch from pred)
    from ..programs import cotangent_for

    if COTANGENT not in graph.input_roles:
        return lambda feeds: feeds
    i = graph.input_roles.index(COTANGENT)
    example = graph.example[i]
    shape = ["batch" if d == 0 and graph.batched[i] else s for d, s in enumerate(example.shape)]
    return lambda feeds: feeds + (cotangent_for(shape, feeds[0].shape[0], example.dtype, feeds[0].device),)


def _check(graph: TracedGraph, given: int, skip: int) -> None:
    names = graph.input_names[skip:len(graph.input_names) - (1 if graph.kind == "train_step" else 0)]
    if given != len(names):
        raise TypeError("the graph takes ({}), got {} tensors".format(", ".join(names), given))


def prepare_aoti_optimizer_step(net: nn.Module, loss: nn.Module, example_inputs: Tuple[Tensor, ...],
                                opt: Any) -> Callable[..., Any]:
    """``(params, frozen, x, *targets, state=, hyper=) -> OptimStepResult`` from an
    AOTInductor-compiled optimizer train step."""
    from ._onnx import optimizer_key
    from ._trace import optimizer_example, trace_optimizer_step

    key = structure_key("optimizer_step", net, loss, example_inputs, extra=optimizer_key(opt))
    runner, _ = _runner(key, lambda: trace_optimizer_step(net, loss, example_inputs, opt, target="aoti"))
    sig = optimizer_example(net, loss, example_inputs, opt)[0]

    def run(params: Dict[str, Tensor], frozen: Dict[str, Tensor], x: Tensor, *targets: Tensor,
            state: Dict[str, Dict[str, Tensor]], hyper: Dict[str, Tensor]) -> Any:
        flat = sig.flat_inputs(params, frozen, x, targets, state, hyper)
        return sig.result(runner(*[t.contiguous() for t in flat]))

    return run
