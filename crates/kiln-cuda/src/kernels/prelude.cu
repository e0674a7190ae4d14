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

