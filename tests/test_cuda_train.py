"""Training on the CUDA kernels follows the NumPy backend's loss curve, step for step.

Same seed, same weights (the CuPy backend draws on the host PCG64 too), same batches: only
the arithmetic differs (tiled float32 sums in the kernels), so the losses agree to float32
tolerance over the first steps. Where there is no GPU the same kernels run in the CPU
emulator (``cuda-emulator``) on tiny models; on a GPU, the default demo and every PEFT method
run through ``minift train --backend cuda``.
"""

import json

import numpy as np
import pytest
from click.testing import CliRunner

import minift as mf
from backends import get_backend
from backends.kernels.emulator import compiler
from backends.kernels.loader import EmulatedKernels
from minift import functional as F
from minift.cli import main
from minift.models import configs
from minift.optim import AdamW
from minift.peft import LoraConfig, get_peft_model
from minift.peft.cli_config import DEFAULT_LR
from minift.quant import quantize_model

needs_gxx = pytest.mark.skipif(compiler() is None, reason="the CUDA emulator needs g++")


def _losses(backend_name: str, config_name: str, setup: str, steps: int = 3) -> list[float]:
    """Loss of each of ``steps`` AdamW steps of a tiny GPT on random tokens."""
    mf.manual_seed(0)
    with mf.use_backend(backend_name) as be:
        model = configs.build(config_name, backend=be)
        if setup in ("lora", "qlora"):
            if setup == "qlora":
                quantize_model(model, blocksize=32)
            model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = AdamW(params, lr=1e-2)
        ids = np.random.default_rng(0).integers(0, model.config.vocab_size, size=(2, 17))
        inputs, targets = mf.tensor(ids[:, :-1], backend=be), mf.tensor(ids[:, 1:], backend=be)
        losses = []
        for _ in range(steps):
            logits = model(inputs)
            loss = F.cross_entropy(logits, targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(be.to_numpy(loss.data)))
        return losses


@pytest.fixture
def launched(monkeypatch):
    """The names of the kernels launched through the emulator during a test."""
    names = set()
    original = EmulatedKernels.function

    def recording(self, source, name):
        names.add(name)
        return original(self, source, name)

    monkeypatch.setattr(EmulatedKernels, "function", recording)
    return names


@needs_gxx
@pytest.mark.slow
@pytest.mark.parametrize(
    "config_name, setup",
    [("gpt-tiny", "full"), ("llama-tiny", "full"), ("gpt-tiny", "lora"), ("llama-tiny", "qlora")],
)
def test_emulated_kernels_follow_the_numpy_loss_curve(config_name, setup, launched):
    expected = _losses("numpy", config_name, setup)
    got = _losses("cuda-emulator", config_name, setup)
    np.testing.assert_allclose(got, expected, rtol=2e-4)
    assert expected[-1] < expected[0]  # it trains
    norm = "rms_norm" if config_name.startswith("llama") else "layer_norm"
    used = " ".join(sorted(launched))
    for kernel in ("sgemm", "softmax", "cross_entropy", norm):
        assert kernel in used, f"{kernel} kernels were not used: {used}"
    if setup == "lora":
        assert "lora" in used
    if setup == "qlora":
        assert "nf4" in used


def _train_losses(tmp_path, backend: str, method: str | None, steps: int) -> list[float]:
    out = tmp_path / backend / (method or "full")
    args = ["train", "--backend", backend, "--steps", str(steps), "--out", str(out)]
    result = CliRunner().invoke(main, args + (["--method", method] if method else []))
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.parametrize("method", [None, *sorted(DEFAULT_LR)])
def test_minift_train_on_the_gpu_matches_numpy(tmp_path, method):
    get_backend("cuda")
    expected = _train_losses(tmp_path, "numpy", method, steps=5)
    got = _train_losses(tmp_path, "cuda", method, steps=5)
    assert len(got) == len(expected) == 5
    np.testing.assert_allclose(got, expected, rtol=2e-3)
