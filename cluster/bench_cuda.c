/* bench_cuda.c — the GPU's ceilings and the CUDA backend's kernels alone, for docs/BENCHMARKS.md
 * (a benchmark, not a test): cuBLAS matrix products in each precision mode (and the bf16 tensor
 * rate on bf16 inputs, the ceiling that MFU is measured against), the device copy bandwidth,
 * the Llama-3.2-1B training shapes (linear layers, attention forward + backward) and the decode
 * attention of the 8B teacher over a bf16 cache. Prints one table; --json FILE writes it too.
 * Usage: bench_cuda [--json FILE] [--quick] [--chain: the copy ceiling and the decode chain rows only] */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_ops.h"
#include "mamba2_cuda.h"

static FILE *g_json;
static int g_first = 1;

static void row(const char *what, double ms, double rate, const char *unit) {
    printf("%-58s %10.3f ms %12.1f %s\n", what, ms, rate, unit);
    if (g_json) {
        fprintf(g_json, "%s{\"what\": \"%s\", \"ms\": %.4f, \"rate\": %.2f, \"unit\": \"%s\"}", g_first ? "" : ",\n",
                what, ms, rate, unit);
        g_first = 0;
    }
    fflush(stdout);
}

static void *dev(size_t bytes) {
    void *p = NULL;
    if (zb_cuda_alloc(&p, bytes, "benchmark buffer")) {
        fprintf(stderr, "bench_cuda: %s\n", zb_errmsg());
        exit(1);
    }
    return p;
}

/* random uniform values on the device: filled on the host in slabs, uploaded */
static void fill(float *d, size_t n, float a, unsigned seed) {
    size_t slab = (size_t)1 << 24;
    float *h = malloc(slab * sizeof(float));
    for (size_t o = 0; o < n; o += slab) {
        size_t k = n - o < slab ? n - o : slab;
        for (size_t i = 0; i < k; i++) h[i] = a * (2.0f * zb_hash_uniform(seed, o + i) - 1.0f);
        zb_cuda_upload(d + o, h, k * sizeof(float));
    }
    free(h);
}

typedef void (*work_fn)(void *ctx);

/* median of reps timings (ms per call), after warm-up calls; `inner` calls back to back per
 * timing: a decode step's kernels follow one another without a host round trip in between
 * (CUDA Graphs), so the small ones are timed that way, not with a synchronisation's latency each */
static double timeit_n(work_fn f, void *ctx, int warm, int reps, int inner) {
    for (int i = 0; i < warm; i++) f(ctx);
    zb_cuda_sync();
    double t[64];
    if (reps > 64) reps = 64;
    for (int i = 0; i < reps; i++) {
        double t0 = zb_now();
        for (int k = 0; k < inner; k++) f(ctx);
        zb_cuda_sync();
        t[i] = (zb_now() - t0) * 1e3 / inner;
    }
    for (int i = 1; i < reps; i++)
        for (int j = i; j > 0 && t[j] < t[j - 1]; j--) { double x = t[j]; t[j] = t[j - 1]; t[j - 1] = x; }
    return t[reps / 2];
}
static double timeit(work_fn f, void *ctx, int warm, int reps) { return timeit_n(f, ctx, warm, reps, 1); }

typedef struct { int M, N, K; float *A, *B, *C; const void *A16, *B16; int native; } gemm_ctx;

static void run_gemm(void *p) {
    gemm_ctx *g = p;
    zb_cuda_gemm(0, 1, g->M, g->N, g->K, 1.0f, g->A, g->K, g->B, g->K, 0.0f, g->C, g->N);
}

/* bf16 inputs, float32 output: the tensor cores' rate on bf16 data (the MFU ceiling) */
static void run_gemm_bf16(void *p) {
    gemm_ctx *g = p;
    zb_cuda_gemm_bf16_native(g->M, g->N, g->K, g->A16, g->B16, g->C);
}

typedef struct { void *dst; const void *src; size_t bytes; } copy_ctx;
static void run_copy(void *p) {
    copy_ctx *c = p;
    zb_cuda_copy(c->dst, c->src, c->bytes);
}

typedef struct {
    zb_attn_shape s;
    float *q, *k, *v, *o, *lse, *dout, *dq, *dk, *dv;
    int bwd;
} attn_ctx;
static void run_attn(void *p) {
    attn_ctx *a = p;
    zb_cuda_attention_forward(a->o, a->lse, a->q, a->k, a->v, &a->s);
    if (a->bwd) zb_cuda_attention_backward(a->dq, a->dk, a->dv, a->dout, a->o, a->lse, a->q, a->k, a->v, &a->s);
}

/* an attention path: precision, flash on/off, flash version, flash2 forward / backward shapes */
typedef struct { const char *name; int prec, flash, ver, fwd, bwd; } attn_cfg;

/* one path's forward, then (bwd) its forward + backward and (alone) the backward by difference;
 * causal: the flops of one causal product of the shape */
static void bench_attn_cfg(attn_ctx *a, const attn_cfg *c, const char *shape, double causal, int bwd, int alone) {
    char what[200];
    zb_cuda_set_precision(c->prec);
    zb_cuda_attention_use_flash(c->flash);
    zb_cuda_flash_set_version(c->ver);
    zb_cuda_flash2_tune(c->fwd, c->bwd);
    a->bwd = 0;
    double ms = timeit(run_attn, a, 1, 3);
    snprintf(what, sizeof what, "%s attention forward %s (%s)", shape, shape[0] == '1' ? "B=8 T=2048 H=32/8 hd=64"
                                                                                     : "B=4 T=2048 H=32/8 hd=128", c->name);
    row(what, ms, 2 * causal / (ms * 1e-3) / 1e12, "TFLOP/s");
    if (!bwd) return;
    a->bwd = 1;
    double ms2 = timeit(run_attn, a, 1, 3);
    snprintf(what, sizeof what, "%s attention fwd+bwd (%s)", shape, c->name);
    row(what, ms2, 7 * causal / (ms2 * 1e-3) / 1e12, "TFLOP/s");
    if (!alone) return;
    snprintf(what, sizeof what, "%s attention bwd alone (%s; fwd+bwd less fwd)", shape, c->name);
    row(what, ms2 - ms, 5 * causal / ((ms2 - ms) * 1e-3) / 1e12, "TFLOP/s");
}


