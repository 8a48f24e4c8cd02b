"""Tensor: a backend array, plus what autograd needs (``requires_grad``, ``grad``, history).

A Tensor wraps one array of its backend (a NumPy array, a CuPy array or a meta array) in
``.data``. Arithmetic on Tensors calls the differentiable ops of ``minift.functional``, which
record the graph that ``Tensor.backward`` walks. The default backend (``numpy``) and the
default float dtype (``float32``) live here; gradient checks use ``float64``.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from backends import Backend, backend_of, get_backend, loaded_backends
from minift import autograd

_default_backend: Backend = get_backend("numpy")
_default_dtype = "float32"


def set_backend(name: str | Backend) -> None:
    """Make ``name`` ("numpy", "cuda", "meta") the backend new tensors are created on."""
    global _default_backend
    _default_backend = get_backend(name)


def get_default_backend() -> Backend:
    return _default_backend


@contextlib.contextmanager
def use_backend(name: str | Backend):
    """``with use_backend("cuda"): ...`` creates tensors and modules on that backend."""
    global _default_backend
    previous, _default_backend = _default_backend, get_backend(name)
    try:
        yield _default_backend
    finally:
        _default_backend = previous


def set_default_dtype(dtype: str) -> None:
    """Float dtype for new floating tensors and parameters ("float32" or "float64")."""
    global _default_dtype
    if dtype not in ("float16", "float32", "float64"):
        raise ValueError(f"default dtype must be a float dtype, got {dtype!r}")
    _default_dtype = dtype


def get_default_dtype() -> str:
    return _default_dtype


def manual_seed(seed: int) -> None:
    """Reseed every backend's generator: same seed, same numbers, bit for bit on NumPy."""
    for backend in {id(b): b for b in [_default_backend, *loaded_backends()]}.values():
        backend.seed(seed)


class Tensor:
    """An array with an optional gradient and the history of the op that made it."""

    __array_priority__ = 1000  # numpy scalars on the left defer to Tensor's operators

    def __init__(self, data: Any, requires_grad: bool = False, backend=None, dtype=None) -> None:
        backend = get_backend(backend) if backend is not None else None
        if isinstance(data, Tensor):
            data = data.data
        if backend is None:  # device arrays stay where they are; host data goes to the default
            owner = backend_of(data) if _is_backend_array(data) else None
            backend = owner if owner is not None and owner.name != "numpy" else _default_backend
        self.data = backend.asarray(data, dtype=_infer_dtype(data, dtype, backend))
        self.backend = backend
        self.grad: Tensor | None = None
        self._ctx: autograd.Context | None = None
        self.requires_grad = False
        if requires_grad:
            self.requires_grad_(True)

    @classmethod
    def _wrap(cls, array: Any, backend: Backend | None, ctx: autograd.Context | None = None) -> Tensor:
        """Fast constructor for op outputs: no conversion, the array is taken as is."""
        t = cls.__new__(cls)
        t.data = array
        t.backend = backend or backend_of(array)
        t.grad = None
        t._ctx = ctx
        t.requires_grad = ctx is not None
        return t

    # --- description ------------------------------------------------------------------------
    shape = property(lambda self: tuple(self.data.shape))
    ndim = property(lambda self: self.data.ndim)
    dtype = property(lambda self: self.data.dtype)
    is_leaf = property(lambda self: self._ctx is None)
    T = property(lambda self: self.transpose(-1, -2) if self.ndim >= 2 else self)

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[dim]

    def numel(self) -> int:
        return int(self.data.size)

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        grad = ", requires_grad=True" if self.requires_grad else ""
        body = repr(self.data) if self.backend.name != "cuda" else repr(self.numpy())
        return f"Tensor({body}{grad}, backend={self.backend.name!r})"

    # --- values -----------------------------------------------------------------------------
    def numpy(self):
        """The values as a NumPy array (copied from the device for CUDA)."""
        return self.backend.to_numpy(self.data)

    def item(self) -> float:
        return self.data.item()

    def tolist(self):
        return self.numpy().tolist()

    # --- autograd ---------------------------------------------------------------------------
    def requires_grad_(self, requires_grad: bool = True) -> Tensor:
        if requires_grad and self.data.dtype.kind != "f":
            raise TypeError(f"only floating tensors can require gradients, got {self.data.dtype}")
        if not requires_grad and self._ctx is not None:
            raise RuntimeError("requires_grad_(False) on a non-leaf tensor; use detach()")
        self.requires_grad = requires_grad
        return self

    def detach(self) -> Tensor:
        """The same values, cut from the graph (shares the array)."""
        return Tensor._wrap(self.data, self.backend)

    def backward(self, grad: Any = None, retain_graph: bool = False) -> None:
        autograd.backward(self, grad, retain_graph)

    def zero_grad(self) -> None:
        self.grad = None

    # --- moving -----------------------------------------------------------------------------
    def to(self, backend: str | Backend | None = None, dtype: Any = None) -> Tensor:
        """A copy on another backend and/or with another dtype (gradient history is cut)."""
        target = get_backend(backend) if backend is not None else self.backend
        data = self.data
        if target is not self.backend:
            data = target.asarray(self.backend.to_numpy(data) if self.backend.name == "cuda" else data)
        if dtype is not None:
            data = data.astype(dtype)
        out = Tensor._wrap(data, target)
        out.requires_grad = self.requires_grad and out.data.dtype.kind == "f"
        return out

    def float(self) -> Tensor:
        return self.to(dtype="float32")

    def double(self) -> Tensor:
        return self.to(dtype="float64")


