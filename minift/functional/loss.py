"""Losses: cross-entropy (fused log-softmax + NLL), mean squared error, BCE with logits.

Cross-entropy over logits z with C classes, target t and label smoothing eps (PyTorch's
definition, Szegedy et al. 2016, section 7):

    loss = (1 - eps) (-log p_t) + eps mean_c(-log p_c),     p = softmax(z)
    dloss/dz = p - (1 - eps) onehot(t) - eps / C

Fused, the backward needs only p (no one-hot, no log-softmax graph). Rows whose target is
``ignore_index`` add nothing and get zero gradient; ``mean`` divides by the kept rows.
"""

from __future__ import annotations

from minift.autograd import Function
from minift.functional.basic import as_operand
from minift.tensor import Tensor

_REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(reduction: str, op: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _reduce(loss, reduction: str):
    if reduction == "mean":
        return loss.mean()
    return loss.sum() if reduction == "sum" else loss


def _grad_scale(g, reduction: str, count: int):
    """dL/d(loss_i): g itself for ``none`` and ``sum``, g / count for ``mean``."""
    return g / count if reduction == "mean" else g


class CrossEntropy(Function):
    """loss_i = logsumexp(z_i) - (1 - eps) z_i[t_i] - eps mean_c(z_i), rows flattened to (N, C).

    This is (1 - eps) nll + eps mean_c(-log p), rewritten on the shifted logits so that the
    forward needs no log-softmax array. With w_i = dL/dloss_i (zero on ignored rows):
        dz_i = w_i (p_i - (1 - eps) onehot(t_i) - eps / C)
    Saved: p = softmax(z) (N, C), the targets and the kept-row mask.
    """

    @staticmethod
    def forward(ctx, logits, target, ignore_index, label_smoothing, reduction):
        xp = ctx.backend.xp
        classes = logits.shape[-1]
        t = target.reshape(-1)
        keep = t != ignore_index
        t = xp.where(keep, t, 0)  # any valid class index; those rows are zeroed below
        shifted = logits.reshape(-1, classes) - logits.max(axis=-1).reshape(-1, 1)
        rows = xp.arange(t.shape[0])
        loss = -(1 - label_smoothing) * shifted[rows, t]
        if label_smoothing:
            loss -= label_smoothing * shifted.mean(axis=-1)
        e = xp.exp(shifted, out=shifted)  # shifted is ours and no longer needed
        total = e.sum(axis=-1)
        loss += xp.log(total)
        loss *= keep
        ctx.count, ctx.shape = int(keep.sum()), logits.shape
        ctx.label_smoothing, ctx.reduction = label_smoothing, reduction
        if ctx.records:
            e /= total.reshape(-1, 1)  # e becomes p = softmax(z)
            ctx.save_for_backward(e, t, keep)
        if reduction == "none":
            return loss.reshape(target.shape)
        if reduction == "mean" and ctx.count == 0:
            return xp.asarray(xp.nan, dtype=logits.dtype)  # 0/0, as PyTorch, without the warning
        return loss.sum() / ctx.count if reduction == "mean" else loss.sum()

    @staticmethod
    def backward(ctx, g):
        p, t, keep = ctx.saved
        eps = ctx.label_smoothing
        if ctx.count == 0:
            return ctx.backend.xp.zeros(ctx.shape, dtype=p.dtype), None
        w = (_grad_scale(g, ctx.reduction, ctx.count).reshape(-1) * keep).reshape(-1, 1)  # (N, 1)
        gz = p.copy() if ctx.retain_graph else p  # p dies after this call: reuse its memory
        gz *= w
        if eps:
            gz -= w * (eps / p.shape[1])
        gz[ctx.backend.xp.arange(t.shape[0]), t] -= (1 - eps) * w[:, 0]
        return gz.reshape(ctx.shape), None


class MSELoss(Function):
    """loss = (a - b)^2 elementwise, then reduced;  dloss/da = 2 (a - b) = -dloss/db."""

    @staticmethod
    def forward(ctx, pred, target, reduction):
        diff = pred - target
        ctx.reduction = reduction
        ctx.save_for_backward(diff)
        return _reduce(diff * diff, reduction)

    @staticmethod
    def backward(ctx, g):
        diff = ctx.saved[0]
        ga = diff * (2 * _grad_scale(g, ctx.reduction, diff.size))
        return ga, (-ga if ctx.needs_input_grad[1] else None)


def _softplus_neg(xp, x):
    """softplus(-x) = log(1 + e^-x) = max(-x, 0) + log(1 + e^-|x|): never overflows."""
    return xp.maximum(-x, 0) + xp.log1p(xp.exp(-xp.abs(x)))


def _sigmoid_neg(xp, x):
    """sigmoid(-x) = 1 - sigmoid(x), from e^-|x| only."""
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, e / (1 + e), 1 / (1 + e)).astype(x.dtype, copy=False)


