// ---- matrix-vector products for a few rows ---------------------------------------------------
//
// out[r][o] (=, += or SwiGLU) W[o] . x[r] (+ bias[o]) for r < n <= MV_ROWS. One warp per output
// (two weight rows, o and o + outs, for SwiGLU); weights read once, 16 bytes per lane per step.
// With `nw`, x[r] is RMS-normalised with weights nw first (the norm is computed per block).
#define MV_ROWS 8
#define MV_WARPS 8

extern "C" __global__ void __launch_bounds__(256)
k_mv(const u16 *W, const float *bias, int outs, int cols, const float *x, int n,
     const float *nw, float eps, float *out, int out_stride, Epi mode) {
    pdl_enter();
    // mode: store, accumulate, or SwiGLU of rows o and o + outs (Epi).
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
    int nrows_w = mode == EPI_SWIGLU ? 2 : 1;
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
                if (mode == EPI_STORE) *dst = v0;
                else if (mode == EPI_ACCUMULATE) *dst += v0;
                else *dst = silu(v0) * (s1 * sc + (bias ? bias[o + outs] : 0.0f));
            }
        }
    }
}

