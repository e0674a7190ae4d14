// ---- quantized weights -----------------------------------------------------------------------
//
// Rows are groups of 32 values, each with an f32 scale (and, 4-bit, an f32 offset): value = d * q + m.
// 4-bit: 16 bytes per group, byte b holding q[b] (low nibble) and q[b + 16] (high nibble), q in
// 0..15 (Q4_0, Q4_1, Q4_K repacked); 8-bit: 32 signed bytes per group (Q8_0).
// Half a group of 4-bit weights (8 bytes: byte b of the half holds element h*8 + b in its low
// nibble and 16 + h*8 + b in its high one) against x quantized to 8 bits: xl holds elements
// h*8 .. h*8+7 (two words of four), xh elements 16 + h*8 .. 16 + h*8 + 7. The integer sums of
// the 8 products with xl and of the 8 with xh (x's groups of 16 have a scale each), four to an
// instruction.
__device__ __forceinline__ int2 dot_q4h(uint2 q, int xl0, int xl1, int xh0, int xh1) {
    const int lo = 0x0F0F0F0F;
    const int sl = __dp4a((int)q.y & lo, xl1, __dp4a((int)q.x & lo, xl0, 0));
    const int sh = __dp4a((int)(q.y >> 4) & lo, xh1, __dp4a((int)(q.x >> 4) & lo, xh0, 0));
    return make_int2(sl, sh);
}

// Half a group of 8-bit weights (16 signed bytes) against its 16 values of x, quantized.
__device__ __forceinline__ int dot_q8h(uint4 q, int4 x) {
    int s = __dp4a((int)q.x, x.x, 0);
    s = __dp4a((int)q.y, x.y, s);
    s = __dp4a((int)q.z, x.z, s);
    return __dp4a((int)q.w, x.w, s);
}

// x (one row; RMSNorm'd with nw when nw is given) as k_mv1q reads it: rounded to 8 bits per
// group of 16 (a scale each: the largest magnitude to 127; the CPU's products and llama.cpp's
// round groups of 32 alike), four values a word; then each group's sum and scale. The sum is of
// the rounded values (times the scale), as on the CPU: a 4-bit product, d * dx * (q . xq) + m *
// sum, is then exactly that of the weights with x as rounded, its error scaling with the
// weights (d * q + m; centred for Q4_0) rather than with d * q. Groups of 16 are half a weight
// group (k_mv1q takes weights by halves) and what one block of a product holds of its output,
// so that a product can round its own output for the next (see k_mv1q's txq). One block of 256
// threads a row of x, four a group: block b rounds row b (x + b * cols) into xq + b * QX_WORDS
// (cols) words (k_mvqr reads n rows so).
#define QX_WORDS(cols) (((cols) >> 2) + 2 * ((cols) >> 4))
extern "C" __global__ void __launch_bounds__(256)
k_quant_x(const float *x, int cols, const float *nw, float eps, u32 *xq) {
    __shared__ float red[32];
    x += (size_t)blockIdx.x * cols;
    xq += (size_t)blockIdx.x * QX_WORDS(cols);
    pdl_enter();
    const float sc = nw ? rms_scale(x, cols, eps, red) : 1.0f;
    const int words = cols >> 2, ng = cols >> 4;
    float *gs = (float *)(xq + words), *dq = gs + ng;
    // A warp's lanes are all in or all out of the values (groups are whole), so the shuffles
    // see whole groups of four lanes.
    for (int i = threadIdx.x; i < ((words + 31) & ~31); i += blockDim.x) {
        const bool in = i < words;
        float v[4];
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int c = 4 * i + e;
            v[e] = in ? (nw ? x[c] * sc * nw[c] : x[c]) : 0.0f;
        }
        float amax = fmaxf(fmaxf(fabsf(v[0]), fabsf(v[1])), fmaxf(fabsf(v[2]), fabsf(v[3])));
#pragma unroll
        for (int o = 1; o < 4; o <<= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
        const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        u32 w = 0;
        int sum = 0;
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int q = __float2int_rn(v[e] * inv);
            sum += q;
            w |= ((u32)q & 255u) << (8 * e);
        }
#pragma unroll
        for (int o = 1; o < 4; o <<= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
        if (in) {
            xq[i] = w;
            if ((i & 3) == 0) {
                const float d = amax / 127.0f;
                gs[i >> 2] = d * (float)sum;
                dq[i >> 2] = d;
            }
        }
    }
}

