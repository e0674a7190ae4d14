// kiln's language-model kernels, compiled at run time by NVRTC for the device's architecture.
//
// Conventions: activations are f32, row-major [rows][width]; weights are f16 row-major
// [out][in]; the KV pool is f16, laid out [block][layer][k|v][offset][kv_dim]. Per-pass
// metadata (token ids, each row's position and sequence, block tables, rows wanted for logits)
// lives in one u32 buffer uploaded before the pass, so that a recorded pass (a CUDA graph) can
// be replayed with new metadata: no kernel takes a per-step value as an argument.

typedef unsigned short u16;
typedef unsigned int u32;

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

// ---- elementwise ---------------------------------------------------------------------------

extern "C" __global__ void k_embed(const u16 *table, const u32 *meta, int max_t, int dim,
                                   int vocab, float *out) {
    pdl_enter();
    Meta m = meta_at(meta, max_t);
    int t = blockIdx.x;
    u32 id = m.tokens[t];
    if (id >= (u32)vocab) id = vocab - 1;
    const u16 *row = table + (size_t)id * dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) out[(size_t)t * dim + i] = h2f(row[i]);
}

extern "C" __global__ void k_rmsnorm(const float *x, const float *w, float eps, int dim,
                                     float *out) {
    pdl_enter();
    __shared__ float red[32];
    const float *xr = x + (size_t)blockIdx.x * dim;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) ss += xr[i] * xr[i];
    ss = block_sum(ss, red);
    float s = rsqrtf(ss / dim + eps);
    float *o = out + (size_t)blockIdx.x * dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) o[i] = xr[i] * s * w[i];
}

// x (f32, optionally RMS-normalised with w) to f16, for the matrix units.
// One block per row: x[row] to f16, RMS-normalised with weights w first when w is set. Rows
// of a multiple of 4 values go 16 bytes a thread at a time, the first 4 * blockDim.x of them
// held in registers between the sum and the write.
#define TO_F16_HELD 4
extern "C" __global__ void k_to_f16(const float *x, const float *w, float eps, int dim, u16 *out) {
    pdl_enter();
    __shared__ float red[32];
    const float *xr = x + (size_t)blockIdx.x * dim;
    u16 *o = out + (size_t)blockIdx.x * dim;
    const int tid = threadIdx.x, nt = blockDim.x;
    if ((dim & 3) == 0 && (((size_t)x | (size_t)w) & 15) == 0 && ((size_t)out & 7) == 0) {
        const float4 *x4 = (const float4 *)xr;
        const float4 *w4 = (const float4 *)w;
        const int d4 = dim >> 2;
        float4 held[TO_F16_HELD];
        float ss = 0.0f;
#pragma unroll
        for (int k = 0; k < TO_F16_HELD; k++) {
            const int i = tid + k * nt;
            held[k] = i < d4 ? x4[i] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            ss += held[k].x * held[k].x + held[k].y * held[k].y + held[k].z * held[k].z +
                  held[k].w * held[k].w;
        }
        for (int i = tid + TO_F16_HELD * nt; i < d4; i += nt) {
            const float4 v = x4[i];
            ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
        }
        float s = 1.0f;
        if (w) s = rsqrtf(block_sum(ss, red) / dim + eps);
        auto put = [&](int i, float4 v) {
            if (w) {
                const float4 g = w4[i];
                v.x = v.x * s * g.x;
                v.y = v.y * s * g.y;
                v.z = v.z * s * g.z;
                v.w = v.w * s * g.w;
            }
            uint2 h;
            h.x = (u32)f2h(v.x) | ((u32)f2h(v.y) << 16);
            h.y = (u32)f2h(v.z) | ((u32)f2h(v.w) << 16);
            ((uint2 *)o)[i] = h;
        };
#pragma unroll
        for (int k = 0; k < TO_F16_HELD; k++) {
            const int i = tid + k * nt;
            if (i < d4) put(i, held[k]);
        }
        for (int i = tid + TO_F16_HELD * nt; i < d4; i += nt) put(i, x4[i]);
        return;
    }
    float s = 1.0f;
    if (w) {
        float ss = 0.0f;
        for (int i = tid; i < dim; i += nt) ss += xr[i] * xr[i];
        s = rsqrtf(block_sum(ss, red) / dim + eps);
    }
    for (int i = tid; i < dim; i += nt) o[i] = f2h(w ? xr[i] * s * w[i] : xr[i]);
}

extern "C" __global__ void k_add(float *x, const float *y, long long len) {
    pdl_enter();
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < len) x[i] += y[i];
}

// Grid (columns / blockDim.x, rows up to 65535): rows beyond gridDim.y loop.
extern "C" __global__ void k_add_bias(float *x, const float *b, int n, int width, int stride) {
    pdl_enter();
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= width) return;
    const float bc = b[c];
    for (int r = blockIdx.y; r < n; r += gridDim.y) x[(size_t)r * stride + c] += bc;
}

__device__ __forceinline__ float silu(float g) { return g / (1.0f + expf(-g)); }

extern "C" __global__ void k_swiglu(float *gate, const float *up, long long len) {
    pdl_enter();
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < len) gate[i] = silu(gate[i]) * up[i];
}

// gu: [n][2 * half] f32 (gate rows then up rows) -> out f16 [n][half].
// Grid as k_add_bias, over `half` columns.
// Grid (columns / blockDim.x, rows up to 65535), rows beyond gridDim.y looping; when half is a
// multiple of 4 (and the buffers aligned), four columns a thread and a quarter of the columns
// in the grid suffice.
extern "C" __global__ void k_swiglu_f16(const float *gu, int n, int half, u16 *out) {
    pdl_enter();
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if ((half & 3) == 0 && ((size_t)gu & 15) == 0 && ((size_t)out & 7) == 0) {
        if (4 * c >= half) return;
        for (int r = blockIdx.y; r < n; r += gridDim.y) {
            const float4 g = ((const float4 *)(gu + (size_t)r * 2 * half))[c];
            const float4 u = ((const float4 *)(gu + (size_t)r * 2 * half + half))[c];
            uint2 h;
            h.x = (u32)f2h(silu(g.x) * u.x) | ((u32)f2h(silu(g.y) * u.y) << 16);
            h.y = (u32)f2h(silu(g.z) * u.z) | ((u32)f2h(silu(g.w) * u.w) << 16);
            ((uint2 *)(out + (size_t)r * half))[c] = h;
        }
        return;
    }
    for (int cc = c; cc < half; cc += gridDim.x * blockDim.x) {
        for (int r = blockIdx.y; r < n; r += gridDim.y) {
            const float *row = gu + (size_t)r * 2 * half;
            out[(size_t)r * half + cc] = f2h(silu(row[cc]) * row[half + cc]);
        }
    }
}

extern "C" __global__ void k_gather(const float *x, const u32 *meta, int max_t, int width,
                                    float *out) {
    pdl_enter();
    Meta m = meta_at(meta, max_t);
    u32 src = m.out_rows[blockIdx.x];
    for (int i = threadIdx.x; i < width; i += blockDim.x)
        out[(size_t)blockIdx.x * width + i] = x[(size_t)src * width + i];
}

// ---- matrix-vector products for a few rows ---------------------------------------------------
//
// out[r][o] (=, += or SwiGLU) W[o] . x[r] (+ bias[o]) for r < n <= MV_ROWS. One warp per output
// (two weight rows, o and o + outs, for SwiGLU); weights read once, 16 bytes per lane per step.
// With `nw`, x[r] is RMS-normalised with weights nw first (the norm is computed per block).
#define MV_ROWS 8
#define MV_WARPS 8

