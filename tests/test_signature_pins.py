"""The optimizer and accumulated train steps' calling convention, pinned by hand: every input and
output name, role and order, the flat packing and unpacking, the refusals word for word and the
manifest description. ``train_step.onnx`` with an optimizer, the AOTInductor package, the fixtures
and the torch-free runtime all read their names from these two classes, so a changed name or order
here is a changed file format.

The mutation run (``scripts/mutation.sh programs``) holds ``compile_losses/signature.py`` to these
tests and to tests/test_programs_pins.py. Expected values are written out here, not computed by the
code under test.
"""
import dataclasses

import pytest

from compile_losses import signature as S


def _adam() -> S.OptimStepSignature:
    return S.OptimStepSignature(params=("a.w", "b"), frozen=("f.x",), targets=("target", "var"),
                                state=("step", "exp_avg"), hyper=("lr", "beta1"), optimizer="adam")


def test_the_cotangent_role_word() -> None:
    assert S.COTANGENT == "cotangent"


def test_optim_signature_defaults_and_is_frozen() -> None:
    sig = S.OptimStepSignature(("w",), (), ("target",), ("step",), ("lr",))
    assert sig.optimizer == "sgd" and sig.input == "x"
    with pytest.raises(dataclasses.FrozenInstanceError):
        sig.optimizer = "adam"  # type: ignore[misc]


def test_optim_signature_names_roles_and_order() -> None:
    sig = _adam()
    assert sig.param_inputs == ["a_w", "b"]
    assert sig.frozen_inputs == ["frozen_f_x"]
    # per trained parameter, then per state key
    assert sig.state_inputs == ["state_a_w_step", "state_a_w_exp_avg", "state_b_step", "state_b_exp_avg"]
    assert sig.hyper_inputs == ["lr", "beta1"]
    assert sig.input_names == ["a_w", "b", "frozen_f_x", "x", "target", "var", "state_a_w_step",
                               "state_a_w_exp_avg", "state_b_step", "state_b_exp_avg", "lr", "beta1"]
    assert sig.input_roles == ["param", "param", "frozen", "input", "target", "target", "state", "state", "state",
                               "state", "hyper", "hyper"]
    assert sig.output_names == ["loss", "grad_a_w", "grad_b", "new_a_w", "new_b", "new_state_a_w_step",
                                "new_state_a_w_exp_avg", "new_state_b_step", "new_state_b_exp_avg"]
    assert sig.param_table == [
        {"name": "a.w", "input": "a_w", "grad": "grad_a_w", "new": "new_a_w",
         "state": {"step": "state_a_w_step", "exp_avg": "state_a_w_exp_avg"},
         "new_state": {"step": "new_state_a_w_step", "exp_avg": "new_state_a_w_exp_avg"}},
        {"name": "b", "input": "b", "grad": "grad_b", "new": "new_b",
         "state": {"step": "state_b_step", "exp_avg": "state_b_exp_avg"},
         "new_state": {"step": "new_state_b_step", "exp_avg": "new_state_b_exp_avg"}},
    ]
    sig.check_unique("owner")  # distinct names pass
    named_like_a_state = S.OptimStepSignature(("w", "state_w_step"), (), (), ("step",), ())
    with pytest.raises(ValueError, match="got 'state_w_step' twice"):
        named_like_a_state.check_unique("owner")


_STATE = {"a.w": {"step": "sa", "exp_avg": "ma"}, "b": {"step": "sb", "exp_avg": "mb", "extra": "?"}}
_HYPER = {"beta1": "B1", "lr": "LR", "other": "?"}


def test_optim_signature_packs_inputs_in_graph_order() -> None:
    flat = _adam().flat_inputs({"b": "B", "a.w": "A", "extra": "?"}, {"f.x": "F"}, "X", ["T", "V"], _STATE, _HYPER)
    assert flat == ("A", "B", "F", "X", "T", "V", "sa", "ma", "sb", "mb", "LR", "B1")


