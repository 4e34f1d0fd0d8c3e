/* test_pp_model MODEL TP PP — pipeline parallelism of the model (parallel/pipeline.h) against the
 * 1-rank model, with TP inside each stage and DP = the rest of the world.
 *
 * MODEL is an HF directory (loaded by slices) or a config .json (random weights, seed fixed;
 * written to a .h5 at 1 rank and loaded by slices from it). Checks, against the 1-rank model
 * computed on every rank:
 *   - each stage holds only its layers (+ embedding on the first, final norm + head on the
 *     last, the tied embedding on both), loaded by slices == the slices of the full model;
 *   - two micro-batches pushed through the pipeline (residual sent forward, its gradient sent
 *     back, gradients accumulated, tied embedding gradient summed between first and last stage):
 *     the loss of each and every parameter gradient (gathered over TP, compared on the stage
 *     that holds it; worst over the world on rank 0) within the float32 bound of two summation
 *     orders (zb_test.h, as test_tp: path length x magnitude of the summed terms);
 *   - save at PP x TP, load at 1 rank: bitwise equal;
 *   - more stages than layers: one clear error on every rank. */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "grid.h"
#include "model.h"
#include "model_io.h"
#include "pipeline.h"
#include "pp.h"
#include "tp.h"
#include "zb_test.h"

static int rank0;

static int is_dir(const char *p) { return !zb_test_src_is_config(p); }

static void random_ids(int *ids, int n, int V, unsigned seed) {
    zb_rng r;
    zb_rng_seed(&r, seed);
    for (int i = 0; i < n; i++) ids[i] = (int)(zb_rng_u64(&r) % (uint64_t)V);
}

