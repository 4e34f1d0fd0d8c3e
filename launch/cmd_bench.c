/* zebra bench — prefill and decode tokens/s of a teacher and its hybrid over context lengths
 * and batch sizes, each as a fraction of this machine's own ceilings, measured first in the
 * same run: OpenBLAS sgemm GFLOP/s (prefill is GEMM-bound) and memory bandwidth (batch-1
 * decode must stream every weight and the cache once per token).
 *
 *   zebra bench --teacher T --hybrid H [--contexts 1024,4096,8192] [--batches 1,4]
 *               [--decode-steps 16] [--prefill-len 256] [--md out.md] [--svg out.svg]
 *               [--weights f32|bf16]   (bf16: matrices held in bf16, model.h zb_wdtype)
 *               [--breakdown]          (a second table: decode ms per step by part)
 *               [--logits]             (decode copies every row's logits to the host, the path
 *                                      of sampling; default: greedy, the argmax on the device
 *                                      and its ids fed back as the next tokens)
 *               [--device cuda [--precision bf16|f32] [--cache bf16|f32]]   (one GPU: its ceilings
 *                                      are the bf16 matmul rate and the device copy bandwidth)
 *               [--fit CONTEXT]        (the largest batch whose caches fit at CONTEXT tokens)
 *   zebra bench --train MODEL [--kd TEACHER] ...   training-step throughput (cmd_bench_train.c)
 * T and H are checkpoints/HF directories, or configs (.json) initialised with random weights.
 * Decode at context c runs on caches filled with synthetic values (speed does not depend on
 * their contents), so long contexts need no prefill; one untimed decode step, then the timed ones. */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "model.h"
#ifdef ZB_HAVE_CUDA
#include "cuda_ops.h"
#endif

int zb_bench_train(int argc, char **argv, const zb_backend *be);

int zb_bench_device_memory(size_t *used, size_t *total) {
    *used = *total = 0;
#ifdef ZB_HAVE_CUDA
    size_t fr = 0;
    if (zb_cuda_mem_info(&fr, total) != ZB_OK) return -1;
    *used = *total - fr;
    return 0;
#else
    return -1;
#endif
}

void zb_bench_gpu_ceilings(const zb_backend *be, double *tflops, double *gbs) {
    *tflops = 0;
    if (gbs) *gbs = 0;
#ifdef ZB_HAVE_CUDA
    int n = 8192;
    size_t e = (size_t)n * n, cb = gbs ? (size_t)2 << 30 : 0;
    void *a = be->alloc(be, e * 2, "bench"), *b = be->alloc(be, e * 2, "bench"), *c = be->alloc(be, e * 4, "bench");
    void *x = gbs ? be->alloc(be, cb, "bench") : NULL, *y = gbs ? be->alloc(be, cb, "bench") : NULL;
    if (a && b && c && (!gbs || (x && y))) {
        be->fill_uniform(be, a, 1, e, 1, 1.0f);
        be->fill_uniform(be, b, 1, e, 2, 1.0f);
        double best = 1e30, bestc = 1e30;
        for (int r = 0; r < 8; r++) {   /* the best of the last 6 (the first two warm up) */
            be->sync(be);
            double t = zb_now();
            zb_cuda_gemm_bf16_native(n, n, n, a, b, c);
            be->sync(be);
            t = zb_now() - t;
            if (r >= 2 && t < best) best = t;
            if (!gbs) continue;
            t = zb_now();
            be->copy(be, y, x, cb);
            be->sync(be);
            t = zb_now() - t;
            if (r >= 2 && t < bestc) bestc = t;
        }
        *tflops = 2.0 * n * n * n / best / 1e12;
        if (gbs) *gbs = 2.0 * cb / bestc / 1e9;
    }
    be->free(be, a); be->free(be, b); be->free(be, c); be->free(be, x); be->free(be, y);
#else
    (void)be;
#endif
}

/* The largest batch whose generation state at ctx tokens allocates (binary search over real
 * allocations, each freed). */
static int fit_batch(const zb_model *m, int ctx, int *best) {
    int lo = 0, hi = 1;
    zb_gen g;
    while (hi <= 65536) {   /* grow until an allocation fails */
        if (zb_gen_init(&g, m, hi, ctx + 1)) { zb_gen_free(&g); break; }
        zb_gen_free(&g);
        lo = hi;
        hi *= 2;
    }
    while (hi - lo > 1) {
        int mid = lo + (hi - lo) / 2;
        if (zb_gen_init(&g, m, mid, ctx + 1)) hi = mid;
        else lo = mid;
        zb_gen_free(&g);
    }
    *best = lo;
    return ZB_OK;
}

