#include "model_io.h"

#include <stdlib.h>

#include "checkpoint.h"
#include "tp.h"
#include "zb_common.h"

int zb_model_save(const zb_model *m, const char *path, zb_dtype dtype, MPI_Comm comm) {
    if (m->wdtype != ZB_WEIGHTS_F32)   /* m->data lacks the bf16 matrices (inference-only model) */
        return zb_fail(ZB_EARG, "%s: a model loaded with --weights %s cannot be saved; load it as f32", path,
                       zb_wdtype_name(m->wdtype));
    /* a tensor-parallel shard writes its slices into the full tensors (parallel/tp.h) */
    if (m->tp) return zb_tp_save(m, path, (int)dtype, comm);
    zb_ckpt_writer *w = NULL;
    int rc = zb_ckpt_open_model(&w, path, &m->cfg, dtype, comm);
    uint16_t *tmp = NULL;
    for (int i = 0; i < m->n_params && !rc; i++) {
        const zb_param *p = &m->params[i];
        const float *x = m->data + p->offset;
        if (dtype == ZB_DT_BF16) {
            uint16_t *t = realloc(tmp, sizeof(uint16_t) * p->numel);
            if (!t) { rc = zb_fail(ZB_ENOMEM, "%s: out of memory converting '%s'", path, p->name); break; }
            tmp = t;
            for (size_t j = 0; j < p->numel; j++) tmp[j] = zb_f32_to_bf16(x[j]);
            rc = zb_ckpt_write_tensor(w, p->name, dtype, p->ndim, p->shape, tmp);
        } else {
            rc = zb_ckpt_write_tensor(w, p->name, dtype, p->ndim, p->shape, x);
        }
    }
    free(tmp);
    if (rc) { if (w) zb_ckpt_abort(w); return rc; }
    return zb_ckpt_close(w);
}
