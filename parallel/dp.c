/* dp.c — see dp.h. Bucketed non-blocking gradient all-reduce and ZeRO-1. */
#include "dp.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shard.h"
#include "tensor_names.h"
#include "zb_common.h"

/* g: the model's backend memory (be) */
static int reduce_range(const zb_backend *be, float *g, size_t n, float scale, zb_comm *c) {
    if (n == 0) return ZB_OK;
    ZB_TRY(zb_comm_sum_f32(c, ZB_GROUP_DP, g, n));
    float s = scale / (float)zb_comm_size(c, ZB_GROUP_DP);
    if (s != 1.0f) be->scale(be, g, s, n);
    return ZB_OK;
}

int zb_dp_reduce_grads(zb_model *m, const unsigned char *trainable, float scale, zb_comm *c) {
    size_t start = 0, len = 0;   /* current run [start, start+len) in floats */
    for (int i = 0; i < m->n_params; i++) {
        const zb_param *p = &m->params[i];
        if (trainable && !trainable[i]) continue;
        if (len > 0 && start + len == p->offset) { len += p->numel; continue; }
        ZB_TRY(reduce_range(m->be, m->grad + start, len, scale, c));
        start = p->offset;
        len = p->numel;
    }
    return reduce_range(m->be, m->grad + start, len, scale, c);
}

/* ---- buckets -------------------------------------------------------------------------------- */

static int launch(zb_dp *d, zb_dp_bucket *b) {
    ZB_TRY(zb_comm_iallreduce(d->comm, ZB_GROUP_DP, d->m->grad + b->off, b->n, ZB_CT_F32, ZB_RED_SUM, &b->req));
    b->launched = 1;
    /* poke the buckets in flight so that the library progresses them while we compute */
    for (int k = 0; k < d->nb; k++) {
        int flag;
        if (d->b[k].launched) ZB_TRY(zb_comm_test(d->comm, &d->b[k].req, &flag));
    }
    return ZB_OK;
}

/* zb_model.grad_hook: block `layer` (or, with -1, everything) has its final gradient. */
static void dp_hook(void *ctx, int layer) {
    zb_dp *d = ctx;
    if (!d->armed || d->zero || d->size == 1) return;
    for (int k = 0; k < d->nb; k++)
        if (!d->b[k].launched && d->b[k].ready >= layer && launch(d, &d->b[k])) zb_comm_die(d->comm, "data parallel");
}

int zb_dp_init(zb_dp *d, zb_model *m, const unsigned char *trainable, zb_comm *comm, double bucket_mb, int zero) {
    memset(d, 0, sizeof *d);
    d->m = m;
    d->comm = comm;
    d->zero = zero;
    d->rank = zb_comm_rank(comm, ZB_GROUP_DP);
    d->size = zb_comm_size(comm, ZB_GROUP_DP);
    if (!m->grad) return zb_fail(ZB_EARG, "data parallel: the model has no gradient buffer");
    if (bucket_mb <= 0) bucket_mb = 25;
    size_t cap = (size_t)(bucket_mb * 1048576.0 / sizeof(float));
    if (cap < 1) cap = 1;
    if (cap > ((size_t)1 << 30)) cap = (size_t)1 << 30;
    /* walk the parameters from the last (head, final norm, top layers) to the first, the order
     * in which the backward finishes them; a bucket is a contiguous run of trainable floats */
    ZB_ALLOC(d->b, (size_t)m->n_params + (m->n_floats / cap) + 2, "gradient buckets");
    zb_dp_bucket *cur = NULL;
    for (int i = m->n_params - 1; i >= 0; i--) {
        const zb_param *p = &m->params[i];
        if (trainable && !trainable[i]) { cur = NULL; continue; }
        size_t off = p->offset, n = p->numel;
        while (n > 0) {
            /* the run grows downwards: [off + n - take, off + n) joins cur if contiguous */
            int group = p->layer < 0;
            if (!cur || cur->off != off + n || cur->n >= cap || (cur->ready < 0) != group) {
                cur = &d->b[d->nb++];
                memset(cur, 0, sizeof *cur);
                cur->off = off + n;
                cur->ready = p->layer;
            }
            size_t take = cap - cur->n < n ? cap - cur->n : n;
            cur->off -= take;
            cur->n += take;
            n -= take;
            if (p->layer < cur->ready) cur->ready = p->layer;
        }
    }
    if (zero) {
        size_t N = m->n_floats, q = N / (size_t)d->size, r = N % (size_t)d->size;
        if (N > INT_MAX)
            return zb_fail(ZB_EARG, "ZeRO-1: the shard has %zu floats, more than int counts (use --tp)", N);
        ZB_ALLOC(d->counts, d->size, "ZeRO ranges");
        ZB_ALLOC(d->displs, d->size, "ZeRO ranges");
        size_t o = 0;
        for (int k = 0; k < d->size; k++) {
            size_t c = q + ((size_t)k < r);
            d->counts[k] = c;
            d->displs[k] = o;
            if (k == d->rank) { d->lo = o; d->hi = o + c; }
            o += c;
        }
        ZB_BE_ALLOC(m->be, d->gshard, d->hi - d->lo + 1, "ZeRO gradient shard");
    }
    m->grad_hook = dp_hook;
    m->grad_hook_ctx = d;
    return ZB_OK;
}

