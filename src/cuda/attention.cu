// Attention kernels for f16 / bf16 inputs with f32 accumulation (see docs/attention.md).
//
// 1. `attn_fwd_{f16,bf16}_d{64,128}`: fused FlashAttention-2-style forward. One block of
//    4 warps owns 64 query rows of one (batch, head); each warp owns 16 rows and keeps its
//    Q fragments, its output accumulator and the running max / sum of its rows in registers.
//    K and V tiles of 64 keys stream through shared memory with cp.async (V(t) loads while
//    S = Q K(t)ᵀ is computed, K(t+1) while P V(t) is), so the score matrix never exists in
//    memory. Tensor cores via `mma.sync.m16n8k16` (sm_80+); the S accumulator layout of the
//    MMA is exactly the A-operand layout of the next MMA, so P never leaves registers.
//    Causal masking is index arithmetic: query i sees keys j <= i + lk - lq.
// 2. `attn_softmax_{f16,bf16}`: the safe path's scale + causal mask + softmax over rows of a
//    score block computed by cuBLAS (one block per row, f32 inside).
// 3. `attn_fill_nan_u16`: poisons an output buffer so a check can catch unwritten elements.
//
// Layouts: q (bh, lq, D), k and v (bh, lk, D), o (bh, lq, D), all contiguous; k and v
// 16-byte aligned (the launcher checks). Fragment layouts below follow the PTX ISA,
// "Matrix Fragments for mma.m16n8k16" and "ldmatrix": g = lane / 4, t = lane % 4.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

namespace {

constexpr int WARPS = 4;
constexpr int THREADS = WARPS * 32;
constexpr int BLOCK_Q = 16 * WARPS;  // query rows per block
constexpr int BLOCK_K = 64;          // keys per shared-memory tile
constexpr int PAD = 8;               // halves per smem row: rows shift by 4 banks, ldmatrix is conflict-free

template <typename T>
struct Half;

template <>
struct Half<__half> {
    // D += A B with A 16x16 (row), B 16x8 (col), f32 accumulators.
    static __device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
    // Two floats to one register, `lo` in the low half (the lower column index).
    static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
        __half2 h = __floats2half2_rn(lo, hi);
        return *reinterpret_cast<uint32_t*>(&h);
    }
    static __device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
    static __device__ __forceinline__ __half from_float(float x) { return __float2half_rn(x); }
};

template <>
struct Half<__nv_bfloat16> {
    static __device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
    static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
        __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
        return *reinterpret_cast<uint32_t*>(&h);
    }
    static __device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
    static __device__ __forceinline__ __nv_bfloat16 from_float(float x) { return __float2bfloat16_rn(x); }
};

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Four 8x8 b16 matrices; lane l gives the address of row l % 8 of matrix l / 8 and
// receives, in register i, row g / cols 2t, 2t+1 of matrix i.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p))
                 : "memory");
}

// Same, transposed: register i holds rows 2t, 2t+1 / col g of matrix i.
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p))
                 : "memory");
}

// 16 bytes global -> shared, bypassing L1; `valid == false` writes zeros and reads nothing.
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool valid) {
    int src_bytes = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)), "l"(gmem),
                 "r"(src_bytes)
                 : "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

// Rows k0 .. k0 + BLOCK_K of a (lk, D) matrix into shared memory; rows past lk become zeros
// (so 0-probability × stale data can never make a NaN).
template <typename T, int D>
__device__ __forceinline__ void load_tile(T (*tile)[D + PAD], const T* __restrict__ src, int k0, int lk) {
    constexpr int CHUNKS = D / 8;  // 16-byte chunks per row
    static_assert(BLOCK_K * CHUNKS % THREADS == 0, "every thread copies the same number of chunks");
#pragma unroll
    for (int i = 0; i < BLOCK_K * CHUNKS / THREADS; ++i) {
        const int c = i * THREADS + threadIdx.x;
        const int r = c / CHUNKS;
        const int col = (c % CHUNKS) * 8;
        const int key = k0 + r;
        const bool valid = key < lk;
        cp_async_16(&tile[r][col], src + (size_t)(valid ? key : 0) * D + col, valid);
    }
}

