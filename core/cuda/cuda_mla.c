/* cuda_mla.c — MLA on the GPU, composed from the kernels of cuda_ops.h; the same steps as
 * core/mla.c (see there and SPEC.md §3 for the formulas). */
#include "cuda_mla.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- saved activations (training): mla.c's layout with lse [B, H, T] for the probabilities -- */
typedef struct {
    float *qa, *qan, *rstd_q, *q, *kva, *cr, *cn, *rstd_kv, *kvb, *K, *V, *att, *lse;
} acts_t;

static size_t layout(const zb_mla_dims *m, int B, int T, float *base, acts_t *a) {
    size_t N = (size_t)B * T, off = 0;
    int H = m->n_heads, Hk = m->kv_heads, dqk = m->qk_nope + m->qk_rope;
    int r = m->kv_lora_rank, dr = m->qk_rope, rq = m->q_lora_rank;
    acts_t l;
    memset(&l, 0, sizeof l);
#define TAKE(p, n) do { size_t n_ = (n); (p) = base ? base + off : NULL; off += (n_ + 63) / 64 * 64; } while (0)
    if (rq > 0) {
        TAKE(l.qa, N * rq);
        if (m->q_norm) { TAKE(l.qan, N * rq); TAKE(l.rstd_q, N); }
    }
    TAKE(l.q, N * H * dqk);
    TAKE(l.kva, N * (r + dr));
    TAKE(l.cr, N * r);
    if (m->kv_norm) { TAKE(l.cn, N * r); TAKE(l.rstd_kv, N); } else l.cn = l.cr;
    TAKE(l.kvb, N * Hk * (m->qk_nope + m->v_head_dim));
    TAKE(l.K, N * Hk * dqk);
    TAKE(l.V, N * Hk * m->v_head_dim);
    TAKE(l.att, N * H * m->v_head_dim);
    TAKE(l.lse, (size_t)B * H * T);
#undef TAKE
    if (a) *a = l;
    return off;
}

size_t zb_cuda_mla_act_floats(const zb_mla_dims *m, int d, int B, int T) {
    (void)d;
    return layout(m, B, T, NULL, NULL);
}

size_t zb_cuda_mla_scratch_floats(const zb_mla_dims *m, int d, int B, int T) {
    return zb_mla_scratch_floats(m, d, B, T) + 16 * 64;   /* the CPU's split, aligned */
}

static zb_attn_shape attn_shape(const zb_mla_dims *m, int B, int T) {
    zb_attn_shape s;
    int dqk = m->qk_nope + m->qk_rope;
    s.B = B; s.T = T; s.H = m->n_heads; s.Hkv = m->kv_heads; s.dqk = dqk; s.dv = m->v_head_dim;
    s.q_stride = m->n_heads * dqk;
    s.k_stride = m->kv_heads * dqk;
    s.v_stride = m->kv_heads * m->v_head_dim;
    s.scale = zb_mla_softmax_scale(m);   /* as mla.c */
    return s;
}

/* q [N, H*dqk] = q_proj x, or q_b(norm?(q_a x)) */
static void query(const zb_mla_dims *m, int d, float eps, const zb_mla_weights *w, const zb_mla_lin *lin,
                  const float *x, float *q, float *qa, float *qan, float *rstd_q, int N) {
    int H = m->n_heads, dqk = m->qk_nope + m->qk_rope, rq = m->q_lora_rank;
    if (rq == 0) { zb_cuda_linear_forward(q, x, lin->q_proj, N, d, H * dqk); return; }
    zb_cuda_linear_forward(qa, x, lin->q_a_proj, N, d, rq);
    const float *ql = qa;
    if (m->q_norm) { zb_cuda_rmsnorm_forward(qan, rstd_q, qa, w->q_a_norm, N, rq, eps); ql = qan; }
    zb_cuda_linear_forward(q, ql, lin->q_b_proj, N, rq, H * dqk);
}

