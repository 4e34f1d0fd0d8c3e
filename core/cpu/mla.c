/* mla.c — Multi-head Latent Attention (SPEC.md §3), forward/backward and latent-cache decode.
 *
 * Notation: H query heads, Hk = kv_heads, dn = qk_nope, dr = qk_rope, dqk = dn + dr,
 * dv = v_head_dim, r = kv_lora_rank, rq = q_lora_rank, N = B*T rows.
 * Training (expanded): per kv head K = [k_nope | k_pe] and V are built from kv_b(c) and the
 * shared roped k_pe, then the GQA attention kernel of ops.c runs on them.
 * Generation (absorbed, SPEC §3 "decode absorbs W_UK / W_UV"): the cache holds [c | k_pe] per
 * token; head h's query becomes [W_UK_h^T q_nope | q_pe] and attends to the cache rows directly
 * (one shared "kv head" of width r + dr, values = c); then v_h = W_UV_h ĉ_h. */
#include "mla.h"

#include <math.h>
#include <string.h>

/* Rows of x processed together by zb_mla_step (bounds the decode scratch). */
#define ZB_MLA_STEP_CHUNK 16

/* ---- saved activations (training) ------------------------------------------------------- */
typedef struct {
    float *qa, *qan, *rstd_q;   /* q latent (rq>0), its norm (q_norm) */
    float *q;                   /* [N, H*dqk] roped */
    float *kva;                 /* [N, r+dr] kv_a output, k_pe columns roped */
    float *cr, *cn, *rstd_kv;   /* raw latent [N,r], normalised latent (== cr when !kv_norm) */
    float *kvb;                 /* [N, Hk*(dn+dv)] kv_b(cn) */
    float *K, *V;               /* [N, Hk*dqk], [N, Hk*dv] */
    float *att;                 /* [N, H*dv] */
    float *probs;               /* [B, H, T, T] */
} zb_mla_acts;

static size_t zb_mla_layout(const zb_mla_dims *m, int B, int T, float *base, zb_mla_acts *a) {
    size_t N = (size_t)B * T, off = 0;
    int H = m->n_heads, Hk = m->kv_heads, dqk = m->qk_nope + m->qk_rope;
    int r = m->kv_lora_rank, dr = m->qk_rope, rq = m->q_lora_rank;
    zb_mla_acts l;
    memset(&l, 0, sizeof(l));
#define ZB_TAKE(p, n) do { size_t n_ = (n); (p) = base ? base + off : NULL; off += n_; } while (0)
    if (rq > 0) {
        ZB_TAKE(l.qa, N * rq);
        if (m->q_norm) { ZB_TAKE(l.qan, N * rq); ZB_TAKE(l.rstd_q, N); }
    }
    ZB_TAKE(l.q, N * H * dqk);
    ZB_TAKE(l.kva, N * (r + dr));
    ZB_TAKE(l.cr, N * r);
    if (m->kv_norm) { ZB_TAKE(l.cn, N * r); ZB_TAKE(l.rstd_kv, N); } else l.cn = l.cr;
    ZB_TAKE(l.kvb, N * Hk * (m->qk_nope + m->v_head_dim));
    ZB_TAKE(l.K, N * Hk * dqk);
    ZB_TAKE(l.V, N * Hk * m->v_head_dim);
    ZB_TAKE(l.att, N * H * m->v_head_dim);
    ZB_TAKE(l.probs, (size_t)B * H * T * T);
#undef ZB_TAKE
    if (a) *a = l;
    return off;
}

size_t zb_mla_act_floats(const zb_mla_dims *m, int d, int B, int T) {
    (void)d;
    return zb_mla_layout(m, B, T, NULL, NULL);
}