extern "C" __global__ void __launch_bounds__(256)
k_mv(const u16 *W, const float *bias, int outs, int cols, const float *x, int n,
     const float *nw, float eps, float *out, int out_stride, int mode) {
    pdl_enter();
    // mode 0: store, 1: accumulate, 2: SwiGLU of rows o and o + outs.
    __shared__ float inv[MV_ROWS];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (nw) {
        for (int r = warp; r < n; r += MV_WARPS) {
            const float *xr = x + (size_t)r * cols;
            float ss = 0.0f;
            for (int i = lane; i < cols; i += 32) ss += xr[i] * xr[i];
            ss = warp_sum(ss);
            if (lane == 0) inv[r] = rsqrtf(ss / cols + eps);
        }
        __syncthreads();
    }
    int o = blockIdx.x * MV_WARPS + warp;
    if (o >= outs) return;
    int nrows_w = mode == 2 ? 2 : 1;
    float acc[2][MV_ROWS];
#pragma unroll
    for (int a = 0; a < 2; a++)
#pragma unroll
        for (int r = 0; r < MV_ROWS; r++) acc[a][r] = 0.0f;
    int nvec = (cols & 7) == 0 ? cols >> 3 : 0;
#pragma unroll
    for (int a = 0; a < 2; a++) {
        if (a >= nrows_w) break;
        const u16 *wr = W + (size_t)(o + a * outs) * cols;
        const uint4 *w4 = (const uint4 *)wr;
#pragma unroll 4
        for (int j = lane; j < nvec; j += 32) {
            uint4 q = w4[j];
            float wv[8];
            h2f2(q.x, wv[0], wv[1]);
            h2f2(q.y, wv[2], wv[3]);
            h2f2(q.z, wv[4], wv[5]);
            h2f2(q.w, wv[6], wv[7]);
            if (nw) {
                const float4 *n4 = (const float4 *)(nw + j * 8);
                float4 n0 = n4[0], n1 = n4[1];
                wv[0] *= n0.x; wv[1] *= n0.y; wv[2] *= n0.z; wv[3] *= n0.w;
                wv[4] *= n1.x; wv[5] *= n1.y; wv[6] *= n1.z; wv[7] *= n1.w;
            }
#pragma unroll
            for (int r = 0; r < MV_ROWS; r++) {
                if (r < n) {
                    const float4 *x4 = (const float4 *)(x + (size_t)r * cols + j * 8);
                    float4 x0 = x4[0], x1 = x4[1];
                    acc[a][r] += wv[0] * x0.x + wv[1] * x0.y + wv[2] * x0.z + wv[3] * x0.w +
                                 wv[4] * x1.x + wv[5] * x1.y + wv[6] * x1.z + wv[7] * x1.w;
                }
            }
        }
        for (int j = nvec * 8 + lane; j < cols; j += 32) {
            float wv = h2f(wr[j]);
            if (nw) wv *= nw[j];
#pragma unroll
            for (int r = 0; r < MV_ROWS; r++)
                if (r < n) acc[a][r] += wv * x[(size_t)r * cols + j];
        }
    }
#pragma unroll
    for (int r = 0; r < MV_ROWS; r++) {
        if (r < n) {
            float s0 = warp_sum(acc[0][r]);
            float s1 = warp_sum(acc[1][r]);
            if (lane == 0) {
                float sc = nw ? inv[r] : 1.0f;
                float v0 = s0 * sc + (bias ? bias[o] : 0.0f);
                float *dst = out + (size_t)r * out_stride + o;
                if (mode == 0) *dst = v0;
                else if (mode == 1) *dst += v0;
                else *dst = silu(v0) * (s1 * sc + (bias ? bias[o + outs] : 0.0f));
            }
        }
    }
}

// ---- rotary embedding and the KV cache -------------------------------------------------------

// The rotated value of element d (of a head of hd values, the first rd rotated) at position pos,
// with the bias hb (when given) added first.
__device__ __forceinline__ float rope_at(const float *h, int d, int rd, int interleaved,
                                         const float *inv_freq, float pos,
                                         const float *hb = nullptr) {
    if (d >= rd) return h[d] + (hb ? hb[d] : 0.0f);
    int i, a, b;
    bool first;
    if (interleaved) {
        i = d >> 1; a = d & ~1; b = a + 1; first = (d & 1) == 0;
    } else {
        int half = rd >> 1;
        first = d < half; i = first ? d : d - half; a = i; b = i + half;
    }
    float s, c;
    sincosf(pos * inv_freq[i], &s, &c);
    float x0 = h[a], x1 = h[b];
    if (hb) { x0 += hb[a]; x1 += hb[b]; }
    return first ? x0 * c - x1 * s : x0 * s + x1 * c;
}

__device__ __forceinline__ size_t kv_slot(const Meta &m, int row, int layer, int n_layers, int bs,
                                          int kvd, int which, u32 pos) {
    u32 seq = m.row_seq[row];
    u32 blk = m.blocks[m.seq_blk[seq] + pos / bs];
    return ((((size_t)blk * n_layers + layer) * 2 + which) * bs + pos % bs) * kvd;
}

// Writes each row's k (rotated when rope_k) and v into the pool at the row's position. With
// `bias` (q | k | v, the fused projection's), adds it to k and v on the way and to the row's
// q_width values of q in place, for the attention kernel that follows.
extern "C" __global__ void k_kv_write(const float *k, int k_stride, const float *v, int v_stride,
                                      const u32 *meta, int max_t, u16 *pool, int layer,
                                      int n_layers, int bs, int kvd, int hd, int rd,
                                      int interleaved, const float *inv_freq, int rope_k,
                                      float *q, int q_stride, int q_width, const float *bias) {
    pdl_enter();
    Meta m = meta_at(meta, max_t);
    int row = blockIdx.x;
    u32 pos = m.row_pos[row];
    const float *kr = k + (size_t)row * k_stride;
    const float *vr = v + (size_t)row * v_stride;
    u16 *kd = pool + kv_slot(m, row, layer, n_layers, bs, kvd, 0, pos);
    u16 *vd = pool + kv_slot(m, row, layer, n_layers, bs, kvd, 1, pos);
    const float *kb = bias ? bias + q_width : nullptr;
    const float *vb = bias ? bias + q_width + kvd : nullptr;
    for (int e = threadIdx.x; e < kvd; e += blockDim.x) {
        int h = e / hd, d = e % hd;
        float kv = rope_k ? rope_at(kr + h * hd, d, rd, interleaved, inv_freq, (float)pos,
                                    kb ? kb + h * hd : nullptr)
                          : kr[e] + (kb ? kb[e] : 0.0f);
        kd[e] = f2h(kv);
        vd[e] = f2h(vr[e] + (vb ? vb[e] : 0.0f));
    }
    if (bias) {
        float *qr = q + (size_t)row * q_stride;
        for (int e = threadIdx.x; e < q_width; e += blockDim.x) qr[e] += bias[e];
    }
}

// In-place rotary embedding of `heads` heads per row (the separate-op path).
extern "C" __global__ void k_rope(float *x, int stride, int heads, const u32 *meta, int max_t,
                                  int hd, int rd, int interleaved, const float *inv_freq) {
    pdl_enter();
    Meta m = meta_at(meta, max_t);
    int row = blockIdx.x;
    float pos = (float)m.row_pos[row];
    int half = rd >> 1;
    for (int e = threadIdx.x; e < heads * half; e += blockDim.x) {
        int h = e / half, i = e % half;
        float *hp = x + (size_t)row * stride + h * hd;
        int a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + half;
        float s, c;
        sincosf(pos * inv_freq[i], &s, &c);
        float x0 = hp[a], x1 = hp[b];
        hp[a] = x0 * c - x1 * s;
        hp[b] = x0 * s + x1 * c;
    }
}

// ---- attention over the paged cache ----------------------------------------------------------
//
// Each attention kernel writes its output as f32 to `out`, or, when `out_h` is given, as f16 to
// `out_h` (same layout), the input of the output projection's matrix product.
__device__ __forceinline__ void put_out(float *out, u16 *out_h, size_t i, float v) {
    if (out_h) out_h[i] = f2h(v);
    else out[i] = v;
}

// Decode passes (one new position per row) skip k_kv_write: the decode kernels take the row's
// new k and v (`kin`, `vin`, rows of the given strides; rotated here when rope_q, with `bias`
// (q | k | v, q_width values of q) added first, as k_kv_write would) for KV head kvh, as f16
// into kcur / vcur, which they read in place of the cache at the row's own position, and
// the block given `store` writes them into the cache for the passes that follow.
__device__ __forceinline__ void new_kv(const float *kin, int k_stride, const float *vin,
                                       int v_stride, const float *bias, int q_width, int row,
                                       int kvh, int kvd, int hd, int rd, int interleaved,
                                       const float *inv_freq, int rope, u32 pos, u16 *kcur,
                                       u16 *vcur, bool store, u16 *pool, const Meta &m,
                                       int layer, int n_layers, int bs) {
    const float *kr = kin + (size_t)row * k_stride + kvh * hd;
    const float *vr = vin + (size_t)row * v_stride + kvh * hd;
    const float *kb = bias ? bias + q_width + kvh * hd : nullptr;
    const float *vb = bias ? bias + q_width + kvd + kvh * hd : nullptr;
    size_t ks = 0, vs = 0;
    if (store) {
        ks = kv_slot(m, row, layer, n_layers, bs, kvd, 0, pos) + kvh * hd;
        vs = kv_slot(m, row, layer, n_layers, bs, kvd, 1, pos) + kvh * hd;
    }
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float kv = rope ? rope_at(kr, d, rd, interleaved, inv_freq, (float)pos, kb)
                        : kr[d] + (kb ? kb[d] : 0.0f);
        u16 kh = f2h(kv), vh = f2h(vr[d] + (vb ? vb[d] : 0.0f));
        kcur[d] = kh;
        vcur[d] = vh;
        if (store) {
            pool[ks + d] = kh;
            pool[vs + d] = vh;
        }
    }
}
//
// Grid (heads, rows, splits), ATT_T threads. Each block takes one split of the row's positions
// 0..=pos with an online softmax; with one split it writes the output, else a partial (max, sum,
// weighted values) that k_attn_combine merges.
#define ATT_T 128
#define MAX_HD 256