/* one of the 8B's decode products on a rotating copy of its weights (see main) */
typedef struct {
    void *pool;
    size_t pool_el, at;
    float *x, *y;
    int N, kind, OC, C, d, F, kd;
    size_t bytes;
} gemv8_ctx;
static void gemv8_bytes(gemv8_ctx *g) {
    size_t d = g->d, F = g->F, kd = g->kd;
    size_t el = g->kind == 0 ? (size_t)g->OC * g->C : g->kind == 1 ? (d + 2 * kd) * d : g->kind == 2 ? 2 * F * d
                                                                   : (d + 2 * kd) * d + d * d + 3 * F * d;
    g->bytes = el * 2;
}
static void run_gemv8(void *p) {
    gemv8_ctx *g = p;
    size_t el = g->bytes / 2;
    if (g->at + el > g->pool_el) g->at = 0;
    const uint16_t *w = (const uint16_t *)g->pool + g->at;
    g->at += (el + 127) / 128 * 128;
    int d = g->d, F = g->F, kd = g->kd, N = g->N;
    float *y = g->y;
    if (g->kind == 0) { zb_cuda_linear_forward(y, g->x, zb_wt_of_bf16(w), N, g->C, g->OC); return; }
    const uint16_t *wk = w + (size_t)d * d, *wv = wk + (size_t)kd * d, *wo = wv + (size_t)kd * d;
    const uint16_t *wg = g->kind == 2 ? w : wo + (size_t)d * d, *wu = wg + (size_t)F * d, *wd = wu + (size_t)F * d;
    if (g->kind == 1 || g->kind == 3)
        zb_cuda_linear_forward3(y, y + (size_t)N * d, y + (size_t)N * (d + kd), g->x, zb_wt_of_bf16(w), zb_wt_of_bf16(wk),
                                zb_wt_of_bf16(wv), N, d, d, kd, kd);
    if (g->kind == 3) zb_cuda_linear_forward(y, g->x, zb_wt_of_bf16(wo), N, d, d);
    if (g->kind == 2 || g->kind == 3)
        zb_cuda_swiglu_linear_forward(y, y + (size_t)N * F, g->x, zb_wt_of_bf16(wg), zb_wt_of_bf16(wu), N, d, F);
    if (g->kind == 3) zb_cuda_linear_forward(y, g->x, zb_wt_of_bf16(wd), N, F, d);
}

/* one layer's decode attention; nl copies of the cache (a rotating layer, so that batch 1's
 * 34 MB per layer is not served from the L2 by the previous call) */
typedef struct {
    float *out, *q;
    void *kc, *vc;
    int *seq, *pos, nb, max_len, nl, at;
    int path;   /* 0: zb_cuda_attention_cached; 1: its cuBLAS form (MLA's earlier decode); 2: the fused MLA kernel */
    size_t n;
    zb_cuda_cache_attn a;
} dec_ctx;
static void run_dec(void *p) {
    dec_ctx *d = p;
    size_t off = (size_t)(d->at++ % d->nl) * d->n * 2;
    if (d->path == 2)
        zb_cuda_decode_mla(d->out, d->q, (char *)d->kc + off, d->seq, d->pos, d->nb, d->max_len, &d->a);
    else if (d->path == 1)
        zb_cuda_attention_cached_gemm(d->out, d->q, (char *)d->kc + off, (char *)d->vc + off, d->seq, d->pos, d->nb, 1,
                                      d->max_len, &d->a);
    else
        zb_cuda_attention_cached(d->out, d->q, (char *)d->kc + off, (char *)d->vc + off, d->seq, d->pos, d->nb, 1,
                                 d->max_len, &d->a);
}

/* the decode step's pieces between the products, fused (ZB_DEC_FUSE) or as separate kernels:
 * the 8B's attention q / k / v (positions, RoPE, both cache stores) and Zebra-8B's Mamba2 step
 * between in_proj and out_proj (conv, dt, conv state, recurrence, gated norm) */
