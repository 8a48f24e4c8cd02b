"""Convolution and pooling on NCHW images, vectorised through im2col.

A 2-D convolution is a matmul once every receptive field is laid out as a column (im2col):
the padded image is viewed (no copy) as patches (N, C, kh, kw, Ho, Wo) by striding, copied
once to columns (N, G, C/G * kh * kw, Ho * Wo), and each group's filters multiply them:

    y[n, g] = W[g] @ cols[n, g],   dW[g] = sum_n dy[n, g] @ cols[n, g]^T,   dcols = W[g]^T dy

dx is col2im(dcols): every kernel tap (i, j) adds its slice of columns back onto the strided
pixels it read (kh * kw vectorised adds; overlapping windows accumulate). Pooling reads the
same strided taps: max keeps a running maximum, average a running sum.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import repeat
from numbers import Integral
from typing import Any, NamedTuple

from minift.autograd import Function
from minift.tensor import Tensor

IntPair = int | tuple[int, int]


def _pair(value: Any, name: str, op: str, minimum: int) -> tuple[int, int]:
    """An int or a pair of ints, each at least ``minimum``, as a pair."""
    items = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    valid = all(isinstance(v, Integral) and not isinstance(v, bool) and v >= minimum for v in items)
    if len(items) != 2 or not valid:
        raise ValueError(
            f"{op}: {name} must be an int or a pair of ints >= {minimum}, got {value!r}"
        )
    return int(items[0]), int(items[1])


class _Window(NamedTuple):
    """Where a sliding window reads: output pixel (a, b), tap (i, j) reads padded pixel
    (a * stride_h + i * dilation_h, b * stride_w + j * dilation_w)."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    out: tuple[int, int]  # (Ho, Wo)

    def pad(self, xp, x, value: float = 0.0):
        (ph, pw) = self.padding
        if ph == pw == 0:
            return x
        return xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)

    def tap(self, i: int, j: int) -> tuple:
        """Index of the padded pixels that tap (i, j) reads, one per output pixel."""
        (sh, sw), (dh, dw), (ho, wo) = self.stride, self.dilation, self.out
        rows = slice(i * dh, i * dh + sh * (ho - 1) + 1, sh)
        cols = slice(j * dw, j * dw + sw * (wo - 1) + 1, sw)
        return (slice(None), slice(None), rows, cols)

    def taps(self) -> list[tuple]:
        """``tap(i, j)`` for every tap, row-major (the order that decides max-pool ties)."""
        return [self.tap(i, j) for i in range(self.kernel[0]) for j in range(self.kernel[1])]

    def patches(self, xp, padded):
        """A strided view (N, C, kh, kw, Ho, Wo) of the padded image: no copy."""
        sn, sc, sy, sx = padded.strides
        (sh, sw), (dh, dw) = self.stride, self.dilation
        return xp.lib.stride_tricks.as_strided(
            padded,
            shape=(*padded.shape[:2], *self.kernel, *self.out),
            strides=(sn, sc, sy * dh, sx * dw, sy * sh, sx * sw),
        )

    def col2im(self, xp, tap_grads: Iterable, x_shape: tuple, dtype):
        """dx: add each tap's gradient (N, C, Ho, Wo), given in ``taps()`` order, onto the
        pixels that tap read (overlaps accumulate), then drop the padding."""
        (ph, pw), (n, c, h, w) = self.padding, x_shape
        dx = xp.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=dtype)
        for tap, grad in zip(self.taps(), tap_grads):
            dx[tap] += grad
        return dx[:, :, ph : ph + h, pw : pw + w]


def _window(op: str, x_shape: tuple, kernel, stride, padding, dilation) -> _Window:
    """Check the geometry and compute the output size (floor mode, as PyTorch)."""
    kernel = _pair(kernel, "kernel_size", op, 1)
    stride = _pair(kernel if stride is None else stride, "stride", op, 1)
    padding = _pair(padding, "padding", op, 0)
    dilation = _pair(dilation, "dilation", op, 1)
    out = tuple(
        (size + 2 * p - d * (k - 1) - 1) // s + 1
        for size, k, s, p, d in zip(x_shape[2:], kernel, stride, padding, dilation)
    )
    if min(out) < 1:
        raise ValueError(
            f"{op}: output size {out} is empty: input {tuple(x_shape)} with kernel {kernel}, "
            f"stride {stride}, padding {padding}, dilation {dilation}"
        )
    return _Window(kernel, stride, padding, dilation, out)


