"""``verify``: one case through backends, judged against eager and its float64 run; and the registry matrix."""
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..backends import Backend, Unsupported, get_backends, reference_for
from ..backends.base import to_cpu
from ..dims import infer_output_dims, mark_dims, marked_aliases, sizes_of
from ..nets import NetWithLoss
from ..programs import check_lr
from .audit import audit_rows, audited, compile_audit
from .precision import autocast_modules, check_autocast
from .progress import Progress
from .report import ParityReport, Row, _one_line, not_run_rows
from ..errors import ExportUnsupportedError
from .rule import (ERROR, FAIL, NONDET, UNCOMPILABLE, UNSUPPORTED, _bitwise_equal,
                   float64_case, judge)


def verify(net: Optional[nn.Module], loss: nn.Module, inputs: Any, target: Any,
           backends: Union[None, str, Sequence[str]] = None, **options: Any) -> ParityReport:
    """Run one case through backends and judge every output against eager.

    ``net`` None checks the loss alone (``inputs`` is then the prediction). ``inputs`` and
    ``target`` are a tensor or a tuple of tensors (targets in the order the loss's forward takes
    them). ``backends`` is a list or ``"a,b"`` (default: every backend; those that cannot run here
    say so). Options: ``lr`` (0.01, the train step's), ``label`` (the case's name in rows),
    ``spec`` (registry entry with ``tolerances``/``skips``; found by the loss's class if omitted),
    ``progress`` (True, a stream, or a :class:`Progress`), ``audit`` (False; True adds the
    torch.compile audit of the case, over :data:`AUDIT_BATCHES` made by repeating the given batch,
    through the first chosen ``audited`` backend, if any; a backend name audits through that one) and ``strict_audit`` (False; True fails the
    audit on every recompilation, user-avoidable or compiler-internal), ``settings`` (backend settings that
    change numerics, e.g. ``{"ort_opt_level": "basic", "ort_threads": 0,
    "emulate_precision_casts": True}``: each backend takes those it declares, see
    ``Backend.setting_defaults``), ``autocast`` (``torch.bfloat16``/``torch.float16``: net and loss
    run under ``torch.autocast``, parameters keep their dtype), ``dynamic_dims`` (one
    ``{dim index: symbol}`` dict per tensor of ``inputs + targets``: those dims are exported
    dynamic, and one preparation serves every size; tensors marked with
    :func:`compile_losses.dims.mark_dims` count too), ``sizes`` (what the row records as
    the sizes it ran; default the batch and every dynamic dim's size), ``require`` (backend names, a list or
    ``"a,b"``: their ``uncompilable``, ``graph-breaks`` and ``recompiles`` rows fail the report;
    others' do not).

    With ``optimizer`` (``"sgd"``, ``"adam"``, ``"adamw"``) it checks a training trajectory
    instead (:func:`compile_losses.parity.trajectory.verify_trajectory`): ``optimizer_args``
    (torch.optim's names), ``steps`` (32), ``accumulate`` (micro-batches per step, 1), ``seed``.
    """
    if options.get("optimizer") is not None:
        from .trajectory import verify_trajectory

        if net is None:
            raise ValueError("optimizer needs a net to train, got net=None")
        unknown = sorted(set(options) - {"optimizer", "optimizer_args", "steps", "accumulate", "seed", "label",
                                         "spec", "progress"})
        if unknown:
            raise TypeError("verify with an optimizer takes optimizer_args, steps, accumulate, seed, label, spec; "
                            "got {}".format(", ".join(unknown)))
        return verify_trajectory(net, loss, inputs, target, backends, optimizer=options["optimizer"],
                                 optimizer_args=options.get("optimizer_args"), steps=options.get("steps", 32),
                                 accumulate=options.get("accumulate", 1), seed=options.get("seed", 0),
                                 label=options.get("label"), spec=options.get("spec"))
    start = time.perf_counter()
    chosen = get_backends(backends)
    inputs = (inputs,) if isinstance(inputs, Tensor) else tuple(inputs)
    targets = (target,) if isinstance(target, Tensor) else tuple(target)
    from ..validate import check_case

    check_case(net, loss, inputs, targets)  # bad input: one named error before any backend runs
    if options.get("dynamic_dims") is not None:
        inputs, targets = marked_aliases(inputs, targets, options["dynamic_dims"])
    lr = check_lr(options.get("lr", 0.01))
    spec = options.get("spec") or _registry_spec(loss)
    label = options.get("label") or _label(net, loss, inputs)
    settings = check_settings(options.get("settings"))
    autocast = check_autocast(options.get("autocast"))
    axes = {"dtype": _dtype_name(next((t.dtype for t in inputs + targets if t.is_floating_point()), None)),
            "autocast": _dtype_name(autocast),
            "sizes": dict(options.get("sizes") or dict(
                {"batch": int(inputs[0].shape[0]) if inputs[0].dim() else 1}, **sizes_of(inputs + targets)))}
    if autocast is not None:
        net, loss = autocast_modules(net, loss, len(inputs), len(targets), autocast)
        label = "{} autocast={}".format(label, axes["autocast"])
    progress = options.get("progress")
    require = _required(options.get("require"))
    own_progress = progress is True or (progress is not None and not isinstance(progress, (bool, Progress)))
    if own_progress:
        progress = Progress(len(chosen), None if progress is True else progress)
    modes = [(m, m.training) for m in (net, loss) if m is not None]
    for m, _ in modes:
        m.eval()
    try:
        ref = _References(net, loss, inputs, targets, lr)
        rows: List[Row] = []
        for backend in chosen:
            if progress:
                progress.step("{:<18} {}".format(backend.name, label))
            for row in _backend_rows(backend, ref, label, spec, settings, require):
                row.dtype, row.autocast, row.sizes = axes["dtype"], axes["autocast"], axes["sizes"]
                rows.append(_with_precision_hint(row))
        audit = options.get("audit")
        auditor = audit if isinstance(audit, str) else (audited(chosen).name if audit and audited(chosen) else None)
        audits = [] if auditor is None else [compile_audit(
            ref.case_module, lambda n: tuple(a[torch.arange(n) % a.shape[0]] for a in ref.case_args), label=label,
            backend=auditor, strict=bool(options.get("strict_audit")))]
        rows += audit_rows(audits, require)
    finally:
        for m, mode in modes:
            m.train(mode)
        if own_progress:
            progress.close()
    case = {"case": label, "net": type(net).__name__ if net is not None else None, "loss": type(loss).__name__,
            "inputs": [[str(t.dtype).replace("torch.", ""), list(t.shape)] for t in inputs],
            "targets": [[str(t.dtype).replace("torch.", ""), list(t.shape)] for t in targets], "lr": lr,
            "dtype": axes["dtype"], "autocast": axes["autocast"], "sizes": axes["sizes"], "settings": settings}
    return ParityReport(rows, [case], audits, time.perf_counter() - start)


