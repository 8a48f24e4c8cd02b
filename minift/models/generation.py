"""Autoregressive generation: the KV cache, and greedy / temperature / top-k / top-p sampling.

Without a cache, step n runs the whole prefix again: O(T^2) token-layers of work for T tokens.
With one, each layer keeps the keys and values it already computed, so step n feeds only the
newest token and attends over the cached keys (the causal mask is bottom-right aligned, so
the one query sees them all). Both paths give the same tokens; a test checks it.

Sampling (Holtzman et al. 2019 for top-p, https://arxiv.org/abs/1904.09751) runs on the host
in float64 on the last position's logits, with its own NumPy generator, so a seed fixes the
output whatever the backend.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import minift as mf
from minift import functional as F
from minift.autograd import is_grad_enabled
from minift.tensor import Tensor


class KVCache:
    """Per-layer keys and values of every token seen so far, (B, n_kv_heads, length, head_dim).

    A layer calls ``update`` with the new tokens' k and v and attends over what it returns; the
    model calls ``advance`` once all layers have run.

    Generation (no autograd) appends into a buffer per layer that doubles when full, and
    returns views of its filled part: T steps copy O(T) keys in all, where concatenating at
    every step would copy O(T^2). Where autograd records (prefix tuning trains through the
    cached prefix) the keys are concatenated, which keeps the graph.
    """

    def __init__(self) -> None:
        self.keys: dict[int, Tensor] = {}
        self.values: dict[int, Tensor] = {}
        self._buffers: dict[int, tuple[Any, Any]] = {}  # layer -> (keys, values) with spare room
        self.length = 0

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if layer in self.keys:
            cached = (self.keys[layer], self.values[layer])
            if is_grad_enabled() and any(t.requires_grad for t in (*cached, k, v)):
                k, v = F.cat([cached[0], k], axis=2), F.cat([cached[1], v], axis=2)
            else:
                k, v = self._append(layer, cached, (k, v))
        self.keys[layer], self.values[layer] = k, v
        return k, v

    def _append(self, layer: int, cached: tuple, fresh: tuple) -> tuple[Tensor, Tensor]:
        """Write ``fresh`` after ``cached`` in the layer's buffers (grown to twice the need)."""
        used, total = cached[0].shape[2], cached[0].shape[2] + fresh[0].shape[2]
        buffers = self._buffers.get(layer)
        if buffers is None or buffers[0].shape[2] < total:
            buffers = tuple(_grown(t, 2 * total) for t in cached)
            self._buffers[layer] = buffers
        for buffer, new in zip(buffers, fresh):
            buffer[:, :, used:total] = new.data
        backend = cached[0].backend
        return tuple(Tensor._wrap(buffer[:, :, :total], backend) for buffer in buffers)

    def advance(self, new_tokens: int) -> None:
        self.length += new_tokens


def _grown(t: Tensor, capacity: int) -> Any:
    """A (B, H, capacity, d) array of t's backend holding t's entries first."""
    b, h, used, d = t.shape
    buffer = t.backend.empty((b, h, capacity, d), t.data.dtype)
    buffer[:, :, :used] = t.data
    return buffer


def next_tokens(
    logits: np.ndarray,
    do_sample: bool,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    rng: np.random.Generator,
) -> np.ndarray:
    """One token per row of ``logits`` (B, V): the argmax, or a draw from the filtered softmax.

    top-k keeps the k largest logits; top-p keeps the smallest set of tokens, most likely
    first, whose probability reaches p. The draw inverts the cumulative distribution at one
    uniform number per row.
    """
    if not do_sample:
        return logits.argmax(axis=-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = np.partition(logits, -top_k, axis=-1)[:, -top_k, None]
        logits = np.where(logits < kth, -np.inf, logits)
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-probs, axis=-1, kind="stable")
        sorted_probs = np.take_along_axis(probs, order, axis=-1)
        mass_before = np.cumsum(sorted_probs, axis=-1) - sorted_probs
        keep_sorted = mass_before < top_p  # the most likely token always stays
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=-1)
        probs = np.where(keep, probs, 0.0)
        probs /= probs.sum(axis=-1, keepdims=True)
    u = rng.random((probs.shape[0], 1))
    return np.minimum((np.cumsum(probs, axis=-1) < u).sum(axis=-1), probs.shape[-1] - 1)


def _check_sampling(max_new_tokens: int, temperature: float, top_k: Any, top_p: Any) -> None:
    if max_new_tokens < 0:
        raise ValueError(f"generate: max_new_tokens must be >= 0, got {max_new_tokens}")
    if not temperature > 0:
        raise ValueError(f"generate: temperature must be > 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"generate: top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"generate: top_p must be in (0, 1], got {top_p}")


def _host(x: Any) -> np.ndarray:
    return x.numpy() if isinstance(x, Tensor) else np.asarray(x)


class GenerationMixin:
    """``generate`` for a model whose ``forward(ids, attention_mask, cache)`` returns logits."""

    def generate(
        self,
        input_ids: Any,
        max_new_tokens: int,
        *,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_id: int | None = None,
        attention_mask: Any = None,
        use_cache: bool = True,
        seed: int | None = None,
    ) -> np.ndarray:
        """Extend each row of ``input_ids`` (B, T) by up to ``max_new_tokens`` tokens.

        Greedy unless ``do_sample``. Rows that produced ``eos_id`` keep emitting it; generation
        stops early when every row has. A left-padded batch needs its ``attention_mask``.
        Returns the host array (B, T + new) of int64 ids; the model's train/eval mode is kept.
        """
        _check_sampling(max_new_tokens, temperature, top_k, top_p)
        ids = np.array(_host(input_ids), dtype=np.int64, ndmin=2)
        mask = None if attention_mask is None else _host(attention_mask)
        rng, done = np.random.default_rng(seed), np.zeros(len(ids), dtype=bool)
        cache, was_training = (KVCache() if use_cache else None), self.training
        self.eval()
        try:
            with mf.no_grad():
                for step in range(max_new_tokens):
                    feed = ids[:, -1:] if use_cache and step > 0 else ids
                    logits = self(feed, mask, cache)
                    last = logits.backend.to_numpy(logits.data[:, -1, :]).astype(np.float64)
                    token = next_tokens(last, do_sample, temperature, top_k, top_p, rng)
                    if eos_id is not None:
                        token = np.where(done, eos_id, token)
                        done |= token == eos_id
                    ids = np.concatenate([ids, token[:, None]], axis=1)
                    if mask is not None:
                        mask = np.concatenate([mask, np.ones_like(mask[:, :1])], axis=1)
                    if done.all():
                        break
        finally:
            self.train(was_training)
        return ids
