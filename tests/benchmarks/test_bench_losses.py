"""Each loss alone at a large size, forward and forward+backward, through every backend; and the
streaming triad over the same elements, measured in the same run as the memory roofline.

Bytes per call: the prediction and targets read, plus the gradient written (forward+backward).
The triad ``torch.add(x, y, out=z)`` reads two and writes one tensor of the prediction's size: the
same traffic as a two-input loss's forward+backward, with no arithmetic and no allocation. Every
round of a loss is paired with a triad call and an eager call (see ``Bench.run``).
"""


def test_loss_forward(case, backend_name, bench):
    loss, inputs = case.make(bench.device)
    fn = bench.prepare(backend_name, "prepare", loss, inputs)
    refs = bench.references(backend_name, "prepare", (loss, inputs), inputs, triad_numel=case.numel)
    bench.run(fn, inputs, workload="loss-fwd", case=case.id, backend=backend_name, samples=case.batch,
              bytes_per_call=bench.nbytes(inputs), references=refs, numel=case.numel, loss=case.loss)


def test_loss_forward_backward(case, backend_name, bench):
    bench.mark_memory()
    loss, inputs = case.make(bench.device)
    fn = bench.prepare(backend_name, "prepare_loss_and_grad", loss, inputs)
    refs = bench.references(backend_name, "prepare_loss_and_grad", (loss, inputs), inputs, triad_numel=case.numel)
    bench.run(fn, inputs, workload="loss-fwdbwd", case=case.id, backend=backend_name, samples=case.batch,
              bytes_per_call=bench.nbytes(inputs) + bench.nbytes(inputs[:1]), peak_memory=True, references=refs,
              numel=case.numel, loss=case.loss)


def test_triad(device, numel, bench):
    buffers = bench.triad_buffers(numel)
    bench.run(bench.triad, buffers, workload="triad", case="n{}".format(numel), backend="triad", samples=numel,
              bytes_per_call=3 * bench.nbytes(buffers[:1]), numel=numel)
