"""Reverse-mode automatic differentiation: the chain rule, one node at a time.

Every differentiable op is a ``Function`` with two static methods on raw backend arrays:

    forward(ctx, *arrays, **params) -> array         computes y = f(x1, x2, ...)
    backward(ctx, grad) -> (dL/dx1, dL/dx2, ...)      given dL/dy, returns one gradient
                                                      (or None) per input

``Function.apply`` runs ``forward`` and, when some input needs a gradient, records a
``Context`` on the output tensor that remembers the function and its inputs. ``backward``
then walks that graph from the loss in reverse topological order (with an explicit stack,
never recursion, so a 10,000-op chain is fine), multiplying by each local derivative:

    dL/dx = sum over every use y = f(x) of  dL/dy * dy/dx

Broadcasting is undone here, in one place (``unbroadcast``), so an op's ``backward`` may
return a gradient with its output's broadcast shape.

The graph's nodes are contexts and leaf tensors, never intermediate tensors: a context points
at the contexts that made its inputs, so an intermediate array stays alive only while a
Tensor refers to it or an op saved it (ReLU keeps its 1-byte mask, not its input).
"""

from __future__ import annotations

import contextlib
from typing import Any

from backends import backend_of

_grad_enabled = True


def is_grad_enabled() -> bool:
    return _grad_enabled


@contextlib.contextmanager
def _grad_mode(enabled: bool):
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, enabled
    try:
        yield
    finally:
        _grad_enabled = previous


def no_grad():
    """Context manager (or decorator) in which ops record no graph: inference, optimizer steps."""
    return _grad_mode(False)


def enable_grad():
    """Turn graph recording back on inside a ``no_grad`` block."""
    return _grad_mode(True)


class Context:
    """What a ``Function`` remembers between its forward and its backward."""

    __slots__ = ("__dict__", "backend", "fn", "needs_input_grad", "parents", "records", "saved")

    def __init__(self, needs_input_grad: tuple[bool, ...], records: bool, backend) -> None:
        self.backend = backend  # ops reach xp and the hot operations through it
        self.needs_input_grad = needs_input_grad
        self.records = records  # False under no_grad or when no input needs a gradient
        self.saved: tuple = ()
        self.fn = None
        self.parents: tuple = ()
        # set by backward(): when False, the saved arrays die right after this backward, so
        # an op may reuse one as its gradient buffer instead of allocating a new array
        self.retain_graph = True

    def save_for_backward(self, *arrays: Any) -> None:
        """Keep arrays for ``backward``; a no-op when no graph is being recorded."""
        if self.records:
            self.saved = arrays


class Function:
    """Base class of every differentiable op.

    Subclasses define ``forward(ctx, *arrays, **params) -> array`` and
    ``backward(ctx, grad) -> gradient or tuple of gradients`` as static methods.
    """

    @classmethod
    def apply(cls, *inputs: Any, **params: Any):
        """Run forward on the inputs' arrays and wrap the result in a Tensor with its history.

        Inputs are Tensors, or constants (arrays, None) that never receive a gradient.
        """
        from minift.tensor import Tensor

        arrays, needs, nodes, backend = [], [], [], None
        for x in inputs:
            if isinstance(x, Tensor):
                arrays.append(x.data)
                needs.append(x.requires_grad)
                # the input's node: the context that made it, or the leaf tensor itself
                nodes.append((x._ctx or x) if x.requires_grad else None)
                backend = backend or x.backend
            else:
                arrays.append(x)
                needs.append(False)
                nodes.append(None)
        if backend is None:
            backend = backend_of(next(a for a in arrays if a is not None))
        records = _grad_enabled and any(needs)
        ctx = Context(tuple(needs), records, backend)
        out = cls.forward(ctx, *arrays, **params)
        if not records:
            return Tensor._wrap(out, backend)
        ctx.fn, ctx.parents = cls, tuple(nodes)
        ctx.out_shape, ctx.out_dtype = out.shape, out.dtype
        return Tensor._wrap(out, backend, ctx)


def unbroadcast(grad: Any, shape: tuple) -> Any:
    """Sum ``grad`` down to ``shape``: the adjoint of NumPy broadcasting.

    A broadcast copies x along new leading axes and along axes where x has size 1, so each
    copy's gradient flows back to the same x entry and the copies' gradients add up.
    """
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = grad.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, size in enumerate(shape) if size == 1 and grad.shape[i] != 1)
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    return grad.reshape(shape)


def _reverse_topological_order(root: Context) -> list:
    """Graph nodes that lead to ``root``, outputs before inputs (explicit stack, no recursion).

    A node is a Context (an op's output) or a leaf Tensor; leaves have no parents.
    """
    order, visited, stack = [], set(), [(root, False)]
    while stack:
        node, parents_done = stack.pop()
        if parents_done:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        if isinstance(node, Context):
            stack.extend((p, False) for p in node.parents if p is not None and id(p) not in visited)
    order.reverse()
    return order


def _is_shared_view(array: Any) -> bool:
    """A read-only or broadcast (zero-stride) view, whose entries alias each other or others."""
    return not getattr(array.flags, "writeable", True) or 0 in array.strides


def _shape_dtype(node) -> tuple:
    if isinstance(node, Context):
        return node.out_shape, node.out_dtype
    return node.data.shape, node.data.dtype


def backward(root, grad: Any = None, retain_graph: bool = False) -> None:
    """Accumulate d(root)/d(leaf) into ``leaf.grad`` for every leaf that requires a gradient.

    Args:
        root: the Tensor to differentiate, usually a scalar loss.
        grad: dL/d(root) with root's shape; may be omitted only when root has one element.
        retain_graph: keep the graph and its saved arrays so that backward can run again.
    """
    from minift.tensor import Tensor

    if not root.requires_grad:
        raise RuntimeError("backward() on a tensor that does not require grad and has no graph")
    xp = root.backend.xp
    if grad is None:
        if root.data.size != 1:
            raise RuntimeError(
                f"backward() without a gradient needs a scalar output, got shape {root.shape}; "
                "pass grad= with that shape"
            )
        grad = xp.ones(root.shape, dtype=root.dtype)
    else:
        grad = grad.data if isinstance(grad, Tensor) else xp.asarray(grad, dtype=root.dtype)
        if grad.shape != root.shape:
            raise ValueError(f"backward(): grad shape {grad.shape} != output shape {root.shape}")

    start = root._ctx or root
    grads, given = {id(start): grad}, set()
    for node in _reverse_topological_order(start):
        g = grads.pop(id(node), None)
        if g is None:
            continue
        if isinstance(node, Tensor):  # a leaf: accumulate, never in place
            if id(g) in given or _is_shared_view(g):
                g = g.copy()  # .grad must be writable and this leaf's alone
            given.add(id(g))
            node.grad = Tensor._wrap(g if node.grad is None else node.grad.data + g, node.backend)
            continue
        if node.saved is None:
            raise RuntimeError(
                "trying to backward through the graph a second time (its saved arrays were "
                "freed by the first backward); pass retain_graph=True to the first call"
            )
        node.retain_graph = retain_graph
        input_grads = node.fn.backward(node, g)
        if not isinstance(input_grads, tuple):
            input_grads = (input_grads,)
        for parent, pg in zip(node.parents, input_grads):
            if pg is None or parent is None:
                continue
            shape, dtype = _shape_dtype(parent)
            pg = unbroadcast(pg, shape)
            if pg.dtype != dtype:
                pg = pg.astype(dtype)
            key = id(parent)
            grads[key] = pg if key not in grads else grads[key] + pg
        if not retain_graph:
            node.saved, node.parents = None, ()  # free the saved arrays and the graph
