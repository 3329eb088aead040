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

__all__ = ["COTANGENT", "OPSET", "OptimStepResult", "OptimStepSignature", "TrainStepResult", "TrainStepSignature", "onnx_safe_name",
           "target_names"]

# The ONNX opset of every graph the project writes (forward, loss and training graphs alike), pinned
# so a graph exported on torch 2.11 and 2.13 reads the same; torch's own ONNX functions are written
# for 18, so no version conversion runs.
OPSET = 18

# The extra input of a non-scalar loss's loss-and-gradient graph: the cotangent (the upstream
# gradient, shaped like the loss) whose vector-Jacobian product the graph returns as grad_pred.
# Its role in a manifest's inputs is the same word.
COTANGENT = "cotangent"


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


def _check_unique(names: Sequence[str], owner: str) -> None:
    """Refuse a graph whose input and output names clash (``owner``: the loss, named in the message)."""
    seen = set()
    for n in names:
        if n in seen:
            raise ValueError("graph input/output names must be unique, got {!r} twice (parameter names after "
                             "replacing '.' by '_', targets of {})".format(n, owner))
        seen.add(n)


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
        _check_unique(self.input_names + self.output_names, owner)


class OptimStepResult(NamedTuple):
    """One optimizer train step: the loss before the update, every trained parameter's gradient,
    the parameters after the update and the optimizer state after it (``{param: {key: value}}``);
    keyed by ``net.named_parameters()`` names."""

    loss: Any
    grads: Dict[str, Any]
    new_params: Dict[str, Any]
    new_state: Dict[str, Dict[str, Any]]


@dataclass(frozen=True)
class OptimStepSignature:
    """Names and order of an optimizer train step's inputs and outputs.

    Inputs: ``(*params, *frozen, x, *targets, *state, *hyper)``; outputs:
    ``(loss, *grads, *new_params, *new_state)``. ``params`` are the trained parameters and
    ``frozen`` the ``requires_grad=False`` ones (inputs, with no gradient, state or update), both
    in ``net.named_parameters()`` order; ``state`` the optimizer's per-parameter keys
    (``step``, ``exp_avg``, ...), repeated per trained parameter; ``hyper`` its hyper-parameters
    (``lr``, ``beta1``, ...), 0-d float64 inputs. The plain-SGD :class:`TrainStepSignature` is
    unchanged; this one is for the train steps that carry an optimizer."""

    params: Tuple[str, ...]
    frozen: Tuple[str, ...]
    targets: Tuple[str, ...]
    state: Tuple[str, ...]
    hyper: Tuple[str, ...]
    optimizer: str = "sgd"
    input: str = "x"

    @property
    def param_inputs(self) -> List[str]:
        return [onnx_safe_name(n) for n in self.params]

    @property
    def frozen_inputs(self) -> List[str]:
        return ["frozen_" + onnx_safe_name(n) for n in self.frozen]

    @property
    def state_inputs(self) -> List[str]:
        return ["state_{}_{}".format(s, k) for s in self.param_inputs for k in self.state]

    @property
    def hyper_inputs(self) -> List[str]:
        return list(self.hyper)

    @property
    def input_names(self) -> List[str]:
        return (self.param_inputs + self.frozen_inputs + [self.input] + list(self.targets) + self.state_inputs
                + self.hyper_inputs)

    @property
    def input_roles(self) -> List[str]:
        return (["param"] * len(self.params) + ["frozen"] * len(self.frozen) + ["input"]
                + ["target"] * len(self.targets) + ["state"] * len(self.state_inputs) + ["hyper"] * len(self.hyper))

    @property
    def output_names(self) -> List[str]:
        safe = self.param_inputs
        return (["loss"] + ["grad_" + s for s in safe] + ["new_" + s for s in safe]
                + ["new_" + s for s in self.state_inputs])

    @property
    def param_table(self) -> List[Dict[str, Any]]:
        """Per trained parameter: its name, graph input, gradient and updated outputs, and its
        state inputs/outputs by key."""
        out = []
        for n, s in zip(self.params, self.param_inputs):
            state = {k: "state_{}_{}".format(s, k) for k in self.state}
            out.append({"name": n, "input": s, "grad": "grad_" + s, "new": "new_" + s, "state": state,
                        "new_state": {k: "new_" + v for k, v in state.items()}})
        return out

    def flat_inputs(self, params: Dict[str, Any], frozen: Dict[str, Any], x: Any, targets: Sequence[Any],
                    state: Dict[str, Dict[str, Any]], hyper: Dict[str, Any]) -> Tuple[Any, ...]:
        """The positional inputs in graph order."""
        for what, given, want in (("params", params, self.params), ("frozen", frozen, self.frozen),
                                  ("state", state, self.params), ("hyper", hyper, self.hyper)):
            missing = [n for n in want if n not in given]
            if missing:
                raise KeyError("{} is missing {} (the train step takes {})".format(what, missing, list(want)))
        if len(targets) != len(self.targets):
            raise TypeError("the train step takes ({}), got {} tensors".format(
                ", ".join([self.input] + list(self.targets)), 1 + len(targets)))
        for n in self.params:
            missing = [k for k in self.state if k not in state[n]]
            if missing:
                raise KeyError("state[{!r}] is missing {} (the {} state is {})".format(
                    n, missing, self.optimizer, list(self.state)))
        return (tuple(params[n] for n in self.params) + tuple(frozen[n] for n in self.frozen) + (x,)
                + tuple(targets) + tuple(state[n][k] for n in self.params for k in self.state)
                + tuple(hyper[h] for h in self.hyper))

    def result(self, outputs: Sequence[Any]) -> OptimStepResult:
        """Flat outputs ``(loss, *grads, *new_params, *new_state)`` as an :class:`OptimStepResult`."""
        k, s = len(self.params), len(self.state)
        if len(outputs) != 1 + 2 * k + k * s:
            raise ValueError("this train step returns 1 + 2 x {} + {} x {} outputs, got {}".format(k, k, s, len(outputs)))
        flat = list(outputs[1 + 2 * k:])
        state = {n: dict(zip(self.state, flat[i * s:(i + 1) * s])) for i, n in enumerate(self.params)}
        return OptimStepResult(outputs[0], dict(zip(self.params, outputs[1:1 + k])),
                               dict(zip(self.params, outputs[1 + k:1 + 2 * k])), state)

    def check_unique(self, owner: str) -> None:
        _check_unique(self.input_names + self.output_names, owner)

    def describe(self) -> Dict[str, Any]:
        return {"optimizer": self.optimizer, "params": list(self.params), "frozen": list(self.frozen),
                "input": self.input, "targets": list(self.targets), "state": list(self.state),
                "hyper": list(self.hyper), "inputs": self.input_names, "outputs": self.output_names}

    @classmethod
    def from_description(cls, d: Dict[str, Any]) -> "OptimStepSignature":
        return cls(tuple(d["params"]), tuple(d["frozen"]), tuple(d["targets"]), tuple(d["state"]),
                   tuple(d["hyper"]), d["optimizer"], d.get("input", "x"))


