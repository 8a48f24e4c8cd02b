"""Hot operations through minift's CUDA kernels: shared by the CuPy and the emulator backends.

A backend with a kernel set (``self.kernels``) sends float32 products to the hand-written
SGEMM and NF4 kernels; other dtypes (float64 gradient checks) go to the array library.
``MINIFT_CUDA_MATMUL=cublas`` sends every product to the library (``cupy.matmul``, which is
cuBLAS), to compare the two. The row-wise kernels (softmax, cross-entropy, norms) and fused
LoRA are called by the ops themselves through ``backend.kernels``, since they replace whole
forward/backward pairs rather than one array call.
"""

from __future__ import annotations

import os
from typing import Any

MATMUL_CHOICES = ("kernel", "cublas")


def matmul_path() -> str:
    """Which path float32 products take: ``MINIFT_CUDA_MATMUL`` (``kernel`` by default)."""
    path = os.environ.get("MINIFT_CUDA_MATMUL", "kernel").lower()
    if path not in MATMUL_CHOICES:
        raise ValueError(f"MINIFT_CUDA_MATMUL must be one of {MATMUL_CHOICES}, got {path!r}")
    return path


class KernelHotOps:
    """``matmul`` and ``nf4_dequantize`` on kernels; mixed into a backend that has ``kernels``."""

    kernels: Any
    xp: Any

    def matmul(self, a, b):
        float32 = a.dtype == self.xp.float32 and b.dtype == self.xp.float32
        if not float32 or a.ndim < 2 or b.ndim < 2 or matmul_path() == "cublas":
            return self.xp.matmul(a, b)
        from backends.kernels import gemm

        return gemm.matmul(self.kernels, a, b)

    def nf4_dequantize(self, packed, absmax, code, blocksize, shape):
        """W = code[i] * absmax[block], one fused kernel (see backends/kernels/nf4.cu)."""
        from backends.kernels import nf4

        if isinstance(code, str):
            raise TypeError(f"nf4_dequantize takes the 16 code values, not the name {code!r}")
        code = self.xp.asarray(code, dtype=self.xp.float32)
        absmax = absmax.astype(self.xp.float32, copy=False)  # as the NumPy reference reads it
        return nf4.dequantize(self.kernels, packed, absmax, code, blocksize, shape)
