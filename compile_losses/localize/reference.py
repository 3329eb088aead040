"""Every intermediate value of an exported graph, computed by eager torch in float32 and float64.

The reference is the FX graph the exporter translated (``ONNXProgram.exported_program``), run node
by node by :class:`torch.fx.Interpreter`: each ONNX value the exporter named after an FX node
(it names them so) has its eager float32 value and its float64 value. The float64 run widens the
inputs, parameters and constants, and every narrow float dtype an op is told to produce
(``_to_copy(dtype=float32)``, ``scalar_tensor(dtype=float32)``, the faithful reductions' casts back),
so it computes the same program in float64 throughout: the parity rule's reference.
"""
from typing import Any, Dict, List, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["fx_values", "fx_node_of", "user_inputs_count"]

_NARROW = (torch.float32, torch.float16, torch.bfloat16)


def _widen(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.double() if value.dtype in _NARROW else value
    if isinstance(value, torch.dtype):
        return torch.float64 if value in _NARROW else value
    if isinstance(value, (list, tuple)):
        return type(value)(_widen(v) for v in value)
    if isinstance(value, dict):
        return {k: _widen(v) for k, v in value.items()}
    return value


class _Recorder(torch.fx.Interpreter):
    def __init__(self, gm: torch.fx.GraphModule, float64: bool) -> None:
        super().__init__(gm)
        self.float64 = float64
        self.values: Dict[str, Tensor] = {}

    def run_node(self, n: torch.fx.Node) -> Any:
        out = super().run_node(n)
        if isinstance(out, Tensor):
            self.values[n.name] = out.detach()
        return out

    def call_function(self, target: Any, args: Any, kwargs: Any) -> Any:
        if self.float64:
            args, kwargs = _widen(args), _widen(kwargs)
        return super().call_function(target, args, kwargs)

    def get_attr(self, target: str, args: Any, kwargs: Any) -> Any:
        value = super().get_attr(target, args, kwargs)
        return _widen(value) if self.float64 else value


def _flat_args(ep: Any, user_inputs: Sequence[Tensor]) -> List[Any]:
    from torch.export.graph_signature import InputKind

    state = dict(ep.state_dict)
    state.update(getattr(ep, "constants", {}) or {})
    args: List[Any] = []
    given = iter(user_inputs)
    for spec in ep.graph_signature.input_specs:
        if spec.kind == InputKind.USER_INPUT:
            try:
                args.append(next(given))
            except StopIteration:
                raise TypeError("the exported program takes {} user inputs, got {}".format(
                    user_inputs_count(ep), len(user_inputs))) from None
        else:
            args.append(state[spec.target])
    return args


def user_inputs_count(ep: Any) -> int:
    from torch.export.graph_signature import InputKind

    return sum(1 for s in ep.graph_signature.input_specs if s.kind == InputKind.USER_INPUT)


def fx_values(ep: Any, user_inputs: Sequence[Tensor]) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
    """``(float32 values, float64 values)`` of every tensor-valued node of ``ep``'s graph, by FX
    node name, for ``user_inputs`` (the graph's own dtypes; the second run widened)."""
    gm = ep.graph_module
    args = _flat_args(ep, user_inputs)
    with torch.no_grad():
        narrow = _Recorder(gm, float64=False)
        narrow.run(*args)
        wide = _Recorder(gm, float64=True)
        wide.run(*[_widen(a) for a in args])
    return narrow.values, wide.values


def fx_node_of(metadata: Dict[str, str]) -> str:
    """The FX node name an ONNX node was translated from (``pkg.torch.onnx.fx_node`` reads
    ``%name : [num_users=...] = call_function[...]``), or ``""``."""
    text = metadata.get("pkg.torch.onnx.fx_node", "")
    if not text.startswith("%"):
        return ""
    return text[1:].split(" ", 1)[0]
