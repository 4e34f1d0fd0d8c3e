/* test_hf_model FIXTURE_DIR [DUMP.safetensors]
 *
 * Loads the HF checkpoint in FIXTURE_DIR as a user's model directory and checks zebra against
 * the numbers HF transformers produced (FIXTURE_DIR/ref.safetensors): logits and hidden
 * states, the LM loss, every parameter gradient (each within the float32 bound of two
 * summation orders, see compare()) and the greedy continuation with the KV cache (identical).
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

/* Our numbers on the fixture's input (the in-memory run, or a file written by `zebra dump
 * --grads`) against HF's, each within the float32 bound of two summation orders (zb_test.h):
 * the magnitudes of the summed terms come from our own 1-rank run on m:
 *  - logits: |lnf| |W_head| per logit, the forward's path;
 *  - hidden_states.i (the input of layer i): the residual sum of the embedding and the block
 *    outputs before it, magnitude sum of |addends|, the path through i blocks (the whole
 *    forward for simplicity); the last one is after the final RMSNorm: lnf = r w / rms(r)
 *    moves by at most 2 max|w| e_r / rms(r) for r off by e_r;
 *  - loss: a mean of logsumexp(z) - z[y], each term within twice its row's logit bound;
 *  - every gradient: one backward per loss term gives its magnitude, the backward's path. */
typedef struct {
    float *logits, **hidden, *grads;   /* hidden[0..L] */
    double loss;
} run_out;

/* n floats of backend memory, as a malloc'd host copy */
static float *host_copy(const zb_backend *be, const float *x, size_t n) {
    float *h = malloc(sizeof(float) * n);
    be->to_host(be, h, x, sizeof(float) * n);
    return h;
}

static int hidden_name(char *nm, size_t n, int i) { return snprintf(nm, n, "hidden_states.%d", i); }

