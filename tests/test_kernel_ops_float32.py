"""Every op of the catalogue gives the NumPy backend's float32 answer on a kernel backend.

On ``cuda-emulator`` (the CPU emulator) and ``cuda`` the float32 products, softmaxes, losses and
norms run through minift's CUDA kernels; the other ops run on the backend's array library.
Forward values and gradients must agree with the NumPy backend to float32 accuracy: the
kernels sum in a different order, so bit equality is not expected.
"""

import numpy as np
import pytest

import minift as mf
from backends import get_backend
from backends.kernels.emulator import compiler
from minift.catalogue import all_cases

CASES = [case for case in all_cases() if "numpy-rng" not in case.tags]


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("cuda-emulator", marks=pytest.mark.skipif(
            compiler() is None, reason="the CUDA emulator needs g++")),
        pytest.param("cuda", marks=pytest.mark.cuda),
    ],
)
def kernel_backend(request):
    return get_backend(request.param)


def _run(case, arrays, backend):
    """Forward value and the gradients of sum(out * r), r fixed, on ``backend``."""
    inputs = [
        mf.tensor(a, backend=backend, requires_grad=case.differentiable and a.dtype.kind == "f")
        for a in arrays
    ]
    out = case.fn(*inputs)
    grads = []
    if case.differentiable and out.dtype.kind == "f":
        r = np.random.default_rng(7).standard_normal(out.shape).astype(np.float32)
        (out * mf.tensor(r, backend=backend)).sum().backward()
        grads = [backend.to_numpy(t.grad.data) for t in inputs if t.requires_grad]
    return backend.to_numpy(out.data), grads


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_float32_values_and_gradients_match_numpy(case, kernel_backend):
    arrays = [a.astype(np.float32) if a.dtype == np.float64 else a
              for a in case.make_inputs(np.random.default_rng(3))]
    expected, expected_grads = _run(case, arrays, get_backend("numpy"))
    got, got_grads = _run(case, arrays, kernel_backend)
    assert got.dtype == expected.dtype
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-5)
    for g, e in zip(got_grads, expected_grads, strict=True):
        np.testing.assert_allclose(g, e, rtol=2e-4, atol=2e-5)
