"""SeedNet with MSE, one AdamW step (forward, loss, backward, update of parameters and state) at
batch 10 and 4096, against eager ``torch.optim.AdamW`` with its default implementation: every round
of a backend's optimizer step (its state threaded from call to call, as a training loop does) is
paired with an eager round of ``zero_grad``, forward, ``backward`` and ``optimizer.step()``. The
``fast`` row is the fastest path the project offers; ``test_seed_adamw_trainer`` times an exported
bundle's ``train_step.onnx`` run by the torch-free runtime's trainer (numpy in, numpy out)."""
import copy
from typing import Any, Callable

import torch

from compile_losses.optim import optimizer
from compile_losses.programs import frozen, trainable

ADAMW = {"lr": 1e-3, "weight_decay": 1e-2}


def torch_optim_step(net: torch.nn.Module, loss: torch.nn.Module) -> Callable[..., Any]:
    """The eager reference: a copy of the net trained in place by ``torch.optim.AdamW`` with
    torch's default implementation (no ``foreach``/``fused`` argument)."""
    net = copy.deepcopy(net)
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], **ADAMW)

    def step(x: torch.Tensor, *targets: torch.Tensor) -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        value = loss(net(x), *targets)
        value.backward()
        opt.step()
        return value

    return step


def test_seed_adamw_step(case, backend_name, bench):
    net, loss, inputs = case.make(bench.device)
    opt = optimizer("adamw", **ADAMW)
    refs = {}
    if backend_name == bench.reference_name:
        fn = torch_optim_step(net, loss)
    else:
        step = bench.prepare(backend_name, "prepare_optimizer_step", net, loss, inputs, opt)
        params = {n: p.detach().clone() for n, p in trainable(net)}
        fixed = {n: p.detach() for n, p in frozen(net)}
        carry = [params, opt.init_state(params)]
        hyper = opt.hyper_tensors(bench.device)

        def fn(x: torch.Tensor, *targets: torch.Tensor) -> torch.Tensor:
            out = step(carry[0], fixed, x, *targets, state=carry[1], hyper=hyper)
            carry[0], carry[1] = out.new_params, out.new_state
            return out.loss

        refs = {"eager": (torch_optim_step(net, loss), inputs)}
    bench.run(fn, inputs, workload="seed-adamw", case=case.id, backend=backend_name, samples=case.batch,
              references=refs, batch=case.batch, reference="torch.optim.AdamW (default implementation)")


def test_seed_adamw_trainer(case, device, bench, tmp_path):
    from compile_losses.export import export_bundle
    from compile_losses.runtime import load_bundle
    from compile_losses.sessions import INTRA_OP_THREADS

    net, loss, inputs = case.make(device)  # the CPU: onnxruntime's CPU provider
    path = export_bundle(net, loss, inputs[0], inputs[1:], tmp_path, name="seed-adamw", aoti=False, torchscript=False,
                         parity=False, optimizer="adamw", optimizer_args=ADAMW)
    trainer = load_bundle(path, intra_op_threads=INTRA_OP_THREADS).trainer()
    arrays = tuple(t.numpy() for t in inputs)
    bench.run(trainer.step, arrays, workload="seed-adamw", case=case.id, backend="bundle-trainer", samples=case.batch,
              references={"eager": (torch_optim_step(net, loss), inputs)}, batch=case.batch,
              reference="torch.optim.AdamW (default implementation)", intra_op_threads=INTRA_OP_THREADS)
