"""Catalogue entries for functional/activation.py.

The exact-GELU reference uses the standard library's ``math.erfc`` elementwise (slow, but
independent of minift's rational approximation). Dropout's entry fixes its generator inside
the op, so every call draws the same mask and the reference can redraw it with NumPy.
"""

import math

import numpy as np

from minift import functional as F
from minift.catalogue import OpCase
from minift.catalogue.basic import normal, transposed

_erfc = np.vectorize(math.erfc, otypes=[float])


def np_gelu(x):
    return 0.5 * x * _erfc(-x / math.sqrt(2.0))


def np_gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def np_silu(x):
    return x / (1.0 + np.exp(-x))


def np_softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_log_softmax(x, axis=-1):
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def np_dropout(x, p, seed):
    keep = np.random.default_rng(seed).random(size=x.shape, dtype=np.float32) < 1.0 - p
    return x * keep / (1.0 - p)


def away_from_zero(shape):
    """Normal inputs nudged off the kink at 0, where ReLU has no derivative."""
    def make(rng):
        x = rng.standard_normal(shape)
        return [x + np.where(x >= 0, 0.1, -0.1)]

    return make


def wide(shape, scale=4.0):
    """Inputs over several units, reaching all three pieces of the float64 erf."""
    return lambda rng: [rng.standard_normal(shape) * scale]


CASES = [
    OpCase("relu", F.relu, lambda x: np.maximum(x, 0), away_from_zero((3, 4))),
    OpCase("gelu exact", F.gelu, np_gelu, wide((4, 5))),
    OpCase("gelu exact (transposed)", F.gelu, np_gelu, transposed((3, 4))),
    OpCase("gelu tanh", lambda x: F.gelu(x, approximate="tanh"), np_gelu_tanh, wide((3, 4), 2.0)),
    OpCase("silu", F.silu, np_silu, wide((3, 4))),
    OpCase("softmax last axis", F.softmax, np_softmax, normal((2, 3, 5))),
    OpCase("softmax axis 0 (transposed)", lambda x: F.softmax(x, axis=0),
           lambda x: np_softmax(x, axis=0), transposed((3, 4))),
    OpCase("log_softmax", F.log_softmax, np_log_softmax, normal((3, 6))),
    OpCase("log_softmax axis 1 (large logits)", lambda x: F.log_softmax(x, axis=1),
           lambda x: np_log_softmax(x, axis=1), lambda rng: [rng.standard_normal((2, 4, 3)) * 50]),
    OpCase("dropout p=0.3 (fixed generator)",
           lambda x: F.dropout(x, 0.3, generator=x.backend.generator(0)),
           lambda x: np_dropout(x, 0.3, 0), normal((4, 5)), tags=("numpy-rng",)),
]
