"""A strict stand-in for CuPy on the CPU, for tests: CuPy's refusals without a GPU.

The ``cuda-emulator`` backend runs minift's kernels on NumPy arrays, so it cannot show where
minift hands a host array to the device, or a device array to NumPy; CuPy refuses both.
``cupy`` below is a module whose ``ndarray`` wraps a NumPy array (the "device buffer") without
being one, and refuses what CuPy refuses:

    np.asarray(device), np.array(device)        TypeError: implicit conversion (use .get())
    device + host, cupy.f(..., host array, ...) TypeError: Unsupported type numpy.ndarray
    device[basic key] = host array              ValueError: non-scalar ... cannot be used for fill
    kernel(grid, block, (host array, ...))      TypeError: Unsupported type numpy.ndarray

and allows what CuPy allows: Python and NumPy scalars anywhere; NumPy index arrays, and host
values assigned through them (copied to the device); ``np.f(device)`` dispatched to ``cupy.f``
(NEP 13 and 18); ``float``/``int``/``bool`` of one element. Out-of-bounds index arrays wrap
around, as on a GPU, where NumPy raises IndexError. The sources of each rule are cited where it
is coded. ``RawModule`` kernels run in the CPU emulator (backends/kernels/emulator.py).
"""

from __future__ import annotations

import functools
import time
import types
from typing import Any

import numpy as np

from backends.kernels.emulator import EmulatedModule

VERSION = "13.0.0-fake"


def _binary(name: str):
    """``x op y``, ``y op x`` and ``x op= y`` as the device ufunc ``name`` (CuPy: ``__add__`` is
    ``cupy.add``, so a host ndarray on either side meets the ufunc's refusal)."""
    return (
        lambda self, other: getattr(cupy, name)(self, other),
        lambda self, other: getattr(cupy, name)(other, self),
        lambda self, other: getattr(cupy, name)(self, other, out=self),
    )


def _unary(name: str):
    return lambda self: getattr(cupy, name)(self)


def _unsupported(value: Any) -> TypeError:
    """CuPy's error for an operand it cannot put on the device (_kernel._preprocess_args)."""
    return TypeError(f"Unsupported type {type(value)}")


def _words(text: str) -> list[str]:
    return text.split()


# cupy.ndarray's methods and attributes beyond those defined below (CuPy 13 reference,
# docs.cupy.dev/en/v13.3.0/reference/generated/cupy.ndarray.html)
_METHODS = frozenset(
    _words("""all any argmax argmin argpartition argsort astype base choose clip compress conj
    conjugate copy cumprod cumsum diagonal dot fill flat flatten imag max mean min nonzero partition
    prod ptp put ravel real repeat reshape round sort squeeze std sum swapaxes tobytes trace
    transpose var view""")
)