// As k_mv1 for quantized rows, with x as k_quant_x leaves it: each lane takes half groups (16
// weights: 8 bytes of a 4-bit group, 16 of an 8-bit one) of every row of its warp's outputs
// at once, so that their loads are in flight together; each lane's first two half groups of
// its rows are read into registers before the kernel waits for the one before it (and with `pf`
// all its weights, quants, scales and offsets, are sent towards L2 there too). The products
// are integer dot products of four bytes (__dp4a): one instruction for four weights, where
// converting each weight to f32 took three. Nothing is staged: x is read from L2 as bytes.
// x comes in groups of 16 values (k_quant_x), each half of a weight group with its own scale.
// xnorm: x was left by the product before (its txq) and still takes its RMSNorm scale, found
// from the groups' sums of squares with eps.
// txq (when not null): the output is the next product's x, made so here (txq, with RMSNorm
// weights tnw when given) instead of by a k_quant_x launch. A block holds 16 / ks outputs: with
// ks 1 a whole group, which its first warp rounds as it stores it; else the last of the ks
// blocks of a group to finish (counted in tcnt, which it resets) reads the group back and
// rounds it. Needs outs a multiple of 16.
// At most 64 registers a thread (four blocks of 256 an SM): with the second half group read
// early it took 77 and three blocks, and the Llama-1B shape's products (more blocks than SMs
// hold at once) ran 12% slower so on an H100 (docs/PERF.md, twenty-third session).
// NW warps a block: k_mv1q has 8 (16 / ks outputs a block); k_mv1q16 and k_mv1q32 have 16 and
// 32, for ks 2 and 4, so that a block holds a whole group of 16 outputs and rounds it for txq
// itself, where with 8 warps the last of ks blocks to finish does (a fence, a count in L2 and a
// read back).
template <int NW, int OUT, int NA>
__device__ __forceinline__ void mv1q_body(const unsigned char *Q, const float *S, const float *M,
                                          int bits, const float *bias, int outs, int cols,
                                          const u32 *xq, int xnorm, float eps, float *out,
                                          Epi mode, int ks, u32 *txq, const float *tnw,
                                          u32 *tcnt, int pf) {
    __shared__ float part[NW][OUT][NA];
    const int ng = cols >> 5, nh = 2 * ng;
    const float *gs = (const float *)(xq + (cols >> 2)), *dq = gs + nh;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int grp = warp / ks, kw = warp % ks, groups = NW / ks;
    const int o0 = (blockIdx.x * groups + grp) * OUT;
    const size_t gbytes = bits == 4 ? 16 : 32;
    bool live[OUT][NA];
    size_t row[OUT][NA];
#pragma unroll
    for (int k = 0; k < OUT; k++)
#pragma unroll
        for (int a = 0; a < NA; a++) {
            live[k][a] = o0 + k < outs && (a == 0 || mode == EPI_SWIGLU);
            row[k][a] = live[k][a] ? (size_t)(o0 + k + a * outs) : 0;
            if (live[k][a] && pf) {
                prefetch_l2(Q + row[k][a] * ng * gbytes, ng * gbytes, lane + 32 * kw, 32 * ks);
                if (kw == 0 && lane == 0) {
                    prefetch_l2(S + row[k][a] * ng, ng * 4, 0, 1);
                    if (bits == 4) prefetch_l2(M + row[k][a] * ng, ng * 4, 0, 1);
                }
            }
        }
    // Half group j of the rows' weights into registers: 4-bit quants, scales and offsets (the
    // offset only with the first half: its term takes the whole group's sum), or 8-bit quants
    // and scales.
    auto load4 = [&](int j, uint2 (&q)[OUT][NA], float (&d)[OUT][NA], float (&m)[OUT][NA]) {
        const int g = j >> 1, h = j & 1;
#pragma unroll
        for (int k = 0; k < OUT; k++)
#pragma unroll
            for (int a = 0; a < NA; a++)
                if (live[k][a]) {
                    size_t gi = row[k][a] * ng + g;
                    q[k][a] = __ldg((const uint2 *)(Q + gi * 16) + h);
                    d[k][a] = __ldg(S + gi);
                    m[k][a] = h == 0 ? __ldg(M + gi) : 0.0f;
                }
    };
    auto load8 = [&](int j, uint4 (&q)[OUT][NA], float (&d)[OUT][NA]) {
        const int g = j >> 1, h = j & 1;
#pragma unroll
        for (int k = 0; k < OUT; k++)
#pragma unroll
            for (int a = 0; a < NA; a++)
                if (live[k][a]) {
                    size_t gi = row[k][a] * ng + g;
                    q[k][a] = __ldg((const uint4 *)(Q + gi * 32) + h);
                    d[k][a] = __ldg(S + gi);
                }
    };
    // Each lane's first two half groups of its rows (j0 and j0 + step), read into registers
    // before the wait: with a row of up to 32 * ks * 2 half groups (1,024 columns at ks 1,
    // 2,048 at ks 2) every weight of the product is then in flight before it, and none is
    // read after the kernel before ends.
    const int j0 = lane + 32 * kw, step = 32 * ks;
    uint2 q4f[2][OUT][NA];
    uint4 q8f[2][OUT][NA];
    float df[2][OUT][NA], mf[2][OUT][NA];
#pragma unroll
    for (int i = 0; i < 2; i++)
        if (j0 + i * step < nh) {
            if (bits == 4) load4(j0 + i * step, q4f[i], df[i], mf[i]);
            else load8(j0 + i * step, q8f[i], df[i]);
        }
    // Only the weights were touched so far: the kernel before (k_quant_x) may still be running.
    pdl_enter();
    // x's sums of squares (xnorm) are loaded now and added up after the products, so that their
    // latency hides behind the weights'.
    float ss0 = 0.0f, ss1 = 0.0f;
    if (xnorm) {
        const float *ss = dq + nh;
        ss0 = lane < nh ? ss[lane] : 0.0f;
        ss1 = lane + 32 < nh ? ss[lane + 32] : 0.0f;
        for (int g = lane + 64; g < nh; g += 32) ss0 += ss[g];
    }
    float acc[OUT][NA];
#pragma unroll
    for (int k = 0; k < OUT; k++)
#pragma unroll
        for (int a = 0; a < NA; a++) acc[k][a] = 0.0f;
    if (bits == 4) {
        // Half group j of the rows (quants q, scales d, offsets m) into the sums.
        auto half4 = [&](int j, const uint2 (&q)[OUT][NA], const float (&d)[OUT][NA],
                         const float (&m)[OUT][NA]) {
            const int g = j >> 1, h = j & 1;
            const int2 xl = ((const int2 *)(xq + g * 8))[h], xh = ((const int2 *)(xq + g * 8))[2 + h];
            // The weights' half h holds elements h*8.. (low nibbles) and 16+h*8.. (high): from
            // x's groups 2g and 2g+1, each with its scale. The offset term takes the whole
            // group's sum, once.
            const float dx0 = dq[2 * g], dx1 = dq[2 * g + 1];
            const float gsum = h == 0 ? gs[2 * g] + gs[2 * g + 1] : 0.0f;
#pragma unroll
            for (int k = 0; k < OUT; k++)
#pragma unroll
                for (int a = 0; a < NA; a++)
                    if (live[k][a]) {
                        const int2 p = dot_q4h(q[k][a], xl.x, xl.y, xh.x, xh.y);
                        acc[k][a] += d[k][a] * (dx0 * (float)p.x + dx1 * (float)p.y) + m[k][a] * gsum;
                    }
        };
#pragma unroll
        for (int i = 0; i < 2; i++)
            if (j0 + i * step < nh) half4(j0 + i * step, q4f[i], df[i], mf[i]);
#pragma unroll 2
        for (int j = j0 + 2 * step; j < nh; j += step) {
            uint2 q[OUT][NA];
            float d[OUT][NA], m[OUT][NA];
            load4(j, q, d, m);
            half4(j, q, d, m);
        }
    } else {
        auto half8 = [&](int j, const uint4 (&q)[OUT][NA], const float (&d)[OUT][NA]) {
            const int g = j >> 1, h = j & 1;
            const int4 xg = ((const int4 *)(xq + g * 8))[h];
            const float dx = dq[j];
#pragma unroll
            for (int k = 0; k < OUT; k++)
#pragma unroll
                for (int a = 0; a < NA; a++)
                    if (live[k][a]) acc[k][a] += d[k][a] * dx * (float)dot_q8h(q[k][a], xg);
        };
#pragma unroll
        for (int i = 0; i < 2; i++)
            if (j0 + i * step < nh) half8(j0 + i * step, q8f[i], df[i]);
#pragma unroll 2
        for (int j = j0 + 2 * step; j < nh; j += step) {
            uint4 q[OUT][NA];
            float d[OUT][NA];
            load8(j, q, d);
            half8(j, q, d);
        }
    }
    const float sc = xnorm ? rsqrtf(warp_sum(ss0 + ss1) / cols + eps) : 1.0f;
#pragma unroll
    for (int k = 0; k < OUT; k++)
#pragma unroll
        for (int a = 0; a < NA; a++) {
            float v = warp_sum(acc[k][a]) * sc;
            if (lane == 0) part[warp][k][a] = v;
        }
    __syncthreads();
    // The block's groups * OUT outputs (at most 32; 16 with txq), stored by the first warp
    // (lane l: group l / OUT's output l % OUT), which alone then counts them for txq.
    if (warp != 0) return;
    const int per = groups * OUT;
    float hv = 0.0f;
    if (lane < per) {
        const int gi = lane / OUT, k = lane % OUT;
        const int o = (blockIdx.x * groups + gi) * OUT + k;
        if (o < outs) {
            float s0 = 0.0f, s1 = 0.0f;
            for (int w = 0; w < ks; w++) {
                s0 += part[gi * ks + w][k][0];
                if (NA > 1) s1 += part[gi * ks + w][k][NA - 1];
            }
            hv = mv_store(out, o, outs, bias, s0, s1, mode);
        }
    }
    if (!txq) return;
    if (per == 16) {
        // The block's 16 outputs are a whole group: lanes 0..15 hold it.
        const int c = blockIdx.x * 16 + (lane & 15);
        quant_group16(hv, tnw ? tnw[c] : 1.0f, blockIdx.x, outs, txq, lane < 16);
        return;
    }
    // 16 / per blocks make a group of 16; the last of them to count reads it back and rounds it.
    const int bpg = 16 / per, g = blockIdx.x / bpg;
    __threadfence();
    u32 seen = 0;
    if (lane == 0) seen = atomicAdd(tcnt + g, 1u);
    if (__shfl_sync(0xffffffffu, seen, 0) == (u32)bpg - 1u) {
        __threadfence();
        const int c = g * 16 + (lane & 15);
        quant_group16(__ldcg(out + c), tnw ? tnw[c] : 1.0f, g, outs, txq, lane < 16);
        if (lane == 0) tcnt[g] = 0u;
    }
}

