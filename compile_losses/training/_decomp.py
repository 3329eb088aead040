"""Ops rewritten for tracing joint graphs: backward ops into forward ops every exporter knows, and
one torch.func tracing bug sidestepped.

Backward ops rewritten into forward ops that every exporter knows.

``aten.convolution_backward`` has no ONNX form and torch ships no decomposition for it, so a
conv net's train step would not export. Its three outputs are plain convolutions and a sum:
the input gradient is the transposed convolution of the output gradient, the weight gradient a
convolution of the input by the output gradient with batch and channels swapped (stride and
dilation trade places), the bias gradient a sum. Applied while ``make_fx`` traces the joint graph.
"""
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

aten = torch.ops.aten


def _weight_grad(input: Tensor, grad_output: Tensor, kernel: Sequence[int], stride: Sequence[int],
                 padding: Sequence[int], dilation: Sequence[int], groups: int) -> Tensor:
    # d weight[o, c, k] = sum_n,y go[n, o, y] * in[n, c, y*stride + k*dilation - padding]:
    # a convolution over (channel-as-batch, batch-as-channel), grouped per conv group.
    n, c = input.shape[0], input.shape[1]
    o = grad_output.shape[1]
    spatial_in = list(input.shape[2:])
    spatial_out = list(grad_output.shape[2:])
    cg, og = c // groups, o // groups
    rest = list(range(3, 3 + len(spatial_in)))
    x = input.reshape([n, groups, cg] + spatial_in).permute([2, 1, 0] + rest).reshape([cg, groups * n] + spatial_in)
    w = grad_output.reshape([n, groups, og] + spatial_out).permute([1, 2, 0] + rest).reshape(
        [groups * og, n] + spatial_out)
    out = aten.convolution.default(x, w, None, list(dilation), list(padding), list(stride), False,
                                   [0] * len(kernel), groups)
    out = out.transpose(0, 1)  # (groups * og, cg, k') with k' >= k when stride does not divide
    for d, k in enumerate(kernel):
        out = out.narrow(2 + d, 0, k)
    return out


def convolution_backward(grad_output: Tensor, input: Tensor, weight: Tensor, bias_sizes: Optional[List[int]],
                         stride: List[int], padding: List[int], dilation: List[int], transposed: bool,
                         output_padding: List[int], groups: int,
                         output_mask: List[bool]) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    kernel = list(weight.shape[2:])
    spatial = len(kernel)
    grad_input = grad_weight = grad_bias = None
    if output_mask[0]:
        if transposed:
            grad_input = aten.convolution.default(grad_output, weight, None, stride, padding, dilation, False,
                                                  [0] * spatial, groups)
        else:
            # the transposed convolution's output_padding restores sizes that stride rounded away
            extra = [input.shape[2 + d] - ((grad_output.shape[2 + d] - 1) * stride[d] - 2 * padding[d]
                                           + dilation[d] * (kernel[d] - 1) + 1) for d in range(spatial)]
            grad_input = aten.convolution.default(grad_output, weight, None, stride, padding, dilation, True,
                                                  extra, groups)
    if output_mask[1]:
        if transposed:  # the adjoint: the forward conv maps grad_output's space to input's
            grad_weight = _weight_grad(grad_output, input, kernel, stride, padding, dilation, groups)
        else:
            grad_weight = _weight_grad(input, grad_output, kernel, stride, padding, dilation, groups)
    if output_mask[2]:
        grad_bias = grad_output.sum([0] + list(range(2, grad_output.dim())))
    return grad_input, grad_weight, grad_bias


def diagonal_backward(grad_output: Tensor, input_sizes: List[int], offset: int, dim1: int, dim2: int) -> Tensor:
    # torch's decomposition scatters into zeros in place, which the ONNX exporter's own
    # decomposition pass rejects ("expected an entirely functional graph"); diag_embed builds
    # the same tensor from a mask, then zeros pad it to the input's size.
    ndim = len(input_sizes)
    dim1, dim2 = dim1 % ndim, dim2 % ndim
    out = torch.diag_embed(grad_output, offset, dim1, dim2)
    pad = [0] * (2 * ndim)
    for d in (dim1, dim2):
        pad[2 * (ndim - 1 - d) + 1] = input_sizes[d] - out.shape[d]
    if any(isinstance(p, torch.SymInt) or p != 0 for p in pad):
        out = F.pad(out, pad)
    return out


