// CUDA on the CPU: just enough of the CUDA C++ dialect to run minift's kernels with g++.
//
// The emulator (backends/kernels/emulator.py) compiles a kernel source with this header
// forced in front of it and runs every CUDA thread of a block as one OS thread:
//
//   start blockDim.x * y * z std::threads       // each sets its threadIdx once
//   for each block (one at a time, all threads)  // blocks never share memory: order is free
//       run the kernel; meet at a barrier
//
// * __shared__ becomes `static`: one copy per kernel for the whole process, which is exactly
//   one copy per block because blocks run one after another.
// * __syncthreads() is a std::barrier over the block's threads; a thread that returns early
//   drops out of it, as exited threads do on the hardware.
// * Warp shuffles exchange values through a per-warp slot array between two warp barriers.
//
// What it cannot show: speed, races between blocks (blocks never overlap), and the effect
// of a missing __syncthreads that the CPU's ordering happens to hide. Kernels may use static
// shared memory only (no `extern __shared__`).
#pragma once

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

struct alignas(8) float2 {
    float x, y;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(4) uchar4 {
    unsigned char x, y, z, w;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __shared__ static
#define __launch_bounds__(...)
#define __ldg(p) (*(p))

inline thread_local dim3 threadIdx;
inline thread_local dim3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;
constexpr int warpSize = 32;

namespace emu {

inline std::unique_ptr<std::barrier<>> block_barrier;
inline std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
inline std::vector<uint64_t> warp_slots;  // one 8-byte slot per thread for shuffles

inline unsigned linear_thread() {
    return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}

template <typename T>
T shuffle_from(T value, int lane_of_source, bool in_range) {
    static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
    unsigned me = linear_thread();
    unsigned warp = me / warpSize;
    std::memcpy(&warp_slots[me], &value, sizeof(T));
    warp_barriers[warp]->arrive_and_wait();
    T result = value;
    in_range = in_range && warp * warpSize + lane_of_source < warp_slots.size();
    if (in_range) std::memcpy(&result, &warp_slots[warp * warpSize + lane_of_source], sizeof(T));
    warp_barriers[warp]->arrive_and_wait();
    return result;
}

inline void reset_barriers(unsigned threads) {
    block_barrier = std::make_unique<std::barrier<>>(threads);
    warp_barriers.clear();
    for (unsigned first = 0; first < threads; first += warpSize)
        warp_barriers.push_back(
            std::make_unique<std::barrier<>>(std::min<unsigned>(warpSize, threads - first)));
}

// Run `body` once per thread of every block of `grid`; used by the generated launchers.
// One OS thread per CUDA thread of a block, reused for every block: between two blocks all
// threads meet, and thread 0 makes fresh barriers (a thread that returned early dropped out
// of the old ones).
template <typename Body>
void launch(dim3 grid, dim3 block, Body body) {
    unsigned threads = block.x * block.y * block.z;
    unsigned blocks = grid.x * grid.y * grid.z;
    gridDim = grid;
    blockDim = block;
    warp_slots.assign(threads, 0);
    reset_barriers(threads);
    std::barrier<> between_blocks(threads);
    std::vector<std::thread> pool;
    pool.reserve(threads);
    for (unsigned t = 0; t < threads; ++t)
        pool.emplace_back([&, t] {
            threadIdx = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
            for (unsigned b = 0; b < blocks; ++b) {
                blockIdx = {b % grid.x, (b / grid.x) % grid.y, b / (grid.x * grid.y)};
                body();
                block_barrier->arrive_and_drop();
                warp_barriers[t / warpSize]->arrive_and_drop();
                between_blocks.arrive_and_wait();
                if (t == 0) reset_barriers(threads);
                between_blocks.arrive_and_wait();
            }
        });
    for (auto& th : pool) th.join();
}

}  // namespace emu

inline void __syncthreads() { emu::block_barrier->arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) {
    emu::warp_barriers[emu::linear_thread() / warpSize]->arrive_and_wait();
}

template <typename T>
T __shfl_xor_sync(unsigned, T value, int lane_mask, int width = warpSize) {
    int lane = emu::linear_thread() % warpSize;
    int source = lane ^ lane_mask;
    return emu::shuffle_from(value, source, source / width == lane / width);
}
template <typename T>
T __shfl_down_sync(unsigned, T value, unsigned delta, int width = warpSize) {
    int lane = emu::linear_thread() % warpSize;
    int source = lane + static_cast<int>(delta);
    return emu::shuffle_from(value, source, source / width == lane / width);
}
template <typename T>
T __shfl_sync(unsigned, T value, int source_lane, int width = warpSize) {
    int lane = emu::linear_thread() % warpSize;
    return emu::shuffle_from(value, (lane / width) * width + source_lane % width, true);
}

inline float atomicAdd(float* address, float value) {
    return std::atomic_ref<float>(*address).fetch_add(value);
}
inline int atomicAdd(int* address, int value) {
    return std::atomic_ref<int>(*address).fetch_add(value);
}

inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, 4);
    return f;
}
inline int __float_as_int(float f) {
    int i;
    std::memcpy(&i, &f, 4);
    return i;
}
template <typename T>
inline T min(T a, T b) { return b < a ? b : a; }
template <typename T>
inline T max(T a, T b) { return a < b ? b : a; }
