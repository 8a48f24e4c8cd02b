"""SGEMM through sgemm.cu: C = alpha · op(A) · op(B) in float32, batched, without transposes.

A linear layer y = x·Wᵀ needs three products, and each is one layout of the arrays as stored
(n: as stored, t: the kernel reads the stored array transposed):

    y  = x · Wᵀ    nt        gx = g · W    nn        gW = gᵀ · x    tn

``gemm`` takes stored (C-contiguous) arrays and a transpose flag each; ``matmul`` takes any
float32 arrays with NumPy semantics and recognises transposed views (``w.T``) so that they
are read in place. Leading axes are batch axes, broadcast as NumPy does; an operand without
batch axes is shared by every batch (batch stride 0). The NumPy reference is ``numpy.matmul``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

GEMM_THREADS = 256  # gemm_tile.cuh: 16 x 16 threads, one register block each
TILES = (128, 64)  # BM = BN of TileLarge and TileSmall in gemm_tile.cuh
# The 128 tile only when it makes at least about one block per SM of a large GPU (an H100
# has 132); below that the 64 tile's 4x more blocks keep more SMs busy. Not yet measured.
LARGE_TILE_MIN_BLOCKS = 128
MAX_GRID_Y = 65535  # column tiles; rows go on gridDim.x (2^31 - 1)
MAX_GRID_Z = 65535  # batches beyond this are looped over inside the kernel
INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class GemmPlan:
    """What one launch computes: C (out_shape) = alpha · op(a) · op(b) over `batches`.

    ``a`` and ``b`` are the arrays the kernel reads (C-contiguous); ``copied`` names the
    operands that had to be copied to get there (empty when every input was read in place).
    """

    a: Any
    b: Any
    trans_a: bool
    trans_b: bool
    m: int
    n: int
    k: int
    batches: int
    stride_a: int  # elements from one batch's matrix to the next; 0 = shared
    stride_b: int
    out_shape: tuple[int, ...]
    tile: int
    copied: tuple[str, ...] = ()

    @property
    def layout(self) -> str:
        return ("t" if self.trans_a else "n") + ("t" if self.trans_b else "n")

    @property
    def kernel(self) -> str:
        return f"sgemm_{self.layout}_{self.tile}"


def choose_tile(m: int, n: int, batches: int) -> int:
    """128 x 128 tiles for big products, 64 x 64 when the large tiles would be too few."""
    blocks = math.ceil(m / 128) * math.ceil(n / 128) * batches
    return 128 if blocks >= LARGE_TILE_MIN_BLOCKS else 64


def plan_gemm(
    ks: Any, a: Any, b: Any, trans_a: bool = False, trans_b: bool = False, tile: int | None = None
) -> GemmPlan:
    """Check stored operands and work out sizes, batch strides and the kernel to launch."""
    for name, x in (("a", a), ("b", b)):
        _check_float32_matrix(name, x)
        if not x.flags.c_contiguous:
            raise ValueError(f"gemm: {name} must be C-contiguous (matmul copies views for you)")
    m, k = a.shape[-2:][::-1] if trans_a else a.shape[-2:]
    k_b, n = b.shape[-2:][::-1] if trans_b else b.shape[-2:]
    if k != k_b:
        raise ValueError(
            f"gemm: op(a) is {m}x{k} but op(b) is {k_b}x{n}; the inner sizes must agree "
            f"(a {a.shape}, trans_a={trans_a}; b {b.shape}, trans_b={trans_b})"
        )
    try:
        batch_shape = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except ValueError as err:
        raise ValueError(
            f"gemm: batch axes {a.shape[:-2]} and {b.shape[:-2]} do not broadcast"
        ) from err
    a, stride_a, copied_a = _batched(ks, a, batch_shape)
    b, stride_b, copied_b = _batched(ks, b, batch_shape)
    batches = math.prod(batch_shape)
    out_shape = (*batch_shape, m, n)
    if not trans_a and stride_a and not stride_b:
        # a stack of row-major matrices times one shared matrix is one tall product
        m, batches, stride_a = m * batches, 1, 0
    if max(m, n, k) > INT32_MAX:
        raise ValueError(f"gemm: sizes {m}x{k}x{n} do not fit the kernel's 32-bit int indices")
    if tile is None:
        tile = choose_tile(m, n, batches)
    if tile not in TILES:
        raise ValueError(f"gemm: tile must be one of {TILES}, got {tile}")
    if math.ceil(n / tile) > MAX_GRID_Y:
        raise ValueError(f"gemm: {n} columns need more than {MAX_GRID_Y} column tiles of {tile}")
    copied = tuple(name for name, was in (("a", copied_a), ("b", copied_b)) if was)
    return GemmPlan(
        a, b, trans_a, trans_b, m, n, k, batches, stride_a, stride_b, out_shape, tile, copied
    )


def launch(ks: Any, plan: GemmPlan, alpha: float = 1.0) -> Any:
    """Run a plan; returns C with shape ``plan.out_shape``."""
    m, n, k, tile = plan.m, plan.n, plan.k, plan.tile
    if m == 0 or n == 0 or k == 0 or plan.batches == 0:
        return ks.xp.zeros(plan.out_shape, dtype=np.float32)  # nothing to launch: empty or 0
    c = ks.xp.empty(plan.out_shape, dtype=np.float32)
    grid = (math.ceil(m / tile), math.ceil(n / tile), min(plan.batches, MAX_GRID_Z))
    sizes = np.int32(m), np.int32(n), np.int32(k)
    leading = np.int32(plan.a.shape[-1]), np.int32(plan.b.shape[-1]), np.int32(n)  # row strides
    strides = np.int64(plan.stride_a), np.int64(plan.stride_b), np.int64(m * n)  # batch strides
    args = (
        plan.a,
        plan.b,
        c,
        *sizes,
        *leading,
        *strides,
        np.int32(plan.batches),
        np.float32(alpha),
    )
    ks.function("sgemm.cu", plan.kernel)(grid, (GEMM_THREADS,), args)
    return c


def gemm(
    ks: Any,
    a: Any,
    b: Any,
    trans_a: bool = False,
    trans_b: bool = False,
    *,
    alpha: float = 1.0,
    tile: int | None = None,
) -> Any:
    """C = alpha · op(a) · op(b) for stored, C-contiguous float32 arrays.

    Args:
        ks: a kernel set (loader.py): CudaKernels on a GPU, EmulatedKernels on the CPU.
        a: (..., M, K), or (..., K, M) stored when ``trans_a``.
        b: (..., K, N), or (..., N, K) stored when ``trans_b``.
        alpha: scales the product (LoRA's backward passes its s).
        tile: 128 or 64 to force a tile shape; None chooses by the number of tiles.

    Returns:
        C of shape (*broadcast batch axes, M, N), float32.
    """
    return launch(ks, plan_gemm(ks, a, b, trans_a, trans_b, tile), alpha)


def plan_matmul(ks: Any, a: Any, b: Any, tile: int | None = None) -> GemmPlan:
    """The plan of ``a @ b``: transposed views read in place, other views copied."""
    for name, x in (("a", a), ("b", b)):
        _check_float32_matrix(name, x)
    a, trans_a, copied_a = _as_stored(ks, a)
    b, trans_b, copied_b = _as_stored(ks, b)
    plan = plan_gemm(ks, a, b, trans_a, trans_b, tile)
    copied = tuple(
        name for name, first in (("a", copied_a), ("b", copied_b)) if first or name in plan.copied
    )
    return replace(plan, copied=copied)


def matmul(ks: Any, a: Any, b: Any) -> Any:
    """``a @ b`` with NumPy semantics, for float32 arrays of 2 or more dimensions.

    Raises TypeError for other dtypes and ValueError for fewer dimensions; a backend sends
    those to the library matmul instead.
    """
    return launch(ks, plan_matmul(ks, a, b))


def _check_float32_matrix(name: str, x: Any) -> None:
    if x.dtype != np.float32:
        raise TypeError(f"sgemm: {name} is {x.dtype}; the kernels take float32 only")
    if x.ndim < 2:
        raise ValueError(f"sgemm: {name} has shape {x.shape}; it needs 2 or more dimensions")


def _as_stored(ks: Any, x: Any) -> tuple[Any, bool, bool]:
    """(stored array, transposed?, copied?): a view whose swapaxes is C-contiguous is a
    transposed matrix, read in place; anything else non-contiguous is copied."""
    if x.flags.c_contiguous:
        return x, False, False
    swapped = x.swapaxes(-1, -2)
    if swapped.flags.c_contiguous:
        return swapped, True, False
    return ks.xp.ascontiguousarray(x), False, True


def _batched(ks: Any, x: Any, batch_shape: tuple) -> tuple[Any, int, bool]:
    """(array, batch stride, copied?): stride 0 when x has one matrix for every batch, its
    matrix size when x has them all; a partial broadcast (e.g. (3, M, K) against batch
    (2, 3)) is expanded to every batch by a copy."""
    matrix = x.shape[-2] * x.shape[-1]
    if math.prod(x.shape[:-2]) == 1:
        return x, 0, False
    if (1,) * (len(batch_shape) + 2 - x.ndim) + x.shape[:-2] == batch_shape:
        return x, matrix, False
    full = ks.xp.broadcast_to(x, (*batch_shape, *x.shape[-2:]))
    return ks.xp.ascontiguousarray(full), matrix, True