_PRECISION_HINT = ("; inductor ran with emulate_precision_casts=False, which keeps low-precision intermediates "
                   "in float32 where eager rounds them (pytorch 158699): try --compile-setting "
                   "emulate_precision_casts=true")


def _with_precision_hint(row: Row) -> Row:
    """A failing row of an inductor backend in bfloat16/float16 (or under autocast) with inductor's
    default rounding says which setting changes that (a hint only: the verdict stands)."""
    low = row.autocast is not None or row.dtype in ("bfloat16", "float16")
    if row.status == FAIL and low and (row.settings or {}).get("emulate_precision_casts") is False:
        row.detail += _PRECISION_HINT
    return row


def _dtype_name(dtype: Optional[torch.dtype]) -> Optional[str]:
    return None if dtype is None else str(dtype).replace("torch.", "")


def setting_names() -> List[str]:
    """Every setting some registered backend takes (``Backend.setting_defaults``)."""
    from ..backends import BACKENDS

    return sorted({k for b in BACKENDS.values() for k in b.setting_defaults})


def check_settings(settings: Any) -> Dict[str, Any]:
    """A dict of backend settings, every name one some backend takes (an error naming it otherwise)."""
    if settings is None:
        return {}
    if not isinstance(settings, dict):
        raise TypeError("settings must be a dict of backend settings, got {}".format(type(settings).__name__))
    known = setting_names()
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise ValueError("settings has unknown name(s) {} (backends take: {})".format(unknown, ", ".join(known)))
    return dict(settings)


