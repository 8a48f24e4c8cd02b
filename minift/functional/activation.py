"""Activations: relu, gelu (exact and tanh), silu, softmax, log_softmax, dropout.

Each is one fused Function with a hand-written derivative, so a (B, T, 4C) MLP activation
stores one or two arrays for backward instead of every intermediate of a composite.
Exact GELU needs erf, which NumPy lacks: W. J. Cody's rational Chebyshev approximations
(Math. Comp. 23, 1969, the SPECFUN ``calerf`` coefficients) give float64 to ~1e-14, and one
Chebyshev fit (Numerical Recipes, ``erfcc``, relative error < 1.2e-7) gives float32 cheaply.
"""

from __future__ import annotations

import math

from minift.autograd import Function
from minift.functional.cuda_ops import SoftmaxKernel, kernels_for
from minift.tensor import Tensor

_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_TANH_SCALE = math.sqrt(2.0 / math.pi)
_TANH_CUBIC = 0.044715

# Cody (1969): erf(a) = a P(a^2)/Q(a^2) on [0, 0.46875]; erfc(a) = e^(-a^2) P(a)/Q(a) on
# (0.46875, 4]; erfc(a) = e^(-a^2)/a (1/sqrt(pi) - w P(w)/Q(w)), w = 1/a^2, beyond 4.
# Coefficients from the highest power down.
_ERF_SMALL = ((1.85777706184603153e-1, 3.16112374387056560e0, 1.13864154151050156e2,
               3.77485237685302021e2, 3.20937758913846947e3),
              (1.0, 2.36012909523441209e1, 2.44024637934444173e2, 1.28261652607737228e3,
               2.84423683343917062e3))
_ERFC_MID = ((2.15311535474403846e-8, 5.64188496988670089e-1, 8.88314979438837594e0,
              6.61191906371416295e1, 2.98635138197400131e2, 8.81952221241769090e2,
              1.71204761263407058e3, 2.05107837782607147e3, 1.23033935479799725e3),
             (1.0, 1.57449261107098347e1, 1.17693950891312499e2, 5.37181101862009858e2,
              1.62138957456669019e3, 3.29079923573345963e3, 4.36261909014324716e3,
              3.43936767414372164e3, 1.23033935480374942e3))
_ERFC_LARGE = ((1.63153871373020978e-2, 3.05326634961232344e-1, 3.60344899949804439e-1,
                1.25781726111229246e-1, 1.60837851487422766e-2, 6.58749161529837803e-4),
               (1.0, 2.56852019228982242e0, 1.87295284992346047e0, 5.27905102951428412e-1,
                6.05183413124413191e-2, 2.33520497626869185e-3))
# Numerical Recipes: erfc(a) = t exp(-a^2 + P(t)), t = 1/(1 + a/2), P from the highest power.
_ERFC_FLOAT32 = (0.17087277, -0.82215223, 1.48851587, -1.13520398, 0.27886807, -0.18628806,
                 0.09678418, 0.37409196, 1.00002368, -1.26551223)


def _horner(t, coefficients):
    """c0 t^n + c1 t^(n-1) + ... + cn, evaluated in place after the first product."""
    result = t * coefficients[0]
    result += coefficients[1]
    for c in coefficients[2:]:
        result *= t
        result += c
    return result


def _rational(t, pair):
    return _horner(t, pair[0]) / _horner(t, pair[1])


