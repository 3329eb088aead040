"""Checks a bundle folder before anything in it is parsed: the manifest's size and JSON, then for
every listed file its path, its type (no symlinks, no hard links, no FIFOs or devices), its size and
its sha256, then that nothing unlisted sits in the folder, then the external-data locations inside
every graph handed to onnxruntime.

Files are read once, through descriptors opened relative to their folder with ``O_NOFOLLOW`` and
``O_NONBLOCK`` (a FIFO swapped in cannot block the open) and confirmed regular by ``fstat``; their
verified bytes are what the loader parses afterwards, so a file swapped after its check is never
used. Memory is bounded before reading: listed sizes are capped per file and in total.
"""
import errno
import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

from .errors import BundleError, quote
from .onnx_refs import ORT_MEMORY_TAG, ProtobufError, external_refs

MANIFEST = "manifest.json"
MANIFEST_MAX_BYTES = 1 << 20       # 1 MiB: a manifest is a few KB; refuse before reading more
MANIFEST_MAX_DEPTH = 32            # JSON nesting; the exporter writes 5 levels
MAX_ARTIFACTS = 256
MAX_FILE_BYTES = 8 << 30
MAX_LOADED_BYTES = 2 << 30         # default cap on the bytes held in memory for one bundle
from ..bundle_format import FORMAT_VERSION  # noqa: E402
EXTERNAL_DATA_KIND = "onnx_external_data"
GRAPH_KINDS = ("forward", "loss", "loss_and_grad", "train_step")
# what the runtime itself parses (the rest, e.g. TorchScript, is checksummed while streaming)
RUNTIME_KINDS = GRAPH_KINDS + ("params", "fixtures", EXTERNAL_DATA_KIND)
MAX_WALK_DEPTH = 16                # unlisted folders are reported, and walked only this deep
MAX_WALK_ENTRIES = 10000
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# One rule for listed paths and external-data locations: portable file-name characters only. It
# refuses onnxruntime's in-memory tag '*/_ORT_MEM_ADDR_/*' (its offset is read as a pointer), lone
# surrogates (not encodable as a file name), control characters and shell or glob metacharacters.
_SAFE_PATH = re.compile(r"^[A-Za-z0-9._+=@,-]+(/[A-Za-z0-9._+=@,-]+)*$")
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_CHUNK = 1 << 20

Fault = Tuple[str, str]


@dataclass
class VerifiedBundle:
    root: Path
    manifest: Dict[str, Any]
    manifest_sha256: str
    files: Dict[str, bytes]      # listed path -> verified bytes (the kinds asked for)


def path_fault(rel: Any) -> Optional[str]:
    """Why a listed path (or external-data location) is not a plain relative path inside the
    bundle, or None. Pure string rules; the filesystem is checked separately."""
    if not isinstance(rel, str) or not rel:
        return "path must be a non-empty string, got {}".format(ascii(rel) if isinstance(rel, str) else repr(rel)[:80])
    if "\x00" in rel or "\\" in rel or ":" in rel:
        return "path {} holds a NUL, backslash or colon".format(ascii(rel))
    if rel.startswith("/") or rel.startswith("~"):
        return "path {} is absolute".format(ascii(rel))
    parts = rel.split("/")
    if any(p == ".." for p in parts):
        return "path {} escapes the bundle folder".format(ascii(rel))
    if any(p in ("", ".") for p in parts):
        return "path {} is not normalized (empty or '.' component)".format(ascii(rel))
    if len(rel) > 1024 or any(len(p) > 255 for p in parts):
        return "path {} is too long".format(ascii(rel[:80] + "..." if len(rel) > 80 else rel))
    if rel == ORT_MEMORY_TAG or "_ORT_MEM_ADDR_" in rel:
        return "path {} is onnxruntime's in-memory address tag".format(ascii(rel))
    if not _SAFE_PATH.match(rel):
        return "path {} holds characters outside A-Z a-z 0-9 . _ + = @ , - /".format(ascii(rel))
    return None


