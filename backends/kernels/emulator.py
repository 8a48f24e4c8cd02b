"""Run minift's CUDA kernels on the CPU, so that they can be checked where there is no GPU.

A kernel source (``*.cu``) is compiled by g++ with ``cpu_emulation.h`` in front of it, which
maps the CUDA dialect onto C++: every CUDA thread of a block becomes a fiber on one OS thread,
``__syncthreads`` a barrier, ``__shared__`` a static array (blocks run one at a time). For each
``extern "C" __global__`` kernel a launcher is generated from its signature:

    extern "C" void emu_launch_NAME(grid, block, void** args)   // runs NAME on every thread

``EmulatedModule(path).get_function(name)`` returns an object called as a ``cupy.RawKernel``
is, ``kernel(grid, block, args)``, on NumPy arrays. Arguments are checked against the C
signature (dtype of each pointer, exact scalar types), which the GPU never does.

The results are the kernel's arithmetic, not its speed: the emulator is for correctness tests.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

KERNEL_DIR = Path(__file__).resolve().parent
HEADER = KERNEL_DIR / "cpu_emulation.h"
# UBSan's alignment and bounds checks stop the process, naming the source line, at what a GPU
# would get wrong silently or fault on: a float4 access off a 16-byte boundary, or an index
# past the end of a shared-memory tile or a register array.
SANITIZE = ("-fsanitize=alignment,bounds", "-fno-sanitize-recover=all")
FLAGS = ("-std=c++20", "-O2", "-fPIC", "-shared", "-fno-strict-aliasing", *SANITIZE)

_SIGNATURE = re.compile(
    r'extern\s+"C"\s+__global__\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?void\s+(\w+)\s*\(([^)]*)\)'
)
_QUALIFIERS = {"const", "__restrict__", "__restrict", "*"}
# C type of a parameter -> the NumPy dtype an argument (or a pointer's elements) must have
_DTYPES = {
    "float": np.float32,
    "double": np.float64,
    "int": np.int32,
    "int32_t": np.int32,
    "unsigned": np.uint32,
    "unsigned int": np.uint32,
    "uint32_t": np.uint32,
    "long long": np.int64,
    "int64_t": np.int64,
    "unsigned char": np.uint8,
    "uint8_t": np.uint8,
}


class EmulatorError(RuntimeError):
    """The kernel could not be compiled or was called with arguments its signature refuses."""


@dataclass(frozen=True)
class Param:
    name: str
    ctype: str  # base type without qualifiers, e.g. "float"
    pointer: bool

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(_DTYPES[self.ctype])


def parse_param(text: str) -> Param:
    tokens = text.replace("*", " * ").split()
    words = [t for t in tokens if t not in _QUALIFIERS]
    if len(words) < 2 or " ".join(words[:-1]) not in _DTYPES:
        raise EmulatorError(f"cannot emulate kernel parameter {text.strip()!r}")
    return Param(name=words[-1], ctype=" ".join(words[:-1]), pointer="*" in tokens)


def parse_kernels(source: str) -> dict[str, tuple[Param, ...]]:
    """Every ``extern "C" __global__`` kernel of a source, with its parameters."""
    return {
        name: tuple(parse_param(p) for p in params.split(",") if p.strip())
        for name, params in _SIGNATURE.findall(source)
    }


def launcher_source(name: str, params: tuple[Param, ...]) -> str:
    """C++ that unpacks ``void** args`` (one address per parameter) and launches the kernel."""
    unpacked = ", ".join(
        f"*static_cast<{p.ctype}{'*' if p.pointer else ''}*>(args[{i}])"
        for i, p in enumerate(params)
    )
    return (
        f'extern "C" void emu_launch_{name}(unsigned gx, unsigned gy, unsigned gz, '
        f"unsigned bx, unsigned by, unsigned bz, void** args) {{\n"
        f"    emu::launch(dim3{{gx, gy, gz}}, dim3{{bx, by, bz}}, [&] {{ {name}({unpacked}); }});\n"
        f"}}\n"
    )


def compiler() -> str | None:
    """The C++ compiler the emulator uses (``$CXX`` or g++), or None when there is none."""
    return shutil.which(os.environ.get("CXX", "g++"))


def _cache_dir() -> Path:
    root = os.environ.get("MINIFT_EMULATOR_CACHE") or Path(tempfile.gettempdir())
    path = Path(root) / f"minift-emulator-{os.getuid() if hasattr(os, 'getuid') else 0}"
    path.mkdir(parents=True, exist_ok=True)
    return path


class EmulatedModule:
    """A kernel source compiled for the CPU; the emulator's ``cupy.RawModule``."""

    def __init__(
        self, path: str | Path, code: str | None = None, include_dirs: Iterable[str | Path] = ()
    ) -> None:
        """Compile the source file ``path``, or the text ``code`` when given (as
        ``cupy.RawModule(code=..., options=("-I<dir>",))`` receives it): then ``path`` only names
        the module in messages and the cache, and ``include_dirs`` are its ``-I`` folders."""
        self.path = Path(path)
        if code is None:
            code, include_dirs = self.path.read_text(), (self.path.parent,)
        self.include_dirs = tuple(dict.fromkeys([*map(Path, include_dirs), KERNEL_DIR]))
        self.kernels = parse_kernels(code)
        if not self.kernels:
            raise EmulatorError(f'{self.path} defines no extern "C" __global__ kernel')
        program = (
            f'#include "{HEADER}"\n#line 1 "{self.path}"\n{code}\n'
            + "".join(launcher_source(n, p) for n, p in self.kernels.items())
        )
        self.library = ctypes.CDLL(str(self._build(program)))

    def _build(self, program: str) -> Path:
        cxx = compiler()
        if cxx is None:
            raise EmulatorError("the CUDA emulator needs a C++20 compiler (g++); none was found")
        headers = sorted({*(h for d in self.include_dirs for h in d.glob("*.cuh")), HEADER})
        texts = [program, " ".join(FLAGS), *(h.read_text() for h in headers)]  # any edit rebuilds
        key = hashlib.sha256("\0".join(texts).encode()).hexdigest()
        target = _cache_dir() / f"{self.path.stem}-{key[:16]}.so"
        if target.exists():
            return target
        with tempfile.TemporaryDirectory() as tmp:
            cpp, built = Path(tmp) / f"{self.path.stem}.cpp", Path(tmp) / "kernel.so"
            cpp.write_text(program)
            includes = [flag for d in self.include_dirs for flag in ("-I", str(d))]
            command = [cxx, *FLAGS, *includes, "-o", str(built), str(cpp)]
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise EmulatorError(f"g++ could not compile {self.path}:\n{result.stderr[-4000:]}")
            os.replace(built, target)  # atomic, so a parallel test never loads half a file
        return target

    def get_function(self, name: str) -> EmulatedKernel:
        if name not in self.kernels:
            raise EmulatorError(f"{self.path.name} has no kernel {name!r}; it has {sorted(self.kernels)}")
        return EmulatedKernel(name, self.kernels[name], getattr(self.library, f"emu_launch_{name}"))


