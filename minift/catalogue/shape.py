"""Catalogue entries for functional/shape.py: views, joins, splits, indexing and selection.

References are plain NumPy; the gradients of gathers are checked against finite differences
with repeated indices, so an overwrite instead of an accumulation fails here.
"""

import numpy as np

from minift import functional as F
from minift.catalogue import OpCase
from minift.catalogue.basic import normal, transposed

FUTURE = np.triu(np.ones((4, 4), bool), 1)  # causal mask: True above the diagonal


def with_ints(shape, ints, high):
    """A float input and an integer array of shape ``ints`` in [0, high)."""
    return lambda rng: [rng.standard_normal(shape), rng.integers(0, high, ints)]


def np_gather(x, axis, index):
    """torch.gather written out with explicit index grids (no take_along_axis)."""
    grid = list(np.indices(index.shape))
    grid[axis] = index
    return x[tuple(grid)]


def np_split(x, sizes, axis):
    return np.split(x, np.cumsum(sizes)[:-1], axis=axis)


def rejoin(pieces, axis, join):
    """Join split pieces again, each scaled differently, so that a gradient sent to the
    wrong piece shows."""
    return join([(i + 1.0) * p for i, p in enumerate(pieces)], axis=axis)


CASES = [
    OpCase("expand", lambda x: F.expand(x, (2, 3, 4)), lambda x: np.broadcast_to(x, (2, 3, 4)),
           normal((3, 1))),
    OpCase("expand (-1 keeps an axis)", lambda x: F.expand(x, (5, -1, 2)),
           lambda x: np.broadcast_to(x, (5, 3, 2)), transposed((3, 1))),
    OpCase("unsqueeze", lambda x: F.unsqueeze(x, 1), lambda x: x[:, None], normal((3, 4))),
    OpCase("unsqueeze -1", lambda x: F.unsqueeze(x, -1), lambda x: x[..., None],
           transposed((3, 4))),
    OpCase("squeeze all", F.squeeze, np.squeeze, normal((1, 3, 1, 2))),
    OpCase("squeeze axis", lambda x: F.squeeze(x, 2), lambda x: np.squeeze(x, 2),
           normal((1, 3, 1, 2))),
    OpCase("flatten", lambda x: F.flatten(x, 1), lambda x: x.reshape(2, -1), normal((2, 3, 4))),
    OpCase("flatten middle (transposed)", lambda x: F.flatten(x, 0, 1),
           lambda x: x.reshape(-1, x.shape[-1]),
           lambda rng: [rng.standard_normal((4, 3, 2)).transpose(1, 2, 0)]),
    OpCase("cat axis 0", lambda a, b, c: F.cat([a, b, c]),
           lambda a, b, c: np.concatenate([a, b, c]),
           normal((2, 3), (1, 3), (4, 3))),
    OpCase("cat axis -1 (transposed)", lambda a, b: F.cat([a, b], axis=-1),
           lambda a, b: np.concatenate([a, b], axis=-1),
           lambda rng: [rng.standard_normal((4, 3)).T, rng.standard_normal((3, 2))]),
    OpCase("concatenate alias", lambda a, b: F.concatenate((a, b), axis=1),
           lambda a, b: np.concatenate((a, b), axis=1), normal((2, 1, 3), (2, 2, 3))),
    OpCase("stack", lambda a, b: F.stack([a, b], axis=1), lambda a, b: np.stack([a, b], axis=1),
           normal((3, 4), (3, 4))),
    OpCase("stack axis -1", lambda a, b, c: F.stack([a, b, c], axis=-1),
           lambda a, b, c: np.stack([a, b, c], axis=-1), normal((2, 3), (2, 3), (2, 3))),
    OpCase("split qkv (int size)", lambda x: rejoin(F.split(x, 4, axis=-1), -1, F.cat),
           lambda x: rejoin(np_split(x, [4, 4, 4], -1), -1, np.concatenate), normal((2, 3, 12))),
    OpCase("split (sizes, transposed)", lambda x: rejoin(F.split(x, [1, 3, 2], axis=0), 0, F.cat),
           lambda x: rejoin(np_split(x, [1, 3, 2], 0), 0, np.concatenate), transposed((6, 4))),
    OpCase("split (uneven, one piece unused)",
           lambda x: rejoin(F.split(x, 2, axis=1)[1:], 1, F.cat),
           lambda x: rejoin(np_split(x, [2, 2, 1], 1)[1:], 1, np.concatenate), normal((3, 5))),
    OpCase("index basic slices", lambda x: F.index(x, (slice(None), 1, slice(0, 4, 2))),
           lambda x: x[:, 1, 0:4:2], normal((2, 3, 5))),
    OpCase("index None and Ellipsis", lambda x: F.index(x, (Ellipsis, None, slice(-2, None))),
           lambda x: x[..., None, -2:], transposed((3, 4))),
    OpCase("index negative step", lambda x: F.index(x, slice(None, None, -1)), lambda x: x[::-1],
           normal((4, 2))),
    OpCase("index int array rows (repeats)", lambda x, i: F.index(x, i), lambda x, i: x[i],
           with_ints((4, 3), (2, 5), 4)),
    OpCase("index negative ids", lambda x: F.index(x, [-1, 0, -1, 3]),
           lambda x: x[[-1, 0, -1, 3]], normal((4, 2))),
    OpCase("index mixed fancy (repeats)", lambda x, i: F.index(x, (slice(None), i, None)),
           lambda x, i: x[:, i, None], with_ints((2, 3, 2), (6,), 3)),
    OpCase("index two fancy arrays",
           lambda x: F.index(x, (np.array([0, 2, 0]), np.array([1, 1, 1]))),
           lambda x: x[[0, 2, 0], [1, 1, 1]], transposed((3, 4))),
    OpCase("index bool mask", lambda x, m: F.index(x, m), lambda x, m: x[m],
           lambda rng: [rng.standard_normal((3, 4)), rng.random((3, 4)) < 0.5]),
    OpCase("index bool rows + slice",
           lambda x: F.index(x, (np.array([True, False, True]), slice(1, 3))),
           lambda x: x[[0, 2], 1:3], normal((3, 4))),
    OpCase("gather axis 1 (repeats)", lambda x, i: F.gather(x, 1, i),
           lambda x, i: np_gather(x, 1, i), with_ints((3, 4), (3, 6), 4)),
    OpCase("gather axis 0 (smaller index)", lambda x, i: F.gather(x, 0, i),
           lambda x, i: np_gather(x, 0, i), with_ints((4, 3, 2), (5, 2, 2), 4)),
    OpCase("gather one per row (transposed)", lambda x, i: F.gather(x, -1, i),
           lambda x, i: np_gather(x, 1, i),
           lambda rng: [rng.standard_normal((5, 3)).T, rng.integers(0, 5, (3, 1))]),
    OpCase("where (broadcast)", F.where, np.where,
           lambda rng: [rng.random((3, 1)) < 0.5, rng.standard_normal((1, 4)),
                        rng.standard_normal((3, 4))]),
    OpCase("where (scalar b)", lambda c, a: F.where(c, a, 0.5), lambda c, a: np.where(c, a, 0.5),
           lambda rng: [rng.random((3, 4)) < 0.5, rng.standard_normal((4, 3)).T]),
    # a modest fill value: a large one (-1e4) adds cancellation noise to finite differences
    OpCase("masked_fill (broadcast mask)", lambda x, m: F.masked_fill(x, m, -5.0),
           lambda x, m: np.where(m, -5.0, x),
           lambda rng: [rng.standard_normal((2, 3, 4)), rng.random((3, 1)) < 0.5]),
    OpCase("masked_fill causal -inf, softmax",
           lambda x: F.softmax(F.masked_fill(x, FUTURE, -np.inf)),
           lambda x: _masked_softmax(x, FUTURE), normal((2, 4, 4))),
    OpCase("embedding (repeated ids)", F.embedding, lambda i, w: w[i],
           lambda rng: [np.array([[0, 3, 3, 1], [3, 0, 5, 3]]), rng.standard_normal((6, 3))]),
    OpCase("embedding (1-d ids)", F.embedding, lambda i, w: w[i],
           lambda rng: [np.array([2, 2, 2]), rng.standard_normal((5, 4)).T.copy().T]),
]


def _masked_softmax(x, mask):
    z = np.where(mask, -np.inf, x)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)
