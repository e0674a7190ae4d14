// All-pairs swarm empathy on the GPU: the CUDA port of the inner loop of `batch::swarm_attention`.
//
// One thread computes one empathy (observer i, target j): the theory-of-mind anneal of a copy of
// agent j, then overlap, energy error, magnetization error and the weighted score. One block serves
// one target j for up to blockDim.x observers, so j's couplings, fields and starting state are
// loaded once per block.
//
// The results are bit-identical to the CPU path because every floating-point step is the same IEEE
// operation in the same order as its Rust original (named beside it), and the host compiles this
// file with --fmad=false so no multiply-add is contracted. The random words are Philox4x32-10 with
// the CPU's keys and counters, `exp_det` uses only + - *, and the per-step inverse temperatures and
// acceptance floors come from the CPU (`anneal::beta`, `anneal::acceptance_floor`) as a table.
// The f64 constants are written as bit patterns; a CPU test (`rng::tests`) checks them against the
// Rust ones.

typedef unsigned int u32;
typedef unsigned long long u64;

#define KILN_F64(bits) __longlong_as_double((long long)(bits##ull))

// rng.rs: Philox multipliers and Weyl key increments, and derive_seed's counter tag.
#define KILN_M0 0xD2511F53u
#define KILN_M1 0xCD9E8D57u
#define KILN_W0 0x9E3779B9u
#define KILN_W1 0xBB67AE85u
#define KILN_DERIVE_TAG_LO 0x00000001u
#define KILN_DERIVE_TAG_HI 0x5EED0000u

// rng.rs: exp_det's constants.
#define KILN_INV_LN2 KILN_F64(0x3FF71547652B82FE)
#define KILN_LN2_HI KILN_F64(0x3FE62E42FEE00000)
#define KILN_LN2_LO KILN_F64(0x3DEA39EF35793C76)
#define KILN_ROUND_MAGIC KILN_F64(0x4338000000000000)
#define KILN_EXP_MAX KILN_F64(0x40862E3D70A3D70A)
#define KILN_EXP_MIN KILN_F64(0xC08749999999999A)
#define KILN_C2 KILN_F64(0x3FE0000000000000)
#define KILN_C3 KILN_F64(0x3FC5555555555555)
#define KILN_C4 KILN_F64(0x3FA5555555555555)
#define KILN_C5 KILN_F64(0x3F81111111111111)
#define KILN_C6 KILN_F64(0x3F56C16C16C16C17)
#define KILN_C7 KILN_F64(0x3F2A01A01A01A01A)
#define KILN_C8 KILN_F64(0x3EFA01A01A01A01A)
#define KILN_C9 KILN_F64(0x3EC71DE3A556C734)
#define KILN_C10 KILN_F64(0x3E927E4FB7789F5C)
#define KILN_C11 KILN_F64(0x3E5AE64567F544E4)
#define KILN_C12 KILN_F64(0x3E21EED8EFF8D898)
#define KILN_C13 KILN_F64(0x3DE6124613A86D09)
// rng.rs: unit_f64's scale 2^-32.
#define KILN_INV_2_32 KILN_F64(0x3DF0000000000000)
// anneal.rs: accept's margin 1e-9, and 1.0 + 1e-9 as rustc folds it.
#define KILN_MARGIN KILN_F64(0x3E112E0BE826D695)
#define KILN_ONE_PLUS_MARGIN KILN_F64(0x3FF000000044B830)

// rng.rs: philox4x32_10.
__device__ __forceinline__ uint4 philox(uint4 c, u32 k0, u32 k1) {
#pragma unroll
    for (int round = 0; round < 10; ++round) {
        if (round > 0) {
            k0 += KILN_W0;
            k1 += KILN_W1;
        }
        const u32 hi0 = __umulhi(KILN_M0, c.x);
        const u32 lo0 = KILN_M0 * c.x;
        const u32 hi1 = __umulhi(KILN_M1, c.z);
        const u32 lo1 = KILN_M1 * c.z;
        c = make_uint4(hi1 ^ c.y ^ k0, lo1, hi0 ^ c.w ^ k1, lo0);
    }
    return c;
}

// rng.rs: scale_pow2.
__device__ __forceinline__ double scale_pow2(double p, int k) {
    if (k >= -1021 && k <= 1022) {
        return p * __longlong_as_double((long long)(k + 1023) << 52);
    } else if (k > 1022) {
        return p * __longlong_as_double((long long)(k - 1 + 1023) << 52) * 2.0;
    } else {
        return p * __longlong_as_double((long long)(k + 1000 + 1023) << 52) *
               __longlong_as_double(23ll << 52);
    }
}