size_t zb_mla_scratch_floats(const zb_mla_dims *m, int d, int B, int T) {
    (void)d;
    size_t N = (size_t)B * T;
    int H = m->n_heads, Hk = m->kv_heads, dn = m->qk_nope, dr = m->qk_rope, dv = m->v_head_dim;
    int r = m->kv_lora_rank, rq = m->q_lora_rank;
    return N * ((size_t)H * dv + (size_t)H * (dn + dr) + (size_t)Hk * (dn + dr) + (size_t)Hk * dv
                + (size_t)Hk * (dn + dv) + 2 * (size_t)r + (r + dr) + 2 * (size_t)rq);
}

float zb_mla_softmax_scale(const zb_mla_dims *m) {
    double s = 1.0 / sqrt((double)(m->qk_nope + m->qk_rope));
    const zb_rope_cfg *r = &m->rope;
    if (r->type == ZB_ROPE_YARN && r->mscale_all_dim != 0) {
        double k = zb_yarn_get_mscale(r->factor, r->mscale_all_dim);
        s *= k * k;
    }
    return (float)s;
}

static zb_attn_shape zb_mla_attn_shape(const zb_mla_dims *m, int B, int T) {
    zb_attn_shape s;
    int dqk = m->qk_nope + m->qk_rope;
    s.B = B; s.T = T; s.H = m->n_heads; s.Hkv = m->kv_heads; s.dqk = dqk; s.dv = m->v_head_dim;
    s.q_stride = m->n_heads * dqk;
    s.k_stride = m->kv_heads * dqk;
    s.v_stride = m->kv_heads * m->v_head_dim;
    s.scale = zb_mla_softmax_scale(m);
    return s;
}

/* q[N, H*dqk] = q_proj x, or q_b(norm?(q_a x)) (SPEC §3). Writes the q-latent buffers given. */
static void zb_mla_query_lin(const zb_mla_dims *m, int d, float eps, const zb_mla_weights *w,
                             const zb_mla_lin *lin, const float *x, float *q, float *qa, float *qan,
                             float *rstd_q, int N) {
    int H = m->n_heads, dqk = m->qk_nope + m->qk_rope, rq = m->q_lora_rank;
    if (rq == 0) {
        zb_linear_forward(q, x, lin->q_proj, N, d, H * dqk);
        return;
    }
    zb_linear_forward(qa, x, lin->q_a_proj, N, d, rq);
    const float *ql = qa;
    if (m->q_norm) { zb_rmsnorm_forward(qan, rstd_q, qa, w->q_a_norm, N, rq, eps); ql = qan; }
    zb_linear_forward(q, ql, lin->q_b_proj, N, rq, H * dqk);
}

zb_mla_lin zb_mla_lin_of(const zb_mla_weights *w) {
    zb_mla_lin l = {zb_wt_of_f32(w->q_proj), zb_wt_of_f32(w->q_a_proj), zb_wt_of_f32(w->q_b_proj),
                    zb_wt_of_f32(w->kv_a_proj), zb_wt_of_f32(w->kv_b_proj), zb_wt_of_f32(w->o_proj)};
    return l;
}

static void zb_mla_query(const zb_mla_dims *m, int d, float eps, const zb_mla_weights *w,
                         const float *x, float *q, float *qa, float *qan, float *rstd_q, int N) {
    zb_mla_lin lin = zb_mla_lin_of(w);
    zb_mla_query_lin(m, d, eps, w, &lin, x, q, qa, qan, rstd_q, N);
}

float *zb_mla_acts_att(const zb_mla_dims *m, float *acts, int B, int T) {
    zb_mla_acts a;
    zb_mla_layout(m, B, T, acts, &a);
    return a.att;
}

