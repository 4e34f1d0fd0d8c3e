/* test_backend [NAME] — the backend seam (core/backend.h) for backend NAME (default cpu):
 * zb_backend_get finds it (unknown names are refused with a line naming them), every table
 * entry is set (and the check names a missing one), and the entries the model calls in plain
 * loops (memory, elementwise, AdamW, the gradient norm, the losses) agree with a host
 * computation: exactly where the arithmetic is the same operation on the same floats, else
 * within bounds derived from the reduction lengths. A backend not built in is skipped with a
 * line saying so. */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "ops.h"
#include "zb_test.h"

static float *randv(zb_rng *r, size_t n, float s) {
    float *x = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) x[i] = s * zb_rng_normal(r);
    return x;
}

/* device copy of host x */
static float *dev_of(const zb_backend *be, const float *x, size_t n) {
    float *d = be->alloc(be, sizeof(float) * n, "test");
    be->to_device(be, d, x, sizeof(float) * n);
    return d;
}
static float *host_of(const zb_backend *be, const float *d, size_t n) {
    float *h = malloc(sizeof(float) * n);
    be->to_host(be, h, d, sizeof(float) * n);
    return h;
}

static void check_table(const zb_backend *be) {
    const char *miss = zb_backend_missing(be);
    zb_check(!miss, "[%s] every entry of the table is set%s%s", be->name, miss ? ": missing " : "", miss ? miss : "");
    /* the check can fail: each entry removed in turn is named, each by its own name */
    typedef void (*fn)(void);
    size_t n = (sizeof(zb_backend) - offsetof(zb_backend, alloc)) / sizeof(fn), named = 0;
    const char *prev = NULL;
    for (size_t i = 0; i < n; i++) {
        zb_backend t = *be;
        fn none = NULL;
        memcpy((char *)&t + offsetof(zb_backend, alloc) + i * sizeof(fn), &none, sizeof none);
        const char *w = zb_backend_missing(&t);
        named += w && (!prev || strcmp(w, prev));
        prev = w;
    }
    zb_check(named == n, "[%s] each of the %zu entries, removed, is named by zb_backend_missing (%zu)", be->name, n, named);
}

static void check_memory(const zb_backend *be, zb_rng *r) {
    size_t n = 1000;
    float *x = randv(r, n, 1), *d = be->alloc(be, sizeof(float) * n, "test");
    float *h = host_of(be, d, n);
    int zero = 1;
    for (size_t i = 0; i < n; i++) zero &= h[i] == 0.0f;
    zb_check(zero, "[%s] alloc returns zeroed memory", be->name);
    free(h);
    be->to_device(be, d, x, sizeof(float) * n);
    float *d2 = be->alloc(be, sizeof(float) * n, "test");
    be->copy(be, d2, d, sizeof(float) * n);
    h = host_of(be, d2, n);
    zb_check(!memcmp(h, x, sizeof(float) * n), "[%s] to_device, copy, to_host give the same bits", be->name);
    free(h);
    /* rows 3..9 of a [10, 100] matrix, columns 0..29, into a [7, 40] one */
    float *d3 = be->alloc(be, sizeof(float) * 7 * 40, "test");
    be->copy_2d(be, d3, 40, d + 3 * 100, 100, 7, 30);
    h = host_of(be, d3, 7 * 40);
    int ok = 1;
    for (int i = 0; i < 7; i++)
        for (int j = 0; j < 40; j++) ok &= h[i * 40 + j] == (j < 30 ? x[(3 + i) * 100 + j] : 0.0f);
    zb_check(ok, "[%s] copy_2d copies the block and nothing else", be->name);
    free(h);
    be->zero(be, d2 + 10, sizeof(float) * 20);
    h = host_of(be, d2, n);
    ok = 1;
    for (size_t i = 0; i < n; i++) ok &= h[i] == (i >= 10 && i < 30 ? 0.0f : x[i]);
    zb_check(ok, "[%s] zero clears exactly its range", be->name);
    free(h);
    be->free(be, d); be->free(be, d2); be->free(be, d3);
    be->free(be, NULL);
    free(x);
}