extern "C" __global__ void __launch_bounds__(ATT_T)
k_attn(const float *q, int q_stride, const u16 *pool, const u32 *meta, int max_t, int layer,
       int n_layers, int bs, int n_heads, int n_kv_heads, int hd, int rd, int interleaved,
       const float *inv_freq, int rope_q, float scale, int splits, float *out, int out_stride,
       float *part, u16 *out_h, const float *kin, int k_stride, const float *vin, int v_stride,
       const float *bias, int q_width, int fuse_kv) {
    pdl_enter();
    __shared__ float qs[MAX_HD];
    __shared__ float p[ATT_T];
    __shared__ const u16 *vptr[ATT_T];
    __shared__ __align__(16) u16 kcur[MAX_HD];
    __shared__ __align__(16) u16 vcur[MAX_HD];
    __shared__ float red[32];
    __shared__ float accs[ATT_T];
    Meta m = meta_at(meta, max_t);
    int h = blockIdx.x, row = blockIdx.y, sp = blockIdx.z;
    int kvh = h / (n_heads / n_kv_heads);
    int kvd = n_kv_heads * hd;
    u32 pos = m.row_pos[row];
    int len = (int)pos + 1;
    int chunk = (len + splits - 1) / splits;
    int start = sp * chunk, end = min(len, start + chunk);
    const float *qr = q + (size_t)row * q_stride + h * hd;
    const float *qb = bias ? bias + h * hd : nullptr;
    for (int d = threadIdx.x; d < hd; d += ATT_T)
        qs[d] = (rope_q ? rope_at(qr, d, rd, interleaved, inv_freq, (float)pos, qb)
                        : qr[d] + (qb ? qb[d] : 0.0f)) * scale;
    const bool fused = fuse_kv != 0;
    if (fused) {
        // The group's first head stores them, in the split that holds the position.
        bool store = h % (n_heads / n_kv_heads) == 0 && start <= (int)pos && (int)pos < end;
        new_kv(kin, k_stride, vin, v_stride, bias, q_width, row, kvh, kvd, hd, rd, interleaved,
               inv_freq, rope_q, pos, kcur, vcur, store, (u16 *)pool, m, layer, n_layers, bs);
    }
    __syncthreads();
    // Values: with hd <= 128, ng groups of hd threads take every ng-th position of a tile (their
    // sums are added at the end); with hd > 128, one group, two dims per thread.
    const int ng = hd <= ATT_T ? ATT_T / hd : 1;
    const int g = hd <= ATT_T ? threadIdx.x / hd : 0;
    const int d0 = hd <= ATT_T ? threadIdx.x % hd : threadIdx.x;
    const int d1 = d0 + ATT_T;
    const bool vlive = g < ng && d0 < hd;
    float mx = (-INFINITY), l = 0.0f;
    float acc0 = 0.0f, acc1 = 0.0f;
    u32 seq = m.row_seq[row];
    const u32 *bt = m.blocks + m.seq_blk[seq];
    for (int t0 = start; t0 < end; t0 += ATT_T) {
        int t = t0 + threadIdx.x;
        float s = (-INFINITY);
        if (t < end) {
            const u16 *kp = kcur;
            if (!fused || t != (int)pos) {
                u32 blk = bt[t / bs];
                size_t kb = ((((size_t)blk * n_layers + layer) * 2) * bs + t % bs) * kvd + kvh * hd;
                vptr[threadIdx.x] = pool + kb + (size_t)bs * kvd;
                kp = pool + kb;
            }
            float dot = 0.0f;
            if ((hd & 7) == 0) {
                const uint4 *k4 = (const uint4 *)kp;
                for (int j = 0; j < hd / 8; j++) {
                    uint4 kk = k4[j];
                    float a, b;
                    h2f2(kk.x, a, b); dot += a * qs[8 * j] + b * qs[8 * j + 1];
                    h2f2(kk.y, a, b); dot += a * qs[8 * j + 2] + b * qs[8 * j + 3];
                    h2f2(kk.z, a, b); dot += a * qs[8 * j + 4] + b * qs[8 * j + 5];
                    h2f2(kk.w, a, b); dot += a * qs[8 * j + 6] + b * qs[8 * j + 7];
                }
            } else {
                for (int j = 0; j < hd; j++) dot += h2f(kp[j]) * qs[j];
            }
            s = dot;
        }
        float tmax = block_max(s, red);
        float nmx = fmaxf(mx, tmax);
        float e = t < end ? expf(s - nmx) : 0.0f;
        float corr = mx == (-INFINITY) ? 0.0f : expf(mx - nmx);
        p[threadIdx.x] = e;
        float tsum = block_sum(e, red);  // its barriers also publish p[] and vptr[]
        l = l * corr + tsum;
        acc0 *= corr;
        acc1 *= corr;
        mx = nmx;
        int cnt = min(ATT_T, end - t0);
        // The row's own position (the last of the last split) comes from vcur, below.
        const bool own = fused && t0 + cnt - 1 == (int)pos;
        const int cv = own ? cnt - 1 : cnt;
        if (vlive) {
            int j = g;
            for (; j + 3 * ng < cv; j += 4 * ng) {
                float v0 = h2f(vptr[j][d0]);
                float v1 = h2f(vptr[j + ng][d0]);
                float v2 = h2f(vptr[j + 2 * ng][d0]);
                float v3 = h2f(vptr[j + 3 * ng][d0]);
                acc0 += p[j] * v0 + p[j + ng] * v1 + p[j + 2 * ng] * v2 + p[j + 3 * ng] * v3;
                if (d1 < hd) {
                    float w0 = h2f(vptr[j][d1]);
                    float w1 = h2f(vptr[j + ng][d1]);
                    float w2 = h2f(vptr[j + 2 * ng][d1]);
                    float w3 = h2f(vptr[j + 3 * ng][d1]);
                    acc1 += p[j] * w0 + p[j + ng] * w1 + p[j + 2 * ng] * w2 + p[j + 3 * ng] * w3;
                }
            }
            for (; j < cv; j += ng) {
                acc0 += p[j] * h2f(vptr[j][d0]);
                if (d1 < hd) acc1 += p[j] * h2f(vptr[j][d1]);
            }
            if (own && g == 0) {
                acc0 += p[cnt - 1] * h2f(vcur[d0]);
                if (d1 < hd) acc1 += p[cnt - 1] * h2f(vcur[d1]);
            }
        }
        __syncthreads();
    }
    // Add the groups' sums (hd <= 128): group 0 ends up with the totals.
    if (ng > 1) {
        accs[threadIdx.x] = vlive ? acc0 : 0.0f;
        __syncthreads();
        if (g == 0 && d0 < hd)
            for (int k = 1; k < ng; k++) acc0 += accs[k * hd + d0];
    }
    if (g != 0 || d0 >= hd) return;
    if (splits == 1) {
        float il = l > 0.0f ? 1.0f / l : 0.0f;
        size_t o = (size_t)row * out_stride + h * hd;
        put_out(out, out_h, o + d0, acc0 * il);
        if (d1 < hd) put_out(out, out_h, o + d1, acc1 * il);
    } else {
        size_t pi = ((size_t)row * n_heads + h) * splits + sp;
        float *pp = part + pi * (hd + 2);
        if (threadIdx.x == 0) { pp[0] = mx; pp[1] = l; }
        pp[2 + d0] = acc0;
        if (d1 < hd) pp[2 + d1] = acc1;
    }
}

// Decode attention, one block per (KV head, row, split) for all the query heads that share the
// KV head (grouped-query attention): keys and values are staged once in shared memory, GQ_TK
// positions at a time (the next tile's loads in flight while one is used), and read by every
// head of the group, where k_attn reads them once per query head. Same arguments, partials and
// output as k_attn; grid (n_kv_heads, rows, splits). Needs hd % 8 == 0, hd <= GQ_HD, a group of
// at most GQ_MAXG and group * hd <= GQ_T * GQ_ACC (CudaBackend's gqa_ok).
#define GQ_T 128
#define GQ_TK 32
#define GQ_HD 128
#define GQ_ACC 8
#define GQ_MAXG 16
#define GQ_V (GQ_TK * GQ_HD / 8 / GQ_T)

