"""From names and specs to modules and tensors; every bad input is a one-line UsageError."""
import pytest
import torch

from compile_losses.errors import UsageError
from compile_losses.nets import MLPClassifier, SeedNet
from compile_losses.resolve import make_case, parse_kwargs, parse_tensor_spec, resolve_loss, resolve_net


def test_tensor_specs() -> None:
    gen = torch.Generator().manual_seed(0)
    # the float64 case widens floating specs: `verify --input float32[N,64]` runs its float64 case in
    # float64 (it stayed float32 and the net's float64 weights refused it); other cases keep the spec's
    x = parse_tensor_spec("float32[N,32]").make(5, torch.float64, gen)
    assert x.shape == (5, 32) and x.dtype == torch.float64
    assert parse_tensor_spec("float64[N,2]").make(3, torch.float32, gen).dtype == torch.float64
    assert parse_tensor_spec("float16[N,2]").make(3, torch.float32, gen).dtype == torch.float16
    labels = parse_tensor_spec("int64[N]{0..9}").make(1000, torch.float32, gen)
    assert labels.dtype == torch.int64 and int(labels.min()) == 0 and int(labels.max()) == 9
    var = parse_tensor_spec("float32[N,1]{0.1:2}").make(1000, torch.float32, gen)
    assert float(var.min()) >= 0.1 and float(var.max()) <= 2.0
    assert parse_tensor_spec("[N,3]").make(2, torch.float64, gen).dtype == torch.float64  # the case's dtype


