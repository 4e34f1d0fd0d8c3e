/* test_tp MODEL TP — tensor parallelism (parallel/tp.h, SPEC §9) against the 1-rank model.
 *
 * MODEL is an HF directory (loaded by slices from its safetensors) or a config .json (random
 * weights, seed fixed). Run under mpiexec -n NP with TP dividing NP (the rest is DP). Checks,
 * every one against the 1-rank model computed on each rank:
 *   - a shard loaded by slices (HF dir, or a .h5 written at 1 rank) == the slices of the full model;
 *   - logits (gathered over the vocabulary), the LM loss, dloss/dlogits and every parameter
 *     gradient (gathered to full tensors); again after a second accumulated backward (the
 *     partial-gradient reduction of the replicated MLA projections accumulates);
 *   - KL(teacher || student) and its gradient, vocabulary-parallel;
 *   - greedy generation with the caches (B = 2): the same tokens, the same logits;
 *   every "same" within the float32 bound of two summation orders (zb_test.h): the path
 *   length of the model times the magnitude of the summed terms of each value, computed from
 *   the 1-rank run (|lnf| |W_head| for a logit, one backward per loss term for a gradient);
 *   - checkpoint round trip across layouts: save at TP=2 (DP replicas write nothing), load at
 *     TP=1 and at TP=NP, bitwise equal to the full model; save at TP=NP, load at TP=1 bitwise;
 *   - sizes that do not divide give a clear error on every rank (no hang). */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "grid.h"
#include "model.h"
#include "model_io.h"
#include "ops.h"
#include "tp.h"
#include "zb_test.h"

static int rank0;
static double worst_grad;
static const char *worst_name = "";

static int is_dir(const char *p) { return !zb_test_src_is_config(p); }

/* every parameter of shard s, gathered, bitwise equal to full model f */
static int same_params_bitwise(const zb_model *s, const zb_model *f, const char *what) {
    int bad = 0;
    for (int i = 0; i < f->n_params; i++) {
        const zb_param *p = &f->params[i];
        float *g = malloc(sizeof(float) * p->numel);
        if (s->tp) { if (zb_tp_gather_param(s, i, s->data + s->params[i].offset, g)) bad++; }
        else memcpy(g, s->data + s->params[i].offset, sizeof(float) * p->numel);
        if (memcmp(g, f->data + p->offset, sizeof(float) * p->numel)) {
            bad++;
            zb_check(0, "%s: tensor %s differs", what, p->name);
        }
        free(g);
    }
    return zb_check(bad == 0, "%s: all %d tensors bitwise equal", what, f->n_params);
}

/* every gathered gradient of s against f's: within the bound of its magnitudes gmag (path
 * pbwd); and the bound catches a gradient scaled by 1 + 1e-3, except for a tensor whose terms
 * cancel so much (sum |terms| x path x u > 1e-3 max |grad|) that no float32 computation of it
 * resolves 1e-3: those are named, and may be at most a tenth of the tensors (the comparison
 * keeps its teeth on the rest) */
static void compare_grads(const zb_model *s, const zb_model *f, const float *gmag, double pbwd, const char *what) {
    int bad = 0, blunt = 0;
    double worst = 0;
    const char *wname = "";
    for (int i = 0; i < f->n_params; i++) {
        const zb_param *p = &f->params[i];
        float *g = malloc(sizeof(float) * p->numel);
        if (zb_tp_gather_param(s, i, s->grad + s->params[i].offset, g)) bad++;
        double r;
        int sens;
        if (!zb_tensor_within(g, f->grad + p->offset, gmag + p->offset, p->numel, pbwd, &r, &sens)) {
            bad++;
            zb_check(0, "%s: grad %s: %.3g of its float32 bound (max-rel %.3g)", what, p->name, r,
                     zb_max_rel(g, f->grad + p->offset, p->numel));
        }
        if (!sens) {
            blunt++;
            if (rank0) printf("  %s: grad %s cancels below float32's resolution of 1e-3 (named, not failed)\n", what, p->name);
        }
        if (r > worst) { worst = r; wname = p->name; }
        free(g);
    }
    if (worst > worst_grad) { worst_grad = worst; worst_name = wname; }
    zb_check(bad == 0, "%s: %d gradients within their float32 bound, worst %.2g of it (%s)", what, f->n_params,
             worst, wname);
    zb_check(10 * blunt <= f->n_params, "%s: %d of %d gradient bounds catch a 1e-3 error", what, f->n_params - blunt,
             f->n_params);
    if (rank0) printf("  %s: worst gradient at %.2g of its bound (%s)\n", what, worst, wname);
}

