"""``minift bench train`` runs and reports each config (speed is printed, never asserted)."""

import math
import os
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from rich.console import Console

from backends.kernels.emulator import compiler
from minift import cli
from minift.bench.torch_gpt import _twin_key
from minift.bench.train import default_configs, matmul_path, numpy_baseline

KERNEL_COLUMNS = ("minift (NumPy matmul) ms", "numpy ms", "numpy / minift")


def _bench_train(monkeypatch, *args: str) -> str:
    monkeypatch.setattr(cli, "console", Console(width=300))  # no header cut short
    result = CliRunner().invoke(cli.main, ["bench", "train", *args])
    assert result.exit_code == 0, result.output
    return result.output


def _row(output: str, config: str) -> list[str]:
    (line,) = [line for line in output.splitlines() if line.startswith(f"│ {config} ")]
    return [cell.strip() for cell in line.strip("│").split("│")]


def test_bench_train_prints_a_row_per_config(monkeypatch):
    output = _bench_train(monkeypatch, "--config", "gpt-tiny", "--repeat", "1", "--no-torch")
    assert "ms/step" in output and "GFLOP/s (6NT)" in output and "peak MB" in output
    assert not any(column in output for column in KERNEL_COLUMNS)  # numpy is the baseline
    ms = float(_row(output, "gpt-tiny")[2].replace(",", ""))
    assert math.isfinite(ms) and ms > 0


@pytest.mark.slow  # a minute or more: four training steps, every kernel emulated
@pytest.mark.skipif(compiler() is None, reason="the CUDA emulator needs g++")
def test_bench_train_on_kernels_adds_library_and_numpy_columns(monkeypatch):
    args = ("--backend", "cuda-emulator", "--config", "gpt-tiny", "--repeat", "1", "--no-torch")
    output = _bench_train(monkeypatch, *args)
    for column in KERNEL_COLUMNS:
        assert column in output
    assert "CPU emulator times, not a GPU's" in " ".join(output.split())
    row = _row(output, "gpt-tiny")
    kernel_ms, library_ms, numpy_ms = (float(row[i].replace(",", "")) for i in (2, 7, 8))
    assert all(math.isfinite(v) and v > 0 for v in (kernel_ms, library_ms, numpy_ms))


def test_numpy_baseline_by_default_for_all_but_the_large_config():
    cuda, numpy = SimpleNamespace(name="cuda"), SimpleNamespace(name="numpy")
    assert numpy_baseline(cuda, "bench-s", None) and not numpy_baseline(cuda, "bench-l", None)
    assert numpy_baseline(cuda, "bench-l", True) and not numpy_baseline(cuda, "bench-s", False)
    assert not numpy_baseline(numpy, "bench-s", True)  # NumPy is already the row itself
    assert default_configs(cuda) == ("bench-s", "bench-m", "bench-l")
    assert default_configs(numpy) == ("bench-s", "bench-m")


def test_matmul_path_sets_and_restores_the_switch(monkeypatch):
    monkeypatch.setenv("MINIFT_CUDA_MATMUL", "kernel")
    with matmul_path("cublas"):
        assert os.environ["MINIFT_CUDA_MATMUL"] == "cublas"
    assert os.environ["MINIFT_CUDA_MATMUL"] == "kernel"
    monkeypatch.delenv("MINIFT_CUDA_MATMUL")
    with matmul_path("cublas"):
        assert os.environ["MINIFT_CUDA_MATMUL"] == "cublas"
    assert "MINIFT_CUDA_MATMUL" not in os.environ


def test_torch_twin_key_mapping():
    assert _twin_key("layers.3.self_attn.q_proj.weight") == "blocks.3.q.weight"
    assert _twin_key("layers.0.mlp.down_proj.bias") == "blocks.0.down.bias"
    assert _twin_key("layers.1.post_attention_layernorm.weight") == "blocks.1.ln_2.weight"
    assert _twin_key("embed_positions.weight") == "wpe.weight"
    assert _twin_key("norm.bias") == "ln_f.bias"
