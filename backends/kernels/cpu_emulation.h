// CUDA on the CPU: just enough of the CUDA C++ dialect to run minift's kernels with g++.
//
// The emulator (backends/kernels/emulator.py) compiles a kernel source with this header
// forced in front of it and runs every CUDA thread of a block as a fiber (a ucontext with
// its own stack) on one OS thread:
//
//   for each block (one at a time)            // blocks never share memory: order is free
//       until every thread has returned:
//           resume each thread that is not blocked; it runs to its next barrier or its end
//
// * __shared__ becomes `static`: one copy per kernel for the whole process, which is exactly
//   one copy per block because blocks run one after another.
// * __syncthreads() blocks a thread until all threads of the block have arrived; a thread
//   that returns drops out, as exited threads do on the hardware.
// * Warp shuffles exchange values through a per-warp slot array between two warp barriers.
//
// Each thread runs alone until it waits, so the order is fixed: thread 0 finishes a phase
// before thread 1 starts it. A missing __syncthreads therefore shows every time (a thread
// reads shared memory that a later thread has not written yet) instead of now and then.
// What it cannot show: speed, races between blocks (blocks never overlap). Kernels may use
// static shared memory only (no `extern __shared__`).
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <sys/mman.h>
#include <ucontext.h>

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

inline dim3 threadIdx;  // of the thread running now: set by the scheduler before each switch
inline dim3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;
constexpr int warpSize = 32;

namespace emu {

// A barrier for fibers: the last thread to arrive releases the others (a new generation).
struct Barrier {
    unsigned expected = 0, arrived = 0, generation = 0;
};

struct Fiber {
    ucontext_t context;
    bool done = false;
    const Barrier* waiting_on = nullptr;  // blocked until that barrier's generation moves on
    unsigned waiting_generation = 0;
};

constexpr size_t STACK_BYTES = 256 * 1024;  // kernels keep only small arrays on the stack

inline ucontext_t scheduler;
inline std::vector<Fiber> fibers;
inline char* stacks = nullptr;  // fibers' stacks, mapped once and grown when a launch needs more
inline unsigned stack_count = 0;
inline unsigned current = 0;  // the fiber running now
inline Barrier block_barrier;
inline std::vector<Barrier> warp_barriers;
inline std::vector<uint64_t> warp_slots;  // one 8-byte slot per thread for shuffles
inline void (*run_body)(void*) = nullptr;
inline void* body = nullptr;

inline unsigned linear_thread() {
    return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}

inline void arrive_and_wait(Barrier& barrier) {
    if (++barrier.arrived == barrier.expected) {  // the last one in: everyone may go on
        barrier.arrived = 0;
        ++barrier.generation;
        return;
    }
    Fiber& me = fibers[current];
    me.waiting_on = &barrier;
    me.waiting_generation = barrier.generation;
    swapcontext(&me.context, &scheduler);
}

inline void arrive_and_drop(Barrier& barrier) {  // a thread that returned waits no more
    if (--barrier.expected > 0 && barrier.arrived == barrier.expected) {
        barrier.arrived = 0;
        ++barrier.generation;
    }
}

template <typename T>
T shuffle_from(T value, int lane_of_source, bool in_range) {
    static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
    unsigned me = linear_thread();
    unsigned warp = me / warpSize;
    std::memcpy(&warp_slots[me], &value, sizeof(T));
    arrive_and_wait(warp_barriers[warp]);
    T result = value;
    in_range = in_range && warp * warpSize + lane_of_source < warp_slots.size();
    if (in_range) std::memcpy(&result, &warp_slots[warp * warpSize + lane_of_source], sizeof(T));
    arrive_and_wait(warp_barriers[warp]);
    return result;
}

inline void fiber_main() {
    run_body(body);
    fibers[current].done = true;
    arrive_and_drop(block_barrier);
    arrive_and_drop(warp_barriers[current / warpSize]);
}  // returns to the scheduler through uc_link

inline void map_stacks(unsigned threads) {
    if (threads <= stack_count) return;
    if (stacks != nullptr) munmap(stacks, stack_count * STACK_BYTES);
    void* memory = mmap(nullptr, threads * STACK_BYTES, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (memory == MAP_FAILED) {
        std::fprintf(stderr, "cuda emulator: cannot map %u fiber stacks\n", threads);
        std::abort();
    }
    stacks = static_cast<char*>(memory);
    stack_count = threads;
}

// Run every thread of one block to its end. Each sweep resumes every thread that is not
// blocked; a thread runs until it waits at a barrier or returns. A sweep that resumes none
// means threads wait at a barrier that the others never reach: a deadlock on a GPU too.
inline void run_block(dim3 block, unsigned threads) {
    block_barrier = {threads, 0, 0};
    warp_barriers.clear();
    for (unsigned first = 0; first < threads; first += warpSize)
        warp_barriers.push_back({std::min<unsigned>(warpSize, threads - first), 0, 0});
    fibers.assign(threads, Fiber{});
    for (unsigned t = 0; t < threads; ++t) {
        getcontext(&fibers[t].context);
        fibers[t].context.uc_stack = {stacks + t * STACK_BYTES, 0, STACK_BYTES};
        fibers[t].context.uc_link = &scheduler;
        makecontext(&fibers[t].context, fiber_main, 0);
    }
    for (unsigned alive = threads; alive > 0;) {
        bool progressed = false;
        for (unsigned t = 0; t < threads; ++t) {
            Fiber& fiber = fibers[t];
            if (fiber.done) continue;
            if (fiber.waiting_on && fiber.waiting_on->generation == fiber.waiting_generation)
                continue;  // still blocked
            fiber.waiting_on = nullptr;
            current = t;
            threadIdx = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
            swapcontext(&scheduler, &fiber.context);
            progressed = true;
            alive -= fiber.done;
        }
        if (!progressed) {
            std::fprintf(stderr, "cuda emulator: deadlock in block (%u, %u, %u): threads wait "
                         "at a barrier that the others never reach\n",
                         blockIdx.x, blockIdx.y, blockIdx.z);
            std::abort();
        }
    }
}

// Run `body` once per thread of every block of `grid`; used by the generated launchers.
template <typename Body>
void launch(dim3 grid, dim3 block, Body kernel) {
    unsigned threads = block.x * block.y * block.z;
    gridDim = grid;
    blockDim = block;
    warp_slots.assign(threads, 0);
    map_stacks(threads);
    run_body = [](void* p) { (*static_cast<Body*>(p))(); };
    body = &kernel;
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) {
                blockIdx = {x, y, z};
                run_block(block, threads);
            }
}

}  // namespace emu

inline void __syncthreads() { emu::arrive_and_wait(emu::block_barrier); }
inline void __syncwarp(unsigned = 0xffffffffu) {
    emu::arrive_and_wait(emu::warp_barriers[emu::linear_thread() / warpSize]);
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