#define MAXL 16

/* "1024,4096": up to cap integers in [lo, hi]; *n their count */
static int parse_list(const char *s, const char *what, long lo, long hi, int *v, int cap, int *n) {
    *n = 0;
    char buf[64];
    while (s) {
        const char *c = strchr(s, ',');
        size_t len = c ? (size_t)(c - s) : strlen(s);
        if (*n == cap) return zb_fail(ZB_EARG, "%s: at most %d values", what, cap);
        if (len >= sizeof buf) len = sizeof buf - 1;
        memcpy(buf, s, len);
        buf[len] = 0;
        long x;
        ZB_TRY(zb_parse_long(buf, what, lo, hi, &x));
        v[(*n)++] = (int)x;
        s = c ? c + 1 : NULL;
    }
    return ZB_OK;
}

/* Best of a few runs of an n x n x n sgemm. */
static double sgemm_gflops(int n) {
    float *a = malloc(sizeof(float) * n * n), *b = malloc(sizeof(float) * n * n), *c = malloc(sizeof(float) * n * n);
    if (!a || !b || !c) { free(a); free(b); free(c); return 0; }
    for (int i = 0; i < n * n; i++) { a[i] = 1e-3f * (i % 7); b[i] = 1e-3f * (i % 5); }
    double best = 1e30;
    for (int r = 0; r < 4; r++) {
        double t = zb_now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        t = zb_now() - t;
        if (t < best) best = t;
    }
    free(a); free(b); free(c);
    return 2.0 * n * n * n / best / 1e9;
}

/* Read bandwidth (GB/s): the best of a few passes over a buffer much larger than the caches,
 * which is what batch-1 decode does with the weights: a sum over all the run's OpenMP threads
 * (the decode kernels' threads; also OpenBLAS's in its OpenMP build), and cblas_sasum (OpenBLAS's
 * threads; some versions run it on one), the higher of the two; a plain loop on one core gives
 * the one-core figure. The first touch is threaded, so that pages spread as the weights' do. */
static double read_bandwidth(size_t bytes, double *one_core) {
    long n = (long)(bytes / sizeof(float));
    float *x = malloc(bytes);
    if (!x) return 0;
#pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i++) x[i] = 1.0f;
    double best = 1e30, best1 = 1e30;
    volatile float sink = 0;
    for (int r = 0; r < 5; r++) {
        double t = zb_now();
        sink += cblas_sasum((int)n, x, 1);
        t = zb_now() - t;
        if (t < best) best = t;
        t = zb_now();
        float s = 0;
#pragma omp parallel for simd schedule(static) reduction(+ : s)
        for (long i = 0; i < n; i++) s += x[i];
        sink += s;
        t = zb_now() - t;
        if (t < best) best = t;
        t = zb_now();
        float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        for (long i = 0; i + 3 < n; i += 4) { s0 += x[i]; s1 += x[i + 1]; s2 += x[i + 2]; s3 += x[i + 3]; }
        sink += s0 + s1 + s2 + s3;
        t = zb_now() - t;
        if (t < best1) best1 = t;
    }
    free(x);
    *one_core = bytes / best1 / 1e9;
    double all = bytes / best / 1e9;
    return all > *one_core ? all : *one_core;
}

static int load_any(zb_model *m, const char *path, zb_wdtype wt) {
    size_t len = strlen(path);
    if (len > 5 && !strcmp(path + len - 5, ".json")) {
        zb_config c;
        ZB_TRY(zb_config_load(path, &c));
        ZB_TRY(zb_model_init_ex(m, &c, wt));
        zb_model_init_synthetic(m, 7, 0.02f);   /* speed does not depend on the values */
        return ZB_OK;
    }
    return zb_model_load_ex(m, path, wt);
}

typedef struct { double prefill_tps, decode_tps, decode_gbs, prof_ms[ZB_PROF_N], part_bytes[ZB_PROF_N],
                 pre_ms[ZB_PROF_N]; } bench_row;

/* Bytes a decode step must read per part, for --breakdown's GB/s: the attention layers' four
 * projections and their K/V caches, the MLPs' three matrices, the head; 0 where not counted
 * (MLA and Mamba2 layers, the norms and residuals). */
