// Reductions shared by the row-wise kernels (softmax, cross-entropy, norms) and the NF4 GEMV.
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
