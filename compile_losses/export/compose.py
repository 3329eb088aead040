"""The composer: :func:`export_bundle` writes every artifact into a staging folder (the writers,
the fixtures, the manifest last), checks it with the runtime alone, and installs it atomically."""
import copy
import datetime
import os
import re
import secrets
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ..errors import ExportError, UsageError
from .fixtures import TRAJECTORY_STEPS, _double, _fixtures, _np
from ..bundle_format import FAILED_SUFFIX, FORMAT_VERSION
from ..programs import check_lr
from .install import _NAME, _install, _out_dir, _step, recover
from .manifest import _versions, describe_module, write_manifest
from .writers import (write_aoti, write_forward_onnx, write_loss_and_grad_onnx, write_loss_onnx, write_npz,
                      write_optimizer_step_onnx, write_torchscript, write_train_step_onnx)


Say = Callable[[str], None]  # one line per step of an export


def validate_bundle(folder: Union[str, Path]) -> Any:
    """Load ``folder`` with :mod:`compile_losses.runtime` and re-run its fixtures. Returns the
    :class:`~compile_losses.runtime.CheckReport`; raises BundleError for a refused bundle."""
    from ..runtime import load_bundle

    return load_bundle(folder).check()


def _as_tuple(value: Any, what: str) -> Tuple[Tensor, ...]:
    items = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    if not items or not all(isinstance(t, Tensor) for t in items):
        raise TypeError("{} must be a tensor or a tuple of tensors, got {}".format(
            what, tuple(type(t).__name__ for t in items) if isinstance(value, (tuple, list)) else type(value).__name__))
    from ..dims import carry_dims

    return tuple(carry_dims(t, t.detach()) for t in items)


def _quiet(msg: str) -> None:
    pass


