"""``minift bench kernels``: minift's CUDA kernels against the library calls they replace.

Three tables; every row names the device it ran on.

- matmul: GFLOP/s (2 M N K / time) of the SGEMM RawKernel (backends/kernels/sgemm.cu) against
  the library's matmul (cuBLAS through ``cupy.matmul`` on a GPU) at square sizes, and at the
  products of one training step of bench-l: forward y = x W^T (NT), backward dx = dy W (NN)
  and dW = dy^T x (TN), and attention's batched products. Goal: >= 80% of cuBLAS at 4096.
- NF4 GEMV at batch 1: the fused dequantize-GEMV (nf4.cu) against dequantizing W to float32
  and then the library's matmul. Its bandwidth is the bytes it must read (packed codes, block
  scales, code table, x) and write (y) over its time, against a device-to-device copy
  (2 x bytes / time: read and write), the most a memory-bound kernel can hope for. Goals:
  >= 4x faster (at the very least 2x) and >= 60% of the copy's bandwidth.
- fused against composed: LoRA linear, cross-entropy, causal softmax and layer norm, each one
  kernel against the same math as a chain of library calls.

``--tiny`` sizes fit the CPU emulator; its times are the emulator's and say nothing of a GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from rich.table import Table

from backends.kernels import gemm, lora, nf4, rowwise
from backends.kernels.loader import CudaKernels
from minift.bench.timing import device_name, format_number, kernel_best_ms
from minift.models import configs
from minift.quant.blockwise import quantize_4bit
from minift.quant.codes import code_table

MATMUL_GOAL, MATMUL_GOAL_SIZE = 0.80, 4096  # of cuBLAS, for 4096 x 4096 @ 4096 x 4096
GEMV_SPEEDUP_GOAL, GEMV_SPEEDUP_FLOOR = 4.0, 2.0  # against dequantize + library matmul
GEMV_BANDWIDTH_GOAL = 0.60  # of the device copy's bandwidth
NF4_BLOCKSIZE = 64  # QLoRA's


@dataclass(frozen=True)
class Sizes:
    """What each table times: the GPU sizes of the issue, or tiny ones for the emulator."""

    squares: tuple[int, ...]  # n for n x n @ n x n
    model: str  # the config whose training step's products are timed
    batch: int
    gemv: tuple[tuple[int, int], ...]  # W as (out_features, in_features)
    copy_floats: int  # size of the copy that measures bandwidth
    lora: tuple[tuple[int, int, int], ...]  # (tokens, d_in = d_out, rank)
    cross_entropy: tuple[tuple[int, int], ...]  # (rows, vocabulary)
    softmax: tuple[int, int]  # (batch x heads, tokens): causal scores (BH, T, T)
    norm: tuple[int, int]  # (rows, dim)


GPU_SIZES = Sizes(
    squares=(1024, 2048, 4096, 8192),
    model="bench-l",
    batch=8,
    gemv=((4096, 4096), (14336, 4096), (4096, 14336)),  # Llama-3-8B's attention and MLP
    copy_floats=2**27,  # 512 MB
    lora=((4096, 4096, 16), (4096, 768, 8)),
    cross_entropy=((4096, 32000), (4096, 50257)),  # Llama-2's and GPT-2's vocabularies
    softmax=(8 * 12, 512),  # bench-l's attention
    norm=(4096, 768),
)
# Small enough for the emulator (a few blocks a launch); not multiples of the tiles on purpose.
TINY_SIZES = Sizes(
    squares=(64, 100),
    model="gpt-tiny",
    batch=2,
    gemv=((96, 128), (64, 192)),
    copy_floats=2**18,
    lora=((40, 48, 4),),
    cross_entropy=((4, 300),),
    softmax=(2, 8),
    norm=(6, 48),
)


def _random(ks, rng: np.random.Generator, shape: tuple) -> Any:
    """Standard normal float32 drawn on the host (same numbers on any device), then moved."""
    return ks.xp.asarray(rng.standard_normal(shape, dtype=np.float32))


def _on_gpu(ks) -> bool:
    return isinstance(ks, CudaKernels)


def _library(ks) -> str:
    return "cuBLAS" if _on_gpu(ks) else "NumPy"


def _verdict(ks, met: bool) -> str:
    """Whether a goal is met; only a GPU's times can say."""
    return ("met" if met else "missed") if _on_gpu(ks) else "GPU only"