static void part_bytes(const zb_model *m, const zb_gen *g, int B, int ctx, double *pb) {
    const zb_config *c = &m->cfg;
    double wb = m->wdtype == ZB_WEIGHTS_BF16 ? 2 : 4, d = c->d_model, qd = (double)c->n_heads * c->head_dim,
           kd = (double)c->n_kv_heads * c->head_dim;
    for (int k = 0; k < ZB_PROF_N; k++) pb[k] = 0;
    for (int l = 0; l < c->n_layers; l++) {
        if (c->kinds[l] == ZB_LAYER_ATTN)
            pb[ZB_PROF_ATTN] += wb * (2 * d * qd + 2 * d * kd) + (double)B * ctx * 2 * kd * g->cache_esize[l];
        pb[ZB_PROF_MLP] += wb * 3 * d * c->ffn;
    }
    pb[ZB_PROF_HEAD] = wb * d * c->vocab;
}

static int bench_model(const zb_model *m, int B, int ctx, int steps, int prefill_len, int breakdown, int greedy,
                       bench_row *r) {
    zb_gen g;
    int max_T = ctx + steps + 2;
    if (max_T < prefill_len + 1) max_T = prefill_len + 1;
    ZB_TRY(zb_gen_init(&g, m, B, max_T));
    g.greedy = greedy;   /* the argmax where the logits are, B ids to the host (else B x V logits) */
    int *ids = malloc(sizeof(int) * (size_t)B * prefill_len);
    if (!ids) { zb_gen_free(&g); return zb_fail(ZB_ENOMEM, "out of memory (bench)"); }
    for (int i = 0; i < B * prefill_len; i++) ids[i] = (i * 31 + 7) % m->cfg.vocab;
    int rc = ZB_OK;
    g.profile = breakdown;   /* the prefill's parts (the tokens/s above is the synchronised run's then) */
    double t = zb_now();
    rc = zb_gen_step(m, &g, ids, prefill_len);
    r->prefill_tps = (double)B * prefill_len / (zb_now() - t);
    for (int k = 0; k < ZB_PROF_N; k++) { r->pre_ms[k] = 1e3 * g.prof[k]; g.prof[k] = 0; }
    g.profile = 0;
    zb_gen_fill_synthetic(&g, ctx, 3);
    int *tok = ids;   /* the decode steps' tokens: one per sequence */
    for (int b = 0; b < B; b++) tok[b] = b + 1;
    /* two untimed steps: first touches, threads awake; a GPU records the step on the second
     * (step_graph) and replays it in the timed ones */
    rc = rc ? rc : zb_gen_step(m, &g, tok, 1);
    rc = rc ? rc : zb_gen_step(m, &g, tok, 1);
    g.profile = breakdown;   /* the timed decode steps only */
    t = zb_now();
    for (int s = 0; s < steps && !rc; s++) {
        rc = zb_gen_step(m, &g, tok, 1);
        if (greedy) memcpy(tok, g.next, sizeof(int) * B);   /* greedy decoding: the picks are the next tokens */
    }
    double dt = zb_now() - t;
    for (int k = 0; k < ZB_PROF_N; k++) r->prof_ms[k] = 1e3 * g.prof[k] / steps;
    part_bytes(m, &g, B, ctx, r->part_bytes);
    r->decode_tps = (double)B * steps / dt;
    /* bytes streamed per decode step: every weight once + each sequence's cache and state */
    double bytes = (double)zb_model_param_bytes(m) +
                   (double)B * ((double)ctx * g.cache_bytes_per_token + g.state_bytes_per_seq);
    r->decode_gbs = bytes * steps / dt / 1e9;
    free(ids);
    zb_gen_free(&g);
    return rc;
}

