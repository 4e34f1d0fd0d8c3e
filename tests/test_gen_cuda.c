/* test_gen_cuda CONFIG.json — cached generation of a hybrid (MLA + Mamba2) on the CUDA backend
 * against the CPU backend, float32 products and caches, same random weights:
 *  - a prefill of every sequence together (the device runs each mixer once over all of them,
 *    in 256-token chunks: 300 tokens cross a seam; the CPU one sequence at a time in 64-token
 *    chunks), then prefills of sequence lists that are not consecutive ({2, 0}) and that are
 *    ({1, 2}), then decode steps at different positions;
 *  - 80 short prompts prefilled together (the Mamba2 chunked scan then runs in groups of
 *    sequences whose chunk states fit its scratch), then one decode step.
 * Every step's logits within the float32 bound of two evaluations along the forward's path
 * (zb_test.h, as test_gen_batch: magnitudes |lnf| |W_head| from the CPU's run); then the same
 * with bf16 weights, products and caches (bf16_tol). A model with GQA attention runs everything
 * twice more on the GPU: its decode attention in one kernel (the default) and as the three kernels
 * of before (ZB_DEC_ATTN=old); the greedy picks of the two must be the same with bf16 caches (the
 * same arithmetic), and are counted with float32 ones (another order of the sums: each within the
 * bound against the CPU). Exits 77 where no GPU is present. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_ops.h"
#include "model.h"
#include "zb_test.h"

/* bf16 weights, products and caches on the GPU against the CPU's bf16 weights with float32
 * inputs and caches: the same weights, the GPU rounds each product's activation operand (and
 * MLA's latents, absorbed queries and probabilities) to bf16, 2^-9 relative, i.e. at most 2^-8
 * norm-relative per rounded stage (as test_cuda_mla) summed over the stages on the path: per
 * MLA layer 9 (q_a, q_b, kv_a, the cache, the absorbed query, scores, probabilities, W_UV,
 * o_proj), per Mamba2 layer 3 (in_proj, out_proj, the chunked scan's TF32 tile products: at most
 * 4 roundings of 2^-11 per term), per layer 2 for the MLP (gate / up, down), 1 for the head. A
 * sequence mixed up with another is off by O(1). The GPU keeps the Mamba2 SSM state in bf16 with
 * bf16 caches (mamba_ssm's inference cache takes the weights' dtype): per Mamba2 layer one more
 * stage for each earlier call that rounded a sequence's state (at most calls - 1), each carried
 * forward times e^{dt A} <= 1. */
static double bf16_tol(const zb_config *c, int calls) {
    int stages = 1;
    for (int l = 0; l < c->n_layers; l++)
        stages += 2 + (c->kinds[l] == ZB_LAYER_MLA ? 9 : c->kinds[l] == ZB_LAYER_MAMBA2 ? 3 + (calls - 1) : 6);
    return stages * 0x1p-8;
}

typedef struct {
    zb_model *mc, *mg;
    zb_gen *gc, *gg;
    float *head, *mag;
    double sf, worst;
    int calls, bf16;   /* bf16: ||got - ref|| / ||ref|| per step instead of the float32 bound */
    int greedy_rows, greedy_bad;   /* decode rows picked on the device; those unlike the host's scan */
    int *picks, npicks;            /* every greedy pick of the GPU, in order (the two attention paths compared) */
} pair;

/* the same step on both; the logits of its nb sequences compared. Decode steps (n == 1) run the
 * GPU's greedy path (the argmax on the device, only the ids copied back): its picks must be the
 * host scan's (zb_sample) of the device's logits, fetched afterwards for the comparison. */
static int step(pair *p, const int *seqs, int nb, const int *ids, int n) {
    ZB_TEST_OK(zb_gen_step_seqs(p->mc, p->gc, seqs, nb, ids, n));
    p->gg->greedy = n == 1;
    ZB_TEST_OK(zb_gen_step_seqs(p->mg, p->gg, seqs, nb, ids, n));
    int V = p->mc->cfg.vocab;
    if (p->gg->greedy) {
        const zb_backend *be = p->gg->be;
        be->to_host(be, p->gg->logits, p->gg->logits_dev, sizeof(float) * (size_t)nb * V);
        zb_sampler greedy = {0, 0, 1};
        for (int i = 0; i < nb; i++) {
            if (p->gg->next[i] != zb_sample(p->gg->logits + (size_t)i * V, V, &greedy, NULL, NULL)) p->greedy_bad++;
            if (p->picks && p->npicks < 4096) p->picks[p->npicks++] = p->gg->next[i];
        }
        p->greedy_rows += nb;
        p->gg->greedy = 0;
    }
    double e;
    if (p->bf16) e = zb_norm_rel(p->gg->logits, p->gc->logits, (size_t)nb * V);
    else {
        zb_mag_matmul(p->mag, p->gc->lnf, p->head, nb, V, p->mc->cfg.d_model);
        e = zb_bound_ratio(p->gg->logits, p->gc->logits, p->mag, (size_t)nb * V, p->sf);
    }
    if (e > p->worst) p->worst = e;
    p->calls++;
    return 0;
}

