// ---- sampling where the logits are ------------------------------------------------------------
//
// k_sample follows crates/kiln-model/src/sample.rs step by step, one block per row of logits:
// adjustments (penalties, logit bias) in place, then greedy, or a lower bound on the logit from
// top-k (radix select of the k-th largest value), top-p (radix select by probability mass, in
// 32.32 fixed point so that the sums do not depend on the order of atomic additions) and min-p,
// then the largest logit / T + Gumbel noise among the tokens at or above the bound. Only the
// chosen token (and the log-probabilities asked for) is written out.
//
// Row parameters, SAMPLE_ROW_WORDS u32 words per row: temperature (f32 bits), top_k, top_p (f32),
// min_p (f32), repetition penalty (f32), seed lo, seed hi, counter lo, counter hi, first
// adjustment, adjustments, log-probability alternatives (0xffffffff: none).
// Adjustments, 3 words each: token, repeated (0/1), add (f32 bits).
// Output: tokens[rows], then per row 1 + 2 * SAMPLE_TOP words: the chosen token's log-probability,
// then (id, log-probability) pairs, best first.

#define SAMPLE_ROW_WORDS 12
#define SAMPLE_TOP 20
#define SAMPLE_THREADS 1024
#define SAMPLE_CAND 64
// The largest Gumbel noise the 23-bit uniform can give, -ln(-ln(1 - 2^-24)) = 16.64, rounded up.
#define GUMBEL_MAX 17.5f

__device__ __forceinline__ u32 fkey(float f) {
    u32 u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ float sample_uniform(unsigned long long seed, unsigned long long counter,
                                                u32 tok) {
    unsigned long long z = seed ^ (counter * 0x9E3779B97F4A7C15ull) ^
                           (((unsigned long long)tok + 1ull) * 0xD1B54A32D192ED03ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return ((float)(z >> 41) + 0.5f) * (1.0f / 8388608.0f);
}

// Better candidate: larger value, then lower index.
__device__ __forceinline__ void sbetter(float &bv, int &bi, float v, int i) {
    if (v > bv || (v == bv && i < bi)) { bv = v; bi = i; }
}

// Block-wide best (value, index); every thread gets the result.
__device__ void block_best(float &bv, int &bi, float *sv, int *si) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        sbetter(bv, bi, __shfl_xor_sync(0xffffffffu, bv, o), __shfl_xor_sync(0xffffffffu, bi, o));
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) { sv[w] = bv; si[w] = bi; }
    __syncthreads();
    if (w == 0) {
        bv = lane < nw ? sv[lane] : (-INFINITY);
        bi = lane < nw ? si[lane] : 0x7fffffff;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1)
            sbetter(bv, bi, __shfl_xor_sync(0xffffffffu, bv, o), __shfl_xor_sync(0xffffffffu, bi, o));
        if (lane == 0) { sv[0] = bv; si[0] = bi; }
    }
    __syncthreads();
    bv = sv[0];
    bi = si[0];
    __syncthreads();
}

// Block-wide sum in a fixed order (deterministic); every thread gets the result.
__device__ float sample_block_sum(float v, float *sv) {
    v = warp_sum(v);
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) sv[w] = v;
    __syncthreads();
    if (w == 0) {
        v = lane < nw ? sv[lane] : 0.0f;
        v = warp_sum(v);
        if (lane == 0) sv[0] = v;
    }
    __syncthreads();
    v = sv[0];
    __syncthreads();
    return v;
}

