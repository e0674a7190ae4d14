// ---- attention for prefill on the tensor cores -----------------------------------------------
//
// k_attn_mma##HD: the prefill attention of k_attn_tile (same tiles, same arguments) with both
// products on the tensor cores (mma.sync m16n8k16, f16 operands, f32 sums), as flash
// attention does. Grid (heads, tiles), 128 threads: a tile is up to MMA_Q = 64 consecutive rows
// of one sequence, warp w takes its rows 16w..16w+15. Queries are rotated and rounded to f16
// once, kept in registers as the A operand of S = Q K^T; keys and values are staged MMA_K
// positions at a time in shared memory (f16, as the cache holds them); each warp keeps its
// rows' running maximum and sum (online softmax, base 2) and rounds the probabilities to f16 in
// registers, where the accumulator layout of S is the A operand layout of P V. Lane (g, c) =
// (lane / 4, lane % 4) holds rows g and g + 8 of its warp's 16, and of each 8 columns of S and
// of the output, columns 2c and 2c + 1. Needs sm_80 and hd a multiple of 16 (stamped for 64,
// 96 and 128). Tiles are taken longest first (the last tiles of a sequence see the most keys).
#define MMA_Q 64
#define MMA_K 64

__device__ __forceinline__ u32 ld_u32(const u16 *p) { return *(const u32 *)p; }

