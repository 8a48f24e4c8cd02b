"""The benchmark's PyTorch twin of a GPT-2-shaped minift GPT, with the same weights.

Imported by ``minift bench train`` only; if PyTorch is not importable, ``torch_step_fn``
returns None and the benchmark prints minift alone. PyTorch is never a dependency. On the
``cuda`` backend the twin runs on the GPU, in float32 (TF32 off), as minift does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class TorchStep:
    step: Callable[[], Any]
    sync: Callable[[], None]


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _build_module(torch, config):
    nn, F = torch.nn, torch.nn.functional

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            d = config.dim
            self.ln_1 = nn.LayerNorm(d, eps=config.norm_eps)
            self.ln_2 = nn.LayerNorm(d, eps=config.norm_eps)
            self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
            self.up, self.down = nn.Linear(d, config.hidden_dim), nn.Linear(config.hidden_dim, d)

        def forward(self, x):
            b, t, d = x.shape
            h = self.ln_1(x)
            q, k, v = (
                p(h).view(b, t, config.n_heads, -1).transpose(1, 2)
                for p in (self.q, self.k, self.v)
            )
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.o(a.transpose(1, 2).reshape(b, t, d))
            return x + self.down(F.gelu(self.up(self.ln_2(x)), approximate="tanh"))

    class TorchGPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(config.vocab_size, config.dim)
            self.wpe = nn.Embedding(config.context_length, config.dim)
            self.blocks = nn.ModuleList(Block() for _ in range(config.n_layers))
            self.ln_f = nn.LayerNorm(config.dim, eps=config.norm_eps)

        def forward(self, ids):
            x = self.wte(ids) + self.wpe(torch.arange(ids.shape[1], device=ids.device))
            for block in self.blocks:
                x = block(x)
            return self.ln_f(x) @ self.wte.weight.T  # tied head

    return TorchGPT()


_BLOCK_NAMES = {
    "input_layernorm": "ln_1",
    "post_attention_layernorm": "ln_2",
    "self_attn.q_proj": "q",
    "self_attn.k_proj": "k",
    "self_attn.v_proj": "v",
    "self_attn.o_proj": "o",
    "mlp.up_proj": "up",
    "mlp.down_proj": "down",
}


def _twin_key(key: str) -> str:
    """minift's state_dict key -> the twin's (e.g. layers.0.self_attn.q_proj.weight -> blocks.0.q.weight)."""
    if key.startswith("layers."):
        _, index, rest = key.split(".", 2)
        module, param = rest.rsplit(".", 1)
        return f"blocks.{index}.{_BLOCK_NAMES[module]}.{param}"
    top = {"embed_tokens": "wte", "embed_positions": "wpe", "norm": "ln_f"}
    module, param = key.split(".")
    return f"{top[module]}.{param}"


def _copy_weights(torch, twin, model) -> None:
    """Both store Linear weights as (out, in); the tied lm_head is the twin's wte."""
    state = {
        _twin_key(k): torch.from_numpy(np.ascontiguousarray(v.numpy()))
        for k, v in model.state_dict().items()
        if k != "lm_head.weight"
    }
    twin.load_state_dict(state, strict=True)


def torch_step_fn(model, ids: np.ndarray, backend_name: str) -> TorchStep | None:
    """One AdamW step of the PyTorch twin of ``model``, or None without PyTorch or for shapes
    it does not cover (the twin is GPT-2 shaped: LayerNorm, GELU, learned positions, tied)."""
    torch, c = _torch(), model.config
    gpt2_shaped = (c.norm, c.mlp, c.positions, c.tie_embeddings, c.bias, c.kv_heads) == (
        "layernorm",
        "gelu",
        "learned",
        True,
        True,
        c.n_heads,
    )
    if torch is None or not gpt2_shaped:
        return None
    device = "cuda" if backend_name == "cuda" else "cpu"
    # full float32 products: a GPU may otherwise run them in TF32, which minift never does
    torch.set_float32_matmul_precision("highest")
    twin = _build_module(torch, c)
    _copy_weights(torch, twin, model)
    twin = twin.to(device)
    inputs = torch.from_numpy(ids[:, :-1]).to(device)
    targets = torch.from_numpy(ids[:, 1:]).to(device)
    optimizer = torch.optim.AdamW(twin.parameters(), lr=1e-4)

    def step():
        logits = twin(inputs)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    return TorchStep(step, sync)
