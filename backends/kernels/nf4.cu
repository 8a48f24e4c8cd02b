// NF4 (or any 16-value code): dequantize 4-bit weights, and y = x · Wᵀ read straight from them.
//
// Layout (minift/quant/blockwise.py): W (out, in) is flattened row-major; weight f has its
// 4-bit index in byte f/2 (the HIGH nibble when f is even) and the scale of block f/blocksize:
//
//     W[f] = code[q[f]] * absmax[f / blocksize]
//
// Blocks run over the FLAT array, so one may cross a row boundary (in % blocksize != 0); every
// kernel finds a scale by flat index. blocksize is a multiple of 32 (minift: 32..4096).
//
// 1. nf4_dequantize, nf4_dequantize_double_quant: for each group of 4 weights (one thread):
//        two bytes in -> one float4 out          (weights past the last whole group: one by one)
//    With double quantization (QLoRA Eq. 6) the thread rebuilds its block's scale:
//        absmax[b] = dynamic_map[absmax_q[b]] * absmax_scale[b / dq_blocksize] + absmax_mean
// 2. nf4_dequantize_absmax: that formula for every block, one thread each. The matmuls take
//    float absmax and double-quantized weights go through this tiny kernel first: one scale
//    format keeps the matmuls to two kernels; the price is 4 bytes read per block instead of 1
//    (36 bytes per 64 weights instead of 33 at blocksize 64) plus this kernel's own traffic.
// 3. nf4_gemv_rows{1,2,4,8,16}, N <= 16 rows of x, in % 32 == 0 (one kernel per bound on N,
//    so that each gets the registers its accumulators need): for each output o (one warp):
//        for each chunk c of W's row o (lane c % 32):   16 bytes = 32 weights, ONE 128-bit load
//            for r < N:  part[r] = sum_j code[q_j] x[r, 32c + j]    (4 weights per float4 of x)
//            acc[r] += absmax[chunk's block] * part[r]              (a chunk lies in one block)
//        y[r, o] = warp_sum(acc[r])
//    x is staged in shared memory when all N rows fit (X_STAGE_FLOATS), else read from global.
//    Rows of W are whole chunks only when in % 32 == 0; nf4.py sends other shapes to nf4_gemm.
// 4. nf4_gemm, any N: for each GEMM_BM x GEMM_BN tile of y (a block of 16 x 16 threads, each
//    GEMM_TM x GEMM_TN outputs):  for each k step of GEMM_BK:
//        x tile -> shared; W tile dequantized -> shared; acc += x tile · W tileᵀ from registers
//
// Optimisations and what each is meant to buy:
// * the 16 code values in shared memory: 16 floats in 16 banks, so a warp's data-dependent
//   lookups never conflict (equal indices broadcast);
// * dequantize: one float4 store a thread, so a warp writes 512 contiguous bytes (the output
//   is 8x the input, stores are the traffic);
// * GEMV: each 4-bit weight is read once, 16 bytes a lane, 512 contiguous bytes a warp; the
//   block scale multiplies a chunk's partial sum once instead of each weight; x staged with 4
//   floats of padding after every 32, so the lanes' float4 reads (one group of 32 apart) fall
//   in different banks; per-row sums are reduced by shuffles, no shared memory;
// * GEMM: every W element is dequantized once per tile and used by GEMM_BM rows of x; 4 x 4
//   register blocking (8 shared loads per 16 FMAs); tiles stored k-major with one float of
//   padding, so the transposing stores hit 32 banks; global loads coalesced along k.
#include "common.cuh"

constexpr int CODE_SIZE = 16;        // values of a 4-bit code
constexpr int DEQUANT_WEIGHTS = 4;   // weights per dequantize thread: two bytes, one float4
constexpr int DEQUANT_THREADS = 256;