class ndarray:
    """A device array: a NumPy buffer behind CuPy's interface, never a numpy.ndarray itself."""

    __array_priority__ = 100  # cupy/_core/core.pyx: NumPy scalars defer to the device array

    def __init__(self, buffer: np.ndarray) -> None:
        self._buffer = buffer

    # --- what CuPy shows of itself -----------------------------------------------------------
    shape = property(lambda self: self._buffer.shape)
    dtype = property(lambda self: self._buffer.dtype)
    ndim = property(lambda self: self._buffer.ndim)
    size = property(lambda self: self._buffer.size)
    strides = property(lambda self: self._buffer.strides)
    flags = property(lambda self: self._buffer.flags)
    nbytes = property(lambda self: self._buffer.nbytes)
    itemsize = property(lambda self: self._buffer.itemsize)
    T = property(lambda self: ndarray(self._buffer.T))

    @property
    def __cuda_array_interface__(self) -> dict:
        buffer = self._buffer
        strides = None if buffer.flags.c_contiguous else buffer.strides
        return {
            "shape": buffer.shape,
            "typestr": buffer.dtype.str,
            "strides": strides,
            "data": (buffer.ctypes.data if buffer.size else 0, False),
            "version": 3,
        }

    @property
    def data(self) -> types.SimpleNamespace:
        """A cupy.cuda.MemoryPointer to the first element; only its address, ``ptr``, is kept."""
        return types.SimpleNamespace(ptr=self._buffer.ctypes.data)

    def __getattr__(self, name: str) -> Any:
        """CuPy's methods (reshape, astype, sum, ...) as NumPy's on the buffer, arrays on device.

        Only names that cupy.ndarray has: not ``ctypes`` (a device array has no host pointer),
        nor ``__array_interface__`` (through which NumPy would read the buffer).
        """
        if name not in _METHODS:
            raise AttributeError(f"'cupy.ndarray' object has no attribute {name!r}")
        attribute = getattr(self._buffer, name)
        if not callable(attribute):
            return _to_device(attribute)

        def method(*args, **kwargs):
            result = attribute(*_operands(args), **_operands(kwargs))
            return self if result is self._buffer else _to_device(result)

        return method

    # --- conversion: explicit only ------------------------------------------------------------
    def get(self) -> np.ndarray:
        return self._buffer.copy()

    def item(self) -> Any:
        return self._buffer.item()

    def tolist(self) -> Any:
        return self._buffer.tolist()

    def __copy__(self) -> ndarray:
        return ndarray(self._buffer.copy())  # a new device buffer, as cupy.ndarray.__copy__

    def take(self, indices, axis=None, out=None) -> ndarray:
        """Host indices are allowed and wrap around, as in __getitem__ (_routines_indexing.pyx
        _take: ``indices % index_range``)."""
        shape = (self.size,) if axis is None else (self.shape[axis],)
        indices = _index(indices, shape)
        return _to_device(self._buffer.take(indices, axis=axis, out=_operands(out)))

    def __array__(self, *args, **kwargs):
        # the message of cupy/_core/core.pyx ndarray.__array__
        raise TypeError(
            "Implicit conversion to a NumPy array is not allowed. "
            "Please use `.get()` to construct a NumPy array explicitly."
        )

    # float(), int(), bool() of one element are allowed (they synchronize): core.pyx __float__
    def __float__(self) -> float:
        return float(self._buffer)

    def __int__(self) -> int:
        return int(self._buffer)

    def __bool__(self) -> bool:
        return bool(self._buffer)

    def __len__(self) -> int:
        return len(self._buffer)

    def __iter__(self):
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(len(self)))

    def __repr__(self) -> str:
        return repr(self._buffer)

    def __format__(self, spec: str) -> str:
        return format(self._buffer, spec)

    # --- operators --------------------------------------------------------------------------
    __add__, __radd__, __iadd__ = _binary("add")
    __sub__, __rsub__, __isub__ = _binary("subtract")
    __mul__, __rmul__, __imul__ = _binary("multiply")
    __truediv__, __rtruediv__, __itruediv__ = _binary("true_divide")
    __floordiv__, __rfloordiv__, __ifloordiv__ = _binary("floor_divide")
    __mod__, __rmod__, __imod__ = _binary("remainder")
    __pow__, __rpow__, __ipow__ = _binary("power")
    __matmul__, __rmatmul__, __imatmul__ = _binary("matmul")
    __and__, __rand__, __iand__ = _binary("bitwise_and")
    __or__, __ror__, __ior__ = _binary("bitwise_or")
    __xor__, __rxor__, __ixor__ = _binary("bitwise_xor")
    __lshift__, __rlshift__, __ilshift__ = _binary("left_shift")
    __rshift__, __rrshift__, __irshift__ = _binary("right_shift")
    __eq__ = _binary("equal")[0]
    __ne__ = _binary("not_equal")[0]
    __lt__ = _binary("less")[0]
    __le__ = _binary("less_equal")[0]
    __gt__ = _binary("greater")[0]
    __ge__ = _binary("greater_equal")[0]
    __neg__ = _unary("negative")
    __pos__ = _unary("positive")
    __abs__ = _unary("absolute")
    __invert__ = _unary("invert")
    __hash__ = None  # unhashable, as CuPy's

    # --- indexing ----------------------------------------------------------------------------
    def __getitem__(self, key):
        return _to_device(self._buffer[_index(key, self.shape)])

    def __setitem__(self, key, value) -> None:
        key = _index(key, self.shape)
        if isinstance(value, np.ndarray) and value.shape != () and not _is_advanced(key):
            # a basic key ends in ndarray.fill, which takes a scalar only (core.pyx fill);
            # an advanced key copies the values over (_routines_indexing.pyx _scatter_op_single)
            raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
        self._buffer[key] = value._buffer if isinstance(value, ndarray) else value

    # --- NumPy's protocols: np.f(device) runs cupy.f ---------------------------------------------
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        """cupy/_core/core.pyx __array_ufunc__: the cupy ufunc of the same name, same method."""
        device_ufunc = getattr(cupy, ufunc.__name__, None)
        if not isinstance(device_ufunc, _Ufunc):
            return NotImplemented
        if method == "__call__":
            return device_ufunc(*inputs, **kwargs)
        return getattr(device_ufunc, method)(*inputs, **kwargs)

    def __array_function__(self, func, types, args, kwargs):
        """cupy/_core/core.pyx __array_function__: cupy's function of the same name, if any."""
        module = cupy
        for part in func.__module__.split(".")[1:]:
            module = getattr(module, part, None)
        device_func = getattr(module, func.__name__, None)
        if device_func is None:
            return NotImplemented  # NumPy then raises TypeError: no implementation found
        return device_func(*args, **kwargs)


