/* backend_cpu.c — the CPU backend's table (backend.h): host memory, the float32 kernels of
 * ops.c / linear.c (OpenBLAS, OpenMP) and the MLA / Mamba2 mixers of mla.c / mamba2.c. */
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "linear.h"
#include "mamba2.h"
#include "mla.h"
#include "ops.h"
#include "zb_common.h"

/* ---- memory ----------------------------------------------------------------------------------- */

static void *cpu_alloc(const zb_backend *be, size_t bytes, const char *what) {
    (void)be;
    return zb_calloc(bytes ? bytes : 1, 1, what);   /* calloc: large blocks come as untouched zero pages */
}
static void cpu_free(const zb_backend *be, void *p) { (void)be; free(p); }
static void cpu_zero(const zb_backend *be, void *p, size_t bytes) { (void)be; memset(p, 0, bytes); }
static void cpu_copy(const zb_backend *be, void *dst, const void *src, size_t bytes) {
    (void)be;
    memcpy(dst, src, bytes);
}
/* host and device are one memory: a copy onto itself is nothing */
static void cpu_xfer(const zb_backend *be, void *dst, const void *src, size_t bytes) {
    (void)be;
    if (dst != src) memcpy(dst, src, bytes);
}
static void cpu_copy_2d(const zb_backend *be, float *dst, size_t dst_ld, const float *src, size_t src_ld,
                        size_t rows, size_t cols) {
    (void)be;
    for (size_t r = 0; r < rows; r++) memcpy(dst + r * dst_ld, src + r * src_ld, sizeof(float) * cols);
}
static void cpu_sync(const zb_backend *be) { (void)be; }

/* ---- elementwise -------------------------------------------------------------------------------- */

static void cpu_add(const zb_backend *be, float *out, const float *a, const float *b, size_t n) {
    (void)be;
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}
static void cpu_sub(const zb_backend *be, float *out, const float *a, const float *b, size_t n) {
    (void)be;
    for (size_t i = 0; i < n; i++) out[i] = a[i] - b[i];
}
static void cpu_scale(const zb_backend *be, float *x, float s, size_t n) {
    (void)be;
    for (size_t i = 0; i < n; i++) x[i] *= s;
}

/* ---- layer kernels (ops.h, linear.h) ---------------------------------------------------------------- */

static void cpu_matmul_forward(const zb_backend *be, float *out, const float *inp, const float *W,
                               const float *bias, int N, int C, int OC) {
    (void)be;
    zb_matmul_forward(out, inp, W, bias, N, C, OC);
}
static void cpu_matmul_backward(const zb_backend *be, float *dinp, float *dW, float *dbias, const float *dout,
                                const float *inp, const float *W, int N, int C, int OC) {
    (void)be;
    zb_matmul_backward(dinp, dW, dbias, dout, inp, W, N, C, OC);
}
static void cpu_linear_forward(const zb_backend *be, float *out, const float *inp, zb_wt W, int N, int C, int OC) {
    (void)be;
    zb_linear_forward(out, inp, W, N, C, OC);
}
/* the fusions of backend.h are the separate products here (the CPU gains nothing from one call) */
static void cpu_linear_forward3(const zb_backend *be, float *out0, float *out1, float *out2, const float *inp,
                                zb_wt W0, zb_wt W1, zb_wt W2, int N, int C, int OC0, int OC1, int OC2) {
    (void)be;
    zb_linear_forward(out0, inp, W0, N, C, OC0);
    zb_linear_forward(out1, inp, W1, N, C, OC1);
    zb_linear_forward(out2, inp, W2, N, C, OC2);
}
static void cpu_swiglu_linear_forward(const zb_backend *be, float *h, float *u, const float *inp, zb_wt Wg, zb_wt Wu,
                                      int N, int C, int F) {
    (void)be;
    zb_linear_forward(h, inp, Wg, N, C, F);
    zb_linear_forward(u, inp, Wu, N, C, F);
    zb_swiglu_forward(h, h, u, (size_t)N * F);
}
static void cpu_add_rmsnorm(const zb_backend *be, float *x, const float *a, float *out, const float *w, int N, int C,
                            float eps) {
    cpu_add(be, x, x, a, (size_t)N * C);
    zb_rmsnorm_forward(out, NULL, x, w, N, C, eps);
}
static void cpu_linear_add_rmsnorm(const zb_backend *be, float *out, const float *inp, zb_wt W, int N, int C, int OC,
                                   float *x, float *ln, const float *w, float eps) {
    cpu_linear_forward(be, out, inp, W, N, C, OC);
    cpu_add_rmsnorm(be, x, out, ln, w, N, OC, eps);
}
static void cpu_rmsnorm_forward(const zb_backend *be, float *out, float *rstd, const float *x, const float *w,
                                int N, int C, float eps) {
    (void)be;
    zb_rmsnorm_forward(out, rstd, x, w, N, C, eps);
}
static void cpu_rmsnorm_backward(const zb_backend *be, float *dx, float *dw, const float *dout, const float *x,
                                 const float *w, const float *rstd, int N, int C) {
    (void)be;
    zb_rmsnorm_backward(dx, dw, dout, x, w, rstd, N, C);
}
static void cpu_rope(const zb_backend *be, const zb_rope *r, float *x, int B, int T, int row_stride, int n_heads,
                     int head_stride, int offset, int pos0, int interleave, int inverse) {
    (void)be;
    zb_rope_apply_seq(r, x, B, T, row_stride, n_heads, head_stride, offset, pos0, interleave, inverse);
}

