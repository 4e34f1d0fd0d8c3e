/* bench_attn — time the decode attention (core/cpu/ops.c zb_attention_decode) alone over a cache of
 * one sequence at 8k context, in the shapes of the 1B teacher (16 layers, 32 heads, 8 KV heads
 * of 64; the cache in interleaved rows or head-major as zebra generate keeps it) and of
 * Zebra-1B's MLA layers (4 layers, 32 heads over one 160-float latent row, values the first
 * 128), split-K (OpenMP; AVX-512, AVX2 and portable inner loops) and BLAS kernels; GB/s = cache bytes
 * read / time, beside a plain OpenMP sum over the same bytes. Usage: bench_attn [context] */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "ops.h"
#include "zb_common.h"

static double sum_read(float *const *bufs, int n, size_t floats) {
    double best = 1e30;
    volatile double sink = 0;
    for (int r = 0; r < 3; r++) {
        double t = zb_now();
        float s = 0;
        for (int b = 0; b < n; b++) {
            const float *x = bufs[b];
#pragma omp parallel for simd reduction(+ : s) schedule(static)
            for (size_t i = 0; i < floats; i++) s += x[i];
        }
        t = zb_now() - t;
        sink += s;
        if (t < best) best = t;
    }
    return best;
}

static void shape(const char *name, int L, int Tc, int H, int Hkv, int dqk, int dv, int stride, int shared_kv,
                  int major) {
    size_t floats = (size_t)Tc * stride;
    float *K[16], *V[16], *all[32];
    int nb = 0;
    for (int l = 0; l < L; l++) {
        K[l] = malloc(sizeof(float) * floats);
        V[l] = shared_kv ? K[l] : malloc(sizeof(float) * floats);
        for (size_t i = 0; i < floats; i++) K[l][i] = 0.1f * (float)((i * 2654435761u) % 1000) / 1000.0f;
        if (!shared_kv) for (size_t i = 0; i < floats; i++) V[l][i] = 0.2f * (float)((i * 40503u) % 1000) / 1000.0f;
        all[nb++] = K[l];
        if (!shared_kv) all[nb++] = V[l];
    }
    float *q = malloc(sizeof(float) * H * dqk), *out = malloc(sizeof(float) * H * dv);
    for (int i = 0; i < H * dqk; i++) q[i] = 0.01f * (i % 17);
    float *scratch = malloc(sizeof(float) * zb_attention_decode_scratch(H, dv, Tc) + sizeof(float) * (size_t)H * Tc);
    double bytes = (double)nb * floats * sizeof(float);
    printf("%s: %d layers, context %d, H %d, Hkv %d, dqk %d, dv %d, %s: %.1f MB per step\n",
           name, L, Tc, H, Hkv, dqk, dv, major ? "head-major [Hkv, T, d]" : "interleaved rows", bytes / 1e6);
    static const char *const names[4] = {"split-K best", "split-K AVX2", "split-K portable", "BLAS"};
    for (int v = 0; v < 4; v++) {   /* split-K with the best SIMD (AVX-512 where present), AVX2, portable loops; BLAS */
        zb_backend_opts o = {.decode_omp = v < 3, .decode_simd = v == 0 ? ZB_SIMD_BEST : v == 1 ? ZB_SIMD_AVX2 : ZB_SIMD_PORTABLE};
        double best = 1e30;
        for (int r = 0; r < 4; r++) {
            double t = zb_now();
            for (int l = 0; l < L; l++)
                zb_attention_decode(out, q, K[l], V[l], Tc, H, Hkv, dqk, dv, major ? dqk : stride,
                                    major ? dv : stride, major ? (size_t)Tc * dqk : (size_t)dqk,
                                    major ? (size_t)Tc * dv : (size_t)dv, 1.0f / sqrtf((float)dqk), scratch, &o);
            t = zb_now() - t;
            if (r && t < best) best = t;
        }
        printf("  %-16s %8.2f ms  %6.1f GB/s\n", names[v], best * 1e3, bytes / best / 1e9);
    }
    double t = sum_read(all, nb, floats);
    printf("  %-16s %8.2f ms  %6.1f GB/s\n", "plain sum", t * 1e3, bytes / t / 1e9);
    for (int l = 0; l < L; l++) { free(K[l]); if (!shared_kv) free(V[l]); }
    free(q); free(out); free(scratch);
}

int main(int argc, char **argv) {
    int Tc = argc > 1 ? atoi(argv[1]) : 8192;
    /* teacher: K and V caches per layer, [Tc, 8 * 64] rows (a KV group's row is 64 of the 512
     * floats) or head-major [8, Tc, 64] (zebra generate's layout) */
    shape("teacher (Llama-3.2-1B)", 16, Tc, 32, 8, 64, 64, 512, 0, 0);
    shape("teacher (Llama-3.2-1B)", 16, Tc, 32, 8, 64, 64, 512, 0, 1);
    /* MLA: latent rows [Tc, 128 + 32]; scores over all 160, values the first 128 */
    shape("MLA (Zebra-1B)", 4, Tc, 32, 1, 160, 128, 160, 1, 0);
    return 0;
}
