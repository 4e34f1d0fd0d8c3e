/* compose.c — mixer initialisation from a Llama target (SPEC.md §5). See compose.h.
 *
 * MLA (X-EcoMLA): with P the row selection of compose.h (kept teacher dims per head),
 *   q rows  Q = sqrt((nope+rope)/hd) P W_q     (the MLA scores scale by 1/sqrt(nope+rope));
 *           the rope rows / mscale^2 when the MLA's rope is YaRN (its cos and sin carry mscale)
 *   q_lora_rank = 0: q_proj = Q;   else Q = U S Vt, q_a = diag(S_rq) Vt_rq, q_b = U_rq
 *   kv rows M = per kv head [nope key rows ; value rows] = U S Vt,
 *   kv_a latent rows = diag(S_r) Vt_r, kv_b = U_r, kv_a rope rows = mean over kv heads of
 *   the rope key rows, o_proj = W_o.
 * Mamba2 (MambaInLlama): in_proj = [z | W_v | W_k | W_q | dt], out_proj = W_o. */
#include "compose.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "zb_common.h"

/* ---- which teacher dims an MLA head keeps ------------------------------------------------ */

int zb_mla_head_dims(int hd, const zb_mla_dims *m, int *dims) {
    int nope = m->qk_nope, rope = m->qk_rope, half = hd / 2, rh = rope / 2;
    if (nope + rope > hd || rope % 2 || hd % 2 || hd > ZB_ROPE_MAX_DIM)
        return zb_fail(ZB_ESHAPE, "MLA qk_nope %d + qk_rope %d must be <= the teacher head_dim %d (even rope)",
                       nope, rope, hd);
    char *used = calloc((size_t)half, 1);
    if (!used) return zb_fail(ZB_ENOMEM, "out of memory");
    /* rope: MLA pair j <- teacher pair i_j = j*hd/rope (same inv_freq, SPEC §2/§3) */
    for (int j = 0; j < rh; j++) {
        int i = (int)((long)j * hd / rope);
        used[i] = 1;
        int a = m->rope_interleave ? nope + 2 * j : nope + j;
        int b = m->rope_interleave ? nope + 2 * j + 1 : nope + rh + j;
        dims[a] = i;
        dims[b] = i + half;
    }
    /* nope: the unused pairs, lowest frequency (largest i) first, then sorted */
    int k = 0;
    for (int i = half - 1; i >= 0 && k < nope; i--) {
        if (used[i]) continue;
        dims[k++] = i;
        if (k < nope) dims[k++] = i + half;
    }
    free(used);
    for (int a = 1; a < nope; a++)   /* insertion sort: teacher order inside the nope part */
        for (int b = a; b > 0 && dims[b - 1] > dims[b]; b--) { int t = dims[b]; dims[b] = dims[b - 1]; dims[b - 1] = t; }
    return ZB_OK;
}

/* ---- truncated SVD ---------------------------------------------------------------------- */

int zb_svd_lowrank(const float *A, int m, int n, int r, float *U, float *SVt, double *sigma) {
    int k = m < n ? m : n;
    double *a = malloc(sizeof(double) * (size_t)m * n), *s = malloc(sizeof(double) * k);
    double *u = malloc(sizeof(double) * (size_t)m * k), *vt = malloc(sizeof(double) * (size_t)k * n);
    int rc = ZB_OK;
    if (!a || !s || !u || !vt) { rc = zb_fail(ZB_ENOMEM, "SVD of [%d x %d]: out of memory", m, n); goto done; }
    for (size_t i = 0; i < (size_t)m * n; i++) a[i] = A[i];
    int info = LAPACKE_dgesdd(LAPACK_ROW_MAJOR, 'S', m, n, a, n, s, u, k, vt, n);
    if (info != 0) { rc = zb_fail(ZB_ELAPACK, "LAPACKE_dgesdd [%d x %d]: info=%d", m, n, info); goto done; }
    for (int i = 0; i < m; i++)
        for (int j = 0; j < r; j++) U[(size_t)i * r + j] = j < k ? (float)u[(size_t)i * k + j] : 0.0f;
    for (int j = 0; j < r; j++)
        for (int c = 0; c < n; c++) SVt[(size_t)j * n + c] = j < k ? (float)(s[j] * vt[(size_t)j * n + c]) : 0.0f;
    if (sigma) memcpy(sigma, s, sizeof(double) * k);
done:
    free(a); free(s); free(u); free(vt);
    return rc;
}