@pytest.mark.parametrize("text, match", [
    ("float32(N,32)", r"tensor spec must look like float32\[N,32\].*got 'float32\(N,32\)'"),
    ("float33[N]", r"dtype must be one of .*got 'float33'"),
    ("float32[32,N]", r"must start with the batch dimension N, got 'float32\[32,N\]'"),
    ("float32[N,x]", r"dimensions must be N or integers from 1 to 2147483647, got 'x'"),
    ("int64[N]", r"integer tensor spec needs an integer range such as \{0..9\}"),
    ("float32[N]{3:1}", r"lo <= hi"),
    ("float32[N]{a..b}", r"range must be \{lo..hi\}"),
])
def test_bad_tensor_specs(text: str, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        parse_tensor_spec(text)


def test_names_and_import_paths() -> None:
    assert isinstance(resolve_net("mlp"), MLPClassifier)
    assert isinstance(resolve_net("compile_losses.nets:SeedNet", {"out_features": 3}), SeedNet)
    assert resolve_loss("huber", {"delta": 0.5}).delta == 0.5
    assert isinstance(resolve_loss("torch.nn:MSELoss"), torch.nn.MSELoss)
    kwargs = parse_kwargs(["delta=0.5", "full=True", "name=abc", "weight=[1, 2]"], "--loss-arg")
    assert kwargs == {"delta": 0.5, "full": True, "name": "abc", "weight": [1, 2]}
    # checked against the parameter when built: a weight (a tensor in the annotation) becomes one
    assert resolve_loss("cross_entropy", {"weight": [1, 2, 3]}).weight.tolist() == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("raw, value", [
    ("true", True), ("True", True), ("false", False), ("False", False), ("null", None), ("None", None),
    ("3", 3), ("0.5", 0.5), ("-1e-3", -1e-3), ("abc", "abc"), ("'quoted'", "quoted"), ('"json"', "json"),
    ("[1, 2.5]", [1, 2.5]), ("(1, 2)", (1, 2)), ('{"a": [1, {"b": null}]}', {"a": [1, {"b": None}]}),
    ("", ""), ("a=b", "a=b"),
])
def test_key_value_values_follow_one_rule(raw, value) -> None:
    from compile_losses.resolve import parse_value

    assert parse_value(raw) == value and type(parse_value(raw)) is type(value)


def test_init_args_are_checked_against_annotations_and_defaults() -> None:
    from compile_losses.resolve import coerce_init_args

    class Loss(torch.nn.Module):
        def __init__(self, sigmoid: bool = False, gamma: float = 2.0, steps=3, name="x", weight=None,
                     alpha: "Optional[float]" = None, **extra):  # noqa: F821
            super().__init__()

    got = coerce_init_args(Loss, {"sigmoid": True, "gamma": 1, "steps": 4, "name": "y", "weight": [1, 2],
                                  "alpha": None, "other": {"k": [1]}}, "loss", "L")
    assert got["gamma"] == 1.0 and isinstance(got["gamma"], float) and got["steps"] == 4
    assert got["weight"].tolist() == [1.0, 2.0] and got["alpha"] is None and got["other"] == {"k": [1]}
    for bad in ({"sigmoid": 1}, {"gamma": "x"}, {"steps": 1.5}, {"name": 3}, {"gamma": True}):
        with pytest.raises(UsageError, match=r"loss 'L': \w+ must be"):
            coerce_init_args(Loss, bad, "loss", "L")


@pytest.mark.parametrize("call, match", [
    (lambda: resolve_net("resnet"), r"net must be one of seed, mlp.* or package.module:Class, got 'resnet'"),
    (lambda: resolve_loss("nope.mod:Loss"), r"loss 'nope.mod:Loss': cannot import 'nope.mod'"),
    (lambda: resolve_loss("torch.nn:NoSuchLoss"), r"'torch.nn' has no attribute 'NoSuchLoss'"),
    (lambda: resolve_loss("huber", {"delta": 0.0}), r"loss 'huber' with \{'delta': 0.0\}: delta must be > 0, got 0.0"),
    (lambda: resolve_loss("torch:get_default_dtype"), r"must build a torch.nn.Module, got dtype"),
    (lambda: resolve_loss("torch.nn:MSELoss", {"bogus": 1}),
     r"loss 'torch.nn:MSELoss' takes no argument 'bogus' \(it takes: size_average, reduce, reduction\)"),
    (lambda: resolve_loss("huber", {"delta": "wide"}), r"loss 'huber': delta must be float, got 'wide' \(str\)"),
    (lambda: resolve_loss("torch.nn:BCEWithLogitsLoss", {"reduction": True}),
     r"loss 'torch.nn:BCEWithLogitsLoss': reduction must be str, got True \(bool\)"),
    (lambda: parse_kwargs(["delta"], "--loss-arg"), r"--loss-arg must be key=value, got 'delta'"),
])
def test_bad_names_are_usage_errors(call, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UsageError, match=match):
        call()


def test_registry_cases() -> None:
    case = make_case("seed", "cross_entropy", batch=6, dtype=torch.float64, seed=3)
    assert case.net.fc2.out_features == 5 and not case.net.training  # SeedNet(out_features=spec.net_out), eval
    assert case.inputs[0].shape == (6, 32) and case.targets[0].dtype == torch.int64 and case.targets[0].shape == (6,)
    again = make_case("seed", "cross_entropy", batch=6, dtype=torch.float64, seed=3)
    torch.testing.assert_close(again.net.fc1.weight, case.net.fc1.weight, rtol=0, atol=0)  # seeded weights
    bigger = case.with_batch(64)
    assert bigger.net is case.net and bigger.inputs[0].shape == (64, 32) and bigger.description["batch"] == 64
    alone = make_case(None, "gaussian_nll", batch=4)
    assert alone.net is None and alone.inputs[0].shape == (4, 1) and len(alone.targets) == 2
    mlp = make_case("mlp", "cross_entropy", batch=3)
    assert mlp.loss.label_smoothing == 0.1  # the registry's settings for the net's own loss


def test_user_cases_need_specs() -> None:
    with pytest.raises(UsageError, match=r"net 'compile_losses.nets:SeedNet' is not in the registry: give its inputs"):
        make_case("compile_losses.nets:SeedNet", "mse", batch=2)
    with pytest.raises(UsageError, match=r"loss 'torch.nn:L1Loss' alone is not in the registry: give its prediction"):
        make_case(None, "torch.nn:L1Loss", batch=2)
    case = make_case("compile_losses.nets:SeedNet", "torch.nn:L1Loss", batch=5, input_specs=["float32[N,32]"])
    assert case.targets[0].shape == (5, 1)  # default target: like the net's output
    case = make_case("compile_losses.nets:SeedNet", "torch.nn:CrossEntropyLoss", batch=5, input_specs=["[N,32]"],
                     target_specs=["int64[N]{0..0}"], net_kwargs={"out_features": 2})
    assert case.targets[0].tolist() == [0] * 5
    with pytest.raises(UsageError, match="batch must be a positive integer, got 0"):
        make_case("seed", "mse", batch=0)
