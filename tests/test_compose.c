/* test_compose.c — initialisation of a hybrid from a Llama target (SPEC.md §5).
 *
 *  1. low rank: kv_b * kv_a(latent) reproduces the rows of [W_k; W_v] that kv_b produces with
 *     Frobenius error == sqrt(sum of the discarded sigma^2), and ||kv_b kv_a||^2/||M||^2 is the
 *     reported energy; same for the query factors (q_b q_a vs the kept, rescaled q rows).
 *  2. one KV head, full rank, nope + rope = head_dim, rotation off (every inv_freq zeroed in
 *     both models = every position 0): the MLA layer reproduces the attention output to
 *     rounding for T = 8, q_lora_rank 0 and full, rope_interleave 0 and 1. And with nope = 0,
 *     rope = head_dim and the real llama3 rope ON: also exact (the rope pairs keep their
 *     frequencies). A GQA case (2 KV heads, low rank) is only measured and printed.
 *  3. Mamba2 mapping with A -> 0, dt = 1, identity conv, D = 0: the SSD output y (before the
 *     gate / norm / out_proj) equals causal linear attention with q = silu(W_q x),
 *     k = silu(W_k x), v = silu(W_v x) (the SiLU is the conv block's, SPEC §4), GQA groups.
 *  4. hf-llama-tiny (a RANDOM-weight Llama, so "loss on real text" means nothing for it) composed
 *     into tests/compose-tiny.json ([mla, mamba2, mla]) and into all-MLA variants: logits
 *     finite; KL(teacher || student) per token on the fixture's ids against the same student
 *     with random mixers (teacher embedding / norms / MLPs kept): all-MLA full rank < 0.4x,
 *     all-MLA at r_q 48 / r_kv 32 < 0.45x, hybrid < 0.85x (measured 0.29, 0.33, 0.71). Full
 *     rank is not exact here: the shared rope key is the MEAN of the 2 KV heads' rope rows
 *     (SPEC §5), and this random teacher's two KV heads are unrelated (with rotation off in both
 *     models the full-rank ratio is still 0.20); a fresh Mamba2 layer's gated RMSNorm rescales
 *     its output to unit RMS per head, a large change against this teacher's tiny random-weight
 *     attention outputs, so the hybrid's margin is the smallest.
 *  5. --init release: q_a spans the top right singular vectors of the WHOLE W_q (what lies
 *     outside its rows == the discarded sigma), q_b = per head the first nope and last rope rows
 *     of U = W_q V S^-1; the same for kv_a / kv_b with the whole [W_k; W_v]; kv_a's rope rows =
 *     the mean over KV heads of W_k's last rope rows; exact vs attention at full rank with one
 *     KV head and rotation off. Tolerances: float factors divided by sigma_j^2, so
 *     4 d eps (sigma_1 / sigma_r)^2.
 *  6. Assembly: the hybrid from untrained all-Mamba2 / all-MLA compositions == the composition
 *     from the teacher, bit for bit; after changing M and A every tensor comes from its layer's
 *     source; a source of the wrong kind is refused.
 *  With a 3rd argument student.h5 (written by `zebra compose`, f32, seed 1): its tensors equal
 *  the in-memory composition bit for bit (the streaming path == zb_compose_model).
 * Usage: test_compose FIXTURES TESTS_DIR [student.h5] */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compose.h"
#include "model.h"
#include "safetensors.h"
#include "zb_common.h"
#include "zb_test.h"

static zb_config g_base;   /* tests/compose-tiny.json */

static zb_config one_layer(int d, int H, int Hkv, int hd, zb_layer_kind k) {
    zb_config c = g_base;
    c.n_layers = 1;
    c.kinds[0] = k;
    c.d_model = d; c.n_heads = H; c.n_kv_heads = Hkv; c.head_dim = hd;
    c.ffn = 8; c.vocab = 16; c.bos_id = 0; c.n_eos = 0;
    c.teacher_layers = c.teacher_kv_heads = c.teacher_head_dim = 0;
    return c;
}

static zb_mla_dims mla_dims(int H, int kvh, int rq, int r, int nope, int rope, int v, int il) {
    zb_mla_dims m;
    memset(&m, 0, sizeof m);
    m.n_heads = H; m.q_lora_rank = rq; m.kv_lora_rank = r; m.qk_nope = nope; m.qk_rope = rope;
    m.v_head_dim = v; m.kv_heads = kvh; m.rope_interleave = il;
    return m;
}

static double frob(const float *a, const float *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) { double e = (double)a[i] - (b ? b[i] : 0.0); s += e * e; }
    return sqrt(s);
}

/* C[m,n] = A[m,k] B[k,n] in double, stored as float */
static void mm(const float *A, const float *B, float *C, int m, int k, int n) {
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double s = 0;
            for (int p = 0; p < k; p++) s += (double)A[(size_t)i * k + p] * B[(size_t)p * n + j];
            C[(size_t)i * n + j] = (float)s;
        }
}

/* The float32 bound of ||B A - X||_F against its exact (double SVD) value, for factors B [m,k]
 * and A [k,n] that are the float roundings of exact ones and the product formed in double and
 * stored in float (zb_test.h): each factor value off by u relatively gives 2 u sum_p |B_ip A_pj|
 * per product element, the store u |(BA)_ij|; the double SVD adds (m + n) 2^-53 ||X|| at most. */
