"""The on-disk build cache: what a fresh process would otherwise build again.

Each CI job is a fresh process, and torch's own caches (inductor's FX graph cache and
AOTAutogradCache, under ``TORCHINDUCTOR_CACHE_DIR``) do not cover two costs: the CPU's vector-ISA
probe (inductor compiles and ``dlopen``-s a test program per ISA in subprocesses, once per process)
and an AOTInductor package build (20-40 s on two cores). This module keeps both:

* ``cpu-isa``: the probe's answers (one bool per ISA and test program), keyed by the torch build,
  the Python executable, the C++ compiler (path, size and mtime), the CPU's flags and the inductor
  settings the probe reads; replayed through the probe's own code, so inductor decides exactly as
  it would have;
* records: the ``compile`` backend's choice between its compiled path and eager for one case
  (with the timings it chose by), keyed by the case (module classes, settings and weights, the
  inputs' full shapes and dtypes), the torch thread count and the versions; a later process on
  the same machine builds only the chosen callable instead of timing both again. The choice is
  about speed only: whatever it picks is built now, from the modules as they are;
* files built from an exported program (``.pt2`` packages), keyed by the program's graph text
  (with shapes, strides and devices), its weights, buffers and constants (their bytes), its
  dynamic-shape ranges, the full portable inductor config, the caller's settings and the versions
  (torch, compile_losses and a hash of its source files, Python, platform, CPU flags). A changed weight, constant, op or setting
  is a different key: a stale build is never served.

Where: ``$COMPILE_LOSSES_CACHE_DIR``, else ``$XDG_CACHE_HOME/compile_losses``, else
``~/.cache/compile_losses``. ``COMPILE_LOSSES_NO_CACHE=1`` turns it off (then everything is built).
Entries are written beside their final name and renamed, so a reader never sees half a file.
"""
import functools
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

__all__ = ["cache_dir", "enabled", "program_key", "graph_key", "record_key", "build_file", "load_record", "store_record",
           "prime_cpu_isa", "STATS"]

ENV_DIR = "COMPILE_LOSSES_CACHE_DIR"
ENV_OFF = "COMPILE_LOSSES_NO_CACHE"

# hits and misses per kind in this process (read by tests and the export's progress lines)
STATS: Dict[str, Dict[str, int]] = {}
_LOCK = threading.Lock()


def enabled() -> bool:
    return os.environ.get(ENV_OFF, "").strip().lower() not in ("1", "true", "yes", "on")


def cache_dir() -> Optional[Path]:
    """The cache folder (not created here), or None when the cache is off."""
    if not enabled():
        return None
    given = os.environ.get(ENV_DIR, "").strip()
    if given:
        return Path(given).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "compile_losses"


def count(kind: str, what: str) -> None:
    """Count a ``"hit"`` or ``"miss"`` of ``kind`` in :data:`STATS`."""
    with _LOCK:
        STATS.setdefault(kind, {"hit": 0, "miss": 0})[what] += 1


# ---------------------------------------------------------------------------------------------
# keys
# ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features", "features")):
                    return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return platform.processor()


