"""Find every external-data reference in an ONNX model, and inline the verified bytes in their
place, reading and writing the protobuf wire format directly.

The runtime may not import the ``onnx`` package, and must not hand a model to onnxruntime before
its external-data locations are checked (onnx and onnxruntime both had path-traversal holes
there: CVE-2024-27318, CVE-2026-34447). So this walks only the messages that can hold a
``TensorProto`` (graphs, nodes, attributes, functions, training info, sparse tensors) and reads
each tensor's ``external_data`` entries and ``data_location``. Malformed input raises
:class:`ProtobufError`; nothing is executed and recursion depth is bounded.

Called only on bytes whose sha256 already matched the manifest. :func:`inline_external` then
builds a self-contained model from those bytes and the verified external files, so onnxruntime is
never given a path to open (a file swapped after the check cannot be read in its place).
"""
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

MAX_DEPTH = 64  # nested subgraphs (If/Loop bodies) deeper than this are refused
# onnxruntime reads a location equal to this tag as "offset is a pointer into this process"
# (onnxruntime/core/framework/tensorprotoutils.h, kTensorProtoMemoryAddressTag)
ORT_MEMORY_TAG = "*/_ORT_MEM_ADDR_/*"

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
_TENSOR_NAME, _TENSOR_RAW, _TENSOR_EXTERNAL, _TENSOR_LOCATION = 8, 9, 13, 14
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
    for field, wire, a, b, _, _ in _spans(buf, start, end):
        yield field, wire, a, b


def _spans(buf: memoryview, start: int, end: int) -> Iterator[Tuple[int, int, int, int, int, int]]:
    """As :func:`_fields`, plus where the whole field (key included) starts and ends."""
    pos = start
    while pos < end:
        at = pos
        key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise ProtobufError("field number 0 at byte {}".format(pos))
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield field, wire, value, pos, at, pos
        elif wire == 1:
            if pos + 8 > end:
                raise ProtobufError("truncated fixed64 at byte {}".format(pos))
            pos += 8
            yield field, wire, pos - 8, pos, at, pos
        elif wire == 5:
            if pos + 4 > end:
                raise ProtobufError("truncated fixed32 at byte {}".format(pos))
            pos += 4
            yield field, wire, pos - 4, pos, at, pos
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if length > end - pos:
                raise ProtobufError("length {} at byte {} runs past the end of its message".format(length, pos))
            yield field, wire, pos, pos + length, at, pos + length
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


def _key(field: int, wire: int) -> bytes:
    return _encode_varint((field << 3) | wire)


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _inline_tensor(buf: memoryview, start: int, end: int, fetch) -> Optional[bytes]:
    refs: List[ExternalRef] = []
    _tensor(buf, start, end, refs)
    if not refs:
        return None
    out = bytearray()
    for field, wire, a, b, at, to in _spans(buf, start, end):
        if field in (_TENSOR_EXTERNAL, _TENSOR_LOCATION):
            continue
        if field == _TENSOR_RAW:
            raise ProtobufError("tensor {!r} has both raw_data and external data".format(refs[0].tensor))
        out += buf[at:to]
    data = fetch(refs[0])
    return bytes(out) + _key(_TENSOR_RAW, 2) + _encode_varint(len(data)) + data


def _inline(buf: memoryview, kind: str, start: int, end: int, depth: int, fetch) -> Optional[bytes]:
    if depth > MAX_DEPTH:
        raise ProtobufError("messages nested deeper than {}".format(MAX_DEPTH))
    if kind == "tensor":
        return _inline_tensor(buf, start, end, fetch)
    children = _MESSAGES[kind]
    parts: List[bytes] = []
    changed = False
    for field, wire, a, b, at, to in _spans(buf, start, end):
        child = children.get(field)
        new = _inline(buf, child, a, b, depth + 1, fetch) if child is not None and wire == 2 else None
        if new is None:
            parts.append(bytes(buf[at:to]))
        else:
            parts.append(_key(field, 2) + _encode_varint(len(new)) + new)
            changed = True
    return b"".join(parts) if changed else None


def inline_external(data: bytes, fetch) -> bytes:
    """The model with every external tensor's bytes moved into its ``raw_data`` (and its
    ``external_data`` and ``data_location`` dropped). ``fetch(ref) -> bytes`` returns the verified
    bytes of one reference; a self-contained model is returned as it is."""
    new = _inline(memoryview(data), "model", 0, len(data), 0, fetch)
    return data if new is None else new