static void check_elementwise(const zb_backend *be, zb_rng *r) {
    size_t n = 4099;
    float *a = randv(r, n, 1), *b = randv(r, n, 3), *want = malloc(sizeof(float) * n);
    float *da = dev_of(be, a, n), *db = dev_of(be, b, n), *dout = be->alloc(be, sizeof(float) * n, "test");
    /* one IEEE operation per element: exact */
    be->add(be, dout, da, db, n);
    for (size_t i = 0; i < n; i++) want[i] = a[i] + b[i];
    float *h = host_of(be, dout, n);
    zb_check(!memcmp(h, want, sizeof(float) * n), "[%s] add == a + b", be->name);
    free(h);
    be->sub(be, dout, da, db, n);
    for (size_t i = 0; i < n; i++) want[i] = a[i] - b[i];
    h = host_of(be, dout, n);
    zb_check(!memcmp(h, want, sizeof(float) * n), "[%s] sub == a - b", be->name);
    free(h);
    be->add(be, da, da, db, n);   /* in place, as the residual stream */
    for (size_t i = 0; i < n; i++) want[i] = a[i] + b[i];
    h = host_of(be, da, n);
    zb_check(!memcmp(h, want, sizeof(float) * n), "[%s] add in place (out == a)", be->name);
    free(h);
    be->scale(be, db, 0.37f, n);
    for (size_t i = 0; i < n; i++) want[i] = b[i] * 0.37f;
    h = host_of(be, db, n);
    zb_check(!memcmp(h, want, sizeof(float) * n), "[%s] scale == x * s", be->name);
    free(h);
    /* sum of squares: n terms in double, any order: relative error <= n * DBL_EPSILON */
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * a[i];
    float *dx = dev_of(be, a, n);
    double got = be->sumsq(be, dx, n);
    zb_check(fabs(got - s) <= n * DBL_EPSILON * s, "[%s] sumsq %.17g vs %.17g", be->name, got, s);
    be->free(be, da); be->free(be, db); be->free(be, dout); be->free(be, dx);
    free(a); free(b); free(want);
}

static void check_adamw(const zb_backend *be, zb_rng *r) {
    size_t n = 777;
    float *w = randv(r, n, 0.5f), *g = randv(r, n, 0.1f), *m = randv(r, n, 0.01f), *v = randv(r, n, 0.01f);
    for (size_t i = 0; i < n; i++) v[i] = v[i] * v[i];
    zb_adamw_hp hp = {0.9f, 0.95f, 1e-8f, 1.0f - 1e-3f * 0.1f, 1e-3f / 0.19f, sqrtf(1.0f - 0.95f * 0.95f), 0.5f};
    float *dw = dev_of(be, w, n), *dg = dev_of(be, g, n), *dm = dev_of(be, m, n), *dv = dev_of(be, v, n);
    be->adamw(be, dw, dg, dm, dv, n, &hp);
    float *hw = host_of(be, dw, n), *hm = host_of(be, dm, n), *hv = host_of(be, dv, n);
    /* the float32 update of optim.h; a device may contract a*b+c into one FMA: a few roundings of
     * each term, so |d| <= 8 eps (|w| + the step) */
    double worst = 0;
    for (size_t j = 0; j < n; j++) {
        float gj = g[j] * hp.grad_scale;
        float mj = hp.beta1 * m[j] + (1.0f - hp.beta1) * gj;
        float vj = hp.beta2 * v[j] + (1.0f - hp.beta2) * gj * gj;
        float step = hp.step_size * mj / (sqrtf(vj) / hp.bc2_sqrt + hp.eps);
        float wj = w[j] * hp.decay - step;
        double tol = 8 * FLT_EPSILON * (fabs(w[j]) + fabs(step));
        double e = fmax(fabs(hw[j] - wj) / tol,
                        fmax(fabs(hm[j] - mj) / (8 * FLT_EPSILON * (fabs(m[j]) + fabs(gj))),
                             fabs(hv[j] - vj) / (8 * FLT_EPSILON * (fabs(v[j]) + gj * gj) + FLT_MIN)));
        if (e > worst) worst = e;
    }
    zb_check(worst <= 1.0, "[%s] adamw == the float32 update of optim.h (worst error / bound %.3g)", be->name, worst);
    free(hw); free(hm); free(hv);
    be->free(be, dw); be->free(be, dg); be->free(be, dm); be->free(be, dv);
    free(w); free(g); free(m); free(v);
}

