"""The CUDA backend: the same protocol as the NumPy backend, on CuPy arrays.

CuPy is imported when this backend is first asked for, never before, so that minift installs
and runs without it. Any CuPy 12+ works (``pip install "minift[cuda]"`` pins cupy-cuda12x;
CUDA 13 machines use cupy-cuda13x). Hot operations go through methods here so that hand-written
kernels can replace the library calls; ``MINIFT_CUDA_MATMUL=cublas`` keeps the library path.
"""

from __future__ import annotations

from typing import Any

from backends import BackendUnavailable, SharedBackend


def _import_cupy():
    try:
        import cupy
    except ImportError as err:
        raise BackendUnavailable(
            "the 'cuda' backend needs CuPy, which is not installed: "
            'pip install "minift[cuda]" (CUDA 12) or pip install cupy-cuda13x (CUDA 13)'
        ) from err
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:  # CUDA raises its own error types when no driver is present
        raise BackendUnavailable(
            f"the 'cuda' backend found CuPy {cupy.__version__} but no usable NVIDIA GPU "
            f"({type(err).__name__}: {err}); use --backend numpy"
        ) from err
    if count == 0:
        raise BackendUnavailable("the 'cuda' backend found CuPy but no NVIDIA GPU; use --backend numpy")
    return cupy


class CupyBackend(SharedBackend):
    name = "cuda"

    def __init__(self) -> None:
        from backends.kernels.loader import CudaKernels

        self.xp = _import_cupy()
        self.kernels = CudaKernels(self.xp)
        self.rng = self.xp.random.RandomState(0)

    def seed(self, seed: int) -> None:
        self.rng = self.xp.random.RandomState(seed)

    def generator(self, seed: int):
        return self.xp.random.RandomState(seed)

    def asarray(self, data: Any, dtype: Any = None):
        return self.xp.asarray(data, dtype=dtype)

    def to_numpy(self, array: Any):
        return self.xp.asnumpy(array)

    def is_array(self, obj: Any) -> bool:
        return isinstance(obj, self.xp.ndarray)

    def empty(self, shape, dtype="float32"):
        return self.xp.empty(shape, dtype=dtype)

    def zeros(self, shape, dtype="float32"):
        return self.xp.zeros(shape, dtype=dtype)

    def ones(self, shape, dtype="float32"):
        return self.xp.ones(shape, dtype=dtype)

    def full(self, shape, value, dtype="float32"):
        return self.xp.full(shape, value, dtype=dtype)

    def normal(self, shape, mean=0.0, std=1.0, dtype="float32"):
        return self.rng.normal(mean, std, size=shape).astype(dtype, copy=False)

    def uniform(self, shape, low=0.0, high=1.0, dtype="float32"):
        return self.rng.uniform(low, high, size=shape).astype(dtype, copy=False)

    def bernoulli(self, shape, p, generator=None):
        return (generator or self.rng).random_sample(size=shape) < p

    def integers(self, shape, low, high):
        return self.rng.randint(low, high, size=shape)

    def matmul(self, a, b):
        return self.xp.matmul(a, b)

    def nf4_dequantize(self, packed, absmax, code, blocksize, shape):
        """W = code[i] * absmax[block]: the NumPy backend's reference, run on CuPy arrays.

        It is written with ``self.xp``; a fused kernel (unpack, look up, scale) can replace it.
        """
        from backends.numpy_backend import NumpyBackend

        return NumpyBackend.nf4_dequantize(self, packed, absmax, code, blocksize, shape)
