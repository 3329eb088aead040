"""The bundle format's vocabulary, shared by the exporter and the torch-free runtime and CLI
(imports nothing): its version, the trusted-only artifact kinds and the optional parts of a bundle."""

FORMAT_VERSION = 1


TRUSTED_KINDS = {"torchscript_forward": ".pt", "torchscript_loss": ".pt", "aoti_forward": ".pt2"}


def part_of(kind: str) -> str:
    """The optional part of a bundle an artifact kind belongs to (``torchscript_loss`` ->
    ``torchscript``): what ``export_bundle(<part>=False)`` and ``--skip <part>`` leave out."""
    return kind.split("_")[0]


# Optional parts: the trusted-only families, then the training graphs and the parity run.
PARTS = tuple(sorted({part_of(k) for k in TRUSTED_KINDS}, reverse=True)) + ("training", "parity")

# The optimizers a bundle's train step may carry (compile_losses.optim writes them; the manifest
# and the CLI name them; the runtime refuses any other).
OPTIMIZERS = ("sgd", "adam", "adamw")

# A bundle whose parity fails is installed beside the good one under this suffix (export_bundle).
FAILED_SUFFIX = ".failed"
