/* zebra init --random --config C.json -o model.h5 [--seed S] [--std 0.02] [--dtype bf16|f32]
 * A random-weight checkpoint of any config: lets a user without the weights test everything. */
#include <mpi.h>
#include <stdio.h>
#include <string.h>

#include "commands.h"
#include "model.h"
#include "model_io.h"

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
    zb_config c;
    ZB_TRY(zb_config_load(cfg_path, &c));
    ZB_TRY(zb_config_validate(&c, cfg_path));
    zb_model m;
    ZB_TRY(zb_model_init(&m, &c));
    zb_model_init_random(&m, (uint64_t)zb_arg_int(argc, argv, "--seed", 1),
                         (float)zb_arg_double(argc, argv, "--std", 0.02));
    int rc = zb_model_save(&m, out, dtype, MPI_COMM_WORLD);
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (!rc && rank == 0)
        fprintf(stderr, "init: wrote %s (%zu parameters, %s)\n", out, zb_model_num_params(&m), dt);
    zb_model_free(&m);
    return rc;
}
