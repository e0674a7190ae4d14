// ---- quantized weights -----------------------------------------------------------------------
//
// Rows are groups of 32 values, each with an f32 scale (and, 4-bit, an f32 offset): value = d * q + m.
// 4-bit: 16 bytes per group, byte b holding q[b] (low nibble) and q[b + 16] (high nibble), q in
// 0..15 (Q4_0, Q4_1, Q4_K repacked); 8-bit: 32 signed bytes per group (Q8_0).
// Half a group of 4-bit weights (8 bytes: byte b of the half holds element h*8 + b in its low
// nibble and 16 + h*8 + b in its high one) against x: xl holds elements h*8 .. h*8+7, xh
// elements 16 + h*8 .. 16 + h*8 + 7.
__device__ __forceinline__ float dot_q4h(uint2 q, float4 xl0, float4 xl1, float4 xh0, float4 xh1) {
    const u32 a = q.x, b = q.y;
    float s = (float)(a & 15u) * xl0.x + (float)((a >> 8) & 15u) * xl0.y +
              (float)((a >> 16) & 15u) * xl0.z + (float)((a >> 24) & 15u) * xl0.w;
    s += (float)(b & 15u) * xl1.x + (float)((b >> 8) & 15u) * xl1.y +
         (float)((b >> 16) & 15u) * xl1.z + (float)((b >> 24) & 15u) * xl1.w;
    s += (float)((a >> 4) & 15u) * xh0.x + (float)((a >> 12) & 15u) * xh0.y +
         (float)((a >> 20) & 15u) * xh0.z + (float)((a >> 28) & 15u) * xh0.w;
    s += (float)((b >> 4) & 15u) * xh1.x + (float)((b >> 12) & 15u) * xh1.y +
         (float)((b >> 20) & 15u) * xh1.z + (float)((b >> 28) & 15u) * xh1.w;
    return s;
}

// Half a group of 8-bit weights (16 signed bytes) against its 16 values of x.
__device__ __forceinline__ float dot_q8h(uint4 q, const float4 *xg) {
    const u32 w[4] = {q.x, q.y, q.z, q.w};
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float4 x = xg[i];
        int v = (int)w[i];
        s += (float)((v << 24) >> 24) * x.x + (float)((v << 16) >> 24) * x.y +
             (float)((v << 8) >> 24) * x.z + (float)(v >> 24) * x.w;
    }
    return s;
}

// As k_mv1 for quantized rows: each lane takes half groups (16 weights: 8 bytes of a 4-bit
// group, 16 of an 8-bit one) of every row of its warp's outputs at once, so that their loads
// are in flight together, and the weights (quants, scales, offsets) are sent towards L2 before
// the kernel waits for the one before it. Shared memory: cols floats of x, then cols / 32
// group sums of x (for the 4-bit offsets).
extern "C" __global__ void __launch_bounds__(256)
k_mv1q(const unsigned char *Q, const float *S, const float *M, int bits, const float *bias, int outs,
       int cols, const float *x, const float *nw, float eps, float *out, Epi mode, int ks) {
    extern __shared__ float4 xs4[];
    __shared__ float red[32];
    __shared__ float part[8][MV1_OUT][2];
    float *xs = (float *)xs4;
    const int ng = cols >> 5, nh = 2 * ng;
    float *gs = xs + cols;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int grp = warp / ks, kw = warp % ks, groups = 8 / ks;
    const int o0 = (blockIdx.x * groups + grp) * MV1_OUT;
    const size_t gbytes = bits == 4 ? 16 : 32;
    bool live[MV1_OUT][2];
    size_t row[MV1_OUT][2];
#pragma unroll
    for (int k = 0; k < MV1_OUT; k++)
#pragma unroll
        for (int a = 0; a < 2; a++) {
            live[k][a] = o0 + k < outs && (a == 0 || mode == EPI_SWIGLU);
            row[k][a] = live[k][a] ? (size_t)(o0 + k + a * outs) : 0;
            if (live[k][a]) {
                prefetch_l2(Q + row[k][a] * ng * gbytes, ng * gbytes, lane + 32 * kw, 32 * ks);
                if (kw == 0 && lane == 0) {
                    prefetch_l2(S + row[k][a] * ng, ng * 4, 0, 1);
                    if (bits == 4) prefetch_l2(M + row[k][a] * ng, ng * 4, 0, 1);
                }
            }
        }
    // Only the weights were touched so far: the kernel before may still be running.
    pdl_enter();
    stage_x(x, cols, nw, eps, xs, red);
    if (bits == 4) {
        for (int g = threadIdx.x; g < ng; g += blockDim.x) {
            float t = 0.0f;
#pragma unroll 8
            for (int i = 0; i < 32; i++) t += xs[g * 32 + i];
            gs[g] = t;
        }
        __syncthreads();
    }
    float acc[MV1_OUT][2];
#pragma unroll
    for (int k = 0; k < MV1_OUT; k++)
#pragma unroll
        for (int a = 0; a < 2; a++) acc[k][a] = 0.0f;
    if (bits == 4) {
#pragma unroll 2
        for (int j = lane + 32 * kw; j < nh; j += 32 * ks) {
            const int g = j >> 1, h = j & 1;
            uint2 q[MV1_OUT][2];
            float d[MV1_OUT][2], m[MV1_OUT][2];
#pragma unroll
            for (int k = 0; k < MV1_OUT; k++)
#pragma unroll
                for (int a = 0; a < 2; a++)
                    if (live[k][a]) {
                        size_t gi = row[k][a] * ng + g;
                        q[k][a] = __ldg((const uint2 *)(Q + gi * 16) + h);
                        d[k][a] = __ldg(S + gi);
                        m[k][a] = h == 0 ? __ldg(M + gi) : 0.0f;
                    }
            const float4 *xg = xs4 + g * 8;
            float4 xl0 = xg[2 * h], xl1 = xg[2 * h + 1], xh0 = xg[4 + 2 * h], xh1 = xg[5 + 2 * h];
            float gsum = h == 0 ? gs[g] : 0.0f;
#pragma unroll
            for (int k = 0; k < MV1_OUT; k++)
#pragma unroll
                for (int a = 0; a < 2; a++)
                    if (live[k][a])
                        acc[k][a] += d[k][a] * dot_q4h(q[k][a], xl0, xl1, xh0, xh1) +
                                     m[k][a] * gsum;
        }
    } else {
#pragma unroll 2
        for (int j = lane + 32 * kw; j < nh; j += 32 * ks) {
            const int g = j >> 1, h = j & 1;
            uint4 q[MV1_OUT][2];
            float d[MV1_OUT][2];
#pragma unroll
            for (int k = 0; k < MV1_OUT; k++)
#pragma unroll
                for (int a = 0; a < 2; a++)
                    if (live[k][a]) {
                        size_t gi = row[k][a] * ng + g;
                        q[k][a] = __ldg((const uint4 *)(Q + gi * 32) + h);
                        d[k][a] = __ldg(S + gi);
                    }
            const float4 *xg = xs4 + g * 8 + 4 * h;
#pragma unroll
            for (int k = 0; k < MV1_OUT; k++)
#pragma unroll
                for (int a = 0; a < 2; a++)
                    if (live[k][a]) acc[k][a] += d[k][a] * dot_q8h(q[k][a], xg);
        }
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