/* Bound of each d(loss)/dz of a softmax loss, g = k (p - t) (cross-entropy: t one-hot, k =
 * 1/n_valid; KL: t the teacher's probabilities, k = scale/tau), p = softmax(z) [N,V]: with the
 * inputs z of row n off by at most e_n, p_v moves by at most 2 e_n p_v (its normaliser by at
 * most e_n), and the float32 exp / sum over V / divide add 2 lambda u sqrt(V + 3) p_v, plus
 * the rounding of g itself. mag [N,V]; e_n = 0 for rows without a loss. */
static void softmax_grad_mag(float *mag, const float *p, const float *g, const double *e_row, int N, int V, double k) {
    double r = zb_bound_scale(sqrt(V + 3.0));
    for (int n = 0; n < N; n++)
        for (int v = 0; v < V; v++) {
            size_t q = (size_t)n * V + v;
            mag[q] = (float)(k * p[q] * (2 * e_row[n] + r) + ZB_U32 * fabs(g[q]));
        }
}

static void random_ids(int *ids, int n, int V, unsigned seed) {
    zb_rng r;
    zb_rng_seed(&r, seed);
    for (int i = 0; i < n; i++) ids[i] = (int)(zb_rng_u64(&r) % (uint64_t)V);
}

static int expect_error(int rc, const char *needle, const char *what) {
    int ok = rc != ZB_OK && strstr(zb_errmsg(), needle) != NULL;
    if (rank0) printf("  %s -> \"%s\"\n", what, zb_errmsg());
    /* every rank reached this point: no rank hangs on a refused layout */
    MPI_Barrier(MPI_COMM_WORLD);
    return zb_check(ok, "%s: a clear error mentioning '%s' (rc %d: %s)", what, needle, rc, zb_errmsg());
}