def _open_in(root: Path, rel: str) -> Tuple[Optional[int], Optional[os.stat_result], Optional[str]]:
    """Open ``rel`` below ``root`` one component at a time (relative to the folder's descriptor,
    never following a link) and return ``(fd, fstat, None)`` for a regular file, else a reason."""
    parts = rel.split("/")
    try:
        dfd = os.open(str(root), os.O_RDONLY | _O_DIRECTORY | _O_NONBLOCK | _O_CLOEXEC)
    except OSError as exc:
        return None, None, "cannot be read: the bundle folder cannot be opened ({})".format(exc.strerror)
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            try:
                st = os.lstat(part, dir_fd=dfd)
            except FileNotFoundError:
                return None, None, "missing" if last else "missing (folder {} does not exist)".format(quote(part))
            except OSError as exc:
                return None, None, "cannot be read ({})".format(exc.strerror)
            if stat.S_ISLNK(st.st_mode):
                return None, None, "is a symlink" if last else "lies under a symlinked folder {!r}".format(part)
            if not last:
                if not stat.S_ISDIR(st.st_mode):
                    return None, None, "has a non-folder {!r} on its path".format(part)
                flags = os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_NONBLOCK | _O_CLOEXEC
            else:
                if not stat.S_ISREG(st.st_mode):
                    return None, None, "is not a regular file"
                flags = os.O_RDONLY | _O_NOFOLLOW | _O_NONBLOCK | _O_CLOEXEC
            try:
                fd = os.open(part, flags, dir_fd=dfd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
                    return None, None, "changed while it was being checked"
                return None, None, "cannot be opened ({})".format(exc.strerror)
            fst = os.fstat(fd)
            if (fst.st_ino, fst.st_dev) != (st.st_ino, st.st_dev):
                os.close(fd)
                return None, None, "changed while it was being checked"
            os.close(dfd)
            dfd = fd
        if not stat.S_ISREG(fst.st_mode):  # swapped for a FIFO or device between lstat and open
            return None, None, "is not a regular file"
        if fst.st_nlink > 1:
            return None, None, "is a hard link ({} links)".format(fst.st_nlink)
        fd, dfd = dfd, -1
        return fd, fst, None
    finally:
        if dfd >= 0:
            os.close(dfd)


def _read_regular(root: Path, rel: str, limit: int, expected: Optional[int] = None,
                  keep: bool = True) -> Tuple[Optional[bytes], Optional[str], Optional[str]]:
    """``(bytes or None, sha256, None)`` for a regular file inside ``root``, or ``(None, None,
    why)``. With ``keep=False`` the file is only hashed, chunk by chunk."""
    fd, fst, why = _open_in(root, rel)
    if why is not None:
        return None, None, why
    with os.fdopen(fd, "rb", buffering=0) as fh:
        if expected is not None and fst.st_size != expected:
            return None, None, "is {} bytes, the manifest says {} (truncated, grown or replaced)".format(fst.st_size, expected)
        if fst.st_size > limit:
            return None, None, "is {} bytes, over the {}-byte limit".format(fst.st_size, limit)
        digest = hashlib.sha256()
        chunks: List[bytes] = []
        total = 0
        while True:
            try:
                chunk = fh.read(min(_CHUNK, limit + 1 - total))
            except OSError as exc:  # e.g. EIO, or EAGAIN from a file that is not what fstat said
                return None, None, "cannot be read ({})".format(exc.strerror)
            if chunk is None:  # non-blocking read with nothing to give: not a plain file
                return None, None, "is not a regular file"
            if not chunk:
                break
            total += len(chunk)
            digest.update(chunk)
            if keep:
                chunks.append(chunk)
            if total > limit:
                return None, None, "is over the {}-byte limit".format(limit)
    if expected is not None and total != expected:
        return None, None, "is {} bytes, the manifest says {} (truncated or replaced)".format(total, expected)
    return (b"".join(chunks) if keep else None), digest.hexdigest(), None


def _no_duplicate_keys(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError("duplicate key {}".format(ascii(k)))
        out[k] = v
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError("non-standard JSON constant {}".format(name))


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON, walked without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        deepest = max(deepest, d)
        if isinstance(v, dict):
            stack.extend((c, d + 1) for c in v.values())
        elif isinstance(v, list):
            stack.extend((c, d + 1) for c in v)
    return deepest


MAX_DYNAMIC_DIMS = 16


def dynamic_dims_fault(dims: Any) -> Optional[str]:
    """Why a manifest's ``dynamic_dims`` (the symbols of the dims beyond the batch that take any
    size; absent in bundles without any) is malformed, or None."""
    ok = (isinstance(dims, list) and len(dims) <= MAX_DYNAMIC_DIMS and len(set(map(ascii, dims))) == len(dims)
          and all(isinstance(d, str) and d.isidentifier() and len(d) <= 64 and d not in ("N", "batch") for d in dims))
    if ok:
        return None
    return ("dynamic_dims must be a list of at most {} distinct symbol names (identifiers of at most 64 characters, "
            "not N or batch), got {}".format(MAX_DYNAMIC_DIMS, ascii(dims)[:120]))


def is_int(value: Any) -> bool:
    """A JSON integer: ``int`` but not ``bool`` (``True == 1`` and ``1.0 == 1`` in Python)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _manifest(root: Path, pinned: Optional[str]) -> Tuple[Dict[str, Any], str]:
    data, _, why = _read_regular(root, MANIFEST, MANIFEST_MAX_BYTES)
    if why is not None:
        raise BundleError(str(root), [(MANIFEST, why)])
    digest = hashlib.sha256(data).hexdigest()
    if pinned is not None and digest != str(pinned).lower():
        raise BundleError(str(root), [(MANIFEST, "sha256 {} is not the pinned {}".format(digest, ascii(str(pinned))[1:-1]))])
    try:
        manifest = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicate_keys,
                              parse_constant=_reject_constant)
    except RecursionError:
        raise BundleError(str(root), [(MANIFEST, "is not valid JSON (nested too deeply)")]) from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise BundleError(str(root), [(MANIFEST, "is not valid JSON ({})".format(exc))]) from None
    faults: List[Fault] = []
    if not isinstance(manifest, dict):
        raise BundleError(str(root), [(MANIFEST, "must hold a JSON object, got {}".format(type(manifest).__name__))])
    if _depth(manifest) > MANIFEST_MAX_DEPTH:
        raise BundleError(str(root), [(MANIFEST, "is nested deeper than {} levels".format(MANIFEST_MAX_DEPTH))])
    version = manifest.get("format_version")
    if not (is_int(version) and version == FORMAT_VERSION):
        faults.append((MANIFEST, "format_version must be {}, got {} (the integer {} exactly)".format(
            FORMAT_VERSION, json.dumps(version)[:80], FORMAT_VERSION)))
    why = dynamic_dims_fault(manifest.get("dynamic_dims", []))
    if why is not None:
        faults.append((MANIFEST, why))
    arts = manifest.get("artifacts")
    if not isinstance(arts, list) or not arts or len(arts) > MAX_ARTIFACTS:
        faults.append((MANIFEST, "artifacts must be a list of 1 to {} entries".format(MAX_ARTIFACTS)))
        raise BundleError(str(root), faults)
    seen = set()
    kinds: Dict[str, str] = {}
    for i, art in enumerate(arts):
        where = "{} artifacts[{}]".format(MANIFEST, i)
        if not isinstance(art, dict):
            faults.append((where, "must be an object"))
            continue
        rel = art.get("path")
        why = path_fault(rel)
        if why is not None:
            faults.append((str(rel), why + " (" + where + ")"))
            continue
        if rel == MANIFEST or rel in seen:
            faults.append((rel, "listed twice or names the manifest"))
        seen.add(rel)
        kind = art.get("kind")
        if not isinstance(kind, str):
            faults.append((rel, "kind must be a string, got {}".format(json.dumps(kind)[:80])))
        elif kind != EXTERNAL_DATA_KIND and kind in kinds:
            faults.append((rel, "kind {} is also listed for {}; a bundle holds one artifact per kind".format(
                quote(kind), quote(kinds[kind]))))
        else:
            kinds[kind] = rel
        if not isinstance(art.get("sha256"), str) or not _SHA256.match(art["sha256"]):
            faults.append((rel, "sha256 must be 64 lowercase hex digits, got {}".format(json.dumps(art.get("sha256"))[:80])))
        size = art.get("bytes")
        if not is_int(size) or not 0 <= size <= MAX_FILE_BYTES:
            faults.append((rel, "bytes must be an integer in [0, {}], got {}".format(MAX_FILE_BYTES, json.dumps(size)[:80])))
    if faults:
        raise BundleError(str(root), faults)
    return manifest, digest


def _unlisted(root: Path, listed: set) -> List[Fault]:
    """Everything in the folder that the manifest does not list: files, symlinks, stray folders.
    Walked with an explicit stack (a deep folder chain cannot overflow recursion); unlisted folders
    are walked at most MAX_WALK_DEPTH deep and MAX_WALK_ENTRIES entries are looked at in all."""
    parents = {"/".join(p.split("/")[:i]) for p in listed for i in range(1, p.count("/") + 1)}
    faults: List[Fault] = []
    stack: List[Tuple[str, int]] = [("", 0)]
    seen = 0
    while stack:
        rel_dir, depth = stack.pop()
        try:
            with os.scandir(os.path.join(str(root), rel_dir) if rel_dir else str(root)) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            faults.append((rel_dir + "/", "folder cannot be listed ({})".format(exc.strerror)))
            continue
        below = []
        for entry in entries:
            seen += 1
            if seen > MAX_WALK_ENTRIES:
                faults.append((rel_dir + "/" if rel_dir else ".", "holds more than {} entries; not walked further".format(MAX_WALK_ENTRIES)))
                return faults
            rel = entry.name if not rel_dir else rel_dir + "/" + entry.name
            try:
                is_link, is_dir = entry.is_symlink(), entry.is_dir(follow_symlinks=False)
            except OSError as exc:
                faults.append((rel, "cannot be examined ({})".format(exc.strerror)))
                continue
            if is_link:
                if rel not in listed:  # listed ones are reported by their own check
                    faults.append((rel, "is a symlink and not listed in the manifest"))
            elif is_dir:
                if rel not in parents:
                    faults.append((rel + "/", "folder not listed in the manifest"))
                    if depth + 1 >= MAX_WALK_DEPTH:
                        faults.append((rel + "/", "nested deeper than {} folders; not walked further".format(MAX_WALK_DEPTH)))
                        continue
                below.append((rel, depth + 1))
            elif rel != MANIFEST and rel not in listed:
                faults.append((rel, "file not listed in the manifest"))
        stack.extend(reversed(below))  # keep the report in sorted, depth-first order
    return faults


def _external_data_faults(rel: str, data: bytes, arts: Dict[str, Dict[str, Any]]) -> List[Fault]:
    """Hold each external-data location in an (already checksummed) graph to the same rules as a
    listed path: relative, plain, inside the bundle, listed, and the byte range within the file."""
    try:
        refs = external_refs(data)
    except ProtobufError as exc:
        return [(rel, "is not a valid ONNX protobuf ({})".format(exc))]
    faults: List[Fault] = []
    base = rel.rsplit("/", 1)[0] + "/" if "/" in rel else ""
    for ref in refs:
        what = "external data of tensor {}".format(ascii(ref.tensor))
        loc = ref.location
        if ref.data_location != 1 or loc is None:
            faults.append((rel, "{} is inconsistent (data_location {}, location {})".format(
                what, ref.data_location, "None" if loc is None else ascii(loc))))
            continue
        unknown = sorted(set(ref.entries) - {"location", "offset", "length", "checksum"})
        if unknown:
            faults.append((rel, "{}: unknown external_data keys {}".format(what, ", ".join(ascii(k) for k in unknown))))
            continue
        why = path_fault(loc)
        if why is not None:
            faults.append((rel, "{}: {}".format(what, why)))
            continue
        target = base + loc
        art = arts.get(target)
        if art is None or art.get("kind") != EXTERNAL_DATA_KIND:
            faults.append((rel, "{}: location {} is not listed in the manifest as {}".format(what, ascii(loc), EXTERNAL_DATA_KIND)))
            continue
        offset_text, length_text = ref.entries.get("offset", "0"), ref.entries.get("length")
        if not re.fullmatch(r"[0-9]{1,19}", offset_text) or (length_text is not None and not re.fullmatch(r"[0-9]{1,19}", length_text)):
            faults.append((rel, "{}: offset/length must be plain decimal integers, got {}".format(
                what, ascii({k: ref.entries[k] for k in ("offset", "length") if k in ref.entries}))))
            continue
        offset = int(offset_text)
        length = int(length_text) if length_text is not None else art["bytes"] - offset
        if offset < 0 or length < 0 or offset + length > art["bytes"]:
            faults.append((rel, "{}: bytes [{}, {}) lie outside {} ({} bytes)".format(
                what, offset, offset + length, target, art["bytes"])))
    return faults


def verify_bundle(path: "os.PathLike[str] | str", manifest_sha256: Optional[str] = None, *,
                  keep: Optional[Iterable[str]] = None, max_bytes: int = MAX_LOADED_BYTES) -> VerifiedBundle:
    """Every check that needs no parser beyond JSON and the protobuf wire format. Raises
    :class:`BundleError` listing every fault; returns the manifest and the verified bytes of the
    artifacts whose kind is in ``keep`` (default: all). Files of other kinds are only hashed.
    ``max_bytes`` caps the listed size of the kept files together, checked before reading."""
    given = Path(path)
    if not given.is_dir():
        raise BundleError(str(given), [(str(given), "is not a folder")])
    root = Path(os.path.realpath(given))
    manifest, digest = _manifest(root, manifest_sha256)
    arts = {a["path"]: a for a in manifest["artifacts"]}
    kept = set(keep) if keep is not None else None
    wanted = {rel for rel, a in arts.items() if kept is None or a["kind"] in kept}
    total = sum(arts[rel]["bytes"] for rel in wanted)
    if total > max_bytes:
        raise BundleError(str(given), [(MANIFEST, "lists {} bytes to load, over the {}-byte limit (max_bytes)".format(total, max_bytes))])
    faults: List[Fault] = []
    files: Dict[str, bytes] = {}
    for rel, art in arts.items():
        data, got, why = _read_regular(root, rel, art["bytes"], expected=art["bytes"], keep=rel in wanted)
        if why is None and got != art["sha256"]:
            why = "sha256 mismatch: manifest {}, file {}".format(art["sha256"], got)
        if why is not None:
            faults.append((rel, why))
        elif data is not None:
            files[rel] = data
    faults += _unlisted(root, set(arts))
    if faults:
        raise BundleError(str(given), faults)
    # by kind, whatever the file is called: every graph onnxruntime will be given is walked
    for rel, art in arts.items():
        if art["kind"] in GRAPH_KINDS and rel in files:
            faults += _external_data_faults(rel, files[rel], arts)
    if faults:
        raise BundleError(str(given), faults)
    return VerifiedBundle(root, manifest, digest, files)
