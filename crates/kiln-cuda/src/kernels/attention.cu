// ---- attention over the paged cache ----------------------------------------------------------
//
// Each attention kernel writes its output as f32 to `out`, or, when `out_h` is given, as f16 to
// `out_h` (same layout), the input of the output projection's matrix product.
__device__ __forceinline__ void put_out(float *out, u16 *out_h, size_t i, float v) {
    if (out_h) out_h[i] = f2h(v);
    else out[i] = v;
}

// With `txq` (decode of one row, the next product's weights read in place), the head's output
// is also rounded to bytes for that product, as k_quant_x would round it without a norm: groups
// of 16 values inside the head (hd % 16 == 0), group (h * hd + d) / 16 of the row's n_heads * hd
// values. Called by every thread of the block for the same d0 (a multiple of 32), with this
// thread's value of dim d0 + threadIdx.x (anything past hd: not written); whole warps past hd
// skip it.
__device__ __forceinline__ void round_out(u32 *txq, int n_heads, int hd, int h, int d0, float v) {
    if (!txq || d0 + (int)(threadIdx.x & ~31u) >= hd) return;
    const int d = d0 + threadIdx.x;
    quant_group16(v, 1.0f, (h * hd + d) >> 4, n_heads * hd, txq, d < hd);
}

// Decode passes (one new position per row) skip k_kv_write: the decode kernels take the row's
// new k and v (`kin`, `vin`, rows of the given strides; rotated here when rope_q, with `bias`
// (q | k | v, q_width values of q) added first, as k_kv_write would) for KV head kvh, as f16
// into kcur / vcur, which they read in place of the cache at the row's own position, and
// the block given `store` writes them into the cache for the passes that follow.
__device__ __forceinline__ void new_kv(const float *kin, int k_stride, const float *vin,
                                       int v_stride, const float *bias, int q_width, int row,
                                       int kvh, int kvd, int hd, int rd, int interleaved,
                                       const float *inv_freq, int rope, u32 pos, u16 *kcur,
                                       u16 *vcur, bool store, u16 *pool, const Meta &m,
                                       int layer, int n_layers, int bs) {
    const float *kr = kin + (size_t)row * k_stride + kvh * hd;
    const float *vr = vin + (size_t)row * v_stride + kvh * hd;
    const float *kb = bias ? bias + q_width + kvh * hd : nullptr;
    const float *vb = bias ? bias + q_width + kvd + kvh * hd : nullptr;
    size_t ks = 0, vs = 0;
    if (store) {
        ks = kv_slot(m, row, layer, n_layers, bs, kvd, 0, pos) + kvh * hd;
        vs = kv_slot(m, row, layer, n_layers, bs, kvd, 1, pos) + kvh * hd;
    }
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float kv = rope ? rope_at(kr, d, rd, interleaved, inv_freq, (float)pos, kb)
                        : kr[d] + (kb ? kb[d] : 0.0f);
        u16 kh = f2h(kv), vh = f2h(vr[d] + (vb ? vb[d] : 0.0f));
        kcur[d] = kh;
        vcur[d] = vh;
        if (store) {
            pool[ks + d] = kh;
            pool[vs + d] = vh;
        }
    }
}
//
// Grid (heads, rows, splits), ATT_T threads. Each block takes one split of the row's positions
// 0..=pos with an online softmax; with one split it writes the output, else a partial (max, sum,
// weighted values) that k_attn_combine merges.
#define ATT_T 128
// Pieces of a key (8 values each) whose loads k_attn keeps in flight at once.
#define KU 8
#define MAX_HD 256

