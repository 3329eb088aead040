"""Deployment bundles: export writes, validation checks, :func:`export_bundle` composes them and
installs the result atomically.

Writing a bundle ``<out_dir>/<name>/``:

1. every artifact is written into a staging folder beside the destination
   (``<out_dir>/.<name>.tmp-<pid>-<random>``), ``manifest.json`` last;
2. the staging folder is checked with the runtime alone (:func:`validate_bundle`: checksums,
   paths, fixtures re-run by the parity rule); a bundle that fails is never installed;
3. under an exclusive lock on ``out_dir``, the staging folder is swapped with the destination in
   one ``renameat2(RENAME_EXCHANGE)`` (where the OS lacks it: old aside, new in, with recovery),
   then the old bundle is deleted.

A crash at any point leaves the destination holding the old complete bundle or the new complete
one; the leftovers of a dead export (named with its pid) are removed by the next export or by
:func:`recover`. An export that fails with an exception removes its own staging folder.
"""
import contextlib
import copy
import ctypes
import datetime
import errno
import fcntl
import hashlib
import io
import json
import os
import platform
import re
import secrets
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from . import __version__
from .errors import UsageError

FORMAT_VERSION = 1
TRUSTED_KINDS = {"torchscript_forward": ".pt", "torchscript_loss": ".pt", "aoti_forward": ".pt2"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<what>tmp|old)-(?P<pid>\d+)-[0-9a-f]+$")

Progress = Callable[[str], None]
# Test hook: called with a label at every step of an export (the kill tests os._exit() in it).
_STEP_HOOK: Optional[Callable[[str], None]] = None


class ExportError(RuntimeError):
    """An export that could not produce a valid bundle; the destination is unchanged."""


def _step(label: str) -> None:
    if _STEP_HOOK is not None:
        _STEP_HOOK(label)


# ---------------------------------------------------------------------------------------------
# writers: each writes one artifact into the staging folder and returns its manifest entry
# ---------------------------------------------------------------------------------------------
def _onnx_signature(path: Path) -> Tuple[int, List[Dict[str, Any]], List[Dict[str, Any]]]:
    """Opset and (name, dtype, shape) of a written ONNX graph; every symbolic dim becomes "N"
    (only the batch is exported dynamic)."""
    import onnx

    model = onnx.load(str(path))
    onnx.checker.check_model(model)

    def io_(values: Any) -> List[Dict[str, Any]]:
        out = []
        for v in values:
            t = v.type.tensor_type
            shape = ["N" if d.HasField("dim_param") else int(d.dim_value) for d in t.shape.dim]
            out.append({"name": v.name, "dtype": str(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)), "shape": shape})
        return out

    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    return opset, io_(model.graph.input), io_(model.graph.output)


def _export_onnx(module: nn.Module, example: Tuple[Tensor, ...], input_names: List[str],
                 output_names: List[str], path: Path) -> None:
    """The forward and loss graphs come from the onnx backend's exporter (one export path for
    parity and bundles); only the graph's input and output names are set here, for the manifest."""
    from .backends.onnx import export_onnx

    model = export_onnx(module, example)
    _rename_io(model, input_names, output_names)
    path.write_bytes(model.SerializeToString())


def _rename_io(model: Any, inputs: List[str], outputs: List[str]) -> None:
    graph = model.graph
    old = [v.name for v in graph.input] + [v.name for v in graph.output]
    new = list(inputs) + list(outputs)
    if len(old) != len(new):
        raise ExportError("the exported graph has {} inputs and {} outputs, expected {} and {}".format(
            len(graph.input), len(graph.output), len(inputs), len(outputs)))
    mapping = {a: b for a, b in zip(old, new) if a != b}
    if not mapping:
        return
    taken = {n for node in graph.node for n in list(node.input) + list(node.output)} | {t.name for t in graph.initializer}
    clash = (set(new) - set(old)) & taken
    if clash:
        raise ExportError("cannot name graph inputs/outputs {}: the graph already uses them".format(sorted(clash)))
    for v in list(graph.input) + list(graph.output) + list(graph.value_info):
        v.name = mapping.get(v.name, v.name)
    for node in graph.node:
        node.input[:] = [mapping.get(n, n) for n in node.input]
        node.output[:] = [mapping.get(n, n) for n in node.output]


