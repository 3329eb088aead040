"""Checks a bundle folder before anything in it is parsed: the manifest's size and JSON, then for
every listed file its path, its type (no symlinks, no hard links), its size and its sha256, then
that nothing unlisted sits in the folder, then the external-data locations inside ONNX files.

Files are read once, through ``O_NOFOLLOW`` descriptors, and their verified bytes are what the
loader parses afterwards, so a file swapped after its check is never used.
"""
import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .errors import BundleError
from .onnx_refs import ProtobufError, external_refs

MANIFEST = "manifest.json"
MANIFEST_MAX_BYTES = 1 << 20       # 1 MiB: a manifest is a few KB; refuse before reading more
MAX_ARTIFACTS = 256
MAX_FILE_BYTES = 8 << 30
FORMAT_VERSION = 1
EXTERNAL_DATA_KIND = "onnx_external_data"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)

Fault = Tuple[str, str]


@dataclass
class VerifiedBundle:
    root: Path
    manifest: Dict[str, Any]
    manifest_sha256: str
    files: Dict[str, bytes]      # listed path -> verified bytes


def path_fault(rel: Any) -> Optional[str]:
    """Why a listed path (or external-data location) is not a plain relative path inside the
    bundle, or None. Pure string rules; the filesystem is checked separately."""
    if not isinstance(rel, str) or not rel:
        return "path must be a non-empty string, got {!r}".format(rel)
    if "\x00" in rel or "\\" in rel or ":" in rel:
        return "path {!r} holds a NUL, backslash or colon".format(rel)
    if rel.startswith("/") or rel.startswith("~"):
        return "path {!r} is absolute".format(rel)
    parts = rel.split("/")
    if any(p == ".." for p in parts):
        return "path {!r} escapes the bundle folder".format(rel)
    if any(p in ("", ".") for p in parts):
        return "path {!r} is not normalized (empty or '.' component)".format(rel)
    if len(rel) > 1024 or any(len(p) > 255 for p in parts):
        return "path {!r} is too long".format(rel)
    return None


def _read_regular(root: Path, rel: str, limit: int,
                  expected: Optional[int] = None) -> Tuple[Optional[bytes], Optional[str]]:
    """Read a file inside ``root`` without following links anywhere on its path."""
    here = root
    parts = rel.split("/")
    for i, part in enumerate(parts):
        here = here / part
        try:
            st = os.lstat(here)
        except FileNotFoundError:
            return None, "missing" if i == len(parts) - 1 else "missing (folder {} does not exist)".format(part)
        except OSError as exc:
            return None, "cannot be read ({})".format(exc.strerror)
        if stat.S_ISLNK(st.st_mode):
            return None, "is a symlink" if i == len(parts) - 1 else "lies under a symlinked folder {!r}".format(part)
        if i < len(parts) - 1 and not stat.S_ISDIR(st.st_mode):
            return None, "has a non-folder {!r} on its path".format(part)
    if not stat.S_ISREG(st.st_mode):
        return None, "is not a regular file"
    if st.st_nlink > 1:
        return None, "is a hard link ({} links)".format(st.st_nlink)
    real = os.path.realpath(here)
    if os.path.commonpath([real, str(root)]) != str(root):
        return None, "resolves outside the bundle folder"
    if expected is not None and st.st_size != expected:
        return None, "is {} bytes, the manifest says {} (truncated, grown or replaced)".format(st.st_size, expected)
    if st.st_size > limit:
        return None, "is {} bytes, over the {}-byte limit".format(st.st_size, limit)
    try:
        fd = os.open(here, os.O_RDONLY | _O_NOFOLLOW)
    except OSError as exc:
        return None, "cannot be opened ({})".format(exc.strerror)
    with os.fdopen(fd, "rb") as fh:
        fst = os.fstat(fh.fileno())
        if (fst.st_ino, fst.st_dev) != (st.st_ino, st.st_dev) or fst.st_nlink > 1:
            return None, "changed while it was being checked"
        data = fh.read(limit + 1)
    if len(data) > limit:
        return None, "is over the {}-byte limit".format(limit)
    return data, None


