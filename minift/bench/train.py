"""``minift bench train``: one GPT training step (forward + backward + AdamW) against PyTorch.

For each config it prints ms/step, tokens/s, the achieved rate 6 N T / time (Kaplan et al.
2020: a forward and backward pass cost about 6 flops per parameter per token; attention's
T^2 term is left out, so the true rate is a little higher) and that rate as a fraction of the
machine's measured float32 matmul rate, and the peak memory of a step. If PyTorch is
importable it trains the same model, with the same weights, in this process, and prints
the time ratio; PyTorch is never a dependency.

On a backend with CUDA kernels (``cuda``, ``cuda-emulator``) the step is timed twice: with
products on minift's SGEMM kernel and with ``MINIFT_CUDA_MATMUL=cublas`` (the library), so
that kernel against library shows end to end; and once more on NumPy as the CPU baseline.
"""

from __future__ import annotations

import os
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
from rich.table import Table

import minift as mf
from backends import get_backend
from minift import functional as F
from minift.bench.timing import best_ms, device_name, format_number, synchronizer
from minift.bench.torch_gpt import torch_step_fn
from minift.models import configs
from minift.models.gpt import GPT

CONFIGS = ("bench-s", "bench-m")
LARGE = "bench-l"  # 12 layers, d = 768, 512 tokens: the GPU goal's config
BATCH = 8
TORCH_GOAL = 1.5  # minift / PyTorch (fp32) on the large config, on a GPU


def default_configs(backend) -> tuple[str, ...]:
    """The train benchmark's configs, and the large one on a GPU."""
    return (*CONFIGS, LARGE) if backend.name == "cuda" else CONFIGS


@contextmanager
def matmul_path(path: str) -> Iterator[None]:
    """Run the block with ``MINIFT_CUDA_MATMUL=path`` (read at every product), then restore it."""
    before = os.environ.get("MINIFT_CUDA_MATMUL")
    os.environ["MINIFT_CUDA_MATMUL"] = path
    try:
        yield
    finally:
        if before is None:
            del os.environ["MINIFT_CUDA_MATMUL"]
        else:
            os.environ["MINIFT_CUDA_MATMUL"] = before


def matmul_gflops(backend, n: int | None = None, repeat: int = 5) -> float:
    """The machine's float32 matmul rate through the backend's hot path, in GFLOP/s.

    n defaults to 2048, and to 128 in the emulator, which runs a thread per CUDA thread.
    """
    n = n or (128 if backend.name == "cuda-emulator" else 2048)
    a, b = backend.normal((n, n)), backend.normal((n, n))
    ms = best_ms(lambda: backend.matmul(a, b), repeat, synchronizer(backend))
    return 2 * n**3 / (ms / 1000) / 1e9


def minift_step_fn(model: GPT, ids: np.ndarray) -> Callable[[], float]:
    """A closure running one AdamW training step of ``model`` on the windows ``ids``."""
    backend = model.embed_tokens.weight.backend
    inputs = mf.tensor(ids[:, :-1], backend=backend)
    targets = mf.tensor(ids[:, 1:], backend=backend)
    optimizer = mf.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> float:
        loss = F.cross_entropy(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss

    return step


def _peak_mb(step: Callable[[], object]) -> float:
    """Peak host memory allocated during one step (NumPy reports its buffers to tracemalloc)."""
    tracemalloc.start()
    step()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def _step_ms(config, backend, ids: np.ndarray, repeat: int) -> tuple[GPT, Callable, float]:
    model = GPT(config, backend=backend)
    step = minift_step_fn(model, ids)
    return model, step, best_ms(step, repeat, synchronizer(backend))


def bench_config(
    name: str, backend, repeat: int, matmul_rate: float, with_torch: bool, with_numpy: bool
) -> dict:
    """One row: the step on ``backend`` (and its cuBLAS variant), on NumPy, and in PyTorch."""
    config = configs.get(name)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, config.vocab_size, size=(BATCH, config.context_length + 1))
    tokens = BATCH * config.context_length
    with matmul_path("kernel"):  # even where the shell exported MINIFT_CUDA_MATMUL=cublas
        model, step, ms = _step_ms(config, backend, ids, repeat)
    n_params = sum(p.numel() for p in model.parameters())
    row = {
        "config": name,
        "params": n_params,
        "tokens": tokens,
        "ms": ms,
        "gflops": 6 * n_params * tokens / (ms / 1000) / 1e9,
    }
    row["fraction"] = row["gflops"] / matmul_rate
    row["peak_mb"] = _peak_mb(step) if backend.name == "numpy" else None
    if backend.kernels is not None:
        with matmul_path("cublas"):
            row["cublas_ms"] = best_ms(step, repeat, synchronizer(backend))
    if with_numpy:
        row["numpy_ms"] = _step_ms(config, get_backend("numpy"), ids, repeat)[2]
    torch_step = torch_step_fn(model, ids, backend.name) if with_torch else None
    if torch_step is not None:
        row["torch_ms"] = best_ms(torch_step.step, repeat, torch_step.sync)
    return row


