"""lora.cu through lora.py against the NumPy formulas, forward and backward.

Sizes are chosen not to be multiples of the tiles (in = 70, out = 53), with N = 1 row and
N beyond one tile, ranks 1 to 64, and both tile shapes (the 128 one forced by lowering the
threshold of choose_tile). References are float64 evaluations of the same float32 inputs.
"""

import math

import numpy as np
import pytest

from backends.kernels import gemm as gemm_module
from backends.kernels.loader import EmulatedKernels
from backends.kernels.lora import (
    lora_linear,
    lora_linear_backward,
    lora_linear_backward_reference,
    lora_linear_reference,
)

IN, OUT = 70, 53
SCALE = 0.75


def host(x):
    """A NumPy copy of a NumPy or CuPy array."""
    return x.get() if hasattr(x, "get") else np.asarray(x)


@pytest.fixture(params=[64, 128], ids=["tile64", "tile128"])
def tile(request, monkeypatch):
    """Which tile shape the fused kernels run with (small tests choose 64 by themselves)."""
    if request.param == 128:
        monkeypatch.setattr(gemm_module, "LARGE_TILE_MIN_BLOCKS", 1)
    return request.param


def layer(kernels, rng, rows, rank, bias=False, lead=()):
    """x (*lead, rows, IN) and the parameters, float32 on the kernels' device."""
    shapes = {
        "x": (*lead, rows, IN),
        "weight": (OUT, IN),
        "lora_a": (rank, IN),
        "lora_b": (OUT, rank),
        "bias": (OUT,),
    }
    arrays = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
    if not bias:
        arrays["bias"] = None
    return {name: None if a is None else kernels.xp.asarray(a) for name, a in arrays.items()}


def float64(arrays):
    return {name: None if a is None else host(a).astype(np.float64) for name, a in arrays.items()}


def assert_close(got, want, length):
    """float32 result against a float64 one, for sums of `length` products of N(0, 1)s."""
    got = host(got)
    assert got.shape == want.shape and got.dtype == np.float32
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * scale * math.sqrt(length))


@pytest.mark.parametrize("bias", [False, True], ids=["no_bias", "bias"])
@pytest.mark.parametrize("rank", [1, 4, 16, 64])
def test_forward_matches_the_three_matmuls(kernels, rng, tile, rank, bias):
    p = layer(kernels, rng, rows=37, rank=rank, bias=bias)
    y, u = lora_linear(kernels, p["x"], p["weight"], p["lora_a"], p["lora_b"], SCALE, p["bias"])
    q = float64(p)
    want_y, want_u = lora_linear_reference(
        q["x"], q["weight"], q["lora_a"], q["lora_b"], SCALE, q["bias"]
    )
    assert_close(u, want_u, IN)
    assert_close(y, want_y, IN + rank)


@pytest.mark.parametrize("rows, lead", [(1, ()), (130, ()), (9, (2, 3))], ids=["1", "130", "2x3x9"])
def test_forward_any_number_of_rows_and_leading_axes(kernels, rng, rows, lead):
    p = layer(kernels, rng, rows=rows, rank=4, bias=True, lead=lead)
    y, u = lora_linear(kernels, p["x"], p["weight"], p["lora_a"], p["lora_b"], SCALE, p["bias"])
    q = float64(p)
    want_y, want_u = lora_linear_reference(
        q["x"], q["weight"], q["lora_a"], q["lora_b"], SCALE, q["bias"]
    )
    assert_close(y, want_y, IN + 4)
    assert_close(u, want_u, IN)


def test_forward_copies_a_strided_x(kernels, rng):
    p = layer(kernels, rng, rows=12, rank=4)
    wide = kernels.xp.asarray(rng.standard_normal((12, 2 * IN)).astype(np.float32))
    x = wide[:, ::2]  # not contiguous
    y, _ = lora_linear(kernels, x, p["weight"], p["lora_a"], p["lora_b"], SCALE)
    q = float64(p)
    want_y, _ = lora_linear_reference(
        host(x).astype(np.float64), q["weight"], q["lora_a"], q["lora_b"], SCALE
    )
    assert_close(y, want_y, IN + 4)


def reference_grads(p, g, u):
    """(gx, gA, gB) of the plain-matmul formulas in float64, from the same inputs."""
    q = float64(p)
    args = (q["x"], q["weight"], q["lora_a"], q["lora_b"], SCALE)
    return lora_linear_backward_reference(host(g).astype(np.float64), *args,
                                          host(u).astype(np.float64))


