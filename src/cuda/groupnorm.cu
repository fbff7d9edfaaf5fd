// GroupNorm over contiguous NCHW activations, optionally followed by SiLU, in three passes
// over memory (read, read, write) instead of the ~10 of candle's op-by-op GroupNorm + SiLU.
//
// In NCHW, group g of sample n is one contiguous run of (C / groups) · H · W elements, so:
//   1. gn_partial_*: grid (chunks, n·groups); each block folds one chunk of one group into a
//      Welford (mean, M2, count) triple in f32 (robust where sum/sum-of-squares would cancel);
//   2. gn_finalize: one thread per (n, group) merges its chunks (Chan et al.) into mean and
//      1 / sqrt(var + eps), with the biased variance as torch and candle use;
//   3. gn_apply_*: y = (x − mean) · rstd · gamma[c] + beta[c] (as x · scale + shift), then SiLU
//      if asked, computed in f32 and rounded once to the element type.
// Statistics are f32 whatever the element type (torch does the same for f16/bf16).

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

struct Welford {
    float mean;
    float m2;
    float n;
};

__device__ __forceinline__ Welford merge(Welford a, Welford b) {
    float n = a.n + b.n;
    if (n == 0.0f) return a;
    float delta = b.mean - a.mean;
    float wb = b.n / n;
    Welford r;
    r.mean = a.mean + delta * wb;
    r.m2 = a.m2 + b.m2 + delta * delta * a.n * wb;
    r.n = n;
    return r;
}

__device__ __forceinline__ float load_f(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float load_f(const __half* p, int64_t i) { return __half2float(p[i]); }
__device__ __forceinline__ float load_f(const __nv_bfloat16* p, int64_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void store_f(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void store_f(__half* p, int64_t i, float v) { p[i] = __float2half(v); }
__device__ __forceinline__ void store_f(__nv_bfloat16* p, int64_t i, float v) { p[i] = __float2bfloat16(v); }

// Block size of gn_partial (the host launches exactly this many threads).
#define GN_THREADS 256

// partial: [n·groups][chunks][3] (mean, m2, count).
template <typename T>
__device__ void gn_partial(const T* x, float* partial, int64_t group_len, int chunks) {
    const int64_t group = blockIdx.y;
    const int chunk = blockIdx.x;
    const int64_t chunk_len = (group_len + chunks - 1) / chunks;
    const int64_t start = chunk * chunk_len;
    const int64_t end = min(start + chunk_len, group_len);
    const T* base = x + group * group_len;

    Welford w = {0.0f, 0.0f, 0.0f};
    for (int64_t i = start + threadIdx.x; i < end; i += blockDim.x) {
        float v = load_f(base, i);
        w.n += 1.0f;
        float d = v - w.mean;
        w.mean += d / w.n;
        w.m2 += d * (v - w.mean);
    }
    // Warp merge, then one value per warp through shared memory.
    for (int off = 16; off > 0; off >>= 1) {
        Welford o;
        o.mean = __shfl_down_sync(0xffffffffu, w.mean, off);
        o.m2 = __shfl_down_sync(0xffffffffu, w.m2, off);
        o.n = __shfl_down_sync(0xffffffffu, w.n, off);
        w = merge(w, o);
    }
    __shared__ Welford warps[GN_THREADS / 32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) warps[warp] = w;
    __syncthreads();
    if (threadIdx.x == 0) {
        Welford t = warps[0];
        for (int k = 1; k < (int)(blockDim.x / 32); ++k) t = merge(t, warps[k]);
        float* out = partial + (group * chunks + chunk) * 3;
        out[0] = t.mean;
        out[1] = t.m2;
        out[2] = t.n;
    }
}

// stats: [n·groups][2] (mean, rstd).
extern "C" __global__ void gn_finalize(const float* partial, float* stats, int64_t num_groups, int chunks,
                                       float eps) {
    const int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (g >= num_groups) return;
    const float* p = partial + g * chunks * 3;
    Welford t = {0.0f, 0.0f, 0.0f};
    for (int k = 0; k < chunks; ++k) {
        Welford o = {p[3 * k], p[3 * k + 1], p[3 * k + 2]};
        t = merge(t, o);
    }
    float var = t.n > 0.0f ? t.m2 / t.n : 0.0f;
    stats[2 * g] = t.mean;
    stats[2 * g + 1] = rsqrtf(fmaxf(var, 0.0f) + eps);
}

// x, y: [n][channels][hw]; gamma, beta: [channels]; channels = groups · channels_per_group.
// Grid (blocks along hw, n · channels): one plane per blockIdx.y, so the channel, its group
// statistics and its affine factors are worked out once per block, not per element.
template <typename T>
__device__ void gn_apply(const T* x, const T* gamma, const T* beta, const float* stats, T* y, int64_t hw,
                         int64_t channels, int64_t channels_per_group, int silu) {
    const int64_t plane = blockIdx.y;
    const int64_t c = plane % channels;
    const int64_t g = (plane / channels) * (channels / channels_per_group) + c / channels_per_group;
    const float mean = stats[2 * g], rstd = stats[2 * g + 1];
    const float scale = rstd * load_f(gamma, c);
    const float shift = load_f(beta, c) - mean * scale;
    const T* xp = x + plane * hw;
    T* yp = y + plane * hw;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < hw; i += (int64_t)gridDim.x * blockDim.x) {
        float v = load_f(xp, i) * scale + shift;
        if (silu) v = v / (1.0f + __expf(-v));
        store_f(yp, i, v);
    }
}

#define GN_KERNELS(SUFFIX, T)                                                                               \
    extern "C" __global__ void __launch_bounds__(GN_THREADS)                                                \
        gn_partial_##SUFFIX(const T* x, float* partial, int64_t group_len, int chunks) {                  \
        gn_partial<T>(x, partial, group_len, chunks);                                                       \
    }                                                                                                       \
    extern "C" __global__ void gn_apply_##SUFFIX(const T* x, const T* gamma, const T* beta,                \
                                                 const float* stats, T* y, int64_t hw, int64_t channels,    \
                                                 int64_t channels_per_group, int silu) {                    \
        gn_apply<T>(x, gamma, beta, stats, y, hw, channels, channels_per_group, silu);                      \
    }

GN_KERNELS(f32, float)
GN_KERNELS(f16, __half)
GN_KERNELS(bf16, __nv_bfloat16)
