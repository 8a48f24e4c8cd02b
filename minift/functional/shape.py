"""Shape and indexing ops: they move entries around, so their gradients move them back.

Views (reshape, permute, expand, basic slicing, split) cost no copy forward, and their
backward applies the inverse move. Gathers (fancy indexing, gather, embedding) copy forward
and scatter-ADD backward: an entry read twice receives both gradients, dx[i] = sum over the
outputs y[k] = x[i] of dy[k].
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

from minift.autograd import Function
from minift.functional.basic import as_operand
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
def scatter_add_rows(backend, ids: Any, values: Any, num_rows: int) -> Any:
    """out[ids[k]] += values[k] for every k into zeros (num_rows, ...); repeated ids add up.

    Args:
        ids: (n,) non-negative integer array.
        values: (n, ...) array; the result has shape (num_rows, ...) and values' dtype.
    """
    xp = backend.xp
    out = xp.zeros((num_rows,) + values.shape[1:], dtype=values.dtype)
    if ids.size == 0:
        return out
    if backend.name != "numpy":  # GPUs scatter with atomic adds
        xp.add.at(out, ids, values)
        return out
    # NumPy's add.at goes one element at a time. Sorting the ids makes each id's rows one
    # contiguous run: reduceat sums the runs, and one plain assignment writes the unique ids
    # (1.5-4x faster than add.at for a (B*T, d) gradient into a (V, d) table).
    order = xp.argsort(ids)
    sorted_ids = ids[order]
    starts = xp.flatnonzero(xp.concatenate(([True], sorted_ids[1:] != sorted_ids[:-1])))
    out[sorted_ids[starts]] = xp.add.reduceat(values[order], starts, axis=0)
    return out


class Index(Function):
    """y = x[key];  dx = zeros with dy scattered back to where each y entry came from.

    Basic keys (ints, slices, None, ...) select each entry at most once and give a view, so
    backward is one assignment. Fancy keys may repeat an index, whose gradients must add up:
    ``add.at`` (or sorted segment sums for a single integer array along axis 0).
    """

    @staticmethod
    def forward(ctx, x, key, kind):
        ctx.key, ctx.kind, ctx.shape, ctx.dtype = key, kind, x.shape, x.dtype
        return x[key]

    @staticmethod
    def backward(ctx, g):
        xp, key = ctx.backend.xp, ctx.key
        if ctx.kind == "rows":  # x[ids]: one integer array picks whole rows
            ids = key[0].reshape(-1)
            ids = xp.where(ids < 0, ids + ctx.shape[0], ids)
            rows = g.reshape((ids.size,) + ctx.shape[1:])
            return scatter_add_rows(ctx.backend, ids, rows, ctx.shape[0])
        gx = xp.zeros(ctx.shape, dtype=ctx.dtype)
        if ctx.kind == "unique":  # basic slices and boolean masks never repeat an entry
            gx[key] = g
        else:
            xp.add.at(gx, key, g)
        return gx


class Gather(Function):
    """y[i][j][k] = x[index[i][j][k]][j][k] (axis 0; likewise for other axes).

    dx[index[i][j][k]][j][k] += dy[i][j][k]: a scatter-add, since an index may repeat.
    """

    @staticmethod
    def forward(ctx, x, index, axis):
        xp = ctx.backend.xp
        # open index arrays: aranges on every other axis, ``index`` on ``axis``
        key = tuple(
            index if d == axis else
            xp.arange(n).reshape([n if e == d else 1 for e in range(index.ndim)])
            for d, n in enumerate(index.shape)
        )
        ctx.key, ctx.shape, ctx.axis = key, x.shape, axis
        return x[key]

    @staticmethod
    def backward(ctx, g):
        gx = ctx.backend.xp.zeros(ctx.shape, dtype=g.dtype)
        if ctx.key[ctx.axis].shape[ctx.axis] == 1:  # one pick per row: nothing can repeat
            gx[ctx.key] = g
        else:
            ctx.backend.xp.add.at(gx, ctx.key, g)
        return gx


class Embedding(Function):
    """y[..., :] = weight[ids[...], :];  dweight[v] = sum of dy over positions with id v."""

    @staticmethod
    def forward(ctx, ids, weight):
        ctx.save_for_backward(ids)
        ctx.num_rows = weight.shape[0]
        return ctx.backend.xp.take(weight, ids, axis=0)

    @staticmethod
    def backward(ctx, g):
        (ids,) = ctx.saved
        rows = g.reshape(ids.size, g.shape[-1])  # (B*T, d)
        return None, scatter_add_rows(ctx.backend, ids.reshape(-1), rows, ctx.num_rows)


# --- selecting --------------------------------------------------------------------------------
class Where(Function):
    """y = a where cond else b;  da = dy where cond else 0,  db = dy where not cond else 0."""

    @staticmethod
    def forward(ctx, cond, a, b):
        ctx.save_for_backward(cond)
        return ctx.backend.xp.where(cond, a, b)

    @staticmethod
    def backward(ctx, g):
        (cond,) = ctx.saved
        xp, zero = ctx.backend.xp, ctx.backend.xp.zeros((), dtype=g.dtype)
        _, need_a, need_b = ctx.needs_input_grad
        ga = xp.where(cond, g, zero) if need_a else None
        gb = xp.where(cond, zero, g) if need_b else None
        return None, ga, gb


class MaskedFill(Function):
    """y = value where mask else x;  dx = 0 where mask else dy."""

    @staticmethod
    def forward(ctx, x, mask, value):
        ctx.save_for_backward(mask)
        xp = ctx.backend.xp
        return xp.where(mask, xp.asarray(value, dtype=x.dtype), x)

    @staticmethod
    def backward(ctx, g):
        (mask,) = ctx.saved
        return ctx.backend.xp.where(mask, ctx.backend.xp.zeros((), dtype=g.dtype), g), None


# --- the functional API: views ----------------------------------------------------------------
def _axis(axis: int, ndim: int, op: str) -> int:
    if not -ndim <= axis < ndim:
        raise IndexError(f"{op}: axis {axis} is out of range for a tensor with {ndim} axes")
    return axis % ndim


def reshape(x: Tensor, shape) -> Tensor:
    shape = tuple(shape)
    if shape == x.shape:
        return x
    return Reshape.apply(x, shape=shape)


def permute(x: Tensor, dims) -> Tensor:
    dims = tuple(d % x.ndim for d in dims)
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
    axis = _axis(axis, x.ndim + 1, "unsqueeze")
    return reshape(x, x.shape[:axis] + (1,) + x.shape[axis:])


def squeeze(x: Tensor, axis: int | Sequence[int] | None = None) -> Tensor:
    """Drop size-1 axes: all of them, or those in ``axis`` (others are kept, as PyTorch does)."""
    if axis is None:
        axes = {i for i, s in enumerate(x.shape) if s == 1}
    else:
        listed = axis if isinstance(axis, (tuple, list)) else (axis,)
        axes = {_axis(a, x.ndim, "squeeze") for a in listed}
        axes = {a for a in axes if x.shape[a] == 1}
    return reshape(x, tuple(s for i, s in enumerate(x.shape) if i not in axes))


def flatten(x: Tensor, start_axis: int = 0, end_axis: int = -1) -> Tensor:
    """Merge axes start_axis..end_axis (inclusive) into one; a scalar becomes shape (1,)."""
    if x.ndim == 0:
        return reshape(x, (1,))
    start, end = _axis(start_axis, x.ndim, "flatten"), _axis(end_axis, x.ndim, "flatten")
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
    axis = _axis(axis, len(first), "cat")
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
    return Stack.apply(*tensors, axis=_axis(axis, len(first) + 1, "stack"))


def split(x: Tensor, split_size_or_sections: int | Sequence[int], axis: int = 0) -> tuple:
    """Cut x along ``axis`` into views: pieces of one size (the last may be smaller), or the
    listed sizes, which must add up to the axis length (PyTorch's ``torch.split``).

    ``q, k, v = qkv.split(C, axis=-1)`` costs no copy forward and one buffer backward.
    """
    axis = _axis(axis, x.ndim, "split")
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
def _is_basic(k: Any) -> bool:
    return (k is None or k is Ellipsis or isinstance(k, slice)
            or (isinstance(k, numbers.Integral) and not isinstance(k, bool)))


def _index_array(k: Any, backend) -> Any:
    """A fancy index as an integer or boolean array of ``backend``."""
    if isinstance(k, Tensor):
        k = k.data
    elif isinstance(k, (list, tuple)):
        k = backend.xp.asarray(k) if len(k) else backend.xp.zeros(0, dtype="int64")
    elif isinstance(k, bool) or not backend.is_array(k):
        k = backend.asarray(k)
    if k.dtype.kind not in "iub":
        raise IndexError(f"index: indices must be integers or booleans, got an array of {k.dtype}")
    return k


def index(x: Tensor, key: Any) -> Tensor:
    """x[key] with NumPy's rules: ints, slices, None, Ellipsis, and integer or boolean
    arrays, lists or Tensors as fancy indices. Repeated indices accumulate in backward."""
    items = key if isinstance(key, tuple) else (key,)
    items = tuple(k if _is_basic(k) else _index_array(k, x.backend) for k in items)
    fancy = [k for k in items if not _is_basic(k)]
    if all(k.dtype.kind == "b" for k in fancy):  # also true when there is no fancy index
        kind = "unique"
    elif len(items) == 1 and x.ndim > 0:
        kind = "rows"
    else:
        kind = "scatter"
    try:
        return Index.apply(x, key=items, kind=kind)
    except IndexError as err:
        raise IndexError(f"index: {err} (tensor shape {x.shape})") from None


def gather(x: Tensor, axis: int, index: Any) -> Tensor:
    """torch.gather: out[i][j] = x[index[i][j]][j] for axis 0, x[i][index[i][j]] for axis 1.

    ``index`` has x's number of axes and is no larger than x along the other axes.
    """
    axis = _axis(axis, x.ndim, "gather")
    index = _index_array(index, x.backend)
    if index.dtype.kind == "b" or index.ndim != x.ndim:
        raise ValueError(f"gather: index must be an integer array with {x.ndim} axes like x, "
                         f"got {index.dtype} of shape {index.shape}")
    if any(i != axis and n > x.shape[i] for i, n in enumerate(index.shape)):
        raise ValueError(f"gather: index {index.shape} is larger than x {x.shape} "
                         f"outside axis {axis}")
    try:
        return Gather.apply(x, index, axis=axis)
    except IndexError as err:
        raise IndexError(f"gather: {err} (tensor shape {x.shape}, axis {axis})") from None


def embedding(indices: Any, weight: Tensor) -> Tensor:
    """Rows of ``weight`` (V, d) picked by integer ``indices`` (...,) -> (..., d)."""
    ids = _index_array(indices, weight.backend)
    if ids.dtype.kind == "b" or weight.ndim != 2:
        raise ValueError(f"embedding: needs integer indices and a (V, d) weight, got indices of "
                         f"{ids.dtype} and weight {weight.shape}")
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= weight.shape[0]):
        raise IndexError(f"embedding: ids must lie in [0, {weight.shape[0]}), got values from "
                         f"{int(ids.min())} to {int(ids.max())}")
    return Embedding.apply(ids, weight)


def _broadcasts_to(shape: tuple, target: tuple) -> bool:
    if len(shape) > len(target):
        return False
    return all(s in (1, t) for s, t in zip(shape[::-1], target[::-1]))


def _condition(cond: Any, backend, op: str) -> Any:
    cond = cond.data if isinstance(cond, Tensor) else backend.asarray(cond)
    if cond.dtype.kind != "b":
        raise TypeError(f"{op}: the condition must be a boolean array, got {cond.dtype}")
    return cond


def where(cond: Any, a: Any, b: Any) -> Tensor:
    """a where ``cond`` is True, else b; cond, a, b broadcast together; a or b may be a number."""
    if not isinstance(a, Tensor) and not isinstance(b, Tensor):
        raise TypeError("where: at least one of a and b must be a Tensor")
    like = a if isinstance(a, Tensor) else b
    a, b = as_operand(a, like), as_operand(b, like)
    return Where.apply(_condition(cond, like.backend, "where"), a, b)


def masked_fill(x: Tensor, mask: Any, value: float) -> Tensor:
    """x with ``value`` wherever ``mask`` (boolean, broadcastable to x) is True."""
    mask = _condition(mask, x.backend, "masked_fill")
    if not _broadcasts_to(tuple(mask.shape), x.shape):
        raise ValueError(f"masked_fill: mask {tuple(mask.shape)} does not broadcast to x {x.shape}")
    value = value.item() if isinstance(value, Tensor) else value
    return MaskedFill.apply(x, mask, value=value)