def _onnx_entry(path: Path, kind: str, **extra: Any) -> Dict[str, Any]:
    opset, inputs, outputs = _onnx_signature(path)
    entry = {"path": path.name, "kind": kind, "opset": opset, "inputs": inputs, "outputs": outputs}
    entry.update(extra)
    return entry


def write_forward_onnx(net: nn.Module, inputs: Tuple[Tensor, ...], folder: Path) -> Dict[str, Any]:
    path = folder / "forward.onnx"
    _export_onnx(net, inputs, _input_names(len(inputs)), ["pred"], path)
    return _onnx_entry(path, "forward")


def write_loss_onnx(loss: nn.Module, pred: Tensor, targets: Tuple[Tensor, ...], folder: Path) -> Dict[str, Any]:
    from .training._trace import target_names

    path = folder / "loss.onnx"
    _export_onnx(loss, (pred,) + targets, ["pred"] + target_names(loss, len(targets)), ["loss"], path)
    return _onnx_entry(path, "loss")


def write_loss_and_grad_onnx(loss: nn.Module, pred: Tensor, targets: Tuple[Tensor, ...], folder: Path) -> Dict[str, Any]:
    from .training import export_loss_and_grad_onnx

    path = folder / "loss_and_grad.onnx"
    export_loss_and_grad_onnx(loss, (pred,) + targets, str(path))
    return _onnx_entry(path, "loss_and_grad")


def write_train_step_onnx(net: nn.Module, loss: nn.Module, inputs: Tuple[Tensor, ...], targets: Tuple[Tensor, ...],
                          folder: Path) -> Dict[str, Any]:
    from .training import export_train_step_onnx

    path = folder / "train_step.onnx"
    info = export_train_step_onnx(net, loss, inputs + targets, str(path))
    roles = {"params": info["params"], "data": [i["name"] for i in info["inputs"] if i.get("role") in ("input", "target")],
             "lr": next(i["name"] for i in info["inputs"] if i.get("role") == "lr"), "loss": info["outputs"][0]["name"]}
    return _onnx_entry(path, "train_step", roles=roles, optimizer=info.get("optimizer"))


def write_torchscript(module: nn.Module, example: Tuple[Tensor, ...], path: Path, kind: str) -> Dict[str, Any]:
    """TorchScript by ``torch.jit.script``, as the script backend makes it (``trace`` as the trace
    backend does, for modules that do not script; the manifest says which)."""
    from .backends.base import export_example
    from .backends.torchscript import _quiet_jit

    with _quiet_jit():
        try:
            scripted, method = torch.jit.script(module), "script"
        except Exception as exc:  # TorchScript's frontend raises many types for unsupported Python
            scripted = torch.jit.trace(module, export_example(example), check_trace=False)
            method = "trace (script failed: {})".format((str(exc).strip().splitlines() or [type(exc).__name__])[0][:200])
        scripted.save(str(path))
    return {"path": path.name, "kind": kind, "trusted_only": True, "method": method}


def write_aoti(net: nn.Module, inputs: Tuple[Tensor, ...], folder: Path) -> Dict[str, Any]:
    """The net's forward as an AOTInductor package, built by the aoti backend (native code:
    trusted-only, and only for this torch version and platform)."""
    from .backends.aoti import export_aoti

    path = folder / "forward.pt2"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
        export_aoti(net, inputs, package_path=str(path))
    return {"path": path.name, "kind": "aoti_forward", "trusted_only": True,
            "torch": torch.__version__, "platform": "{}-{}".format(sys.platform, platform.machine())}


def write_npz(arrays: Dict[str, np.ndarray], path: Path, kind: str) -> Dict[str, Any]:
    np.savez(str(path), **arrays)
    return {"path": path.name, "kind": kind, "arrays": len(arrays)}


