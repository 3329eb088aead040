"""Ops the torch.export-based ONNX exporter translates wrongly, translated here instead (its
``custom_translation_table``, handed to every ``torch.onnx.export(..., dynamo=True)`` call).

``aten.squeeze.dim`` on a dimension whose size is not 1 is a no-op in torch; the exporter writes an
ONNX ``Squeeze`` on that axis regardless, which onnxruntime refuses ("Dimension of input 3 must be 1
instead of 8"). pytorch_msssim squeezes every trailing dim this way. Here a dim whose static size
is not 1 becomes ``Identity``; a size-1 or dynamic dim stays a ``Squeeze``.

``aten.erf`` and ``aten.gelu`` of a float64 tensor: ONNX's ``Erf`` allows double, onnxruntime's
CPU provider registers it for float only, so a float64 graph with GELU (forward, or erf in its
gradient) could not load. Those become :func:`erf_float64` (fdlibm's erf in ops onnxruntime runs
in float64, within one ulp of torch's); every other dtype keeps ``Erf``.

``aten.linear``, ``aten.addmm``, ``aten.mm`` and ``aten.bmm`` in bfloat16 or float16: multiplied in float and
rounded once, as ATen's CPU kernels do (see :func:`_addmm`).
"""
from typing import Any, Callable, Dict, List


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

    return {torch.ops.aten.squeeze.dim: _squeeze_dim, torch.ops.aten.erf.default: _erf,
            torch.ops.aten.gelu.default: _gelu, torch.ops.aten.addmm.default: _addmm,
            torch.ops.aten.mm.default: _mm, torch.ops.aten.bmm.default: _mm,
            torch.ops.aten.linear.default: _linear}


# -- matrix products in bfloat16 and float16 -----------------------------------------------------
# ATen's CPU kernels (mkldnn, and cpublas's fallback) multiply half-precision matrices with float32
# accumulation and round the result once, the bias of addmm added before that rounding. The
# exporter writes Gemm/MatMul in the half dtype itself, which onnx's reference evaluator runs as a
# half-precision product and a second rounding after the bias add (seed+charbonnier under bfloat16
# autocast: 4.5x eager's loss error), and which onnxruntime's CPU provider has no bfloat16 kernel
# for. Here the operands are cast to float, multiplied (and the bias added) in float, and the
# result cast back once, as ATen computes it; other dtypes keep torchlib's single op.
def _half(value: Any) -> Any:
    from onnxscript import ir

    dtype = getattr(value, "dtype", None)
    return dtype if dtype in (ir.DataType.BFLOAT16, ir.DataType.FLOAT16) else None


def _floats(*values: Any) -> List[Any]:
    """Each value cast to float (None stays None)."""
    from onnxscript import ir
    from onnxscript import opset18 as op

    return [None if v is None else op.Cast(v, to=ir.DataType.FLOAT) for v in values]


def _addmm(self: Any, mat1: Any, mat2: Any, beta: float = 1.0, alpha: float = 1.0) -> Any:
    from onnxscript import opset18 as op

    half = _half(mat1)
    if half is None:
        return op.Gemm(mat1, mat2, self, alpha=float(alpha), beta=float(beta))
    a, b, c = _floats(mat1, mat2, self)
    return op.Cast(op.Gemm(a, b, c, alpha=float(alpha), beta=float(beta)), to=half)


def _linear(input: Any, weight: Any, bias: Any = None) -> Any:
    from onnxscript import opset18 as op
    from onnxscript.function_libs.torch_lib.ops import nn as torchlib_nn

    half = _half(input)
    if half is None or weight.shape is None or len(weight.shape) != 2:  # (a 1-d weight: torchlib's own)
        return torchlib_nn.aten_linear(input, weight, bias)
    # torchlib's choice of ops by the input's rank, made here: the Cast values carry no shape, and
    # torchlib's aten_linear reads it
    x, w, b = _floats(input, weight, bias)
    if input.shape is not None and len(input.shape) == 2:
        out = op.Gemm(x, w, b, transB=True) if b is not None else op.Gemm(x, w, transB=True)
    else:
        out = op.MatMul(x, op.Transpose(w, perm=[1, 0]))
        out = out if b is None else op.Add(out, b)
    return op.Cast(out, to=half)


def _mm(self: Any, mat2: Any) -> Any:
    from onnxscript import opset18 as op

    half = _half(self)
    if half is None:
        return op.MatMul(self, mat2)
    return op.Cast(op.MatMul(*_floats(self, mat2)), to=half)


# -- erf in float64 ------------------------------------------------------------------------------
# onnxruntime's CPU provider has no float64 Erf kernel (ONNX's Erf allows double; onnxruntime
# registers float only), so a float64 graph with GELU could not run at all. ``Erf`` on a double is
# written here as fdlibm's erf (Sun Microsystems, 1993; FreeBSD msun s_erf.c, as Go's math.Erf and
# musl carry it): rational approximations on four intervals of |x|, each within 2**-57 of erf or
# of erfc's exponent, so the whole is within a few ulps (the exponent's -x*x is not split into a
# 26-bit head as fdlibm does, which costs up to ~|x|**2 ulps of erfc, ~2 ulps of erf). Branches are
# all computed and chosen with Where, as ONNX has no per-element branch.
_ERX = 8.45062911510467529297e-01
_PP = (1.28379167095512558561e-01, -3.25042107247001499370e-01, -2.84817495755985104766e-02,
       -5.77027029648944159157e-03, -2.37630166566501626084e-05)
