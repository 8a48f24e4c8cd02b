"""Scaled dot-product attention as one fused op (Vaswani et al. 2017, eq. 1):

    O = softmax(scale Q K^T + bias) V,    scale = 1 / sqrt(d)

The bias is 0 where a query may attend and -inf where it may not (a boolean mask, causal
order) or any additive float mask. Forward saves Q, K, V and the probabilities P; backward
is four matmuls and one row reduction, never a graph of primitives. Rows with no visible key
give zeros, not NaN (PyTorch's safe softmax does the same).
"""

from __future__ import annotations

from minift.autograd import Function
from minift.functional.cuda_ops import kernels_for
from minift.tensor import Tensor


def _safe_softmax_(xp, s):
    """Softmax over the last axis, in place on ``s``; a row that is all -inf becomes zeros."""
    m = s.max(axis=-1, keepdims=True)
    s -= xp.where(xp.isfinite(m), m, 0)  # an all -inf row keeps -inf, so exp gives 0, not NaN
    xp.exp(s, out=s)
    total = s.sum(axis=-1, keepdims=True)
    s /= xp.where(total > 0, total, 1)
    return s


def _causal_bias(xp, lq: int, lk: int, dtype):
    """(Lq, Lk) bias, bottom-right aligned: query i sees key j iff j <= i + (Lk - Lq).

    With Lk > Lq the extra keys come first (a prefix or a KV cache) and every query sees them.
    """
    visible = xp.arange(lk)[None, :] <= xp.arange(lq)[:, None] + (lk - lq)
    return xp.where(visible, 0, -xp.inf).astype(dtype)


class ScaledDotProductAttention(Function):
    """O = P V,  P = softmax(S),  S = scale Q K^T + bias, the softmax over keys (last axis).

    With dO given, P saved, and the softmax Jacobian dS = P * (dP - rowsum(dP * P)):
        dV = P^T dO,   dP = dO V^T,   dQ = scale dS K,   dK = scale dS^T Q
    A float mask is added to S, so its gradient is dS (summed over broadcast axes).
    """

    @staticmethod
    def forward(ctx, q, k, v, attn_mask, is_causal, scale):
        xp, mm = ctx.backend.xp, ctx.backend.matmul
        s = mm(q * scale, k.swapaxes(-1, -2))  # (..., Lq, Lk)
        if attn_mask is not None:
            # masks keep their broadcastable shape: the in-place add allocates nothing big
            s += attn_mask if attn_mask.dtype.kind == "f" else xp.where(attn_mask, 0, -xp.inf)
        ks = kernels_for(ctx.backend, s) if attn_mask is None else None
        if ks is not None:  # one fused kernel: scale is applied, the causal mask is implicit
            from backends.kernels import rowwise

            p = rowwise.softmax(ks, s, causal=is_causal)
        else:
            if is_causal:
                s += _causal_bias(xp, s.shape[-2], s.shape[-1], s.dtype)
            p = _safe_softmax_(xp, s)
        ctx.kernels = ks
        ctx.scale = scale
        ctx.save_for_backward(q, k, v, p)
        return mm(p, v)  # (..., Lq, dv)

    @staticmethod
    def backward(ctx, g):
        q, k, v, p = ctx.saved
        mm = ctx.backend.matmul
        need_q, need_k, need_v, need_mask = ctx.needs_input_grad
        gq = gk = gv = gs = None
        if need_v:
            gv = mm(p.swapaxes(-1, -2), g)
        if need_q or need_k or need_mask:
            gs = mm(g, v.swapaxes(-1, -2))  # dP, a fresh array: turned into dS in place
            if ctx.kernels is not None:
                from backends.kernels import rowwise

                gs = rowwise.softmax_backward(ctx.kernels, p, gs)
            else:
                gs -= (gs * p).sum(axis=-1, keepdims=True)
                gs *= p
            if need_q:
                gq = mm(gs, k)
                gq *= ctx.scale
            if need_k:
                gk = mm(gs.swapaxes(-1, -2), q)
                gk *= ctx.scale
        return gq, gk, gv, (gs if need_mask else None)


def _check_mask(mask, score_shape: tuple) -> None:
    if mask.dtype.kind not in "bf":
        raise TypeError(
            f"attention: attn_mask must be boolean (True = attend) or float, got {mask.dtype}"
        )
    shape = tuple(mask.shape)
    fits = len(shape) <= len(score_shape) and all(
        m in (1, s) for m, s in zip(reversed(shape), reversed(score_shape))
    )
    if not fits:
        raise ValueError(
            f"attention: attn_mask shape {shape} does not broadcast to the scores' "
            f"shape (..., Lq, Lk) = {score_shape}"
        )


def _check_qkv(q: Tensor, k: Tensor, v: Tensor) -> None:
    if min(q.ndim, k.ndim, v.ndim) < 2:
        raise ValueError(
            f"attention: q, k, v need shape (..., L, d), got {q.shape}, {k.shape}, {v.shape}"
        )
    if not q.shape[:-2] == k.shape[:-2] == v.shape[:-2]:
        raise ValueError(
            f"attention: q, k, v must share their leading (batch, head) axes, got {q.shape}, "
            f"{k.shape}, {v.shape}; for grouped-query attention repeat the k/v heads first"
        )
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"attention: q and k head sizes differ: {q.shape[-1]} vs {k.shape[-1]}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"attention: k and v have {k.shape[-2]} and {v.shape[-2]} positions")


def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    attn_mask=None,
    is_causal: bool = False,
    scale: float | None = None,
) -> Tensor:
    """softmax(q k^T * scale + mask) v, fused.

    Args:
        q: (..., Lq, d);  k: (..., Lk, d);  v: (..., Lk, dv), the same leading axes.
        attn_mask: broadcastable to (..., Lq, Lk): boolean (True = may attend) or an additive
            float mask (which may require a gradient).
        is_causal: query i sees keys j <= i + Lk - Lq (bottom-right aligned, so prefix and
            KV-cache keys stay visible). Unlike PyTorch, it may be combined with attn_mask
            (causal order AND padding).
        scale: defaults to 1 / sqrt(d).
    Returns:
        (..., Lq, dv). A query that sees no key gets zeros.
    """
    _check_qkv(q, k, v)
    if attn_mask is not None:
        raw = attn_mask.data if isinstance(attn_mask, Tensor) else q.backend.xp.asarray(attn_mask)
        _check_mask(raw, q.shape[:-1] + (k.shape[-2],))
        attn_mask = attn_mask if isinstance(attn_mask, Tensor) else raw
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return ScaledDotProductAttention.apply(
        q, k, v, attn_mask, is_causal=bool(is_causal), scale=scale
    )