// Merges the splits' partials of head h of a row into its output (the block's threads share
// the dims). Reads through L2 (`__ldcg`): other blocks of the same launch may have written them.
// The first warp reads every split's maximum and sum at once (two splits a lane: splits <= 64)
// and leaves each split's weight e^(max_s - max) in shared memory; then each dim's thread reads
// its value of every split, four splits' loads in flight at a time, and sums them in split
// order, as does each thread for the sum of the weights: the same operations in the same order
// as one split after another, without a round trip to L2 for each split. blockDim >= 32.
__device__ void combine_splits(const float *part, int n_heads, int hd, int splits, float *out,
                               int out_stride, u16 *out_h, int h, int row, u32 *txq) {
    __shared__ float cw[64], cl[64];
    const float *pp = part + ((size_t)row * n_heads + h) * splits * (hd + 2);
    if (threadIdx.x < 32) {
        const int s0 = threadIdx.x, s1 = threadIdx.x + 32;
        const float m0 = s0 < splits ? __ldcg(pp + s0 * (hd + 2)) : (-INFINITY);
        const float m1 = s1 < splits ? __ldcg(pp + s1 * (hd + 2)) : (-INFINITY);
        cl[s0] = s0 < splits ? __ldcg(pp + s0 * (hd + 2) + 1) : 0.0f;
        cl[s1] = s1 < splits ? __ldcg(pp + s1 * (hd + 2) + 1) : 0.0f;
        const float mx = warp_max(fmaxf(m0, m1));
        // An empty split (no positions: max -inf, sum 0, values 0) weighs 0, and adds +0.
        cw[s0] = m0 != (-INFINITY) ? expf(m0 - mx) : 0.0f;
        cw[s1] = m1 != (-INFINITY) ? expf(m1 - mx) : 0.0f;
    }
    __syncthreads();
    for (int d0 = 0; d0 < hd; d0 += blockDim.x) {
        const int d = d0 + threadIdx.x;
        float a = 0.0f, l = 0.0f;
        if (d < hd) {
            const float *pd = pp + 2 + d;
            for (int s0 = 0; s0 < splits; s0 += 4) {
                float v[4];
#pragma unroll
                for (int u = 0; u < 4; u++)
                    v[u] = s0 + u < splits ? __ldcg(pd + (size_t)(s0 + u) * (hd + 2)) : 0.0f;
#pragma unroll
                for (int u = 0; u < 4; u++)
                    if (s0 + u < splits) {
                        l += cl[s0 + u] * cw[s0 + u];
                        a += v[u] * cw[s0 + u];
                    }
            }
            const float il = l > 0.0f ? 1.0f / l : 0.0f;
            a *= il;
            put_out(out, out_h, (size_t)row * out_stride + h * hd + d, a);
        }
        round_out(txq, n_heads, hd, h, d0, a);
    }
}

