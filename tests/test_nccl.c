/* test_nccl — the GPU communication table (parallel/comm_nccl.h) under mpiexec -n 2 on two
 * GPUs: every entry with device buffers, for the TP, PP and DP groups of a grid, against the
 * values the ranks can compute alone (small integers times small integers: every sum is exact
 * in float32, so the checks are equalities); the pipeline's send / receive in both directions
 * at once (the 1F1B pattern and the tied-embedding exchange) with a message well beyond NCCL's
 * eager size; host buffers through the same table (they go to MPI). Then the all-reduce's bus
 * bandwidth over the TP group (informative, not checked).
 * Skipped (exit 77) with fewer GPUs on the node than ranks.
 * Every rank prints each step as it enters it ("rank R: SECTION: STEP"), and a step that takes
 * longer than ZB_NCCL_TEST_TIMEOUT seconds (default 60) ends the test with a line naming it
 * (exit 124): a hang shows where it is. */
#include <math.h>
#include <mpi.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "comm_nccl.h"
#include "grid.h"
#include "cuda_common.h"
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
        if (L[k].tp == 2) bandwidth(g.comm);
        step(L[k].name, "freeing the communicators");
        zb_grid_free(&g);
    }
    alarm(0);
    return zb_test_finish();
}
