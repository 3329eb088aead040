"""Fast paths: large losses at the memory limit, small train steps faster than eager.

    from compile_losses.fast import FusedLoss, FusedLossAndGrad, CompiledTrainStep
    FusedLossAndGrad(loss)(pred, *targets) -> (value, grad)     # one compiled pass, reused buffer
    FusedLoss(loss)(pred, *targets).backward()                  # same, behind autograd
    CompiledTrainStep(net, loss, lr)(x, *targets) -> TrainStepResult   # whole step, one graph
    CompiledForward(module, differentiable=torch.compile(module))       # guard-free inference graph

The backends ``fused``, ``fast`` and the tuned ``compile`` (in :mod:`compile_losses.backends`)
select among these; nothing here imports the backends.
"""
from .buffers import BufferPool
from .fused import FusedLoss, FusedLossAndGrad
from .graph import CompiledForward, GraphCache, Lazy
from .select import Selected, pick_fastest
from .train_step import CompiledTrainStep

__all__ = [
    "BufferPool",
    "CompiledForward",
    "CompiledTrainStep",
    "FusedLoss",
    "FusedLossAndGrad",
    "GraphCache",
    "Lazy",
    "Selected",
    "pick_fastest",
]