static double factor_bound(const float *Bf, const float *Af, const float *BA, int m, int k, int n, double nX) {
    float *ab = malloc(sizeof(float) * (size_t)m * k), *aa = malloc(sizeof(float) * (size_t)k * n);
    float *pr = malloc(sizeof(float) * (size_t)m * n);
    for (size_t i = 0; i < (size_t)m * k; i++) ab[i] = fabsf(Bf[i]);
    for (size_t i = 0; i < (size_t)k * n; i++) aa[i] = fabsf(Af[i]);
    mm(ab, aa, pr, m, k, n);
    double b = 2 * ZB_U32 * frob(pr, NULL, (size_t)m * n) + ZB_U32 * frob(BA, NULL, (size_t)m * n) +
               (m + n) * 0x1p-53 * nX;
    free(ab); free(aa); free(pr);
    return b;
}

/* A random one-layer teacher (d 64, 4 heads, 2 KV heads of 16; weights N(0, 0.1), seed) and the
 * MLA layer md composed from it by init into s. */
static int compose_one(zb_mla_dims md, uint64_t seed, zb_mla_init init, zb_model *t, zb_model *s,
                       zb_mla_init_stats *st) {
    zb_config tc = one_layer(64, 4, 2, 16, ZB_LAYER_ATTN), sc = one_layer(64, 4, 2, 16, ZB_LAYER_MLA);
    sc.mla = md;
    if (md.rope.theta == 0) sc.mla.rope = sc.rope;   /* the MLA rotates with the teacher's rope */
    ZB_TRY(zb_model_init(t, &tc));
    ZB_TRY(zb_model_init(s, &sc));
    zb_model_init_random(t, seed, 0.1f);
    zb_model_init_random(s, seed + 1, 0.02f);
    return zb_compose_block(&tc, &t->w.blocks[0], &sc, 0, init, &s->w.blocks[0], st);
}

/* ---- 1 ---------------------------------------------------------------------------------- */
static int test_lowrank(void) {
    int d = 64, H = 4, Hkv = 2, hd = 16;
    zb_mla_dims md = mla_dims(H, Hkv, 24, 12, 8, 8, 16, 1);
    zb_model t, s;
    zb_mla_init_stats st;
    ZB_TEST_OK(compose_one(md, 11, ZB_MLA_INIT_ROPE_PAIRS, &t, &s, &st));
    const zb_block *tb = &t.w.blocks[0];
    const zb_mla_weights *w = &s.w.blocks[0].mla;
    zb_attn_src a = {d, H, Hkv, hd, tb->wq, tb->wk, tb->wv, tb->wo};
    int rows = Hkv * (8 + hd), r = 12;
    float *M = malloc(sizeof(float) * rows * d), *Mh = malloc(sizeof(float) * rows * d);
    ZB_TEST_OK(zb_mla_kv_rows(&a, &md, M));
    /* the rows are the teacher's: head 1's first value row is W_v row hd */
    zb_check(!memcmp(M + (size_t)(Hkv * (8 + hd) - hd) * d, tb->wv + (size_t)hd * d, sizeof(float) * d),
             "kv rows: value rows of kv head 1 are W_v's");
    mm(w->kv_b_proj, w->kv_a_proj, Mh, rows, r, d);
    double err = frob(Mh, M, (size_t)rows * d), nM = frob(M, NULL, (size_t)rows * d);
    double nMh = frob(Mh, NULL, (size_t)rows * d);
    printf("kv rank %d of %d: ||M - kv_b kv_a||_F = %.8f, sqrt(discarded sigma^2) = %.8f, energy %.6f "
           "(||Mhat||^2/||M||^2 = %.6f), 99%% at rank %d\n",
           r, rows, err, st.kv_discarded, st.kv_energy, nMh * nMh / (nM * nM), st.kv_rank_99);
    double kb = factor_bound(w->kv_b_proj, w->kv_a_proj, Mh, rows, r, d, nM);
    zb_check(fabs(err - st.kv_discarded) <= kb, "kv: Frobenius error %.8g == discarded %.8g (|d| %.2g, bound %.2g)",
             err, st.kv_discarded, fabs(err - st.kv_discarded), kb);
    /* ||Mhat||^2 = the kept sigma^2 exactly, and moves by at most 2 ||Mhat|| kb */
    zb_check(fabs(nMh * nMh / (nM * nM) - st.kv_energy) <= 2 * nMh * kb / (nM * nM), "kv: energy matches the kept norm");
    zb_check(st.kv_energy > 0.3 && st.kv_energy < 1.0, "kv: energy in (0,1) at low rank: %.4f", st.kv_energy);
    zb_check(fabs(st.kv_rel_err - err / nM) <= kb / nM, "kv: reported relative error %.6f == ||M - kv_b kv_a|| / ||M|| %.6f",
             st.kv_rel_err, err / nM);
    /* query factors against the kept, rescaled q rows */
    int dims[16], dqk = 16, rq = 24;
    ZB_TEST_OK(zb_mla_head_dims(hd, &md, dims));
    float *Q = malloc(sizeof(float) * H * dqk * d), *Qh = malloc(sizeof(float) * H * dqk * d);
    for (int h = 0; h < H; h++)
        for (int k = 0; k < dqk; k++)
            memcpy(Q + ((size_t)h * dqk + k) * d, tb->wq + ((size_t)h * hd + dims[k]) * d, sizeof(float) * d);
    mm(w->q_b_proj, w->q_a_proj, Qh, H * dqk, rq, d);
    double eq = frob(Qh, Q, (size_t)H * dqk * d);
    printf("q rank %d of %d: ||Q - q_b q_a||_F = %.8f, discarded %.8f, energy %.6f\n", rq, H * dqk, eq,
           st.q_discarded, st.q_energy);
    double qb = factor_bound(w->q_b_proj, w->q_a_proj, Qh, H * dqk, rq, d, frob(Q, NULL, (size_t)H * dqk * d));
    zb_check(fabs(eq - st.q_discarded) <= qb, "q: error == discarded (|d| %.2g, bound %.2g)", fabs(eq - st.q_discarded), qb);
    /* rope pairs keep their frequency; kept dims are a permutation when nope+rope = hd */
    int seen[16] = {0}, ok = 1;
    for (int k = 0; k < 16; k++) seen[dims[k]]++;
    for (int k = 0; k < 16; k++) ok &= seen[k] == 1;
    zb_check(ok, "head dims: a permutation of 0..hd-1");
    ok = 1;
    for (int j = 0; j < 4; j++) {   /* interleaved: stored (2j, 2j+1) = teacher (i, i + hd/2) */
        int i = dims[8 + 2 * j];
        ok &= dims[8 + 2 * j + 1] == i + hd / 2;
        /* theta^(-2i/hd) with i = 2j is theta^(-2j/(hd/2)): the same exponent exactly, so the same float */
        ok &= t.rope.inv_freq[i] == s.rope_mla.inv_freq[j];
    }
    zb_check(ok, "rope pairs: teacher pair (i, i+hd/2) with the MLA pair's inv_freq");
    free(M); free(Mh); free(Q); free(Qh);
    zb_model_free(&t); zb_model_free(&s);
    return 0;
}

