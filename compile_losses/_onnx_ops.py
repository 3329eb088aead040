"""Ops the torch.export-based ONNX exporter translates wrongly, translated here instead (its
``custom_translation_table``, handed to every ``torch.onnx.export(..., dynamo=True)`` call).

``aten.squeeze.dim`` on a dimension whose size is not 1 is a no-op in torch; the exporter writes an
ONNX ``Squeeze`` on that axis regardless, which onnxruntime refuses ("Dimension of input 3 must be 1
instead of 8"). pytorch_msssim squeezes every trailing dim this way. Here a dim whose static size
is not 1 becomes ``Identity``; a size-1 or dynamic dim stays a ``Squeeze``.
"""
from typing import Any, Callable, Dict


def _squeeze_dim(self: Any, dim: int) -> Any:
    from onnxscript import opset18 as op

    shape = self.shape
    if shape is None:
        return op.Squeeze(self, [dim])
    if len(shape) == 0:
        return op.Identity(self)
    size = shape[dim]
    if isinstance(size, int) and size != 1:
        return op.Identity(self)
    return op.Squeeze(self, [dim])


def translation_table() -> Dict[Callable[..., Any], Callable[..., Any]]:
    import torch

    return {torch.ops.aten.squeeze.dim: _squeeze_dim}