def _new_table(ks, what: str, repeat: int, caption: str, columns: str, left: int) -> Table:
    """A table titled ``what`` with the ``|``-separated columns, the first ``left`` of them text."""
    title = f"{what} (float32, best of {repeat})"
    if not _on_gpu(ks):
        title += " - CPU emulator times, not a GPU's"
    table = Table(title=title, caption=caption)
    for i, column in enumerate(columns.split("|")):
        table.add_column(column, justify="left" if i < left else "right")
    return table


# --- matmul -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Product:
    """C (batch, m, n) = op(A) op(B); op transposes an operand stored the other way round."""

    name: str
    m: int
    n: int
    k: int
    trans_a: bool = False
    trans_b: bool = False
    batch: int = 0  # 0: plain 2-D operands

    @property
    def layout(self) -> str:
        return ("T" if self.trans_a else "N") + ("T" if self.trans_b else "N")

    @property
    def flops(self) -> int:
        return 2 * max(self.batch, 1) * self.m * self.n * self.k


def step_products(config_name: str, batch: int) -> list[Product]:
    """The products of one training step of a GPT config, with the layouts backward uses."""
    c = configs.get(config_name)
    tokens, d, t, heads = batch * c.context_length, c.dim, c.context_length, c.n_heads
    linears = (
        ("q/k/v/o", d, d),
        ("mlp up", d, c.hidden_dim),
        ("mlp down", c.hidden_dim, d),
        ("lm head", d, c.vocab_size),
    )
    products = []
    for name, d_in, d_out in linears:  # W is (d_out, d_in), as nn.Linear stores it
        products += [
            Product(f"{name} y = x W^T", tokens, d_out, d_in, trans_b=True),
            Product(f"{name} dx = dy W", tokens, d_in, d_out),
            Product(f"{name} dW = dy^T x", d_out, d_in, tokens, trans_a=True),
        ]
    bh, head_dim = batch * heads, d // heads
    return products + [
        Product("attention S = Q K^T", t, t, head_dim, trans_b=True, batch=bh),
        Product("attention O = P V", t, head_dim, t, batch=bh),
        Product("attention dV = P^T dO", t, head_dim, t, trans_a=True, batch=bh),
    ]


def _operands(ks, rng, p: Product) -> tuple[Any, Any]:
    """A and B as stored: A is (k, m) when transposed, B (n, k); C-contiguous."""
    lead = (p.batch,) if p.batch else ()
    a = _random(ks, rng, lead + ((p.k, p.m) if p.trans_a else (p.m, p.k)))
    b = _random(ks, rng, lead + ((p.n, p.k) if p.trans_b else (p.k, p.n)))
    return a, b


def _time_product(ks, rng, p: Product, repeat: int) -> tuple[float, float]:
    """(kernel ms, library ms); the library gets the transposed views, as cupy.matmul takes."""
    a, b = _operands(ks, rng, p)
    a_op = a.swapaxes(-1, -2) if p.trans_a else a
    b_op = b.swapaxes(-1, -2) if p.trans_b else b
    ours = kernel_best_ms(
        ks, lambda: gemm.gemm(ks, a, b, trans_a=p.trans_a, trans_b=p.trans_b), repeat
    )
    theirs = kernel_best_ms(ks, lambda: ks.xp.matmul(a_op, b_op), repeat)
    return ours, theirs


def matmul_table(ks, sizes: Sizes, repeat: int, seed: int = 0) -> Table:
    """Kernel SGEMM against the library's matmul, square and at a training step's shapes."""
    rng, device, lib = np.random.default_rng(seed), device_name(ks), _library(ks)
    squares = [Product(f"square {n}", n, n, n) for n in sizes.squares]
    caption = (
        f"Goal: >= {MATMUL_GOAL:.0%} of cuBLAS at {MATMUL_GOAL_SIZE}^3. "
        f"Products of a {sizes.model} step at batch {sizes.batch} below the squares."
    )
    columns = f"device|product|layout|batch x M x N x K|kernel ms|kernel GFLOP/s|{lib} GFLOP/s"
    table = _new_table(
        ks, f"SGEMM RawKernel vs {lib} matmul", repeat, caption, f"{columns}|% of {lib}|goal", 2
    )
    for p in squares + step_products(sizes.model, sizes.batch):
        ours, theirs = _time_product(ks, rng, p, repeat)
        fraction = theirs / ours
        goal = ""
        if p.name == f"square {MATMUL_GOAL_SIZE}":
            goal = f">= {MATMUL_GOAL:.0%}: {_verdict(ks, fraction >= MATMUL_GOAL)}"
        table.add_row(
            device,
            p.name,
            p.layout,
            f"{max(p.batch, 1)} x {p.m} x {p.n} x {p.k}",
            format_number(ours),
            format_number(p.flops / ours / 1e6),
            format_number(p.flops / theirs / 1e6),
            f"{fraction:.0%}",
            goal,
        )
    return table