extern "C" __global__ void __launch_bounds__(256, 4)
k_mv1q(const unsigned char *Q, const float *S, const float *M, int bits, const float *bias, int outs,
       int cols, const u32 *xq, int xnorm, float eps, float *out, Epi mode, int ks, u32 *txq,
       const float *tnw, u32 *tcnt, int pf) {
    mv1q_body<8, MV1_OUT, 2>(Q, S, M, bits, bias, outs, cols, xq, xnorm, eps, out, mode, ks, txq, tnw, tcnt, pf);
}

// Products without SwiGLU (one row of weights an output) and without txq, four outputs a warp
// where k_mv1q takes two (with their up rows): the registers of the up rows hold two more
// outputs, and x's loads, the sums across the warp and the store are shared by twice the
// bytes. For products of many outputs whose rows are short (the default model's head: 49,152
// rows of 576 columns, 1.3 KB a warp in k_mv1q). 32 outputs a block (ks 1).
extern "C" __global__ void __launch_bounds__(256, 4)
k_mv1q4(const unsigned char *Q, const float *S, const float *M, int bits, const float *bias,
        int outs, int cols, const u32 *xq, int xnorm, float eps, float *out, Epi mode, int ks,
        u32 *txq, const float *tnw, u32 *tcnt, int pf) {
    mv1q_body<8, 4, 1>(Q, S, M, bits, bias, outs, cols, xq, xnorm, eps, out, mode, ks, txq, tnw, tcnt, pf);
}

