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
    const float s = rms_scale(xr, dim, eps, red);
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
    const float s = w ? rms_scale(xr, dim, eps, red) : 1.0f;
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

