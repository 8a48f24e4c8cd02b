"""Row-wise fused kernels: softmax (with a causal mask), cross-entropy, layer norm, RMS norm.

Every function works over the LAST axis, with the leading axes flattened into rows, and takes
a kernel set ``ks`` first (loader.py), so one call runs on a GPU and in the emulator. The
kernels are in softmax.cu, cross_entropy.cu and norm.cu, whose headers give the loop nests;
the launch shapes are chosen here:

    softmax rows of <= 1024 keys       a warp per row, WARP_ROWS_PER_BLOCK rows per block,
                                       the row in registers (REGISTER_ROWS)
    longer rows, cross-entropy, norms  a block per row, min(BLOCK_THREADS, row rounded up to 32)
    norm weight/bias gradients         per-slice column sums (PARAM_GRAD_SLICE_ROWS rows a
                                       slice), added up here with xp.sum

Inputs are float32 (targets: integers) arrays of ``ks.xp``; a non-contiguous input is copied
once to C order, since the kernels index rows as ``row * n``. The NumPy references are the
formulas in tests/test_kernel_rowwise.py and the ops in minift.functional.
"""

from __future__ import annotations

from typing import Any

import numpy as np

WARP_ROWS_PER_BLOCK = 4  # 128 threads: four rows per block, one per warp
REGISTER_ROWS = ((128, 4), (1024, 32))  # (longest row, values per lane) of softmax_*_warpN
BLOCK_THREADS = 256  # a block per row: threads striding over it
PARAM_GRAD_SLICE_ROWS = 64  # rows summed by one thread of the norm parameter-gradient kernel
MAX_GRID_Y = 65535  # CUDA's limit on gridDim.y (the slices of the parameter gradients)
INT32_MAX = 2**31 - 1  # rows and row lengths are C ints


# --- checks shared by every function -----------------------------------------------------------
def _float32(ks, a, what: str, op: str):
    """``a`` as a C-contiguous float32 array of ``ks.xp``, or an error naming the problem."""
    if not isinstance(a, ks.xp.ndarray):
        raise TypeError(f"{op}: {what} must be a {ks.xp.__name__} array, got {type(a).__name__}")
    if a.dtype != ks.xp.float32:
        raise TypeError(f"{op}: {what} must be float32, got {a.dtype}")
    return a.astype(ks.xp.float32, order="C", copy=False)  # copies only a strided array


def _check_shape(a, shape: tuple, what: str, op: str) -> None:
    if a.shape != tuple(shape):
        raise ValueError(f"{op}: {what} must have shape {tuple(shape)}, got {a.shape}")


def _rows_and_length(x, op: str) -> tuple[int, int]:
    """(rows, n): the leading axes flattened, the last axis kept."""
    if x.ndim == 0:
        raise ValueError(f"{op}: needs at least one axis, got a 0-d array")
    n = x.shape[-1]
    rows = x.size // n if n else 0
    if rows > INT32_MAX or n > INT32_MAX:
        raise ValueError(f"{op}: {rows} rows of {n} do not fit the kernels' int indices")
    return rows, n


