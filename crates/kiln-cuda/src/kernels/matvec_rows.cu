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

// One row of x into shared memory, times the RMSNorm weights `nw` when given; returns the
// norm's scale (1 without), which the caller applies to its sums. A thread issues all its
// loads of a chunk (STAGE_V float4s of x, as many of nw) before its first store, so a chunk
// costs one trip to L2, and the sum of squares comes from the same registers. Needs
// cols % 4 == 0.
#define STAGE_V 8
__device__ float stage_x(const float *x, int cols, const float *nw, float eps, float *xs,
                         float *red) {
    const int n4 = cols >> 2, t = threadIdx.x, nt = blockDim.x;
    const float4 *x4 = (const float4 *)x, *m4 = (const float4 *)nw;
    float4 *s4 = (float4 *)xs;
    float ss = 0.0f;
    for (int b = 0; b < n4; b += STAGE_V * nt) {
        float4 v[STAGE_V], m[STAGE_V];
#pragma unroll
        for (int k = 0; k < STAGE_V; k++) {
            const int i = b + k * nt + t;
            const float4 one = make_float4(1.0f, 1.0f, 1.0f, 1.0f);
            v[k] = i < n4 ? x4[i] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            m[k] = nw && i < n4 ? m4[i] : one;
        }
#pragma unroll
        for (int k = 0; k < STAGE_V; k++) {
            const int i = b + k * nt + t;
            const float4 a = v[k];
            ss += a.x * a.x + a.y * a.y + a.z * a.z + a.w * a.w;
            if (i < n4) s4[i] = make_float4(a.x * m[k].x, a.y * m[k].y, a.z * m[k].z, a.w * m[k].w);
        }
    }
    if (!nw) {
        __syncthreads();
        return 1.0f;
    }
    return rsqrtf(block_sum(ss, red) / cols + eps);  // its first barrier publishes xs
}

