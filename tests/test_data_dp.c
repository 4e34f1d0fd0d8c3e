/* test_data_dp.c — data-parallel split of the loader, run under 2 ranks: `zebra data` on
 * every rank (rank 0 writes, the others wait), then each rank's rows, interleaved, are
 * exactly the one-rank stream, across an epoch boundary and after tell/seek.
 * argv[1] = the fixtures folder. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "commands.h"
#include "data.h"
#include "zb_common.h"
#include "zb_test.h"

int main(int argc, char **argv) {
    zb_test_init(&argc, &argv);
    int rank, R;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &R);
    if (argc < 2) { fprintf(stderr, "usage: test_data_dp FIXTURES\n"); return 2; }
    char tok[4096], root[64] = "/tmp/zb_test_dp_XXXXXX", in[128], out[128];
    snprintf(tok, sizeof tok, "%s/llama3-tokenizer/tokenizer.json", argv[1]);
    if (rank == 0 && !mkdtemp(root)) { perror("mkdtemp"); MPI_Abort(MPI_COMM_WORLD, 1); }
    MPI_Bcast(root, sizeof root, MPI_CHAR, 0, MPI_COMM_WORLD);
    snprintf(in, sizeof in, "%s/in.txt", root);
    snprintf(out, sizeof out, "%s/shards", root);
    if (rank == 0) {
        FILE *f = fopen(in, "w");
        for (int i = 0; f && i < 400; i++) fprintf(f, "Line %d of a zebra story, told %d times.\n%s", i, i * 7, i % 9 ? "" : "\n");
        if (f) fclose(f);
    }
    char *av[] = {"data", "--tokenizer", tok, "--input", in, "-o", out, "--val-fraction", "0", NULL};
    ZB_TEST_OK(zb_cmd_data(9, av));   /* collective: returns once the set is in place */

    const int B = 2, T = 16;
    zb_loader *mine, *one;
    ZB_TEST_OK(zb_loader_open(&mine, out, "train", B, T, rank, R));
    ZB_TEST_OK(zb_loader_open(&one, out, "train", B * R, T, 0, 1));
    uint64_t rows = zb_loader_rows(one);
    const long nb = (long)(rows / (uint64_t)(B * R)) + 3;   /* into the second epoch */
    int *x = malloc(sizeof(int) * B * T), *y = malloc(sizeof(int) * B * T);
    int *gx = malloc(sizeof(int) * B * T * R), *gy = malloc(sizeof(int) * B * T * R);
    int *ox = malloc(sizeof(int) * B * T * R), *oy = malloc(sizeof(int) * B * T * R);
    int ok = 1;
    zb_loader_pos mid = {0, 0};
    for (long i = 0; i < nb; i++) {
        if (i == nb - 2) mid = zb_loader_tell(mine);
        ZB_TEST_OK(zb_loader_next(mine, x, y));
        ZB_TEST_OK(zb_loader_next(one, ox, oy));
        MPI_Gather(x, B * T, MPI_INT, gx, B * T, MPI_INT, 0, MPI_COMM_WORLD);
        MPI_Gather(y, B * T, MPI_INT, gy, B * T, MPI_INT, 0, MPI_COMM_WORLD);
        /* one-rank row j of the batch = rank j % R's row j / R */
        if (rank == 0)
            for (int j = 0; j < B * R; j++) {
                const int *sx = gx + ((j % R) * B + j / R) * T, *sy = gy + ((j % R) * B + j / R) * T;
                ok &= !memcmp(sx, ox + j * T, sizeof(int) * T) && !memcmp(sy, oy + j * T, sizeof(int) * T);
            }
    }
    if (rank == 0) zb_check(ok, "%d ranks' rows interleave to the 1-rank stream over %ld batches (%llu rows/epoch)",
                            R, nb, (unsigned long long)rows);
    zb_loader_pos end = zb_loader_tell(mine), end1 = zb_loader_tell(one);
    zb_check(end.row == end1.row && end.epoch == end1.epoch && end.epoch == 1,
             "rank %d position equals the 1-rank position (epoch %llu row %llu)", rank,
             (unsigned long long)end.epoch, (unsigned long long)end.row);
    /* resume from the saved position on a fresh loader */
    zb_loader *again;
    ZB_TEST_OK(zb_loader_open(&again, out, "train", B, T, rank, R));
    ZB_TEST_OK(zb_loader_seek(again, mid));
    int *rx = malloc(sizeof(int) * B * T), *ry = malloc(sizeof(int) * B * T);
    ZB_TEST_OK(zb_loader_next(mine, x, y));
    ZB_TEST_OK(zb_loader_seek(mine, mid));
    ZB_TEST_OK(zb_loader_next(mine, x, y));
    ZB_TEST_OK(zb_loader_next(again, rx, ry));
    zb_check(!memcmp(x, rx, sizeof(int) * B * T) && !memcmp(y, ry, sizeof(int) * B * T), "rank %d resumes exactly", rank);
    zb_loader_close(mine); zb_loader_close(one); zb_loader_close(again);
    free(x); free(y); free(gx); free(gy); free(ox); free(oy); free(rx); free(ry);
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf %s", root);
        if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", root);
    }
    return zb_test_finish();
}