def erfc_nonnegative(xp, a):
    """erfc(a) for an array a >= 0, to a relative error near the dtype's resolution."""
    if a.dtype.itemsize <= 4:
        a = xp.minimum(a, 11.0)  # exp(-121) underflows to exactly 0 in float32, as erfc(11) should
        t = 0.5 * a
        t += 1.0
        xp.reciprocal(t, out=t)  # t = 1 / (1 + a/2); in place: these arrays are activation-sized
        p = _horner(t, _ERFC_FLOAT32)
        a *= a
        p -= a
        xp.exp(p, out=p)
        p *= t
        return p
    # Every piece is evaluated everywhere (no data-dependent branches, GPU friendly) on
    # an argument clipped to where it is finite, then ``where`` keeps the right one.
    small = xp.minimum(a, 0.5)
    mid = xp.minimum(a, 4.0)
    large = xp.clip(a, 4.0, 30.0)  # erfc(27.3) already underflows to 0
    w = 1.0 / (large * large)
    erfc_small = 1.0 - small * _rational(small * small, _ERF_SMALL)
    erfc_mid = xp.exp(-mid * mid) * _rational(mid, _ERFC_MID)
    asymptotic = 1.0 / math.sqrt(math.pi) - w * _rational(w, _ERFC_LARGE)
    erfc_large = xp.exp(-large * large) / large * asymptotic
    return xp.where(a <= 0.46875, erfc_small, xp.where(a <= 4.0, erfc_mid, erfc_large))


def normal_cdf(xp, x):
    """Phi(x) = P(N(0,1) <= x) = erfc(-x/sqrt 2)/2, accurate in both tails."""
    a = xp.abs(x)
    a *= _SQRT_HALF
    tail = erfc_nonnegative(xp, a)
    tail *= 0.5  # P(N > |x|): Phi(x) for x < 0, 1 - Phi(x) for x >= 0
    # tail + [x >= 0] (1 - 2 tail) selects exactly on the tail side, and costs a third of
    # NumPy's where, which is slow (~4 ns an entry) on masks that are random
    cdf = tail * -2.0
    cdf += 1.0
    cdf *= x >= 0
    cdf += tail
    return cdf