/* the probabilities [B, H, T, T] */
static size_t cpu_attention_saved_floats(const zb_backend *be, const zb_attn_shape *s) {
    (void)be;
    return (size_t)s->B * s->H * s->T * s->T;
}
static void cpu_attention_forward(const zb_backend *be, float *out, float *saved, const float *q, const float *k,
                                  const float *v, const zb_attn_shape *s) {
    (void)be;
    zb_attention_forward(out, saved, q, k, v, s);
}
static void cpu_attention_backward(const zb_backend *be, float *dq, float *dk, float *dv, const float *dout,
                                   const float *out, const float *saved, const float *q, const float *k,
                                   const float *v, const zb_attn_shape *s) {
    (void)be;
    (void)out;
    zb_attention_backward(dq, dk, dv, dout, saved, q, k, v, s);
}

static size_t cpu_attention_step_scratch(const zb_backend *be, int H, int Hkv, int hd, int max_T, int ntok) {
    (void)be;
    (void)Hkv;
    (void)ntok;
    return zb_attention_decode_scratch(H, hd, max_T);   /* one token at a time */
}
static void cpu_attention_step(const zb_backend *be, const zb_rope *r, float *att, float *q, float *k, const float *v,
                               float *kc, float *vc, int max_T, const int *seqs, const int *pos, int nb, int n,
                               int H, int Hkv, int hd, float *scratch) {
    size_t qd = (size_t)H * hd, kd = (size_t)Hkv * hd, gs = (size_t)max_T * hd;
    for (int i = 0; i < nb; i++) {
        int b = seqs[i], p0 = pos[b];
        /* head-major cache [Hkv, max_T, hd] per sequence: a KV head's rows are contiguous, so
         * its decode reads one stream the prefetchers follow (not hd of every kd floats) */
        float *Kb = kc + (size_t)b * Hkv * gs, *Vb = vc + (size_t)b * Hkv * gs;
        zb_rope_apply_seq(r, q + (size_t)i * n * qd, 1, n, (int)qd, H, hd, 0, p0, 0, 0);
        zb_rope_apply_seq(r, k + (size_t)i * n * kd, 1, n, (int)kd, Hkv, hd, 0, p0, 0, 0);
        for (int t = 0; t < n; t++) {
            size_t row = (size_t)i * n + t;
            for (int g = 0; g < Hkv; g++) {
                memcpy(Kb + g * gs + (size_t)(p0 + t) * hd, k + row * kd + (size_t)g * hd, sizeof(float) * hd);
                memcpy(Vb + g * gs + (size_t)(p0 + t) * hd, v + row * kd + (size_t)g * hd, sizeof(float) * hd);
            }
        }
        for (int t = 0; t < n; t++) {
            size_t row = (size_t)i * n + t;
            zb_attention_decode(att + row * qd, q + row * qd, Kb, Vb, p0 + t + 1, H, Hkv, hd, hd, hd, hd, gs, gs,
                                1.0f / sqrtf((float)hd), scratch, &be->opts);
        }
    }
}

