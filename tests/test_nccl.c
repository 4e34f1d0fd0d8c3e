/* test_nccl — the GPU communication table (parallel/comm_nccl.h) under mpiexec -n 2 on two
 * GPUs: every entry with device buffers, for the TP, PP and DP groups of a grid, against the
 * values the ranks can compute alone (small integers times small integers: every sum is exact
 * in float32, so the checks are equalities); the pipeline's send / receive in both directions
 * at once (the 1F1B pattern and the tied-embedding exchange) with a message well beyond NCCL's
 * eager size; host buffers through the same table (they go to MPI). The TP decode's fused sum +
 * residual + RMSNorm through peer memory (zb_comm_sum_add_rmsnorm) against the all-reduce then
 * add_rmsnorm, within bounds derived from the two summation orders, bitwise the same on both
 * ranks, call by call and replayed from a CUDA graph, unless ZB_TP_FUSED=0 (then checked not
 * taken), at shapes of every kind one after the other. Then (informative, not checked) the
 * latency per call of NCCL's all-reduce (with and without add_rmsnorm) and of the peer-memory
 * kernels, 1000 calls recorded in one CUDA graph and replayed, at the decode's sizes, and the
 * all-reduce's bus bandwidth over the TP group.
 * Skipped (exit 77) with fewer GPUs on the node than ranks.
 * Every rank prints each step as it enters it ("rank R: SECTION: STEP"), and a step that takes
 * longer than ZB_NCCL_TEST_TIMEOUT seconds (default 60) ends the test with a line naming it
 * (exit 124): a hang shows where it is. */
#include <math.h>
#include <mpi.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "comm_nccl.h"
#include "grid.h"
#include "cuda_common.h"
#include "cuda_ops.h"
#include "zb_test.h"

/* a failing call: its message, and the test stops (the other rank is stopped by mpiexec) */
#define OK(expr) do { int rc_ = (expr); if (rc_) { fprintf(stderr, "FAIL %s: %s\n", #expr, zb_errmsg()); \
    MPI_Abort(MPI_COMM_WORLD, 1); } } while (0)

static float *zb_falloc(size_t n) {
    float *p = malloc(sizeof(float) * (n ? n : 1));
    if (!p) { fprintf(stderr, "out of memory\n"); MPI_Abort(MPI_COMM_WORLD, 1); }
    return p;
}

static float *zb_dev_f(const float *h, size_t n) {
    void *d = NULL;
    OK(zb_cuda_alloc(&d, n * sizeof(float), "test buffer"));
    if (h) OK(zb_cuda_upload(d, h, n * sizeof(float)));
    return d;
}

static void zb_host_f(float *h, const float *d, size_t n) { OK(zb_cuda_download(h, d, n * sizeof(float))); }

static int R, W;   /* world rank and size */

/* ---- where the test is, and a watchdog per step ------------------------------------------ */
static char where_now[160] = "start";
static unsigned step_limit = 60;

static void on_alarm(int sig) {
    (void)sig;
    char msg[256];
    int n = snprintf(msg, sizeof msg, "TIMEOUT rank %d: no progress for %u s in '%s'\n", R, step_limit, where_now);
    if (n > 0) { ssize_t w = write(2, msg, (size_t)n); (void)w; }
    _exit(124);
}

/* entering a step: say so (flushed, so a hang's last line names it) and rearm the watchdog */
static void step(const char *section, const char *what) {
    snprintf(where_now, sizeof where_now, "%s: %s", section, what);
    printf("rank %d: %s\n", R, where_now);
    fflush(stdout);
    alarm(step_limit);
}

/* rank r's value at i: exact in float32 and in every sum below */
static float val(int r, size_t i) { return (float)((r + 1) * (int)(i % 7 + 1)); }

static float *host_of(const float *d, size_t n) {
    float *h = zb_falloc(n);
    zb_host_f(h, d, n);
    return h;
}

static int all_equal(const char *what, const float *got, const float *want, size_t n) {
    size_t bad = 0, first = n;
    for (size_t i = 0; i < n; i++)
        if (got[i] != want[i]) { if (!bad) first = i; bad++; }
    if (bad) printf("  %s: %zu wrong, first at %zu: %g vs %g\n", what, bad, first, got[first], want[first]);
    return zb_check(bad == 0, "rank %d: %s (%zu values)", R, what, n);
}

