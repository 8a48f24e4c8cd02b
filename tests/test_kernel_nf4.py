"""NF4 kernels (backends/kernels/nf4.cu) against minift's NumPy quantizer.

Weights are quantized by minift.quant.quantize_4bit; the references are dequantize_4bit (the
NumPy backend's nf4_dequantize), blockwise.dequantize_absmax and a float64 product with the
dequantized W. Every test takes the ``kernels`` fixture: the CPU emulator here, the GPU where
there is one, with the same sizes (small: the emulator runs a 256-thread block in about a millisecond).
"""

import numpy as np
import pytest

from backends.kernels import nf4
from minift.quant.blockwise import dequantize_4bit, dequantize_absmax, quantize_4bit
from minift.quant.codes import DYNAMIC_CODE, code_table


def on(ks, array):
    return ks.xp.asarray(array)


def host(array):
    return array.get() if hasattr(array, "get") else np.asarray(array)


def quantized(rng, shape, blocksize, code="nf4", double_quant=False):
    """(QuantState, its dequantized float32 W) for a random N(0, 1) weight."""
    state = quantize_4bit(rng.standard_normal(shape), code, blocksize, double_quant)
    return state, dequantize_4bit(state)


def weights(ks, state):
    """(packed, float absmax, code table) on the kernel set's device, for the matmuls."""
    absmax = state.block_absmax()  # the matmuls take float scales (see test_double_quant_matmul)
    return on(ks, state.packed), on(ks, absmax), on(ks, code_table(state.code))


def assert_product(y, x, w):
    """y == x · Wᵀ up to float32 sums of in_features terms of size ~1 (about in * eps)."""
    reference = x.astype(np.float64) @ w.astype(np.float64).T
    np.testing.assert_allclose(host(y), reference, rtol=1e-5, atol=1e-6 * x.shape[-1])


# --- dequantize ----------------------------------------------------------------------------
DEQUANT_CASES = [  # shape, blocksize, code: what each one covers
    pytest.param((7, 9), 32, "nf4", id="63-odd-count-tail-block"),
    pytest.param((3, 100), 256, "fp4", id="300-fp4-tail-of-44"),
    pytest.param((5, 64), 64, "int4", id="320-whole-blocks"),
    pytest.param((1,), 64, "nf4", id="one-weight"),
    pytest.param((40, 500), 32, "nf4", id="625-blocks-3-dq-groups"),
]


@pytest.mark.parametrize("double_quant", [False, True], ids=["plain", "double-quant"])
@pytest.mark.parametrize("shape, blocksize, code", DEQUANT_CASES)
def test_dequantize_matches_minift(kernels, rng, shape, blocksize, code, double_quant):
    state, reference = quantized(rng, shape, blocksize, code, double_quant)
    table = on(kernels, code_table(code))
    if double_quant:
        w = nf4.dequantize_double_quant(
            kernels,
            on(kernels, state.packed),
            on(kernels, state.absmax_q),
            on(kernels, DYNAMIC_CODE),
            on(kernels, state.absmax_scale),
            on(kernels, state.absmax_mean),
            table,
            blocksize,
            shape,
        )
    else:
        w = nf4.dequantize(
            kernels, on(kernels, state.packed), on(kernels, state.absmax), table, blocksize, shape
        )
    assert w.shape == shape and w.dtype == np.float32
    # a GPU may fuse the scale's multiply-add into one rounding: a few ulp apart at most
    np.testing.assert_allclose(host(w), reference, rtol=1e-6 if double_quant else 0, atol=0)


def test_dequantize_absmax_matches_minift(kernels, rng):
    state, _ = quantized(rng, (40, 500), 32, double_quant=True)  # 625 scales, 3 groups of 256
    absmax = nf4.dequantize_absmax(
        kernels,
        on(kernels, state.absmax_q),
        on(kernels, DYNAMIC_CODE),
        on(kernels, state.absmax_scale),
        on(kernels, state.absmax_mean),
    )
    reference = dequantize_absmax(state.absmax_q, state.absmax_scale, state.absmax_mean)
    assert absmax.shape == (625,) and absmax.dtype == np.float32
    np.testing.assert_allclose(host(absmax), reference, rtol=1e-6, atol=0)


def test_dequantize_empty(kernels):
    w = nf4.dequantize(
        kernels,
        on(kernels, np.zeros(0, np.uint8)),
        on(kernels, np.zeros(0, np.float32)),
        code_table("nf4"),
        64,
        (0, 4),
    )
    assert w.shape == (0, 4)


