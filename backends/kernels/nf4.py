"""NF4 kernels (nf4.cu): rebuild 4-bit weights, or multiply by them without rebuilding them.

W (out, in) is stored flat and blockwise, as minift/quant/blockwise.py lays it out:

    W[f] = code[q[f]] * absmax[f // blocksize],   q[f] in byte f // 2, the high nibble if f is even

``dequantize`` writes W (4 weights a thread). ``matmul`` computes y = x · Wᵀ from the codes:
``gemv`` for up to 16 rows of x reads every 4-bit weight once, 16 bytes a lane; ``gemm`` for
more rows dequantizes 64 x 32 tiles of W into shared memory for a register-blocked product.
The matmuls take float absmax; with double quantization rebuild it first with
``dequantize_absmax`` (one float per block): one scale format keeps the matmuls to two kernels.
Every function takes a kernel set ``ks`` (loader.py) first and arrays of ``ks.xp``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

SOURCE = "nf4.cu"
CODE_SIZE = 16  # values of a 4-bit code
DYNAMIC_MAP_SIZE = 256  # values of the 8-bit map of double quantization
DQ_BLOCKSIZE = 256  # scales per float scale under double quantization (blockwise.DQ_BLOCKSIZE)
DEQUANT_WEIGHTS, DEQUANT_THREADS = 4, 256  # nf4.cu: weights per thread, threads per block
CHUNK_WEIGHTS = 32  # nf4.cu: one 16-byte GEMV load; block sizes are multiples of it
GEMV_MAX_ROWS, GEMV_WARPS = 16, 8  # nf4.cu: rows of x a GEMV takes, outputs per block
GEMV_ROW_BOUNDS = (1, 2, 4, 8, 16)  # one kernel each: nf4_gemv_rows1 ... nf4_gemv_rows16
X_STAGE_FLOATS = 10240  # nf4.cu: shared memory for staged x
STAGED_GROUP_FLOATS = 36  # nf4.cu: 32 values of x and 4 of padding when staged
GEMM_BM, GEMM_BN, GEMM_THREADS = 64, 64, 256  # nf4.cu: tile of y (rows x outputs), threads
ALIGNMENT = 16  # bytes: the GEMV reads packed and x 16 bytes at a time


# --- checks --------------------------------------------------------------------------------
def _check_array(array: Any, name: str, dtype: Any, shape: tuple) -> None:
    """One dtype, one shape, C-contiguous (the kernels index raw pointers)."""
    if array.dtype != np.dtype(dtype):
        raise TypeError(f"{name} must be {np.dtype(dtype)}, got {array.dtype}")
    if tuple(array.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(array.shape)}")
    if not array.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (the kernel reads it as a flat array)")


def _check_blocksize(blocksize: int) -> None:
    if blocksize <= 0 or blocksize % CHUNK_WEIGHTS:
        raise ValueError(
            f"blocksize must be a positive multiple of {CHUNK_WEIGHTS} (minift uses powers of "
            f"two from 32 to 4096), got {blocksize}"
        )


def _check_weights(packed: Any, absmax: Any, blocksize: int, n: int) -> None:
    """packed holds ceil(n/2) bytes and absmax one float32 per block of n weights."""
    _check_blocksize(blocksize)
    _check_array(packed, "packed", np.uint8, (math.ceil(n / 2),))
    _check_array(absmax, "absmax", np.float32, (math.ceil(n / blocksize),))


def _code_table(ks: Any, code: Any) -> Any:
    """The 16 code values as a float32 array of ``ks.xp`` (a host table is copied over)."""
    if isinstance(code, str):
        raise TypeError(f"pass the 16 code values (codes.code_table({code!r})), not the name")
    table = ks.xp.asarray(code, dtype=ks.xp.float32)
    if table.shape != (CODE_SIZE,):
        raise ValueError(f"code must hold {CODE_SIZE} values, got shape {tuple(table.shape)}")
    return table


def _address(array: Any) -> int:
    """Where the array's data starts, on the device (CuPy) or the host (NumPy)."""
    interface = getattr(array, "__cuda_array_interface__", None) or array.__array_interface__
    return interface["data"][0]


def _check_aligned(array: Any, name: str) -> None:
    if _address(array) % ALIGNMENT:
        raise ValueError(
            f"{name} must start at a multiple of {ALIGNMENT} bytes for the GEMV's vector loads "
            f"(a freshly allocated array does; copy a sliced one)"
        )


def _rows_of(x: Any, in_features: int) -> int:
    """Rows of x (..., in_features) once its leading dimensions are flattened."""
    if x.ndim < 1 or x.shape[-1] != in_features:
        raise ValueError(f"x must have shape (..., {in_features}), got {tuple(x.shape)}")
    _check_array(x, "x", np.float32, tuple(x.shape))
    return math.prod(x.shape[:-1])


