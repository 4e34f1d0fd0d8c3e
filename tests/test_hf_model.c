/* test_hf_model FIXTURE_DIR [DUMP.safetensors | --backend NAME]
 *
 * Loads the HF checkpoint in FIXTURE_DIR as a user's model directory and checks zebra against
 * the numbers HF transformers produced (FIXTURE_DIR/ref.safetensors): logits and hidden
 * states (max|d|/max|ref| <= 1e-4), the LM loss (|d| <= 1e-5), every parameter gradient
 * (||d||/||ref|| <= 1e-3) and the greedy continuation with the KV cache (identical).
 * With DUMP, the same comparisons are made on a file written by `zebra dump --grads`.
 * With --backend NAME the model runs on zb_backend_get(NAME) (backend.h; the CPU one with its
 * OpenMP decode kernels on), every number read back through the backend's to_host; a backend
 * not built in is skipped with a line saying so. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "safetensors.h"
#include "zb_test.h"

static float *get_f32(const zb_safetensors *st, const char *name, size_t *n) {
    const zb_st_tensor *t = zb_st_get(st, name);
    if (!t) return NULL;
    float *x = malloc(sizeof(float) * (size_t)t->numel);
    if (zb_st_to_f32(t, x)) { free(x); return NULL; }
    if (n) *n = (size_t)t->numel;
    return x;
}

/* n floats of backend memory, as a malloc'd host copy */
static float *host_copy(const zb_backend *be, const float *x, size_t n) {
    float *h = malloc(sizeof(float) * n);
    be->to_host(be, h, x, sizeof(float) * n);
    return h;
}

static void compare_file(const zb_safetensors *ref, const zb_safetensors *got, const zb_model *m) {
    size_t n, n2;
    float *a = get_f32(got, "logits", &n), *b = get_f32(ref, "logits", &n2);
    if (zb_check(a && b && n == n2, "logits present, same size")) zb_check_max_rel("dump logits", a, b, n, 1e-4);
    free(a); free(b);
    for (int i = 0; i <= m->cfg.n_layers; i++) {
        char nm[64];
        snprintf(nm, sizeof nm, "hidden_states.%d", i);
        a = get_f32(got, nm, &n); b = get_f32(ref, nm, &n2);
        if (zb_check(a && b && n == n2, "%s present", nm)) zb_check_max_rel(nm, a, b, n, 1e-4);
        free(a); free(b);
    }
    a = get_f32(got, "loss", NULL); b = get_f32(ref, "loss", NULL);
    if (zb_check(a && b, "loss present")) zb_check(fabsf(a[0] - b[0]) <= 1e-5, "dump loss %.7f vs %.7f", a[0], b[0]);
    free(a); free(b);
    for (int i = 0; i < m->n_params; i++) {
        char nm[ZB_PARAM_NAME + 8];
        snprintf(nm, sizeof nm, "grad.%s", m->params[i].name);
        a = get_f32(got, nm, &n); b = get_f32(ref, nm, &n2);
        if (zb_check(a && b && n == n2, "%s present", nm)) zb_check_norm_rel(nm, a, b, n, 1e-3);
        free(a); free(b);
    }
}

