"""Gradient clipping: bound the step when one batch produces an outsized gradient.

``clip_grad_norm_`` treats all gradients as one long vector g and rescales it to norm at most
``max_norm`` (Pascanu et al., "On the difficulty of training recurrent neural networks", 2013):

    g <- g * min(1, max_norm / (||g||_p + 1e-6))

The direction is kept; only the length shrinks. ``clip_grad_value_`` clamps each entry instead.
Gradients are replaced by new arrays, never changed in place (they may alias other arrays).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from minift.tensor import Tensor


def _with_grads(parameters: Tensor | Iterable[Tensor]) -> list[Tensor]:
    params = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    return [p for p in params if p.grad is not None]


def clip_grad_norm_(parameters: Tensor | Iterable[Tensor], max_norm: float,
                    norm_type: float = 2.0, error_if_nonfinite: bool = False) -> float:
    """Rescale the gradients so that their joint p-norm is at most ``max_norm`` (as PyTorch).

    Args:
        parameters: Tensors whose ``.grad`` is clipped (those without one are skipped).
        max_norm: the largest allowed total norm.
        norm_type: p of the p-norm, ``float("inf")`` for the largest absolute entry.
        error_if_nonfinite: raise when the total norm is nan or inf instead of scaling by it.
    Returns:
        the total norm of the gradients before clipping, as a Python float.
    """
    max_norm, norm_type = float(max_norm), float(norm_type)
    if max_norm < 0:
        raise ValueError(f"max_norm must be >= 0, got {max_norm}")
    if not norm_type > 0:
        raise ValueError(f"norm_type must be > 0 (or inf), got {norm_type}")
    params = _with_grads(parameters)
    if not params:
        return 0.0
    backend = params[0].backend
    if any(p.grad.backend is not backend for p in params):
        raise ValueError("clip_grad_norm_: all gradients must live on one backend")
    xp = backend.xp
    # the norm of the per-tensor norms is the norm of the concatenation, without concatenating
    norms = xp.stack([xp.linalg.norm(p.grad.data.reshape(-1), ord=norm_type) for p in params])
    total = float(xp.linalg.norm(norms, ord=norm_type))
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(
            f"the total norm of order {norm_type} of the gradients is {total}; "
            "pass error_if_nonfinite=False to clip anyway"
        )
    scale = max_norm / (total + 1e-6)
    if scale < 1.0:
        for p in params:
            p.grad = Tensor._wrap(p.grad.data * scale, p.grad.backend)
    return total


def clip_grad_value_(parameters: Tensor | Iterable[Tensor], clip_value: float) -> None:
    """Clamp every gradient entry into ``[-clip_value, clip_value]``."""
    clip_value = float(clip_value)
    if clip_value < 0:
        raise ValueError(f"clip_value must be >= 0, got {clip_value}")
    for p in _with_grads(parameters):
        xp = p.grad.backend.xp
        p.grad = Tensor._wrap(xp.clip(p.grad.data, -clip_value, clip_value), p.grad.backend)
