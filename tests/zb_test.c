#include "zb_test.h"

#include <math.h>
#include <mpi.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "zb_common.h"

static int n_pass, n_fail, rank;

void zb_test_init(int *argc, char ***argv) {
    MPI_Init(argc, argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
}

int zb_test_finish(void) {
    int local[2] = {n_pass, n_fail}, tot[2];
    MPI_Reduce(local, tot, 2, MPI_INT, MPI_SUM, 0, MPI_COMM_WORLD);
    int fail = 0;
    if (rank == 0) {
        printf("%d passed, %d failed\n", tot[0], tot[1]);
        fflush(stdout);
        fail = tot[1] > 0;
    }
    MPI_Bcast(&fail, 1, MPI_INT, 0, MPI_COMM_WORLD);
    MPI_Finalize();
    return fail ? 1 : 0;
}

int zb_check(int ok, const char *fmt, ...) {
    va_list ap;
    if (ok) n_pass++; else n_fail++;
    if (!ok || getenv("ZB_TEST_VERBOSE")) {
        printf("%s [rank %d] ", ok ? "PASS" : "FAIL", rank);
        va_start(ap, fmt);
        vprintf(fmt, ap);
        va_end(ap);
        printf("\n");
        fflush(stdout);
    }
    return ok;
}

double zb_max_rel(const float *a, const float *b, size_t n) {
    double md = 0, mr = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (d > md || isnan(d)) md = isnan(d) ? INFINITY : d;
        if (fabs(b[i]) > mr) mr = fabs(b[i]);
    }
    return mr > 0 ? md / mr : md;
}

double zb_norm_rel(const float *a, const float *b, size_t n) {
    double dd = 0, rr = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - b[i];
        dd += d * d;
        rr += (double)b[i] * b[i];
    }
    if (isnan(dd)) return INFINITY;
    return rr > 0 ? sqrt(dd / rr) : sqrt(dd);
}

double zb_bound_ratio(const float *a, const float *b, const float *mag, size_t n, double scale) {
    double w = 0;
    for (size_t v = 0; v < n; v++) {
        double d = fabs((double)a[v] - b[v]), r = d == 0 ? 0 : d / (scale * mag[v]);
        if (!(r <= w)) w = r;
    }
    return w;
}

double zb_max_abs_diff(const float *a, const float *b, size_t n) {
    double md = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (d > md || isnan(d)) md = isnan(d) ? INFINITY : d;
    }
    return md;
}

int zb_check_max_rel(const char *what, const float *got, const float *ref, size_t n, double tol) {
    double e = zb_max_rel(got, ref, n);
    return zb_check(e <= tol, "%s: max|d|/max|ref| = %.3g (tol %.1g)", what, e, tol);
}

int zb_check_norm_rel(const char *what, const float *got, const float *ref, size_t n, double tol) {
    double e = zb_norm_rel(got, ref, n);
    return zb_check(e <= tol, "%s: ||d||/||ref|| = %.3g (tol %.1g)", what, e, tol);
}

int zb_test_src_is_config(const char *src) {
    size_t n = strlen(src);
    return n > 5 && !strcmp(src + n - 5, ".json");
}

int zb_test_load_model(zb_model *m, const char *src) {
    if (!zb_test_src_is_config(src)) return zb_model_load(m, src);
    zb_config c;
    ZB_TRY(zb_config_load(src, &c));
    ZB_TRY(zb_model_init(m, &c));
    zb_model_init_random(m, 7, 0.08f);
    return ZB_OK;
}

/* ---- float32 error bounds (zb_test.h) ------------------------------------------------------- */
double zb_gamma32(double n) { return n * ZB_U32 / (1 - n * ZB_U32); }

/* a reduction of n terms on the path: its count of rounding errors */
static double sq(double n) { return n > 1 ? n : 1; }

/* The reductions of each mixer, forward (fwd = 1) or backward (0: each product y = W x then
 * also reduces over W's other dimension, dx = W^T dy, and the elementwise derivatives count
 * again). The lists follow core/model.c, mla.c, mamba2.c. */
