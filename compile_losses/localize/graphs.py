"""The graphs a piecewise backend runs for one case (forward, loss-and-gradient, train step),
each with its feeds and its eager float32/float64 values (:class:`GraphReference`)."""
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from .onnx_graph import GraphReference, fx_node_table
from .reference import fx_values

__all__ = ["KINDS", "case_graphs", "graph_reference"]

KINDS = ("forward", "loss_and_grad", "train_step")


def _feeds(model: Any, tensors: Sequence[Tensor]) -> Dict[str, np.ndarray]:
    names = [i.name for i in model.graph.input]
    if len(names) != len(tensors):
        raise TypeError("the graph takes {} inputs ({}), got {}".format(len(names), ", ".join(names), len(tensors)))
    return {n: np.ascontiguousarray(t.detach().cpu().numpy()) for n, t in zip(names, tensors)}


def graph_inputs(kind: str, net: Optional[nn.Module], loss: nn.Module, inputs: Tuple[Tensor, ...],
                 targets: Tuple[Tensor, ...], lr: float, traced: Any) -> Tuple[Tensor, ...]:
    """The tensors ``kind``'s graph is fed, in its input order (as the training runtime feeds them)."""
    if kind == "forward":
        return inputs + targets
    if kind == "loss_and_grad":
        if net is None:
            return inputs[:1] + targets
        with torch.no_grad():
            return (net(*inputs).detach(),) + targets
    state = dict(net.named_parameters())  # type: ignore[union-attr]
    sig = traced.signature
    rate = torch.tensor(lr, dtype=state[sig.params[0]].dtype)
    return tuple(t.detach() for t in sig.flat_inputs(state, inputs[0], targets, rate))


def graph_reference(backend: Any, kind: str, net: Optional[nn.Module], loss: nn.Module, inputs: Tuple[Tensor, ...],
                    targets: Tuple[Tensor, ...], lr: float = 0.01, optimize: Optional[bool] = None) -> GraphReference:
    """Export ``kind``'s graph through ``backend`` and compute its eager values for this case."""
    example = inputs + targets if kind != "loss_and_grad" else graph_inputs(kind, net, loss, inputs, targets, lr, None)
    got = backend.piecewise_graph(kind, net, loss, example, optimize=optimize)
    program = got["program"]
    tensors = graph_inputs(kind, net, loss, inputs, targets, lr, got["traced"])
    model = program.model_proto
    ref32, ref64 = fx_values(program.exported_program, tensors)
    return GraphReference(kind, model, _feeds(model, tensors), ref32, ref64, provider=got["provider"],
                          fx_nodes=fx_node_table(program.exported_program))


def case_graphs(net: Optional[nn.Module], loss: nn.Module) -> List[str]:
    """The kinds of graph a case has: a train step only with a net that has something to train."""
    train = net is not None and any(p.requires_grad for p in net.parameters())
    return [k for k in KINDS if k != "train_step" or train]
