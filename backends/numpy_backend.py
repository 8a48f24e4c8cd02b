"""The NumPy backend: the reference every other backend is compared with.

Randomness comes from one ``numpy.random.Generator`` (PCG64) per backend, so that
``minift.manual_seed(s)`` makes a run reproducible bit for bit.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from backends import SharedBackend


class NumpyBackend(SharedBackend):
    name = "numpy"
    xp = np
    kernels = None  # no CUDA kernels: every op is plain NumPy

    def __init__(self) -> None:
        self.rng = np.random.default_rng(0)

    def seed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def generator(self, seed: int) -> np.random.Generator:
        """A private random stream, for ops (dropout) that must not disturb the global one."""
        return np.random.default_rng(seed)

    # --- conversion -------------------------------------------------------------------------
    def asarray(self, data: Any, dtype: Any = None) -> np.ndarray:
        if hasattr(data, "get") and not isinstance(data, (np.ndarray, dict)):
            data = data.get()  # a CuPy array moving to the host
        return np.asarray(data, dtype=dtype)

    def to_numpy(self, array: Any) -> np.ndarray:
        return np.asarray(array)

    def is_array(self, obj: Any) -> bool:
        return isinstance(obj, (np.ndarray, np.generic))

    # --- factories --------------------------------------------------------------------------
    def empty(self, shape, dtype="float32"):
        return np.empty(shape, dtype=dtype)

    def zeros(self, shape, dtype="float32"):
        return np.zeros(shape, dtype=dtype)

    def ones(self, shape, dtype="float32"):
        return np.ones(shape, dtype=dtype)

    def full(self, shape, value, dtype="float32"):
        return np.full(shape, value, dtype=dtype)

    def normal(self, shape, mean=0.0, std=1.0, dtype="float32"):
        return self.rng.normal(mean, std, size=shape).astype(dtype, copy=False)

    def uniform(self, shape, low=0.0, high=1.0, dtype="float32"):
        return self.rng.uniform(low, high, size=shape).astype(dtype, copy=False)

    def bernoulli(self, shape, p, generator=None):
        """Boolean array, True with probability ``p``."""
        return (generator or self.rng).random(size=shape, dtype=np.float32) < p

    def integers(self, shape, low, high):
        return self.rng.integers(low, high, size=shape)

    # --- hot operations ---------------------------------------------------------------------
    def matmul(self, a, b):
        return np.matmul(a, b)

    def nf4_dequantize(self, packed, absmax, code, blocksize, shape):
        """W = code[i] * absmax[block] from 4-bit indices packed two per byte (high nibble first).

        The reference for a fused CUDA kernel; written with ``self.xp`` so it runs on CuPy too.
        Args: packed uint8 (ceil(n/2),); absmax float32 (ceil(n/blocksize),); code (16,) the
        value of each index (minift.quant.codes.code_table(name): backends never import minift);
        blocksize; shape (n elements in all). Returns float32 of ``shape``.
        """
        from math import prod

        xp, n = self.xp, prod(shape)
        if isinstance(code, str):
            raise TypeError(f"nf4_dequantize takes the 16 code values, not the name {code!r}")
        indices = xp.stack([packed >> 4, packed & 0x0F], axis=-1).reshape(-1)[:n]  # (n,)
        scales = xp.repeat(absmax.astype(xp.float32), blocksize)[:n]  # absmax of each element
        return (xp.asarray(code, dtype=xp.float32)[indices] * scales).reshape(shape)