extern "C" __global__ void __launch_bounds__(ATT_T)
k_attn(const float *q, int q_stride, const u16 *pool, const u32 *meta, int max_t, int layer,
       int n_layers, int bs, int n_heads, int n_kv_heads, int hd, int rd, int interleaved,
       const float *inv_freq, int rope_q, float scale, int splits, float *out, int out_stride,
       float *part, u16 *out_h, const float *kin, int k_stride, const float *vin, int v_stride,
       const float *bias, int q_width, int fuse_kv, u32 *cnt, u32 *txq) {
    __shared__ float qs[MAX_HD];
    __shared__ float p[ATT_T];
    __shared__ const u16 *vptr[ATT_T];
    __shared__ __align__(16) u16 kcur[MAX_HD];
    __shared__ __align__(16) u16 vcur[MAX_HD];
    __shared__ float red[32];
    __shared__ float accs[ATT_T * 8];
    // The pass's metadata (uploaded from the host) and the cache's earlier positions (written
    // by earlier passes) are not written by the kernel before this one, so the block reads its
    // positions' places and starts their keys and values on their way to L2 before waiting.
    Meta m = meta_at(meta, max_t);
    int h = blockIdx.x, row = blockIdx.y, sp = blockIdx.z;
    int kvh = h / (n_heads / n_kv_heads);
    int kvd = n_kv_heads * hd;
    u32 pos = m.row_pos[row];
    int len = (int)pos + 1;
    int chunk = (len + splits - 1) / splits;
    int start = sp * chunk, end = min(len, start + chunk);
    const u32 *bt = m.blocks + m.seq_blk[m.row_seq[row]];
    const bool fused = fuse_kv != 0;
    for (int t = start + threadIdx.x; t < end; t += ATT_T) {
        if (fused && t == (int)pos) continue;
        size_t kb = ((((size_t)bt[t / bs] * n_layers + layer) * 2) * bs + t % bs) * kvd + kvh * hd;
        prefetch_l2(pool + kb, (size_t)hd * 2, 0, 1);
        prefetch_l2(pool + kb + (size_t)bs * kvd, (size_t)hd * 2, 0, 1);
    }
    pdl_enter();
    const float *qr = q + (size_t)row * q_stride + h * hd;
    const float *qb = bias ? bias + h * hd : nullptr;
    for (int d = threadIdx.x; d < hd; d += ATT_T)
        qs[d] = (rope_q ? rope_at(qr, d, rd, interleaved, inv_freq, (float)pos, qb)
                        : qr[d] + (qb ? qb[d] : 0.0f)) * scale;
    if (fused) {
        // The group's first head stores them, in the split that holds the position.
        bool store = h % (n_heads / n_kv_heads) == 0 && start <= (int)pos && (int)pos < end;
        new_kv(kin, k_stride, vin, v_stride, bias, q_width, row, kvh, kvd, hd, rd, interleaved,
               inv_freq, rope_q, pos, kcur, vcur, store, (u16 *)pool, m, layer, n_layers, bs);
    }
    __syncthreads();
    // Values: a position's hd values in pieces of vw (8 when hd % 8 == 0, else 2 or 1), vt
    // threads a position, vg positions at a time: thread (g, pc) sums piece pc of positions
    // g, g + vg, ... into acc, and the groups' sums are added at the end. (vt <= ATT_T: the
    // backend refuses odd head sizes above ATT_T.)
    const int vw = (hd & 7) == 0 ? 8 : (hd & 1) == 0 ? 2 : 1;
    const int vt = hd / vw, vg = ATT_T / vt;
    const int g = threadIdx.x / vt, pc = threadIdx.x % vt;
    const bool vlive = g < vg;
    float mx = (-INFINITY), l = 0.0f;
    float acc[8];
#pragma unroll
    for (int i = 0; i < 8; i++) acc[i] = 0.0f;
    for (int t0 = start; t0 < end; t0 += ATT_T) {
        int t = t0 + threadIdx.x;
        float s = (-INFINITY);
        if (t < end) {
            const u16 *kp = kcur;
            // The row's own position (decode) from kcur / vcur, the others from the cache.
            if (!fused || t != (int)pos) {
                u32 blk = bt[t / bs];
                size_t kb = ((((size_t)blk * n_layers + layer) * 2) * bs + t % bs) * kvd + kvh * hd;
                vptr[threadIdx.x] = pool + kb + (size_t)bs * kvd;
                kp = pool + kb;
            } else {
                vptr[threadIdx.x] = vcur;
            }
            float dot = 0.0f;
            if ((hd & 7) == 0) {
                // KU pieces' loads in flight at a time, summed in order.
                const uint4 *k4 = (const uint4 *)kp;
                const int nk = hd / 8;
                for (int j0 = 0; j0 < nk; j0 += KU) {
                    uint4 kv[KU];
#pragma unroll
                    for (int u = 0; u < KU; u++)
                        if (j0 + u < nk) kv[u] = k4[j0 + u];
#pragma unroll
                    for (int u = 0; u < KU; u++)
                        if (j0 + u < nk) {
                            const int j = j0 + u;
                            const uint4 kk = kv[u];
                            float a, b;
                            h2f2(kk.x, a, b); dot += a * qs[8 * j] + b * qs[8 * j + 1];
                            h2f2(kk.y, a, b); dot += a * qs[8 * j + 2] + b * qs[8 * j + 3];
                            h2f2(kk.z, a, b); dot += a * qs[8 * j + 4] + b * qs[8 * j + 5];
                            h2f2(kk.w, a, b); dot += a * qs[8 * j + 6] + b * qs[8 * j + 7];
                        }
                }
            } else {
                for (int j = 0; j < hd; j++) dot += h2f(kp[j]) * qs[j];
            }
            s = dot;
        }
        float tmax = block_max(s, red);
        float nmx = fmaxf(mx, tmax);
        float e = t < end ? expf(s - nmx) : 0.0f;
        float corr = mx == (-INFINITY) ? 0.0f : expf(mx - nmx);
        p[threadIdx.x] = e;
        float tsum = block_sum(e, red);  // its barriers also publish p[] and vptr[]
        l = l * corr + tsum;
#pragma unroll
        for (int i = 0; i < 8; i++) acc[i] *= corr;
        mx = nmx;
        const int cnt = min(ATT_T, end - t0);
        if (vlive && vw == 8) {
            // Four positions' loads in flight at a time.
            int j = g;
            for (; j + 3 * vg < cnt; j += 4 * vg) {
                uint4 v[4];
#pragma unroll
                for (int u = 0; u < 4; u++) v[u] = ((const uint4 *)vptr[j + u * vg])[pc];
#pragma unroll
                for (int u = 0; u < 4; u++) {
                    const float pu = p[j + u * vg];
                    float a, b;
                    h2f2(v[u].x, a, b); acc[0] += pu * a; acc[1] += pu * b;
                    h2f2(v[u].y, a, b); acc[2] += pu * a; acc[3] += pu * b;
                    h2f2(v[u].z, a, b); acc[4] += pu * a; acc[5] += pu * b;
                    h2f2(v[u].w, a, b); acc[6] += pu * a; acc[7] += pu * b;
                }
            }
            for (; j < cnt; j += vg) {
                const uint4 v = ((const uint4 *)vptr[j])[pc];
                const float pu = p[j];
                float a, b;
                h2f2(v.x, a, b); acc[0] += pu * a; acc[1] += pu * b;
                h2f2(v.y, a, b); acc[2] += pu * a; acc[3] += pu * b;
                h2f2(v.z, a, b); acc[4] += pu * a; acc[5] += pu * b;
                h2f2(v.w, a, b); acc[6] += pu * a; acc[7] += pu * b;
            }
        } else if (vlive) {
            for (int j = g; j < cnt; j += vg) {
                const u16 *vp = vptr[j] + vw * pc;
                acc[0] += p[j] * h2f(vp[0]);
                if (vw == 2) acc[1] += p[j] * h2f(vp[1]);
            }
        }
        __syncthreads();
    }
    // The groups' sums: value d of the head is piece d / vw, element d % vw, of each group.
#pragma unroll
    for (int i = 0; i < 8; i++) accs[threadIdx.x * 8 + i] = vlive ? acc[i] : 0.0f;
    __syncthreads();
    const float il = l > 0.0f ? 1.0f / l : 0.0f;
    float *pp = part + (((size_t)row * n_heads + h) * splits + sp) * (hd + 2);
    for (int d0 = 0; d0 < hd; d0 += ATT_T) {
        const int d = d0 + threadIdx.x;
        float a = 0.0f;
        if (d < hd) {
            for (int k = 0; k < vg; k++) a += accs[(k * vt + d / vw) * 8 + d % vw];
            if (splits == 1) put_out(out, out_h, (size_t)row * out_stride + h * hd + d, a * il);
            else pp[2 + d] = a;
        }
        if (splits == 1) round_out(txq, n_heads, hd, h, d0, a * il);
    }
    if (splits == 1) return;
    if (threadIdx.x == 0) { pp[0] = mx; pp[1] = l; }
    if (!cnt) return;  // k_attn_combine merges the splits
    // The last of the (row, head)'s splits to finish merges them (in split order, so the
    // result does not depend on which one that is) and resets the count for the next launch.
    __shared__ int last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        u32 *c = cnt + (size_t)row * n_heads + h;
        last = atomicAdd(c, 1u) == (u32)splits - 1;
        if (last) *c = 0u;
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    combine_splits(part, n_heads, hd, splits, out, out_stride, out_h, h, row, txq);
}

