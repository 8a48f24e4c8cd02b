"""sgemm.cu through gemm.py against NumPy: layouts, edges, batches, transposed views, errors.

Every test runs on the ``kernels`` fixture: the CPU emulator here, the GPU where there is one.
References are float64 products of the same float32 inputs; the kernels sum in float32, so
the tolerance grows with the size of the values.
"""

import math

import numpy as np
import pytest

from backends.kernels import gemm as gemm_module
from backends.kernels.gemm import gemm, matmul, plan_gemm, plan_matmul
from backends.kernels.loader import EmulatedKernels

LAYOUTS = ["nn", "nt", "tn", "tt"]
# (M, N, K): one element; nothing a multiple of a tile; K = 1; K < BK; exact 64 tiles
SHAPES = [(1, 1, 1), (37, 53, 29), (130, 70, 257), (5, 9, 1), (20, 33, 6), (64, 64, 16)]


def host(x):
    """A NumPy copy of a NumPy or CuPy array."""
    return x.get() if hasattr(x, "get") else np.asarray(x)


def address(x) -> int:
    """Where an array's data starts, on the host or the device."""
    return x.data.ptr if hasattr(x.data, "ptr") else x.ctypes.data


def random(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def assert_matches(got, a, b, alpha=1.0):
    """got == alpha · a @ b (NumPy semantics), to float32 accuracy for sums of length K."""
    want = alpha * np.matmul(host(a).astype(np.float64), host(b).astype(np.float64))
    got = host(got)
    assert got.shape == want.shape and got.dtype == np.float32
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * scale * math.sqrt(a.shape[-1] + 1))


def stored_operands(kernels, rng, layout, m, n, k, batch=()):
    """a and b as stored for `layout`, and the logical op(a), op(b) for the reference."""
    a = random(rng, *batch, *((k, m) if layout[0] == "t" else (m, k)))
    b = random(rng, *batch, *((n, k) if layout[1] == "t" else (k, n)))
    op_a = a.swapaxes(-1, -2) if layout[0] == "t" else a
    op_b = b.swapaxes(-1, -2) if layout[1] == "t" else b
    return kernels.xp.asarray(a), kernels.xp.asarray(b), op_a, op_b


@pytest.mark.parametrize("tile", [128, 64])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_matches_numpy(kernels, rng, layout, shape, tile):
    a, b, op_a, op_b = stored_operands(kernels, rng, layout, *shape)
    c = gemm(kernels, a, b, trans_a=layout[0] == "t", trans_b=layout[1] == "t", tile=tile)
    assert_matches(c, op_a, op_b)


def test_alpha_scales_the_product(kernels, rng):
    a, b, op_a, op_b = stored_operands(kernels, rng, "tn", 19, 23, 31)
    assert_matches(gemm(kernels, a, b, trans_a=True, alpha=-0.25), op_a, op_b, alpha=-0.25)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_batched_layouts_use_the_grid(kernels, rng, layout):
    a, b, op_a, op_b = stored_operands(kernels, rng, layout, 21, 35, 13, batch=(2, 3))
    plan = plan_gemm(kernels, a, b, layout[0] == "t", layout[1] == "t")
    assert (plan.batches, plan.stride_a, plan.stride_b) == (6, 21 * 13, 35 * 13)
    assert_matches(gemm(kernels, a, b, layout[0] == "t", layout[1] == "t"), op_a, op_b)


def test_batches_beyond_the_grid_are_looped_in_the_kernel(kernels, rng, monkeypatch):
    monkeypatch.setattr(gemm_module, "MAX_GRID_Z", 2)  # 5 batches on a grid 2 deep
    a, b, op_a, op_b = stored_operands(kernels, rng, "nn", 9, 10, 11, batch=(5,))
    assert_matches(gemm(kernels, a, b), op_a, op_b)


def test_a_stack_times_a_shared_matrix_is_one_tall_product(kernels, rng):
    x, w = random(rng, 3, 37, 29), random(rng, 29, 53)
    plan = plan_matmul(kernels, kernels.xp.asarray(x), kernels.xp.asarray(w))
    assert (plan.m, plan.batches, plan.stride_b, plan.out_shape) == (111, 1, 0, (3, 37, 53))
    assert_matches(matmul(kernels, kernels.xp.asarray(x), kernels.xp.asarray(w)), x, w)


@pytest.mark.parametrize(
    "shape_a, shape_b, stride_a, stride_b",
    [
        ((37, 29), (3, 29, 53), 0, 29 * 53),  # a shared by every batch: stride 0
        ((1, 37, 29), (2, 29, 53), 0, 29 * 53),  # a batch axis of 1 is shared too
        ((2, 1, 8, 5), (3, 5, 7), 8 * 5, 5 * 7),  # partial broadcasts, expanded by copies
    ],
)
def test_batch_axes_broadcast_as_numpy(kernels, rng, shape_a, shape_b, stride_a, stride_b):
    a, b = random(rng, *shape_a), random(rng, *shape_b)
    plan = plan_matmul(kernels, kernels.xp.asarray(a), kernels.xp.asarray(b))
    assert (plan.stride_a, plan.stride_b) == (stride_a, stride_b)
    assert_matches(matmul(kernels, kernels.xp.asarray(a), kernels.xp.asarray(b)), a, b)


