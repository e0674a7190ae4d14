// ---- sampling where the logits are ------------------------------------------------------------
//
// Two kernels follow crates/kiln-model/src/sample.rs step by step. k_sample_part splits each row
// into SAMPLE_PARTS slices, one block each, so that a single row still spreads over many SMs: it
// applies the row's adjustments (penalties, logit bias) to its slice, and finds the slice's
// largest logit, its softmax sum, its Gumbel winner (when only a temperature applies) and its
// best few tokens (when top-k is small or log-probabilities are asked for). k_sample_merge, one
// block per row, combines the slices: greedy; temperature alone (the best slice winner); small
// top-k with top-p and min-p on the union of the slices' best tokens, which holds every token
// at or above the k-th largest logit. Any other case (top-p or min-p without a small top-k, or
// more equal logits than a slice keeps) takes the whole row in one block: a lower bound from
// top-k (radix select of the k-th largest value), top-p (radix select by probability mass, in
// 32.32 fixed point so that the sums do not depend on the order of atomic additions) and min-p,
// then the largest logit / T + Gumbel noise at or above it. Only the chosen token (and the
// log-probabilities asked for) is written out.
//
// Row parameters, SAMPLE_ROW_WORDS u32 words per row: temperature (f32 bits), top_k, top_p (f32),
// min_p (f32), repetition penalty (f32), seed lo, seed hi, counter lo, counter hi, first
// adjustment, adjustments, log-probability alternatives (0xffffffff: none), mask row
// (0xffffffff: none).
// Adjustments, 3 words each: token, repeated (0/1), add (f32 bits).
// Masks, (width + 31) / 32 words a row: bit t % 32 of word t / 32 allows token t.
// Output: tokens[rows], then per row 1 + 2 * SAMPLE_TOP words: the chosen token's log-probability,
// then (id, log-probability) pairs, best first.

#define SAMPLE_ROW_WORDS 13
#define SAMPLE_TOP 20
#define SAMPLE_THREADS 1024
#define SAMPLE_CAND 64
#define SAMPLE_PARTS 16
#define SAMPLE_CAP 128
#define SAMPLE_INFO 8
#define SAMPLE_NONE 0xffffffffu
// The largest Gumbel noise the 23-bit uniform can give, -ln(-ln(1 - 2^-24)) = 16.64, rounded up.
#define GUMBEL_MAX 17.5f

