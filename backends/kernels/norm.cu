// Layer norm and RMS norm over the last axis of x (N, D), forward and backward (float32).
//
// Loop nest (one block per row; rowwise.py launches min(256, D rounded up to 32) threads):
//
//   for row in rows:
//       layer norm: mean = sum_j x / D;  rstd = 1 / sqrt(sum_j (x - mean)^2 / D + eps)
//       RMS norm:   mean = 0;            rstd = 1 / sqrt(sum_j x^2 / D + eps)
//       y[row, j] = x_hat w[j] + b[j],   x_hat = (x[row, j] - mean) rstd
//   backward, with x_hat recomputed from (x, mean, rstd) and g_hat = g w:
//       gx[row, j] = rstd (g_hat - mean_j g_hat - x_hat mean_j(g_hat x_hat))
//       (RMS norm has no mean_j g_hat term: nothing was subtracted in forward)
//   parameter gradients, sums over rows (a second kernel):
//       gw[j] = sum_rows g x_hat,   gb[j] = sum_rows g
//
// RMS norm is layer norm without the centring, so each body is one template, CENTRED = true
// for layer norm and false for RMS norm.
// The variance is two-pass, mean first and then the centred squares: sum x^2 / D - mean^2
// cancels catastrophically in float32 when |mean| >> std. Every pass strides over the row in
// global memory, so rows of any length work (D = 8192 is 32 values per thread); a row is at
// most a few tens of KB, which the re-reading passes are meant to find in cache.
// Parameter gradients: a block of threads owns blockDim.x columns of a slice of `slice_rows`
// rows (rowwise.py: PARAM_GRAD_SLICE_ROWS = 64) and writes one partial sum per column, a
// (slices, D) array that rowwise.py adds up with xp.sum. That is deterministic (no atomics)
// and gives slices x D / blockDim.x blocks, enough to fill the GPU even when D is small.
// Consecutive threads read consecutive columns of a row: coalesced loads.
#include "common.cuh"

// gridDim.x = rows. RMS norm passes bias = mean = nullptr; they are never read.
template <bool CENTRED>
__device__ void norm_forward(const float* __restrict__ x, const float* __restrict__ weight,
                             const float* __restrict__ bias, float* __restrict__ y,
                             float* __restrict__ mean, float* __restrict__ rstd, int dim,
                             float eps) {
    __shared__ float scratch[32];
    long long row = blockIdx.x;
    const float* x_row = x + row * dim;
    float* y_row = y + row * dim;
    float mu = 0.0f;
    if constexpr (CENTRED) {
        float s = 0.0f;
        for (int j = threadIdx.x; j < dim; j += blockDim.x) s += x_row[j];
        mu = block_sum(s, scratch) / dim;
    }
    float q = 0.0f;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) {
        float centred = x_row[j] - mu;
        q += centred * centred;
    }
    float r = rsqrtf(block_sum(q, scratch) / dim + eps);
    for (int j = threadIdx.x; j < dim; j += blockDim.x) {
        float x_hat = (x_row[j] - mu) * r;
        if constexpr (CENTRED) y_row[j] = fmaf(x_hat, weight[j], bias[j]);
        else y_row[j] = x_hat * weight[j];
    }
    if (threadIdx.x == 0) {
        if constexpr (CENTRED) mean[row] = mu;
        rstd[row] = r;
    }
}

extern "C" __global__ void layer_norm_forward(const float* __restrict__ x,
                                              const float* __restrict__ weight,
                                              const float* __restrict__ bias,
                                              float* __restrict__ y, float* __restrict__ mean,
                                              float* __restrict__ rstd, int dim, float eps) {
    norm_forward<true>(x, weight, bias, y, mean, rstd, dim, eps);
}

extern "C" __global__ void rms_norm_forward(const float* __restrict__ x,
                                            const float* __restrict__ weight,
                                            float* __restrict__ y, float* __restrict__ rstd,
                                            int dim, float eps) {
    norm_forward<false>(x, weight, nullptr, y, nullptr, rstd, dim, eps);
}

