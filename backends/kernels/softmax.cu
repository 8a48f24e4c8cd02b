// Softmax over the last axis (float32), forward with an optional causal mask, and backward.
//
// Loop nest (rows = all leading indices flattened, n = Tk keys per row):
//
//   for row in rows:                                  // a warp or a block, see below
//       m = max_j x[row, j];  d = sum_j exp(x[row, j] - m)       // j < visible(row)
//       y[row, j] = exp(x[row, j] - m) / d,  0 for masked j      // subtracting m keeps exp <= 1
//   backward:  gx[row, j] = y[row, j] (g[row, j] - sum_k g[row, k] y[row, k])
//
// Causal mask: query i (= row % Tq) sees key j <= i + (Tk - Tq), as minift's attention does.
// A row reads only its visible keys; the masked ones are written as exact zeros.
//
// Two shapes of the same loop, picked by the row length in rowwise.py:
// * Rows of at most 32 * PER_LANE keys: one warp per row, blockDim.x / 32 rows per block
//   (rowwise.py launches WARP_ROWS_PER_BLOCK = 4). Lane l keeps columns l, l + 32, ... in a
//   register array, so the row is read once and written once and the two reductions are warp
//   shuffles. A register array needs a compile-time size, hence the template: PER_LANE = 4
//   (up to 128 keys) and 32 (up to 1024), so a short row does not run 32 guarded iterations.
//   These kernels take `rows` last: the spare warps of the last block must stay idle.
// * Longer rows: one block per row (BLOCK_THREADS = 256), striding over the row. Pass 1 keeps
//   an online max and sum per thread (Milakov & Gimelshein 2018, "Online normalizer
//   calculation for softmax"): when a larger value arrives, the sum so far is rescaled by
//   exp(m_old - m_new). Max and sum then cost one read of the row instead of two; pass 2
//   reads it again to write y.
// Softmax moves 8 bytes per exp, so memory traffic rather than arithmetic should bound it:
// the accurate expf is kept (not the approximate __expf).
#include "common.cuh"

// Keys that query row `row` may see: all Tk, or with the causal mask min(Tk, i + 1 + Tk - Tq).
// Zero when Tq > Tk leaves a query with no key; that row is written as zeros.
__device__ __forceinline__ int visible_keys(long long row, int tq, int tk, int causal) {
    if (!causal) return tk;
    int query = static_cast<int>(row % tq);
    return max(0, min(tk, query + 1 + tk - tq));
}

template <int PER_LANE>
__device__ void softmax_forward_warp(const float* __restrict__ x, float* __restrict__ y, int tq,
                                     int tk, int causal, int rows) {
    long long row = static_cast<long long>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= rows) return;  // the whole warp leaves together; no __syncthreads follows
    const float* x_row = x + row * tk;
    float* y_row = y + row * tk;
    int visible = visible_keys(row, tq, tk, causal);

    float v[PER_LANE];  // this lane's columns lane + 32 i, in registers
    float m = NEG_INF;
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i) {
        int j = lane + 32 * i;
        v[i] = j < visible ? x_row[j] : NEG_INF;
        m = fmaxf(m, v[i]);
    }
    m = warp_max(m);
    float d = 0.0f;
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i) {
        v[i] = lane + 32 * i < visible ? expf(v[i] - m) : 0.0f;
        d += v[i];
    }
    float inv_d = 1.0f / warp_sum(d);
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i) {
        int j = lane + 32 * i;
        if (j < tk) y_row[j] = j < visible ? v[i] * inv_d : 0.0f;
    }
}

extern "C" __global__ void softmax_forward_warp4(const float* __restrict__ x,
                                                 float* __restrict__ y, int tq, int tk,
                                                 int causal, int rows) {
    softmax_forward_warp<4>(x, y, tq, tk, causal, rows);
}

extern "C" __global__ void softmax_forward_warp32(const float* __restrict__ x,
                                                  float* __restrict__ y, int tq, int tk,
                                                  int causal, int rows) {
    softmax_forward_warp<32>(x, y, tq, tk, causal, rows);
}

// One block per row (gridDim.x = rows), for rows too long to keep in registers.
extern "C" __global__ void softmax_forward_block(const float* __restrict__ x,
                                                 float* __restrict__ y, int tq, int tk,
                                                 int causal) {
    __shared__ float scratch[32];
    long long row = blockIdx.x;
    const float* x_row = x + row * tk;
    float* y_row = y + row * tk;
    int visible = visible_keys(row, tq, tk, causal);

    float m = NEG_INF, d = 0.0f;
    for (int j = threadIdx.x; j < visible; j += blockDim.x) online_add(x_row[j], m, d);
    float row_max = block_max(m, scratch);
    // each thread's sum, rescaled from its own max to the row's (a thread that saw nothing
    // has d = 0 and m = -inf, so it adds 0)
    d *= expf(m - row_max);
    float inv_d = 1.0f / block_sum(d, scratch);
    for (int j = threadIdx.x; j < tk; j += blockDim.x)
        y_row[j] = j < visible ? expf(x_row[j] - row_max) * inv_d : 0.0f;
}

template <int PER_LANE>
__device__ void softmax_backward_warp(const float* __restrict__ y, const float* __restrict__ g,
                                      float* __restrict__ gx, int n, int rows) {
    long long row = static_cast<long long>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (row >= rows) return;  // the whole warp leaves together
    float yv[PER_LANE], gv[PER_LANE];
    float dot = 0.0f;
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i) {
        int j = lane + 32 * i;
        yv[i] = j < n ? y[row * n + j] : 0.0f;
        gv[i] = j < n ? g[row * n + j] : 0.0f;
        dot += yv[i] * gv[i];
    }
    dot = warp_sum(dot);
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i) {
        int j = lane + 32 * i;
        if (j < n) gx[row * n + j] = yv[i] * (gv[i] - dot);
    }
}

extern "C" __global__ void softmax_backward_warp4(const float* __restrict__ y,
                                                  const float* __restrict__ g,
                                                  float* __restrict__ gx, int n, int rows) {
    softmax_backward_warp<4>(y, g, gx, n, rows);
}

extern "C" __global__ void softmax_backward_warp32(const float* __restrict__ y,
                                                   const float* __restrict__ g,
                                                   float* __restrict__ gx, int n, int rows) {
    softmax_backward_warp<32>(y, g, gx, n, rows);
}

// One block per row (gridDim.x = rows): pass 1 reduces sum(g y), pass 2 writes gx
// (a masked key has y = 0, so gx = 0 there without a mask).
extern "C" __global__ void softmax_backward_block(const float* __restrict__ y,
                                                  const float* __restrict__ g,
                                                  float* __restrict__ gx, int n) {
    __shared__ float scratch[32];
    long long offset = static_cast<long long>(blockIdx.x) * n;
    float dot = 0.0f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) dot += y[offset + j] * g[offset + j];
    dot = block_sum(dot, scratch);
    for (int j = threadIdx.x; j < n; j += blockDim.x)
        gx[offset + j] = y[offset + j] * (g[offset + j] - dot);
}