def settings_runs(backends: Sequence[Backend], grid: Sequence[Dict[str, Any]]) -> List[Tuple[Dict[str, Any], List[str]]]:
    """Each settings combination of ``grid`` with the backends it changes: the first runs every
    backend, a later one only those whose applied settings it makes new (eager does not run again
    per onnxruntime level). Empty runs are dropped."""
    seen: Dict[str, List[Dict[str, Any]]] = {}
    runs: List[Tuple[Dict[str, Any], List[str]]] = []
    for settings in list(grid) or [{}]:
        settings = check_settings(settings)
        names = []
        for b in backends:
            applied = b.applied_settings(settings)
            if applied not in seen.setdefault(b.name, []):
                seen[b.name].append(applied)
                names.append(b.name)
        if names:
            runs.append((settings, names))
    return runs


def _required(require: Union[None, str, Sequence[str]]) -> Tuple[str, ...]:
    """Backend names from ``require`` (None, ``"a,b"`` or a list), each a registered backend."""
    if require is None:
        return ()
    names = [n.strip() for n in require.split(",")] if isinstance(require, str) else [str(n) for n in require]
    names = [n for n in names if n]
    return tuple(b.name for b in get_backends(names)) if names else ()


def _label(net: Optional[nn.Module], loss: nn.Module, inputs: Tuple[Tensor, ...]) -> str:
    name = type(loss).__name__ if net is None else "{}+{}".format(type(net).__name__, type(loss).__name__)
    return "{} {} batch={}".format(name, str(inputs[0].dtype).replace("torch.", ""), inputs[0].shape[0])


def _registry_spec(loss: nn.Module) -> Any:
    from ..registry import LOSSES

    for spec in LOSSES.values():
        if type(loss) is spec.module:
            return spec
    return None


class _References:
    """Eager results (run twice, compared bit for bit) and the float64 eager reference."""

    def __init__(self, net: Optional[nn.Module], loss: nn.Module, inputs: Tuple[Tensor, ...],
                 targets: Tuple[Tensor, ...], lr: float) -> None:
        self.net, self.loss, self.inputs, self.targets, self.lr = net, loss, inputs, targets, lr
        self.case_module: nn.Module = loss if net is None else NetWithLoss(net, loss, n_targets=len(targets))
        # The wrapper in the net's mode: a fresh module is in training mode, and an exporter that
        # restores "the model's mode" recursively would put the eval-mode net back in training.
        self.case_module.train(net.training if net is not None else loss.training)
        self.case_args = inputs + targets
        if net is None:
            pred = inputs[0]
        else:
            with torch.no_grad():
                pred = net(*inputs)
        pred = pred.detach()
        if net is not None and sizes_of(inputs):  # the prediction's dims follow the marked inputs'
            mark_dims(pred, infer_output_dims(net, inputs))
        self.lg_args = (pred,) + targets
        self.train = net is not None and any(p.requires_grad for p in net.parameters())
        eager = reference_for("cpu")
        self.first = _run_all(eager, self, self.case_module, loss, net, self.case_args, self.lg_args)
        self.second = _run_all(eager, self, self.case_module, loss, net, self.case_args, self.lg_args)
        self.nondeterministic = {k for k in self.first if k in self.second and not isinstance(self.first[k], Exception)
                                 and not _bitwise_equal(self.first[k], self.second[k])}
        net64, loss64, args64, lg64 = float64_case(net, loss, self.case_args, self.lg_args)
        case64 = loss64 if net64 is None else NetWithLoss(net64, loss64, n_targets=len(targets))
        self.float64 = _run_all(eager, self, case64, loss64, net64, args64, lg64)


def _run_all(backend: Backend, ref: _References, case_module: nn.Module, loss: nn.Module, net: Optional[nn.Module],
             case_args: Tuple[Tensor, ...], lg_args: Tuple[Tensor, ...]) -> Dict[str, Any]:
    """Every output of one backend, by name; a failure to prepare or run is stored as the exception."""
    out: Dict[str, Any] = {}
    try:
        out["loss"] = to_cpu(backend.prepare(case_module, case_args)(*case_args))
    except Exception as exc:  # reported as a row: the message, never a pass
        out["loss"] = exc
    try:
        value, dpred = backend.prepare_loss_and_grad(loss, lg_args)(*lg_args)
        out["lg.loss"], out["dpred"] = to_cpu(value), to_cpu(dpred)
    except Exception as exc:
        out["loss_and_grad"] = exc
    if ref.train:
        try:
            step = backend.prepare_train_step(net, loss, case_args, ref.lr)(*case_args)
            out["step.loss"] = to_cpu(step.loss)
            for name, g in step.grads.items():
                out["grad:" + name] = to_cpu(g)
            for name, p in step.new_params.items():
                out["new:" + name] = to_cpu(p)
        except Exception as exc:
            out["train_step"] = exc
    return out