extern "C" __global__ void __launch_bounds__(GQ_T, 4)
k_attn_gqa(const float *q, int q_stride, const u16 *pool, const u32 *meta, int max_t, int layer,
           int n_layers, int bs, int n_heads, int n_kv_heads, int hd, int rd, int interleaved,
           const float *inv_freq, int rope_q, float scale, int splits, float *out,
           int out_stride, float *part, u16 *out_h, const float *kin, int k_stride,
           const float *vin, int v_stride, const float *bias, int q_width, int fuse_kv) {
    pdl_enter();
    // Rows of keys and values padded by 8 halves, so that the lanes of a warp reading one row
    // each (16 bytes at the same column) fall in different banks.
    __shared__ __align__(16) u16 ks[GQ_TK][GQ_HD + 8];
    __shared__ __align__(16) u16 vs[GQ_TK][GQ_HD + 8];
    __shared__ float qs[GQ_MAXG * GQ_HD];
    __shared__ float ps[GQ_MAXG][GQ_TK];
    __shared__ float corr_s[GQ_MAXG], mx_s[GQ_MAXG], l_s[GQ_MAXG];
    __shared__ __align__(16) u16 kcur[GQ_HD];
    __shared__ __align__(16) u16 vcur[GQ_HD];
    Meta m = meta_at(meta, max_t);
    const int kvh = blockIdx.x, row = blockIdx.y, sp = blockIdx.z;
    const int group = n_heads / n_kv_heads;
    const int kvd = n_kv_heads * hd;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const u32 pos = m.row_pos[row];
    const int len = (int)pos + 1;
    const int chunk = (len + splits - 1) / splits;
    const int start = sp * chunk, end = min(len, start + chunk);
    const u32 *bt = m.blocks + m.seq_blk[m.row_seq[row]];
    const int vecs = hd / 8;
    // A tile's keys and values, GQ_V 16-byte pieces of each per thread.
    uint4 kreg[GQ_V], vreg[GQ_V];
#define GQ_FETCH(T0)                                                                         \
    do {                                                                                     \
        const int n16 = min(GQ_TK, end - (T0)) * vecs;                                       \
        _Pragma("unroll") for (int i = 0; i < GQ_V; i++) {                                   \
            int e = threadIdx.x + i * GQ_T;                                                  \
            if (e < n16) {                                                                   \
                int t = (T0) + e / vecs, c = e % vecs;                                       \
                size_t kb = ((((size_t)bt[t / bs] * n_layers + layer) * 2) * bs + t % bs) *  \
                                kvd + kvh * hd;                                              \
                kreg[i] = ((const uint4 *)(pool + kb))[c];                                   \
                vreg[i] = ((const uint4 *)(pool + kb + (size_t)bs * kvd))[c];                \
            }                                                                                \
        }                                                                                    \
    } while (0)
    if (start < end) GQ_FETCH(start);
    const float *qr = q + (size_t)row * q_stride + (size_t)kvh * group * hd;
    const float *qb = bias ? bias + (size_t)kvh * group * hd : nullptr;
    for (int e = threadIdx.x; e < group * hd; e += GQ_T) {
        int g = e / hd, d = e % hd;
        qs[e] = (rope_q ? rope_at(qr + g * hd, d, rd, interleaved, inv_freq, (float)pos,
                                  qb ? qb + g * hd : nullptr)
                        : qr[e] + (qb ? qb[e] : 0.0f)) * scale;
    }
    // The row's own position: in the split that holds it, from kcur / vcur (stored here).
    const bool own = fuse_kv != 0 && start <= (int)pos && (int)pos < end;
    if (own)
        new_kv(kin, k_stride, vin, v_stride, bias, q_width, row, kvh, kvd, hd, rd, interleaved,
               inv_freq, rope_q, pos, kcur, vcur, true, (u16 *)pool, m, layer, n_layers, bs);
    // Softmax state of head g, kept by warp g % 4 (lane-uniform).
    float mx[GQ_MAXG / 4], l[GQ_MAXG / 4];
#pragma unroll
    for (int i = 0; i < GQ_MAXG / 4; i++) { mx[i] = (-INFINITY); l[i] = 0.0f; }
    // Outputs (g, d) = tid, tid + GQ_T, ... of the group's heads; og < 0 past the last.
    float acc[GQ_ACC];
    int og[GQ_ACC], od[GQ_ACC];
#pragma unroll
    for (int i = 0; i < GQ_ACC; i++) {
        int o = threadIdx.x + i * GQ_T;
        acc[i] = 0.0f;
        og[i] = o < group * hd ? o / hd : -1;
        od[i] = o % hd;
    }
    for (int t0 = start; t0 < end; t0 += GQ_TK) {
        const int cnt = min(GQ_TK, end - t0);
        __syncthreads();  // the previous tile's readers are done (and qs is written)
#pragma unroll
        for (int i = 0; i < GQ_V; i++) {
            int e = threadIdx.x + i * GQ_T;
            if (e < cnt * vecs) {
                int j = e / vecs, c = e % vecs;
                bool cur = own && t0 + j == (int)pos;
                *(uint4 *)&ks[j][8 * c] = cur ? *(const uint4 *)&kcur[8 * c] : kreg[i];
                *(uint4 *)&vs[j][8 * c] = cur ? *(const uint4 *)&vcur[8 * c] : vreg[i];
            }
        }
        __syncthreads();
        if (t0 + GQ_TK < end) GQ_FETCH(t0 + GQ_TK);
        // Scores: warp w takes heads w, w + 4, ...; lane j position t0 + j.
#pragma unroll
        for (int gi = 0; gi < GQ_MAXG / 4; gi++) {
            const int g = w + 4 * gi;
            if (g >= group) continue;
            float s = (-INFINITY);
            if (lane < cnt) {
                const float *qg = qs + g * hd;
                float d0 = 0.0f, d1 = 0.0f;
                for (int c = 0; c < vecs; c++) {
                    uint4 kk = *(const uint4 *)&ks[lane][8 * c];
                    float a, b;
                    h2f2(kk.x, a, b); d0 += a * qg[8 * c] + b * qg[8 * c + 1];
                    h2f2(kk.y, a, b); d1 += a * qg[8 * c + 2] + b * qg[8 * c + 3];
                    h2f2(kk.z, a, b); d0 += a * qg[8 * c + 4] + b * qg[8 * c + 5];
                    h2f2(kk.w, a, b); d1 += a * qg[8 * c + 6] + b * qg[8 * c + 7];
                }
                s = d0 + d1;
            }
            float nmx = fmaxf(mx[gi], warp_max(s));
            float e = lane < cnt ? expf(s - nmx) : 0.0f;
            float c = mx[gi] == (-INFINITY) ? 0.0f : expf(mx[gi] - nmx);
            l[gi] = l[gi] * c + warp_sum(e);
            mx[gi] = nmx;
            ps[g][lane] = e;
            if (lane == 0) corr_s[g] = c;
        }
        __syncthreads();
#pragma unroll
        for (int i = 0; i < GQ_ACC; i++)
            if (og[i] >= 0) acc[i] *= corr_s[og[i]];
        for (int j = 0; j < cnt; j++) {
#pragma unroll
            for (int i = 0; i < GQ_ACC; i++)
                if (og[i] >= 0) acc[i] += ps[og[i]][j] * h2f(vs[j][od[i]]);
        }
    }
#pragma unroll
    for (int gi = 0; gi < GQ_MAXG / 4; gi++) {
        const int g = w + 4 * gi;
        if (g < group && lane == 0) { mx_s[g] = mx[gi]; l_s[g] = l[gi]; }
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < GQ_ACC; i++) {
        const int g = og[i], d = od[i];
        if (g < 0) continue;
        int h = kvh * group + g;
        if (splits == 1) {
            float il = l_s[g] > 0.0f ? 1.0f / l_s[g] : 0.0f;
            put_out(out, out_h, (size_t)row * out_stride + h * hd + d, acc[i] * il);
        } else {
            size_t pi = ((size_t)row * n_heads + h) * splits + sp;
            float *pp = part + pi * (hd + 2);
            if (d == 0) { pp[0] = mx_s[g]; pp[1] = l_s[g]; }
            pp[2 + d] = acc[i];
        }
    }
}

