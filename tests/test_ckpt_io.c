/* test_ckpt_io CONFIG.json TP — the one slice writer of weights and AdamW moments
 * (parallel/model_io.h) on a TP x DP grid (DP = the rest of the world), with the moments
 * ZeRO-1-sharded over DP (each DP rank writes its own range of the shard's flat buffer: the
 * ranges of parallel/dp.c, and ranges cut inside the rows of a 3-D tensor) and not sharded. Checks, against the
 * full tensors every rank builds:
 *   - loaded at 1 rank, the weights are bitwise the full model's, every moment bitwise the full
 *     moment, a frozen tensor's moments absent (read as zeros), train.state as written;
 *   - read back on the grid, each rank's part (its slices; ZeRO: its range) bitwise its own. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "grid.h"
#include "model.h"
#include "model_io.h"
#include "optim.h"
#include "tp.h"
#include "zb_test.h"

/* a full model of cfg with random values (seed): weights or a moment's full tensors */
static int full_model(zb_model *m, const zb_config *c, uint64_t seed) {
    ZB_TRY(zb_model_init(m, c));
    zb_model_init_random(m, seed, 0.5f);
    return ZB_OK;
}

/* the same values as this rank's shard */
static int shard_of(zb_model *s, const zb_model *full, const zb_grid *g) {
    ZB_TRY(zb_model_init_tp(s, &full->cfg, g));
    return zb_tp_copy_from_full(s, full);
}

int main(int argc, char **argv) {
    zb_test_init(&argc, &argv);
    if (argc < 3) { fprintf(stderr, "usage: %s CONFIG.json TP\n", argv[0]); return 2; }
    int TP = atoi(argv[2]), rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    long pid = (long)getpid();
    MPI_Bcast(&pid, 1, MPI_LONG, 0, MPI_COMM_WORLD);
    char path[512];
    snprintf(path, sizeof path, "%s/zb_ckpt_io_%ld.h5", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", pid);
    zb_config c;
    ZB_TEST_OK(zb_config_load(argv[1], &c));
    zb_grid g;
    ZB_TEST_OK(zb_grid_init(&g, MPI_COMM_WORLD, TP, 1));
    zb_model W, M, V, sw, sm, sv;
    ZB_TEST_OK(full_model(&W, &c, 1));
    ZB_TEST_OK(full_model(&M, &c, 2));
    ZB_TEST_OK(full_model(&V, &c, 3));
    ZB_TEST_OK(shard_of(&sw, &W, &g));
    ZB_TEST_OK(shard_of(&sm, &M, &g));
    ZB_TEST_OK(shard_of(&sv, &V, &g));
    /* ZeRO ranges of the shard's flat buffer over DP: as parallel/dp.c cuts them (mode 2), and
     * cut inside the rows of the first 3-D tensor (conv1d [C, 1, K]: mode 1) */
    size_t N = sw.n_floats, q = N / (size_t)g.dp_size, r = N % (size_t)g.dp_size, even = 0;
    for (int k = 0; k < g.dp_rank; k++) even += q + ((size_t)k < r);
    const zb_param *p3 = NULL;
    for (int i = 0; i < sw.n_params && !p3; i++)
        if (sw.params[i].ndim == 3) p3 = &sw.params[i];
    if (!p3) { zb_check(0, "the config has a 3-D tensor"); return zb_test_finish(); }
    size_t w3 = (size_t)(p3->shape[1] * p3->shape[2]);
    const char *frozen = "model.norm.weight";
    int64_t state[3] = {17, -2, 123456789012345LL};
    for (int zero = 2; zero >= 0; zero--) {
        size_t lo = zero == 2 ? even : g.dp_rank ? p3->offset + (size_t)g.dp_rank * (2 * w3 + 1) : 0;
        size_t hi = zero == 2 ? even + q + ((size_t)g.dp_rank < r)
                  : g.dp_rank + 1 < g.dp_size ? p3->offset + (size_t)(g.dp_rank + 1) * (2 * w3 + 1) : N;
        zb_check(zero == 2 || hi <= p3->offset + p3->numel || g.dp_rank + 1 == g.dp_size, "boundary inside %s",
                 p3->name);
        zb_optim_cfg oc = zb_optim_defaults();
        zb_adamw o;
        ZB_TEST_OK(zb_adamw_init(&o, &sw, &oc));
        zb_adamw_set_group(&o, &sw, frozen, -1, -1, 0);
        size_t a = zero ? lo : 0, b = zero ? hi : N;
        memcpy(o.m, sm.data + a, sizeof(float) * (b - a));
        memcpy(o.v, sv.data + a, sizeof(float) * (b - a));
        zb_train_ckpt t = {&o, zero != 0, lo, hi, state, 3, "{\"data\": \"x\"}"};
        ZB_TEST_OK(zb_train_save(&sw, path, &t, MPI_COMM_WORLD));
        if (rank == 0) {   /* at 1 rank: every full tensor */
            zb_model one;
            ZB_TEST_OK(zb_model_load(&one, path));
            zb_check(one.n_floats == W.n_floats && !memcmp(one.data, W.data, sizeof(float) * W.n_floats),
                     "zero %d, TP %d x DP %d: the weights loaded at 1 rank are the full model's", zero, TP, g.dp_size);
            zb_adamw of;
            ZB_TEST_OK(zb_adamw_init(&of, &one, &oc));
            int64_t st[3];
            ZB_TEST_OK(zb_train_load(&one, path, &of, 0, 0, 0, st, 3));
            int bad = 0;
            for (int i = 0; i < one.n_params; i++) {
                const zb_param *p = &one.params[i];
                int fz = !strcmp(p->name, frozen);
                for (size_t k = p->offset; k < p->offset + p->numel; k++)
                    bad += of.m[k] != (fz ? 0.0f : M.data[k]) || of.v[k] != (fz ? 0.0f : V.data[k]);
            }
            zb_check(bad == 0, "zero %d: every moment loaded at 1 rank is the full one, the frozen tensor's zero "
                     "(%d differ)", zero, bad);
            zb_check(!memcmp(st, state, sizeof st), "train.state as written");
            zb_adamw_free(&of);
            zb_model_free(&one);
        }
        zb_adamw o2;   /* on the grid: each rank its own part */
        ZB_TEST_OK(zb_adamw_init(&o2, &sw, &oc));
        int64_t st[3];
        ZB_TEST_OK(zb_train_load(&sw, path, &o2, zero != 0, lo, hi, st, 3));
        int bad = 0;
        for (size_t k = a; k < b; k++) {
            int fz = 0;
            for (int i = 0; i < sw.n_params; i++)
                if (k >= sw.params[i].offset && k < sw.params[i].offset + sw.params[i].numel)
                    fz = !strcmp(sw.params[i].name, frozen);
            bad += o2.m[k - a] != (fz ? 0.0f : sm.data[k]) || o2.v[k - a] != (fz ? 0.0f : sv.data[k]);
        }
        MPI_Allreduce(MPI_IN_PLACE, &bad, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
        zb_check(bad == 0, "zero %d: read back on the grid, every rank's part is its own (%d differ)", zero, bad);
        zb_adamw_free(&o2);
        zb_adamw_free(&o);
        MPI_Barrier(MPI_COMM_WORLD);
        if (rank == 0) unlink(path);
    }
    zb_model_free(&sw); zb_model_free(&sm); zb_model_free(&sv);
    zb_model_free(&W); zb_model_free(&M); zb_model_free(&V);
    zb_grid_free(&g);
    return zb_test_finish();
}
