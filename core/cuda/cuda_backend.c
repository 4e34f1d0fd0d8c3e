/* cuda_backend.c — the CUDA backend's table (backend.h): device memory, the kernels of
 * cuda_ops.h, MLA of cuda_mla.h, Mamba2 of mamba2_cuda.h.
 *
 * Precision: be->opts.gpu_bf16 = 1 runs the matrix products with bf16 operands and float32
 * accumulation (the weights stay float32, the master copy; cuda_common.h), 0 in float32. Every
 * entry that multiplies matrices sets the mode from its table first, so two models on one GPU
 * may differ. Errors: a failed kernel or library call is recorded and the next synchronising
 * entry (to_host, sync, the losses, sumsq) stops the process with one line naming it — a device
 * fault leaves nothing to recover, and under mpirun the other ranks stop with it. */
#if __has_include("backend.h") && __has_include("mamba2_cuda.h")   /* the seam and the Mamba2 kernels */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cuda_mla.h"
#include "cuda_ops.h"
#include "mamba2_cuda.h"

static void stop_on_error(void) {
    if (zb_cuda_status() != ZB_OK) {
        fprintf(stderr, "zebra: %s\n", zb_errmsg());
        fflush(stderr);
        exit(1);
    }
}

static void mode(const zb_backend *be) {
    zb_cuda_set_precision(be->opts.gpu_bf16 ? ZB_PREC_BF16 : ZB_PREC_F32);
}

/* ---- memory ---------------------------------------------------------------------------------- */

static void *cu_alloc(const zb_backend *be, size_t bytes, const char *what) {
    (void)be;
    void *p = NULL;
    if (zb_cuda_alloc(&p, bytes, what) != ZB_OK) return NULL;
    return p;
}
static void cu_free(const zb_backend *be, void *p) { (void)be; zb_cuda_free(p); }
static void cu_zero(const zb_backend *be, void *p, size_t bytes) { (void)be; zb_cuda_zero(p, bytes); }
static void cu_copy(const zb_backend *be, void *dst, const void *src, size_t bytes) {
    (void)be;
    zb_cuda_copy(dst, src, bytes);
}
static void cu_to_device(const zb_backend *be, void *dst, const void *src, size_t bytes) {
    (void)be;
    if (zb_cuda_upload(dst, src, bytes) != ZB_OK) stop_on_error();
    stop_on_error();
}
static void cu_to_host(const zb_backend *be, void *dst, const void *src, size_t bytes) {
    (void)be;
    if (zb_cuda_download(dst, src, bytes) != ZB_OK) {
        fprintf(stderr, "zebra: %s\n", zb_errmsg());
        exit(1);
    }
}
static void cu_copy_2d(const zb_backend *be, float *dst, size_t dst_ld, const float *src, size_t src_ld,
                       size_t rows, size_t cols) {
    (void)be;
    zb_cuda_copy_2d(dst, dst_ld * sizeof(float), src, src_ld * sizeof(float), cols * sizeof(float), rows);
}
static void cu_sync(const zb_backend *be) {
    (void)be;
    if (zb_cuda_sync() != ZB_OK) {
        fprintf(stderr, "zebra: %s\n", zb_errmsg());
        exit(1);
    }
}

/* ---- elementwise ------------------------------------------------------------------------------ */

static void cu_add(const zb_backend *be, float *out, const float *a, const float *b, size_t n) {
    (void)be;
    zb_cuda_add(out, a, b, n);
}
static void cu_sub(const zb_backend *be, float *out, const float *a, const float *b, size_t n) {
    (void)be;
    zb_cuda_sub(out, a, b, n);
}
static void cu_scale(const zb_backend *be, float *x, float s, size_t n) { (void)be; zb_cuda_scale(x, s, n); }

/* ---- layer kernels ------------------------------------------------------------------------------ */

