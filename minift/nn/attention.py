"""Multi-head attention with Hugging Face's projection names, and grouped-query attention.

    head_i = softmax(Q_i K_g(i)^T / sqrt(d) + mask) V_g(i),   out = concat(head_1..head_H) W_o^T

(Vaswani et al. 2017, https://arxiv.org/abs/1706.03762). With ``kv_heads < num_heads``
(Ainslie et al. 2023, https://arxiv.org/abs/2305.13245) the H query heads share
H / kv_heads key/value heads: query head i reads k/v head g(i) = i // (H / kv_heads), the
order of Hugging Face's ``repeat_kv``. The projections are ``q_proj``, ``k_proj``, ``v_proj``
and ``o_proj`` (Llama's names), so LoRA's ``target_modules=["q_proj", "v_proj"]`` finds them.
"""

from __future__ import annotations

from typing import Any

from minift import functional as F
from minift.nn.layers import Linear
from minift.nn.module import Module
from minift.tensor import Tensor


def repeat_kv(x: Tensor, repeats: int) -> Tensor:
    """(B, Hkv, T, d) -> (B, Hkv * repeats, T, d), each head repeated ``repeats`` times in place
    (head g becomes heads g*repeats .. g*repeats + repeats - 1); backward sums the copies."""
    if repeats == 1:
        return x
    b, h, t, d = x.shape
    return F.expand(F.unsqueeze(x, 2), (b, h, repeats, t, d)).reshape(b, h * repeats, t, d)


def attention_with_dropout(
    q: Tensor, k: Tensor, v: Tensor, attn_mask: Any, is_causal: bool, p: float
) -> Tensor:
    """The attention of ``F.scaled_dot_product_attention`` written out in primitives, with
    dropout on the probabilities (the fused op has none). Only used in training with p > 0.

    Masked scores get the dtype's lowest finite value rather than -inf, so that a query with no
    visible key has finite probabilities (then zeroed, as the fused op does) and finite gradients.
    """
    xp = q.backend.xp
    lq, lk = q.shape[-2], k.shape[-2]
    scores = F.matmul(q, F.transpose(k, -1, -2)) * (q.shape[-1] ** -0.5)  # (B, H, Lq, Lk)
    visible = None
    if is_causal:
        visible = xp.arange(lk)[None, :] <= xp.arange(lq)[:, None] + (lk - lq)
    if attn_mask is not None:
        raw = attn_mask.data if isinstance(attn_mask, Tensor) else xp.asarray(attn_mask)
        if raw.dtype.kind == "b":
            visible = raw if visible is None else visible & raw
        else:
            scores = scores + attn_mask
    if visible is not None:
        scores = F.masked_fill(scores, ~visible, float(xp.finfo(scores.dtype).min))
    probs = F.softmax(scores, axis=-1)
    if visible is not None:
        probs = F.where(visible.any(axis=-1, keepdims=True), probs, 0.0)
    return F.matmul(F.dropout(probs, p, training=True), v)  # (B, H, Lq, dv)


class MultiHeadAttention(Module):
    """Self- or cross-attention on (B, T, C) inputs, C = ``embed_dim``.

    Args:
        embed_dim: C; ``num_heads`` must divide it (head size d = C / num_heads).
        num_heads: H, the query heads.
        bias: whether the four projections have a bias.
        dropout: probability of dropping an attention weight in training.
        kv_heads: key/value heads (default H); must divide H. k_proj and v_proj map C to
            kv_heads * d, so GQA shrinks them (and the KV cache) by H / kv_heads.
    Init: the four Linear layers' default, U(-1/sqrt(C), 1/sqrt(C)).
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        bias: bool = True,
        dropout: float = 0.0,
        kv_heads: int | None = None,
        dtype: Any = None,
        backend: Any = None,
    ) -> None:
        super().__init__()
        kv_heads = num_heads if kv_heads is None else kv_heads
        if embed_dim % num_heads:
            raise ValueError(
                f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})"
            )
        if kv_heads < 1 or num_heads % kv_heads:
            raise ValueError(f"num_heads ({num_heads}) must be divisible by kv_heads ({kv_heads})")
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout must be in [0, 1], got {dropout}")
        self.embed_dim, self.num_heads, self.kv_heads = embed_dim, num_heads, kv_heads
        self.head_dim, self.dropout = embed_dim // num_heads, float(dropout)
        kv_dim = kv_heads * self.head_dim
        self.q_proj = Linear(embed_dim, embed_dim, bias, dtype, backend)
        self.k_proj = Linear(embed_dim, kv_dim, bias, dtype, backend)
        self.v_proj = Linear(embed_dim, kv_dim, bias, dtype, backend)
        self.o_proj = Linear(embed_dim, embed_dim, bias, dtype, backend)

    def _split_heads(self, x: Tensor, heads: int) -> Tensor:
        b, t, _ = x.shape
        return x.reshape(b, t, heads, self.head_dim).transpose(1, 2)  # (B, heads, T, d)

    def _check(self, query: Tensor, key: Tensor, value: Tensor) -> None:
        for name, x in (("query", query), ("key", key), ("value", value)):
            if x.ndim != 3 or x.shape[-1] != self.embed_dim:
                raise ValueError(
                    f"MultiHeadAttention: {name} must be (B, T, {self.embed_dim}), got {x.shape}"
                )
        if not query.shape[0] == key.shape[0] == value.shape[0] or key.shape[1] != value.shape[1]:
            raise ValueError(
                f"MultiHeadAttention: batch or key length mismatch: query {query.shape}, "
                f"key {key.shape}, value {value.shape}"
            )

    def forward(
        self,
        query: Tensor,
        key: Tensor | None = None,
        value: Tensor | None = None,
        attn_mask: Any = None,
        is_causal: bool = False,
    ) -> Tensor:
        """Attend from ``query`` (B, Tq, C) to ``key``/``value`` (B, Tk, C), default: query.

        ``attn_mask`` broadcasts to (B, H, Tq, Tk): boolean (True = may attend) or additive float.
        ``is_causal`` lets query i see keys j <= i + Tk - Tq. Returns (B, Tq, C).
        """
        key = query if key is None else key
        value = key if value is None else value
        self._check(query, key, value)
        b, tq, _ = query.shape
        repeats = self.num_heads // self.kv_heads
        q = self._split_heads(self.q_proj(query), self.num_heads)  # (B, H, Tq, d)
        k = repeat_kv(self._split_heads(self.k_proj(key), self.kv_heads), repeats)  # (B, H, Tk, d)
        v = repeat_kv(self._split_heads(self.v_proj(value), self.kv_heads), repeats)
        if self.training and self.dropout > 0:
            out = attention_with_dropout(q, k, v, attn_mask, is_causal, self.dropout)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
        out = out.transpose(1, 2).reshape(b, tq, self.embed_dim)  # merge heads: (B, Tq, H*d)
        return self.o_proj(out)

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
            f"kv_heads={self.kv_heads}, dropout={self.dropout}"
        )