int main(int argc, char **argv) {
    zb_test_init(&argc, &argv);
    if (argc < 4) { fprintf(stderr, "usage: %s MODEL_DIR_OR_CONFIG.json TP PP\n", argv[0]); return 2; }
    const char *src = argv[1];
    int TP = atoi(argv[2]), PP = atoi(argv[3]), world, rank;
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    rank0 = rank == 0;
    long pid = (long)getpid();
    MPI_Bcast(&pid, 1, MPI_LONG, 0, MPI_COMM_WORLD);
    char tmpdir[256];
    snprintf(tmpdir, sizeof tmpdir, "%s", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");

    zb_grid grid;
    ZB_TEST_OK(zb_grid_init(&grid, MPI_COMM_WORLD, TP, PP));
    zb_model ref, sh;
    ZB_TEST_OK(zb_test_load_model(&ref, src));
    const zb_config *c = &ref.cfg;

    /* ---- the stage: loaded by slices ------------------------------------------------------- */
    char h5[512];
    const char *from = src;
    if (!is_dir(src)) {
        snprintf(h5, sizeof h5, "%s/zb_pp_full_%ld.h5", tmpdir, pid);
        ZB_TEST_OK(zb_model_save(&ref, h5, ZB_DT_F32, MPI_COMM_WORLD));
        from = h5;
    }
    ZB_TEST_OK(zb_model_load_tp(&sh, from, &grid));
    MPI_Barrier(MPI_COMM_WORLD);
    if (!is_dir(src) && rank0) unlink(h5);
    {
        zb_model cp;
        ZB_TEST_OK(zb_model_init_tp(&cp, c, &grid));
        ZB_TEST_OK(zb_tp_copy_from_full(&cp, &ref));
        zb_check(sh.n_floats == cp.n_floats && !memcmp(sh.data, cp.data, sizeof(float) * sh.n_floats),
                 "stage %d: loaded by slices == slices of the full model", grid.pp_rank);
        zb_model_free(&cp);
    }
    int first = zb_pp_is_first(&sh), last = zb_pp_is_last(&sh);
    printf("  rank %d: stage %d/%d tp %d dp %d: layers [%d, %d), %d tensors, %zu floats%s%s\n", rank, grid.pp_rank,
           PP, grid.tp_rank, grid.dp_rank, sh.tp->pp_l0, sh.tp->pp_l1, sh.n_params, sh.n_floats,
           zb_model_param(&sh, "model.embed_tokens.weight") ? " +embedding" : "",
           zb_model_param(&sh, "model.norm.weight") ? " +head" : "");
    zb_check(sh.cfg.n_layers == sh.tp->pp_l1 - sh.tp->pp_l0 && (PP == 1 || sh.cfg.n_layers < c->n_layers),
             "stage %d holds its %d layers only", grid.pp_rank, sh.cfg.n_layers);
    zb_check(!!zb_model_param(&sh, "model.embed_tokens.weight") == (first || (last && c->tie_embeddings)),
             "embedding on the first stage (and the last when tied)");
    zb_check(!!zb_model_param(&sh, "model.norm.weight") == last, "final norm on the last stage only");

    /* ---- two micro-batches through the pipeline ------------------------------------------- */
    int B = 2, T = 12, N = B * T, V = c->vocab, nmb = 2;
    int *ids[2];
    for (int k = 0; k < nmb; k++) { ids[k] = malloc(sizeof(int) * N); random_ids(ids[k], N, V, 21 + k); }
    zb_acts ar, as[2];
    ZB_TEST_OK(zb_acts_alloc(&ar, &ref, B, T));
    for (int k = 0; k < nmb; k++) ZB_TEST_OK(zb_acts_alloc(&as[k], &sh, B, T));
    ZB_TEST_OK(zb_model_alloc_grad(&ref));
    ZB_TEST_OK(zb_model_alloc_grad(&sh));
    zb_model_zero_grad(&ref);
    zb_model_zero_grad(&sh);
    double lref[2], lpp[2] = {0, 0}, lbound[2] = {0, 0};
    /* float32 bounds (zb_test.h): a loss term moves by at most twice its row's logit bound
     * (logit magnitudes |lnf| |W_head|, the forward's path); gradients as test_tp */
    double sf = zb_bound_scale(zb_model_path_fwd(c, T)), pbwd = zb_model_path_bwd(c, T, N);
    float *lmag = malloc(sizeof(float) * (size_t)N * V), *gmag = calloc(ref.n_floats, sizeof(float));
    for (int k = 0; k < nmb; k++) {
        zb_model_forward(&ref, &ar, ids[k]);
        zb_mag_matmul(lmag, ar.lnf, ref.w.lm_head, N, V, c->d_model);
        for (int n = 0; n < N; n++)
            if (n % T < T - 1) lbound[k] += 2 * sf * zb_max_abs(lmag + (size_t)n * V, V) / (B * (T - 1));
        lref[k] = zb_model_lm_loss(&ref, &ar, ids[k], 1);
        zb_model_backward(&ref, &ar, ids[k]);
    }
    {
        zb_model mr;   /* the gradient magnitudes: one backward per loss term on a 1-rank copy */
        ZB_TEST_OK(zb_test_load_model(&mr, src));
        ZB_TEST_OK(zb_model_alloc_grad(&mr));
        for (int k = 0; k < nmb; k++) ZB_TEST_OK(zb_mag_lm_grad(&mr, ids[k], B, T, gmag));
        zb_model_free(&mr);
    }
    /* both forwards, then both backwards (GPipe order: two activation sets in flight) */
    zb_comm_req rq[2];
    for (int k = 0; k < nmb; k++) {
        ZB_TEST_OK(zb_pp_forward(&sh, &as[k], ids[k], &rq[k]));
        if (last) lpp[k] = zb_model_lm_loss(&sh, &as[k], ids[k], 1);
    }
    for (int k = nmb - 1; k >= 0; k--) {
        ZB_TEST_OK(zb_pp_wait(&sh, &rq[k]));
        ZB_TEST_OK(zb_pp_backward(&sh, &as[k], ids[k], &rq[k]));
    }
    for (int k = 0; k < nmb; k++) ZB_TEST_OK(zb_pp_wait(&sh, &rq[k]));
    ZB_TEST_OK(zb_pp_tied_grad_sum(&sh));
    double lerr = 0;   /* worst |d| / bound */
    if (last)
        for (int k = 0; k < nmb; k++) {
            double e = fabs(lpp[k] - lref[k]) / lbound[k];
            if (e > lerr) lerr = e;
        }
    MPI_Allreduce(MPI_IN_PLACE, &lerr, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    if (rank0) printf("  losses 1-rank %.9f %.9f; worst PP difference %.2g of its bound\n", lref[0], lref[1], lerr);
    zb_check(lerr <= 1, "micro-batch losses equal the 1-rank run (%.2g of the float32 bound)", lerr);

    int bad = 0, seen = 0, blunt = 0;
    double worst = 0;
    for (int i = 0; i < sh.n_params; i++) {
        const char *name = sh.tp->full_params[i].name;
        const zb_param *q = zb_model_param(&ref, name);
        if (!q) { bad++; zb_check(0, "stage tensor %s not in the full model", name); continue; }
        float *g = malloc(sizeof(float) * q->numel);
        ZB_TEST_OK(zb_tp_gather_param(&sh, i, sh.grad + sh.params[i].offset, g));
        double e;
        int sens;
        if (!zb_tensor_within(g, ref.grad + q->offset, gmag + q->offset, q->numel, pbwd, &e, &sens)) {
            bad++;
            zb_check(0, "stage %d: grad %s: %.3g of its float32 bound (max-rel %.3g)", grid.pp_rank, name, e,
                     zb_max_rel(g, ref.grad + q->offset, q->numel));
        }
        if (!sens) { blunt++; zb_check(0, "stage %d: grad %s: bound too loose to catch a 1e-3 error", grid.pp_rank, name); }
        if (e > worst) worst = e;
        seen++;
        free(g);
    }
    /* every full tensor is compared on some stage (the tied embedding on two) */
    int cover = grid.tp_rank == 0 && grid.dp_rank == 0 ? seen : 0;
    MPI_Allreduce(MPI_IN_PLACE, &cover, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    MPI_Allreduce(MPI_IN_PLACE, &bad, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    MPI_Allreduce(MPI_IN_PLACE, &worst, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    int want = ref.n_params + (PP > 1 && c->tie_embeddings);
    zb_check(cover == want, "every tensor's gradient compared: %d of %d", cover, want);
    MPI_Allreduce(MPI_IN_PLACE, &blunt, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    zb_check(bad == 0 && blunt == 0, "every gradient equals the 1-rank one (worst %.2g of its float32 bound)", worst);
    if (rank0) printf("  %d gradients compared, worst %.2g of the bound\n", cover, worst);
    free(lmag);
    free(gmag);

    /* ---- save at PP x TP, load at 1 rank ---------------------------------------------------- */
    {
        char p2[512];
        snprintf(p2, sizeof p2, "%s/zb_pp_save_%ld.h5", tmpdir, pid);
        ZB_TEST_OK(zb_model_save(&sh, p2, ZB_DT_F32, MPI_COMM_WORLD));
        zb_model one;
        ZB_TEST_OK(zb_model_load(&one, p2));
        int same = one.n_floats == ref.n_floats && !memcmp(one.data, ref.data, sizeof(float) * ref.n_floats);
        zb_check(same, "saved at PP %d x TP %d, loaded at 1 rank: bitwise equal", PP, TP);
        zb_model_free(&one);
        MPI_Barrier(MPI_COMM_WORLD);
        if (rank0) unlink(p2);
    }

    /* ---- more stages than layers: one clear error everywhere -------------------------------- */
    {
        zb_config one = *c;
        one.n_layers = PP - 1 > 0 ? PP - 1 : 1;
        zb_model bad_m;
        int rc = zb_model_init_tp(&bad_m, &one, &grid);
        int ok = PP == 1 || (rc != ZB_OK && strstr(zb_errmsg(), "every stage needs at least one layer"));
        if (rank0 && PP > 1) printf("  %d layers at --pp %d -> \"%s\"\n", one.n_layers, PP, zb_errmsg());
        MPI_Barrier(MPI_COMM_WORLD);
        zb_check(ok, "more stages than layers: a clear error");
    }

    for (int k = 0; k < nmb; k++) { zb_acts_free(&as[k]); free(ids[k]); }
    zb_acts_free(&ar);
    zb_model_free(&sh);
    zb_model_free(&ref);
    zb_grid_free(&grid);
    return zb_test_finish();
}
