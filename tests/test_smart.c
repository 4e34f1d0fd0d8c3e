/* test_smart.c — SMART (SPEC.md §6, core/smart.h).
 *
 *  1. The released plans of SPEC §3 follow the placement rule (layer 0, layer L-2, gaps floor /
 *     ceil of (L-2)/(K-1)): 1B [0,5,10,14] of 16, 3B [0,5,10,16,21,26] of 28, 8B
 *     [0,4,8,12,16,20,25,30] of 32, and the 50% plans (the even layers); with a score of 1 on a
 *     released plan's layers and 0 elsewhere the search returns exactly that plan.
 *  2. On made-up scores (random, with ties, negative) the search returns a placement of the
 *     highest total among ALL K-subsets of [0, L) that obey the rule, found by brute force with
 *     the rule checked here independently of smart.c; the number of such subsets is
 *     zb_smart_count; for L - 1 (--to-last) too.
 *  3. Scores: on hf-llama-tiny, M = the all-Mamba2 and A = the all-MLA composition; the KL sums
 *     of zb_smart_batch equal those of the whole-model forward of M and of the hybrid assembled
 *     (zb_assemble_model) with layer l from A, for every l: the same kernels in the same order,
 *     so the sums agree to the last bit. Usage: test_smart FIXTURES TESTS_DIR */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compose.h"
#include "model.h"
#include "ops.h"
#include "safetensors.h"
#include "smart.h"
#include "zb_common.h"
#include "zb_test.h"

/* ---- 1 ---------------------------------------------------------------------------------- */

static int released(int L, const int *plan, int K, const char *what) {
    zb_check(zb_smart_rule_ok(plan, K, L, 0), "%s: the released plan follows the rule", what);
    double sc[ZB_MAX_LAYERS] = {0}, total = 0;
    for (int k = 0; k < K; k++) sc[plan[k]] = 1.0;
    int got[ZB_MAX_LAYERS];
    ZB_TEST_OK(zb_smart_place(sc, L, K, 0, got, &total));
    zb_check(!memcmp(got, plan, sizeof(int) * K) && total == K, "%s: found by the search (total %g of %.0f placements)",
             what, total, zb_smart_count(L, K, 0));
    return 0;
}

static void test_released(void) {
    int b1[] = {0, 5, 10, 14}, b3[] = {0, 5, 10, 16, 21, 26}, b8[] = {0, 4, 8, 12, 16, 20, 25, 30};
    released(16, b1, 4, "1B 4MLA-12M2");
    released(28, b3, 6, "3B 6MLA-22M2");
    released(32, b8, 8, "8B 8MLA-24M2");
    int half[16];
    for (int k = 0; k < 16; k++) half[k] = 2 * k;
    released(16, half, 8, "1B 8MLA-8M2 (even layers)");
    released(28, half, 14, "3B 14MLA-14M2 (even layers)");
    released(32, half, 16, "8B 16MLA-16M2 (even layers)");
    /* the old terminal rule's choice [0, ..., L-1] is not a release plan */
    int term[] = {0, 5, 10, 15};
    zb_check(!zb_smart_rule_ok(term, 4, 16, 0) && zb_smart_rule_ok(term, 4, 16, 1),
             "[0,5,10,15] of 16 breaks the rule (L-2), follows it with --to-last");
    int got[4];
    zb_check(zb_smart_place(NULL, 16, 1, 0, got, NULL) == ZB_EARG && zb_smart_place(NULL, 4, 4, 0, got, NULL) == ZB_EARG,
             "K = 1 and K > L-1 are refused: %s", zb_errmsg());
}

/* ---- 2 ---------------------------------------------------------------------------------- */

/* The rule, written again from SPEC §6 with real-valued g (not smart.c's integer form). */
static int rule_here(const int *p, int K, int L, int to_last) {
    int last = to_last ? L - 1 : L - 2;
    double g = (double)last / (K - 1);
    if (p[0] != 0 || p[K - 1] != last) return 0;
    for (int k = 1; k < K; k++) {
        int gap = p[k] - p[k - 1];
        if (gap != (int)floor(g) && gap != (int)ceil(g)) return 0;
    }
    return 1;
}

typedef struct { const double *sc; int L, K, to_last; double best; long valid, disagree; int p[ZB_MAX_LAYERS]; } brute;

/* every increasing K-subset of [0, L) */
static void enumerate(brute *b, int k, int from) {
    if (k == b->K) {
        int here = rule_here(b->p, b->K, b->L, b->to_last);
        b->disagree += here != zb_smart_rule_ok(b->p, b->K, b->L, b->to_last);
        if (!here) return;
        double t = 0;
        for (int i = 0; i < b->K; i++) t += b->sc[b->p[i]];   /* increasing order, as the search adds */
        if (b->valid++ == 0 || t > b->best) b->best = t;
        return;
    }
    for (int l = from; l <= b->L - (b->K - k); l++) { b->p[k] = l; enumerate(b, k + 1, l + 1); }
}

