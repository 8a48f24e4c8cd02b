"""minift's CuPy code run on a strict stand-in for CuPy (tests/fake_cupy.py), on the CPU.

The real ``CupyBackend``, ``CudaKernels`` and every op see device arrays that refuse to mix with
host arrays as CuPy's do, and the kernels run in the CPU emulator. So a host/device mix-up in
minift's Python fails here, before a GPU session spends its minutes finding it. What this
cannot show is what the emulator cannot (speed, races between blocks) and CuPy's own bugs.
"""

import json
import sys

import fake_cupy
import numpy as np
import pytest
import test_bench_kernels
import test_bench_train
import test_cuda_backend
from click.testing import CliRunner
from test_cuda_train import _losses
from test_recipe_lm import TINY_PRETRAIN

import backends
import minift as mf
from backends import get_backend
from backends.kernels.emulator import KERNEL_DIR, compiler
from minift import functional as F
from minift.bench import train as bench_train
from minift.bench.kernels import TINY_SIZES
from minift.cli import main
from minift.models import configs
from minift.optim import AdamW
from minift.peft import get_peft_model
from minift.peft.cli_config import DEFAULT_LR, build_config
from minift.train import lm

pytestmark = pytest.mark.skipif(compiler() is None, reason="the CUDA emulator needs g++")
cp = fake_cupy.cupy


@pytest.fixture
def fake_cuda(monkeypatch):
    """``get_backend("cuda")`` on the fake CuPy; the real cached backend is restored after."""
    key = backends._REGISTRY["cuda"]
    monkeypatch.setitem(sys.modules, "cupy", cp)
    monkeypatch.delitem(backends._INSTANCES, key, raising=False)
    yield get_backend("cuda")
    backends._INSTANCES.pop(key, None)


