"""Shape ops: they move entries around, so their gradients move them back.

Views (reshape, permute, expand, split) cost no copy forward, and their backward applies the
inverse move. Joins (cat, stack) copy forward and slice backward. Indexing, gathers and
masks are in ``indexing.py``.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

from minift.autograd import Function
from minift.functional.basic import check_axis
from minift.tensor import Tensor


# --- views ------------------------------------------------------------------------------------
class Reshape(Function):
    """y = x viewed with a new shape;  dx = dy viewed with x's shape."""

    @staticmethod
    def forward(ctx, x, shape):
        ctx.shape = x.shape
        return x.reshape(shape)

    @staticmethod
    def backward(ctx, g):
        return g.reshape(ctx.shape)


class Permute(Function):
    """y = x with axes reordered by ``dims``;  dx = dy with the inverse order."""

    @staticmethod
    def forward(ctx, x, dims):
        ctx.dims = dims
        return x.transpose(dims)

    @staticmethod
    def backward(ctx, g):
        inverse = [0] * len(ctx.dims)
        for i, d in enumerate(ctx.dims):
            inverse[d] = i
        return g.transpose(inverse)


class Expand(Function):
    """y = x broadcast to ``shape`` (a view, no copy);  dx = dy summed over the copies.

    The sum is the engine's ``unbroadcast``, the same one every broadcasting op relies on.
    """

    @staticmethod
    def forward(ctx, x, shape):
        return ctx.backend.xp.broadcast_to(x, shape)

    @staticmethod
    def backward(ctx, g):
        return g


# --- joining and splitting --------------------------------------------------------------------
class Cat(Function):
    """y = [x1, x2, ...] joined along ``axis``;  dx_i = the matching slice of dy (a view)."""

    @staticmethod
    def forward(ctx, *arrays, axis):
        ctx.axis = axis
        ctx.sizes = [a.shape[axis] for a in arrays]
        return ctx.backend.xp.concatenate(arrays, axis=axis)

    @staticmethod
    def backward(ctx, g):
        lead, grads, start = (slice(None),) * ctx.axis, [], 0
        for size, needed in zip(ctx.sizes, ctx.needs_input_grad):
            grads.append(g[lead + (slice(start, start + size),)] if needed else None)
            start += size
        return tuple(grads)


class Stack(Function):
    """y = [x1, x2, ...] along a new axis;  dx_i = dy[..., i, ...] (a view)."""

    @staticmethod
    def forward(ctx, *arrays, axis):
        ctx.axis = axis
        return ctx.backend.xp.stack(arrays, axis=axis)

    @staticmethod
    def backward(ctx, g):
        lead = (slice(None),) * ctx.axis
        needs = ctx.needs_input_grad
        return tuple(g[lead + (i,)] if needed else None for i, needed in enumerate(needs))


class _SharedGrad:
    """The one gradient buffer that all pieces of one ``split`` write into."""

    __slots__ = ("buffer",)

    def __init__(self) -> None:
        self.buffer = None


class SplitHub(Function):
    """h = x, the common parent of one split's pieces;  dx = dh, the buffer they filled.

    Why a hub: had each piece its own backward returning a zero-padded full-size gradient,
    splitting qkv (B, T, 3C) in three would allocate three (B, T, 3C) arrays and add them.
    Instead the first piece to run backward allocates one buffer and hands it to h; the
    others write their slice into the same buffer. h's only consumers are the pieces, so the
    engine reaches h only after all of them, and then passes the buffer on unchanged.
    """

    @staticmethod
    def forward(ctx, x, shared):
        ctx.shared = shared
        return x

    @staticmethod
    def backward(ctx, g):
        ctx.shared.buffer = None  # the next backward pass starts a fresh buffer
        return g


class SplitPiece(Function):
    """y = h[key] (a view of one piece);  dh[key] = dy, written into the shared buffer."""

    @staticmethod
    def forward(ctx, h, key, shared):
        ctx.key, ctx.shared, ctx.shape, ctx.dtype = key, shared, h.shape, h.dtype
        return h[key]

    @staticmethod
    def backward(ctx, g):
        shared = ctx.shared
        first = shared.buffer is None
        if first:  # zeros: pieces that no loss depends on never write their part
            shared.buffer = ctx.backend.xp.zeros(ctx.shape, dtype=ctx.dtype)
        shared.buffer[ctx.key] = g
        return shared.buffer if first else None


# --- indexing ---------------------------------------------------------------------------------

def reshape(x: Tensor, shape) -> Tensor:
    shape = tuple(shape)
    if shape == x.shape:
        return x
    return Reshape.apply(x, shape=shape)


def permute(x: Tensor, dims) -> Tensor:
    dims = tuple(check_axis(d, x.ndim, "permute") for d in dims)
    if sorted(dims) != list(range(x.ndim)):
        raise ValueError(f"permute: {dims} is not a permutation of the {x.ndim} axes")
    return Permute.apply(x, dims=dims)


def transpose(x: Tensor, dim0: int, dim1: int) -> Tensor:
    """Swap two axes (``x.transpose(-1, -2)`` for a batched matrix transpose)."""
    dims = list(range(x.ndim))
    dims[dim0], dims[dim1] = dims[dim1], dims[dim0]
    return Permute.apply(x, dims=tuple(dims))