template <typename T, int D>
__device__ __forceinline__ void flash_forward(const T* __restrict__ q, const T* __restrict__ k,
                                              const T* __restrict__ v, T* __restrict__ o, int lq, int lk,
                                              float scale_log2, int causal) {
    using H = Half<T>;
    __shared__ __align__(16) T k_tile[BLOCK_K][D + PAD];
    __shared__ __align__(16) T v_tile[BLOCK_K][D + PAD];

    const size_t bh = blockIdx.y;
    q += bh * lq * D;
    k += bh * lk * D;
    v += bh * lk * D;
    o += bh * lq * D;
    const int q0 = blockIdx.x * BLOCK_Q;
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const int g = lane / 4;
    const int t = lane % 4;
    const int row0 = q0 + warp * 16 + g;  // this thread's two query rows
    const int row1 = row0 + 8;

    // Q as A fragments, straight from global memory (read once per block); rows past lq are 0.
    uint32_t qf[D / 16][4];
#pragma unroll
    for (int s = 0; s < D / 16; ++s) {
        const int c = s * 16 + 2 * t;
        auto ld = [&](int row, int col) -> uint32_t {
            return row < lq ? *reinterpret_cast<const uint32_t*>(q + (size_t)row * D + col) : 0u;
        };
        qf[s][0] = ld(row0, c);
        qf[s][1] = ld(row1, c);
        qf[s][2] = ld(row0, c + 8);
        qf[s][3] = ld(row1, c + 8);
    }

    float acc[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
    float row_max[2] = {-INFINITY, -INFINITY};  // in log2 units, scale included
    float row_sum[2] = {0.f, 0.f};              // this thread's partial sums (quad-reduced at the end)

    // Causal: the last key any row of this block sees is q0 + BLOCK_Q - 1 + lk - lq.
    const int key_end = causal ? min(lk, q0 + BLOCK_Q + lk - lq) : lk;
    const int tiles = key_end > 0 ? (key_end + BLOCK_K - 1) / BLOCK_K : 0;

    if (tiles > 0) load_tile<T, D>(k_tile, k, 0, lk);
    cp_async_commit();
    for (int tile = 0; tile < tiles; ++tile) {
        const int k0 = tile * BLOCK_K;
        cp_async_wait<0>();  // K(tile) has landed, and every warp is done with V(tile - 1)
        __syncthreads();
        load_tile<T, D>(v_tile, v, k0, lk);
        cp_async_commit();

        // S = Q K^T for this warp's 16 rows x BLOCK_K keys.
        float s[BLOCK_K / 8][4];
#pragma unroll
        for (int n = 0; n < BLOCK_K / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
        for (int ks = 0; ks < D / 16; ++ks) {
#pragma unroll
            for (int np = 0; np < BLOCK_K / 16; ++np) {
                // Matrices: keys +0..7 / +8..15 (lane / 16) x dims +0..7 / +8..15 ((lane / 8) % 2):
                // registers 0, 1 are B for keys np*16 + 0..7, registers 2, 3 for keys + 8..15.
                uint32_t b[4];
                ldmatrix_x4(b, &k_tile[np * 16 + (lane % 8) + 8 * (lane / 16)][ks * 16 + 8 * ((lane / 8) % 2)]);
                H::mma(s[2 * np], qf[ks], b[0], b[1]);
                H::mma(s[2 * np + 1], qf[ks], b[2], b[3]);
            }
        }

        // Scale to log2 units, mask keys past lk and, if causal, keys after the query's last.
#pragma unroll
        for (int n = 0; n < BLOCK_K / 8; ++n) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int row = e < 2 ? row0 : row1;
                const int col = k0 + n * 8 + 2 * t + (e & 1);
                const bool masked = col >= lk || (causal && col > row + lk - lq);
                s[n][e] = masked ? -INFINITY : s[n][e] * scale_log2;
            }
        }

        // Online softmax: new running max, rescale what was accumulated, P = exp2(S - max).
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            float m = row_max[h];
#pragma unroll
            for (int n = 0; n < BLOCK_K / 8; ++n) m = fmaxf(m, fmaxf(s[n][2 * h], s[n][2 * h + 1]));
            m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));  // the 4 lanes of a quad share a row
            m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
            const float base = m == -INFINITY ? 0.f : m;  // a row with nothing visible yet stays 0
            const float alpha = fast_exp2(row_max[h] - base);
            row_max[h] = m;
            float sum = 0.f;