@pytest.mark.parametrize("args, message", [
    (({"a.w": 1}, {"f.x": 1}, _STATE, _HYPER), "params is missing ['b'] (the train step takes ['a.w', 'b'])"),
    (({"a.w": 1, "b": 1}, {}, _STATE, _HYPER), "frozen is missing ['f.x'] (the train step takes ['f.x'])"),
    (({"a.w": 1, "b": 1}, {"f.x": 1}, {"b": {}}, _HYPER), "state is missing ['a.w'] (the train step takes ['a.w', 'b'])"),
    (({"a.w": 1, "b": 1}, {"f.x": 1}, _STATE, {"lr": 1}), "hyper is missing ['beta1'] (the train step takes "
                                                          "['lr', 'beta1'])"),
    (({"a.w": 1, "b": 1}, {"f.x": 1}, {"a.w": {"step": 1}, "b": {"step": 1, "exp_avg": 1}}, _HYPER),
     "state['a.w'] is missing ['exp_avg'] (the adam state is ['step', 'exp_avg'])"),
])
def test_optim_signature_refuses_missing_inputs_by_name(args: tuple, message: str) -> None:
    params, frozen, state, hyper = args
    with pytest.raises(KeyError) as err:
        _adam().flat_inputs(params, frozen, "X", ["T", "V"], state, hyper)
    assert err.value.args[0] == message


@pytest.mark.parametrize("targets, got", [(["T"], 2), (["T", "V", "W"], 4)])
def test_optim_signature_refuses_a_wrong_target_count(targets: list, got: int) -> None:
    with pytest.raises(TypeError) as err:
        _adam().flat_inputs({"a.w": 1, "b": 1}, {"f.x": 1}, "X", targets, _STATE, _HYPER)
    assert str(err.value) == "the train step takes (x, target, var), got {} tensors".format(got)


def test_optim_signature_unpacks_outputs() -> None:
    outs = ["L", "ga", "gb", "na", "nb", "sa", "ma", "sb", "mb"]
    assert _adam().result(outs) == S.OptimStepResult(
        "L", {"a.w": "ga", "b": "gb"}, {"a.w": "na", "b": "nb"},
        {"a.w": {"step": "sa", "exp_avg": "ma"}, "b": {"step": "sb", "exp_avg": "mb"}})
    with pytest.raises(ValueError) as err:
        _adam().result(outs[:-1])
    assert str(err.value) == "this train step returns 1 + 2 x 2 + 2 x 2 outputs, got 8"
    with pytest.raises(ValueError):
        _adam().result(outs + ["extra"])


def test_optim_signature_description_and_back() -> None:
    sig = _adam()
    d = sig.describe()
    assert d == {"optimizer": "adam", "params": ["a.w", "b"], "frozen": ["f.x"], "input": "x",
                 "targets": ["target", "var"], "state": ["step", "exp_avg"], "hyper": ["lr", "beta1"],
                 "inputs": sig.input_names, "outputs": sig.output_names}
    assert S.OptimStepSignature.from_description(d) == sig
    other = S.OptimStepSignature.from_description(dict(d, input="inp"))
    assert other.input == "inp" and other.input_names[3] == "inp"
    without = dict(d)
    del without["input"]  # a description from before the input was recorded
    assert S.OptimStepSignature.from_description(without).input == "x"


# --- the K-step accumulate-then-update program ------------------------------------------------------
def _accum() -> S.AccumStepSignature:
    return S.AccumStepSignature(_adam(), 2)


def test_accumulated_signature_names_roles_and_order() -> None:
    acc = _accum()
    assert acc.data_inputs == ["x_0", "target_0", "var_0", "x_1", "target_1", "var_1"]
    assert acc.input_names == ["a_w", "b", "frozen_f_x", "x_0", "target_0", "var_0", "x_1", "target_1", "var_1",
                               "state_a_w_step", "state_a_w_exp_avg", "state_b_step", "state_b_exp_avg", "lr",
                               "beta1"]
    assert acc.input_roles == ["param", "param", "frozen", "input", "target", "target", "input", "target",
                               "target", "state", "state", "state", "state", "hyper", "hyper"]
    assert acc.output_names == _adam().output_names
    with pytest.raises(dataclasses.FrozenInstanceError):
        acc.micro = 3  # type: ignore[misc]