static void collectives(zb_comm *c, zb_group g, const char *name) {
    int r = zb_comm_rank(c, g), S = zb_comm_size(c, g);
    const size_t n = 1000003;   /* odd: no part of it is a multiple of anything */
    float *h = zb_falloc(n * S), *want = zb_falloc(n * S);
    char what[128];
    /* all-reduce sum and max, in place */
    step(name, "all-reduce sum");
    for (size_t i = 0; i < n; i++) h[i] = val(r, i);
    float *d = zb_dev_f(h, n);
    OK(zb_comm_sum_f32(c, g, d, n));
    for (size_t i = 0; i < n; i++) { want[i] = 0; for (int q = 0; q < S; q++) want[i] += val(q, i); }
    float *got = host_of(d, n);
    snprintf(what, sizeof what, "%s all-reduce sum", name);
    all_equal(what, got, want, n);
    free(got);
    OK(zb_cuda_upload(d, h, n * sizeof(float)));
    step(name, "all-reduce max");
    OK(zb_comm_allreduce(c, g, d, n, ZB_CT_F32, ZB_RED_MAX));
    for (size_t i = 0; i < n; i++) want[i] = val(S - 1, i);
    got = host_of(d, n);
    snprintf(what, sizeof what, "%s all-reduce max", name);
    all_equal(what, got, want, n);
    free(got);
    /* non-blocking all-reduce (the gradient buckets' side stream), then the compute stream reads */
    OK(zb_cuda_upload(d, h, n * sizeof(float)));
    zb_comm_req q;
    step(name, "non-blocking all-reduce");
    OK(zb_comm_iallreduce(c, g, d, n, ZB_CT_F32, ZB_RED_SUM, &q));
    OK(zb_comm_wait(c, &q));
    for (size_t i = 0; i < n; i++) { want[i] = 0; for (int p = 0; p < S; p++) want[i] += val(p, i); }
    got = host_of(d, n);
    snprintf(what, sizeof what, "%s non-blocking all-reduce", name);
    all_equal(what, got, want, n);
    free(got);
    /* broadcast from the last rank */
    OK(zb_cuda_upload(d, h, n * sizeof(float)));
    step(name, "broadcast");
    OK(zb_comm_bcast(c, g, d, n, ZB_CT_F32, S - 1));
    for (size_t i = 0; i < n; i++) want[i] = val(S - 1, i);
    got = host_of(d, n);
    snprintf(what, sizeof what, "%s broadcast", name);
    all_equal(what, got, want, n);
    free(got);
    /* all-gather */
    float *out = zb_dev_f(NULL, n * S);
    step(name, "all-gather");
    OK(zb_comm_allgather(c, g, d, n, out, ZB_CT_F32));   /* d holds val(S-1) everywhere now */
    OK(zb_cuda_upload(d, h, n * sizeof(float)));
    OK(zb_comm_allgather(c, g, d, n, out, ZB_CT_F32));
    for (int p = 0; p < S; p++) for (size_t i = 0; i < n; i++) want[p * n + i] = val(p, i);
    got = host_of(out, n * S);
    snprintf(what, sizeof what, "%s all-gather", name);
    all_equal(what, got, want, n * S);
    free(got);
    /* uneven parts: all-gatherv in place and reduce-scatter (ZeRO-1's ranges) */
    size_t counts[8], displs[8], tot = 0;
    for (int p = 0; p < S; p++) { counts[p] = n / S + (p == 0 ? 5 : 0); displs[p] = tot; tot += counts[p]; }
    for (size_t i = 0; i < tot; i++) h[i] = val(r, i);
    float *x = zb_dev_f(h, tot);
    for (int p = 0; p < S; p++)
        for (size_t i = 0; i < counts[p]; i++) want[displs[p] + i] = val(p, displs[p] + i);
    /* each rank's own part is val(r); the others' parts are overwritten by the call */
    step(name, "all-gatherv in place");
    OK(zb_comm_allgatherv_inplace(c, g, x, counts, displs, ZB_CT_F32));
    got = host_of(x, tot);
    snprintf(what, sizeof what, "%s all-gatherv in place (uneven)", name);
    all_equal(what, got, want, tot);
    free(got);
    OK(zb_cuda_upload(x, h, tot * sizeof(float)));
    float *part = zb_dev_f(NULL, counts[0]);
    step(name, "reduce-scatter (uneven)");
    OK(zb_comm_reduce_scatter(c, g, x, part, counts, ZB_CT_F32));
    for (size_t i = 0; i < counts[r]; i++) {
        want[i] = 0;
        for (int p = 0; p < S; p++) want[i] += val(p, displs[r] + i);
    }
    got = host_of(part, counts[r]);
    snprintf(what, sizeof what, "%s reduce-scatter (uneven)", name);
    all_equal(what, got, want, counts[r]);
    free(got);
    size_t eq[8];
    for (int p = 0; p < S; p++) eq[p] = n / S;
    step(name, "reduce-scatter (even)");
    OK(zb_comm_reduce_scatter(c, g, x, part, eq, ZB_CT_F32));
    for (size_t i = 0; i < eq[r]; i++) {
        want[i] = 0;
        for (int p = 0; p < S; p++) want[i] += val(p, (size_t)r * eq[r] + i);
    }
    got = host_of(part, eq[r]);
    snprintf(what, sizeof what, "%s reduce-scatter (even)", name);
    all_equal(what, got, want, eq[r]);
    free(got);
    /* gather to rank 0 */
    step(name, "gather");
    OK(zb_cuda_upload(d, h, n * sizeof(float)));
    OK(zb_comm_gather(c, g, d, n, out, ZB_CT_F32, 0));
    if (r == 0) {
        for (int p = 0; p < S; p++) for (size_t i = 0; i < n; i++) want[p * n + i] = val(p, i);
        got = host_of(out, n * S);
        snprintf(what, sizeof what, "%s gather", name);
        all_equal(what, got, want, n * S);
        free(got);
    }
    /* host buffers go through MPI on the same table */
    double hs[3] = {r + 1.0, 2.0 * (r + 1), 0.5};
    step(name, "host all-reduce (MPI)");
    OK(zb_comm_sum_f64(c, g, hs, 3));
    zb_check(hs[0] == S * (S + 1) / 2.0 && hs[2] == 0.5 * S, "rank %d: %s host all-reduce (MPI)", R, name);
    zb_cuda_free(d); zb_cuda_free(out); zb_cuda_free(x); zb_cuda_free(part);
    free(h); free(want);
}