def run_train_benchmarks(
    backend, repeat: int = 5, names=None, with_torch: bool = True, with_numpy: bool | None = None
) -> Table:
    """A rich Table with one row per config.

    Args:
        names: config names; default ``default_configs(backend)``.
        with_numpy: time each config on NumPy too (only when ``backend`` is not NumPy); None:
            every config but the large one, whose NumPy step takes minutes.
    """
    names = tuple(names or default_configs(backend))
    with matmul_path("kernel"):
        rate = matmul_gflops(backend)
    rows = [
        bench_config(
            name, backend, repeat, rate, with_torch, numpy_baseline(backend, name, with_numpy)
        )
        for name in names
    ]
    return _table(backend, rows, rate)


def numpy_baseline(backend, name: str, with_numpy: bool | None) -> bool:
    """Whether config ``name`` is also timed on NumPy: never on NumPy itself; when not asked
    (None), for every config but the large one."""
    if backend.name == "numpy":
        return False
    return name != LARGE if with_numpy is None else with_numpy


def _params(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 100_000 else f"{n:,}"


def _table(backend, rows: list[dict], rate: float) -> Table:
    kernels = backend.kernels is not None
    library = "cuBLAS" if backend.name == "cuda" else "NumPy"  # MINIFT_CUDA_MATMUL=cublas: xp
    title = (
        f"GPT training step, batch {BATCH}, float32, {backend.name} on "
        f"{device_name(backend.kernels)} (matmul {format_number(rate)} GFLOP/s)"
    )
    if backend.name == "cuda-emulator":
        title += " - CPU emulator times, not a GPU's"
    table = Table(title=title, caption=_caption(backend, rows))
    table.add_column("config", no_wrap=True, min_width=8)
    columns = ["params", "ms/step", "tokens/s", "GFLOP/s (6NT)", "of matmul", "peak MB"]
    if kernels:
        columns += [f"minift ({library} matmul) ms", "numpy ms", "numpy / minift"]
    columns += ["PyTorch ms", "minift / PyTorch"]
    for column in columns:
        table.add_column(column, justify="right")
    for r in rows:
        torch_ms, numpy_ms = r.get("torch_ms"), r.get("numpy_ms")
        cells = [
            _params(r["params"]),
            format_number(r["ms"]),
            f"{r['tokens'] / (r['ms'] / 1000):,.0f}",
            format_number(r["gflops"]),
            f"{r['fraction']:.0%}",
            "-" if r["peak_mb"] is None else f"{r['peak_mb']:.0f}",
        ]
        if kernels:
            cells += [
                format_number(r["cublas_ms"]),
                format_number(numpy_ms),
                format_number(None if numpy_ms is None else numpy_ms / r["ms"]),
            ]
        cells += [
            format_number(torch_ms),
            format_number(None if torch_ms is None else r["ms"] / torch_ms),
        ]
        table.add_row(r["config"], *cells)
    return table


def _caption(backend, rows: list[dict]) -> str | None:
    notes = []
    if backend.kernels is not None:
        notes.append(
            "ms/step: products on minift's SGEMM kernel; library matmul: MINIFT_CUDA_MATMUL=cublas."
        )
        skipped = [r["config"] for r in rows if "numpy_ms" not in r]
        if skipped:
            notes.append(f"No numpy baseline for {', '.join(skipped)} (--numpy to time it).")
    if any("torch_ms" in r for r in rows):
        where = "CUDA" if backend.name == "cuda" else "CPU"
        notes.append(f"PyTorch on {where}, same weights.")
    if backend.name == "cuda":
        notes.append(f"Goal: minift / PyTorch <= {TORCH_GOAL} on {LARGE}.")
    return " ".join(notes) or None