static void svg_plot(FILE *f, int batch, const int *ctx, int nc, double (*tps)[MAXL], const char **names, int nm) {
    double ymax = 0;
    for (int k = 0; k < nm; k++)
        for (int i = 0; i < nc; i++) if (tps[k][i] > ymax) ymax = tps[k][i];
    const int W = 640, H = 400, L = 70, R = 20, T = 30, Bm = 50;
    const char *col[2] = {"#d62728", "#1f77b4"};
    fprintf(f, "<svg xmlns='http://www.w3.org/2000/svg' width='%d' height='%d' font-family='sans-serif' font-size='12'>\n", W, H);
    fprintf(f, "<rect width='100%%' height='100%%' fill='white'/>\n");
    fprintf(f, "<text x='%d' y='18' font-size='14'>batch-%d decode tokens/s vs context</text>\n", L, batch);
    fprintf(f, "<line x1='%d' y1='%d' x2='%d' y2='%d' stroke='black'/>\n", L, H - Bm, W - R, H - Bm);
    fprintf(f, "<line x1='%d' y1='%d' x2='%d' y2='%d' stroke='black'/>\n", L, T, L, H - Bm);
    for (int i = 0; i < nc; i++) {
        double x = L + (nc > 1 ? (double)i / (nc - 1) : 0.5) * (W - L - R);
        fprintf(f, "<text x='%.0f' y='%d' text-anchor='middle'>%d</text>\n", x, H - Bm + 16, ctx[i]);
    }
    for (int j = 0; j <= 4; j++) {
        double y = H - Bm - j / 4.0 * (H - Bm - T);
        fprintf(f, "<text x='%d' y='%.0f' text-anchor='end'>%.3g</text>\n", L - 4, y + 4, ymax * j / 4.0);
    }
    for (int k = 0; k < nm; k++) {
        fprintf(f, "<polyline fill='none' stroke='%s' stroke-width='2' points='", col[k % 2]);
        for (int i = 0; i < nc; i++) {
            double x = L + (nc > 1 ? (double)i / (nc - 1) : 0.5) * (W - L - R);
            double y = H - Bm - (ymax > 0 ? tps[k][i] / ymax : 0) * (H - Bm - T);
            fprintf(f, "%.1f,%.1f ", x, y);
        }
        fprintf(f, "'/>\n<text x='%d' y='%d' fill='%s'>%s</text>\n", W - R - 150, T + 16 * (k + 1), col[k % 2], names[k]);
    }
    fprintf(f, "<text x='%d' y='%d' text-anchor='middle'>context (tokens)</text>\n</svg>\n", (L + W - R) / 2, H - 10);
}

/* The run's device and its ceilings, above the table. */
static void print_machine(FILE *md, const zb_backend *be, zb_wdtype wt, double gf, double bw, double bw1) {
    int threads = zb_linear_threads();   /* set in main (zb_threads_auto) */
    if (!be->host_memory) {
#ifdef ZB_HAVE_CUDA
        fprintf(md, "weights: %s on %s (products %s, caches %s)\n\n", zb_wdtype_name(wt), zb_cuda_device_name(),
                be->opts.gpu_bf16 ? "bf16 operands" : "float32", be->opts.cache_bf16 ? "bf16" : "float32");
#endif
        fprintf(md, "machine: bf16 matmul %.1f TFLOP/s (cuBLAS 8192^3), device copy %.1f GB/s (read + write)\n\n",
                gf / 1e3, bw);
    } else {
        fprintf(md, "weights: %s (%s, %d OpenMP threads; OpenBLAS %s build, core %s)\n\n", zb_wdtype_name(wt),
                wt == ZB_WEIGHTS_BF16 ? zb_bf16_impl_name(ZB_BF16_AUTO) : "OpenBLAS", threads,
                zb_blas_uses_openmp() ? "OpenMP" : "pthreads", openblas_get_corename());
        fprintf(md, "machine: OpenBLAS sgemm %.1f GFLOP/s (2048^3), read bandwidth %.1f GB/s "
                    "(1 GiB, all threads; one core %.1f GB/s)\n\n", gf, bw, bw1);
    }
}

