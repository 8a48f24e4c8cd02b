"""The CPU emulator runs CUDA kernels with CUDA's semantics, and refuses what the GPU would."""

import subprocess
import sys

import numpy as np
import pytest

from backends.kernels.emulator import EmulatedModule, EmulatorError, compiler, parse_param

pytestmark = pytest.mark.skipif(compiler() is None, reason="the CUDA emulator needs g++")

PROBES = r"""
#include "common.cuh"

// each thread writes its global linear id at its global position
extern "C" __global__ void ids(int* out) {
    unsigned block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    unsigned thread = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    unsigned per_block = blockDim.x * blockDim.y * blockDim.z;
    out[block * per_block + thread] = (int)(block * 1000 + thread);
}

// row sums: threads past the row return early, the rest still meet at __syncthreads
extern "C" __global__ void row_sum_early_exit(const float* x, float* out, int cols) {
    __shared__ float scratch[32];
    if ((int)threadIdx.x >= cols + 32) return;
    float v = (int)threadIdx.x < cols ? x[blockIdx.x * cols + threadIdx.x] : 0.0f;
    __shared__ float partial[1024];
    partial[threadIdx.x] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
        float s = 0.0f;
        for (int c = 0; c < cols; ++c) s += partial[c];
        out[blockIdx.x] = s;
    }
    (void)scratch;
}

// block_sum / block_max from common.cuh, and shfl_down keeping its own value past the warp
extern "C" __global__ void reductions(const float* x, float* sums, float* maxes, float* down) {
    __shared__ float scratch[32];
    float v = x[blockIdx.x * blockDim.x + threadIdx.x];
    float s = block_sum(v, scratch);
    float m = block_max(v, scratch);
    if (threadIdx.x == 0) { sums[blockIdx.x] = s; maxes[blockIdx.x] = m; }
    down[blockIdx.x * blockDim.x + threadIdx.x] = __shfl_down_sync(0xffffffffu, v, 4);
}
"""


@pytest.fixture(scope="module")
def probes(tmp_path_factory):
    path = tmp_path_factory.mktemp("emulator") / "probes.cu"
    path.write_text(PROBES)  # its #include "common.cuh" resolves in backends/kernels
    return EmulatedModule(path)


def test_every_thread_of_every_block_runs_once_with_its_ids(probes):
    grid, block = (3, 2, 2), (8, 4, 2)
    out = np.full(12 * 64, -1, dtype=np.int32)
    probes.get_function("ids")(grid, block, (out,))
    expected = np.array([b * 1000 + t for b in range(12) for t in range(64)], dtype=np.int32)
    np.testing.assert_array_equal(out, expected)


def test_threads_that_return_early_do_not_block_syncthreads(probes, rng):
    x = rng.standard_normal((5, 40)).astype(np.float32)
    out = np.zeros(5, dtype=np.float32)
    probes.get_function("row_sum_early_exit")((5,), (128,), (x, out, np.int32(40)))
    np.testing.assert_allclose(out, x.sum(axis=1), rtol=1e-5, atol=1e-5)


def test_block_reductions_and_shuffle_down(probes, rng):
    x = rng.standard_normal((3, 96)).astype(np.float32)
    sums, maxes = np.zeros(3, np.float32), np.zeros(3, np.float32)
    down = np.zeros_like(x)
    probes.get_function("reductions")((3,), (96,), (x, sums, maxes, down))
    np.testing.assert_allclose(sums, x.sum(axis=1), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(maxes, x.max(axis=1))
    lanes = x.reshape(3, 3, 32)
    expected = np.concatenate([lanes[..., 4:], lanes[..., 28:]], axis=-1)  # last 4 keep theirs
    np.testing.assert_array_equal(down.reshape(3, 3, 32), expected)


@pytest.mark.parametrize(
    "args, message",
    [
        ((np.zeros(4, np.float32),), "must be a int32 array, got float32"),
        (([0, 1],), "must be a int32 array, got list"),
        ((np.zeros(4, np.int32), np.int32(1)), "takes 1 arguments, got 2"),
    ],
)
def test_arguments_are_checked_against_the_signature(probes, args, message):
    with pytest.raises(EmulatorError, match=message):
        probes.get_function("ids")((1,), (4,), args)


def test_scalars_must_have_the_exact_c_type(probes):
    x, out = np.zeros((1, 4), np.float32), np.zeros(1, np.float32)
    with pytest.raises(EmulatorError, match=r"'cols' is a C int: pass np.int32"):
        probes.get_function("row_sum_early_exit")((1,), (32,), (x, out, 4))


def test_launch_limits_and_unknown_kernels(probes):
    out = np.zeros(2048, np.int32)
    with pytest.raises(EmulatorError, match="at most 1024 threads"):
        probes.get_function("ids")((1,), (2048,), (out,))
    with pytest.raises(EmulatorError, match="static shared memory only"):
        probes.get_function("ids")((1,), (4,), (out,), shared_mem=256)
    with pytest.raises(EmulatorError, match="has no kernel 'gemm'"):
        probes.get_function("gemm")


def test_a_compile_error_names_the_file(tmp_path):
    path = tmp_path / "broken.cu"
    path.write_text('extern "C" __global__ void broken(float* x) { x[0] = undefined_name; }\n')
    with pytest.raises(EmulatorError, match="could not compile .*broken.cu"):
        EmulatedModule(path)


def test_unsupported_parameter_types_are_refused():
    assert parse_param("const float* __restrict__ x").pointer
    assert parse_param("long long n").ctype == "long long"
    with pytest.raises(EmulatorError, match="size_t n"):
        parse_param("size_t n")


SLIPS = r"""
extern "C" __global__ void misaligned(const float* x, float* y) {
    y[threadIdx.x] = reinterpret_cast<const float4*>(x + 1)->x;  // 4 bytes off 16
}
extern "C" __global__ void split_barriers(float* y) {
    if (threadIdx.x < 16) __syncwarp();  // half the warp waits here,
    else __syncthreads();                 // the other half there: neither barrier fills
    y[threadIdx.x] = 1.0f;
}
extern "C" __global__ void past_the_tile(float* y, int column) {
    __shared__ float tile[4][8];
    tile[threadIdx.x][column] = 1.0f;
    y[threadIdx.x] = tile[threadIdx.x][0];
}
"""


@pytest.mark.parametrize(
    "call, messages",
    [
        ("misaligned')((1,), (4,), (np.zeros(16, np.float32), np.zeros(4, np.float32)))",
         ("slips.cu:3", "misaligned address")),
        ("past_the_tile')((1,), (4,), (np.zeros(4, np.float32), np.int32(9)))",
         ("slips.cu:12", "index 9 out of bounds for type 'float [8]'")),
        ("split_barriers')((1,), (32,), (np.zeros(32, np.float32),))", ("deadlock in block (0, 0, 0)",)),
    ],
)
def test_misaligned_vectors_indices_past_a_tile_and_deadlocks_stop_the_run(tmp_path, call, messages):
    """What a GPU faults on, corrupts silently or hangs at stops the emulator with a message."""
    path = tmp_path / "slips.cu"
    path.write_text(SLIPS)
    script = (
        "import numpy as np\nfrom backends.kernels.emulator import EmulatedModule\n"
        f"EmulatedModule({str(path)!r}).get_function('{call}\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert result.returncode != 0
    assert all(message in result.stderr for message in messages), result.stderr