# --- NF4 GEMV ---------------------------------------------------------------------------------
def copy_bandwidth(ks, floats: int, repeat: int) -> float:
    """GB/s of a device-to-device copy of ``floats`` float32: it reads and writes every byte."""
    src = ks.xp.ones(floats, dtype=ks.xp.float32)
    dst = ks.xp.empty_like(src)
    ms = kernel_best_ms(ks, lambda: ks.xp.copyto(dst, src), repeat)
    return 2 * src.nbytes / ms / 1e6


def _nf4_weight(ks, rng, out_features: int, in_features: int) -> tuple[Any, Any, Any]:
    """(packed, absmax, code) on the device: quantized on the host, as Linear4bit stores them."""
    w = 0.02 * rng.standard_normal((out_features, in_features), dtype=np.float32)
    state = quantize_4bit(w, "nf4", NF4_BLOCKSIZE)
    xp = ks.xp
    return xp.asarray(state.packed), xp.asarray(state.absmax), xp.asarray(code_table("nf4"))


def _time_gemv(ks, rng, out_features: int, in_features: int, repeat: int) -> dict:
    packed, absmax, code = _nf4_weight(ks, rng, out_features, in_features)
    x = _random(ks, rng, (1, in_features))
    shape = (out_features, in_features)

    def fused():
        return nf4.gemv(ks, x, packed, absmax, code, NF4_BLOCKSIZE, *shape)

    def composed():  # W (out, in) in float32 first: 8x the bytes of the packed codes
        w = nf4.dequantize(ks, packed, absmax, code, NF4_BLOCKSIZE, shape)
        return ks.xp.matmul(x, w.T)

    bytes_moved = packed.nbytes + absmax.nbytes + code.nbytes + x.nbytes + 4 * out_features
    return {
        "fused_ms": kernel_best_ms(ks, fused, repeat),
        "composed_ms": kernel_best_ms(ks, composed, repeat),
        "bytes": bytes_moved,
    }


def nf4_table(ks, sizes: Sizes, repeat: int, seed: int = 0) -> Table:
    """Fused NF4 GEMV against dequantize + matmul, and its bandwidth against a device copy."""
    rng, device, lib = np.random.default_rng(seed), device_name(ks), _library(ks)
    copy_gbs = copy_bandwidth(ks, sizes.copy_floats, repeat)
    what = f"NF4 GEMV, batch 1, block {NF4_BLOCKSIZE}: fused vs dequantize + {lib} matmul"
    caption = (
        f"Goals: >= {GEMV_SPEEDUP_GOAL:.0f}x faster (at least {GEMV_SPEEDUP_FLOOR:.0f}x) and "
        f">= {GEMV_BANDWIDTH_GOAL:.0%} of the copy's bandwidth. Bytes: packed codes, absmax, "
        f"code table and x read, y written. Copy: {4 * sizes.copy_floats / 2**20:,.0f} MB, "
        "device to device."
    )
    columns = "device|W (out x in)|fused ms|dequant + matmul ms|speedup|MB moved|GB/s|copy GB/s"
    table = _new_table(ks, what, repeat, caption, f"{columns}|% of copy|goals", 1)
    for out_features, in_features in sizes.gemv:
        r = _time_gemv(ks, rng, out_features, in_features, repeat)
        speedup = r["composed_ms"] / r["fused_ms"]
        gbs = r["bytes"] / r["fused_ms"] / 1e6
        table.add_row(
            device,
            f"{out_features} x {in_features}",
            format_number(r["fused_ms"]),
            format_number(r["composed_ms"]),
            f"{format_number(speedup)}x",
            format_number(r["bytes"] / 1e6),
            format_number(gbs),
            format_number(copy_gbs),
            f"{gbs / copy_gbs:.0%}",
            _gemv_verdict(ks, speedup, gbs / copy_gbs),
        )
    return table


def _gemv_verdict(ks, speedup: float, of_copy: float) -> str:
    if not _on_gpu(ks):
        return "GPU only"
    speed = "missed"
    if speedup >= GEMV_SPEEDUP_GOAL:
        speed = "met"
    elif speedup >= GEMV_SPEEDUP_FLOOR:
        speed = "floor only"
    return f"speed {speed}, bandwidth {'met' if of_copy >= GEMV_BANDWIDTH_GOAL else 'missed'}"


