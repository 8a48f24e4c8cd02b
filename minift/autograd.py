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

        arrays, needs, backend = [], [], None
        for x in inputs:
            if isinstance(x, Tensor):
                arrays.append(x.data)
                needs.append(x.requires_grad)
                backend = backend or x.backend
            else:
                arrays.append(x)
                needs.append(False)
        if backend is None:
            backend = backend_of(next(a for a in arrays if a is not None))
        records = _grad_enabled and any(needs)
        ctx = Context(tuple(needs), records, backend)
        out = cls.forward(ctx, *arrays, **params)
        if not records:
            return Tensor._wrap(out, backend)
        ctx.fn = cls
        ctx.parents = inputs
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


def _reverse_topological_order(root) -> list:
    """Tensors that lead to ``root`` and need gradients, outputs before inputs (no recursion)."""
    from minift.tensor import Tensor

    order, visited, stack = [], set(), [(root, False)]
    while stack:
        tensor, children_done = stack.pop()
        if children_done:
            order.append(tensor)
            continue
        if id(tensor) in visited:
            continue
        visited.add(id(tensor))
        stack.append((tensor, True))
        if tensor._ctx is not None:
            for parent in tensor._ctx.parents:
                if isinstance(parent, Tensor) and parent.requires_grad and id(parent) not in visited:
                    stack.append((parent, False))
    order.reverse()
    return order


def backward(root, grad: Any = None, retain_graph: bool = False) -> None:
    """Accumulate d(root)/d(leaf) into ``leaf.grad`` for every leaf that requires a gradient.

    Args:
        root: the Tensor to differentiate, usually a scalar loss.
        grad: dL/d(root) with root's shape; may be omitted only when root has one element.
        retain_graph: keep saved arrays so that backward can run through the graph again.
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

    grads = {id(root): grad}
    for tensor in _reverse_topological_order(root):
        g = grads.pop(id(tensor), None)
        if g is None:
            continue
        ctx = tensor._ctx
        if ctx is None:  # a leaf: accumulate, never in place, since g may alias other gradients
            tensor.grad = Tensor._wrap(g if tensor.grad is None else tensor.grad.data + g, tensor.backend)
            continue
        if ctx.saved is None:
            raise RuntimeError(
                "trying to backward through the graph a second time (its saved arrays were "
                "freed by the first backward); pass retain_graph=True to the first call"
            )
        ctx.retain_graph = retain_graph
        input_grads = ctx.fn.backward(ctx, g)
        if not isinstance(input_grads, tuple):
            input_grads = (input_grads,)
        for parent, pg in zip(ctx.parents, input_grads):
            if pg is None or not isinstance(parent, Tensor) or not parent.requires_grad:
                continue
            pg = unbroadcast(pg, parent.data.shape)
            if pg.dtype != parent.data.dtype:
                pg = pg.astype(parent.data.dtype)
            key = id(parent)
            grads[key] = pg if key not in grads else grads[key] + pg
        if not retain_graph:
            ctx.saved = None
