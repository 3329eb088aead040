"""Shape and dtype checks used inside loss bodies.

They look at shapes and dtypes only, never at tensor values, so they cost nothing on the hot path,
script under TorchScript, and cause no graph break under ``torch.compile(fullgraph=True)``.
"""
from typing import List

import torch
from torch import Tensor


def fmt_shape(shape: List[int]) -> str:
    """Format a shape the way Python prints a tuple: ``(10, 1)``, ``(10,)``, ``()``."""
    if len(shape) == 1:
        return "({},)".format(shape[0])
    parts: List[str] = []
    for s in shape:
        parts.append(str(s))
    return "(" + ", ".join(parts) + ")"


def check_same_shape(a: Tensor, b: Tensor, name_a: str, name_b: str) -> None:
    # Never broadcast: an (N, 1) prediction against an (N,) target would silently become (N, N).
    if a.shape != b.shape:
        raise ValueError(
            "{} and {} must have the same shape, got {} {} and {} {}".format(
                name_a, name_b, name_a, fmt_shape(list(a.shape)), name_b, fmt_shape(list(b.shape))
            )
        )


def check_floating(t: Tensor, name: str) -> None:
    if not t.is_floating_point():
        raise TypeError(
            "{} must be a floating-point tensor, got dtype {}".format(name, _dtype_name(t))
        )


def check_same_dtype(a: Tensor, b: Tensor, name_a: str, name_b: str) -> None:
    if a.dtype != b.dtype:
        raise TypeError(
            "{} and {} must have the same dtype, got {} {} and {} {}".format(
                name_a, name_b, name_a, _dtype_name(a), name_b, _dtype_name(b)
            )
        )


def check_class_indices(target: Tensor, name: str) -> None:
    if target.dtype != torch.int64:
        raise TypeError(
            "{} must hold class indices as an int64 tensor, got dtype {}".format(name, _dtype_name(target))
        )


def check_ndim(t: Tensor, name: str, ndim: int, what: str) -> None:
    if t.dim() != ndim:
        raise ValueError(
            "{} must be {}-dimensional {}, got shape {}".format(name, ndim, what, fmt_shape(list(t.shape)))
        )


def check_min_ndim(t: Tensor, name: str, ndim: int, what: str) -> None:
    if t.dim() < ndim:
        raise ValueError(
            "{} must have at least {} dimensions {}, got shape {}".format(
                name, ndim, what, fmt_shape(list(t.shape))
            )
        )


def _dtype_name(t: Tensor) -> str:
    # Under TorchScript a dtype is a plain int (str() gives "6"), so common dtypes are named here.
    d = t.dtype
    if d == torch.float32:
        return "float32"
    if d == torch.float64:
        return "float64"
    if d == torch.float16:
        return "float16"
    if d == torch.bfloat16:
        return "bfloat16"
    if d == torch.int64:
        return "int64"
    if d == torch.int32:
        return "int32"
    if d == torch.bool:
        return "bool"
    return str(d).replace("torch.", "")


def check_positive(value: float, name: str) -> None:
    if not value > 0.0:
        raise ValueError("{} must be > 0, got {}".format(name, value))


def check_non_negative(value: float, name: str) -> None:
    if not value >= 0.0:
        raise ValueError("{} must be >= 0, got {}".format(name, value))


def check_in_open_interval(value: float, name: str, low: float, high: float) -> None:
    if not (value > low and value < high):
        raise ValueError("{} must be in ({}, {}), got {}".format(name, low, high, value))


def check_in_closed_interval(value: float, name: str, low: float, high: float) -> None:
    if not (value >= low and value <= high):
        raise ValueError("{} must be in [{}, {}], got {}".format(name, low, high, value))