# --- moving values between the host and the fake device ------------------------------------------
def _to_device(result: Any) -> Any:
    """A NumPy result as CuPy returns it: arrays on the device, scalars as 0-d device arrays."""
    if isinstance(result, np.ndarray):
        return ndarray(result)
    if isinstance(result, np.generic):
        return ndarray(np.asarray(result))
    if isinstance(result, (tuple, list)):
        return type(result)(_to_device(r) for r in result)
    return result


def _operands(value: Any) -> Any:
    """Arguments of a cupy function or method: device arrays give their buffers, host arrays are
    refused (CuPy's functions take cupy.ndarray; Cython raises TypeError for anything else)."""
    if isinstance(value, ndarray):
        return value._buffer
    if isinstance(value, np.ndarray):
        raise _unsupported(value)
    if isinstance(value, (tuple, list)):
        return type(value)(_operands(v) for v in value)
    if isinstance(value, dict):
        return {k: _operands(v) for k, v in value.items()}
    return value


def _index(key: Any, shape: tuple) -> Any:
    """A key for a buffer of ``shape``, with CuPy's reading of it.

    Host index arrays and lists are allowed: CuPy copies them to the device
    (cupy/_core/_routines_indexing.pyx, _prepare_slice_list). Out-of-bounds integer arrays wrap
    around instead of raising IndexError ("Differences between CuPy and NumPy": out-of-bounds
    indices), so code that counts on NumPy's IndexError fails here as on a GPU.
    """
    parts = [_index_array(k) for k in (key if isinstance(key, tuple) else (key,))]
    consumed = sum(_axes_taken(k) for k in parts if k is not Ellipsis)
    axis = 0
    for i, part in enumerate(parts):
        if part is Ellipsis:
            axis += len(shape) - consumed
            continue
        if isinstance(part, np.ndarray) and part.dtype.kind in "iu" and shape[axis] > 0:
            parts[i] = part.astype(np.int64) % shape[axis]
        axis += _axes_taken(part)
    return tuple(parts) if isinstance(key, tuple) else parts[0]


def _index_array(part: Any) -> Any:
    if isinstance(part, ndarray):
        return part._buffer
    if isinstance(part, list):  # an empty list selects nothing: integer, not float, indices
        return np.asarray(part) if part else np.zeros(0, dtype=np.int64)
    return part