def test_accumulated_signature_packs_splits_and_unpacks() -> None:
    acc = _accum()
    params, frozen = {"a.w": "A", "b": "B"}, {"f.x": "F"}
    flat = acc.flat_inputs(params, frozen, [("X0", "T0", "V0"), ("X1", "T1", "V1")], _STATE, _HYPER)
    assert flat == ("A", "B", "F", "X0", "T0", "V0", "X1", "T1", "V1", "sa", "ma", "sb", "mb", "LR", "B1")
    head, micro, tail = acc.split(flat)
    assert tuple(head) == ("A", "B", "F")
    assert micro == [("X0", "T0", "V0"), ("X1", "T1", "V1")]
    assert tuple(tail) == ("sa", "ma", "sb", "mb", "LR", "B1")
    outs = ["L", "ga", "gb", "na", "nb", "sa", "ma", "sb", "mb"]
    assert acc.result(outs) == _adam().result(outs)
    with pytest.raises(TypeError) as err:
        acc.flat_inputs(params, frozen, [("X0", "T0", "V0")], _STATE, _HYPER)
    assert str(err.value) == "the accumulated step takes 2 micro-batches, got 1"
    with pytest.raises(TypeError) as err:  # a micro-batch with a target missing: the step's own refusal
        acc.flat_inputs(params, frozen, [("X0", "T0", "V0"), ("X1", "T1")], _STATE, _HYPER)
    assert str(err.value) == "the train step takes (x, target, var), got 2 tensors"


def test_accumulated_signature_without_frozen_parameters_or_targets() -> None:
    step = S.OptimStepSignature(("w",), (), (), ("step",), ("lr",))
    acc = S.AccumStepSignature(step, 3)
    assert acc.input_names == ["w", "x_0", "x_1", "x_2", "state_w_step", "lr"]
    flat = acc.flat_inputs({"w": "W"}, {}, [("X0",), ("X1",), ("X2",)], {"w": {"step": "S"}}, {"lr": "LR"})
    assert flat == ("W", "X0", "X1", "X2", "S", "LR")
    assert acc.split(flat) == (("W",), [("X0",), ("X1",), ("X2",)], ("S", "LR"))


def test_accumulated_signature_description() -> None:
    acc = _accum()
    d = acc.describe()
    assert d == dict(_adam().describe(), micro_batches=2, inputs=acc.input_names)
    assert d["outputs"] == _adam().output_names and d["inputs"][3] == "x_0"


def test_one_micro_batch_is_the_step_with_numbered_data_inputs() -> None:
    # K = 1 is a case users run (accumulation off): no second micro-batch to borrow from
    acc = S.AccumStepSignature(_adam(), 1)
    assert acc.data_inputs == ["x_0", "target_0", "var_0"]
    params, frozen = {"a.w": "A", "b": "B"}, {"f.x": "F"}
    flat = acc.flat_inputs(params, frozen, [("X0", "T0", "V0")], _STATE, _HYPER)
    assert flat == ("A", "B", "F", "X0", "T0", "V0", "sa", "ma", "sb", "mb", "LR", "B1")
    assert acc.split(flat) == (("A", "B", "F"), [("X0", "T0", "V0")], ("sa", "ma", "sb", "mb", "LR", "B1"))


@pytest.mark.parametrize("params, state, outs, grads, new, new_state", [
    # one parameter, one state key: the slices' ends sit right next to each other
    (("w",), ("step",), ["L", "g", "n", "s"], {"w": "g"}, {"w": "n"}, {"w": {"step": "s"}}),
    # two parameters, one state key each (plain SGD)
    (("a", "b"), ("step",), ["L", "ga", "gb", "na", "nb", "sa", "sb"], {"a": "ga", "b": "gb"},
     {"a": "na", "b": "nb"}, {"a": {"step": "sa"}, "b": {"step": "sb"}}),
    # no state at all
    (("a", "b"), (), ["L", "ga", "gb", "na", "nb"], {"a": "ga", "b": "gb"}, {"a": "na", "b": "nb"},
     {"a": {}, "b": {}}),
])
def test_optim_signature_unpacks_every_layout(params: tuple, state: tuple, outs: list, grads: dict, new: dict,
                                             new_state: dict) -> None:
    sig = S.OptimStepSignature(params, (), ("target",), state, ("lr",))
    assert sig.result(outs) == S.OptimStepResult("L", grads, new, new_state)
