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
       int cols, const float *x, const float *nw, float eps, float *out, Epi mode, int ks) {
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
            if (o < outs && (a == 0 || mode == EPI_SWIGLU)) {
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