/* Decode ms per step by part, then the prefill's ms by part (--breakdown). */
static void print_breakdown(FILE *md, bench_row rows[2][MAXL][MAXL], const char *names[2], const int have[2],
                            const int *bat, int nb, const int *ctx, int nc, int pre) {
    fprintf(md, pre ? "\nprefill ms by part (the whole prefill):\n\n| model | batch | context |"
                    : "\ndecode ms per step by part:\n\n| model | batch | context |");
    for (int p = 0; p < ZB_PROF_N; p++) fprintf(md, " %s |", zb_prof_names[p]);
    fprintf(md, " total |\n|---|---|---|");
    for (int p = 0; p <= ZB_PROF_N; p++) fprintf(md, "---|");
    fprintf(md, "\n");
    for (int k = 0; k < 2; k++)
        for (int bi = 0; have[k] && bi < nb; bi++)
            for (int ci = 0; ci < nc; ci++) {
                double tot = 0;
                fprintf(md, "| %s%s | %d | %d |", names[k], pre ? " prefill" : "", bat[bi], ctx[ci]);
                for (int p = 0; p < ZB_PROF_N; p++) {
                    double v = pre ? rows[k][bi][ci].pre_ms[p] : rows[k][bi][ci].prof_ms[p];
                    fprintf(md, " %.2f |", v);
                    tot += v;
                }
                fprintf(md, " %.2f |\n", tot);
            }
    if (pre) return;
    /* what each part reads per second: the bytes it must stream (part_bytes) over its time */
    fprintf(md, "\ndecode GB/s by part (weights and caches read once per step):\n\n| model | batch | context |");
    for (int p = 0; p < ZB_PROF_N; p++) fprintf(md, " %s |", zb_prof_names[p]);
    fprintf(md, "\n|---|---|---|");
    for (int p = 0; p < ZB_PROF_N; p++) fprintf(md, "---|");
    fprintf(md, "\n");
    for (int k = 0; k < 2; k++)
        for (int bi = 0; have[k] && bi < nb; bi++)
            for (int ci = 0; ci < nc; ci++) {
                const bench_row *r = &rows[k][bi][ci];
                fprintf(md, "| %s GB/s | %d | %d |", names[k], bat[bi], ctx[ci]);
                for (int p = 0; p < ZB_PROF_N; p++) {
                    if (r->part_bytes[p] > 0 && r->prof_ms[p] > 0)
                        fprintf(md, " %.0f |", r->part_bytes[p] / (r->prof_ms[p] * 1e-3) / 1e9);
                    else fprintf(md, " |");
                }
                fprintf(md, "\n");
            }
}

