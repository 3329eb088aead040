"""Arrays of an ``.npz`` held in memory, read as untrusted data.

``np.load`` trusts a member's zip and ``.npy`` headers: a header that lies about its size, an
unsupported compression method or an encryption flag surface as whatever zipfile or numpy raise
(NotImplementedError, RuntimeError, MemoryError for a shape of 10**12 elements...). Here every
member is held to the rules first: stored or deflated, not encrypted, its declared size within
the cap (summed over members, before anything is inflated), a plain ``.npy`` of a numeric or bool
dtype whose header's shape accounts for exactly the bytes that follow. Anything else is one
``(file, reason)`` fault for :class:`~compile_losses.runtime.errors.BundleError`.
"""
import ast
import io
import zipfile
from typing import Dict

import numpy as np

from .errors import BundleError, quote

NPZ_MAX_BYTES = 1 << 30     # uncompressed, summed over the arrays in one npz
MAX_MEMBERS = 4096
_MAGIC = b"\x93NUMPY"
_KINDS = "biuf"             # bool, signed, unsigned, float: what fixtures and weights hold


def _array(name: str, raw: bytes) -> np.ndarray:
    """One ``.npy`` member, parsed without trusting its header."""
    if raw[:6] != _MAGIC or len(raw) < 10:
        raise ValueError("{} is not a .npy array".format(quote(name)))
    major = raw[6]
    if major == 1:
        hlen, start = int.from_bytes(raw[8:10], "little"), 10
    elif major in (2, 3):
        if len(raw) < 12:
            raise ValueError("{}: truncated .npy header".format(quote(name)))
        hlen, start = int.from_bytes(raw[8:12], "little"), 12
    else:
        raise ValueError("{}: unsupported .npy version {}".format(quote(name), major))
    if hlen > 65536 or start + hlen > len(raw):
        raise ValueError("{}: .npy header length {} runs past the member".format(quote(name), hlen))
    try:
        text = raw[start:start + hlen].decode("latin1" if major < 3 else "utf-8")
        header = ast.literal_eval(text)  # a dict literal of str/tuple/bool, as numpy writes it
    except (ValueError, SyntaxError, UnicodeDecodeError, MemoryError, RecursionError):
        raise ValueError("{}: .npy header is not a literal dict".format(quote(name))) from None
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        raise ValueError("{}: .npy header must hold descr, fortran_order and shape".format(quote(name)))
    descr, fortran, shape = header["descr"], header["fortran_order"], header["shape"]
    if not isinstance(descr, str) or not isinstance(fortran, bool) or not isinstance(shape, tuple) \
            or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2 ** 40 for d in shape) or len(shape) > 32:
        raise ValueError("{}: .npy header has an invalid descr, fortran_order or shape".format(quote(name)))
    try:
        dtype = np.dtype(descr)
    except (TypeError, ValueError):
        raise ValueError("{}: .npy dtype {} is not a numpy dtype".format(quote(name), ascii(descr))) from None
    if dtype.kind not in _KINDS or dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise ValueError("{}: dtype {} is not a plain number or bool".format(quote(name), ascii(descr)))
    count = 1
    for d in shape:
        count *= d
    body = len(raw) - start - hlen
    if count * dtype.itemsize != body:
        raise ValueError("{}: header shape {} needs {} bytes, the member holds {}".format(
            quote(name), shape, count * dtype.itemsize, body))
    arr = np.frombuffer(raw, dtype=dtype, count=count, offset=start + hlen)
    return arr.reshape(shape, order="F" if fortran else "C").copy()


def read_npz(rel: str, data: bytes, max_bytes: int = NPZ_MAX_BYTES) -> Dict[str, np.ndarray]:
    """Arrays of an npz held in memory, keyed by name (``.npy`` dropped). Raises BundleError."""
    try:
        return _read(data, max_bytes)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError,
            RuntimeError, KeyError, IndexError, OverflowError, MemoryError) as exc:
        # zipfile reports a corrupt archive through any of these (RuntimeError: encrypted member,
        # NotImplementedError: unknown compression, KeyError/IndexError: broken directory)
        raise BundleError("", [(rel, "is not a readable npz of plain arrays ({})".format(
            str(exc)[:300] or type(exc).__name__))]) from None


def _read(data: bytes, max_bytes: int) -> Dict[str, np.ndarray]:
    out: Dict[str, np.ndarray] = {}
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = zf.infolist()
        if len(infos) > MAX_MEMBERS:
            raise ValueError("{} members, over the limit of {}".format(len(infos), MAX_MEMBERS))
        total = 0
        for info in infos:
            if info.flag_bits & 0x1:
                raise ValueError("member {} is encrypted".format(quote(info.filename)))
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise ValueError("member {} uses compression method {} (only stored or deflated)".format(
                    quote(info.filename), info.compress_type))
            total += info.file_size
        if total > max_bytes:
            raise ValueError("unpacks to {} bytes, over the {}-byte limit".format(total, max_bytes))
        for info in infos:
            name = info.filename
            if not name.endswith(".npy") or name[:-4] in out:
                raise ValueError("member {} is not a uniquely named .npy".format(quote(name)))
            # zipfile stops at the declared size and checks the CRC, so a lying header cannot
            # inflate more than the cap checked above
            with zf.open(info) as fh:
                raw = fh.read(info.file_size + 1)
            if len(raw) != info.file_size:
                raise ValueError("member {} holds {} bytes, its header says {}".format(quote(name), len(raw), info.file_size))
            out[name[:-4]] = _array(name, raw)
    return out
