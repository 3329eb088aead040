"""A verified bundle, run with onnxruntime: forward, loss, loss-and-grad, train step, trainer, check."""
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..signature import COTANGENT
from .errors import BadArgumentError, BundleError, BundleTimeoutError, quote
from .graph import Graph
from .integrity import GRAPH_KINDS, MAX_LOADED_BYTES, RUNTIME_KINDS, VerifiedBundle, verify_bundle
from .npz import NPZ_MAX_BYTES, read_npz
from .parity import CheckReport, Row, compare
from .specs import OptimRoles, Roles, SignatureError, is_optimizer_step, parse_optim_roles, parse_roles
from .trainer import Trainer, check_hyper
from .timeouts import DEFAULT_CHECK_TIMEOUT_S, DEFAULT_RUN_TIMEOUT_S, check_timeout

REQUIRED_KINDS = ("forward", "loss", "fixtures")
FIXTURES_MAX_BYTES = NPZ_MAX_BYTES  # uncompressed, summed over the arrays in fixtures.npz / params.npz
_BUNDLE_DEFAULT = object()          # a call's timeout_s: the one given to load_bundle


@dataclass(frozen=True)
class TrainStepResult:
    """One SGD step: the loss before the step, the gradient and the updated value of every
    parameter (keyed by the net's own parameter names, e.g. ``fc1.weight``)."""

    loss: np.ndarray
    grads: Dict[str, np.ndarray]
    new_params: Dict[str, np.ndarray]