static void cpu_swiglu_forward(const zb_backend *be, float *h, const float *g, const float *u, size_t n) {
    (void)be;
    zb_swiglu_forward(h, g, u, n);
}
static void cpu_swiglu_backward(const zb_backend *be, float *dg, float *du, const float *dh, const float *g,
                                const float *u, size_t n) {
    (void)be;
    zb_swiglu_backward(dg, du, dh, g, u, n);
}
static void cpu_embedding_forward(const zb_backend *be, float *out, const int *ids, zb_wt table, int N, int C) {
    (void)be;
    for (int i = 0; i < N; i++)   /* an id < 0: a row of zeros (backend.h) */
        if (ids[i] < 0) memset(out + (size_t)i * C, 0, sizeof(float) * (size_t)C);
        else if (table.bf16)   /* bf16 rows, converted as they are looked up */
            zb_bf16_to_f32_n(table.bf16 + (size_t)ids[i] * C, out + (size_t)i * C, (size_t)C);
        else memcpy(out + (size_t)i * C, table.f32 + (size_t)ids[i] * C, sizeof(float) * (size_t)C);
}
static void cpu_embedding_backward(const zb_backend *be, float *dtable, const float *dout, const int *ids,
                                   int N, int C) {
    (void)be;
    zb_embedding_backward(dtable, dout, ids, N, C);
}

static double cpu_cross_entropy(const zb_backend *be, float *dlogits, const float *logits, const int *targets,
                                int N, int V, float scale, int *n_valid) {
    (void)be;
    return zb_cross_entropy(dlogits, logits, targets, N, V, scale, n_valid);
}
static double cpu_cross_entropy_head(const zb_backend *be, float *logits, const int *targets, int N, int V,
                                     float scale) {
    (void)be;
    return zb_cross_entropy(logits, logits, targets, N, V, scale, NULL);
}
static double cpu_kl_div(const zb_backend *be, float *dstudent, const float *student, const float *teacher,
                         const int *mask, int N, int V, float tau, float scale) {
    (void)be;
    return zb_kl_div(dstudent, student, teacher, mask, N, V, tau, scale);
}
static double cpu_mse(const zb_backend *be, float *da, const float *a, const float *b, size_t n, float scale) {
    (void)be;
    return zb_mse(da, a, b, n, scale);
}

/* the vocabulary-parallel cross-entropy's passes (backend.h); sums and the gradient in double */
static void cpu_vp_row_max(const zb_backend *be, float *mx, const float *logits, int N, int V) {
    (void)be;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *row = logits + (size_t)n * V;
        float m = -INFINITY;
        for (int v = 0; v < V; v++) if (row[v] > m) m = row[v];
        mx[n] = m;
    }
}
static void cpu_vp_row_sums(const zb_backend *be, double *st, const float *logits, const float *mx, const int *targets,
                            int N, int V, int64_t v0) {
    (void)be;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *row = logits + (size_t)n * V;
        double sum = 0;
        for (int v = 0; v < V; v++) sum += exp((double)row[v] - mx[n]);
        int64_t y = (int64_t)targets[n] - v0;
        st[2 * n] = sum;
        st[2 * n + 1] = (y >= 0 && y < V) ? row[y] : 0.0;   /* the target logit lives on one rank */
    }
}
static double cpu_vp_ce_grad(const zb_backend *be, float *dlogits, const float *logits, const float *mx, const double *st,
                             const int *targets, int N, int V, int64_t v0, int64_t Vfull, float scale) {
    (void)be;
    double total = 0;   /* rows in order (the sum's rounding as the host path had it) */
    for (int n = 0; n < N; n++) {
        float *d = dlogits ? dlogits + (size_t)n * V : NULL;
        int64_t y = targets[n];
        if (y < 0 || y >= Vfull) {
            if (d) memset(d, 0, sizeof(float) * (size_t)V);
            continue;
        }
        double lse = mx[n] + log(st[2 * n]);
        total += lse - st[2 * n + 1];
        if (d) {
            const float *row = logits + (size_t)n * V;
            for (int v = 0; v < V; v++) d[v] = (float)(scale * exp((double)row[v] - lse));
            if (y - v0 >= 0 && y - v0 < V) d[y - v0] -= scale;
        }
    }
    return total;
}

