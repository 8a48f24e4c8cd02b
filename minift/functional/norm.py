"""Normalisation layers as fused ops: layer norm, RMS norm, batch norm.

Each normalises x to x_hat = (x - mean) / sigma over some axes, then applies a learned
affine map y = x_hat * w + b. Written as a composite of primitives, the graph would keep
every intermediate (centered x, its square, the variance...); fused, forward saves only
x_hat and 1/sigma and backward applies the closed form (Ba et al. 2016; Ioffe & Szegedy
2015; Zhang & Sennrich 2019 for RMSNorm):

    dx = (1/sigma) (g_hat - mean(g_hat) - x_hat mean(g_hat x_hat)),   g_hat = dy * w
"""

from __future__ import annotations

from collections.abc import Sequence

from minift.autograd import Function
from minift.functional.cuda_ops import LayerNormKernel, RMSNormKernel, kernels_for
from minift.tensor import Tensor


def _normalized_axes(x: Tensor, normalized_shape: int | Sequence[int], op: str) -> tuple:
    """The trailing axes that ``normalized_shape`` names; raise if x does not end with it."""
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    n = len(shape)
    if n == 0 or n > x.ndim or tuple(x.shape[x.ndim - n :]) != shape:
        raise ValueError(
            f"{op}: normalized_shape {shape} must match the trailing shape of the input, "
            f"got input shape {x.shape}"
        )
    return shape, tuple(range(x.ndim - n, x.ndim))


def _check_affine(param: Tensor | None, shape: tuple, what: str, op: str) -> None:
    if param is not None and tuple(param.shape) != shape:
        raise ValueError(f"{op}: {what} has shape {param.shape}, expected {shape}")


def _normalized_backward(g_hat, x_hat, inv_sigma, axes, centre: bool):
    """dx = (1/sigma)(g_hat - mean(g_hat) - x_hat mean(g_hat x_hat)); RMS norm has no mean term."""
    gx = g_hat - x_hat * (g_hat * x_hat).mean(axis=axes, keepdims=True)
    if centre:
        gx -= g_hat.mean(axis=axes, keepdims=True)
    gx *= inv_sigma
    return gx