#pragma unroll
            for (int n = 0; n < BLOCK_K / 8; ++n) {
                s[n][2 * h] = fast_exp2(s[n][2 * h] - base);
                s[n][2 * h + 1] = fast_exp2(s[n][2 * h + 1] - base);
                sum += s[n][2 * h] + s[n][2 * h + 1];
            }
            row_sum[h] = row_sum[h] * alpha + sum;
#pragma unroll
            for (int n = 0; n < D / 8; ++n) {
                acc[n][2 * h] *= alpha;
                acc[n][2 * h + 1] *= alpha;
            }
        }

        __syncthreads();  // every warp is done reading K(tile)
        if (tile + 1 < tiles) load_tile<T, D>(k_tile, k, k0 + BLOCK_K, lk);
        cp_async_commit();  // possibly empty, so that wait_group 1 below always means V(tile)
        cp_async_wait<1>();
        __syncthreads();

        // O += P V: the S accumulators of key tiles 2kk, 2kk+1 are the A fragment of P.
#pragma unroll
        for (int kk = 0; kk < BLOCK_K / 16; ++kk) {
            const uint32_t a[4] = {H::pack(s[2 * kk][0], s[2 * kk][1]), H::pack(s[2 * kk][2], s[2 * kk][3]),
                                   H::pack(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                   H::pack(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int dp = 0; dp < D / 16; ++dp) {
                // Transposed matrices: keys +0..7 / +8..15 ((lane / 8) % 2) x dims +0..7 / +8..15
                // (lane / 16): registers 0, 1 are B for dims dp*16 + 0..7, registers 2, 3 for + 8..15.
                uint32_t b[4];
                ldmatrix_x4_trans(b, &v_tile[kk * 16 + (lane % 8) + 8 * ((lane / 8) % 2)][dp * 16 + 8 * (lane / 16)]);
                H::mma(acc[2 * dp], a, b[0], b[1]);
                H::mma(acc[2 * dp + 1], a, b[2], b[3]);
            }
        }
    }
    cp_async_wait<0>();

    // Normalise and store; a row that saw no key (causal, lq > lk) is written as zeros.
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        row_sum[h] += __shfl_xor_sync(0xffffffffu, row_sum[h], 1);
        row_sum[h] += __shfl_xor_sync(0xffffffffu, row_sum[h], 2);
        row_sum[h] = row_sum[h] > 0.f ? 1.f / row_sum[h] : 0.f;
    }
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
        const int col = n * 8 + 2 * t;
        if (row0 < lq)
            *reinterpret_cast<uint32_t*>(o + (size_t)row0 * D + col) =
                H::pack(acc[n][0] * row_sum[0], acc[n][1] * row_sum[0]);
        if (row1 < lq)
            *reinterpret_cast<uint32_t*>(o + (size_t)row1 * D + col) =
                H::pack(acc[n][2] * row_sum[1], acc[n][3] * row_sum[1]);
    }
}