static double cpu_mean_row_dist(const zb_backend *be, float *g, const float *s, const float *t, int N, int d,
                                float scale) {
    (void)be;
    return zb_mean_row_dist(g, s, t, N, d, scale);
}

/* ---- mixers (mla.c, mamba2.c) --------------------------------------------------------------------- */

static size_t cpu_mla_act_floats(const zb_backend *be, const zb_mla_dims *m, int d, int B, int T) {
    (void)be;
    return zb_mla_act_floats(m, d, B, T);
}
static size_t cpu_mla_scratch_floats(const zb_backend *be, const zb_mla_dims *m, int d, int B, int T) {
    (void)be;
    return zb_mla_scratch_floats(m, d, B, T);
}
static void cpu_mla_forward(const zb_backend *be, const zb_mla_dims *m, int d, float eps, const zb_mla_weights *w,
                            const zb_rope *rope, const float *x, float *out, float *acts, int B, int T) {
    (void)be;
    zb_mla_forward(m, d, eps, w, rope, x, out, acts, B, T);
}
static void cpu_mla_backward(const zb_backend *be, const zb_mla_dims *m, int d, float eps, const zb_mla_weights *w,
                             zb_mla_weights *g, const zb_rope *rope, const float *x, const float *dout, float *dx,
                             float *acts, float *scratch, int B, int T) {
    (void)be;
    zb_mla_backward(m, d, eps, w, g, rope, x, dout, dx, acts, scratch, B, T);
}
static size_t cpu_mla_step_scratch(const zb_backend *be, const zb_mla_dims *m, int d, int max_T, int ntok) {
    (void)be;
    (void)ntok;   /* rows go through in blocks of a fixed size */
    return zb_mla_decode_scratch_floats(m, d, max_T);
}
static void cpu_mla_step(const zb_backend *be, const zb_mla_dims *m, int d, float eps, const zb_mla_weights *w,
                         const zb_mla_lin *lin, const zb_rope *rope, const float *x, float *out, float *cache,
                         int max_T, const int *pos, int n, int B, float *scratch) {
    zb_mla_step_lin(m, d, eps, w, lin, rope, x, out, cache, max_T, pos, n, B, scratch, &be->opts);
}
static void cpu_mla_decode_seqs(const zb_backend *be, const zb_mla_dims *m, int d, float eps,
                                const zb_mla_weights *w, const zb_mla_lin *lin, const zb_rope *rope, const float *x,
                                float *out, float *cache, size_t seq_floats, int max_T, const int *seqs,
                                const int *pos, int nb, float *scratch) {
    zb_mla_decode_seqs(m, d, eps, w, lin, rope, x, out, cache, seq_floats, max_T, seqs, pos, nb, scratch, &be->opts);
}

