"""The hot ops on minift's CUDA kernels (backends/kernels), chosen when a backend has them.

A backend with a kernel set (``cuda``, or ``cuda-emulator`` on the CPU) runs float32 softmax,
cross-entropy, layer/RMS norm and LoRA linear through these Functions instead of their
NumPy twins (activation.Softmax, loss.CrossEntropy, norm.LayerNorm, norm.RMSNorm and the
composed LoRA branch). The math is the same and is documented there; what changes is that
each pass is one kernel launch instead of a chain of array calls, and what is saved:

    cross-entropy   logits and one logsumexp per row (the softmax is recomputed, never kept)
    layer norm      x, mean and 1/sigma per row (not x_hat)
    LoRA linear     x and u = x A^T (N, r): W + s B A is never formed

float64 arrays (gradient checks) and other layouts take the NumPy-twin path on any backend.
"""

from __future__ import annotations

from typing import Any

from minift.autograd import Function
from minift.functional.loss import _grad_scale


def kernels_for(backend: Any, *arrays: Any) -> Any:
    """The backend's kernel set when it has one and every given array is float32, else None."""
    kernels = getattr(backend, "kernels", None)
    if kernels is None:
        return None
    if any(a is not None and a.dtype != kernels.xp.float32 for a in arrays):
        return None
    return kernels


def _rows(xp: Any, x: Any) -> Any:
    """(..., D) -> a C-contiguous (N, D), the layout every row-wise kernel reads."""
    return xp.ascontiguousarray(x.reshape(-1, x.shape[-1]))


class SoftmaxKernel(Function):
    """Softmax over the last axis in one pass per row; dx = y (dy - sum(dy y))."""

    @staticmethod
    def forward(ctx, x):
        from backends.kernels import rowwise

        ks = ctx.backend.kernels
        y = rowwise.softmax(ks, ks.xp.ascontiguousarray(x))
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        from backends.kernels import rowwise

        ks = ctx.backend.kernels
        return rowwise.softmax_backward(ks, ctx.saved[0], ks.xp.ascontiguousarray(g))


class CrossEntropyKernel(Function):
    """loss_i = lse_i - (1 - eps) z_i[t_i] - eps mean_c z_i; dz_i = w_i (p_i - ...), p from lse."""

    @staticmethod
    def forward(ctx, logits, target, ignore_index, label_smoothing, reduction):
        from backends.kernels import rowwise

        ks = ctx.backend.kernels
        xp = ks.xp
        z = _rows(xp, logits)
        t = xp.ascontiguousarray(target.reshape(-1), dtype=xp.int64)
        # F.cross_entropy has checked the targets: no second device-to-host read for it
        loss, lse = rowwise.cross_entropy(ks, z, t, ignore_index, label_smoothing, False)
        ctx.count, ctx.shape = int((t != ignore_index).sum()), logits.shape
        ctx.options = (ignore_index, label_smoothing, reduction)
        if ctx.records:
            ctx.save_for_backward(z, t, lse)
        if reduction == "none":
            return loss.reshape(target.shape)
        if reduction == "mean" and ctx.count == 0:
            return xp.asarray(xp.nan, dtype=logits.dtype)  # 0/0, as PyTorch
        return loss.sum() / ctx.count if reduction == "mean" else loss.sum()

    @staticmethod
    def backward(ctx, g):
        from backends.kernels import rowwise

        ks = ctx.backend.kernels
        z, t, lse = ctx.saved
        ignore_index, label_smoothing, reduction = ctx.options
        if ctx.count == 0:
            return ks.xp.zeros(ctx.shape, dtype=z.dtype), None
        w = _grad_scale(g, reduction, ctx.count)  # dL/dloss_i: a scalar or one per row
        w = ks.xp.ascontiguousarray(ks.xp.broadcast_to(w.reshape(-1), t.shape), dtype=z.dtype)
        gz = rowwise.cross_entropy_backward(
            ks, z, t, lse, w, ignore_index, label_smoothing, check_targets=False
        )
        return gz.reshape(ctx.shape), None


class LayerNormKernel(Function):
    """Layer norm over the last axis; saves x, mean and 1/sigma per row."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        from backends.kernels import rowwise

        ks = ctx.backend.kernels
        x2 = _rows(ks.xp, x)
        y, mean, rstd = rowwise.layer_norm(ks, x2, weight, bias, eps)
        ctx.save_for_backward(x2, weight, mean, rstd)
        return y.reshape(x.shape)

    @staticmethod
    def backward(ctx, g):
        from backends.kernels import rowwise

        ks = ctx.backend.kernels
        x2, weight, mean, rstd = ctx.saved
        _, need_w, need_b = ctx.needs_input_grad
        gx, gw, gb = rowwise.layer_norm_backward(
            ks, _rows(ks.xp, g), x2, weight, mean, rstd, need_weight=need_w, need_bias=need_b
        )
        return gx.reshape(g.shape), gw, gb


class RMSNormKernel(Function):
    """RMS norm over the last axis; saves x and 1/rms per row."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        from backends.kernels import rowwise

        ks = ctx.backend.kernels
        x2 = _rows(ks.xp, x)
        y, rstd = rowwise.rms_norm(ks, x2, weight, eps)
        ctx.save_for_backward(x2, weight, rstd)
        return y.reshape(x.shape)

    @staticmethod
    def backward(ctx, g):
        from backends.kernels import rowwise

        ks = ctx.backend.kernels
        x2, weight, rstd = ctx.saved
        gx, gw = rowwise.rms_norm_backward(
            ks, _rows(ks.xp, g), x2, weight, rstd, need_weight=ctx.needs_input_grad[1]
        )
        return gx.reshape(g.shape), gw


class LoraLinearKernel(Function):
    """y = x W^T + s (x A^T) B^T + b, fused: W + s B A is never formed.

    With u = x A^T saved:  dx = dy W + s (dy B) A,  dA = s (dy B)^T x,  dB = s dy^T u,
    dW = dy^T x (when the base weight trains too), db = sum of dy.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scale):
        from backends.kernels import lora

        ks = ctx.backend.kernels
        x2 = _rows(ks.xp, x)
        y, u = lora.lora_linear(ks, x2, weight, lora_a, lora_b, scale, bias)
        ctx.scale, ctx.lead = scale, x.shape[:-1]
        ctx.save_for_backward(x2, weight, lora_a, lora_b, u)
        return y.reshape(*ctx.lead, weight.shape[0])

    @staticmethod
    def backward(ctx, g):
        from backends.kernels import lora

        ks = ctx.backend.kernels
        x2, weight, lora_a, lora_b, u = ctx.saved
        need_x, need_w, need_b, need_a, need_lb = ctx.needs_input_grad
        g2 = _rows(ks.xp, g)
        gx, ga, glb = lora.lora_linear_backward(
            ks, g2, x2, weight, lora_a, lora_b, ctx.scale, u,
            need_x=need_x, need_a=need_a, need_b=need_lb,
        )
        gw = ctx.backend.matmul(g2.T, x2) if need_w else None
        gb = g2.sum(axis=0) if need_b else None
        return (gx.reshape(*ctx.lead, x2.shape[1]) if gx is not None else None), gw, gb, ga, glb