class BCEWithLogits(Function):
    """loss = (1 - y) x + l softplus(-x),  l = 1 + (pos_weight - 1) y   (PyTorch's form).

    Without pos_weight (l = 1) this is max(x, 0) - x y + log(1 + e^-|x|). Derivatives:
        dloss/dx = (1 - y) - l sigmoid(-x)          (= sigmoid(x) - y when l = 1)
        dloss/dy = -x + (pos_weight - 1) softplus(-x)
        dloss/dpos_weight = y softplus(-x)
    """

    @staticmethod
    def forward(ctx, x, y, pos_weight, reduction):
        xp = ctx.backend.xp
        sp = _softplus_neg(xp, x)
        if pos_weight is not None:
            sp *= 1 + (pos_weight - 1) * y
        ctx.reduction = reduction
        ctx.save_for_backward(x, y, pos_weight)
        return _reduce((1 - y) * x + sp, reduction)

    @staticmethod
    def backward(ctx, g):
        x, y, pw = ctx.saved
        xp = ctx.backend.xp
        need_x, need_y, need_pw = ctx.needs_input_grad
        w = _grad_scale(g, ctx.reduction, x.size)
        gx = gy = gpw = None
        sp = _softplus_neg(xp, x) if (need_y or need_pw) else None
        if need_x:
            lw = 1 if pw is None else 1 + (pw - 1) * y
            gx = w * ((1 - y) - lw * _sigmoid_neg(xp, x))
        if need_y:
            gy = w * (-x + (pw - 1) * sp) if pw is not None else w * -x
        if need_pw:
            gpw = w * y * sp
        return gx, gy, gpw


# --- the functional API -----------------------------------------------------------------------
def _raw(x, like: Tensor):
    return x.data if isinstance(x, Tensor) else like.backend.xp.asarray(x)


def _check_targets(t, classes: int, ignore_index: int) -> None:
    if t.dtype.kind not in "iu":
        raise TypeError(
            f"cross_entropy: targets must be integer class indices, got dtype {t.dtype}"
        )
    bad = (t != ignore_index) & ((t < 0) | (t >= classes))
    if bool(bad.any()):
        value = int(t[bad].reshape(-1)[0])
        raise ValueError(
            f"cross_entropy: target value {value} is out of range [0, {classes}) "
            f"(and is not ignore_index={ignore_index})"
        )


def cross_entropy(
    logits: Tensor,
    target,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> Tensor:
    """Softmax cross-entropy with integer targets; the class axis is LAST.

    Args:
        logits: (..., C) unnormalised scores.
        target: (...) integer class indices in [0, C), or ``ignore_index`` to skip a position.
        label_smoothing: eps in [0, 1]; the target distribution is (1 - eps) onehot + eps / C.
        reduction: "mean" over kept positions (NaN when every position is ignored, as
            PyTorch; the gradient is then zero), "sum", or "none" (shape (...), 0 where ignored).
    """
    _check_reduction(reduction, "cross_entropy")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    t = _raw(target, logits)
    if logits.ndim == 0 or tuple(t.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"cross_entropy: target shape {tuple(t.shape)} must be logits shape {logits.shape} "
            "without its last (class) axis"
        )
    _check_targets(t, logits.shape[-1], ignore_index)
    from minift.functional.cuda_ops import CrossEntropyKernel, kernels_for

    fused = CrossEntropyKernel if kernels_for(logits.backend, logits.data) else CrossEntropy
    return fused.apply(
        logits,
        t,
        ignore_index=ignore_index,
        label_smoothing=float(label_smoothing),
        reduction=reduction,
    )


def mse_loss(pred: Tensor, target, reduction: str = "mean") -> Tensor:
    """Mean squared error: reduce((pred - target)^2). Shapes must match exactly."""
    _check_reduction(reduction, "mse_loss")
    target = as_operand(target, pred)
    if tuple(target.shape) != tuple(pred.shape):
        raise ValueError(
            f"mse_loss: target shape {tuple(target.shape)} != input shape {pred.shape}"
        )
    return MSELoss.apply(pred, target, reduction=reduction)


def binary_cross_entropy_with_logits(
    logits: Tensor,
    target,
    pos_weight=None,
    reduction: str = "mean",
) -> Tensor:
    """Sigmoid + binary cross-entropy in one stable op (PyTorch semantics).

    Args:
        logits: (...) unnormalised scores x; sigmoid(x) is the predicted probability.
        target: (...) probabilities y in [0, 1], same shape as logits.
        pos_weight: weight of the positive term, broadcastable to the logits (usually (C,)
            for the last axis); > 1 raises recall.
    """
    _check_reduction(reduction, "binary_cross_entropy_with_logits")
    target = as_operand(target, logits)
    if tuple(target.shape) != tuple(logits.shape):
        raise ValueError(
            f"binary_cross_entropy_with_logits: target shape {tuple(target.shape)} != "
            f"logits shape {logits.shape}"
        )
    if pos_weight is not None:
        pos_weight = as_operand(pos_weight, logits)
        shape = tuple(pos_weight.shape)
        fits = len(shape) <= logits.ndim and all(
            p in (1, s) for p, s in zip(reversed(shape), reversed(logits.shape))
        )
        if not fits:
            raise ValueError(
                f"binary_cross_entropy_with_logits: pos_weight shape {shape} "
                f"does not broadcast to logits shape {logits.shape}"
            )
    return BCEWithLogits.apply(logits, target, pos_weight, reduction=reduction)