class LayerNorm(Function):
    """y = x_hat w + b,  x_hat = (x - mean) / sqrt(var + eps) over the trailing ``axes``.

    var is the biased variance (divide by n). With g_hat = dy w and means over ``axes``:
        dx = (1/sigma) (g_hat - mean(g_hat) - x_hat mean(g_hat x_hat))
        dw = sum over leading axes of dy x_hat,   db = sum over leading axes of dy
    Saved: x_hat, 1/sigma (one value per row) and w.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, axes, eps):
        xp = ctx.backend.xp
        centered = x - x.mean(axis=axes, keepdims=True)
        var = (centered * centered).mean(axis=axes, keepdims=True)
        inv_sigma = 1 / xp.sqrt(var + eps)
        x_hat = centered
        x_hat *= inv_sigma  # centered is our own array: normalise it in place
        ctx.axes, ctx.lead = axes, tuple(range(x.ndim - len(axes)))
        ctx.save_for_backward(x_hat, inv_sigma, weight)
        return _affine(x_hat, weight, bias)

    @staticmethod
    def backward(ctx, g):
        x_hat, inv_sigma, weight = ctx.saved
        need_x, need_w, need_b = ctx.needs_input_grad
        gx = gw = gb = None
        if need_x:
            g_hat = g * weight if weight is not None else g
            gx = _normalized_backward(g_hat, x_hat, inv_sigma, ctx.axes, centre=True)
        if need_w:
            gw = (g * x_hat).sum(axis=ctx.lead)
        if need_b:
            gb = g.sum(axis=ctx.lead)
        return gx, gw, gb


class RMSNorm(Function):
    """y = x_hat w,  x_hat = x / sqrt(mean(x^2) + eps) over the trailing ``axes``.

    No centring, so the mean(g_hat) term of layer norm drops out:
        dx = (1/rms) (g_hat - x_hat mean(g_hat x_hat)),   g_hat = dy w
        dw = sum over leading axes of dy x_hat
    """

    @staticmethod
    def forward(ctx, x, weight, axes, eps):
        xp = ctx.backend.xp
        inv_rms = 1 / xp.sqrt((x * x).mean(axis=axes, keepdims=True) + eps)
        x_hat = x * inv_rms
        ctx.axes, ctx.lead = axes, tuple(range(x.ndim - len(axes)))
        ctx.save_for_backward(x_hat, inv_rms, weight)
        return _affine(x_hat, weight, None)

    @staticmethod
    def backward(ctx, g):
        x_hat, inv_rms, weight = ctx.saved
        need_x, need_w = ctx.needs_input_grad
        gx = gw = None
        if need_x:
            g_hat = g * weight if weight is not None else g
            gx = _normalized_backward(g_hat, x_hat, inv_rms, ctx.axes, centre=False)
        if need_w:
            gw = (g * x_hat).sum(axis=ctx.lead)
        return gx, gw


def _affine(x_hat, weight, bias):
    """x_hat w + b, always a fresh array: the output must never alias the saved x_hat."""
    y = x_hat * weight if weight is not None else x_hat.copy()
    if bias is not None:
        y += bias
    return y


class BatchNorm(Function):
    """Per channel (axis 1): y = x_hat w + b, with x_hat = (x - mu) / sqrt(v + eps).

    Training: mu, v are the batch mean and biased variance over every axis but 1, so they
    depend on x and dx has layer norm's form with means over (N, H, W):
        dx = (1/sigma) (g_hat - mean(g_hat) - x_hat mean(g_hat x_hat))
    The running statistics are updated in place, with the unbiased variance as PyTorch:
        running = (1 - momentum) running + momentum batch_statistic
    Evaluation: mu, v are the running statistics, constants, so y is affine in x and
        dx = g_hat / sigma.
    Both: dw = sum of dy x_hat, db = sum of dy over every axis but 1.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, training, momentum, eps):
        xp = ctx.backend.xp
        axes = (0,) + tuple(range(2, x.ndim))
        channel = (1, -1) + (1,) * (x.ndim - 2)  # (C,) -> broadcastable against x
        if training:
            mean = x.mean(axis=axes, keepdims=True)
            centered = x - mean
            var = (centered * centered).mean(axis=axes, keepdims=True)
            if running_mean is not None:
                n = x.size // x.shape[1]
                _update_running(running_mean, running_var, mean, var * (n / (n - 1)), momentum)
        else:
            # buffers may be kept in another precision; compute in x's dtype
            centered = x - running_mean.reshape(channel).astype(x.dtype, copy=False)
            var = running_var.reshape(channel).astype(x.dtype, copy=False)
        inv_sigma = 1 / xp.sqrt(var + eps)
        x_hat = centered
        x_hat *= inv_sigma
        ctx.axes, ctx.training = axes, training
        ctx.save_for_backward(x_hat, inv_sigma, weight)
        w = weight.reshape(channel) if weight is not None else None
        return _affine(x_hat, w, bias.reshape(channel) if bias is not None else None)

    @staticmethod
    def backward(ctx, g):
        x_hat, inv_sigma, weight = ctx.saved
        need_x, need_w, need_b = ctx.needs_input_grad
        gx = gw = gb = None
        if need_x:
            g_hat = g * weight.reshape(inv_sigma.shape) if weight is not None else g
            if ctx.training:
                gx = _normalized_backward(g_hat, x_hat, inv_sigma, ctx.axes, centre=True)
            else:
                gx = g_hat * inv_sigma
        if need_w:
            gw = (g * x_hat).sum(axis=ctx.axes)
        if need_b:
            gb = g.sum(axis=ctx.axes)
        return gx, gw, gb