extern "C" __global__ void __launch_bounds__(512, 2)
k_mv1q16(const unsigned char *Q, const float *S, const float *M, int bits, const float *bias,
         int outs, int cols, const u32 *xq, int xnorm, float eps, float *out, Epi mode, int ks,
         u32 *txq, const float *tnw, u32 *tcnt, int pf) {
    mv1q_body<16, MV1_OUT, 2>(Q, S, M, bits, bias, outs, cols, xq, xnorm, eps, out, mode, ks, txq, tnw, tcnt, pf);
}

extern "C" __global__ void __launch_bounds__(1024, 1)
k_mv1q32(const unsigned char *Q, const float *S, const float *M, int bits, const float *bias,
         int outs, int cols, const u32 *xq, int xnorm, float eps, float *out, Epi mode, int ks,
         u32 *txq, const float *tnw, u32 *tcnt, int pf) {
    mv1q_body<32, MV1_OUT, 2>(Q, S, M, bits, bias, outs, cols, xq, xnorm, eps, out, mode, ks, txq, tnw, tcnt, pf);
}

// Products of 2 to 8 rows of x with weights read in place: each lane takes half groups of its
// warp's rows (two outputs, with their up rows for SwiGLU), as k_mv1q does, and dots each with
// every row of x, rounded to bytes by k_quant_x (one block a row, QX_WORDS(cols) words a row):
// the weights are read once for all rows, at their quantized size, where the other paths
// dequantize the whole matrix to f16 first. ks warps (1, 2, 4 or 8) share each pair of
// outputs, splitting its columns; their sums meet in shared memory. The block's weights go
// towards L2 before the wait. Needs cols % 32 == 0.
template <int N>
__device__ __forceinline__ void mvqr_body(const unsigned char *Q, const float *S, const float *M,
                                          int bits, const float *bias, int outs, int cols,
                                          const u32 *xq, float *out, int out_stride, Epi mode,
                                          int ks) {
    constexpr int O = 2;
    __shared__ float part[MV_WARPS][O][2][N];
    const int ng = cols >> 5, nh = 2 * ng, rw = QX_WORDS(cols);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int grp = warp / ks, kw = warp % ks, groups = MV_WARPS / ks;
    const int o0 = (blockIdx.x * groups + grp) * O;
    const size_t gbytes = bits == 4 ? 16 : 32;
    bool live[O][2];
    size_t row[O][2];
    float acc[O][2][N];
#pragma unroll
    for (int k = 0; k < O; k++)
#pragma unroll
        for (int a = 0; a < 2; a++) {
            live[k][a] = rows_live(o0 + k, a, outs, mode);
            row[k][a] = live[k][a] ? (size_t)(o0 + k + a * outs) : 0;
            if (live[k][a]) prefetch_l2(Q + row[k][a] * ng * gbytes, ng * gbytes, lane + 32 * kw, 32 * ks);
            rows_zero<N>(acc[k][a]);
        }
    pdl_enter();
    for (int j = lane + 32 * kw; j < nh; j += 32 * ks) {
        const int g = j >> 1, h = j & 1;
        if (bits == 4) {
            uint2 q[O][2];
            float d[O][2], m[O][2];
#pragma unroll
            for (int k = 0; k < O; k++)
#pragma unroll
                for (int a = 0; a < 2; a++)
                    if (live[k][a]) {
                        const size_t gi = row[k][a] * ng + g;
                        q[k][a] = __ldg((const uint2 *)(Q + gi * 16) + h);
                        d[k][a] = __ldg(S + gi);
                        m[k][a] = h == 0 ? __ldg(M + gi) : 0.0f;
                    }
#pragma unroll
            for (int r = 0; r < N; r++) {
                const u32 *xr = xq + (size_t)r * rw;
                const float *gs = (const float *)(xr + (cols >> 2)), *dq = gs + nh;
                const int2 xl = ((const int2 *)(xr + g * 8))[h], xh = ((const int2 *)(xr + g * 8))[2 + h];
                const float dx0 = dq[2 * g], dx1 = dq[2 * g + 1];
                const float gsum = h == 0 ? gs[2 * g] + gs[2 * g + 1] : 0.0f;
#pragma unroll
                for (int k = 0; k < O; k++)
#pragma unroll
                    for (int a = 0; a < 2; a++)
                        if (live[k][a]) {
                            const int2 p = dot_q4h(q[k][a], xl.x, xl.y, xh.x, xh.y);
                            acc[k][a][r] += d[k][a] * (dx0 * (float)p.x + dx1 * (float)p.y) + m[k][a] * gsum;
                        }
            }
        } else {
            uint4 q[O][2];
            float d[O][2];
#pragma unroll
            for (int k = 0; k < O; k++)
#pragma unroll
                for (int a = 0; a < 2; a++)
                    if (live[k][a]) {
                        const size_t gi = row[k][a] * ng + g;
                        q[k][a] = __ldg((const uint4 *)(Q + gi * 32) + h);
                        d[k][a] = __ldg(S + gi);
                    }
#pragma unroll
            for (int r = 0; r < N; r++) {
                const u32 *xr = xq + (size_t)r * rw;
                const float *dq = (const float *)(xr + (cols >> 2)) + nh;
                const int4 xg = ((const int4 *)(xr + g * 8))[h];
                const float dx = dq[j];
#pragma unroll
                for (int k = 0; k < O; k++)
#pragma unroll
                    for (int a = 0; a < 2; a++)
                        if (live[k][a]) acc[k][a][r] += d[k][a] * dx * (float)dot_q8h(q[k][a], xg);
            }
        }
    }
    rows_store<O, N>(acc, part, lane, warp, grp, kw, ks, o0, outs, bias, out, out_stride, mode);
}