static void cu_matmul_forward(const zb_backend *be, float *out, const float *inp, const float *W,
                              const float *bias, int N, int C, int OC) {
    mode(be);
    zb_cuda_matmul_forward(out, inp, W, bias, N, C, OC);
}
static void cu_matmul_backward(const zb_backend *be, float *dinp, float *dW, float *dbias, const float *dout,
                               const float *inp, const float *W, int N, int C, int OC) {
    mode(be);
    zb_cuda_matmul_backward(dinp, dW, dbias, dout, inp, W, N, C, OC);
}
static void cu_linear_forward(const zb_backend *be, float *out, const float *inp, zb_wt W, int N, int C, int OC) {
    mode(be);
    zb_cuda_linear_forward(out, inp, W, N, C, OC);
}
/* Products of one input with several bf16 matrices at many rows (>= 1024: a long prefill, the KD
 * teacher's forward; decode batches keep their own kernels): the input rounded to bf16 once for
 * all of them, then each product as zb_cuda_linear_forward makes it at that size (the same cuBLAS
 * call: the same results as separate calls). 0 when it does not apply. */
static int shared_bf16_input(const float *inp, int N, int C, int n, const zb_wt *W, float *const *out, const int *OC) {
    for (int i = 0; i < n; i++) if (!W[i].bf16) return 0;
    if (N < 1024 || C <= 0) return 0;
    uint16_t *x16 = (uint16_t *)zb_cuda_scratch(ZB_WS_GEMM_A, (size_t)N * C * 2);
    if (!x16) return 1;   /* the error is recorded */
    zb_cuda_f32_to_bf16(x16, inp, (size_t)N * C);
    for (int i = 0; i < n; i++) zb_cuda_gemm_bf16_native(N, OC[i], C, x16, W[i].bf16, out[i]);
    return 1;
}

static void cu_linear_forward3(const zb_backend *be, float *out0, float *out1, float *out2, const float *inp,
                               zb_wt W0, zb_wt W1, zb_wt W2, int N, int C, int OC0, int OC1, int OC2) {
    mode(be);
    zb_wt W[3] = {W0, W1, W2};
    float *out[3] = {out0, out1, out2};
    int OC[3] = {OC0, OC1, OC2};
    if (shared_bf16_input(inp, N, C, 3, W, out, OC)) return;
    zb_cuda_linear_forward3(out0, out1, out2, inp, W0, W1, W2, N, C, OC0, OC1, OC2);
}
static void cu_swiglu_linear_forward(const zb_backend *be, float *h, float *u, const float *inp, zb_wt Wg, zb_wt Wu,
                                     int N, int C, int F) {
    mode(be);
    zb_wt W[2] = {Wg, Wu};
    float *out[2] = {h, u};
    int OC[2] = {F, F};
    if (shared_bf16_input(inp, N, C, 2, W, out, OC)) {
        zb_cuda_swiglu_forward(h, h, u, (size_t)N * F);
        return;
    }
    zb_cuda_swiglu_linear_forward(h, u, inp, Wg, Wu, N, C, F);
}
static void cu_mlp_linear_forward(const zb_backend *be, float *out, float *g, float *u, const float *inp, zb_wt Wg,
                                  zb_wt Wu, zb_wt Wd, int N, int C, int F, int OC) {
    mode(be);
    if (!zb_cuda_mlp_linear_forward_bf16(out, g, u, inp, Wg, Wu, Wd, N, C, F, OC))
        zb_mlp_linear_forward_calls(be, out, g, u, inp, Wg, Wu, Wd, N, C, F, OC);
}
static void cu_rmsnorm_forward(const zb_backend *be, float *out, float *rstd, const float *x, const float *w,
                               int N, int C, float eps) {
    (void)be;
    zb_cuda_rmsnorm_forward(out, rstd, x, w, N, C, eps);
}
static void cu_add_rmsnorm(const zb_backend *be, float *x, const float *a, float *out, const float *w, int N, int C,
                           float eps) {
    (void)be;
    zb_cuda_add_rmsnorm(x, a, out, w, N, C, eps);
}
static void cu_rmsnorm_backward(const zb_backend *be, float *dx, float *dw, const float *dout, const float *x,
                                const float *w, const float *rstd, int N, int C) {
    (void)be;
    zb_cuda_rmsnorm_backward(dx, dw, dout, x, w, rstd, N, C);
}
static void cu_rope(const zb_backend *be, const zb_rope *r, float *x, int B, int T, int row_stride, int n_heads,
                    int head_stride, int offset, int pos0, int interleave, int inverse) {
    (void)be;
    zb_cuda_rope_apply_seq(r, x, B, T, row_stride, n_heads, head_stride, offset, pos0, interleave, inverse);
}

