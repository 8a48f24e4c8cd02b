"""Catalogue entries for functional/loss.py: cross-entropy, MSE, BCE with logits.

The cross-entropy reference builds the smoothed target distribution q = (1 - eps) onehot +
eps / C explicitly and takes -sum(q log p), a different route from the fused op's algebra.
"""

import numpy as np

from minift import functional as F
from minift.catalogue import OpCase
from minift.catalogue.basic import normal


def ref_cross_entropy(z, t, ignore_index=-100, eps=0.0, reduction="mean"):
    classes = z.shape[-1]
    log_p = z - z.max(axis=-1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(axis=-1, keepdims=True))
    keep = t != ignore_index
    onehot = np.eye(classes)[np.where(keep, t, 0)]
    q = (1 - eps) * onehot + eps / classes
    loss = np.where(keep, -(q * log_p).sum(axis=-1), 0.0)
    if reduction == "none":
        return loss
    return loss.sum() / keep.sum() if reduction == "mean" else loss.sum()


def ref_mse(a, b, reduction="mean"):
    return {"mean": np.mean, "sum": np.sum, "none": lambda e: e}[reduction]((a - b) ** 2)


def ref_bce(x, y, pos_weight=None, reduction="mean"):
    """-[pw y log sigmoid(x) + (1 - y) log(1 - sigmoid(x))], with log sigmoid via logaddexp."""
    pw = 1.0 if pos_weight is None else pos_weight
    log_sig, log_one_minus_sig = -np.logaddexp(0, -x), -np.logaddexp(0, x)
    loss = -(pw * y * log_sig + (1 - y) * log_one_minus_sig)
    return {"mean": np.mean, "sum": np.sum, "none": lambda e: e}[reduction](loss)


def logits_targets(shape, classes, ignore_every=0, ignore_index=-100, scale=1.0):
    """Logits (*shape, C) and int targets (*shape); every ``ignore_every``-th one ignored."""

    def make(rng):
        t = rng.integers(0, classes, shape)
        if ignore_every:
            t.reshape(-1)[::ignore_every] = ignore_index
        return [rng.standard_normal((*shape, classes)) * scale, t]

    return make


def probabilities(*shapes, scale=1.0):
    """Logits and targets in [0, 1] (soft labels: the target gets a gradient too)."""
    return lambda rng: [
        rng.standard_normal(shapes[0]) * scale,
        rng.uniform(0, 1, shapes[0]),
        *[rng.uniform(0.5, 3.0, s) for s in shapes[1:]],
    ]


CASES = [
    OpCase("cross_entropy", F.cross_entropy, ref_cross_entropy, logits_targets((4,), 5)),
    OpCase(
        "cross_entropy (B, T, C), ignore_index",
        F.cross_entropy,
        ref_cross_entropy,
        logits_targets((2, 3), 5, ignore_every=3),
    ),
    OpCase(
        "cross_entropy label smoothing + ignore_index",
        lambda z, t: F.cross_entropy(z, t, label_smoothing=0.1),
        lambda z, t: ref_cross_entropy(z, t, eps=0.1),
        logits_targets((2, 4), 6, ignore_every=3),
    ),
    OpCase(
        "cross_entropy sum, ignore_index=0",
        lambda z, t: F.cross_entropy(z, t, ignore_index=0, reduction="sum"),
        lambda z, t: ref_cross_entropy(z, t, ignore_index=0, reduction="sum"),
        logits_targets((6,), 4),
    ),
    OpCase(
        "cross_entropy none, smoothing, large logits",
        lambda z, t: F.cross_entropy(z, t, label_smoothing=0.2, reduction="none"),
        lambda z, t: ref_cross_entropy(z, t, eps=0.2, reduction="none"),
        logits_targets((2, 3), 4, ignore_every=4, scale=30.0),
    ),
    OpCase(
        "cross_entropy transposed logits",
        F.cross_entropy,
        ref_cross_entropy,
        lambda rng: [rng.standard_normal((5, 3)).T, rng.integers(0, 5, 3)],
    ),
    OpCase("mse_loss", F.mse_loss, ref_mse, normal((3, 4), (3, 4))),
    OpCase(
        "mse_loss sum",
        lambda a, b: F.mse_loss(a, b, reduction="sum"),
        lambda a, b: ref_mse(a, b, "sum"),
        normal((2, 3), (2, 3)),
    ),
    OpCase(
        "mse_loss none, transposed",
        lambda a, b: F.mse_loss(a, b, reduction="none"),
        lambda a, b: ref_mse(a, b, "none"),
        lambda rng: [rng.standard_normal((4, 3)).T, rng.standard_normal((3, 4))],
    ),
    OpCase("bce_with_logits", F.binary_cross_entropy_with_logits, ref_bce, probabilities((3, 4))),
    OpCase(
        "bce_with_logits pos_weight",
        F.binary_cross_entropy_with_logits,
        ref_bce,
        probabilities((3, 4), (4,)),
    ),
    OpCase(
        "bce_with_logits pos_weight, none, large logits",
        lambda x, y, pw: F.binary_cross_entropy_with_logits(x, y, pw, reduction="none"),
        lambda x, y, pw: ref_bce(x, y, pw, "none"),
        probabilities((2, 3), (3,), scale=40.0),
    ),
    OpCase(
        "bce_with_logits sum",
        lambda x, y: F.binary_cross_entropy_with_logits(x, y, reduction="sum"),
        lambda x, y: ref_bce(x, y, reduction="sum"),
        probabilities((5,)),
    ),
]