__device__ __forceinline__ u32 fkey(float f) {
    u32 u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// A draw's key, once per row (sample.rs: draw_key): SplitMix64's finaliser over the seed and
// counter, folded to 32 bits.
__device__ __forceinline__ u32 sample_key(unsigned long long seed, unsigned long long counter) {
    unsigned long long z = seed ^ (counter * 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (u32)(z ^ (z >> 32));
}

// 23 random bits of (key, token) in (0, 1) (sample.rs: uniform_at): 32-bit work per token.
__device__ __forceinline__ float sample_uniform(u32 key, u32 tok) {
    u32 h = key ^ ((tok + 1u) * 0x9E3779B9u);
    h ^= h >> 16;
    h *= 0x85EBCA6Bu;
    h ^= h >> 13;
    h *= 0xC2B2AE35u;
    h ^= h >> 16;
    return ((float)(h >> 9) + 0.5f) * (1.0f / 8388608.0f);
}

// `better` (argmax.cu): larger value, then lower index.

// Block-wide best (value, index); every thread gets the result.
__device__ void block_best(float &bv, int &bi, float *sv, int *si) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        better(bv, bi, __shfl_xor_sync(0xffffffffu, bv, o), __shfl_xor_sync(0xffffffffu, bi, o));
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) { sv[w] = bv; si[w] = bi; }
    __syncthreads();
    if (w == 0) {
        bv = lane < nw ? sv[lane] : (-INFINITY);
        bi = lane < nw ? si[lane] : 0x7fffffff;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1)
            better(bv, bi, __shfl_xor_sync(0xffffffffu, bv, o), __shfl_xor_sync(0xffffffffu, bi, o));
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
        // The most significant bytes are the same for nearly every logit, so a few shared
        // counters take almost every addition; added one by one they would serialise the
        // pass. Lanes of a warp with the same bin are added up first (one atomic per bin and
        // warp instruction), with counts by __match_any_sync and weights by a warp sum.
        for (int base = 0; base < n; base += blockDim.x) {
            const int i = base + (int)threadIdx.x;
            float v = i < n ? x[i] : 0.0f;
            u32 k = fkey(v);
            const bool in = i < n && k >= lo && (k & mask) == prefix;
            const u32 bin = in ? (k >> shift) & 255u : 256u;
            const u32 active = __ballot_sync(0xffffffffu, in);
            if (!active) continue;
            const int lane = threadIdx.x & 31;
            if (!mass) {
                if (in) {
                    const u32 peers = __match_any_sync(active, bin);
                    if (lane == __ffs(peers) - 1) atomicAdd(&hist[bin], (unsigned long long)__popc(peers));
                }
            } else {
                // One bin at a time, lowest lane's first: every lane takes part in each sum.
                unsigned long long w =
                    in ? __float2ull_rn(__expf((v - mx) * inv_t) * 4294967296.0f) : 0ull;
                u32 left = active;
                while (left) {
                    const u32 b = __shfl_sync(0xffffffffu, bin, __ffs(left) - 1);
                    const bool mine = in && bin == b;
                    unsigned long long t = mine ? w : 0ull;
#pragma unroll
                    for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
                    if (lane == __ffs(left) - 1) atomicAdd(&hist[b], t);
                    left &= ~__ballot_sync(0xffffffffu, mine);
                }
            }
        }
        __syncthreads();
        if (threadIdx.x < 32) {
            // From the top bin down, the first bin b at which the running total reaches
            // `remaining` (bin 0 if none), and what is left of it there. Lane L holds bins
            // 255 - 8L down to 248 - 8L: a scan over the lanes finds the lane, which walks its 8.
            const int lane = threadIdx.x;
            unsigned long long mine = 0ull;
#pragma unroll
            for (int q = 0; q < 8; q++) mine += hist[255 - 8 * lane - q];
            unsigned long long incl = mine;
#pragma unroll
            for (int o = 1; o < 32; o <<= 1) {
                unsigned long long t = __shfl_up_sync(0xffffffffu, incl, o);
                if (lane >= o) incl += t;
            }
            const u32 hit = __ballot_sync(0xffffffffu, incl >= remaining);
            const int owner = hit ? __ffs(hit) - 1 : 31;
            if (lane == owner) {
                unsigned long long cum = incl - mine;
                int b = 255 - 8 * lane;
                for (; b > 0; b--) {
                    if (cum + hist[b] >= remaining) break;
                    cum += hist[b];
                }
                sh[0] = (u32)b;
                unsigned long long left = remaining > cum ? remaining - cum : 1ull;
                sh[1] = (u32)(left & 0xffffffffu);
                sh[2] = (u32)(left >> 32);
            }
        }
        __syncthreads();
        prefix |= sh[0] << shift;
        mask |= 255u << shift;
        remaining = ((unsigned long long)sh[2] << 32) | sh[1];
        __syncthreads();
    }
    return prefix;
}


// A row's parameters.
struct RowP {
    float t, top_p, min_p, rep;
    u32 top_k, a0, an, nlp, mask;
    unsigned long long seed, counter;
    u32 key;  // sample_key(seed, counter)
};

__device__ __forceinline__ RowP load_row(const u32 *params, int row) {
    const u32 *p = params + (size_t)row * SAMPLE_ROW_WORDS;
    RowP r;
    r.t = __uint_as_float(p[0]);
    r.top_k = p[1];
    r.top_p = __uint_as_float(p[2]);
    r.min_p = __uint_as_float(p[3]);
    r.rep = __uint_as_float(p[4]);
    r.seed = ((unsigned long long)p[6] << 32) | p[5];
    r.counter = ((unsigned long long)p[8] << 32) | p[7];
    r.a0 = p[9];
    r.an = p[10];
    r.nlp = p[11];
    r.mask = p[12];
    r.key = sample_key(r.seed, r.counter);
    return r;
}

