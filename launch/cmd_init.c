/* zebra init --random --config C.json -o model.h5 [--seed S] [--std 0.02] [--dtype bf16|f32]
 * A random-weight checkpoint of any config: lets a user without the weights test everything.
 *
 * Streamed: one tensor is generated and written at a time, never the whole model (an 8B
 * config is 32 GB in f32; its largest tensor, the embedding, is 1 GB in bf16), so it runs in
 * a few GB. Deterministic per tensor: the values of row j of tensor i (leading dimension;
 * 1-D tensors are one block) come from an RNG seeded by (seed, i, j), so they depend neither
 * on the order of generation, nor on the number of MPI ranks (each writes its share of the
 * rows, collectively) or OpenMP threads. The init rule per tensor is zb_param_fill_random's
 * (that of zb_model_init_random; the draws are laid out differently, so the values differ). */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"
#include "commands.h"
#include "linear.h"
#include "model.h"
#include "tensor_names.h"

static uint64_t mix64(uint64_t z) {   /* splitmix64 finaliser */
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* rows [r0, r0 + nr) of tensor p (index ti), each row_el values, into out (f32 or bf16) */
static int fill_rows(const zb_param *p, int ti, uint64_t seed, float std, int64_t r0, int64_t nr,
                     int64_t row_el, int bf16, void *out) {
    int bad = 0;
#ifdef _OPENMP
#pragma omp parallel reduction(|:bad)
#endif
    {
        float *row = bf16 ? malloc(sizeof(float) * (size_t)row_el) : NULL;
        if (bf16 && !row) bad = 1;
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t j = 0; j < nr; j++) {
            if (bf16 && !row) continue;
            zb_rng rng;
            zb_rng_seed(&rng, mix64(seed ^ mix64(((uint64_t)ti << 32) ^ (uint64_t)(r0 + j))));
            float *dst = bf16 ? row : (float *)out + (size_t)(j * row_el);
            zb_param_fill_random(p, std, &rng, dst, (size_t)row_el);
            if (bf16) zb_f32_to_bf16_n(row, (uint16_t *)out + (size_t)(j * row_el), (size_t)row_el);
        }
        free(row);
    }
    return bad ? zb_fail(ZB_ENOMEM, "init: out of memory generating '%s'", p->name) : ZB_OK;
}

int zb_cmd_init(int argc, char **argv) {
    static const char *const vals[] = {"--config", "-o", "--seed", "--std", "--dtype", NULL};
    static const char *const flags[] = {"--random", NULL};
    ZB_TRY(zb_args_check(argc, argv, vals, flags, 0));
    const char *cfg_path = zb_arg_str(argc, argv, "--config", NULL);
    const char *out = zb_arg_str(argc, argv, "-o", NULL);
    const char *dt = zb_arg_str(argc, argv, "--dtype", "f32");
    if (!cfg_path || !out || !zb_arg_flag(argc, argv, "--random"))
        return zb_fail(ZB_EARG, "init: needs --random --config C.json -o model.h5");
    zb_dtype dtype;
    if (!strcmp(dt, "f32")) dtype = ZB_DT_F32;
    else if (!strcmp(dt, "bf16")) dtype = ZB_DT_BF16;
    else return zb_fail(ZB_EARG, "init: --dtype must be f32 or bf16, not '%s'", dt);
    uint64_t seed;
    double stdd;
    ZB_TRY(zb_arg_u64(argc, argv, "--seed", 1, &seed));
    ZB_TRY(zb_arg_double(argc, argv, "--std", 0.02, 0.0, 1e6, &stdd));
    float std = (float)stdd;
    zb_config c;
    ZB_TRY(zb_config_load(cfg_path, &c));
    ZB_TRY(zb_config_validate(&c, cfg_path));
    int rank = 0, size = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);

    zb_tensor_spec *spec = NULL;
    int n = 0;
    ZB_TRY(zb_expected_tensors(&c, &spec, &n));
    char *json = zb_config_to_json(&c);
    zb_ckpt_writer *w = NULL;
    int rc = json ? ZB_OK : zb_fail(ZB_ENOMEM, "%s: cannot serialise the config", out);
    if (!rc) rc = zb_ckpt_writer_open(&w, out, MPI_COMM_WORLD);
    if (!rc) rc = zb_ckpt_set_config(w, json);
    free(json);
    size_t total = 0, esz = dtype == ZB_DT_BF16 ? sizeof(uint16_t) : sizeof(float);
    void *buf = NULL;
    size_t cap = 0;
    double t0 = zb_now();
    for (int i = 0; i < n && !rc; i++) {
        zb_param p;
        memset(&p, 0, sizeof p);
        snprintf(p.name, sizeof p.name, "%s", spec[i].name);
        p.ndim = spec[i].ndim;
        p.numel = 1;
        for (int k = 0; k < p.ndim; k++) { p.shape[k] = spec[i].shape[k]; p.numel *= (size_t)p.shape[k]; }
        p.layer = spec[i].layer;
        total += p.numel;
        /* matrices: rows split over the ranks; 1-D tensors: one block, rank 0 */
        int64_t rows = p.ndim >= 2 ? p.shape[0] : 1, row_el = (int64_t)p.numel / rows;
        int64_t r0 = rows * rank / size, r1 = rows * (rank + 1) / size;
        if (p.ndim < 2) { r0 = 0; r1 = rank == 0 ? 1 : 0; }
        size_t need = (size_t)((r1 - r0) * row_el) * esz;
        if (need > cap) {
            void *nb = realloc(buf, need);
            if (!nb) { rc = zb_fail(ZB_ENOMEM, "init: out of memory for '%s' (%zu bytes)", p.name, need); break; }
            buf = nb;
            cap = need;
        }
        rc = fill_rows(&p, i, seed, std, r0, r1 - r0, row_el, dtype == ZB_DT_BF16, buf);
        /* a failed rank still takes part in the collective write (with 0 rows), then all stop */
        int bad = rc != ZB_OK, any = 0;
        MPI_Allreduce(&bad, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
        if (any) { if (!rc) rc = zb_fail(ZB_EARG, "init: another rank failed"); break; }
        int64_t sh[ZB_MAX_DIMS];
        for (int k = 0; k < p.ndim; k++) sh[k] = p.shape[k];
        if (p.ndim < 2) rc = zb_ckpt_write_rows(w, p.name, dtype, p.ndim, sh, 0, rank == 0 && p.ndim ? p.shape[0] : 0, buf);
        else rc = zb_ckpt_write_rows(w, p.name, dtype, p.ndim, sh, r0, r1 - r0, buf);
    }
    free(buf);
    free(spec);
    if (rc) { if (w) zb_ckpt_abort(w); return rc; }
    rc = zb_ckpt_close(w);
    if (!rc && rank == 0)
        fprintf(stderr, "init: wrote %s (%zu parameters, %s, %.1f s)\n", out, total, dt, zb_now() - t0);
    return rc;
}