@functools.lru_cache(maxsize=1)
def _own_source() -> str:
    """A hash of compile_losses' own source files: its rewrites of traced graphs (faithful
    reductions) are part of what it builds, and its version number does not change with each edit."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parent
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        try:
            h.update(path.read_bytes())
        except OSError:
            pass
    return h.hexdigest()


def _versions() -> Tuple[str, ...]:
    import torch

    from . import __version__

    return (torch.__version__, str(getattr(torch.version, "git_version", "")), __version__, _own_source(),
            sys.version, sys.platform, platform.machine(), _cpu_flags())


def _tensor_digest(h: "hashlib._Hash", name: str, t: Any) -> None:
    import torch

    if not isinstance(t, torch.Tensor):
        h.update(repr((name, type(t).__name__, repr(t))).encode())
        return
    t = t.detach()
    h.update(repr((name, str(t.dtype), tuple(t.shape), tuple(t.stride()), str(t.device))).encode())
    flat = t.cpu().contiguous().reshape(-1)
    h.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")


def _inductor_settings() -> str:
    import torch._inductor.config as config

    save = getattr(config, "save_config_portable", None)
    items = dict(save() if save is not None else config.get_config_copy())
    meta = items.get("aot_inductor.metadata")
    if isinstance(meta, dict):  # a build writes its device, platform and ISA in here (all in the key already)
        items["aot_inductor.metadata"] = {k: v for k, v in meta.items() if not str(k).startswith("AOTI_")}
    return repr(sorted((k, repr(v)) for k, v in items.items()))


def program_key(program: Any, settings: Iterable[Any] = (), inductor: bool = True) -> str:
    """The key of a build from ``program`` (a ``torch.export.ExportedProgram``): its graph text
    with every node's shape, stride and device, its signature and dynamic-shape ranges, the bytes
    of its weights, buffers and constants, ``settings``, the versions and (``inductor``: for a
    build inductor makes) inductor's config."""
    h = hashlib.sha256()
    h.update(repr(_versions()).encode())
    gm = program.graph_module
    h.update(gm.print_readable(print_output=False, include_stride=True, include_device=True).encode())
    h.update(str(program.graph_signature).encode())
    h.update(repr(sorted((str(k), str(v)) for k, v in program.range_constraints.items())).encode())
    for name, t in sorted(program.state_dict.items()):
        _tensor_digest(h, "state:" + name, t)
    for name, t in sorted(program.constants.items()):
        _tensor_digest(h, "const:" + name, t)
    if inductor:
        h.update(_inductor_settings().encode())
    h.update(repr(tuple(settings)).encode())
    return h.hexdigest()


def graph_key(gm: Any, args: Iterable[Any], settings: Iterable[Any] = ()) -> str:
    """The key of an inductor build of ``gm`` (a flat aten ``torch.fx.GraphModule`` traced by
    ``make_fx``) for inputs like ``args``: its code, the bytes of every tensor it holds (weights
    closed over, constants), the inputs' dtypes, shapes, strides and devices, inductor's config,
    the torch thread count (inductor sizes its parallel loops by it), ``settings`` and the versions."""
    import torch

    h = hashlib.sha256()
    h.update(repr(_versions()).encode())
    h.update(gm.code.encode())
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            _tensor_digest(h, "attr:" + str(node.target), getattr(gm, str(node.target)))
    for i, a in enumerate(args):
        h.update(repr(("input", i, str(a.dtype), tuple(a.shape), tuple(a.stride()), str(a.device))
                      if isinstance(a, torch.Tensor) else ("input", i, type(a).__name__, repr(a))).encode())
    h.update(_inductor_settings().encode())
    h.update(repr((torch.get_num_threads(), tuple(settings))).encode())
    return h.hexdigest()


def store_file(kind: str, key: str, src: str) -> bool:
    """Copy ``src`` into the cache under ``key``, whole or not at all; False where it could not."""
    entry = entry_path(kind, key, Path(src).suffix)
    if entry is None:
        return False
    try:
        _atomic_copy(src, entry)
    except OSError:
        return False
    return True