// The sum of squares of one row of x, by one warp (lane: its lane), for the several-row
// products' RMSNorm: each lane issues eight float4 loads before it adds any (a chunk of 1,024
// columns a round of loads, where the loop before took one float a lane an iteration). By ncu
// the normed products ran 0.4 to 0.6 us shorter, the steps alike (docs/PERF.md, twenty-third
// session). Needs cols % 4 == 0.
__device__ __forceinline__ float row_sumsq(const float *xr, int cols, int lane) {
    const float4 *x4 = (const float4 *)xr;
    const int n4 = cols >> 2;
    float ss = 0.0f;
    for (int b = 0; b < n4; b += 8 * 32) {
        float4 v[8];
#pragma unroll
        for (int k = 0; k < 8; k++) {
            const int i = b + 32 * k + lane;
            v[k] = i < n4 ? x4[i] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
#pragma unroll
        for (int k = 0; k < 8; k++) ss += v[k].x * v[k].x + v[k].y * v[k].y + v[k].z * v[k].z + v[k].w * v[k].w;
    }
    return warp_sum(ss);
}

// Stores output o as the epilogue says; returns the value stored.
__device__ __forceinline__ float mv_store(float *out, int o, int outs, const float *bias, float s0,
                                          float s1, Epi mode) {
    float v0 = s0 + (bias ? bias[o] : 0.0f);
    if (mode == EPI_ACCUMULATE) v0 += out[o];
    else if (mode == EPI_SWIGLU) v0 = silu(v0) * (s1 + (bias ? bias[o + outs] : 0.0f));
    out[o] = v0;
    return v0;
}

#define MV1_OUT 2

// The one-row product, with x staged in shared memory first (k_mv1) or read in the loop over
// the weights (k_mv1d, `--dev cuda-mv1d=1`: each lane reads its own pieces of x through the L1
// cache, the groups of a block reading the same x, so nothing waits on a copy of x before the
// first weight arrives; a group's ks warps read every column once between them, so their sums
// of x's squares make the norm's scale). Either way the norm's scale is applied to the sums
// at the end. ks warps (1, 2, 4 or 8) share each pair of outputs, splitting its columns.
// `pf`: start the block's weights on their way to L2 before the wait. `early`: no kernel
// before writes W (the model's own rows, not a dequantized scratch), so each lane's first
// PRE pieces of its rows are read into registers before the wait (the smaller products
// are read whole there); the loop then goes on from the next piece, so the sums run in the
// same order. Needs cols % 8 == 0.
template <bool STAGED, int PRE>
__device__ __forceinline__ void mv1_body(const u16 *W, const float *bias, int outs, int cols,
                                         const float *x, const float *nw, float eps,
                                         float *out, Epi mode, int ks, int pf, int early) {
    extern __shared__ float4 xs4[];  // STAGED: cols floats
    __shared__ float red[32];
    __shared__ float part[8][MV1_OUT][2];
    __shared__ float sq[8];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int grp = warp / ks, kw = warp % ks, groups = 8 / ks;
    const int o0 = (blockIdx.x * groups + grp) * MV1_OUT;
    const int nvec = cols >> 3;
    for (int k = 0; k < MV1_OUT && pf; k++)
        for (int a = 0; a < (mode == EPI_SWIGLU ? 2 : 1); a++)
            if (o0 + k < outs)
                prefetch_l2(W + (size_t)(o0 + k + a * outs) * cols, (size_t)cols * 2,
                            lane + 32 * kw, 32 * ks);
    // All (up to four) rows advance together: their loads are independent and share x.
    const uint4 *wr[MV1_OUT][2];
    bool live[MV1_OUT][2];
    float acc[MV1_OUT][2];
#pragma unroll
    for (int k = 0; k < MV1_OUT; k++)
#pragma unroll
        for (int a = 0; a < 2; a++) {
            live[k][a] = o0 + k < outs && (a == 0 || mode == EPI_SWIGLU);
            wr[k][a] = (const uint4 *)(W + (size_t)(live[k][a] ? o0 + k + a * outs : 0) * cols);
            acc[k][a] = 0.0f;
        }
    const int step = 32 * ks, j0 = lane + 32 * kw;
    uint4 pre[PRE][MV1_OUT][2];
    auto preload = [&]() {
#pragma unroll
        for (int i = 0; i < PRE; i++)
#pragma unroll
            for (int k = 0; k < MV1_OUT; k++)
#pragma unroll
                for (int a = 0; a < 2; a++)
                    if (live[k][a] && j0 + i * step < nvec)
                        pre[i][k][a] = __ldg(wr[k][a] + j0 + i * step);
    };
    if (early) preload();
    // Only the weights were touched so far: the kernel before may still be running.
    pdl_enter();
    if (!early) preload();
    float sc = STAGED ? stage_x(x, cols, nw, eps, (float *)xs4, red) : 1.0f;
    const float4 *x4 = (const float4 *)x, *n4 = (const float4 *)nw;
    float ss = 0.0f;
    // Piece j of x (8 values), times the norm's weights.
    auto piece = [&](int j, float4 &x0, float4 &x1) {
        if (STAGED) {
            x0 = xs4[2 * j];
            x1 = xs4[2 * j + 1];
            return;
        }
        x0 = __ldg(x4 + 2 * j);
        x1 = __ldg(x4 + 2 * j + 1);
        if (nw) {
            const float4 m0 = __ldg(n4 + 2 * j), m1 = __ldg(n4 + 2 * j + 1);
            ss += x0.x * x0.x + x0.y * x0.y + x0.z * x0.z + x0.w * x0.w;
            ss += x1.x * x1.x + x1.y * x1.y + x1.z * x1.z + x1.w * x1.w;
            x0 = make_float4(x0.x * m0.x, x0.y * m0.y, x0.z * m0.z, x0.w * m0.w);
            x1 = make_float4(x1.x * m1.x, x1.y * m1.y, x1.z * m1.z, x1.w * m1.w);
        }
    };
#pragma unroll
    for (int i = 0; i < PRE; i++) {
        const int j = j0 + i * step;
        if (j >= nvec) break;
        float4 x0, x1;
        piece(j, x0, x1);
#pragma unroll
        for (int k = 0; k < MV1_OUT; k++)
#pragma unroll
            for (int a = 0; a < 2; a++)
                if (live[k][a]) acc[k][a] += dot8(pre[i][k][a], x0, x1);
    }
#pragma unroll 2
    for (int j = j0 + PRE * step; j < nvec; j += step) {
        uint4 q[MV1_OUT][2];
#pragma unroll
        for (int k = 0; k < MV1_OUT; k++)
#pragma unroll
            for (int a = 0; a < 2; a++)
                if (live[k][a]) q[k][a] = __ldg(wr[k][a] + j);
        float4 x0, x1;
        piece(j, x0, x1);
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
    if (!STAGED) {
        ss = warp_sum(ss);
        if (lane == 0) sq[warp] = ss;
    }
    __syncthreads();
    if (kw == 0 && lane < MV1_OUT) {
        int k = lane, o = o0 + k;
        if (o < outs) {
            float s0 = 0.0f, s1 = 0.0f, t = 0.0f;
            for (int w = 0; w < ks; w++) {
                s0 += part[grp * ks + w][k][0];
                s1 += part[grp * ks + w][k][1];
                if (!STAGED) t += sq[grp * ks + w];
            }
            if (!STAGED && nw) sc = rsqrtf(t / cols + eps);
            mv_store(out, o, outs, bias, s0 * sc, s1 * sc, mode);
        }
    }
}

extern "C" __global__ void __launch_bounds__(256)
k_mv1(const u16 *W, const float *bias, int outs, int cols, const float *x, const float *nw,
      float eps, float *out, Epi mode, int ks, int pf, int early) {
    mv1_body<true, 2>(W, bias, outs, cols, x, nw, eps, out, mode, ks, pf, early);
}

extern "C" __global__ void __launch_bounds__(256)
k_mv1d(const u16 *W, const float *bias, int outs, int cols, const float *x, const float *nw,
       float eps, float *out, Epi mode, int ks, int pf, int early) {
    mv1_body<false, 2>(W, bias, outs, cols, x, nw, eps, out, mode, ks, pf, early);
}

// k_mv1d with four pieces of each row read before the wait (`--dev cuda-mvpre=4`).
extern "C" __global__ void __launch_bounds__(256)
k_mv1d4(const u16 *W, const float *bias, int outs, int cols, const float *x, const float *nw,
        float eps, float *out, Epi mode, int ks, int pf, int early) {
    mv1_body<false, 4>(W, bias, outs, cols, x, nw, eps, out, mode, ks, pf, early);
}

// Whether output o of a product of rows (k_mvr, k_mvqr) exists: its up row (a = 1) only for
// SwiGLU.
__device__ __forceinline__ bool rows_live(int o, int a, int outs, Epi mode) {
    return o < outs && (a == 0 || mode == EPI_SWIGLU);
}

// An output's sums for N rows, at zero.
template <int N>
__device__ __forceinline__ void rows_zero(float (&acc)[N]) {
#pragma unroll
    for (int r = 0; r < N; r++) acc[r] = 0.0f;
}

// The end of a product of N rows (k_mvr, k_mvqr) whose warps hold sums for O outputs (and
// their up rows for SwiGLU) of each row, ks warps a group splitting the outputs' columns: each
// warp's sums meet in shared memory, and the group's first warp adds them and stores them.
template <int O, int N>
__device__ __forceinline__ void rows_store(const float (&acc)[O][2][N],
                                           float (&part)[MV_WARPS][O][2][N], int lane, int warp,
                                           int grp, int kw, int ks, int o0, int outs,
                                           const float *bias, float *out, int out_stride,
                                           Epi mode) {
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
                                         int out_stride, Epi mode, int ks) {
    __shared__ float scale[8];
    __shared__ float part[MV_WARPS][O][2][N];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int grp = warp / ks, kw = warp % ks, groups = MV_WARPS / ks;
    const int o0 = (blockIdx.x * groups + grp) * O;
    const int nvec = cols >> 3, xq = cols >> 2;
    // Start this warp's weights on their way to L2, then wait for x.
    for (int k = 0; k < O; k++)
        for (int a = 0; a < (mode == EPI_SWIGLU ? 2 : 1); a++)
            if (o0 + k < outs)
                prefetch_l2(W + (size_t)(o0 + k + a * outs) * cols, (size_t)cols * 2,
                            lane + 32 * kw, 32 * ks);
    pdl_enter();
    if (warp < N) {
        float sc = 1.0f;
        if (nw) {
            sc = rsqrtf(row_sumsq(x + (size_t)warp * cols, cols, lane) / cols + eps);
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
            live[k][a] = rows_live(o0 + k, a, outs, mode);
            wr[k][a] = (const uint4 *)(W + (size_t)(live[k][a] ? o0 + k + a * outs : 0) * cols);
            rows_zero<N>(acc[k][a]);
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
    rows_store<O, N>(acc, part, lane, warp, grp, kw, ks, o0, outs, bias, out, out_stride, mode);
}

#define MVR_KERNEL(N)                                                                          \
    extern "C" __global__ void __launch_bounds__(256, 2)                                       \
    k_mvr##N(const u16 *W, const float *bias, int outs, int cols, const float *x,             \
             const float *nw, float eps, float *out, int out_stride, Epi mode, int ks) {      \
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

// Thread block clusters (sm_90 and later; elsewhere these trap, and the backend sends k_mvt no
// cluster there): every thread of every block of the cluster waits here until all have come,
// and what each wrote to its shared memory before is then visible to the others.
__device__ __forceinline__ void cluster_sync() {
#if __CUDA_ARCH__ >= 900
    asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
#else
    __trap();
#endif
}

// The float at `p` (in this block's shared memory) in the shared memory of the cluster's block
// of rank `rank`.
__device__ __forceinline__ float ld_cluster(const float *p, u32 rank) {
#if __CUDA_ARCH__ >= 900
    u32 a = (u32)__cvta_generic_to_shared(p), r;
    float v;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(rank));
    asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(r) : "memory");
    return v;
#else
    __trap();
    return 0.0f;
#endif
}

// At most 64 registers (four blocks an SM, as with the scalar norm loop before row_sumsq's
// eight float4s in flight, which alone would take 69 and leave three).
extern "C" __global__ void __launch_bounds__(256, 4)
k_mvt(const u16 *W, const float *bias, int outs, int cols, const float *x, int n, const float *nw,
      float eps, float *out, int out_stride, Epi mode, int ks, int splits, float *ws, u32 *cnt,
      int pf, int early, int cluster) {
    __shared__ float scale[8];
    __shared__ float part[MVT_WARPS][2][16][8];
    __shared__ float mine_s[256];
    __shared__ int last;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int grp = warp / ks, kw = warp % ks, groups = MVT_WARPS / ks;
    const int o0 = (blockIdx.x * groups + grp) * 16;
    const int g = lane >> 2, c = lane & 3;
    const int na = mode == EPI_SWIGLU ? 2 : 1;
    const int steps = cols >> 5, u0 = blockIdx.y * ks + kw, us = ks * splits;
    // With `pf`, this warp's weights on their way to L2 (its share of the steps).
    if (pf)
        for (int a = 0; a < na; a++)
            for (int h = 0; h < 2; h++) {
                const int o = o0 + g + 8 * h;
                if (o >= outs) continue;
                const char *wr = (const char *)(W + (size_t)(o + a * outs) * cols);
                for (int st = u0; st < steps; st += us)
                    if (c == 0) asm volatile("prefetch.global.L2 [%0];" ::"l"(wr + st * 64));
            }
    const bool l0 = o0 + g < outs, l1 = o0 + g + 8 < outs;
    const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
    const uint4 *w0 = (const uint4 *)(W + (size_t)(l0 ? o0 + g : 0) * cols);
    const uint4 *w1 = (const uint4 *)(W + (size_t)(l1 ? o0 + g + 8 : 0) * cols);
    const size_t up = (size_t)outs * cols / 8;  // the up rows, in uint4s
    // With `early` (W is the model's own: no kernel before writes it), this lane's weights of
    // its first step are read into registers before the wait for x.
    uint4 f0[2] = {zero, zero}, f1[2] = {zero, zero};
    const bool pre = early && u0 < steps;
    if (pre) {
        const int v = (u0 * 32 + 8 * c) >> 3;
#pragma unroll
        for (int a = 0; a < 2; a++)
            if (a < na) {
                if (l0) f0[a] = __ldg(w0 + a * up + v);
                if (l1) f1[a] = __ldg(w1 + a * up + v);
            }
    }
    pdl_enter();
    if (warp < n) {
        float sc = 1.0f;
        if (nw) {
            sc = rsqrtf(row_sumsq(x + (size_t)warp * cols, cols, lane) / cols + eps);
        }
        if (lane == 0) scale[warp] = sc;
    }
    __syncthreads();
    const bool xlive = g < n;
    const float sc = xlive ? scale[g] : 0.0f;
    const float *xr = x + (size_t)(xlive ? g : 0) * cols;
    float d[2][4];
#pragma unroll
    for (int a = 0; a < 2; a++)
#pragma unroll
        for (int i = 0; i < 4; i++) d[a][i] = 0.0f;
    // Step st's products into d, with its weights q0 (outputs g) and q1 (g + 8) when `have`,
    // else loaded here.
    auto step = [&](int st, bool have, const uint4 (&q0s)[2], const uint4 (&q1s)[2]) {
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
            const uint4 q0 = have ? q0s[a] : l0 ? __ldg(w0 + a * up + v) : zero;
            const uint4 q1 = have ? q1s[a] : l1 ? __ldg(w1 + a * up + v) : zero;
            mma16816(d[a], q0.x, q1.x, q0.y, q1.y, b[0], b[1]);
            mma16816(d[a], q0.z, q1.z, q0.w, q1.w, b[2], b[3]);
        }
    };
    // The same steps in the same order with or without the early read (the sums do not change).
    if (pre) step(u0, true, f0, f1);
#pragma unroll 2
    for (int st = pre ? u0 + us : u0; st < steps; st += us) step(st, false, f0, f1);
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
    // Split along the columns (ks == 8, one tile a block). With `cluster`, the tile's blocks
    // are one cluster (grid.y, rank blockIdx.y): each leaves its sums in its shared memory and
    // block 0 adds them from there in block order, then lets the others exit. The same sums
    // in the same order as through ws below, without its trips to L2 (the fence, the counter,
    // the reads back).
    if (cluster) {
        for (int i = threadIdx.x; i < 256; i += blockDim.x) {
            const int a = i >> 7, k = (i >> 3) & 15, r = i & 7;
            float s = 0.0f;
            for (int w = 0; w < ks; w++) s += part[w][a][k][r];
            mine_s[i] = s;
        }
        cluster_sync();
        if (blockIdx.y == 0)
            for (int i = threadIdx.x; i < per; i += blockDim.x) {
                const int k = i / n, r = i % n, o = o0 + k;
                if (o >= outs) continue;
                float s0 = 0.0f, s1 = 0.0f;
                for (int z = 0; z < splits; z++) {
                    s0 += ld_cluster(mine_s + k * 8 + r, (u32)z);
                    s1 += ld_cluster(mine_s + 128 + k * 8 + r, (u32)z);
                }
                mv_store(out + (size_t)r * out_stride, o, outs, bias, s0, s1, mode);
            }
        // No block's shared memory goes while block 0 may still read it.
        cluster_sync();
        return;
    }
    // Through ws: this block's sums there.
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