def _block_threads(n: int) -> int:
    """Threads for a block that owns one row of n: n rounded up to a warp, at most 256."""
    return min(BLOCK_THREADS, 32 * -(-n // 32))


# --- softmax ------------------------------------------------------------------------------------
def _launch_softmax(ks, direction: str, rows: int, n: int, args: tuple) -> None:
    """A warp per row while the row fits in registers, a block per row beyond."""
    for longest, per_lane in REGISTER_ROWS:
        if n <= longest:
            kernel = ks.function("softmax.cu", f"softmax_{direction}_warp{per_lane}")
            blocks = -(-rows // WARP_ROWS_PER_BLOCK)
            kernel((blocks,), (32 * WARP_ROWS_PER_BLOCK,), (*args, np.int32(rows)))
            return
    kernel = ks.function("softmax.cu", f"softmax_{direction}_block")
    kernel((rows,), (BLOCK_THREADS,), args)


def softmax(ks, x: Any, causal: bool = False) -> Any:
    """y = exp(x - max x) / sum exp(x - max x) over the last axis.

    Args:
        x: (..., Tk) float32; (..., Tq, Tk) when ``causal``.
        causal: query i sees keys j <= i + (Tk - Tq) (bottom-right aligned, as minift's
            attention); masked entries of y are exactly 0, and a query that sees no key
            (Tq > Tk) gets a row of zeros.
    Returns:
        y, x's shape.
    """
    x = _float32(ks, x, "x", "softmax")
    rows, tk = _rows_and_length(x, "softmax")
    if causal and x.ndim < 2:
        raise ValueError(f"softmax: causal needs scores of shape (..., Tq, Tk), got {x.shape}")
    y = ks.xp.empty_like(x)
    if y.size:
        tq = x.shape[-2] if causal else 1
        args = (x, y, np.int32(tq), np.int32(tk), np.int32(causal))
        _launch_softmax(ks, "forward", rows, tk, args)
    return y


def softmax_backward(ks, y: Any, g: Any) -> Any:
    """gx = y (g - sum(g y)) over the last axis, from the forward output y only."""
    y = _float32(ks, y, "y", "softmax_backward")
    g = _float32(ks, g, "g", "softmax_backward")
    _check_shape(g, y.shape, "g", "softmax_backward")
    rows, n = _rows_and_length(y, "softmax_backward")
    gx = ks.xp.empty_like(y)
    if gx.size:
        _launch_softmax(ks, "backward", rows, n, (y, g, gx, np.int32(n)))
    return gx


# --- cross-entropy ------------------------------------------------------------------------------
def _targets(ks, target: Any, logits: Any, ignore_index: int, op: str, check_range: bool):
    """Targets as C-contiguous int64, each in [0, C) or ignore_index (checked: never read OOB).

    The range check costs a device-to-host read; a caller that has checked already (minift's
    F.cross_entropy) passes check_range=False.
    """
    if not isinstance(target, ks.xp.ndarray) or target.dtype.kind not in "iu":
        got = getattr(target, "dtype", type(target).__name__)
        raise TypeError(f"{op}: target must be an integer array of class indices, got {got}")
    if target.shape != logits.shape[:-1]:
        raise ValueError(
            f"{op}: target shape {target.shape} must be logits shape {logits.shape} "
            "without its last (class) axis"
        )
    target = target.astype(ks.xp.int64, order="C", copy=False)
    if not check_range:
        return target
    classes = logits.shape[-1]
    bad = (target != ignore_index) & ((target < 0) | (target >= classes))
    if bool(bad.any()):
        value = int(target[bad].reshape(-1)[0])
        raise ValueError(
            f"{op}: target value {value} is out of range [0, {classes}) "
            f"(and is not ignore_index={ignore_index})"
        )
    return target


def _check_classes_and_smoothing(logits: Any, label_smoothing: float, op: str) -> None:
    if logits.ndim == 0 or logits.shape[-1] == 0:
        raise ValueError(f"{op}: logits need a last (class) axis of >= 1 class, got {logits.shape}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{op}: label_smoothing must be in [0, 1], got {label_smoothing}")


def cross_entropy(
    ks,
    logits: Any,
    target: Any,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    check_targets: bool = True,
) -> tuple[Any, Any]:
    """Per-row softmax cross-entropy, never storing the softmax (PyTorch semantics).

    loss = (1 - eps)(lse - z[t]) + eps (lse - mean_j z_j),  lse = log sum_j exp(z_j),
    eps = label_smoothing; 0 where t == ignore_index.

    Args:
        logits: (..., C) float32.
        target: (...) integer class indices in [0, C), or ``ignore_index``.
        check_targets: raise on a target out of range (False: the caller has checked).
    Returns:
        (loss_rows, lse), both float32 of target's shape; lse is what backward needs
        (0 on ignored rows, whose logits are never read).
    """
    op = "cross_entropy"
    logits = _float32(ks, logits, "logits", op)
    _check_classes_and_smoothing(logits, label_smoothing, op)
    target = _targets(ks, target, logits, ignore_index, op, check_targets)
    rows, classes = _rows_and_length(logits, op)
    loss = ks.xp.empty(target.shape, dtype=ks.xp.float32)
    lse = ks.xp.empty(target.shape, dtype=ks.xp.float32)
    if rows:
        kernel = ks.function("cross_entropy.cu", "cross_entropy_forward")
        scalars = (np.int32(classes), np.int64(ignore_index), np.float32(label_smoothing))
        kernel((rows,), (_block_threads(classes),), (logits, target, loss, lse, *scalars))
    return loss, lse


def cross_entropy_backward(
    ks,
    logits: Any,
    target: Any,
    lse: Any,
    grad_rows: Any,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    check_targets: bool = True,
) -> Any:
    """gz = w (softmax(z) - (1 - eps) onehot(t) - eps / C), softmax(z) = exp(z - lse).

    Args:
        logits: (..., C) float32, as given to forward.
        target: (...) as given to forward.
        lse: (...) from forward.
        grad_rows: (...) float32, w = dL/dloss_rows (for a mean over kept rows: g / count).
        check_targets: as in forward.
    Returns:
        g_logits, logits' shape; zero on ignored rows.
    """
    op = "cross_entropy_backward"
    logits = _float32(ks, logits, "logits", op)
    _check_classes_and_smoothing(logits, label_smoothing, op)
    target = _targets(ks, target, logits, ignore_index, op, check_targets)
    lse = _float32(ks, lse, "lse", op)
    grad_rows = _float32(ks, grad_rows, "grad_rows", op)
    _check_shape(lse, target.shape, "lse", op)
    _check_shape(grad_rows, target.shape, "grad_rows", op)
    rows, classes = _rows_and_length(logits, op)
    grad = ks.xp.empty_like(logits)
    if rows:
        kernel = ks.function("cross_entropy.cu", "cross_entropy_backward")
        scalars = (np.int32(classes), np.int64(ignore_index), np.float32(label_smoothing))
        args = (logits, target, lse, grad_rows, grad, *scalars)
        kernel((rows,), (_block_threads(classes),), args)
    return grad


# --- layer norm and RMS norm --------------------------------------------------------------------
def _norm_inputs(ks, x: Any, op: str) -> tuple[Any, int, int]:
    x = _float32(ks, x, "x", op)
    rows, dim = _rows_and_length(x, op)
    if dim == 0:
        raise ValueError(f"{op}: the normalised (last) axis is empty, shape {x.shape}")
    return x, rows, dim


def _affine_param(ks, param: Any, dim: int, fill: float, what: str, op: str):
    """weight or bias as a (dim,) float32 array; None becomes ``fill`` (1 or 0), an identity."""
    if param is None:
        return ks.xp.full((dim,), fill, dtype=ks.xp.float32)
    param = _float32(ks, param, what, op)
    if param.shape != (dim,):
        raise ValueError(f"{op}: {what} must have shape ({dim},), got {param.shape}")
    return param


def _row_stats(ks, stats: Any, x: Any, what: str, op: str):
    """mean or rstd: one float32 per row of x."""
    stats = _float32(ks, stats, what, op)
    _check_shape(stats, x.shape[:-1], what, op)
    return stats


def _param_grads(ks, kernel_name: str, inputs: tuple, outputs: int, rows: int, dim: int):
    """Column sums over rows: per-slice partial sums by the kernel, added up by xp.sum."""
    slice_rows = max(PARAM_GRAD_SLICE_ROWS, -(-rows // MAX_GRID_Y))
    slices = -(-rows // slice_rows)
    partials = [ks.xp.empty((slices, dim), dtype=ks.xp.float32) for _ in range(outputs)]
    threads = _block_threads(dim)
    kernel = ks.function("norm.cu", kernel_name)
    args = (*inputs, *partials, np.int32(rows), np.int32(dim), np.int32(slice_rows))
    kernel((-(-dim // threads), slices), (threads,), args)
    return [p.sum(axis=0) for p in partials]


def layer_norm(ks, x: Any, weight: Any, bias: Any, eps: float) -> tuple[Any, Any, Any]:
    """y = (x - mean) rstd w + b over the last axis, rstd = 1 / sqrt(var + eps) (biased var).

    Args:
        x: (..., D) float32;  weight, bias: (D,) float32 or None.
    Returns:
        (y, mean, rstd): y of x's shape, mean and rstd of shape (...), for backward.
    """
    op = "layer_norm"
    x, rows, dim = _norm_inputs(ks, x, op)
    weight = _affine_param(ks, weight, dim, 1.0, "weight", op)
    bias = _affine_param(ks, bias, dim, 0.0, "bias", op)
    y = ks.xp.empty_like(x)
    mean = ks.xp.empty(x.shape[:-1], dtype=ks.xp.float32)
    rstd = ks.xp.empty(x.shape[:-1], dtype=ks.xp.float32)
    if rows:
        kernel = ks.function("norm.cu", "layer_norm_forward")
        args = (x, weight, bias, y, mean, rstd, np.int32(dim), np.float32(eps))
        kernel((rows,), (_block_threads(dim),), args)
    return y, mean, rstd


def layer_norm_backward(
    ks,
    g: Any,
    x: Any,
    weight: Any,
    mean: Any,
    rstd: Any,
    need_weight: bool = True,
    need_bias: bool = True,
) -> tuple[Any, Any, Any]:
    """gx = rstd (g_hat - mean(g_hat) - x_hat mean(g_hat x_hat)), g_hat = g w, x_hat recomputed;
    gw = sum over rows of g x_hat, gb = sum over rows of g (a second kernel, then xp.sum).

    Returns:
        (gx, gw, gb); gw / gb are None when not needed (both come from one launch).
    """
    op = "layer_norm_backward"
    x, rows, dim = _norm_inputs(ks, x, op)
    g = _float32(ks, g, "g", op)
    _check_shape(g, x.shape, "g", op)
    weight = _affine_param(ks, weight, dim, 1.0, "weight", op)
    mean = _row_stats(ks, mean, x, "mean", op)
    rstd = _row_stats(ks, rstd, x, "rstd", op)
    gx = ks.xp.empty_like(x)
    gw, gb = (ks.xp.zeros((dim,), dtype=ks.xp.float32) for _ in range(2))  # sums over no rows
    if rows:
        kernel = ks.function("norm.cu", "layer_norm_backward")
        kernel((rows,), (_block_threads(dim),), (g, x, weight, mean, rstd, gx, np.int32(dim)))
        if need_weight or need_bias:
            gw, gb = _param_grads(ks, "layer_norm_param_grads", (g, x, mean, rstd), 2, rows, dim)
    return gx, (gw if need_weight else None), (gb if need_bias else None)


def rms_norm(ks, x: Any, weight: Any, eps: float) -> tuple[Any, Any]:
    """y = x rstd w over the last axis, rstd = 1 / sqrt(mean(x^2) + eps).

    Args:
        x: (..., D) float32;  weight: (D,) float32 or None.
    Returns:
        (y, rstd): y of x's shape, rstd of shape (...), for backward.
    """
    op = "rms_norm"
    x, rows, dim = _norm_inputs(ks, x, op)
    weight = _affine_param(ks, weight, dim, 1.0, "weight", op)
    y = ks.xp.empty_like(x)
    rstd = ks.xp.empty(x.shape[:-1], dtype=ks.xp.float32)
    if rows:
        kernel = ks.function("norm.cu", "rms_norm_forward")
        args = (x, weight, y, rstd, np.int32(dim), np.float32(eps))
        kernel((rows,), (_block_threads(dim),), args)
    return y, rstd


def rms_norm_backward(
    ks, g: Any, x: Any, weight: Any, rstd: Any, need_weight: bool = True
) -> tuple[Any, Any]:
    """gx = rstd (g_hat - x_hat mean(g_hat x_hat)), g_hat = g w, x_hat = x rstd;
    gw = sum over rows of g x_hat.

    Returns:
        (gx, gw); gw is None when not needed.
    """
    op = "rms_norm_backward"
    x, rows, dim = _norm_inputs(ks, x, op)
    g = _float32(ks, g, "g", op)
    _check_shape(g, x.shape, "g", op)
    weight = _affine_param(ks, weight, dim, 1.0, "weight", op)
    rstd = _row_stats(ks, rstd, x, "rstd", op)
    gx = ks.xp.empty_like(x)
    gw = ks.xp.zeros((dim,), dtype=ks.xp.float32)  # the sum over no rows
    if rows:
        kernel = ks.function("norm.cu", "rms_norm_backward")
        kernel((rows,), (_block_threads(dim),), (g, x, weight, rstd, gx, np.int32(dim)))
        if need_weight:
            (gw,) = _param_grads(ks, "rms_norm_weight_grad", (g, x, rstd), 1, rows, dim)
    return gx, (gw if need_weight else None)