/* a logsumexp per (sequence, head, row) instead of the probabilities */
static size_t cu_attention_saved_floats(const zb_backend *be, const zb_attn_shape *s) {
    (void)be;
    return (size_t)s->B * s->H * s->T;
}
static void cu_attention_forward(const zb_backend *be, float *out, float *saved, const float *q, const float *k,
                                 const float *v, const zb_attn_shape *s) {
    mode(be);
    zb_cuda_attention_forward(out, saved, q, k, v, s);
}
static void cu_attention_backward(const zb_backend *be, float *dq, float *dk, float *dv, const float *dout,
                                  const float *out, const float *saved, const float *q, const float *k,
                                  const float *v, const zb_attn_shape *s) {
    mode(be);
    zb_cuda_attention_backward(dq, dk, dv, dout, out, saved, q, k, v, s);
}

/* The positions of the step's sequences (pos[seqs[i]]) gathered on the device, and the
 * longest row the products must cover. Decode (n == 1) reads each length on the device (the
 * flash-decoding kernel): max_T bounds it, no host round trip. A prefill's products (cuBLAS)
 * need it on the host: max pos + n, read back (the caches are [max_T] long, the step needs only
 * the used part). */
static int step_positions(int *posi, const int *pos, const int *seqs, int nb, int n, int max_T) {
    zb_cuda_gather_int(posi, pos, seqs, nb);
    if (n == 1) return max_T;
    int host[256], *h = nb <= 256 ? host : malloc(sizeof(int) * nb);
    int max_len = max_T;
    if (h && zb_cuda_download(h, posi, sizeof(int) * nb) == ZB_OK) {
        max_len = 0;
        for (int i = 0; i < nb; i++) if (h[i] + n > max_len) max_len = h[i] + n;
        if (max_len > max_T) max_len = max_T;
    }
    if (h != host) free(h);
    stop_on_error();
    return max_len;
}

static size_t cu_attention_step_scratch(const zb_backend *be, int H, int Hkv, int hd, int max_T, int ntok) {
    (void)be; (void)H; (void)Hkv; (void)hd; (void)max_T;
    return (size_t)ntok + 64;   /* the gathered positions; the products use the device's scratch */
}
static void cu_attention_step(const zb_backend *be, const zb_rope *r, float *att, float *q, float *k, const float *v,
                              float *kc, float *vc, int max_T, const int *seqs, const int *pos, int nb, int n,
                              int H, int Hkv, int hd, float *scratch) {
    mode(be);
    int *posi = (int *)scratch;
    int qd = H * hd, kd = Hkv * hd;
    /* head-major cache [B][Hkv][max_T][hd] (backend.h) */
    long long ss = (long long)Hkv * max_T * hd, gs = (long long)max_T * hd;
    int c16 = be->opts.cache_bf16;
    zb_cuda_cache_attn a = {H, Hkv, hd, hd, ss, gs, hd, 1.0f / sqrtf((float)hd), c16};
    /* decode: RoPE, both stores, the attention and its merge in one kernel where it takes the shapes */
    if (n == 1 && zb_cuda_decode_attn_fused(r, att, q, k, v, kc, vc, seqs, pos, posi, nb, max_T, &a)) return;
    if (n == 1 && zb_cuda_decode_qkv_prep_ok(r, hd)) {   /* decode: the positions, RoPE and both stores in one kernel */
        zb_cuda_decode_qkv_prep(r, q, k, v, kc, vc, c16, seqs, pos, posi, nb, H, Hkv, hd, ss, gs);
        zb_cuda_attention_cached(att, q, kc, vc, seqs, posi, nb, n, max_T, &a);
        return;
    }
    int max_len = step_positions(posi, pos, seqs, nb, n, max_T);
    if (nb * n == 1 && k == q + qd)   /* one row: q's and k's heads follow one another, one launch */
        zb_cuda_rope_apply_rows(r, q, 1, 1, posi, qd + kd, H + Hkv, hd, 0, 0, 0);
    else {
        zb_cuda_rope_apply_rows(r, q, nb * n, n, posi, qd, H, hd, 0, 0, 0);
        zb_cuda_rope_apply_rows(r, k, nb * n, n, posi, kd, Hkv, hd, 0, 0, 0);
    }
    zb_cuda_cache_store(kc, c16, k, kd, seqs, posi, nb, n, Hkv, hd, ss, gs, hd);
    zb_cuda_cache_store(vc, c16, v, kd, seqs, posi, nb, n, Hkv, hd, ss, gs, hd);
    zb_cuda_attention_cached(att, q, kc, vc, seqs, posi, nb, n, max_len, &a);
}

