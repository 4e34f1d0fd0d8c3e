/* zb_path T N MODEL [TEACHER] — for the training-curve comparisons of tests/cli_lib.sh: how
 * much larger than the split run's the rounding difference of a layout may be. A layout (TP, PP,
 * DP...) changes the gradient of one step by at most 2 lambda u path M (zb_test.h: path = sqrt
 * of the roundings on the path from the ids through the loss back to a gradient of MODEL, plus
 * the teacher's forward when the loss reads one: kd, ild, dpo); the split run (the batch as two
 * accumulated halves) re-associates the final sum over the N tokens: u sqrt(N) M. Prints
 * 2 lambda path / sqrt(N). MODEL / TEACHER: a config .json, an .h5 checkpoint or an HF dir. */
#include <math.h>
#include <stdio.h>
#include <mpi.h>
#include <stdlib.h>

#include "zb_test.h"

int main(int argc, char **argv) {
    zb_test_init(&argc, &argv);
    if (argc < 4) { fprintf(stderr, "usage: %s T N MODEL [TEACHER]\n", argv[0]); return 2; }
    int T = atoi(argv[1]), N = atoi(argv[2]);
    zb_model m;
    ZB_TEST_OK(zb_test_load_model(&m, argv[3]));
    double p = zb_model_path_bwd(&m.cfg, T, N), p2 = p * p;
    zb_model_free(&m);
    if (argc > 4) {
        ZB_TEST_OK(zb_test_load_model(&m, argv[4]));
        double f = zb_model_path_fwd(&m.cfg, T);
        p2 += f * f;
        zb_model_free(&m);
    }
    printf("%.6g\n", zb_bound_scale(sqrt(p2)) / (ZB_U32 * sqrt(N)));
    MPI_Finalize();
    return 0;
}
