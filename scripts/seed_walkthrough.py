#!/usr/bin/env python
"""Replays the walkthrough this project grew from: a 32-16-1 net, ten random samples, the MSE loss
three ways, one backward pass and one SGD step by hand and by ``torch.optim.SGD``; then the same
step by ``train_step.onnx`` in onnxruntime, and the same net trained 32 AdamW steps in eager and by
an exported bundle's trainer in onnxruntime, the two loss curves side by side.

    python scripts/seed_walkthrough.py                  # prints each step; exit 0 when every check holds
    python scripts/seed_walkthrough.py --plot curves.png   # and the AdamW loss curves as a PNG
    python scripts/seed_walkthrough.py --quick          # without the AdamW leg (it exports a bundle, ~15 s)

The walkthrough is a list of legs (``LEGS``), each a function of the shared :class:`Walkthrough`
state that prints what it does and records its checks. A new leg (for example the same train step
through an exported ONNX graph) appends itself to ``LEGS``; it finds the net, the data, the starting
parameters and every earlier result in the state.
"""
import argparse
import copy
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn.functional as TF
from torch import Tensor, nn

from compile_losses.losses import MSELoss
from compile_losses.nets import SeedNet

# The first targets torch.manual_seed(1); randn(10, 32); randn(10) gives, as printed in the original.
EXPECTED_FIRST_TARGETS = (0.1924, 0.7161, -0.8120, -1.4617)
LR = 0.01


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Walkthrough:
    """What the legs share: the net (stepped in place by the manual SGD leg), the data, the
    parameters before any step, results by name, and the checks so far."""

    net: SeedNet
    inputs: Tensor
    targets: Tensor
    start: Dict[str, Tensor]
    lr: float = LR
    plot: Optional[str] = None
    results: Dict[str, Any] = field(default_factory=dict)
    checks: List[Check] = field(default_factory=list)
    out: Callable[[str], None] = print

    def say(self, text: str = "") -> None:
        self.out(text)

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append(Check(name, bool(ok), detail))
        self.say("  [{}] {}{}".format("ok" if ok else "FAIL", name, " ({})".format(detail) if detail else ""))
        return bool(ok)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def fresh_net(self) -> SeedNet:
        """A copy of the net at its starting parameters (before any step)."""
        net = copy.deepcopy(self.net)
        net.load_state_dict(self.start)
        return net


def _fmt(t: Tensor) -> str:
    return "[" + ", ".join("{:.4f}".format(v) for v in t.flatten().tolist()) + "]"


def _max_abs_diff(a: Dict[str, Tensor], b: Dict[str, Tensor]) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def setup(out: Callable[[str], None] = print, net_seed: int = 0, plot: Optional[str] = None) -> Walkthrough:
    # The original builds the net first, then seeds the data with torch.manual_seed(1); the net's
    # own seed is ours (the original's initial weights were not seeded).
    torch.manual_seed(net_seed)
    net = SeedNet()
    torch.manual_seed(1)
    inputs = torch.randn(10, 32)
    targets = torch.randn(10).view(1, -1)
    start = {k: v.detach().clone() for k, v in net.state_dict().items()}
    return Walkthrough(net=net, inputs=inputs, targets=targets, start=start, out=out, plot=plot)


def leg_data(w: Walkthrough) -> None:
    w.say("== 1. the net and the data ==")
    w.say("net: {}".format(w.net))
    for name, p in w.net.named_parameters():
        w.say("  {:<11} {}".format(name, tuple(p.shape)))
    w.say("torch.manual_seed(1); inputs = torch.randn(10, 32); targets = torch.randn(10).view(1, -1)")
    w.say("targets {}: {}".format(tuple(w.targets.shape), _fmt(w.targets)))
    first = tuple(w.targets[0, :4].tolist())
    w.results["targets"] = w.targets
    w.check("targets start 0.1924, 0.7161, -0.8120, -1.4617",
            all(abs(a - b) < 5e-5 for a, b in zip(first, EXPECTED_FIRST_TARGETS)), _fmt(w.targets[0, :4]))