// rng.rs: exp_det.
__device__ __noinline__ double exp_det(double x) {
    if (isnan(x)) {
        return x;
    }
    if (x > KILN_EXP_MAX) {
        return __longlong_as_double(0x7FF0000000000000ll);
    }
    if (x < KILN_EXP_MIN) {
        return 0.0;
    }
    const double k = (x * KILN_INV_LN2 + KILN_ROUND_MAGIC) - KILN_ROUND_MAGIC;
    const double r = (x - k * KILN_LN2_HI) - k * KILN_LN2_LO;
    const double r2 = r * r;
    const double r4 = r2 * r2;
    const double r8 = r4 * r4;
    const double a0 = KILN_C2 + KILN_C3 * r;
    const double a1 = KILN_C4 + KILN_C5 * r;
    const double a2 = KILN_C6 + KILN_C7 * r;
    const double a3 = KILN_C8 + KILN_C9 * r;
    const double a4 = KILN_C10 + KILN_C11 * r;
    const double a5 = KILN_C12 + KILN_C13 * r;
    const double b0 = a0 + a1 * r2;
    const double b1 = a2 + a3 * r2;
    const double b2 = a4 + a5 * r2;
    const double q = (b0 + b1 * r4) + b2 * r8;
    const double p = 1.0 + (r + r2 * q);
    return scale_pow2(p, (int)k);
}

// anneal.rs: accept (the Metropolis decision with cheap bounds before the exponential).
__device__ __forceinline__ bool accept(double de, double beta, double floor_, double u) {
    const double x = beta * de;
    const double series = 1.0 + x * (1.0 + x * (KILN_C2 + x * (KILN_C3 + x * KILN_C4)));
    const bool sure_yes = (de <= 0.0) | (u < floor_) | (u < (1.0 - x) - KILN_MARGIN);
    const bool sure_no = u * series > KILN_ONE_PLUS_MARGIN;
    if (sure_yes | sure_no) {
        return sure_yes;
    }
    return u < exp_det(-x);
}

// system.rs: dot (four accumulators, then the tail, summed in a fixed order) of the spins (+-1,
// stored as bytes at stride `ss`) with a vector `v` at stride `vs`.
__device__ __forceinline__ double dot_spins(const signed char* s, u32 ss, const double* v, u32 vs,
                                            u32 n) {
    double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0;
    u32 l = 0;
    for (; l + 4 <= n; l += 4) {
        a0 += (s[l * ss] > 0 ? 1.0 : -1.0) * v[l * vs];
        a1 += (s[(l + 1) * ss] > 0 ? 1.0 : -1.0) * v[(l + 1) * vs];
        a2 += (s[(l + 2) * ss] > 0 ? 1.0 : -1.0) * v[(l + 2) * vs];
        a3 += (s[(l + 3) * ss] > 0 ? 1.0 : -1.0) * v[(l + 3) * vs];
    }
    double tail = 0.0;
    for (; l < n; ++l) {
        tail += (s[l * ss] > 0 ? 1.0 : -1.0) * v[l * vs];
    }
    return ((a0 + a1) + (a2 + a3)) + tail;
}