// The largest key t (among keys >= lo) such that the weight of the keys >= t reaches `target`:
// weight 1 per element (the target-th largest key) or, with `mass`, each element's fixed-point
// probability weight. Four passes of 8 bits, most significant first.
__device__ u32 radix_select(const float *x, int n, u32 lo, unsigned long long target, bool mass,
                            float mx, float inv_t, unsigned long long *hist, u32 *sh) {
    u32 prefix = 0, mask = 0;
    unsigned long long remaining = target;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0ull;
        __syncthreads();
        // Runs of equal bins are added up in registers first: the most significant byte is
        // the same for nearly every logit, and one shared counter hit by every thread would
        // serialise the pass.
        u32 run_bin = 0xffffffffu;
        unsigned long long run = 0ull;
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            float v = x[i];
            u32 k = fkey(v);
            if (k >= lo && (k & mask) == prefix) {
                unsigned long long w =
                    mass ? __float2ull_rn(__expf((v - mx) * inv_t) * 4294967296.0f) : 1ull;
                u32 bin = (k >> shift) & 255u;
                if (bin != run_bin) {
                    if (run_bin != 0xffffffffu) atomicAdd(&hist[run_bin], run);
                    run_bin = bin;
                    run = 0ull;
                }
                run += w;
            }
        }
        if (run_bin != 0xffffffffu) atomicAdd(&hist[run_bin], run);
        __syncthreads();
        if (threadIdx.x == 0) {
            unsigned long long cum = 0;
            int b = 255;
            for (; b > 0; b--) {
                if (cum + hist[b] >= remaining) break;
                cum += hist[b];
            }
            sh[0] = (u32)b;
            unsigned long long left = remaining > cum ? remaining - cum : 1ull;
            sh[1] = (u32)(left & 0xffffffffu);
            sh[2] = (u32)(left >> 32);
        }
        __syncthreads();
        prefix |= sh[0] << shift;
        mask |= 255u << shift;
        remaining = ((unsigned long long)sh[2] << 32) | sh[1];
        __syncthreads();
    }
    return prefix;
}

extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)
k_sample(float *logits, int width, const u32 *params, const u32 *adj, u32 *out, int rows) {
    __shared__ float sv[32];
    __shared__ int si[32];
    __shared__ unsigned long long hist[256];
    __shared__ u32 sh[4];
    __shared__ float cv[SAMPLE_CAND];
    __shared__ int ci[SAMPLE_CAND];
    __shared__ int cn;
    const int row = blockIdx.x;
    float *x = logits + (size_t)row * width;
    const u32 *p = params + (size_t)row * SAMPLE_ROW_WORDS;
    const float t = __uint_as_float(p[0]);
    const u32 top_k = p[1];
    const float top_p = __uint_as_float(p[2]);
    const float min_p = __uint_as_float(p[3]);
    const float rep = __uint_as_float(p[4]);
    const unsigned long long seed = ((unsigned long long)p[6] << 32) | p[5];
    const unsigned long long counter = ((unsigned long long)p[8] << 32) | p[7];
    const u32 a0 = p[9], an = p[10], nlp = p[11];

    // 1. Adjustments (distinct tokens: no two threads touch one logit).
    for (u32 j = threadIdx.x; j < an; j += blockDim.x) {
        const u32 *a = adj + 3 * (size_t)(a0 + j);
        u32 tok = a[0];
        if (tok < (u32)width) {
            float l = x[tok];
            if (a[1]) l = l > 0.0f ? l / rep : l * rep;
            x[tok] = l + __uint_as_float(a[2]);
        }
    }
    __syncthreads();

    // 2. The largest logit (and its index: the greedy choice).
    float bv = (-INFINITY);
    int bi = 0x7fffffff;
    for (int i = threadIdx.x; i < width; i += blockDim.x) sbetter(bv, bi, x[i], i);
    block_best(bv, bi, sv, si);
    const float mx = bv;
    int chosen = bi == 0x7fffffff ? 0 : bi;

    if (!(t <= 0.0f || top_k == 1u) && width > 1) {
        // 3. The lower bound.
        const float inv_t = 1.0f / t;
        u32 lo = 0;
        if (top_k > 0u && top_k < (u32)width)
            lo = radix_select(x, width, 0, top_k, false, mx, inv_t, hist, sh);
        if (top_p < 1.0f) {
            unsigned long long total = 0;
            // The total mass above the top-k bound, summed in fixed point (exact, any order).
            if (threadIdx.x == 0) hist[0] = 0ull;
            __syncthreads();
            unsigned long long mine = 0;
            for (int i = threadIdx.x; i < width; i += blockDim.x) {
                float v = x[i];
                if (fkey(v) >= lo) mine += __float2ull_rn(__expf((v - mx) * inv_t) * 4294967296.0f);
            }
            atomicAdd(&hist[0], mine);
            __syncthreads();
            total = hist[0];
            __syncthreads();
            unsigned long long target = (unsigned long long)ceil((double)top_p * (double)total);
            if (target < 1ull) target = 1ull;
            u32 kp = radix_select(x, width, lo, target, true, mx, inv_t, hist, sh);
            lo = kp > lo ? kp : lo;
        }
        if (min_p > 0.0f) {
            u32 km = fkey(mx + t * logf(min_p));
            lo = km > lo ? km : lo;
        }
        // 4. Gumbel-max among the tokens at or above the bound. The most likely token is
        // always among them, so its score bounds the winner's from below; the noise is at
        // most GUMBEL_MAX, so a token whose logit / T is more than that below the bound cannot
        // win and is not drawn for (the same tokens win as without the shortcut).
        const float bound = mx / t + (-logf(-logf(sample_uniform(seed, counter, (u32)chosen))));
        const float skip = (bound - GUMBEL_MAX) * t;
        float gv = (-INFINITY);
        int gi = 0x7fffffff;
        for (int i = threadIdx.x; i < width; i += blockDim.x) {
            float v = x[i];
            if (v >= skip && fkey(v) >= lo && v == v) {
                float u = sample_uniform(seed, counter, (u32)i);
                sbetter(gv, gi, v / t + (-logf(-logf(u))), i);
            }
        }
        block_best(gv, gi, sv, si);
        if (gi != 0x7fffffff) chosen = gi;
    }
    if (threadIdx.x == 0) out[row] = (u32)chosen;

    // 5. Log-probabilities at temperature 1 after the adjustments.
    if (nlp == 0xffffffffu) return;
    float s = 0.0f;
    for (int i = threadIdx.x; i < width; i += blockDim.x) s += __expf(x[i] - mx);
    const float lse = mx + logf(sample_block_sum(s, sv));
    u32 *o = out + rows + (size_t)row * (1 + 2 * SAMPLE_TOP);
    if (threadIdx.x == 0) o[0] = __float_as_uint(x[chosen] - lse);
    int n = (int)min(nlp, (u32)SAMPLE_TOP);
    n = min(n, width);
    if (n == 0) return;
    u32 kth = radix_select(x, width, 0, (unsigned long long)n, false, mx, 1.0f, hist, sh);
    if (threadIdx.x == 0) cn = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < width; i += blockDim.x) {
        float v = x[i];
        if (fkey(v) >= kth) {
            int slot = atomicAdd(&cn, 1);
            if (slot < SAMPLE_CAND) { cv[slot] = v; ci[slot] = i; }
        }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        int m = cn;
        if (m > SAMPLE_CAND) {
            // Many equal values at the boundary: take them in index order.
            m = 0;
            for (int i = 0; i < width && m < SAMPLE_CAND; i++)
                if (fkey(x[i]) >= kth) { cv[m] = x[i]; ci[m] = i; m++; }
        }
        // Insertion sort, best first: larger value, then lower index.
        for (int a = 1; a < m; a++) {
            float v = cv[a];
            int id = ci[a];
            int b = a - 1;
            while (b >= 0 && (cv[b] < v || (cv[b] == v && ci[b] > id))) {
                cv[b + 1] = cv[b];
                ci[b + 1] = ci[b];
                b--;
            }
            cv[b + 1] = v;
            ci[b + 1] = id;
        }
        for (int j = 0; j < n && j < m; j++) {
            o[1 + 2 * j] = (u32)ci[j];
            o[2 + 2 * j] = __float_as_uint(cv[j] - lse);
        }
    }
}
