"""Fused LoRA linear through lora.cu: y = x·Wᵀ + s·(x·Aᵀ)·Bᵀ (+ bias), never W + s·B·A.

LoRA (Hu et al. 2021, https://arxiv.org/abs/2106.09685) adds a rank-r update to a frozen
weight, W' = W + s·B·A. Building W' costs an (out, in) array per layer and step; instead

    u = x·Aᵀ                       (N, r), an nt SGEMM, kept for the backward
    y = [x | s·u] · [W | B]ᵀ        one GEMM whose K loop runs over in, then over r

and the backward, with g = dL/dy and gB = g·B (N, r):

    gx = [g | s·gB] · [W ; A]       the same two-segment GEMM in the nn layout
    gA = s · gBᵀ · x                a tn SGEMM
    gB_lora = s · gᵀ · u            a tn SGEMM

The NumPy references (``lora_linear_reference``, ``lora_linear_backward_reference``) are the
same formulas written with plain matmuls on any array module.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from backends.kernels.gemm import GEMM_THREADS, MAX_GRID_Y, choose_tile, gemm


def lora_linear(
    ks: Any, x: Any, weight: Any, lora_a: Any, lora_b: Any, scale: float, bias: Any = None
) -> tuple[Any, Any]:
    """y = x·Wᵀ + s·(x·Aᵀ)·Bᵀ + bias, and u = x·Aᵀ for the backward.

    Args:
        ks: a kernel set (loader.py).
        x: (..., in) float32; copied if not C-contiguous (activations are often views).
        weight: (out, in); lora_a: (r, in); lora_b: (out, r); bias: (out,) or None. The
            parameters must be C-contiguous float32.
        scale: s, LoRA's alpha / r.

    Returns:
        y (..., out) and u (..., r).
    """
    out_features, in_features = _check_parameters(weight, lora_a, lora_b, bias)
    rank = lora_a.shape[0]
    x2 = _rows(ks, "x", x, in_features)
    u = gemm(ks, x2, lora_a, trans_b=True)  # (N, r)
    y = ks.xp.empty((x2.shape[0], out_features), dtype=np.float32)
    if x2.shape[0] and out_features:
        name = "lora_forward" if bias is None else "lora_forward_bias"
        operands = (x2, weight, u, lora_b) + (() if bias is None else (bias,))
        sizes = (x2.shape[0], out_features, in_features, rank)
        _launch_fused(ks, name, operands, y, sizes, scale)
    lead = x.shape[:-1]
    return y.reshape(*lead, out_features), u.reshape(*lead, rank)


def lora_linear_backward(
    ks: Any,
    g: Any,
    x: Any,
    weight: Any,
    lora_a: Any,
    lora_b: Any,
    scale: float,
    u: Any,
    need_x: bool = True,
    need_a: bool = True,
    need_b: bool = True,
) -> tuple[Any, Any, Any]:
    """Gradients of y = x·Wᵀ + s·u·Bᵀ with u = x·Aᵀ, for g = dL/dy (W is frozen).

    Args:
        g: (..., out), x: (..., in), u: (..., r) from ``lora_linear``; copied if not
            C-contiguous. weight, lora_a, lora_b, scale: as for ``lora_linear``.
        need_x, need_a, need_b: which gradients to compute.

    Returns:
        (gx (..., in), gA (r, in), gB (out, r)), None for each one not needed.
    """
    out_features, in_features = _check_parameters(weight, lora_a, lora_b, None)
    rank = lora_a.shape[0]
    g2 = _rows(ks, "g", g, out_features)
    rows = g2.shape[0]
    grad_y_b = gemm(ks, g2, lora_b) if need_x or need_a else None  # (N, r) = g·B
    grad_x = grad_a = grad_b = None
    if need_x:
        grad_x = ks.xp.empty((rows, in_features), dtype=np.float32)
        if rows and in_features:
            sizes = (rows, in_features, out_features, rank)
            _launch_fused(
                ks, "lora_input_grad", (g2, weight, grad_y_b, lora_a), grad_x, sizes, scale
            )
        grad_x = grad_x.reshape(*g.shape[:-1], in_features)
    if need_a:
        grad_a = gemm(ks, grad_y_b, _rows(ks, "x", x, in_features, rows), trans_a=True, alpha=scale)
    if need_b:
        grad_b = gemm(ks, g2, _rows(ks, "u", u, rank, rows), trans_a=True, alpha=scale)
    return grad_x, grad_a, grad_b


def lora_linear_reference(
    x: Any, weight: Any, lora_a: Any, lora_b: Any, scale: float, bias: Any = None
) -> tuple[Any, Any]:
    """(y, u) by three plain matmuls: the composition the fused kernel replaces."""
    u = x @ lora_a.T
    y = x @ weight.T + scale * (u @ lora_b.T)
    return (y if bias is None else y + bias), u


def lora_linear_backward_reference(
    g: Any, x: Any, weight: Any, lora_a: Any, lora_b: Any, scale: float, u: Any
) -> tuple[Any, Any, Any]:
    """(gx, gA, gB) by plain matmuls; gA and gB sum over the rows of all leading axes."""
    g2, x2, u2 = g.reshape(-1, g.shape[-1]), x.reshape(-1, x.shape[-1]), u.reshape(-1, u.shape[-1])
    grad_y_b = g2 @ lora_b  # (N, r)
    grad_x = g2 @ weight + scale * grad_y_b @ lora_a
    return grad_x.reshape(*g.shape[:-1], -1), scale * grad_y_b.T @ x2, scale * g2.T @ u2


def _launch_fused(ks, name: str, operands: tuple, out: Any, sizes: tuple, scale: float) -> None:
    """One two-segment GEMM of lora.cu over an output of (sizes[0], sizes[1])."""
    tile = choose_tile(sizes[0], sizes[1], 1)
    if math.ceil(sizes[1] / tile) > MAX_GRID_Y:
        raise ValueError(f"lora: {sizes[1]} columns need more than {MAX_GRID_Y} tiles of {tile}")
    grid = (math.ceil(sizes[0] / tile), math.ceil(sizes[1] / tile), 1)
    args = (*operands, out, *map(np.int32, sizes), np.float32(scale))
    ks.function("lora.cu", f"{name}_{tile}")(grid, (GEMM_THREADS,), args)


def _check_parameters(weight, lora_a, lora_b, bias) -> tuple[int, int]:
    """(out, in) after checking dtypes, shapes and contiguity of the layer's parameters."""
    for name, p in (("weight", weight), ("lora_a", lora_a), ("lora_b", lora_b), ("bias", bias)):
        if p is None:
            continue
        if p.dtype != np.float32:
            raise TypeError(f"lora: {name} is {p.dtype}; the kernels take float32 only")
        if not p.flags.c_contiguous:
            raise ValueError(f"lora: {name} must be C-contiguous")
    if weight.ndim != 2 or lora_a.ndim != 2 or lora_b.ndim != 2:
        raise ValueError(
            f"lora: weight, lora_a, lora_b must be matrices, got {weight.shape}, "
            f"{lora_a.shape}, {lora_b.shape}"
        )
    (out_features, in_features), rank = weight.shape, lora_a.shape[0]
    if lora_a.shape != (rank, in_features) or lora_b.shape != (out_features, rank):
        raise ValueError(
            f"lora: weight {weight.shape} (out, in) needs lora_a (r, {in_features}) and "
            f"lora_b ({out_features}, r), got {lora_a.shape} and {lora_b.shape}"
        )
    if bias is not None and bias.shape != (out_features,):
        raise ValueError(f"lora: bias must be ({out_features},), got {bias.shape}")
    return out_features, in_features


def _rows(ks: Any, name: str, x: Any, features: int, rows: int | None = None) -> Any:
    """x (..., features) as a C-contiguous (N, features) float32 matrix, N = rows if given."""
    if x.dtype != np.float32:
        raise TypeError(f"lora: {name} is {x.dtype}; the kernels take float32 only")
    if x.ndim < 1 or x.shape[-1] != features:
        raise ValueError(f"lora: {name} must end in {features} features, got shape {x.shape}")
    matrix = ks.xp.ascontiguousarray(x).reshape(-1, features)
    if rows is not None and matrix.shape[0] != rows:
        raise ValueError(f"lora: {name} has {matrix.shape[0]} rows but g has {rows}")
    return matrix