def export_bundle(net: Optional[nn.Module], loss: nn.Module, inputs: Any, target: Any,
                  out_dir: Union[str, Path] = "models", *, name: Optional[str] = None,
                  aoti: bool = True, torchscript: bool = True, training: bool = True, lr: float = 0.01,
                  parity: Any = True, net_info: Optional[Dict[str, Any]] = None,
                  loss_info: Optional[Dict[str, Any]] = None, progress: Optional[Say] = None,
                  install_failing: bool = False, optimizer: Optional[str] = None,
                  optimizer_args: Optional[Dict[str, Any]] = None,
                  dynamic_dims: Optional[List[Optional[Dict[int, str]]]] = None) -> "BundlePath":
    """Write the bundle for ``loss(net(*inputs), *target)`` to ``<out_dir>/<name>/`` and return it.

    Args:
        net, loss: modules; the net is exported in ``eval()`` mode (its mode is restored). ``net``
            None is the loss alone: ``inputs`` are the predictions, ``forward.onnx`` is the identity,
            there is no train step (nothing to train) and no AOTInductor package.
        inputs: the net's example input (a tensor or a tuple); dim 0 is the batch, exported dynamic.
        target: the loss's targets after the prediction (a tensor or a tuple).
        out_dir: parent folder of the bundle (created if missing).
        name: bundle folder name; default ``<net class>-<loss class>`` in lower case.
        aoti, torchscript: include the trusted-only ``forward.pt2`` / ``forward.pt`` + ``loss.pt``.
        training: include ``loss_and_grad.onnx`` and ``train_step.onnx`` (SGD with rate ``lr`` in fixtures).
        parity: True runs :func:`compile_losses.verify` over the bundle's backends and embeds its
            summary; a list names the backends; False skips it (recorded as skipped).
        net_info, loss_info: manifest descriptions (import path, init args); default from the modules.
        progress: called with one line per step (the CLI prints them to stderr).
        install_failing: install a bundle that fails parity (or a trusted artifact's check) at
            ``<out_dir>/<name>`` all the same; by default it goes to ``<name>.failed`` beside it,
            so a good bundle is never replaced by a failing one.
        optimizer, optimizer_args: ``"sgd" | "adam" | "adamw"`` and its arguments
            (:func:`compile_losses.optim.optimizer`: torch.optim's names and defaults): then
            ``train_step.onnx`` carries that optimizer's update, its state and hyper-parameters as
            graph inputs and outputs (``bundle.trainer()`` runs it), the manifest records them, and
            the fixtures hold a short trajectory (:data:`TRAJECTORY_STEPS` steps) that ``check()``
            re-runs. Without it the train step is one plain SGD step with rate ``lr``.
        dynamic_dims: one ``{dim index: symbol}`` per tensor of ``inputs + target`` (a shorter list
            leaves the rest): those dims are exported dynamic (a sequence length, an image size),
            recorded by symbol in the manifest's shapes and its ``dynamic_dims``, and the runtime
            takes any size there. Tensors marked with :func:`compile_losses.dims.mark_dims` count too.

    Returns:
        :class:`BundlePath`: the folder, with ``.report`` (the parity report), ``.manifest``,
        ``.failures`` and ``.ok``.

    Raises:
        ExportError: the forward or loss graph could not be exported, or the written bundle failed
            its own check; the destination is unchanged. (Optional parts that cannot be built, e.g.
            a gradient graph for an op without an ONNX form, are left out and listed under
            ``unavailable`` in the manifest with the reason.)
    """
    say = progress or _quiet
    alone = net is None  # the loss alone: the inputs are the predictions, the net the identity
    if alone:
        net = nn.Identity()
        aoti = False  # an AOTInductor build of the identity would only cost its 20-40 s
        if net_info is None:
            net_info = dict(describe_module(net), alone=True,
                            note="the loss alone: forward.onnx is the identity, its input the prediction")
    if not isinstance(net, nn.Module) or not isinstance(loss, nn.Module):
        raise TypeError("net and loss must be torch.nn.Module instances, got {} and {}".format(
            type(net).__name__, type(loss).__name__))
    lr = check_lr(lr)
    opt = _optimizer(optimizer, optimizer_args, training)
    inputs_t, targets_t = _as_tuple(inputs, "inputs"), _as_tuple(target, "target")
    if dynamic_dims is not None:
        from ..dims import marked_aliases

        inputs_t, targets_t = marked_aliases(inputs_t, targets_t, dynamic_dims)
    from ..validate import check_case

    check_case(net, loss, inputs_t, targets_t, finite=True)  # bad input: a named error, before any export
    if name is None:
        name = "{}-{}".format(type(net).__name__.lower(), re.sub(r"loss$", "", type(loss).__name__.lower()) or "loss")
    if not _NAME.match(name):
        raise UsageError("name must be 1-100 letters, digits, '_', '-' or '.', not starting with '.', got {!r}".format(name), argument="name")
    out = _out_dir(out_dir)
    recover(out, name)
    _step("start")
    staging = out / ".{}.tmp-{}-{}".format(name, os.getpid(), secrets.token_hex(4))
    staging.mkdir()
    _step("staging-created")
    modes = (net.training, loss.training)
    net.eval()
    loss.eval()
    try:
        manifest, parity_report = _build(net, loss, inputs_t, targets_t, staging, name, aoti=aoti,
                                         torchscript=torchscript, training=training, lr=lr, parity=parity,
                                         net_info=net_info, loss_info=loss_info, say=say, opt=opt, alone=alone)
        say("validating the bundle with the runtime alone")
        report = validate_bundle(staging)
        _step("validated")
        if not report.ok:
            raise ExportError("the written bundle fails its own fixtures:\n{}".format(report))
        failures = failing_parts(manifest)
        # A bundle that fails parity is never installed where consumers load the good one from: it
        # goes beside it, named <name>.failed, unless the caller asks for it (install_failing).
        dest = out / (name if not failures or install_failing else name + FAILED_SUFFIX)
        say("installing {}{}".format(dest, " (parity FAILED: {})".format(", ".join(failures)) if failures else ""))
        _install(staging, dest)
        _step("done")
        say("wrote {} ({} artifacts)".format(dest, len(manifest["artifacts"])))
        return BundlePath.of(dest, parity_report, manifest, failures)
    finally:
        net.train(modes[0])
        loss.train(modes[1])
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _optimizer(name: Optional[str], args: Optional[Dict[str, Any]], training: bool) -> Any:
    """The validated :class:`compile_losses.optim.Optimizer`, or None for the plain SGD step."""
    if name is None:
        if args:
            raise UsageError("optimizer_args needs optimizer ('sgd', 'adam' or 'adamw'), got optimizer=None",
                             argument="optimizer_args")
        return None
    if not training:
        raise UsageError("optimizer={!r} needs training=True (the optimizer lives in train_step.onnx)".format(name),
                         argument="optimizer")
    if args is not None and not isinstance(args, dict):
        raise TypeError("optimizer_args must be a dict, got {}".format(type(args).__name__))
    from ..optim import optimizer as make_optimizer

    return make_optimizer(name, **dict(args or {}))