int main(int argc, char **argv) {
    zb_test_init(&argc, &argv);
    if (argc < 2) { fprintf(stderr, "usage: %s FIXTURE_DIR [DUMP]\n", argv[0]); return 2; }
    char path[4096];
    snprintf(path, sizeof path, "%s/ref.safetensors", argv[1]);
    zb_safetensors *ref = NULL;
    ZB_TEST_OK(zb_st_open(&ref, path));
    zb_model m;
    ZB_TEST_OK(zb_model_load(&m, argv[1]));
    const zb_config *c = &m.cfg;
    zb_backend be;
    if (argc >= 4 && !strcmp(argv[2], "--backend")) {
        const zb_backend *b = zb_backend_get(argv[3]);
        if (!b) {
            printf("SKIP backend %s: %s\n", argv[3], zb_errmsg());
            zb_model_free(&m);
            zb_st_close(ref);
            return zb_test_finish();
        }
        be = *b;
        be.opts.decode_omp = 1;   /* the CPU's split-K decode attention and threaded decode loops */
        ZB_TEST_OK(zb_model_set_backend(&m, &be));
        zb_check(m.be == &be, "model runs on backend %s", be.name);
        argc = 2;
    }
    const zb_backend *B_ = m.be;

    if (argc >= 3) {
        zb_safetensors *got = NULL;
        ZB_TEST_OK(zb_st_open(&got, argv[2]));
        compare_file(ref, got, &m);
        zb_st_close(got);
    } else {
        const zb_st_tensor *ti = zb_st_get(ref, "input_ids");
        zb_check(ti && ti->ndim == 2, "input_ids [B,T]");
        int B = (int)ti->shape[0], T = (int)ti->shape[1];
        int *ids = malloc(sizeof(int) * B * T);
        ZB_TEST_OK(zb_st_to_i32(ti, ids));
        zb_acts a;
        ZB_TEST_OK(zb_acts_alloc(&a, &m, B, T));
        ZB_TEST_OK(zb_model_alloc_grad(&m));
        zb_model_forward(&m, &a, ids);

        size_t n;
        float *r = get_f32(ref, "logits", &n);
        zb_check(n == (size_t)B * T * c->vocab, "logits size");
        float *h = host_copy(B_, a.logits, n);
        zb_check_max_rel("logits", h, r, n, 1e-4);
        free(r); free(h);
        size_t Nd = (size_t)B * T * c->d_model;
        for (int i = 0; i <= c->n_layers; i++) {
            char nm[64];
            snprintf(nm, sizeof nm, "hidden_states.%d", i);
            r = get_f32(ref, nm, &n);
            h = host_copy(B_, i < c->n_layers ? a.res + i * Nd : a.lnf, Nd);
            if (zb_check(r && n == Nd, "%s present", nm)) zb_check_max_rel(nm, h, r, n, 1e-4);
            free(r); free(h);
        }
        double loss = zb_model_lm_loss(&m, &a, ids, 1);
        r = get_f32(ref, "loss", NULL);
        zb_check(fabs(loss - r[0]) <= 1e-5, "loss %.7f vs ref %.7f (|d| %.2g, tol 1e-5)", loss, r[0], fabs(loss - r[0]));
        free(r);
        zb_model_zero_grad(&m);
        zb_model_backward(&m, &a, ids);
        for (int i = 0; i < m.n_params; i++) {
            char nm[ZB_PARAM_NAME + 8];
            snprintf(nm, sizeof nm, "grad.%s", m.params[i].name);
            r = get_f32(ref, nm, &n);
            h = host_copy(B_, m.grad + m.params[i].offset, m.params[i].numel);
            if (zb_check(r && n == m.params[i].numel, "%s present", nm)) zb_check_norm_rel(nm, h, r, n, 1e-3);
            free(r); free(h);
        }
        zb_acts_free(&a);
        free(ids);

        /* greedy continuation with the cache */
        const zb_st_tensor *tp = zb_st_get(ref, "greedy_prompt"), *tg = zb_st_get(ref, "greedy_tokens");
        if (zb_check(tp && tg, "greedy_prompt / greedy_tokens present")) {
            int np = (int)tp->numel, ng = (int)tg->numel;
            int *p = malloc(sizeof(int) * np), *gt = malloc(sizeof(int) * ng), *out = malloc(sizeof(int) * ng);
            ZB_TEST_OK(zb_st_to_i32(tp, p));
            ZB_TEST_OK(zb_st_to_i32(tg, gt));
            zb_gen g;
            ZB_TEST_OK(zb_gen_init(&g, &m, 1, np + ng));
            zb_sampler greedy = {0, 0, 1};
            ZB_TEST_OK(zb_gen_step(&m, &g, p, np));
            int same = 1, k;
            for (k = 0; k < ng; k++) {
                out[k] = zb_sample(g.logits, c->vocab, &greedy, NULL, NULL);
                if (out[k] != gt[k]) { same = 0; break; }
                if (k + 1 < ng) ZB_TEST_OK(zb_gen_step(&m, &g, &out[k], 1));
            }
            zb_check(same, "greedy tokens identical (%d of %d matched)", k, ng);
            zb_gen_free(&g);
            free(p); free(gt); free(out);
        }
    }
    zb_model_free(&m);
    zb_st_close(ref);
    return zb_test_finish();
}
