"""Every op in the catalogue: forward against its NumPy reference, backward against
finite differences (float64), on every available backend."""

import numpy as np
import pytest

import minift as mf
from minift.catalogue import all_cases

CASES = all_cases()
IDS = [case.name for case in CASES]


def _tensors(arrays, backend, requires_grad):
    return [
        mf.tensor(a, backend=backend, requires_grad=requires_grad and a.dtype.kind == "f")
        for a in arrays
    ]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_forward_matches_numpy_reference(case, backend):
    if "numpy-rng" in case.tags and backend.name != "numpy":
        pytest.skip("the reference redraws NumPy's random stream")
    arrays = case.make_inputs(np.random.default_rng(0))
    expected = case.reference(*arrays)
    out = case.fn(*_tensors(arrays, backend, requires_grad=False))
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", [c for c in CASES if c.differentiable], ids=lambda c: c.name)
def test_gradient_matches_finite_differences(case, backend):
    arrays = case.make_inputs(np.random.default_rng(1))
    inputs = _tensors(arrays, backend, requires_grad=True)
    assert mf.gradcheck(case.fn, inputs, atol=case.atol, rtol=case.rtol)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_float32_forward_stays_float32(case, backend):
    arrays = [a.astype(np.float32) if a.dtype == np.float64 else a
              for a in case.make_inputs(np.random.default_rng(2))]
    out = case.fn(*_tensors(arrays, backend, requires_grad=False))
    if out.dtype.kind == "f":
        assert out.dtype == np.float32