def _no_duplicate_keys(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError("duplicate key {!r}".format(k))
        out[k] = v
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError("non-standard JSON constant {}".format(name))


def _manifest(root: Path, pinned: Optional[str]) -> Tuple[Dict[str, Any], str]:
    data, why = _read_regular(root, MANIFEST, MANIFEST_MAX_BYTES)
    if why is not None:
        raise BundleError(str(root), [(MANIFEST, why)])
    digest = hashlib.sha256(data).hexdigest()
    if pinned is not None and digest != pinned.lower():
        raise BundleError(str(root), [(MANIFEST, "sha256 {} is not the pinned {}".format(digest, pinned))])
    try:
        manifest = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicate_keys,
                              parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BundleError(str(root), [(MANIFEST, "is not valid JSON ({})".format(exc))]) from None
    faults: List[Fault] = []
    if not isinstance(manifest, dict):
        raise BundleError(str(root), [(MANIFEST, "must hold a JSON object, got {}".format(type(manifest).__name__))])
    if manifest.get("format_version") != FORMAT_VERSION:
        faults.append((MANIFEST, "format_version must be {}, got {!r}".format(FORMAT_VERSION, manifest.get("format_version"))))
    arts = manifest.get("artifacts")
    if not isinstance(arts, list) or not arts or len(arts) > MAX_ARTIFACTS:
        faults.append((MANIFEST, "artifacts must be a list of 1 to {} entries".format(MAX_ARTIFACTS)))
        raise BundleError(str(root), faults)
    seen = set()
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
        if not isinstance(art.get("kind"), str):
            faults.append((rel, "kind must be a string, got {!r}".format(art.get("kind"))))
        if not isinstance(art.get("sha256"), str) or not _SHA256.match(art["sha256"]):
            faults.append((rel, "sha256 must be 64 lowercase hex digits, got {!r}".format(art.get("sha256"))))
        size = art.get("bytes")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_FILE_BYTES:
            faults.append((rel, "bytes must be an integer in [0, {}], got {!r}".format(MAX_FILE_BYTES, size)))
    if faults:
        raise BundleError(str(root), faults)
    return manifest, digest


def _unlisted(root: Path, listed: set) -> List[Fault]:
    """Everything in the folder that the manifest does not list: files, symlinks, stray folders."""
    parents = {"/".join(p.split("/")[:i]) for p in listed for i in range(1, p.count("/") + 1)}
    faults: List[Fault] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = os.path.relpath(dirpath, root)
        for name in sorted(dirnames + filenames):
            rel = name if rel_dir == "." else rel_dir + "/" + name
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISLNK(st.st_mode):
                if rel not in listed:  # listed ones are reported by their own check
                    faults.append((rel, "is a symlink and not listed in the manifest"))
            elif stat.S_ISDIR(st.st_mode):
                if rel not in parents:
                    faults.append((rel + "/", "folder not listed in the manifest"))
            elif rel != MANIFEST and rel not in listed:
                faults.append((rel, "file not listed in the manifest"))
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
    return faults


def _external_data_faults(rel: str, data: bytes, arts: Dict[str, Dict[str, Any]]) -> List[Fault]:
    """Hold each external-data location in an (already checksummed) ONNX file to the same rules
    as a listed path: relative, inside the bundle, listed, and the byte range within the file."""
    try:
        refs = external_refs(data)
    except ProtobufError as exc:
        return [(rel, "is not a valid ONNX protobuf ({})".format(exc))]
    faults: List[Fault] = []
    base = rel.rsplit("/", 1)[0] + "/" if "/" in rel else ""
    for ref in refs:
        what = "external data of tensor {!r}".format(ref.tensor)
        loc = ref.location
        if ref.data_location != 1 or loc is None:
            faults.append((rel, "{} is inconsistent (data_location {}, location {!r})".format(what, ref.data_location, loc)))
            continue
        why = path_fault(loc)
        if why is not None:
            faults.append((rel, "{}: {}".format(what, why)))
            continue
        target = base + loc
        if target.split("/")[0] == "..":
            faults.append((rel, "{}: location {!r} escapes the bundle folder".format(what, loc)))
            continue
        art = arts.get(target)
        if art is None or art.get("kind") != EXTERNAL_DATA_KIND:
            faults.append((rel, "{}: location {!r} is not listed in the manifest as {}".format(what, loc, EXTERNAL_DATA_KIND)))
            continue
        try:
            offset = int(ref.entries.get("offset", "0"))
            length = int(ref.entries["length"]) if "length" in ref.entries else art["bytes"] - offset
        except ValueError:
            faults.append((rel, "{}: offset/length are not integers: {!r}".format(what, ref.entries)))
            continue
        if offset < 0 or length < 0 or offset + length > art["bytes"]:
            faults.append((rel, "{}: bytes [{}, {}) lie outside {} ({} bytes)".format(
                what, offset, offset + length, target, art["bytes"])))
    return faults


def verify_bundle(path: "os.PathLike[str] | str", manifest_sha256: Optional[str] = None) -> VerifiedBundle:
    """Every check that needs no parser beyond JSON and the protobuf wire format. Raises
    :class:`BundleError` listing every fault; returns the manifest and the verified bytes."""
    given = Path(path)
    if not given.is_dir():
        raise BundleError(str(given), [(str(given), "is not a folder")])
    root = Path(os.path.realpath(given))
    manifest, digest = _manifest(root, manifest_sha256)
    arts = {a["path"]: a for a in manifest["artifacts"]}
    faults: List[Fault] = []
    files: Dict[str, bytes] = {}
    for rel, art in arts.items():
        data, why = _read_regular(root, rel, art["bytes"], expected=art["bytes"])
        if why is None and len(data) != art["bytes"]:
            why = "is {} bytes, the manifest says {} (truncated or replaced)".format(len(data), art["bytes"])
        if why is None:
            got = hashlib.sha256(data).hexdigest()
            if got != art["sha256"]:
                why = "sha256 mismatch: manifest {}, file {}".format(art["sha256"], got)
        if why is not None:
            faults.append((rel, why))
        else:
            files[rel] = data
    faults += _unlisted(root, set(arts))
    if faults:
        raise BundleError(str(given), faults)
    for rel, data in files.items():
        if rel.endswith(".onnx"):
            faults += _external_data_faults(rel, data, arts)
    if faults:
        raise BundleError(str(given), faults)
    return VerifiedBundle(root, manifest, digest, files)