void zb_svd_energy(const double *s, int k, int r, double target, double *energy,
                   double *discarded, int *rank_target) {
    double tot = 0, kept = 0, run = 0;
    for (int i = 0; i < k; i++) { tot += s[i] * s[i]; if (i < r) kept += s[i] * s[i]; }
    if (energy) *energy = tot > 0 ? kept / tot : 1.0;
    if (discarded) *discarded = sqrt(tot - kept > 0 ? tot - kept : 0);
    if (rank_target) {
        int rt = k;
        for (int i = 0; i < k; i++) {
            run += s[i] * s[i];
            if (tot <= 0 || run >= target * tot) { rt = i + 1; break; }
        }
        *rank_target = (rt + 7) / 8 * 8;   /* SPEC §5: rounded up to a multiple of 8 */
    }
}

/* ---- MLA -------------------------------------------------------------------------------- */

/* Teacher KV head serving MLA kv head j (kv_heads == Hkv: j; == H: the GQA group of head j). */
static int teacher_kv_head(const zb_attn_src *s, const zb_mla_dims *m, int j) {
    return m->kv_heads == s->Hkv ? j : j / (s->H / s->Hkv);
}

static int check_mla(const zb_attn_src *s, const zb_mla_dims *m) {
    if (m->n_heads != s->H)
        return zb_fail(ZB_ESHAPE, "MLA n_heads %d != teacher heads %d", m->n_heads, s->H);
    if (m->kv_heads != s->Hkv && m->kv_heads != s->H)
        return zb_fail(ZB_ESHAPE, "MLA kv_heads %d must be the teacher's KV heads %d or heads %d",
                       m->kv_heads, s->Hkv, s->H);
    if (m->v_head_dim != s->hd)
        return zb_fail(ZB_ESHAPE, "MLA v_head_dim %d != teacher head_dim %d", m->v_head_dim, s->hd);
    return ZB_OK;
}

/* ||A - U SVt||_F / ||A||_F for A [m, n], U [m, r], SVt [r, n] (the factors' own error). */
static double factor_rel_err(const float *A, const float *U, const float *SVt, int m, int r, int n, float *tmp) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, r, 1.0f, U, r, SVt, n, 0.0f, tmp, n);
    double e = 0, a = 0;
    for (size_t i = 0; i < (size_t)m * n; i++) {
        double x = A[i], y = (double)A[i] - tmp[i];
        a += x * x;
        e += y * y;
    }
    return a > 0 ? sqrt(e / a) : 0.0;
}

/* The teacher rows of head h (q) or KV head t (k) that MLA dim k comes from. Default
 * (ZB_MLA_INIT_ROPE_PAIRS): zb_mla_head_dims. Release: the first nope and the last rope rows. */
static void head_rows(const zb_mla_dims *m, int hd, zb_mla_init init, int *rows) {
    if (init == ZB_MLA_INIT_ROPE_PAIRS) { zb_mla_head_dims(hd, m, rows); return; }
    for (int k = 0; k < m->qk_nope; k++) rows[k] = k;
    for (int k = 0; k < m->qk_rope; k++) rows[m->qk_nope + k] = hd - m->qk_rope + k;
}

int zb_mla_kv_rows_ex(const zb_attn_src *s, const zb_mla_dims *m, zb_mla_init init, float *M) {
    ZB_TRY(check_mla(s, m));
    int dims[ZB_ROPE_MAX_DIM], nope = m->qk_nope, hd = s->hd, d = s->d;
    ZB_TRY(zb_mla_head_dims(hd, m, dims));
    head_rows(m, hd, init, dims);
    size_t row = 0;
    for (int j = 0; j < m->kv_heads; j++) {
        int t = teacher_kv_head(s, m, j);
        for (int k = 0; k < nope; k++, row++)
            memcpy(M + row * d, s->wk + ((size_t)t * hd + dims[k]) * d, sizeof(float) * d);
        memcpy(M + row * d, s->wv + (size_t)t * hd * d, sizeof(float) * (size_t)hd * d);
        row += hd;
    }
    return ZB_OK;
}

int zb_mla_kv_rows(const zb_attn_src *s, const zb_mla_dims *m, float *M) {
    return zb_mla_kv_rows_ex(s, m, ZB_MLA_INIT_ROPE_PAIRS, M);
}