def _lr(value: Any, dtype: np.dtype) -> np.ndarray:
    """``lr`` as the graph's 0-d array: a Python or numpy real scalar (or 0-d array), finite and
    > 0 also after rounding to the graph's dtype (NaN or 0 would silently wreck the weights)."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError("train_step: lr must be a float, got {}{}".format(
            type(value).__name__, " of shape {}".format(value.shape) if isinstance(value, np.ndarray) else ""))
    given = float(value)
    with np.errstate(over="ignore"):  # 1e300 -> inf in float32, refused just below
        cast = np.asarray(given, dtype=dtype)
    if not math.isfinite(given) or given <= 0 or not np.isfinite(cast) or cast <= 0:
        raise BadArgumentError("train_step: lr must be a finite number > 0{}, got {!r}".format(
            " that {} can hold".format(dtype) if math.isfinite(given) and given > 0 else "", given))
    return cast


class Bundle:
    """A loaded bundle. Thread-safe: every method only reads the bundle's state.

    ``forward`` and ``loss`` use the weights exported with the bundle. ``train_step`` is
    functional: it starts from ``params`` (default: the exported weights, :attr:`params`) and
    returns the new parameters without changing the bundle; thread them through a loop::

        params = b.params
        for x, y in batches:
            params = b.train_step(x, y, lr=0.01, params=params).new_params

    A bundle exported with an optimizer (``export_bundle(..., optimizer="adamw")``) trains
    through :meth:`trainer` instead, which holds the parameters and optimizer state.

    Every call that runs a graph takes ``timeout_s`` (default: the one given to ``load_bundle``;
    ``None`` for no bound) and raises :class:`BundleTimeoutError` when a run passes it.
    """

    def __init__(self, vb: VerifiedBundle, providers: Sequence[str], intra_op_threads: Optional[int],
                 timeout_s: Optional[float] = DEFAULT_RUN_TIMEOUT_S) -> None:
        self.path = Path(vb.root)
        self.manifest = vb.manifest
        self.manifest_sha256 = vb.manifest_sha256
        # printed in every report line: quoted unless plain, so it cannot forge report lines
        name = vb.manifest.get("name", self.path.name)
        self.name = quote(name if isinstance(name, str) else json.dumps(name)[:80])
        self.timeout_s = timeout_s
        arts = {a["kind"]: a for a in vb.manifest["artifacts"]}  # one per kind (checked by verify)
        missing = [k for k in REQUIRED_KINDS if k not in arts]
        if missing:
            raise BundleError(str(vb.root), [("manifest.json", "lists no {} artifact".format(", ".join(missing)))])
        if "train_step" in arts and "params" not in arts:
            raise BundleError(str(vb.root), [("manifest.json", "lists a train_step graph but no params artifact (its weights)")])
        # the cheap parses first: a broken npz is refused before any graph is compiled
        self._fixtures = read_npz(arts["fixtures"]["path"], vb.files[arts["fixtures"]["path"]])
        self._params: Dict[str, np.ndarray] = {}
        if "params" in arts:
            self._params = read_npz(arts["params"]["path"], vb.files[arts["params"]["path"]])
            for a in self._params.values():
                a.setflags(write=False)
        self._roles: Optional[Roles] = None
        self._optim: Optional[OptimRoles] = None
        self._graphs: Dict[str, Graph] = {}
        for kind in GRAPH_KINDS:
            if kind in arts:
                self._graphs[kind] = Graph(vb, arts[kind], providers, intra_op_threads)
        if "train_step" in self._graphs and is_optimizer_step(arts["train_step"]):
            self._optim = self._check_optim(arts["train_step"], arts["params"]["path"])
        elif "train_step" in self._graphs:
            self._roles = self._check_roles(arts["train_step"], arts["params"]["path"])
        self.trusted_only = [a["path"] for a in vb.manifest["artifacts"] if a.get("trusted_only")]

    def _check_roles(self, art: Dict[str, Any], params_path: str) -> Roles:
        graph = self._graphs["train_step"]
        try:
            roles = parse_roles(art.get("roles"), graph.signature)
        except SignatureError as exc:
            raise BundleError(str(self.path), [(art["path"], str(exc))]) from None
        faults = []
        specs = {n: (d, s) for n, d, s in graph.inputs}
        for p in roles.params:
            arr = self._params.get(p["name"])
            dtype, shape = specs[p["input"]]
            if arr is None:
                faults.append((params_path, "lacks {!r}, a parameter of the train step".format(p["name"])))
            elif arr.dtype != dtype or arr.ndim != len(shape) or any(isinstance(d, int) and d != g for d, g in zip(shape, arr.shape)):
                faults.append((params_path, "{!r} is {} {}, the train step takes {} {}".format(
                    p["name"], arr.dtype, arr.shape, dtype, shape)))
        if faults:
            raise BundleError(str(self.path), faults)
        return roles

    def _check_optim(self, art: Dict[str, Any], params_path: str) -> OptimRoles:
        """The optimizer train step: its roles against its graph, the manifest's ``train_step``
        record against them, params.npz holding every parameter it reads, and the trajectory's
        length; every fault named."""
        graph = self._graphs["train_step"]
        try:
            roles = parse_optim_roles(art, graph.signature)
        except SignatureError as exc:
            raise BundleError(str(self.path), [(art["path"], str(exc))]) from None
        sig = roles.signature
        faults = []
        record = self.manifest.get("train_step")
        want = {"optimizer": sig.optimizer, "optimizer_args": dict(roles.hyper, **roles.flags), "state": list(sig.state)}
        if not isinstance(record, dict):
            faults.append(("manifest.json", "train_step must be an object naming the optimizer, got {}".format(
                type(record).__name__)))
        else:
            for key, value in want.items():
                if record.get(key) != value:
                    faults.append(("manifest.json", "train_step.{} is {}, train_step.onnx's entry says {}".format(
                        key, ascii(record.get(key))[:120], ascii(value)[:120])))
            steps = record.get("trajectory_steps")
            if not (isinstance(steps, int) and not isinstance(steps, bool) and 1 <= steps <= 1000):
                faults.append(("manifest.json", "train_step.trajectory_steps must be an integer in [1, 1000], got {}".format(
                    ascii(steps)[:40])))
        specs = {n: (d, s) for n, d, s in graph.inputs}
        for n, inp in list(zip(sig.params, sig.param_inputs)) + list(zip(sig.frozen, sig.frozen_inputs)):
            arr = self._params.get(n)
            dtype, shape = specs[inp]
            if arr is None:
                faults.append((params_path, "lacks {!r}, a parameter of the train step".format(n)))
            elif arr.dtype != dtype or arr.shape != tuple(shape):
                faults.append((params_path, "{!r} is {} {}, the train step takes {} {}".format(n, arr.dtype, arr.shape, dtype, shape)))
        if faults:
            raise BundleError(str(self.path), faults)
        return roles

    def trainer(self, *, params: Optional[Dict[str, Any]] = None, timeout_s: Any = _BUNDLE_DEFAULT,
                **overrides: Any) -> Trainer:
        """A :class:`~compile_losses.runtime.trainer.Trainer` over this bundle's optimizer train
        step: from the exported parameters (or ``params``, keyed as ``net.named_parameters()``),
        a fresh optimizer state and the exported hyper-parameters, ``overrides`` replacing some
        (``lr=1e-3``, ``weight_decay=0.0``, ``betas=(0.9, 0.99)``)."""
        graph = self._graph("train_step")
        if self._optim is None:
            raise NotImplementedError("bundle {}'s train_step.onnx is the plain SGD step (use train_step(); "
                                      "export with optimizer= for a trainer)".format(self.name))
        hyper = check_hyper(self._optim.signature.hyper, overrides)
        start = dict(self._params)
        if params is not None:
            sig = self._optim.signature
            missing = [n for n in sig.params if n not in params]
            unknown = sorted(set(params) - set(sig.params))
            if missing or unknown:
                raise KeyError("trainer: params must give exactly {}, {}".format(
                    ", ".join(sig.params), "missing {}".format(missing) if missing else "unknown {}".format(unknown)))
            for n in sig.params:
                ref, arr = self._params[n], np.asarray(params[n])
                if arr.dtype != ref.dtype or arr.shape != ref.shape:
                    raise TypeError("trainer: params[{!r}] must be {} {}, got {} {}".format(n, ref.dtype, ref.shape, arr.dtype, arr.shape))
                start[n] = arr
        return Trainer(graph, self._optim, start, hyper, self._timeout(timeout_s))

    @property
    def graphs(self) -> Tuple[str, ...]:
        return tuple(self._graphs)

    @property
    def params(self) -> Dict[str, np.ndarray]:
        """The exported parameters (read-only arrays), keyed by the net's parameter names."""
        return dict(self._params)

    def _graph(self, kind: str) -> Graph:
        if kind not in self._graphs:
            raise NotImplementedError("bundle {} has no {} graph (it holds {})".format(self.name, kind, ", ".join(self._graphs)))
        return self._graphs[kind]

    def _timeout(self, timeout_s: Any) -> Optional[float]:
        return self.timeout_s if timeout_s is _BUNDLE_DEFAULT else check_timeout("timeout_s", timeout_s)

    def forward(self, *inputs: Any, timeout_s: Any = _BUNDLE_DEFAULT) -> np.ndarray:
        """The net's prediction for ``inputs`` (usually one array ``x``)."""
        return self._graph("forward").run(inputs, self._timeout(timeout_s))[0]

    def _targets(self, graph: Graph, targets: Sequence[Any]) -> None:
        names = [n for n, _, _ in graph.inputs[1:] if n != COTANGENT]
        if len(targets) != len(names):
            loss = str((self.manifest.get("loss") or {}).get("import_path", "?")).rsplit(":", 1)[-1]
            raise TypeError("{}: loss {} takes {} target{} ({}), got {}".format(
                graph.kind, ascii(loss)[1:-1], len(names), "" if len(names) == 1 else "s", ", ".join(names), len(targets)))

    def loss(self, pred: Any, *targets: Any, timeout_s: Any = _BUNDLE_DEFAULT) -> np.ndarray:
        """The loss of ``pred`` against ``targets``, in the loss's own reduction."""
        graph = self._graph("loss")
        self._targets(graph, targets)
        return graph.run((pred,) + targets, self._timeout(timeout_s))[0]

    def loss_and_grad(self, pred: Any, *targets: Any, cotangent: Any = None,
                      timeout_s: Any = _BUNDLE_DEFAULT) -> Tuple[np.ndarray, np.ndarray]:
        """The loss and its gradient with respect to ``pred``. A loss that does not reduce to a
        scalar (``reduction="none"``) returns the vector-Jacobian product with ``cotangent`` (the
        upstream gradient, shaped like the loss), which it then requires."""
        graph = self._graph("loss_and_grad")
        self._targets(graph, targets)
        spec = next(((d, s) for n, d, s in graph.inputs if n == COTANGENT), None)
        if spec is None and cotangent is not None:
            raise TypeError("loss_and_grad: this loss returns a scalar; cotangent is for a non-scalar loss, got one")
        if spec is not None:
            if cotangent is None:
                raise TypeError("loss_and_grad: this loss is not reduced to a scalar: pass cotangent=, the upstream "
                                "gradient, a {} array of shape {} (the loss's)".format(spec[0], spec[1]))
            targets = targets + (cotangent,)
        out = graph.run((pred,) + targets, self._timeout(timeout_s))
        return out[0], out[1]

    def train_step(self, *data: Any, lr: Any = 0.01, params: Optional[Dict[str, Any]] = None,
                   timeout_s: Any = _BUNDLE_DEFAULT) -> TrainStepResult:
        """One SGD step on ``(x, *targets)`` from ``params`` (default: the exported weights)."""
        graph = self._graph("train_step")
        if self._optim is not None:
            raise NotImplementedError("bundle {}'s train_step.onnx carries {} state: train with bundle.trainer()".format(
                self.name, self._optim.signature.optimizer))
        roles = self._roles
        params = self._params if params is None else params
        missing = [p["name"] for p in roles.params if p["name"] not in params]
        if missing:
            raise KeyError("train_step: params lacks {}".format(", ".join(missing)))
        lr_value = _lr(lr, dict((n, d) for n, d, _ in graph.inputs)[roles.lr])
        if len(data) != len(roles.data):
            raise TypeError("train_step takes {} data inputs ({}), got {}".format(
                len(roles.data), ", ".join(roles.data), len(data)))
        args = [params[p["name"]] for p in roles.params] + list(data) + [lr_value]
        out = dict(zip(graph.outputs, graph.run(args, self._timeout(timeout_s))))
        return TrainStepResult(out[roles.loss], {p["name"]: out[p["grad"]] for p in roles.params},
                               {p["name"]: out[p["new"]] for p in roles.params})

    def _fixture_args(self, kind: str, graph: Graph) -> List[Any]:
        """The inputs a graph's fixtures were computed from; the train step's parameters come from
        the shipped params.npz, so weights swapped there (and re-signed) fail the check."""
        shipped: Dict[str, np.ndarray] = {}
        if kind == "train_step" and self._optim is not None:
            sig = self._optim.signature
            shipped = {i: self._params[n] for n, i in list(zip(sig.params, sig.param_inputs)) + list(zip(sig.frozen, sig.frozen_inputs))}
        elif kind == "train_step":
            shipped = {p["input"]: self._params[p["name"]] for p in self._roles.params}
        return [shipped[name] if name in shipped else self._fixtures[kind + "/in/" + name] for name, _, _ in graph.inputs]

    def check(self, *, timeout_s: Any = DEFAULT_CHECK_TIMEOUT_S) -> CheckReport:
        """Re-run every graph on the fixtures stored at export and judge each output by the
        parity rule against the eager float32 results and the float64 references. ``timeout_s``
        bounds the whole check (default 60 s); past it, :class:`BundleTimeoutError`."""
        budget = check_timeout("timeout_s", timeout_s)
        deadline = None if budget is None else time.monotonic() + budget
        rows = []
        for kind, graph in self._graphs.items():
            prefix = kind + "/"
            try:
                args = self._fixture_args(kind, graph)
                expected = [(self._fixtures[prefix + "eager/" + o], self._fixtures[prefix + "ref64/" + o]) for o in graph.outputs]
            except KeyError as exc:
                nan = float("nan")
                rows.append(Row(kind, "-", False, "fail: fixtures.npz lacks {}".format(exc), nan, nan, nan, nan, None, None))
                continue
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise BundleTimeoutError(str(self.path), graph.path, budget)
            try:
                got = graph.run(args, left)
            except BundleTimeoutError:
                raise BundleTimeoutError(str(self.path), graph.path, budget) from None
            except Exception as exc:  # a graph that loads but cannot run its own fixtures
                nan = float("nan")
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                rows.append(Row(kind, "-", False, "fail: {} did not run: {}".format(graph.path, ascii(first)[1:-1]),
                                nan, nan, nan, nan, None, None))
                continue
            for i, (name, g, (eager, ref64)) in enumerate(zip(graph.outputs, got, expected)):
                gradient = (kind == "loss_and_grad" and i > 0) or (kind == "train_step" and i > 0)
                if np.shape(g) != np.shape(eager) and np.size(g) == np.size(eager) == 1:
                    g = np.asarray(g).reshape(np.shape(eager))  # onnxruntime's (1,) for a 0-d output
                rows.append(compare(kind, name, g, eager, ref64, gradient=gradient))
        if self._optim is not None:
            left = None if deadline is None else deadline - time.monotonic()
            rows += self._check_trajectory(left, budget)
        return CheckReport(self.name, rows)

    def _check_trajectory(self, left: Optional[float], budget: Optional[float]) -> List[Row]:
        """The fixtures' trajectory re-run by a fresh trainer from the shipped parameters: the
        per-step losses (one row), every final parameter and state tensor, by the parity rule."""
        sig = self._optim.signature
        steps = self.manifest["train_step"]["trajectory_steps"]
        nan = float("nan")
        names = [sig.input] + list(sig.targets)
        try:
            batches = [[self._fixtures["trajectory/in/{}/{}".format(i, n)] for n in names] for i in range(steps)]
            expected = {tag: {"loss": self._fixtures["trajectory/{}/loss".format(tag)],
                              **{"final/" + p: self._fixtures["trajectory/{}/final/{}".format(tag, p)] for p in sig.params},
                              **{"state/{}/{}".format(p, k): self._fixtures["trajectory/{}/state/{}/{}".format(tag, p, k)]
                                 for p in sig.params for k in sig.state}} for tag in ("eager", "ref64")}
        except KeyError as exc:
            return [Row("trajectory", "-", False, "fail: fixtures.npz lacks {}".format(exc), nan, nan, nan, nan, None, None)]
        trainer = Trainer(self._graphs["train_step"], self._optim, self._params, {}, left)
        deadline = None if left is None else time.monotonic() + left
        losses = []
        try:
            for batch in batches:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise BundleTimeoutError(str(self.path), "train_step.onnx", budget)
                trainer._timeout_s = remaining
                losses.append(trainer._step(batch[0], tuple(batch[1:])))
        except BundleTimeoutError:
            raise BundleTimeoutError(str(self.path), self._graphs["train_step"].path, budget) from None
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            return [Row("trajectory", "-", False, "fail: the trajectory did not run: {}".format(ascii(first)[1:-1]),
                        nan, nan, nan, nan, None, None)]
        got = {"loss": np.stack([l.reshape(()) for l in losses]).astype(losses[0].dtype)}
        params, state = trainer.params, trainer.state
        got.update({"final/" + p: params[p] for p in sig.params})
        got.update({"state/{}/{}".format(p, k): state[p][k] for p in sig.params for k in sig.state})
        return [compare("trajectory", name, got[name], expected["eager"][name], expected["ref64"][name],
                        gradient=name != "loss") for name in got]


