"""``cuda-emulator``: the NumPy backend with its hot operations run by the CUDA kernels on the CPU.

The kernels are compiled by g++ and every CUDA thread runs as a fiber (see
backends/kernels/emulator.py), so a model trains through exactly the kernel code that runs on
a GPU, only thousands of times slower. It exists to check kernels and their wiring into the
ops where no GPU is at hand; use tiny models.
"""

from __future__ import annotations

from backends import BackendUnavailable
from backends.kernel_ops import KernelHotOps
from backends.numpy_backend import NumpyBackend


class EmulatedCudaBackend(KernelHotOps, NumpyBackend):
    name = "cuda-emulator"

    def __init__(self) -> None:
        from backends.kernels.emulator import compiler
        from backends.kernels.loader import EmulatedKernels

        if compiler() is None:
            raise BackendUnavailable("the 'cuda-emulator' backend needs g++ (C++20) to build the kernels")
        super().__init__()
        self.kernels = EmulatedKernels()