def _backend_rows(backend: Backend, ref: _References, label: str, spec: Any,
                  settings: Optional[Dict[str, Any]] = None, require: Sequence[str] = ()) -> List[Row]:
    with backend.settings_scope(settings) as applied:
        rows = _settled_rows(backend, ref, label, spec, require)
    ort = {k: applied.pop(k) for k in ("ort_opt_level", "ort_threads") if k in applied}
    for row in rows:
        row.ort_opt_level, row.ort_threads = ort.get("ort_opt_level"), ort.get("ort_threads")
        row.settings = dict(applied)
    return rows


def _settled_rows(backend: Backend, ref: _References, label: str, spec: Any, require: Sequence[str] = ()) -> List[Row]:
    name = backend.name
    not_run = not_run_rows(backend, label, spec)
    if not_run:
        return not_run
    tolerance = (getattr(spec, "tolerances", {}) or {}).get(name)
    # the reference's rows: its second run judged against its first
    if backend is reference_for("cpu"):
        got = ref.second
    else:
        # a backend that chooses between its own compiled code and eager verifies the compiled code
        with backend.parity_mode():
            got = _run_all(backend, ref, ref.case_module, ref.loss, ref.net, ref.case_args, ref.lg_args)
    rows: List[Row] = []
    for output, value in got.items():
        if isinstance(value, Unsupported):
            rows.append(Row(label, name, output, UNSUPPORTED, detail=str(value)))
            continue
        if isinstance(value, ExportUnsupportedError):
            lg = ref.first.get("lg.loss")
            if output == "train_step" and isinstance(lg, Tensor) and lg.dim() != 0 and "scalar" in str(value):
                # the loss-and-gradient graph takes a cotangent; an exported train step has no upstream gradient
                rows.append(Row(label, name, output, UNSUPPORTED, detail="a non-scalar loss (shape {}): an exported "
                                "train step needs a scalar loss (reduction 'mean' or 'sum'): {}".format(
                                    tuple(lg.shape), _one_line(value))))
            else:  # the compiler cannot take the user's code: its message and the user's line
                rows.append(Row(label, name, output, UNCOMPILABLE, detail=str(value).splitlines()[0][:400],
                                required=name in require))
            continue
        if isinstance(value, Exception):
            rows.append(Row(label, name, output, ERROR, detail=_one_line(value)))
            continue
        expected = ref.first.get(output)
        if isinstance(expected, Exception) or expected is None:
            rows.append(Row(label, name, output, ERROR, detail="eager failed: {}".format(
                _one_line(expected) if expected is not None else "no such output in eager")))
            continue
        if output in ref.nondeterministic:
            rows.append(Row(label, name, output, NONDET, detail="eager run twice differs (bitwise)"))
            continue
        gradient = output.startswith(("dpred", "grad:"))
        rows.append(Row(label, name, output, **judge(value, expected, ref.float64[output], gradient=gradient,
                                                     tolerance=tolerance)))
    missing = [k for k in ref.first if k not in got and not any(isinstance(v, Exception) for v in got.values())]
    for output in missing:  # e.g. a train step that returns fewer gradients than the net has
        rows.append(Row(label, name, output, FAIL, detail="backend did not return this output"))
    return rows


def _args(case: Any) -> Tuple[Tensor, ...]:
    return tuple(case.inputs) + tuple(case.targets)