def test_transposed_a_with_a_shared_b_keeps_its_batches(kernels, rng):
    a, b, op_a, op_b = stored_operands(kernels, rng, "tn", 17, 12, 9, batch=(4,))
    b, op_b = b[0], op_b[0]  # one (K, N) matrix for every batch
    plan = plan_gemm(kernels, a, b, trans_a=True)
    assert (plan.batches, plan.stride_b) == (4, 0)
    assert_matches(gemm(kernels, a, b, trans_a=True), op_a, op_b)


@pytest.mark.parametrize(
    "layout, shape_p, shape_q, product",
    [
        ("nt", (13, 29), (21, 29), lambda p, q: (p, q.T)),  # y = x · Wᵀ
        ("tn", (13, 21), (13, 29), lambda p, q: (p.T, q)),  # gW = gᵀ · x
        ("tt", (29, 13), (21, 29), lambda p, q: (p.T, q.T)),
    ],
    ids=["x@w.T", "g.T@x", "p.T@q.T"],
)
def test_transposed_views_are_read_in_place(kernels, rng, layout, shape_p, shape_q, product):
    p, q = (kernels.xp.asarray(random(rng, *shape)) for shape in (shape_p, shape_q))
    a, b = product(p, q)
    plan = plan_matmul(kernels, a, b)
    assert plan.layout == layout and plan.copied == ()
    assert (address(plan.a), address(plan.b)) == (address(p), address(q))  # no copy made
    assert_matches(matmul(kernels, a, b), a, b)


def test_batched_swapaxes_view_is_read_in_place(kernels, rng):
    stored = kernels.xp.asarray(random(rng, 2, 3, 31, 18))  # (..., K, M)
    b = kernels.xp.asarray(random(rng, 31, 40))
    view = stored.swapaxes(-1, -2)  # (2, 3, 18, 31), not contiguous
    plan = plan_matmul(kernels, view, b)
    assert (plan.layout, plan.copied, plan.batches) == ("tn", (), 6)
    assert_matches(matmul(kernels, view, b), view, b)


def test_other_views_are_copied_first(kernels, rng):
    a = kernels.xp.asarray(random(rng, 20, 60))[:, ::2]  # every other column
    b = kernels.xp.asarray(random(rng, 30, 9))
    plan = plan_matmul(kernels, a, b)
    assert (plan.layout, plan.copied) == ("nn", ("a",))
    assert_matches(matmul(kernels, a, b), a, b)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_misaligned_operands_fall_back_to_scalar_loads(kernels, rng, layout):
    """Leading dimensions that are multiples of 4 but data 4 bytes past a 16-byte boundary:
    a float4 load there would fail on the GPU, so the kernel must load floats one by one."""
    m, n, k = 36, 44, 24

    def misaligned(rows, cols):
        buffer = kernels.xp.asarray(random(rng, rows * cols + 1))
        return buffer[1:].reshape(rows, cols)  # C-contiguous, starts at byte 4

    a = misaligned(*((k, m) if layout[0] == "t" else (m, k)))
    b = misaligned(*((n, k) if layout[1] == "t" else (k, n)))
    assert address(a) % 16 == 4 and address(b) % 16 == 4
    c = gemm(kernels, a, b, trans_a=layout[0] == "t", trans_b=layout[1] == "t")
    assert_matches(c, a.T if layout[0] == "t" else a, b.T if layout[1] == "t" else b)


def test_empty_products(kernels, rng):
    xp = kernels.xp
    empty = matmul(kernels, xp.zeros((0, 5), np.float32), xp.zeros((5, 7), np.float32))
    assert host(empty).shape == (0, 7)
    zeros = matmul(kernels, xp.zeros((4, 0), np.float32), xp.zeros((0, 3), np.float32))
    np.testing.assert_array_equal(host(zeros), np.zeros((4, 3), np.float32))


def test_tile_choice_follows_the_number_of_blocks():
    assert gemm_module.choose_tile(4096, 4096, 1) == 128
    assert gemm_module.choose_tile(256, 256, 1) == 64
    assert gemm_module.choose_tile(256, 256, 64) == 128  # many batches fill the GPU too


def test_bad_inputs_are_refused_with_the_reason(kernels, rng):
    xp = kernels.xp
    a, b = xp.asarray(random(rng, 4, 5)), xp.asarray(random(rng, 5, 6))
    with pytest.raises(TypeError, match="float64"):
        matmul(kernels, a.astype(np.float64), b)
    with pytest.raises(ValueError, match="2 or more dimensions"):
        matmul(kernels, a[0], b)
    with pytest.raises(ValueError, match="inner sizes must agree"):
        matmul(kernels, a, a)
    with pytest.raises(ValueError, match="do not broadcast"):
        matmul(kernels, xp.asarray(random(rng, 2, 4, 5)), xp.asarray(random(rng, 3, 5, 6)))
    with pytest.raises(ValueError, match="C-contiguous"):
        gemm(kernels, a.T, a)
    with pytest.raises(ValueError, match="tile must be one of"):
        gemm(kernels, a, b, tile=32)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_large_products_on_the_gpu(kernels, rng, layout):
    if isinstance(kernels, EmulatedKernels):
        pytest.skip("thousands of blocks: too slow to emulate (the small shapes cover the code)")
    for shape in [(1024, 1000, 777), (4097, 129, 2048), (3, 5000, 4096)]:
        a, b, op_a, op_b = stored_operands(kernels, rng, layout, *shape)
        c = gemm(kernels, a, b, trans_a=layout[0] == "t", trans_b=layout[1] == "t")
        assert_matches(c, op_a, op_b)