void zb_dp_free(zb_dp *d) {
    if (d->m && d->m->grad_hook_ctx == d) { d->m->grad_hook = NULL; d->m->grad_hook_ctx = NULL; }
    if (d->m) d->m->be->free(d->m->be, d->gshard);
    free(d->b); free(d->counts); free(d->displs);
    memset(d, 0, sizeof *d);
}

void zb_dp_arm(zb_dp *d) {
    d->armed = 1;
    for (int k = 0; k < d->nb; k++) { d->b[k].launched = 0; d->b[k].req.pending = 0; }
}

int zb_dp_finish(zb_dp *d) {
    const zb_backend *be = d->m->be;
    d->armed = 0;
    float s = 1.0f / (float)d->size;
    if (d->zero) {
        /* ZeRO-1: each rank receives the summed gradient of its range only */
        ZB_TRY(zb_comm_reduce_scatter(d->comm, ZB_GROUP_DP, d->m->grad, d->gshard, d->counts, ZB_CT_F32));
        if (s != 1.0f) be->scale(be, d->gshard, s, d->hi - d->lo);
        return ZB_OK;
    }
    if (d->size == 1) return ZB_OK;
    for (int k = 0; k < d->nb; k++)
        if (!d->b[k].launched) ZB_TRY(launch(d, &d->b[k]));
    for (int k = 0; k < d->nb; k++) ZB_TRY(zb_comm_wait(d->comm, &d->b[k].req));
    for (int k = 0; k < d->nb; k++) {
        be->scale(be, d->m->grad + d->b[k].off, s, d->b[k].n);
        d->b[k].launched = 0;   /* the next step starts from nothing launched, armed or not */
    }
    return ZB_OK;
}

/* PP: the last stage's copy of a tied embedding (its gradient equals the first stage's after
 * zb_pp_tied_grad_sum: counted once), or -1. */
static int tied_copy(const zb_model *m) {
    if (!m->tp || m->tp->pp_size < 2 || m->tp->pp_rank != m->tp->pp_size - 1 || !m->cfg.tie_embeddings) return -1;
    const zb_param *p = zb_model_param(m, "model.embed_tokens.weight");
    return p ? (int)(p - m->params) : -1;
}