int zb_cmd_bench(int argc, char **argv) {
    static const char *const vals[] = {"--teacher", "--hybrid", "--contexts", "--batches",
                                       "--decode-steps", "--prefill-len", "--md", "--svg", "--weights",
                                       "--fit", "--train", "--kd", "--batch", "--seq", "--steps", ZB_DEVICE_ARGS, NULL};
    static const char *const flags[] = {"--breakdown", "--logits", NULL};
    ZB_TRY(zb_args_check(argc, argv, vals, flags, 0));
    if (zb_arg_str(argc, argv, "--train", NULL)) {
        zb_backend tb;
        ZB_TRY(zb_backend_from_args(argc, argv, "bench", ZB_WEIGHTS_F32, &tb));
        return zb_bench_train(argc, argv, &tb);
    }
    const char *paths[2] = {zb_arg_str(argc, argv, "--teacher", NULL), zb_arg_str(argc, argv, "--hybrid", NULL)};
    const char *names[2] = {"teacher", "hybrid"};
    if (!paths[0] && !paths[1]) return zb_fail(ZB_EARG, "bench: give --teacher and/or --hybrid");
    zb_wdtype wt;
    ZB_TRY(zb_wdtype_parse(zb_arg_str(argc, argv, "--weights", "f32"), &wt, "bench: --weights"));
    zb_backend be;
    ZB_TRY(zb_backend_from_args(argc, argv, "bench", wt, &be));   /* the device, the run's decode switches */
    int gpu = !be.host_memory, fit;
    ZB_TRY(zb_arg_int(argc, argv, "--fit", 0, 0, 1 << 24, &fit));   /* a context length */
    int ctx[MAXL], bat[MAXL];
    int nc, nb, steps, plen;
    ZB_TRY(parse_list(zb_arg_str(argc, argv, "--contexts", "1024,4096,8192"), "bench: --contexts", 1, 1 << 24, ctx,
                      MAXL, &nc));
    ZB_TRY(parse_list(zb_arg_str(argc, argv, "--batches", "1"), "bench: --batches", 1, 64, bat, MAXL, &nb));
    ZB_TRY(zb_arg_int(argc, argv, "--decode-steps", 16, 1, 1 << 20, &steps));
    ZB_TRY(zb_arg_int(argc, argv, "--prefill-len", 256, 1, 1 << 24, &plen));
    int breakdown = zb_arg_flag(argc, argv, "--breakdown"), greedy = !zb_arg_flag(argc, argv, "--logits");
    for (int i = 0; i < nc; i++) if (ctx[i] < 1) return zb_fail(ZB_EARG, "bench: contexts must be >= 1");
    for (int i = 0; i < nb; i++) if (bat[i] < 1 || bat[i] > 1024) return zb_fail(ZB_EARG, "bench: batches in [1, 1024]");
    if (steps < 1 || plen < 1) return zb_fail(ZB_EARG, "bench: --decode-steps and --prefill-len must be >= 1");

    double bw1 = 0, gf = 0, bw = 0;
    if (gpu) {   /* GFLOP/s of the bf16 products, device bytes/s */
        double tf;
        zb_bench_gpu_ceilings(&be, &tf, &bw);
        gf = tf * 1e3;
    } else {
        gf = sgemm_gflops(2048);
        bw = read_bandwidth((size_t)1 << 30, &bw1);
    }
    FILE *md = stdout, *mdf = NULL;
    const char *md_path = zb_arg_str(argc, argv, "--md", NULL);
    if (md_path && !(mdf = fopen(md_path, "w"))) return zb_fail(ZB_EIO, "%s: cannot write", md_path);
    if (mdf) md = mdf;
    print_machine(md, &be, wt, gf, bw, bw1);
    fprintf(md, "decode: %s\n\n", greedy ? "greedy (each row's argmax where the logits are, B ids to the host, fed back as the next tokens)"
                                        : "--logits (every row's logits to the host each step, the sampling path)");
    fprintf(md, "| model | params | cache B/token | batch | context | prefill tok/s | prefill %% sgemm | decode tok/s | decode GB/s | decode %% bandwidth |\n");
    fprintf(md, "|---|---|---|---|---|---|---|---|---|---|\n");
    double tps[2][MAXL][MAXL] = {{{0}}};   /* [model][batch][context] decode tok/s */
    static bench_row rows[2][MAXL][MAXL];
    int rc = ZB_OK, have[2] = {0, 0};
    for (int k = 0; k < 2 && !rc; k++) {
        if (!paths[k]) continue;
        zb_model m;
        rc = load_any(&m, paths[k], wt);
        if (rc) break;
        rc = zb_model_set_backend(&m, &be);
        if (rc) { zb_model_free(&m); break; }
        have[k] = 1;
        size_t kvtok = 0;
        zb_cache_sizes(&m.cfg, &kvtok, NULL);
        if (fit > 0) {   /* the largest batch at that context, then the next model */
            int bmax = 0;
            rc = fit_batch(&m, fit, &bmax);
            fprintf(md, "| %s | largest batch at %d tokens of context: %d |\n", names[k], fit, bmax);
            zb_model_free(&m);
            continue;
        }
        for (int bi = 0; bi < nb && !rc; bi++)
            for (int ci = 0; ci < nc && !rc; ci++) {
                bench_row *r = &rows[k][bi][ci];
                rc = bench_model(&m, bat[bi], ctx[ci], steps, plen, breakdown, greedy, r);
                if (rc) break;
                double pf = 2.0 * zb_model_num_params(&m) * r->prefill_tps / 1e9;   /* ~2 flops per weight per token */
                fprintf(md, "| %s | %.3gM | %zu | %d | %d | %.1f | %.0f%% | %.2f | %.2f | %.0f%% |\n",
                        names[k], zb_model_num_params(&m) / 1e6, kvtok * (be.opts.cache_bf16 ? 2 : sizeof(float)),
                        bat[bi], ctx[ci],
                        r->prefill_tps, 100 * pf / gf, r->decode_tps, r->decode_gbs, 100 * r->decode_gbs / bw);
                fflush(md);
                tps[k][bi][ci] = r->decode_tps;
            }
        zb_model_free(&m);
    }
    if (!rc && have[0] && have[1] && fit <= 0)   /* --fit measured no speeds */
        for (int bi = 0; bi < nb; bi++) {
            fprintf(md, "\nhybrid / teacher decode speed-up (batch %d):", bat[bi]);
            for (int i = 0; i < nc; i++)
                fprintf(md, " %d: %.2fx", ctx[i], tps[0][bi][i] > 0 ? tps[1][bi][i] / tps[0][bi][i] : 0);
            fprintf(md, "\n");
        }
    if (!rc && breakdown)   /* where a decode step's time goes, and the prefill's */
        for (int pre = 0; pre < 2; pre++) print_breakdown(md, rows, names, have, bat, nb, ctx, nc, pre);
    if (mdf) fclose(mdf);
    const char *svg = zb_arg_str(argc, argv, "--svg", NULL);
    if (!rc && svg) {
        FILE *f = fopen(svg, "w");
        if (!f) return zb_fail(ZB_EIO, "%s: cannot write", svg);
        double sel[2][MAXL];   /* the first batch size's curve of each model */
        const char *nm[2];
        int n = 0;
        for (int k = 0; k < 2; k++)
            if (have[k]) { memcpy(sel[n], tps[k][0], sizeof sel[n]); nm[n++] = names[k]; }
        svg_plot(f, bat[0], ctx, nc, sel, nm, n);
        fclose(f);
    }
    return rc;
}