void zb_mla_forward(const zb_mla_dims *m, int d, float eps, const zb_mla_weights *w,
                    const zb_rope *rope, const float *x, float *out, float *acts, int B, int T) {
    zb_mla_acts a;
    zb_mla_layout(m, B, T, acts, &a);
    int N = B * T, H = m->n_heads, Hk = m->kv_heads, dn = m->qk_nope, dr = m->qk_rope;
    int dqk = dn + dr, dv = m->v_head_dim, r = m->kv_lora_rank, il = m->rope_interleave;

    zb_mla_query(m, d, eps, w, x, a.q, a.qa, a.qan, a.rstd_q, N);
    zb_rope_apply_seq(rope, a.q, B, T, H * dqk, H, dqk, dn, 0, il, 0);

    /* kv_a -> [c | k_pe]; c normalised (kv_norm); k_pe roped once, shared by all heads */
    zb_matmul_forward(a.kva, x, w->kv_a_proj, NULL, N, d, r + dr);
    for (int n = 0; n < N; n++)
        memcpy(a.cr + (size_t)n * r, a.kva + (size_t)n * (r + dr), sizeof(float) * r);
    if (m->kv_norm) zb_rmsnorm_forward(a.cn, a.rstd_kv, a.cr, w->kv_a_norm, N, r, eps);
    zb_rope_apply_seq(rope, a.kva, B, T, r + dr, 1, 0, r, 0, il, 0);

    /* kv_b -> per kv head [k_nope | v]; build K = [k_nope | k_pe], V */
    zb_matmul_forward(a.kvb, a.cn, w->kv_b_proj, NULL, N, r, Hk * (dn + dv));
    for (int n = 0; n < N; n++) {
        const float *kb = a.kvb + (size_t)n * Hk * (dn + dv);
        const float *kpe = a.kva + (size_t)n * (r + dr) + r;
        float *K = a.K + (size_t)n * Hk * dqk, *V = a.V + (size_t)n * Hk * dv;
        for (int j = 0; j < Hk; j++) {
            memcpy(K + j * dqk, kb + j * (dn + dv), sizeof(float) * dn);
            memcpy(K + j * dqk + dn, kpe, sizeof(float) * dr);
            memcpy(V + j * dv, kb + j * (dn + dv) + dn, sizeof(float) * dv);
        }
    }
    zb_attn_shape s = zb_mla_attn_shape(m, B, T);
    zb_attention_forward(a.att, a.probs, a.q, a.K, a.V, &s);
    zb_matmul_forward(out, a.att, w->o_proj, NULL, N, H * dv, d);
}