double zb_ops_attn(int d, int H, int hd, int T, int fwd) {
    /* q k v, rope (2 terms), q.k, softmax (exp, sum over T, divide), p.v, o_proj */
    double p = sq(d) + 2 + sq(hd) + 2 + sq(T) + sq(T) + sq((double)H * hd);
    return fwd ? p : p + sq(T) + 2 * sq((double)H * hd);
}

double zb_ops_mla(const zb_mla_dims *a, int d, int T, int fwd) {
    int qk = a->qk_nope + a->qk_rope;
    double q = a->q_lora_rank > 0 ? sq(d) + (a->q_norm ? sq(a->q_lora_rank) + 1 : 0) + sq(a->q_lora_rank) : sq(d);
    double kv = sq(d) + (a->kv_norm ? sq(a->kv_lora_rank) + 1 : 0) + sq(a->kv_lora_rank);
    double at = 2 + sq(qk) + 2 + sq(T) + sq(T) + sq((double)a->n_heads * a->v_head_dim);
    if (!fwd) {   /* transposed products reduce over the output widths */
        double qo = (double)a->n_heads * qk, kvo = (double)a->kv_heads * (a->qk_nope + a->v_head_dim);
        q += sq(qo) + (a->q_lora_rank > 0 ? sq(a->q_lora_rank) : 0);
        kv += sq(kvo) + sq(a->kv_lora_rank + a->qk_rope);
        at += sq(T) + sq(d);
    }
    return (q > kv ? q : kv) + at;
}

double zb_ops_mamba2(const zb_mamba2_dims *m, int d, int T, int fwd) {
    int nc = (T + m->chunk - 1) / m->chunk;
    /* in_proj; conv (K taps) + silu; softplus dt; cumsum of dt A over a chunk + exp; C.B over
     * d_state, the intra-chunk sum over the chunk; chunk states (a sum over the chunk) passed
     * over the chunks (a sum over them) and read by C (over d_state); D x; gate silu; gated
     * RMSNorm over its group; out_proj */
    double ssd = sq(m->chunk) + 1 + sq(m->d_state) + sq(m->chunk) + sq(m->chunk) + sq(nc) + sq(m->d_state) + 1;
    double p = sq(d) + sq(m->conv_k) + 2 + 2 + ssd + 2 + sq(m->norm_group) + 1 + sq(m->d_inner);
    return fwd ? p : p + ssd + sq(zb_mamba2_in_proj_rows(m)) + sq(m->conv_k) + sq(d);
}

/* one block: two RMSNorms (sum of squares, rsqrt) and residual adds, the SwiGLU MLP (gate/up,
 * silu * up, down), and the mixer */
double zb_ops_norms_mlp(int d, int F, int fwd) {
    return 2 * (sq(d) + 1) + 2 + (fwd ? sq(d) + 3 + sq(F) : sq(d) + 3 + sq(F) + sq(F) + 3 + 2 * sq(d));
}

static double block_path(const zb_config *c, zb_layer_kind k, int T, int fwd) {
    int d = c->d_model;
    double p = zb_ops_norms_mlp(d, c->ffn, fwd);
    if (k == ZB_LAYER_ATTN) p += zb_ops_attn(d, c->n_heads, c->head_dim, T, fwd);
    else if (k == ZB_LAYER_MLA) p += zb_ops_mla(&c->mla, d, T, fwd);
    else p += zb_ops_mamba2(&c->mamba, d, T, fwd);
    return p;
}

static double path_fwd_n(const zb_config *c, int T) {
    double p = 1;   /* embedding row */
    for (int l = 0; l < c->n_layers; l++) p += block_path(c, c->kinds[l], T, 1);
    return p + sq(c->d_model) + 1 + sq(c->d_model);   /* final norm, head */
}

double zb_model_path_fwd(const zb_config *c, int T) { return sqrt(path_fwd_n(c, T)); }