static void cu_swiglu_forward(const zb_backend *be, float *h, const float *g, const float *u, size_t n) {
    (void)be;
    zb_cuda_swiglu_forward(h, g, u, n);
}
static void cu_swiglu_backward(const zb_backend *be, float *dg, float *du, const float *dh, const float *g,
                               const float *u, size_t n) {
    (void)be;
    zb_cuda_swiglu_backward(dg, du, dh, g, u, n);
}
/* the MLP with bf16 activations (cuda_ops.h) in the bf16 mode, else the separate calls */
static void cu_mlp_forward(const zb_backend *be, float *out, float *ln, float *rstd, float *g, float *u, float *h,
                           const float *x, const float *norm_w, const float *Wg, const float *Wu, const float *Wd,
                           int N, int d, int F, float eps) {
    mode(be);
    if (!zb_cuda_mlp_forward_bf16(out, ln, rstd, g, u, h, x, norm_w, Wg, Wu, Wd, N, d, F, eps))
        zb_mlp_forward_calls(be, out, ln, rstd, g, u, h, x, norm_w, Wg, Wu, Wd, N, d, F, eps);
}
static void cu_mlp_backward(const zb_backend *be, float *dln, float *dWg, float *dWu, float *dWd, const float *dout,
                            const float *ln, const float *g, const float *u, const float *h, const float *Wg,
                            const float *Wu, const float *Wd, float *dh, float *dg, float *du, int N, int d, int F) {
    mode(be);
    if (!zb_cuda_mlp_backward_bf16(dln, dWg, dWu, dWd, dout, ln, g, u, h, Wg, Wu, Wd, dh, dg, du, N, d, F))
        zb_mlp_backward_calls(be, dln, dWg, dWu, dWd, dout, ln, g, u, h, Wg, Wu, Wd, dh, dg, du, N, d, F);
}
static void cu_embedding_forward(const zb_backend *be, float *out, const int *ids, zb_wt table, int N, int C) {
    (void)be;
    if (table.bf16) zb_cuda_embedding_forward_bf16(out, ids, table.bf16, N, C);
    else zb_cuda_embedding_forward(out, ids, table.f32, N, C);
}
static void cu_embedding_backward(const zb_backend *be, float *dtable, const float *dout, const int *ids, int N,
                                  int C) {
    (void)be;
    zb_cuda_embedding_backward(dtable, dout, ids, N, C);
}

