// Fused LoRA linear: y = x·Wᵀ + s·(x·Aᵀ)·Bᵀ (+ bias), without W + s·B·A in memory.
//
// x (rows, in), W (out, in), A (r, in), B (out, r), u = x·Aᵀ (rows, r) computed before (an
// nt SGEMM, kept for the backward). Both products share one K loop (gemm_tile.cuh):
//
//     lora_forward:    y  = [x | s·u] · [W | B]ᵀ       K = in, then r      (nt layout)
//     lora_input_grad: gx = [g | s·gB] · [W ; A]        K = out, then r     (nn layout)
//                      with gB = g·B (rows, r) computed before (an nn SGEMM)
//
// Loop nest: grid (row tiles, column tiles); one block computes a BM x BN tile of y (gx):
//     for each K tile of the base segment (x, W), then of the low-rank one (s·u, B):
//         stage the next tiles in registers, multiply the current shared tiles
//     y = acc + bias
// The low-rank segment adds ceil(r / BK) K steps to the ceil(in / BK) of the base product,
// and s is applied as u's values are staged, so the adapter costs about r/in of the
// base GEMM and no extra pass over y.
//
// Tiles: *_128 BM=BN=128, BK=8, 8x8 per thread; *_64 BM=BN=64, BK=16, 4x4 per thread.
// Optimisations (gemm_tile.cuh): shared-memory tiling, register blocking, float4 loads and
// stores where aligned, double buffering with one __syncthreads per K step.
#include "gemm_tile.cuh"

template <class T>
__device__ void lora_forward(const float* x, const float* weight, const float* u,
                             const float* lora_b, const float* bias, float* y, int rows,
                             int out_features, int in_features, int rank, float scale) {
    const Segment base{x, in_features, weight, in_features, in_features, 1.0f};
    const Segment low_rank{u, rank, lora_b, rank, rank, scale};
    // x, u and the (out, K) matrices W, B are all K-major: the nt layout
    gemm_tile<T, true, true>(base, low_rank, rows, out_features, 1.0f, bias, y, out_features);
}

template <class T>
__device__ void lora_input_grad(const float* grad_y, const float* weight, const float* grad_y_b,
                                const float* lora_a, float* grad_x, int rows, int in_features,
                                int out_features, int rank, float scale) {
    const Segment base{grad_y, out_features, weight, in_features, out_features, 1.0f};
    const Segment low_rank{grad_y_b, rank, lora_a, in_features, rank, scale};
    // W (out, in) and A (r, in) are read as (K, in), rows-major: the nn layout
    gemm_tile<T, true, false>(base, low_rank, rows, in_features, 1.0f, nullptr, grad_x,
                              in_features);
}

// One kernel per tile shape and bias or not (the emulator reads each signature).

extern "C" __global__ __launch_bounds__(GEMM_THREADS) void lora_forward_128(
    const float* x, const float* weight, const float* u, const float* lora_b, float* y, int rows,
    int out_features, int in_features, int rank, float scale) {
    lora_forward<TileLarge>(x, weight, u, lora_b, nullptr, y, rows, out_features, in_features,
                            rank, scale);
}

extern "C" __global__ __launch_bounds__(GEMM_THREADS) void lora_forward_bias_128(
    const float* x, const float* weight, const float* u, const float* lora_b, const float* bias,
    float* y, int rows, int out_features, int in_features, int rank, float scale) {
    lora_forward<TileLarge>(x, weight, u, lora_b, bias, y, rows, out_features, in_features, rank,
                            scale);
}

extern "C" __global__ __launch_bounds__(GEMM_THREADS) void lora_input_grad_128(
    const float* grad_y, const float* weight, const float* grad_y_b, const float* lora_a,
    float* grad_x, int rows, int in_features, int out_features, int rank, float scale) {
    lora_input_grad<TileLarge>(grad_y, weight, grad_y_b, lora_a, grad_x, rows, in_features,
                               out_features, rank, scale);
}

extern "C" __global__ __launch_bounds__(GEMM_THREADS) void lora_forward_64(
    const float* x, const float* weight, const float* u, const float* lora_b, float* y, int rows,
    int out_features, int in_features, int rank, float scale) {
    lora_forward<TileSmall>(x, weight, u, lora_b, nullptr, y, rows, out_features, in_features,
                            rank, scale);
}

extern "C" __global__ __launch_bounds__(GEMM_THREADS) void lora_forward_bias_64(
    const float* x, const float* weight, const float* u, const float* lora_b, const float* bias,
    float* y, int rows, int out_features, int in_features, int rank, float scale) {
    lora_forward<TileSmall>(x, weight, u, lora_b, bias, y, rows, out_features, in_features, rank,
                            scale);
}

extern "C" __global__ __launch_bounds__(GEMM_THREADS) void lora_input_grad_64(
    const float* grad_y, const float* weight, const float* grad_y_b, const float* lora_a,
    float* grad_x, int rows, int in_features, int out_features, int rank, float scale) {
    lora_input_grad<TileSmall>(grad_y, weight, grad_y_b, lora_a, grad_x, rows, in_features,
                               out_features, rank, scale);
}