void zb_mla_backward(const zb_mla_dims *m, int d, float eps, const zb_mla_weights *w,
                     zb_mla_weights *g, const zb_rope *rope, const float *x, const float *dout,
                     float *dx, float *acts, float *scratch, int B, int T) {
    (void)eps;
    zb_mla_acts a;
    zb_mla_layout(m, B, T, acts, &a);
    size_t N = (size_t)B * T;
    int H = m->n_heads, Hk = m->kv_heads, dn = m->qk_nope, dr = m->qk_rope;
    int dqk = dn + dr, dv = m->v_head_dim, r = m->kv_lora_rank, rq = m->q_lora_rank;
    int il = m->rope_interleave;

    float *datt = scratch, *dq = datt + N * H * dv, *dK = dq + N * H * dqk;
    float *dV = dK + N * Hk * dqk, *dkvb = dV + N * Hk * dv, *dcn = dkvb + N * Hk * (dn + dv);
    float *dcr = dcn + N * r, *dkva = dcr + N * r, *dqan = dkva + N * (r + dr);
    float *dqa = dqan + N * rq;

    /* o_proj */
    memset(datt, 0, sizeof(float) * N * H * dv);
    zb_matmul_backward(datt, g->o_proj, NULL, dout, a.att, w->o_proj, (int)N, H * dv, d);

    /* attention (overwrites dq, dK, dV) */
    zb_attn_shape s = zb_mla_attn_shape(m, B, T);
    zb_attention_backward(dq, dK, dV, datt, a.probs, a.q, a.K, a.V, &s);

    /* split dK, dV back into d(kv_b output) and d(k_pe) (summed over kv heads) */
    memset(dkva, 0, sizeof(float) * N * (r + dr));
    for (size_t n = 0; n < N; n++) {
        float *db = dkvb + n * Hk * (dn + dv), *dpe = dkva + n * (r + dr) + r;
        const float *k = dK + n * Hk * dqk, *v = dV + n * Hk * dv;
        for (int j = 0; j < Hk; j++) {
            memcpy(db + j * (dn + dv), k + j * dqk, sizeof(float) * dn);
            memcpy(db + j * (dn + dv) + dn, v + j * dv, sizeof(float) * dv);
            for (int i = 0; i < dr; i++) dpe[i] += k[j * dqk + dn + i];
        }
    }
    zb_rope_apply_seq(rope, dkva, B, T, r + dr, 1, 0, r, 0, il, 1);

    /* kv_b, kv_a norm, kv_a */
    memset(dcn, 0, sizeof(float) * N * r);
    zb_matmul_backward(dcn, g->kv_b_proj, NULL, dkvb, a.cn, w->kv_b_proj, (int)N, r, Hk * (dn + dv));
    const float *dc = dcn;
    if (m->kv_norm) {
        memset(dcr, 0, sizeof(float) * N * r);
        zb_rmsnorm_backward(dcr, g->kv_a_norm, dcn, a.cr, w->kv_a_norm, a.rstd_kv, (int)N, r);
        dc = dcr;
    }
    for (size_t n = 0; n < N; n++)
        memcpy(dkva + n * (r + dr), dc + n * r, sizeof(float) * r);
    zb_matmul_backward(dx, g->kv_a_proj, NULL, dkva, x, w->kv_a_proj, (int)N, d, r + dr);

    /* query path: un-rope dq, then q_proj or q_b / q_norm / q_a */
    zb_rope_apply_seq(rope, dq, B, T, H * dqk, H, dqk, dn, 0, il, 1);
    if (rq == 0) {
        zb_matmul_backward(dx, g->q_proj, NULL, dq, x, w->q_proj, (int)N, d, H * dqk);
        return;
    }
    memset(dqan, 0, sizeof(float) * N * rq);
    const float *ql = m->q_norm ? a.qan : a.qa;
    zb_matmul_backward(dqan, g->q_b_proj, NULL, dq, ql, w->q_b_proj, (int)N, rq, H * dqk);
    const float *dql = dqan;
    if (m->q_norm) {
        memset(dqa, 0, sizeof(float) * N * rq);
        zb_rmsnorm_backward(dqa, g->q_a_norm, dqan, a.qa, w->q_a_norm, a.rstd_q, (int)N, rq);
        dql = dqa;
    }
    zb_matmul_backward(dx, g->q_a_proj, NULL, dql, x, w->q_a_proj, (int)N, d, rq);
}

/* ---- generation: latent cache + absorbed weights ------------------------------------------ */

size_t zb_mla_decode_scratch_floats(const zb_mla_dims *m, int d, int max_T) {
    (void)d;
    size_t C = ZB_MLA_STEP_CHUNK;
    int H = m->n_heads, dqk = m->qk_nope + m->qk_rope, r = m->kv_lora_rank, dr = m->qk_rope;
    int rq = m->q_lora_rank;
    return C * ((size_t)H * dqk + 2 * (size_t)rq + (r + dr) + (size_t)H * (r + dr)
                + (size_t)H * r + (size_t)H * m->v_head_dim) + zb_attention_decode_scratch(H, r, max_T)
           + (size_t)m->kv_heads * (m->qk_nope + m->v_head_dim) * r;   /* a bf16 kv_b_proj, as f32 */
}

void zb_mla_step(const zb_mla_dims *m, int d, float eps, const zb_mla_weights *w,
                 const zb_rope *rope, const float *x, float *out, float *cache, int max_T,
                 const int *pos_b, int n, int B, float *scratch) {
    zb_mla_lin lin = zb_mla_lin_of(w);
    zb_mla_step_lin(m, d, eps, w, &lin, rope, x, out, cache, max_T, pos_b, n, B, scratch, NULL);
}

