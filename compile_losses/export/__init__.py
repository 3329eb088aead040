"""Deployment bundles: export writes, validation checks, :func:`export_bundle` composes them and
installs the result atomically.

Writing a bundle ``<out_dir>/<name>/``:

1. every artifact is written into a staging folder beside the destination
   (``<out_dir>/.<name>.tmp-<pid>-<random>``), ``manifest.json`` last;
2. the staging folder is checked with the runtime alone (:func:`validate_bundle`: checksums,
   paths, fixtures re-run by the parity rule); a bundle that fails is never installed;
3. under an exclusive lock on ``out_dir``, the staging folder is swapped with the destination in
   one ``renameat2(RENAME_EXCHANGE)`` (where the OS lacks it: old aside, new in, with recovery),
   then the old bundle is deleted.

A crash at any point leaves the destination holding the old complete bundle or the new complete
one; the leftovers of a dead export (named with its pid) are removed by the next export or by
:func:`recover`. An export that fails with an exception removes its own staging folder.

The jobs live apart: :mod:`.writers` (one function per artifact), :mod:`.fixtures`, :mod:`.manifest`,
:mod:`.install` (atomic install, recovery), :mod:`.compose` (:func:`export_bundle`) and
:mod:`.trusted` (loading the trusted-only artifacts back with torch).
"""
from ..errors import ExportError
from .compose import BundlePath, export_bundle, failing_parts, validate_bundle
from .install import recover
from ..bundle_format import FAILED_SUFFIX, FORMAT_VERSION, PARTS, TRUSTED_KINDS, part_of
from .manifest import describe_module, write_manifest
from .trusted import UntrustedArtifactError, load_trusted_artifact
from .writers import (write_aoti, write_forward_onnx, write_loss_and_grad_onnx, write_loss_onnx, write_npz,
                      write_torchscript, write_train_step_onnx)

__all__ = ["BundlePath", "ExportError", "FAILED_SUFFIX", "FORMAT_VERSION", "PARTS", "TRUSTED_KINDS", "UntrustedArtifactError",
           "describe_module", "export_bundle", "failing_parts", "load_trusted_artifact", "part_of", "recover", "validate_bundle",
           "write_aoti", "write_forward_onnx", "write_loss_and_grad_onnx", "write_loss_onnx", "write_manifest",
           "write_npz", "write_torchscript", "write_train_step_onnx"]