# --- convolution ------------------------------------------------------------------------------
class Conv2d(Function):
    """y[n, o, a, b] = bias[o] + sum_{c, i, j} W[o, c, i, j] x_pad[n, gC' + c, as + id, bs + jd]
    where g is o's group and C' = C / groups; per group that is y_g = W_g @ cols_g.

    dW_g = sum_n dy_g cols_g^T,  db = sum of dy over (N, Ho, Wo),  dx = col2im(W_g^T dy_g).
    Saved: the columns (only for dW) and the grouped weight (only for dx).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, window, groups):
        n, (o, cg, kh, kw) = x.shape[0], weight.shape
        xp, (ho, wo) = ctx.backend.xp, window.out
        padded = window.pad(xp, x)
        # (N, C, kh, kw, Ho, Wo) -> (N, G, C/G * kh * kw, Ho * Wo): the one im2col copy
        cols = window.patches(xp, padded).reshape(n, groups, cg * kh * kw, ho * wo)
        w = weight.reshape(groups, o // groups, cg * kh * kw)  # (G, O/G, K)
        y = ctx.backend.matmul(w, cols).reshape(n, o, ho, wo)  # (N, G, O/G, P) is NCHW
        if bias is not None:
            y += bias.reshape(o, 1, 1)
        need_x, need_w = ctx.needs_input_grad[:2]
        ctx.save_for_backward(cols if need_w else None, w if need_x else None)
        ctx.window, ctx.groups, ctx.x_shape, ctx.w_shape = window, groups, x.shape, weight.shape
        return y

    @staticmethod
    def backward(ctx, g):
        cols, w = ctx.saved
        need_x, need_w, need_b = ctx.needs_input_grad
        n, o, ho, wo = g.shape
        g_cols = g.reshape(n, ctx.groups, o // ctx.groups, ho * wo)  # (N, G, O/G, P)
        gx = gw = gb = None
        if need_w:
            gw = ctx.backend.matmul(g_cols, cols.swapaxes(-1, -2)).sum(axis=0).reshape(ctx.w_shape)
        if need_b:
            gb = g.sum(axis=(0, 2, 3))
        if need_x:
            xp, (kh, kw) = ctx.backend.xp, ctx.window.kernel
            d_cols = ctx.backend.matmul(w.swapaxes(-1, -2), g_cols)  # (N, G, K, P)
            d_cols = d_cols.reshape(n, ctx.x_shape[1], kh, kw, ho, wo)
            taps = (d_cols[:, :, i, j] for i in range(kh) for j in range(kw))
            gx = ctx.window.col2im(xp, taps, ctx.x_shape, d_cols.dtype)
        return gx, gw, gb


def conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    groups: int = 1,
) -> Tensor:
    """2-D cross-correlation over NCHW images, as ``torch.nn.functional.conv2d``.

    Args:
        x: (N, C, H, W).
        weight: (O, C / groups, kh, kw); input channel group g meets filters g*O/G ... (g+1)*O/G.
        bias: (O,) or None.
        stride, padding, dilation: an int or an (h, w) pair; padding adds zeros on both sides.
        groups: split C and O into this many independent convolutions (groups=C: depthwise).

    Returns:
        (N, O, Ho, Wo) with Ho = floor((H + 2 pad - dilation (kh - 1) - 1) / stride) + 1.
    """
    _check_conv(x.shape, weight.shape, None if bias is None else bias.shape, groups)
    window = _window("conv2d", x.shape, weight.shape[2:], stride, padding, dilation)
    return Conv2d.apply(x, weight, bias, window=window, groups=groups)


def _check_conv(x_shape: tuple, w_shape: tuple, b_shape: tuple | None, groups: Any) -> None:
    if len(x_shape) != 4:
        raise ValueError(f"conv2d: input must be 4-D (N, C, H, W), got shape {tuple(x_shape)}")
    if len(w_shape) != 4:
        raise ValueError(
            f"conv2d: weight must be 4-D (out_channels, in_channels / groups, kh, kw), "
            f"got shape {tuple(w_shape)}"
        )
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"conv2d: groups must be a positive int, got {groups!r}")
    c, (o, cg) = x_shape[1], w_shape[:2]
    if c % groups:
        raise ValueError(
            f"conv2d: input channels {c} of input {tuple(x_shape)} are not divisible by "
            f"groups={groups}"
        )
    if cg != c // groups:
        raise ValueError(
            f"conv2d: weight {tuple(w_shape)} expects {cg} input channels per group, but input "
            f"{tuple(x_shape)} with groups={groups} has {c // groups}"
        )
    if o % groups:
        raise ValueError(
            f"conv2d: out channels {o} of weight {tuple(w_shape)} are not divisible by "
            f"groups={groups}"
        )
    if b_shape is not None and tuple(b_shape) != (o,):
        raise ValueError(
            f"conv2d: bias must have shape ({o},) for weight {tuple(w_shape)}, got {tuple(b_shape)}"
        )


# --- pooling ----------------------------------------------------------------------------------
class MaxPool2d(Function):
    """y[n, c, a, b] = max over the window's taps of x_pad (padding is -inf).

    dy goes to the first tap (row-major in the window) that equals the maximum, as PyTorch;
    a NaN makes its window's maximum NaN and takes the gradient. Saved: x_pad and y, from
    which backward finds the winning taps (cheaper than storing an argmax array).
    """

    @staticmethod
    def forward(ctx, x, window):
        xp = ctx.backend.xp
        padded = window.pad(xp, x, float("-inf"))
        first, *rest = window.taps()
        y = padded[first].copy()
        for tap in rest:
            xp.maximum(y, padded[tap], out=y)
        ctx.save_for_backward(padded, y)
        ctx.window, ctx.x_shape = window, x.shape
        return y

    @staticmethod
    def backward(ctx, g):
        padded, y = ctx.saved
        xp = ctx.backend.xp
        return ctx.window.col2im(
            xp, _winner_grads(xp, padded, y, g, ctx.window), ctx.x_shape, g.dtype
        )


def _winner_grads(xp, padded, y, g, window: _Window):
    """Per tap, dy where this tap is the first in its window to hold the maximum, else 0.

    A window whose maximum is NaN sends dy to its last NaN, as PyTorch's CPU kernel does.
    """
    taps = window.taps()
    last_nan = None
    if bool(xp.isnan(y).any()):
        last_nan = xp.full(y.shape, -1)
        for t, tap in enumerate(taps):
            last_nan[xp.isnan(padded[tap])] = t
    unclaimed = xp.ones(y.shape, dtype=bool)
    for t, tap in enumerate(taps):
        wins = padded[tap] == y
        wins &= unclaimed
        unclaimed ^= wins  # wins is a subset of unclaimed: this removes it
        if last_nan is not None:
            wins |= last_nan == t
        yield g * wins


class AvgPool2d(Function):
    """y = (1 / (kh kw)) * sum over the window's taps of x_pad (zeros in the padding count,
    PyTorch's count_include_pad=True);  every tap receives dy / (kh kw)."""

    @staticmethod
    def forward(ctx, x, window):
        padded = window.pad(ctx.backend.xp, x)
        first, *rest = window.taps()
        y = padded[first].copy()
        for tap in rest:
            y += padded[tap]
        y *= 1 / (window.kernel[0] * window.kernel[1])
        ctx.window, ctx.x_shape = window, x.shape
        return y

    @staticmethod
    def backward(ctx, g):
        kh, kw = ctx.window.kernel
        share = g * (1 / (kh * kw))
        return ctx.window.col2im(ctx.backend.xp, repeat(share, kh * kw), ctx.x_shape, g.dtype)