void zb_cuda_mla_forward(const zb_mla_dims *m, int d, float eps, const zb_mla_weights *w, const zb_rope *rope,
                         const float *x, float *out, float *acts, int B, int T) {
    acts_t a;
    layout(m, B, T, acts, &a);
    int N = B * T, H = m->n_heads, Hk = m->kv_heads, dn = m->qk_nope, dr = m->qk_rope;
    int dqk = dn + dr, dv = m->v_head_dim, r = m->kv_lora_rank, il = m->rope_interleave, W = r + dr;
    zb_mla_lin lin = zb_mla_lin_of(w);
    query(m, d, eps, w, &lin, x, a.q, a.qa, a.qan, a.rstd_q, N);
    zb_cuda_rope_apply_seq(rope, a.q, B, T, H * dqk, H, dqk, dn, 0, il, 0);
    /* kv_a -> [c | k_pe]; c normalised; k_pe roped once, shared by all heads */
    zb_cuda_matmul_forward(a.kva, x, w->kv_a_proj, NULL, N, d, W);
    zb_cuda_copy_cols(a.cr, r, a.kva, W, N, r);
    if (m->kv_norm) zb_cuda_rmsnorm_forward(a.cn, a.rstd_kv, a.cr, w->kv_a_norm, N, r, eps);
    zb_cuda_rope_apply_seq(rope, a.kva, B, T, W, 1, 0, r, 0, il, 0);
    /* kv_b -> per kv head [k_nope | v]; K = [k_nope | k_pe], V */
    zb_cuda_matmul_forward(a.kvb, a.cn, w->kv_b_proj, NULL, N, r, Hk * (dn + dv));
    for (int j = 0; j < Hk; j++) {
        zb_cuda_copy_cols(a.K + j * dqk, Hk * dqk, a.kvb + j * (dn + dv), Hk * (dn + dv), N, dn);
        zb_cuda_copy_cols(a.K + j * dqk + dn, Hk * dqk, a.kva + r, W, N, dr);
        zb_cuda_copy_cols(a.V + j * dv, Hk * dv, a.kvb + j * (dn + dv) + dn, Hk * (dn + dv), N, dv);
    }
    zb_attn_shape s = attn_shape(m, B, T);
    zb_cuda_attention_forward(a.att, a.lse, a.q, a.K, a.V, &s);
    zb_cuda_matmul_forward(out, a.att, w->o_proj, NULL, N, H * dv, d);
}

void zb_cuda_mla_backward(const zb_mla_dims *m, int d, float eps, const zb_mla_weights *w, zb_mla_weights *g,
                          const zb_rope *rope, const float *x, const float *dout, float *dx, float *acts,
                          float *scratch, int B, int T) {
    (void)eps;
    acts_t a;
    layout(m, B, T, acts, &a);
    size_t N = (size_t)B * T;
    int H = m->n_heads, Hk = m->kv_heads, dn = m->qk_nope, dr = m->qk_rope;
    int dqk = dn + dr, dv = m->v_head_dim, r = m->kv_lora_rank, rq = m->q_lora_rank, W = r + dr;
    int il = m->rope_interleave;
    /* scratch split as mla.c, each piece 64-float aligned */
    float *p = scratch;
#define NEXT(v, n) do { (v) = p; p += ((size_t)(n) + 63) / 64 * 64; } while (0)
    float *datt, *dq, *dK, *dV, *dkvb, *dcn, *dcr, *dkva, *dqan, *dqa;
    NEXT(datt, N * H * dv); NEXT(dq, N * H * dqk); NEXT(dK, N * Hk * dqk); NEXT(dV, N * Hk * dv);
    NEXT(dkvb, N * Hk * (dn + dv)); NEXT(dcn, N * r); NEXT(dcr, N * r); NEXT(dkva, N * W);
    NEXT(dqan, N * rq); NEXT(dqa, N * rq);
#undef NEXT
    zb_cuda_zero(datt, sizeof(float) * N * H * dv);
    zb_cuda_matmul_backward(datt, g->o_proj, NULL, dout, a.att, w->o_proj, (int)N, H * dv, d);
    zb_attn_shape s = attn_shape(m, B, T);
    zb_cuda_attention_backward(dq, dK, dV, datt, a.att, a.lse, a.q, a.K, a.V, &s);
    /* dK, dV -> d(kv_b output) and d(k_pe) (summed over the kv heads) */
    zb_cuda_zero(dkva, sizeof(float) * N * W);
    for (int j = 0; j < Hk; j++) {
        zb_cuda_copy_cols(dkvb + j * (dn + dv), Hk * (dn + dv), dK + j * dqk, Hk * dqk, (int)N, dn);
        zb_cuda_copy_cols(dkvb + j * (dn + dv) + dn, Hk * (dn + dv), dV + j * dv, Hk * dv, (int)N, dv);
        zb_cuda_add_cols(dkva + r, W, dK + j * dqk + dn, Hk * dqk, (int)N, dr);
    }
    zb_cuda_rope_apply_seq(rope, dkva, B, T, W, 1, 0, r, 0, il, 1);
    zb_cuda_zero(dcn, sizeof(float) * N * r);
    zb_cuda_matmul_backward(dcn, g->kv_b_proj, NULL, dkvb, a.cn, w->kv_b_proj, (int)N, r, Hk * (dn + dv));
    const float *dc = dcn;
    if (m->kv_norm) {
        zb_cuda_zero(dcr, sizeof(float) * N * r);
        zb_cuda_rmsnorm_backward(dcr, g->kv_a_norm, dcn, a.cr, w->kv_a_norm, a.rstd_kv, (int)N, r);
        dc = dcr;
    }
    zb_cuda_copy_cols(dkva, W, dc, r, (int)N, r);
    zb_cuda_matmul_backward(dx, g->kv_a_proj, NULL, dkva, x, w->kv_a_proj, (int)N, d, W);
    /* query path */
    zb_cuda_rope_apply_seq(rope, dq, B, T, H * dqk, H, dqk, dn, 0, il, 1);
    if (rq == 0) {
        zb_cuda_matmul_backward(dx, g->q_proj, NULL, dq, x, w->q_proj, (int)N, d, H * dqk);
        return;
    }
    zb_cuda_zero(dqan, sizeof(float) * N * rq);
    const float *ql = m->q_norm ? a.qan : a.qa;
    zb_cuda_matmul_backward(dqan, g->q_b_proj, NULL, dq, ql, w->q_b_proj, (int)N, rq, H * dqk);
    const float *dql = dqan;
    if (m->q_norm) {
        zb_cuda_zero(dqa, sizeof(float) * N * rq);
        zb_cuda_rmsnorm_backward(dqa, g->q_a_norm, dqan, a.qa, w->q_a_norm, a.rstd_q, (int)N, rq);
        dql = dqa;
    }
    zb_cuda_matmul_backward(dx, g->q_a_proj, NULL, dql, x, w->q_a_proj, (int)N, d, rq);
}