int zb_compose_mla(const zb_attn_src *s, const zb_mla_dims *m, zb_mla_init init, const zb_mla_weights *w,
                   zb_mla_init_stats *st) {
    ZB_TRY(check_mla(s, m));
    if (init != ZB_MLA_INIT_ROPE_PAIRS && init != ZB_MLA_INIT_RELEASE)
        return zb_fail(ZB_EARG, "MLA init: unknown mode %d", (int)init);
    int H = s->H, hd = s->hd, d = s->d, nope = m->qk_nope, rope = m->qk_rope, dqk = nope + rope;
    int r = m->kv_lora_rank, rq = m->q_lora_rank, kvh = m->kv_heads, rel = init == ZB_MLA_INIT_RELEASE;
    int dims[ZB_ROPE_MAX_DIM];
    ZB_TRY(zb_mla_head_dims(hd, m, dims));   /* also the shape check */
    head_rows(m, hd, init, dims);
    zb_mla_init_stats z;
    memset(&z, 0, sizeof z);
    z.kv_energy = z.q_energy = 1.0;
    int rows_q = H * dqk, rows_kv = kvh * (nope + hd);
    /* what the SVDs factor: default the used rows (so the error is the discarded energy);
     * release the whole W_q and the whole repeated [W_k; W_v] (SPEC §5, as the release does) */
    int svd_q = rel ? H * hd : rows_q, svd_kv = rel ? 2 * kvh * hd : rows_kv;
    int kq = svd_q < d ? svd_q : d, kkv = svd_kv < d ? svd_kv : d, big = svd_q > svd_kv ? svd_q : svd_kv;
    float *Q = malloc(sizeof(float) * (size_t)rows_q * d), *M = malloc(sizeof(float) * (size_t)rows_kv * d);
    float *S = malloc(sizeof(float) * (size_t)big * d), *Uf = malloc(sizeof(float) * (size_t)big * (rq > r ? rq : r));
    float *tmp = malloc(sizeof(float) * (size_t)(rows_q > rows_kv ? rows_q : rows_kv) * d);
    double *sg = malloc(sizeof(double) * (size_t)(kq > kkv ? kq : kkv));
    int rc = ZB_OK;
    if (!Q || !M || !S || !Uf || !tmp || !sg) { rc = zb_fail(ZB_ENOMEM, "MLA init: out of memory"); goto done; }

    /* query: the used rows Q; default rescaled so that the MLA's scores (softmax scale
     * 1/sqrt(nope+rope)) equal the teacher's 1/sqrt(hd), and with YaRN, whose cos and sin both
     * carry mscale (SPEC §3), the rope rows also undo the mscale^2 of the rope part of every score
     * (test_compose: KL to the teacher 0.279 instead of 0.308 at full rank); the release does not
     * rescale */
    float qs = rel ? 1.0f : sqrtf((float)dqk / (float)hd), qs_rope = qs;
    if (!rel && m->rope.type == ZB_ROPE_YARN) {
        const zb_rope_cfg *y = &m->rope;
        double all = zb_yarn_get_mscale(y->factor, y->mscale_all_dim), ms = zb_yarn_get_mscale(y->factor, y->mscale) / all;
        if (y->mscale_all_dim != 0) qs = (float)(qs / (all * all));   /* the softmax scale's factor */
        qs_rope = (float)(qs / (ms * ms));
    }
    for (int h = 0; h < H; h++)
        for (int k = 0; k < dqk; k++) {
            const float *src = s->wq + ((size_t)h * hd + dims[k]) * d;
            float *dst = Q + ((size_t)h * dqk + k) * d, f = k < nope ? qs : qs_rope;
            for (int c = 0; c < d; c++) dst[c] = f * src[c];
        }
    if (rq == 0) {
        memcpy(w->q_proj, Q, sizeof(float) * (size_t)rows_q * d);
    } else {
        const float *A = rel ? s->wq : Q;
        if ((rc = zb_svd_lowrank(A, svd_q, d, rq, Uf, w->q_a_proj, sg))) goto done;
        zb_svd_energy(sg, kq, rq, 0.99, &z.q_energy, &z.q_discarded, &z.q_rank_99);
        for (int h = 0; h < H; h++)   /* q_b = the used rows of U */
            for (int k = 0; k < dqk; k++)
                memcpy(w->q_b_proj + ((size_t)h * dqk + k) * rq,
                       Uf + ((size_t)(rel ? h * hd + dims[k] : h * dqk + k)) * rq, sizeof(float) * rq);
        z.q_rel_err = factor_rel_err(Q, w->q_b_proj, w->q_a_proj, rows_q, rq, d, tmp);
        if (w->q_a_norm) for (int i = 0; i < rq; i++) w->q_a_norm[i] = 1.0f;
    }

    /* kv: M = per kv head its nope key rows then its value rows (kv_b's order) */
    if ((rc = zb_mla_kv_rows_ex(s, m, init, M))) goto done;
    if (rel) {   /* the SVD of [K; V], every key row (rope ones too), KV heads repeated to kvh */
        for (int j = 0; j < kvh; j++) {
            int t = teacher_kv_head(s, m, j);
            memcpy(S + (size_t)j * hd * d, s->wk + (size_t)t * hd * d, sizeof(float) * (size_t)hd * d);
            memcpy(S + ((size_t)kvh + j) * hd * d, s->wv + (size_t)t * hd * d, sizeof(float) * (size_t)hd * d);
        }
    }
    if ((rc = zb_svd_lowrank(rel ? S : M, svd_kv, d, r, Uf, w->kv_a_proj, sg))) goto done;
    zb_svd_energy(sg, kkv, r, 0.99, &z.kv_energy, &z.kv_discarded, &z.kv_rank_99);
    for (int j = 0; j < kvh; j++)   /* kv_b = the used rows of U */
        for (int k = 0; k < nope + hd; k++) {
            size_t src = rel ? (k < nope ? (size_t)j * hd + dims[k] : ((size_t)kvh + j) * hd + (k - nope))
                             : (size_t)j * (nope + hd) + k;
            memcpy(w->kv_b_proj + ((size_t)j * (nope + hd) + k) * r, Uf + src * r, sizeof(float) * r);
        }
    z.kv_rel_err = factor_rel_err(M, w->kv_b_proj, w->kv_a_proj, rows_kv, r, d, tmp);
    if (w->kv_a_norm) for (int i = 0; i < r; i++) w->kv_a_norm[i] = 1.0f;
    /* rope key rows: mean over the teacher's KV heads of each head's rope rows (SPEC §5) */
    double re = 0, rn = 0;
    for (int k = 0; k < rope; k++) {
        float *dst = w->kv_a_proj + ((size_t)r + k) * d;
        memset(dst, 0, sizeof(float) * d);
        for (int t = 0; t < s->Hkv; t++) {
            const float *src = s->wk + ((size_t)t * hd + dims[nope + k]) * d;
            for (int c = 0; c < d; c++) dst[c] += src[c];
        }
        for (int c = 0; c < d; c++) dst[c] /= (float)s->Hkv;
        for (int t = 0; t < s->Hkv; t++) {   /* how far the shared key is from each head's */
            const float *src = s->wk + ((size_t)t * hd + dims[nope + k]) * d;
            for (int c = 0; c < d; c++) { re += ((double)src[c] - dst[c]) * ((double)src[c] - dst[c]); rn += (double)src[c] * src[c]; }
        }
    }
    z.rope_rel_err = rn > 0 ? sqrt(re / rn) : 0.0;
    memcpy(w->o_proj, s->wo, sizeof(float) * (size_t)d * H * hd);
    if (st) *st = z;
done:
    free(Q); free(M); free(S); free(Uf); free(tmp); free(sg);
    return rc;
}