/* the losses against the CPU kernels (ops.h); a row's sums run over V terms: the bound is V eps
 * relative to the summed magnitudes */
static void check_losses(const zb_backend *be, zb_rng *r) {
    int N = 7, V = 301;
    size_t n = (size_t)N * V;
    float *s = randv(r, n, 2), *t = randv(r, n, 2);
    int tg[7] = {3, -1, 300, 0, 301, 17, 150}, mask[7] = {1, 0, 1, 1, 1, 0, 1};
    float *ds = dev_of(be, s, n), *dt = dev_of(be, t, n), *dd = be->alloc(be, sizeof(float) * n, "test");
    int *dtg = be->alloc(be, sizeof tg, "test"), *dmask = be->alloc(be, sizeof mask, "test");
    be->to_device(be, dtg, tg, sizeof tg);
    be->to_device(be, dmask, mask, sizeof mask);
    float *ref = malloc(sizeof(float) * n);
    double tol = 4.0 * V * FLT_EPSILON;

    int nv = -1, nv_ref = -1;
    double ce = be->cross_entropy(be, dd, ds, dtg, N, V, 0.25f, &nv);
    double ce_ref = zb_cross_entropy(ref, s, tg, N, V, 0.25f, &nv_ref);
    float *h = host_of(be, dd, n);
    zb_check(nv == nv_ref && nv == 5, "[%s] cross_entropy counts %d valid rows (targets outside [0, V) ignored)", be->name, nv);
    zb_check(fabs(ce - ce_ref) <= tol * (fabs(ce_ref) + N * 8.0), "[%s] cross_entropy %.9g vs %.9g", be->name, ce, ce_ref);
    zb_check(zb_max_abs_diff(h, ref, n) <= tol * 0.25, "[%s] cross_entropy gradient (max |d| %.3g)", be->name,
             zb_max_abs_diff(h, ref, n));
    free(h);
    double kl = be->kl_div(be, dd, ds, dt, dmask, N, V, 1.5f, 0.5f);
    double kl_ref = zb_kl_div(ref, s, t, mask, N, V, 1.5f, 0.5f);
    h = host_of(be, dd, n);
    zb_check(fabs(kl - kl_ref) <= tol * (fabs(kl_ref) + N * 8.0), "[%s] kl_div %.9g vs %.9g", be->name, kl, kl_ref);
    zb_check(zb_max_abs_diff(h, ref, n) <= tol * 0.5 / 1.5, "[%s] kl_div gradient (max |d| %.3g)", be->name,
             zb_max_abs_diff(h, ref, n));
    free(h);
    double mse = be->mse(be, dd, ds, dt, n, 2.0f);
    double mse_ref = zb_mse(ref, s, t, n, 2.0f);
    h = host_of(be, dd, n);
    zb_check(fabs(mse - mse_ref) <= n * DBL_EPSILON * mse_ref, "[%s] mse %.12g vs %.12g", be->name, mse, mse_ref);
    zb_check(zb_max_rel(h, ref, n) <= 4 * FLT_EPSILON, "[%s] mse gradient (max rel %.3g)", be->name, zb_max_rel(h, ref, n));
    free(h);
    /* mean row distance: per row d terms in double, then sqrt; the gradient one division and
     * product per element in double, rounded once to float */
    int d = 43, R = (int)(n / d);
    double want = 0;
    for (int r = 0; r < R; r++) {
        double q = 0;
        for (int i = 0; i < d; i++) { double e = (double)s[(size_t)r * d + i] - t[(size_t)r * d + i]; q += e * e; }
        want += sqrt(q);
        for (int i = 0; i < d; i++)
            ref[(size_t)r * d + i] = (float)((double)0.3f / (sqrt(q) * R) * ((double)s[(size_t)r * d + i] - t[(size_t)r * d + i]));
    }
    want /= R;
    double got = be->mean_row_dist(be, dd, ds, dt, R, d, 0.3f);
    h = host_of(be, dd, (size_t)R * d);
    zb_check(fabs(got - want) <= 4 * d * DBL_EPSILON * want, "[%s] mean_row_dist %.12g vs %.12g", be->name, got, want);
    zb_check(zb_max_rel(h, ref, (size_t)R * d) <= 2 * FLT_EPSILON, "[%s] mean_row_dist gradient (max rel %.3g)",
             be->name, zb_max_rel(h, ref, (size_t)R * d));
    free(h);
    be->free(be, ds); be->free(be, dt); be->free(be, dd); be->free(be, dtg); be->free(be, dmask);
    free(s); free(t); free(ref);
}