static void compare(const zb_safetensors *ref, const run_out *got, const run_out *mag, const zb_model *m,
                    const double *lbound, int B, int T) {
    const zb_config *c = &m->cfg;
    size_t n, N = (size_t)B * T, V = c->vocab, Nd = N * c->d_model;
    double sf = zb_bound_scale(zb_model_path_fwd(c, T)), pbwd = zb_model_path_bwd(c, T, (int)N);
    float *r = get_f32(ref, "logits", &n);
    if (zb_check(r && n == N * V, "logits present, same size")) zb_check_elem_bound("logits", got->logits, r, mag->logits, n, sf);
    free(r);
    for (int i = 0; i <= c->n_layers; i++) {
        char nm[64];
        hidden_name(nm, sizeof nm, i);
        r = get_f32(ref, nm, &n);
        if (zb_check(r && n == Nd, "%s present", nm))
            zb_check_bound(nm, got->hidden[i], r, n, lbound[1 + i]);
        free(r);
    }
    r = get_f32(ref, "loss", NULL);
    if (zb_check(r != NULL, "loss present"))
        zb_check(fabs(got->loss - r[0]) <= lbound[0], "loss %.7f vs ref %.7f (|d| %.2g, bound %.2g)", got->loss, r[0],
                 fabs(got->loss - r[0]), lbound[0]);
    free(r);
    int blunt = 0;
    for (int i = 0; i < m->n_params; i++) {
        const zb_param *p = &m->params[i];
        char nm[ZB_PARAM_NAME + 8];
        snprintf(nm, sizeof nm, "grad.%s", p->name);
        r = get_f32(ref, nm, &n);
        if (!zb_check(r && n == p->numel, "%s present", nm)) { free(r); continue; }
        double e;
        int sens;
        int ok = zb_tensor_within(got->grads + p->offset, r, mag->grads + p->offset, n, pbwd, &e, &sens);
        zb_check(ok, "%s: %.2g of its float32 bound (||d||/||ref|| %.3g)", nm, e, zb_norm_rel(got->grads + p->offset, r, n));
        blunt += !sens;
        if (!sens) printf("  %s: bound too loose to catch a 1e-3 error\n", nm);
        free(r);
    }
    zb_check(blunt == 0, "every gradient bound catches a 1e-3 error (%d do not)", blunt);
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
    int L = c->n_layers, d = c->d_model, V = c->vocab;
    zb_backend be;
    if (argc >= 4 && !strcmp(argv[2], "--backend")) {
        const zb_backend *b = zb_backend_get(argv[3]);
        if (!b) {
            printf("SKIP backend %s: %s\n", argv[3], zb_errmsg());
            zb_model_free(&m);
            zb_st_close(ref);
            int rc = zb_test_finish();
            return rc ? rc : 77;   /* ctest's SKIP_RETURN_CODE (tests/cuda.cmake) */
        }
        be = *b;
        be.opts.decode_omp = 1;   /* the CPU's split-K decode attention and threaded decode loops */
        ZB_TEST_OK(zb_model_set_backend(&m, &be));
        zb_check(m.be == &be, "model runs on backend %s", be.name);
        argc = 2;
    }
    const zb_backend *B_ = m.be;

    const zb_st_tensor *ti = zb_st_get(ref, "input_ids");
    zb_check(ti && ti->ndim == 2, "input_ids [B,T]");
    int B = (int)ti->shape[0], T = (int)ti->shape[1], N = B * T;
    size_t Nd = (size_t)N * d;
    int *ids = malloc(sizeof(int) * N);
    ZB_TEST_OK(zb_st_to_i32(ti, ids));
    zb_acts a;
    ZB_TEST_OK(zb_acts_alloc(&a, &m, B, T));
    ZB_TEST_OK(zb_model_alloc_grad(&m));
    zb_model_forward(&m, &a, ids);
    /* the forward's numbers on the host (the backend's memory may be a device's) */
    float *h_res = host_copy(B_, a.res, (size_t)(L + 1) * Nd), *h_mid = host_copy(B_, a.mid, (size_t)L * Nd);
    float *h_lnf = host_copy(B_, a.lnf, Nd), *h_rstdf = host_copy(B_, a.rstdf, (size_t)N);
    float *h_head = host_copy(B_, m.w.lm_head, (size_t)V * d), *h_fnorm = host_copy(B_, m.w.final_norm, (size_t)d);

    /* our run, and the magnitudes of its summed terms */
    run_out own = {0}, mag = {0};
    double sf = zb_bound_scale(zb_model_path_fwd(c, T));
    double *lbound = calloc((size_t)L + 2, sizeof(double));   /* [0] loss, [1 + i] hidden_states.i */
    own.logits = host_copy(B_, a.logits, (size_t)N * V);
    mag.logits = malloc(sizeof(float) * (size_t)N * V);
    zb_mag_matmul(mag.logits, h_lnf, h_head, N, V, d);
    for (int n = 0; n < N; n++)
        if (n % T < T - 1) lbound[0] += 2 * sf * zb_max_abs(mag.logits + (size_t)n * V, V) / (B * (T - 1));
    own.hidden = calloc((size_t)L + 1, sizeof(float *));
    float *acc = malloc(sizeof(float) * Nd);   /* sum of |addends| of the residual stream */
    for (size_t q = 0; q < Nd; q++) acc[q] = fabsf(h_res[q]);
    double er = 0;
    for (int i = 0; i <= L; i++) {
        if (i > 0)
            for (size_t q = 0; q < Nd; q++) {
                const float *r0 = h_res + (i - 1) * Nd, *mi = h_mid + (i - 1) * Nd, *r1 = h_res + i * Nd;
                acc[q] += fabsf(mi[q] - r0[q]) + fabsf(r1[q] - mi[q]);
            }
        er = sf * zb_max_abs(acc, Nd);
        own.hidden[i] = i < L ? h_res + i * Nd : h_lnf;
        lbound[1 + i] = er;
    }
    {   /* the last hidden state is lnf = RMSNorm(res[L]) */
        double rs = 0;
        for (int n = 0; n < N; n++) if (h_rstdf[n] > rs) rs = h_rstdf[n];
        lbound[1 + L] = 2 * zb_max_abs(h_fnorm, d) * er * rs;
    }
    own.loss = zb_model_lm_loss(&m, &a, ids, 1);
    zb_model_zero_grad(&m);
    zb_model_backward(&m, &a, ids);
    own.grads = host_copy(B_, m.grad, m.n_floats);
    {
        zb_model mr;
        ZB_TEST_OK(zb_model_load(&mr, argv[1]));
        ZB_TEST_OK(zb_model_alloc_grad(&mr));
        mag.grads = calloc(mr.n_floats, sizeof(float));
        ZB_TEST_OK(zb_mag_lm_grad(&mr, ids, B, T, mag.grads));
        zb_model_free(&mr);
    }

    if (argc >= 3) {   /* the same comparisons on a file written by `zebra dump --grads` */
        zb_safetensors *got = NULL;
        ZB_TEST_OK(zb_st_open(&got, argv[2]));
        run_out f = {0};
        size_t n;
        f.logits = get_f32(got, "logits", &n);
        zb_check(f.logits && n == (size_t)N * V, "dump: logits present, same size");
        f.hidden = calloc((size_t)L + 1, sizeof(float *));
        int all = f.logits != NULL;
        for (int i = 0; i <= L; i++) {
            char nm[64];
            hidden_name(nm, sizeof nm, i);
            f.hidden[i] = get_f32(got, nm, &n);
            all &= zb_check(f.hidden[i] && n == Nd, "dump: %s present", nm);
        }
        float *lo = get_f32(got, "loss", NULL);
        all &= zb_check(lo != NULL, "dump: loss present");
        f.loss = lo ? lo[0] : NAN;
        f.grads = calloc(m.n_floats, sizeof(float));
        for (int i = 0; i < m.n_params; i++) {
            char nm[ZB_PARAM_NAME + 8];
            snprintf(nm, sizeof nm, "grad.%s", m.params[i].name);
            float *g = get_f32(got, nm, &n);
            all &= zb_check(g && n == m.params[i].numel, "dump: %s present", nm);
            if (g && n == m.params[i].numel) memcpy(f.grads + m.params[i].offset, g, sizeof(float) * n);
            free(g);
        }
        if (all) compare(ref, &f, &mag, &m, lbound, B, T);
        for (int i = 0; i <= L; i++) free(f.hidden[i]);
        free(f.hidden); free(f.logits); free(f.grads); free(lo);
        zb_st_close(got);
    } else {
        compare(ref, &own, &mag, &m, lbound, B, T);
        /* greedy continuation with the cache */
        const zb_st_tensor *tp = zb_st_get(ref, "greedy_prompt"), *tg = zb_st_get(ref, "greedy_tokens");
        if (zb_check(tp && tg, "greedy_prompt / greedy_tokens present")) {
            int np = (int)tp->numel, ng = (int)tg->numel;
            int *p = malloc(sizeof(int) * np), *gt = malloc(sizeof(int) * ng);
            ZB_TEST_OK(zb_st_to_i32(tp, p));
            ZB_TEST_OK(zb_st_to_i32(tg, gt));
            int k, same = zb_greedy_check(&m, h_head, p, np, gt, ng, &k);
            zb_check(same, "greedy tokens identical (%d of %d matched%s)", k, ng, same == 2 ? ", then a tie" : "");
            free(p); free(gt);
        }
    }
    free(own.logits); free(own.hidden); free(own.grads);
    free(h_res); free(h_mid); free(h_lnf); free(h_rstdf); free(h_head); free(h_fnorm); free(mag.logits); free(mag.grads); free(acc); free(lbound); free(ids);
    zb_acts_free(&a);
    zb_model_free(&m);
    zb_st_close(ref);
    return zb_test_finish();
}
