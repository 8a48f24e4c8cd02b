"""``minift bench ops``: what the autograd engine costs on top of the array math it runs.

Two measurements:
- per-node overhead: a chain of elementwise ops on tiny arrays, where the math is nearly free,
  so the time is the engine's own (creating the Tensor and Context, the graph walk);
- realistic sizes: forward + backward of matmul, layer_norm, softmax-cross-entropy and conv2d,
  each against the same forward + backward math written directly with the backend's arrays.
The ratio minift / bare is the price of the abstraction; the aim is under 1.10.
"""

from __future__ import annotations

from rich.table import Table

import minift as mf
from minift import functional as F
from minift.bench.timing import best_ms, synchronizer


def _best_time(fn, repeat: int, sync) -> float:
    """Best time of ``repeat`` calls, in seconds (the table prints microseconds)."""
    return best_ms(fn, repeat, sync) / 1000


def _chain_case(xp, length: int = 1000):
    x0 = xp.ones(4, dtype="float32")
    c = xp.asarray(1.0001, dtype="float32")

    def minift_chain():
        x = mf.tensor(x0, requires_grad=True)
        y = x
        for _ in range(length):
            y = y * c
        y.sum().backward()

    def bare_chain():
        ys = [x0]
        for _ in range(length):
            ys.append(ys[-1] * c)
        g = xp.ones_like(x0)
        for _ in range(length):
            g = g * c

    return minift_chain, bare_chain


def _matmul_case(xp, backend, n: int = 1024):
    a, b = backend.normal((n, n)), backend.normal((n, n))
    g = backend.normal((n, n))

    def minift_matmul():
        ta, tb = mf.tensor(a, requires_grad=True), mf.tensor(b, requires_grad=True)
        (ta @ tb).backward(g)

    def bare_matmul():
        a @ b
        g @ b.T
        a.T @ g

    return minift_matmul, bare_matmul


def _layer_norm_case(xp, backend, rows: int = 8192, dim: int = 768, eps: float = 1e-5):
    x, w, bias = backend.normal((rows, dim)), backend.normal((dim,)), backend.normal((dim,))
    g = backend.normal((rows, dim))

    def minift_ln():
        tx, tw, tb = (mf.tensor(v, requires_grad=True) for v in (x, w, bias))
        F.layer_norm(tx, (dim,), tw, tb, eps).backward(g)

    def bare_ln():
        mean = x.mean(-1, keepdims=True)
        rstd = 1 / xp.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps)
        xhat = (x - mean) * rstd
        xhat * w + bias
        gh = g * w
        rstd * (gh - gh.mean(-1, keepdims=True) - xhat * (gh * xhat).mean(-1, keepdims=True))
        (g * xhat).sum(0)
        g.sum(0)

    return minift_ln, bare_ln


def _cross_entropy_case(xp, backend, rows: int = 2048, classes: int = 8192):
    logits = backend.normal((rows, classes))
    target = backend.integers((rows,), 0, classes)

    def minift_ce():
        F.cross_entropy(mf.tensor(logits, requires_grad=True), mf.tensor(target)).backward()

    def bare_ce():  # in place, as a careful hand-written NumPy version would be
        shifted = logits - logits.max(-1, keepdims=True)
        rows_i = xp.arange(rows)
        picked = shifted[rows_i, target]
        p = xp.exp(shifted, out=shifted)
        total = p.sum(-1, keepdims=True)
        (xp.log(total[:, 0]) - picked).mean()
        p /= total
        p[rows_i, target] -= 1
        p /= rows

    return minift_ce, bare_ce


def _conv_case(xp, backend, n=32, c=64, hw=32, o=64, k=3):
    x, w = backend.normal((n, c, hw, hw)), backend.normal((o, c, k, k))
    g = backend.normal((n, o, hw, hw))

    def minift_conv():
        tx, tw = mf.tensor(x, requires_grad=True), mf.tensor(w, requires_grad=True)
        F.conv2d(tx, tw, padding=1).backward(g)

    def bare_conv():  # the fastest plain layout measured: columns (N, C*k*k, H*W)
        padded = xp.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
        s = padded.strides
        view = xp.lib.stride_tricks.as_strided(padded, (n, c, k, k, hw, hw), s + s[2:])
        cols = view.reshape(n, c * k * k, hw * hw)
        wm = w.reshape(o, -1)
        wm @ cols  # y, already (N, O, H*W)
        g2 = g.reshape(n, o, hw * hw)
        (g2 @ cols.swapaxes(-1, -2)).sum(0)  # dW
        dcols = (wm.T @ g2).reshape(n, c, k, k, hw, hw)
        dx = xp.zeros_like(padded)
        for i in range(k):
            for j in range(k):
                dx[:, :, i : i + hw, j : j + hw] += dcols[:, :, i, j]

    return minift_conv, bare_conv


def run_op_benchmarks(backend, repeat: int = 5) -> Table:
    """Time every case on ``backend`` and return the table."""
    xp, sync = backend.xp, synchronizer(backend)
    table = Table(title=f"minift bench ops ({backend.name}, float32, best of {repeat})")
    for column in ("case", "size", "minift", "bare array math", "ratio"):
        table.add_column(column, justify="left" if column in ("case", "size") else "right")

    chain, bare = _chain_case(xp)
    t_chain, t_bare = _best_time(chain, repeat, sync), _best_time(bare, repeat, sync)
    per_node, per_bare = t_chain / 1000 * 1e6, t_bare / 1000 * 1e6
    table.add_row("autograd per node", "1000 x mul, shape (4,)", f"{per_node:.1f} us",
                  f"{per_bare:.1f} us", f"+{per_node - per_bare:.1f} us/op")
    cases = [
        ("matmul", "1024 x 1024 @ 1024 x 1024", _matmul_case(xp, backend)),
        ("layer_norm", "(8192, 768)", _layer_norm_case(xp, backend)),
        ("softmax cross-entropy", "(2048, 8192) logits", _cross_entropy_case(xp, backend)),
        ("conv2d 3x3, pad 1", "(32, 64, 32, 32) -> 64", _conv_case(xp, backend)),
    ]
    for name, size, (ours, theirs) in cases:
        t_ours, t_theirs = _best_time(ours, repeat, sync), _best_time(theirs, repeat, sync)
        table.add_row(name, size, f"{t_ours * 1e3:.2f} ms", f"{t_theirs * 1e3:.2f} ms",
                      f"{t_ours / t_theirs:.2f}")
    return table