@dataclass(frozen=True)
class AccumStepSignature:
    """The K-step accumulate-then-update program's names and order: ``step``'s, with the one
    batch ``(x, *targets)`` replaced by ``K`` micro-batches ``x_0, <targets>_0, ..., x_<K-1>,
    <targets>_<K-1>`` (one batch size, the graphs' dynamic dim, shared by all of them); outputs
    as ``step``'s (the batch loss and gradients, then the update)."""

    step: OptimStepSignature
    micro: int

    @property
    def data_inputs(self) -> List[str]:
        return ["{}_{}".format(n, i) for i in range(self.micro) for n in [self.step.input] + list(self.step.targets)]

    @property
    def input_names(self) -> List[str]:
        s = self.step
        return s.param_inputs + s.frozen_inputs + self.data_inputs + s.state_inputs + s.hyper_inputs

    @property
    def input_roles(self) -> List[str]:
        s = self.step
        return (["param"] * len(s.params) + ["frozen"] * len(s.frozen)
                + (["input"] + ["target"] * len(s.targets)) * self.micro
                + ["state"] * len(s.state_inputs) + ["hyper"] * len(s.hyper))

    @property
    def output_names(self) -> List[str]:
        return self.step.output_names

    def flat_inputs(self, params: Dict[str, Any], frozen: Dict[str, Any], micro_batches: Sequence[Sequence[Any]],
                    state: Dict[str, Dict[str, Any]], hyper: Dict[str, Any]) -> Tuple[Any, ...]:
        if len(micro_batches) != self.micro:
            raise TypeError("the accumulated step takes {} micro-batches, got {}".format(self.micro, len(micro_batches)))
        k, f = len(self.step.params), len(self.step.frozen)
        flats = [self.step.flat_inputs(params, frozen, b[0], tuple(b[1:]), state, hyper) for b in micro_batches]
        data = [a for flat in flats for a in flat[k + f:k + f + 1 + len(self.step.targets)]]
        head, tail = flats[0][:k + f], flats[0][k + f + 1 + len(self.step.targets):]
        return tuple(head) + tuple(data) + tuple(tail)

    def split(self, args: Sequence[Any]) -> Tuple[Sequence[Any], List[Tuple[Any, ...]], Sequence[Any]]:
        """Flat inputs as (params and frozen, the micro-batches, state and hyper-parameters)."""
        k, f, n = len(self.step.params), len(self.step.frozen), 1 + len(self.step.targets)
        data = args[k + f:k + f + n * self.micro]
        return args[:k + f], [tuple(data[i * n:(i + 1) * n]) for i in range(self.micro)], args[k + f + n * self.micro:]

    def result(self, outputs: Sequence[Any]) -> OptimStepResult:
        return self.step.result(outputs)

    def describe(self) -> Dict[str, Any]:
        return dict(self.step.describe(), micro_batches=self.micro, inputs=self.input_names)


__all__ += ["AccumStepSignature"]
