/* test_cuda_mla.c — the MLA mixer on the GPU (core/cuda/cuda_mla.h) against the CPU mixer
 * (core/mla.h) on random weights and inputs, for the DeepSeek form (q_proj, kv norm, rotate-half)
 * and the Zebra form (q_a/q_b with q norm, GQA kv heads, no kv norm, interleaved rope):
 * forward output, every gradient of the backward, and generation (prefill then decode over the
 * latent cache, float32 and bf16 caches, sequences at different positions).
 * Composed layers are compared norm-relatively with a tolerance from the arithmetic: unit
 * roundoff times the summed reduction lengths of the stages the error passes through (x4 for
 * the two sides and the softmax's factor e^(2 eps)); bf16 operands add 2^-8 per stage. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_mla.h"
#include "zb_cuda_test.h"

#define U ZB_U32

typedef struct { const char *name; zb_mla_dims m; int d; } combo;

static size_t layout(const zb_mla_dims *m, int d, float *base, zb_mla_weights *w) {
    int H = m->n_heads, dqk = m->qk_nope + m->qk_rope, r = m->kv_lora_rank, rq = m->q_lora_rank;
    size_t off = 0;
    memset(w, 0, sizeof *w);
#define TAKE(p, n) do { (p) = base ? base + off : NULL; off += (size_t)(n); } while (0)
    if (rq == 0) TAKE(w->q_proj, (size_t)H * dqk * d);
    else {
        TAKE(w->q_a_proj, (size_t)rq * d);
        if (m->q_norm) TAKE(w->q_a_norm, rq);
        TAKE(w->q_b_proj, (size_t)H * dqk * rq);
    }
    TAKE(w->kv_a_proj, (size_t)(r + m->qk_rope) * d);
    if (m->kv_norm) TAKE(w->kv_a_norm, r);
    TAKE(w->kv_b_proj, (size_t)m->kv_heads * (m->qk_nope + m->v_head_dim) * r);
    TAKE(w->o_proj, (size_t)d * H * m->v_head_dim);
#undef TAKE
    return off;
}

/* the stages' reduction lengths: the tolerance of a composed output */
static double tol_of(const zb_mla_dims *m, int d, int T) {
    int dqk = m->qk_nope + m->qk_rope, W = m->kv_lora_rank + m->qk_rope;
    double len = d + (m->q_lora_rank ? m->q_lora_rank : 0) + W + m->kv_lora_rank + 2 * dqk + T +
                 m->n_heads * m->v_head_dim + 64;
    double orel = zb_cuda_precision() == ZB_PREC_BF16 ? 6 * 2 * ZB_U16 : 0;
    return 4 * len * U + orel;
}