# --- dequantize ----------------------------------------------------------------------------
def dequantize(ks: Any, packed: Any, absmax: Any, code: Any, blocksize: int, shape: tuple) -> Any:
    """W = code[q] * absmax[block]: the NumPy backend's ``nf4_dequantize``, as a kernel.

    Args:
        packed: uint8 (ceil(n/2),), two indices a byte, the first in the high nibble.
        absmax: float32 (ceil(n/blocksize),), one scale per block of the flat weights.
        code: (16,) the value of each index (codes.code_table(name)).
        blocksize: weights per block, a multiple of 32.
        shape: the weight's shape, n = prod(shape) elements.
    Returns:
        float32 array of ``shape``.
    """
    n = math.prod(shape)
    _check_weights(packed, absmax, blocksize, n)
    table = _code_table(ks, code)
    out = ks.xp.empty(n, dtype=ks.xp.float32)  # fresh, so aligned for the float4 stores
    if n:
        args = (packed, absmax, table, out, np.int64(n), np.int32(blocksize))
        ks.function(SOURCE, "nf4_dequantize")(_dequant_grid(n), (DEQUANT_THREADS,), args)
    return out.reshape(shape)


def dequantize_double_quant(
    ks: Any,
    packed: Any,
    absmax_q: Any,
    dynamic_map: Any,
    absmax_scale: Any,
    absmax_mean: Any,
    code: Any,
    blocksize: int,
    shape: tuple,
    dq_blocksize: int = DQ_BLOCKSIZE,
) -> Any:
    """W = code[q] * absmax[block], each absmax rebuilt in the kernel from its 8-bit form.

    absmax[b] = dynamic_map[absmax_q[b]] * absmax_scale[b // dq_blocksize] + absmax_mean, as
    QuantState stores it (absmax_q uint8 (n_blocks,), absmax_scale float32
    (ceil(n_blocks/dq_blocksize),), absmax_mean float32 0-d); dynamic_map is codes.DYNAMIC_CODE.
    Other arguments and the result as ``dequantize``.
    """
    n = math.prod(shape)
    _check_blocksize(blocksize)
    _check_array(packed, "packed", np.uint8, (math.ceil(n / 2),))
    n_blocks = math.ceil(n / blocksize)
    scales = _double_quant_scales(
        ks, absmax_q, dynamic_map, absmax_scale, absmax_mean, n_blocks, dq_blocksize
    )
    table = _code_table(ks, code)
    out = ks.xp.empty(n, dtype=ks.xp.float32)
    if n:
        kernel = ks.function(SOURCE, "nf4_dequantize_double_quant")
        sizes = (np.int64(n), np.int32(blocksize), np.int32(dq_blocksize))
        kernel(_dequant_grid(n), (DEQUANT_THREADS,), (packed, *scales, table, out, *sizes))
    return out.reshape(shape)


def dequantize_absmax(
    ks: Any,
    absmax_q: Any,
    dynamic_map: Any,
    absmax_scale: Any,
    absmax_mean: Any,
    dq_blocksize: int = DQ_BLOCKSIZE,
) -> Any:
    """absmax[b] = dynamic_map[absmax_q[b]] * absmax_scale[b // dq_blocksize] + absmax_mean.

    blockwise.dequantize_absmax as a kernel, one thread a block: the float scales the
    matmuls take. Returns float32 (n_blocks,) with n_blocks = len(absmax_q).
    """
    if absmax_q.ndim != 1:
        raise ValueError(f"absmax_q must be 1-D, got shape {tuple(absmax_q.shape)}")
    n_blocks = absmax_q.shape[0]
    scales = _double_quant_scales(
        ks, absmax_q, dynamic_map, absmax_scale, absmax_mean, n_blocks, dq_blocksize
    )
    absmax = ks.xp.empty(n_blocks, dtype=ks.xp.float32)
    if n_blocks:
        kernel = ks.function(SOURCE, "nf4_dequantize_absmax")
        grid = (math.ceil(n_blocks / DEQUANT_THREADS),)
        sizes = (np.int64(n_blocks), np.int32(dq_blocksize))
        kernel(grid, (DEQUANT_THREADS,), (*scales, absmax, *sizes))
    return absmax


def _double_quant_scales(
    ks: Any, absmax_q, dynamic_map, absmax_scale, absmax_mean, n_blocks: int, dq_blocksize: int
) -> tuple:
    """Checked (absmax_q, dynamic_map, absmax_scale, absmax_mean) for n_blocks blocks."""
    if dq_blocksize <= 0:
        raise ValueError(f"dq_blocksize must be positive, got {dq_blocksize}")
    _check_array(absmax_q, "absmax_q", np.uint8, (n_blocks,))
    dynamic_map = ks.xp.asarray(dynamic_map, dtype=ks.xp.float32)
    _check_array(dynamic_map, "dynamic_map", np.float32, (DYNAMIC_MAP_SIZE,))
    _check_array(absmax_scale, "absmax_scale", np.float32, (math.ceil(n_blocks / dq_blocksize),))
    _check_array(absmax_mean, "absmax_mean", np.float32, ())
    return absmax_q, dynamic_map, absmax_scale, absmax_mean


