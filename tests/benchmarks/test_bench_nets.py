"""The larger registry nets with the loss each is trained with, at a realistic batch: the
inference loss and a whole train step (forward, loss, backward, SGD update), per backend. Every
round of a non-eager backend is paired with an eager call of the same work (see ``Bench.run``)."""
from compile_losses.nets import NetWithLoss

LR = 0.01


def test_net_inference(case, backend_name, bench):
    net, loss, inputs = case.make(bench.device)
    module = NetWithLoss(net, loss)
    fn = bench.prepare(backend_name, "prepare", module, inputs, inference=True)
    refs = bench.references(backend_name, "prepare", (module, inputs), inputs, inference=True)
    bench.run(fn, inputs, workload="net-infer", case=case.id, backend=backend_name, samples=case.batch,
              references=refs, batch=case.batch)


def test_net_train_step(case, backend_name, bench):
    net, loss, inputs = case.make(bench.device)
    fn = bench.prepare(backend_name, "prepare_train_step", net, loss, inputs, lr=LR)
    refs = bench.references(backend_name, "prepare_train_step", (net, loss, inputs), inputs, lr=LR)
    bench.run(fn, inputs, workload="net-train", case=case.id, backend=backend_name, samples=case.batch,
              references=refs, batch=case.batch)