/* ---- Mamba2 ----------------------------------------------------------------------------- */

int zb_compose_mamba2(const zb_attn_src *s, const zb_mamba2_dims *m, const zb_mamba2_weights *w) {
    size_t kd = (size_t)s->Hkv * s->hd, qd = (size_t)s->H * s->hd, d = (size_t)s->d;
    if ((size_t)m->x_groups * m->headdim != kd || (size_t)m->b_groups * m->d_state != kd ||
        (size_t)m->c_groups * m->d_state != qd || (size_t)m->d_inner != qd)
        return zb_fail(ZB_ESHAPE,
                       "Mamba2 dims (d_inner %d, x %dx%d, B %dx%d, C %dx%d) do not match the teacher's "
                       "attention (q %zu, k/v %zu rows): SPEC §4 wants x/B = Hkv*hd, C = d_inner = H*hd",
                       m->d_inner, m->x_groups, m->headdim, m->b_groups, m->d_state, m->c_groups,
                       m->d_state, qd, kd);
    float *x = w->in_proj + (size_t)m->d_inner * d, *B = x + kd * d, *C = B + kd * d;
    memcpy(x, s->wv, sizeof(float) * kd * d);
    memcpy(B, s->wk, sizeof(float) * kd * d);
    memcpy(C, s->wq, sizeof(float) * qd * d);
    memcpy(w->out_proj, s->wo, sizeof(float) * d * qd);
    return ZB_OK;
}