def leg_loss(w: Walkthrough) -> None:
    w.say("== 2. the loss, three ways ==")
    outputs = w.net(w.inputs).view(1, -1)
    w.say("outputs = net(inputs).view(1, -1): {}".format(_fmt(outputs)))
    ours = MSELoss()(outputs, w.targets)
    functional = TF.mse_loss(outputs, w.targets)
    module = nn.MSELoss()(outputs, w.targets)
    w.say("compile_losses.losses.MSELoss: {:.6f}".format(ours.item()))
    w.say("torch.nn.functional.mse_loss:  {:.6f}".format(functional.item()))
    w.say("torch.nn.MSELoss:              {:.6f}".format(module.item()))
    w.results.update(outputs=outputs.detach(), loss=ours, loss_compile_losses=ours.detach(),
                     loss_functional=functional.detach(), loss_nn=module.detach())
    bitwise = torch.equal(ours, functional) and torch.equal(ours, module)
    close = torch.allclose(ours, functional, rtol=1.3e-6, atol=1e-5) and torch.allclose(ours, module, rtol=1.3e-6, atol=1e-5)
    w.check("the three losses are equal", close, "bit for bit" if bitwise else "to float32 rounding, differ by {:.3g}".format(
        max((ours - functional).abs().item(), (ours - module).abs().item())))


def leg_backward(w: Walkthrough) -> None:
    w.say("== 3. zero_grad, then backward ==")
    w.net.zero_grad()
    before = w.net.fc2.weight.grad
    w.say("after net.zero_grad(): fc2.weight.grad = {}".format(before))
    w.results["loss"].backward()
    after = w.net.fc2.weight.grad
    w.say("after loss.backward(): fc2.weight.grad {} = {}".format(tuple(after.shape), _fmt(after)))
    w.results.update(grad_before_backward=before, grad_after_backward=after.detach().clone(),
                     grads={k: p.grad.detach().clone() for k, p in w.net.named_parameters()})
    w.check("fc2.weight.grad is None before backward", before is None)
    w.check("fc2.weight.grad is (1, 16) after backward", tuple(after.shape) == (1, 16))


def leg_manual_sgd(w: Walkthrough) -> None:
    w.say("== 4. one SGD step by hand: p.data.sub_(p.grad.data * {}) ==".format(w.lr))
    for p in w.net.parameters():
        p.data.sub_(p.grad.data * w.lr)
    with torch.no_grad():
        after = MSELoss()(w.net(w.inputs).view(1, -1), w.targets)
    before = w.results["loss_compile_losses"]
    w.say("loss before {:.6f}, after {:.6f}".format(before.item(), after.item()))
    w.results.update(loss_before_step=before, loss_after_manual_step=after,
                     params_manual={k: v.detach().clone() for k, v in w.net.named_parameters()})
    w.check("the step lowers the loss", after.item() < before.item(),
            "by {:.6f}".format(before.item() - after.item()))


def leg_optim_sgd(w: Walkthrough) -> None:
    w.say("== 5. the same step with torch.optim.SGD(lr={}) from the same start ==".format(w.lr))
    net = w.fresh_net()
    optimizer = torch.optim.SGD(net.parameters(), lr=w.lr)
    optimizer.zero_grad()
    MSELoss()(net(w.inputs).view(1, -1), w.targets).backward()
    optimizer.step()
    params = {k: v.detach().clone() for k, v in net.named_parameters()}
    w.results["params_optim"] = params
    diff = _max_abs_diff(params, w.results["params_manual"])
    w.say("largest difference from the manual step: {:.3g}".format(diff))
    # SGD adds -lr * grad in one fused op; the manual step rounds grad * lr first: equal to 1 ulp.
    same = all(torch.allclose(params[k], w.results["params_manual"][k], rtol=1.3e-6, atol=1e-5) for k in params)
    w.check("torch.optim.SGD gives the same parameters", same, "max |diff| {:.3g}".format(diff))


# Appended to in order; each leg reads and extends the shared state.
LEGS: List[Callable[[Walkthrough], None]] = [leg_data, leg_loss, leg_backward, leg_manual_sgd, leg_optim_sgd]