constexpr int CHUNK_WEIGHTS = 32;    // weights in one 16-byte GEMV load, all of one block
constexpr int GEMV_WARPS = 8;        // outputs per GEMV block, one per warp
constexpr int GEMV_THREADS = GEMV_WARPS * 32;
constexpr int X_STAGE_FLOATS = 10240;  // 40 KB of x rows in shared memory, padding included
constexpr int STAGED_GROUP_FLOAT4S = 9;  // 32 x values + 4 floats of padding
constexpr int GLOBAL_GROUP_FLOAT4S = 8;  // 32 x values as they lie in memory

constexpr int GEMM_BM = 64, GEMM_BN = 64, GEMM_BK = 32;  // y tile (rows x outputs), k step
constexpr int GEMM_TM = 4, GEMM_TN = 4;                  // y values per thread
constexpr int GEMM_SIDE = 16;  // threads along each side of the tile: GEMM_BM / GEMM_TM
constexpr int GEMM_THREADS = GEMM_SIDE * GEMM_SIDE;
static_assert(GEMM_BM == GEMM_SIDE * GEMM_TM && GEMM_BN == GEMM_SIDE * GEMM_TN, "tile shape");

// 16 packed bytes read with one 128-bit load (the address must be a multiple of 16)
struct alignas(16) PackedChunk {
    unsigned word[4];  // little-endian: byte b of the chunk is bits 8 (b % 4) .. of word[b / 4]
};

// absmax of block b, stored as float32
struct PlainScales {
    const float* absmax;
    __device__ float operator()(long long b) const { return absmax[b]; }
};

// absmax of block b under double quantization: an 8-bit index into the dynamic map, times the
// scale of its group of dq_blocksize blocks, plus the mean subtracted before quantizing
struct DoubleQuantScales {
    const unsigned char* absmax_q;
    const float* dynamic_map;   // 256 values
    const float* absmax_scale;  // one per dq_blocksize blocks
    const float* absmax_mean;   // one value, read on the device (no copy to the host)
    int dq_blocksize;
    __device__ float operator()(long long b) const {
        return dynamic_map[absmax_q[b]] * absmax_scale[b / dq_blocksize] + absmax_mean[0];
    }
};

// Every block begins by copying the code into shared memory.
__device__ __forceinline__ void load_table(float* table, const float* code) {
    if (threadIdx.x < CODE_SIZE) table[threadIdx.x] = code[threadIdx.x];
    __syncthreads();
}

// Four weights from the two bytes in the low 16 bits of `two` (the first byte lowest, as memory
// is little-endian); in each byte the first weight is the high nibble.
__device__ __forceinline__ float4 decode4(unsigned two, const float* table) {
    return make_float4(table[(two >> 4) & 15], table[two & 15], table[(two >> 12) & 15],
                       table[(two >> 8) & 15]);
}

// The 4-bit index of weight f on its own (tails, GEMM tiles).
__device__ __forceinline__ unsigned nibble(const unsigned char* packed, long long f) {
    unsigned byte = packed[f >> 1];
    return (f & 1) ? (byte & 15) : (byte >> 4);
}

// ---- 1. dequantize ------------------------------------------------------------------------
template <class Scales>
__device__ void dequantize_group(const unsigned char* __restrict__ packed, Scales scales,
                                 const float* table, float* __restrict__ out, long long n,
                                 int blocksize) {
    long long first = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * DEQUANT_WEIGHTS;
    if (first >= n) return;  // no barrier follows
    float absmax = scales(first / blocksize);  // blocksize % 4 == 0: the group is in one block
    if (first + DEQUANT_WEIGHTS <= n) {
        unsigned two = packed[first / 2] | (unsigned)packed[first / 2 + 1] << 8;
        float4 w = decode4(two, table);
        reinterpret_cast<float4*>(out)[first / DEQUANT_WEIGHTS] =
            make_float4(w.x * absmax, w.y * absmax, w.z * absmax, w.w * absmax);
    } else {
        for (long long f = first; f < n; ++f) out[f] = table[nibble(packed, f)] * absmax;
    }
}