_QQ = (1.0, 3.97917223959155352819e-01, 6.50222499887672944485e-02, 5.08130628187576562776e-03,
       1.32494738004321644526e-04, -3.96022827877536812320e-06)
_PA = (-2.36211856075265944077e-03, 4.14856118683748331666e-01, -3.72207876035701323847e-01,
       3.18346619901161753674e-01, -1.10894694282396677476e-01, 3.54783043256182359371e-02,
       -2.16637559486879084300e-03)
_QA = (1.0, 1.06420880400844228286e-01, 5.40397917702171048937e-01, 7.18286544141962662868e-02,
       1.26171219808761642112e-01, 1.36370839120290507362e-02, 1.19844998467991074170e-02)
_RA = (-9.86494403484714822705e-03, -6.93858572707181764372e-01, -1.05586262253232909814e+01,
       -6.23753324503260060396e+01, -1.62396669462573470355e+02, -1.84605092906711035994e+02,
       -8.12874355063065934246e+01, -9.81432934416914548592e+00)
_SA = (1.0, 1.96512716674392571292e+01, 1.37657754143519042600e+02, 4.34565877475229228821e+02,
       6.45387271733267880336e+02, 4.29008140027567833386e+02, 1.08635005541779435134e+02,
       6.57024977031928170135e+00, -6.04244152148580987438e-02)
_RB = (-9.86494292470009928597e-03, -7.99283237680523006574e-01, -1.77579549177547519889e+01,
       -1.60636384855821916062e+02, -6.37566443368389627722e+02, -1.02509513161107724954e+03,
       -4.83519191608651397019e+02)
_SB = (1.0, 3.03380607434824582924e+01, 3.25792512996573918826e+02, 1.53672958608443695994e+03,
       3.19985821950859553908e+03, 2.55305040643316442583e+03, 4.74528541206955367215e+02,
       -2.24409524465858183362e+01)


def _double(value: float) -> Any:
    from onnxscript import ir

    return ir.tensor(value, dtype=ir.DataType.DOUBLE)


def _horner(op: Any, t: Any, coefficients: Any) -> Any:
    # c0 + t * (c1 + t * (c2 + ...)), the order fdlibm evaluates in
    acc = _double(coefficients[-1])
    for c in reversed(coefficients[:-1]):
        acc = op.Add(_double(c), op.Mul(t, acc))
    return acc


def erf_float64(x: Any) -> Any:
    """erf of a float64 ONNX value from ops onnxruntime runs in float64 (see above)."""
    from onnxscript import opset18 as op

    a = op.Abs(x)
    z = op.Mul(a, a)
    small = op.Add(a, op.Mul(a, op.Div(_horner(op, z, _PP), _horner(op, z, _QQ))))       # |x| < 0.84375
    s = op.Sub(a, _double(1.0))
    near_one = op.Add(_double(_ERX), op.Div(_horner(op, s, _PA), _horner(op, s, _QA)))  # < 1.25
    t = op.Div(_double(1.0), z)
    exponent = op.Sub(op.Neg(z), _double(0.5625))
    mid = op.Sub(_double(1.0), op.Div(op.Exp(op.Add(exponent, op.Div(_horner(op, t, _RA), _horner(op, t, _SA)))), a))
    tail = op.Sub(_double(1.0), op.Div(op.Exp(op.Add(exponent, op.Div(_horner(op, t, _RB), _horner(op, t, _SB)))), a))
    r = op.Where(op.Less(a, _double(6.0)), tail, _double(1.0))                          # < 6, else 1
    r = op.Where(op.Less(a, _double(1 / 0.35)), mid, r)
    r = op.Where(op.Less(a, _double(1.25)), near_one, r)
    r = op.Where(op.Less(a, _double(0.84375)), small, r)
    signed = op.Where(op.Less(x, _double(0.0)), op.Neg(r), r)
    return op.Where(op.IsNaN(x), x, signed)


def _is_double(value: Any) -> bool:
    from onnxscript import ir

    return getattr(value, "dtype", None) == ir.DataType.DOUBLE


def _erf(self: Any) -> Any:
    from onnxscript import opset18 as op

    return erf_float64(self) if _is_double(self) else op.Erf(self)


def _gelu(self: Any, approximate: str = "none") -> Any:
    # float64: ATen's order with the erf above (the dtype is read off the input: a value made
    # inside a translation has none yet); otherwise torchlib's GELU, op for op
    from onnxscript import ir
    from onnxscript import opset18 as op
    from onnxscript.function_libs.torch_lib.ops import nn as torchlib_nn

    if approximate != "none":
        return torchlib_nn.aten_gelu(self, approximate=approximate)
    if _is_double(self):  # as ATen's CPU kernel: x * 0.5 * (1 + erf(x * M_SQRT1_2))
        inner = op.Add(_double(1.0), erf_float64(op.Mul(self, _double(0.7071067811865476))))
        return op.Mul(op.Mul(self, _double(0.5)), inner)
    inner = op.Div(self, ir.tensor(1.4142135623730951, dtype=self.dtype))
    inner = op.Add(op.Erf(inner), ir.tensor(1, dtype=self.dtype))
    inner = op.Mul(ir.tensor(0.5, dtype=self.dtype), inner)
    return op.Mul(self, inner)