typedef struct {
    int fused, nb, H, Hkv, hd, max_T;
    zb_rope r;
    float *q, *k, *v, *att;
    void *kc, *vc;
    int *seq, *pos, *posi;
    /* Mamba2 */
    zb_mamba2_dims m;
    float *proj, *state, *xbc, *dt, *y, *o, *rstd, *cw, *cb, *dtb, *Al, *Dp, *nw;
} piece_ctx;
static void run_qkv_piece(void *p) {
    piece_ctx *c = p;
    int qd = c->H * c->hd, kd = c->Hkv * c->hd;
    long long ss = (long long)c->Hkv * c->max_T * c->hd, gs = (long long)c->max_T * c->hd;
    zb_cuda_cache_attn a = {c->H, c->Hkv, c->hd, c->hd, ss, gs, c->hd, 1.0f / sqrtf((float)c->hd), 1};
    if (c->fused == 3) {   /* the whole attention in one kernel (ZB_DEC_ATTN) */
        zb_cuda_decode_attn_fused(&c->r, c->att, c->q, c->k, c->v, c->kc, c->vc, c->seq, c->pos, c->posi, c->nb,
                                  c->max_T, &a);
        return;
    }
    if (c->fused == 2) {   /* ZB_DEC_ATTN=old: q/k/v piece, the chunks, their merge */
        zb_cuda_decode_qkv_prep(&c->r, c->q, c->k, c->v, c->kc, c->vc, 1, c->seq, c->pos, c->posi, c->nb, c->H, c->Hkv,
                                c->hd, ss, gs);
        zb_cuda_decode_attn(c->att, c->q, c->kc, c->vc, c->seq, c->posi, c->nb, c->max_T, &a);
        return;
    }
    if (c->fused) {
        zb_cuda_decode_qkv_prep(&c->r, c->q, c->k, c->v, c->kc, c->vc, 1, c->seq, c->pos, c->posi, c->nb, c->H, c->Hkv,
                                c->hd, ss, gs);
        return;
    }
    zb_cuda_gather_int(c->posi, c->pos, c->seq, c->nb);
    zb_cuda_rope_apply_rows(&c->r, c->q, c->nb, 1, c->posi, qd, c->H, c->hd, 0, 0, 0);
    zb_cuda_rope_apply_rows(&c->r, c->k, c->nb, 1, c->posi, kd, c->Hkv, c->hd, 0, 0, 0);
    zb_cuda_cache_store(c->kc, 1, c->k, kd, c->seq, c->posi, c->nb, 1, c->Hkv, c->hd, ss, gs, c->hd);
    zb_cuda_cache_store(c->vc, 1, c->v, kd, c->seq, c->posi, c->nb, 1, c->Hkv, c->hd, ss, gs, c->hd);
}
static void run_m2_piece(void *p) {
    piece_ctx *c = p;
    const zb_mamba2_dims *m = &c->m;
    size_t sf = zb_mamba2_state_floats(m), conv = (size_t)zb_mamba2_conv_dim(m) * (m->conv_k - 1);
    int P = zb_mamba2_in_proj_rows(m);
    if (c->fused) {
        zb_cuda_m2_decode_conv(m, c->dtb, c->cw, c->cb, c->proj, c->state, NULL, c->xbc, c->dt, c->nb);
        zb_cuda_m2_decode_ssd_norm(m, c->Al, c->Dp, c->nw, 1e-5f, c->xbc, c->dt, c->proj, P, c->state + conv, sf, NULL,
                                   c->o, c->nb, 1);
        return;
    }
    zb_cuda_m2_dt_forward(m, c->dtb, c->proj, c->dt, c->nb);
    zb_cuda_m2_conv_forward(m, c->cw, c->cb, c->proj, c->state, sf, NULL, c->xbc, c->nb, 1);
    zb_cuda_m2_conv_state_update(m, c->proj, c->state, sf, c->nb, 1);
    zb_cuda_m2_ssd_step_st(m, c->Al, c->Dp, c->xbc, c->dt, c->state + conv, sf, NULL, c->y, c->nb, 1);
    zb_cuda_m2_gated_norm_forward(m, c->nw, 1e-5f, c->y, c->proj, P, c->o, c->rstd, c->nb);
}
static void bench_pieces(void) {
    char what[160];
    zb_cuda_mamba2_set_blas(zb_cuda_cublas_handle(), zb_cuda_stream_handle());
    zb_rope_cfg rc = {.type = ZB_ROPE_LLAMA3, .theta = 500000.0f, .factor = 8.0f, .low_freq_factor = 1.0f,
                      .high_freq_factor = 4.0f, .original_max_pos = 8192, .mscale = 1.0f};
    int nbs[2] = {1, 8};
    for (int bi = 0; bi < 2; bi++) {
        piece_ctx c;
        memset(&c, 0, sizeof c);
        c.nb = nbs[bi]; c.H = 32; c.Hkv = 8; c.hd = 128; c.max_T = 8192;
        zb_rope_init(&c.r, 128, &rc);
        size_t nq = (size_t)c.nb * c.H * c.hd, nk = (size_t)c.nb * c.Hkv * c.hd;
        size_t nc = (size_t)c.nb * c.Hkv * c.max_T * c.hd;
        c.q = dev(nq * 4); c.k = dev(nk * 4); c.v = dev(nk * 4);
        fill(c.q, nq, 1.0f, 21); fill(c.k, nk, 1.0f, 22); fill(c.v, nk, 1.0f, 23);
        c.kc = dev(nc * 2); c.vc = dev(nc * 2);
        int hs[8], hp[8];
        for (int i = 0; i < 8; i++) { hs[i] = i; hp[i] = 4000 + i; }
        c.seq = dev(sizeof hs); c.pos = dev(sizeof hp); c.posi = dev(sizeof hp);
        zb_cuda_upload(c.seq, hs, sizeof hs);
        zb_cuda_upload(c.pos, hp, sizeof hp);
        for (int f = 1; f >= 0; f--) {
            c.fused = f;
            double ms = timeit_n(run_qkv_piece, &c, 3, 15, 8);
            snprintf(what, sizeof what, "decode piece q/k/v RoPE + cache stores 32/8 x128, batch %d, %s", c.nb,
                     f ? "fused (1 kernel)" : "separate (4 kernels)");
            row(what, ms, ms * 1e3, "us");
        }
        c.att = dev(nq * 4);
        for (int f = 3; f >= 2; f--) {   /* the attention at 4000 positions: one kernel, or three */
            c.fused = f;
            double ms = timeit_n(run_qkv_piece, &c, 3, 15, 8);
            snprintf(what, sizeof what, "decode attention 32/8 x128 at 4000 (RoPE, stores, attention), batch %d, %s",
                     c.nb, f == 3 ? "one kernel (the default)" : "ZB_DEC_ATTN=old (3 kernels)");
            row(what, ms, ms * 1e3, "us");
        }
        zb_cuda_free(c.att);
        zb_cuda_free(c.q); zb_cuda_free(c.k); zb_cuda_free(c.v); zb_cuda_free(c.kc); zb_cuda_free(c.vc);
        /* Zebra-8B's Mamba2 (configs/zebra-8b.json), bf16 SSM states */
        zb_mamba2_dims m = {4096, 32, 128, 128, 8, 8, 32, 4, 256, 128, 0.0f, INFINITY, 1};
        c.m = m;
        int P = zb_mamba2_in_proj_rows(&m), cd = zb_mamba2_conv_dim(&m);
        size_t sf = zb_mamba2_state_floats(&m), nb = (size_t)c.nb;
        c.proj = dev(nb * P * 4); c.state = dev(nb * sf * 4); c.xbc = dev(nb * cd * 4); c.dt = dev(nb * 32 * 4);
        c.y = dev(nb * 4096 * 4); c.o = dev(nb * 4096 * 4); c.rstd = dev(nb * 32 * 4);
        c.cw = dev((size_t)cd * 4 * 4); c.cb = dev((size_t)cd * 4); c.dtb = dev(32 * 4); c.Al = dev(32 * 4);
        c.Dp = dev(32 * 4); c.nw = dev(4096 * 4);
        fill(c.proj, nb * P, 1.0f, 24); fill(c.cw, (size_t)cd * 4, 0.5f, 25); fill(c.cb, cd, 0.1f, 26);
        fill(c.dtb, 32, 0.5f, 27); fill(c.Al, 32, 0.5f, 28); fill(c.Dp, 32, 1.0f, 29); fill(c.nw, 4096, 1.0f, 30);
        zb_cuda_zero(c.state, nb * sf * 4);
        for (int f = 1; f >= 0; f--) {
            c.fused = f;
            double ms = timeit_n(run_m2_piece, &c, 3, 15, 8);
            snprintf(what, sizeof what, "decode piece Mamba2 conv..gated norm Zebra-8B, batch %d, %s", c.nb,
                     f ? "fused (2 kernels)" : "separate (5 kernels)");
            row(what, ms, ms * 1e3, "us");
        }
        zb_cuda_free(c.proj); zb_cuda_free(c.state); zb_cuda_free(c.xbc); zb_cuda_free(c.dt); zb_cuda_free(c.y);
        zb_cuda_free(c.o); zb_cuda_free(c.rstd); zb_cuda_free(c.cw); zb_cuda_free(c.cb); zb_cuda_free(c.dtb);
        zb_cuda_free(c.Al); zb_cuda_free(c.Dp); zb_cuda_free(c.nw);
        zb_cuda_free(c.seq); zb_cuda_free(c.pos); zb_cuda_free(c.posi);
    }
}

