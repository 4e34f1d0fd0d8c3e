/* dp.c — see dp.h. Plain blocking MPI_Allreduce per run of contiguous trainable parameters. */
#include "dp.h"

#include "zb_common.h"

static int reduce_range(float *g, size_t n, float scale, MPI_Comm dp, int size) {
    if (n == 0) return ZB_OK;
    if (size > 1) {
        /* MPI counts are int: chunk large ranges */
        const size_t chunk = (size_t)1 << 30;
        for (size_t o = 0; o < n; o += chunk) {
            size_t c = n - o < chunk ? n - o : chunk;
            ZB_MPI(MPI_Allreduce(MPI_IN_PLACE, g + o, (int)c, MPI_FLOAT, MPI_SUM, dp));
        }
    }
    float s = scale / (float)size;
    if (s != 1.0f)
        for (size_t i = 0; i < n; i++) g[i] *= s;
    return ZB_OK;
}

int zb_dp_reduce_grads(zb_model *m, const unsigned char *trainable, float scale, MPI_Comm dp) {
    int size = 1;
    ZB_MPI(MPI_Comm_size(dp, &size));
    size_t start = 0, len = 0;   /* current run [start, start+len) in floats */
    for (int i = 0; i < m->n_params; i++) {
        const zb_param *p = &m->params[i];
        if (trainable && !trainable[i]) continue;
        if (len > 0 && start + len == p->offset) { len += p->numel; continue; }
        ZB_TRY(reduce_range(m->grad + start, len, scale, dp, size));
        start = p->offset;
        len = p->numel;
    }
    return reduce_range(m->grad + start, len, scale, dp, size);
}

int zb_dp_sum(double *x, int n, MPI_Comm comm) {
    ZB_MPI(MPI_Allreduce(MPI_IN_PLACE, x, n, MPI_DOUBLE, MPI_SUM, comm));
    return ZB_OK;
}
