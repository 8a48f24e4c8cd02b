"""``minift bench kernels`` prints its three tables (speed is printed, never asserted).

The tiny run goes through the CPU emulator here and through the GPU where there is one; the
full-size run is for a GPU only.
"""

import math

import pytest
from click.testing import CliRunner
from rich.console import Console

from backends import BackendUnavailable, get_backend
from backends.kernels.emulator import compiler
from minift import cli
from minift.bench.kernels import GPU_SIZES, TINY_SIZES, Product, step_products

HEADERS = {
    "SGEMM RawKernel vs": (
        "device",
        "product",
        "layout",
        "batch x M x N x K",
        "kernel ms",
        "kernel GFLOP/s",
        "goal",
    ),
    "NF4 GEMV, batch 1": (
        "W (out x in)",
        "fused ms",
        "dequant + matmul ms",
        "speedup",
        "MB moved",
        "GB/s",
        "copy GB/s",
        "% of copy",
        "goals",
    ),
    "Fused kernels vs": ("op", "shape", "fused ms", "composed ms", "speedup"),
}
BACKENDS = [
    pytest.param("cuda-emulator", marks=pytest.mark.skipif(compiler() is None, reason="no g++")),
    pytest.param("cuda", marks=pytest.mark.cuda),
]


def _bench(monkeypatch, *args: str) -> str:
    monkeypatch.setattr(cli, "console", Console(width=400))  # no header cut short
    result = CliRunner().invoke(cli.main, ["bench", "kernels", *args])
    assert result.exit_code == 0, result.output
    return result.output


def _rows(output: str) -> list[list[str]]:
    """The body cells of every table (rich draws body rows between │, headers between ┃)."""
    return [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in output.splitlines()
        if line.strip().startswith("│")
    ]


def _number(cell: str) -> float | None:
    """The number a cell shows ("1,234", "0.52x", "87%"), or None for a text cell."""
    try:
        return float(cell.replace(",", "").rstrip("x%"))
    except ValueError:
        return None


def _expected_rows(sizes) -> int:
    matmul = len(sizes.squares) + len(step_products(sizes.model, sizes.batch))
    fused = len(sizes.lora) + len(sizes.cross_entropy) + 2  # + softmax + layer norm
    return matmul + len(sizes.gemv) + fused


def _check_tables(output: str, sizes, backend: str) -> None:
    for title, headers in HEADERS.items():
        assert title in output
        for header in headers:
            assert header in output, header
    rows = _rows(output)
    assert len(rows) == _expected_rows(sizes)
    for row in rows:
        assert (row[0] == "CPU emulator") == (backend == "cuda-emulator"), row
        numbers = [_number(cell) for cell in row if _number(cell) is not None]
        assert numbers and all(math.isfinite(n) and n >= 0 for n in numbers), row
        assert not {"nan", "inf"} & {cell.lower() for cell in row}, row


@pytest.mark.parametrize("backend", BACKENDS)
def test_tiny_run_prints_every_table_with_finite_numbers(monkeypatch, backend):
    output = _bench(monkeypatch, "--backend", backend, "--tiny", "--repeat", "1")
    _check_tables(output, TINY_SIZES, backend)
    titles = " ".join(output.split())  # a title longer than its table wraps
    emulated = titles.count("CPU emulator times, not a GPU's")
    assert emulated == (3 if backend == "cuda-emulator" else 0)


@pytest.mark.skipif(compiler() is None, reason="the CUDA emulator needs g++")
def test_only_prints_the_tables_asked_for(monkeypatch):
    output = _bench(
        monkeypatch, "--backend", "cuda-emulator", "--tiny", "--repeat", "1", "--only", "nf4"
    )
    assert "NF4 GEMV" in output and "SGEMM" not in output and "Fused kernels" not in output
    assert len(_rows(output)) == len(TINY_SIZES.gemv)


def test_numpy_backend_is_refused():
    result = CliRunner().invoke(cli.main, ["bench", "kernels", "--backend", "numpy"])
    assert result.exit_code != 0 and "numpy" in result.output


def test_step_products_are_the_layers_of_bench_l():
    products = {p.name: p for p in step_products("bench-l", batch=8)}
    tokens = 8 * 512
    forward = products["q/k/v/o y = x W^T"]
    assert (forward.m, forward.n, forward.k, forward.layout) == (tokens, 768, 768, "NT")
    up_dx = products["mlp up dx = dy W"]
    assert (up_dx.m, up_dx.n, up_dx.k, up_dx.layout) == (tokens, 768, 3072, "NN")
    head_dw = products["lm head dW = dy^T x"]
    assert (head_dw.m, head_dw.n, head_dw.k, head_dw.layout) == (8192, 768, tokens, "TN")
    scores = products["attention S = Q K^T"]
    assert (scores.batch, scores.m, scores.n, scores.k) == (8 * 12, 512, 512, 64)


def test_product_flops_count_every_batch():
    assert Product("p", 3, 4, 5).flops == 2 * 3 * 4 * 5
    assert Product("p", 3, 4, 5, batch=6).flops == 6 * 2 * 3 * 4 * 5


@pytest.mark.cuda
@pytest.mark.slow
def test_gpu_sizes_print_every_table(monkeypatch):
    output = _bench(monkeypatch, "--backend", "cuda", "--repeat", "3")
    _check_tables(output, GPU_SIZES, "cuda")
    assert ">= 80%:" in output  # the goal is read at 4096


def test_without_a_gpu_the_cuda_run_says_why():
    try:
        get_backend("cuda")
        pytest.skip("a GPU is here: the cuda run is the test above")
    except BackendUnavailable as reason:
        result = CliRunner().invoke(cli.main, ["bench", "kernels", "--tiny"])
        assert result.exit_code == 1 and str(reason)[:40] in result.output