#define MVQR_KERNEL(N)                                                                         \
    extern "C" __global__ void __launch_bounds__(256, 2)                                       \
    k_mvqr##N(const unsigned char *Q, const float *S, const float *M, int bits,               \
              const float *bias, int outs, int cols, const u32 *xq, float *out,               \
              int out_stride, Epi mode, int ks) {                                             \
        mvqr_body<N>(Q, S, M, bits, bias, outs, cols, xq, out, out_stride, mode, ks);        \
    }
MVQR_KERNEL(2)
MVQR_KERNEL(3)
MVQR_KERNEL(4)
MVQR_KERNEL(5)
MVQR_KERNEL(6)
MVQR_KERNEL(7)
MVQR_KERNEL(8)

// Quantized rows to f16 (for the other product paths): four threads a group of 32, each
// thread eight values, stored as one 16-byte word, so that a warp's stores are 512 bytes in a
// row (one thread a group stored 64-byte runs 64 bytes apart, two bytes at a time). Thread k
// of a 4-bit group takes the low nibbles (k 0, 1) or the high ones (k 2, 3) of the group's
// bytes 8 (k & 1) .. 8 (k & 1) + 7, which are values 8k .. 8k + 7; of an 8-bit group, its
// bytes 8k .. 8k + 7. Each value is computed as before (d * q + m, or d * q), rounded alike.
extern "C" __global__ void k_dequant(const unsigned char *Q, const float *S, const float *M, int bits,
                                     long long groups, u16 *out) {
    pdl_enter();
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long g = i >> 2;
    if (g >= groups) return;
    const int k = (int)(i & 3);
    const float d = S[g];
    u32 w[4];
    if (bits == 4) {
        const float m = M[g];
        const uint2 b = *((const uint2 *)(Q + g * 16) + (k & 1));
        const int shift = k < 2 ? 0 : 4;
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const u32 src = e < 2 ? b.x : b.y;
            const int lo = (e & 1) * 16;
            const u32 v0 = (src >> (lo + shift)) & 15u, v1 = (src >> (lo + 8 + shift)) & 15u;
            w[e] = (u32)f2h(d * (float)v0 + m) | ((u32)f2h(d * (float)v1 + m) << 16);
        }
    } else {
        const uint2 b = *((const uint2 *)(Q + g * 32) + k);
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const u32 src = e < 2 ? b.x : b.y;
            const int lo = (e & 1) * 16;
            const int v0 = (int)(signed char)(src >> lo), v1 = (int)(signed char)(src >> (lo + 8));
            w[e] = (u32)f2h(d * (float)v0) | ((u32)f2h(d * (float)v1) << 16);
        }
    }
    *((uint4 *)(out + g * 32) + k) = make_uint4(w[0], w[1], w[2], w[3]);
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