# --- the fake refuses what CuPy refuses -------------------------------------------------------
def test_device_arrays_never_turn_into_host_arrays_implicitly():
    device = cp.asarray(np.arange(6.0).reshape(2, 3))
    assert not isinstance(device, np.ndarray)
    for convert in (np.asarray, np.array, lambda a: np.float64(1.0) * np.ones(3) + a):
        with pytest.raises(TypeError):
            convert(device)
    np.testing.assert_array_equal(device.get(), np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(cp.asnumpy(device), device.get())


def test_host_arrays_are_refused_as_operands_but_scalars_mix():
    device, host = cp.ones((2, 3), dtype=np.float32), np.ones((2, 3), np.float32)
    mixes = [
        lambda: device + host,
        lambda: host * device,
        lambda: cp.exp(host),
        lambda: cp.where(device > 0, host, 0.0),
        lambda: cp.matmul(device, host.T),
        lambda: cp.concatenate([device, host]),
        lambda: cp.ascontiguousarray(host),
    ]
    for mix in mixes:
        with pytest.raises(TypeError):
            mix()
    with pytest.raises(ValueError, match="non-scalar numpy.ndarray cannot be used for fill"):
        device[0:1] = host[:1]
    result = device * 2 + np.float32(1.5) - np.exp(device) / 3
    assert isinstance(result, cp.ndarray) and result.dtype == np.float32
    np.testing.assert_allclose(result.get(), 3.5 - np.e / 3, rtol=1e-6)


def test_host_index_arrays_are_copied_over_as_cupy_does():
    device = cp.asarray(np.arange(10.0))
    picked = device[np.array([3, 1])]
    assert isinstance(picked, cp.ndarray)
    np.testing.assert_array_equal(picked.get(), [3.0, 1.0])
    device[np.array([0, 2])] = np.array([-1.0, -2.0])  # advanced keys take host values
    cp.add.at(device, np.array([5, 5]), 1.0)
    np.testing.assert_array_equal(device.get()[[0, 2, 5]], [-1.0, -2.0, 7.0])
    assert float(device.sum()) == pytest.approx(np.arange(10.0).sum() - 1 - 4 + 2)
    np.testing.assert_array_equal(device[np.array([12, -1])].get(), [-2.0, 9.0])  # wrapped
    with pytest.raises(IndexError):
        device[12]  # a scalar index is checked, as in NumPy


def test_numpy_functions_on_device_arrays_run_on_the_device():
    device = cp.asarray(np.array([[3.0, 1.0], [2.0, 5.0]]))
    for result in (np.exp(device), np.sum(device, axis=0), np.sort(device), np.linalg.norm(device)):
        assert isinstance(result, cp.ndarray)
    assert float(np.max(device)) == 5.0 and int(device.argmax()) == 3 and bool(device[0, 0] > 2)


def test_raw_module_kernels_take_device_arrays_only():
    code = (
        '#include "common.cuh"\n'
        'extern "C" __global__ void twice(const float* x, float* y, int n) {\n'
        "    int i = blockIdx.x * blockDim.x + threadIdx.x;\n"
        "    if (i < n) y[i] = 2.0f * x[i];\n}\n"
    )
    kernel = cp.RawModule(code=code, options=(f"-I{KERNEL_DIR}",)).get_function("twice")
    x, y = cp.asarray(np.arange(5, dtype=np.float32)), cp.zeros(5, dtype=np.float32)
    kernel((1,), (32,), (x, y, np.int32(5)))
    np.testing.assert_array_equal(y.get(), 2 * np.arange(5, dtype=np.float32))
    with pytest.raises(TypeError, match="Unsupported type"):
        kernel((1,), (32,), (np.arange(5, dtype=np.float32), y, np.int32(5)))


# --- minift through the fake ---------------------------------------------------------------------
def test_the_cuda_backend_runs_on_the_fake(fake_cuda):
    assert fake_cuda.name == "cuda" and fake_cuda.xp is cp


def test_seeded_draws_and_moves_as_on_the_other_cuda_backends(fake_cuda):
    test_cuda_backend.test_a_seed_draws_the_same_numbers_as_numpy(fake_cuda)
    test_cuda_backend.test_modules_and_optimizer_state_move_both_ways(fake_cuda)
    tensor = mf.tensor(np.arange(6.0, dtype=np.float32)).to("cuda")
    assert isinstance(tensor.data, cp.ndarray)
    np.testing.assert_array_equal(tensor.to("numpy").numpy(), np.arange(6.0))


def test_host_data_goes_to_the_default_backend_where_the_emulator_is_loaded(fake_cuda):
    get_backend("cuda-emulator")  # its arrays are NumPy arrays: it must not claim host data
    with mf.use_backend("cuda"):
        assert mf.tensor(np.ones(3)).backend is fake_cuda


@pytest.mark.parametrize(
    "config_name, setup", [("gpt-tiny", "full"), ("gpt-tiny", "lora"), ("llama-tiny", "qlora")]
)
def test_training_follows_the_numpy_loss_curve(fake_cuda, config_name, setup):
    expected = _losses("numpy", config_name, setup, steps=2)
    np.testing.assert_allclose(_losses("cuda", config_name, setup, steps=2), expected, rtol=2e-4)


def test_generation_with_the_kv_cache_gives_numpy_tokens(fake_cuda):
    prompt = np.array([[1, 2, 3, 4], [0, 0, 5, 6]])
    left_padded = np.array([[1, 1, 1, 1], [0, 0, 1, 1]])
    tokens = {}
    for name in ("numpy", "cuda"):
        mf.manual_seed(0)
        model = configs.build("gpt-tiny", backend=name)
        tokens[name] = (
            model.generate(prompt[:1], 4),
            model.generate(prompt, 4, do_sample=True, temperature=0.8, top_k=5, top_p=0.9, seed=1),
            model.generate(prompt, 3, attention_mask=left_padded),
        )
    for expected, got in zip(tokens["numpy"], tokens["cuda"]):
        np.testing.assert_array_equal(got, expected)


def _method_step(backend_name: str, method: str) -> tuple[float, list[np.ndarray]]:
    """Loss of one AdamW step of gpt-tiny under ``method`` (CLI defaults), and the trained
    parameters after it, on the host."""
    mf.manual_seed(0)
    with mf.use_backend(backend_name) as be:
        model = get_peft_model(
            configs.build("gpt-tiny", backend=be), build_config(method, None, None, None)
        )
        params = [p for p in model.parameters() if p.requires_grad]
        ids = np.random.default_rng(0).integers(0, model.config.vocab_size, size=(1, 9))
        loss = F.cross_entropy(model(mf.tensor(ids[:, :-1])), mf.tensor(ids[:, 1:]))
        loss.backward()
        AdamW(params, lr=DEFAULT_LR[method]).step()
        return float(be.to_numpy(loss.data)), [be.to_numpy(p.data) for p in params]


@pytest.mark.parametrize("method", sorted(DEFAULT_LR))
def test_every_peft_method_trains_as_on_numpy(fake_cuda, method):
    expected_loss, expected_params = _method_step("numpy", method)
    loss, params = _method_step("cuda", method)
    assert loss == pytest.approx(expected_loss, rel=2e-4)
    for got, expected in zip(params, expected_params, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-5)


# --- the commands ------------------------------------------------------------------------------
def _train(args: list[str], out) -> list[dict]:
    result = CliRunner().invoke(main, ["train", *args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow  # ~17 s: evaluations and samples before and after, on emulated kernels
def test_minift_train_pretrains_and_finetunes_as_on_numpy(fake_cuda, tmp_path, monkeypatch):
    monkeypatch.setattr(lm, "MAX_EVAL_WINDOWS", 2)  # the evaluations cost more than the steps
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(
        TINY_PRETRAIN.format(out=tmp_path).replace("batch_size = 4", "batch_size = 2")
    )
    expected = _train([str(recipe), "--steps", "2"], tmp_path / "numpy")
    got = _train([str(recipe), "--steps", "2", "--backend", "cuda"], tmp_path / "cuda")
    _assert_same_records(got, expected)

    finetune = tmp_path / "finetune.toml"
    finetune.write_text(
        f'kind = "finetune"\n[model]\nfrom = "{tmp_path / "numpy" / "model"}"\n[data]\n'
        'families = ["logging", "unittest", "xml"]\nval_fraction = 0.3\n'
        "[train]\nsteps = 1\nbatch_size = 2\n"
    )
    args = [str(finetune), "--method", "lora"]
    expected = _train(args, tmp_path / "numpy-lora")
    _assert_same_records(_train([*args, "--backend", "cuda"], tmp_path / "cuda-lora"), expected)


def _assert_same_records(got: list[dict], expected: list[dict]) -> None:
    """Same losses and evaluations, step for step (times differ)."""
    assert len(got) == len(expected)
    for row, reference in zip(got, expected):
        for key in reference.keys() - {"seconds"}:
            assert row[key] == pytest.approx(reference[key], rel=2e-4), (key, row, reference)


def test_minift_bench_kernels_tiny(fake_cuda, monkeypatch):
    output = test_bench_kernels._bench(monkeypatch, "--backend", "cuda", "--tiny", "--repeat", "1")
    test_bench_kernels._check_tables(output, TINY_SIZES, "cuda")
    assert "fake CuPy (CPU emulator)" in output


@pytest.mark.slow  # ~15 s: seven training steps on emulated kernels
def test_minift_bench_train(fake_cuda, monkeypatch):
    # the matmul rate is measured at 2048^2 on a GPU: hours in the emulator, so at 128^2 here
    measure = bench_train.matmul_gflops
    monkeypatch.setattr(bench_train, "matmul_gflops", lambda backend: measure(backend, 128, 1))
    args = ("--backend", "cuda", "--config", "gpt-tiny", "--repeat", "1", "--no-torch")
    row = test_bench_train._row(test_bench_train._bench_train(monkeypatch, *args), "gpt-tiny")
    kernel_ms, cublas_ms, numpy_ms = (float(row[i].replace(",", "")) for i in (2, 7, 8))
    assert all(ms > 0 for ms in (kernel_ms, cublas_ms, numpy_ms))