/* ---- generation: latent cache + absorbed products ------------------------------------------ */

static int g_mla_fused = 1;   /* 0: decode through the cuBLAS form too (tests and benchmarks compare) */
static int g_mla_absorb = -1;  /* 1: the absorbed products batched over the heads; 0 per head of a group; -1 env */
void zb_cuda_mla_use_fused(int on) { g_mla_fused = on != 0; }

#define ATT_BYTES ((size_t)1 << 30)   /* float32 scores of one attention call (+ half that in bf16) */

size_t zb_cuda_mla_gen_scratch_floats(const zb_mla_dims *m, int d, int rows) {
    (void)d;
    size_t R = (size_t)rows;
    int H = m->n_heads, dqk = m->qk_nope + m->qk_rope, r = m->kv_lora_rank, W = r + m->qk_rope;
    int rq = m->q_lora_rank;
    return R * ((size_t)H * dqk + 2 * (size_t)rq + W + 2 * (size_t)r + (size_t)H * W + (size_t)H * r +
                (size_t)H * m->v_head_dim) +
           (size_t)H * (m->qk_nope + m->v_head_dim) * r + 12 * 64;
}

int zb_cuda_mla_decode_fused(const zb_mla_dims *m, int d, float eps, const zb_mla_weights *w, const zb_mla_lin *lin,
                             const zb_rope *rope, const float *x, float *out, void *cache, int cache_bf16, int max_T,
                             const int *seq_dev, const int *pos_dev, const int *pidx, int *posi, int nb,
                             float *scratch) {
    int R = nb, H = m->n_heads, Hk = m->kv_heads, dn = m->qk_nope, dr = m->qk_rope, dv = m->v_head_dim;
    int dqk = dn + dr, r = m->kv_lora_rank, rq = m->q_lora_rank, W = r + dr;
    const void *kvb = lin->kv_b_proj.bf16 ? (const void *)lin->kv_b_proj.bf16 : (const void *)lin->kv_b_proj.f32;
    zb_cuda_cache_attn at = {H, 1, W, r, (long long)max_T * W, 0, W, zb_mla_softmax_scale(m), cache_bf16};
    if (!zb_cuda_dec_fuse() || !g_mla_fused || m->kv_norm || !cache_bf16 || !kvb || nb <= 0 || Hk <= 0 ||
        H % Hk || !zb_cuda_decode_mla_ok(cache, cache, &at) || !zb_cuda_mla_dec_prep_ok(rope, dn, dr))
        return 0;
    float *p = scratch;
#define NEXT(v, k) do { (v) = p; p += ((size_t)(k) + 63) / 64 * 64; } while (0)
    float *q, *qa, *qan, *kva, *ct, *cn, *qlat, *chat, *vcat;
    NEXT(q, (size_t)R * H * dqk); NEXT(qa, (size_t)R * rq); NEXT(qan, (size_t)R * rq); NEXT(kva, (size_t)R * W);
    NEXT(ct, (size_t)R * r); NEXT(cn, (size_t)R * r); NEXT(qlat, (size_t)R * H * W); NEXT(chat, (size_t)R * H * r);
    NEXT(vcat, (size_t)R * H * dv);
#undef NEXT
    (void)ct; (void)cn; (void)chat;
    /* the projections of x: q_a and kv_a in one GEMV where both are bf16 (the same sums as two) */
    if (rq > 0 && !m->q_norm && lin->q_a_proj.bf16 && lin->kv_a_proj.bf16 &&
        zb_cuda_gemv_ok(x, lin->q_a_proj.bf16, R, d) && zb_cuda_gemv_ok(x, lin->kv_a_proj.bf16, R, d)) {
        zb_gemv_seg seg[2] = {{lin->q_a_proj.bf16, qa, rq}, {lin->kv_a_proj.bf16, kva, W}};
        zb_cuda_gemv_bf16_multi(x, R, d, 2, seg);
        zb_cuda_linear_forward(q, qa, lin->q_b_proj, R, rq, H * dqk);
    } else {
        query(m, d, eps, w, lin, x, q, qa, qan, NULL, R);
        zb_cuda_linear_forward(kva, x, lin->kv_a_proj, R, d, W);
    }
    zb_cuda_mla_dec_prep(rope, q, kva, kvb, lin->kv_b_proj.bf16 != NULL, qlat, cache, cache_bf16, seq_dev, pos_dev,
                         pidx, posi, nb, H, H / Hk, dn, dv, dr, r, m->rope_interleave, (long long)max_T * W);
    zb_cuda_decode_mla_uv(vcat, qlat, cache, seq_dev, posi ? posi : pos_dev, nb, max_T, &at, kvb,
                          lin->kv_b_proj.bf16 != NULL, H / Hk, dn, dv);
    zb_cuda_linear_forward(out, vcat, lin->o_proj, R, H * dv, d);
    return 1;
}

