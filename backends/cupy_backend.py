"""The CUDA backend: the same protocol as the NumPy backend, on CuPy arrays.

CuPy is imported when this backend is first asked for, never before, so that minift installs
and runs without it. Any CuPy 12+ works (``pip install "minift[cuda]"`` pins cupy-cuda12x;
CUDA 13 machines use cupy-cuda13x). The hot operations run on the kernels in backends/kernels
(see kernel_ops.py); ``MINIFT_CUDA_MATMUL=cublas`` sends products to cuBLAS instead.
"""

from __future__ import annotations

from typing import Any

from backends import BackendUnavailable, SharedBackend
from backends.kernel_ops import KernelHotOps
from backends.numpy_backend import NumpyBackend


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


class CupyBackend(KernelHotOps, SharedBackend):
    """CuPy arrays; float32 products and NF4 dequantization on minift's kernels.

    Random draws are made on the host by the same PCG64 generator as the NumPy backend and
    then copied to the device, so that one seed gives the same weights, dropout masks and
    batches on both backends (a loss curve on the GPU can be compared with the CPU's). The
    price is one host-to-device copy per draw, which only initialisation and dropout pay.
    """

    name = "cuda"

    def __init__(self) -> None:
        from backends.kernels.loader import CudaKernels

        self.xp = _import_cupy()
        self.kernels = CudaKernels(self.xp)
        self.host = NumpyBackend()

    def seed(self, seed: int) -> None:
        self.host.seed(seed)

    def generator(self, seed: int):
        return self.host.generator(seed)

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
        return self.xp.asarray(self.host.normal(shape, mean, std, dtype))

    def uniform(self, shape, low=0.0, high=1.0, dtype="float32"):
        return self.xp.asarray(self.host.uniform(shape, low, high, dtype))

    def bernoulli(self, shape, p, generator=None):
        return self.xp.asarray(self.host.bernoulli(shape, p, generator))

    def integers(self, shape, low, high):
        return self.xp.asarray(self.host.integers(shape, low, high))