/* greedy picks over a vocabulary in slices (argmax_pairs, then argmax_pick over the slices'
 * pairs put one after the other, as TP's all-gather does) == argmax_rows of the whole rows, for
 * 1..4 uneven slices of 301: rows with the maximum in two slices, -0 before +0 in different
 * slices, NaN first (pick 0), NaN at every slice's start, all NaN, all -inf, random. Exact. */
static void check_argmax_slices(const zb_backend *be, zb_rng *r) {
    enum { N = 7, V = 301 };
    float *x = randv(r, (size_t)N * V, 2);
    x[1 * V + 40] = 9.0f; x[1 * V + 290] = 9.0f;
    for (int v = 0; v < V; v++) x[2 * V + v] = -2.0f;
    x[2 * V + 100] = -0.0f; x[2 * V + 200] = 0.0f;
    x[3 * V + 0] = NAN; x[3 * V + 150] = 5.0f;
    for (int v = 0; v < V; v++) x[5 * V + v] = NAN;
    for (int v = 0; v < V; v++) x[6 * V + v] = -INFINITY;
    int want[N], got[N], bad = 0;
    int *dp = be->alloc(be, sizeof(int) * 2 * N * 4, "test"), *dout = be->alloc(be, sizeof(int) * N, "test");
    for (int P = 1; P <= 4; P++) {
        int cut[5];
        for (int p = 0; p <= P; p++) cut[p] = p == P ? V : p * V / P + p;   /* uneven slices */
        for (int p = 1; p < P; p++) x[4 * V + cut[p]] = NAN;                   /* row 4: NaN at their starts */
        zb_backend_cpu()->argmax_rows(zb_backend_cpu(), want, x, N, V);
        for (int p = 0; p < P; p++) {
            int Vs = cut[p + 1] - cut[p];
            float *s = malloc(sizeof(float) * N * Vs);
            for (int n = 0; n < N; n++) memcpy(s + (size_t)n * Vs, x + (size_t)n * V + cut[p], sizeof(float) * Vs);
            float *ds = dev_of(be, s, (size_t)N * Vs);
            be->argmax_pairs(be, dp + 2 * N * p, ds, N, Vs, cut[p]);
            be->free(be, ds);
            free(s);
        }
        be->argmax_pick(be, dout, dp, N, P);
        be->to_host(be, got, dout, sizeof(int) * N);
        for (int n = 0; n < N; n++) bad += got[n] != want[n];
    }
    zb_check(!bad && want[1] == 40 && want[2] == 100 && want[3] == 0 && want[5] == 0 && want[6] == 0,
             "[%s] argmax_pairs + argmax_pick over 1..4 slices == argmax_rows of the whole rows (%d picks differ)",
             be->name, bad);
    free(x);
    be->free(be, dp); be->free(be, dout);
}

/* the vocabulary-parallel cross-entropy's passes (vp_*): the vocabulary of 301 cut into two
 * uneven slices, as two TP ranks hold it; the maxima and the sums combined here as the TP
 * group's all-reduces do; loss and gradient == cross_entropy of the whole rows (same bounds) */