static size_t cpu_mamba2_act_floats(const zb_backend *be, const zb_mamba2_dims *m, int d, int B, int T) {
    (void)be;
    return zb_mamba2_act_floats(m, d, B, T);
}
static size_t cpu_mamba2_scratch_floats(const zb_backend *be, const zb_mamba2_dims *m, int d, int B, int T) {
    (void)be;
    return zb_mamba2_scratch_floats(m, d, B, T);
}
static void cpu_mamba2_forward(const zb_backend *be, const zb_mamba2_dims *m, int d, float eps,
                               const zb_mamba2_weights *w, const float *x, float *out, float *acts, int B, int T) {
    (void)be;
    zb_mamba2_forward(m, d, eps, w, x, out, acts, B, T);
}
static void cpu_mamba2_backward(const zb_backend *be, const zb_mamba2_dims *m, int d, float eps,
                                const zb_mamba2_weights *w, zb_mamba2_weights *g, const float *x, const float *dout,
                                float *dx, float *acts, float *scratch, int B, int T) {
    (void)be;
    zb_mamba2_backward(m, d, eps, w, g, x, dout, dx, acts, scratch, B, T);
}
static size_t cpu_mamba2_step_scratch(const zb_backend *be, const zb_mamba2_dims *m, int d, int ntok) {
    (void)be;
    return zb_mamba2_step_scratch_floats(m, d, ntok);
}
static void cpu_mamba2_step(const zb_backend *be, const zb_mamba2_dims *m, int d, float eps,
                            const zb_mamba2_weights *w, const zb_mamba2_lin *lin, const float *x, float *out,
                            float *state, int n, int B, float *scratch) {
    (void)be;
    zb_mamba2_step_lin(m, d, eps, w, lin, x, out, state, n, B, scratch);
}
static void cpu_mamba2_decode_seqs(const zb_backend *be, const zb_mamba2_dims *m, int d, float eps,
                                   const zb_mamba2_weights *w, const zb_mamba2_lin *lin, const float *x, float *out,
                                   float *state, const int *seqs, int nb, float *scratch) {
    zb_mamba2_decode_seqs(m, d, eps, w, lin, x, out, state, seqs, nb, scratch, &be->opts);
}

/* ---- optimizer ----------------------------------------------------------------------------------- */

static void cpu_adamw(const zb_backend *be, float *w, const float *g, float *m, float *v, size_t n,
                      const zb_adamw_hp *hp) {
    (void)be;
    const float b1 = hp->beta1, b2 = hp->beta2, eps = hp->eps, decay = hp->decay, step_size = hp->step_size,
                bc2_sqrt = hp->bc2_sqrt, gs = hp->grad_scale;
    for (size_t j = 0; j < n; j++) {
        float gj = g[j] * gs;
        m[j] = b1 * m[j] + (1.0f - b1) * gj;
        v[j] = b2 * v[j] + (1.0f - b2) * gj * gj;
        w[j] = w[j] * decay - step_size * m[j] / (sqrtf(v[j]) / bc2_sqrt + eps);
    }
}
static double cpu_sumsq(const zb_backend *be, const float *x, size_t n) {
    (void)be;
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)x[i] * x[i];
    return s;
}

/* the ranges one after the other: the per-range calls' results, bit for bit */
static void cpu_adamw_ranges(const zb_backend *be, float *w, const float *g, float *m, float *v, int n,
                             const zb_range *r, const zb_adamw_hp *hp) {
    for (int i = 0; i < n; i++) {
        zb_adamw_hp h = *hp;
        h.decay = r[i].decay;
        h.step_size = r[i].step_size;
        cpu_adamw(be, w + r[i].off, g + r[i].off, m + r[i].off, v + r[i].off, r[i].n, &h);
    }
}
static double cpu_sumsq_ranges(const zb_backend *be, const float *x, int n, const zb_range *r) {
    double s = 0;
    for (int i = 0; i < n; i++) s += cpu_sumsq(be, x + r[i].off, r[i].n);
    return s;
}