@pytest.mark.parametrize("rank", [1, 4, 16, 64])
@pytest.mark.parametrize("rows", [1, 37])
def test_backward_matches_the_formulas(kernels, rng, tile, rows, rank):
    p = layer(kernels, rng, rows=rows, rank=rank)
    _, u = lora_linear(kernels, p["x"], p["weight"], p["lora_a"], p["lora_b"], SCALE)
    g = kernels.xp.asarray(rng.standard_normal((rows, OUT)).astype(np.float32))
    grads = lora_linear_backward(
        kernels, g, p["x"], p["weight"], p["lora_a"], p["lora_b"], SCALE, u
    )
    want = reference_grads(p, g, u)
    for got, expected, length in zip(grads, want, (OUT + rank, rows, rows)):
        assert_close(got, expected, length)


def test_backward_with_leading_axes_and_only_what_is_needed(kernels, rng):
    p = layer(kernels, rng, rows=5, rank=4, lead=(3,))
    _, u = lora_linear(kernels, p["x"], p["weight"], p["lora_a"], p["lora_b"], SCALE)
    g = kernels.xp.asarray(rng.standard_normal((3, 5, OUT)).astype(np.float32))
    args = (kernels, g, p["x"], p["weight"], p["lora_a"], p["lora_b"], SCALE, u)
    want = reference_grads(p, g, u)
    gx, ga, gb = lora_linear_backward(*args, need_a=False, need_b=False)
    assert ga is None and gb is None
    assert_close(gx, want[0], OUT + 4)
    gx, ga, gb = lora_linear_backward(*args, need_x=False)
    assert gx is None
    assert_close(ga, want[1], 15)
    assert_close(gb, want[2], 15)


def test_shape_and_dtype_errors_name_the_problem(kernels, rng):
    p = layer(kernels, rng, rows=3, rank=4, bias=True)
    x, w, a, b, bias = p["x"], p["weight"], p["lora_a"], p["lora_b"], p["bias"]
    with pytest.raises(ValueError, match=r"lora_a \(r, 70\)"):
        lora_linear(kernels, x, w, a[:, :-1].copy(), b, SCALE)
    with pytest.raises(ValueError, match=r"lora_b \(53, r\)"):
        lora_linear(kernels, x, w, a, b[:, :2].copy(), SCALE)
    with pytest.raises(ValueError, match=r"bias must be \(53,\)"):
        lora_linear(kernels, x, w, a, b, SCALE, bias[:-1].copy())
    with pytest.raises(ValueError, match="x must end in 70 features"):
        lora_linear(kernels, x[:, :-1], w, a, b, SCALE)
    with pytest.raises(TypeError, match="weight is float64"):
        lora_linear(kernels, x, w.astype(np.float64), a, b, SCALE)
    with pytest.raises(TypeError, match="x is float64"):
        lora_linear(kernels, x.astype(np.float64), w, a, b, SCALE)
    with pytest.raises(ValueError, match="weight must be C-contiguous"):
        lora_linear(kernels, x, kernels.xp.asfortranarray(w), a, b, SCALE)
    y, u = lora_linear(kernels, x, w, a, b, SCALE)
    with pytest.raises(ValueError, match="g must end in 53 features"):
        lora_linear_backward(kernels, x, x, w, a, b, SCALE, u)
    with pytest.raises(ValueError, match="x has 2 rows but g has 3"):
        lora_linear_backward(kernels, y, x[:2], w, a, b, SCALE, u)
    with pytest.raises(ValueError, match="u has 2 rows but g has 3"):
        lora_linear_backward(kernels, y, x, w, a, b, SCALE, u[:2])


def test_large_layers_on_the_gpu(kernels, rng):
    if isinstance(kernels, EmulatedKernels):
        pytest.skip("thousands of blocks: too slow to emulate (the small shapes cover the code)")
    xp, rows, n_in, n_out, rank = kernels.xp, 4097, 1030, 3075, 16
    x, w, a, b, g = (
        xp.asarray(rng.standard_normal(shape).astype(np.float32))
        for shape in [(rows, n_in), (n_out, n_in), (rank, n_in), (n_out, rank), (rows, n_out)]
    )
    y, u = lora_linear(kernels, x, w, a, b, SCALE)
    grads = lora_linear_backward(kernels, g, x, w, a, b, SCALE, u)
    x64, w64, a64, b64, g64, u64 = (host(t).astype(np.float64) for t in (x, w, a, b, g, u))
    assert_close(y, lora_linear_reference(x64, w64, a64, b64, SCALE)[0], n_in + rank)
    want = lora_linear_backward_reference(g64, x64, w64, a64, b64, SCALE, u64)
    for got, expected, length in zip(grads, want, (n_out + rank, rows, rows)):
        assert_close(got, expected, length)
