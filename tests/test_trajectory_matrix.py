"""The whole trajectory cross-product of issue #15: every registry net+loss pair (SeedNet with
every loss, and each registry net with its own loss) and a user's net+loss by import path x SGD
(plain; momentum + nesterov + weight_decay), Adam and AdamW x ``compile``, ``onnx`` and ``aoti`` x float32 and float64 x
accumulation K=1 and K=4, always with the net's first parameterized layer frozen: 32 steps from
one start against eager ``torch.optim`` in float64, by the project's rule.

All exhaustive (1344 cases, hours on 2 cores): ``pytest --run-exhaustive
tests/test_trajectory_matrix.py`` (``-k`` for a slice, e.g. ``-k "onnx and float32 and adamw"``).
tests/test_trajectory.py holds the default and slow runs of the same check.
"""
import pytest
import torch

import compile_losses as cl
from compile_losses.backends import BACKENDS
from compile_losses.parity import FAILING, PASS, UNSUPPORTED
from compile_losses.registry import LOSSES, NETS
from compile_losses.resolve import make_case

OPTS = {"sgd": ("sgd", {"lr": 0.05}),
        "sgd-nesterov": ("sgd", {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
        "adam": ("adam", {"lr": 3e-3}),
        "adamw": ("adamw", {"lr": 3e-3, "weight_decay": 0.05})}
MATRIX_BACKENDS = ("compile", "onnx", "aoti")  # the three
PAIRS = [("seed", name) for name in sorted(LOSSES)] + [(s.name, s.loss) for s in NETS.values() if s.name != "seed"]
# a net and loss the project did not write, by import path (tests/userpkg), with their input specs
USER = ("userpkg.models:TinyClassifier", "userpkg.models:MarginClassLoss")
PAIRS.append(USER)
SPECS = {USER: {"input_specs": ["float32[N,6]"], "target_specs": ["int64[N]{0..2}"]}}

# Cases expected to fail until understood: (net, loss, OPTS key, dtype, K) -> the finding. The
# first run's one (seed+charbonnier, Adam, float32, K=1: the functional step 4x eager's error at
# fc2.bias) was the optimizer rounding a * b + c twice where torch's kernels fuse it; optim._fma.
FINDINGS: dict = {}


def _params():  # type: ignore[no-untyped-def]
    out = []
    for net, loss in PAIRS:
        for backend in MATRIX_BACKENDS:
            marks = [pytest.mark.exhaustive] + [getattr(pytest.mark, m) for m in BACKENDS[backend].markers]
            for opt in OPTS:
                for dtype in ("float32", "float64"):
                    for k in (1, 4):
                        known = FINDINGS.get((net, loss, opt, dtype, k))
                        xfail = [pytest.mark.xfail(reason=known, strict=False)] if known else []
                        out.append(pytest.param(net, loss, backend, opt, dtype, k, marks=marks + xfail,
                                                id="{}-{}-{}-{}-{}-K{}".format(
                                                    "user" if (net, loss) == USER else net,
                                                    "user" if (net, loss) == USER else loss, backend, opt, dtype, k)))
    return out


def _freeze_first_layer(net: torch.nn.Module) -> list:
    layer = next(m for m in net.modules() if any(True for _ in m.parameters(recurse=False)))
    layer.requires_grad_(False)
    return [n for n, p in net.named_parameters() if not p.requires_grad]


@pytest.mark.parametrize("net, loss, backend, opt, dtype, accumulate", _params())
def test_trajectory_matrix(net: str, loss: str, backend: str, opt: str, dtype: str, accumulate: int) -> None:
    ok, why = BACKENDS[backend].available()
    if not ok:
        pytest.skip("{} unavailable: {}".format(backend, why))
    case = make_case(net, loss, batch=8, dtype=getattr(torch, dtype), **SPECS.get((net, loss), {}))
    frozen = _freeze_first_layer(case.net)
    name, args = OPTS[opt]
    report = cl.verify(case.net, case.loss, case.inputs, case.targets, ["eager", backend], optimizer=name,
                       optimizer_args=args, steps=32, accumulate=accumulate, label=case.label)
    bad = [r for r in report.rows if r.status in FAILING]
    assert not bad, str(report)
    mine = [r for r in report.rows if r.backend == backend]
    assert mine and all(r.status == PASS or (r.status == UNSUPPORTED and r.detail) for r in mine), [
        (r.output, r.status, r.detail) for r in mine]
    if any(r.status == UNSUPPORTED for r in mine):
        # e.g. onnxruntime's CPU provider has no float64 Conv (convseg):
        # the runtime cannot run the graph, which the row says with its reason
        pytest.skip("; ".join(sorted({r.detail for r in mine if r.status == UNSUPPORTED})))
    outputs = {r.output for r in mine}
    assert "trajectory.loss" in outputs
    assert report.cases[0]["frozen"] == frozen and frozen
    assert not any(f in o for f in frozen for o in outputs)  # frozen: no gradient, state or update rows