def native_layer_norm(input: Tensor, normalized_shape: List[int], weight: Optional[Tensor], bias: Optional[Tensor],
                      eps: float) -> Any:
    # The ONNX exporter maps native_layer_norm to LayerNormalization, whose mean and inverse std
    # outputs are float32 whatever the input (ONNX allows no float64 there): a float64 train step
    # then subtracts a float32 mean in layer norm's backward and fails to load. Spelled out in
    # float64 instead, so the backward reads float64 statistics; narrower dtypes keep the op.
    if input.dtype != torch.float64:
        return NotImplemented
    dims = list(range(input.dim() - len(normalized_shape), input.dim()))
    var, mean = torch.var_mean(input, dim=dims, correction=0, keepdim=True)
    rstd = torch.rsqrt(var + eps)
    out = (input - mean) * rstd
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out, mean, rstd


def export_decompositions(target: str = "onnx") -> Dict[object, object]:
    """The table handed to ``make_fx`` when tracing a graph for ``target`` (``"onnx"`` or ``"aoti"``).

    The convolution_backward and layer-norm rewrites exist for the ONNX exporter only: AOTInductor
    compiles ``aten.convolution_backward`` itself, and it cannot compile our rewrite, whose weight
    gradient is a convolution with the batch as its channel dimension: inductor takes channel
    counts as static and silently bakes in the traced batch (wrong sums at any other batch size,
    reads past the end at a smaller one).
    """
    if target not in ("onnx", "aoti"):
        raise ValueError("target must be 'onnx' or 'aoti', got {!r}".format(target))
    table: Dict[object, object] = {aten.diagonal_backward.default: diagonal_backward}
    if target == "onnx":
        table.update({aten.convolution_backward.default: convolution_backward,
                      aten.native_layer_norm.default: native_layer_norm})
        # the exporter's nll_loss_forward returns its total_weight output (what the backward divides
        # a "mean" gradient by) as the constant 1: F.cross_entropy's gradient came out batch-size
        # times too large. torch's own decomposition computes it.
        from torch._decomp import get_decompositions

        table.update(get_decompositions([aten.nll_loss_forward]))
        # the exporter decomposes mse_loss_backward itself, after tracing, into aten.sym_numel,
        # which has no ONNX form (kornia's PSNR); decomposed while tracing, the count is the
        # product of the symbolic sizes
        table.update(get_decompositions([aten.mse_loss_backward]))
    return table


class LinearAs2D(TorchFunctionMode):
    """Run ``F.linear`` on an input of 3+ dims as eager does it, ``view -> addmm -> view``, but
    spelled out in Python.

    Under ``torch.func.grad``, the C++ view inside ``F.linear`` for 3+-dim inputs escapes the
    tracer (pytorch/pytorch#181304), so ``make_fx`` records a constant and bakes in the example
    batch. The same ops issued from Python trace symbolically; the numerics are unchanged.
    """

    def __torch_function__(self, func: Any, types: Any, args: Tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is F.linear and args and isinstance(args[0], Tensor) and args[0].dim() > 2:
            input, weight = args[0], args[1] if len(args) > 1 else kwargs["weight"]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            flat = F.linear(input.reshape(-1, input.shape[-1]), weight, bias)
            return flat.reshape(list(input.shape[:-1]) + [flat.shape[-1]])
        return func(*args, **kwargs)


def numel_as_sizes(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Rewrite ``aten.sym_numel`` (``x.numel()`` on a tensor of symbolic shape, e.g. kornia's PSNR)
    into the product of its ``aten.sym_size.int`` per dim: the ONNX exporter has no form for
    ``sym_numel`` but translates sizes and their product. Rewrites ``gm`` in place; returns it."""
    import operator

    changed = False
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not aten.sym_numel.default:
            continue
        tensor = node.args[0]
        val = tensor.meta.get("val") if isinstance(tensor, torch.fx.Node) else None
        if not isinstance(val, Tensor) or val.dim() == 0:
            continue
        with gm.graph.inserting_before(node):
            total = None
            for d in range(val.dim()):
                size = gm.graph.call_function(aten.sym_size.int, (tensor, d))
                size.meta["val"] = val.shape[d]
                if total is None:
                    total = size
                else:
                    product = gm.graph.call_function(operator.mul, (total, size))
                    product.meta["val"] = total.meta["val"] * val.shape[d]
                    total = product
        node.replace_all_uses_with(total)
        gm.graph.erase_node(node)
        changed = True
    if changed:
        gm.graph.lint()
        gm.recompile()
    return gm
