"""Training with a bundle's optimizer train step: the parameters and optimizer state live here,
``train_step.onnx`` computes each step (numpy and onnxruntime only).

    t = bundle.trainer(lr=1e-3)          # hyper-parameters: the exported ones, some replaced
    for x, y in batches:
        loss = t.step(x, y)              # the loss before the update
    t.params["fc1.weight"]; t.state["fc1.weight"]["exp_avg"]
    t.save("ckpt.npz"); t.load("ckpt.npz")

A checkpoint holds ``param/<name>``, ``state/<name>/<key>`` and ``hyper/<key>``; it is written
atomically (a temporary file beside it, fsync, rename) and read back as untrusted data: every
array named, of the dtype and shape the train step takes and finite, or :class:`TrainerStateError`
naming the file and each fault, and the trainer unchanged.
"""
import math
import os
import secrets
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .errors import BadArgumentError, BundleError, quote
from .graph import Graph
from .npz import NPZ_MAX_BYTES, read_npz
from .specs import OptimRoles

# hyper-parameter -> (lowest, highest, highest included); torch.optim's own checks
_RANGES = {"lr": (0.0, math.inf, True), "weight_decay": (0.0, math.inf, True), "eps": (0.0, math.inf, True),
           "momentum": (0.0, math.inf, True), "dampening": (-math.inf, math.inf, True),
           "beta1": (0.0, 1.0, False), "beta2": (0.0, 1.0, False)}


class TrainerStateError(ValueError):
    """A checkpoint that cannot be loaded into this trainer: each fault names the array."""

    def __init__(self, path: str, faults: List[str]) -> None:
        self.path, self.faults = path, list(faults)
        lines = [ascii(f)[1:-1] for f in faults]
        super().__init__("checkpoint {} refused: {}".format(
            quote(path), lines[0] if len(lines) == 1 else "\n  " + "\n  ".join(lines)))


def check_hyper(names: Sequence[str], overrides: Dict[str, Any], where: str = "trainer") -> Dict[str, float]:
    """``overrides`` as finite floats within torch.optim's ranges, each a hyper-parameter of the
    train step (``betas=(b1, b2)`` for ``beta1``/``beta2``)."""
    given = dict(overrides)
    if "betas" in given:
        betas = given.pop("betas")
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise BadArgumentError("{}: betas must be a pair (beta1, beta2), got {!r}".format(where, betas))
        given["beta1"], given["beta2"] = betas
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise TypeError("{}: hyper-parameters of this train step are {}, got {}".format(
            where, ", ".join(names), ", ".join(repr(k) for k in unknown)))
    out = {}
    for k, v in given.items():
        if isinstance(v, np.ndarray) and v.ndim == 0:
            v = v[()]
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise TypeError("{}: {} must be a real number, got {}".format(where, k, type(v).__name__))
        value = float(v)
        lo, hi, closed = _RANGES.get(k, (-math.inf, math.inf, True))
        if not math.isfinite(value) or value < lo or value > hi or (value == hi and not closed):
            raise BadArgumentError("{}: {} must be a finite number in [{}, {}{}, got {!r}".format(
                where, k, lo, hi, "]" if closed else ")", value))
        out[k] = value
    return out


