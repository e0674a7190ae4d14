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

