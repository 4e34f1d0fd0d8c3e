/* bench_linear — the bf16 linear kernel (core/cpu/linear.c zb_linear_bf16) alone, at the shapes of
 * the 1B models' decode (MLP up/gate 2048 -> 8192, down 8192 -> 2048, the head 2048 -> 128256)
 * for N = 1..64 inputs (the batch of a decode step), beside OpenBLAS sgemm on the same product
 * in f32. GFLOP/s = 2 N C OC / time; GB/s = the bf16 weight bytes / time (what bounds N = 1).
 * Usage: bench_linear [N list, default 1,2,4,8,16,32,64] */
#include <cblas.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "linear.h"
#include "zb_common.h"

static double best_of(int reps, void (*fn)(void *), void *arg) {
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t = zb_now();
        fn(arg);
        t = zb_now() - t;
        if (r && t < best) best = t;   /* the first run warms the caches and the threads */
    }
    return best;
}

typedef struct { float *out; const float *x; const uint16_t *wb; const float *wf; int N, C, OC; } job;
static void run_bf16(void *p) { job *j = p; zb_linear_bf16(j->out, j->x, j->wb, j->N, j->C, j->OC, ZB_BF16_AUTO); }
static void run_sgemm(void *p) {
    job *j = p;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, j->N, j->OC, j->C, 1.0f, j->x, j->C, j->wf, j->C, 0.0f,
                j->out, j->OC);
}

int main(int argc, char **argv) {
    int Ns[16] = {1, 2, 4, 8, 16, 32, 64}, nN = 7;
    if (argc > 1) {
        nN = 0;
        for (char *s = argv[1]; s && *s && nN < 16; s = strchr(s, ',') ? strchr(s, ',') + 1 : NULL) Ns[nN++] = atoi(s);
    }
    static const struct { const char *name; int C, OC; } shapes[3] = {
        {"mlp up/gate 2048->8192", 2048, 8192}, {"mlp down 8192->2048", 8192, 2048}, {"head 2048->128256", 2048, 128256}};
    printf("bf16 kernel: %s, %d threads\n", zb_bf16_impl_name(ZB_BF16_AUTO), zb_linear_threads());
    printf("| shape | N | bf16 ms | bf16 GFLOP/s | bf16 weight GB/s | sgemm f32 ms | sgemm GFLOP/s |\n|---|---|---|---|---|---|---|\n");
    for (int s = 0; s < 3; s++) {
        int C = shapes[s].C, OC = shapes[s].OC;
        size_t nw = (size_t)C * OC;
        uint16_t *wb = malloc(nw * sizeof(uint16_t));
        float *wf = malloc(nw * sizeof(float)), *x = malloc(sizeof(float) * 64 * C), *out = malloc(sizeof(float) * 64 * OC);
        if (!wb || !wf || !x || !out) { fprintf(stderr, "bench_linear: out of memory\n"); return 1; }
        for (size_t i = 0; i < nw; i++) { wf[i] = 0.02f * (float)((i * 2654435761u) % 1000) / 1000.0f - 0.01f; }
        zb_f32_to_bf16_n(wf, wb, nw);
        for (int i = 0; i < 64 * C; i++) x[i] = 0.01f * (float)(i % 97) - 0.5f;
        for (int k = 0; k < nN; k++) {
            job j = {out, x, wb, wf, Ns[k], C, OC};
            double tb = best_of(5, run_bf16, &j), ts = best_of(5, run_sgemm, &j);
            double fl = 2.0 * Ns[k] * (double)nw;
            printf("| %s | %d | %.3f | %.0f | %.1f | %.3f | %.0f |\n", shapes[s].name, Ns[k], tb * 1e3, fl / tb / 1e9,
                   nw * 2.0 / tb / 1e9, ts * 1e3, fl / ts / 1e9);
            fflush(stdout);
        }
        free(wb); free(wf); free(x); free(out);
    }
    return 0;
}
