"""Finite-difference gradient checking: is every ``backward`` the derivative of its ``forward``?

For a random cotangent v (fixed seed), the analytic gradient of the scalar L = <v, f(x)> comes
from ``backward``; the numeric one from central differences, one entry at a time:

    dL/dx_i ~ (L(x + eps e_i) - L(x - eps e_i)) / (2 eps)        error O(eps^2)

In float64 with eps = 1e-6 the two agree to about 1e-9 for smooth ops, so any real mistake
in a backward shows. Every entry is checked for small inputs; a fixed-seed sample of
``max_entries`` for large ones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from minift.autograd import no_grad
from minift.tensor import Tensor


class GradcheckError(AssertionError):
    """Raised by ``gradcheck`` with the worst entry and both gradients."""


@dataclass
class GradcheckReport:
    """The outcome of comparing analytic and numeric gradients."""

    max_abs_error: float
    max_rel_error: float
    worst: str  # which input and entry came closest to (or past) the tolerance
    passed: bool
    entries_checked: int


def _scalar_objective(fn: Callable, inputs: Sequence[Tensor], cotangent) -> float:
    with no_grad():
        out = fn(*inputs)
    return float((out.backend.to_numpy(out.data).astype(np.float64) * cotangent).sum())


def gradcheck_report(
    fn: Callable[..., Tensor], inputs: Sequence[Tensor], eps: float = 1e-6, atol: float = 1e-5,
    rtol: float = 1e-4, max_entries: int = 512, seed: int = 0,
) -> GradcheckReport:
    """Compare ``backward`` with central differences for every float input needing a gradient."""
    checked = [t for t in inputs if isinstance(t, Tensor) and t.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input requires a gradient")
    for t in checked:
        if t.dtype != np.float64:
            raise ValueError(f"gradcheck needs float64 inputs (float32 rounding swamps eps), got {t.dtype}")
        t.data = t.data.copy()  # our own contiguous buffer, safe to perturb in place
        t.grad = None
    rng = np.random.default_rng(seed)
    out = fn(*inputs)
    cotangent = rng.standard_normal(out.shape)
    out.backward(out.backend.asarray(cotangent, dtype=out.dtype))

    max_abs = max_rel = 0.0
    worst, worst_excess, passed, count = "", -np.inf, True, 0
    for k, t in enumerate(checked):
        analytic = np.zeros(t.shape) if t.grad is None else t.grad.numpy().astype(np.float64)
        flat = t.data.reshape(-1)  # a view: writing it perturbs the input
        n = flat.size
        positions = range(n) if n <= max_entries else np.sort(rng.choice(n, max_entries, replace=False))
        for i in positions:
            i = int(i)
            original = flat[i].item()
            flat[i] = original + eps
            plus = _scalar_objective(fn, inputs, cotangent)
            flat[i] = original - eps
            minus = _scalar_objective(fn, inputs, cotangent)
            flat[i] = original
            numeric = (plus - minus) / (2 * eps)
            exact = analytic.reshape(-1)[i]
            error = abs(exact - numeric)
            excess = error - (atol + rtol * abs(numeric))
            max_abs = max(max_abs, error)
            max_rel = max(max_rel, error / max(abs(numeric), 1e-12) if error > 0 else 0.0)
            count += 1
            if excess > worst_excess:
                index = np.unravel_index(i, t.shape) if t.shape else ()
                worst_excess = excess
                worst = f"input {k} {tuple(int(j) for j in index)}: analytic {exact:.10g}, numeric {numeric:.10g}"
            passed = passed and excess <= 0
    return GradcheckReport(max_abs, max_rel, worst, passed, count)


def gradcheck(
    fn: Callable[..., Tensor], inputs: Sequence[Tensor], eps: float = 1e-6, atol: float = 1e-5,
    rtol: float = 1e-4, max_entries: int = 512, seed: int = 0,
) -> bool:
    """Return True when ``fn``'s backward matches finite differences; raise otherwise.

    Args:
        fn: maps the input tensors to one output tensor.
        inputs: tensors (float64 where ``requires_grad``) and any other arguments of ``fn``.
        eps, atol, rtol: step and tolerance; an entry passes if |a - n| <= atol + rtol |n|.
        max_entries: inputs larger than this are checked on a fixed-seed sample of entries.

    Raises:
        GradcheckError: naming the worst entry with its analytic and numeric gradient.
    """
    report = gradcheck_report(fn, inputs, eps, atol, rtol, max_entries, seed)
    if not report.passed:
        raise GradcheckError(
            f"gradient check failed: {report.worst} (max abs error {report.max_abs_error:.3g}, "
            f"max rel error {report.max_rel_error:.3g}, atol={atol}, rtol={rtol})"
        )
    return True