int main(int argc, char **argv) {
    zb_test_init(&argc, &argv);
    if (argc < 3) { fprintf(stderr, "usage: %s MODEL_DIR_OR_CONFIG.json TP\n", argv[0]); return 2; }
    const char *src = argv[1];
    int TP = atoi(argv[2]), world, rank;
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    rank0 = rank == 0;
    long pid = (long)getpid();
    MPI_Bcast(&pid, 1, MPI_LONG, 0, MPI_COMM_WORLD);
    char tmpdir[256];
    snprintf(tmpdir, sizeof tmpdir, "%s", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");

    zb_grid grid;
    ZB_TEST_OK(zb_grid_init(&grid, MPI_COMM_WORLD, TP, 1));
    zb_model ref, sh;
    ZB_TEST_OK(zb_test_load_model(&ref, src));
    const zb_config *c = &ref.cfg;
    if (rank0) printf("test_tp %s: world %d, tp %d, dp %d, %zu parameters\n", src, world, TP, grid.dp_size,
                      zb_model_num_params(&ref));

    /* ---- the shard: loaded by slices, equal to the slices of the full model -------------- */
    {
        char h5[512];
        const char *from = src;
        if (!is_dir(src)) {   /* a .h5 written at 1 rank */
            snprintf(h5, sizeof h5, "%s/zb_tp_full_%ld.h5", tmpdir, pid);
            ZB_TEST_OK(zb_model_save(&ref, h5, ZB_DT_F32, MPI_COMM_WORLD));
            from = h5;
        }
        ZB_TEST_OK(zb_model_load_tp(&sh, from, &grid));
        zb_model cp;
        ZB_TEST_OK(zb_model_init_tp(&cp, c, &grid));
        ZB_TEST_OK(zb_tp_copy_from_full(&cp, &ref));
        zb_check(sh.n_floats == cp.n_floats && !memcmp(sh.data, cp.data, sizeof(float) * sh.n_floats),
                 "shard loaded by slices from %s == slices of the full model", is_dir(src) ? "the HF dir" : "a .h5");
        zb_check(sh.n_floats * TP >= ref.n_floats, "shard holds %zu of %zu values", sh.n_floats, ref.n_floats);
        same_params_bitwise(&sh, &ref, "gathered shard");
        zb_model_free(&cp);
        MPI_Barrier(MPI_COMM_WORLD);
        if (!is_dir(src) && rank0) unlink(h5);
    }

    /* ---- training forward / loss / backward ---------------------------------------------- */
    int B = 2, T = 20, N = B * T, V = c->vocab, Vl = sh.cfg.vocab;
    int *ids = malloc(sizeof(int) * N), *ids2 = malloc(sizeof(int) * N);
    random_ids(ids, N, V, 11);
    random_ids(ids2, N, V, 12);
    zb_acts ar, as;
    ZB_TEST_OK(zb_acts_alloc(&ar, &ref, B, T));
    ZB_TEST_OK(zb_acts_alloc(&as, &sh, B, T));
    ZB_TEST_OK(zb_model_alloc_grad(&ref));
    ZB_TEST_OK(zb_model_alloc_grad(&sh));
    zb_model_zero_grad(&ref);
    zb_model_zero_grad(&sh);
    float *lg = malloc(sizeof(float) * (size_t)N * V), *lmag = malloc(sizeof(float) * (size_t)N * V),
          *pbuf = malloc(sizeof(float) * (size_t)N * V);
    float *gmag = calloc(ref.n_floats, sizeof(float));
    /* float32 bounds (zb_test.h): per unit of magnitude, along the forward / the backward */
    double sf = zb_bound_scale(zb_model_path_fwd(c, T)), pbwd = zb_model_path_bwd(c, T, N);
    zb_model mr;   /* a 1-rank copy for the gradient magnitudes (one backward per loss term) */
    ZB_TEST_OK(zb_test_load_model(&mr, src));
    ZB_TEST_OK(zb_model_alloc_grad(&mr));
    for (int pass = 0; pass < 2; pass++) {
        const int *x = pass ? ids2 : ids;
        zb_model_forward(&ref, &ar, x);
        zb_model_forward(&sh, &as, x);
        zb_tp_gather_vocab(sh.tp, as.logits, NULL, lg, N, Vl);
        char what[64];
        snprintf(what, sizeof what, "pass %d logits [%d x %d]", pass, N, V);
        /* a logit sums lnf[n,k] W[v,k] over k: its magnitude, and the bound along the forward */
        zb_mag_matmul(lmag, ar.lnf, ref.w.lm_head, N, V, c->d_model);
        zb_check_elem_bound(what, lg, ar.logits, lmag, (size_t)N * V, sf);
        if (rank0 && pass == 0) printf("  logits max-rel %.3g\n", zb_max_rel(lg, ar.logits, (size_t)N * V));
        /* loss = mean over rows of logsumexp(z) - z[y]: each term moves by at most twice the
         * row's logit bound e_n = sf max_v lmag; the sums are in double */
        double lb = 0, *e_row = malloc(sizeof(double) * N);
        for (int n = 0; n < N; n++) {
            e_row[n] = sf * zb_max_abs(lmag + (size_t)n * V, V);
            if (n % T < T - 1) lb += 2 * e_row[n] / (B * (T - 1));
        }
        double lr = zb_model_lm_loss(&ref, &ar, x, 1), ls = zb_model_lm_loss(&sh, &as, x, 1);
        zb_check(fabs(ls - lr) <= lb, "pass %d loss %.9f vs 1-rank %.9f (|d| %.3g, bound %.3g)", pass, ls, lr,
                 fabs(ls - lr), lb);
        if (rank0) printf("  pass %d loss tp %.9f, 1-rank %.9f, rel diff %.3g\n", pass, ls, lr, fabs(ls - lr) / fabs(lr));
        /* dlogits = (p - onehot) / n_valid (p recovered from the 1-rank dlogits) */
        zb_tp_gather_vocab(sh.tp, as.logits, NULL, lg, N, Vl);
        double k = 1.0 / (B * (T - 1));
        for (int n = 0; n < N; n++)
            for (int v = 0; v < V; v++) {
                size_t q = (size_t)n * V + v;
                int t = ar.targets[n];
                pbuf[q] = t < 0 ? 0 : (float)(ar.logits[q] / k + (v == t));
                if (t < 0) e_row[n] = 0;
            }
        softmax_grad_mag(lmag, pbuf, ar.logits, e_row, N, V, k);
        snprintf(what, sizeof what, "pass %d dlogits", pass);
        zb_check_elem_bound(what, lg, ar.logits, lmag, (size_t)N * V, 1.0);
        free(e_row);
        zb_model_backward(&ref, &ar, x);
        zb_model_backward(&sh, &as, x);
        ZB_TEST_OK(zb_mag_lm_grad(&mr, x, B, T, gmag));   /* accumulates over the passes, as the grads */
        snprintf(what, sizeof what, pass ? "accumulated grads (2 backward)" : "grads");
        compare_grads(&sh, &ref, gmag, pbwd, what);
        /* sum g^2 moves by at most 2 sum |g| |dg| <= 2 sum over tensors of bound * sum |g| */
        double nr, ns, nb = 0;
        ZB_TEST_OK(zb_tp_grad_sq_norm(&ref, &nr));
        ZB_TEST_OK(zb_tp_grad_sq_norm(&sh, &ns));
        for (int i = 0; i < ref.n_params; i++) {
            const zb_param *p = &ref.params[i];
            double sa = 0;
            for (size_t q = 0; q < p->numel; q++) sa += fabs(ref.grad[p->offset + q]);
            nb += 2 * sa * zb_bound_scale(pbwd) * zb_max_abs(gmag + p->offset, p->numel);
        }
        zb_check(fabs(ns - nr) <= nb, "pass %d squared gradient norm %.9g vs 1-rank %.9g (|d| %.3g, bound %.3g)", pass,
                 ns, nr, fabs(ns - nr), nb);
    }
    free(gmag);
    zb_model_free(&mr);

    /* ---- KL(teacher || student), vocabulary-parallel ------------------------------------- */
    {
        zb_model_forward(&ref, &ar, ids);
        zb_model_forward(&sh, &as, ids);
        float *teach = malloc(sizeof(float) * (size_t)N * V), *tl = malloc(sizeof(float) * (size_t)N * Vl);
        float *dref = malloc(sizeof(float) * (size_t)N * V), *dl = malloc(sizeof(float) * (size_t)N * Vl);
        zb_rng r;
        zb_rng_seed(&r, 5);
        for (size_t i = 0; i < (size_t)N * V; i++) teach[i] = 2.0f * zb_rng_normal(&r);
        for (int n = 0; n < N; n++)
            memcpy(tl + (size_t)n * Vl, teach + (size_t)n * V + sh.tp->vocab0, sizeof(float) * Vl);
        int *mask = malloc(sizeof(int) * N);
        for (int n = 0; n < N; n++) mask[n] = n % 7 != 3;
        const float tau = 2.0f, scale = 0.1f;
        double kr = zb_kl_div(dref, ar.logits, teach, mask, N, V, tau, scale);
        double ks = zb_tp_kl_div(sh.tp, dl, as.logits, tl, mask, N, Vl, tau, scale);
        /* the student logits s of both runs differ by at most e_n = sf max_v lmag per row;
         * dKL/ds_v = (ps_v - pt_v) / tau sums to at most 2 / tau in absolute value per row */
        zb_mag_matmul(lmag, ar.lnf, ref.w.lm_head, N, V, c->d_model);
        double *e_row = malloc(sizeof(double) * N), kb = 0;
        for (int n = 0; n < N; n++) {
            e_row[n] = sf * zb_max_abs(lmag + (size_t)n * V, V);
            if (mask[n]) kb += 2 / tau * e_row[n];
        }
        zb_check(fabs(ks - kr) <= kb, "KL %.9f vs 1-rank %.9f (|d| %.3g, bound %.3g)", ks, kr, fabs(ks - kr), kb);
        if (rank0) printf("  KL tp %.9f, 1-rank %.9f\n", ks, kr);
        zb_tp_gather_vocab(sh.tp, dl, NULL, lg, N, Vl);
        /* dstudent = scale (ps - pt) / tau, ps = softmax(s / tau): as dlogits, inputs s / tau */
        for (int n = 0; n < N; n++) {
            e_row[n] = mask[n] ? e_row[n] / tau : 0;
            const float *z = ar.logits + (size_t)n * V;
            double mx = z[0], se = 0;
            for (int v = 1; v < V; v++) if (z[v] > mx) mx = z[v];
            for (int v = 0; v < V; v++) se += exp((z[v] - mx) / tau);
            for (int v = 0; v < V; v++) pbuf[(size_t)n * V + v] = mask[n] ? (float)(exp((z[v] - mx) / tau) / se) : 0;
        }
        softmax_grad_mag(lmag, pbuf, dref, e_row, N, V, scale / tau);
        zb_check_elem_bound("KL gradient", lg, dref, lmag, (size_t)N * V, 1.0);
        free(e_row);
        free(teach); free(tl); free(dref); free(dl); free(mask);
    }

    /* ---- greedy generation with the caches ------------------------------------------------ */
    {
        int G = 2, P = 5, NEW = 10;
        zb_gen gr, gs;
        ZB_TEST_OK(zb_gen_init(&gr, &ref, G, P + NEW));
        ZB_TEST_OK(zb_gen_init(&gs, &sh, G, P + NEW));
        int prompt[10], tr[2], ts[2], same = 1;
        random_ids(prompt, G * P, V, 21);
        ZB_TEST_OK(zb_gen_step(&ref, &gr, prompt, P));
        ZB_TEST_OK(zb_gen_step(&sh, &gs, prompt, P));
        zb_sampler sp = {0.0f, 0, 1.0f};
        double worst = 0, sg = zb_bound_scale(zb_model_path_fwd(c, P + NEW));
        float *gmg = malloc(sizeof(float) * (size_t)G * V);
        if (rank0) printf("  tokens:");
        for (int k = 0; k < NEW; k++) {
            /* each new token's logits: lnf W^T, bound along the forward over the cache */
            zb_mag_matmul(gmg, gr.lnf, ref.w.lm_head, G, V, c->d_model);
            for (size_t q = 0; q < (size_t)G * V; q++) {
                double d = fabs((double)gs.logits[q] - gr.logits[q]), r = d == 0 ? 0 : d / (sg * gmg[q]);
                if (!(r <= worst)) worst = r;
            }
            for (int b = 0; b < G; b++) {
                tr[b] = zb_sample(gr.logits + (size_t)b * V, V, &sp, NULL, NULL);
                /* the TP path: rank 0 of the group samples from the gathered logits, broadcasts */
                ts[b] = zb_sample(gs.logits + (size_t)b * V, V, &sp, NULL, NULL);
            }
            MPI_Bcast(ts, G, MPI_INT, 0, grid.tp);
            same &= tr[0] == ts[0] && tr[1] == ts[1];
            if (rank0) printf(" %d/%d", ts[0], ts[1]);
            if (k + 1 < NEW) {
                ZB_TEST_OK(zb_gen_step(&ref, &gr, tr, 1));
                ZB_TEST_OK(zb_gen_step(&sh, &gs, ts, 1));
            }
        }
        if (rank0) printf("\n");
        zb_check(same, "greedy generation (B=%d, %d new tokens): the same tokens as 1 rank", G, NEW);
        zb_check(worst <= 1, "generation logits within their float32 bound (worst %.2g of it)", worst);
        if (rank0) printf("  generation logits: worst %.2g of the bound\n", worst);
        free(gmg);
        zb_gen_free(&gr);
        zb_gen_free(&gs);
    }

    /* ---- checkpoint round trip across layouts -------------------------------------------- */
    if (world % 2 == 0) {
        char p2[512], pn[512];
        snprintf(p2, sizeof p2, "%s/zb_tp2_%ld.h5", tmpdir, pid);
        snprintf(pn, sizeof pn, "%s/zb_tpn_%ld.h5", tmpdir, pid);
        zb_grid g2, gn;
        ZB_TEST_OK(zb_grid_init(&g2, MPI_COMM_WORLD, 2, 1));
        ZB_TEST_OK(zb_grid_init(&gn, MPI_COMM_WORLD, world, 1));
        zb_model s2;
        ZB_TEST_OK(zb_model_init_tp(&s2, c, &g2));
        ZB_TEST_OK(zb_tp_copy_from_full(&s2, &ref));
        ZB_TEST_OK(zb_model_save(&s2, p2, ZB_DT_F32, MPI_COMM_WORLD));   /* TP=2 (x DP world/2) */
        zb_model one;
        ZB_TEST_OK(zb_model_load(&one, p2));                               /* read at TP=1 */
        same_params_bitwise(&one, &ref, "saved at TP=2, loaded at TP=1");
        zb_model_free(&one);
        zb_model sn;
        int rc = zb_model_load_tp(&sn, p2, &gn);                           /* read at TP=world */
        if (rc == ZB_OK) {
            char what[64];
            snprintf(what, sizeof what, "saved at TP=2, loaded at TP=%d", world);
            same_params_bitwise(&sn, &ref, what);
            ZB_TEST_OK(zb_model_save(&sn, pn, ZB_DT_F32, MPI_COMM_WORLD));
            ZB_TEST_OK(zb_model_load(&one, pn));
            snprintf(what, sizeof what, "saved at TP=%d, loaded at TP=1", world);
            same_params_bitwise(&one, &ref, what);
            zb_model_free(&one);
            zb_model_free(&sn);
        } else {
            /* this model cannot be split world ways (the HF llama fixture at 4: 2 KV heads) */
            expect_error(rc, "not divisible by --tp", "loading at an impossible TP");
        }
        zb_model_free(&s2);
        MPI_Barrier(MPI_COMM_WORLD);
        if (rank0) { unlink(p2); unlink(pn); }
        zb_grid_free(&g2);
        zb_grid_free(&gn);
    }

    /* ---- sizes that do not divide: clear errors, every rank, before any work ---------------- */
    if (TP > 1) {
        zb_model bad;
        zb_config e = *c;
        e.vocab = c->vocab + 1;
        expect_error(zb_model_init_tp(&bad, &e, &grid), "vocab_size", "vocab not divisible");
        e = *c;
        e.ffn = c->ffn + 1;
        expect_error(zb_model_init_tp(&bad, &e, &grid), "intermediate_size", "ffn not divisible");
        int any_m = 0, any_a = 0;
        for (int l = 0; l < c->n_layers; l++) { any_m |= c->kinds[l] == ZB_LAYER_MAMBA2; any_a |= c->kinds[l] == ZB_LAYER_ATTN; }
        if (any_m) {
            e = *c;
            e.mamba.norm_group = e.mamba.d_inner;   /* HF's whole-d_inner gated norm */
            expect_error(zb_model_init_tp(&bad, &e, &grid), "straddle", "whole-d_inner Mamba2 norm");
        }
        if (any_a) {
            e = *c;
            e.n_heads = TP * 3;
            e.n_kv_heads = 3;
            expect_error(zb_model_init_tp(&bad, &e, &grid), "num_key_value_heads", "KV heads not divisible");
        }
    }

    free(lg); free(lmag); free(pbuf); free(ids); free(ids2);
    zb_acts_free(&ar);
    zb_acts_free(&as);
    zb_model_free(&sh);
    zb_model_free(&ref);
    zb_grid_free(&grid);
    if (rank0) printf("  worst gradient over the run: %.2g of its float32 bound (%s)\n", worst_grad, worst_name);
    return zb_test_finish();
}