extern "C" __global__ void k_attn_combine(const float *part, int n_heads, int hd, int splits,
                                          float *out, int out_stride, u16 *out_h) {
    pdl_enter();
    int h = blockIdx.x, row = blockIdx.y;
    const float *pp = part + ((size_t)row * n_heads + h) * splits * (hd + 2);
    float mx = (-INFINITY);
    for (int s = 0; s < splits; s++) mx = fmaxf(mx, pp[s * (hd + 2)]);
    float l = 0.0f;
    for (int s = 0; s < splits; s++) {
        float ms = pp[s * (hd + 2)];
        if (ms != (-INFINITY)) l += pp[s * (hd + 2) + 1] * expf(ms - mx);
    }
    float il = l > 0.0f ? 1.0f / l : 0.0f;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float a = 0.0f;
        for (int s = 0; s < splits; s++) {
            float ms = pp[s * (hd + 2)];
            if (ms != (-INFINITY)) a += pp[s * (hd + 2) + 2 + d] * expf(ms - mx);
        }
        put_out(out, out_h, (size_t)row * out_stride + h * hd + d, a * il);
    }
}

// ---- attention for prefill: tiles of query rows ----------------------------------------------
//
// Grid (heads, tiles), 128 threads, dynamic shared memory (see CudaBackend::tile_smem). A tile
// is up to TQ consecutive rows of one sequence at consecutive positions (`tiles` holds each
// tile's first row and row count); keys and values are staged TK positions at a time in shared
// memory and shared by the tile's rows. Thread (r, c) = (tid / 4, tid % 4) keeps row r's output
// dims [c * hd / 4, (c + 1) * hd / 4). Needs hd % 4 == 0 and hd <= 128.
#define TQ 32
#define TK 64

extern "C" __global__ void __launch_bounds__(128)
k_attn_tile(const float *q, int q_stride, const u16 *pool, const u32 *meta, int max_t, int layer,
            int n_layers, int bs, int n_heads, int n_kv_heads, int hd, int rd, int interleaved,
            const float *inv_freq, int rope_q, float scale, const u32 *tiles, float *out,
            int out_stride, u16 *out_h) {
    pdl_enter();
    extern __shared__ float4 sm4[];
    float *sm = (float *)sm4;
    const int hdp = hd + 4;
    float *Qs = sm;               // [TQ][hdp]
    float *Ks = Qs + TQ * hdp;    // [TK][hdp]
    float *Vs = Ks + TK * hdp;    // [TK][hd]
    float *Ps = Vs + TK * hd;     // [TQ][TK + 1]
    Meta m = meta_at(meta, max_t);
    int h = blockIdx.x;
    u32 row0 = tiles[2 * blockIdx.y], nrows = tiles[2 * blockIdx.y + 1];
    int kvh = h / (n_heads / n_kv_heads);
    int kvd = n_kv_heads * hd;
    int tid = threadIdx.x;
    for (int e = tid; e < TQ * hd; e += 128) {
        int r = e / hd, d = e % hd;
        float v = 0.0f;
        if ((u32)r < nrows) {
            int row = row0 + r;
            const float *qr = q + (size_t)row * q_stride + h * hd;
            v = (rope_q ? rope_at(qr, d, rd, interleaved, inv_freq, (float)m.row_pos[row]) : qr[d]) *
                scale;
        }
        Qs[r * hdp + d] = v;
    }
    const int r = tid >> 2, c = tid & 3;
    const int dq = hd >> 2, d0 = c * dq;
    float acc[32];
#pragma unroll
    for (int k = 0; k < 32; k++) acc[k] = 0.0f;
    float mx = (-INFINITY), l = 0.0f;
    const bool live = (u32)r < nrows;
    const u32 mypos = live ? m.row_pos[row0 + r] : 0u;
    const u32 lastpos = m.row_pos[row0 + nrows - 1];
    const u32 *bt = m.blocks + m.seq_blk[m.row_seq[row0]];
    for (u32 t0 = 0; t0 <= lastpos; t0 += TK) {
        __syncthreads();
        int cnt = min((int)TK, (int)(lastpos + 1 - t0));
        for (int e = tid; e < TK * hd; e += 128) {
            int j = e / hd, d = e % hd;
            float kv = 0.0f, vv = 0.0f;
            if (j < cnt) {
                u32 t = t0 + j;
                u32 blk = bt[t / bs];
                size_t base = ((((size_t)blk * n_layers + layer) * 2) * bs + t % bs) * kvd + kvh * hd + d;
                kv = h2f(pool[base]);
                vv = h2f(pool[base + (size_t)bs * kvd]);
            }
            Ks[j * hdp + d] = kv;
            Vs[j * hd + d] = vv;
        }
        __syncthreads();
        float s[16];
        float tmax = (-INFINITY);
        const float4 *q4 = (const float4 *)(Qs + r * hdp);
#pragma unroll
        for (int i = 0; i < 16; i++) {
            int j = c + 4 * i;
            const float4 *k4 = (const float4 *)(Ks + j * hdp);
            float dot = 0.0f;
            for (int d = 0; d < (hd >> 2); d++) {
                float4 a = q4[d], b = k4[d];
                dot += a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
            }
            bool ok = live && j < cnt && t0 + j <= mypos;
            s[i] = ok ? dot : (-INFINITY);
            tmax = fmaxf(tmax, s[i]);
        }
        tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, 1));
        tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, 2));
        float nmx = fmaxf(mx, tmax);
        float corr = mx == (-INFINITY) ? 0.0f : expf(mx - nmx);
        float psum = 0.0f;
#pragma unroll
        for (int i = 0; i < 16; i++) {
            float p = s[i] == (-INFINITY) ? 0.0f : expf(s[i] - nmx);
            Ps[r * (TK + 1) + c + 4 * i] = p;
            psum += p;
        }
        psum += __shfl_xor_sync(0xffffffffu, psum, 1);
        psum += __shfl_xor_sync(0xffffffffu, psum, 2);
        l = l * corr + psum;
        mx = nmx;
#pragma unroll
        for (int k = 0; k < 32; k++) acc[k] *= corr;
        __syncwarp();
        for (int j = 0; j < cnt; j++) {
            float p = Ps[r * (TK + 1) + j];
            const float *vr = Vs + j * hd + d0;
#pragma unroll
            for (int k = 0; k < 32; k++)
                if (k < dq) acc[k] += p * vr[k];
        }
    }
    if (live) {
        float il = l > 0.0f ? 1.0f / l : 0.0f;
        size_t o = (size_t)(row0 + r) * out_stride + h * hd + d0;
#pragma unroll
        for (int k = 0; k < 32; k++)
            if (k < dq) put_out(out, out_h, o + k, acc[k] * il);
    }
}

// ---- matrix-vector products with x staged in shared memory -----------------------------------
//
// As k_mv, for cols % 8 == 0 and one row: the block first writes the (normalised) row of x to
// shared memory (cols floats, dynamic), so the loop reads only the weights from global memory.
// k_mv1 (one row of x) gives each warp two outputs; more rows go to k_mvr below.
__device__ __forceinline__ float dot8(uint4 q, float4 x0, float4 x1) {
    float a, b, s;
    h2f2(q.x, a, b); s = a * x0.x + b * x0.y;
    h2f2(q.y, a, b); s += a * x0.z + b * x0.w;
    h2f2(q.z, a, b); s += a * x1.x + b * x1.y;
    h2f2(q.w, a, b); s += a * x1.z + b * x1.w;
    return s;
}

// One row of x (RMS-normalised when `nw` is given) into shared memory.
__device__ void stage_x(const float *x, int cols, const float *nw, float eps, float *xs,
                        float *red) {
    float sc = 1.0f;
    if (nw) {
        float ss = 0.0f;
        for (int i = threadIdx.x; i < cols; i += blockDim.x) ss += x[i] * x[i];
        ss = block_sum(ss, red);
        sc = rsqrtf(ss / cols + eps);
    }
    for (int i = threadIdx.x; i < cols; i += blockDim.x) xs[i] = nw ? x[i] * sc * nw[i] : x[i];
    __syncthreads();
}

__device__ __forceinline__ void mv_store(float *out, int o, int outs, const float *bias, float s0,
                                         float s1, int mode) {
    float v0 = s0 + (bias ? bias[o] : 0.0f);
    if (mode == 0) out[o] = v0;
    else if (mode == 1) out[o] += v0;
    else out[o] = silu(v0) * (s1 + (bias ? bias[o + outs] : 0.0f));
}

#define MV1_OUT 2

