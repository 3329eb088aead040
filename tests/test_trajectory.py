"""32-step trajectory parity through verify(..., optimizer=...): every backend's optimizer step
against eager torch.optim, judged by the float64 rule; a wrong update must fail."""
import pytest
import torch

import compile_losses as cl
from compile_losses.backends import BACKENDS, EagerBackend, register, unregister
from compile_losses.parity import FAILING, PASS
from compile_losses.resolve import make_case

from backend_params import SLOW_COST

OPTS = {"sgd": {"lr": 0.05}, "sgd-nesterov": {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
        "adam": {"lr": 3e-3}, "adamw": {"lr": 3e-3, "weight_decay": 0.05}}
CHEAP = [n for n, b in BACKENDS.items() if b.cost < SLOW_COST and b.available()[0]]
# the default run: backends without an inductor/aot build (those run with --run-slow)
QUICK = [n for n in CHEAP if "compile" not in BACKENDS[n].markers]


def _check(report):
    ran = [r for r in report.rows if r.status == PASS or r.status in FAILING]
    bad = [r for r in report.rows if r.status in FAILING]
    assert not bad, str(report)
    return ran


def _frozen_seed(dtype, batch=12):
    case = make_case("seed", "mse", batch=batch, dtype=dtype)
    next(case.net.children()).requires_grad_(False)  # the first layer frozen
    return case


DEFAULT = {("sgd-nesterov", 1), ("adamw", 4)}  # the rest of the cross-product runs with --run-slow


@pytest.mark.parametrize("opt,accumulate", [
    pytest.param(o, k, id="{}-K{}".format(o, k), marks=() if (o, k) in DEFAULT else pytest.mark.slow)
    for o in OPTS for k in (1, 4)])
def test_trajectory_cheap_backends(opt, accumulate):
    case = _frozen_seed(torch.float32)
    names = QUICK if (opt, accumulate) in DEFAULT else CHEAP
    report = cl.verify(case.net, case.loss, case.inputs, case.targets, names, optimizer=opt.split("-")[0],
                       optimizer_args=OPTS[opt], steps=32, accumulate=accumulate)
    ran = _check(report)
    assert {r.backend for r in ran} >= {"eager"} and len({r.backend for r in ran}) > 1
    outputs = {r.output for r in ran}
    assert "trajectory.loss" in outputs and not any("fc1" in o for o in outputs)  # frozen: no state, no update
    assert report.cases[0]["frozen"] == ["fc1.weight", "fc1.bias"]


@pytest.mark.slow
@pytest.mark.parametrize("opt", list(OPTS))
def test_trajectory_float64(opt):
    case = _frozen_seed(torch.float64)
    _check(cl.verify(case.net, case.loss, case.inputs, case.targets, CHEAP, optimizer=opt.split("-")[0],
                     optimizer_args=OPTS[opt], steps=32, accumulate=4))


@pytest.mark.slow
@pytest.mark.compile
@pytest.mark.aoti
def test_trajectory_compiled_backends():
    case = _frozen_seed(torch.float32)
    names = [n for n, b in BACKENDS.items() if b.cost >= SLOW_COST and b.device == "cpu" and b.available()[0]]
    report = cl.verify(case.net, case.loss, case.inputs, case.targets, names, optimizer="adamw",
                       optimizer_args=OPTS["adamw"], steps=32, accumulate=4)
    assert {r.backend for r in _check(report)} >= set(names) - {"fused"}


@pytest.mark.parametrize("loss_kwargs", [pytest.param({"ignore_index": 2}, id="ignore_index"),
                                         pytest.param({"weight": [1.0, 2.0, 0.5, 1.0, 3.0]}, id="weight",
                                                      marks=pytest.mark.slow)])
def test_trajectory_weighted_classification_accumulates(loss_kwargs):
    case = make_case("seed", "cross_entropy", batch=16, dtype=torch.float32, loss_kwargs=loss_kwargs)
    _check(cl.verify(case.net, case.loss, case.inputs, case.targets, QUICK, optimizer="adam",
                     optimizer_args={"lr": 1e-2}, steps=8, accumulate=4))


def test_trajectory_user_net_and_loss_by_import_path():
    case = make_case("userpkg.models:TinyClassifier", "userpkg.models:MarginClassLoss", batch=9,
                     input_specs=["float32[N,6]"], target_specs=["int64[N]{0..2}"])
    _check(cl.verify(case.net, case.loss, case.inputs, case.targets, QUICK, optimizer="sgd",
                     optimizer_args={"lr": 0.05, "momentum": 0.9}, steps=32, accumulate=3))


class _WrongLr(EagerBackend):
    """The functional step with a learning rate 1e-4 relative off: a trajectory must catch it."""

    def _optimizer_step(self, net, loss, example_inputs, opt):
        step = super()._optimizer_step(net, loss, example_inputs, opt)

        def run(params, fixed, x, *targets, state, hyper):
            return step(params, fixed, x, *targets, state=state, hyper=dict(hyper, lr=hyper["lr"] * (1 + 1e-4)))

        return run


def test_a_wrong_update_fails():
    register(_WrongLr("test-wrong-lr"))
    try:
        case = _frozen_seed(torch.float32)
        report = cl.verify(case.net, case.loss, case.inputs, case.targets, ["eager", "test-wrong-lr"],
                           optimizer="adamw", optimizer_args=OPTS["adamw"], steps=32)
    finally:
        unregister("test-wrong-lr")
    assert not report.ok
    assert all(r.status == PASS for r in report.rows if r.backend == "eager")
    wrong = [r for r in report.rows if r.backend == "test-wrong-lr"]
    # the losses and the moments see a 1e-4 relative lr; the final parameters move too little to
    assert any(r.status == "fail" and r.output == "trajectory.loss" for r in wrong), str(report)


def test_equivalent_orders_are_kept_only_where_float64_shows_the_same_trajectory():
    from compile_losses.optim import optimizer
    from compile_losses.parity.rule import float64_case
    from compile_losses.parity.trajectory import (_cast64, _eager_variants, _flatten, _spec_of, equivalent_orders,
                                                  fresh_batches)
    from compile_losses.programs import eager_optimizer_trajectory

    kept = {}
    for loss_name in ("mse", "info_nce"):  # per-sample; in-batch negatives (a cut batch is another loss)
        case = make_case("seed", loss_name, batch=8, dtype=torch.float32)
        opt = optimizer("adam", lr=3e-3)
        batches = fresh_batches(tuple(case.inputs), tuple(case.targets), 6)
        orders = equivalent_orders(batches)
        assert len(orders) == 6  # rows permuted; cut at rows 1, 2, 4, 6, 7
        assert [len(o[0]) for o in orders] == [1, 2, 2, 2, 2, 2]
        assert [o[0][0][0].shape[0] for o in orders[1:]] == [1, 2, 4, 6, 7]
        net64, loss64, _, _ = float64_case(case.net, case.loss, (), ())
        ref64 = _flatten(*eager_optimizer_trajectory(net64, loss64, opt, _cast64(batches)))
        kept[loss_name] = len(_eager_variants(case.net, case.loss, net64, loss64, opt, batches,
                                              _spec_of(case.loss), ref64))
    assert kept == {"mse": 6, "info_nce": 1}  # info_nce: only the permutation is the same computation


def test_an_adam_trajectory_on_a_cancelling_gradient_is_judged_by_eagers_spread():
    """seed+multi_quantile, Adam, float32: the 0.5-quantile's bias gradient cancels to exactly 0 in
    eager's order and to 1 ulp (3.7e-9) in others, which Adam (eps 1e-8) turns into an lr-sized
    step. A backend with its own summation order (here eager's step on the batch cut at row 2, the
    same computation) is far from eager's own error and within eager's spread over orders."""
    class _CutBatch(EagerBackend):
        def _optimizer_step(self, net, loss, example_inputs, opt):
            step = super()._optimizer_step(net, loss, example_inputs, opt)

            def run(params, fixed, x, *targets, state, hyper):
                whole = step(params, fixed, x, *targets, state=state, hyper=hyper)
                head = step(params, fixed, x[:2], *(t[:2] for t in targets), state=state, hyper=hyper)
                tail = step(params, fixed, x[2:], *(t[2:] for t in targets), state=state, hyper=hyper)
                grads = {n: (g * 2 + tail.grads[n] * (x.shape[0] - 2)) / x.shape[0] for n, g in head.grads.items()}
                new_params, new_state = opt.apply(params, grads, state, hyper)
                return type(whole)(whole.loss, grads, new_params, new_state)

            return run

    register(_CutBatch("test-cut-batch"))
    try:
        case = make_case("seed", "multi_quantile", batch=8, dtype=torch.float32)
        next(case.net.children()).requires_grad_(False)
        report = cl.verify(case.net, case.loss, case.inputs, case.targets, ["eager", "test-cut-batch"],
                           optimizer="adam", optimizer_args={"lr": 3e-3}, steps=32)
    finally:
        unregister("test-cut-batch")
    row = next(r for r in report.rows if r.backend == "test-cut-batch" and r.output == "final:fc2.bias")
    assert row.status == PASS and row.clause == 2, str(report)
    assert row.err_backend64 > 100 * 2.7e-8 and "largest over" in row.detail, row


@pytest.mark.parametrize("kwargs,error,match", [
    ({"optimizer": "lamb"}, ValueError, r"optimizer must be one of 'sgd', 'adam', 'adamw', got 'lamb'"),
    ({"optimizer": "adam", "steps": 0}, ValueError, r"steps must be an integer >= 1, got 0"),
    ({"optimizer": "adam", "accumulate": 13}, ValueError, r"accumulate must be between 1 and the batch size \(12\), got 13"),
    ({"optimizer": "adam", "lr": 0.1}, TypeError, r"verify with an optimizer takes optimizer_args.*got lr"),
])
def test_bad_trajectory_options(kwargs, error, match):
    case = _frozen_seed(torch.float32)
    with pytest.raises(error, match=match):
        cl.verify(case.net, case.loss, case.inputs, case.targets, ["eager"], **kwargs)


def test_cli_verify_trajectory(tmp_path, capsys):
    import json

    from compile_losses.cli import main

    out = tmp_path / "r.json"
    assert main(["verify", "--backends", "eager,script", "--optimizer", "sgd", "--optim-arg", "lr=0.05",
                 "--optim-arg", "momentum=0.9", "--optim-arg", "nesterov=true", "--steps", "8", "--accumulate", "2",
                 "--batch", "6", "--dtype", "float32", "--quiet", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["cases"][0]["optimizer"]["flags"]["nesterov"] is True
    assert data["cases"][0]["steps"] == 8 and data["cases"][0]["accumulate"] == 2


@pytest.mark.parametrize("argv,match", [
    (["--optim-arg", "lr=0.1"], "--optim-arg needs --optimizer"),
    (["--optimizer", "adam", "--optim-arg", "beta1=2"], r"--optim-arg: optimizer_args\['beta1'\] must be in \[0, 1\)"),
    (["--optimizer", "adam", "--accumulate", "9", "--batch", "4"], r"--accumulate must be between 1 and the first --batch \(4\), got 9"),
    (["--steps", "3"], "--steps and --accumulate need --optimizer"),
])
def test_cli_verify_trajectory_usage(argv, match, capsys):
    import re

    from compile_losses.cli import main

    assert main(["verify", "--backends", "eager", "--quiet"] + argv) == 2
    assert re.search(match, capsys.readouterr().err)