extern "C" __global__ __launch_bounds__(DEQUANT_THREADS) void
nf4_dequantize(const unsigned char* __restrict__ packed, const float* __restrict__ absmax,
               const float* __restrict__ code, float* __restrict__ out, long long n,
               int blocksize) {
    __shared__ float table[CODE_SIZE];
    load_table(table, code);
    dequantize_group(packed, PlainScales{absmax}, table, out, n, blocksize);
}

extern "C" __global__ __launch_bounds__(DEQUANT_THREADS) void
nf4_dequantize_double_quant(const unsigned char* __restrict__ packed,
                            const unsigned char* __restrict__ absmax_q,
                            const float* __restrict__ dynamic_map,
                            const float* __restrict__ absmax_scale,
                            const float* __restrict__ absmax_mean, const float* __restrict__ code,
                            float* __restrict__ out, long long n, int blocksize,
                            int dq_blocksize) {
    __shared__ float table[CODE_SIZE];
    load_table(table, code);
    DoubleQuantScales scales{absmax_q, dynamic_map, absmax_scale, absmax_mean, dq_blocksize};
    dequantize_group(packed, scales, table, out, n, blocksize);
}

// ---- 2. the scales alone, for the matmuls ---------------------------------------------------
extern "C" __global__ void nf4_dequantize_absmax(const unsigned char* __restrict__ absmax_q,
                                                 const float* __restrict__ dynamic_map,
                                                 const float* __restrict__ absmax_scale,
                                                 const float* __restrict__ absmax_mean,
                                                 float* __restrict__ absmax, long long n_blocks,
                                                 int dq_blocksize) {
    long long b = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    DoubleQuantScales scales{absmax_q, dynamic_map, absmax_scale, absmax_mean, dq_blocksize};
    if (b < n_blocks) absmax[b] = scales(b);
}

// ---- 3. GEMV ------------------------------------------------------------------------------
// Where the warps read x: groups of 32 values (one chunk's worth), either staged in shared
// memory STAGED_GROUP_FLOAT4S apart or in global memory as they lie. `base` is a generic
// pointer to either space.
struct XGroups {
    const float4* base;
    int row_stride;    // float4s from x row r to row r + 1
    int group_stride;  // float4s from one group of 32 values to the next
    __device__ const float4* group(int r, int g) const {
        return base + r * row_stride + g * group_stride;
    }
};

// The 4-bit W as the GEMV reads it: `groups` chunks per row, their scales, the code table.
struct ChunkedWeights {
    const PackedChunk* chunks;
    const float* absmax;
    const float* table;  // in shared memory
    int groups;
    int blocksize;
};

// One warp: y[r, o] for r < rows. ROWS >= rows is the accumulator count, fixed at compile
// time so that the accumulators stay in registers.
template <int ROWS>
__device__ void gemv_output(ChunkedWeights w, XGroups x, float* __restrict__ y, int rows, int out,
                            int o) {
    int lane = threadIdx.x % 32;
    long long first_chunk = (long long)o * w.groups;  // in % 32 == 0: rows are whole chunks
    float acc[ROWS] = {};
    for (int g = lane; g < w.groups; g += 32) {  // the warp reads 32 consecutive chunks at once
        PackedChunk chunk = w.chunks[first_chunk + g];
        float part[ROWS] = {};
#pragma unroll
        for (int q = 0; q < CHUNK_WEIGHTS / 4; ++q) {  // weights 4q..4q+3 of the chunk
            float4 code4 = decode4(chunk.word[q / 2] >> (16 * (q % 2)), w.table);
#pragma unroll
            for (int r = 0; r < ROWS; ++r) {
                if (r < rows) {
                    float4 v = x.group(r, g)[q];
                    part[r] += code4.x * v.x + code4.y * v.y + code4.z * v.z + code4.w * v.w;
                }
            }
        }
        float scale = w.absmax[(first_chunk + g) * CHUNK_WEIGHTS / w.blocksize];
#pragma unroll
        for (int r = 0; r < ROWS; ++r) acc[r] = fmaf(scale, part[r], acc[r]);
    }
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        float total = warp_sum(acc[r]);
        if (lane == 0 && r < rows) y[(long long)r * out + o] = total;
    }
}