def failing_parts(manifest: Dict[str, Any]) -> List[str]:
    """What fails in a built bundle: the parity report, and each trusted-only artifact whose check
    against eager failed."""
    out = []
    parity = manifest.get("parity")
    if isinstance(parity, dict) and parity.get("ok") is False:
        out.append("parity ({} failing rows)".format(parity.get("failures", "?")))
    out += ["{} check".format(a["path"]) for a in manifest["artifacts"]
            if a.get("check", {}).get("status", "pass") != "pass"]
    return out


class BundlePath(type(Path())):  # type: ignore[misc]
    """The installed bundle's folder (a :class:`pathlib.Path`), carrying what the export found:
    ``report`` (the :class:`~compile_losses.parity.ParityReport`, None when parity was skipped),
    ``manifest`` and ``failures`` (empty when everything passed; then ``ok`` is True)."""

    report: Any = None
    manifest: Dict[str, Any] = {}
    failures: List[str] = []

    @classmethod
    def of(cls, path: Path, report: Any, manifest: Dict[str, Any], failures: List[str]) -> "BundlePath":
        self = cls(path)  # attributes set after: Path's constructor takes path parts only
        self.report, self.manifest, self.failures = report, manifest, list(failures)
        return self

    @property
    def ok(self) -> bool:
        return not self.failures