static void test_brute_force(void) {
    zb_rng rng;
    zb_rng_seed(&rng, 17);
    int cases = 0, bad = 0;
    for (int L = 3; L <= 18; L++)
        for (int K = 2; K <= L; K++)
            for (int to_last = 0; to_last < 2; to_last++)
                for (int rep = 0; rep < 3; rep++) {
                    double sc[ZB_MAX_LAYERS];
                    for (int l = 0; l < L; l++)   /* rep 2: few distinct values, so ties */
                        sc[l] = rep == 2 ? (double)(zb_rng_u64(&rng) % 3) : zb_rng_normal(&rng);
                    brute b = {sc, L, K, to_last, 0, 0, 0, {0}};
                    enumerate(&b, 0, 0);
                    int got[ZB_MAX_LAYERS];
                    double total = 0;
                    int rc = zb_smart_place(sc, L, K, to_last, got, &total);
                    cases++;
                    if (b.valid == 0) { bad += rc != ZB_EARG || b.disagree; continue; }
                    double sum = 0;
                    for (int k = 0; k < K; k++) sum += sc[got[k]];
                    /* same additions in the same order: the totals are equal, not close */
                    int ok = b.disagree == 0 && rc == ZB_OK && rule_here(got, K, L, to_last) && sum == total && total == b.best &&
                             (double)b.valid == zb_smart_count(L, K, to_last);
                    if (!ok && bad++ < 5)
                        printf("L %d K %d to_last %d: search %g (rc %d), brute force %g over %ld placements (count %.0f)\n",
                               L, K, to_last, total, rc, b.best, b.valid, zb_smart_count(L, K, to_last));
                }
    zb_check(bad == 0, "search == brute force on %d made-up score sets (L 3..18, every K, L-2 and L-1); rule_ok == the rule on every subset", cases);
    int ev[4];
    zb_smart_even(16, 4, ev);
    zb_check(ev[0] == 0 && ev[1] == 5 && ev[2] == 10 && ev[3] == 15, "even control of 4 in 16: 0 5 10 15");
}

/* ---- 3 ---------------------------------------------------------------------------------- */

static double kl_of(const zb_model *m, const float *tlog, const int *ids, int B, int T) {
    zb_acts a;
    if (zb_acts_alloc(&a, m, B, T)) return NAN;
    zb_model_forward(m, &a, ids);
    double kl = zb_kl_div(NULL, a.logits, tlog, NULL, B * T, m->cfg.vocab, 1.0f, 0.0f);
    zb_acts_free(&a);
    return kl;
}

static int test_scores(const char *fx, const char *tests) {
    char p[4096];
    zb_model t, M, A, h;
    snprintf(p, sizeof p, "%s/hf-llama-tiny", fx);
    ZB_TEST_OK(zb_model_load(&t, p));
    zb_config base, mc, ac, hc;
    snprintf(p, sizeof p, "%s/compose-tiny.json", tests);
    ZB_TEST_OK(zb_config_load(p, &base));
    int L = base.n_layers;
    mc = ac = base;
    for (int l = 0; l < L; l++) { mc.kinds[l] = ZB_LAYER_MAMBA2; ac.kinds[l] = ZB_LAYER_MLA; }
    ZB_TEST_OK(zb_model_init(&M, &mc));
    ZB_TEST_OK(zb_model_init(&A, &ac));
    ZB_TEST_OK(zb_compose_model(&t, &M, 1, ZB_MLA_INIT_ROPE_PAIRS, NULL));
    ZB_TEST_OK(zb_compose_model(&t, &A, 1, ZB_MLA_INIT_ROPE_PAIRS, NULL));
    /* ids: the fixture's */
    zb_safetensors *st = NULL;
    snprintf(p, sizeof p, "%s/hf-llama-tiny/ref.safetensors", fx);
    ZB_TEST_OK(zb_st_open(&st, p));
    const zb_st_tensor *ti = zb_st_get(st, "input_ids");
    int B = (int)ti->shape[0], T = (int)ti->shape[1];
    int *ids = malloc(sizeof(int) * B * T);
    ZB_TEST_OK(zb_st_to_i32(ti, (int32_t *)ids));
    zb_st_close(st);
    zb_smart s;
    ZB_TEST_OK(zb_smart_init(&s, &t, &M, &A, B, T));
    double kl[ZB_MAX_LAYERS + 1] = {0};
    zb_smart_batch(&s, ids, B, kl);
    /* references: the teacher's logits, then whole-model forwards */
    zb_acts ta;
    ZB_TEST_OK(zb_acts_alloc(&ta, &t, B, T));
    zb_model_forward(&t, &ta, ids);
    double km = kl_of(&M, ta.logits, ids, B, T);
    zb_check(kl[L] == km, "KL(teacher || M): smart %.17g == forward %.17g", kl[L], km);
    unsigned char is_mla[ZB_MAX_LAYERS];
    for (int l = 0; l < L; l++) {
        memset(is_mla, 0, sizeof is_mla);
        is_mla[l] = 1;
        ZB_TEST_OK(zb_assemble_config(&mc, &ac, is_mla, &hc, "test"));
        ZB_TEST_OK(zb_model_init(&h, &hc));
        ZB_TEST_OK(zb_assemble_model(&M, &A, &h));
        double kh = kl_of(&h, ta.logits, ids, B, T);
        printf("layer %d: KL(teacher || M) %.6f, with A's layer %.6f, score %.6f (per token)\n", l, km / (B * T),
               kh / (B * T), (km - kh) / (B * T));
        zb_check(kl[l] == kh, "layer %d: smart %.17g == forward of the assembled hybrid %.17g", l, kl[l], kh);
        zb_model_free(&h);
    }
    /* a wrong model is refused with a message */
    zb_smart s2;
    zb_check(zb_smart_init(&s2, &t, &A, &M, B, T) == ZB_EARG, "M and A swapped: %s", zb_errmsg());
    zb_smart_free(&s2);
    zb_smart_free(&s);
    zb_acts_free(&ta);
    free(ids);
    zb_model_free(&t); zb_model_free(&M); zb_model_free(&A);
    return 0;
}

int main(int argc, char **argv) {
    zb_test_init(&argc, &argv);
    if (argc < 3) { fprintf(stderr, "usage: test_smart FIXTURES TESTS_DIR\n"); return 2; }
    test_released();
    test_brute_force();
    test_scores(argv[1], argv[2]);
    return zb_test_finish();
}
