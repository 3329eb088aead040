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
    share only its (read-only) graph.

    The arrays live in one list in the graph's input order; each step feeds it with the new batch
    in place of the data, and only the data is checked against the signature: the parameters and
    state were checked when they came in (params.npz, ``params=``, a checkpoint) and every step's
    outputs are checked for the dtype and shape the graph takes back."""

    def __init__(self, graph: Graph, roles: OptimRoles, params: Dict[str, np.ndarray],
                 hyper: Dict[str, float], timeout_s: Optional[float]) -> None:
        sig = self._sig = roles.signature
        self._graph, self._timeout_s = graph, timeout_s
        self._lock = threading.Lock()
        k, f, t, s = len(sig.params), len(sig.frozen), len(sig.targets), len(sig.state)
        self._data = k + f                                 # position of x; the targets follow it
        self._state_at = k + f + 1 + t
        self._hyper_at = self._state_at + k * s
        state = [np.zeros((), np.float64) if key == "step" else np.zeros_like(params[n])
                 for n in sig.params for key in sig.state]
        values = dict(roles.hyper, **hyper)
        self._flat: List[Any] = ([np.array(params[n], order="C") for n in sig.params] + [params[n] for n in sig.frozen]
                                 + [None] * (1 + t) + state + [np.asarray(values[h], np.float64) for h in sig.hyper])
        self._trusted = frozenset(range(len(self._flat))) - set(range(self._data, self._state_at))
        # what each step returns for the parameters and state: (output position, input position)
        self._returned = [(1 + k + i, i) for i in range(k)] + [(1 + 2 * k + j, self._state_at + j) for j in range(k * s)]
        self._expect = [(graph.inputs[i][1], graph.inputs[i][2]) for i in range(len(self._flat))]

    # ----- reading ----------------------------------------------------------------------------
    @property
    def optimizer(self) -> str:
        return self._sig.optimizer

    def _state_dicts(self) -> Dict[str, Dict[str, np.ndarray]]:
        s = len(self._sig.state)
        return {n: {key: self._flat[self._state_at + i * s + j] for j, key in enumerate(self._sig.state)}
                for i, n in enumerate(self._sig.params)}

    @property
    def params(self) -> Dict[str, np.ndarray]:
        """Copies of the trained parameters, keyed as ``net.named_parameters()``."""
        with self._lock:
            return {n: self._flat[i].copy() for i, n in enumerate(self._sig.params)}

    @property
    def frozen(self) -> Dict[str, np.ndarray]:
        """The ``requires_grad=False`` parameters (read-only: the train step never changes them)."""
        k = len(self._sig.params)
        return {n: self._flat[k + i] for i, n in enumerate(self._sig.frozen)}

    @property
    def state(self) -> Dict[str, Dict[str, np.ndarray]]:
        """Copies of the optimizer state: ``{param: {"step": ..., "exp_avg": ..., ...}}``."""
        with self._lock:
            return {n: {k: v.copy() for k, v in s.items()} for n, s in self._state_dicts().items()}

    @property
    def hyper(self) -> Dict[str, float]:
        with self._lock:
            return {h: float(self._flat[self._hyper_at + i]) for i, h in enumerate(self._sig.hyper)}

    def set_hyper(self, **overrides: Any) -> None:
        """Replace hyper-parameters for the following steps (a schedule: ``t.set_hyper(lr=...)``)."""
        values = check_hyper(self._sig.hyper, overrides, "set_hyper")
        with self._lock:
            for i, h in enumerate(self._sig.hyper):
                if h in values:
                    self._flat[self._hyper_at + i] = np.asarray(values[h], np.float64)

    # ----- training ---------------------------------------------------------------------------
    def step(self, x: Any, *targets: Any) -> float:
        """One optimizer step on ``(x, *targets)``; returns the loss before the update."""
        return float(self._step(x, targets))

    def _step(self, x: Any, targets: Tuple[Any, ...]) -> np.ndarray:
        if len(targets) != len(self._sig.targets):
            raise TypeError("step takes ({}), got {} arrays".format(
                ", ".join([self._sig.input] + list(self._sig.targets)), 1 + len(targets)))
        with self._lock:
            args = list(self._flat)
            args[self._data:self._state_at] = (x,) + tuple(targets)
            outs = self._graph.run(args, self._timeout_s, self._trusted)
            new = []
            for out_at, in_at in self._returned:
                arr, (dtype, shape) = outs[out_at], self._expect[in_at]
                if arr.shape != shape and arr.size == 1 and shape == ():
                    arr = arr.reshape(())  # onnxruntime may return a 0-d output (the step count) as (1,)
                if arr.dtype != dtype or arr.shape != shape:
                    raise BundleError(self._graph.bundle, [(self._graph.path, "returned {} as {} {}, it takes {} {} back".format(
                        quote(self._graph.outputs[out_at]), arr.dtype, arr.shape, dtype, shape))])
                new.append((in_at, arr))
            for in_at, arr in new:
                self._flat[in_at] = arr
        return np.asarray(outs[0])

    # ----- checkpoints ------------------------------------------------------------------------
    def _keys(self) -> List[Tuple[str, int]]:
        """Checkpoint names and their positions in the flat list."""
        sig, s = self._sig, len(self._sig.state)
        out = [("param/" + n, i) for i, n in enumerate(sig.params)]
        out += [("state/{}/{}".format(n, key), self._state_at + i * s + j)
                for i, n in enumerate(sig.params) for j, key in enumerate(sig.state)]
        return out + [("hyper/" + h, self._hyper_at + i) for i, h in enumerate(sig.hyper)]

    def _arrays(self) -> Dict[str, np.ndarray]:
        return {name: self._flat[i] for name, i in self._keys()}

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
            for name, i in self._keys():
                self._flat[i] = got[name]
