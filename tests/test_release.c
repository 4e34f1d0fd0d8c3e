/* test_release FIXTURE_DIR TP PP — a Zebra-Llama checkpoint in the authors' release format
 * (fixtures/zebra-release-tiny: written and run by their own model code; release.h, SPEC §3:
 * MLA with YaRN on the rope dims, cos/sin x mscale, Mamba2 MambaInLlama-style) loaded as it
 * is, on TP x PP ranks (1 1, 2 1, 1 2; the rest of the world is data parallel):
 *   - logits (gathered over the vocabulary) and every hidden state (HF convention: [i] = input
 *     of layer i, [L] = after the final norm; each compared on the stage that holds it) against
 *     ref.safetensors, max|d| / max|ref| within the float32 forward-error bound derived below,
 *     and never above the 1e-4;
 *   - the 16 greedy tokens of ref's `greedy` (prompt input_ids[0, :10]): with the caches (prefill
 *     + 1-token decode), in a batch of two sequences at different positions decoding together,
 *     and (1 rank) as the reference made them, argmax of a full forward per step.
 *
 * Tolerance (derived, not tuned): a float32 sum of K terms carries a rounding error of about
 * sqrt(K) * eps * (the sum of the terms' magnitudes) (the random-walk estimate; Higham, Accuracy
 * and Stability, §2.8). Along the path from the embedding to an output every reduction adds its
 * term; both the reference and zebra round, independently: tol = 2 * eps * sum_j sqrt(K_j) * kappa,
 * kappa = the magnitude of the summed terms over the result's scale, measured at the head as
 * max_v sum_i |h_i W_vi| / max|logits| (for hidden states: 1, the residual stream is its own
 * scale), capped at 1e-4. */
#include <float.h>
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grid.h"
#include "model.h"
#include "pipeline.h"
#include "safetensors.h"
#include "tp.h"
#include "zb_test.h"

/* sum of sqrt(K) over the reductions of layer l's block (mixer + MLP) for T tokens */
static double block_chain(const zb_config *c, int l, int T) {
    double d = c->d_model, s = 2 * sqrt(d) + sqrt(d) + sqrt((double)c->ffn);   /* 2 norms, gate/up, down */
    if (c->kinds[l] == ZB_LAYER_MLA) {
        const zb_mla_dims *m = &c->mla;
        s += sqrt(d) + (m->q_lora_rank ? sqrt((double)m->q_lora_rank) : 0) + sqrt((double)m->kv_lora_rank) +
             sqrt((double)(m->qk_nope + m->qk_rope)) + 2 * sqrt((double)T) + sqrt((double)m->n_heads * m->v_head_dim);
    } else if (c->kinds[l] == ZB_LAYER_MAMBA2) {
        const zb_mamba2_dims *m = &c->mamba;
        s += sqrt(d) + sqrt((double)m->conv_k) + sqrt((double)T) + sqrt((double)m->d_state) +
             sqrt((double)m->norm_group) + sqrt((double)m->d_inner);
    } else {
        s += sqrt(d) + sqrt((double)c->head_dim) + 2 * sqrt((double)T) + sqrt((double)c->n_heads * c->head_dim);
    }
    return s;
}

static float *ref_f32(const zb_safetensors *st, const char *name, size_t *n) {
    const zb_st_tensor *t = zb_st_get(st, name);
    if (!t) return NULL;
    float *x = malloc(sizeof(float) * (size_t)t->numel);
    if (zb_st_to_f32(t, x)) { free(x); return NULL; }
    *n = (size_t)t->numel;
    return x;
}

static int argmax(const float *x, int n) {
    int k = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[k]) k = i;
    return k;
}