/* kv_b_proj [Hk, dn + dv, r] as f32: the weights themselves, or a bf16 matrix converted into buf */
static const float *kvb_f32(const zb_mla_lin *lin, size_t floats, float *buf) {
    if (lin->kv_b_proj.f32) return lin->kv_b_proj.f32;
    zb_bf16_to_f32_n(lin->kv_b_proj.bf16, buf, floats);
    return buf;
}

/* nc <= ZB_MLA_STEP_CHUNK rows: row i is a token at position ts[i] of the sequence whose
 * latent cache is cbs[i] (rows of one sequence in order, or one decode token of each of nc
 * sequences). The projections run once for all rows (every weight read once), the attention
 * per row against its own cache. */
static void mla_rows(const zb_mla_dims *m, int d, float eps, const zb_mla_weights *w,
                     const zb_mla_lin *lin, const zb_rope *rope, const float *xr, float *orow,
                     float *const *cbs, const int *ts, int nc, int max_T, float *scratch,
                     const zb_backend_opts *o) {
    const int C = ZB_MLA_STEP_CHUNK;
    int H = m->n_heads, Hk = m->kv_heads, dn = m->qk_nope, dr = m->qk_rope, dv = m->v_head_dim;
    int dqk = dn + dr, r = m->kv_lora_rank, rq = m->q_lora_rank, W = r + dr;
    int rep = H / Hk, il = m->rope_interleave;
    float scale = zb_mla_softmax_scale(m);   /* as the expanded score, SPEC §3 */

    float *q = scratch, *qa = q + (size_t)C * H * dqk, *qan = qa + (size_t)C * rq;
    float *kva = qan + (size_t)C * rq, *qlat = kva + (size_t)C * W;
    float *chat = qlat + (size_t)C * H * W, *vcat = chat + (size_t)C * H * r;
    float *sc = vcat + (size_t)C * H * dv;
    float *kvb_head = sc + zb_attention_decode_scratch(H, r, max_T);   /* [Hk, dn+dv, r]: a bf16 kv_b_proj as f32 */

    /* projections for the rows; latents [norm(c) | rope(k_pe)] appended to each cache */
    zb_mla_query_lin(m, d, eps, w, lin, xr, q, qa, qan, NULL, nc);
    zb_linear_forward(kva, xr, lin->kv_a_proj, nc, d, W);
    for (int i = 0; i < nc; i++) {
        int t = ts[i];
        float *crow = cbs[i] + (size_t)t * W, *kr = kva + (size_t)i * W;
        if (m->kv_norm) zb_rmsnorm_forward(crow, NULL, kr, w->kv_a_norm, 1, r, eps);
        else memcpy(crow, kr, sizeof(float) * r);
        memcpy(crow + r, kr + r, sizeof(float) * dr);
        zb_rope_apply(rope, crow, 1, 0, r, t, il, 0);
        zb_rope_apply(rope, q + (size_t)i * H * dqk, H, dqk, dn, t, il, 0);
    }

    /* absorbed query: qlat_h = [W_UK_h^T q_nope_h | q_pe_h]  (W_UK_h: [dn, r], applied
     * untransposed), and after the attention v_h = W_UV_h ĉ_h (W_UV_h: [dv, r]): small products
     * per head, threaded over the heads when the run decodes on OpenMP (o->decode_omp) */
    const float *kvb = kvb_f32(lin, (size_t)Hk * (dn + dv) * r, kvb_head);
    int par = o && o->decode_omp;
#pragma omp parallel for schedule(static) if (par)
    for (int h = 0; h < H; h++) {
        const float *wuk = kvb + (size_t)(h / rep) * (dn + dv) * r;
        for (int i = 0; i < nc; i++) {
            const float *qh = q + (size_t)i * H * dqk + (size_t)h * dqk;
            float *ql = qlat + (size_t)i * H * W + (size_t)h * W;
            memset(ql, 0, sizeof(float) * r);
            for (int j = 0; j < dn; j++) {
                float a = qh[j];
                const float *wr = wuk + (size_t)j * r;
                for (int c = 0; c < r; c++) ql[c] += a * wr[c];
            }
            memcpy(ql + r, qh + dn, sizeof(float) * dr);
        }
    }
    /* attention over the latent cache: one shared kv "head" of width r+dr, values c */
    for (int i = 0; i < nc; i++)
        zb_attention_decode(chat + (size_t)i * H * r, qlat + (size_t)i * H * W, cbs[i], cbs[i],
                            ts[i] + 1, H, 1, W, r, W, W, 0, 0, scale, sc, o);
#pragma omp parallel for schedule(static) if (par)
    for (int h = 0; h < H; h++) {
        const float *wuv = kvb + (size_t)(h / rep) * (dn + dv) * r + (size_t)dn * r;
        for (int i = 0; i < nc; i++) {
            const float *ch = chat + (size_t)i * H * r + (size_t)h * r;
            float *vo = vcat + (size_t)i * H * dv + (size_t)h * dv;
            for (int o = 0; o < dv; o++) {
                const float *wr = wuv + (size_t)o * r;
                float a = 0;
                for (int c = 0; c < r; c++) a += ch[c] * wr[c];
                vo[o] = a;
            }
        }
    }
    zb_linear_forward(orow, vcat, lin->o_proj, nc, H * dv, d);
}