static void check_vp(const zb_backend *be, zb_rng *r) {
    enum { N = 7, V = 301, NS = 2 };
    int cut[NS + 1] = {0, 150, V}, tg[N] = {3, -1, 300, 0, 301, 149, 150};
    float *s = randv(r, (size_t)N * V, 2), *ref = malloc(sizeof(float) * N * V), *dsl[NS], *dmx[NS], mx[N], part[N];
    double *dst[NS], st[2 * N], sp[2 * N];
    int *dtg = be->alloc(be, sizeof tg, "test");
    be->to_device(be, dtg, tg, sizeof tg);
    double ce_ref = zb_cross_entropy(ref, s, tg, N, V, 0.25f, NULL), tol = 4.0 * V * FLT_EPSILON;
    for (int k = 0; k < NS; k++) {   /* slice k: columns [cut[k], cut[k+1]) of every row */
        int w = cut[k + 1] - cut[k];
        float *h = malloc(sizeof(float) * N * w);
        for (int n = 0; n < N; n++) memcpy(h + (size_t)n * w, s + (size_t)n * V + cut[k], sizeof(float) * w);
        dsl[k] = dev_of(be, h, (size_t)N * w);
        free(h);
        dmx[k] = be->alloc(be, sizeof(float) * N, "test");
        dst[k] = be->alloc(be, sizeof(double) * 2 * N, "test");
    }
    for (int n = 0; n < N; n++) mx[n] = -INFINITY;
    for (int k = 0; k < NS; k++) {   /* 1: the max over the slices */
        be->vp_row_max(be, dmx[k], dsl[k], N, cut[k + 1] - cut[k]);
        be->to_host(be, part, dmx[k], sizeof part);
        for (int n = 0; n < N; n++) mx[n] = fmaxf(mx[n], part[n]);
    }
    for (int n = 0; n < 2 * N; n++) st[n] = 0;
    for (int k = 0; k < NS; k++) {   /* 2: the sums */
        be->to_device(be, dmx[k], mx, sizeof mx);
        be->vp_row_sums(be, dst[k], dsl[k], dmx[k], dtg, N, cut[k + 1] - cut[k], cut[k]);
        be->to_host(be, sp, dst[k], sizeof sp);
        for (int n = 0; n < 2 * N; n++) st[n] += sp[n];
    }
    double worst = 0;
    for (int k = 0; k < NS; k++) {   /* 3: every slice's loss (the same) and its gradient */
        int w = cut[k + 1] - cut[k];
        be->to_device(be, dst[k], st, sizeof st);
        double ce = be->vp_ce_grad(be, dsl[k], dsl[k], dmx[k], dst[k], dtg, N, w, cut[k], V, 0.25f);   /* in place */
        zb_check(fabs(ce - ce_ref) <= tol * (fabs(ce_ref) + N * 8.0), "[%s] vp cross-entropy, slice %d: %.9g vs %.9g",
                 be->name, k, ce, ce_ref);
        float *h = host_of(be, dsl[k], (size_t)N * w);
        for (int n = 0; n < N; n++)
            for (int v = 0; v < w; v++) {
                double e = fabs((double)h[(size_t)n * w + v] - ref[(size_t)n * V + cut[k] + v]);
                if (e > worst) worst = e;
            }
        free(h);
        be->free(be, dsl[k]); be->free(be, dmx[k]); be->free(be, dst[k]);
    }
    zb_check(worst <= tol * 0.25, "[%s] vp cross-entropy gradient over the slices == the whole rows' (max |d| %.3g)",
             be->name, worst);
    be->free(be, dtg);
    free(s); free(ref);
}

/* adamw_ranges / sumsq_ranges: ranges of odd offsets and lengths, one over several of a device's
 * blocks, one empty, on base pointers aligned and one float off (a device's vector and scalar
 * forms): the float32 update of optim.h per range (the bound of check_adamw), and the sum of
 * squares within n DBL_EPSILON of the host's; the floats outside the ranges untouched. */