// 0 greedy, 1 temperature alone, 2 small top-k (with any top-p, min-p), 3 the whole row.
__device__ __forceinline__ int row_mode(const RowP &r, int width) {
    if (r.t <= 0.0f || r.top_k == 1u || width < 2) return 0;
    bool all_k = r.top_k == 0u || r.top_k >= (u32)width;
    if (all_k && r.top_p >= 1.0f && r.min_p <= 0.0f) return 1;
    if (!all_k && r.top_k <= SAMPLE_CAP) return 2;
    return 3;
}

// Tokens each slice keeps: enough for top-k and for the log-probability alternatives.
__device__ __forceinline__ u32 row_keep(const RowP &r, int mode) {
    u32 c = mode == 2 ? r.top_k : 0u;
    if (r.nlp != SAMPLE_NONE) c = max(c, min(r.nlp, (u32)SAMPLE_TOP));
    return c;
}

__device__ __forceinline__ float gumbel_noise(const RowP &r, u32 tok) {
    return -logf(-logf(sample_uniform(r.key, tok)));
}

extern "C" __global__ void __launch_bounds__(256)
k_sample_part(float *logits, int width, const u32 *params, const u32 *adj, const u32 *masks,
              u32 *info, u32 *cand, int staged) {
    pdl_enter();
    // With `staged`, the slice (after its adjustments) is read once into shared memory and
    // every later pass reads it there.
    extern __shared__ __align__(16) float xs[];
    __shared__ float sv[32];
    __shared__ int si[32];
    __shared__ unsigned long long hist[256];
    __shared__ u32 sh[4];
    __shared__ int cn;
    const int row = blockIdx.x, part = blockIdx.y;
    const RowP r = load_row(params, row);
    const int mode = row_mode(r, width);
    const int chunk = (width + SAMPLE_PARTS - 1) / SAMPLE_PARTS;
    const int b = min(width, part * chunk), e = min(width, b + chunk), n = e - b;
    float *x = logits + (size_t)row * width;
    // 0. This slice's mask: a token whose bit is clear can never be chosen.
    if (r.mask != SAMPLE_NONE) {
        const u32 *m = masks + (size_t)r.mask * ((width + 31) / 32);
        for (int j = b + threadIdx.x; j < e; j += blockDim.x)
            if (!((m[j >> 5] >> (j & 31)) & 1u)) x[j] = (-INFINITY);
        __syncthreads();
    }
    // 1. This slice's adjustments (distinct tokens: no two threads touch one logit).
    for (u32 j = threadIdx.x; j < r.an; j += blockDim.x) {
        const u32 *a = adj + 3 * (size_t)(r.a0 + j);
        u32 tok = a[0];
        if (tok >= (u32)b && tok < (u32)e) {
            float l = x[tok];
            if (a[1]) l = l > 0.0f ? l / r.rep : l * r.rep;
            x[tok] = l + __uint_as_float(a[2]);
        }
    }
    __syncthreads();
    float bv = (-INFINITY);
    int bi = 0x7fffffff;
    const float *xv = x + b;
    // 16-byte loads where the slice starts on a 16-byte boundary (rows and slices a
    // multiple of 4 logits long): four logits in flight per load instead of one. `better`
    // is order-free (largest, then lowest index), so the split does not change the result.
    const int n4 = (((size_t)x & 15) == 0 && (b & 3) == 0) ? n / 4 : 0;
    const float4 *x4 = (const float4 *)(x + b);
    if (staged) {
        float4 *xs4 = (float4 *)xs;
        for (int j = threadIdx.x; j < n4; j += blockDim.x) {
            const float4 v = x4[j];
            xs4[j] = v;
            better(bv, bi, v.x, b + 4 * j);
            better(bv, bi, v.y, b + 4 * j + 1);
            better(bv, bi, v.z, b + 4 * j + 2);
            better(bv, bi, v.w, b + 4 * j + 3);
        }
        for (int j = 4 * n4 + threadIdx.x; j < n; j += blockDim.x) {
            const float v = x[b + j];
            xs[j] = v;
            better(bv, bi, v, b + j);
        }
        xv = xs;
    } else {
        for (int j = threadIdx.x; j < n4; j += blockDim.x) {
            const float4 v = x4[j];
            better(bv, bi, v.x, b + 4 * j);
            better(bv, bi, v.y, b + 4 * j + 1);
            better(bv, bi, v.z, b + 4 * j + 2);
            better(bv, bi, v.w, b + 4 * j + 3);
        }
        for (int j = 4 * n4 + threadIdx.x; j < n; j += blockDim.x) better(bv, bi, xv[j], b + j);
    }
    block_best(bv, bi, sv, si);
    const float pmax = bv;
    u32 *o = info + ((size_t)row * SAMPLE_PARTS + part) * SAMPLE_INFO;
    if (threadIdx.x == 0) {
        o[0] = __float_as_uint(pmax);
        o[1] = (u32)bi;
    }
    if (r.nlp != SAMPLE_NONE) {
        float s = 0.0f;
        for (int j = threadIdx.x; j < n; j += blockDim.x) s += __expf(xv[j] - pmax);
        s = sample_block_sum(s, sv);
        if (threadIdx.x == 0) o[2] = __float_as_uint(s);
    }
    if (mode == 1) {
        // The slice's Gumbel winner; its best token's score bounds it from below.
        float gv = (-INFINITY);
        int gi = 0x7fffffff;
        if (bi != 0x7fffffff) {
            const float bound = pmax / r.t + gumbel_noise(r, (u32)bi);
            const float skip = (bound - GUMBEL_MAX) * r.t;
            for (int j = threadIdx.x; j < n; j += blockDim.x) {
                const float v = xv[j];
                const int i = b + j;
                if (v >= skip && v == v) better(gv, gi, v / r.t + gumbel_noise(r, (u32)i), i);
            }
        }
        block_best(gv, gi, sv, si);
        if (threadIdx.x == 0) {
            o[3] = __float_as_uint(gv);
            o[4] = (u32)gi;
        }
    }
    const u32 keep = row_keep(r, mode);
    if (keep > 0u) {
        u32 lo = (u32)n > keep ? radix_select(xv, n, 0, keep, false, 0.0f, 1.0f, hist, sh) : 0u;
        if (threadIdx.x == 0) cn = 0;
        __syncthreads();
        u32 *c = cand + ((size_t)row * SAMPLE_PARTS + part) * SAMPLE_CAP * 2;
        for (int j = threadIdx.x; j < n; j += blockDim.x) {
            const float v = xv[j];
            const int i = b + j;
            if (fkey(v) >= lo) {
                int slot = atomicAdd(&cn, 1);
                if (slot < SAMPLE_CAP) {
                    c[2 * slot] = __float_as_uint(v);
                    c[2 * slot + 1] = (u32)i;
                }
            }
        }
        __syncthreads();
        if (threadIdx.x == 0) o[5] = (u32)cn;
    }
}