// gridDim.x = rows. Pass 1 reduces sum g_hat and sum g_hat x_hat, pass 2 writes gx.
template <bool CENTRED>
__device__ void norm_backward(const float* __restrict__ g, const float* __restrict__ x,
                              const float* __restrict__ weight, const float* __restrict__ mean,
                              const float* __restrict__ rstd, float* __restrict__ gx, int dim) {
    __shared__ float scratch[32];
    long long row = blockIdx.x, offset = row * dim;
    float mu = 0.0f, r = rstd[row];
    if constexpr (CENTRED) mu = mean[row];
    float sum_g = 0.0f, sum_gx = 0.0f;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) {
        float g_hat = g[offset + j] * weight[j], x_hat = (x[offset + j] - mu) * r;
        sum_g += g_hat;
        sum_gx += g_hat * x_hat;
    }
    float mean_g = 0.0f;
    if constexpr (CENTRED) mean_g = block_sum(sum_g, scratch) / dim;
    float mean_gx = block_sum(sum_gx, scratch) / dim;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) {
        float g_hat = g[offset + j] * weight[j], x_hat = (x[offset + j] - mu) * r;
        gx[offset + j] = r * (g_hat - mean_g - x_hat * mean_gx);
    }
}

extern "C" __global__ void layer_norm_backward(const float* __restrict__ g,
                                               const float* __restrict__ x,
                                               const float* __restrict__ weight,
                                               const float* __restrict__ mean,
                                               const float* __restrict__ rstd,
                                               float* __restrict__ gx, int dim) {
    norm_backward<true>(g, x, weight, mean, rstd, gx, dim);
}

extern "C" __global__ void rms_norm_backward(const float* __restrict__ g,
                                             const float* __restrict__ x,
                                             const float* __restrict__ weight,
                                             const float* __restrict__ rstd,
                                             float* __restrict__ gx, int dim) {
    norm_backward<false>(g, x, weight, nullptr, rstd, gx, dim);
}

// grid (ceil(D / blockDim.x), slices): thread = one column of one slice of rows. Writes
// gw_partial[slice, col] = sum over the slice of g x_hat (and gb_partial = sum of g).
template <bool CENTRED>
__device__ void norm_param_grads(const float* __restrict__ g, const float* __restrict__ x,
                                 const float* __restrict__ mean, const float* __restrict__ rstd,
                                 float* __restrict__ gw_partial, float* __restrict__ gb_partial,
                                 int rows, int dim, int slice_rows) {
    int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= dim) return;  // no __syncthreads here: idle columns may leave
    int first = blockIdx.y * slice_rows, last = min(rows, first + slice_rows);
    float sum_gw = 0.0f, sum_gb = 0.0f;
    for (int r = first; r < last; ++r) {
        long long at = static_cast<long long>(r) * dim + col;
        float mu = 0.0f;
        if constexpr (CENTRED) mu = mean[r];
        sum_gw += g[at] * (x[at] - mu) * rstd[r];
        sum_gb += g[at];
    }
    long long out = static_cast<long long>(blockIdx.y) * dim + col;
    gw_partial[out] = sum_gw;
    if constexpr (CENTRED) gb_partial[out] = sum_gb;
}

extern "C" __global__ void layer_norm_param_grads(const float* __restrict__ g,
                                                  const float* __restrict__ x,
                                                  const float* __restrict__ mean,
                                                  const float* __restrict__ rstd,
                                                  float* __restrict__ gw_partial,
                                                  float* __restrict__ gb_partial, int rows,
                                                  int dim, int slice_rows) {
    norm_param_grads<true>(g, x, mean, rstd, gw_partial, gb_partial, rows, dim, slice_rows);
}

extern "C" __global__ void rms_norm_weight_grad(const float* __restrict__ g,
                                                const float* __restrict__ x,
                                                const float* __restrict__ rstd,
                                                float* __restrict__ gw_partial, int rows, int dim,
                                                int slice_rows) {
    norm_param_grads<false>(g, x, nullptr, rstd, gw_partial, nullptr, rows, dim, slice_rows);
}
