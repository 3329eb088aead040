"""Atomic install of a built bundle and recovery of what a killed export left behind.

Under an exclusive lock on ``out_dir``, the staging folder is swapped with the destination in one
``renameat2(RENAME_EXCHANGE)`` (where the OS lacks it: old aside, new in, with recovery), then the
old bundle is deleted. A crash at any point leaves the destination holding the old complete bundle
or the new complete one; the leftovers of a dead export (named with its pid) are removed by the
next export or by :func:`recover`.
"""
import contextlib
import ctypes
import errno
import fcntl
import hashlib
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Tuple, Union


from ..errors import UsageError


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<what>tmp|old)-(?P<pid>\d+)-[0-9a-f]+$")


# Test hook: called with a label at every step of an export (the kill tests os._exit() in it).
_STEP_HOOK: Optional[Callable[[str], None]] = None


def _step(label: str) -> None:
    if _STEP_HOOK is not None:
        _STEP_HOOK(label)


_RENAME_EXCHANGE = 2


_AT_FDCWD = -100


def _renameat2() -> Optional[Callable[..., int]]:
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two folders; False where the OS or filesystem cannot."""
    if os.environ.get("COMPILE_LOSSES_NO_RENAME_EXCHANGE") == "1":
        return False
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(str(a)), _AT_FDCWD, os.fsencode(str(b)), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


@contextlib.contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    """Exclusive flock on the output folder itself (no lock file to leave behind)."""
    fd = os.open(out_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _leftovers(out_dir: Path, name: Optional[str]) -> List[Tuple[Path, str, str, int]]:
    found = []
    for entry in out_dir.iterdir():
        m = _LEFTOVER.match(entry.name)
        if m and (name is None or m.group("name") == name):
            found.append((entry, m.group("name"), m.group("what"), int(m.group("pid"))))
    return found


def _recover_locked(out_dir: Path, name: Optional[str]) -> List[str]:
    actions = []
    for path, bname, what, pid in _leftovers(out_dir, name):
        if _pid_alive(pid):
            continue  # another export at work
        dest = out_dir / bname
        if what == "old" and not dest.exists() and (path / "manifest.json").is_file():
            os.rename(path, dest)  # died between "old aside" and "new in": put the old one back
            actions.append("restored {} from {}".format(dest.name, path.name))
            continue
        shutil.rmtree(path, ignore_errors=True)
        actions.append("removed {}".format(path.name))
    if actions:
        _fsync(out_dir)
    return actions


def recover(out_dir: Union[str, Path], name: Optional[str] = None) -> List[str]:
    """Clean up after exports that died: restore a bundle caught between two renames, remove
    staging and old folders of dead processes. Returns what was done (also run by every export)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    with _locked(out_dir):
        return _recover_locked(out_dir, name)


def _is_bundle_or_empty(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and ((path / "manifest.json").is_file() or not any(path.iterdir()))


def _install(staging: Path, dest: Path) -> None:
    out_dir = dest.parent
    with _locked(out_dir):
        _step("locked")
        _recover_locked(out_dir, dest.name)
        if dest.is_symlink() or (dest.exists() and not _is_bundle_or_empty(dest)):
            raise UsageError("out_dir: {} exists and is not a bundle folder (no manifest.json); refusing to replace it".format(
                dest), argument="out_dir")
        if not dest.exists():
            os.rename(staging, dest)
            _step("renamed-in")
        elif _exchange(staging, dest):
            _step("exchanged")  # staging now holds the old bundle
            shutil.rmtree(staging, ignore_errors=True)  # what remains, recover() removes later
        else:
            old = out_dir / ".{}.old-{}-{}".format(dest.name, os.getpid(), secrets.token_hex(4))
            os.rename(dest, old)
            _step("old-aside")
            os.rename(staging, dest)
            _step("new-in")
            shutil.rmtree(old, ignore_errors=True)
        _step("old-removed")
        _fsync(out_dir)


def _out_dir(out_dir: Union[str, Path]) -> Path:
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError("out_dir: cannot create {}: {}".format(out, exc.strerror), argument="out_dir") from None
    if not out.is_dir() or not os.access(out, os.W_OK | os.X_OK):
        raise UsageError("out_dir: {} is not a writable folder".format(out), argument="out_dir")
    return out