// The bound from top-k, top-p and min-p over the whole row, then Gumbel-max at or above it, in
// one block (the rare cases the slices cannot settle). `mx` is the row's largest logit and
// `greedy` its index. Every thread gets the result.
__device__ int sample_whole_row(const float *x, int width, const RowP &r, float mx, int greedy,
                                unsigned long long *hist, u32 *sh, float *sv, int *si) {
    const float t = r.t, inv_t = 1.0f / t;
    u32 lo = 0;
    if (r.top_k > 0u && r.top_k < (u32)width)
        lo = radix_select(x, width, 0, r.top_k, false, mx, inv_t, hist, sh);
    if (r.top_p < 1.0f) {
        if (threadIdx.x == 0) hist[0] = 0ull;
        __syncthreads();
        unsigned long long mine = 0;
        for (int i = threadIdx.x; i < width; i += blockDim.x) {
            float v = x[i];
            if (fkey(v) >= lo) mine += __float2ull_rn(__expf((v - mx) * inv_t) * 4294967296.0f);
        }
        atomicAdd(&hist[0], mine);
        __syncthreads();
        unsigned long long total = hist[0];
        __syncthreads();
        unsigned long long target = (unsigned long long)ceil((double)r.top_p * (double)total);
        if (target < 1ull) target = 1ull;
        u32 kp = radix_select(x, width, lo, target, true, mx, inv_t, hist, sh);
        lo = kp > lo ? kp : lo;
    }
    if (r.min_p > 0.0f) {
        u32 km = fkey(mx + t * logf(r.min_p));
        lo = km > lo ? km : lo;
    }
    // The most likely token is always a candidate, so its score bounds the winner's from
    // below; a token whose logit / T is more than GUMBEL_MAX under it cannot win.
    const float bound = mx / t + gumbel_noise(r, (u32)greedy);
    const float skip = (bound - GUMBEL_MAX) * t;
    float gv = (-INFINITY);
    int gi = 0x7fffffff;
    for (int i = threadIdx.x; i < width; i += blockDim.x) {
        float v = x[i];
        if (v >= skip && fkey(v) >= lo && v == v) better(gv, gi, v / t + gumbel_noise(r, (u32)i), i);
    }
    block_best(gv, gi, sv, si);
    return gi == 0x7fffffff ? greedy : gi;
}