// Decode attention, one block per (KV head, row, split) for all the query heads that share the
// KV head (grouped-query attention): keys and values are staged once in shared memory, GQ_TK
// positions at a time (the next tile's loads in flight while one is used), and read by every
// head of the group, where k_attn reads them once per query head. Same arguments, partials and
// output as k_attn, except `txq`, which must be null (it rounds no output for the next product:
// it traps otherwise); grid (n_kv_heads, rows, splits). Needs hd % 8 == 0, hd <= GQ_HD, a group of
// at most GQ_MAXG and group * hd <= GQ_T * GQ_ACC (CudaBackend's gqa_ok).
#define GQ_T 128
#define GQ_TK 32
#define GQ_HD 128
#define GQ_ACC 8
#define GQ_MAXG 16
#define GQ_V (GQ_TK * GQ_HD / 8 / GQ_T)

extern "C" __global__ void __launch_bounds__(GQ_T, 4)
k_attn_gqa(const float *q, int q_stride, const u16 *pool, const u32 *meta, int max_t, int layer,
           int n_layers, int bs, int n_heads, int n_kv_heads, int hd, int rd, int interleaved,
           const float *inv_freq, int rope_q, float scale, int splits, float *out,
           int out_stride, float *part, u16 *out_h, const float *kin, int k_stride,
           const float *vin, int v_stride, const float *bias, int q_width, int fuse_kv,
           u32 *cnt, u32 *txq) {
    if (txq) __trap();
    // Rows of keys and values padded by 8 halves, so that the lanes of a warp reading one row
    // each (16 bytes at the same column) fall in different banks.
    __shared__ __align__(16) u16 ks[GQ_TK][GQ_HD + 8];
    __shared__ __align__(16) u16 vs[GQ_TK][GQ_HD + 8];
    __shared__ float qs[GQ_MAXG * GQ_HD];
    __shared__ float ps[GQ_MAXG][GQ_TK];
    __shared__ float corr_s[GQ_MAXG], mx_s[GQ_MAXG], l_s[GQ_MAXG];
    __shared__ __align__(16) u16 kcur[GQ_HD];
    __shared__ __align__(16) u16 vcur[GQ_HD];
    Meta m = meta_at(meta, max_t);
    const int kvh = blockIdx.x, row = blockIdx.y, sp = blockIdx.z;
    const int group = n_heads / n_kv_heads;
    const int kvd = n_kv_heads * hd;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const u32 pos = m.row_pos[row];
    const int len = (int)pos + 1;
    const int chunk = (len + splits - 1) / splits;
    const int start = sp * chunk, end = min(len, start + chunk);
    const u32 *bt = m.blocks + m.seq_blk[m.row_seq[row]];
    const int vecs = hd / 8;
    // A tile's keys and values, GQ_V 16-byte pieces of each per thread.
    uint4 kreg[GQ_V], vreg[GQ_V];
#define GQ_FETCH(T0)                                                                         \
    do {                                                                                     \
        const int n16 = min(GQ_TK, end - (T0)) * vecs;                                       \
        _Pragma("unroll") for (int i = 0; i < GQ_V; i++) {                                   \
            int e = threadIdx.x + i * GQ_T;                                                  \
            if (e < n16) {                                                                   \
                int t = (T0) + e / vecs, c = e % vecs;                                       \
                size_t kb = ((((size_t)bt[t / bs] * n_layers + layer) * 2) * bs + t % bs) *  \
                                kvd + kvh * hd;                                              \
                kreg[i] = ((const uint4 *)(pool + kb))[c];                                   \
                vreg[i] = ((const uint4 *)(pool + kb + (size_t)bs * kvd))[c];                \
            }                                                                                \
        }                                                                                    \
    } while (0)
    // At decode the first tile's keys and values (the cache's earlier positions, written by
    // earlier passes; the row's own comes from kcur / vcur) and the pass's metadata are read
    // before waiting for the kernel before; in other passes k_kv_write, the kernel before,
    // wrote them.
    if (fuse_kv != 0 && start < end) GQ_FETCH(start);
    pdl_enter();
    if (fuse_kv == 0 && start < end) GQ_FETCH(start);
    const float *qr = q + (size_t)row * q_stride + (size_t)kvh * group * hd;
    const float *qb = bias ? bias + (size_t)kvh * group * hd : nullptr;
    for (int e = threadIdx.x; e < group * hd; e += GQ_T) {
        int g = e / hd, d = e % hd;
        qs[e] = (rope_q ? rope_at(qr + g * hd, d, rd, interleaved, inv_freq, (float)pos,
                                  qb ? qb + g * hd : nullptr)
                        : qr[e] + (qb ? qb[e] : 0.0f)) * scale;
    }
    // The row's own position: in the split that holds it, from kcur / vcur (stored here).
    const bool own = fuse_kv != 0 && start <= (int)pos && (int)pos < end;
    if (own)
        new_kv(kin, k_stride, vin, v_stride, bias, q_width, row, kvh, kvd, hd, rd, interleaved,
               inv_freq, rope_q, pos, kcur, vcur, true, (u16 *)pool, m, layer, n_layers, bs);
    // Softmax state of head g, kept by warp g % 4 (lane-uniform).
    float mx[GQ_MAXG / 4], l[GQ_MAXG / 4];
#pragma unroll
    for (int i = 0; i < GQ_MAXG / 4; i++) { mx[i] = (-INFINITY); l[i] = 0.0f; }
    // Outputs (g, d) = tid, tid + GQ_T, ... of the group's heads; og < 0 past the last.
    float acc[GQ_ACC];
    int og[GQ_ACC], od[GQ_ACC];
#pragma unroll
    for (int i = 0; i < GQ_ACC; i++) {
        int o = threadIdx.x + i * GQ_T;
        acc[i] = 0.0f;
        og[i] = o < group * hd ? o / hd : -1;
        od[i] = o % hd;
    }
    for (int t0 = start; t0 < end; t0 += GQ_TK) {
        const int cnt = min(GQ_TK, end - t0);
        __syncthreads();  // the previous tile's readers are done (and qs is written)
#pragma unroll
        for (int i = 0; i < GQ_V; i++) {
            int e = threadIdx.x + i * GQ_T;
            if (e < cnt * vecs) {
                int j = e / vecs, c = e % vecs;
                bool cur = own && t0 + j == (int)pos;
                *(uint4 *)&ks[j][8 * c] = cur ? *(const uint4 *)&kcur[8 * c] : kreg[i];
                *(uint4 *)&vs[j][8 * c] = cur ? *(const uint4 *)&vcur[8 * c] : vreg[i];
            }
        }
        __syncthreads();
        if (t0 + GQ_TK < end) GQ_FETCH(t0 + GQ_TK);
        // Scores: warp w takes heads w, w + 4, ...; lane j position t0 + j.
#pragma unroll
        for (int gi = 0; gi < GQ_MAXG / 4; gi++) {
            const int g = w + 4 * gi;
            if (g >= group) continue;
            float s = (-INFINITY);
            if (lane < cnt) {
                const float *qg = qs + g * hd;
                float d0 = 0.0f, d1 = 0.0f;
                for (int c = 0; c < vecs; c++) {
                    uint4 kk = *(const uint4 *)&ks[lane][8 * c];
                    float a, b;
                    h2f2(kk.x, a, b); d0 += a * qg[8 * c] + b * qg[8 * c + 1];
                    h2f2(kk.y, a, b); d1 += a * qg[8 * c + 2] + b * qg[8 * c + 3];
                    h2f2(kk.z, a, b); d0 += a * qg[8 * c + 4] + b * qg[8 * c + 5];
                    h2f2(kk.w, a, b); d1 += a * qg[8 * c + 6] + b * qg[8 * c + 7];
                }
                s = d0 + d1;
            }
            float nmx = fmaxf(mx[gi], warp_max(s));
            float e = lane < cnt ? expf(s - nmx) : 0.0f;
            float c = mx[gi] == (-INFINITY) ? 0.0f : expf(mx[gi] - nmx);
            l[gi] = l[gi] * c + warp_sum(e);
            mx[gi] = nmx;
            ps[g][lane] = e;
            if (lane == 0) corr_s[g] = c;
        }
        __syncthreads();
#pragma unroll
        for (int i = 0; i < GQ_ACC; i++)
            if (og[i] >= 0) acc[i] *= corr_s[og[i]];
        for (int j = 0; j < cnt; j++) {
#pragma unroll
            for (int i = 0; i < GQ_ACC; i++)
                if (og[i] >= 0) acc[i] += ps[og[i]][j] * h2f(vs[j][od[i]]);
        }
    }
#pragma unroll
    for (int gi = 0; gi < GQ_MAXG / 4; gi++) {
        const int g = w + 4 * gi;
        if (g < group && lane == 0) { mx_s[g] = mx[gi]; l_s[g] = l[gi]; }
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < GQ_ACC; i++) {
        const int g = og[i], d = od[i];
        if (g < 0) continue;
        int h = kvh * group + g;
        if (splits == 1) {
            float il = l_s[g] > 0.0f ? 1.0f / l_s[g] : 0.0f;
            put_out(out, out_h, (size_t)row * out_stride + h * hd + d, acc[i] * il);
        } else {
            size_t pi = ((size_t)row * n_heads + h) * splits + sp;
            float *pp = part + pi * (hd + 2);
            if (d == 0) { pp[0] = mx_s[g]; pp[1] = l_s[g]; }
            pp[2 + d] = acc[i];
        }
    }
}