def _pool_window(op: str, x: Tensor, kernel_size, stride, padding, dilation=1) -> _Window:
    if x.ndim != 4:
        raise ValueError(f"{op}: input must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    window = _window(op, x.shape, kernel_size, stride, padding, dilation)
    if any(2 * p > k for p, k in zip(window.padding, window.kernel)):
        raise ValueError(
            f"{op}: padding {window.padding} must be at most half the kernel size {window.kernel}"
        )
    return window


def max_pool2d(
    x: Tensor,
    kernel_size: IntPair,
    stride: IntPair | None = None,
    padding: IntPair = 0,
    dilation: IntPair = 1,
) -> Tensor:
    """Maximum over each (dilated) window of an NCHW image, as ``torch.nn.functional.max_pool2d``.

    Args:
        x: (N, C, H, W).
        kernel_size, stride (default: kernel_size), padding (-inf, at most half the kernel),
        dilation: an int or an (h, w) pair.

    Returns:
        (N, C, Ho, Wo), Ho = floor((H + 2 pad - dilation (kh - 1) - 1) / stride) + 1.
    """
    window = _pool_window("max_pool2d", x, kernel_size, stride, padding, dilation)
    return MaxPool2d.apply(x, window=window)


def avg_pool2d(
    x: Tensor, kernel_size: IntPair, stride: IntPair | None = None, padding: IntPair = 0
) -> Tensor:
    """Mean over each window of an NCHW image, as ``torch.nn.functional.avg_pool2d``
    (count_include_pad=True: the divisor is always kh * kw).

    Args:
        x: (N, C, H, W).
        kernel_size, stride (default: kernel_size), padding (zeros, at most half the kernel):
            an int or an (h, w) pair.

    Returns:
        (N, C, Ho, Wo), Ho = floor((H + 2 pad - kh) / stride) + 1.
    """
    window = _pool_window("avg_pool2d", x, kernel_size, stride, padding)
    return AvgPool2d.apply(x, window=window)
