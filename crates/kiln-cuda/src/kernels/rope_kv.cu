// ---- rotary embedding and the KV cache -------------------------------------------------------

// The rotated value of element d (of a head of hd values, the first rd rotated) at position pos,
// with the bias hb (when given) added first.
__device__ __forceinline__ float rope_at(const float *h, int d, int rd, int interleaved,
                                         const float *inv_freq, float pos,
                                         const float *hb = nullptr) {
    if (d >= rd) return h[d] + (hb ? hb[d] : 0.0f);
    int i, a, b;
    bool first;
    if (interleaved) {
        i = d >> 1; a = d & ~1; b = a + 1; first = (d & 1) == 0;
    } else {
        int half = rd >> 1;
        first = d < half; i = first ? d : d - half; a = i; b = i + half;
    }
    float s, c;
    sincosf(pos * inv_freq[i], &s, &c);
    float x0 = h[a], x1 = h[b];
    if (hb) { x0 += hb[a]; x1 += hb[b]; }
    return first ? x0 * c - x1 * s : x0 * s + x1 * c;
}

__device__ __forceinline__ size_t kv_slot(const Meta &m, int row, int layer, int n_layers, int bs,
                                          int kvd, int which, u32 pos) {
    u32 seq = m.row_seq[row];
    u32 blk = m.blocks[m.seq_blk[seq] + pos / bs];
    return ((((size_t)blk * n_layers + layer) * 2 + which) * bs + pos % bs) * kvd;
}

// Writes each row's k (rotated when rope_k) and v into the pool at the row's position. With
// `bias` (q | k | v, the fused projection's), adds it to k and v on the way and to the row's
// q_width values of q in place, for the attention kernel that follows.
extern "C" __global__ void k_kv_write(const float *k, int k_stride, const float *v, int v_stride,
                                      const u32 *meta, int max_t, u16 *pool, int layer,
                                      int n_layers, int bs, int kvd, int hd, int rd,
                                      int interleaved, const float *inv_freq, int rope_k,
                                      float *q, int q_stride, int q_width, const float *bias) {
    pdl_enter();
    Meta m = meta_at(meta, max_t);
    int row = blockIdx.x;
    u32 pos = m.row_pos[row];
    const float *kr = k + (size_t)row * k_stride;
    const float *vr = v + (size_t)row * v_stride;
    u16 *kd = pool + kv_slot(m, row, layer, n_layers, bs, kvd, 0, pos);
    u16 *vd = pool + kv_slot(m, row, layer, n_layers, bs, kvd, 1, pos);
    const float *kb = bias ? bias + q_width : nullptr;
    const float *vb = bias ? bias + q_width + kvd : nullptr;
    for (int e = threadIdx.x; e < kvd; e += blockDim.x) {
        int h = e / hd, d = e % hd;
        float kv = rope_k ? rope_at(kr + h * hd, d, rd, interleaved, inv_freq, (float)pos,
                                    kb ? kb + h * hd : nullptr)
                          : kr[e] + (kb ? kb[e] : 0.0f);
        kd[e] = f2h(kv);
        vd[e] = f2h(vr[e] + (vb ? vb[e] : 0.0f));
    }
    if (bias) {
        float *qr = q + (size_t)row * q_stride;
        for (int e = threadIdx.x; e < q_width; e += blockDim.x) qr[e] += bias[e];
    }
}

// In-place rotary embedding of `heads` heads per row (the separate-op path).
extern "C" __global__ void k_rope(float *x, int stride, int heads, const u32 *meta, int max_t,
                                  int hd, int rd, int interleaved, const float *inv_freq) {
    pdl_enter();
    Meta m = meta_at(meta, max_t);
    int row = blockIdx.x;
    float pos = (float)m.row_pos[row];
    int half = rd >> 1;
    for (int e = threadIdx.x; e < heads * half; e += blockDim.x) {
        int h = e / half, i = e % half;
        float *hp = x + (size_t)row * stride + h * hd;
        int a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + half;
        float s, c;
        sincosf(pos * inv_freq[i], &s, &c);
        float x0 = hp[a], x1 = hp[b];
        hp[a] = x0 * c - x1 * s;
        hp[b] = x0 * s + x1 * c;
    }
}

