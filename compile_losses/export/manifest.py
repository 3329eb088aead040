"""The manifest: what a bundle holds (versions, net and loss descriptions, artifacts with sizes and
checksums), written last and atomically."""
import json
import os
import platform
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
from torch import Tensor, nn

from .. import __version__
from .install import _fsync, _sha256, _step




def _jsonable(value: Any) -> Any:
    if isinstance(value, Tensor):
        return {"tensor": value.detach().cpu().tolist(), "dtype": str(value.dtype).replace("torch.", "")}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return repr(value)


def describe_module(module: nn.Module, init_args: Optional[Dict[str, Any]] = None,
                    registry_name: Optional[str] = None) -> Dict[str, Any]:
    """Import path and init arguments of a net or loss, for the manifest. Without ``init_args``
    they are read back from attributes named like the constructor's parameters (how our modules
    store their settings); ``init_args_complete`` says whether every parameter was found."""
    cls = type(module)
    out: Dict[str, Any] = {"import_path": "{}:{}".format(cls.__module__, cls.__qualname__)}
    if registry_name:
        out["registry_name"] = registry_name
    if init_args is not None:
        out["init_args"], out["init_args_complete"] = _jsonable(init_args), True
        return out
    import inspect

    found, complete = {}, True
    try:
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    except (TypeError, ValueError):
        params = []
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if hasattr(module, p.name):
            found[p.name] = getattr(module, p.name)
        elif hasattr(module, "_" + p.name):
            found[p.name] = getattr(module, "_" + p.name)
        else:
            complete = False
    out["init_args"], out["init_args_complete"] = _jsonable(found), complete
    return out


def _versions() -> Dict[str, str]:
    import onnx
    import onnxruntime

    versions = {"python": platform.python_version()}
    versions.update({m.__name__: m.__version__ for m in (torch, onnx, onnxruntime, np)})
    versions["compile_losses"] = __version__
    return versions


def write_manifest(folder: Path, manifest: Dict[str, Any]) -> Path:
    """Hash every artifact, then write ``manifest.json`` (temp name, fsync, rename: last file)."""
    for entry in manifest["artifacts"]:
        path = folder / entry["path"]
        _fsync(path)
        entry["sha256"], entry["bytes"] = _sha256(path), path.stat().st_size
        _step("hashed " + entry["path"])
    tmp = folder / ".manifest.json.part"
    with open(tmp, "w") as fh:
        json.dump(manifest, fh, indent=2, sort_keys=False)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    _step("manifest-written")
    os.rename(tmp, folder / "manifest.json")
    _fsync(folder)
    return folder / "manifest.json"