def _dequant_grid(n: int) -> tuple[int]:
    return (math.ceil(n / (DEQUANT_WEIGHTS * DEQUANT_THREADS)),)


# --- y = x · Wᵀ ----------------------------------------------------------------------------
def matmul(
    ks: Any,
    x: Any,
    packed: Any,
    absmax: Any,
    code: Any,
    blocksize: int,
    out_features: int,
    in_features: int,
) -> Any:
    """y = x · Wᵀ with W (out_features, in_features) read from its 4-bit codes.

    ``gemv`` when x has at most 16 rows and in_features % 32 == 0 (whole 16-byte chunks a
    row), ``gemm`` otherwise. Arguments as ``gemv``.
    """
    if _rows_of(x, in_features) <= GEMV_MAX_ROWS and in_features % CHUNK_WEIGHTS == 0:
        return gemv(ks, x, packed, absmax, code, blocksize, out_features, in_features)
    return gemm(ks, x, packed, absmax, code, blocksize, out_features, in_features)


def gemv(
    ks: Any,
    x: Any,
    packed: Any,
    absmax: Any,
    code: Any,
    blocksize: int,
    out_features: int,
    in_features: int,
    stage_x: bool | None = None,
) -> Any:
    """y = x · Wᵀ for at most 16 rows of x: one warp per output, each weight read once.

    Args:
        x: float32 (..., in_features), C-contiguous, at most 16 rows in all; in_features a
            multiple of 32; x and packed start at a multiple of 16 bytes.
        packed, absmax, code, blocksize: W's codes and scales, as ``dequantize`` takes them.
        out_features, in_features: W's shape.
        stage_x: copy x into shared memory first (True), read it from global memory (False),
            or stage it when it fits (None): rows * in_features * 36/32 <= 10240 floats.
    Returns:
        float32 (..., out_features).
    """
    rows = _check_matmul(x, packed, absmax, blocksize, out_features, in_features)
    if rows > GEMV_MAX_ROWS:
        raise ValueError(f"gemv takes at most {GEMV_MAX_ROWS} rows of x, got {rows}; use gemm")
    if in_features % CHUNK_WEIGHTS:
        raise ValueError(
            f"gemv needs in_features % {CHUNK_WEIGHTS} == 0 (rows of whole 16-byte chunks), "
            f"got {in_features}; use gemm"
        )
    _check_aligned(packed, "packed")
    _check_aligned(x, "x")
    fits = rows * in_features // CHUNK_WEIGHTS * STAGED_GROUP_FLOATS <= X_STAGE_FLOATS
    if stage_x and not fits:
        raise ValueError(f"x ({rows} x {in_features}) does not fit in {X_STAGE_FLOATS} floats")
    table = _code_table(ks, code)
    y = ks.xp.empty((rows, out_features), dtype=ks.xp.float32)
    if rows:
        bound = next(b for b in GEMV_ROW_BOUNDS if b >= rows)
        kernel = ks.function(SOURCE, f"nf4_gemv_rows{bound}")
        grid = (math.ceil(out_features / GEMV_WARPS),)
        stage = fits if stage_x is None else stage_x
        sizes = (np.int32(rows), np.int32(out_features), np.int32(in_features))
        args = (x, packed, absmax, table, y, *sizes, np.int32(blocksize), np.int32(stage))
        kernel(grid, (GEMV_WARPS * 32,), args)
    return y.reshape(*x.shape[:-1], out_features)


def gemm(
    ks: Any,
    x: Any,
    packed: Any,
    absmax: Any,
    code: Any,
    blocksize: int,
    out_features: int,
    in_features: int,
) -> Any:
    """y = x · Wᵀ for any number of rows: 64 x 64 tiles of y, W dequantized tile by tile.

    Arguments and result as ``gemv``, without its limits on rows, in_features and alignment.
    """
    rows = _check_matmul(x, packed, absmax, blocksize, out_features, in_features)
    table = _code_table(ks, code)
    y = ks.xp.empty((rows, out_features), dtype=ks.xp.float32)
    if rows:
        grid = (math.ceil(out_features / GEMM_BN), math.ceil(rows / GEMM_BM))
        sizes = (np.int32(rows), np.int32(out_features), np.int32(in_features))
        args = (x, packed, absmax, table, y, *sizes, np.int32(blocksize))
        ks.function(SOURCE, "nf4_gemm")(grid, (GEMM_THREADS,), args)
    return y.reshape(*x.shape[:-1], out_features)


def _check_matmul(x, packed, absmax, blocksize: int, out_features: int, in_features: int) -> int:
    """Rows of x, after checking x against W's shape and W's arrays against its size."""
    if out_features <= 0 or in_features <= 0:
        raise ValueError(f"W must have a positive shape, got ({out_features}, {in_features})")
    rows = _rows_of(x, in_features)
    _check_weights(packed, absmax, blocksize, out_features * in_features)
    return rows