# --- y = x · Wᵀ -----------------------------------------------------------------------------
MATMUL_SHAPES = [  # out, in, blocksize
    pytest.param(20, 96, 64, id="20x96-blocks-cross-rows-gemv"),
    pytest.param(13, 51, 32, id="13x51-odd-count-gemm-only"),
    pytest.param(9, 256, 256, id="9x256-in-is-one-block"),
]


@pytest.mark.parametrize("rows", [1, 3, 16, 17, 40])
@pytest.mark.parametrize("out_features, in_features, blocksize", MATMUL_SHAPES)
def test_matmul_matches_dequantized_product(
    kernels, rng, rows, out_features, in_features, blocksize
):
    state, w = quantized(rng, (out_features, in_features), blocksize)
    x = rng.standard_normal((rows, in_features)).astype(np.float32)
    y = nf4.matmul(
        kernels, on(kernels, x), *weights(kernels, state), blocksize, out_features, in_features
    )
    assert y.shape == (rows, out_features) and y.dtype == np.float32
    assert_product(y, x, w)


@pytest.mark.parametrize("rows", [1, 40], ids=["gemv", "gemm"])
def test_double_quant_matmul(kernels, rng, rows):
    """Double quantization: the scales rebuilt by a kernel, then the float-absmax matmul."""
    state, w = quantized(rng, (24, 96), 32, "fp4", double_quant=True)
    absmax = nf4.dequantize_absmax(
        kernels,
        on(kernels, state.absmax_q),
        on(kernels, DYNAMIC_CODE),
        on(kernels, state.absmax_scale),
        on(kernels, state.absmax_mean),
    )
    x = rng.standard_normal((rows, 96)).astype(np.float32)
    y = nf4.matmul(
        kernels,
        on(kernels, x),
        on(kernels, state.packed),
        absmax,
        on(kernels, code_table("fp4")),
        32,
        24,
        96,
    )
    assert_product(y, x, w)


@pytest.mark.parametrize("stage_x", [True, False, None], ids=["staged", "streamed", "auto"])
def test_gemv_reads_x_from_shared_or_global_memory(kernels, rng, stage_x):
    state, w = quantized(rng, (20, 96), 64)
    x = rng.standard_normal((3, 96)).astype(np.float32)
    y = nf4.gemv(kernels, on(kernels, x), *weights(kernels, state), 64, 20, 96, stage_x=stage_x)
    assert_product(y, x, w)


def test_gemv_streams_x_that_does_not_fit(kernels, rng):
    # 16 rows of 1024 need 18432 floats staged, more than the 10240 reserved
    state, w = quantized(rng, (8, 1024), 128)
    x = rng.standard_normal((16, 1024)).astype(np.float32)
    arrays = (on(kernels, x), *weights(kernels, state), 128, 8, 1024)
    assert_product(nf4.gemv(kernels, *arrays), x, w)
    with pytest.raises(ValueError, match="does not fit"):
        nf4.gemv(kernels, *arrays, stage_x=True)


def test_gemm_tile_remainders(kernels, rng):
    # 70 rows = 64 + 6, 65 outputs = 64 + 1, in 33 = 32 + 1: every tile edge is partial
    state, w = quantized(rng, (65, 33), 32)
    x = rng.standard_normal((70, 33)).astype(np.float32)
    assert_product(nf4.gemm(kernels, on(kernels, x), *weights(kernels, state), 32, 65, 33), x, w)


@pytest.mark.parametrize("lead, in_features", [((2, 3), 96), ((5, 8), 51)], ids=["gemv", "gemm"])
def test_matmul_batch_dimensions(kernels, rng, lead, in_features):
    state, w = quantized(rng, (20, in_features), 32)
    x = rng.standard_normal((*lead, in_features)).astype(np.float32)
    y = nf4.matmul(kernels, on(kernels, x), *weights(kernels, state), 32, 20, in_features)
    assert y.shape == (*lead, 20)
    assert_product(y.reshape(-1, 20), x.reshape(-1, in_features), w)


@pytest.mark.parametrize("function", [nf4.matmul, nf4.gemv, nf4.gemm])
def test_matmul_no_rows(kernels, rng, function):
    state, _ = quantized(rng, (20, 96), 32)
    x = on(kernels, np.zeros((0, 96), np.float32))
    assert function(kernels, x, *weights(kernels, state), 32, 20, 96).shape == (0, 20)


