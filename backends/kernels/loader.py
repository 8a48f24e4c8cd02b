"""Where kernels come from: CuPy's ``RawModule`` on a GPU, or the CPU emulator in tests.

Both kinds of ``KernelSet`` answer ``function(source, name)`` with something called as
``kernel(grid, block, args)``, and name their array module ``xp`` (``cupy`` or ``numpy``).
The wrappers beside this file (gemm, lora, nf4, rowwise) take a kernel set as their first
argument and are therefore run, unchanged, on the GPU and in the emulator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

KERNEL_DIR = Path(__file__).resolve().parent
NVCC_OPTIONS = ("-std=c++17",)


def kernel_sources() -> list[Path]:
    """Every kernel source file, for the nvcc compile check."""
    return sorted(KERNEL_DIR.glob("*.cu"))


class CudaKernels:
    """Kernels compiled by NVRTC through ``cupy.RawModule``, one module per source file."""

    def __init__(self, cupy: Any) -> None:
        self.xp = cupy
        self._modules: dict[str, Any] = {}

    def function(self, source: str, name: str) -> Any:
        if source not in self._modules:
            code = (KERNEL_DIR / source).read_text()
            options = (*NVCC_OPTIONS, f"-I{KERNEL_DIR}")
            self._modules[source] = self.xp.RawModule(code=code, options=options)
        return self._modules[source].get_function(name)

    def synchronize(self) -> None:
        self.xp.cuda.get_current_stream().synchronize()


class EmulatedKernels:
    """The same kernels compiled by g++ and run on the CPU (see emulator.py); NumPy arrays."""

    xp = np

    def __init__(self) -> None:
        self._modules: dict[str, Any] = {}

    def function(self, source: str, name: str) -> Any:
        from backends.kernels.emulator import EmulatedModule

        if source not in self._modules:
            self._modules[source] = EmulatedModule(KERNEL_DIR / source)
        return self._modules[source].get_function(name)

    def synchronize(self) -> None:
        """Emulated launches return when the kernel has finished."""