# --- fused against composed -------------------------------------------------------------------
@dataclass
class FusedCase:
    op: str
    shape: str
    fused: Callable[[], object]
    composed: Callable[[], object]  # the same math as a chain of library calls


def _lora_case(ks, rng, tokens: int, d: int, r: int) -> FusedCase:
    xp, scale = ks.xp, 2.0  # alpha / r with alpha = 2 r
    x, w = _random(ks, rng, (tokens, d)), _random(ks, rng, (d, d))
    a, b = _random(ks, rng, (r, d)), _random(ks, rng, (d, r))
    return FusedCase(
        "LoRA linear",
        f"x {tokens} x {d}, r {r}",
        lambda: lora.lora_linear(ks, x, w, a, b, scale),
        lambda: xp.matmul(x, w.T) + scale * xp.matmul(xp.matmul(x, a.T), b.T),
    )


def _cross_entropy_case(ks, rng, rows: int, vocab: int) -> FusedCase:
    xp = ks.xp
    logits = _random(ks, rng, (rows, vocab))
    target = xp.asarray(rng.integers(0, vocab, rows))
    picked = xp.arange(rows)

    def composed():  # loss_i = logsumexp(z_i) - z_i[t_i], with the max taken out first
        peak = logits.max(-1, keepdims=True)
        lse = xp.log(xp.exp(logits - peak).sum(-1)) + peak[:, 0]
        return lse - logits[picked, target], lse

    return FusedCase(
        "cross-entropy",
        f"logits {rows} x {vocab}",
        lambda: rowwise.cross_entropy(ks, logits, target, check_targets=False),  # as minift calls it
        composed,
    )


def _softmax_case(ks, rng, heads: int, tokens: int) -> FusedCase:
    xp = ks.xp
    scores = _random(ks, rng, (heads, tokens, tokens))
    causal = xp.tri(tokens, dtype=bool)  # built once, as a model caches its mask

    def composed():
        masked = xp.where(causal, scores, -np.inf)
        e = xp.exp(masked - masked.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    return FusedCase(
        "causal softmax",
        f"scores {heads} x {tokens} x {tokens}",
        lambda: rowwise.softmax(ks, scores, causal=True),
        composed,
    )


def _layer_norm_case(ks, rng, rows: int, dim: int, eps: float = 1e-5) -> FusedCase:
    xp = ks.xp
    x, w, b = _random(ks, rng, (rows, dim)), _random(ks, rng, (dim,)), _random(ks, rng, (dim,))

    def composed():
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / xp.sqrt(var + eps) * w + b

    return FusedCase(
        "layer norm", f"x {rows} x {dim}", lambda: rowwise.layer_norm(ks, x, w, b, eps), composed
    )


def _fused_cases(ks, rng, sizes: Sizes):
    """One case at a time, so that only one case's arrays are alive on the device."""
    for tokens, d, r in sizes.lora:
        yield _lora_case(ks, rng, tokens, d, r)
    for rows, vocab in sizes.cross_entropy:
        yield _cross_entropy_case(ks, rng, rows, vocab)
    yield _softmax_case(ks, rng, *sizes.softmax)
    yield _layer_norm_case(ks, rng, *sizes.norm)


def fused_table(ks, sizes: Sizes, repeat: int, seed: int = 0) -> Table:
    """Each fused kernel against the same math composed of library calls."""
    rng, device, lib = np.random.default_rng(seed), device_name(ks), _library(ks)
    what = f"Fused kernels vs the same math in {ks.xp.__name__} calls"
    caption = f"Composed: library calls ({lib} matmul for LoRA's three products)."
    columns = "device|op|shape|fused ms|composed ms|speedup"
    table = _new_table(ks, what, repeat, caption, columns, 3)
    for case in _fused_cases(ks, rng, sizes):
        fused = kernel_best_ms(ks, case.fused, repeat)
        composed = kernel_best_ms(ks, case.composed, repeat)
        table.add_row(
            device,
            case.op,
            case.shape,
            format_number(fused),
            format_number(composed),
            f"{format_number(composed / fused)}x",
        )
    return table


TABLES = {"matmul": matmul_table, "nf4": nf4_table, "fused": fused_table}


def run_kernel_benchmarks(
    ks, tiny: bool, repeat: int, seed: int = 0, only: tuple[str, ...] = ()
) -> Iterator[Table]:
    """Each table named in ``only`` (all by default) as it is done, at GPU or tiny sizes."""
    sizes = TINY_SIZES if tiny else GPU_SIZES
    for name in only or tuple(TABLES):
        yield TABLES[name](ks, sizes, repeat, seed)
