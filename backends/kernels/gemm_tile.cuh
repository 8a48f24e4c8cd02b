// The tiled matrix product that sgemm.cu and lora.cu share: one block computes a tile of
//
//     C = alpha * (A1 · B1ᵀ + s · A2 · B2ᵀ) + bias        A* (M, K*), B* (N, K*), C (M, N)
//
// The K loop runs over two segments, (A1, B1) and then (A2, B2): sgemm leaves the second
// empty, the fused LoRA kernel puts the low-rank product there, so that [x | s·u]·[W | B]ᵀ
// is computed without building either concatenation. Every operand is seen as a
// (rows, K) matrix stored row-major either K-major (rows, K) or rows-major (K, rows), which
// covers the NN, NT, TN and TT layouts without a transposed copy.
//
// Loop nest (one block = a BM x BN tile of C, 256 threads, each a TM x TN register block):
//
//     for each K tile t (BK wide) of segment 1, then of segment 2:  // zero-padded at edges
//         global -> registers: the tiles of step t+1         // loads in flight ...
//         for k in BK: acc[TM][TN] += a[TM] ⊗ b[TN]          // ... during these FMAs
//         registers -> the other shared buffer; __syncthreads // one barrier per K step
//     C = alpha * acc + bias                                   // float4 stores where possible
//
// Optimisations: shared-memory tiles (each loaded value is used BM or BN times), register
// blocking (TM·TN FMAs per TM+TN shared reads), float4 global loads and stores where the
// address is 16-byte aligned and the group of 4 is inside the matrix (scalar otherwise),
// double buffering (two shared buffers, the next tile staged in registers).
#pragma once

constexpr int GEMM_THREADS = 256;  // 16 x 16 threads per block for both tile shapes

// Many tiles: 8x8 per thread reads 16 shared floats for 64 FMAs.
struct TileLarge {
    static constexpr int BM = 128, BN = 128, BK = 8, TM = 8, TN = 8;
};
// Few tiles (small M, N): 4x more blocks, so that more of the GPU's SMs get work.
struct TileSmall {
    static constexpr int BM = 64, BN = 64, BK = 16, TM = 4, TN = 4;
};

// Shared rows are padded by 4 floats, so that a warp's transposed stores of a K-major tile
// spread over the banks (none shared for TileLarge; 2-way instead of 4-way for TileSmall)
// while every row still starts 16-byte aligned for float4 reads.
constexpr int SMEM_PAD = 4;

// One segment of the K loop: a (M, k) and b (N, k) as stored, with their row strides.
struct Segment {
    const float* a;
    int lda;
    const float* b;
    int ldb;
    int k;
    float scale;  // multiplies a's values as they are staged (LoRA's s; 1 otherwise)
};

__device__ __forceinline__ bool vector_ok(const float* p, int ld) {
    return reinterpret_cast<unsigned long long>(p) % 16 == 0 && ld % 4 == 0;
}

// p[row * ld + col .. col + 3] of a row-major (rows, cols) matrix, zero outside it: one
// float4 load when all four are inside and aligned (col is always a multiple of 4).
__device__ __forceinline__ float4 load4(const float* p, int ld, int row, int col, int rows,
                                        int cols, bool vector) {
    float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (row >= rows) return v;
    const float* at = p + static_cast<long long>(row) * ld + col;
    if (vector && col + 3 < cols) return *reinterpret_cast<const float4*>(at);
    if (col < cols) v.x = at[0];
    if (col + 1 < cols) v.y = at[1];
    if (col + 2 < cols) v.z = at[2];
    if (col + 3 < cols) v.w = at[3];
    return v;
}

// The shared tile of one operand, tile[k][r] for BK x R values, filled from registers.
// K_MAJOR operands (stored (rows, K)) are read in groups of 4 along K and stored transposed;
// rows-major ones (stored (K, rows)) in groups of 4 along the rows, stored as they are.
template <int R, int BK, bool K_MAJOR>
struct OperandTile {
    static constexpr int LOADS = R * BK / 4 / GEMM_THREADS;  // float4 groups per thread
    static_assert(LOADS * 4 * GEMM_THREADS == R * BK, "a tile is a whole number of groups");

    // Where group `group` of the tile starts: r (along the rows) and k (along K).
    __device__ static void place(int group, int& r, int& k) {
        if constexpr (K_MAJOR) {
            r = group / (BK / 4);
            k = group % (BK / 4) * 4;
        } else {
            k = group / (R / 4);
            r = group % (R / 4) * 4;
        }
    }

    __device__ static void fetch(float4 (&staged)[LOADS], const float* p, int ld, int rows,
                                 int k_len, int r0, int k0, float scale) {
        const bool vector = vector_ok(p, ld);
#pragma unroll
        for (int l = 0; l < LOADS; ++l) {
            int r, k;
            place(threadIdx.x + l * GEMM_THREADS, r, k);
            float4 v = K_MAJOR ? load4(p, ld, r0 + r, k0 + k, rows, k_len, vector)
                               : load4(p, ld, k0 + k, r0 + r, k_len, rows, vector);
            staged[l] = make_float4(v.x * scale, v.y * scale, v.z * scale, v.w * scale);
        }
    }

    __device__ static void stash(const float4 (&staged)[LOADS], float (*tile)[R + SMEM_PAD]) {
#pragma unroll
        for (int l = 0; l < LOADS; ++l) {
            int r, k;
            place(threadIdx.x + l * GEMM_THREADS, r, k);
            const float4 v = staged[l];
            if constexpr (K_MAJOR) {
                tile[k][r] = v.x;
                tile[k + 1][r] = v.y;
                tile[k + 2][r] = v.z;
                tile[k + 3][r] = v.w;
            } else {
                *reinterpret_cast<float4*>(&tile[k][r]) = v;
            }
        }
    }
};

