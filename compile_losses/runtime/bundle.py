"""A verified bundle, run with onnxruntime: forward, loss, loss-and-grad, train step, check."""
import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnxruntime as ort

from .errors import BundleError
from .integrity import VerifiedBundle, verify_bundle
from .onnx_refs import external_refs
from .parity import CheckReport, Row, compare

GRAPH_KINDS = ("forward", "loss", "loss_and_grad", "train_step")
REQUIRED_KINDS = ("forward", "loss", "fixtures")
FIXTURES_MAX_BYTES = 1 << 30  # uncompressed, summed over the arrays in fixtures.npz / params.npz
_DTYPES = {"float16": np.float16, "float32": np.float32, "float64": np.float64, "int64": np.int64,
           "int32": np.int32, "bool": np.bool_}


@dataclass(frozen=True)
class TrainStepResult:
    """One SGD step: the loss before the step, the gradient and the updated value of every
    parameter (keyed by the net's own parameter names, e.g. ``fc1.weight``)."""

    loss: np.ndarray
    grads: Dict[str, np.ndarray]
    new_params: Dict[str, np.ndarray]


def _npz(rel: str, data: bytes) -> Dict[str, np.ndarray]:
    """Arrays of an npz held in memory; no pickles, and a cap on the unpacked size."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            total = sum(i.file_size for i in zf.infolist())
        if total > FIXTURES_MAX_BYTES:
            raise ValueError("unpacks to {} bytes, over the {}-byte limit".format(total, FIXTURES_MAX_BYTES))
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise BundleError("", [(rel, "is not a readable npz of plain arrays ({})".format(exc))]) from None


class _Graph:
    """One ONNX graph of the bundle and its signature from the manifest."""

    def __init__(self, vb: VerifiedBundle, art: Dict[str, Any], options: ort.SessionOptions,
                 providers: Sequence[str]) -> None:
        rel = art["path"]
        self.kind, self.path = art["kind"], rel
        try:
            self.inputs = [(s["name"], np.dtype(_DTYPES[s["dtype"]]), tuple(s["shape"])) for s in art["inputs"]]
            # class-index targets: the range recorded at export (an index outside it reads garbage)
            self.classes = {s["name"]: (int(s["classes"]), int(s.get("ignore_index", -100)))
                            for s in art["inputs"] if "classes" in s}
            self.outputs = [s["name"] for s in art["outputs"]]
        except (KeyError, TypeError) as exc:
            raise BundleError(str(vb.root), [(rel, "manifest entry lacks a valid inputs/outputs signature ({!r})".format(exc))]) from None
        data = vb.files[rel]
        try:
            # Self-contained models are parsed from the verified bytes; a model with (verified)
            # external data is opened by path so onnxruntime can find its data files.
            source = str(vb.root / rel) if external_refs(data) else data
            self.session = ort.InferenceSession(source, options, providers=list(providers))
        except Exception as exc:  # onnxruntime raises its own pybind exception types
            raise BundleError(str(vb.root), [(rel, "onnxruntime refused the graph: {}".format(
                str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__))]) from None
        names = ([i.name for i in self.session.get_inputs()], [o.name for o in self.session.get_outputs()])
        if names != ([n for n, _, _ in self.inputs], self.outputs):
            raise BundleError(str(vb.root), [(rel, "graph inputs/outputs {} do not match the manifest's {}".format(
                names, ([n for n, _, _ in self.inputs], self.outputs)))])

    def feed(self, args: Sequence[Any]) -> Dict[str, np.ndarray]:
        """Check arity, dtype and shape against the signature; ``N`` must be one size throughout."""
        if len(args) != len(self.inputs):
            raise TypeError("{} takes {} inputs ({}), got {}".format(
                self.kind, len(self.inputs), ", ".join(n for n, _, _ in self.inputs), len(args)))
        sizes: Dict[str, Tuple[str, int]] = {}
        feed = {}
        for (name, dtype, shape), value in zip(self.inputs, args):
            arr = np.asarray(value)
            if arr.dtype != dtype:
                raise TypeError("{}: {} must have dtype {}, got {}".format(self.kind, name, dtype, arr.dtype))
            want = "({})".format(", ".join(str(d) for d in shape))
            if arr.ndim != len(shape) or any(isinstance(d, int) and d != g for d, g in zip(shape, arr.shape)):
                raise ValueError("{}: {} must have shape {}, got {}".format(self.kind, name, want, tuple(arr.shape)))
            for d, g in zip(shape, arr.shape):
                if isinstance(d, str):
                    seen = sizes.setdefault(d, (name, g))
                    if seen[1] != g:
                        raise ValueError("{}: {} has {}={}, but {} has {}={}".format(self.kind, name, d, g, seen[0], d, seen[1]))
            if name in self.classes:
                _check_classes(self.kind, name, arr, *self.classes[name])
            feed[name] = np.ascontiguousarray(arr)
        return feed

    def run(self, args: Sequence[Any]) -> List[np.ndarray]:
        return self.session.run(self.outputs, self.feed(args))


def _check_classes(kind: str, name: str, arr: np.ndarray, classes: int, ignore_index: int) -> None:
    bad = ~(((arr >= 0) & (arr < classes)) | (arr == ignore_index))
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError("{}: {} must hold class indices 0 <= {} < {} or ignore_index {}, got {} at position {} "
                         "({} bad value{})".format(kind, name, name, classes, ignore_index, arr[where], where,
                                                   int(bad.sum()), "" if int(bad.sum()) == 1 else "s"))


class Bundle:
    """A loaded bundle. Thread-safe: every method only reads the bundle's state.

    ``forward`` and ``loss`` use the weights exported with the bundle. ``train_step`` is
    functional: it starts from ``params`` (default: the exported weights, :attr:`params`) and
    returns the new parameters without changing the bundle; thread them through a loop::

        params = b.params
        for x, y in batches:
            params = b.train_step(x, y, lr=0.01, params=params).new_params
    """

    def __init__(self, vb: VerifiedBundle, providers: Sequence[str], intra_op_threads: Optional[int]) -> None:
        self.path = Path(vb.root)
        self.manifest = vb.manifest
        self.manifest_sha256 = vb.manifest_sha256
        self.name = str(vb.manifest.get("name", self.path.name))
        arts = {a["kind"]: a for a in vb.manifest["artifacts"]}
        missing = [k for k in REQUIRED_KINDS if k not in arts]
        if missing:
            raise BundleError(str(vb.root), [("manifest.json", "lists no {} artifact".format(", ".join(missing)))])
        options = ort.SessionOptions()
        if intra_op_threads is not None:
            options.intra_op_num_threads = intra_op_threads
        self._graphs = {k: _Graph(vb, arts[k], options, providers) for k in GRAPH_KINDS if k in arts}
        self._fixtures = _npz(arts["fixtures"]["path"], vb.files[arts["fixtures"]["path"]])
        self._params: Dict[str, np.ndarray] = {}
        self._roles = arts["train_step"].get("roles") if "train_step" in arts else None
        if "params" in arts:
            self._params = _npz(arts["params"]["path"], vb.files[arts["params"]["path"]])
            for a in self._params.values():
                a.setflags(write=False)
        self.trusted_only = [a["path"] for a in vb.manifest["artifacts"] if a.get("trusted_only")]

    @property
    def graphs(self) -> Tuple[str, ...]:
        return tuple(self._graphs)

    @property
    def params(self) -> Dict[str, np.ndarray]:
        """The exported parameters (read-only arrays), keyed by the net's parameter names."""
        return dict(self._params)

    def _graph(self, kind: str) -> _Graph:
        if kind not in self._graphs:
            raise NotImplementedError("bundle {} has no {} graph (it holds {})".format(self.name, kind, ", ".join(self._graphs)))
        return self._graphs[kind]

    def forward(self, *inputs: Any) -> np.ndarray:
        """The net's prediction for ``inputs`` (usually one array ``x``)."""
        return self._graph("forward").run(inputs)[0]

    def _targets(self, graph: _Graph, targets: Sequence[Any]) -> None:
        names = [n for n, _, _ in graph.inputs[1:]]
        if len(targets) != len(names):
            loss = str((self.manifest.get("loss") or {}).get("import_path", "?")).rsplit(":", 1)[-1]
            raise TypeError("{}: loss {} takes {} target{} ({}), got {}".format(
                graph.kind, loss, len(names), "" if len(names) == 1 else "s", ", ".join(names), len(targets)))

    def loss(self, pred: Any, *targets: Any) -> np.ndarray:
        """The loss of ``pred`` against ``targets``, in the loss's own reduction."""
        graph = self._graph("loss")
        self._targets(graph, targets)
        return graph.run((pred,) + targets)[0]

    def loss_and_grad(self, pred: Any, *targets: Any) -> Tuple[np.ndarray, np.ndarray]:
        """The loss and its gradient with respect to ``pred``."""
        graph = self._graph("loss_and_grad")
        self._targets(graph, targets)
        out = graph.run((pred,) + targets)
        return out[0], out[1]

    def train_step(self, *data: Any, lr: float = 0.01, params: Optional[Dict[str, Any]] = None) -> TrainStepResult:
        """One SGD step on ``(x, *targets)`` from ``params`` (default: the exported weights)."""
        graph = self._graph("train_step")
        roles = self._roles
        params = self._params if params is None else params
        missing = [p["name"] for p in roles["params"] if p["name"] not in params]
        if missing:
            raise KeyError("train_step: params lacks {}".format(", ".join(missing)))
        if not isinstance(lr, (int, float)) or isinstance(lr, bool):
            raise TypeError("train_step: lr must be a float, got {}".format(type(lr).__name__))
        lr_dtype = dict((n, d) for n, d, _ in graph.inputs)[roles["lr"]]
        args = [params[p["name"]] for p in roles["params"]] + list(data) + [np.asarray(lr, dtype=lr_dtype)]
        if len(args) != len(graph.inputs):
            raise TypeError("train_step takes {} data inputs ({}), got {}".format(
                len(roles["data"]), ", ".join(roles["data"]), len(data)))
        out = dict(zip(graph.outputs, graph.run(args)))
        return TrainStepResult(out[roles["loss"]], {p["name"]: out[p["grad"]] for p in roles["params"]},
                               {p["name"]: out[p["new"]] for p in roles["params"]})

    def check(self) -> CheckReport:
        """Re-run every graph on the fixtures stored at export and judge each output by the
        parity rule against the eager float32 results and the float64 references."""
        rows = []
        for kind, graph in self._graphs.items():
            prefix = kind + "/"
            try:
                args = [self._fixtures[prefix + "in/" + name] for name, _, _ in graph.inputs]
                expected = [(self._fixtures[prefix + "eager/" + o], self._fixtures[prefix + "ref64/" + o]) for o in graph.outputs]
            except KeyError as exc:
                nan = float("nan")
                rows.append(Row(kind, "-", False, "fail: fixtures.npz lacks {}".format(exc), nan, nan, nan, nan, None, None))
                continue
            try:
                got = graph.run(args)
            except Exception as exc:  # a graph that loads but cannot run its own fixtures
                nan = float("nan")
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                rows.append(Row(kind, "-", False, "fail: {} did not run: {}".format(graph.path, first),
                                nan, nan, nan, nan, None, None))
                continue
            for i, (name, g, (eager, ref64)) in enumerate(zip(graph.outputs, got, expected)):
                gradient = (kind == "loss_and_grad" and i > 0) or (kind == "train_step" and i > 0)
                rows.append(compare(kind, name, g, eager, ref64, gradient=gradient))
        return CheckReport(self.name, rows)


def load_bundle(path: "os.PathLike[str] | str", *, manifest_sha256: Optional[str] = None,
                providers: Sequence[str] = ("CPUExecutionProvider",),
                intra_op_threads: Optional[int] = None) -> Bundle:
    """Verify a bundle folder, then load its ONNX graphs into onnxruntime.

    Before anything is parsed: the manifest's size (at most 1 MiB) and JSON; for every listed
    file a relative path inside the folder, no symlink or hard link, its size and sha256; no
    unlisted file; then every external-data location inside the (checksummed) ONNX files held to
    the same rules. ``manifest_sha256`` pins the manifest itself (checksums only prove the files
    match the manifest, not who wrote it). Raises :class:`BundleError` naming each file and fault.
    """
    vb = verify_bundle(path, manifest_sha256)
    try:
        return Bundle(vb, providers, intra_op_threads)
    except BundleError as exc:
        if exc.bundle == "":
            raise BundleError(str(path), exc.faults) from None
        raise