def _build(net: nn.Module, loss: nn.Module, inputs: Tuple[Tensor, ...], targets: Tuple[Tensor, ...], folder: Path,
           name: str, *, aoti: bool, torchscript: bool, training: bool, lr: float, parity: Any,
           net_info: Optional[Dict[str, Any]], loss_info: Optional[Dict[str, Any]], say: Say,
           opt: Any = None, alone: bool = False) -> Dict[str, Any]:
    start = time.perf_counter()
    from ..dims import infer_output_dims, mark_dims, sizes_of

    with torch.no_grad():
        pred = net(*inputs).detach()
    mark_dims(pred, infer_output_dims(net, inputs))  # the prediction's dims follow the inputs'
    entries: Dict[str, Dict[str, Any]] = {}
    unavailable: List[Dict[str, str]] = []
    timings: Dict[str, float] = {}

    def attempt(kind: str, what: str, write: Callable[[], Dict[str, Any]], optional: bool) -> None:
        say(what)
        t0 = time.perf_counter()
        try:
            entries[kind] = write()
        except Exception as exc:
            from ..training import ExportUnsupportedError

            first = re.sub(r"\x1b\[[0-9;]*m", "", (str(exc).strip().splitlines() or [type(exc).__name__])[0])
            if not optional:
                raise ExportError("{} failed: {}: {}".format(what, type(exc).__name__, first)) from exc
            if not isinstance(exc, (ExportUnsupportedError, ValueError, RuntimeError)):
                raise
            unavailable.append({"kind": kind, "reason": first})
            say("  unavailable: " + first)
        timings[kind] = round(time.perf_counter() - t0, 3)
        _step(kind)

    attempt("forward", "exporting forward.onnx", lambda: write_forward_onnx(net, inputs, folder), False)
    attempt("loss", "exporting loss.onnx", lambda: write_loss_onnx(loss, pred, targets, folder), False)
    if training:
        attempt("loss_and_grad", "exporting loss_and_grad.onnx",
                lambda: write_loss_and_grad_onnx(loss, pred, targets, folder), True)
        if alone:
            unavailable.append({"kind": "train_step", "reason": "the loss alone (no net): no parameters to train"})
        elif opt is None:
            attempt("train_step", "exporting train_step.onnx",
                    lambda: write_train_step_onnx(net, loss, inputs, targets, folder), True)
        else:  # asked for by name: a train step that cannot be built fails the export
            attempt("train_step", "exporting train_step.onnx ({})".format(opt.name),
                    lambda: write_optimizer_step_onnx(net, loss, inputs, targets, opt, folder), False)
    if torchscript:
        attempt("torchscript_forward", "writing forward.pt (TorchScript)",
                lambda: write_torchscript(net, inputs, folder / "forward.pt", "torchscript_forward"), True)
        attempt("torchscript_loss", "writing loss.pt (TorchScript)",
                lambda: write_torchscript(loss, (pred,) + targets, folder / "loss.pt", "torchscript_loss"), True)
    if aoti:
        attempt("aoti_forward", "building forward.pt2 (AOTInductor, about 20-40 s)",
                lambda: write_aoti(net, inputs, folder), True)
    _check_trusted(net, loss, inputs, pred, targets, entries, folder, say)
    _record_class_ranges(loss, pred, inputs, targets, entries)
    if "train_step" in entries:
        state = dict(net.named_parameters())
        entries["params"] = write_npz({n: _np(state[n]) for n in _step_params(entries["train_step"], opt)},
                                      folder / "params.npz", "params")
        _step("params")
    say("computing fixtures (eager float32 and float64 references)")
    entries["fixtures"] = write_npz(_fixtures(net, loss, inputs, targets, entries, lr, opt), folder / "fixtures.npz",
                                    "fixtures")
    _step("fixtures")
    parity_summary, report = _parity(None if alone else net, loss, inputs, targets, entries, parity, say, lr, opt)
    _step("parity")
    forward, loss_entry = entries["forward"], entries["loss"]
    manifest = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "versions": _versions(),
        "net": net_info or describe_module(net),
        "loss": loss_info or describe_module(loss),
        "inputs": forward["inputs"],
        "targets": loss_entry["inputs"][1:],
        "outputs": forward["outputs"],
        "loss_output": loss_entry["outputs"],
        # dims beyond the batch that take any size, by symbol (the shapes above name them)
        "dynamic_dims": sorted(sizes_of(inputs + targets)),
        "train_step": _train_step_record(entries, lr, opt),
        "artifacts": list(entries.values()),
        "unavailable": unavailable,
        "parity": parity_summary,
        "export_seconds": dict(timings, total=round(time.perf_counter() - start, 3)),
    }
    write_manifest(folder, manifest)
    _step("manifest")
    return manifest, report


def _step_params(entry: Dict[str, Any], opt: Any) -> List[str]:
    """The parameters params.npz holds: every one the train step reads (trained, then frozen)."""
    roles = entry["roles"]
    return list(roles["params"]) + list(roles["frozen"]) if opt is not None else [p["name"] for p in roles["params"]]


def _train_step_record(entries: Dict[str, Any], lr: float, opt: Any) -> Optional[Dict[str, Any]]:
    """The manifest's ``train_step``: the optimizer, its arguments and state names (and the
    trajectory's length), or the plain SGD step's fixture rate."""
    if "train_step" not in entries:
        return None
    if opt is None:
        return {"optimizer": "sgd", "fixture_lr": lr}
    return {"optimizer": opt.name, "optimizer_args": opt.args,
            "state": list(opt.state_names), "trajectory_steps": TRAJECTORY_STEPS}