# ---------------------------------------------------------------------------------------------
# onnxruntime leg (owner: training graphs, compile_losses.training): the same SGD step done by
# train_step.onnx in onnxruntime, fed and read with numpy only.
# ---------------------------------------------------------------------------------------------
def leg_onnx_train_step(w: Walkthrough) -> None:
    import os
    import tempfile

    import numpy as np
    import onnxruntime as ort

    from compile_losses.training import export_train_step_onnx

    w.say("== 6. the same step by train_step.onnx in onnxruntime (numpy in, numpy out) ==")
    # The graph takes targets shaped like the net's output (N, 1); viewed so, the (1, 10) targets
    # pair with the same outputs as in the legs above, and the mean runs over the same ten terms.
    targets = w.targets.view(-1, 1)
    with tempfile.TemporaryDirectory() as tmp:
        info = export_train_step_onnx(w.fresh_net(), MSELoss(), (w.inputs, targets), os.path.join(tmp, "train_step.onnx"))
        session = ort.InferenceSession(info["path"], providers=["CPUExecutionProvider"])
    w.say("exported with torch: {} nodes, {} bytes, opset {}; inputs {}".format(
        info["nodes"], info["bytes"], info["opset"], ", ".join(i["name"] for i in info["inputs"])))
    # From here on: numpy and onnxruntime only.
    params = {p["name"]: w.start[p["name"]].numpy() for p in info["params"]}
    data = {"x": w.inputs.numpy(), "target": targets.numpy(), "lr": np.array(w.lr, dtype=np.float32)}

    def step(current: Dict[str, Any]) -> Dict[str, Any]:
        feed = dict(data, **{p["input"]: current[p["name"]] for p in info["params"]})
        return dict(zip([o["name"] for o in info["outputs"]], session.run(None, feed)))

    first = step(params)
    new = {p["name"]: first[p["new"]] for p in info["params"]}
    second = step(new)  # its loss output is the loss at the stepped parameters
    before, after = float(first["loss"]), float(second["loss"])
    w.say("onnxruntime: loss before {:.6f}, after {:.6f}".format(before, after))
    eager_params = w.results["params_optim"]
    diff = max(float(np.abs(new[k] - eager_params[k].numpy()).max()) for k in new)
    w.results.update(onnx_loss_before_step=before, onnx_loss_after_step=after, params_onnx=new)
    w.check("train_step.onnx starts from the same loss as eager",
            np.allclose(before, w.results["loss_before_step"].item(), rtol=1.3e-6, atol=1e-5),
            "{:.6f} vs {:.6f}".format(before, w.results["loss_before_step"].item()))
    w.check("train_step.onnx gives the same parameters as torch.optim.SGD",
            all(np.allclose(new[k], eager_params[k].numpy(), rtol=1.3e-6, atol=1e-5) for k in new),
            "max |diff| {:.3g}".format(diff))
    w.check("train_step.onnx gives the same lower loss as eager",
            after < before and np.allclose(after, w.results["loss_after_manual_step"].item(), rtol=1.3e-6, atol=1e-5),
            "{:.6f} vs eager {:.6f}".format(after, w.results["loss_after_manual_step"].item()))


LEGS.append(leg_onnx_train_step)


# ---------------------------------------------------------------------------------------------
# AdamW leg (owner: optimizers in bundles): the same net trained ADAMW_STEPS AdamW steps on the ten
# samples, by eager torch.optim and by an exported bundle's trainer in onnxruntime.
# ---------------------------------------------------------------------------------------------
ADAMW_STEPS = 32
ADAMW = {"lr": 1e-2, "weight_decay": 1e-2}


def _eager_adamw(w: Walkthrough, dtype: torch.dtype) -> Dict[str, Any]:
    net = w.fresh_net().to(dtype)
    x, y = w.inputs.to(dtype), w.targets.view(-1, 1).to(dtype)
    optimizer = torch.optim.AdamW(net.parameters(), foreach=False, **ADAMW)
    losses = []
    for _ in range(ADAMW_STEPS):
        optimizer.zero_grad()
        value = MSELoss()(net(x), y)
        value.backward()
        optimizer.step()
        losses.append(value.detach())
    return {"losses": torch.stack(losses), "params": {k: p.detach().clone() for k, p in net.named_parameters()}}