def expand(x: Tensor, shape) -> Tensor:
    """Broadcast x to ``shape`` without copying; -1 keeps an axis's size (PyTorch's expand)."""
    shape = tuple(shape)
    lead = len(shape) - x.ndim
    if lead < 0:
        raise ValueError(f"expand: shape {shape} has fewer axes than the tensor {x.shape}")
    target = []
    for i, size in enumerate(shape):
        old = x.shape[i - lead] if i >= lead else None
        if size == -1:
            if old is None:
                raise ValueError(f"expand: -1 is not allowed for the new leading axis {i} "
                                 f"in {shape}")
            size = old
        if old is not None and old not in (1, size):
            raise ValueError(f"expand: axis {i - lead} of size {old} cannot expand to {size} "
                             f"(tensor {x.shape}, shape {shape}); only size-1 axes expand")
        target.append(size)
    target = tuple(target)
    return x if target == x.shape else Expand.apply(x, shape=target)


def unsqueeze(x: Tensor, axis: int) -> Tensor:
    """Insert a size-1 axis at ``axis`` (-1 appends one at the end)."""
    axis = check_axis(axis, x.ndim + 1, "unsqueeze")
    return reshape(x, x.shape[:axis] + (1,) + x.shape[axis:])


def squeeze(x: Tensor, axis: int | Sequence[int] | None = None) -> Tensor:
    """Drop size-1 axes: all of them, or those in ``axis`` (others are kept, as PyTorch does)."""
    if axis is None:
        axes = {i for i, s in enumerate(x.shape) if s == 1}
    else:
        listed = axis if isinstance(axis, (tuple, list)) else (axis,)
        axes = {check_axis(a, x.ndim, "squeeze") for a in listed}
        axes = {a for a in axes if x.shape[a] == 1}
    return reshape(x, tuple(s for i, s in enumerate(x.shape) if i not in axes))


def flatten(x: Tensor, start_axis: int = 0, end_axis: int = -1) -> Tensor:
    """Merge axes start_axis..end_axis (inclusive) into one; a scalar becomes shape (1,)."""
    if x.ndim == 0:
        return reshape(x, (1,))
    start, end = check_axis(start_axis, x.ndim, "flatten"), check_axis(end_axis, x.ndim, "flatten")
    if start > end:
        raise ValueError(f"flatten: start_axis {start_axis} comes after end_axis {end_axis}")
    merged = 1
    for s in x.shape[start:end + 1]:
        merged *= s
    return reshape(x, x.shape[:start] + (merged,) + x.shape[end + 1:])


# --- the functional API: joining and splitting ------------------------------------------------
def _check_joinable(tensors: Sequence[Tensor], op: str) -> None:
    if not tensors:
        raise ValueError(f"{op}: expected a non-empty list of tensors")
    for t in tensors:
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: expected Tensors, got {type(t).__name__}")


def cat(tensors: Sequence[Tensor], axis: int = 0) -> Tensor:
    """Join tensors along an existing axis; all other axes must match."""
    _check_joinable(tensors, "cat")
    first = tensors[0].shape
    axis = check_axis(axis, len(first), "cat")
    for t in tensors[1:]:
        others = [i for i in range(len(first)) if i != axis]
        if t.ndim != len(first) or any(t.shape[i] != first[i] for i in others):
            raise ValueError(f"cat: shapes {first} and {t.shape} differ outside axis {axis}")
    return Cat.apply(*tensors, axis=axis)


concatenate = cat


def stack(tensors: Sequence[Tensor], axis: int = 0) -> Tensor:
    """Join same-shaped tensors along a new axis."""
    _check_joinable(tensors, "stack")
    first = tensors[0].shape
    for t in tensors[1:]:
        if t.shape != first:
            raise ValueError(f"stack: all tensors need the same shape, got {first} and {t.shape}")
    return Stack.apply(*tensors, axis=check_axis(axis, len(first) + 1, "stack"))


def split(x: Tensor, split_size_or_sections: int | Sequence[int], axis: int = 0) -> tuple:
    """Cut x along ``axis`` into views: pieces of one size (the last may be smaller), or the
    listed sizes, which must add up to the axis length (PyTorch's ``torch.split``).

    ``q, k, v = qkv.split(C, axis=-1)`` costs no copy forward and one buffer backward.
    """
    axis = check_axis(axis, x.ndim, "split")
    length = x.shape[axis]
    if isinstance(split_size_or_sections, numbers.Integral):
        size = int(split_size_or_sections)
        if size <= 0:
            raise ValueError(f"split: split size must be positive, got {size}")
        sizes = [min(size, length - start) for start in range(0, length, size)] or [0]
    else:
        sizes = [int(s) for s in split_size_or_sections]
        if any(s < 0 for s in sizes) or sum(sizes) != length:
            raise ValueError(f"split: sections {sizes} must be non-negative and sum to the "
                             f"length {length} of axis {axis} (tensor {x.shape})")
    shared = _SharedGrad()
    hub = SplitHub.apply(x, shared=shared)
    pieces, start, lead = [], 0, (slice(None),) * axis
    for size in sizes:
        key = lead + (slice(start, start + size),)
        pieces.append(SplitPiece.apply(hub, key=key, shared=shared))
        start += size
    return tuple(pieces)


# --- the functional API: indexing -------------------------------------------------------------