/* ---- 2 ---------------------------------------------------------------------------------- */
/* MLA-from-attention vs attention on random x [B*T, d]; returns max_rel; exact: the
 * composition is exact up to rounding, check it. */
static double mla_vs_attn_init(int Hkv, zb_mla_dims md, int rope_off, zb_mla_init init, const char *what, int exact) {
    int d = 64, H = 4, hd = 16, B = 2, T = 8, N = B * T;
    zb_config tc = one_layer(d, H, Hkv, hd, ZB_LAYER_ATTN);
    zb_config sc = one_layer(d, H, Hkv, hd, ZB_LAYER_MLA);
    sc.mla = md;
    if (md.rope.theta == 0) sc.mla.rope = sc.rope;   /* the teacher's rope unless md says */
    zb_model t, s;
    zb_acts at, as;
    if (zb_model_init(&t, &tc) || zb_model_init(&s, &sc) || zb_acts_alloc(&at, &t, B, T) ||
        zb_acts_alloc(&as, &s, B, T)) { zb_check(0, "%s: setup: %s", what, zb_errmsg()); return 1; }
    zb_model_init_random(&t, 21, 0.15f);
    zb_model_init_random(&s, 22, 0.02f);
    zb_mla_init_stats st;
    if (zb_compose_block(&tc, &t.w.blocks[0], &sc, 0, init, &s.w.blocks[0], &st)) {
        zb_check(0, "%s: compose: %s", what, zb_errmsg()); return 1;
    }
    if (rope_off) {
        for (int i = 0; i < ZB_ROPE_MAX_DIM / 2; i++) t.rope.inv_freq[i] = s.rope_mla.inv_freq[i] = 0.0f;
    }
    float *x = malloc(sizeof(float) * N * d), *ot = malloc(sizeof(float) * N * d), *os = malloc(sizeof(float) * N * d);
    zb_rng rng;
    zb_rng_seed(&rng, 5);
    for (int i = 0; i < N * d; i++) x[i] = zb_rng_normal(&rng);
    zb_mixer_forward(&t, 0, x, ot, at.mix_acts[0], B, T);
    zb_mixer_forward(&s, 0, x, os, as.mix_acts[0], B, T);
    double e = zb_max_rel(os, ot, (size_t)N * d);
    /* exact cases: two float32 evaluations of one function (the MLA weights the float-rounded
     * factors of an exact SVD, each off by u relatively: one more rounding per product) within
     * the bound along both mixers' paths, magnitudes |att| |W_o| of the MLA's output */
    if (exact) {
        float *mag = malloc(sizeof(float) * N * d);
        zb_mag_matmul(mag, zb_mla_acts_att(&sc.mla, as.mix_acts[0], B, T), s.w.blocks[0].mla.o_proj, N, d,
                      sc.mla.n_heads * sc.mla.v_head_dim);
        double path = sqrt(zb_ops_attn(d, H, hd, T, 1) + zb_ops_mla(&sc.mla, d, T, 1) + 4);
        char w2[200];
        snprintf(w2, sizeof w2, "%s: MLA vs attention (kv energy %.6f)", what, st.kv_energy);
        zb_check_elem_bound(w2, os, ot, mag, (size_t)N * d, zb_bound_scale(path));
        free(mag);
    }
    printf("%-58s max_rel %.3g  kv energy %.6f  q energy %.6f\n", what, e, st.kv_energy, st.q_energy);
    free(x); free(ot); free(os);
    zb_acts_free(&at); zb_acts_free(&as);
    zb_model_free(&t); zb_model_free(&s);
    return e;
}

static double mla_vs_attn(int Hkv, zb_mla_dims md, int rope_off, const char *what, int exact) {
    return mla_vs_attn_init(Hkv, md, rope_off, ZB_MLA_INIT_ROPE_PAIRS, what, exact);
}