def verify_registry(losses: Optional[Sequence[str]] = None, net: Optional[str] = "seed", alone: bool = True,
                    net_cases: bool = True, batches: Sequence[int] = (1, 7, 64), large: int = 2 ** 20,
                    dtypes: Sequence[torch.dtype] = (torch.float32, torch.float64),
                    backends: Union[None, str, Sequence[str]] = None, audit: bool = True, lr: float = 0.01,
                    progress: Any = None, strict_audit: bool = False, autocasts: Sequence[Optional[torch.dtype]] = (None,),
                    settings_grid: Sequence[Dict[str, Any]] = ({},), dynamic_dims: bool = False) -> ParityReport:
    """Every registry loss (or ``losses``) with ``net`` and alone, at ``batches`` and, for the
    elementwise losses alone, at ``large`` elements; in each of ``dtypes``; plus (``net_cases``)
    each larger registry net with its representative loss. One module per (case, dtype) serves
    every batch size, so each backend prepares once per case and runs every batch.
    ``audit`` adds the torch.compile audit of each loss (float32); ``strict_audit`` fails it on
    compiler-internal recompilations too. ``autocasts``: each float32
    case also runs under ``torch.autocast`` in these dtypes (None: without); ``settings_grid``:
    backend settings combinations (see :func:`settings_runs`); ``dynamic_dims``: each case of a net
    that declares dynamic dims (registry ``NetSpec.dynamic_dims``) runs with them dynamic, at its
    declared shape and at each of its ``dynamic_sizes`` (one preparation serves them all)."""
    from ..registry import LOSSES, NETS
    from ..resolve import make_case

    names = list(LOSSES) if losses is None else list(losses)
    plan: List[Tuple[Optional[str], str, torch.dtype, List[int]]] = []
    for loss_name in names:
        spec = LOSSES.get(loss_name)
        for case_net in ([net] if net not in (None, "none") else []) + ([None] if alone else []):
            for dtype in dtypes:
                bs = list(batches)
                if case_net is None and spec is not None and spec.elementwise and large:
                    per_sample = int(torch.tensor(spec.feature_shape).prod())
                    bs.append(max(1, large // per_sample))
                plan.append((case_net, loss_name, dtype, bs))
    if net_cases and losses is None:
        for net_spec in NETS.values():
            if net_spec.name != net:
                plan += [(net_spec.name, net_spec.loss, dtype, list(batches)) for dtype in dtypes]
    chosen = get_backends(backends)
    auditor = audited(chosen) if audit else None
    audits = [n for n in names if n in LOSSES] if auditor is not None else []
    runs = [(a, st, names) for a in autocasts for st, names in settings_runs(chosen, settings_grid)]
    def sizes_of_net(case_net: Optional[str]) -> List[Optional[Dict[str, int]]]:
        spec = NETS.get(case_net) if dynamic_dims and case_net is not None else None
        return [None] if spec is None or not spec.dynamic_dims else [{}] + [dict(z) for z in spec.dynamic_sizes]

    steps = (sum(len(bs) * len(sizes_of_net(cn)) for cn, _, _, bs in plan) * sum(len(n) for *_, n in runs)
             + len(audits))
    bar = progress if isinstance(progress, Progress) else (Progress(steps, None if progress is True else progress)
                                                           if progress else None)
    report = ParityReport()
    start = time.perf_counter()
    try:
        for case_net, loss_name, dtype, bs in plan:
            case = make_case(case_net, loss_name, batch=bs[0], dtype=dtype)
            for n in bs:
                for sizes in sizes_of_net(case_net):
                    c = case if n == bs[0] else case.with_batch(n)
                    c = c if sizes is None else c.with_sizes(sizes)
                    for autocast, settings, names in runs:
                        if autocast is not None and dtype != torch.float32:
                            continue  # mixed precision: float32 parameters under autocast
                        report.extend(verify(c.net, c.loss, c.inputs, c.targets, names, lr=lr, label=c.label,
                                             progress=bar, autocast=autocast, settings=settings))
        for loss_name in audits:
            if bar:
                bar.step("compile audit {}".format(loss_name))
            case = make_case(None, loss_name, batch=1, dtype=torch.float32)
            report.audits.append(compile_audit(case.loss, lambda n, c=case: _args(c.with_batch(n)), label=loss_name,
                                               backend=auditor.name, strict=strict_audit))
    finally:
        if bar and bar is not progress:
            bar.close()
    report.rows += audit_rows(report.audits, required_all=True)  # the catalogue has no graph break
    report.seconds = time.perf_counter() - start
    return report
