"""Indexing, gathers and masks: forward reads entries, backward scatter-ADDS into them.

An entry read twice receives both gradients: dx[i] = sum over the outputs y[k] = x[i] of
dy[k]. Basic slices and boolean masks never repeat an entry, so their backward is one
assignment into zeros; integer indices (fancy indexing, gather, embedding) need the add.
"""

from __future__ import annotations

import numbers
from typing import Any

from minift.autograd import Function
from minift.functional.basic import as_operand, check_axis
from minift.tensor import Tensor


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
    # (measured in docs/ops.md: 3.5x faster than add.at when ids repeat, equal when few do).
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
    """y[..., :] = weight[ids[...], :];  dweight[v] = sum of dy over positions with id v.

    The ``padding_idx`` row, if given, gets no gradient (as in PyTorch): it is a fixed
    "nothing here" vector that the optimizer must never move.
    """

    @staticmethod
    def forward(ctx, ids, weight, padding_idx=None):
        ctx.save_for_backward(ids)
        ctx.num_rows, ctx.padding_idx = weight.shape[0], padding_idx
        return ctx.backend.xp.take(weight, ids, axis=0)

    @staticmethod
    def backward(ctx, g):
        (ids,) = ctx.saved
        rows = g.reshape(ids.size, g.shape[-1])  # (B*T, d)
        gw = scatter_add_rows(ctx.backend, ids.reshape(-1), rows, ctx.num_rows)
        if ctx.padding_idx is not None:
            gw[ctx.padding_idx] = 0
        return None, gw


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


def _check_in_bounds(k: Any, shape: tuple, axis: int, op: str) -> None:
    """Integer indices must lie in [-size, size) of their axis. NumPy raises on its own, but
    CuPy (like any GPU gather) wraps an out-of-range index silently, so minift checks first."""
    size = shape[axis]
    if k.size and (int(k.min()) < -size or int(k.max()) >= size):
        raise IndexError(f"{op}: indices must lie in [{-size}, {size}) for axis {axis} of tensor "
                         f"shape {shape}, got values from {int(k.min())} to {int(k.max())}")


def _check_fancy_bounds(items: tuple, shape: tuple) -> None:
    """Each integer index array against the size of the axis it indexes."""
    consumed = sum(k.ndim if not _is_basic(k) and k.dtype.kind == "b" else 1
                   for k in items if k is not None and k is not Ellipsis)
    axis = 0
    for k in items:
        if k is Ellipsis:
            axis += len(shape) - consumed
        elif k is None:
            continue
        elif _is_basic(k) or k.dtype.kind != "b":
            if not _is_basic(k) and axis < len(shape):
                _check_in_bounds(k, shape, axis, "index")
            axis += 1
        else:
            axis += k.ndim


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
    _check_fancy_bounds(items, x.shape)
    try:
        return Index.apply(x, key=items, kind=kind)
    except IndexError as err:
        raise IndexError(f"index: {err} (tensor shape {x.shape})") from None


def gather(x: Tensor, axis: int, index: Any) -> Tensor:
    """torch.gather: out[i][j] = x[index[i][j]][j] for axis 0, x[i][index[i][j]] for axis 1.

    ``index`` has x's number of axes and is no larger than x along the other axes.
    """
    axis = check_axis(axis, x.ndim, "gather")
    index = _index_array(index, x.backend)
    if index.dtype.kind == "b" or index.ndim != x.ndim:
        raise ValueError(f"gather: index must be an integer array with {x.ndim} axes like x, "
                         f"got {index.dtype} of shape {index.shape}")
    if any(i != axis and n > x.shape[i] for i, n in enumerate(index.shape)):
        raise ValueError(f"gather: index {index.shape} is larger than x {x.shape} "
                         f"outside axis {axis}")
    _check_in_bounds(index, x.shape, axis, "gather")
    try:
        return Gather.apply(x, index, axis=axis)
    except IndexError as err:
        raise IndexError(f"gather: {err} (tensor shape {x.shape}, axis {axis})") from None


def embedding(indices: Any, weight: Tensor, padding_idx: int | None = None) -> Tensor:
    """Rows of ``weight`` (V, d) picked by integer ``indices`` (...,) -> (..., d).

    ``padding_idx``: a row that is looked up as usual but receives no gradient.
    """
    ids = _index_array(indices, weight.backend)
    if ids.dtype.kind == "b" or weight.ndim != 2:
        raise ValueError(f"embedding: needs integer indices and a (V, d) weight, got indices of "
                         f"{ids.dtype} and weight {weight.shape}")
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= weight.shape[0]):
        raise IndexError(f"embedding: ids must lie in [0, {weight.shape[0]}), got values from "
                         f"{int(ids.min())} to {int(ids.max())}")
    if padding_idx is not None:
        padding_idx = check_axis(padding_idx, weight.shape[0], "embedding padding_idx")
    return Embedding.apply(ids, weight, padding_idx=padding_idx)


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