static void test_combo(const combo *c, zb_rng *rng) {
    const zb_mla_dims *m = &c->m;
    int d = c->d, B = 2, T = 37, N = B * T;
    zb_rope rope;
    zb_rope_init(&rope, m->qk_rope, &m->rope);
    zb_mla_weights w, g, dw, dg;
    size_t nw = layout(m, d, NULL, &w);
    float *wb = zb_falloc(nw), *gb = zb_falloc(nw);
    layout(m, d, wb, &w);
    layout(m, d, gb, &g);
    zb_fill_uniform(wb, nw, 0.3f, rng);
    if (w.q_a_norm) for (int i = 0; i < m->q_lora_rank; i++) w.q_a_norm[i] += 1.0f;
    if (w.kv_a_norm) for (int i = 0; i < m->kv_lora_rank; i++) w.kv_a_norm[i] += 1.0f;
    float *dwb = zb_dev_f(wb, nw), *dgb = zb_dev_f(NULL, nw);
    layout(m, d, dwb, &dw);
    layout(m, d, dgb, &dg);
    size_t nx = (size_t)N * d;
    float *x = zb_falloc(nx), *out = zb_falloc(nx), *got = zb_falloc(nx), *dout = zb_falloc(nx);
    zb_fill_uniform(x, nx, 1.0f, rng);
    zb_fill_uniform(dout, nx, 1.0f, rng);
    float *acts = zb_falloc(zb_mla_act_floats(m, d, B, T)), *scr = zb_falloc(zb_mla_scratch_floats(m, d, B, T));
    zb_mla_forward(m, d, 1e-6f, &w, &rope, x, out, acts, B, T);
    float *dx = zb_falloc(nx);
    zb_mla_backward(m, d, 1e-6f, &w, &g, &rope, x, dout, dx, acts, scr, B, T);

    float *d_x = zb_dev_f(x, nx), *d_out = zb_dev_f(NULL, nx), *d_do = zb_dev_f(dout, nx), *d_dx = zb_dev_f(NULL, nx);
    float *d_acts = zb_dev_f(NULL, zb_cuda_mla_act_floats(m, d, B, T));
    float *d_scr = zb_dev_f(NULL, zb_cuda_mla_scratch_floats(m, d, B, T));
    zb_cuda_mla_forward(m, d, 1e-6f, &dw, &rope, d_x, d_out, d_acts, B, T);
    zb_host_f(got, d_out, nx);
    double tol = tol_of(m, d, T);
    char what[160];
    snprintf(what, sizeof what, "mla_forward %s (%s)", c->name,
             zb_cuda_precision() == ZB_PREC_F32 ? "f32" : "bf16");
    zb_check_norm_rel(what, got, out, nx, tol);
    zb_cuda_mla_backward(m, d, 1e-6f, &dw, &dg, &rope, d_x, d_do, d_dx, d_acts, d_scr, B, T);
    zb_host_f(got, d_dx, nx);
    snprintf(what, sizeof what, "mla_backward dx %s", c->name);
    zb_check_norm_rel(what, got, dx, nx, 2 * tol);
    float *hg = zb_falloc(nw);
    zb_host_f(hg, dgb, nw);
    /* each weight's gradient on its own */
    zb_mla_weights hv;
    layout(m, d, hg, &hv);
    const float *pc[8] = {g.q_proj, g.q_a_proj, g.q_a_norm, g.q_b_proj, g.kv_a_proj, g.kv_a_norm, g.kv_b_proj, g.o_proj};
    const float *pg[8] = {hv.q_proj, hv.q_a_proj, hv.q_a_norm, hv.q_b_proj, hv.kv_a_proj, hv.kv_a_norm, hv.kv_b_proj, hv.o_proj};
    const char *nm[8] = {"q_proj", "q_a_proj", "q_a_norm", "q_b_proj", "kv_a_proj", "kv_a_norm", "kv_b_proj", "o_proj"};
    int H = m->n_heads, dqk = m->qk_nope + m->qk_rope, rq = m->q_lora_rank, r = m->kv_lora_rank;
    size_t sz[8] = {(size_t)H * dqk * d, (size_t)rq * d, (size_t)rq, (size_t)H * dqk * rq,
                    (size_t)(r + m->qk_rope) * d, (size_t)r, (size_t)m->kv_heads * (m->qk_nope + m->v_head_dim) * r,
                    (size_t)d * H * m->v_head_dim};
    for (int i = 0; i < 8; i++) {
        if (!pc[i]) continue;
        snprintf(what, sizeof what, "mla_backward g.%s %s", nm[i], c->name);
        zb_check_norm_rel(what, pg[i], pc[i], sz[i], 2 * tol + N * U * 4);
    }

    /* generation: 2 sequences in slots {1, 0} of 3; prefill of 5 and 3 tokens, then 3 decodes */
    int slots = 3, maxT = 16, W = m->kv_lora_rank + m->qk_rope;
    /* decode through the fused pieces (zb_cuda_mla_decode_fused: float32 absorbed products, where
     * it applies: bf16 caches of the fused attention's shapes) and through the separate kernels */
    for (int fz = 1; fz >= 0; fz--)
    for (int bf = 0; bf < 2; bf++) {
        zb_cuda_dec_fuse_set(fz);
        size_t cfl = zb_mla_cache_floats(m, slots, maxT);
        float *cache = zb_falloc(cfl);
        void *dcache = zb_dev_bytes(NULL, cfl * (bf ? 2 : 4));
        float *sc = zb_falloc(zb_mla_decode_scratch_floats(m, d, maxT) * 16);
        int seqs[2] = {1, 0}, plen[2] = {5, 3}, pos[2] = {0, 0};
        zb_mla_lin lin = zb_mla_lin_of(&w), dlin = zb_mla_lin_of(&dw);
        float *gs = zb_dev_f(NULL, zb_cuda_mla_gen_scratch_floats(m, d, 16));
        int *dseq = zb_dev_i(seqs, 2), *dpos = zb_dev_i(pos, 2);
        double worst = 0;
        int steps = 0;
        for (int step = 0; step < 4; step++) {
            /* step 0: each sequence's prompt alone (n tokens, one sequence); then batched decodes */
            int nseq = step == 0 ? 1 : 2;
            for (int pass = 0; pass < (step == 0 ? 2 : 1); pass++) {
                int n = step == 0 ? plen[pass] : 1;
                int nb = nseq;
                int sq[2], ps[2];
                for (int i = 0; i < nb; i++) {
                    int which = step == 0 ? pass : i;
                    sq[i] = seqs[which];
                    ps[i] = pos[which];
                }
                size_t nin = (size_t)nb * n * d;
                float *xin = zb_falloc(nin), *o1 = zb_falloc(nin), *o2 = zb_falloc(nin);
                zb_fill_uniform(xin, nin, 1.0f, rng);
                for (int i = 0; i < nb; i++)
                    zb_mla_step_lin(m, d, 1e-6f, &w, &lin, &rope, xin + (size_t)i * n * d, o1 + (size_t)i * n * d,
                                    cache + (size_t)sq[i] * maxT * W, maxT, &ps[i], n, 1, sc, NULL);
                float *dxin = zb_dev_f(xin, nin), *dout2 = zb_dev_f(NULL, nin);
                zb_cuda_upload(dseq, sq, sizeof(int) * nb);
                zb_cuda_upload(dpos, ps, sizeof(int) * nb);
                int max_len = 0;
                for (int i = 0; i < nb; i++) if (ps[i] + n > max_len) max_len = ps[i] + n;
                zb_cuda_mla_gen(m, d, 1e-6f, &dw, &dlin, &rope, dxin, dout2, dcache, bf, maxT, dseq, dpos, nb, n,
                                max_len, gs);
                zb_host_f(o2, dout2, nin);
                double e = zb_norm_rel(o2, o1, nin);
                if (e > worst) worst = e;
                steps++;
                for (int i = 0; i < nb; i++) pos[step == 0 ? pass : i] += n;
                free(xin); free(o1); free(o2);
                zb_cuda_free(dxin); zb_cuda_free(dout2);
            }
        }
        /* a bf16 cache rounds the latents and the query / probabilities of the products */
        double gtol = tol + (bf ? 4 * 2 * ZB_U16 : 0);
        snprintf(what, sizeof what, "mla_gen %s cache=%s%s (%d calls, worst of prefill and decode)", c->name,
                 bf ? "bf16" : "f32", fz ? "" : ", ZB_DEC_FUSE=0", steps);
        zb_cuda_dec_fuse_set(-1);
        zb_check(worst <= gtol, "%s: ||d||/||ref|| = %.3g (tol %.2g)", what, worst, gtol);
        free(cache); free(sc);
        zb_cuda_free(dcache); zb_cuda_free(gs); zb_cuda_free(dseq); zb_cuda_free(dpos);
    }
    free(wb); free(gb); free(x); free(out); free(got); free(dout); free(acts); free(scr); free(dx); free(hg);
    zb_cuda_free(dwb); zb_cuda_free(dgb); zb_cuda_free(d_x); zb_cuda_free(d_out); zb_cuda_free(d_do);
    zb_cuda_free(d_dx); zb_cuda_free(d_acts); zb_cuda_free(d_scr);
}