double zb_model_path_bwd(const zb_config *c, int T, int N) {
    /* every block forward and backward (block_path with fwd 0 counts both), the embedding, the
     * final norm and head forward, the loss (log-sum-exp over V, softmax), the head's and the
     * final norm's backward, and the final sum of each parameter's gradient over the N tokens */
    int d = c->d_model;
    double p = 1 + sq(d) + 1 + sq(d) + sq(c->vocab) + 2 + sq(c->vocab) + sq(d) + 1 + sq(N);
    for (int l = 0; l < c->n_layers; l++) p += block_path(c, c->kinds[l], T, 0);
    return sqrt(p);
}

void zb_mag_matmul(float *mag, const float *x, const float *w, int N, int V, int K) {
    for (int n = 0; n < N; n++)
        for (int v = 0; v < V; v++) {
            double s = 0;
            for (int k = 0; k < K; k++) s += fabs((double)x[(size_t)n * K + k] * w[(size_t)v * K + k]);
            mag[(size_t)n * V + v] = (float)s;
        }
}

int zb_mag_ce_grad(zb_model *m, const int *ids, const int *targets, int B, int T, float *mag) {
    zb_acts a;
    ZB_TRY(zb_acts_alloc(&a, m, B, T));
    int N = B * T, nt = 0;
    int *tg = malloc(sizeof(int) * N);
    if (!tg) { zb_acts_free(&a); return zb_fail(ZB_ENOMEM, "magnitudes"); }
    for (int k = 0; k < N; k++) nt += targets[k] >= 0;
    for (int k = 0; k < N; k++) {
        if (targets[k] < 0) continue;
        for (int n = 0; n < N; n++) tg[n] = -1;
        tg[k] = targets[k];
        zb_model_zero_grad(m);
        zb_model_forward(m, &a, ids);
        zb_model_ce_loss(m, &a, tg, 1);
        zb_model_backward(m, &a, ids);
        for (size_t i = 0; i < m->n_floats; i++) mag[i] += fabsf(m->grad[i]) / nt;
    }
    zb_model_zero_grad(m);
    free(tg);
    zb_acts_free(&a);
    return ZB_OK;
}

int zb_mag_lm_grad(zb_model *m, const int *ids, int B, int T, float *mag) {
    int N = B * T;
    int *tg = malloc(sizeof(int) * N);
    if (!tg) return zb_fail(ZB_ENOMEM, "magnitudes");
    for (int k = 0; k < N; k++) tg[k] = k % T < T - 1 ? ids[k + 1] : -1;   /* labels shifted by one */
    int rc = zb_mag_ce_grad(m, ids, tg, B, T, mag);
    free(tg);
    return rc;
}

double zb_bound_scale(double path) { return 2 * ZB_LAMBDA * ZB_U32 * path; }

int zb_tensor_within(const float *got, const float *ref, const float *mag, size_t n, double path, double *ratio,
                     int *sensitive) {
    double err = zb_max_abs_diff(got, ref, n), bound = zb_bound_scale(path) * zb_max_abs(mag, n);
    double rmax = zb_max_abs(ref, n);
    *ratio = bound > 0 ? err / bound : err > 0 ? INFINITY : 0;
    *sensitive = bound < 1e-3 * rmax || rmax == 0;
    return err <= bound;
}

double zb_max_abs(const float *x, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double v = fabs((double)x[i]);
        if (v > m || isnan(v)) m = isnan(v) ? INFINITY : v;
    }
    return m;
}

int zb_check_bound(const char *what, const float *got, const float *ref, size_t n, double bound) {
    double e = zb_max_abs_diff(got, ref, n);
    return zb_check(e <= bound, "%s: max|d| %.3g <= bound %.3g (%.2g of it)", what, e, bound, bound > 0 ? e / bound : e);
}

int zb_check_elem_bound(const char *what, const float *got, const float *ref, const float *mag, size_t n,
                        double scale) {
    double worst = 0;
    size_t wi = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - ref[i]), b = scale * mag[i];
        double r = isnan(d) ? INFINITY : d == 0 ? 0 : b > 0 ? d / b : INFINITY;
        if (r > worst) { worst = r; wi = i; }
    }
    return zb_check(worst <= 1, "%s: |d| <= %.3g x magnitude per element (worst %.2g of its bound, at %zu)", what,
                    scale, worst, wi);
}

