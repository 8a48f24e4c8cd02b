// SGEMM: C[z] = alpha * op(A[z]) · op(B[z]) in float32, row-major, batched over z.
//
// Layouts (N = as stored, T = stored transposed), the products a linear layer's backward
// needs without a transposed copy:
//     nn  A (M, K), B (K, N)     gx = g · W
//     nt  A (M, K), B (N, K)     y  = x · Wᵀ
//     tn  A (K, M), B (K, N)     gW = gᵀ · x
//     tt  A (K, M), B (N, K)     (for completeness: two transposed views)
//
// Loop nest: grid (row tiles, column tiles, batches); for z in the block's batches (the
// grid's z dimension, striding by gridDim.z past 65535), one block computes a BM x BN tile
// of C[z] through gemm_tile.cuh (K tiles of BK, 256 threads, a TM x TN register block each).
// Batch strides are in elements; 0 means every batch reads the same matrix (a weight).
//
// Tiles (gemm_tile.cuh): sgemm_*_128 BM=BN=128, BK=8, 8x8 per thread;
//                        sgemm_*_64  BM=BN=64,  BK=16, 4x4 per thread.
// Optimisations: shared-memory tiling, register blocking, float4 loads/stores where aligned,
// double buffering with one __syncthreads per K step (all in gemm_tile.cuh).
#include "gemm_tile.cuh"

template <class T, bool TRANS_A, bool TRANS_B>
__device__ void sgemm(const float* a, const float* b, float* c, int M, int N, int K, int lda,
                      int ldb, int ldc, long long stride_a, long long stride_b,
                      long long stride_c, int batches, float alpha) {
    // every thread runs the same batches, so each reaches every __syncthreads inside
    for (int z = blockIdx.z; z < batches; z += gridDim.z) {
        const Segment product{a + z * stride_a, lda, b + z * stride_b, ldb, K, 1.0f};
        const Segment nothing{a, lda, b, ldb, 0, 1.0f};
        // A seen as (M, K) is K-major unless transposed; B seen as (N, K) only if transposed
        gemm_tile<T, !TRANS_A, TRANS_B>(product, nothing, M, N, alpha, nullptr,
                                         c + z * stride_c, ldc);
    }
}

// One kernel per layout and tile shape (the emulator reads each signature, so no macros).

extern "C" __global__ __launch_bounds__(GEMM_THREADS) void sgemm_nn_128(
    const float* a, const float* b, float* c, int M, int N, int K, int lda, int ldb, int ldc,
    long long stride_a, long long stride_b, long long stride_c, int batches, float alpha) {
    sgemm<TileLarge, false, false>(a, b, c, M, N, K, lda, ldb, ldc, stride_a, stride_b,
                                   stride_c, batches, alpha);
}

extern "C" __global__ __launch_bounds__(GEMM_THREADS) void sgemm_nt_128(
    const float* a, const float* b, float* c, int M, int N, int K, int lda, int ldb, int ldc,
    long long stride_a, long long stride_b, long long stride_c, int batches, float alpha) {
    sgemm<TileLarge, false, true>(a, b, c, M, N, K, lda, ldb, ldc, stride_a, stride_b,
                                  stride_c, batches, alpha);
}

extern "C" __global__ __launch_bounds__(GEMM_THREADS) void sgemm_tn_128(
    const float* a, const float* b, float* c, int M, int N, int K, int lda, int ldb, int ldc,
    long long stride_a, long long stride_b, long long stride_c, int batches, float alpha) {
    sgemm<TileLarge, true, false>(a, b, c, M, N, K, lda, ldb, ldc, stride_a, stride_b,
                                  stride_c, batches, alpha);
}

extern "C" __global__ __launch_bounds__(GEMM_THREADS) void sgemm_tt_128(
    const float* a, const float* b, float* c, int M, int N, int K, int lda, int ldb, int ldc,
    long long stride_a, long long stride_b, long long stride_c, int batches, float alpha) {
    sgemm<TileLarge, true, true>(a, b, c, M, N, K, lda, ldb, ldc, stride_a, stride_b,
                                 stride_c, batches, alpha);
}

extern "C" __global__ __launch_bounds__(GEMM_THREADS) void sgemm_nn_64(
    const float* a, const float* b, float* c, int M, int N, int K, int lda, int ldb, int ldc,
    long long stride_a, long long stride_b, long long stride_c, int batches, float alpha) {
    sgemm<TileSmall, false, false>(a, b, c, M, N, K, lda, ldb, ldc, stride_a, stride_b,
                                   stride_c, batches, alpha);
}

extern "C" __global__ __launch_bounds__(GEMM_THREADS) void sgemm_nt_64(
    const float* a, const float* b, float* c, int M, int N, int K, int lda, int ldb, int ldc,
    long long stride_a, long long stride_b, long long stride_c, int batches, float alpha) {
    sgemm<TileSmall, false, true>(a, b, c, M, N, K, lda, ldb, ldc, stride_a, stride_b,
                                  stride_c, batches, alpha);
}

extern "C" __global__ __launch_bounds__(GEMM_THREADS) void sgemm_tn_64(
    const float* a, const float* b, float* c, int M, int N, int K, int lda, int ldb, int ldc,
    long long stride_a, long long stride_b, long long stride_c, int batches, float alpha) {
    sgemm<TileSmall, true, false>(a, b, c, M, N, K, lda, ldb, ldc, stride_a, stride_b,
                                  stride_c, batches, alpha);
}

extern "C" __global__ __launch_bounds__(GEMM_THREADS) void sgemm_tt_64(
    const float* a, const float* b, float* c, int M, int N, int K, int lda, int ldb, int ldc,
    long long stride_a, long long stride_b, long long stride_c, int batches, float alpha) {
    sgemm<TileSmall, true, true>(a, b, c, M, N, K, lda, ldb, ldc, stride_a, stride_b,
                                 stride_c, batches, alpha);
}