def _axes_taken(part: Any) -> int:
    """How many axes of the indexed array one part of a key consumes."""
    if part is None or isinstance(part, (bool, np.bool_)):
        return 0
    if isinstance(part, np.ndarray) and part.dtype.kind == "b":
        return part.ndim
    return 1


def _is_advanced(key: Any) -> bool:
    """Whether a key holds an index array (CuPy's advanced indexing: values are copied over)."""
    parts = key if isinstance(key, tuple) else (key,)
    return any(isinstance(k, (np.ndarray, list, bool, np.bool_)) for k in parts)


def _host_data(value: Any) -> Any:
    """Data for cupy.array/asarray: anything NumPy takes, with device arrays in nested lists."""
    if isinstance(value, ndarray):
        return value._buffer
    if isinstance(value, (tuple, list)):
        return type(value)(_host_data(v) for v in value)
    return value


# --- ufuncs: operands are device arrays or scalars ----------------------------------------------
_COMPARISONS = {"equal", "not_equal", "less", "less_equal", "greater", "greater_equal"}


# the dtypes of CUDA's atomicAdd, all that cupy.add.at takes
_SCATTER_ADD_DTYPES = {
    np.dtype(t) for t in ("int32", "float16", "float32", "float64", "uint32", "uint64")
}


class _Ufunc:
    """A cupy ufunc: its operands are device arrays or scalars, never host arrays or lists.

    cupy/_core/_kernel.pyx _preprocess_args raises "Unsupported type" for anything else; the one
    exception, a 0-d NumPy array compared with a device array, is turned into its scalar
    (cupy/_core/core.pyx __array_ufunc__, the numpy/numpy#12142 workaround).
    """

    def __init__(self, ufunc: np.ufunc) -> None:
        self.ufunc = ufunc
        self.__name__ = ufunc.__name__

    def _operand(self, value: Any) -> Any:
        if isinstance(value, ndarray):
            return value._buffer
        if isinstance(value, np.ndarray) and value.ndim == 0 and self.__name__ in _COMPARISONS:
            return value.item()
        if isinstance(value, (bool, int, float, complex, np.generic)):
            return value
        raise _unsupported(value)

    def _run(self, method: Any, inputs: tuple, out: Any, kwargs: dict) -> Any:
        if out is not None:
            outs = out if isinstance(out, tuple) else (out,)
            kwargs["out"] = tuple(self._operand(o) for o in outs)
        result = method(*(self._operand(x) for x in inputs), **kwargs)
        if out is not None:
            return outs[0] if len(outs) == 1 else outs
        return _to_device(result)

    def __call__(self, *inputs, out=None, **kwargs):
        return self._run(self.ufunc, inputs, out, kwargs)

    def reduce(self, array, *args, out=None, **kwargs):
        return self._run(self.ufunc.reduce, (array, *args), out, kwargs)

    def accumulate(self, array, *args, out=None, **kwargs):
        return self._run(self.ufunc.accumulate, (array, *args), out, kwargs)

    def reduceat(self, array, indices, *args, out=None, **kwargs):
        return self._run(self.ufunc.reduceat, (array, indices, *args), out, kwargs)

    def outer(self, a, b, out=None, **kwargs):
        return self._run(self.ufunc.outer, (a, b), out, kwargs)

    def at(self, a, indices, b=None) -> None:
        """a[indices] op= b in place, as ``a[indices] = ...`` takes its key and values."""
        if not isinstance(a, ndarray):
            raise _unsupported(a)
        if self.__name__ == "add" and a.dtype not in _SCATTER_ADD_DTYPES:
            raise TypeError(
                "scatter_add only supports int32, float16, float32, float64, uint32, "
                "uint64, as data type"
            )  # _routines_indexing.pyx _scatter_op_single
        indices = _index(indices, a.shape)
        if isinstance(b, np.ndarray) and b.shape != () and not _is_advanced(indices):
            raise _unsupported(b)
        args = () if b is None else (b._buffer if isinstance(b, ndarray) else b,)
        self.ufunc.at(a._buffer, indices, *args)


