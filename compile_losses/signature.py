"""The calling convention of the train-step program, written once (and importable without torch).

A train step is ``(*params, x, *targets, lr) -> (loss, *grads, *new_params)``: the trainable
parameters in ``net.named_parameters()`` order (named as graph inputs with ``.`` -> ``_``), the
net's input, the loss's targets in the order its ``forward`` takes them, and the learning rate.
The traced graph, ``train_step.onnx``, the AOTInductor package, the fixtures, the bundle manifest
and the runtime all read their names and orders from one :class:`TrainStepSignature`.
"""
import inspect
from dataclasses import dataclass
from typing import Any, Dict, List, NamedTuple, Sequence, Tuple

__all__ = ["OPSET", "TrainStepResult", "TrainStepSignature", "onnx_safe_name", "target_names"]

# The ONNX opset of every graph the project writes (forward, loss and training graphs alike), pinned
# so a graph exported on torch 2.11 and 2.13 reads the same; torch's own ONNX functions are written
# for 18, so no version conversion runs.
OPSET = 18


class TrainStepResult(NamedTuple):
    """One train step: the loss at the current parameters, every trained parameter's gradient and
    the parameters after the update; dicts keyed by ``net.named_parameters()`` names. Values are
    torch tensors from the torch side, numpy arrays from the runtime."""

    loss: Any
    grads: Dict[str, Any]
    new_params: Dict[str, Any]


def onnx_safe_name(name: str) -> str:
    """``fc1.weight`` -> ``fc1_weight``: parameter names as graph input names."""
    return "".join(c if c.isalnum() else "_" for c in name)


def target_names(loss: Any, count: int) -> List[str]:
    """Names of the targets from the loss's forward signature (``target``, ``var``, ...), then
    ``target<i>`` for the rest."""
    try:
        params = list(inspect.signature(loss.forward).parameters.values())[1:]
    except (TypeError, ValueError, AttributeError):
        params = []
    names: List[str] = []
    for p in params:
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and len(names) < count:
            names.append(onnx_safe_name(p.name))
    names += ["target{}".format(i) for i in range(len(names), count)]
    return names


@dataclass(frozen=True)
class TrainStepSignature:
    """Names and order of the train step's inputs and outputs.

    ``params``: the trained parameters' names as ``net.named_parameters()`` gives them;
    ``targets``: the target inputs' graph names."""

    params: Tuple[str, ...]
    targets: Tuple[str, ...]
    input: str = "x"
    lr: str = "lr"

    @classmethod
    def of(cls, net: Any, loss: Any, n_targets: int) -> "TrainStepSignature":
        """The signature of ``loss(net(x), *targets)`` training ``net``'s ``requires_grad`` parameters."""
        names = tuple(n for n, p in net.named_parameters() if p.requires_grad)
        if not names:
            raise ValueError("net must have at least one parameter with requires_grad=True, got none in {}".format(
                type(net).__name__))
        sig = cls(names, tuple(target_names(loss, n_targets)))
        sig.check_unique("{}.{}".format(type(loss).__module__, type(loss).__qualname__))
        return sig

    @property
    def param_inputs(self) -> List[str]:
        return [onnx_safe_name(n) for n in self.params]

    @property
    def input_names(self) -> List[str]:
        return self.param_inputs + [self.input] + list(self.targets) + [self.lr]

    @property
    def input_roles(self) -> List[str]:
        return ["param"] * len(self.params) + ["input"] + ["target"] * len(self.targets) + ["lr"]

    @property
    def output_names(self) -> List[str]:
        safe = self.param_inputs
        return ["loss"] + ["grad_" + s for s in safe] + ["new_" + s for s in safe]

    @property
    def param_table(self) -> List[Dict[str, str]]:
        """Per trained parameter: its name, graph input, gradient output and updated output."""
        return [{"name": n, "input": s, "grad": "grad_" + s, "new": "new_" + s}
                for n, s in zip(self.params, self.param_inputs)]

    def flat_inputs(self, params: Dict[str, Any], x: Any, targets: Sequence[Any], lr: Any) -> Tuple[Any, ...]:
        """The positional inputs in graph order from a name -> value dict of parameters."""
        missing = [n for n in self.params if n not in params]
        if missing:
            raise KeyError("params is missing {} (the train step trains {})".format(missing, list(self.params)))
        if len(targets) != len(self.targets):
            raise TypeError("the train step takes ({}), got {} tensors".format(
                ", ".join([self.input] + list(self.targets)), 1 + len(targets)))
        return tuple(params[n] for n in self.params) + (x,) + tuple(targets) + (lr,)

    def result(self, outputs: Sequence[Any]) -> TrainStepResult:
        """Flat outputs ``(loss, *grads, *new_params)`` as a :class:`TrainStepResult`."""
        k = len(self.params)
        if len(outputs) != 1 + 2 * k:
            raise ValueError("a train step returns 1 + 2 x {} outputs, got {}".format(k, len(outputs)))
        grads, new = outputs[1:1 + k], outputs[1 + k:]
        return TrainStepResult(outputs[0], dict(zip(self.params, grads, strict=True)),
                               dict(zip(self.params, new, strict=True)))

    def check_unique(self, owner: str) -> None:
        seen = set()
        for n in self.input_names + self.output_names:
            if n in seen:
                raise ValueError("graph input/output names must be unique, got {!r} twice (parameter names after "
                                 "replacing '.' by '_', targets of {})".format(n, owner))
            seen.add(n)