static double cu_cross_entropy(const zb_backend *be, float *dlogits, const float *logits, const int *targets, int N,
                               int V, float scale, int *n_valid) {
    (void)be;
    double r = zb_cuda_cross_entropy_n(dlogits, logits, targets, N, V, scale, n_valid);
    stop_on_error();
    return r;
}
static double cu_cross_entropy_head(const zb_backend *be, float *logits, const int *targets, int N, int V,
                                    float scale) {
    (void)be;
    double r = zb_cuda_cross_entropy_head(logits, targets, N, V, scale);
    stop_on_error();
    return r;
}
static void cu_vp_row_max(const zb_backend *be, float *mx, const float *logits, int N, int V) {
    (void)be;
    zb_cuda_vp_row_max(mx, logits, N, V);
    stop_on_error();
}
static void cu_vp_row_sums(const zb_backend *be, double *st, const float *logits, const float *mx, const int *targets,
                           int N, int V, int64_t v0) {
    (void)be;
    zb_cuda_vp_row_sums(st, logits, mx, targets, N, V, (long long)v0);
    stop_on_error();
}
static double cu_vp_ce_grad(const zb_backend *be, float *dlogits, const float *logits, const float *mx, const double *st,
                            const int *targets, int N, int V, int64_t v0, int64_t Vfull, float scale) {
    (void)be;
    double r = zb_cuda_vp_ce_grad(dlogits, logits, mx, st, targets, N, V, (long long)v0, (long long)Vfull, scale);
    stop_on_error();
    return r;
}
static void cu_argmax_rows(const zb_backend *be, int *out, const float *x, int N, int V) {
    (void)be;
    zb_cuda_argmax_rows(out, x, N, V);
}
static void cu_argmax_pairs(const zb_backend *be, int *pairs, const float *x, int N, int V, int64_t v0) {
    (void)be;
    zb_cuda_argmax_pairs(pairs, x, N, V, (long long)v0);
}
static void cu_argmax_pick(const zb_backend *be, int *out, const int *pairs, int N, int P) {
    (void)be;
    zb_cuda_argmax_pick(out, pairs, N, P);
}
static double cu_kl_div(const zb_backend *be, float *dstudent, const float *student, const float *teacher,
                        const int *mask, int N, int V, float tau, float scale) {
    (void)be;
    double r = zb_cuda_kl_div(dstudent, student, teacher, mask, N, V, tau, scale);
    stop_on_error();
    return r;
}
static double cu_mse(const zb_backend *be, float *da, const float *a, const float *b, size_t n, float scale) {
    (void)be;
    double r = zb_cuda_mse(da, a, b, n, scale);
    stop_on_error();
    return r;
}

static double cu_mean_row_dist(const zb_backend *be, float *g, const float *s, const float *t, int N, int d,
                               float scale) {
    (void)be;
    double r = zb_cuda_mean_row_dist(g, s, t, N, d, scale);
    stop_on_error();
    return r;
}

/* ---- MLA ------------------------------------------------------------------------------------------ */

static size_t cu_mla_act_floats(const zb_backend *be, const zb_mla_dims *m, int d, int B, int T) {
    (void)be;
    return zb_cuda_mla_act_floats(m, d, B, T);
}
static size_t cu_mla_scratch_floats(const zb_backend *be, const zb_mla_dims *m, int d, int B, int T) {
    (void)be;
    return zb_cuda_mla_scratch_floats(m, d, B, T);
}
static void cu_mla_forward(const zb_backend *be, const zb_mla_dims *m, int d, float eps, const zb_mla_weights *w,
                           const zb_rope *rope, const float *x, float *out, float *acts, int B, int T) {
    mode(be);
    zb_cuda_mla_forward(m, d, eps, w, rope, x, out, acts, B, T);
}
static void cu_mla_backward(const zb_backend *be, const zb_mla_dims *m, int d, float eps, const zb_mla_weights *w,
                            zb_mla_weights *g, const zb_rope *rope, const float *x, const float *dout, float *dx,
                            float *acts, float *scratch, int B, int T) {
    mode(be);
    zb_cuda_mla_backward(m, d, eps, w, g, rope, x, dout, dx, acts, scratch, B, T);
}
/* the step's working set, then 2 * ntok ints (slot list, gathered positions), aligned */
static size_t cu_mla_step_scratch(const zb_backend *be, const zb_mla_dims *m, int d, int max_T, int ntok) {
    (void)be;
    (void)max_T;
    return zb_cuda_mla_gen_scratch_floats(m, d, ntok) + 2 * (size_t)ntok + 128;
}
static void cu_mla_step(const zb_backend *be, const zb_mla_dims *m, int d, float eps, const zb_mla_weights *w,
                        const zb_mla_lin *lin, const zb_rope *rope, const float *x, float *out, float *cache,
                        int max_T, const int *pos, int n, int B, float *scratch) {
    mode(be);
    size_t work = zb_cuda_mla_gen_scratch_floats(m, d, B * n);
    int *slots = (int *)(scratch + (work + 63) / 64 * 64), *posi = slots + B;
    zb_cuda_iota(slots, B);   /* sequence b's rows at cache + b * max_T * (r + dr) */
    int max_len = step_positions(posi, pos, NULL, B, n, max_T);
    zb_cuda_mla_gen(m, d, eps, w, lin, rope, x, out, cache, be->opts.cache_bf16, max_T, slots, posi, B, n, max_len,
                    scratch);
}
static void cu_mla_decode_seqs(const zb_backend *be, const zb_mla_dims *m, int d, float eps,
                               const zb_mla_weights *w, const zb_mla_lin *lin, const zb_rope *rope, const float *x,
                               float *out, float *cache, size_t seq_floats, int max_T, const int *seqs,
                               const int *pos, int nb, float *scratch) {
    mode(be);
    (void)seq_floats;   /* == max_T * (r + dr): the layout of zb_mla_cache_floats */
    size_t work = zb_cuda_mla_gen_scratch_floats(m, d, nb);
    int *posi = (int *)(scratch + (work + 63) / 64 * 64);
    /* the fused decode gathers the positions itself (posi[i] = pos[seqs[i]]) */
    if (zb_cuda_mla_decode_fused(m, d, eps, w, lin, rope, x, out, cache, be->opts.cache_bf16, max_T, seqs, pos, seqs,
                                 posi, nb, scratch))
        return;
    int max_len = step_positions(posi, pos, seqs, nb, 1, max_T);
    zb_cuda_mla_gen(m, d, eps, w, lin, rope, x, out, cache, be->opts.cache_bf16, max_T, seqs, posi, nb, 1, max_len,
                    scratch);
}