template <int HD>
__device__ __forceinline__ void attn_mma_body(const float *q, int q_stride, const u16 *pool,
                                              const u32 *meta, int max_t, int layer,
                                              int n_layers, int bs, int n_heads, int n_kv_heads,
                                              int rd, int interleaved, const float *inv_freq,
                                              int rope_q, float scale, const u32 *tiles,
                                              float *out, int out_stride, u16 *out_h) {
    constexpr int HP = HD + 8;      // a staged row, in halves (16 bytes of padding: no conflicts)
    constexpr int KS = HD / 16;     // k-steps of Q K^T
    constexpr int DT = HD / 8;      // 8-column tiles of the output
    constexpr int V8 = HD / 8;      // 16-byte vectors a row
    // Keys then values; the queries are staged in the keys' half first.
    __shared__ __align__(16) u16 sm[2 * MMA_K * HP];
    u16 *Ks = sm, *Vs = sm + MMA_K * HP;
    pdl_enter();
    const Meta m = meta_at(meta, max_t);
    const int h = blockIdx.x;
    const int tile = gridDim.y - 1 - blockIdx.y;
    const u32 row0 = tiles[2 * tile], nrows = tiles[2 * tile + 1];
    const int kvh = h / (n_heads / n_kv_heads);
    const int kvd = n_kv_heads * HD;
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
    const int g = lane >> 2, c = lane & 3;
    for (int e = tid; e < MMA_Q * HD; e += 128) {
        const int r = e / HD, d = e % HD;
        float v = 0.0f;
        if ((u32)r < nrows) {
            const int row = row0 + r;
            const float *qr = q + (size_t)row * q_stride + h * HD;
            v = rope_q ? rope_at(qr, d, rd, interleaved, inv_freq, (float)m.row_pos[row]) : qr[d];
        }
        Ks[r * HP + d] = f2h(v);
    }
    __syncthreads();
    u32 qa[KS][4];
    {
        const u16 *q0 = Ks + (w * 16 + g) * HP + 2 * c, *q1 = q0 + 8 * HP;
#pragma unroll
        for (int k = 0; k < KS; k++) {
            qa[k][0] = ld_u32(q0 + 16 * k);
            qa[k][1] = ld_u32(q1 + 16 * k);
            qa[k][2] = ld_u32(q0 + 16 * k + 8);
            qa[k][3] = ld_u32(q1 + 16 * k + 8);
        }
    }
    // This lane's two rows' positions (-1: no row, every key masked).
    const int r0 = w * 16 + g, r1 = r0 + 8;
    const int p0 = (u32)r0 < nrows ? (int)m.row_pos[row0 + r0] : -1;
    const int p1 = (u32)r1 < nrows ? (int)m.row_pos[row0 + r1] : -1;
    // The warp's last position, and the tile's.
    const int wlast = (u32)(w * 16) < nrows ? (int)m.row_pos[row0 + min(w * 16 + 15, (int)nrows - 1)] : -1;
    const int lastpos = (int)m.row_pos[row0 + nrows - 1];
    const u32 *bt = m.blocks + m.seq_blk[m.row_seq[row0]];
    const float sl2 = scale * 1.4426950408889634f;
    float o[DT][4];
#pragma unroll
    for (int i = 0; i < DT; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    float mx0 = -INFINITY, mx1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;
    for (int t0 = 0; t0 <= lastpos; t0 += MMA_K) {
        __syncthreads();  // the queries' or the last tile's readers are done
        for (int e = tid; e < MMA_K * V8; e += 128) {
            const int j = e / V8, v = e % V8;
            const int t = t0 + j;
            uint4 kv = make_uint4(0u, 0u, 0u, 0u), vv = kv;
            if (t <= lastpos) {
                const u32 blk = bt[t / bs];
                const size_t base =
                    ((((size_t)blk * n_layers + layer) * 2) * bs + t % bs) * kvd + kvh * HD + v * 8;
                kv = *(const uint4 *)(pool + base);
                vv = *(const uint4 *)(pool + base + (size_t)bs * kvd);
            }
            *(uint4 *)(Ks + j * HP + v * 8) = kv;
            *(uint4 *)(Vs + j * HP + v * 8) = vv;
        }
        __syncthreads();
        if (t0 > wlast) continue;  // every key of this tile is after the warp's rows
        float s[8][4];
#pragma unroll
        for (int n = 0; n < 8; n++) {
            s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
            const u16 *kr = Ks + (n * 8 + g) * HP + 2 * c;
#pragma unroll
            for (int k = 0; k < KS; k++)
                mma16816(s[n], qa[k][0], qa[k][1], qa[k][2], qa[k][3], ld_u32(kr + 16 * k),
                         ld_u32(kr + 16 * k + 8));
        }
        // Mask (key after the row) and scale; the rows' new maxima over the quad.
        float tm0 = -INFINITY, tm1 = -INFINITY;
#pragma unroll
        for (int n = 0; n < 8; n++) {
#pragma unroll
            for (int i = 0; i < 2; i++) {
                const int t = t0 + n * 8 + 2 * c + i;
                s[n][i] = t <= p0 ? s[n][i] * sl2 : -INFINITY;
                s[n][2 + i] = t <= p1 ? s[n][2 + i] * sl2 : -INFINITY;
                tm0 = fmaxf(tm0, s[n][i]);
                tm1 = fmaxf(tm1, s[n][2 + i]);
            }
        }
        tm0 = fmaxf(tm0, __shfl_xor_sync(0xffffffffu, tm0, 1));
        tm0 = fmaxf(tm0, __shfl_xor_sync(0xffffffffu, tm0, 2));
        tm1 = fmaxf(tm1, __shfl_xor_sync(0xffffffffu, tm1, 1));
        tm1 = fmaxf(tm1, __shfl_xor_sync(0xffffffffu, tm1, 2));
        const float n0 = fmaxf(mx0, tm0), n1 = fmaxf(mx1, tm1);
        // Base for the exponentials: 0 while a row has seen no key (all -inf), so no NaN.
        const float b0 = n0 == -INFINITY ? 0.0f : n0, b1 = n1 == -INFINITY ? 0.0f : n1;
        const float c0 = exp2f(mx0 - b0), c1 = exp2f(mx1 - b1);
        mx0 = n0;
        mx1 = n1;
        float ps0 = 0.0f, ps1 = 0.0f;
        u32 pa[8][2];
#pragma unroll
        for (int n = 0; n < 8; n++) {
            const float e0 = exp2f(s[n][0] - b0), e1 = exp2f(s[n][1] - b0);
            const float e2 = exp2f(s[n][2] - b1), e3 = exp2f(s[n][3] - b1);
            ps0 += e0 + e1;
            ps1 += e2 + e3;
            pa[n][0] = pack_h2(e0, e1);
            pa[n][1] = pack_h2(e2, e3);
        }
        l0 = l0 * c0 + ps0;
        l1 = l1 * c1 + ps1;
#pragma unroll
        for (int i = 0; i < DT; i++) {
            o[i][0] *= c0;
            o[i][1] *= c0;
            o[i][2] *= c1;
            o[i][3] *= c1;
        }
        // O += P V: k-step j takes keys 16j..16j+15 (S's column tiles 2j and 2j + 1).
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const u16 *v0 = Vs + (16 * j + 2 * c) * HP + g;
#pragma unroll
            for (int i = 0; i < DT; i++) {
                const u16 *vp = v0 + 8 * i;
                const u32 b0v = (u32)vp[0] | ((u32)vp[HP] << 16);
                const u32 b1v = (u32)vp[8 * HP] | ((u32)vp[9 * HP] << 16);
                mma16816(o[i], pa[2 * j][0], pa[2 * j][1], pa[2 * j + 1][0], pa[2 * j + 1][1],
                         b0v, b1v);
            }
        }
    }
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const float i0 = l0 > 0.0f ? 1.0f / l0 : 0.0f, i1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
#pragma unroll
    for (int i = 0; i < DT; i++) {
        const int d = h * HD + 8 * i + 2 * c;
        if (p0 >= 0) {
            const size_t at = (size_t)(row0 + r0) * out_stride + d;
            put_out(out, out_h, at, o[i][0] * i0);
            put_out(out, out_h, at + 1, o[i][1] * i0);
        }
        if (p1 >= 0) {
            const size_t at = (size_t)(row0 + r1) * out_stride + d;
            put_out(out, out_h, at, o[i][2] * i1);
            put_out(out, out_h, at + 1, o[i][3] * i1);
        }
    }
}

#define ATTN_MMA_KERNEL(HD)                                                                    \
    extern "C" __global__ void __launch_bounds__(128)                                          \
    k_attn_mma##HD(const float *q, int q_stride, const u16 *pool, const u32 *meta, int max_t,  \
                   int layer, int n_layers, int bs, int n_heads, int n_kv_heads, int hd,       \
                   int rd, int interleaved, const float *inv_freq, int rope_q, float scale,    \
                   const u32 *tiles, float *out, int out_stride, u16 *out_h) {                 \
        attn_mma_body<HD>(q, q_stride, pool, meta, max_t, layer, n_layers, bs, n_heads,        \
                          n_kv_heads, rd, interleaved, inv_freq, rope_q, scale, tiles, out,    \
                          out_stride, out_h);                                                  \
    }
ATTN_MMA_KERNEL(64)
ATTN_MMA_KERNEL(96)
ATTN_MMA_KERNEL(128)