def load_bundle(path: "os.PathLike[str] | str", *, manifest_sha256: Optional[str] = None,
                providers: Sequence[str] = ("CPUExecutionProvider",),
                intra_op_threads: Optional[int] = None,
                timeout_s: Optional[float] = DEFAULT_RUN_TIMEOUT_S,
                max_bytes: int = MAX_LOADED_BYTES) -> Bundle:
    """Verify a bundle folder, then load its ONNX graphs into onnxruntime.

    Before anything is parsed: the manifest's size (at most 1 MiB), JSON and fields; for every
    listed file a plain relative path inside the folder, no symlink, hard link or special file, its
    size and sha256; no unlisted file; then every external-data location inside each graph (by
    its kind, whatever its file name) held to the same rules. Graphs are handed to onnxruntime as
    verified bytes with their external data inlined. ``manifest_sha256`` pins the manifest itself
    (checksums only prove the files match the manifest, not who wrote it). ``timeout_s`` is the
    default time bound of every graph run (``None``: unbounded); ``max_bytes`` caps what is read
    into memory. Raises :class:`BundleError` naming each file and fault.
    """
    timeout_s = check_timeout("timeout_s", timeout_s)
    vb = verify_bundle(path, manifest_sha256, keep=RUNTIME_KINDS, max_bytes=max_bytes)
    try:
        return Bundle(vb, providers, intra_op_threads, timeout_s)
    except BundleError as exc:
        if exc.bundle == "":
            raise BundleError(str(path), exc.faults) from None
        raise