// A thread's TM rows (TN columns) are groups of 4, `threads * 4` apart: the threads of a
// quarter-warp then read consecutive float4 from shared memory (no bank conflicts).
__device__ __forceinline__ int fragment(int group, int thread, int threads) {
    return (group * threads + thread) * 4;
}

// Register arrays are not 16-byte aligned, so a float4 is copied into one field by field.
__device__ __forceinline__ void unpack4(float4 v, float* out) {
    out[0] = v.x;
    out[1] = v.y;
    out[2] = v.z;
    out[3] = v.w;
}

template <class T>
__device__ __forceinline__ void multiply_tile(float (&acc)[T::TM][T::TN],
                                              const float (*As)[T::BM + SMEM_PAD],
                                              const float (*Bs)[T::BN + SMEM_PAD], int tx, int ty) {
    constexpr int THREADS_M = T::BM / T::TM, THREADS_N = T::BN / T::TN;
#pragma unroll
    for (int k = 0; k < T::BK; ++k) {
        float a[T::TM], b[T::TN];
#pragma unroll
        for (int g = 0; g < T::TM / 4; ++g)
            unpack4(*reinterpret_cast<const float4*>(&As[k][fragment(g, ty, THREADS_M)]),
                    &a[4 * g]);
#pragma unroll
        for (int g = 0; g < T::TN / 4; ++g)
            unpack4(*reinterpret_cast<const float4*>(&Bs[k][fragment(g, tx, THREADS_N)]),
                    &b[4 * g]);
#pragma unroll
        for (int i = 0; i < T::TM; ++i)
#pragma unroll
            for (int j = 0; j < T::TN; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
}

// C[row][col..col+3] = alpha * acc + bias, the columns that are inside the matrix.
__device__ __forceinline__ void store4(float* c, int ldc, int row, int col, int cols, float4 v,
                                       float alpha, const float* bias, bool vector) {
    float value[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int j = 0; j < 4; ++j)
        value[j] = alpha * value[j] + (bias != nullptr && col + j < cols ? bias[col + j] : 0.0f);
    float* at = c + static_cast<long long>(row) * ldc + col;
    if (vector && col + 3 < cols) {
        *reinterpret_cast<float4*>(at) = make_float4(value[0], value[1], value[2], value[3]);
        return;
    }
    for (int j = 0; j < 4 && col + j < cols; ++j) at[j] = value[j];
}

// The block's tile of C: rows from blockIdx.x * BM, columns from blockIdx.y * BN (rows on x:
// M can be the number of tokens, which gridDim.x's 2^31 - 1 holds and gridDim.y's 65535 not).
template <class T, bool A_K_MAJOR, bool B_K_MAJOR>
__device__ void gemm_tile(Segment first, Segment second, int M, int N, float alpha,
                          const float* bias, float* c, int ldc) {
    using TileA = OperandTile<T::BM, T::BK, A_K_MAJOR>;
    using TileB = OperandTile<T::BN, T::BK, B_K_MAJOR>;
    constexpr int THREADS_M = T::BM / T::TM, THREADS_N = T::BN / T::TN;
    static_assert(THREADS_M * THREADS_N == GEMM_THREADS, "one register block per thread");
    alignas(16) __shared__ float As[2][T::BK][T::BM + SMEM_PAD];
    alignas(16) __shared__ float Bs[2][T::BK][T::BN + SMEM_PAD];

    const int m0 = blockIdx.x * T::BM, n0 = blockIdx.y * T::BN;
    const int tx = threadIdx.x % THREADS_N, ty = threadIdx.x / THREADS_N;
    const int tiles_first = (first.k + T::BK - 1) / T::BK;
    const int tiles = tiles_first + (second.k + T::BK - 1) / T::BK;

    float acc[T::TM][T::TN] = {};
    float4 next_a[TileA::LOADS], next_b[TileB::LOADS];
    // K tile t: of the first segment, then of the second, each starting at its own k = 0
    auto fetch = [&](int t) {
        const Segment s = t < tiles_first ? first : second;
        const int k0 = (t < tiles_first ? t : t - tiles_first) * T::BK;
        TileA::fetch(next_a, s.a, s.lda, M, s.k, m0, k0, s.scale);
        TileB::fetch(next_b, s.b, s.ldb, N, s.k, n0, k0, 1.0f);
    };

    fetch(0);
    TileA::stash(next_a, As[0]);
    TileB::stash(next_b, Bs[0]);
    __syncthreads();
    for (int t = 0; t < tiles; ++t) {
        const int buffer = t % 2;
        if (t + 1 < tiles) fetch(t + 1);  // global loads overlap the FMAs below
        multiply_tile<T>(acc, As[buffer], Bs[buffer], tx, ty);
        if (t + 1 < tiles) {
            // the other buffer was last read in step t-1, which ended with a barrier
            TileA::stash(next_a, As[buffer ^ 1]);
            TileB::stash(next_b, Bs[buffer ^ 1]);
        }
        __syncthreads();  // tile t+1 visible to all; buffer t%2 free for step t+2
    }

    const bool vector = vector_ok(c, ldc);
#pragma unroll
    for (int i = 0; i < T::TM; ++i) {
        const int row = m0 + fragment(i / 4, ty, THREADS_M) + i % 4;
        if (row >= M) continue;
#pragma unroll
        for (int g = 0; g < T::TN / 4; ++g) {
            const float4 v = make_float4(acc[i][4 * g], acc[i][4 * g + 1], acc[i][4 * g + 2],
                                         acc[i][4 * g + 3]);
            store4(c, ldc, row, n0 + fragment(g, tx, THREADS_N), N, v, alpha, bias, vector);
        }
    }
}
