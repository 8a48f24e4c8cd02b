// Reductions shared by the row-wise kernels (softmax, cross-entropy, norms) and the NF4 GEMV,
// and the online softmax normaliser of softmax.cu and cross_entropy.cu.
//
// A warp reduces its 32 values with butterfly shuffles (5 steps, no shared memory); a block
// reduces each warp first and then the (at most 32) warp results in warp 0. Every lane of
// every warp gets the result. Blocks using block_* must have a multiple of 32 threads, and
// every thread of the block must reach the call (it contains __syncthreads).
#pragma once

// -inf without <math.h> (NVRTC has no INFINITY macro)
#define NEG_INF (-__int_as_float(0x7f800000))

__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int offset = 16; offset > 0; offset >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}

// `scratch` is a __shared__ float[32] owned by the caller; it may be reused after the call.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    v = warp_sum(v);
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.0f;
    return warp_sum(v);
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : NEG_INF;
    return warp_max(v);
}

// The online softmax normaliser (Milakov & Gimelshein 2018): adds x to a running max m and
// sum d = sum exp(. - m) in one pass; -inf entries (masked keys) add nothing.
__device__ __forceinline__ void online_add(float x, float& m, float& d) {
    if (x > m) {
        d = d * expf(m - x) + 1.0f;  // the old terms, rescaled to the new max, plus exp(0)
        m = x;
    } else if (x != NEG_INF) {  // m may still be -inf here: exp(-inf - -inf) would be NaN
        d += expf(x - m);
    }
}
