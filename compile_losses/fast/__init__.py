"""Fast paths: large losses at the memory limit, small train steps faster than eager.

    from compile_losses.fast import FusedLoss, FusedLossAndGrad, CompiledTrainStep
    FusedLossAndGrad(loss)(pred, *targets) -> (value, grad)     # one compiled pass, reused buffer
    FusedLoss(loss)(pred, *targets).backward()                  # same, behind autograd
    CompiledTrainStep(net, loss, lr)(x, *targets) -> TrainStepResult   # whole step, one graph
    CompiledForward(module, differentiable=torch.compile(module))       # guard-free inference graph

As backends (registered in ``compile_losses.backends.BACKENDS``): ``fused`` and ``fast`` (the
fastest measured path per case, never slower than eager). See :mod:`.backend`.
"""
from .backend import FAST_BACKENDS, FastBackend, FusedBackend, eager_loss_and_grad
from .buffers import BufferPool
from .fused import FusedLoss, FusedLossAndGrad
from .graph import CompiledForward, GraphCache, Lazy
from .select import Selected, pick_fastest
from .train_step import CompiledTrainStep, eager_train_step

__all__ = [
    "BufferPool",
    "CompiledForward",
    "CompiledTrainStep",
    "FAST_BACKENDS",
    "FastBackend",
    "FusedBackend",
    "FusedLoss",
    "FusedLossAndGrad",
    "GraphCache",
    "Lazy",
    "Selected",
    "eager_loss_and_grad",
    "eager_train_step",
    "pick_fastest",
]
