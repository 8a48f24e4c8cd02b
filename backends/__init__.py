"""Array backends: the one place where minift meets NumPy, CuPy or shape-only arrays.

A backend bundles an array namespace ``xp`` (``numpy`` or ``cupy``), factories that create
arrays on its device from its own random generator, and a few *hot operations* (``matmul``
first) that a backend may implement specially. Everything in ``minift`` is written once
against this protocol; ``backends`` never imports ``minift``.

    get_backend("numpy")   # default, always there
    get_backend("cuda")    # CuPy, imported on first use; a clear error without CuPy or a GPU
    get_backend("meta")    # shapes and dtypes only: build huge models to count them
    get_backend("cuda-emulator")  # NumPy, hot ops through the CUDA kernels run on the CPU
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Backend(Protocol):
    """What every backend provides. Shapes are tuples; dtypes are NumPy dtype names."""

    name: str
    xp: Any  # the array namespace: numpy, cupy, or the meta namespace

    def seed(self, seed: int) -> None: ...
    def asarray(self, data: Any, dtype: Any = None) -> Any: ...
    def to_numpy(self, array: Any) -> Any: ...
    def is_array(self, obj: Any) -> bool: ...
    def empty(self, shape: tuple, dtype: Any = "float32") -> Any: ...
    def zeros(self, shape: tuple, dtype: Any = "float32") -> Any: ...
    def ones(self, shape: tuple, dtype: Any = "float32") -> Any: ...
    def full(self, shape: tuple, value: float, dtype: Any = "float32") -> Any: ...
    def normal(self, shape: tuple, mean: float = 0.0, std: float = 1.0, dtype: Any = "float32") -> Any: ...
    def uniform(self, shape: tuple, low: float = 0.0, high: float = 1.0, dtype: Any = "float32") -> Any: ...
    def bernoulli(self, shape: tuple, p: float, generator: Any = None) -> Any: ...
    def integers(self, shape: tuple, low: int, high: int) -> Any: ...
    def generator(self, seed: int) -> Any: ...
    def matmul(self, a: Any, b: Any) -> Any: ...

    kernels: Any  # a CUDA kernel set (backends/kernels/loader.py), or None: ops use xp


class SharedBackend:
    """Base of the backend classes: one instance per process, kept by copies and pickles.

    A deep-copied module must still point at the same backend, so that identity checks hold and
    ``manual_seed`` reseeds the generator the copy draws from.
    """

    name: str

    def __deepcopy__(self, memo: dict) -> SharedBackend:
        return self

    def __reduce__(self):
        return get_backend, (self.name,)


# name -> "module:class"; modules import lazily so that CuPy is only touched when asked for.
_REGISTRY = {
    "numpy": "backends.numpy_backend:NumpyBackend",
    "cpu": "backends.numpy_backend:NumpyBackend",
    "cuda": "backends.cupy_backend:CupyBackend",
    "meta": "backends.meta_backend:MetaBackend",
    "cuda-emulator": "backends.emulated_backend:EmulatedCudaBackend",
}
_INSTANCES: dict[str, Backend] = {}


class BackendUnavailable(RuntimeError):
    """A backend exists but cannot run here (no CuPy, no GPU)."""


def available_backends() -> list[str]:
    """Names that ``get_backend`` accepts (``cpu`` is an alias of ``numpy``)."""
    return sorted(_REGISTRY)


def get_backend(name: str | Backend = "numpy") -> Backend:
    """Return the backend called ``name`` (one instance per process)."""
    if not isinstance(name, str):
        return name
    key = name.lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown backend {name!r}; choose one of {available_backends()}")
    target = _REGISTRY[key]
    if target not in _INSTANCES:
        module_name, class_name = target.split(":")
        cls = getattr(importlib.import_module(module_name), class_name)
        _INSTANCES[target] = cls()
    return _INSTANCES[target]


def loaded_backends() -> list[Backend]:
    """Backends created so far (``manual_seed`` reseeds each of them)."""
    return list(_INSTANCES.values())


def backend_of(array: Any) -> Backend:
    """The backend that owns ``array``: NumPy arrays and scalars belong to ``numpy``.

    ``cuda-emulator`` holds NumPy arrays too, but never claims one: host data given to
    ``mf.tensor`` goes to the default backend, not to the emulator because it was loaded.
    """
    host = get_backend("numpy")
    for backend in loaded_backends():
        if backend.xp is not host.xp and backend.is_array(array):
            return backend
    return host