extern "C" __global__ void __launch_bounds__(256)
k_mv1(const u16 *W, const float *bias, int outs, int cols, const float *x, const float *nw,
      float eps, float *out, int mode, int ks) {
    // ks warps (1, 2, 4 or 8) share each pair of outputs, splitting its columns.
    extern __shared__ float4 xs4[];
    __shared__ float red[32];
    __shared__ float part[8][MV1_OUT][2];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int grp = warp / ks, kw = warp % ks, groups = 8 / ks;
    int o0 = (blockIdx.x * groups + grp) * MV1_OUT;
    int nvec = cols >> 3;
    // Start the weights on their way to L2 before waiting for x.
    for (int k = 0; k < MV1_OUT; k++)
        for (int a = 0; a < (mode == 2 ? 2 : 1); a++)
            if (o0 + k < outs)
                prefetch_l2(W + (size_t)(o0 + k + a * outs) * cols, (size_t)cols * 2,
                            lane + 32 * kw, 32 * ks);
    // Only the weights were touched so far: the kernel before may still be running.
    pdl_enter();
    stage_x(x, cols, nw, eps, (float *)xs4, red);
    // All (up to four) rows advance together: their loads are independent and share x.
    const uint4 *wr[MV1_OUT][2];
    bool live[MV1_OUT][2];
    float acc[MV1_OUT][2];
#pragma unroll
    for (int k = 0; k < MV1_OUT; k++)
#pragma unroll
        for (int a = 0; a < 2; a++) {
            live[k][a] = o0 + k < outs && (a == 0 || mode == 2);
            wr[k][a] = (const uint4 *)(W + (size_t)(live[k][a] ? o0 + k + a * outs : 0) * cols);
            acc[k][a] = 0.0f;
        }
#pragma unroll 2
    for (int j = lane + 32 * kw; j < nvec; j += 32 * ks) {
        float4 x0 = xs4[2 * j], x1 = xs4[2 * j + 1];
        uint4 q[MV1_OUT][2];
#pragma unroll
        for (int k = 0; k < MV1_OUT; k++)
#pragma unroll
            for (int a = 0; a < 2; a++)
                if (live[k][a]) q[k][a] = __ldg(wr[k][a] + j);
#pragma unroll
        for (int k = 0; k < MV1_OUT; k++)
#pragma unroll
            for (int a = 0; a < 2; a++)
                if (live[k][a]) acc[k][a] += dot8(q[k][a], x0, x1);
    }
#pragma unroll
    for (int k = 0; k < MV1_OUT; k++)
#pragma unroll
        for (int a = 0; a < 2; a++) {
            float v = warp_sum(acc[k][a]);
            if (lane == 0) part[warp][k][a] = v;
        }
    __syncthreads();
    if (kw == 0 && lane < MV1_OUT) {
        int k = lane, o = o0 + k;
        if (o < outs) {
            float s0 = 0.0f, s1 = 0.0f;
            for (int w = 0; w < ks; w++) {
                s0 += part[grp * ks + w][k][0];
                s1 += part[grp * ks + w][k][1];
            }
            mv_store(out, o, outs, bias, s0, s1, mode);
        }
    }
}

// ---- matrix-vector products for 2..8 rows, each weight read once for all rows ------------------
//
// k_mvr<N>: each warp takes MVR_OUT(N) outputs (with their up rows for SwiGLU) and all N rows of
// x, so a weight vector, converted from f16 once, serves N rows, and a piece of x read once
// serves those outputs (4 up to 4 rows, 2 beyond). Two blocks of 256 threads fit on an SM
// (__launch_bounds__(256, 2): at most 128 registers); with 4 outputs, 5 and 6 rows spilled, and
// 2 outputs were faster at 6 rows and even at 5 (docs/PERF.md, "GPU kernels, second session"). x is read through the L1 cache (no staging: any row
// length), normalised on the fly when `nw` is given. ks warps (1, 2, 4 or 8) share each group
// of outputs, splitting its columns. Needs cols % 8 == 0.
#define MVR_OUT(N) ((N) <= 4 ? 4 : 2)

template <int N, int O = MVR_OUT(N)>
__device__ __forceinline__ void mvr_body(const u16 *W, const float *bias, int outs, int cols,
                                         const float *x, const float *nw, float eps, float *out,
                                         int out_stride, int mode, int ks) {
    __shared__ float scale[8];
    __shared__ float part[MV_WARPS][O][2][N];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int grp = warp / ks, kw = warp % ks, groups = MV_WARPS / ks;
    const int o0 = (blockIdx.x * groups + grp) * O;
    const int nvec = cols >> 3, xq = cols >> 2;
    // Start this warp's weights on their way to L2, then wait for x.
    for (int k = 0; k < O; k++)
        for (int a = 0; a < (mode == 2 ? 2 : 1); a++)
            if (o0 + k < outs)
                prefetch_l2(W + (size_t)(o0 + k + a * outs) * cols, (size_t)cols * 2,
                            lane + 32 * kw, 32 * ks);
    pdl_enter();
    if (warp < N) {
        float sc = 1.0f;
        if (nw) {
            const float *xr = x + (size_t)warp * cols;
            float ss = 0.0f;
            for (int i = lane; i < cols; i += 32) ss += xr[i] * xr[i];
            ss = warp_sum(ss);
            sc = rsqrtf(ss / cols + eps);
        }
        if (lane == 0) scale[warp] = sc;
    }
    __syncthreads();
    float sc[N];
#pragma unroll
    for (int r = 0; r < N; r++) sc[r] = scale[r];
    const uint4 *wr[O][2];
    bool live[O][2];
    float acc[O][2][N];
#pragma unroll
    for (int k = 0; k < O; k++)
#pragma unroll
        for (int a = 0; a < 2; a++) {
            live[k][a] = o0 + k < outs && (a == 0 || mode == 2);
            wr[k][a] = (const uint4 *)(W + (size_t)(live[k][a] ? o0 + k + a * outs : 0) * cols);
#pragma unroll
            for (int r = 0; r < N; r++) acc[k][a][r] = 0.0f;
        }
    const float4 *x4 = (const float4 *)x;
    const float4 *n4 = (const float4 *)nw;
    for (int j = lane + 32 * kw; j < nvec; j += 32 * ks) {
        uint4 q[O][2];
#pragma unroll
        for (int k = 0; k < O; k++)
#pragma unroll
            for (int a = 0; a < 2; a++)
                if (live[k][a]) q[k][a] = __ldg(wr[k][a] + j);
        float4 m0 = make_float4(1.0f, 1.0f, 1.0f, 1.0f), m1 = m0;
        if (nw) {
            m0 = __ldg(n4 + 2 * j);
            m1 = __ldg(n4 + 2 * j + 1);
        }
        // Every row's piece of x (normalised) first, then each weight vector converted from
        // f16 once and dotted with all of them.
        float4 xa[N], xb[N];
#pragma unroll
        for (int r = 0; r < N; r++) {
            float4 x0 = __ldg(x4 + r * xq + 2 * j), x1 = __ldg(x4 + r * xq + 2 * j + 1);
            const float c = sc[r];
            xa[r] = make_float4(x0.x * m0.x * c, x0.y * m0.y * c, x0.z * m0.z * c, x0.w * m0.w * c);
            xb[r] = make_float4(x1.x * m1.x * c, x1.y * m1.y * c, x1.z * m1.z * c, x1.w * m1.w * c);
        }
#pragma unroll
        for (int k = 0; k < O; k++)
#pragma unroll
            for (int a = 0; a < 2; a++) {
                if (!live[k][a]) continue;
                float w0, w1, w2, w3, w4, w5, w6, w7;
                h2f2(q[k][a].x, w0, w1);
                h2f2(q[k][a].y, w2, w3);
                h2f2(q[k][a].z, w4, w5);
                h2f2(q[k][a].w, w6, w7);
#pragma unroll
                for (int r = 0; r < N; r++) {
                    // The order of dot8's sums, so that results do not change.
                    float t = w0 * xa[r].x + w1 * xa[r].y;
                    t += w2 * xa[r].z + w3 * xa[r].w;
                    t += w4 * xb[r].x + w5 * xb[r].y;
                    t += w6 * xb[r].z + w7 * xb[r].w;
                    acc[k][a][r] += t;
                }
            }
    }
#pragma unroll
    for (int k = 0; k < O; k++)
#pragma unroll
        for (int a = 0; a < 2; a++)
#pragma unroll
            for (int r = 0; r < N; r++) {
                float v = warp_sum(acc[k][a][r]);
                if (lane == 0) part[warp][k][a][r] = v;
            }
    __syncthreads();
    if (kw == 0 && lane < O * N) {
        const int k = lane / N, r = lane % N, o = o0 + k;
        if (o < outs) {
            float s0 = 0.0f, s1 = 0.0f;
            for (int w = 0; w < ks; w++) {
                s0 += part[grp * ks + w][k][0][r];
                s1 += part[grp * ks + w][k][1][r];
            }
            mv_store(out + (size_t)r * out_stride, o, outs, bias, s0, s1, mode);
        }
    }
}

