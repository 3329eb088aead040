"""Training graphs: the gradient of any loss and a whole SGD train step, eager and exported.

How the graphs are made, for every loss alike (nothing is special-cased per loss):

1. ``torch.func.grad_and_value`` of ``loss(pred, *targets)`` (or of ``loss(net(x), *targets)``
   through ``torch.func.functional_call`` over the parameters) gives the joint forward+backward.
2. ``make_fx(tracing_mode="symbolic")`` traces it, inside
   :func:`compile_losses._reduction.faithful_reductions`, into a flat aten graph with a symbolic
   batch. (``torch.export`` of ``grad_and_value`` directly fails.)
3. ONNX: float sums are made float64-accumulated (:func:`faithful_graph`), then
   ``torch.onnx.export(..., dynamo=True)`` with the batch dimension dynamic writes
   ``loss_and_grad.onnx`` / ``train_step.onnx``. AOTInductor: ``torch.export`` of the same graph,
   then ``aoti_compile_and_package``.

Functions::

    loss_and_grad(loss)(pred, *targets) -> (loss, dpred)                     # eager torch.func
    train_step(net, loss, lr)(params, x, *targets) -> TrainStepResult          # eager torch.func
    export_loss_and_grad_onnx(loss, (pred, *targets), path) -> info dict
    export_train_step_onnx(net, loss, (x, *targets), path) -> info dict
    prepare_onnx_loss_and_grad / prepare_onnx_train_step / prepare_aoti_*      # callables, torch out
"""
from ._aoti import aoti_package, build_package, load_package, prepare_aoti_loss_and_grad, prepare_aoti_optimizer_step, prepare_aoti_train_step
from ..signature import OPSET, TrainStepResult, TrainStepSignature, onnx_safe_name
from ._onnx import (cotangent_input, export_accumulated_step_onnx, export_loss_and_grad_onnx,
                    export_optimizer_step_onnx, export_train_step_onnx, prepare_onnx_loss_and_grad,
                    prepare_onnx_optimizer_step, prepare_onnx_train_step, signature_of, training_program)
from ..errors import ExportUnsupportedError
from ._trace import (TracedGraph, faithful_graph, loss_and_grad, trace_accumulated_step, trace_loss_and_grad,
                     trace_optimizer_step, trace_train_step, train_step)
from . import _aoti, _onnx

# The per-process stores of exported ONNX training graphs and loaded AOTInductor packages (one per
# graph structure): the adapters that run them register them with backends.base.clear_cache.
ONNX_GRAPHS, AOTI_PACKAGES = _onnx._CACHE, _aoti._CACHE

__all__ = [
    "AOTI_PACKAGES",
    "ExportUnsupportedError",
    "ONNX_GRAPHS",
    "OPSET",
    "TracedGraph",
    "TrainStepResult",
    "TrainStepSignature",
    "aoti_package",
    "cotangent_input",
    "export_loss_and_grad_onnx",
    "export_train_step_onnx",
    "faithful_graph",
    "loss_and_grad",
    "onnx_safe_name",
    "build_package",
    "load_package",
    "prepare_aoti_loss_and_grad",
    "prepare_aoti_train_step",
    "prepare_onnx_loss_and_grad",
    "prepare_onnx_train_step",
    "signature_of",
    "trace_loss_and_grad",
    "trace_train_step",
    "train_step",
    "training_program",
    "export_optimizer_step_onnx",
    "prepare_aoti_optimizer_step",
    "prepare_onnx_optimizer_step",
    "trace_optimizer_step",
    "export_accumulated_step_onnx",
    "trace_accumulated_step",
]