# ---------------------------------------------------------------------------------------------
# fixtures: eager float32 outputs and float64 references, by plain autograd (independent of the
# traced graphs they check)
# ---------------------------------------------------------------------------------------------
def _np(t: Tensor) -> np.ndarray:
    return t.detach().cpu().contiguous().numpy()


def _double(t: Tensor) -> Tensor:
    return t.detach().double() if t.is_floating_point() else t.detach()


def _fixtures(net: nn.Module, loss: nn.Module, inputs: Tuple[Tensor, ...], targets: Tuple[Tensor, ...],
              entries: Dict[str, Dict[str, Any]], lr: float) -> Dict[str, np.ndarray]:
    net64, loss64 = copy.deepcopy(net).double(), copy.deepcopy(loss).double()
    inputs64, targets64 = tuple(map(_double, inputs)), tuple(map(_double, targets))
    out: Dict[str, np.ndarray] = {}

    def put(kind: str, feeds: Sequence[Tensor], eager: Sequence[Tensor], ref: Sequence[Tensor]) -> None:
        e = entries[kind]
        for spec, t in zip(e["inputs"], feeds):
            out["{}/in/{}".format(kind, spec["name"])] = _np(t)
        for spec, a, b in zip(e["outputs"], eager, ref):
            out["{}/eager/{}".format(kind, spec["name"])] = _np(a)
            out["{}/ref64/{}".format(kind, spec["name"])] = _np(b)

    with torch.no_grad():
        pred, pred64 = net(*inputs), net64(*inputs64)
        put("forward", inputs, [pred], [pred64])
        put("loss", (pred,) + targets, [loss(pred, *targets)], [loss64(pred64.detach(), *targets64)])

    def value_and_grad(fn: nn.Module, p: Tensor, ts: Tuple[Tensor, ...]) -> Tuple[Tensor, Tensor]:
        p = p.detach().clone().requires_grad_(True)
        value = fn(p, *ts)
        return value, torch.autograd.grad(value, p)[0]

    if "loss_and_grad" in entries:
        # the float64 reference runs on the float32 prediction widened, so both see one input
        put("loss_and_grad", (pred,) + targets, value_and_grad(loss, pred, targets),
            value_and_grad(loss64, _double(pred), targets64))
    if "train_step" in entries:
        roles = entries["train_step"]["roles"]

        def step(n: nn.Module, l: nn.Module, xs: Tuple[Tensor, ...], ts: Tuple[Tensor, ...]) -> List[Tensor]:
            state = dict(n.named_parameters())
            params = [state[p["name"]] for p in roles["params"]]
            value = l(n(*xs), *ts)
            grads = torch.autograd.grad(value, params)
            return [value] + list(grads) + [p.detach() - lr * g for p, g in zip(params, grads)]

        state = dict(net.named_parameters())
        lr_t = torch.tensor(lr, dtype=state[roles["params"][0]["name"]].dtype)
        feeds = [state[p["name"]] for p in roles["params"]] + list(inputs) + list(targets) + [lr_t]
        net64_step = copy.deepcopy(net).double()  # from the float32 weights widened, like net64
        put("train_step", feeds, step(net, loss, inputs, targets), step(net64_step, loss64, inputs64, targets64))
    return out


# ---------------------------------------------------------------------------------------------
# manifest
# ---------------------------------------------------------------------------------------------
def _input_names(count: int) -> List[str]:
    return ["x"] if count == 1 else ["x{}".format(i) for i in range(count)]


def _jsonable(value: Any) -> Any:
    if isinstance(value, Tensor):
        return {"tensor": value.detach().cpu().tolist(), "dtype": str(value.dtype).replace("torch.", "")}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return repr(value)


