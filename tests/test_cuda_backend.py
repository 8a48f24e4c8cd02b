"""The CUDA backends: CuPy (marked ``cuda``) and the CPU emulator of its kernels.

Both must give the NumPy backend's random draws for a seed, move tensors, modules and
optimizer state both ways, and route float32 products through the SGEMM kernel unless
``MINIFT_CUDA_MATMUL=cublas`` asks for the library.
"""

import numpy as np
import pytest

import minift as mf
from backends import get_backend
from backends.kernels import gemm
from backends.kernels.emulator import compiler
from minift import functional as F
from minift import nn
from minift.optim import AdamW


@pytest.fixture(
    params=[
        pytest.param("cuda-emulator", marks=pytest.mark.skipif(
            compiler() is None, reason="the CUDA emulator needs g++")),
        pytest.param("cuda", marks=pytest.mark.cuda),
    ],
)
def device(request):
    return get_backend(request.param)


def test_a_seed_draws_the_same_numbers_as_numpy(device):
    host = get_backend("numpy")
    for backend in (host, device):
        backend.seed(5)
    draws = [
        (lambda b: b.normal((3, 4), 0.0, 2.0)),
        (lambda b: b.uniform((5,), -1.0, 1.0)),
        (lambda b: b.integers((6,), 0, 9)),
        (lambda b: b.bernoulli((7,), 0.3)),
    ]
    for draw in draws:
        expected, got = draw(host), draw(device)
        assert device.is_array(got)
        np.testing.assert_array_equal(device.to_numpy(got), expected)


def test_modules_and_optimizer_state_move_both_ways(device):
    mf.manual_seed(0)
    layer = nn.Linear(4, 3)
    optimizer = AdamW(layer.parameters(), lr=0.1)
    x = mf.tensor(np.ones((2, 4), np.float32))
    F.mse_loss(layer(x), mf.tensor(np.zeros((2, 3), np.float32))).backward()
    optimizer.step()
    before = {k: v.numpy().copy() for k, v in layer.state_dict().items()}
    moments = optimizer.state[layer.weight]["exp_avg"].copy()

    layer.to(device)
    optimizer.to(device)
    assert layer.weight.backend is device
    assert device.is_array(optimizer.state[layer.weight]["exp_avg"])
    layer.to("numpy")
    optimizer.to("numpy")
    for key, value in layer.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), before[key])
    np.testing.assert_array_equal(optimizer.state[layer.weight]["exp_avg"], moments)


def test_float32_products_take_the_kernel_unless_cublas_is_asked_for(device, monkeypatch):
    calls = []
    original = gemm.matmul
    monkeypatch.setattr(gemm, "matmul", lambda ks, a, b: calls.append(1) or original(ks, a, b))
    a = device.asarray(np.arange(12, dtype=np.float32).reshape(3, 4))
    b = device.asarray(np.ones((4, 2), np.float32))
    expected = np.arange(12, dtype=np.float32).reshape(3, 4) @ np.ones((4, 2), np.float32)

    np.testing.assert_allclose(device.to_numpy(device.matmul(a, b)), expected)
    assert len(calls) == 1
    monkeypatch.setenv("MINIFT_CUDA_MATMUL", "cublas")
    np.testing.assert_allclose(device.to_numpy(device.matmul(a, b)), expected)
    assert len(calls) == 1  # the library did it
    monkeypatch.setenv("MINIFT_CUDA_MATMUL", "magma")
    with pytest.raises(ValueError, match="MINIFT_CUDA_MATMUL must be one of"):
        device.matmul(a, b)


def test_float64_products_use_the_library_path(device, monkeypatch):
    monkeypatch.setattr(gemm, "matmul", lambda *args: pytest.fail("float64 reached the kernel"))
    a = device.asarray(np.eye(3))
    np.testing.assert_array_equal(device.to_numpy(device.matmul(a, a)), np.eye(3))