// Shared by both kernels. SHARED: j's data and the per-thread state live in shared memory;
// otherwise in global memory (`scratch`, one region per block), for systems too large for it.
//
// Per-thread state: local fields (f64) and spins (bytes), element l of thread t at [l * T + t], so
// a warp's accesses to one element are consecutive.
template <bool SHARED>
__device__ __forceinline__ void swarm_body(
    u32 k, u32 n, u32 steps, u64 seed, u32 j0, const double* __restrict__ couplings,
    const u32* __restrict__ class_of, const double* __restrict__ sim, u32 classes,
    const double* __restrict__ fields, const signed char* __restrict__ tspins,
    const double* __restrict__ tlocal, const double* __restrict__ tenergy,
    const double* __restrict__ tmsum, const double* __restrict__ betas,
    const double* __restrict__ floors, double w_overlap, double w_energy, double w_coupling,
    double w_mag, double* __restrict__ scores, unsigned char* __restrict__ scratch) {
    extern __shared__ __align__(16) unsigned char smem[];
    const u32 T = blockDim.x;
    const u32 tid = threadIdx.x;
    const u32 i = blockIdx.x * T + tid;
    const u32 j = j0 + blockIdx.y;
    const double* Jg = couplings + (size_t)class_of[j] * n * n;

    const double* J;
    u32 js;  // row stride of J
    const double* h;
    const signed char* ts;
    double* loc;
    signed char* sp;
    if (SHARED) {
        js = n | 1u;  // an odd stride spreads the rows that different threads read over the banks
        double* Js = (double*)smem;
        double* hs = Js + (size_t)n * js;
        double* locs = hs + n;
        signed char* tss = (signed char*)(locs + (size_t)n * T);
        signed char* sps = tss + n;
        for (u32 x = tid; x < n * n; x += T) {
            Js[(x / n) * js + x % n] = Jg[x];
        }
        for (u32 x = tid; x < n; x += T) {
            hs[x] = fields[(size_t)j * n + x];
            tss[x] = tspins[(size_t)j * n + x];
        }
        __syncthreads();
        J = Js;
        h = hs;
        ts = tss;
        loc = locs + tid;
        sp = sps + tid;
    } else {
        js = n;
        J = Jg;
        h = fields + (size_t)j * n;
        ts = tspins + (size_t)j * n;
        const size_t block = (size_t)blockIdx.y * gridDim.x + blockIdx.x;
        double* base = (double*)(scratch + block * (size_t)T * n * 9);
        loc = base + tid;
        sp = (signed char*)(base + (size_t)n * T) + tid;
    }
    if (i >= k || i == j) {
        return;
    }

    // empathy.rs: empathy_prepared loads the target's prepared state.
    const double* tl = tlocal + (size_t)j * n;
    for (u32 l = 0; l < n; ++l) {
        loc[l * T] = tl[l];
        sp[l * T] = ts[l];
    }
    double msum = tmsum[j];

    // batch.rs: pair_seed = derive_seed(seed, i, j); its two low words are the anneal's key.
    const uint4 d = philox(make_uint4(i, j, KILN_DERIVE_TAG_LO, KILN_DERIVE_TAG_HI), (u32)seed,
                           (u32)(seed >> 32));
    const u32 key0 = d.x;
    const u32 key1 = d.y;

    // anneal.rs: metropolis. Proposal p reads word p % 4 of block p / 4 of stream 0.
    const u32 total = steps * 10u;
    u32 t = 0;
    u32 left = 10;
    double b = steps > 0 ? betas[0] : 0.0;
    double fl = steps > 0 ? floors[0] : 0.0;
    for (u32 blk = 0; blk * 4u < total; ++blk) {
        const uint4 w4 = philox(make_uint4(blk, 0u, 0u, 0u), key0, key1);
#pragma unroll
        for (u32 q = 0; q < 4; ++q) {
            if (blk * 4u + q >= total) {
                break;
            }
            const u32 w = q == 0 ? w4.x : q == 1 ? w4.y : q == 2 ? w4.z : w4.w;
            // rng.rs: index_and_unit.
            const u64 p = (u64)w * n;
            const u32 idx = (u32)(p >> 32);
            const double u = ((double)(u32)p + 0.5) * KILN_INV_2_32;
            const signed char si = sp[idx * T];
            const double s = si > 0 ? 1.0 : -1.0;
            const double de = (2.0 * s) * (loc[idx * T] + h[idx]);
            if (accept(de, b, fl, u)) {
                const double dd = -2.0 * s;
                sp[idx * T] = (signed char)(-si);
                const double* row = J + (size_t)idx * js;
                for (u32 l = 0; l < n; ++l) {
                    loc[l * T] += dd * row[l];
                }
                msum += dd;
            }
            if (--left == 0) {
                left = 10;
                ++t;
                if (t < steps) {
                    b = betas[t];
                    fl = floors[t];
                }
            }
        }
    }

    // empathy.rs: empathy_prepared's observables, then Weights::score.
    // anneal.rs: energy_from_local = -1/2 dot(s, local) - dot(h, s).
    const double e_pred = -0.5 * dot_spins(sp, T, loc, T, n) - dot_spins(sp, T, h, 1, n);
    u32 equal = 0;
    for (u32 l = 0; l < n; ++l) {
        equal += sp[l * T] == ts[l] ? 1u : 0u;
    }
    const double share = (double)equal / (double)n;
    const double ov = fmax(share, (double)(n - equal) / (double)n);
    const double e_b = tenergy[j];
    const double energy_error = fabs(e_pred - e_b) / fmax(fabs(e_b), 1.0);
    const double m_pred = msum / (double)n;
    const double m_b = tmsum[j] / (double)n;
    const double mag_error = fabs(m_pred - m_b);
    const double sim_ij = sim[(size_t)class_of[i] * classes + class_of[j]];
    double score = w_overlap * ov + w_energy * fmax(1.0 - energy_error, 0.0) +
                   w_coupling * sim_ij + w_mag * (1.0 - fmin(mag_error, 1.0));
    if (score < 0.0) {
        score = 0.0;
    }
    if (score > 1.0) {
        score = 1.0;
    }
    scores[(size_t)i * k + j] = score;
}

#define KILN_SWARM_PARAMS                                                                        \
    u32 k, u32 n, u32 steps, u64 seed, u32 j0, const double *__restrict__ couplings,             \
        const u32 *__restrict__ class_of, const double *__restrict__ sim, u32 classes,           \
        const double *__restrict__ fields, const signed char *__restrict__ tspins,               \
        const double *__restrict__ tlocal, const double *__restrict__ tenergy,                   \
        const double *__restrict__ tmsum, const double *__restrict__ betas,                      \
        const double *__restrict__ floors, double w_overlap, double w_energy, double w_coupling, \
        double w_mag, double *__restrict__ scores, unsigned char *__restrict__ scratch
#define KILN_SWARM_ARGS                                                                          \
    k, n, steps, seed, j0, couplings, class_of, sim, classes, fields, tspins, tlocal, tenergy,   \
        tmsum, betas, floors, w_overlap, w_energy, w_coupling, w_mag, scores, scratch

// Grid: x covers the observers in blocks of blockDim.x, y the targets j0 .. j0 + gridDim.y.
extern "C" __global__ void __launch_bounds__(256) swarm_empathy_shared(KILN_SWARM_PARAMS) {
    swarm_body<true>(KILN_SWARM_ARGS);
}

extern "C" __global__ void __launch_bounds__(256) swarm_empathy_global(KILN_SWARM_PARAMS) {
    swarm_body<false>(KILN_SWARM_ARGS);
}