static void test_mla_exact(void) {
    /* one KV head: kv rows = nope + hd = 24 <= d = 64, q rows 4*16 = 64 = d: full ranks */
    for (int il = 0; il < 2; il++) {
        char what[128];
        snprintf(what, sizeof what, "1 kv head, full rank, rotation off, q_proj, interleave %d", il);
        mla_vs_attn(1, mla_dims(4, 1, 0, 24, 8, 8, 16, il), 1, what, 1);
        snprintf(what, sizeof what, "1 kv head, full rank, rotation off, q_lora 64, interleave %d", il);
        mla_vs_attn(1, mla_dims(4, 1, 64, 24, 8, 8, 16, il), 1, what, 1);
        snprintf(what, sizeof what, "1 kv head, full rank, nope 0 rope 16, llama3 rope ON, il %d", il);
        mla_vs_attn(1, mla_dims(4, 1, 64, 16, 0, 16, 16, il), 0, what, 1);
    }
    /* a rope that rotates but nope > 0: the nope dims lose their rotation (not exact) */
    mla_vs_attn(1, mla_dims(4, 1, 0, 24, 8, 8, 16, 1), 0, "1 kv head, full rank, nope 8 rope 8, rope ON (measured)", 0);
    /* GQA, kv_heads = Hkv, full rank: the shared rope key is a mean over 2 heads (measured) */
    mla_vs_attn(2, mla_dims(4, 2, 0, 48, 8, 8, 16, 1), 1, "2 kv heads, full rank, rotation off (measured)", 0);
    mla_vs_attn(2, mla_dims(4, 2, 32, 16, 8, 8, 16, 1), 1, "2 kv heads, r_kv 16 of 48, r_q 32 (measured)", 0);
    /* kv_heads = H (KV heads repeated) and 1 teacher KV head: exact again */
    mla_vs_attn(1, mla_dims(4, 4, 0, 64, 8, 8, 16, 0), 1, "kv heads repeated to H=4, full rank, rotation off", 1);
}

/* ---- 3 ---------------------------------------------------------------------------------- */
static int test_mamba_linear_attention(void) {
    int d = 32, H = 4, Hkv = 2, hd = 8, B = 2, T = 10, N = B * T, rep = H / Hkv;
    zb_config tc = one_layer(d, H, Hkv, hd, ZB_LAYER_ATTN);
    zb_config sc = one_layer(d, H, Hkv, hd, ZB_LAYER_MAMBA2);
    zb_mamba2_dims *m = &sc.mamba;
    m->d_inner = H * hd; m->nheads = H; m->headdim = hd; m->d_state = hd;
    m->x_groups = Hkv; m->b_groups = Hkv; m->c_groups = H; m->conv_k = 4; m->chunk = 4;
    m->norm_group = hd; m->dt_min = 0; m->dt_max = INFINITY; m->conv_bias = 1;
    zb_model t, s;
    zb_acts as;
    ZB_TEST_OK(zb_model_init(&t, &tc));
    ZB_TEST_OK(zb_model_init(&s, &sc));
    ZB_TEST_OK(zb_acts_alloc(&as, &s, B, T));
    zb_model_init_random(&t, 31, 0.2f);
    zb_model_init_random(&s, 32, 0.02f);
    zb_mla_init_stats st;
    if (zb_compose_block(&tc, &t.w.blocks[0], &sc, 0, ZB_MLA_INIT_ROPE_PAIRS, &s.w.blocks[0], &st))
        return zb_check(0, "%s", zb_errmsg());
    const zb_mamba2_weights *w = &s.w.blocks[0].mamba;
    int P = zb_mamba2_in_proj_rows(m), cd = zb_mamba2_conv_dim(m);
    /* A -> 0, dt = softplus(0 + log(e-1)) = 1, identity conv, D = 0 */
    for (int h = 0; h < H; h++) { w->A_log[h] = -60.0f; w->dt_bias[h] = (float)log(exp(1.0) - 1.0); w->D[h] = 0.0f; }
    memset(w->in_proj + (size_t)(P - H) * d, 0, sizeof(float) * H * d);
    for (int c = 0; c < cd; c++) {
        for (int k = 0; k < m->conv_k; k++) w->conv_w[(size_t)c * m->conv_k + k] = k == m->conv_k - 1;
        w->conv_b[c] = 0.0f;
    }
    float *x = malloc(sizeof(float) * N * d), *out = malloc(sizeof(float) * N * d);
    float *q = malloc(sizeof(float) * N * H * hd), *k = malloc(sizeof(float) * N * Hkv * hd);
    float *v = malloc(sizeof(float) * N * Hkv * hd), *ref = malloc(sizeof(float) * N * H * hd);
    /* bound of each: the projections' float32 error (a dot over d: gamma(d) sum|x W|, through
     * silu (|silu'| <= 1.1) and its 3 roundings), carried by the products q.k and (q.k) v, plus the
     * chunked SSD's own sums (d_state, the chunk, the chunk states over T) against double */
    float *eq = malloc(sizeof(float) * N * H * hd), *ek = malloc(sizeof(float) * N * Hkv * hd);
    float *ev = malloc(sizeof(float) * N * Hkv * hd), *bnd = malloc(sizeof(float) * N * H * hd);
    zb_rng rng;
    zb_rng_seed(&rng, 7);
    for (int i = 0; i < N * d; i++) x[i] = zb_rng_normal(&rng);
    zb_mixer_forward(&s, 0, x, out, as.mix_acts[0], B, T);
    const float *y = zb_mamba2_acts_y(m, as.mix_acts[0], B, T);
    /* naive causal linear attention from the TEACHER's weights */
    const zb_block *tb = &t.w.blocks[0];
    for (int n = 0; n < N; n++) {
        for (int o = 0; o < H * hd; o++) {
            double a = 0, am = 0;
            for (int c = 0; c < d; c++) { a += (double)x[n * d + c] * tb->wq[(size_t)o * d + c]; am += fabs((double)x[n * d + c] * tb->wq[(size_t)o * d + c]); }
            q[n * H * hd + o] = zb_silu((float)a);
            eq[n * H * hd + o] = (float)(1.1 * zb_gamma32(d) * am + zb_gamma32(4) * fabsf(q[n * H * hd + o]));
        }
        for (int o = 0; o < Hkv * hd; o++) {
            double a = 0, b = 0, am = 0, bm = 0;
            for (int c = 0; c < d; c++) {
                a += (double)x[n * d + c] * tb->wk[(size_t)o * d + c]; b += (double)x[n * d + c] * tb->wv[(size_t)o * d + c];
                am += fabs((double)x[n * d + c] * tb->wk[(size_t)o * d + c]); bm += fabs((double)x[n * d + c] * tb->wv[(size_t)o * d + c]);
            }
            k[n * Hkv * hd + o] = zb_silu((float)a);
            v[n * Hkv * hd + o] = zb_silu((float)b);
            ek[n * Hkv * hd + o] = (float)(1.1 * zb_gamma32(d) * am + zb_gamma32(4) * fabsf(k[n * Hkv * hd + o]));
            ev[n * Hkv * hd + o] = (float)(1.1 * zb_gamma32(d) * bm + zb_gamma32(4) * fabsf(v[n * Hkv * hd + o]));
        }
    }
    for (int bb = 0; bb < B; bb++)
        for (int tt = 0; tt < T; tt++)
            for (int h = 0; h < H; h++) {
                int g = h / rep;
                const float *qt = q + ((size_t)(bb * T + tt) * H + h) * hd;
                const float *eqt = eq + ((size_t)(bb * T + tt) * H + h) * hd;
                for (int p = 0; p < hd; p++) {
                    double acc = 0, mag = 0, prop = 0;
                    for (int u = 0; u <= tt; u++) {
                        size_t ko = ((size_t)(bb * T + u) * Hkv + g) * hd;
                        const float *ku = k + ko;
                        double sc_ = 0, sm = 0, se = 0;
                        for (int e = 0; e < hd; e++) {
                            sc_ += (double)qt[e] * ku[e];
                            sm += fabs((double)qt[e] * ku[e]);
                            se += (double)eqt[e] * fabs(ku[e]) + fabs(qt[e]) * (double)ek[ko + e];
                        }
                        double vp = v[ko + p];
                        acc += sc_ * vp;
                        mag += sm * fabs(vp);
                        prop += se * fabs(vp) + fabs(sc_) * ev[ko + p];
                    }
                    size_t yo = ((size_t)(bb * T + tt) * H + h) * hd + p;
                    ref[yo] = (float)acc;
                    bnd[yo] = (float)(prop + zb_gamma32(hd + T + 2 * m->chunk + 8) * mag + ZB_U32 * fabs(acc));
                }
            }
    zb_check_elem_bound("Mamba2 (A->0, dt=1, identity conv) y == causal linear attention q=C k=B v=x", y, ref, bnd,
                        (size_t)N * H * hd, 1.0);
    zb_check(!memcmp(w->out_proj, tb->wo, sizeof(float) * d * H * hd), "out_proj == W_o");
    free(x); free(out); free(q); free(k); free(v); free(ref); free(eq); free(ek); free(ev); free(bnd);
    zb_acts_free(&as);
    zb_model_free(&t); zb_model_free(&s);
    return 0;
}