/* ---- Mamba2 (mamba2_cuda.h) ---------------------------------------------------------------------- */

static void mamba_blas(void) { zb_cuda_mamba2_set_blas(zb_cuda_cublas_handle(), zb_cuda_stream_handle()); }

static size_t cu_mamba2_act_floats(const zb_backend *be, const zb_mamba2_dims *m, int d, int B, int T) {
    (void)be;
    return zb_cuda_mamba2_act_floats(m, d, B, T);
}
static size_t cu_mamba2_scratch_floats(const zb_backend *be, const zb_mamba2_dims *m, int d, int B, int T) {
    (void)be;
    return zb_cuda_mamba2_scratch_floats(m, d, B, T);
}
static void cu_mamba2_forward(const zb_backend *be, const zb_mamba2_dims *m, int d, float eps,
                              const zb_mamba2_weights *w, const float *x, float *out, float *acts, int B, int T) {
    mode(be);
    mamba_blas();
    zb_cuda_mamba2_forward(m, d, eps, w, x, out, acts, B, T);
}
static void cu_mamba2_backward(const zb_backend *be, const zb_mamba2_dims *m, int d, float eps,
                               const zb_mamba2_weights *w, zb_mamba2_weights *g, const float *x, const float *dout,
                               float *dx, float *acts, float *scratch, int B, int T) {
    mode(be);
    mamba_blas();
    zb_cuda_mamba2_backward(m, d, eps, w, g, x, dout, dx, acts, scratch, B, T);
}
/* one sequence of ntok tokens (mamba2_step) or ntok sequences of one (decode_seqs) */
static size_t cu_mamba2_step_scratch(const zb_backend *be, const zb_mamba2_dims *m, int d, int ntok) {
    (void)be;
    size_t a = zb_cuda_mamba2_step_scratch_floats(m, d, ntok, 1), b = zb_cuda_mamba2_step_scratch_floats(m, d, 1, ntok);
    return a > b ? a : b;
}
/* the SSM state of generation in bf16 with bf16 caches (mamba_ssm's inference cache takes the
 * in_proj weight's dtype), unless ZB_M2_STATE=f32 */
static int m2_state_bf16(const zb_backend *be) {
    static int env = -1;
    if (env < 0) {
        const char *e = getenv("ZB_M2_STATE");
        env = !(e && !strcmp(e, "f32"));
    }
    return be->opts.cache_bf16 && env;
}
static void cu_mamba2_step(const zb_backend *be, const zb_mamba2_dims *m, int d, float eps,
                           const zb_mamba2_weights *w, const zb_mamba2_lin *lin, const float *x, float *out,
                           float *state, int n, int B, float *scratch) {
    mode(be);
    mamba_blas();
    zb_cuda_mamba2_step_lin(m, d, eps, w, lin, x, out, state, n, B, scratch, m2_state_bf16(be));
}
static void cu_mamba2_decode_seqs(const zb_backend *be, const zb_mamba2_dims *m, int d, float eps,
                                  const zb_mamba2_weights *w, const zb_mamba2_lin *lin, const float *x, float *out,
                                  float *state, const int *seqs, int nb, float *scratch) {
    mode(be);
    mamba_blas();
    zb_cuda_mamba2_decode_seqs(m, d, eps, w, lin, x, out, state, seqs, nb, scratch, m2_state_bf16(be));
}