def leg_adamw_trainer(w: Walkthrough) -> None:
    import tempfile

    from compile_losses.export import export_bundle
    from compile_losses.parity import judge
    from compile_losses.runtime import load_bundle

    w.say("== 7. {} AdamW steps ({}): eager torch.optim.AdamW and the bundle's trainer in onnxruntime ==".format(
        ADAMW_STEPS, ", ".join("{}={}".format(k, v) for k, v in ADAMW.items())))
    eager, eager64 = _eager_adamw(w, torch.float32), _eager_adamw(w, torch.float64)
    targets = w.targets.view(-1, 1)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_bundle(w.fresh_net(), MSELoss(), w.inputs, targets, tmp, name="seed-adamw", aoti=False,
                             torchscript=False, parity=False, optimizer="adamw", optimizer_args=ADAMW)
        bundle = load_bundle(path)
    w.say("exported {} with train_step.onnx carrying AdamW (state and hyper-parameters as graph inputs)".format(path.name))
    # From here on: numpy and onnxruntime only.
    trainer = bundle.trainer()
    x, y = w.inputs.numpy(), targets.numpy()
    ort_losses = [trainer.step(x, y) for _ in range(ADAMW_STEPS)]
    w.say("{:>4}  {:>12}  {:>12}  {:>10}".format("step", "eager", "onnxruntime", "diff"))
    for i, (e, o) in enumerate(zip(eager["losses"].tolist(), ort_losses)):
        w.say("{:>4}  {:>12.6f}  {:>12.6f}  {:>10.2g}".format(i + 1, e, o, o - e))
    got = torch.tensor(ort_losses, dtype=torch.float32)
    w.results.update(adamw_eager_losses=eager["losses"], adamw_ort_losses=got, adamw_eager_params=eager["params"],
                     adamw_ort_params={k: torch.from_numpy(v) for k, v in trainer.params.items()})
    curve = judge(got, eager["losses"], eager64["losses"])
    w.check("the two loss curves agree by the parity rule", curve["status"] == "pass",
            "clause {}, max |diff| {:.3g}".format(curve.get("clause"), curve.get("max_abs", float("nan"))))
    finals = {k: judge(w.results["adamw_ort_params"][k], eager["params"][k], eager64["params"][k]) for k in eager["params"]}
    w.check("the trainer's final parameters agree with eager by the parity rule",
            all(v["status"] == "pass" for v in finals.values()),
            "max |diff| {:.3g}".format(max(v.get("max_abs", float("nan")) for v in finals.values())))
    w.check("AdamW lowers the loss", ort_losses[-1] < ort_losses[0], "{:.6f} -> {:.6f}".format(ort_losses[0], ort_losses[-1]))
    if w.plot:
        w.results["adamw_plot"] = _plot_curves(w.plot, eager["losses"].tolist(), ort_losses)
        w.say("wrote {}".format(w.plot))


def _plot_curves(path: str, eager: List[float], ort: List[float]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    steps = list(range(1, len(eager) + 1))
    ax.plot(steps, eager, label="eager torch.optim.AdamW", linewidth=2.5)
    ax.plot(steps, ort, label="bundle trainer (onnxruntime)", linestyle="--", marker=".")
    ax.set_xlabel("step")
    ax.set_ylabel("MSE loss before the step")
    ax.set_yscale("log")
    ax.set_title("SeedNet, {} AdamW steps".format(len(eager)))
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


LEGS.append(leg_adamw_trainer)
QUICK_SKIPS = (leg_adamw_trainer,)


def run_walkthrough(out: Callable[[str], None] = print, legs: Optional[List[Callable[[Walkthrough], None]]] = None,
                    plot: Optional[str] = None) -> Walkthrough:
    """Runs every leg and returns the state: ``.results`` by name, ``.checks``, ``.ok``."""
    w = setup(out, plot=plot)
    for leg in LEGS if legs is None else legs:
        leg(w)
        w.say()
    return w


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plot", metavar="PNG", default=None, help="write the AdamW leg's two loss curves to this PNG")
    parser.add_argument("--quick", action="store_true", help="leave out the AdamW leg (it exports a bundle)")
    args = parser.parse_args(argv)
    if args.quick and args.plot:
        parser.error("--plot draws the AdamW leg, which --quick leaves out")
    legs = [leg for leg in LEGS if not (args.quick and leg in QUICK_SKIPS)]
    w = run_walkthrough(legs=legs, plot=args.plot)
    failed = [c for c in w.checks if not c.ok]
    print("{} of {} checks hold".format(len(w.checks) - len(failed), len(w.checks)))
    for c in failed:
        print("FAILED: {} ({})".format(c.name, c.detail), file=sys.stderr)
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
