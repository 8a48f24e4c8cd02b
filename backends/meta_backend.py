"""The meta backend: arrays that have a shape and a dtype but no data.

With it the real model classes can be built at any size (an 8B-parameter Llama) in no memory,
to count parameters and estimate memory. Factories and shape operations (reshape, transpose,
indexing, broadcasting, concatenation) work; any computation raises ``MetaComputeError``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from backends import SharedBackend


class MetaComputeError(RuntimeError):
    """Raised when code asks a meta array for values."""


def _refuse(what: str):
    raise MetaComputeError(
        f"the meta backend holds shapes only and cannot compute {what}; "
        "move the model to 'numpy' or 'cuda' to run it"
    )


def _resolve_shape(shape, size: int) -> tuple:
    shape = tuple(int(s) for s in (shape if isinstance(shape, (tuple, list)) else (shape,)))
    if shape.count(-1) > 1:
        raise ValueError(f"reshape: only one dimension can be -1, got {shape}")
    if -1 in shape:
        known = math.prod(s for s in shape if s != -1)
        if known == 0 or size % known:
            raise ValueError(f"cannot reshape array of size {size} into shape {shape}")
        shape = tuple(size // known if s == -1 else s for s in shape)
    if math.prod(shape) != size:
        raise ValueError(f"cannot reshape array of size {size} into shape {shape}")
    return shape


class MetaArray:
    """A shape and a dtype that behave like an array in every way that needs no values."""

    __array_priority__ = 1000  # so that numpy scalars defer to MetaArray's operators

    def __init__(self, shape, dtype="float32") -> None:
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)

    ndim = property(lambda self: len(self.shape))
    size = property(lambda self: math.prod(self.shape))
    itemsize = property(lambda self: self.dtype.itemsize)
    nbytes = property(lambda self: self.size * self.dtype.itemsize)
    T = property(lambda self: self.transpose())

    def __repr__(self) -> str:
        return f"MetaArray(shape={self.shape}, dtype={self.dtype})"

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d meta array")
        return self.shape[0]

    def reshape(self, *shape) -> MetaArray:
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return MetaArray(_resolve_shape(shape, self.size), self.dtype)

    def transpose(self, *axes) -> MetaArray:
        axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        axes = axes or tuple(reversed(range(self.ndim)))
        return MetaArray(tuple(self.shape[a] for a in axes), self.dtype)

    def swapaxes(self, a: int, b: int) -> MetaArray:
        axes = list(range(self.ndim))
        axes[a], axes[b] = axes[b], axes[a]
        return self.transpose(axes)

    def astype(self, dtype, copy: bool = True) -> MetaArray:
        return MetaArray(self.shape, dtype)

    def copy(self) -> MetaArray:
        return MetaArray(self.shape, self.dtype)

    def __getitem__(self, key) -> MetaArray:
        # A zero-stride view has every shape for free: index it and keep only the shape.
        ghost = np.lib.stride_tricks.as_strided(
            np.zeros(1, np.int8), shape=self.shape, strides=(0,) * self.ndim
        )
        return MetaArray(ghost[key].shape, self.dtype)

    def __array__(self, *args, **kwargs):
        _refuse("np.asarray of a meta array")

    def __bool__(self):
        _refuse("the truth value of a meta array")

    def __float__(self):
        _refuse("float() of a meta array")

    def item(self):
        _refuse(".item()")


def _make_refusal(name: str):
    def refuse(self, *args, **kwargs):
        _refuse(f"'{name}'")

    return refuse


for _op in ("add", "sub", "mul", "truediv", "floordiv", "pow", "matmul", "mod", "lt", "le",
            "gt", "ge", "eq", "ne", "and", "or", "xor"):
    for _name in (f"__{_op}__", f"__r{_op}__", f"__i{_op}__"):
        setattr(MetaArray, _name, _make_refusal(_name))
for _name in ("__neg__", "__abs__", "__invert__", "sum", "mean", "max", "min", "dot", "fill"):
    setattr(MetaArray, _name, _make_refusal(_name))


class _MetaNamespace:
    """The ``xp`` of the meta backend: NumPy's dtypes and shape functions, nothing else."""

    def __getattr__(self, name: str) -> Any:
        value = getattr(np, name)
        if isinstance(value, type) and issubclass(value, np.generic) or name in ("dtype", "newaxis"):
            return value
        return _make_refusal(f"xp.{name}").__get__(self)

    @staticmethod
    def reshape(a, shape):
        return a.reshape(shape)

    @staticmethod
    def transpose(a, axes=None):
        return a.transpose(axes) if axes is not None else a.transpose()

    @staticmethod
    def swapaxes(a, i, j):
        return a.swapaxes(i, j)

    @staticmethod
    def broadcast_to(a, shape):
        return MetaArray(np.broadcast_shapes(a.shape, tuple(shape)), a.dtype)

    @staticmethod
    def expand_dims(a, axis):
        shape = list(a.shape)
        shape.insert(axis if axis >= 0 else len(shape) + axis + 1, 1)
        return MetaArray(shape, a.dtype)

    @staticmethod
    def concatenate(arrays, axis=0):
        first = arrays[0]
        shape = list(first.shape)
        shape[axis] = sum(a.shape[axis] for a in arrays)
        return MetaArray(shape, first.dtype)

    @staticmethod
    def stack(arrays, axis=0):
        return _MetaNamespace.concatenate([_MetaNamespace.expand_dims(a, axis) for a in arrays], axis)


class MetaBackend(SharedBackend):
    name = "meta"
    xp = _MetaNamespace()
    kernels = None

    def seed(self, seed: int) -> None:
        """Meta arrays hold no values, so there is nothing to seed."""

    def generator(self, seed: int) -> None:
        return None

    def asarray(self, data: Any, dtype: Any = None) -> MetaArray:
        if isinstance(data, MetaArray):
            return data if dtype is None else data.astype(dtype)
        array = np.asarray(data, dtype=dtype)
        return MetaArray(array.shape, array.dtype)

    def to_numpy(self, array: Any):
        _refuse("to_numpy (a meta array has no values)")

    def is_array(self, obj: Any) -> bool:
        return isinstance(obj, MetaArray)

    def empty(self, shape, dtype="float32"):
        return MetaArray(shape if isinstance(shape, (tuple, list)) else (shape,), dtype)

    zeros = ones = empty

    def full(self, shape, value, dtype="float32"):
        return self.empty(shape, dtype)

    def normal(self, shape, mean=0.0, std=1.0, dtype="float32"):
        return self.empty(shape, dtype)

    def uniform(self, shape, low=0.0, high=1.0, dtype="float32"):
        return self.empty(shape, dtype)

    def bernoulli(self, shape, p, generator=None):
        return self.empty(shape, "bool")

    def integers(self, shape, low, high):
        return self.empty(shape, "int64")

    def matmul(self, a, b):
        _refuse("matmul")