#define MVR_KERNEL(N)                                                                          \
    extern "C" __global__ void __launch_bounds__(256, 2)                                       \
    k_mvr##N(const u16 *W, const float *bias, int outs, int cols, const float *x,             \
             const float *nw, float eps, float *out, int out_stride, int mode, int ks) {      \
        mvr_body<N>(W, bias, outs, cols, x, nw, eps, out, out_stride, mode, ks);            \
    }
MVR_KERNEL(2)
MVR_KERNEL(3)
MVR_KERNEL(4)
MVR_KERNEL(5)
MVR_KERNEL(6)
MVR_KERNEL(7)
MVR_KERNEL(8)

// ---- matrix-vector products for 2..8 rows on the tensor cores ---------------------------------
//
// k_mvt: mma.sync m16n8k16 (f16 x f16, f32 sums) with the weights as A (16 outputs x 16
// columns) and x as B (16 columns x 8 rows; rows beyond n are zero), x rounded to f16 after
// the RMSNorm. A warp takes a tile of 16 outputs (and their 16 up rows for SwiGLU) and 32
// columns a step: lane (g = lane / 4, c = lane % 4) loads 8 consecutive weights at column 8c
// of outputs g and g + 8 (a uint4 each) and 8 values of x row g at the same columns. The first
// mma of a step takes columns 8c..8c+3 of each lane, the second 8c+4..8c+7: a permutation of
// the 16 columns of each mma, the same for A and B, so the sums are the product's. ks warps of
// a block share a tile (8 / ks tiles a block) and `splits` blocks (grid.y) share its steps;
// with splits > 1 each block leaves its sums in `ws` and the last block of the tile to finish
// (a counter in `cnt`, reset by it) adds them in block order, so the result does not depend on
// timing. Needs cols % 32 == 0 and 2 <= n <= 8 (the backend sends it 3 to 8 rows).
#define MVT_WARPS 8

__device__ __forceinline__ u32 pack_h2(float lo, float hi) {
    u32 r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// sm_80 and later (the backend sends k_mvt nothing on older devices, where this traps so that
// the module still compiles for them).
__device__ __forceinline__ void mma16816(float *d, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
#if __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, "
                 "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#else
    __trap();
#endif
}

extern "C" __global__ void __launch_bounds__(256, 2)
k_mvt(const u16 *W, const float *bias, int outs, int cols, const float *x, int n, const float *nw,
      float eps, float *out, int out_stride, int mode, int ks, int splits, float *ws, u32 *cnt) {
    __shared__ float scale[8];
    __shared__ float part[MVT_WARPS][2][16][8];
    __shared__ int last;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int grp = warp / ks, kw = warp % ks, groups = MVT_WARPS / ks;
    const int o0 = (blockIdx.x * groups + grp) * 16;
    const int g = lane >> 2, c = lane & 3;
    const int na = mode == 2 ? 2 : 1;
    const int steps = cols >> 5, u0 = blockIdx.y * ks + kw, us = ks * splits;
    // This warp's weights on their way to L2 (its share of the steps), then wait for x.
    for (int a = 0; a < na; a++)
        for (int h = 0; h < 2; h++) {
            const int o = o0 + g + 8 * h;
            if (o >= outs) continue;
            const char *wr = (const char *)(W + (size_t)(o + a * outs) * cols);
            for (int st = u0; st < steps; st += us)
                if (c == 0) asm volatile("prefetch.global.L2 [%0];" ::"l"(wr + st * 64));
        }
    pdl_enter();
    if (warp < n) {
        float sc = 1.0f;
        if (nw) {
            const float *xr = x + (size_t)warp * cols;
            float ss = 0.0f;
            for (int i = lane; i < cols; i += 32) ss += xr[i] * xr[i];
            ss = warp_sum(ss);
            sc = rsqrtf(ss / cols + eps);
        }
        if (lane == 0) scale[warp] = sc;
    }
    __syncthreads();
    const bool xlive = g < n;
    const float sc = xlive ? scale[g] : 0.0f;
    const float *xr = x + (size_t)(xlive ? g : 0) * cols;
    const bool l0 = o0 + g < outs, l1 = o0 + g + 8 < outs;
    const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
    float d[2][4];
#pragma unroll
    for (int a = 0; a < 2; a++)
#pragma unroll
        for (int i = 0; i < 4; i++) d[a][i] = 0.0f;
    const uint4 *w0 = (const uint4 *)(W + (size_t)(l0 ? o0 + g : 0) * cols);
    const uint4 *w1 = (const uint4 *)(W + (size_t)(l1 ? o0 + g + 8 : 0) * cols);
    const size_t up = (size_t)outs * cols / 8;  // the up rows, in uint4s
#pragma unroll 2
    for (int st = u0; st < steps; st += us) {
        const int col = st * 32 + 8 * c;
        u32 b[4] = {0u, 0u, 0u, 0u};
        if (xlive) {
            float4 x0 = __ldg((const float4 *)(xr + col)), x1 = __ldg((const float4 *)(xr + col + 4));
            float4 m0 = make_float4(1.0f, 1.0f, 1.0f, 1.0f), m1 = m0;
            if (nw) {
                m0 = __ldg((const float4 *)(nw + col));
                m1 = __ldg((const float4 *)(nw + col + 4));
            }
            b[0] = pack_h2(x0.x * m0.x * sc, x0.y * m0.y * sc);
            b[1] = pack_h2(x0.z * m0.z * sc, x0.w * m0.w * sc);
            b[2] = pack_h2(x1.x * m1.x * sc, x1.y * m1.y * sc);
            b[3] = pack_h2(x1.z * m1.z * sc, x1.w * m1.w * sc);
        }
        const int v = col >> 3;
#pragma unroll
        for (int a = 0; a < 2; a++) {
            if (a >= na) break;
            const uint4 q0 = l0 ? __ldg(w0 + a * up + v) : zero;
            const uint4 q1 = l1 ? __ldg(w1 + a * up + v) : zero;
            mma16816(d[a], q0.x, q1.x, q0.y, q1.y, b[0], b[1]);
            mma16816(d[a], q0.z, q1.z, q0.w, q1.w, b[2], b[3]);
        }
    }
    // d[a]: outputs g (0, 1) and g + 8 (2, 3), rows 2c and 2c + 1.
#pragma unroll
    for (int a = 0; a < 2; a++) {
        part[warp][a][g][2 * c] = d[a][0];
        part[warp][a][g][2 * c + 1] = d[a][1];
        part[warp][a][g + 8][2 * c] = d[a][2];
        part[warp][a][g + 8][2 * c + 1] = d[a][3];
    }
    __syncthreads();
    const int per = 16 * n;
    if (splits == 1) {
        if (kw == 0)
            for (int i = lane; i < per; i += 32) {
                const int k = i / n, r = i % n, o = o0 + k;
                if (o >= outs) continue;
                float s0 = 0.0f, s1 = 0.0f;
                for (int w = 0; w < ks; w++) {
                    s0 += part[grp * ks + w][0][k][r];
                    s1 += part[grp * ks + w][1][k][r];
                }
                mv_store(out + (size_t)r * out_stride, o, outs, bias, s0, s1, mode);
            }
        return;
    }
    // Split along the columns (ks == 8, one tile a block): this block's sums to ws.
    float *mine = ws + ((size_t)blockIdx.x * splits + blockIdx.y) * 256;
    for (int i = threadIdx.x; i < 256; i += blockDim.x) {
        const int a = i >> 7, k = (i >> 3) & 15, r = i & 7;
        float s = 0.0f;
        for (int w = 0; w < ks; w++) s += part[w][a][k][r];
        mine[i] = s;
    }
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(&cnt[blockIdx.x], 1u) == (u32)(splits - 1);
    __syncthreads();
    if (!last) return;
    __threadfence();
    const float *all = ws + (size_t)blockIdx.x * splits * 256;
    for (int i = threadIdx.x; i < per; i += blockDim.x) {
        const int k = i / n, r = i % n, o = o0 + k;
        if (o >= outs) continue;
        float s0 = 0.0f, s1 = 0.0f;
        for (int z = 0; z < splits; z++) {
            s0 += __ldcg(all + z * 256 + k * 8 + r);
            s1 += __ldcg(all + z * 256 + 128 + k * 8 + r);
        }
        mv_store(out + (size_t)r * out_stride, o, outs, bias, s0, s1, mode);
    }
    if (threadIdx.x == 0) cnt[blockIdx.x] = 0u;
}

// Argmax in two steps: k_argmax_part takes a slice of a row per block (grid rows x parts), and
// k_argmax_final merges a row's parts (lowest index among equal values).
__device__ __forceinline__ void better(float &bv, int &bi, float v, int i) {
    if (v > bv || (v == bv && i < bi)) { bv = v; bi = i; }
}

extern "C" __global__ void k_argmax_part(const float *x, int width, int parts, float *pv, u32 *pi) {
    pdl_enter();
    __shared__ float sv[32];
    __shared__ int si[32];
    int row = blockIdx.x, part = blockIdx.y;
    int chunk = (width + parts - 1) / parts;
    int start = part * chunk, end = min(width, start + chunk);
    const float *xr = x + (size_t)row * width;
    float bv = (-INFINITY);
    int bi = 0x7fffffff;
    for (int i = start + threadIdx.x; i < end; i += blockDim.x) better(bv, bi, xr[i], i);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        better(bv, bi, __shfl_xor_sync(0xffffffffu, bv, o), __shfl_xor_sync(0xffffffffu, bi, o));
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    if (lane == 0) { sv[w] = bv; si[w] = bi; }
    __syncthreads();
    if (w == 0) {
        bv = lane < nw ? sv[lane] : (-INFINITY);
        bi = lane < nw ? si[lane] : 0x7fffffff;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1)
            better(bv, bi, __shfl_xor_sync(0xffffffffu, bv, o), __shfl_xor_sync(0xffffffffu, bi, o));
        if (lane == 0) {
            pv[row * parts + part] = bv;
            pi[row * parts + part] = (u32)bi;
        }
    }
}