/* next token of the last stage's logits row, on every rank of the world */
static int world_token(const zb_model *m, const float *row, int V) {
    int t = zb_pp_is_last(m) ? argmax(row, V) : -1;
    MPI_Allreduce(MPI_IN_PLACE, &t, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    return t;
}

int main(int argc, char **argv) {
    zb_test_init(&argc, &argv);
    if (argc < 4) { fprintf(stderr, "usage: %s FIXTURE_DIR TP PP\n", argv[0]); return 2; }
    const char *dir = argv[1];
    int tp = atoi(argv[2]), pp = atoi(argv[3]), rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    char path[4096];
    snprintf(path, sizeof path, "%s/ref.safetensors", dir);
    zb_safetensors *ref = NULL;
    ZB_TEST_OK(zb_st_open(&ref, path));
    zb_grid grid;
    zb_model m;
    int parallel = size > 1;
    if (parallel) {
        ZB_TEST_OK(zb_grid_init(&grid, MPI_COMM_WORLD, tp, pp));
        ZB_TEST_OK(zb_model_load_tp(&m, dir, &grid));
    } else {
        ZB_TEST_OK(zb_model_load(&m, dir));
    }
    const zb_config *c = zb_model_full_config(&m);
    zb_check(c->mla.rope.type == ZB_ROPE_YARN && c->mla.rope_interleave && c->rope.type == ZB_ROPE_LLAMA3,
             "release config: MLA rope YaRN (factor %g), interleaved; the base's llama3 kept for attention",
             c->mla.rope.factor);

    /* ---- forward: logits and hidden states ---- */
    const zb_st_tensor *ti = zb_st_get(ref, "input_ids");
    if (!zb_check(ti && ti->ndim == 2, "input_ids [B,T]")) return zb_test_finish();
    int B = (int)ti->shape[0], T = (int)ti->shape[1], N = B * T, V = c->vocab, d = c->d_model, L = c->n_layers;
    int *ids = malloc(sizeof(int) * N);
    ZB_TEST_OK(zb_st_to_i32(ti, ids));
    zb_acts a;
    ZB_TEST_OK(zb_acts_alloc(&a, &m, B, T));
    zb_comm_req req;
    ZB_TEST_OK(zb_pp_forward(&m, &a, ids, &req));
    ZB_TEST_OK(zb_pp_wait(&m, &req));
    size_t n, Nd = (size_t)N * d;
    float *hs = ref_f32(ref, "hidden_states", &n);
    if (!zb_check(hs && n == (size_t)(L + 1) * Nd, "hidden_states [L+1, B, T, d]")) return zb_test_finish();
    const double eps = FLT_EPSILON;
    double chain = 0, worst_h = 0;
    char what[160];
    int l0 = m.pp_first, nl = m.cfg.n_layers;
    for (int l = 0; l < L; l++) {
        if (l >= l0 && l < l0 + nl) {   /* input of layer l held on this stage */
            double tol = fmin(1e-4, 2 * eps * fmax(chain, 1));
            snprintf(what, sizeof what, "hidden_states[%d] (input of layer %d) tp %d pp %d, tol 2 eps x %.0f", l, l, tp,
                     pp, chain);
            double e = zb_max_rel(a.res + (size_t)(l - l0) * Nd, hs + (size_t)l * Nd, Nd);
            if (e > worst_h) worst_h = e;
            zb_check_max_rel(what, a.res + (size_t)(l - l0) * Nd, hs + (size_t)l * Nd, Nd, tol);
        }
        chain += block_chain(c, l, T);
    }
    chain += sqrt((double)d);   /* final norm */
    if (zb_pp_is_last(&m)) {
        double tol = fmin(1e-4, 2 * eps * chain);
        snprintf(what, sizeof what, "hidden_states[%d] (after the final norm) tp %d pp %d, tol 2 eps x %.0f", L, tp, pp,
                 chain);
        double e = zb_max_rel(a.lnf, hs + (size_t)L * Nd, Nd);
        if (e > worst_h) worst_h = e;
        zb_check_max_rel(what, a.lnf, hs + (size_t)L * Nd, Nd, tol);
        /* logits: gathered over TP; kappa from the head's terms */
        float *lg = malloc(sizeof(float) * (size_t)N * V), *rl = ref_f32(ref, "logits", &n);
        if (m.tp) ZB_TEST_OK(zb_tp_gather_vocab(m.tp, a.logits, NULL, lg, N, m.cfg.vocab));
        else memcpy(lg, a.logits, sizeof(float) * (size_t)N * V);
        const float *W = m.w.lm_head;   /* this rank's vocabulary rows */
        double mag = 0, mx = 0;
        for (int r = 0; r < N; r++)
            for (int v = 0; v < m.cfg.vocab; v++) {
                double s = 0;
                for (int i = 0; i < d; i++) s += fabs((double)a.lnf[(size_t)r * d + i] * W[(size_t)v * d + i]);
                if (s > mag) mag = s;
            }
        if (parallel) MPI_Allreduce(MPI_IN_PLACE, &mag, 1, MPI_DOUBLE, MPI_MAX, grid.tp);   /* vocabulary rows split */
        for (size_t i = 0; i < (size_t)N * V; i++) mx = fmax(mx, fabs(rl[i]));
        chain += sqrt((double)d);   /* the head */
        double kappa = fmax(1, mag / mx), tol_l = fmin(1e-4, 2 * eps * chain * kappa);
        snprintf(what, sizeof what, "logits tp %d pp %d, tol 2 eps x %.0f x kappa %.2f = %.3g", tp, pp, chain, kappa,
                 2 * eps * chain * kappa);
        double el = zb_max_rel(lg, rl, (size_t)N * V);
        zb_check_max_rel(what, lg, rl, (size_t)N * V, tol_l);
        if (rank == size - 1 || !parallel)
            printf("RESULT tp %d pp %d: logits max rel %.3g (tol %.3g), hidden states worst max rel %.3g\n", tp, pp, el,
                   tol_l, worst_h);
        free(lg); free(rl);
    }
    free(hs);
    zb_acts_free(&a);

    /* ---- greedy tokens ---- */
    const zb_st_tensor *tg = zb_st_get(ref, "greedy");
    if (!zb_check(tg && tg->numel > 0, "greedy present")) return zb_test_finish();
    int ng = (int)tg->numel, np = 10, max_T = np + ng;
    int *want = malloc(sizeof(int) * ng), *got = malloc(sizeof(int) * ng);
    ZB_TEST_OK(zb_st_to_i32(tg, want));
    /* (a) one sequence: prefill the prompt, then 1-token decode steps */
    zb_gen g;
    ZB_TEST_OK(zb_gen_init(&g, &m, 1, max_T));
    ZB_TEST_OK(zb_gen_step(&m, &g, ids, np));
    for (int k = 0; k < ng; k++) {
        got[k] = world_token(&m, g.logits, V);
        if (k + 1 < ng) ZB_TEST_OK(zb_gen_step(&m, &g, &got[k], 1));
    }
    zb_check(!memcmp(got, want, sizeof(int) * ng), "tp %d pp %d: %d greedy tokens with the caches identical to the "
             "release's", tp, pp, ng);
    zb_gen_free(&g);
    /* (b) a batch: sequence 1 (input_ids[1, :5]) prefilled first into its own slot, then the
     * prompt into slot 0; both decode together, each at its own position */
    ZB_TEST_OK(zb_gen_init(&g, &m, 2, max_T));
    int s1 = 1, s0 = 0, both[2] = {0, 1}, tok[2];
    ZB_TEST_OK(zb_gen_step_seqs(&m, &g, &s1, 1, ids + T, 5));
    ZB_TEST_OK(zb_gen_step_seqs(&m, &g, &s0, 1, ids, np));
    got[0] = world_token(&m, g.logits, V);   /* row 0: slot 0 */
    ZB_TEST_OK(zb_gen_step_seqs(&m, &g, &s1, 1, ids + T + 5, 1));   /* slot 1 one token further alone */
    for (int k = 1; k < ng; k++) {
        tok[0] = got[k - 1];
        tok[1] = ids[T + 6 + (k - 1) % (T - 7)];
        ZB_TEST_OK(zb_gen_step_seqs(&m, &g, both, 2, tok, 1));
        got[k] = world_token(&m, g.logits, V);
    }
    zb_check(!memcmp(got, want, sizeof(int) * ng), "tp %d pp %d: the greedy tokens decoded in a batch of 2 sequences "
             "at different positions identical", tp, pp);
    zb_gen_free(&g);
    /* (c) as the reference did: argmax of a full forward per step (one rank) */
    if (!parallel) {
        int *seq = malloc(sizeof(int) * max_T);
        memcpy(seq, ids, sizeof(int) * np);
        for (int k = 0; k < ng; k++) {
            zb_acts f;
            ZB_TEST_OK(zb_acts_alloc(&f, &m, 1, np + k));
            zb_model_forward(&m, &f, seq);
            seq[np + k] = argmax(f.logits + (size_t)(np + k - 1) * V, V);
            zb_acts_free(&f);
        }
        zb_check(!memcmp(seq + np, want, sizeof(int) * ng), "greedy tokens by full forwards identical");
        free(seq);
    }
    free(want); free(got); free(ids);
    zb_model_free(&m);
    if (parallel) zb_grid_free(&grid);
    zb_st_close(ref);
    return zb_test_finish();
}