/* ---- 5: the release's initialisation (--init release) ------------------------------------ */

/* || F - G diag(1/sigma^2) ||_F / ||F||_F with G = R V^T-rows products: checks that the factor F
 * [m, r] holds the rows R [m, n] of a matrix expressed in the latent basis SVt [r, n] whose rows
 * are orthogonal with norms sigma (F = R SVt^T diag(1/sigma^2), i.e. U = A V S^-1). cond
 * receives sigma_1 / sigma_r. */
static double rows_in_basis(const float *F, const float *R, const float *SVt, int m, int r, int n, double *cond) {
    double *s2 = calloc((size_t)r, sizeof(double)), e = 0, f = 0;
    for (int j = 0; j < r; j++)
        for (int c = 0; c < n; c++) s2[j] += (double)SVt[(size_t)j * n + c] * SVt[(size_t)j * n + c];
    for (int i = 0; i < m; i++)
        for (int j = 0; j < r; j++) {
            double g = 0;
            for (int c = 0; c < n; c++) g += (double)R[(size_t)i * n + c] * SVt[(size_t)j * n + c];
            double ref = g / s2[j], x = F[(size_t)i * r + j];
            e += (x - ref) * (x - ref);
            f += x * x;
        }
    *cond = sqrt(s2[0] / s2[r - 1]);
    free(s2);
    return sqrt(e / f);
}

/* sum over rows of A [m, n] of the squared distance to the row space of SVt [r, n] (orthogonal
 * rows): what a rank-r SVD of A discards when SVt holds its top right singular vectors */
static double outside_rowspace(const float *A, const float *SVt, int m, int r, int n) {
    double out = 0;
    double *p = malloc(sizeof(double) * n), *s2 = calloc((size_t)r, sizeof(double));
    for (int j = 0; j < r; j++)
        for (int c = 0; c < n; c++) s2[j] += (double)SVt[(size_t)j * n + c] * SVt[(size_t)j * n + c];
    for (int i = 0; i < m; i++) {
        for (int c = 0; c < n; c++) p[c] = A[(size_t)i * n + c];
        for (int j = 0; j < r; j++) {
            double g = 0;
            for (int c = 0; c < n; c++) g += (double)A[(size_t)i * n + c] * SVt[(size_t)j * n + c];
            for (int c = 0; c < n; c++) p[c] -= g / s2[j] * SVt[(size_t)j * n + c];
        }
        for (int c = 0; c < n; c++) out += p[c] * p[c];
    }
    free(p); free(s2);
    return out;
}

