/* cuda_optim.c — the optimizer's parameter groups as device segments (host side). */
#include "cuda_train.h"

#include <stdlib.h>

int zb_cuda_segs_from_adamw(zb_cuda_segs **out, const zb_adamw *o, const zb_model *m) {
    int n = 0;
    size_t *off = malloc(sizeof(size_t) * 2 * (size_t)(m->n_params + 1));
    float *f = malloc(sizeof(float) * 2 * (size_t)(m->n_params + 1));
    if (!off || !f) { free(off); free(f); return zb_fail(ZB_ENOMEM, "optimizer segments"); }
    size_t *len = off + m->n_params + 1;
    float *lr = f, *wd = f + m->n_params + 1;
    for (int i = 0; i < m->n_params; i++) {
        if (!o->trainable[i] || m->params[i].bf16) continue;
        off[n] = m->params[i].offset;
        len[n] = m->params[i].numel;
        lr[n] = o->lr_mult[i];
        wd[n] = o->wd[i];
        n++;
    }
    int rc = zb_cuda_segs_create(out, n, off, len, lr, wd);
    free(off);
    free(f);
    return rc;
}