// y (rows, out) = x (rows, in) · Wᵀ for rows <= ROWS; x and packed 16-byte aligned,
// in % 32 == 0. stage_x != 0 asks for x in shared memory; it is honoured when the rows fit.
template <int ROWS>
__device__ void gemv(const float* __restrict__ x, const unsigned char* __restrict__ packed,
                     const float* __restrict__ absmax, const float* __restrict__ code,
                     float* __restrict__ y, int rows, int out, int in, int blocksize, int stage_x) {
    __shared__ float table[CODE_SIZE];
    __shared__ float4 staged[X_STAGE_FLOATS / 4];
    int groups = in / CHUNK_WEIGHTS;  // groups of 32 x values per row = chunks per row of W
    int row_float4s = groups * GLOBAL_GROUP_FLOAT4S;
    bool stage = stage_x != 0 && rows * groups * STAGED_GROUP_FLOAT4S * 4 <= X_STAGE_FLOATS;
    const float4* x4 = reinterpret_cast<const float4*>(x);
    if (stage) {  // the same for every thread of the block: all of them reach the barrier
        for (int v = threadIdx.x; v < rows * row_float4s; v += GEMV_THREADS) {
            int r = v / row_float4s, g = v % row_float4s / GLOBAL_GROUP_FLOAT4S;
            int q = v % GLOBAL_GROUP_FLOAT4S;
            staged[(r * groups + g) * STAGED_GROUP_FLOAT4S + q] = x4[v];
        }
    }
    load_table(table, code);  // its __syncthreads also publishes the staged x
    XGroups xg = stage ? XGroups{staged, groups * STAGED_GROUP_FLOAT4S, STAGED_GROUP_FLOAT4S}
                       : XGroups{x4, row_float4s, GLOBAL_GROUP_FLOAT4S};
    ChunkedWeights w{reinterpret_cast<const PackedChunk*>(packed), absmax, table, groups,
                     blocksize};
    int o = blockIdx.x * GEMV_WARPS + threadIdx.x / 32;
    if (o < out) gemv_output<ROWS>(w, xg, y, rows, out, o);  // whole warps: shuffles are safe
}

// One kernel per bound on the rows (1, 2, 4, 8, 16), so that each is compiled with the
// registers its own accumulators need: the 1-row kernel is not held to the 16-row count.
extern "C" __global__ __launch_bounds__(GEMV_THREADS) void
nf4_gemv_rows1(const float* x, const unsigned char* packed, const float* absmax,
               const float* code, float* y, int rows, int out, int in, int blocksize,
               int stage_x) {
    gemv<1>(x, packed, absmax, code, y, rows, out, in, blocksize, stage_x);
}

extern "C" __global__ __launch_bounds__(GEMV_THREADS) void
nf4_gemv_rows2(const float* x, const unsigned char* packed, const float* absmax,
               const float* code, float* y, int rows, int out, int in, int blocksize,
               int stage_x) {
    gemv<2>(x, packed, absmax, code, y, rows, out, in, blocksize, stage_x);
}

extern "C" __global__ __launch_bounds__(GEMV_THREADS) void
nf4_gemv_rows4(const float* x, const unsigned char* packed, const float* absmax,
               const float* code, float* y, int rows, int out, int in, int blocksize,
               int stage_x) {
    gemv<4>(x, packed, absmax, code, y, rows, out, in, blocksize, stage_x);
}