/* One decode step's 32 layers of Llama-3.1-8B at batch 1 (4 copies of a layer's weights in turn, so
 * that no layer finds the one before's in the L2; 8k caches, position 600), recorded as a CUDA graph
 * once and replayed, as `zebra generate` runs its steps: the chain of dependent kernels with each
 * of the decode step's switches (ZB_DEC_FUSE, ZB_DEC_PDL, ZB_GEMV_UNROLL, ZB_GEMV_PREFETCH_MB,
 * ZB_GEMV_PRELOAD, ZB_GEMV_NORM). */
#define CH_COPIES 32   /* the rows use 4 (copies), one row all 32: a real model's 14 GB of layer weights */
typedef struct {
    int fused, copies, attn_old;
    zb_rope r;
    const uint16_t *wq[CH_COPIES], *wk[CH_COPIES], *wv[CH_COPIES], *wo[CH_COPIES], *wg[CH_COPIES], *wu[CH_COPIES],
        *wd[CH_COPIES];
    void *kc[CH_COPIES], *vc[CH_COPIES];
    float *x, *ln, *q, *k, *v, *att, *o, *h, *u, *nw;
    int *seq, *pos, *posi;
    void *graph;
    int eager;   /* steps run without the graph (a replay refused) */
} chain_ctx;
static void chain_layers(chain_ctx *c) {
    const int d = 4096, kd = 1024, F = 14336, H = 32, Hkv = 8, hd = 128, T = 8192;
    const long long ss = (long long)Hkv * T * hd, gs = (long long)T * hd;
    zb_cuda_cache_attn a = {H, Hkv, hd, hd, ss, gs, hd, 1.0f / sqrtf(128.0f), 1};
    for (int l = 0; l < 32; l++) {
        int w = l % c->copies;
        zb_cuda_linear_forward3(c->q, c->k, c->v, c->ln, zb_wt_of_bf16(c->wq[w]), zb_wt_of_bf16(c->wk[w]),
                                zb_wt_of_bf16(c->wv[w]), 1, d, d, kd, kd);
        /* RoPE, the stores and the attention in one kernel, unless the row asks for the older pieces */
        int one = c->fused && !c->attn_old &&
                  zb_cuda_decode_attn_fused(&c->r, c->att, c->q, c->k, c->v, c->kc[w], c->vc[w], c->seq, c->pos,
                                            c->posi, 1, T, &a);
        if (one) {
        } else if (c->fused)
            zb_cuda_decode_qkv_prep(&c->r, c->q, c->k, c->v, c->kc[w], c->vc[w], 1, c->seq, c->pos, c->posi, 1, H, Hkv,
                                    hd, ss, gs);
        else {
            zb_cuda_gather_int(c->posi, c->pos, c->seq, 1);
            zb_cuda_rope_apply_rows(&c->r, c->q, 1, 1, c->posi, d + kd, H + Hkv, hd, 0, 0, 0);
            zb_cuda_cache_store(c->kc[w], 1, c->k, kd, c->seq, c->posi, 1, 1, Hkv, hd, ss, gs, hd);
            zb_cuda_cache_store(c->vc[w], 1, c->v, kd, c->seq, c->posi, 1, 1, Hkv, hd, ss, gs, hd);
        }
        if (!one) zb_cuda_attention_cached(c->att, c->q, c->kc[w], c->vc[w], c->seq, c->posi, 1, 1, T, &a);
        /* o and down with the residual step and the norm (one launch each unless ZB_GEMV_NORM=0) */
        zb_cuda_linear_add_rmsnorm(c->o, c->att, zb_wt_of_bf16(c->wo[w]), 1, d, d, c->x, c->ln, c->nw, 1e-5f);
        zb_cuda_swiglu_linear_forward(c->h, c->u, c->ln, zb_wt_of_bf16(c->wg[w]), zb_wt_of_bf16(c->wu[w]), 1, d, F);
        zb_cuda_linear_add_rmsnorm(c->o, c->h, zb_wt_of_bf16(c->wd[w]), 1, F, d, c->x, c->ln, c->nw, 1e-5f);
    }
}
static void run_chain(void *p) {
    chain_ctx *c = p;
    if (!zb_cuda_graph_replay(c->graph, 1)) {
        chain_layers(c);
        c->eager++;
    }
}
static void bench_chain(void) {
    const int d = 4096, kd = 1024, F = 14336, T = 8192;
    chain_ctx c;
    memset(&c, 0, sizeof c);
    zb_rope_cfg rc = {.type = ZB_ROPE_LLAMA3, .theta = 500000.0f, .factor = 8.0f, .low_freq_factor = 1.0f,
                      .high_freq_factor = 4.0f, .original_max_pos = 8192, .mscale = 1.0f};
    zb_rope_init(&c.r, 128, &rc);
    size_t per = (size_t)(d + 2 * kd) * d + (size_t)d * d + 3 * (size_t)F * d, nc = (size_t)8 * T * 128;
    float *tmp = dev(per * 4);
    fill(tmp, per, 0.02f, 41);
    for (int w = 0; w < CH_COPIES; w++) {
        uint16_t *W = dev(per * 2);
        zb_cuda_f32_to_bf16(W, tmp, per);
        c.wq[w] = W; c.wk[w] = W + (size_t)d * d; c.wv[w] = c.wk[w] + (size_t)kd * d; c.wo[w] = c.wv[w] + (size_t)kd * d;
        c.wg[w] = c.wo[w] + (size_t)d * d; c.wu[w] = c.wg[w] + (size_t)F * d; c.wd[w] = c.wu[w] + (size_t)F * d;
        c.kc[w] = dev(nc * 2); c.vc[w] = dev(nc * 2);
        zb_cuda_f32_to_bf16(c.kc[w], tmp, nc);
        zb_cuda_f32_to_bf16(c.vc[w], tmp, nc);
    }
    zb_cuda_free(tmp);
    c.x = dev(d * 4); c.ln = dev(d * 4); c.q = dev((d + 2 * kd) * 4); c.k = c.q + d; c.v = c.k + kd;
    c.att = dev(d * 4); c.o = dev(d * 4); c.h = dev(F * 4); c.u = dev(F * 4); c.nw = dev(d * 4);
    fill(c.x, d, 1.0f, 42); fill(c.ln, d, 1.0f, 43); fill(c.nw, d, 1.0f, 44);
    int zero = 0, p600 = 600;
    c.seq = dev(4); c.pos = dev(4); c.posi = dev(4);
    zb_cuda_upload(c.seq, &zero, 4);
    zb_cuda_upload(c.pos, &p600, 4);
    /* fused, PDL, unroll, prefetch (MB; -2 the first loads) */
    static const struct { const char *nm; int fused, pdl, unroll; long long pf; } v[] = {
        {"fused pieces, PDL (the default: the attention one kernel)", 1, 1, 4, 0},
        {"fused pieces, PDL, ZB_DEC_ATTN=old (attention 3 kernels)", 1, 1, 4, 0},
        {"fused, PDL, first weight loads before the wait (ZB_GEMV_PRELOAD=1)", 1, 1, 4, 0},
        {"fused, PDL, the norm in the GEMV's last block (ZB_GEMV_NORM=1)", 1, 1, 4, 0},
        {"fused, PDL, the S6 split rule (ZB_GEMV_SPLIT=auto)", 1, 1, 4, 0},
        {"fused, PDL, S6R4's GEMVs (norms separate, the S6 split rule)", 1, 1, 4, 0},
        {"fused pieces, no PDL", 1, 0, 4, 0},
        {"separate kernels, no PDL (before 2026-11-30 12:00)", 0, 0, 4, 0},
        {"separate kernels, PDL", 0, 1, 4, 0},
        {"fused, PDL, 8 loads in flight", 1, 1, 8, 0},
        {"fused, PDL, 8 loads in flight for single matrices (ZB_GEMV_UNROLL=8s)", 1, 1, 9, 0},
        {"fused, PDL, first loads prefetched", 1, 1, 4, -2},
        {"fused, PDL, 16 MB prefetched", 1, 1, 4, 16 << 20},
        {"fused, PDL, every GEMV split 1", 1, 1, 4, 0},
        {"fused, PDL, every GEMV split 4", 1, 1, 4, 0},
        {"fused, PDL, 32 distinct layers (14 GB of weights, as the model)", 1, 1, 4, 0},
    };
    char what[160];
    for (int i = 0; i < (int)(sizeof v / sizeof v[0]); i++) {
        c.fused = v[i].fused;
        zb_cuda_dec_pdl_set(v[i].pdl);
        zb_cuda_gemv_set_unroll(v[i].unroll);
        zb_cuda_gemv_set_prefetch(v[i].pf);
        zb_cuda_gemv_set_preload(strstr(v[i].nm, "PRELOAD=1") != NULL);
        zb_cuda_gemv_norm_set(strstr(v[i].nm, "NORM=1") != NULL);
        const char *sp = strstr(v[i].nm, "split ");   /* the split-K of every GEMV forced (ZB_GEMV_SPLIT) */
        zb_cuda_gemv_set_split(strstr(v[i].nm, "SPLIT=auto") || strstr(v[i].nm, "S6R4") ? 16 : sp ? atoi(sp + 6) : 0);
        c.copies = strstr(v[i].nm, "32 distinct") ? CH_COPIES : 4;
        c.attn_old = strstr(v[i].nm, "ZB_DEC_ATTN=old") != NULL;
        chain_layers(&c);   /* eager once: the scratch sizes settle */
        zb_cuda_sync();
        int rec = zb_cuda_graph_begin(&c.graph, 1);
        if (rec) {
            chain_layers(&c);
            rec = zb_cuda_graph_end(c.graph, 0);
        }
        c.eager = 0;
        double ms = timeit_n(run_chain, &c, 2, 9, 4);
        snprintf(what, sizeof what, "decode chain 8B 32 layers batch 1, %s%s", v[i].nm,
                 rec && !c.eager ? "" : " (NOT a graph)");
        row(what, ms, 436.2e6 * 32 / (ms * 1e-3) / 1e9, "GB/s");
        zb_cuda_graph_free(c.graph);
        c.graph = NULL;
    }
    zb_cuda_dec_pdl_set(-1);
    zb_cuda_gemv_set_unroll(0);
    zb_cuda_gemv_set_prefetch(-1);
    zb_cuda_gemv_set_preload(-1);
    zb_cuda_gemv_norm_set(-1);
    zb_cuda_gemv_set_split(0);
    for (int w = 0; w < CH_COPIES; w++) {
        zb_cuda_free((void *)c.wq[w]); zb_cuda_free(c.kc[w]); zb_cuda_free(c.vc[w]);
    }
    zb_cuda_free(c.x); zb_cuda_free(c.ln); zb_cuda_free(c.q); zb_cuda_free(c.att); zb_cuda_free(c.o);
    zb_cuda_free(c.h); zb_cuda_free(c.u); zb_cuda_free(c.nw); zb_cuda_free(c.seq); zb_cuda_free(c.pos);
    zb_cuda_free(c.posi);
}