def _record_class_ranges(loss: nn.Module, pred: Tensor, inputs: Tuple[Tensor, ...], targets: Tuple[Tensor, ...],
                         entries: Dict[str, Dict[str, Any]]) -> None:
    """Class-index targets get ``classes`` (C) and ``ignore_index`` in each graph's input entry,
    so the runtime can refuse an index out of range by name (a graph would read garbage)."""
    from ..validate import class_index_ranges

    for i, r in class_index_ranges(loss, pred, targets).items():
        for kind in ("loss", "loss_and_grad"):
            if kind in entries:
                entries[kind]["inputs"][1 + i].update(r)
        if "train_step" in entries:
            roles = entries["train_step"]["roles"]
            data = roles["data"] if "data" in roles else [roles.get("input", "x")] + list(roles["targets"])
            name = data[len(inputs) + i]
            next(s for s in entries["train_step"]["inputs"] if s["name"] == name).update(r)


# The default parity run: the backends that declare they check one of the bundle's artifacts
# (checks_artifacts). An AOTInductor backend's rows would rebuild three packages (~1.5 min here):
# the written forward.pt2 is judged directly instead (_check_trusted).
def _artifact_backends(entries: Dict[str, Any]) -> List[str]:
    from ..backends import BACKENDS

    return [b.name for b in BACKENDS.values() if set(b.checks_artifacts) & set(entries)]


def _check_trusted(net: nn.Module, loss: nn.Module, inputs: Tuple[Tensor, ...], pred: Tensor,
                   targets: Tuple[Tensor, ...], entries: Dict[str, Dict[str, Any]], folder: Path, say: Say) -> None:
    """Load each written trusted-only file back and judge its output by the parity rule against
    eager and float64 eager; the verdict goes into its manifest entry as ``check``."""
    from ..parity import judge

    checks = {"torchscript_forward": (net, inputs), "torchscript_loss": (loss, (pred,) + targets),
              "aoti_forward": (net, inputs)}
    for kind, (module, args) in checks.items():
        if kind not in entries:
            continue
        path = folder / entries[kind]["path"]
        if kind.startswith("torchscript"):
            from ..backends.torchscript import load_torchscript

            runner = load_torchscript(path)
        else:
            from ..training import load_package

            runner = load_package(str(path))
        with torch.no_grad():
            got = runner(*[a.contiguous() for a in args])
            got = got[0] if isinstance(got, (list, tuple)) else got
            expected = module(*args)
            ref = copy.deepcopy(module).double()(*map(_double, args))
        verdict = judge(got, expected, ref)
        entries[kind]["check"] = {k: verdict.get(k) for k in ("status", "clause", "max_abs", "err_backend64",
                                                               "err_eager64", "detail") if verdict.get(k) not in (None, "")}
        say("  {} judged against eager: {}".format(path.name, verdict["status"]))


# A bundle's optimizer is checked as a trajectory of this many steps (verify's default), on fresh
# batches from the example's rows, against eager torch.optim by the float64 rule.
PARITY_TRAJECTORY_STEPS = 32


def _parity(net: Optional[nn.Module], loss: nn.Module, inputs: Tuple[Tensor, ...], targets: Tuple[Tensor, ...],
            entries: Dict[str, Any], parity: Any, say: Say, lr: float, opt: Any = None) -> Dict[str, Any]:
    if parity is False:
        return {"status": "skipped"}, None
    from ..parity import ParityReport, verify

    backends = list(parity) if isinstance(parity, (list, tuple)) else _artifact_backends(entries)
    say("verifying parity against eager: {}".format(", ".join(backends)))
    progress_stream = sys.stderr if say is not _quiet else None
    report = verify(net, loss, inputs, targets, backends=backends, lr=lr, progress=progress_stream)
    if opt is not None and net is not None:
        # the bundle's train step is this optimizer's: check its trajectory, not only the SGD step
        say("verifying the {} trajectory ({} steps) against eager torch.optim: {}".format(
            opt.name, PARITY_TRAJECTORY_STEPS, ", ".join(backends)))
        trajectory = verify(net, loss, inputs, targets, backends=backends, optimizer=opt.name,
                            optimizer_args=opt.args, steps=PARITY_TRAJECTORY_STEPS)
        report = ParityReport(report.rows + trajectory.rows, report.cases + trajectory.cases, report.audits,
                              report.seconds + trajectory.seconds)
    summary = dict(report.summary())
    summary.setdefault("backends", backends)
    return summary, report