static int run(pair *p, int B, int max_T, const int *plan, int nplan, zb_rng *r, const char *what) {
    ZB_TEST_OK(zb_gen_init(p->gc, p->mc, B, max_T));
    ZB_TEST_OK(zb_gen_init(p->gg, p->mg, B, max_T));
    p->sf = p->bf16 ? bf16_tol(&p->mc->cfg, nplan) : zb_bound_scale(zb_model_path_fwd(&p->mc->cfg, max_T));
    p->worst = 0;
    p->calls = 0;
    p->greedy_rows = p->greedy_bad = 0;
    int V = p->mc->cfg.vocab;
    int *ids = malloc(sizeof(int) * (size_t)B * max_T), *seqs = malloc(sizeof(int) * B);
    p->mag = malloc(sizeof(float) * (size_t)B * V);
    /* plan: (number of sequences or 0 = all, first sequence, stride, tokens) per call */
    for (int k = 0; k < nplan; k++) {
        const int *q = plan + 4 * k;
        int nb = q[0] ? q[0] : B, n = q[3];
        for (int i = 0; i < nb; i++) seqs[i] = ((q[1] + i * q[2]) % B + B) % B;
        for (int i = 0; i < nb * n; i++) ids[i] = (int)(zb_rng_u64(r) % (uint64_t)V);
        if (step(p, seqs, nb, ids, n)) break;
    }
    if (p->bf16)
        zb_check(p->worst <= p->sf, "%s, bf16: CUDA logits vs CPU's: ||d||/||ref|| = %.3g (tol %.3g, %d steps)", what,
                 p->worst, p->sf, p->calls);
    else
        zb_check(p->worst <= 1, "%s: CUDA logits == CPU's (%.2g of the float32 bound, %d steps)", what, p->worst,
                 p->calls);
    zb_check(p->greedy_rows > 0 && p->greedy_bad == 0, "%s%s: greedy picks on the device == the host's scan of the same logits (%d of %d rows)",
             what, p->bf16 ? ", bf16" : "", p->greedy_rows - p->greedy_bad, p->greedy_rows);
    free(ids); free(seqs); free(p->mag);
    zb_gen_free(p->gc);
    zb_gen_free(p->gg);
    return 0;
}

int main(int argc, char **argv) {
    zb_test_init(&argc, &argv);
    if (argc < 2) { fprintf(stderr, "usage: %s CONFIG.json\n", argv[0]); return 2; }
    const zb_backend *cu = zb_backend_get("cuda");
    if (!cu) {
        printf("SKIP test_gen_cuda: %s\n", zb_errmsg());
        int rc = zb_test_finish();
        return rc ? rc : 77;
    }
    zb_config c;
    ZB_TEST_OK(zb_config_load(argv[1], &c));
    /* 3 sequences: all 300 tokens together, {2, 0} 13 more, {1, 2} 5 more, 3 decodes of all */
    int plan1[] = {0, 0, 1, 300, 2, 2, -2, 13, 2, 1, 1, 5, 0, 0, 1, 1, 0, 2, -1, 1, 0, 0, 1, 1};
    /* 80 sequences of 3 tokens together, then one decode of all */
    int plan2[] = {0, 0, 1, 3, 0, 0, 1, 1};
    int gqa = 0;
    for (int l = 0; l < c.n_layers; l++) gqa |= c.kinds[l] == ZB_LAYER_ATTN;
    int *picks[2] = {malloc(sizeof(int) * 4096), malloc(sizeof(int) * 4096)}, npicks[2] = {0, 0};
    for (int pass = 0; pass < (gqa ? 4 : 2); pass++) {
        const int bf = gqa ? pass / 2 : pass, old = gqa && pass % 2;   /* old: the attention's three kernels */
        zb_cuda_decode_attn_fused_set(!old);
        zb_wdtype wt = bf ? ZB_WEIGHTS_BF16 : ZB_WEIGHTS_F32;
        zb_model mc, mg;
        ZB_TEST_OK(zb_model_init_ex(&mc, &c, wt));
        zb_model_init_random(&mc, 11, 0.08f);
        ZB_TEST_OK(zb_model_init_ex(&mg, &c, wt));
        zb_model_init_random(&mg, 11, 0.08f);
        zb_backend be = *cu;
        be.opts.gpu_bf16 = bf;   /* 0: float32 products and caches, the CPU's arithmetic in another order */
        be.opts.cache_bf16 = bf;
        ZB_TEST_OK(zb_model_set_backend(&mg, &be));
        zb_gen gc, gg;
        pair p = {&mc, &mg, &gc, &gg, zb_test_head_f32(&mc), NULL, 0, 0, 0, bf, 0, 0, picks[old], 0};
        zb_rng r;
        zb_rng_seed(&r, 9);
        run(&p, 3, 330, plan1, 6, &r, "3 sequences: batched prefill across a chunk seam, {2,0}, {1,2}, decodes");
        run(&p, 80, 8, plan2, 2, &r, "80 sequences: batched prefill (Mamba2 scan in groups), decode");
        free(p.head);
        zb_model_free(&mc);
        zb_model_free(&mg);
        npicks[old] = p.npicks;
        if (old) {   /* the same steps with both attention paths: the picks compared */
            int diff = npicks[0] != npicks[1];
            for (int i = 0; i < npicks[0] && i < npicks[1]; i++) diff += picks[0][i] != picks[1][i];
            if (bf)
                zb_check(diff == 0 && npicks[0] > 0, "bf16: greedy picks with the decode attention in one kernel == with the three kernels (%d picks, %d differ)",
                         npicks[0], diff);
            else
                printf("note: float32: greedy picks, one kernel vs three: %d of %d differ (each path within the float32 bound of the CPU)\n",
                       diff, npicks[0]);
        }
    }
    zb_cuda_decode_attn_fused_set(-1);
    free(picks[0]); free(picks[1]);
    return zb_test_finish();
}
