"""Catalogue entries for functional/norm.py: layer norm, RMS norm, batch norm (train, eval).

The references normalise with NumPy's own mean/var/sqrt, written out as the textbook formula.
"""

import numpy as np

import minift as mf
from minift import functional as F
from minift.catalogue import OpCase
from minift.catalogue.basic import normal


def ref_layer_norm(x, weight=None, bias=None, n_axes=1, eps=1e-5):
    axes = tuple(range(x.ndim - n_axes, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)  # biased (ddof=0), as PyTorch normalises
    y = (x - mean) / np.sqrt(var + eps)
    if weight is not None:
        y = y * weight
    return y + bias if bias is not None else y


def ref_rms_norm(x, weight=None, eps=1e-6):
    y = x / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + eps)
    return y * weight if weight is not None else y


def ref_batch_norm(x, mean, var, weight, bias, eps=1e-5):
    """Per channel c (axis 1): (x - mean[c]) / sqrt(var[c] + eps) * weight[c] + bias[c]."""
    shape = [1, -1] + [1] * (x.ndim - 2)
    y = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)
    return y * weight.reshape(shape) + bias.reshape(shape)


def ref_batch_norm_train(x, weight, bias, eps=1e-5):
    axes = (0,) + tuple(range(2, x.ndim))
    return ref_batch_norm(x, x.mean(axis=axes), x.var(axis=axes), weight, bias, eps)


# fixed running statistics for the evaluation-mode entry (3 channels)
RUNNING_MEAN = np.array([0.5, -1.0, 0.25])
RUNNING_VAR = np.array([2.0, 0.5, 1.5])


def batch_norm_eval(x, weight, bias):
    def buffer(values):
        return mf.tensor(values, backend=x.backend, dtype=x.dtype)

    return F.batch_norm(x, buffer(RUNNING_MEAN), buffer(RUNNING_VAR), weight, bias, training=False)


def wide_rows(rng):
    """Rows with a large offset and scale: the fused backward must stay accurate there."""
    return [rng.standard_normal((3, 6)) * 5 + 20, rng.standard_normal(6), rng.standard_normal(6)]


CASES = [
    OpCase(
        "layer_norm",
        lambda x, w, b: F.layer_norm(x, 5, w, b),
        ref_layer_norm,
        normal((2, 3, 5), (5,), (5,)),
    ),
    OpCase(
        "layer_norm (two axes, transposed input)",
        lambda x, w, b: F.layer_norm(x, (3, 2), w, b),
        lambda x, w, b: ref_layer_norm(x, w, b, n_axes=2),
        lambda rng: [
            rng.standard_normal((2, 3, 4)).T,
            rng.standard_normal((3, 2)),
            rng.standard_normal((3, 2)),
        ],
    ),
    OpCase(
        "layer_norm (no affine)", lambda x: F.layer_norm(x, [4]), ref_layer_norm, normal((3, 4))
    ),
    OpCase(
        "layer_norm (offset rows, eps)",
        lambda x, w, b: F.layer_norm(x, 6, w, b, eps=1e-3),
        lambda x, w, b: ref_layer_norm(x, w, b, eps=1e-3),
        wide_rows,
    ),
    OpCase("rms_norm", lambda x, w: F.rms_norm(x, 5, w), ref_rms_norm, normal((2, 3, 5), (5,))),
    OpCase(
        "rms_norm (no weight, transposed)",
        lambda x: F.rms_norm(x, 3, eps=1e-5),
        lambda x: ref_rms_norm(x, eps=1e-5),
        lambda rng: [rng.standard_normal((3, 4)).T],
    ),
    OpCase(
        "batch_norm train (N, C, H, W)",
        lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
        ref_batch_norm_train,
        normal((2, 3, 2, 3), (3,), (3,)),
    ),
    OpCase(
        "batch_norm train (N, C), transposed",
        lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
        ref_batch_norm_train,
        lambda rng: [rng.standard_normal((3, 5)).T, rng.standard_normal(3), rng.standard_normal(3)],
    ),
    OpCase(
        "batch_norm eval (running stats)",
        batch_norm_eval,
        lambda x, w, b: ref_batch_norm(x, RUNNING_MEAN, RUNNING_VAR, w, b),
        normal((2, 3, 2, 2), (3,), (3,)),
    ),
]