static int test_release_init(void) {
    int d = 64, H = 4, Hkv = 2, hd = 16, nope = 8, rope = 8, rq = 24, r = 12;
    zb_model t, s;
    zb_mla_init_stats st;
    ZB_TEST_OK(compose_one(mla_dims(H, Hkv, rq, r, nope, rope, 16, 1), 41, ZB_MLA_INIT_RELEASE, &t, &s, &st));
    const zb_block *tb = &t.w.blocks[0];
    const zb_mla_weights *w = &s.w.blocks[0].mla;
    double eps = 5.96e-8, cond = 0;
    /* q: q_a spans the top-rq right singular vectors of the WHOLE W_q ... */
    double wq2 = 0;
    for (int i = 0; i < H * hd * d; i++) wq2 += (double)tb->wq[i] * tb->wq[i];
    double outq = outside_rowspace(tb->wq, w->q_a_proj, H * hd, rq, d);
    /* q_a's rows: the top right singular vectors (x sigma) rounded to float, each off by u
     * relatively: the projector onto them moves by at most 2 rq u, the residual by that times
     * ||W_q||_F (the double SVD's own error is far below) */
    zb_check(fabs(sqrt(outq) - st.q_discarded) <= 2 * rq * ZB_U32 * sqrt(wq2),
             "release q: W_q outside q_a's rows %.6g == the discarded sigma of the whole W_q %.6g", sqrt(outq), st.q_discarded);
    /* ... and q_b holds, per head, the first nope and the last rope rows of U = W_q V S^-1 */
    int dqk = nope + rope;
    float *R = malloc(sizeof(float) * (size_t)2 * Hkv * hd * d);
    for (int h = 0; h < H; h++)
        for (int k = 0; k < dqk; k++) {
            int row = k < nope ? k : hd - rope + (k - nope);
            memcpy(R + ((size_t)h * dqk + k) * d, tb->wq + ((size_t)h * hd + row) * d, sizeof(float) * d);
        }
    double eqb = rows_in_basis(w->q_b_proj, R, w->q_a_proj, H * dqk, rq, d, &cond);
    double tol = 4.0 * d * eps * cond * cond;   /* float factors, divided by sigma_j^2 */
    zb_check(eqb <= tol, "release q_b == first %d and last %d rows of U per head: rel %.3g (tol %.3g, cond %.2f)", nope,
             rope, eqb, tol, cond);
    /* kv: kv_a latent spans the top-r right singular vectors of the whole [W_k; W_v] ... */
    memcpy(R, tb->wk, sizeof(float) * (size_t)Hkv * hd * d);
    memcpy(R + (size_t)Hkv * hd * d, tb->wv, sizeof(float) * (size_t)Hkv * hd * d);
    double kv2 = 0;
    for (int i = 0; i < 2 * Hkv * hd * d; i++) kv2 += (double)R[i] * R[i];
    double outkv = outside_rowspace(R, w->kv_a_proj, 2 * Hkv * hd, r, d);
    zb_check(fabs(sqrt(outkv) - st.kv_discarded) <= 2 * r * ZB_U32 * sqrt(kv2),
             "release kv: [W_k; W_v] outside kv_a's latent rows %.6g == discarded %.6g (rope key rows in the SVD)",
             sqrt(outkv), st.kv_discarded);
    /* ... kv_b = per head its first nope key rows and its value rows of U */
    float *Rk = malloc(sizeof(float) * (size_t)Hkv * (nope + hd) * d);
    for (int j = 0; j < Hkv; j++) {
        for (int k = 0; k < nope; k++)
            memcpy(Rk + ((size_t)j * (nope + hd) + k) * d, tb->wk + ((size_t)j * hd + k) * d, sizeof(float) * d);
        memcpy(Rk + ((size_t)j * (nope + hd) + nope) * d, tb->wv + (size_t)j * hd * d, sizeof(float) * (size_t)hd * d);
    }
    double ekb = rows_in_basis(w->kv_b_proj, Rk, w->kv_a_proj, Hkv * (nope + hd), r, d, &cond);
    tol = 4.0 * d * eps * cond * cond;
    zb_check(ekb <= tol, "release kv_b == first %d key rows and the value rows of U per head: rel %.3g (tol %.3g)", nope,
             ekb, tol);
    /* rope rows of kv_a = mean over the KV heads of the last rope rows of W_k */
    double re = 0, rn = 0;
    for (int k = 0; k < rope; k++)
        for (int c = 0; c < d; c++) {
            double m = 0;
            for (int j = 0; j < Hkv; j++) m += tb->wk[((size_t)j * hd + hd - rope + k) * d + c];
            m /= Hkv;
            double x = w->kv_a_proj[((size_t)r + k) * d + c];
            re += (x - m) * (x - m);
            rn += m * m;
        }
    zb_check(sqrt(re / rn) <= 2 * Hkv * eps, "release rope key rows == mean over KV heads of W_k's last %d rows (rel %.3g)",
             rope, sqrt(re / rn));
    printf("release init: kv err %.4f, q err %.4f, rope err %.4f (energy kv %.4f, q %.4f)\n", st.kv_rel_err,
           st.q_rel_err, st.rope_rel_err, st.kv_energy, st.q_energy);
    free(R); free(Rk);
    zb_model_free(&t); zb_model_free(&s);
    /* exact at full rank with one KV head, nope + rope = hd, rotation off */
    for (int il = 0; il < 2; il++) {
        char what[96];
        snprintf(what, sizeof what, "release init, 1 kv head, full rank, rotation off, interleave %d", il);
        mla_vs_attn_init(1, mla_dims(4, 1, 64, 32, 8, 8, 16, il), 1, ZB_MLA_INIT_RELEASE, what, 1);
    }
    return 0;
}

/* ---- 6: assembly from the two ILD models ------------------------------------------------ */