int main(int argc, char **argv) {
    int rc = zb_cuda_test_init(&argc, &argv);
    if (rc) return rc;
    zb_rng rng;
    zb_rng_seed(&rng, 77);
    /* plain RoPE for the first; the Zebra release's YaRN (cos / sin and the softmax scale carry
     * mscale) for the second */
    zb_rope_cfg plain = {.type = ZB_ROPE_DEFAULT, .theta = 10000.0f, .factor = 1};
    zb_rope_cfg yarn = {.type = ZB_ROPE_YARN, .theta = 10000.0f, .factor = 4, .original_max_pos = 16,
                        .beta_fast = 32, .beta_slow = 1, .mscale = 1, .mscale_all_dim = 1};
    /* the third: latent rows of 32 + 16 (multiples of 16), whose bf16-cache decode takes the
     * fused kernel (zb_cuda_decode_mla) */
    combo cs[3] = {
        {"deepseek (q_proj, kv norm, rotate-half)", {4, 0, 0, 32, 1, 16, 8, 16, 4, 0, plain}, 64},
        {"zebra (q_a/q_b + q norm, 2 kv heads, interleaved, YaRN)", {4, 24, 1, 32, 0, 16, 8, 16, 2, 1, yarn}, 64},
        {"zebra, latent 32 + rope 16 (fused decode on bf16 caches)", {4, 24, 0, 32, 0, 16, 16, 16, 2, 1, yarn}, 64},
    };
    for (int p = 0; p < 2; p++) {
        zb_cuda_set_precision(p ? ZB_PREC_BF16 : ZB_PREC_F32);
        for (int i = 0; i < 3; i++) test_combo(&cs[i], &rng);
    }
    zb_cuda_set_precision(ZB_PREC_F32);
    int st = zb_cuda_sync();
    zb_check(st == ZB_OK, "no pending device error (%s)", st ? zb_errmsg() : "none");
    return zb_test_finish();
}