int main(int argc, char **argv) {
    const char *json = NULL;
    int quick = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json") && i + 1 < argc) json = argv[++i];
        else if (!strcmp(argv[i], "--quick")) quick = 1;
        else if (!strcmp(argv[i], "--chain")) quick = 2;
    }
    if (zb_cuda_init(-1)) { fprintf(stderr, "bench_cuda: %s\n", zb_errmsg()); return 1; }
    if (json) { g_json = fopen(json, "w"); if (g_json) fprintf(g_json, "{\"device\": \"%s\", \"rows\": [\n", zb_cuda_device_name()); }
    printf("device %s, %d SMs, %.1f GiB\n", zb_cuda_device_name(), zb_cuda_sm_count(), zb_cuda_mem_total() / 1073741824.0);
    char what[160];

    /* ---- ceilings */
    {
        size_t bytes = (size_t)4 << 30;
        copy_ctx c = {dev(bytes), dev(bytes), bytes};
        double ms = timeit(run_copy, &c, 2, 10);
        row("device copy 4 GiB (read + write)", ms, 2.0 * bytes / (ms * 1e-3) / 1e9, "GB/s");
        zb_cuda_free(c.dst);
        zb_cuda_free((void *)c.src);
    }
    if (quick == 2) {   /* --chain */
        bench_chain();
        if (g_json) { fprintf(g_json, "\n]}\n"); fclose(g_json); }
        return zb_cuda_sync() ? 1 : 0;
    }
    int S = quick ? 4096 : 8192;
    {
        size_t n = (size_t)S * S;
        gemm_ctx g = {S, S, S, dev(n * 4), dev(n * 4), dev(n * 4), NULL, NULL, 0};
        fill(g.A, n, 1.0f, 1);
        fill(g.B, n, 1.0f, 2);
        void *a16 = dev(n * 2), *b16 = dev(n * 2);
        zb_cuda_f32_to_bf16(a16, g.A, n);
        zb_cuda_f32_to_bf16(b16, g.B, n);
        g.A16 = a16;
        g.B16 = b16;
        double fl = 2.0 * S * S * S;
        double ms = timeit(run_gemm_bf16, &g, 3, 10);
        snprintf(what, sizeof what, "cuBLAS bf16 GEMM %d^3 (bf16 in, f32 out)", S);
        row(what, ms, fl / (ms * 1e-3) / 1e12, "TFLOP/s");
        zb_cuda_set_precision(ZB_PREC_BF16);
        zb_cuda_set_bf16_gemm(ZB_BF16_GEMM_FAST);
        ms = timeit(run_gemm, &g, 3, 10);
        snprintf(what, sizeof what, "GEMM %d^3 bf16 mode FAST (f32 in, COMPUTE_32F_FAST_16BF)", S);
        row(what, ms, fl / (ms * 1e-3) / 1e12, "TFLOP/s");
        zb_cuda_set_bf16_gemm(ZB_BF16_GEMM_CONVERT);
        ms = timeit(run_gemm, &g, 3, 10);
        snprintf(what, sizeof what, "GEMM %d^3 bf16 mode CONVERT (incl. both conversions)", S);
        row(what, ms, fl / (ms * 1e-3) / 1e12, "TFLOP/s");
        zb_cuda_set_bf16_gemm(ZB_BF16_GEMM_FAST);
        zb_cuda_set_precision(ZB_PREC_F32);
        ms = timeit(run_gemm, &g, 1, 3);
        snprintf(what, sizeof what, "GEMM %d^3 f32 mode (COMPUTE_32F_PEDANTIC)", S);
        row(what, ms, fl / (ms * 1e-3) / 1e12, "TFLOP/s");
        zb_cuda_free(g.A); zb_cuda_free(g.B); zb_cuda_free(g.C); zb_cuda_free(a16); zb_cuda_free(b16);
    }

    /* ---- Llama-3.2-1B training shapes: 8 x 2048 tokens */
    {
        int N = 16384, d = 2048, F = 8192, V = 128256;
        int shapes[4][2] = {{d, d}, {512, d}, {F, d}, {d, F}};   /* (OC, C): q/o, k/v, gate/up, down */
        const char *nm[4] = {"q/o proj", "k/v proj", "gate/up", "down"};
        size_t big = (size_t)N * F;
        float *A = dev(big * 4), *W = dev((size_t)F * d * 4), *C = dev(big * 4);
        fill(A, big, 1.0f, 3);
        fill(W, (size_t)F * d, 0.02f, 4);
        zb_cuda_set_precision(ZB_PREC_BF16);
        for (int impl = 0; impl < 2; impl++) {
            zb_cuda_set_bf16_gemm(impl ? ZB_BF16_GEMM_CONVERT : ZB_BF16_GEMM_FAST);
            for (int i = 0; i < 4; i++) {
                gemm_ctx g = {N, shapes[i][0], shapes[i][1], A, W, C, NULL, NULL, 0};
                double ms = timeit(run_gemm, &g, 2, 5);
                snprintf(what, sizeof what, "1B %s fwd N=%d OC=%d C=%d (%s)", nm[i], N, g.N, g.K,
                         impl ? "convert" : "fast");
                row(what, ms, 2.0 * N * g.N * g.K / (ms * 1e-3) / 1e12, "TFLOP/s");
            }
        }
        zb_cuda_set_bf16_gemm(ZB_BF16_GEMM_FAST);
        zb_cuda_free(A); zb_cuda_free(W); zb_cuda_free(C);
        (void)V;
        /* attention forward + backward, B=8 T=2048 H=32 Hkv=8 hd=64 */
        attn_ctx a;
        memset(&a, 0, sizeof a);
        zb_attn_shape s = {8, 2048, 32, 8, 64, 64, 32 * 64, 8 * 64, 8 * 64, 0.125f};
        a.s = s;
        size_t nq = (size_t)N * 2048, nk = (size_t)N * 512;
        a.q = dev(nq * 4); a.k = dev(nk * 4); a.v = dev(nk * 4); a.o = dev(nq * 4); a.lse = dev((size_t)8 * 32 * 2048 * 4);
        a.dout = dev(nq * 4); a.dq = dev(nq * 4); a.dk = dev(nk * 4); a.dv = dev(nk * 4);
        fill(a.q, nq, 1.0f, 5); fill(a.k, nk, 1.0f, 6); fill(a.v, nk, 1.0f, 7); fill(a.dout, nq, 1.0f, 8);
        double causal = 0.5 * 8.0 * 32 * 2048.0 * 2048.0 * 64 * 2;   /* one causal product */
        /* f32 (cuBLAS blocks), bf16 on the blocked path, bf16 flash: version 1 (cuda_flash.cu,
         * ZB_FLASH=old) and version 2 (cuda_flash2.cu, the default) with each forward CTA shape
         * (zb_cuda_flash2_tune: warps x query rows a warp) and both backward register budgets */
        static const attn_cfg cf[] = {
            {"f32 blocked", ZB_PREC_F32, 0, 2, 0, 0},
            {"bf16 blocked", ZB_PREC_BF16, 0, 2, 0, 0},
            {"bf16 flash1", ZB_PREC_BF16, 1, 1, 0, 0},
            {"bf16 flash2 fwd 4x32 rows, bwd 4 warps 3 CTAs/SM", ZB_PREC_BF16, 1, 2, 3, 2},   /* the default */
            {"bf16 flash2 fwd 4x16 rows, bwd 4 warps 2 CTAs/SM", ZB_PREC_BF16, 1, 2, 1, 1},
            {"bf16 flash2 fwd 8x16 rows, bwd 8 warps", ZB_PREC_BF16, 1, 2, 2, 3},
        };
        for (int p = 0; p < 6; p++) bench_attn_cfg(&a, &cf[p], "1B", causal, 1, p >= 2);
        /* the 8B shape (head dim 128; the KD teacher's and prefill's forward) on the flash kernels:
         * B=4 T=2048 H=32/8 */
        {
            zb_attn_shape s8 = {4, 2048, 32, 8, 128, 128, 32 * 128, 8 * 128, 8 * 128, 0.08838834764f};
            a.s = s8;
            double c8 = 0.5 * 4.0 * 32 * 2048.0 * 2048.0 * 128 * 2;
            static const attn_cfg c8f[] = {
                {"bf16 flash1", ZB_PREC_BF16, 1, 1, 0, 0},
                {"bf16 flash2 fwd 4x32 rows, bwd 4 warps", ZB_PREC_BF16, 1, 2, 3, 1},   /* the default */
                {"bf16 flash2 fwd 8x16 rows, bwd 8 warps", ZB_PREC_BF16, 1, 2, 2, 3},
                {"bf16 flash2 fwd 4x16 rows", ZB_PREC_BF16, 1, 2, 1, 1},   /* the same backward as 4x32 */
            };
            for (int p = 0; p < 4; p++) bench_attn_cfg(&a, &c8f[p], "8B-shape", c8, p < 3, 0);
            a.s = s;
        }
        zb_cuda_flash_set_version(0);
        zb_cuda_flash2_tune(0, 0);
        zb_cuda_set_precision(ZB_PREC_F32);
        zb_cuda_free(a.q); zb_cuda_free(a.k); zb_cuda_free(a.v); zb_cuda_free(a.o); zb_cuda_free(a.lse);
        zb_cuda_free(a.dout); zb_cuda_free(a.dq); zb_cuda_free(a.dk); zb_cuda_free(a.dv);
    }

    /* ---- decode GEMV on bf16 weights, the 8B's matrices at batch 1 and 8: GB/s of weights read.
     * Each call reads another copy of the weights (a pool of 2 GiB), so that no call finds the
     * previous one's in the L2 (50 MB), as in a decode step that streams 16 GB; 8 calls back to
     * back per timing (timeit_n). */
    {
        size_t pool = (size_t)2 << 30, nel = pool / 2;
        void *Wp = dev(pool);
        float *tmp = dev((size_t)1 << 30);
        fill(tmp, (size_t)1 << 28, 0.02f, 11);
        for (size_t o = 0; o < nel; o += (size_t)1 << 28) {   /* 2^28 values at a time, the same ones */
            size_t k = nel - o < ((size_t)1 << 28) ? nel - o : ((size_t)1 << 28);
            zb_cuda_f32_to_bf16((uint16_t *)Wp + o, tmp, k);
        }
        zb_cuda_free(tmp);
        float *x = dev((size_t)48 * 14336 * 4), *y = dev((size_t)48 * 3 * 128256 * 4);
        fill(x, (size_t)48 * 14336, 1.0f, 12);
        int d = 4096, F = 14336, kd = 1024, V = 128256;
        /* kind 0: one matrix; 1: q | k | v in one launch; 2: gate | up with SwiGLU; 3: a whole layer's
         * four launches (q|k|v, o, gate|up, down) */
        struct { const char *nm; int kind, OC, C; } sh[] = {
            {"q|k|v fused 6144x4096", 1, 0, d},   {"o proj 4096x4096", 0, d, d},
            {"gate|up+SwiGLU 2x14336x4096", 2, F, d}, {"down 4096x14336", 0, d, F},
            {"k/v alone 1024x4096", 0, kd, d},  {"lm_head 128256x4096", 0, V, d},
            /* one rank's shapes under --tp 2: q|k|v, o and down halved */
            {"TP/2 q|k|v 3072x4096", 0, 3072, d}, {"TP/2 o proj 4096x2048", 0, d, 2048},
            {"TP/2 down 4096x7168", 0, d, 7168},
            {"layer: qkv, o, gate|up, down", 3, 0, 0},
        };
        int nsh = (int)(sizeof sh / sizeof sh[0]);
        /* batch 1 and 8 (the GEMV), then batch 48 (cuBLAS: cublasGemmEx's own choice, then the
         * algorithm timed per shape, zb_cuda_gemm_tune) */
        /* batch 1 also without PDL (ZB_DEC_PDL=0: each GEMV waits for the one before to end before
         * it starts fetching weights; ks = -1 below), with 8 loads in flight per lane (ks = -2) and
         * with each lane's first round of loads (ks = -3) or 16 MB of the weights (ks = -4) fetched
         * into the L2 before the PDL wait */
        int nbs[4] = {1, 8, 48, 48};
        for (int bi = 0; bi < 4; bi++)
            for (int i = 0; i < nsh; i++)
                for (int ks = bi ? 0 : -4; ks <= 8; ks = ks > 0 ? 2 * ks : ks + 1) {
                    if (ks > 0 && (bi || sh[i].kind == 3)) break;   /* the split sweep at batch 1 only */
                    gemv8_ctx g = {Wp, nel, 0, x, y, nbs[bi], sh[i].kind, sh[i].OC, sh[i].C, d, F, kd, 0};
                    gemv8_bytes(&g);
                    zb_cuda_gemv_set_split(ks > 0 ? ks : 0);
                    zb_cuda_dec_pdl_set(ks == -1 ? 0 : -1);
                    zb_cuda_gemv_set_unroll(ks == -2 ? 8 : 0);
                    zb_cuda_gemv_set_prefetch(ks == -3 ? -2 : ks == -4 ? 16 << 20 : -1);
                    if (bi >= 2) zb_cuda_gemm_tune(bi == 3);
                    double ms = timeit_n(run_gemv8, &g, 3, 15, 8);
                    zb_cuda_gemm_tune(-1);
                    zb_cuda_gemv_set_split(0);
                    zb_cuda_dec_pdl_set(-1);
                    zb_cuda_gemv_set_unroll(0);
                    zb_cuda_gemv_set_prefetch(-1);
                    snprintf(what, sizeof what, "decode %s %s, batch %d, %s", bi >= 2 ? "GEMM" : "GEMV", sh[i].nm, g.N,
                             bi == 2   ? "cublasGemmEx"
                             : bi == 3 ? "timed per shape"
                             : ks > 0  ? (ks == 1 ? "split 1" : ks == 2 ? "split 2" : ks == 4 ? "split 4" : "split 8")
                             : ks == -1 ? "auto, no PDL"
                             : ks == -2 ? "auto, 8 loads in flight"
                             : ks == -3 ? "auto, PDL + first loads prefetched"
                             : ks == -4 ? "auto, PDL + 16 MB prefetched"
                                       : "auto");
                    row(what, ms, (double)g.bytes / (ms * 1e-3) / 1e9, "GB/s");
                }
        zb_cuda_free(Wp); zb_cuda_free(x); zb_cuda_free(y);
    }

    /* ---- decode attention over a bf16 cache: the 8B teacher (32 heads, 8 kv heads, hd 128) and
     * DeepSeek's MLA (32 heads over one latent row of 512 + 64) and Zebra-8B's (160 + 64: the
     * model's earlier cuBLAS form, then the fused kernel), one layer, 8k context */
    for (int kind = 0; kind < 3; kind++) {
        int batches[2] = {1, 48};
        for (int bi = 0; bi < 2; bi++) {
            int nb = batches[bi], T = 8192, H = 32, Hkv = kind ? 1 : 8;
            int hd = kind == 2 ? 224 : kind ? 576 : 128, dv = kind == 2 ? 160 : kind ? 512 : 128;
            size_t per = (size_t)Hkv * T * hd, n = per * nb;
            dec_ctx d;
            d.nl = nb == 1 ? 8 : 1;
            d.at = 0;
            d.path = 0;
            d.n = n;
            d.kc = dev(n * 2 * d.nl);
            d.vc = kind ? d.kc : dev(n * 2 * d.nl);
            float *tmp = dev(n * 4);
            fill(tmp, n, 0.5f, 9);
            for (int l = 0; l < d.nl; l++) {
                zb_cuda_f32_to_bf16((uint16_t *)d.kc + (size_t)l * n, tmp, n);
                if (!kind) zb_cuda_f32_to_bf16((uint16_t *)d.vc + (size_t)l * n, tmp, n);
            }
            zb_cuda_free(tmp);
            d.q = dev((size_t)nb * H * hd * 4);
            fill(d.q, (size_t)nb * H * hd, 1.0f, 10);
            d.out = dev((size_t)nb * H * dv * 4);
            int *hs = malloc(sizeof(int) * nb), *hp = malloc(sizeof(int) * nb);
            for (int i = 0; i < nb; i++) { hs[i] = i; hp[i] = T - 1; }
            d.seq = dev(sizeof(int) * nb);
            d.pos = dev(sizeof(int) * nb);
            zb_cuda_upload(d.seq, hs, sizeof(int) * nb);
            zb_cuda_upload(d.pos, hp, sizeof(int) * nb);
            d.nb = nb;
            d.max_len = T;
            zb_cuda_cache_attn ca = {H, Hkv, hd, dv, (long long)per, (long long)T * hd, hd, 1.0f / sqrtf(192.0f), 1};
            if (kind) ca.group_stride = 0;
            d.a = ca;
            double bytes = (double)n * 2 * (kind ? 1 : 2);
            /* GQA: the chosen chunk length, then each forced one; Zebra's MLA: the cuBLAS form, the
             * fused kernel with its chunks, then 256 and 1024 positions per block */
            /* Zebra's MLA: the cuBLAS form, the wmma kernel (its chunks), then the register
             * (mma.sync) kernel with its chunks and forced ones */
            int chs[5] = {0, 64, 128, 256, 512}, zch[7] = {0, 0, 0, 64, 128, 256, 1024};
            for (int c = 0; c < (kind == 2 ? 7 : kind ? 1 : 5); c++) {
                int ch = kind == 2 ? zch[c] : chs[c], wm = kind == 2 && c == 1;
                if (kind == 2) d.path = c ? 2 : 1;
                zb_cuda_decode_set_chunk(ch);
                zb_cuda_decode_mla_set_kernel(wm ? 1 : 0);
                double ms = timeit_n(run_dec, &d, 2, 9, 8);
                zb_cuda_decode_mla_set_kernel(-1);
                zb_cuda_decode_set_chunk(0);
                char chn[32];
                if (ch) snprintf(chn, sizeof chn, ", %d per block", ch);
                else chn[0] = 0;
                snprintf(what, sizeof what, "decode attention %s batch %d ctx 8k, one layer (bf16 cache)%s",
                         kind == 2 ? (d.path == 1 ? "MLA 32x(160+64) cuBLAS form"
                                      : wm        ? "MLA 32x(160+64) fused wmma"
                                                  : "MLA 32x(160+64) fused mma")
                                   : kind ? "MLA 32x(512+64)" : "GQA 32/8 x128", nb, chn);
                row(what, ms, bytes / (ms * 1e-3) / 1e9, "GB/s");
            }
            zb_cuda_free(d.kc); if (!kind) zb_cuda_free(d.vc); zb_cuda_free(d.q); zb_cuda_free(d.out);
            zb_cuda_free(d.seq); zb_cuda_free(d.pos);
            free(hs); free(hp);
        }
    }
    bench_pieces();
    bench_chain();
    if (g_json) { fprintf(g_json, "\n]}\n"); fclose(g_json); }
    int rc = zb_cuda_sync();
    if (rc) { fprintf(stderr, "bench_cuda: %s\n", zb_errmsg()); return 1; }
    return 0;
}