int zb_dp_grad_sq_norm(const zb_dp *d, const zb_adamw *o, double *out) {
    const zb_model *m = d->m;
    size_t lo = d->zero ? d->lo : 0, hi = d->zero ? d->hi : m->n_floats;
    const float *g = d->zero ? d->gshard : m->grad;
    double s[2] = {0, 0};   /* TP-split, replicated */
    int skip = tied_copy(m);
    for (int i = 0; i < m->n_params; i++) {
        if (!o->trainable[i] || i == skip) continue;
        const zb_param *p = &m->params[i];
        size_t a = p->offset > lo ? p->offset : lo, b = p->offset + p->numel < hi ? p->offset + p->numel : hi;
        int k = m->tp && !m->tp->slices[i].replicated ? 0 : 1;
        if (a < b) s[k] += m->be->sumsq(m->be, g + (a - lo), b - a);
    }
    if (d->zero) ZB_TRY(zb_comm_sum_f64(d->comm, ZB_GROUP_DP, s, 2));
    if (m->tp) ZB_TRY(zb_comm_sum_f64(m->tp->comm, ZB_GROUP_TP, s, 1));
    *out = s[0] + s[1];
    if (m->tp) ZB_TRY(zb_comm_sum_f64(m->tp->comm, ZB_GROUP_PP, out, 1));   /* over the stages */
    return ZB_OK;
}

int zb_dp_first_nonfinite(const zb_dp *d, const zb_adamw *o, char *name, size_t cap) {
    const zb_model *m = d->m;
    const zb_config *full = zb_model_full_config(m);
    size_t lo = d->zero ? d->lo : 0, hi = d->zero ? d->hi : m->n_floats;
    const float *g = d->zero ? d->gshard : m->grad;
    zb_tensor_spec *spec = NULL;
    int ns = 0, first = INT_MAX;
    ZB_TRY(zb_expected_tensors(full, &spec, &ns));
    for (int i = 0, j = 0; i < m->n_params && first == INT_MAX; i++) {
        const char *nm = m->tp ? m->tp->full_params[i].name : m->params[i].name;
        while (j < ns && strcmp(spec[j].name, nm)) j++;   /* its place in the full model */
        if (!o->trainable[i]) continue;
        const zb_param *p = &m->params[i];
        size_t a = p->offset > lo ? p->offset : lo, b = p->offset + p->numel < hi ? p->offset + p->numel : hi;
        if (a >= b) continue;
        const float *h = g + (a - lo);
        float *tmp = NULL;
        if (!m->be->host_memory) {   /* an error path: the range read back to the host */
            if (!(tmp = zb_malloc(sizeof(float) * (b - a), "gradient check"))) { free(spec); return ZB_ENOMEM; }
            m->be->to_host(m->be, tmp, h, sizeof(float) * (b - a));
            h = tmp;
        }
        for (size_t k = 0; k < b - a; k++)
            if (!isfinite(h[k])) { first = j; break; }
        free(tmp);
    }
    int rc = zb_comm_allreduce(d->comm, ZB_GROUP_WORLD, &first, 1, ZB_CT_I32, ZB_RED_MIN);
    snprintf(name, cap, "%s", !rc && first < ns ? spec[first].name : "");
    free(spec);
    return rc;
}

int zb_dp_zero_attach(zb_dp *d, zb_adamw *o) {
    if (!d->zero) return ZB_OK;
    const zb_backend *be = o->be;
    be->free(be, o->m);
    be->free(be, o->v);
    o->m = o->v = NULL;
    size_t n = d->hi - d->lo + 1;
    ZB_BE_ALLOC(be, o->m, n, "ZeRO optimizer moments");
    ZB_BE_ALLOC(be, o->v, n, "ZeRO optimizer moments");
    o->n_floats = d->hi - d->lo;
    return ZB_OK;
}

int zb_dp_optim_step(zb_dp *d, zb_adamw *o, float lr, float grad_scale) {
    if (!d->zero) { zb_adamw_step(o, d->m, lr, grad_scale); return ZB_OK; }
    zb_adamw_update_range(o, d->m, d->lo, d->hi, d->gshard, o->m, o->v, lr, grad_scale);
    o->step++;
    ZB_TRY(zb_comm_allgatherv_inplace(d->comm, ZB_GROUP_DP, d->m->data, d->counts, d->displs, ZB_CT_F32));
    return ZB_OK;
}
