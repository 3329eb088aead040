"""Shared by the bundle tests: one default bundle per test session (exports cost seconds), and
small tools to copy a bundle and re-sign its manifest after a deliberate change."""
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, Optional

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
_CACHE: Dict[str, Path] = {}


def default_bundle(tmp_path_factory: Any) -> Path:
    """SeedNet + MSE (every ONNX graph, TorchScript; no AOTI, no parity run), built once."""
    if "default" not in _CACHE:
        import torch

        from compile_losses.export import export_bundle
        from compile_losses.losses import MSELoss
        from compile_losses.nets import SeedNet

        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(1)
        x, y = torch.randn(8, 32, generator=gen), torch.randn(8, 1, generator=gen)
        out = tmp_path_factory.mktemp("bundles")
        _CACHE["default"] = export_bundle(SeedNet(), MSELoss(), x, y, out, name="seed-mse", aoti=False, parity=False)
    return _CACHE["default"]


def copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def manifest(bundle: Path) -> Dict[str, Any]:
    return json.loads((bundle / "manifest.json").read_text())


def write_manifest(bundle: Path, data: Dict[str, Any]) -> None:
    (bundle / "manifest.json").write_text(json.dumps(data, indent=2))


def resign(bundle: Path, rel: Optional[str] = None) -> None:
    """Recompute sha256 and bytes in the manifest (for one file or all): what an attacker who can
    rewrite the manifest too would do; then only the deeper checks stand in the way."""
    data = manifest(bundle)
    for art in data["artifacts"]:
        if rel is None or art["path"] == rel:
            p = bundle / art["path"]
            art["sha256"] = hashlib.sha256(p.read_bytes()).hexdigest()
            art["bytes"] = p.stat().st_size
    write_manifest(bundle, data)


def leftovers(folder: Path) -> list:
    """Staging or old folders an export left behind (names start with '.')."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def env_with_tests_on_path() -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env