extern "C" __global__ void k_argmax_final(const float *pv, const u32 *pi, int parts, u32 *out) {
    pdl_enter();
    int row = blockIdx.x, lane = threadIdx.x;
    float bv = (-INFINITY);
    int bi = 0x7fffffff;
    for (int p = lane; p < parts; p += 32) better(bv, bi, pv[row * parts + p], (int)pi[row * parts + p]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        better(bv, bi, __shfl_xor_sync(0xffffffffu, bv, o), __shfl_xor_sync(0xffffffffu, bi, o));
    if (lane == 0) out[row] = bi == 0x7fffffff ? 0u : (u32)bi;
}

// ---- quantized weights -----------------------------------------------------------------------
//
// Rows are groups of 32 values, each with an f32 scale (and, 4-bit, an f32 offset): value = d * q + m.
// 4-bit: 16 bytes per group, byte b holding q[b] (low nibble) and q[b + 16] (high nibble), q in
// 0..15 (Q4_0, Q4_1, Q4_K repacked); 8-bit: 32 signed bytes per group (Q8_0).
__device__ __forceinline__ float dot_q4(uint4 q, const float4 *xg) {
    // xg: the group's 32 values of x; low nibbles are elements 0..15, high 16..31.
    const u32 w[4] = {q.x, q.y, q.z, q.w};
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float4 lo = xg[i], hi = xg[4 + i];
        u32 v = w[i];
        s += (float)(v & 15u) * lo.x + (float)((v >> 8) & 15u) * lo.y +
             (float)((v >> 16) & 15u) * lo.z + (float)((v >> 24) & 15u) * lo.w;
        s += (float)((v >> 4) & 15u) * hi.x + (float)((v >> 12) & 15u) * hi.y +
             (float)((v >> 20) & 15u) * hi.z + (float)((v >> 28) & 15u) * hi.w;
    }
    return s;
}

__device__ __forceinline__ float dot_q8(uint4 a, uint4 b, const float4 *xg) {
    const u32 w[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; i++) {
        float4 x = xg[i];
        int v = (int)w[i];
        s += (float)((v << 24) >> 24) * x.x + (float)((v << 16) >> 24) * x.y +
             (float)((v << 8) >> 24) * x.z + (float)(v >> 24) * x.w;
    }
    return s;
}

// As k_mv1 for quantized rows. Shared memory: cols floats of x, then cols / 32 group sums.
extern "C" __global__ void __launch_bounds__(256)
k_mv1q(const unsigned char *Q, const float *S, const float *M, int bits, const float *bias, int outs,
       int cols, const float *x, const float *nw, float eps, float *out, int mode, int ks) {
    extern __shared__ float4 xs4[];
    __shared__ float red[32];
    __shared__ float part[8][2][2];
    float *xs = (float *)xs4;
    int ng = cols >> 5;
    float *gs = xs + cols;
    pdl_enter();
    stage_x(x, cols, nw, eps, xs, red);
    for (int g = threadIdx.x; g < ng; g += blockDim.x) {
        float t = 0.0f;
#pragma unroll 8
        for (int i = 0; i < 32; i++) t += xs[g * 32 + i];
        gs[g] = t;
    }
    __syncthreads();
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int grp = warp / ks, kw = warp % ks, groups = 8 / ks;
    int o0 = (blockIdx.x * groups + grp) * 2;
    size_t gbytes = bits == 4 ? 16 : 32;
#pragma unroll
    for (int k = 0; k < 2; k++) {
        int o = o0 + k;
#pragma unroll
        for (int a = 0; a < 2; a++) {
            float s = 0.0f;
            if (o < outs && (a == 0 || mode == 2)) {
                size_t row = (size_t)(o + a * outs);
                const unsigned char *qr = Q + row * ng * gbytes;
                const float *sr = S + row * ng;
                for (int g = lane + 32 * kw; g < ng; g += 32 * ks) {
                    const uint4 *q4 = (const uint4 *)(qr + g * gbytes);
                    float d = sr[g];
                    if (bits == 4) {
                        s += d * dot_q4(__ldg(q4), xs4 + g * 8) + M[row * ng + g] * gs[g];
                    } else {
                        s += d * dot_q8(__ldg(q4), __ldg(q4 + 1), xs4 + g * 8);
                    }
                }
            }
            s = warp_sum(s);
            if (lane == 0) part[warp][k][a] = s;
        }
    }
    __syncthreads();
    if (kw == 0 && lane < 2) {
        int k = lane, o = o0 + k;
        if (o < outs) {
            float s0 = 0.0f, s1 = 0.0f;
            for (int w = 0; w < ks; w++) {
                s0 += part[grp * ks + w][k][0];
                s1 += part[grp * ks + w][k][1];
            }
            mv_store(out, o, outs, bias, s0, s1, mode);
        }
    }
}

// Quantized rows to f16 (for the other product paths): one thread per group of 32.
extern "C" __global__ void k_dequant(const unsigned char *Q, const float *S, const float *M, int bits,
                                     long long groups, u16 *out) {
    pdl_enter();
    long long g = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (g >= groups) return;
    float d = S[g];
    u16 *o = out + g * 32;
    if (bits == 4) {
        float m = M[g];
        const unsigned char *q = Q + g * 16;
        for (int b = 0; b < 16; b++) {
            o[b] = f2h(d * (float)(q[b] & 15) + m);
            o[b + 16] = f2h(d * (float)(q[b] >> 4) + m);
        }
    } else {
        const signed char *q = (const signed char *)(Q + g * 32);
        for (int b = 0; b < 32; b++) o[b] = f2h(d * (float)q[b]);
    }
}

// The embedding rows of the pass's tokens from a quantized table, to f32.
extern "C" __global__ void k_embed_q(const unsigned char *Q, const float *S, const float *M, int bits,
                                     const u32 *meta, int max_t, int cols, int vocab, float *out) {
    pdl_enter();
    Meta m = meta_at(meta, max_t);
    int t = blockIdx.x;
    u32 id = m.tokens[t];
    if (id >= (u32)vocab) id = vocab - 1;
    int ng = cols >> 5;
    for (int e = threadIdx.x; e < cols; e += blockDim.x) {
        size_t g = (size_t)id * ng + (e >> 5);
        int i = e & 31;
        float v;
        if (bits == 4) {
            unsigned char b = Q[g * 16 + (i & 15)];
            v = S[g] * (float)(i < 16 ? (b & 15) : (b >> 4)) + M[g];
        } else {
            v = S[g] * (float)((const signed char *)Q)[g * 32 + i];
        }
        out[(size_t)t * cols + e] = v;
    }
}