/* Stage 0 and 1 send to each other at once (isend then recv), twice, then a 1F1B-like order:
 * 0 sends two activations before it receives the first gradient. */
static void point_to_point(zb_comm *c) {
    int s = zb_comm_rank(c, ZB_GROUP_PP), peer = 1 - s;
    const size_t n = 8u << 20;   /* 32 MB: far beyond the eager size */
    float *h = zb_falloc(n), *want = zb_falloc(n);
    for (size_t i = 0; i < n; i++) { h[i] = val(s, i); want[i] = val(peer, i); }
    float *mine = zb_dev_f(h, n), *in = zb_dev_f(NULL, n);
    for (int k = 0; k < 2; k++) {
        zb_comm_req q;
        step("PP", k ? "exchange again" : "exchange: isend + recv both ways (32 MB)");
        OK(zb_comm_isend(c, ZB_GROUP_PP, mine, n, ZB_CT_F32, peer, 73, &q));
        OK(zb_comm_recv(c, ZB_GROUP_PP, in, n, ZB_CT_F32, peer, 73));
        OK(zb_comm_wait(c, &q));
        float *got = host_of(in, n);
        all_equal(k ? "PP exchange (again)" : "PP exchange: isend + recv both ways", got, want, n);
        free(got);
    }
    /* 1F1B order: stage 0: isend a0, isend a1, recv g0, recv g1; stage 1: recv a0, isend g0,
     * recv a1, isend g1 */
    float *a2 = zb_dev_f(h, n), *g2 = zb_dev_f(NULL, n);
    zb_comm_req q1, q2;
    step("PP", "1F1B order (32 MB messages)");
    if (s == 0) {
        OK(zb_comm_isend(c, ZB_GROUP_PP, mine, n, ZB_CT_F32, 1, 71, &q1));
        OK(zb_comm_isend(c, ZB_GROUP_PP, a2, n, ZB_CT_F32, 1, 71, &q2));
        OK(zb_comm_recv(c, ZB_GROUP_PP, in, n, ZB_CT_F32, 1, 72));
        OK(zb_comm_recv(c, ZB_GROUP_PP, g2, n, ZB_CT_F32, 1, 72));
    } else {
        OK(zb_comm_recv(c, ZB_GROUP_PP, in, n, ZB_CT_F32, 0, 71));
        OK(zb_comm_isend(c, ZB_GROUP_PP, mine, n, ZB_CT_F32, 0, 72, &q1));
        OK(zb_comm_recv(c, ZB_GROUP_PP, g2, n, ZB_CT_F32, 0, 71));
        OK(zb_comm_isend(c, ZB_GROUP_PP, a2, n, ZB_CT_F32, 0, 72, &q2));
    }
    OK(zb_comm_wait(c, &q1));
    OK(zb_comm_wait(c, &q2));
    float *g1 = host_of(in, n), *g2h = host_of(g2, n);
    all_equal("PP 1F1B order: first message", g1, want, n);
    all_equal("PP 1F1B order: second message", g2h, want, n);
    free(g1); free(g2h);
    /* blocking send, one way */
    step("PP", "blocking send");
    if (s == 0) OK(zb_comm_send(c, ZB_GROUP_PP, mine, n, ZB_CT_F32, 1, 74));
    else {
        OK(zb_comm_recv(c, ZB_GROUP_PP, in, n, ZB_CT_F32, 0, 74));
        float *got = host_of(in, n);
        all_equal("PP blocking send", got, want, n);
        free(got);
    }
    zb_cuda_free(mine); zb_cuda_free(in); zb_cuda_free(a2); zb_cuda_free(g2);
    free(h); free(want);
}

