"""Catalogue entries for functional/conv.py: conv2d, max_pool2d, avg_pool2d.

The references loop over output pixels and read each window directly from the padded image,
the definition itself, with no im2col and no shared helper with minift's ops.
"""

import numpy as np

from minift import functional as F
from minift.catalogue import OpCase


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _padded(x, padding, value=0.0):
    ph, pw = _pair(padding)
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)


def _over_windows(fn, padded, kernel, stride, dilation):
    """Apply fn to each window (N, C, kh, kw) of the padded image; fn returns (N, K).

    Returns (N, K, Ho, Wo).
    """
    (kh, kw), (sh, sw), (dh, dw) = _pair(kernel), _pair(stride), _pair(dilation)
    ho = (padded.shape[2] - dh * (kh - 1) - 1) // sh + 1
    wo = (padded.shape[3] - dw * (kw - 1) - 1) // sw + 1
    rows = [slice(a * sh, a * sh + dh * (kh - 1) + 1, dh) for a in range(ho)]
    cols = [slice(b * sw, b * sw + dw * (kw - 1) + 1, dw) for b in range(wo)]
    pixels = np.array([[fn(padded[:, :, r, c]) for c in cols] for r in rows])  # (Ho, Wo, N, K)
    return pixels.transpose(2, 3, 0, 1)


def conv2d_reference(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """y[n, o, a, b] = sum over the window of o's channel group times filter o, plus bias."""
    out_per_group, in_per_group = w.shape[0] // groups, w.shape[1]

    def filters(window):
        per_out = []
        for o in range(w.shape[0]):
            first = o // out_per_group * in_per_group  # o's group starts at this channel
            per_out.append((window[:, first : first + in_per_group] * w[o]).sum(axis=(1, 2, 3)))
        return np.stack(per_out, axis=1)

    y = _over_windows(filters, _padded(x, padding), w.shape[2:], stride, dilation)
    return y if b is None else y + b[:, None, None]


def pool_reference(x, kernel, stride=None, padding=0, dilation=1, mode="max"):
    """Max over each window with -inf padding, or the mean with zero padding counted."""
    stride = kernel if stride is None else stride
    padded = _padded(x, padding, -np.inf if mode == "max" else 0.0)
    reduce = (lambda v: v.max(axis=(2, 3))) if mode == "max" else (lambda v: v.mean(axis=(2, 3)))
    return _over_windows(reduce, padded, kernel, stride, dilation)


def normal(*shapes):
    return lambda rng: [rng.standard_normal(s) for s in shapes]


def conv_case(name, x_shape, w_shape, bias=True, **params):
    """An OpCase for conv2d with the given shapes and keyword parameters."""
    shapes = (x_shape, w_shape, (w_shape[0],)) if bias else (x_shape, w_shape)
    return OpCase(
        f"conv2d {name}",
        lambda *xs: F.conv2d(*xs, **params),
        lambda *xs: conv2d_reference(*xs, **params),
        normal(*shapes),
    )


def pool_case(mode, name, x_shape, *args, **params):
    fn = F.max_pool2d if mode == "max" else F.avg_pool2d
    return OpCase(
        f"{mode}_pool2d {name}",
        lambda x: fn(x, *args, **params),
        lambda x: pool_reference(x, *args, mode=mode, **params),
        normal(x_shape),
    )


def _transposed_image(rng):
    """An NCHW image stored as WHCN: every stride is odd, and no copy is made by padding=0."""
    return [rng.standard_normal((6, 5, 3, 2)).T, rng.standard_normal((4, 3, 2, 2))]


CASES = [
    conv_case("plain", (2, 3, 5, 5), (4, 3, 3, 3)),
    conv_case("stride 2", (2, 3, 7, 6), (4, 3, 3, 3), stride=2),
    conv_case("padding 1", (2, 2, 4, 4), (3, 2, 3, 3), padding=1),
    conv_case("dilation 2", (1, 2, 7, 7), (3, 2, 3, 3), dilation=2),
    conv_case("groups 2", (2, 4, 5, 5), (6, 2, 3, 3), groups=2),
    conv_case("depthwise", (2, 3, 5, 5), (3, 1, 3, 3), padding=1, groups=3),
    conv_case("depthwise multiplier 2", (1, 2, 4, 4), (4, 1, 2, 2), groups=2),
    conv_case("no bias", (2, 3, 4, 4), (2, 3, 2, 2), bias=False),
    conv_case("rectangular kernel", (2, 2, 5, 6), (3, 2, 2, 3), stride=(2, 1), padding=(1, 0)),
    conv_case(
        "all pairs",
        (1, 4, 7, 8),
        (4, 2, 3, 2),
        stride=(1, 2),
        padding=(2, 1),
        dilation=(2, 1),
        groups=2,
    ),
    conv_case("1x1", (2, 5, 3, 3), (4, 5, 1, 1)),
    OpCase("conv2d non-contiguous input", F.conv2d, conv2d_reference, _transposed_image),
    pool_case("max", "2x2", (2, 3, 4, 6), 2),
    pool_case("max", "3x3 stride 1 (overlap)", (2, 2, 5, 5), 3, stride=1),
    pool_case("max", "3x3 stride 2 padding 1", (2, 2, 6, 7), 3, stride=2, padding=1),
    pool_case(
        "max",
        "rectangular, dilation 2",
        (1, 2, 7, 7),
        (2, 3),
        stride=(2, 1),
        padding=(1, 0),
        dilation=2,
    ),
    pool_case("avg", "2x2", (2, 3, 4, 6), 2),
    pool_case("avg", "3x3 stride 1 (overlap)", (2, 2, 5, 5), 3, stride=1),
    pool_case("avg", "3x3 stride 2 padding 1", (2, 2, 6, 7), 3, stride=2, padding=1),
    pool_case("avg", "rectangular padding", (1, 2, 5, 6), (2, 3), stride=(1, 2), padding=(1, 1)),
    OpCase(
        "max_pool2d non-contiguous input",
        lambda x: F.max_pool2d(x, 2, 1),
        lambda x: pool_reference(x, 2, 1),
        lambda rng: [rng.standard_normal((5, 4, 3, 2)).T],
    ),
]