def package_versions(*names: str) -> Tuple[str, ...]:
    """Installed versions of ``names`` (``"-"`` for one not installed), for keys of builds they make."""
    from importlib import metadata

    out = []
    for name in names:
        try:
            out.append("{}=={}".format(name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            out.append(name + "==-")
    return tuple(out)


def record_key(*parts: Any) -> str:
    """The key of a record that depends on ``parts`` (reprs) and the versions."""
    return hashlib.sha256(repr((_versions(),) + parts).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# files and records
# ---------------------------------------------------------------------------------------------
def entry_path(kind: str, key: str, suffix: str) -> Optional[Path]:
    """Where the cache keeps the file for ``key`` (None when the cache is off); it may not exist."""
    root = cache_dir()
    return None if root is None else root / kind / key[:2] / (key + suffix)


def _atomic_copy(src: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".{}.".format(dest.name), dir=str(dest.parent))
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def build_file(kind: str, key: str, dest: str, build: Callable[[str], Any]) -> bool:
    """Put the build for ``key`` at ``dest``: copied from the cache, or made by ``build(dest)``
    and stored. Returns True on a cache hit. A cache that cannot be read or written is skipped
    (the build still happens); a failed build stores nothing."""
    entry = entry_path(kind, key, Path(dest).suffix)
    if entry is not None and entry.is_file():
        try:
            _atomic_copy(str(entry), Path(dest))
            count(kind, "hit")
            return True
        except OSError:
            pass
    build(dest)
    count(kind, "miss")
    if os.path.isfile(dest):
        store_file(kind, key, dest)  # a read-only or full cache costs the next process a build, nothing more
    return False


def load_record(kind: str, key: str) -> Optional[Dict[str, Any]]:
    """The JSON object stored under ``key``, or None (missing, unreadable, or the cache is off)."""
    entry = entry_path(kind, key, ".json")
    if entry is None or not entry.is_file():
        count(kind, "miss")
        return None
    try:
        value = json.loads(entry.read_text())
    except (OSError, ValueError):
        value = None
    count(kind, "hit" if isinstance(value, dict) else "miss")
    return value if isinstance(value, dict) else None


def store_record(kind: str, key: str, value: Dict[str, Any]) -> None:
    """Store ``value`` (JSON) under ``key``, whole or not at all."""
    entry = entry_path(kind, key, ".json")
    if entry is None:
        return
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".{}.".format(entry.name), dir=str(entry.parent))
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(value, f, sort_keys=True)
            os.replace(tmp, entry)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError:
        pass  # a read-only or full cache: the next process decides again


# ---------------------------------------------------------------------------------------------
# the CPU vector-ISA probe
# ---------------------------------------------------------------------------------------------
_PRIMED = False


def _compiler_identity() -> Tuple[Any, ...]:
    import torch._inductor.config as config

    names = [os.environ.get("CXX", ""), str(getattr(config.cpp, "cxx", ("", ""))[-1] or ""), "g++", "c++", "clang++"]
    out = []
    for name in names:
        path = shutil.which(name) if name else None
        if path:
            st = os.stat(os.path.realpath(path))
            out.append((name, os.path.realpath(path), st.st_size, int(st.st_mtime)))
    return tuple(out)


def _isa_key() -> str:
    import torch
    import torch._inductor.config as config

    parts = (_versions(), torch.__file__, sys.executable, _compiler_identity(), os.environ.get("ATEN_CPU_CAPABILITY"),
             getattr(config.cpp, "vec_isa_ok", None), getattr(config.cpp, "simdlen", None), repr(getattr(config.cpp, "cxx", None)))
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def prime_cpu_isa() -> None:
    """Answer inductor's vector-ISA probe from the cache (once per process, before the first
    inductor build). The probe's own code runs; only its ``check_build`` (compile a test program
    and ``dlopen`` it in a subprocess) answers from the recorded result of the same ISA, flags and
    program. Answers not recorded yet are probed for real and recorded."""
    global _PRIMED
    with _LOCK:
        if _PRIMED:
            return
        _PRIMED = True
    key = _isa_key_or_empty()
    entry = entry_path("cpu-isa", key, ".json")
    if entry is None:
        return
    from torch._inductor import cpu_vec_isa

    try:
        recorded = json.loads(entry.read_text()) if entry.is_file() else {}
    except (OSError, ValueError):
        recorded = {}
    real = cpu_vec_isa.VecISA.check_build
    learned = {}

    def check_build(self: Any, code: str) -> bool:
        k = "{}|{}|{}".format(self, self.build_arch_flags(), hashlib.sha256(code.encode()).hexdigest())
        if k in recorded and isinstance(recorded[k], bool):
            return recorded[k]
        learned[k] = recorded[k] = bool(real(self, code))
        return recorded[k]

    cpu_vec_isa.VecISA.check_build = check_build  # type: ignore[method-assign]
    try:
        cpu_vec_isa.valid_vec_isa_list()  # functools caches: the rest of the process reads these
        cpu_vec_isa.pick_vec_isa()
    finally:
        cpu_vec_isa.VecISA.check_build = real  # type: ignore[method-assign]
    count("cpu-isa", "miss" if learned else "hit")
    if learned:
        store_record("cpu-isa", key, recorded)


def _isa_key_or_empty() -> str:
    try:
        return _isa_key()
    except Exception:  # a torch without these config names: key on the versions alone
        return hashlib.sha256(repr(_versions()).encode()).hexdigest()
