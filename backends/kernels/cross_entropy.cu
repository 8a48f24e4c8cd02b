// Softmax cross-entropy over the last axis of logits (N, C) with int64 targets (float32),
// with PyTorch's ignore_index and label smoothing eps; the softmax is never stored.
//
// Loop nest:
//
//   for row in rows:                                  // one block per row
//       t = target[row];  skip the row if t == ignore_index (loss = lse = 0)
//       m = max_j z[row, j];  d = sum_j exp(z[row, j] - m);  s = sum_j z[row, j]
//       lse = m + log d
//       loss = (1 - eps)(lse - z[t]) + eps (lse - s / C)
//            = log d + (1 - eps)(m - z[t]) + eps (m - s / C)     // differences of nearby numbers
//   backward, for every row and j (a row-wise map, no reduction):
//       gz[row, j] = w_row (exp(z[row, j] - lse) - (1 - eps)[j == t] - eps / C)
//
// One block per row: vocabulary rows are long (GPT-2 has 50,257 classes), so all threads of a
// block stride over one row. rowwise.py launches min(256, C rounded up to 32) threads, so that
// a 5-class head runs one warp per row instead of a block of idle threads.
// Forward reads the row once: the online max and sum (Milakov & Gimelshein 2018, as in
// softmax.cu) and the plain sum for label smoothing share the pass. Only lse, one float per
// row, is kept for backward, which recomputes p = exp(z - lse) instead of reading an (N, C)
// softmax, and never reads the logits of an ignored row.
#include "common.cuh"

// gridDim.x = rows; writes loss[row] and lse[row].
extern "C" __global__ void cross_entropy_forward(const float* __restrict__ logits,
                                                 const long long* __restrict__ target,
                                                 float* __restrict__ loss, float* __restrict__ lse,
                                                 int classes, long long ignore_index,
                                                 float smoothing) {
    __shared__ float scratch[32];
    long long row = blockIdx.x;
    long long t = target[row];
    if (t == ignore_index) {  // t is the same for every thread: the whole block leaves
        if (threadIdx.x == 0) loss[row] = lse[row] = 0.0f;
        return;
    }
    const float* z = logits + row * classes;
    float m = NEG_INF, d = 0.0f, s = 0.0f;
    for (int j = threadIdx.x; j < classes; j += blockDim.x) {
        float v = z[j];
        online_add(v, m, d);
        s += v;
    }
    float row_max = block_max(m, scratch);
    d *= expf(m - row_max);  // rescaled to the row's max; 0 from a thread that saw no class
    float log_d = logf(block_sum(d, scratch));
    float mean_z = block_sum(s, scratch) / classes;
    if (threadIdx.x == 0) {
        loss[row] = log_d + (1.0f - smoothing) * (row_max - z[t]) + smoothing * (row_max - mean_z);
        lse[row] = row_max + log_d;
    }
}

// gridDim.x = rows; grad_rows[row] = dL/dloss[row]. No __syncthreads, so early exits are safe.
extern "C" __global__ void cross_entropy_backward(const float* __restrict__ logits,
                                                  const long long* __restrict__ target,
                                                  const float* __restrict__ lse,
                                                  const float* __restrict__ grad_rows,
                                                  float* __restrict__ grad_logits, int classes,
                                                  long long ignore_index, float smoothing) {
    long long row = blockIdx.x;
    long long t = target[row];
    float* gz = grad_logits + row * classes;
    if (t == ignore_index) {
        for (int j = threadIdx.x; j < classes; j += blockDim.x) gz[j] = 0.0f;
        return;
    }
    const float* z = logits + row * classes;
    float w = grad_rows[row], row_lse = lse[row], uniform = smoothing / classes;
    for (int j = threadIdx.x; j < classes; j += blockDim.x) {
        float target_mass = j == t ? 1.0f - smoothing : 0.0f;  // (1 - eps) onehot(t)
        gz[j] = w * (expf(z[j] - row_lse) - target_mass - uniform);
    }
}