class ReLU(Function):
    """y = max(x, 0);  dy/dx = 1 where x > 0 else 0 (a bool mask is saved, 1 byte each)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x > 0)
        return ctx.backend.xp.maximum(x, 0.0)

    @staticmethod
    def backward(ctx, g):
        return g * ctx.saved[0]


class GELU(Function):
    """y = x Phi(x);  dy/dx = Phi(x) + x phi(x), phi(x) = exp(-x^2/2)/sqrt(2 pi)."""

    @staticmethod
    def forward(ctx, x):
        cdf = normal_cdf(ctx.backend.xp, x)
        ctx.save_for_backward(x, cdf)
        return x * cdf

    @staticmethod
    def backward(ctx, g):
        x, cdf = ctx.saved
        grad = x * x
        grad *= -0.5
        ctx.backend.xp.exp(grad, out=grad)
        grad *= _INV_SQRT_2PI  # phi(x)
        grad *= x
        grad += cdf
        grad *= g
        return grad


class GELUTanh(Function):
    """y = x/2 (1 + t), t = tanh(u), u = sqrt(2/pi) (x + 0.044715 x^3);
    dy/dx = (1 + t)/2 + x/2 (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)."""

    @staticmethod
    def forward(ctx, x):
        u = x * x
        u *= x
        u *= _TANH_CUBIC
        u += x
        u *= _TANH_SCALE
        t = ctx.backend.xp.tanh(u, out=u)
        ctx.save_for_backward(x, t)
        y = t + 1.0
        y *= x
        y *= 0.5
        return y

    @staticmethod
    def backward(ctx, g):
        x, t = ctx.saved
        grad = x * x
        grad *= 3.0 * _TANH_CUBIC
        grad += 1.0
        grad *= _TANH_SCALE  # du/dx
        sech2 = t * t
        ctx.backend.xp.subtract(1.0, sech2, out=sech2)  # 1 - t^2
        grad *= sech2
        grad *= x
        grad += t
        grad += 1.0
        grad *= 0.5
        grad *= g
        return grad


class SiLU(Function):
    """y = x s, s = sigmoid(x);  dy/dx = s (1 + x (1 - s)).

    sigmoid(x) = (1 + tanh(x/2)) / 2 cannot overflow for any x and runs ~5x faster in NumPy
    than the two-branch exp form; its absolute error stays below one float epsilon.
    """

    @staticmethod
    def forward(ctx, x):
        s = x * 0.5
        ctx.backend.xp.tanh(s, out=s)
        s += 1.0
        s *= 0.5
        ctx.save_for_backward(x, s)
        return x * s

    @staticmethod
    def backward(ctx, g):
        x, s = ctx.saved
        grad = 1.0 - s
        grad *= x
        grad += 1.0
        grad *= s
        grad *= g
        return grad


class Softmax(Function):
    """y = exp(x - m) / sum exp(x - m) with m = max x (the shift cancels, and keeps exp <= 1);
    dx = y (dy - sum(dy y)), so only y is saved."""

    @staticmethod
    def forward(ctx, x, axis):
        xp = ctx.backend.xp
        y = x - x.max(axis=axis, keepdims=True)
        xp.exp(y, out=y)
        y /= y.sum(axis=axis, keepdims=True)
        ctx.save_for_backward(y)
        ctx.axis = axis
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved
        gy = g * y
        gy -= y * gy.sum(axis=ctx.axis, keepdims=True)
        return gy


class LogSoftmax(Function):
    """y = x - m - log sum exp(x - m);  dx = dy - softmax(x) sum(dy), softmax = exp(y)."""

    @staticmethod
    def forward(ctx, x, axis):
        xp = ctx.backend.xp
        y = x - x.max(axis=axis, keepdims=True)
        y -= xp.log(xp.exp(y).sum(axis=axis, keepdims=True))
        ctx.save_for_backward(y)
        ctx.axis = axis
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved
        return g - ctx.backend.xp.exp(y) * g.sum(axis=ctx.axis, keepdims=True)


class Dropout(Function):
    """y = x m / (1 - p) with m ~ Bernoulli(1 - p) (inverted dropout: E[y] = x);
    dy/dx = m / (1 - p). The mask is a forward input, so the same m is used backward."""

    @staticmethod
    def forward(ctx, x, keep, scale):
        ctx.save_for_backward(keep)
        ctx.scale = scale
        y = x * keep
        y *= scale
        return y

    @staticmethod
    def backward(ctx, g):
        gx = g * ctx.saved[0]
        gx *= ctx.scale
        return gx, None


# --- the functional API -----------------------------------------------------------------------
def _check_axis(x: Tensor, axis: int, op: str) -> int:
    if not -x.ndim <= axis < x.ndim:
        raise IndexError(f"{op}: axis {axis} is out of range for a tensor of shape {x.shape}")
    return axis % x.ndim


def relu(x: Tensor) -> Tensor:
    return ReLU.apply(x)


def gelu(x: Tensor, approximate: str = "none") -> Tensor:
    """GELU (Hendrycks & Gimpel, 2016): x Phi(x); ``approximate="tanh"`` is GPT-2's form."""
    if approximate == "none":
        return GELU.apply(x)
    if approximate == "tanh":
        return GELUTanh.apply(x)
    raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")


def silu(x: Tensor) -> Tensor:
    """SiLU / swish: x sigmoid(x) (Llama's SwiGLU gate)."""
    return SiLU.apply(x)


def softmax(x: Tensor, axis: int = -1) -> Tensor:
    axis = _check_axis(x, axis, "softmax")
    if axis in (-1, x.ndim - 1) and kernels_for(x.backend, x.data) is not None:
        return SoftmaxKernel.apply(x)
    return Softmax.apply(x, axis=axis)


def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    return LogSoftmax.apply(x, axis=_check_axis(x, axis, "log_softmax"))


def dropout(x: Tensor, p: float = 0.5, training: bool = True, generator=None) -> Tensor:
    """Zero each entry with probability p and scale the rest by 1/(1-p); identity when
    ``training`` is False or p == 0. ``generator`` (``backend.generator(seed)``) gives the
    mask its own random stream; otherwise the backend's global one (``manual_seed``) is used.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    keep = x.backend.bernoulli(x.shape, 1.0 - p, generator)
    return Dropout.apply(x, keep, scale=0.0 if p == 1.0 else 1.0 / (1.0 - p))
