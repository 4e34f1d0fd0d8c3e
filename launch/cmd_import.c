/* cmd_import.c — `zebra import DIR -o model.h5`: an HF checkpoint (config.json + safetensors,
 * single or sharded) or a native .h5 into zebra's native HDF5 checkpoint.
 *
 * The config is validated and every tensor it implies must be present with its exact shape
 * before anything is written; tensors are copied in their stored dtype (bf16 stays bf16).
 * Tensors the config does not imply (rotary_emb.inv_freq, a tied lm_head) are skipped with a
 * note. The output appears at its final name only when complete. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"
#include "commands.h"
#include "store.h"
#include "tensor_names.h"
#include "zb_common.h"

static int parse_args(int argc, char **argv, const char **in, const char **out) {
    *in = *out = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-o") || !strcmp(a, "--out") || !strcmp(a, "--output")) {
            if (i + 1 >= argc) return zb_fail(ZB_EARG, "import: option %s needs a value", a);
            *out = argv[++i];
        } else if (a[0] == '-' && a[1]) {
            return zb_fail(ZB_EARG, "import: unknown option %s (usage: zebra import DIR -o model.h5)", a);
        } else if (!*in) {
            *in = a;
        } else {
            return zb_fail(ZB_EARG, "import: unexpected argument '%s' (usage: zebra import DIR -o model.h5)", a);
        }
    }
    if (!*in) return zb_fail(ZB_EARG, "import: missing the input DIR (usage: zebra import DIR -o model.h5)");
    if (!*out) return zb_fail(ZB_EARG, "import: missing -o OUT.h5 (usage: zebra import DIR -o model.h5)");
    return ZB_OK;
}

/* Every expected tensor present with its shape. */
static int import_check(const zb_store *s, const zb_tensor_spec *spec, int n) {
    for (int i = 0; i < n; i++) {
        int k = zb_store_find(s, spec[i].name);
        if (k < 0)
            return zb_fail(ZB_ENOTFOUND, "%s: tensor '%s' is missing (the config implies it)", zb_store_path(s),
                           spec[i].name);
        int nd;
        int64_t sh[ZB_MAX_DIMS];
        zb_dtype dt;
        ZB_TRY(zb_store_info_at(s, k, &nd, sh, &dt));
        int same = nd == spec[i].ndim;
        for (int d = 0; same && d < nd; d++) same = sh[d] == spec[i].shape[d];
        if (!same) {
            char a[160], b[160];
            return zb_fail(ZB_ESHAPE, "%s: tensor '%s': expected shape %s, found %s",
                           zb_store_file_of(s, spec[i].name), spec[i].name,
                           zb_shape_str(a, sizeof a, spec[i].ndim, spec[i].shape), zb_shape_str(b, sizeof b, nd, sh));
        }
        if (dt != ZB_DT_F32 && dt != ZB_DT_BF16 && dt != ZB_DT_F16 && dt != ZB_DT_F64)
            return zb_fail(ZB_EFORMAT, "%s: tensor '%s': dtype %s is not a float type",
                           zb_store_file_of(s, spec[i].name), spec[i].name, zb_dtype_name(dt));
    }
    return ZB_OK;
}

static int write_all(zb_ckpt_writer *w, const zb_store *s, const zb_tensor_spec *spec, int n, double *bytes) {
    char *json = zb_config_to_json(zb_store_config(s));
    if (!json) return ZB_ENOMEM;
    int rc = zb_ckpt_set_config(w, json);
    free(json);
    for (int i = 0; i < n && rc == ZB_OK; i++) {
        int k = zb_store_find(s, spec[i].name), nd;
        int64_t sh[ZB_MAX_DIMS], numel = 1;
        zb_dtype dt;
        if ((rc = zb_store_info_at(s, k, &nd, sh, &dt))) break;
        for (int d = 0; d < nd; d++) numel *= sh[d];
        size_t nb = (size_t)numel * zb_dtype_size(dt);
        void *buf = zb_malloc(nb, spec[i].name);
        if (!buf) { rc = ZB_ENOMEM; break; }
        rc = zb_store_read_raw(s, spec[i].name, buf);
        if (!rc) rc = zb_ckpt_write_tensor(w, spec[i].name, dt, nd, sh, buf);
        *bytes += (double)nb;
        free(buf);
    }
    return rc;
}

int zb_cmd_import(int argc, char **argv) {
    const char *in, *out;
    ZB_TRY(parse_args(argc, argv, &in, &out));
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    zb_store *s = NULL;
    ZB_TRY(zb_store_open(&s, in));
    zb_tensor_spec *spec = NULL;
    int n = 0, rc = zb_expected_tensors(zb_store_config(s), &spec, &n);
    if (!rc) rc = import_check(s, spec, n);
    if (!rc && rank == 0) {
        int extra = 0;
        const char *first = NULL;
        for (int i = 0; i < zb_store_count(s); i++)
            if (!zb_tensor_spec_find(spec, n, zb_store_name_at(s, i))) {
                if (!extra++) first = zb_store_name_at(s, i);
            }
        if (extra)
            fprintf(stderr, "zebra import: note: ignoring %d tensor(s) the config does not imply (e.g. '%s')\n",
                    extra, first);
    }
    double bytes = 0;
    if (!rc) {
        zb_ckpt_writer *w = NULL;
        rc = zb_ckpt_writer_open(&w, out, MPI_COMM_WORLD);
        if (!rc) {
            rc = write_all(w, s, spec, n, &bytes);
            if (rc) zb_ckpt_abort(w);
            else rc = zb_ckpt_close(w);
        }
    }
    if (!rc && rank == 0)
        printf("imported %d tensors (%.1f MB) of a %s model with %d layers from %s to %s\n", n, bytes / 1e6,
               zb_store_config(s)->model_type, zb_store_config(s)->n_layers, in, out);
    free(spec);
    zb_store_close(s);
    return rc;
}