// The n best log-probabilities of a whole row (thread 0 writes them to o[1..]).
__device__ void top_logprobs_whole_row(const float *x, int width, int n, float lse, u32 *o,
                                       unsigned long long *hist, u32 *sh) {
    __shared__ float cv[SAMPLE_CAND];
    __shared__ int ci[SAMPLE_CAND];
    __shared__ int cn;
    u32 kth = radix_select(x, width, 0, (unsigned long long)n, false, 0.0f, 1.0f, hist, sh);
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

// Whether candidate a comes before candidate b: larger value, then lower index.
// On the keys (a total order, as the host's `total_cmp`), so that a NaN logit still leaves the
// ranks a permutation (float compares would give it and the maximum the same rank).
__device__ __forceinline__ bool before(float va, int ia, float vb, int ib) {
    const u32 ka = fkey(va), kb = fkey(vb);
    return ka > kb || (ka == kb && ia < ib);
}

extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)
k_sample_merge(float *logits, int width, const u32 *params, const u32 *info, const u32 *cand,
               u32 *out, int rows) {
    pdl_enter();
    __shared__ float sv[32];
    __shared__ int si[32];
    __shared__ unsigned long long hist[256];
    __shared__ u32 sh[4];
    __shared__ float uv[SAMPLE_PARTS * SAMPLE_CAP];
    __shared__ int ui[SAMPLE_PARTS * SAMPLE_CAP];
    __shared__ short order[SAMPLE_PARTS * SAMPLE_CAP];
    __shared__ int sm, scut, sover;
    __shared__ float sgmax, slse;
    __shared__ int sgidx;
    const int row = blockIdx.x;
    const RowP r = load_row(params, row);
    const int mode = row_mode(r, width);
    float *x = logits + (size_t)row * width;
    const u32 *inf = info + (size_t)row * SAMPLE_PARTS * SAMPLE_INFO;
    if (threadIdx.x == 0) {
        // The row's largest logit (lowest index on ties), and the softmax normaliser.
        float gm = (-INFINITY);
        int gi = 0x7fffffff;
        for (int p = 0; p < SAMPLE_PARTS; p++)
            better(gm, gi, __uint_as_float(inf[p * SAMPLE_INFO]), (int)inf[p * SAMPLE_INFO + 1]);
        sgmax = gm;
        sgidx = gi == 0x7fffffff ? 0 : gi;
        if (r.nlp != SAMPLE_NONE) {
            double z = 0.0;
            for (int p = 0; p < SAMPLE_PARTS; p++) {
                float pm = __uint_as_float(inf[p * SAMPLE_INFO]);
                if (pm > (-INFINITY))
                    z += (double)__uint_as_float(inf[p * SAMPLE_INFO + 2]) * exp((double)(pm - gm));
            }
            slse = gm + (float)log(z);
        }
        // The union of the slices' kept tokens.
        int m = 0, over = 0;
        u32 keep = row_keep(r, mode);
        if (keep > 0u)
            for (int p = 0; p < SAMPLE_PARTS; p++) {
                int c = (int)inf[p * SAMPLE_INFO + 5];
                if (c > SAMPLE_CAP) over = 1;
                m += min(c, SAMPLE_CAP);
            }
        sm = m;
        sover = over;
    }
    __syncthreads();
    const float mx = sgmax;
    int chosen = sgidx;
    const int m = sm;
    const bool have_union = row_keep(r, mode) > 0u && !sover;
    if (have_union) {
        // Gather the union, then rank it: larger value first, lower index among equals.
        for (int p = 0; p < SAMPLE_PARTS; p++) {
            int c = min((int)inf[p * SAMPLE_INFO + 5], SAMPLE_CAP);
            int off = 0;
            for (int q = 0; q < p; q++) off += min((int)inf[q * SAMPLE_INFO + 5], SAMPLE_CAP);
            const u32 *src = cand + ((size_t)row * SAMPLE_PARTS + p) * SAMPLE_CAP * 2;
            for (int j = threadIdx.x; j < c; j += blockDim.x) {
                uv[off + j] = __uint_as_float(src[2 * j]);
                ui[off + j] = (int)src[2 * j + 1];
            }
        }
        __syncthreads();
        for (int j = threadIdx.x; j < m; j += blockDim.x) {
            int rank = 0;
            for (int q = 0; q < m; q++) rank += before(uv[q], ui[q], uv[j], ui[j]);
            order[rank] = (short)j;
        }
        __syncthreads();
    }
    if (mode == 1) {
        if (threadIdx.x == 0) {
            float gv = (-INFINITY);
            int gi = 0x7fffffff;
            for (int p = 0; p < SAMPLE_PARTS; p++)
                if ((int)inf[p * SAMPLE_INFO + 4] != 0x7fffffff)
                    better(gv, gi, __uint_as_float(inf[p * SAMPLE_INFO + 3]), (int)inf[p * SAMPLE_INFO + 4]);
            if (gi != 0x7fffffff) si[0] = gi; else si[0] = chosen;
        }
        __syncthreads();
        chosen = si[0];
        __syncthreads();
    } else if (mode == 2 && have_union) {
        if (threadIdx.x == 0) {
            // Top-k: every token at or above the k-th largest logit.
            int k = min((int)r.top_k, m);
            float v = uv[order[k - 1]];
            int cut = k;
            while (cut < m && uv[order[cut]] >= v) cut++;
            if (r.top_p < 1.0f) {
                double total = 0.0;
                for (int j = 0; j < cut; j++) total += (double)__expf((uv[order[j]] - mx) / r.t);
                double target = (double)r.top_p * total, acc = 0.0;
                for (int j = 0; j < cut; j++) {
                    acc += (double)__expf((uv[order[j]] - mx) / r.t);
                    if (acc >= target) {
                        float v2 = uv[order[j]];
                        int c2 = j + 1;
                        while (c2 < cut && uv[order[c2]] >= v2) c2++;
                        cut = c2;
                        break;
                    }
                }
            }
            if (r.min_p > 0.0f) {
                float lowb = mx + r.t * logf(r.min_p);
                int c3 = 0;
                while (c3 < cut && uv[order[c3]] >= lowb) c3++;
                cut = max(c3, 1);
            }
            scut = cut;
        }
        __syncthreads();
        float gv = (-INFINITY);
        int gi = 0x7fffffff;
        for (int j = threadIdx.x; j < scut; j += blockDim.x) {
            int q = order[j];
            better(gv, gi, uv[q] / r.t + gumbel_noise(r, (u32)ui[q]), ui[q]);
        }
        block_best(gv, gi, sv, si);
        if (gi != 0x7fffffff) chosen = gi;
    } else if (mode != 0) {
        chosen = sample_whole_row(x, width, r, mx, chosen, hist, sh, sv, si);
    }
    if (threadIdx.x == 0) out[row] = (u32)chosen;

    // Log-probabilities at temperature 1 after the adjustments.
    if (r.nlp == SAMPLE_NONE) return;
    const float lse = slse;
    u32 *o = out + rows + (size_t)row * (1 + 2 * SAMPLE_TOP);
    if (threadIdx.x == 0) o[0] = __float_as_uint(x[chosen] - lse);
    int n = min(min((int)r.nlp, SAMPLE_TOP), width);
    if (n == 0) return;
    if (have_union) {
        if (threadIdx.x == 0)
            for (int j = 0; j < n && j < m; j++) {
                o[1 + 2 * j] = (u32)ui[order[j]];
                o[2 + 2 * j] = __float_as_uint(uv[order[j]] - lse);
            }
        return;
    }
    top_logprobs_whole_row(x, width, n, lse, o, hist, sh);
}