/* threaded, counter-based: any split of the loop gives the same values */
static void cpu_fill_uniform(const zb_backend *be, void *x, int bf16, size_t n, uint64_t seed, float a) {
    (void)be;
    long long k = (long long)n;
    if (bf16) {
        uint16_t *y = x;
#pragma omp parallel for schedule(static)
        for (long long i = 0; i < k; i++) y[i] = zb_f32_to_bf16(a * (2.0f * zb_hash_uniform(seed, (uint64_t)i) - 1.0f));
    } else {
        float *y = x;
#pragma omp parallel for schedule(static)
        for (long long i = 0; i < k; i++) y[i] = a * (2.0f * zb_hash_uniform(seed, (uint64_t)i) - 1.0f);
    }
}
/* zb_sample's greedy scan per row (the same picks by construction) */
static void cpu_argmax_rows(const zb_backend *be, int *out, const float *x, int N, int V) {
    (void)be;
    for (int n = 0; n < N; n++) {
        const float *r = x + (size_t)n * V;
        int best = 0;
        for (int v = 1; v < V; v++) if (r[v] > r[best]) best = v;
        out[n] = best;
    }
}
/* the scan from the row's first non-NaN value (a slice's first column is no candidate if NaN) */
static void cpu_argmax_pairs(const zb_backend *be, int *pairs, const float *x, int N, int V, int64_t v0) {
    (void)be;
    for (int n = 0; n < N; n++) {
        const float *r = x + (size_t)n * V;
        int best = 0;
        while (best < V && isnan(r[best])) best++;
        for (int v = best + 1; v < V; v++) if (r[v] > r[best]) best = v;
        float bv = best < V ? r[best] : -INFINITY;
        memcpy(&pairs[2 * n], &bv, sizeof bv);
        pairs[2 * n + 1] = v0 == 0 && V > 0 && isnan(r[0]) ? -1 : best < V ? (int)(v0 + best) : INT_MAX;
    }
}
/* (value, index) b beats a: larger, or equal at a lower index; INT_MAX: no candidate */
static int am_better(float bv, int bi, float av, int ai) {
    return bi != INT_MAX && (ai == INT_MAX || bv > av || (bv == av && bi < ai));
}
static void cpu_argmax_pick(const zb_backend *be, int *out, const int *pairs, int N, int P) {
    (void)be;
    for (int n = 0; n < N; n++) {
        float bv = -INFINITY;
        int bi = INT_MAX, nan0 = 0;
        for (int p = 0; p < P; p++) {
            const int *q = pairs + ((size_t)p * N + n) * 2;
            float v;
            memcpy(&v, q, sizeof v);
            nan0 |= q[1] == -1;
            if (q[1] != -1 && am_better(v, q[1], bv, bi)) { bv = v; bi = q[1]; }
        }
        out[n] = nan0 || bi == INT_MAX ? 0 : bi;
    }
}
static void cpu_decode_advance(const zb_backend *be, int *ids, int *pos, const int *next, const int *seqs, int nb,
                               int64_t v0, int V) {
    (void)be;
    for (int i = 0; i < nb; i++) {
        int64_t v = (int64_t)next[i] - v0;
        pos[seqs[i]] += 1;
        ids[i] = v >= 0 && v < V ? (int)v : -1;
    }
}
/* The CPU's calls have finished when they return: a fetch copies at once (into the queue, the
 * source is overwritten by the next step), the marks read the host's clock. */
typedef struct {
    double t0, total;
    void *buf[ZB_STEPQ_DEPTH];
    size_t cap[ZB_STEPQ_DEPTH], len[ZB_STEPQ_DEPTH];
    int head, n;
} cpu_stepq;
static double cpu_step_queue(const zb_backend *be, void **qp, int op, void *dst, const void *src, size_t bytes) {
    (void)be;
    cpu_stepq *q = *qp;
    if (op == ZB_STEPQ_FREE) {
        for (int i = 0; q && i < ZB_STEPQ_DEPTH; i++) free(q->buf[i]);
        free(q);
        *qp = NULL;
        return 0;
    }
    if (!q && !(q = *qp = zb_calloc(1, sizeof *q, "step queue"))) return -1;
    switch (op) {
    case ZB_STEPQ_START: q->t0 = zb_now(); return 0;
    case ZB_STEPQ_STOP: q->total += zb_now() - q->t0; return 0;
    case ZB_STEPQ_TIME: return q->total;
    case ZB_STEPQ_FETCH: {
        if (q->n == ZB_STEPQ_DEPTH) return zb_fail(ZB_EARG, "step queue: %d fetches pending", q->n), -1;
        int k = (q->head + q->n) % ZB_STEPQ_DEPTH;
        if (bytes > q->cap[k]) {
            free(q->buf[k]);
            if (!(q->buf[k] = zb_malloc(bytes, "step queue"))) { q->cap[k] = 0; return -1; }
            q->cap[k] = bytes;
        }
        if (bytes) memcpy(q->buf[k], src, bytes);
        q->len[k] = bytes;
        q->n++;
        return 0;
    }
    case ZB_STEPQ_WAIT:
        if (!q->n) return zb_fail(ZB_EARG, "step queue: nothing fetched"), -1;
        if (q->len[q->head]) memcpy(dst, q->buf[q->head], q->len[q->head]);
        q->head = (q->head + 1) % ZB_STEPQ_DEPTH;
        q->n--;
        return 0;
    default: return zb_fail(ZB_EARG, "step queue: unknown op %d", op), -1;
    }
}
/* nothing to record: the host runs each call as it comes */
static int cpu_step_graph(const zb_backend *be, void **g, int op, long long key) {
    (void)be; (void)g; (void)op; (void)key;
    return 0;
}
/* the CPU mixers have no separately timed pieces */
static void cpu_mixer_profile(const zb_backend *be, double *parts) { (void)be; (void)parts; }

