"""The zoo: real losses from maintained libraries, each with the sample inputs it is run on.

One row per loss: an id, the import path, init arguments (KEY=VALUE, the CLI's rule), the
prediction spec(s) and the target spec(s), as ``compile-losses verify --net none`` takes them.
Inputs are tiny (batch 2, a few features, 4x4 or 8x8 images) so the zoo stays cheap. The libraries
are the ``zoo`` extra of pyproject.toml; a row whose library is missing is skipped with its name.
"""
from typing import List, NamedTuple, Tuple


class ZooLoss(NamedTuple):
    id: str
    path: str  # package.module:Class
    args: Tuple[str, ...]  # --loss-arg KEY=VALUE
    inputs: Tuple[str, ...]  # --input specs (the prediction first)
    targets: Tuple[str, ...]  # --target specs

    @property
    def library(self) -> str:
        return self.path.split(".")[0].split(":")[0]

    def argv(self) -> List[str]:
        out = ["--net", "none", "--loss", self.path]
        for a in self.args:
            out += ["--loss-arg", a]
        for s in self.inputs:
            out += ["--input", s]
        for s in self.targets:
            out += ["--target", s]
        return out


_SEG = "float32[N,3,4,4]"  # logits of 3 classes on a 4x4 image
_SEG_T = "int64[N,4,4]{0..2}"
_BIN = "float32[N,1,4,4]"
_BIN_T = "float32[N,1,4,4]{0:1}"
_IMG = "float32[N,1,8,8]{0:1}"
_VEC = "float32[N,5]"
_EMB = "float32[N,8]"
_LAB = "int64[N]{0..2}"
_AUD = "float32[N,1,32]"

ZOO: Tuple[ZooLoss, ...] = (
    # kornia 0.9
    ZooLoss("kornia-focal-none", "kornia.losses:FocalLoss", ("alpha=0.5",), (_SEG,), (_SEG_T,)),
    ZooLoss("kornia-focal-mean", "kornia.losses:FocalLoss", ("alpha=0.5", "reduction=mean"), (_SEG,), (_SEG_T,)),
    ZooLoss("kornia-binary-focal", "kornia.losses:BinaryFocalLossWithLogits", ("alpha=0.25", "reduction=mean"),
            (_BIN,), (_BIN_T,)),
    ZooLoss("kornia-dice", "kornia.losses:DiceLoss", (), (_SEG,), (_SEG_T,)),
    ZooLoss("kornia-tversky", "kornia.losses:TverskyLoss", ("alpha=0.5", "beta=0.5"), (_SEG,), (_SEG_T,)),
    ZooLoss("kornia-ssim", "kornia.losses:SSIMLoss", ("window_size=3",), (_IMG,), (_IMG,)),
    ZooLoss("kornia-psnr", "kornia.losses:PSNRLoss", ("max_val=1.0",), (_IMG,), (_IMG,)),
    ZooLoss("kornia-charbonnier", "kornia.losses:CharbonnierLoss", ("reduction=mean",), (_VEC,), (_VEC,)),
    ZooLoss("kornia-cauchy", "kornia.losses:CauchyLoss", ("reduction=mean",), (_VEC,), (_VEC,)),
    ZooLoss("kornia-geman-mcclure", "kornia.losses:GemanMcclureLoss", ("reduction=mean",), (_VEC,), (_VEC,)),
    ZooLoss("kornia-welsch", "kornia.losses:WelschLoss", ("reduction=mean",), (_VEC,), (_VEC,)),
    ZooLoss("kornia-lovasz-hinge", "kornia.losses:LovaszHingeLoss", (), (_BIN,), ("int64[N,4,4]{0..1}",)),
    ZooLoss("kornia-lovasz-softmax", "kornia.losses:LovaszSoftmaxLoss", (), (_SEG,), (_SEG_T,)),
    # monai 1.6
    ZooLoss("monai-dice-sigmoid", "monai.losses:DiceLoss", ("sigmoid=true",), (_BIN,), (_BIN_T,)),
    ZooLoss("monai-dice-softmax", "monai.losses:DiceLoss", ("softmax=true",), (_SEG,), ("float32[N,3,4,4]{0:1}",)),
    ZooLoss("monai-dice-ce", "monai.losses:DiceCELoss", ("sigmoid=true",), (_BIN,), (_BIN_T,)),
    ZooLoss("monai-dice-focal", "monai.losses:DiceFocalLoss", ("sigmoid=true",), (_BIN,), (_BIN_T,)),
    ZooLoss("monai-generalized-dice", "monai.losses:GeneralizedDiceLoss", ("sigmoid=true",), (_BIN,), (_BIN_T,)),
    ZooLoss("monai-tversky", "monai.losses:TverskyLoss", ("sigmoid=true",), (_BIN,), (_BIN_T,)),
    ZooLoss("monai-focal", "monai.losses:FocalLoss", (), (_BIN,), (_BIN_T,)),
    ZooLoss("monai-ssim", "monai.losses:SSIMLoss", ("spatial_dims=2", "win_size=3"), (_IMG,), (_IMG,)),
    ZooLoss("monai-lncc", "monai.losses:LocalNormalizedCrossCorrelationLoss", ("spatial_dims=2", "kernel_size=3"),
            (_IMG,), (_IMG,)),
    # pytorch-metric-learning 2.9 (embeddings, labels)
    ZooLoss("pml-contrastive", "pytorch_metric_learning.losses:ContrastiveLoss", (), (_EMB,), (_LAB,)),
    ZooLoss("pml-triplet", "pytorch_metric_learning.losses:TripletMarginLoss", (), (_EMB,), (_LAB,)),
    ZooLoss("pml-ntxent", "pytorch_metric_learning.losses:NTXentLoss", (), (_EMB,), (_LAB,)),
    ZooLoss("pml-multi-similarity", "pytorch_metric_learning.losses:MultiSimilarityLoss", (), (_EMB,), (_LAB,)),
    ZooLoss("pml-circle", "pytorch_metric_learning.losses:CircleLoss", (), (_EMB,), (_LAB,)),
    ZooLoss("pml-supcon", "pytorch_metric_learning.losses:SupConLoss", (), (_EMB,), (_LAB,)),
    # info-nce-pytorch 0.1.4 (query, positive key)
    ZooLoss("info-nce", "info_nce:InfoNCE", (), (_EMB,), (_EMB,)),
    ZooLoss("info-nce-none", "info_nce:InfoNCE", ("reduction=none",), (_EMB,), (_EMB,)),
    # auraloss 0.4 (audio: batch, channels, samples)
    ZooLoss("auraloss-esr", "auraloss.time:ESRLoss", (), (_AUD,), (_AUD,)),
    ZooLoss("auraloss-dc", "auraloss.time:DCLoss", (), (_AUD,), (_AUD,)),
    ZooLoss("auraloss-logcosh", "auraloss.time:LogCoshLoss", (), (_AUD,), (_AUD,)),
    ZooLoss("auraloss-snr", "auraloss.time:SNRLoss", (), (_AUD,), (_AUD,)),
    ZooLoss("auraloss-sisdr", "auraloss.time:SISDRLoss", (), (_AUD,), (_AUD,)),
    # pytorch-msssim 1.0
    ZooLoss("msssim-ssim", "pytorch_msssim:SSIM", ("data_range=1.0", "win_size=3", "channel=1"), (_IMG,), (_IMG,)),
)