class Trainer:
    """Parameters and optimizer state trained by a bundle's ``train_step.onnx``. Thread-safe:
    ``step``, ``save``, ``load`` and the properties hold one lock; trainers made from one bundle
    share only its (read-only) graph."""

    def __init__(self, graph: Graph, roles: OptimRoles, params: Dict[str, np.ndarray],
                 hyper: Dict[str, float], timeout_s: Optional[float]) -> None:
        self._graph, self._roles, self._sig = graph, roles, roles.signature
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._frozen = {n: params[n] for n in self._sig.frozen}
        self._params = {n: np.array(params[n]) for n in self._sig.params}
        self._state = {n: {k: (np.zeros((), np.float64) if k == "step" else np.zeros_like(p)) for k in self._sig.state}
                       for n, p in self._params.items()}
        self._hyper = {k: np.asarray(v, np.float64) for k, v in dict(roles.hyper, **hyper).items()}

    # ----- reading ----------------------------------------------------------------------------
    @property
    def optimizer(self) -> str:
        return self._sig.optimizer

    @property
    def params(self) -> Dict[str, np.ndarray]:
        """Copies of the trained parameters, keyed as ``net.named_parameters()``."""
        with self._lock:
            return {n: p.copy() for n, p in self._params.items()}

    @property
    def frozen(self) -> Dict[str, np.ndarray]:
        """The ``requires_grad=False`` parameters (read-only: the train step never changes them)."""
        return dict(self._frozen)

    @property
    def state(self) -> Dict[str, Dict[str, np.ndarray]]:
        """Copies of the optimizer state: ``{param: {"step": ..., "exp_avg": ..., ...}}``."""
        with self._lock:
            return {n: {k: v.copy() for k, v in s.items()} for n, s in self._state.items()}

    @property
    def hyper(self) -> Dict[str, float]:
        with self._lock:
            return {k: float(v) for k, v in self._hyper.items()}

    def set_hyper(self, **overrides: Any) -> None:
        """Replace hyper-parameters for the following steps (a schedule: ``t.set_hyper(lr=...)``)."""
        values = check_hyper(self._sig.hyper, overrides, "set_hyper")
        with self._lock:
            self._hyper.update({k: np.asarray(v, np.float64) for k, v in values.items()})

    # ----- training ---------------------------------------------------------------------------
    def step(self, x: Any, *targets: Any) -> float:
        """One optimizer step on ``(x, *targets)``; returns the loss before the update."""
        return float(self._step(x, targets))

    def _step(self, x: Any, targets: Tuple[Any, ...]) -> np.ndarray:
        if len(targets) != len(self._sig.targets):
            raise TypeError("step takes ({}), got {} arrays".format(
                ", ".join([self._sig.input] + list(self._sig.targets)), 1 + len(targets)))
        with self._lock:
            args = self._sig.flat_inputs(self._params, self._frozen, x, targets, self._state, self._hyper)
            outs = self._graph.run(args, self._timeout_s)
            result = self._sig.result(outs)
            # onnxruntime may return a 0-d output (the step count) as shape (1,)
            self._state = {n: {k: np.asarray(v).reshape(self._state[n][k].shape) for k, v in s.items()}
                           for n, s in result.new_state.items()}
            self._params = {n: np.asarray(v) for n, v in result.new_params.items()}
        return np.asarray(result.loss)

    # ----- checkpoints ------------------------------------------------------------------------
    def _arrays(self) -> Dict[str, np.ndarray]:
        out = {"param/" + n: p for n, p in self._params.items()}
        out.update({"state/{}/{}".format(n, k): v for n, s in self._state.items() for k, v in s.items()})
        out.update({"hyper/" + k: v for k, v in self._hyper.items()})
        return out

    def save(self, path: "os.PathLike[str] | str") -> Path:
        """Write parameters, state and hyper-parameters to ``path`` (npz) atomically: a temporary
        file beside it, flushed and fsynced, renamed over ``path``."""
        dest = Path(path)
        if dest.suffix != ".npz":
            raise BadArgumentError("save: path must end in .npz, got {}".format(quote(str(path))))
        folder = dest.parent
        if not folder.is_dir():
            raise FileNotFoundError("save: folder {} does not exist".format(quote(str(folder))))
        tmp = folder / ".{}.tmp-{}-{}".format(dest.name, os.getpid(), secrets.token_hex(4))
        with self._lock:
            arrays = self._arrays()
        try:
            with open(tmp, "xb") as fh:
                np.savez(fh, **arrays)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, dest)
        finally:
            if tmp.exists():
                tmp.unlink()
        fd = os.open(str(folder), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return dest

    def load(self, path: "os.PathLike[str] | str") -> None:
        """Replace parameters, state and hyper-parameters with a checkpoint's, all or nothing."""
        src = str(path)
        try:
            with open(src, "rb") as fh:
                data = fh.read(NPZ_MAX_BYTES + 1)
        except OSError as exc:
            raise TrainerStateError(src, ["cannot be read ({})".format(exc.strerror)]) from None
        if len(data) > NPZ_MAX_BYTES:
            raise TrainerStateError(src, ["is over the {}-byte limit".format(NPZ_MAX_BYTES)])
        try:
            got = read_npz(os.path.basename(src), data)
        except BundleError as exc:
            raise TrainerStateError(src, [why for _, why in exc.faults]) from None
        with self._lock:
            want = self._arrays()
        faults = ["lacks {}".format(k) for k in want if k not in got]
        faults += ["holds {}, not an array of this trainer".format(k) for k in got if k not in want]
        for k, arr in got.items():
            if k not in want:
                continue
            ref = want[k]
            if arr.dtype != ref.dtype or arr.shape != ref.shape:
                faults.append("{} is {} {}, the train step takes {} {}".format(k, arr.dtype, arr.shape, ref.dtype, ref.shape))
            elif not np.isfinite(arr).all():
                faults.append("{} holds non-finite values".format(k))
        for k in (k for k in got if k.endswith("/step") and k in want):
            step = got[k]
            if step.shape == () and np.isfinite(step) and (step < 0 or step != np.floor(step)):
                faults.append("{} must be a whole number >= 0, got {!r}".format(k, float(step)))
        if not faults:
            hyper = {k[len("hyper/"):]: float(v) for k, v in got.items() if k.startswith("hyper/")}
            try:
                check_hyper(self._sig.hyper, hyper, "load")
            except (TypeError, ValueError) as exc:
                faults.append(str(exc))
        if faults:
            raise TrainerStateError(src, faults)
        with self._lock:
            self._params = {n: got["param/" + n] for n in self._sig.params}
            self._state = {n: {k: got["state/{}/{}".format(n, k)] for k in self._sig.state} for n in self._sig.params}
            self._hyper = {k: got["hyper/" + k] for k in self._sig.hyper}
