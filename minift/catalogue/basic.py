"""Catalogue entries for functional/basic.py and functional/shape.py's views."""

import numpy as np

from minift import functional as F
from minift.catalogue import OpCase


def normal(*shape):
    return lambda rng: [rng.standard_normal(s) for s in shape]


def positive(*shape):
    return lambda rng: [rng.uniform(0.5, 2.0, s) for s in shape]


def transposed(shape):
    """A non-contiguous input: odd strides must not change any result."""
    return lambda rng: [rng.standard_normal(shape[::-1]).T]


CASES = [
    OpCase("add (broadcast)", F.add, np.add, normal((3, 1, 4), (5, 4))),
    OpCase("sub (broadcast)", F.sub, np.subtract, normal((2, 3), (3,))),
    OpCase("mul (broadcast)", F.mul, np.multiply, normal((4, 1), (1, 5))),
    OpCase("div", F.div, np.divide, lambda rng: [rng.standard_normal((3, 4)), rng.uniform(0.5, 2, (4,))]),
    OpCase("neg", F.neg, np.negative, normal((3, 4))),
    OpCase("pow (scalar exponent)", lambda x: F.pow(x, 3.0), lambda x: x**3.0, normal((3, 4))),
    OpCase("pow (tensor exponent)", F.pow, np.power, positive((3, 4), (3, 4))),
    OpCase("exp", F.exp, np.exp, normal((3, 4))),
    OpCase("log", F.log, np.log, positive((3, 4))),
    OpCase("sqrt", F.sqrt, np.sqrt, positive((3, 4))),
    OpCase("tanh", F.tanh, np.tanh, normal((3, 4))),
    OpCase("sigmoid", F.sigmoid, lambda x: 1 / (1 + np.exp(-x)),
           lambda rng: [rng.standard_normal((3, 4)) * 10]),
    OpCase("abs", F.abs, np.abs, normal((3, 4))),
    OpCase("matmul 2d", F.matmul, np.matmul, normal((3, 4), (4, 5))),
    OpCase("matmul batched", F.matmul, np.matmul, normal((2, 3, 4), (2, 4, 5))),
    OpCase("matmul broadcast", F.matmul, np.matmul, normal((2, 1, 3, 4), (3, 4, 2))),
    OpCase("matmul shared weight", F.matmul, np.matmul, normal((2, 3, 4), (4, 5))),
    OpCase("matmul vector", F.matmul, np.matmul, normal((4,), (2, 4, 3))),
    OpCase("matmul transposed input", F.matmul, np.matmul,
           lambda rng: [rng.standard_normal((4, 3)).T, rng.standard_normal((4, 2))]),
    OpCase("linear", F.linear, lambda x, w, b: x @ w.T + b, normal((2, 3, 4), (5, 4), (5,))),
    OpCase("linear (no bias)", F.linear, lambda x, w: x @ w.T, normal((3, 4), (5, 4))),
    OpCase("sum all", F.sum, np.sum, transposed((3, 4))),
    OpCase("sum axis keepdims", lambda x: F.sum(x, axis=(0, 2), keepdims=True),
           lambda x: x.sum(axis=(0, 2), keepdims=True), normal((2, 3, 4))),
    OpCase("mean axis", lambda x: F.mean(x, axis=-1), lambda x: x.mean(axis=-1), normal((2, 3, 4))),
    OpCase("max axis", lambda x: F.max(x, axis=1), lambda x: x.max(axis=1), normal((3, 5, 2))),
    OpCase("max all keepdims", lambda x: F.max(x, keepdims=True), lambda x: x.max(keepdims=True),
           normal((3, 4))),
    OpCase("var (unbiased)", lambda x: F.var(x, axis=0), lambda x: x.var(axis=0, ddof=1), normal((5, 3))),
    OpCase("var (biased, keepdims)", lambda x: F.var(x, axis=-1, keepdims=True, correction=0),
           lambda x: x.var(axis=-1, keepdims=True), normal((2, 6))),
    OpCase("reshape", lambda x: F.reshape(x, (4, -1)), lambda x: x.reshape(4, -1), transposed((2, 6))),
    OpCase("permute", lambda x: F.permute(x, (2, 0, 1)), lambda x: x.transpose(2, 0, 1), normal((2, 3, 4))),
    OpCase("transpose", lambda x: F.transpose(x, -1, -2), lambda x: x.swapaxes(-1, -2), normal((2, 3, 4))),
]