class EmulatedKernel:
    """``kernel(grid, block, args)`` runs on NumPy arrays, as a ``cupy.RawKernel`` on CuPy ones."""

    def __init__(self, name: str, params: tuple[Param, ...], launcher: Any) -> None:
        self.name, self.params, self.launcher = name, params, launcher

    def __call__(self, grid: tuple, block: tuple, args: tuple, shared_mem: int = 0) -> None:
        if shared_mem:
            raise EmulatorError(f"{self.name}: the emulator supports static shared memory only")
        grid, block = _dims(grid, "grid"), _dims(block, "block")
        if block[0] * block[1] * block[2] > 1024:
            raise EmulatorError(f"{self.name}: a block has at most 1024 threads, got {block}")
        if len(args) != len(self.params):
            raise EmulatorError(f"{self.name} takes {len(self.params)} arguments, got {len(args)}")
        keep = [self._argument(p, a) for p, a in zip(self.params, args)]  # alive during the call
        addresses = (ctypes.c_void_p * len(keep))(*(ctypes.addressof(k) for k in keep))
        self.launcher(*grid, *block, addresses)

    def _argument(self, param: Param, value: Any) -> ctypes._SimpleCData:
        where = f"{self.name}: argument {param.name!r}"
        if param.pointer:
            if not isinstance(value, np.ndarray) or value.dtype != param.dtype:
                got = getattr(value, "dtype", type(value).__name__)
                raise EmulatorError(f"{where} must be a {param.dtype} array, got {got}")
            return ctypes.c_void_p(value.ctypes.data)
        if not isinstance(value, np.generic) or value.dtype != param.dtype:
            raise EmulatorError(
                f"{where} is a C {param.ctype}: pass np.{param.dtype}(...), got {value!r}"
            )
        return np.ctypeslib.as_ctypes_type(param.dtype)(value.item())


def _dims(dims: tuple | int, what: str) -> tuple[int, int, int]:
    dims = (dims,) if isinstance(dims, int) else tuple(int(d) for d in dims)
    if not 1 <= len(dims) <= 3 or min(dims) < 1:
        raise EmulatorError(f"{what} must be 1 to 3 positive sizes, got {dims}")
    return dims + (1,) * (3 - len(dims))