def _is_backend_array(data: Any) -> bool:
    return hasattr(data, "shape") and hasattr(data, "dtype") and not isinstance(data, Tensor)


def _infer_dtype(data: Any, dtype: Any, backend: Backend) -> Any:
    """PyTorch's rule: arrays keep their dtype; Python floats get the default float dtype."""
    if dtype is not None:
        return dtype
    if _is_backend_array(data):
        return None
    probe = np.asarray(data)  # host data (lists, scalars): only its kind matters here
    return _default_dtype if probe.dtype.kind == "f" else None


def tensor(data: Any, requires_grad: bool = False, backend=None, dtype=None) -> Tensor:
    """Create a leaf tensor from a list, scalar or array (``mf.tensor([[1., 2.]])``)."""
    return Tensor(data, requires_grad=requires_grad, backend=backend, dtype=dtype)


def _factory(method: str):
    def create(*shape, dtype=None, requires_grad: bool = False, backend=None) -> Tensor:
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        be = get_backend(backend) if backend is not None else _default_backend
        data = getattr(be, method)(tuple(shape), dtype=dtype or _default_dtype)
        return Tensor._wrap(data, be).requires_grad_(requires_grad)

    create.__name__ = method
    return create


zeros = _factory("zeros")
ones = _factory("ones")
randn = _factory("normal")
rand = _factory("uniform")
empty = _factory("empty")


# --- operators and methods: thin wrappers over minift.functional ---------------------------------
# Resolved at call time (F.name), so this file needs only the package, not each op module.
def _install_methods() -> None:
    from minift import functional as F

    def binary(name, reflected=False):
        if reflected:
            return lambda self, other: getattr(F, name)(other, self)
        return lambda self, other: getattr(F, name)(self, other)

    for op, name in [("add", "add"), ("sub", "sub"), ("mul", "mul"), ("truediv", "div"),
                     ("pow", "pow"), ("matmul", "matmul")]:
        setattr(Tensor, f"__{op}__", binary(name))
        setattr(Tensor, f"__r{op}__", binary(name, reflected=True))

    def compare(op):
        def method(self, other):
            other = other.data if isinstance(other, Tensor) else other
            return Tensor._wrap(getattr(self.data, op)(other), self.backend)

        return method

    for op in ("__lt__", "__le__", "__gt__", "__ge__", "__eq__", "__ne__"):
        setattr(Tensor, op, compare(op))

    def unary(name):
        return lambda self, *args, **kwargs: getattr(F, name)(self, *args, **kwargs)

    for name in ("sum", "mean", "max", "var", "exp", "log", "sqrt", "tanh", "sigmoid", "abs",
                 "relu", "softmax", "log_softmax", "masked_fill", "split", "matmul", "transpose",
                 "flatten", "squeeze", "unsqueeze", "gather"):
        setattr(Tensor, name, unary(name))
    Tensor.__neg__ = unary("neg")
    Tensor.__getitem__ = lambda self, key: F.index(self, key)


def _shape_args(shape: tuple) -> tuple:
    return tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape


def _reshape(self: Tensor, *shape) -> Tensor:
    from minift import functional as F

    return F.reshape(self, _shape_args(shape))


def _permute(self: Tensor, *dims) -> Tensor:
    from minift import functional as F

    return F.permute(self, _shape_args(dims))


def _expand(self: Tensor, *shape) -> Tensor:
    from minift import functional as F

    return F.expand(self, _shape_args(shape))


Tensor.reshape = Tensor.view = _reshape
Tensor.permute = _permute
Tensor.expand = _expand
Tensor.__hash__ = object.__hash__  # == is elementwise, so identity hashing, as in PyTorch
Tensor.__bool__ = lambda self: bool(self.data)
_install_methods()