/* The small sums of a TP decode step (d_model floats per token; ZB_TP_ALLREDUCE=p2p sends
 * these through peer memory, cuda_common.h, alternating two slots): several sizes, each repeated
 * with new values, exact against the host's sum; then the time of one 16 KB all-reduce. */
static void small_sums(zb_comm *c) {
    int r = zb_comm_rank(c, ZB_GROUP_TP), S = zb_comm_size(c, ZB_GROUP_TP);
    size_t sizes[] = {1, 4096, 32771, 65536};
    for (int k = 0; k < 4; k++) {
        size_t n = sizes[k];
        float *h = zb_falloc(n), *want = zb_falloc(n);
        for (int rep = 0; rep < 3; rep++) {
            char what[128];
            step("TP", "small all-reduce sum");
            for (size_t i = 0; i < n; i++) h[i] = val(r, i + (size_t)rep) * (float)(rep + 1);
            for (size_t i = 0; i < n; i++) { want[i] = 0; for (int q = 0; q < S; q++) want[i] += val(q, i + (size_t)rep) * (float)(rep + 1); }
            float *d = zb_dev_f(h, n);
            OK(zb_comm_sum_f32(c, ZB_GROUP_TP, d, n));
            float *got = host_of(d, n);
            snprintf(what, sizeof what, "TP small all-reduce sum, %zu floats, call %d", n, rep + 1);
            all_equal(what, got, want, n);
            free(got);
            zb_cuda_free(d);
        }
        free(h); free(want);
    }
    float *d = zb_dev_f(NULL, 4096);
    step("TP", "small all-reduce time");
    for (int it = 0; it < 10; it++) zb_comm_sum_f32(c, ZB_GROUP_TP, d, 4096);
    zb_cuda_sync();
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    for (int it = 0; it < 200; it++) zb_comm_sum_f32(c, ZB_GROUP_TP, d, 4096);
    zb_cuda_sync();
    double t = (MPI_Wtime() - t0) / 200;
    if (R == 0) printf("  allreduce %10.0f B  %9.1f us (calls queued back to back, %s)\n", 16384.0, t * 1e6,
                       getenv("ZB_TP_ALLREDUCE") ? getenv("ZB_TP_ALLREDUCE") : "nccl");
    zb_cuda_free(d);
}

/* ---- the fused TP decode sum + residual + norm (comm.h zb_comm_sum_add_rmsnorm) ---------- */

