"""SeedNet with MSE at batch 10 (overhead-bound: read in microseconds per call) and 4096: the
inference loss (under ``torch.no_grad()``), a whole train step (forward, loss, backward, SGD update), and the time to prepare
a compiled train step with a cold and a warm compiler cache. Every round of a non-eager backend is
paired with an eager call of the same work (see ``Bench.run``)."""
from compile_losses.nets import NetWithLoss

LR = 0.01


def test_seed_inference(case, backend_name, bench):
    net, loss, inputs = case.make(bench.device)
    module = NetWithLoss(net, loss)
    fn = bench.prepare(backend_name, "prepare", module, inputs, inference=True)
    refs = bench.references(backend_name, "prepare", (module, inputs), inputs, inference=True)
    bench.run(fn, inputs, workload="seed-infer", case=case.id, backend=backend_name, samples=case.batch,
              references=refs, batch=case.batch)


def test_seed_train_step(case, backend_name, bench):
    net, loss, inputs = case.make(bench.device)
    fn = bench.prepare(backend_name, "prepare_train_step", net, loss, inputs, lr=LR)
    refs = bench.references(backend_name, "prepare_train_step", (net, loss, inputs), inputs, lr=LR)
    bench.run(fn, inputs, workload="seed-train", case=case.id, backend=backend_name, samples=case.batch,
              references=refs, batch=case.batch)


def test_compile_time(case, backend_name, phase, bench, compile_cache):
    """Seconds from an uncompiled (net, loss) to the first result: prepare plus first call."""
    temperature, kind = phase.split("-")
    net, loss, inputs = case.make(bench.device)

    def prepare_and_call():
        if kind == "train":
            fn = bench.prepare(backend_name, "prepare_train_step", net, loss, inputs, lr=LR)
        else:
            fn = bench.prepare(backend_name, "prepare", NetWithLoss(net, loss), inputs, inference=True)
        return fn(*inputs)

    if temperature == "warm":
        warm_dir = compile_cache.root / "warm"
        compile_cache.use(warm_dir)
        prepare_and_call()  # populates the on-disk caches, untimed
        setup = lambda: compile_cache.use(warm_dir)  # noqa: E731  (in-memory caches cleared, disk kept)
    else:
        setup = compile_cache.fresh
    bench.run_rounds(prepare_and_call, setup, bench.compile_rounds, workload="compile-" + phase, case=case.id,
                     backend=backend_name, samples=case.batch, batch=case.batch)