static int test_assembly(const char *fx) {
    char p[4096];
    zb_model t, M, A, h, ref;
    snprintf(p, sizeof p, "%s/hf-llama-tiny", fx);
    ZB_TEST_OK(zb_model_load(&t, p));
    zb_config mc = g_base, ac = g_base, hc;
    int L = g_base.n_layers;
    for (int l = 0; l < L; l++) { mc.kinds[l] = ZB_LAYER_MAMBA2; ac.kinds[l] = ZB_LAYER_MLA; }
    ZB_TEST_OK(zb_model_init(&M, &mc));
    ZB_TEST_OK(zb_model_init(&A, &ac));
    ZB_TEST_OK(zb_compose_model(&t, &M, 1, ZB_MLA_INIT_ROPE_PAIRS, NULL));
    ZB_TEST_OK(zb_compose_model(&t, &A, 1, ZB_MLA_INIT_ROPE_PAIRS, NULL));
    unsigned char is_mla[ZB_MAX_LAYERS] = {0};
    for (int l = 0; l < L; l++) is_mla[l] = g_base.kinds[l] == ZB_LAYER_MLA;   /* [mla, mamba2, mla] */
    ZB_TEST_OK(zb_assemble_config(&mc, &ac, is_mla, &hc, "test"));
    ZB_TEST_OK(zb_model_init(&h, &hc));
    ZB_TEST_OK(zb_assemble_model(&M, &A, &h));
    /* untrained M and A: the assembly is the composition from the teacher, bit for bit */
    ZB_TEST_OK(zb_model_init(&ref, &g_base));
    ZB_TEST_OK(zb_compose_model(&t, &ref, 1, ZB_MLA_INIT_ROPE_PAIRS, NULL));
    zb_check(h.n_floats == ref.n_floats && !memcmp(h.data, ref.data, sizeof(float) * h.n_floats),
             "assembly of the untrained all-Mamba2 and all-MLA models == compose from the teacher");
    /* whole layers: after changing every tensor of M and A, each layer is its source's */
    for (size_t i = 0; i < M.n_floats; i++) M.data[i] += 1.0f;
    for (size_t i = 0; i < A.n_floats; i++) A.data[i] += 2.0f;
    ZB_TEST_OK(zb_assemble_model(&M, &A, &h));
    int bad = 0;
    for (int i = 0; i < h.n_params; i++) {
        const zb_param *q = &h.params[i];
        int mla = q->layer >= 0 && is_mla[q->layer];
        const zb_param *src = zb_model_param(mla ? &A : &M, q->name);
        bad += !src || memcmp(h.data + q->offset, (mla ? A.data : M.data) + src->offset, sizeof(float) * q->numel);
    }
    zb_check(bad == 0, "every tensor (mixer, MLP, norms; globals from M) comes from its layer's source model");
    /* a Mamba2 position whose source has MLA there (the MLA model passed as M) is refused */
    zb_check(zb_assemble_config(&ac, &ac, is_mla, &hc, "plan.json") == ZB_EARG, "wrong source kind refused: %s",
             zb_errmsg());
    zb_model_free(&t); zb_model_free(&M); zb_model_free(&A); zb_model_free(&h); zb_model_free(&ref);
    return 0;
}

/* ---- 4 ---------------------------------------------------------------------------------- */
static int read_ids(const char *path, int **ids, int *B, int *T) {
    zb_safetensors *st = NULL;
    ZB_TRY(zb_st_open(&st, path));
    const zb_st_tensor *t = zb_st_get(st, "input_ids");
    if (!t) { zb_st_close(st); return zb_fail(ZB_ENOTFOUND, "no input_ids"); }
    *B = (int)t->shape[0];
    *T = (int)t->shape[1];
    *ids = malloc(sizeof(int) * (size_t)t->numel);
    int rc = zb_st_to_i32(t, (int32_t *)*ids);
    zb_st_close(st);
    return rc;
}

/* mean KL(teacher || student) per token, and whether all student logits are finite */
static double kl_to(const zb_model *s, const float *tlog, const int *ids, int B, int T, int *finite) {
    zb_acts a;
    if (zb_acts_alloc(&a, s, B, T)) return NAN;
    zb_model_forward(s, &a, ids);
    size_t n = (size_t)B * T * s->cfg.vocab;
    *finite = 1;
    for (size_t i = 0; i < n; i++) *finite &= isfinite(a.logits[i]) != 0;
    double kl = zb_kl_div(NULL, a.logits, tlog, NULL, B * T, s->cfg.vocab, 1.0f, 0.0f) / (B * T);
    zb_acts_free(&a);
    return kl;
}

/* KL per token of a student of config c composed from t, and of the same student with random
 * mixers (teacher embedding / norms / MLPs kept). h5: also compare with that checkpoint. */
