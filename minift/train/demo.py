"""The default ``minift train`` run: a small character-level transformer on real text.

The text is the docstrings of a fixed list of Python standard-library modules, read from the
running interpreter's own source files with ``ast`` (never by importing them): real English
technical prose that every machine has, offline. A 2-layer transformer learns to continue it;
the run reports validation loss and perplexity before and after, and a greedy sample.
"""

from __future__ import annotations

import ast
import math
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import minift as mf
from minift import functional as F
from minift import nn

DEMO_MODULES = ("textwrap", "string", "shlex", "fnmatch", "glob", "tempfile", "shutil", "csv",
                "difflib", "heapq", "bisect", "calendar", "contextlib", "functools", "abc",
                "argparse", "base64", "copy", "dataclasses", "fractions", "gzip", "hashlib")


def stdlib_docstrings(modules=DEMO_MODULES) -> str:
    """Module, class and function docstrings of ``modules``, parsed from their source files."""
    root = Path(sysconfig.get_paths()["stdlib"])
    texts = []
    for name in modules:
        path = root / f"{name}.py"
        if not path.exists():
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 40:
                    texts.append(doc.strip())
    if not texts:
        raise FileNotFoundError(f"no standard-library sources found under {root}")
    return "\n\n".join(texts)


class CharVocab:
    """Characters <-> ids; characters outside the training text map to '?'."""

    def __init__(self, text: str) -> None:
        self.chars = sorted(set(text) | {"?"})
        self.index = {c: i for i, c in enumerate(self.chars)}

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        unknown = self.index["?"]
        return np.array([self.index.get(c, unknown) for c in text], dtype=np.int64)

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = nn.MultiHeadAttention(dim, heads)
        self.ln_2 = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, 4 * dim)
        self.down = nn.Linear(4 * dim, dim)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x), is_causal=True)
        return x + self.down(F.gelu(self.up(self.ln_2(x)), approximate="tanh"))


class TinyCharLM(nn.Module):
    """Token + position embeddings, a few blocks, a final norm and a linear head."""

    def __init__(self, vocab: int, dim: int = 128, heads: int = 4, layers: int = 2, context: int = 64):
        super().__init__()
        self.context = context
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(context, dim)
        self.blocks = nn.ModuleList([Block(dim, heads) for _ in range(layers)])
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, ids):  # ids (B, T) -> logits (B, T, vocab)
        positions = np.arange(ids.shape[1])
        x = self.tok(ids) + self.pos(mf.tensor(positions, backend=ids.backend))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


@dataclass
class DemoSetup:
    model: TinyCharLM
    vocab: CharVocab
    train_ids: np.ndarray
    val_ids: np.ndarray


def build_demo(context: int = 64, dim: int = 128, layers: int = 2) -> DemoSetup:
    text = stdlib_docstrings()
    vocab = CharVocab(text)
    ids = vocab.encode(text)
    split = int(0.9 * len(ids))
    model = TinyCharLM(len(vocab), dim=dim, layers=layers, context=context)
    return DemoSetup(model, vocab, ids[:split], ids[split:])


def random_batches(ids: np.ndarray, batch_size: int, context: int, backend, seed: int):
    """Endless (inputs, targets) windows at random offsets; targets are inputs shifted by one."""
    rng = np.random.default_rng(seed)
    while True:
        starts = rng.integers(0, len(ids) - context - 1, size=batch_size)
        window = np.stack([ids[s : s + context + 1] for s in starts])
        yield mf.tensor(window[:, :-1], backend=backend), mf.tensor(window[:, 1:], backend=backend)


def lm_loss(model, batch):
    inputs, targets = batch
    return F.cross_entropy(model(inputs), targets)


def evaluate(model, ids: np.ndarray, context: int, backend, batches: int = 8) -> dict:
    """Mean loss over fixed validation windows (the same windows before and after training)."""
    stream = random_batches(ids, 32, context, backend, seed=12345)
    loss = sum(lm_loss(model, next(stream)).item() for _ in range(batches)) / batches
    return {"loss": round(loss, 4), "perplexity": round(math.exp(loss), 2)}


def greedy_sample(model, vocab: CharVocab, prompt: str, length: int, backend) -> str:
    ids = list(vocab.encode(prompt))
    model.eval()
    with mf.no_grad():
        for _ in range(length):
            window = mf.tensor(np.array([ids[-model.context :]]), backend=backend)
            logits = model(window).numpy()[0, -1]
            ids.append(int(logits.argmax()))
    return vocab.decode(ids)
