"""Run a deployment bundle with onnxruntime and numpy alone (this package never imports torch).

    from compile_losses.runtime import load_bundle
    b = load_bundle("models/seed-mse")     # verifies sizes, checksums and paths before parsing
    pred = b.forward(x)
    value = b.loss(pred, target)
    step = b.train_step(x, target, lr=0.01)    # -> TrainStepResult(loss, grads, new_params)
    report = b.check()                         # fixtures re-run, judged by the parity rule
    t = b.trainer(lr=1e-3)                     # a bundle exported with optimizer="adamw" (or sgd, adam)
    t.step(x, target) -> float; t.params; t.state; t.save("ckpt.npz"); t.load("ckpt.npz")

Every graph run has a time bound (``timeout_s`` on ``load_bundle`` and on each call; ``check``
defaults to 60 s) and raises :class:`BundleTimeoutError` past it.

Imports: the standard library, numpy and onnxruntime only. ``compile_losses/__init__.py`` is
lazy, so importing this package does not import the torch side of the project.
"""
from .bundle import Bundle, TrainStepResult, load_bundle
from .errors import BadArgumentError, BundleError, BundleTimeoutError
from .integrity import MANIFEST_MAX_BYTES, MAX_LOADED_BYTES, verify_bundle
from .parity import CheckReport
from .timeouts import DEFAULT_CHECK_TIMEOUT_S, DEFAULT_RUN_TIMEOUT_S
from .trainer import Trainer, TrainerStateError

__all__ = ["BadArgumentError", "Bundle", "BundleError", "BundleTimeoutError", "CheckReport", "DEFAULT_CHECK_TIMEOUT_S",
           "DEFAULT_RUN_TIMEOUT_S", "MANIFEST_MAX_BYTES", "MAX_LOADED_BYTES", "TrainStepResult", "Trainer", "TrainerStateError", "load_bundle",
           "verify_bundle"]