extern "C" __global__ void k_attn_combine(const float *part, int n_heads, int hd, int splits,
                                          float *out, int out_stride, u16 *out_h) {
    pdl_enter();
    combine_splits(part, n_heads, hd, splits, out, out_stride, out_h, blockIdx.x, blockIdx.y,
                   nullptr);
}

// ---- attention for prefill: tiles of query rows ----------------------------------------------
//
// Grid (heads, tiles), 128 threads, dynamic shared memory (see CudaBackend::tile_smem). A tile
// is up to TQ consecutive rows of one sequence at consecutive positions (`tiles` holds each
// tile's first row and row count); keys and values are staged TK positions at a time in shared
// memory and shared by the tile's rows. Thread (r, c) = (tid / 4, tid % 4) keeps row r's output
// dims [c * hd / 4, (c + 1) * hd / 4). Needs hd % 4 == 0 and hd <= 128.
#define TQ 32
#define TK 64

extern "C" __global__ void __launch_bounds__(128)
k_attn_tile(const float *q, int q_stride, const u16 *pool, const u32 *meta, int max_t, int layer,
            int n_layers, int bs, int n_heads, int n_kv_heads, int hd, int rd, int interleaved,
            const float *inv_freq, int rope_q, float scale, const u32 *tiles, float *out,
            int out_stride, u16 *out_h) {
    pdl_enter();
    extern __shared__ float4 sm4[];
    float *sm = (float *)sm4;
    const int hdp = hd + 4;
    float *Qs = sm;               // [TQ][hdp]
    float *Ks = Qs + TQ * hdp;    // [TK][hdp]
    float *Vs = Ks + TK * hdp;    // [TK][hd]
    float *Ps = Vs + TK * hd;     // [TQ][TK + 1]
    Meta m = meta_at(meta, max_t);
    int h = blockIdx.x;
    u32 row0 = tiles[2 * blockIdx.y], nrows = tiles[2 * blockIdx.y + 1];
    int kvh = h / (n_heads / n_kv_heads);
    int kvd = n_kv_heads * hd;
    int tid = threadIdx.x;
    for (int e = tid; e < TQ * hd; e += 128) {
        int r = e / hd, d = e % hd;
        float v = 0.0f;
        if ((u32)r < nrows) {
            int row = row0 + r;
            const float *qr = q + (size_t)row * q_stride + h * hd;
            v = (rope_q ? rope_at(qr, d, rd, interleaved, inv_freq, (float)m.row_pos[row]) : qr[d]) *
                scale;
        }
        Qs[r * hdp + d] = v;
    }
    const int r = tid >> 2, c = tid & 3;
    const int dq = hd >> 2, d0 = c * dq;
    float acc[32];
#pragma unroll
    for (int k = 0; k < 32; k++) acc[k] = 0.0f;
    float mx = (-INFINITY), l = 0.0f;
    const bool live = (u32)r < nrows;
    const u32 mypos = live ? m.row_pos[row0 + r] : 0u;
    const u32 lastpos = m.row_pos[row0 + nrows - 1];
    const u32 *bt = m.blocks + m.seq_blk[m.row_seq[row0]];
    for (u32 t0 = 0; t0 <= lastpos; t0 += TK) {
        __syncthreads();
        int cnt = min((int)TK, (int)(lastpos + 1 - t0));
        for (int e = tid; e < TK * hd; e += 128) {
            int j = e / hd, d = e % hd;
            float kv = 0.0f, vv = 0.0f;
            if (j < cnt) {
                u32 t = t0 + j;
                u32 blk = bt[t / bs];
                size_t base = ((((size_t)blk * n_layers + layer) * 2) * bs + t % bs) * kvd + kvh * hd + d;
                kv = h2f(pool[base]);
                vv = h2f(pool[base + (size_t)bs * kvd]);
            }
            Ks[j * hdp + d] = kv;
            Vs[j * hd + d] = vv;
        }
        __syncthreads();
        float s[16];
        float tmax = (-INFINITY);
        const float4 *q4 = (const float4 *)(Qs + r * hdp);
#pragma unroll
        for (int i = 0; i < 16; i++) {
            int j = c + 4 * i;
            const float4 *k4 = (const float4 *)(Ks + j * hdp);
            float dot = 0.0f;
            for (int d = 0; d < (hd >> 2); d++) {
                float4 a = q4[d], b = k4[d];
                dot += a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
            }
            bool ok = live && j < cnt && t0 + j <= mypos;
            s[i] = ok ? dot : (-INFINITY);
            tmax = fmaxf(tmax, s[i]);
        }
        tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, 1));
        tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, 2));
        float nmx = fmaxf(mx, tmax);
        float corr = mx == (-INFINITY) ? 0.0f : expf(mx - nmx);
        float psum = 0.0f;
#pragma unroll
        for (int i = 0; i < 16; i++) {
            float p = s[i] == (-INFINITY) ? 0.0f : expf(s[i] - nmx);
            Ps[r * (TK + 1) + c + 4 * i] = p;
            psum += p;
        }
        psum += __shfl_xor_sync(0xffffffffu, psum, 1);
        psum += __shfl_xor_sync(0xffffffffu, psum, 2);
        l = l * corr + psum;
        mx = nmx;
#pragma unroll
        for (int k = 0; k < 32; k++) acc[k] *= corr;
        __syncwarp();
        for (int j = 0; j < cnt; j++) {
            float p = Ps[r * (TK + 1) + j];
            const float *vr = Vs + j * hd + d0;
#pragma unroll
            for (int k = 0; k < 32; k++)
                if (k < dq) acc[k] += p * vr[k];
        }
    }
    if (live) {
        float il = l > 0.0f ? 1.0f / l : 0.0f;
        size_t o = (size_t)(row0 + r) * out_stride + h * hd + d0;
#pragma unroll
        for (int k = 0; k < 32; k++)
            if (k < dq) put_out(out, out_h, o + k, acc[k] * il);
    }
}