/* ---- optimizer ----------------------------------------------------------------------------------- */

static void cu_adamw(const zb_backend *be, float *w, const float *g, float *m, float *v, size_t n,
                     const zb_adamw_hp *hp) {
    (void)be;
    zb_cuda_adamw_range(w, g, m, v, n, hp->beta1, hp->beta2, hp->eps, hp->decay, hp->step_size, hp->bc2_sqrt,
                        hp->grad_scale);
}
static double cu_sumsq(const zb_backend *be, const float *x, size_t n) {
    (void)be;
    double r = zb_cuda_sumsq_range(x, n);
    stop_on_error();
    return r;
}

static void cu_adamw_ranges(const zb_backend *be, float *w, const float *g, float *m, float *v, int n,
                            const zb_range *r, const zb_adamw_hp *hp) {
    (void)be;
    zb_cuda_adamw_ranges(w, g, m, v, n, r, hp->beta1, hp->beta2, hp->eps, hp->bc2_sqrt, hp->grad_scale);
}
static double cu_sumsq_ranges(const zb_backend *be, const float *x, int n, const zb_range *r) {
    (void)be;
    double s = zb_cuda_sumsq_ranges(x, n, r);
    stop_on_error();
    return s;
}

static void cu_fill_uniform(const zb_backend *be, void *x, int bf16, size_t n, uint64_t seed, float a) {
    (void)be;
    zb_cuda_fill_uniform(x, bf16, n, seed, a);
}

/* CUDA Graphs (cuda_common.cu); ZB_CUDA_GRAPHS=0 in the environment turns them off */
static int cu_step_graph(const zb_backend *be, void **g, int op, long long key) {
    (void)be;
    static int off = -1;
    if (off < 0) {
        const char *e = getenv("ZB_CUDA_GRAPHS");
        off = e && !strcmp(e, "0");
    }
    switch (op) {
    case ZB_GRAPH_REPLAY: return !off && zb_cuda_graph_replay(*g, key);
    case ZB_GRAPH_BEGIN: return !off && zb_cuda_graph_begin(g, key);
    case ZB_GRAPH_END: return zb_cuda_graph_end(*g, 1);
    case ZB_GRAPH_END_HOLD: return zb_cuda_graph_end(*g, 0);
    default: zb_cuda_graph_free(*g); *g = NULL; return 0;
    }
}

static void cu_decode_advance(const zb_backend *be, int *ids, int *pos, const int *next, const int *seqs, int nb,
                              int64_t v0, int V) {
    (void)be;
    zb_cuda_decode_advance(ids, pos, next, seqs, nb, (long long)v0, V);
}

/* events on the stream and pinned buffers (cuda_common.cu); a failure stops the process like a
 * failed download (a device fault leaves nothing to recover) */
static double cu_step_queue(const zb_backend *be, void **q, int op, void *dst, const void *src, size_t bytes) {
    (void)be;
    double sec = 0;
    int rc = ZB_OK;
    switch (op) {
    case ZB_STEPQ_START: case ZB_STEPQ_STOP: rc = zb_cuda_stepq_mark(q, op == ZB_STEPQ_STOP); break;
    case ZB_STEPQ_TIME: rc = zb_cuda_stepq_time(q, &sec); break;
    case ZB_STEPQ_FETCH: rc = zb_cuda_stepq_fetch(q, src, bytes); break;
    case ZB_STEPQ_WAIT: rc = zb_cuda_stepq_wait(q, dst); break;
    case ZB_STEPQ_FREE: zb_cuda_stepq_free(*q); *q = NULL; return 0;
    default: rc = zb_fail(ZB_EARG, "step queue: unknown op %d", op);
    }
    if (rc != ZB_OK) {
        fprintf(stderr, "zebra: %s\n", zb_errmsg());
        exit(1);
    }
    return sec;
}