void zb_mla_step_lin(const zb_mla_dims *m, int d, float eps, const zb_mla_weights *w,
                     const zb_mla_lin *lin, const zb_rope *rope, const float *x, float *out,
                     float *cache, int max_T, const int *pos_b, int n, int B, float *scratch,
                     const zb_backend_opts *o) {
    const int C = ZB_MLA_STEP_CHUNK;
    int W = m->kv_lora_rank + m->qk_rope;
    float *cbs[ZB_MLA_STEP_CHUNK];
    int ts[ZB_MLA_STEP_CHUNK];
    for (int b = 0; b < B; b++) {
        float *cb = cache + (size_t)b * max_T * W;
        for (int i0 = 0; i0 < n; i0 += C) {
            int nc = n - i0 < C ? n - i0 : C;
            for (int i = 0; i < nc; i++) { cbs[i] = cb; ts[i] = pos_b[b] + i0 + i; }
            mla_rows(m, d, eps, w, lin, rope, x + ((size_t)b * n + i0) * d, out + ((size_t)b * n + i0) * d,
                     cbs, ts, nc, max_T, scratch, o);
        }
    }
}

void zb_mla_decode_seqs(const zb_mla_dims *m, int d, float eps, const zb_mla_weights *w,
                        const zb_mla_lin *lin, const zb_rope *rope, const float *x, float *out,
                        float *cache, size_t seq_floats, int max_T, const int *seqs,
                        const int *pos, int nb, float *scratch, const zb_backend_opts *o) {
    const int C = ZB_MLA_STEP_CHUNK;
    float *cbs[ZB_MLA_STEP_CHUNK];
    int ts[ZB_MLA_STEP_CHUNK];
    for (int i0 = 0; i0 < nb; i0 += C) {
        int nc = nb - i0 < C ? nb - i0 : C;
        for (int i = 0; i < nc; i++) {
            cbs[i] = cache + (size_t)seqs[i0 + i] * seq_floats;
            ts[i] = pos[seqs[i0 + i]];
        }
        mla_rows(m, d, eps, w, lin, rope, x + (size_t)i0 * d, out + (size_t)i0 * d, cbs, ts, nc, max_T,
                 scratch, o);
    }
}