void zb_cuda_mla_gen(const zb_mla_dims *m, int d, float eps, const zb_mla_weights *w, const zb_mla_lin *lin,
                     const zb_rope *rope, const float *x, float *out, void *cache, int cache_bf16, int max_T,
                     const int *seq_dev, const int *pos_dev, int nb, int n, int max_len, float *scratch) {
    if (n == 1 && zb_cuda_mla_decode_fused(m, d, eps, w, lin, rope, x, out, cache, cache_bf16, max_T, seq_dev, pos_dev,
                                           NULL, NULL, nb, scratch))
        return;
    int R = nb * n, H = m->n_heads, Hk = m->kv_heads, rep = H / Hk, dn = m->qk_nope, dr = m->qk_rope;
    int dv = m->v_head_dim, dqk = dn + dr, r = m->kv_lora_rank, rq = m->q_lora_rank, W = r + dr;
    int il = m->rope_interleave;
    float *p = scratch;
#define NEXT(v, k) do { (v) = p; p += ((size_t)(k) + 63) / 64 * 64; } while (0)
    float *q, *qa, *qan, *kva, *ct, *cn, *qlat, *chat, *vcat, *kvb;
    NEXT(q, (size_t)R * H * dqk); NEXT(qa, (size_t)R * rq); NEXT(qan, (size_t)R * rq); NEXT(kva, (size_t)R * W);
    NEXT(ct, (size_t)R * r); NEXT(cn, (size_t)R * r); NEXT(qlat, (size_t)R * H * W); NEXT(chat, (size_t)R * H * r);
    NEXT(vcat, (size_t)R * H * dv); NEXT(kvb, (size_t)H * (dn + dv) * r);
#undef NEXT
    /* projections; latents [norm(c) | rope(k_pe)] appended to the cache */
    query(m, d, eps, w, lin, x, q, qa, qan, NULL, R);
    zb_cuda_linear_forward(kva, x, lin->kv_a_proj, R, d, W);
    if (m->kv_norm) {
        zb_cuda_copy_cols(ct, r, kva, W, R, r);
        zb_cuda_rmsnorm_forward(cn, NULL, ct, w->kv_a_norm, R, r, eps);
        zb_cuda_copy_cols(kva, W, cn, r, R, r);
    }
    zb_cuda_rope_apply_rows(rope, kva, R, n, pos_dev, W, 1, 0, r, il, 0);
    zb_cuda_rope_apply_rows(rope, q, R, n, pos_dev, H * dqk, H, dqk, dn, il, 0);
    zb_cuda_cache_store(cache, cache_bf16, kva, W, seq_dev, pos_dev, nb, n, 1, W, (long long)max_T * W, 0, W);
    /* kv_b as float32 per query head [H, dn + dv, r] (its group's rows repeated; a bf16 matrix
     * widened), once per call, so that each product below is one batched call over the H heads
     * (a call per head of a group over the groups before: 4x the launches of a decode step) */
    const float *kb = kvb;
    if (g_mla_absorb < 0) {   /* ZB_MLA_ABSORB=loop: the call per head of a group (kv_b per group) */
        const char *e = getenv("ZB_MLA_ABSORB");
        g_mla_absorb = !(e && !strcmp(e, "loop"));
    }
    const int batched = g_mla_absorb;
    if (!batched) {
        kb = lin->kv_b_proj.f32;
        if (!kb) {
            zb_cuda_bf16_to_f32(kvb, lin->kv_b_proj.bf16, (size_t)Hk * (dn + dv) * r);
            kb = kvb;
        }
    } else if (lin->kv_b_proj.f32) zb_cuda_expand_groups(kvb, lin->kv_b_proj.f32, 0, Hk, rep, (size_t)(dn + dv) * r);
    else zb_cuda_expand_groups(kvb, lin->kv_b_proj.bf16, 1, Hk, rep, (size_t)(dn + dv) * r);
    /* absorbed query qlat_h = [W_UK_h^T q_nope_h | q_pe_h], W_UK_h = kv_b rows of head h's group,
     * [dn, r] */
    if (batched)
        zb_cuda_gemm_strided(0, 0, R, r, dn, 1.0f, q, H * dqk, dqk, kb, r, (long long)(dn + dv) * r, 0.0f, qlat, H * W,
                             W, H);
    else
        for (int j = 0; j < rep; j++)
            zb_cuda_gemm_strided(0, 0, R, r, dn, 1.0f, q + j * dqk, H * dqk, (long long)rep * dqk, kb, r,
                                 (long long)(dn + dv) * r, 0.0f, qlat + j * W, H * W, (long long)rep * W, Hk);
    zb_cuda_copy_cols(qlat + r, W, q + dn, dqk, R * H, dr);
    /* attention over the latent cache: one shared kv head of width r + dr, values = c. The 32
     * heads of a decode token share the latents, so per sequence the scores Q_abs [H, W] C^T and
     * the output P C[:, :r] are GEMMs (tensor cores for bf16 caches; the flash-decoding kernel
     * ran them on the CUDA cores, compute-bound); sequences in groups whose scores [g H n,
     * max_len] fit ATT_BYTES of the device's scratch. */
    zb_cuda_cache_attn at = {H, 1, W, r, (long long)max_T * W, 0, W, zb_mla_softmax_scale(m), cache_bf16};
    if (n == 1 && g_mla_fused && zb_cuda_decode_mla_ok(cache, cache, &at)) {
        /* decode on a bf16 cache: the fused kernel reads each latent row once for the scores and
         * the values (the products below read it twice and write the scores out) */
        zb_cuda_decode_mla(chat, qlat, cache, seq_dev, pos_dev, nb, max_T, &at);
    } else {
    size_t per_seq = (size_t)H * n * max_len * sizeof(float);
    int grp = per_seq >= ATT_BYTES ? 1 : (int)(ATT_BYTES / per_seq);
    /* up to 8 decode rows: one sequence a call, so that a sequence's numbers do not depend on the
     * batch it decodes in (cuBLAS picks its kernels by the batch count; the GEMV's rows are
     * independent of the batch up to 8 likewise) */
    if (n == 1 && nb <= 8) grp = 1;
    for (int i0 = 0; i0 < nb; i0 += grp) {
        int g = nb - i0 < grp ? nb - i0 : grp;
        size_t row0 = (size_t)i0 * n * H;
        zb_cuda_attention_cached_gemm(chat + row0 * r, qlat + row0 * W, cache, cache, seq_dev + i0, pos_dev + i0, g,
                                      n, max_len, &at);
    }
    }
    /* v_h = W_UV_h chat_h, W_UV_h = kv_b rows dn.. of head h's group, [dv, r] */
    if (batched)
        zb_cuda_gemm_strided(0, 1, R, dv, r, 1.0f, chat, H * r, r, kb + (size_t)dn * r, r, (long long)(dn + dv) * r,
                             0.0f, vcat, H * dv, dv, H);
    else
        for (int j = 0; j < rep; j++)
            zb_cuda_gemm_strided(0, 1, R, dv, r, 1.0f, chat + j * r, H * r, (long long)rep * r, kb + (size_t)dn * r, r,
                                 (long long)(dn + dv) * r, 0.0f, vcat + j * dv, H * dv, (long long)rep * dv, Hk);
    zb_cuda_linear_forward(out, vcat, lin->o_proj, R, H * dv, d);
}