static void check_ranges(const zb_backend *be, zb_rng *r) {
    const size_t n = 56410;
    zb_range rg[5] = {{0, 5, 0.99f, 1e-3f}, {7, 40001, 0.98f, 2e-3f}, {40010, 0, 1, 0}, {40010, 16384, 1.0f, 5e-4f},
                      {56400, 3, 0.97f, 1e-3f}};
    for (int shift = 0; shift < 2; shift++) {
        float *w = randv(r, n, 0.5f), *g = randv(r, n, 0.1f), *m = randv(r, n, 0.01f), *v = randv(r, n, 0.01f);
        for (size_t i = 0; i < n; i++) v[i] = v[i] * v[i];
        zb_adamw_hp hp = {0.9f, 0.95f, 1e-8f, 1.0f, 0.0f, sqrtf(1.0f - 0.95f * 0.95f), 0.5f};
        float *dw = dev_of(be, w, n), *dg = dev_of(be, g, n), *dm = dev_of(be, m, n), *dv = dev_of(be, v, n);
        /* sum of squares first (g unchanged by the update) */
        zb_range rs[5];
        memcpy(rs, rg, sizeof rs);
        if (shift) rs[4].n = 2;   /* the last range stops at the buffer's end */
        double want = 0, ab = 0;
        for (int k = 0; k < 5; k++)
            for (size_t j = rs[k].off; j < rs[k].off + rs[k].n; j++) {
                double x = (double)g[j + shift];
                want += x * x;
                ab += 1;
            }
        double got = be->sumsq_ranges(be, dg + shift, 5, rs);
        zb_check(fabs(got - want) <= ab * DBL_EPSILON * want, "[%s] sumsq_ranges %.17g vs %.17g (base %s)", be->name,
                 got, want, shift ? "one float off" : "aligned");
        be->adamw_ranges(be, dw + shift, dg + shift, dm + shift, dv + shift, 5, rs, &hp);
        float *hw = host_of(be, dw, n), *hm = host_of(be, dm, n), *hv = host_of(be, dv, n);
        unsigned char *in = calloc(n, 1);
        double worst = 0;
        for (int k = 0; k < 5; k++)
            for (size_t j0 = rs[k].off; j0 < rs[k].off + rs[k].n; j0++) {
                size_t j = j0 + shift;
                in[j] = 1;
                float gj = g[j] * hp.grad_scale;
                float mj = hp.beta1 * m[j] + (1.0f - hp.beta1) * gj;
                float vj = hp.beta2 * v[j] + (1.0f - hp.beta2) * gj * gj;
                float step = rs[k].step_size * mj / (sqrtf(vj) / hp.bc2_sqrt + hp.eps);
                float wj = w[j] * rs[k].decay - step;
                double tol = 8 * FLT_EPSILON * (fabs(w[j]) + fabs(step)) + FLT_MIN;
                double e = fmax(fabs(hw[j] - wj) / tol,
                                fmax(fabs(hm[j] - mj) / (8 * FLT_EPSILON * (fabs(m[j]) + fabs(gj)) + FLT_MIN),
                                     fabs(hv[j] - vj) / (8 * FLT_EPSILON * (fabs(v[j]) + gj * gj) + FLT_MIN)));
                if (e > worst) worst = e;
            }
        int outside = 0;
        for (size_t j = 0; j < n; j++) outside += !in[j] && (hw[j] != w[j] || hm[j] != m[j] || hv[j] != v[j]);
        zb_check(worst <= 1.0 && outside == 0, "[%s] adamw_ranges == the float32 update of each range (worst error / "
                 "bound %.3g), %d floats outside the ranges changed (base %s)", be->name, worst, outside,
                 shift ? "one float off" : "aligned");
        free(in); free(hw); free(hm); free(hv);
        be->free(be, dw); be->free(be, dg); be->free(be, dm); be->free(be, dv);
        free(w); free(g); free(m); free(v);
    }
}

int main(int argc, char **argv) {
    zb_test_init(&argc, &argv);
    const char *name = argc > 1 ? argv[1] : "cpu";
    /* names that are not backends are refused with a line naming them */
    zb_check(!zb_backend_get("tpu") && strstr(zb_errmsg(), "'tpu'"), "unknown backend refused: %s", zb_errmsg());
    const zb_backend *cuda = zb_backend_get("cuda");
    zb_check(cuda || strstr(zb_errmsg(), "cuda"), "cuda: built in, or refused with a line saying so (%s)",
             cuda ? "built in" : zb_errmsg());
    zb_check(zb_backend_get("cpu") == zb_backend_cpu() && !strcmp(zb_backend_cpu()->name, "cpu"),
             "zb_backend_get(\"cpu\") is the CPU table");
    const zb_backend *be = zb_backend_get(name);
    if (!be) {
        printf("SKIP backend %s: %s\n", name, zb_errmsg());
        int rc = zb_test_finish();
        return rc ? rc : 77;   /* ctest's SKIP_RETURN_CODE (tests/cuda.cmake) */
    }
    zb_rng r;
    zb_rng_seed(&r, 11);
    check_table(be);
    check_memory(be, &r);
    check_elementwise(be, &r);
    check_adamw(be, &r);
    check_ranges(be, &r);
    check_losses(be, &r);
    check_vp(be, &r);
    check_argmax_slices(be, &r);
    return zb_test_finish();
}
