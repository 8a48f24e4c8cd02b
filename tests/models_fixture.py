"""What test_cnn.py and test_rnn.py share: the stored PyTorch 2.13 fixture and its weight rule."""

import json
from pathlib import Path

import numpy as np

import minift as mf

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "torch_models.json").read_text())


def draw(rng, key, shape):
    """The rule of tests/fixtures/make_torch_models.py: same seed, same numbers."""
    if key.endswith("running_var"):
        return rng.uniform(0.5, 1.5, shape)
    if key.endswith("weight") and len(shape) == 1:
        return 1.0 + 0.2 * rng.standard_normal(shape)
    return 0.5 * rng.standard_normal(shape)


def f64(module):
    return module.to(dtype="float64")


def randn(*shape, seed=0):
    return mf.tensor(np.random.default_rng(seed).standard_normal(shape), requires_grad=True)