# Cells that fail by the parity rule, with what was found: the test expects them to fail (strict),
# so a fixed one shows.
# Cells expected to fail (values or gradients off), each with why. None left: monai's
# GeneralizedDiceLoss under TorchScript (str(Weight.SQUARE) folded to "Enum<Weight.SQUARE>", every
# class weighed by ones) is now refused by the script adapter, which reads the folded constant off
# the scripted graph (diagnose.script_miscompiled), and is a finding below.
KNOWN_FAILURES: dict = {}

# Cells that pass with a finding the user chooses whether to fail on (``--require``): the test
# expects the status and the user's line in its detail, so a change either way shows. kornia's
# DiceLoss takes another code path once pred.numel() >= 2**15 (_dice_loss_cpu_eligible,
# kornia/losses/dice.py:51): values and gradients pass under inductor, and the audit's batch 4096
# recompiles on that guard of the user's own code, as plain torch.compile does.
FINDINGS = {
    ("monai-generalized-dice", "script"): ("uncompilable", "monai/losses/dice.py:403"),
    ("kornia-dice", "compile"): ("recompiles", "kornia/losses/dice.py:51"),
    ("kornia-dice", "compile-dynamo"): ("recompiles", "kornia/losses/dice.py:51"),
}

# Cells whose uncompilable reason names neither the op nor the user's line (diagnose.py finds
# neither in the exporter's message nor in the traceback); the test expects them to lack it, so an
# improvement shows. None left: monai's Dice family and pytorch-metric-learning name their lines.
NO_SOURCE_LINE: set = set()

# Backends of the zoo's columns: cheap ones in the default run (when the libraries are installed),
# the exported one in the slow run, inductor in the exhaustive one.
CHEAP, SLOW, EXHAUSTIVE = ("eager", "script"), ("onnx",), ("compile", "compile-dynamo")