def describe_module(module: nn.Module, init_args: Optional[Dict[str, Any]] = None,
                    registry_name: Optional[str] = None) -> Dict[str, Any]:
    """Import path and init arguments of a net or loss, for the manifest. Without ``init_args``
    they are read back from attributes named like the constructor's parameters (how our modules
    store their settings); ``init_args_complete`` says whether every parameter was found."""
    cls = type(module)
    out: Dict[str, Any] = {"import_path": "{}:{}".format(cls.__module__, cls.__qualname__)}
    if registry_name:
        out["registry_name"] = registry_name
    if init_args is not None:
        out["init_args"], out["init_args_complete"] = _jsonable(init_args), True
        return out
    import inspect

    found, complete = {}, True
    try:
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    except (TypeError, ValueError):
        params = []
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if hasattr(module, p.name):
            found[p.name] = getattr(module, p.name)
        elif hasattr(module, "_" + p.name):
            found[p.name] = getattr(module, "_" + p.name)
        else:
            complete = False
    out["init_args"], out["init_args_complete"] = _jsonable(found), complete
    return out


def _versions() -> Dict[str, str]:
    import onnx
    import onnxruntime

    return {"python": platform.python_version(), "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "numpy": np.__version__, "compile_losses": __version__}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(folder: Path, manifest: Dict[str, Any]) -> Path:
    """Hash every artifact, then write ``manifest.json`` (temp name, fsync, rename: last file)."""
    for entry in manifest["artifacts"]:
        path = folder / entry["path"]
        _fsync(path)
        entry["sha256"], entry["bytes"] = _sha256(path), path.stat().st_size
        _step("hashed " + entry["path"])
    tmp = folder / ".manifest.json.part"
    with open(tmp, "w") as fh:
        json.dump(manifest, fh, indent=2, sort_keys=False)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    _step("manifest-written")
    os.rename(tmp, folder / "manifest.json")
    _fsync(folder)
    return folder / "manifest.json"


# ---------------------------------------------------------------------------------------------
# validation: the runtime alone, exactly as a deployment would check the bundle
# ---------------------------------------------------------------------------------------------
def validate_bundle(folder: Union[str, Path]) -> Any:
    """Load ``folder`` with :mod:`compile_losses.runtime` and re-run its fixtures. Returns the
    :class:`~compile_losses.runtime.CheckReport`; raises BundleError for a refused bundle."""
    from .runtime import load_bundle

    return load_bundle(folder).check()


# ---------------------------------------------------------------------------------------------
# atomic install
# ---------------------------------------------------------------------------------------------
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _renameat2() -> Optional[Callable[..., int]]:
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two folders; False where the OS or filesystem cannot."""
    if os.environ.get("COMPILE_LOSSES_NO_RENAME_EXCHANGE") == "1":
        return False
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(str(a)), _AT_FDCWD, os.fsencode(str(b)), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


@contextlib.contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    """Exclusive flock on the output folder itself (no lock file to leave behind)."""
    fd = os.open(out_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _leftovers(out_dir: Path, name: Optional[str]) -> List[Tuple[Path, str, str, int]]:
    found = []
    for entry in out_dir.iterdir():
        m = _LEFTOVER.match(entry.name)
        if m and (name is None or m.group("name") == name):
            found.append((entry, m.group("name"), m.group("what"), int(m.group("pid"))))
    return found


def _recover_locked(out_dir: Path, name: Optional[str]) -> List[str]:
    actions = []
    for path, bname, what, pid in _leftovers(out_dir, name):
        if _pid_alive(pid):
            continue  # another export at work
        dest = out_dir / bname
        if what == "old" and not dest.exists() and (path / "manifest.json").is_file():
            os.rename(path, dest)  # died between "old aside" and "new in": put the old one back
            actions.append("restored {} from {}".format(dest.name, path.name))
            continue
        shutil.rmtree(path, ignore_errors=True)
        actions.append("removed {}".format(path.name))
    if actions:
        _fsync(out_dir)
    return actions


def recover(out_dir: Union[str, Path], name: Optional[str] = None) -> List[str]:
    """Clean up after exports that died: restore a bundle caught between two renames, remove
    staging and old folders of dead processes. Returns what was done (also run by every export)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    with _locked(out_dir):
        return _recover_locked(out_dir, name)


def _is_bundle_or_empty(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and ((path / "manifest.json").is_file() or not any(path.iterdir()))


def _install(staging: Path, dest: Path) -> None:
    out_dir = dest.parent
    with _locked(out_dir):
        _step("locked")
        _recover_locked(out_dir, dest.name)
        if dest.is_symlink() or (dest.exists() and not _is_bundle_or_empty(dest)):
            raise UsageError("--out: {} exists and is not a bundle folder (no manifest.json); refusing to replace it".format(dest))
        if not dest.exists():
            os.rename(staging, dest)
            _step("renamed-in")
        elif _exchange(staging, dest):
            _step("exchanged")  # staging now holds the old bundle
            shutil.rmtree(staging, ignore_errors=True)  # what remains, recover() removes later
        else:
            old = out_dir / ".{}.old-{}-{}".format(dest.name, os.getpid(), secrets.token_hex(4))
            os.rename(dest, old)
            _step("old-aside")
            os.rename(staging, dest)
            _step("new-in")
            shutil.rmtree(old, ignore_errors=True)
        _step("old-removed")
        _fsync(out_dir)


# ---------------------------------------------------------------------------------------------
# the composer
# ---------------------------------------------------------------------------------------------
def _as_tuple(value: Any, what: str) -> Tuple[Tensor, ...]:
    items = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    if not items or not all(isinstance(t, Tensor) for t in items):
        raise TypeError("{} must be a tensor or a tuple of tensors, got {}".format(
            what, tuple(type(t).__name__ for t in items) if isinstance(value, (tuple, list)) else type(value).__name__))
    return tuple(t.detach() for t in items)


def _quiet(msg: str) -> None:
    pass


def _out_dir(out_dir: Union[str, Path]) -> Path:
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError("--out: cannot create {}: {}".format(out, exc.strerror)) from None
    if not out.is_dir() or not os.access(out, os.W_OK | os.X_OK):
        raise UsageError("--out: {} is not a writable folder".format(out))
    return out


def export_bundle(net: nn.Module, loss: nn.Module, inputs: Any, target: Any,
                  out_dir: Union[str, Path] = "models", *, name: Optional[str] = None,
                  aoti: bool = True, torchscript: bool = True, training: bool = True, lr: float = 0.01,
                  parity: Any = True, net_info: Optional[Dict[str, Any]] = None,
                  loss_info: Optional[Dict[str, Any]] = None, progress: Optional[Progress] = None) -> Path:
    """Write the bundle for ``loss(net(*inputs), *target)`` to ``<out_dir>/<name>/`` and return it.

    Args:
        net, loss: modules; the net is exported in ``eval()`` mode (its mode is restored).
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

    Raises:
        ExportError: the forward or loss graph could not be exported, or the written bundle failed
            its own check; the destination is unchanged. (Optional parts that cannot be built, e.g.
            a gradient graph for an op without an ONNX form, are left out and listed under
            ``unavailable`` in the manifest with the reason.)
    """
    say = progress or _quiet
    if not isinstance(net, nn.Module) or not isinstance(loss, nn.Module):
        raise TypeError("net and loss must be torch.nn.Module instances, got {} and {}".format(
            type(net).__name__, type(loss).__name__))
    inputs_t, targets_t = _as_tuple(inputs, "inputs"), _as_tuple(target, "target")
    from .validate import check_case

    check_case(net, loss, inputs_t, targets_t, finite=True)  # bad input: a named error, before any export
    if name is None:
        name = "{}-{}".format(type(net).__name__.lower(), re.sub(r"loss$", "", type(loss).__name__.lower()) or "loss")
    if not _NAME.match(name):
        raise UsageError("name must be 1-100 letters, digits, '_', '-' or '.', not starting with '.', got {!r}".format(name))
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
        manifest = _build(net, loss, inputs_t, targets_t, staging, name, aoti=aoti, torchscript=torchscript,
                          training=training, lr=lr, parity=parity, net_info=net_info, loss_info=loss_info, say=say)
        say("validating the bundle with the runtime alone")
        report = validate_bundle(staging)
        _step("validated")
        if not report.ok:
            raise ExportError("the written bundle fails its own fixtures:\n{}".format(report))
        dest = out / name
        say("installing {}".format(dest))
        _install(staging, dest)
        _step("done")
        say("wrote {} ({} artifacts)".format(dest, len(manifest["artifacts"])))
        return dest
    finally:
        net.train(modes[0])
        loss.train(modes[1])
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _build(net: nn.Module, loss: nn.Module, inputs: Tuple[Tensor, ...], targets: Tuple[Tensor, ...], folder: Path,
           name: str, *, aoti: bool, torchscript: bool, training: bool, lr: float, parity: Any,
           net_info: Optional[Dict[str, Any]], loss_info: Optional[Dict[str, Any]], say: Progress) -> Dict[str, Any]:
    start = time.perf_counter()
    with torch.no_grad():
        pred = net(*inputs).detach()
    entries: Dict[str, Dict[str, Any]] = {}
    unavailable: List[Dict[str, str]] = []
    timings: Dict[str, float] = {}

    def attempt(kind: str, what: str, write: Callable[[], Dict[str, Any]], optional: bool) -> None:
        say(what)
        t0 = time.perf_counter()
        try:
            entries[kind] = write()
        except Exception as exc:
            from .training import ExportUnsupportedError

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
        attempt("train_step", "exporting train_step.onnx",
                lambda: write_train_step_onnx(net, loss, inputs, targets, folder), True)
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
        entries["params"] = write_npz({p["name"]: _np(state[p["name"]]) for p in entries["train_step"]["roles"]["params"]},
                                      folder / "params.npz", "params")
        _step("params")
    say("computing fixtures (eager float32 and float64 references)")
    entries["fixtures"] = write_npz(_fixtures(net, loss, inputs, targets, entries, lr), folder / "fixtures.npz", "fixtures")
    _step("fixtures")
    parity_summary = _parity(net, loss, inputs, targets, entries, parity, say, lr)
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
        "train_step": {"optimizer": "sgd", "fixture_lr": lr} if "train_step" in entries else None,
        "artifacts": list(entries.values()),
        "unavailable": unavailable,
        "parity": parity_summary,
        "export_seconds": dict(timings, total=round(time.perf_counter() - start, 3)),
    }
    write_manifest(folder, manifest)
    _step("manifest")
    return manifest


def _record_class_ranges(loss: nn.Module, pred: Tensor, inputs: Tuple[Tensor, ...], targets: Tuple[Tensor, ...],
                         entries: Dict[str, Dict[str, Any]]) -> None:
    """Class-index targets get ``classes`` (C) and ``ignore_index`` in each graph's input entry,
    so the runtime can refuse an index out of range by name (a graph would read garbage)."""
    from .validate import class_index_ranges

    for i, r in class_index_ranges(loss, pred, targets).items():
        for kind in ("loss", "loss_and_grad"):
            if kind in entries:
                entries[kind]["inputs"][1 + i].update(r)
        if "train_step" in entries:
            name = entries["train_step"]["roles"]["data"][len(inputs) + i]
            next(s for s in entries["train_step"]["inputs"] if s["name"] == name).update(r)


# aoti's parity rows would rebuild three AOTInductor packages (~1.5 min here): the written
# forward.pt2 is judged directly instead (_check_trusted); --backends onnx,script,aoti adds them.
_BACKEND_OF = {"forward": "onnx", "torchscript_forward": "script"}


def _check_trusted(net: nn.Module, loss: nn.Module, inputs: Tuple[Tensor, ...], pred: Tensor,
                   targets: Tuple[Tensor, ...], entries: Dict[str, Dict[str, Any]], folder: Path, say: Progress) -> None:
    """Load each written trusted-only file back and judge its output by the parity rule against
    eager and float64 eager; the verdict goes into its manifest entry as ``check``."""
    from .parity import judge

    checks = {"torchscript_forward": (net, inputs), "torchscript_loss": (loss, (pred,) + targets),
              "aoti_forward": (net, inputs)}
    for kind, (module, args) in checks.items():
        if kind not in entries:
            continue
        path = folder / entries[kind]["path"]
        if kind.startswith("torchscript"):
            from .backends.torchscript import _quiet_jit

            with _quiet_jit():
                runner = torch.jit.load(str(path))
        else:
            runner = torch._inductor.aoti_load_package(str(path))
        with torch.no_grad():
            got = runner(*[a.contiguous() for a in args])
            got = got[0] if isinstance(got, (list, tuple)) else got
            expected = module(*args)
            ref = copy.deepcopy(module).double()(*map(_double, args))
        verdict = judge(got, expected, ref)
        entries[kind]["check"] = {k: verdict.get(k) for k in ("status", "clause", "max_abs", "err_backend64",
                                                               "err_eager64", "detail") if verdict.get(k) not in (None, "")}
        say("  {} judged against eager: {}".format(path.name, verdict["status"]))


def _parity(net: nn.Module, loss: nn.Module, inputs: Tuple[Tensor, ...], targets: Tuple[Tensor, ...],
            entries: Dict[str, Any], parity: Any, say: Progress, lr: float) -> Dict[str, Any]:
    if parity is False:
        return {"status": "skipped"}
    backends = list(parity) if isinstance(parity, (list, tuple)) else \
        [b for k, b in _BACKEND_OF.items() if k in entries]
    try:
        from .parity import verify
    except ImportError as exc:
        return {"status": "unavailable: compile_losses.parity is not importable ({})".format(exc)}
    say("verifying parity against eager: {}".format(", ".join(backends)))
    progress_stream = sys.stderr if say is not _quiet else None
    report = verify(net, loss, inputs, targets, backends=backends, lr=lr, progress=progress_stream)
    _LAST_REPORT[0] = report
    summary = dict(report.summary())
    summary.setdefault("backends", backends)
    return summary


_LAST_REPORT: List[Any] = [None]  # the CLI prints the last export's parity table


def last_parity_report() -> Any:
    return _LAST_REPORT[0]


# ---------------------------------------------------------------------------------------------
# trusted-only artifacts (torch side)
# ---------------------------------------------------------------------------------------------
class UntrustedArtifactError(PermissionError):
    """A TorchScript or AOTInductor artifact loaded without ``trust=True``."""


def load_trusted_artifact(bundle: Union[str, Path], kind: str, *, trust: bool = False,
                          manifest_sha256: Optional[str] = None) -> Any:
    """Load a trusted-only artifact of a bundle with torch: ``torchscript_forward``,
    ``torchscript_loss`` (``torch.jit`` modules) or ``aoti_forward`` (an AOTInductor runner).

    These files are programs: TorchScript archives run their code, AOTInductor packages are
    native shared libraries. Loading one from a bundle you did not build is running that
    bundle's author's code, so it is refused unless ``trust=True``. The bundle's checksums and
    paths are verified first either way (``manifest_sha256`` pins the manifest itself).
    """
    from .runtime import verify_bundle

    if kind not in TRUSTED_KINDS:
        raise ValueError("kind must be one of {}, got {!r}".format(sorted(TRUSTED_KINDS), kind))
    vb = verify_bundle(bundle, manifest_sha256)
    art = next((a for a in vb.manifest["artifacts"] if a["kind"] == kind), None)
    if art is None:
        raise FileNotFoundError("bundle {} has no {} artifact (it holds {})".format(
            bundle, kind, ", ".join(a["kind"] for a in vb.manifest["artifacts"])))
    if not trust:
        raise UntrustedArtifactError(
            "{}: {} is runnable code (trusted-only); loading it runs whatever its author put in it. "
            "Pass trust=True only for bundles you built or whose manifest sha256 you verified".format(art["path"], kind))
    if kind.startswith("torchscript"):
        from .backends.torchscript import _quiet_jit

        with _quiet_jit():
            return torch.jit.load(io.BytesIO(vb.files[art["path"]]))
    return torch._inductor.aoti_load_package(str(vb.root / art["path"]))
