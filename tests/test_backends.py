"""Backend registry, the meta backend's shape-only arrays, and the lazily imported CUDA one."""

import numpy as np
import pytest

import minift as mf
from backends import Backend, BackendUnavailable, get_backend
from backends.meta_backend import MetaArray, MetaComputeError


def test_registry_returns_one_instance_per_name_and_rejects_unknown():
    assert get_backend("numpy") is get_backend("cpu")
    assert isinstance(get_backend("numpy"), Backend)
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        get_backend("tpu")


def test_cuda_without_gpu_says_what_is_missing():
    try:
        import cupy  # noqa: F401

        pytest.skip("CuPy is installed here; the message for a missing CuPy cannot be seen")
    except ImportError:
        pass
    with pytest.raises(BackendUnavailable, match="needs CuPy.*pip install"):
        get_backend("cuda")


def test_meta_factories_and_shape_ops_work_without_memory():
    meta = get_backend("meta")
    w = meta.normal((50_000, 50_000))  # 10 GB if it were real
    assert isinstance(w, MetaArray) and w.nbytes == 50_000 * 50_000 * 4
    assert w.reshape(-1, 2).shape == (1_250_000_000, 2)
    assert w.T.shape == (50_000, 50_000)
    assert w[:10, None, 3].shape == (10, 1)
    assert meta.xp.concatenate([w, w], axis=1).shape == (50_000, 100_000)


def test_meta_tensor_shape_ops_through_autograd():
    x = mf.randn(8, 1024, 4096, backend="meta", requires_grad=True)
    y = x.reshape(8, 1024, 32, 128).transpose(1, 2)
    assert y.shape == (8, 32, 1024, 128) and y.requires_grad


def test_meta_refuses_computation_with_a_clear_error():
    x = mf.randn(4, 4, backend="meta")
    with pytest.raises(MetaComputeError, match="shapes only"):
        x.exp()
    with pytest.raises(MetaComputeError, match="shapes only"):
        x @ x
    with pytest.raises(MetaComputeError):
        x.numpy()


def test_use_backend_switches_and_restores():
    with mf.use_backend("meta"):
        assert mf.zeros(3).backend.name == "meta"
    assert mf.zeros(3).backend.name == "numpy"


def test_tensor_to_moves_between_backends_and_dtypes():
    x = mf.tensor([1.0, 2.0], requires_grad=True)
    y = x.to(dtype="float64")
    assert y.dtype == np.float64 and y.requires_grad
    m = x.to("meta")
    assert m.backend.name == "meta" and m.shape == (2,)


def test_ops_route_matmul_through_the_backend(monkeypatch):
    numpy_backend = get_backend("numpy")
    calls = []
    original = numpy_backend.matmul
    monkeypatch.setattr(numpy_backend, "matmul", lambda a, b: calls.append(1) or original(a, b))
    a = mf.tensor(np.ones((2, 3)), requires_grad=True)
    (a @ mf.tensor(np.ones((3, 4)))).sum().backward()
    assert len(calls) == 2  # forward and the gradient of a


def test_deepcopy_keeps_the_one_backend_instance():
    import copy

    from minift import nn

    layer = nn.Linear(3, 2)
    clone = copy.deepcopy(layer)
    assert clone.weight.backend is layer.weight.backend is get_backend("numpy")
    assert clone.weight is not layer.weight
    np.testing.assert_array_equal(clone.weight.numpy(), layer.weight.numpy())


def test_host_data_goes_to_the_default_backend_with_default_dtype():
    with mf.use_backend("meta"):
        assert mf.tensor([1.0]).dtype == np.float32
        moved = mf.tensor(np.zeros((2, 3)))
    assert moved.backend.name == "meta" and moved.shape == (2, 3)
    assert mf.tensor(moved.data).backend.name == "meta"  # device arrays stay put