def _update_running(running_mean, running_var, mean, unbiased_var, momentum) -> None:
    """running <- (1 - momentum) running + momentum batch, in place (they are buffers)."""
    running_mean *= 1 - momentum
    running_mean += momentum * mean.reshape(-1)
    running_var *= 1 - momentum
    running_var += momentum * unbiased_var.reshape(-1)


# --- the functional API -----------------------------------------------------------------------
def layer_norm(
    x: Tensor,
    normalized_shape: int | Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Layer normalisation over the trailing ``normalized_shape`` axes (PyTorch semantics).

    Args:
        x: (..., *normalized_shape).
        weight, bias: (*normalized_shape) or None.
    Returns:
        y with x's shape.
    """
    shape, axes = _normalized_axes(x, normalized_shape, "layer_norm")
    _check_affine(weight, shape, "weight", "layer_norm")
    _check_affine(bias, shape, "bias", "layer_norm")
    if axes == (x.ndim - 1,) and kernels_for(x.backend, x.data, _buffer(weight), _buffer(bias)) is not None:
        return LayerNormKernel.apply(x, weight, bias, eps=eps)
    return LayerNorm.apply(x, weight, bias, axes=axes, eps=eps)


def rms_norm(
    x: Tensor,
    normalized_shape: int | Sequence[int],
    weight: Tensor | None = None,
    eps: float = 1e-6,
) -> Tensor:
    """RMS normalisation (Llama): y = x / sqrt(mean(x^2) + eps) * weight over trailing axes.

    Args:
        x: (..., *normalized_shape).
        weight: (*normalized_shape) or None.
    """
    shape, axes = _normalized_axes(x, normalized_shape, "rms_norm")
    _check_affine(weight, shape, "weight", "rms_norm")
    if axes == (x.ndim - 1,) and kernels_for(x.backend, x.data, _buffer(weight)) is not None:
        return RMSNormKernel.apply(x, weight, eps=eps)
    return RMSNorm.apply(x, weight, axes=axes, eps=eps)


def batch_norm(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Batch normalisation over every axis but the channel axis 1 (PyTorch semantics).

    Args:
        x: (N, C) or (N, C, *spatial).
        running_mean, running_var: (C,) buffers, or None to use batch statistics only. In
            training they are updated in place; in evaluation they normalise x.
        weight, bias: (C,) or None.
        training: batch statistics (True) or running statistics (False).
    """
    _check_batch_norm(x, running_mean, running_var, weight, bias, training, momentum)
    return BatchNorm.apply(
        x,
        weight,
        bias,
        running_mean=_buffer(running_mean),
        running_var=_buffer(running_var),
        training=training,
        momentum=momentum,
        eps=eps,
    )


def _check_batch_norm(x, running_mean, running_var, weight, bias, training, momentum) -> None:
    if x.ndim < 2:
        raise ValueError(f"batch_norm: input needs shape (N, C, ...), got {x.shape}")
    channels = (x.shape[1],)
    for name, t in (
        ("running_mean", running_mean),
        ("running_var", running_var),
        ("weight", weight),
        ("bias", bias),
    ):
        _check_affine(t, channels, name, "batch_norm")
    if not isinstance(momentum, (int, float)):
        raise TypeError(f"batch_norm: momentum must be a number, got {momentum!r}")
    if (running_mean is None) != (running_var is None):
        raise ValueError("batch_norm: give both running_mean and running_var, or neither")
    if training and x.data.size // x.shape[1] <= 1:
        raise ValueError(
            f"batch_norm: training needs more than 1 value per channel, got input {x.shape}"
        )
    if not training and running_mean is None:
        raise ValueError(
            "batch_norm: evaluation (training=False) needs running_mean and running_var"
        )


def _buffer(t: Tensor | None):
    return t.data if isinstance(t, Tensor) else t