/* ---- blocks and whole models ------------------------------------------------------------- */

int zb_compose_check(const zb_config *tc, const zb_config *sc, const char *src) {
    if (tc->d_model != sc->d_model || tc->ffn != sc->ffn || tc->vocab != sc->vocab)
        return zb_fail(ZB_ESHAPE, "%s: teacher (d %d, ffn %d, vocab %d) and student (d %d, ffn %d, vocab %d) differ",
                       src, tc->d_model, tc->ffn, tc->vocab, sc->d_model, sc->ffn, sc->vocab);
    if (tc->n_layers != sc->n_layers)
        return zb_fail(ZB_ESHAPE, "%s: teacher has %d layers, the student config %d", src, tc->n_layers,
                       sc->n_layers);
    for (int l = 0; l < tc->n_layers; l++)
        if (tc->kinds[l] != ZB_LAYER_ATTN)
            return zb_fail(ZB_EARG, "%s: teacher layer %d is %s, not attention", src, l,
                           zb_layer_kind_name(tc->kinds[l]));
    return ZB_OK;
}

int zb_compose_block(const zb_config *tc, const zb_block *t, const zb_config *sc, int sl,
                     zb_mla_init init, const zb_block *s, zb_mla_init_stats *st) {
    size_t d = (size_t)tc->d_model, F = (size_t)tc->ffn;
    zb_attn_src a = {tc->d_model, tc->n_heads, tc->n_kv_heads, tc->head_dim, t->wq, t->wk, t->wv, t->wo};
    zb_layer_kind kind = sc->kinds[sl];
    if (st) { memset(st, 0, sizeof *st); st->kv_energy = st->q_energy = 1.0; }
    if (kind == ZB_LAYER_MLA) {
        ZB_TRY(zb_compose_mla(&a, &sc->mla, init, &s->mla, st));
    } else if (kind == ZB_LAYER_MAMBA2) {
        ZB_TRY(zb_compose_mamba2(&a, &sc->mamba, &s->mamba));
    } else {
        if (sc->n_heads != tc->n_heads || sc->n_kv_heads != tc->n_kv_heads || sc->head_dim != tc->head_dim)
            return zb_fail(ZB_ESHAPE, "attention layer %d: student heads differ from the teacher's", sl);
        size_t qd = (size_t)tc->n_heads * tc->head_dim, kd = (size_t)tc->n_kv_heads * tc->head_dim;
        memcpy(s->wq, t->wq, sizeof(float) * qd * d);
        memcpy(s->wk, t->wk, sizeof(float) * kd * d);
        memcpy(s->wv, t->wv, sizeof(float) * kd * d);
        memcpy(s->wo, t->wo, sizeof(float) * qd * d);
    }
    memcpy(s->attn_norm, t->attn_norm, sizeof(float) * d);
    memcpy(s->mlp_norm, t->mlp_norm, sizeof(float) * d);
    memcpy(s->w_gate, t->w_gate, sizeof(float) * F * d);
    memcpy(s->w_up, t->w_up, sizeof(float) * F * d);
    memcpy(s->w_down, t->w_down, sizeof(float) * F * d);
    return ZB_OK;
}

int zb_compose_layer(const zb_config *tc, const zb_block *t, const zb_config *sc, int l,
                     uint64_t seed, zb_mla_init init, zb_model *one, zb_mla_init_stats *st) {
    zb_config c1 = zb_config_one_layer(sc, sc->kinds[l]);
    ZB_TRY(zb_model_init(one, &c1));
    zb_model_init_random(one, seed + 7919u * (uint64_t)(l + 1), 0.02f);
    int rc = zb_compose_block(tc, t, &c1, 0, init, &one->w.blocks[0], st);
    if (rc) zb_model_free(one);
    return rc;
}

