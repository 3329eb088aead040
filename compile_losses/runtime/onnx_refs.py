"""Find every external-data reference in an ONNX model, reading the protobuf wire format directly.

The runtime may not import the ``onnx`` package, and must not hand a model to onnxruntime before
its external-data locations are checked (onnx and onnxruntime both had path-traversal holes
there: CVE-2024-27318, CVE-2026-34447). So this walks only the messages that can hold a
``TensorProto`` (graphs, nodes, attributes, functions, training info, sparse tensors) and reads
each tensor's ``external_data`` entries and ``data_location``. Malformed input raises
:class:`ProtobufError`; nothing is executed and recursion depth is bounded.

Called only on bytes whose sha256 already matched the manifest.
"""
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

MAX_DEPTH = 64  # nested subgraphs (If/Loop bodies) deeper than this are refused

# Field numbers from onnx.proto (ONNX 1.x; stable since IR version 3).
_MODEL = {7: "graph", 20: "training", 25: "function"}
_TRAINING = {1: "graph", 2: "graph"}
_FUNCTION = {7: "node", 11: "attribute"}
_GRAPH = {1: "node", 5: "tensor", 15: "sparse"}
_NODE = {5: "attribute"}
_ATTRIBUTE = {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"}
_SPARSE = {1: "tensor", 2: "tensor"}
_MESSAGES = {"model": _MODEL, "training": _TRAINING, "function": _FUNCTION, "graph": _GRAPH,
             "node": _NODE, "attribute": _ATTRIBUTE, "sparse": _SPARSE}
_TENSOR_NAME, _TENSOR_EXTERNAL, _TENSOR_LOCATION = 8, 13, 14
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL


class ProtobufError(ValueError):
    pass


@dataclass(frozen=True)
class ExternalRef:
    """One tensor stored outside the model file."""

    tensor: str
    entries: Dict[str, str]  # location, offset, length, checksum (as ONNX writes them)
    data_location: int

    @property
    def location(self) -> Optional[str]:
        return self.entries.get("location")


def _varint(buf: memoryview, pos: int, end: int) -> Tuple[int, int]:
    result = shift = 0
    for _ in range(10):
        if pos >= end:
            raise ProtobufError("truncated varint at byte {}".format(pos))
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
    raise ProtobufError("varint longer than 10 bytes at byte {}".format(pos))


def _fields(buf: memoryview, start: int, end: int) -> Iterator[Tuple[int, int, int, int]]:
    """Yield (field number, wire type, value or payload start, payload end) for one message."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise ProtobufError("field number 0 at byte {}".format(pos))
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield field, wire, value, pos
        elif wire == 1:
            if pos + 8 > end:
                raise ProtobufError("truncated fixed64 at byte {}".format(pos))
            pos += 8
        elif wire == 5:
            if pos + 4 > end:
                raise ProtobufError("truncated fixed32 at byte {}".format(pos))
            pos += 4
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if length > end - pos:
                raise ProtobufError("length {} at byte {} runs past the end of its message".format(length, pos))
            yield field, wire, pos, pos + length
            pos += length
        else:  # groups (3, 4) are not used by ONNX; 6, 7 do not exist
            raise ProtobufError("unsupported wire type {} at byte {}".format(wire, pos))
    if pos != end:
        raise ProtobufError("message overruns its length")


def _utf8(buf: memoryview, start: int, end: int, what: str) -> str:
    try:
        return bytes(buf[start:end]).decode("utf-8")
    except UnicodeDecodeError:
        raise ProtobufError("{} is not UTF-8".format(what)) from None


def _tensor(buf: memoryview, start: int, end: int, out: List[ExternalRef]) -> None:
    name = ""
    entries: Dict[str, str] = {}
    location = 0
    has_external = False
    for field, wire, a, b in _fields(buf, start, end):
        if field == _TENSOR_NAME and wire == 2:
            name = _utf8(buf, a, b, "tensor name")
        elif field == _TENSOR_LOCATION:
            if wire != 0:
                raise ProtobufError("tensor data_location has wire type {}".format(wire))
            location = a
        elif field == _TENSOR_EXTERNAL:
            if wire != 2:
                raise ProtobufError("tensor external_data has wire type {}".format(wire))
            has_external = True
            key = value = ""
            for f2, w2, a2, b2 in _fields(buf, a, b):
                if w2 == 2 and f2 == 1:
                    key = _utf8(buf, a2, b2, "external_data key")
                elif w2 == 2 and f2 == 2:
                    value = _utf8(buf, a2, b2, "external_data value")
            if key in entries:
                raise ProtobufError("tensor {!r} repeats external_data key {!r}".format(name, key))
            entries[key] = value
    if has_external or location == _EXTERNAL:
        out.append(ExternalRef(name, entries, location))


def external_refs(data: bytes) -> List[ExternalRef]:
    """Every tensor in the model that points at external data (an empty list for a self-contained model)."""
    buf = memoryview(data)
    out: List[ExternalRef] = []
    stack = [("model", 0, len(buf), 0)]
    while stack:
        kind, start, end, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ProtobufError("messages nested deeper than {}".format(MAX_DEPTH))
        if kind == "tensor":
            _tensor(buf, start, end, out)
            continue
        children = _MESSAGES[kind]
        for field, wire, a, b in _fields(buf, start, end):
            child = children.get(field)
            if child is None:
                continue
            if wire != 2:
                raise ProtobufError("{} field {} should be a message, has wire type {}".format(kind, field, wire))
            stack.append((child, a, b, depth + 1))
    return out
