/* test_gen_batch — per-sequence positions in cached generation (core/model.h zb_gen):
 * prompts of different lengths (1 .. 70 tokens, across the 64-token prefill chunk), each
 * prefilled alone into a slot of a batch of 3, then decoded together one token per step at
 * different positions, finished sequences dropping out and their slots reused
 * (zb_gen_reset_seq) for the next prompts. Every step's logits must equal those of generating
 * the prompt alone (B = 1), and the greedy tokens must be identical; with f32 weights and
 * again with bf16 weights and the OpenMP decode kernels, as --weights bf16 runs them.
 * Args: models (an HF folder / .h5, or a zebra config .json initialised at random). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "zb_test.h"

#define NP 5
#define NEW 10
#define SLOTS 3

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

static int load(zb_model *m, const char *path, zb_wdtype wt) {
    if (!ends_with(path, ".json")) return zb_model_load_ex(m, path, wt);
    zb_config c;
    ZB_TRY(zb_config_load(path, &c));
    ZB_TRY(zb_model_init_ex(m, &c, wt));
    zb_model_init_random(m, 11, 0.08f);
    return ZB_OK;
}

static int check_model(const char *path, zb_wdtype wt, const zb_backend *be) {
    zb_model m;
    int rc = load(&m, path, wt);
    if (!rc) rc = zb_model_set_backend(&m, be);
    if (!zb_check(rc == ZB_OK, "load %s (%s)%s%s", path, zb_wdtype_name(wt), rc ? ": " : "", rc ? zb_errmsg() : "")) return 1;
    int V = m.cfg.vocab, lens[NP] = {5, 1, 70, 12, 3}, max_T = 70 + NEW;
    int *prompts[NP];
    zb_rng r;
    zb_rng_seed(&r, 5);
    for (int i = 0; i < NP; i++) {
        prompts[i] = malloc(sizeof(int) * lens[i]);
        for (int k = 0; k < lens[i]; k++) prompts[i][k] = (int)(zb_rng_u64(&r) % (uint64_t)V);
    }
    zb_sampler greedy = {0, 0, 1};
    /* alone: B = 1, logits after the prefill and after each fed token; their magnitudes
     * |lnf| |W_head| for the float32 bound of batched against alone (zb_test.h: two evaluations
     * along the forward's path over the longest cache) */
    float *ref = malloc(sizeof(float) * (size_t)NP * NEW * V), *mag = malloc(sizeof(float) * (size_t)NP * NEW * V);
    float *head = zb_test_head_f32(&m);
    double sf = zb_bound_scale(zb_model_path_fwd(&m.cfg, max_T));
    int ref_tok[NP][NEW];
    zb_gen g1;
    ZB_TEST_OK(zb_gen_init(&g1, &m, 1, max_T));
    for (int i = 0; i < NP; i++) {
        zb_gen_reset(&g1);
        ZB_TEST_OK(zb_gen_step(&m, &g1, prompts[i], lens[i]));
        for (int t = 0; t < NEW; t++) {
            memcpy(ref + ((size_t)i * NEW + t) * V, g1.logits, sizeof(float) * V);
            zb_mag_matmul(mag + ((size_t)i * NEW + t) * V, g1.lnf, head, 1, V, m.cfg.d_model);
            ref_tok[i][t] = zb_sample(g1.logits, V, &greedy, NULL, NULL);
            if (t + 1 < NEW) ZB_TEST_OK(zb_gen_step(&m, &g1, &ref_tok[i][t], 1));
        }
    }
    zb_gen_free(&g1);

    /* batched: SLOTS slots; prompt i finishes after NEW - i % 3 tokens so that slots free at
     * different steps and are reused while the others keep decoding */
    zb_gen g;
    ZB_TEST_OK(zb_gen_init(&g, &m, SLOTS, max_T));
    int slot[SLOTS], n_out[NP] = {0}, tok[NP][NEW], next = 0, steps = 0;
    double worst = 0;
    for (int b = 0; b < SLOTS; b++) slot[b] = -1;
    for (;;) {
        for (int b = 0; b < SLOTS; b++)
            if (slot[b] < 0 && next < NP) {
                int i = next++;
                zb_gen_reset_seq(&g, b);
                ZB_TEST_OK(zb_gen_step_seqs(&m, &g, &b, 1, prompts[i], lens[i]));
                double e = zb_bound_ratio(g.logits, ref + (size_t)i * NEW * V, mag + (size_t)i * NEW * V, V, sf);
                if (e > worst) worst = e;
                tok[i][n_out[i]++] = zb_sample(g.logits, V, &greedy, NULL, NULL);
                slot[b] = i;
            }
        int act[SLOTS], ids[SLOTS], na = 0;
        for (int b = 0; b < SLOTS; b++) {
            int i = slot[b];
            if (i < 0) continue;
            if (n_out[i] >= NEW - i % 3) { slot[b] = -1; continue; }
            act[na] = b;
            ids[na++] = tok[i][n_out[i] - 1];
        }
        if (!na) { if (next >= NP) break; continue; }
        if (na > 1) {   /* vary the order of the sequences in a step */
            int t = act[0]; act[0] = act[na - 1]; act[na - 1] = t;
            t = ids[0]; ids[0] = ids[na - 1]; ids[na - 1] = t;
        }
        ZB_TEST_OK(zb_gen_step_seqs(&m, &g, act, na, ids, 1));
        steps++;
        for (int k = 0; k < na; k++) {
            int i = slot[act[k]];
            size_t o = ((size_t)i * NEW + n_out[i]) * V;
            double e = zb_bound_ratio(g.logits + (size_t)k * V, ref + o, mag + o, V, sf);
            if (e > worst) worst = e;
            tok[i][n_out[i]++] = zb_sample(g.logits + (size_t)k * V, V, &greedy, NULL, NULL);
        }
    }
    int same = 1;
    for (int i = 0; i < NP; i++)
        for (int t = 0; t < NEW - i % 3; t++) same &= tok[i][t] == ref_tok[i][t];
    zb_check(worst <= 1, "[%s %s] batched logits == alone (%.2g of the float32 bound, %d joint steps)", path,
             zb_wdtype_name(wt), worst, steps);
    zb_check(same, "[%s %s] batched greedy tokens == alone for %d prompts of lengths 5,1,70,12,3", path, zb_wdtype_name(wt), NP);
    zb_check(steps < NP * NEW, "[%s %s] sequences decoded together (%d joint steps)", path, zb_wdtype_name(wt), steps);

    /* misuse is refused with a message, nothing written */
    int b0 = 0, two[2] = {1, 1}, x[2] = {0, 0};
    zb_gen_reset_seq(&g, 0);
    g.pos[0] = max_T;
    zb_check(zb_gen_step_seqs(&m, &g, &b0, 1, x, 1) == ZB_EARG, "[%s %s] a full sequence is refused: %s", path, zb_wdtype_name(wt), zb_errmsg());
    zb_check(zb_gen_step_seqs(&m, &g, two, 2, x, 1) == ZB_EARG, "[%s %s] a sequence twice is refused: %s", path, zb_wdtype_name(wt), zb_errmsg());
    zb_gen_free(&g);
    for (int i = 0; i < NP; i++) free(prompts[i]);
    free(ref); free(mag); free(head);
    zb_model_free(&m);
    return 0;
}

int main(int argc, char **argv) {
    zb_test_init(&argc, &argv);
    /* f32 weights, then bf16 (decode batches go through the direct bf16 kernel, N = batch) */
    for (int i = 1; i < argc; i++) check_model(argv[i], ZB_WEIGHTS_F32, zb_backend_cpu());
    zb_backend omp = *zb_backend_cpu();
    omp.opts.decode_omp = 1;   /* as `--weights bf16` runs: split-K attention, threaded Mamba2 step */
    for (int i = 1; i < argc; i++) check_model(argv[i], ZB_WEIGHTS_BF16, &omp);
    return zb_test_finish();
}