/* a value in (-1, 1) from a counter: rounding errors show, unlike the exact integers above */
static float noise(uint64_t k) {
    k = (k + 0x9E3779B97F4A7C15ull) * 0xBF58476D1CE4E5B9ull;
    k ^= k >> 31;
    k *= 0x94D049BB133111EBull;
    k ^= k >> 29;
    return (float)((double)(k >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

typedef struct {
    int N, C, residual, call;
    float *part, *x, *out, *w;           /* device: the fused call's buffers */
    float *rpart, *rx, *rout;            /* device: the reference's (all-reduce, then add_rmsnorm) */
    float *hpart, *hx, *hw;              /* host: this call's inputs */
} fcase;

/* rank r's part at i of call `call`, |p| < S */
static float fpart(int call, int r, int S, size_t i) { return noise(((uint64_t)call << 40) + ((uint64_t)r << 32) + i) * (float)S; }

/* this call's inputs; without a residual x holds this rank's part (the call is in place) */
static void fcase_fill(fcase *f, int r, int S, int call) {
    size_t n = (size_t)f->N * f->C;
    f->call = call;
    for (size_t i = 0; i < n; i++) {
        f->hpart[i] = fpart(call, r, S, i);
        f->hx[i] = f->residual ? noise(((uint64_t)call << 40) + (0xFFull << 32) + i) : f->hpart[i];   /* the same on every rank */
    }
    for (int i = 0; i < f->C; i++) f->hw[i] = 0.5f + noise((0xFEull << 32) + (uint64_t)i);
    OK(zb_cuda_upload(f->part, f->hpart, n * sizeof(float)));
    OK(zb_cuda_upload(f->rpart, f->hpart, n * sizeof(float)));
    OK(zb_cuda_upload(f->x, f->hx, n * sizeof(float)));
    OK(zb_cuda_upload(f->rx, f->hx, n * sizeof(float)));
    OK(zb_cuda_upload(f->w, f->hw, f->C * sizeof(float)));
}

/* the reference: the all-reduce of the table (NCCL), then the backend's add_rmsnorm / rmsnorm */
static void fcase_ref(zb_comm *c, fcase *f) {
    if (f->residual) {
        OK(zb_comm_sum_f32(c, ZB_GROUP_TP, f->rpart, (size_t)f->N * f->C));
        zb_cuda_add_rmsnorm(f->rx, f->rpart, f->rout, f->w, f->N, f->C, 1e-5f);
    } else {
        OK(zb_comm_sum_f32(c, ZB_GROUP_TP, f->rx, (size_t)f->N * f->C));
        zb_cuda_rmsnorm_forward(f->rout, NULL, f->rx, f->w, f->N, f->C, 1e-5f);
    }
}

/* The fused call's x and out against the reference, within bounds derived from the two
 * computations' orders. x_i = x0_i + sum_r p_ri is S float32 additions in some order on each
 * side, each within S u m_i of the exact value (m_i = |x0_i| + sum_r |p_ri|, u = 2^-24, first
 * order), so |dx_i| <= 2 S u m_i. out_i = w_i x_i rho, rho = 1 / sqrt(mean x^2 + eps) (summed in
 * double, rounded once), then two products: each side is within 3u of w_i x_i rho(x) of its own
 * x, and rho moves by at most |dx|_2 / |x|_2 relatively (eps only damps it), so
 * |dout_i| <= |w_i| rho (|dx_i| + |x_i| |dx|_2 / |x|_2) + 6u |w_i x_i| rho. Two ranks add
 * a + b in either order to the same float: the bits should then agree (printed). */
static void fcase_check(fcase *f, int S, const char *what) {
    size_t n = (size_t)f->N * f->C;
    float *x = host_of(f->x, n), *out = host_of(f->out, n), *rx = host_of(f->rx, n), *rout = host_of(f->rout, n);
    float *bx = zb_falloc(n), *bout = zb_falloc(n);
    const double u = 1.0 / 16777216.0;
    int same = 1;
    for (int row = 0; row < f->N; row++) {
        double nx = 0, ndx = 0;
        for (int i = 0; i < f->C; i++) {
            size_t k = (size_t)row * f->C + i;
            double m = f->residual ? fabs((double)f->hx[k]) : 0;
            for (int q = 0; q < S; q++) m += fabs((double)fpart(f->call, q, S, k));
            bx[k] = (float)(2.0 * S * u * m);
            nx += (double)rx[k] * rx[k];
            ndx += (double)bx[k] * bx[k];
        }
        double rho = 1.0 / sqrt(nx / f->C + 1e-5), rel = sqrt(ndx) / sqrt(nx);
        for (int i = 0; i < f->C; i++) {
            size_t k = (size_t)row * f->C + i;
            double wx = fabs((double)f->hw[i] * rx[k]) * rho;
            bout[k] = (float)(fabs((double)f->hw[i]) * rho * (bx[k] + fabs((double)rx[k]) * rel) + 6 * u * wx);
            same &= x[k] == rx[k] && out[k] == rout[k];
        }
    }
    char w1[200], w2[200];
    snprintf(w1, sizeof w1, "rank %d: fused %s: x against all-reduce + add_rmsnorm", R, what);
    snprintf(w2, sizeof w2, "rank %d: fused %s: normed out against all-reduce + add_rmsnorm", R, what);
    zb_check_elem_bound(w1, x, rx, bx, n, 1.0);
    zb_check_elem_bound(w2, out, rout, bout, n, 1.0);
    printf("  rank %d: fused %s: %s the reference's bits\n", R, what, same ? "has" : "differs from");
    /* the ranks' x and out are the same bits (the next layer runs on each rank's own copy) */
    float *o = zb_falloc(2 * n * W), *mine = zb_falloc(2 * n);
    memcpy(mine, x, n * sizeof(float));
    memcpy(mine + n, out, n * sizeof(float));
    MPI_Allgather(mine, (int)(2 * n), MPI_FLOAT, o, (int)(2 * n), MPI_FLOAT, MPI_COMM_WORLD);
    size_t diff = 0;
    for (int q = 1; q < W; q++)
        for (size_t k = 0; k < 2 * n; k++) diff += memcmp(&o[k], &o[(size_t)q * 2 * n + k], sizeof(float)) != 0;
    zb_check(diff == 0, "rank %d: fused %s: x and out bitwise identical on every rank (%zu differ)", R, what, diff);
    free(o); free(mine); free(x); free(out); free(rx); free(rout); free(bx); free(bout);
}

static void fused_sums(zb_comm *c) {
    int r = zb_comm_rank(c, ZB_GROUP_TP), S = zb_comm_size(c, ZB_GROUP_TP);
    const char *off = getenv("ZB_TP_FUSED");
    int want = !(off && !strcmp(off, "0"));   /* on unless ZB_TP_FUSED=0 */
    /* every shape after every other (the kernels share one call count; odd rows pad their last line) */
    struct { int N, C, residual; } shapes[] = {{1, 4096, 1}, {8, 4096, 1}, {3, 4096, 1}, {1, 4096, 0}, {5, 4096, 0},
                                               {2, 1000, 1}, {3, 1000, 1}, {5, 77, 0}, {1, 4097, 1}, {7, 2048, 1}};
    enum { NS = sizeof shapes / sizeof shapes[0] };
    fcase F[NS];
    for (int k = 0; k < NS; k++) {
        fcase *f = &F[k];
        f->N = shapes[k].N; f->C = shapes[k].C; f->residual = shapes[k].residual;
        size_t n = (size_t)f->N * f->C;
        f->part = zb_dev_f(NULL, n); f->x = zb_dev_f(NULL, n); f->out = zb_dev_f(NULL, n); f->w = zb_dev_f(NULL, f->C);
        f->rpart = zb_dev_f(NULL, n); f->rx = zb_dev_f(NULL, n); f->rout = zb_dev_f(NULL, n);
        f->hpart = zb_falloc(n); f->hx = zb_falloc(n); f->hw = zb_falloc(f->C);
    }
    char what[160];
    /* call by call, each shape three times (the two slots alternate, the counters advance) */
    for (int rep = 0; rep < 3; rep++)
        for (int k = 0; k < NS; k++) {
            fcase *f = &F[k];
            step("TP", "fused sum + residual + norm");
            fcase_fill(f, r, S, rep * NS + k);
            fcase_ref(c, f);
            int done = 0;
            OK(zb_comm_sum_add_rmsnorm(c, ZB_GROUP_TP, f->residual ? f->part : f->x, f->x, f->out, f->w, f->N, f->C,
                                       1e-5f, f->residual, &done));
            if (rep == 0)
                zb_check(done == want, "rank %d: the fused call of %d x %d %s (ZB_TP_FUSED %s)", R, f->N, f->C,
                         want ? "taken" : "not taken", off ? off : "unset");
            if (!done) continue;
            snprintf(what, sizeof what, "%d x %d%s, call %d", f->N, f->C, f->residual ? "" : " (no residual)", rep + 1);
            fcase_check(f, S, what);
        }
    /* recorded in a CUDA graph and replayed with new inputs: the device-side counters advance */
    fcase *f = &F[1];
    void *g = NULL;
    step("TP", "fused call in a CUDA graph");
    fcase_fill(f, r, S, 100);
    int rec = zb_cuda_graph_begin(&g, 1);
    int done = 0;
    if (rec) {
        OK(zb_comm_sum_add_rmsnorm(c, ZB_GROUP_TP, f->part, f->x, f->out, f->w, f->N, f->C, 1e-5f, 1, &done));
        rec = zb_cuda_graph_end(g, 0);
    }
    int all = 0;
    MPI_Allreduce(&rec, &all, 1, MPI_INT, MPI_LAND, MPI_COMM_WORLD);
    if (want) zb_check(all && done, "rank %d: the fused call recorded in a CUDA graph", R);
    if (all && done)
        for (int rep = 0; rep < 3; rep++) {
            step("TP", "fused call: graph replay");
            fcase_fill(f, r, S, 101 + rep);
            fcase_ref(c, f);
            zb_check(zb_cuda_graph_replay(g, 1), "rank %d: graph replayed", R);
            snprintf(what, sizeof what, "8 x 4096 replayed from a graph, replay %d", rep + 1);
            fcase_check(f, S, what);
        }
    zb_cuda_graph_free(g);
    for (int k = 0; k < NS; k++) {
        fcase *q = &F[k];
        zb_cuda_free(q->part); zb_cuda_free(q->x); zb_cuda_free(q->out); zb_cuda_free(q->w);
        zb_cuda_free(q->rpart); zb_cuda_free(q->rx); zb_cuda_free(q->rout);
        free(q->hpart); free(q->hx); free(q->hw);
    }
}

/* The number that decides the TP decode's sum (docs/SCALING.md): the latency per call of
 *   nccl            the table's all-reduce (NCCL; the peer kernel under ZB_TP_ALLREDUCE=p2p)
 *   nccl+addnorm    the same, then add_rmsnorm (the TP decode's pair with ZB_TP_FUSED=0)
 *   p2p             the peer-memory all-reduce (cuda_common.h), on a buffer of this test's own
 *   p2p fused       the peer-memory sum + residual + RMSNorm in one kernel
 * for N rows of 4096 floats (a decode step's d_model at batch 1 and 8), CALLS calls recorded in
 * one CUDA graph (as a decode step holds its 65), replayed 5 times after 2 warm-ups; the slower
 * rank's time. Inputs are zeros (the sums stay finite however often they repeat). */
#define LAT_CALLS 1000
static void latency(zb_comm *c) {
    int r = zb_comm_rank(c, ZB_GROUP_TP), S = zb_comm_size(c, ZB_GROUP_TP), all = 0, ok;
    size_t hb = zb_cuda_p2p_handle_bytes();
    char *mine = calloc(1, hb), *hs = calloc((size_t)S, hb);
    zb_cuda_p2p *p = NULL;
    step("TP", "latency: peer buffers");
    ok = zb_cuda_p2p_new(&p, r, S, 65536, mine) == ZB_OK;
    MPI_Allgather(mine, (int)hb, MPI_BYTE, hs, (int)hb, MPI_BYTE, MPI_COMM_WORLD);
    MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_LAND, MPI_COMM_WORLD);
    if (all) ok = zb_cuda_p2p_open(p, hs) == ZB_OK;
    MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_LAND, MPI_COMM_WORLD);
    if (!all) {
        if (R == 0) printf("  (peer memory could not be set up: %s)\n", ok ? "on another rank" : zb_errmsg());
        zb_cuda_p2p_free(p);
        p = NULL;
    }
    const char *ar = getenv("ZB_TP_ALLREDUCE");
    static const char *names[4] = {"nccl", "nccl+addnorm", "p2p", "p2p fused"};
    if (R == 0) printf("latency per call over %d GPUs (%d calls in one CUDA graph; table all-reduce: %s)\n", S, LAT_CALLS,
                       ar && !strcmp(ar, "p2p") ? "peer memory" : "nccl");
    for (int k = 0; k < 2; k++) {
        int N = k ? 8 : 1, C = 4096;
        size_t n = (size_t)N * C;
        float *zeros = calloc(n, sizeof(float));
        float *part = zb_dev_f(zeros, n), *x = zb_dev_f(zeros, n), *out = zb_dev_f(zeros, n), *w = zb_dev_f(zeros, C);
        for (int v = 0; v < 4; v++) {
            if (v >= 2 && !p) break;
            char what[96];
            snprintf(what, sizeof what, "latency: %s, %d x %d", names[v], N, C);
            step("TP", what);
            void *g = NULL;
            int rec = zb_cuda_graph_begin(&g, 3 + v), done = 1;
            for (int it = 0; rec && it < LAT_CALLS; it++) {
                if (v == 0 || v == 1) OK(zb_comm_sum_f32(c, ZB_GROUP_TP, part, n));
                if (v == 1) zb_cuda_add_rmsnorm(x, part, out, w, N, C, 1e-5f);
                if (v == 2) zb_cuda_p2p_allreduce(p, part, n);
                if (v == 3) done &= zb_cuda_p2p_add_rmsnorm(p, part, x, out, w, N, C, 1e-5f, 1);
            }
            if (rec) rec = zb_cuda_graph_end(g, 0) && done;
            MPI_Allreduce(&rec, &all, 1, MPI_INT, MPI_LAND, MPI_COMM_WORLD);
            if (all) {
                for (int it = 0; it < 2; it++) zb_cuda_graph_replay(g, 3 + v);
                zb_cuda_sync();
                MPI_Barrier(MPI_COMM_WORLD);
                double t0 = MPI_Wtime(), t, tmax;
                for (int it = 0; it < 5; it++) zb_cuda_graph_replay(g, 3 + v);
                zb_cuda_sync();
                t = (MPI_Wtime() - t0) / (5.0 * LAT_CALLS);
                MPI_Allreduce(&t, &tmax, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
                zb_check(zb_cuda_sync() == ZB_OK, "rank %d: %s replayed without a device error", R, what);
                if (R == 0) printf("  %-13s %d x %d f32 (%6.0f B)  %8.2f us per call\n", names[v], N, C, 4.0 * n, tmax * 1e6);
            } else if (R == 0) printf("  %-13s %d x %d: the graph could not be recorded\n", names[v], N, C);
            zb_cuda_graph_free(g);
        }
        zb_cuda_free(part); zb_cuda_free(x); zb_cuda_free(out); zb_cuda_free(w);
        free(zeros);
    }
    zb_cuda_p2p_free(p);
    free(mine); free(hs);
}

/* bus bandwidth of the TP all-reduce (nccl-tests' definition: algbw * 2 (n-1) / n) */
static void bandwidth(zb_comm *c) {
    int S = zb_comm_size(c, ZB_GROUP_TP);
    size_t sizes[] = {1u << 16, 1u << 20, 1u << 24, 1u << 26};   /* floats: 256 KB .. 256 MB */
    if (R == 0) printf("all-reduce over %d GPUs (f32): bytes, time, algbw, busbw\n", S);
    for (int k = 0; k < 4; k++) {
        size_t n = sizes[k];
        float *d = zb_dev_f(NULL, n);
        step("TP", "bandwidth");
        for (int it = 0; it < 3; it++) zb_comm_sum_f32(c, ZB_GROUP_TP, d, n);
        zb_cuda_sync();
        MPI_Barrier(MPI_COMM_WORLD);
        int iters = n >= (1u << 24) ? 10 : 50;
        double t0 = MPI_Wtime();
        for (int it = 0; it < iters; it++) zb_comm_sum_f32(c, ZB_GROUP_TP, d, n);
        zb_cuda_sync();
        double t = (MPI_Wtime() - t0) / iters, bytes = 4.0 * n, alg = bytes / t / 1e9;
        if (R == 0)
            printf("  allreduce %10.0f B  %9.1f us  algbw %7.1f GB/s  busbw %7.1f GB/s\n", bytes, t * 1e6, alg,
                   alg * 2.0 * (S - 1) / S);
        zb_cuda_free(d);
    }
}

int main(int argc, char **argv) {
    zb_test_init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &R);
    MPI_Comm_size(MPI_COMM_WORLD, &W);
    char why[256];
    int ngpu = zb_cuda_device_count(why, sizeof why);
    MPI_Comm node;
    int local = 1;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, R, MPI_INFO_NULL, &node);
    MPI_Comm_size(node, &local);
    MPI_Comm_free(&node);
    if (W != 2 || ngpu < local || ngpu < 1) {
        if (R == 0) printf("SKIP: needs 2 ranks with a GPU each (%d ranks, %d on this node, %d GPUs%s%s)\n", W, local, ngpu,
                           ngpu ? "" : ": ", ngpu ? "" : why);
        MPI_Finalize();
        return 77;
    }
    const char *no, *lim = getenv("ZB_NCCL_TEST_TIMEOUT");
    if (lim && atoi(lim) > 0) step_limit = (unsigned)atoi(lim);
    signal(SIGALRM, on_alarm);
    if (R == 0) printf("NCCL: %s\n", zb_comm_nccl_available(&no) ? "yes" : no);
    struct { int tp, pp; zb_group g; const char *name; } L[3] = {
        {2, 1, ZB_GROUP_TP, "TP"}, {1, 2, ZB_GROUP_PP, "PP"}, {1, 1, ZB_GROUP_DP, "DP"}};
    for (int k = 0; k < 3; k++) {
        zb_grid g;
        step(L[k].name, "grid and communicators");
        OK(zb_grid_init_gpu(&g, MPI_COMM_WORLD, L[k].tp, L[k].pp));
        char buf[160];
        if (R == 0) printf("%s\n", zb_grid_describe(&g, buf, sizeof buf));
        collectives(g.comm, L[k].g, L[k].name);
        if (L[k].pp == 2) point_to_point(g.comm);
        if (L[k].tp == 2) small_sums(g.comm);
        if (L[k].tp == 2) fused_sums(g.comm);
        if (L[k].tp == 2) latency(g.comm);
        if (L[k].tp == 2) bandwidth(g.comm);
        step(L[k].name, "freeing the communicators");
        zb_grid_free(&g);
    }
    alarm(0);
    return zb_test_finish();
}