/* ---- finite differences (zb_test.h) ---------------------------------------------------------- */
static double fd_at(zb_loss_fn f, void *ctx, float *p, double h, double *step) {
    float save = *p, up = (float)(save + h), dn = (float)(save - h);
    *p = up;
    double lp = f(ctx);
    *p = dn;
    double lm = f(ctx);
    *p = save;
    *step = (double)up - dn;
    return (lp - lm) / *step;
}

void zb_fd_grad(zb_loss_fn f, void *ctx, float *p, size_t n, double h, double ef, float *num, float *tol) {
    for (size_t i = 0; i < n; i++) {
        double s1, s2;
        double d1 = fd_at(f, ctx, p + i, h, &s1), d2 = fd_at(f, ctx, p + i, 2 * h, &s2);
        num[i] = (float)d1;
        /* 2 ef / s: the two evaluations of each difference over its whole step */
        tol[i] = (float)(2 * fabs(d2 - d1) / 3 + 2 * ef / s1 + 2 * ef / s2 / 3);
    }
}

double zb_loss_ef(const float *R, const float *mag, size_t n, double n_ops) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)R[i] * R[i] * (double)mag[i] * mag[i];
    return ZB_LAMBDA * ZB_U32 * sqrt(n_ops) * sqrt(s);
}

int zb_check_fd(const char *what, const float *an, const float *num, const float *tol, size_t n, double abound) {
    double dd = 0, tt = 0, nn = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)an[i] - num[i];
        dd += d * d;
        tt += (double)tol[i] * tol[i];
        nn += (double)num[i] * num[i];
    }
    double e = sqrt(dd), b = sqrt(tt) + abound;
    if (isnan(e)) e = INFINITY;
    return zb_check(e <= b, "%s: ||an - fd|| %.3g <= %.3g (fd %.3g + float32 %.3g; bound %.2g of ||fd||)", what, e,
                    b, sqrt(tt), abound, nn > 0 ? b / sqrt(nn) : b);
}

int zb_greedy_check(const zb_model *m, const float *head, const int *p, int np, const int *want, int ng, int *matched) {
    const zb_config *c = &m->cfg;
    int V = c->vocab, d = c->d_model, res = 1, k;
    zb_gen g;
    int *tok = malloc(sizeof(int) * (ng > 0 ? ng : 1));
    float *mag = malloc(sizeof(float) * V);
    if (!tok || !mag || zb_gen_init(&g, m, 1, np + ng) || zb_gen_step(m, &g, p, np)) {
        free(tok); free(mag);
        *matched = 0;
        return 0;
    }
    zb_sampler greedy = {0, 0, 1};
    for (k = 0; k < ng; k++) {
        tok[k] = zb_sample(g.logits, V, &greedy, NULL, NULL);
        if (tok[k] != want[k]) {
            zb_mag_matmul(mag, g.lnf, head, 1, V, d);
            double gap = g.logits[tok[k]] - g.logits[want[k]];
            double b = zb_bound_scale(zb_model_path_fwd(c, np + k)) * ((double)mag[tok[k]] + mag[want[k]]);
            res = gap <= b ? 2 : 0;
            printf("  greedy step %d: token %d, expected %d: logit gap %.3g %s its float32 bound %.3g\n", k, tok[k],
                   want[k], gap, gap <= b ? "within" : "beyond", b);
            break;
        }
        if (k + 1 < ng && zb_gen_step(m, &g, &tok[k], 1)) { res = 0; break; }
    }
    *matched = k;
    zb_gen_free(&g);
    free(tok); free(mag);
    return res;
}

float *zb_test_head_f32(const zb_model *m) {
    size_t n = (size_t)m->cfg.vocab * m->cfg.d_model;
    float *h = malloc(sizeof(float) * n);
    if (!h) return NULL;
    zb_wt w = m->w.lm_head_lin;
    for (size_t i = 0; i < n; i++) h[i] = w.f32 ? w.f32[i] : zb_bf16_to_f32(w.bf16[i]);
    return h;
}