# --- functions that differ from "device arrays in, device arrays out" ----------------------------
def asarray(a, dtype=None, order=None) -> ndarray:
    """Host data is copied to the device; a device array of the same dtype is returned as is."""
    if isinstance(a, ndarray) and (dtype is None or np.dtype(dtype) == a.dtype):
        return a
    return ndarray(np.array(_host_data(a), dtype=dtype, order=order or "K"))


def array(obj, dtype=None, copy=True, order="K") -> ndarray:
    if isinstance(obj, ndarray) and not copy:
        return asarray(obj, dtype)
    return ndarray(np.array(_host_data(obj), dtype=dtype, order=order))


def asnumpy(a) -> np.ndarray:
    return a.get() if isinstance(a, ndarray) else np.asarray(a)


def ascontiguousarray(a, dtype=None) -> ndarray:
    """Device arrays only: ``cpdef _ndarray_base ascontiguousarray(_ndarray_base a, ...)``."""
    if not isinstance(a, ndarray):
        raise TypeError(f"Argument 'a' has incorrect type (expected cupy.ndarray, got {type(a)})")
    buffer = np.ascontiguousarray(a._buffer, dtype=dtype)
    return a if buffer is a._buffer else ndarray(buffer)


def _join(func):
    """concatenate/stack take device arrays only (_routines_manipulation.pyx concatenate_method)."""

    @functools.wraps(func)
    def join(arrays, *args, **kwargs):
        if not all(isinstance(a, ndarray) for a in arrays):
            raise TypeError("Only cupy arrays can be concatenated")
        return _to_device(func([a._buffer for a in arrays], *args, **_operands(kwargs)))

    return join


def _like(func):
    """zeros_like and friends read only shape and dtype, so CuPy takes a host array as the model
    (cupy/_creation/basic.py _new_like_order_and_strides); the result is on the device."""

    @functools.wraps(func)
    def like(a, *args, **kwargs):
        model = a._buffer if isinstance(a, ndarray) else a
        return _to_device(func(model, *_operands(args), **_operands(kwargs)))

    return like


def take(a, indices, axis=None, out=None) -> ndarray:
    return a.take(indices, axis=axis, out=out)


def copyto(dst, src, casting="same_kind", where=True) -> None:
    """A host source must be one value (cupy/_manipulation/basic.py copyto)."""
    if isinstance(src, np.ndarray):
        if src.size != 1:
            raise ValueError("non-scalar numpy.ndarray cannot be used for copyto")
        src = src.item()
    np.copyto(_operands(dst), _operands(src), casting=casting, where=_operands(where))


def get_array_module(*args) -> types.ModuleType:
    return cupy if any(isinstance(a, ndarray) for a in args) else np


def _function(func):
    """A NumPy function on the device: device arrays in (host arrays refused), device arrays out."""

    @functools.wraps(func)
    def call(*args, **kwargs):
        return _to_device(func(*_operands(args), **_operands(kwargs)))

    return call


# --- kernels: RawModule compiled by the CPU emulator ---------------------------------------------
class RawModule:
    """``cupy.RawModule(code=..., options=(...))``: the code built by the CPU emulator, with the
    ``-I`` folders of ``options`` as its include path."""

    def __init__(self, code: str, options: tuple = ()) -> None:
        include_dirs = [option[2:] for option in options if option.startswith("-I")]
        self.module = EmulatedModule("raw_module.cu", code=code, include_dirs=include_dirs)

    def get_function(self, name: str) -> RawKernel:
        return RawKernel(self.module.get_function(name))


class RawKernel:
    """``kernel(grid, block, args, shared_mem=0)`` on device arrays and scalars only: a host
    array is refused as CuPy's launcher refuses it (cupy/cuda/function.pyx ``_pointer``)."""

    def __init__(self, emulated: Any) -> None:
        self.emulated = emulated

    def __call__(self, grid: tuple, block: tuple, args: tuple, shared_mem: int = 0) -> None:
        if any(isinstance(a, np.ndarray) for a in args):
            raise _unsupported(next(a for a in args if isinstance(a, np.ndarray)))
        buffers = tuple(a._buffer if isinstance(a, ndarray) else a for a in args)
        self.emulated(grid, block, buffers, shared_mem)


