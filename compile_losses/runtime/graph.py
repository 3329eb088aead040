"""One ONNX graph of a verified bundle in onnxruntime: a session built from verified bytes only,
the manifest's signature checked on every call, and every run under a time bound."""
import hashlib
import threading
import weakref
from typing import Any, Container, Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnxruntime as ort

from ..sessions import session_options
from .errors import BundleError, BundleTimeoutError, quote
from .integrity import VerifiedBundle
from .onnx_refs import ExternalRef, ProtobufError, inline_external
from .specs import Signature, SignatureError, parse_signature
from .timeouts import WATCHDOG

# Bundles loaded twice in one process (check, then serve; tests) share their sessions; weakly held,
# so a session lives exactly as long as a Bundle that uses it (a large model is never kept around).
_SESSIONS: "weakref.WeakValueDictionary[Tuple[Any, ...], ort.InferenceSession]" = weakref.WeakValueDictionary()
_SESSIONS_LOCK = threading.Lock()
_QUIET = 4               # onnxruntime log level "fatal": its errors come back as our named errors


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _session(model: bytes, providers: Sequence[str], intra_op_threads: Optional[int]) -> ort.InferenceSession:
    key = (hashlib.sha256(model).hexdigest(), tuple(providers), intra_op_threads)
    with _SESSIONS_LOCK:
        session = _SESSIONS.get(key)
    if session is not None:
        return session
    # the project's one set of session options (compile_losses.sessions: imports onnxruntime only);
    # threads None is onnxruntime's default, all cores
    options = session_options(0 if intra_op_threads is None else intra_op_threads, log_level=_QUIET)
    # enable_fallback=0: onnxruntime's Python wrapper would otherwise print an "EP Error" banner
    # to stdout and build a refused graph a second time (kwarg present in 1.27 through 1.32)
    session = ort.InferenceSession(model, options, providers=list(providers), enable_fallback=0)
    with _SESSIONS_LOCK:
        _SESSIONS[key] = session
    return session


def self_contained(vb: VerifiedBundle, rel: str) -> bytes:
    """The graph's verified bytes with its (verified, listed) external data inlined."""
    base = rel.rsplit("/", 1)[0] + "/" if "/" in rel else ""

    def fetch(ref: ExternalRef) -> bytes:
        data = vb.files[base + ref.entries["location"]]
        offset = int(ref.entries.get("offset", "0"))
        length = int(ref.entries["length"]) if "length" in ref.entries else len(data) - offset
        return data[offset:offset + length]

    return inline_external(vb.files[rel], fetch)


