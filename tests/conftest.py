"""Shared fixtures: the backend is a parameter, never a copied test file.

``MINIFT_TEST_BACKEND=cuda pytest`` runs the backend-parametrised tests on the GPU too (and
``MINIFT_TEST_BACKEND=cuda-emulator`` on the CUDA kernels in the CPU emulator, and
``MINIFT_TEST_BACKEND=fake-cuda`` on the real CuPy backend over tests/fake_cupy.py, which refuses
host/device mixes as CuPy does); tests marked ``cuda`` are skipped where CuPy or a GPU is missing.
"""

import os
import sys

import numpy as np
import pytest

import minift as mf
from backends import BackendUnavailable, get_backend
from backends.kernels.emulator import compiler
from backends.kernels.loader import EmulatedKernels

if os.environ.get("MINIFT_TEST_BACKEND") == "fake-cuda":  # before anything imports CuPy
    import fake_cupy

    sys.modules["cupy"] = fake_cupy.cupy


def _cuda_available() -> bool:
    try:
        get_backend("cuda")
    except BackendUnavailable:
        return False
    return True


def _backend_params():
    names = ["numpy"]
    wanted = os.environ.get("MINIFT_TEST_BACKEND", "numpy")
    if wanted == "cuda" or _cuda_available():
        names.append(pytest.param("cuda", marks=pytest.mark.cuda))
    if wanted == "cuda-emulator":  # the kernels on the CPU: slow, for checking without a GPU
        names.append("cuda-emulator")
    return names


def pytest_collection_modifyitems(config, items):
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs CuPy and an NVIDIA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=_backend_params())
def backend(request):
    """The backend under test; tensors made inside the test land on it."""
    with mf.use_backend(request.param) as be:
        yield be


@pytest.fixture(
    scope="session",
    params=[
        pytest.param("emulated", marks=pytest.mark.skipif(
            compiler() is None, reason="the CUDA emulator needs g++")),
        pytest.param("cuda", marks=pytest.mark.cuda),
    ],
)
def kernels(request):
    """Where the CUDA kernels run: the CPU emulator (always, where g++ exists) and the GPU."""
    if request.param == "emulated":
        return EmulatedKernels()
    return get_backend("cuda").kernels


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def _seed():
    mf.manual_seed(0)


@pytest.fixture(autouse=True)
def _restore_default_backend():
    """A command run through CliRunner sets the process's default backend; undo it after."""
    before = mf.get_default_backend()
    yield
    mf.set_backend(before)