# --- bad inputs ----------------------------------------------------------------------------
def test_dequantize_refuses_bad_inputs(kernels, rng):
    state, _ = quantized(rng, (7, 9), 32)
    packed, absmax, table = weights(kernels, state)
    xp = kernels.xp
    cases = [  # (error, message, packed, absmax, code, blocksize)
        (TypeError, "packed must be uint8", packed.astype(xp.int8), absmax, table, 32),
        (ValueError, r"packed must have shape \(32,\)", packed[:-1], absmax, table, 32),
        (TypeError, "absmax must be float32", packed, absmax.astype(xp.float64), table, 32),
        (ValueError, r"absmax must have shape \(2,\)", packed, absmax[:1], table, 32),
        (ValueError, "code must hold 16", packed, absmax, table[:15], 32),
        (TypeError, "not the name", packed, absmax, "nf4", 32),
        (ValueError, "multiple of 32", packed, absmax, table, 48),
    ]
    for error, message, *arguments in cases:
        with pytest.raises(error, match=message):
            nf4.dequantize(kernels, *arguments, (7, 9))


def test_double_quant_refuses_bad_inputs(kernels, rng):
    state, _ = quantized(rng, (40, 500), 32, double_quant=True)
    good = [
        on(kernels, a)
        for a in (state.absmax_q, DYNAMIC_CODE, state.absmax_scale, state.absmax_mean)
    ]
    xp = kernels.xp
    cases = [  # (error, message, position in `good`, replacement)
        (TypeError, "absmax_q must be uint8", 0, good[0].astype(xp.int32)),
        (ValueError, "dynamic_map must have shape", 1, good[1][:255]),
        (ValueError, r"absmax_scale must have shape \(3,\)", 2, good[2][:2]),
        (ValueError, r"absmax_mean must have shape \(\)", 3, good[3].reshape(1)),
    ]
    for error, message, position, replacement in cases:
        arrays = [replacement if i == position else a for i, a in enumerate(good)]
        with pytest.raises(error, match=message):
            nf4.dequantize_absmax(kernels, *arrays)
        with pytest.raises(error, match=message):
            nf4.dequantize_double_quant(
                kernels, on(kernels, state.packed), *arrays, code_table("nf4"), 32, (40, 500)
            )


def test_matmul_refuses_bad_inputs(kernels, rng):
    state, _ = quantized(rng, (20, 96), 32)
    arrays = weights(kernels, state)
    x = on(kernels, rng.standard_normal((3, 96)).astype(np.float32))
    xp = kernels.xp
    transposed = on(kernels, rng.standard_normal((96, 3)).astype(np.float32)).T
    for function in (nf4.matmul, nf4.gemv, nf4.gemm):
        with pytest.raises(TypeError, match="x must be float32"):
            function(kernels, x.astype(xp.float64), *arrays, 32, 20, 96)
        with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 96\)"):
            function(kernels, x[:, :64], *arrays, 32, 20, 96)
        with pytest.raises(ValueError, match="C-contiguous"):
            function(kernels, transposed, *arrays, 32, 20, 96)
        with pytest.raises(ValueError, match=r"absmax must have shape \(60,\)"):
            function(kernels, x, arrays[0], arrays[1][:-1], arrays[2], 32, 20, 96)
        with pytest.raises(ValueError, match="positive shape"):
            function(kernels, x, *arrays, 32, 0, 96)


def test_gemv_refuses_what_it_cannot_read(kernels, rng):
    state, _ = quantized(rng, (20, 96), 32)
    packed, absmax, table = weights(kernels, state)
    x = on(kernels, rng.standard_normal((17, 96)).astype(np.float32))
    with pytest.raises(ValueError, match="at most 16 rows"):
        nf4.gemv(kernels, x, packed, absmax, table, 32, 20, 96)
    shifted = kernels.xp.zeros(packed.size + 1, kernels.xp.uint8)[1:]  # one byte off
    shifted[:] = packed
    with pytest.raises(ValueError, match="multiple of 16 bytes"):
        nf4.gemv(kernels, x[:1], shifted, absmax, table, 32, 20, 96)
    state, _ = quantized(rng, (13, 51), 32)
    with pytest.raises(ValueError, match="in_features % 32 == 0"):
        x51 = on(kernels, np.ones((1, 51), np.float32))
        nf4.gemv(kernels, x51, *weights(kernels, state), 32, 13, 51)
