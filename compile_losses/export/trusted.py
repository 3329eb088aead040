"""Trusted-only artifacts (TorchScript, AOTInductor) loaded back with torch, only on request."""
import io
from pathlib import Path
from typing import Any, Optional, Union

from ..bundle_format import TRUSTED_KINDS


class UntrustedArtifactError(PermissionError):
    """A TorchScript or AOTInductor artifact loaded without ``trust=True``."""


def load_trusted_artifact(bundle: Union[str, Path], kind: str, *, trust: bool = False,
                          manifest_sha256: Optional[str] = None) -> Any:
    """Load a trusted-only artifact of a bundle with torch: ``torchscript_forward``,
    ``torchscript_loss`` (``torch.jit`` modules) or ``aoti_forward`` (an AOTInductor runner).

    These files are programs: TorchScript archives run their code, AOTInductor packages are
    native shared libraries. Loading one from a bundle you did not build is running that
    bundle's author's code, so it is refused unless ``trust=True``. The bundle's checksums and
    paths are verified first either way (``manifest_sha256`` pins the manifest itself).
    """
    from ..runtime import verify_bundle

    if kind not in TRUSTED_KINDS:
        raise ValueError("kind must be one of {}, got {!r}".format(sorted(TRUSTED_KINDS), kind))
    vb = verify_bundle(bundle, manifest_sha256)
    art = next((a for a in vb.manifest["artifacts"] if a["kind"] == kind), None)
    if art is None:
        raise FileNotFoundError("bundle {} has no {} artifact (it holds {})".format(
            bundle, kind, ", ".join(a["kind"] for a in vb.manifest["artifacts"])))
    if not trust:
        raise UntrustedArtifactError(
            "{}: {} is runnable code (trusted-only); loading it runs whatever its author put in it. "
            "Pass trust=True only for bundles you built or whose manifest sha256 you verified".format(art["path"], kind))
    if kind.startswith("torchscript"):
        from ..backends.torchscript import load_torchscript

        return load_torchscript(io.BytesIO(vb.files[art["path"]]))
    from ..training import load_package

    return load_package(str(vb.root / art["path"]))