int zb_compose_model(const zb_model *teacher, zb_model *student, uint64_t seed, zb_mla_init init,
                     zb_mla_init_stats *stats) {
    const zb_config *tc = &teacher->cfg, *sc = &student->cfg;
    ZB_TRY(zb_compose_check(tc, sc, "compose"));
    size_t Vd = (size_t)tc->vocab * tc->d_model;
    memcpy(student->w.embed, teacher->w.embed, sizeof(float) * Vd);
    memcpy(student->w.final_norm, teacher->w.final_norm, sizeof(float) * tc->d_model);
    if (!sc->tie_embeddings) memcpy(student->w.lm_head, teacher->w.lm_head, sizeof(float) * Vd);
    for (int l = 0; l < tc->n_layers; l++) {
        zb_model one;
        ZB_TRY(zb_compose_layer(tc, &teacher->w.blocks[l], sc, l, seed, init, &one, stats ? &stats[l] : NULL));
        /* the same tensors as the streaming `zebra compose` writes, by name */
        int rc = ZB_OK;
        char name[ZB_PARAM_NAME + 16];
        for (int i = 0; i < one.n_params && !rc; i++) {
            const zb_param *p = &one.params[i];
            if (p->layer != 0) continue;
            snprintf(name, sizeof name, "model.layers.%d.%s", l, p->name + strlen("model.layers.0."));
            const zb_param *q = zb_model_param(student, name);
            if (!q || q->numel != p->numel) rc = zb_fail(ZB_ESHAPE, "compose: student has no tensor '%s' of %zu values", name, p->numel);
            else memcpy(student->data + q->offset, one.data + p->offset, sizeof(float) * p->numel);
        }
        zb_model_free(&one);
        ZB_TRY(rc);
    }
    return ZB_OK;
}

/* ---- assembly from the two ILD models (SPEC §6) ------------------------------------------ */

int zb_assemble_config(const zb_config *mc, const zb_config *ac, const unsigned char *is_mla, zb_config *out,
                       const char *src) {
    if (mc->n_layers != ac->n_layers || mc->d_model != ac->d_model || mc->ffn != ac->ffn || mc->vocab != ac->vocab ||
        mc->tie_embeddings != ac->tie_embeddings)
        return zb_fail(ZB_ESHAPE, "%s: the Mamba2 model (%d layers, d %d, ffn %d, vocab %d) and the MLA model (%d layers, "
                       "d %d, ffn %d, vocab %d) are not of one teacher", src, mc->n_layers, mc->d_model, mc->ffn,
                       mc->vocab, ac->n_layers, ac->d_model, ac->ffn, ac->vocab);
    for (int l = 0; l < mc->n_layers; l++) {
        const zb_config *from = is_mla[l] ? ac : mc;
        zb_layer_kind want = is_mla[l] ? ZB_LAYER_MLA : ZB_LAYER_MAMBA2;
        if (from->kinds[l] != want)
            return zb_fail(ZB_EARG, "%s: layer %d should come from the %s model, whose layer %d is %s", src, l,
                           is_mla[l] ? "MLA" : "Mamba2", l, zb_layer_kind_name(from->kinds[l]));
    }
    *out = *ac;   /* the MLA settings (dims, rope) are the MLA model's */
    out->mamba = mc->mamba;
    snprintf(out->model_type, sizeof out->model_type, "zebra");
    for (int l = 0; l < mc->n_layers; l++) out->kinds[l] = is_mla[l] ? ZB_LAYER_MLA : ZB_LAYER_MAMBA2;
    if (!out->teacher_layers) {
        out->teacher_layers = mc->teacher_layers ? mc->teacher_layers : mc->n_layers;
        out->teacher_kv_heads = mc->teacher_kv_heads ? mc->teacher_kv_heads : mc->n_kv_heads;
        out->teacher_head_dim = mc->teacher_head_dim ? mc->teacher_head_dim : mc->head_dim;
    }
    return zb_config_validate(out, src);
}

int zb_assemble_model(const zb_model *M, const zb_model *A, zb_model *h) {
    for (int i = 0; i < h->n_params; i++) {
        const zb_param *p = &h->params[i];
        const zb_model *src = p->layer >= 0 && h->cfg.kinds[p->layer] == ZB_LAYER_MLA ? A : M;
        const zb_param *q = zb_model_param(src, p->name);
        if (!q || q->numel != p->numel)
            return zb_fail(ZB_ESHAPE, "assemble: the %s model has no tensor '%s' of %zu values",
                           src == A ? "MLA" : "Mamba2", p->name, p->numel);
        memcpy(h->data + p->offset, src->data + q->offset, sizeof(float) * p->numel);
    }
    return ZB_OK;
}

zb_config zb_config_one_layer(const zb_config *c, zb_layer_kind kind) {
    zb_config o = *c;
    o.n_layers = 1;
    o.kinds[0] = kind;
    o.vocab = 1;
    o.tie_embeddings = 1;
    o.bos_id = 0;
    o.n_eos = 0;
    return o;
}
