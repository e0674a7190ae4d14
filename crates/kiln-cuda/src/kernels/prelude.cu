// kiln's language-model kernels, compiled at run time by NVRTC for the device's architecture.
//
// Conventions: activations are f32, row-major [rows][width]; weights are f16 row-major
// [out][in]; the KV pool is f16, laid out [block][layer][k|v][offset][kv_dim]. Per-pass
// metadata (token ids, each row's position and sequence, block tables, rows wanted for logits)
// lives in one u32 buffer uploaded before the pass, so that a recorded pass (a CUDA graph) can
// be replayed with new metadata: no kernel takes a per-step value as an argument.

typedef unsigned short u16;
typedef unsigned int u32;

// What the matrix-vector kernels do with W x (the Rust side's `Epilogue`): store it, add it to
// the output (the residual), or store SwiGLU of the two stacked halves of W (gate, then up).
enum Epi : int { EPI_STORE = 0, EPI_ACCUMULATE = 1, EPI_SWIGLU = 2 };

// Programmatic dependent launch (sm_90 and later). The backend launches every kernel with
// programmatic stream serialization allowed, so a kernel may start while the one before it is
// still running: each kernel must call pdl_wait() before it reads anything an earlier kernel
// writes (or writes anything an earlier kernel reads). Work that touches only the weights (an
// L2 prefetch) may come before it. pdl_launch() then lets the next kernel start its own
// prologue. On older devices both are no-ops and launches are ordered as usual.
__device__ __forceinline__ void pdl_wait() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_launch() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_enter() {
    pdl_wait();
    pdl_launch();
}

// Start `bytes` of weights at p on their way to L2, one 128-byte line per lane and step: lane
// `t` of `threads` takes lines t, t + threads, ...
__device__ __forceinline__ void prefetch_l2(const void *p, size_t bytes, int t, int threads) {
    const char *c = (const char *)p;
    for (size_t off = (size_t)t * 128; off < bytes; off += (size_t)threads * 128)
        asm volatile("prefetch.global.L2 [%0];" ::"l"(c + off));
}

__device__ __forceinline__ float h2f(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ u16 f2h(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

__device__ __forceinline__ void h2f2(u32 v, float &a, float &b) {
    a = h2f((u16)(v & 0xffffu));
    b = h2f((u16)(v >> 16));
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the sum.
__device__ float block_sum(float v, float *red) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) red[w] = v;
    __syncthreads();
    float t = lane < nw ? red[lane] : 0.0f;
    return warp_sum(t);
}

// 1 / RMS of x's cols values (eps added to the mean square), for RMSNorm; every thread of the
// block gets it.
__device__ float rms_scale(const float *x, int cols, float eps, float *red) {
    float ss = 0.0f;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) ss += x[i] * x[i];
    return rsqrtf(block_sum(ss, red) / cols + eps);
}

__device__ float block_max(float v, float *red) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) red[w] = v;
    __syncthreads();
    float t = lane < nw ? red[lane] : (-INFINITY);
    return warp_max(t);
}

// Metadata layout (offsets in u32s, given as kernel arguments once per buffer size):
//   tokens[max_t], row_pos[max_t], row_seq[max_t], out_rows[max_t], seq_blk[max_t], blocks[...]
struct Meta {
    const u32 *tokens;
    const u32 *row_pos;
    const u32 *row_seq;
    const u32 *out_rows;
    const u32 *seq_blk;
    const u32 *blocks;
};

__device__ __forceinline__ Meta meta_at(const u32 *m, int max_t) {
    Meta r;
    r.tokens = m;
    r.row_pos = m + max_t;
    r.row_seq = m + 2 * max_t;
    r.out_rows = m + 3 * max_t;
    r.seq_blk = m + 4 * max_t;
    r.blocks = m + 5 * max_t;
    return r;
}

// Group g of 16 values of x rounded as k_quant_x rounds it, by a product whose output is the
// next product's x (k_mv1q's txq). k_quant_x keeps its own loop (four values a thread): a value
// a thread through this function made its launch 2 us slower (measured on the H200). h is
// this lane's value (each half-warp holds a group, in order), w its RMSNorm weight
// (1 without a norm), applied here, but not the norm's scale; the group's sum of squares of h
// is kept, from which k_mv1q finds that scale. Rounding per group commutes with the scale:
// s * v rounds to the same integers as v, with s times the group's scale. `write`: this
// half-warp's group is real. All 32 lanes call it.
__device__ __forceinline__ void quant_group16(float h, float w, int g, int cols, u32 *xq,
                                              bool write) {
    const int lane = threadIdx.x & 31, ng = cols >> 4;
    const float v = h * w;
    float amax = fabsf(v);
#pragma unroll
    for (int o = 1; o < 16; o <<= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    const int q = __float2int_rn(v * inv);
    const u32 b = (u32)q & 255u;
    const u32 word = b | (__shfl_down_sync(0xffffffffu, b, 1) << 8) |
                     (__shfl_down_sync(0xffffffffu, b, 2) << 16) |
                     (__shfl_down_sync(0xffffffffu, b, 3) << 24);
    int qs = q;
    float ss = h * h;
#pragma unroll
    for (int o = 1; o < 16; o <<= 1) {
        qs += __shfl_xor_sync(0xffffffffu, qs, o);
        ss += __shfl_xor_sync(0xffffffffu, ss, o);
    }
    if (!write) return;
    float *gs = (float *)(xq + (cols >> 2)), *dq = gs + ng;
    const int l = lane & 15;
    if ((l & 3) == 0) xq[g * 4 + (l >> 2)] = word;
    if (l == 0) {
        const float d = amax / 127.0f;
        gs[g] = d * (float)qs;
        dq[g] = d;
        dq[ng + g] = ss;
    }
}