static const zb_backend cpu_backend = {
    .name = "cpu",
    .host_memory = 1,
    .alloc = cpu_alloc, .free = cpu_free, .zero = cpu_zero, .copy = cpu_copy,
    .to_device = cpu_xfer, .to_host = cpu_xfer, .copy_2d = cpu_copy_2d, .sync = cpu_sync,
    .add = cpu_add, .sub = cpu_sub, .scale = cpu_scale,
    .matmul_forward = cpu_matmul_forward, .matmul_backward = cpu_matmul_backward,
    .linear_forward = cpu_linear_forward,
    .linear_forward3 = cpu_linear_forward3, .swiglu_linear_forward = cpu_swiglu_linear_forward,
    .mlp_linear_forward = zb_mlp_linear_forward_calls,
    .rmsnorm_forward = cpu_rmsnorm_forward, .rmsnorm_backward = cpu_rmsnorm_backward,
    .add_rmsnorm = cpu_add_rmsnorm,
    .linear_add_rmsnorm = cpu_linear_add_rmsnorm,
    .rope = cpu_rope,
    .attention_saved_floats = cpu_attention_saved_floats, .attention_forward = cpu_attention_forward,
    .attention_backward = cpu_attention_backward,
    .attention_step_scratch = cpu_attention_step_scratch, .attention_step = cpu_attention_step,
    .swiglu_forward = cpu_swiglu_forward, .swiglu_backward = cpu_swiglu_backward,
    .mlp_forward = zb_mlp_forward_calls, .mlp_backward = zb_mlp_backward_calls,
    .embedding_forward = cpu_embedding_forward, .embedding_backward = cpu_embedding_backward,
    .cross_entropy = cpu_cross_entropy, .cross_entropy_head = cpu_cross_entropy_head, .kl_div = cpu_kl_div, .mse = cpu_mse, .mean_row_dist = cpu_mean_row_dist,
    .vp_row_max = cpu_vp_row_max, .vp_row_sums = cpu_vp_row_sums, .vp_ce_grad = cpu_vp_ce_grad,
    .argmax_rows = cpu_argmax_rows,
    .argmax_pairs = cpu_argmax_pairs,
    .argmax_pick = cpu_argmax_pick, .decode_advance = cpu_decode_advance,
    .mla_act_floats = cpu_mla_act_floats, .mla_scratch_floats = cpu_mla_scratch_floats,
    .mla_forward = cpu_mla_forward, .mla_backward = cpu_mla_backward,
    .mla_step_scratch = cpu_mla_step_scratch, .mla_step = cpu_mla_step, .mla_decode_seqs = cpu_mla_decode_seqs,
    .mamba2_act_floats = cpu_mamba2_act_floats, .mamba2_scratch_floats = cpu_mamba2_scratch_floats,
    .mamba2_forward = cpu_mamba2_forward, .mamba2_backward = cpu_mamba2_backward,
    .mamba2_step_scratch = cpu_mamba2_step_scratch, .mamba2_step = cpu_mamba2_step,
    .mamba2_decode_seqs = cpu_mamba2_decode_seqs,
    .adamw = cpu_adamw, .sumsq = cpu_sumsq, .adamw_ranges = cpu_adamw_ranges, .sumsq_ranges = cpu_sumsq_ranges,
    .fill_uniform = cpu_fill_uniform, .step_graph = cpu_step_graph, .step_queue = cpu_step_queue,
    .mixer_profile = cpu_mixer_profile,
};

const zb_backend *zb_backend_cpu(void) { return &cpu_backend; }