/* the Mamba2 mixer's pieces (mamba2_cuda.h) */
static void cu_mixer_profile(const zb_backend *be, double *parts) {
    (void)be;
    zb_cuda_mamba2_profile(parts);
}

static zb_backend cuda_backend = {
    .name = "cuda",
    .host_memory = 0,
    .opts = {.qkv_fused = 1},
    .alloc = cu_alloc, .free = cu_free, .zero = cu_zero, .copy = cu_copy,
    .to_device = cu_to_device, .to_host = cu_to_host, .copy_2d = cu_copy_2d, .sync = cu_sync,
    .add = cu_add, .sub = cu_sub, .scale = cu_scale,
    .matmul_forward = cu_matmul_forward, .matmul_backward = cu_matmul_backward,
    .linear_forward = cu_linear_forward,
    .linear_forward3 = cu_linear_forward3, .swiglu_linear_forward = cu_swiglu_linear_forward,
    .mlp_linear_forward = cu_mlp_linear_forward,
    .rmsnorm_forward = cu_rmsnorm_forward, .rmsnorm_backward = cu_rmsnorm_backward,
    .add_rmsnorm = cu_add_rmsnorm,
    .rope = cu_rope,
    .attention_saved_floats = cu_attention_saved_floats, .attention_forward = cu_attention_forward,
    .attention_backward = cu_attention_backward,
    .attention_step_scratch = cu_attention_step_scratch, .attention_step = cu_attention_step,
    .swiglu_forward = cu_swiglu_forward, .swiglu_backward = cu_swiglu_backward,
    .mlp_forward = cu_mlp_forward, .mlp_backward = cu_mlp_backward,
    .embedding_forward = cu_embedding_forward, .embedding_backward = cu_embedding_backward,
    .cross_entropy = cu_cross_entropy, .cross_entropy_head = cu_cross_entropy_head, .kl_div = cu_kl_div, .mse = cu_mse, .mean_row_dist = cu_mean_row_dist,
    .vp_row_max = cu_vp_row_max, .vp_row_sums = cu_vp_row_sums, .vp_ce_grad = cu_vp_ce_grad,
    .argmax_rows = cu_argmax_rows,
    .argmax_pairs = cu_argmax_pairs,
    .argmax_pick = cu_argmax_pick, .decode_advance = cu_decode_advance,
    .mla_act_floats = cu_mla_act_floats, .mla_scratch_floats = cu_mla_scratch_floats,
    .mla_forward = cu_mla_forward, .mla_backward = cu_mla_backward,
    .mla_step_scratch = cu_mla_step_scratch, .mla_step = cu_mla_step, .mla_decode_seqs = cu_mla_decode_seqs,
    .mamba2_act_floats = cu_mamba2_act_floats, .mamba2_scratch_floats = cu_mamba2_scratch_floats,
    .mamba2_forward = cu_mamba2_forward, .mamba2_backward = cu_mamba2_backward,
    .mamba2_step_scratch = cu_mamba2_step_scratch, .mamba2_step = cu_mamba2_step,
    .mamba2_decode_seqs = cu_mamba2_decode_seqs,
    .adamw = cu_adamw, .sumsq = cu_sumsq, .adamw_ranges = cu_adamw_ranges, .sumsq_ranges = cu_sumsq_ranges,
    .fill_uniform = cu_fill_uniform, .step_graph = cu_step_graph, .step_queue = cu_step_queue,
    .mixer_profile = cu_mixer_profile,
};

/* The table, after the device is set up (the local rank picks the GPU); NULL after zb_fail when
 * no GPU can be used. */
const zb_backend *zb_backend_cuda(void) {
    if (zb_cuda_init(-1) != ZB_OK) return NULL;
    const char *e = getenv("ZB_QKV_FUSED");
    if (e && !strcmp(e, "0")) cuda_backend.opts.qkv_fused = 0;   /* the three products (TROUBLESHOOTING) */
    return &cuda_backend;
}
#endif