static int compose_kl(const zb_model *t, const zb_config *c, const float *tlog, const int *ids, int B,
                      int T, const char *what, double *kl, double *kl_rm, const char *h5) {
    zb_model s, rm, tmp;
    zb_mla_init_stats st[ZB_MAX_LAYERS];
    ZB_TRY(zb_model_init(&s, c));
    ZB_TRY(zb_compose_model(t, &s, 1, ZB_MLA_INIT_ROPE_PAIRS, st));
    ZB_TRY(zb_model_init(&rm, c));
    ZB_TRY(zb_model_init(&tmp, c));
    memcpy(rm.data, s.data, sizeof(float) * s.n_floats);
    zb_model_init_random(&tmp, 98, 0.02f);
    for (int i = 0; i < rm.n_params; i++) {
        const zb_param *q = &rm.params[i];
        if (strstr(q->name, "self_attn.") || strstr(q->name, ".mamba."))
            memcpy(rm.data + q->offset, tmp.data + q->offset, sizeof(float) * q->numel);
    }
    int fin = 0, fin2 = 0;
    *kl = kl_to(&s, tlog, ids, B, T, &fin);
    *kl_rm = kl_to(&rm, tlog, ids, B, T, &fin2);
    printf("%-44s KL/token composed %.6f, random mixers %.6f (ratio %.3f); kv energy", what, *kl, *kl_rm,
           *kl / *kl_rm);
    for (int l = 0; l < c->n_layers; l++)
        if (c->kinds[l] == ZB_LAYER_MLA) printf(" %.4f", st[l].kv_energy);
    printf("\n");
    zb_check(fin, "%s: logits finite", what);
    if (h5) {   /* the streaming command wrote the same tensors */
        zb_model f;
        ZB_TRY(zb_model_load(&f, h5));
        int same = f.n_floats == s.n_floats;
        for (int i = 0; same && i < s.n_params; i++) {
            const zb_param *q = zb_model_param(&f, s.params[i].name);
            same = q && q->numel == s.params[i].numel &&
                   !memcmp(f.data + q->offset, s.data + s.params[i].offset, sizeof(float) * q->numel);
            if (!same) printf("differs: %s\n", s.params[i].name);
        }
        zb_check(same, "%s == in-memory composition (bitwise)", h5);
        zb_model_free(&f);
    }
    zb_model_free(&s); zb_model_free(&rm); zb_model_free(&tmp);
    return ZB_OK;
}

static int test_compose_fixture(const char *fx, const char *h5) {
    char p[4096];
    zb_model t;
    snprintf(p, sizeof p, "%s/hf-llama-tiny", fx);
    ZB_TEST_OK(zb_model_load(&t, p));
    int *ids = NULL, B = 0, T = 0;
    snprintf(p, sizeof p, "%s/hf-llama-tiny/ref.safetensors", fx);
    ZB_TEST_OK(read_ids(p, &ids, &B, &T));
    zb_acts a;
    ZB_TEST_OK(zb_acts_alloc(&a, &t, B, T));
    zb_model_forward(&t, &a, ids);
    size_t nl = (size_t)B * T * t.cfg.vocab;
    float *tlog = malloc(sizeof(float) * nl);
    memcpy(tlog, a.logits, sizeof(float) * nl);
    double tloss = zb_model_lm_loss(&t, &a, ids, 0);
    zb_acts_free(&a);
    printf("hf-llama-tiny (random-weight teacher) loss %.4f on its %d x %d ids\n", tloss, B, T);

    double kl, rm, kl_full, rm_full, kl_h, rm_h;
    zb_config c = g_base;   /* [mla, mamba2, mla], r_q 48, r_kv 32 */
    ZB_TEST_OK(compose_kl(&t, &c, tlog, ids, B, T, "hybrid [mla, mamba2, mla] (r_q 48, r_kv 32)", &kl_h, &rm_h, h5));
    if (!h5) {
        for (int l = 0; l < 3; l++) c.kinds[l] = ZB_LAYER_MLA;
        ZB_TEST_OK(compose_kl(&t, &c, tlog, ids, B, T, "all MLA (r_q 48, r_kv 32)", &kl, &rm, NULL));
        c.mla.q_lora_rank = 64;
        c.mla.kv_lora_rank = 48;
        ZB_TEST_OK(compose_kl(&t, &c, tlog, ids, B, T, "all MLA, full rank (r_q 64, r_kv 48)", &kl_full, &rm_full, NULL));
        zb_check(kl_full < 0.4 * rm_full, "all MLA full rank: KL %.6f < 0.4 x random-mixer KL %.6f", kl_full, rm_full);
        zb_check(kl < 0.45 * rm, "all MLA: KL %.6f < 0.45 x random-mixer KL %.6f", kl, rm);
        zb_check(kl_full < kl, "all MLA: full rank KL %.6f < rank-limited KL %.6f", kl_full, kl);
        /* the release's MLA rope (YaRN 32, cos/sin x 1.3466): its frequencies are not the
         * teacher's llama3 ones, so the init is no longer exact, but with the mscale^2 of the rope
         * scores undone in the q rope rows it stays far closer to the teacher than a random mixer */
        double kl_y, rm_y;
        c.mla.rope = (zb_rope_cfg){.type = ZB_ROPE_YARN, .theta = c.rope.theta, .factor = 32.0f,
                                   .original_max_pos = 8192, .beta_fast = 32.0f, .beta_slow = 1.0f, .mscale = 1.0f};
        ZB_TEST_OK(compose_kl(&t, &c, tlog, ids, B, T, "all MLA, full rank, YaRN MLA rope", &kl_y, &rm_y, NULL));
        zb_check(kl_y < 0.4 * rm_y, "all MLA full rank, YaRN: KL %.6f < 0.4 x random-mixer KL %.6f", kl_y, rm_y);
        zb_check(kl_h < 0.85 * rm_h, "hybrid: KL %.6f < 0.85 x random-mixer KL %.6f", kl_h, rm_h);
    }
    free(tlog); free(ids);
    zb_model_free(&t);
    return 0;
}

int main(int argc, char **argv) {
    zb_test_init(&argc, &argv);
    if (argc < 3) { fprintf(stderr, "usage: test_compose FIXTURES TESTS_DIR [student.h5]\n"); return 2; }
    char p[4096];
    snprintf(p, sizeof p, "%s/compose-tiny.json", argv[2]);
    ZB_TEST_OK(zb_config_load(p, &g_base));
    if (argc < 4) {
        test_lowrank();
        test_mla_exact();
        test_mamba_linear_attention();
        test_release_init();
        test_assembly(argv[1]);
    }
    test_compose_fixture(argv[1], argc > 3 ? argv[3] : NULL);
    return zb_test_finish();
}
