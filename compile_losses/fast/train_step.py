"""A whole SGD train step (forward, loss, backward, update) as one compiled graph.

The step is ``compile_losses.training.train_step`` (``torch.func.grad_and_value`` over
``functional_call``), so any net and loss work, nothing is written per model. Two ways to compile it:

* ``"graph"``: ``make_fx`` traces the step into a flat aten graph once per input signature, and
  inductor compiles it (:mod:`.graph`). Calls skip dynamo's guards and autograd entirely (the
  backward is already in the graph), which is what matters at batch 10, where eager is ~30 small
  op dispatches and ``torch.compile`` of an autograd step pays guard and runtime-wrapper costs
  that make it slower than eager.
* ``"dynamo"``: ``torch.compile(fullgraph=True)`` of the same step (guards re-check inputs each call).

Both compute from the net's current parameters at call time and never change the net.
"""
import types
from typing import Any, Callable, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ..signature import TrainStepResult, TrainStepSignature
from ..training import train_step as _eager_step
from .fused import private_code
from .graph import GraphCache

MODES = ("graph", "dynamo")


class CompiledTrainStep:
    """``(x, *targets) -> TrainStepResult``, compiled once per input signature (shapes, dtypes).

    Example::

        >>> import torch
        >>> from compile_losses.nets import SeedNet
        >>> from compile_losses.losses import MSELoss
        >>> step = CompiledTrainStep(SeedNet(), MSELoss(), lr=0.1, mode="eager")
        >>> sorted(step(torch.zeros(4, 32), torch.zeros(4, 1)).new_params)
        ['fc1.bias', 'fc1.weight', 'fc2.bias', 'fc2.weight']
    """

    def __init__(self, net: nn.Module, loss: nn.Module, lr: float, mode: str = "graph") -> None:
        if mode not in MODES + ("eager",):
            raise ValueError("mode must be one of {}, got {!r}".format(list(MODES + ("eager",)), mode))
        if not isinstance(lr, (int, float)) or isinstance(lr, bool):
            raise TypeError("lr must be a Python float, got {}".format(type(lr).__name__))
        self.net, self.loss, self.lr, self.mode = net, loss, float(lr), mode
        self.signature = TrainStepSignature.of(net, loss, 0)
        self.names: List[str] = list(self.signature.params)
        self._step = _eager_step(net, loss, self.lr)
        self._graphs = GraphCache(self._flat)
        self._dynamo: Optional[Callable[..., Any]] = None

    def _params(self) -> List[Tensor]:
        state = dict(self.net.named_parameters())
        return [state[n].detach() for n in self.names]

    def _flat(self, *args: Tensor) -> Tuple[Tensor, ...]:
        k = len(self.names)
        out = self._step(dict(zip(self.names, args[:k])), *args[k:])
        return (out.loss,) + tuple(out.grads[n] for n in self.names) + tuple(out.new_params[n] for n in self.names)

    def __call__(self, x: Tensor, *targets: Tensor) -> TrainStepResult:
        args = self._params() + [x] + list(targets)
        if self.mode == "graph":
            outs = self._graphs(*args)
        elif self.mode == "dynamo":
            if self._dynamo is None:
                from ..build_cache import prime_cpu_isa

                prime_cpu_isa()
                self._dynamo = torch.compile(types.MethodType(private_code(CompiledTrainStep._flat), self), fullgraph=True)
            outs = self._dynamo(*args)
        else:
            outs = self._flat(*args)
        return self.signature.result(outs)
