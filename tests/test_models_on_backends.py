"""Every model family gives the NumPy backend's outputs and gradients on a CUDA backend.

A model is built on NumPy, deep-copied, and the copy moved with ``module.to(backend)``; both
take the same inputs and the gradient of the same weighted sum of their outputs. In float32
the products, softmaxes, norms and losses run on minift's kernels (in the CPU emulator here,
on the GPU with CuPy), so the two agree to float32 accuracy. In float64 (GPU only: the
emulator has no float64 kernels, so it would compare NumPy with itself) the GPU's array
library must agree closely.
"""

import copy

import numpy as np
import pytest

import minift as mf
from backends import get_backend
from backends.kernels.emulator import compiler
from minift import functional as F
from minift.models import configs
from minift.models.cnn import ResNet
from minift.models.gnn import GraphClassifier
from minift.models.rnn import RNNClassifier, RNNLanguageModel

IDS = np.random.default_rng(0).integers(0, 20, size=(2, 9))
EDGES = np.array([[0, 1, 2, 3, 4, 0], [1, 2, 0, 4, 3, 3]])


def _image(dtype):
    return np.random.default_rng(1).standard_normal((2, 2, 8, 8)).astype(dtype)


def _nodes(dtype):
    return np.random.default_rng(2).standard_normal((5, 3)).astype(dtype)


# name -> (build the model on NumPy, its inputs as a function of the float dtype)
MODELS = {
    "gpt": (lambda: configs.build("gpt-tiny"), lambda dtype: (IDS,)),
    "llama": (lambda: configs.build("llama-tiny"), lambda dtype: (IDS,)),
    "bert": (lambda: configs.build("bert-tiny"), lambda dtype: (IDS,)),
    "resnet": (lambda: ResNet((1, 1), (4, 8), num_classes=3, in_channels=2),
               lambda dtype: (_image(dtype),)),
    "gru": (lambda: RNNLanguageModel(20, 8, 12, cell="gru"), lambda dtype: (IDS,)),
    "lstm": (lambda: RNNClassifier(20, 8, 12, 3, cell="lstm"), lambda dtype: (IDS,)),
    "gcn": (lambda: GraphClassifier(3, 8, 2),
            lambda dtype: (_nodes(dtype), EDGES, np.array([0, 0, 0, 1, 1]))),
}


def _run(model, inputs, backend):
    """Output and parameter gradients of sum(out * r), r fixed, with inputs on ``backend``."""
    args = [mf.tensor(a, backend=backend) if a.dtype.kind == "f" else a for a in inputs]
    out = model(*args)
    r = np.random.default_rng(3).standard_normal(out.shape).astype(out.dtype)
    F.mul(out, mf.tensor(r, backend=backend)).sum().backward()
    grads = {name: backend.to_numpy(p.grad.data) for name, p in model.named_parameters()
             if p.grad is not None}
    return backend.to_numpy(out.data), grads


def _compare(name, dtype, backend, rtol, atol):
    build, inputs = MODELS[name]
    mf.manual_seed(0)
    reference = build().to(dtype=dtype).eval()  # eval: dropout off, batch norm fixed
    moved = copy.deepcopy(reference).to(backend)
    expected, expected_grads = _run(reference, inputs(dtype), get_backend("numpy"))
    got, got_grads = _run(moved, inputs(dtype), backend)
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol)
    assert got_grads.keys() == expected_grads.keys() and got_grads
    for key, grad in expected_grads.items():
        np.testing.assert_allclose(got_grads[key], grad, rtol=rtol, atol=atol, err_msg=key)


@pytest.mark.parametrize(
    "backend_name",
    [
        pytest.param("cuda-emulator", marks=pytest.mark.skipif(
            compiler() is None, reason="the CUDA emulator needs g++")),
        pytest.param("cuda", marks=pytest.mark.cuda),
    ],
)
@pytest.mark.parametrize("name", MODELS)
def test_float32_on_the_kernels_matches_numpy(name, backend_name):
    _compare(name, "float32", get_backend(backend_name), rtol=1e-3, atol=1e-4)


@pytest.mark.cuda
@pytest.mark.parametrize("name", MODELS)
def test_float64_on_the_gpu_matches_numpy(name):
    _compare(name, "float64", get_backend("cuda"), rtol=1e-9, atol=1e-11)