extern "C" __global__ __launch_bounds__(GEMV_THREADS) void
nf4_gemv_rows8(const float* x, const unsigned char* packed, const float* absmax,
               const float* code, float* y, int rows, int out, int in, int blocksize,
               int stage_x) {
    gemv<8>(x, packed, absmax, code, y, rows, out, in, blocksize, stage_x);
}

extern "C" __global__ __launch_bounds__(GEMV_THREADS) void
nf4_gemv_rows16(const float* x, const unsigned char* packed, const float* absmax,
                const float* code, float* y, int rows, int out, int in, int blocksize,
                int stage_x) {
    gemv<16>(x, packed, absmax, code, y, rows, out, in, blocksize, stage_x);
}

// ---- 4. GEMM ------------------------------------------------------------------------------
// y (rows, out) = x (rows, in) · Wᵀ for any sizes. Thread (ty, tx) of the 16 x 16 block owns
// y[m0 + ty + 16 i, n0 + tx + 16 j] for i < GEMM_TM, j < GEMM_TN: neighbouring threads own
// neighbouring outputs, so the shared reads in the product and the final stores are contiguous.
extern "C" __global__ __launch_bounds__(GEMM_THREADS) void
nf4_gemm(const float* __restrict__ x, const unsigned char* __restrict__ packed,
         const float* __restrict__ absmax, const float* __restrict__ code, float* __restrict__ y,
         int rows, int out, int in, int blocksize) {
    __shared__ float table[CODE_SIZE];
    __shared__ float xs[GEMM_BK][GEMM_BM + 1];  // x tile, k-major: xs[k][m] = x[m0 + m, k0 + k]
    __shared__ float ws[GEMM_BK][GEMM_BN + 1];  // W tile, k-major: ws[k][n] = W[n0 + n, k0 + k]
    int t = threadIdx.x, tx = t % GEMM_SIDE, ty = t / GEMM_SIDE;
    int m0 = blockIdx.y * GEMM_BM, n0 = blockIdx.x * GEMM_BN;
    load_table(table, code);
    float acc[GEMM_TM][GEMM_TN] = {};
    for (int k0 = 0; k0 < in; k0 += GEMM_BK) {
        // element e of a tile: k = e % BK, so a warp reads 32 consecutive values along k
        for (int e = t; e < GEMM_BM * GEMM_BK; e += GEMM_THREADS) {
            int m = m0 + e / GEMM_BK, k = k0 + e % GEMM_BK;
            xs[e % GEMM_BK][e / GEMM_BK] = (m < rows && k < in) ? x[(long long)m * in + k] : 0.0f;
        }
        for (int e = t; e < GEMM_BN * GEMM_BK; e += GEMM_THREADS) {
            int n = n0 + e / GEMM_BK, k = k0 + e % GEMM_BK;
            float w = 0.0f;
            if (n < out && k < in) {
                long long f = (long long)n * in + k;  // flat index: blocks may cross rows
                w = table[nibble(packed, f)] * absmax[f / blocksize];
            }
            ws[e % GEMM_BK][e / GEMM_BK] = w;
        }
        __syncthreads();
        for (int k = 0; k < GEMM_BK; ++k) {
            float a[GEMM_TM], b[GEMM_TN];
#pragma unroll
            for (int i = 0; i < GEMM_TM; ++i) a[i] = xs[k][ty + GEMM_SIDE * i];
#pragma unroll
            for (int j = 0; j < GEMM_TN; ++j) b[j] = ws[k][tx + GEMM_SIDE * j];
#pragma unroll
            for (int i = 0; i < GEMM_TM; ++i)
#pragma unroll
                for (int j = 0; j < GEMM_TN; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        __syncthreads();  // the tiles are overwritten by the next step
    }
    for (int i = 0; i < GEMM_TM; ++i) {
        for (int j = 0; j < GEMM_TN; ++j) {
            int m = m0 + ty + GEMM_SIDE * i, n = n0 + tx + GEMM_SIDE * j;
            if (m < rows && n < out) y[(long long)m * out + n] = acc[i][j];
        }
    }
}