class Graph:
    """One ONNX graph of the bundle and its signature from the manifest."""

    def __init__(self, vb: VerifiedBundle, art: Dict[str, Any], providers: Sequence[str],
                 intra_op_threads: Optional[int]) -> None:
        rel = art["path"]
        self.kind, self.path, self.bundle = art["kind"], rel, str(vb.root)
        try:
            self.signature: Signature = parse_signature(art)
        except SignatureError as exc:
            raise BundleError(str(vb.root), [(rel, str(exc))]) from None
        self.inputs, self.outputs, self.classes = self.signature.inputs, self.signature.outputs, self.signature.classes
        # a symbol beyond dim 0 is a dim that takes any size: only those the manifest declares
        self.dynamic = tuple(vb.manifest.get("dynamic_dims", []))
        for name, _, shape in self.inputs:
            bad = [d for d in shape[1:] if isinstance(d, str) and d not in self.dynamic]
            if bad:
                raise BundleError(str(vb.root), [(rel, "input {} shape {} names dim(s) {} that the manifest's "
                                                       "dynamic_dims {} does not declare".format(
                                                           quote(name), ascii(list(shape))[:120], ascii(bad)[:80],
                                                           ascii(list(self.dynamic))[:120]))])
        try:
            model = self_contained(vb, rel)
        except ProtobufError as exc:
            raise BundleError(str(vb.root), [(rel, "is not a valid ONNX protobuf ({})".format(exc))]) from None
        if len(model) >= 2 ** 31:
            raise BundleError(str(vb.root), [(rel, "is {} bytes with its external data inlined, over protobuf's 2 GiB".format(len(model)))])
        try:
            # from bytes only: onnxruntime is never given a path, so it opens no file of its own
            self.session = _session(model, providers, intra_op_threads)
        except Exception as exc:  # onnxruntime raises its own pybind exception types
            raise BundleError(str(vb.root), [(rel, "onnxruntime refused the graph: {}".format(_first_line(exc)))]) from None
        names = ([i.name for i in self.session.get_inputs()], [o.name for o in self.session.get_outputs()])
        if names != ([n for n, _, _ in self.inputs], self.outputs):
            raise BundleError(str(vb.root), [(rel, "graph inputs/outputs {} do not match the manifest's {}".format(
                ascii(names)[:300], ascii(([n for n, _, _ in self.inputs], self.outputs))[:300]))])

    def feed(self, args: Sequence[Any], trusted: Container[int] = ()) -> Dict[str, np.ndarray]:
        """Check arity, dtype and shape against the signature; ``N`` must be one size throughout.
        ``trusted``: positions holding arrays already checked against the signature (a trainer's
        parameters and state, which only it and this graph's checked outputs ever write)."""
        if len(args) != len(self.inputs):
            raise TypeError("{} takes {} inputs ({}), got {}".format(
                self.kind, len(self.inputs), ", ".join(quote(n) for n, _, _ in self.inputs), len(args)))
        sizes: Dict[str, Tuple[str, int]] = {}
        feed = {}
        for i, ((name, dtype, shape), value) in enumerate(zip(self.inputs, args)):
            if i in trusted:
                feed[name] = value
                continue
            arr = np.asarray(value)
            if arr.dtype != dtype:
                raise TypeError("{}: {} must have dtype {}, got {}".format(self.kind, quote(name), dtype, arr.dtype))
            want = "({})".format(", ".join(str(d) for d in shape))
            if arr.ndim != len(shape) or any(isinstance(d, int) and d != g for d, g in zip(shape, arr.shape)):
                raise ValueError("{}: {} must have shape {}, got {}{}".format(
                    self.kind, quote(name), want, tuple(arr.shape), self._fixed_dim(shape, arr.shape)))
            for d, g in zip(shape, arr.shape):
                if isinstance(d, str):
                    seen = sizes.setdefault(d, (name, g))
                    if seen[1] != g:
                        raise ValueError("{}: {} has {}={}, but {} has {}={}".format(
                            self.kind, quote(name), d, g, quote(seen[0]), d, seen[1]))
            if name in self.classes:
                _check_classes(self.kind, name, arr, *self.classes[name])
            feed[name] = np.ascontiguousarray(arr)
        return feed

    def _fixed_dim(self, shape: Tuple[Any, ...], got: Tuple[int, ...]) -> str:
        """With declared dynamic dims, which fixed dim a wrong shape breaks: its index, the size
        given and the size expected (the dims that take any size are named)."""
        if not self.dynamic or len(shape) != len(got):
            return ""
        d = next(i for i, (want, g) in enumerate(zip(shape, got)) if isinstance(want, int) and want != g)
        return ": dim {} is {}, expected {} (only {} take any size)".format(
            d, got[d], shape[d], ", ".join(["N"] + [s for s in shape[1:] if isinstance(s, str)]))

    def run(self, args: Sequence[Any], timeout_s: Optional[float], trusted: Container[int] = ()) -> List[np.ndarray]:
        """The graph's outputs; stopped and :class:`BundleTimeoutError` after ``timeout_s``."""
        feed = self.feed(args, trusted)
        options = ort.RunOptions()
        options.log_severity_level = _QUIET
        if timeout_s is None:
            return self.session.run(self.outputs, feed, options)
        watch = WATCHDOG.arm(options, timeout_s)
        try:
            out = self.session.run(self.outputs, feed, options)
        except Exception:
            if WATCHDOG.disarm(watch):
                raise BundleTimeoutError(self.bundle, self.path, timeout_s) from None
            raise
        WATCHDOG.disarm(watch)
        return out


def _check_classes(kind: str, name: str, arr: np.ndarray, classes: int, ignore_index: int) -> None:
    bad = ~(((arr >= 0) & (arr < classes)) | (arr == ignore_index))
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        name = quote(name)
        raise ValueError("{}: {} must hold class indices 0 <= {} < {} or ignore_index {}, got {} at position {} "
                         "({} bad value{})".format(kind, name, name, classes, ignore_index, arr[where], where,
                                                   int(bad.sum()), "" if int(bad.sum()) == 1 else "s"))