// Block-wide reduction of one float (max or sum) over blockDim.x <= 1024 threads.
template <bool MAX>
__device__ __forceinline__ float block_reduce(float x, float* scratch) {
#pragma unroll
    for (int off = 16; off > 0; off /= 2) {
        const float y = __shfl_xor_sync(0xffffffffu, x, off);
        x = MAX ? fmaxf(x, y) : x + y;
    }
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = (blockDim.x + 31) / 32;
    __syncthreads();  // scratch may still be read by a previous reduction
    if (lane == 0) scratch[warp] = x;
    __syncthreads();
    x = lane < warps ? scratch[lane] : (MAX ? -INFINITY : 0.f);
#pragma unroll
    for (int off = 16; off > 0; off /= 2) {
        const float y = __shfl_xor_sync(0xffffffffu, x, off);
        x = MAX ? fmaxf(x, y) : x + y;
    }
    return x;
}

// One block per score row. Rows are (bh, len) with query index row0 + (row % len) within
// the full attention of lq queries; keys past that query's last visible key get p = 0.
template <typename T>
__device__ __forceinline__ void softmax_rows(const T* __restrict__ s, T* __restrict__ p, int len, int lk, int row0,
                                             int lq, float scale_log2, int causal) {
    using H = Half<T>;
    __shared__ float scratch[32];
    const size_t row = blockIdx.x;
    s += row * lk;
    p += row * lk;
    const int query = row0 + (int)(row % len);
    const int visible = causal ? max(0, min(lk, query + lk - lq + 1)) : lk;
    float m = -INFINITY;
    for (int j = threadIdx.x; j < visible; j += blockDim.x) m = fmaxf(m, H::to_float(s[j]) * scale_log2);
    m = block_reduce<true>(m, scratch);
    // A row whose visible scores are all -inf (or that sees no key) would give exp2(-inf + inf)
    // = NaN: with base 0 every p is 0 and the row is zeros, as in the fused kernel.
    const float base = m == -INFINITY ? 0.f : m;
    float sum = 0.f;
    for (int j = threadIdx.x; j < visible; j += blockDim.x) sum += fast_exp2(H::to_float(s[j]) * scale_log2 - base);
    sum = block_reduce<false>(sum, scratch);
    const float inv = sum > 0.f ? 1.f / sum : 0.f;
    for (int j = threadIdx.x; j < lk; j += blockDim.x)
        p[j] = H::from_float(j < visible ? fast_exp2(H::to_float(s[j]) * scale_log2 - base) * inv : 0.f);
}

}  // namespace

#define LUMEN_FLASH(NAME, T, D)                                                                               \
    extern "C" __global__ void __launch_bounds__(THREADS)                                                   \
        NAME(const T* q, const T* k, const T* v, T* o, int lq, int lk, float scale_log2, int causal) {       \
        flash_forward<T, D>(q, k, v, o, lq, lk, scale_log2, causal);                                         \
    }

LUMEN_FLASH(attn_fwd_f16_d64, __half, 64)
LUMEN_FLASH(attn_fwd_f16_d128, __half, 128)
LUMEN_FLASH(attn_fwd_bf16_d64, __nv_bfloat16, 64)
LUMEN_FLASH(attn_fwd_bf16_d128, __nv_bfloat16, 128)

extern "C" __global__ void attn_softmax_f16(const __half* s, __half* p, int len, int lk, int row0, int lq,
                                            float scale_log2, int causal) {
    softmax_rows<__half>(s, p, len, lk, row0, lq, scale_log2, causal);
}

extern "C" __global__ void attn_softmax_bf16(const __nv_bfloat16* s, __nv_bfloat16* p, int len, int lk, int row0,
                                             int lq, float scale_log2, int causal) {
    softmax_rows<__nv_bfloat16>(s, p, len, lk, row0, lq, scale_log2, causal);
}

// 0xFFFF is a NaN in both f16 and bf16.
extern "C" __global__ void attn_fill_nan_u16(uint16_t* p, unsigned long long n) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x)
        p[i] = 0xFFFFu;
}