# --- cupy.cuda: one device that is always idle -------------------------------------------------
class Device:
    def __init__(self, device: int = 0) -> None:
        self.id = device

    def synchronize(self) -> None:
        """Emulated kernels have finished when their launch returns."""


class Event:
    """A CUDA event stamped by the host clock (the emulator runs kernels synchronously)."""

    def record(self, stream: Any = None) -> None:
        self.time = time.perf_counter()

    def synchronize(self) -> None:
        """Nothing is ever pending."""


def _build_cuda() -> types.ModuleType:
    cuda = types.ModuleType("cupy.cuda")
    cuda.runtime = types.SimpleNamespace(
        getDeviceCount=lambda: 1,
        getDeviceProperties=lambda device: {"name": b"fake CuPy (CPU emulator)"},
    )
    cuda.Device, cuda.Event = Device, Event
    cuda.get_current_stream = lambda: Device()  # a stream that only needs synchronize()
    cuda.get_elapsed_time = lambda start, end: 1000 * (end.time - start.time)
    return cuda


# --- the namespace ---------------------------------------------------------------------------------
# What minift calls through ``xp.`` (grep), and what NumPy functions on device arrays may reach.
_UFUNCS = _words("""add subtract multiply divide true_divide floor_divide remainder mod power
negative positive absolute sign exp exp2 expm1 log log2 log10 log1p sqrt square reciprocal sin cos
tan sinh cosh tanh arcsin arccos arctan arctan2 hypot maximum minimum fmax fmin equal not_equal
less less_equal greater greater_equal logical_and logical_or logical_xor logical_not isnan isinf
isfinite signbit copysign bitwise_and bitwise_or bitwise_xor invert left_shift right_shift floor
ceil trunc rint matmul""")
_FUNCTIONS = _words("""where zeros ones empty full arange eye tri tril triu linspace broadcast_to
reshape transpose swapaxes moveaxis expand_dims squeeze ravel repeat tile pad split array_split
asfortranarray
sum mean var std max min amax amin prod cumsum cumprod argmax argmin sort argsort partition
argpartition flatnonzero nonzero count_nonzero bincount unique searchsorted clip round around
einsum dot tensordot outer diag allclose isclose array_equal any all take_along_axis atleast_1d
atleast_2d""")
_LIKE = _words("zeros_like ones_like empty_like full_like")
_JOIN = _words("concatenate stack vstack hstack")
_SHARED = _words("""nan inf pi e newaxis float16 float32 float64 int8 int16 int32 int64 uint8
uint16 uint32 uint64 bool_ intp complex64 complex128 dtype finfo iinfo result_type can_cast
promote_types issubdtype integer floating number generic isscalar""")


def _build() -> types.ModuleType:
    module = types.ModuleType("cupy")
    module.__version__ = VERSION
    for name in _SHARED:
        setattr(module, name, getattr(np, name))
    for name in _UFUNCS:
        setattr(module, name, _Ufunc(getattr(np, name)))
    for name in _FUNCTIONS:
        setattr(module, name, _function(getattr(np, name)))
    for name in _LIKE:
        setattr(module, name, _like(getattr(np, name)))
    for name in _JOIN:
        setattr(module, name, _join(getattr(np, name)))
    for func in (asarray, array, asnumpy, ascontiguousarray, take, copyto, get_array_module):
        setattr(module, func.__name__, func)
    module.abs = module.absolute
    module.ndarray, module.RawModule, module.RawKernel = ndarray, RawModule, RawKernel
    module.cuda = _build_cuda()
    module.linalg = types.SimpleNamespace(norm=_function(np.linalg.norm))
    strides = types.SimpleNamespace(as_strided=_function(np.lib.stride_tricks.as_strided))
    module.lib = types.SimpleNamespace(stride_tricks=strides)
    return module


cupy = _build()
