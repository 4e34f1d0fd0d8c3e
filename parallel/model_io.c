/* model_io.c — see model_io.h: the one slice writer of weights and optimizer moments. */
#include "model_io.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"
#include "shard.h"
#include "tensor_names.h"
#include "zb_common.h"

/* Parameter i as a part of its full tensor: the TP slice, or the whole tensor. *full: its full
 * name and shape. */
static zb_tp_slice part_of(const zb_model *m, int i, const zb_param **full) {
    if (m->tp) { *full = &m->tp->full_params[i]; return m->tp->slices[i]; }
    const zb_param *p = &m->params[i];
    zb_tp_slice s;
    memset(&s, 0, sizeof s);
    s.nseg = 1;
    s.nrows[0] = p->ndim ? p->shape[0] : 1;
    s.width = s.ncols = s.nrows[0] ? (int64_t)p->numel / s.nrows[0] : 0;
    s.replicated = 1;
    *full = p;
    return s;
}

/* Whether this rank holds the one copy of parameter i that is written: replicated tensors by TP
 * rank 0, a tied embedding by the first pipeline stage (the last holds a copy as its head). */
static int own_copy(const zb_model *m, int i, const zb_tp_slice *s) {
    if (!m->tp) return 1;
    if (s->replicated && m->tp->rank != 0) return 0;
    return !(m->tp->pp_size > 1 && m->tp->pp_rank > 0 && !strcmp(m->params[i].name, "model.embed_tokens.weight"));
}

/* The blocks (zb_ckpt_block, file coordinates) of the local elements [a, b) of slice s (its
 * local order: the rows of each segment, ncols values each). Returns the count (<= 3 nseg). */
static int blocks_of(const zb_tp_slice *s, size_t a, size_t b, zb_ckpt_block *out) {
    int n = 0;
    size_t base = 0, nc = (size_t)s->ncols;
    for (int k = 0; k < s->nseg && nc; k++) {
        size_t len = (size_t)s->nrows[k] * nc, x = a > base ? a - base : 0, y = b - base < len ? b - base : len;
        if (b > base && x < y) {
            size_t r = x / nc, c = x % nc;
            if (c) {   /* the end of a row */
                size_t k2 = nc - c < y - x ? nc - c : y - x;
                out[n++] = (zb_ckpt_block){s->row0[k] + (int64_t)r, 1, s->col0 + (int64_t)c, (int64_t)k2};
                x += k2;
                r++;
            }
            if ((y - x) / nc) {   /* whole rows */
                out[n++] = (zb_ckpt_block){s->row0[k] + (int64_t)r, (int64_t)((y - x) / nc), s->col0, s->ncols};
                r += (y - x) / nc;
                x += (y - x) / nc * nc;
            }
            if (x < y) out[n++] = (zb_ckpt_block){s->row0[k] + (int64_t)r, 1, s->col0, (int64_t)(y - x)};
        }
        base += len;
    }
    return n;
}

/* One tensor: the elements [a, b) of this rank's slice s from data (nothing when !writes). */
static int write_part(zb_ckpt_writer *w, const char *name, zb_dtype dt, const zb_tensor_spec *t, int writes,
                      const zb_tp_slice *s, size_t a, size_t b, const void *data) {
    int64_t shape[4] = {0};
    for (int k = 0; k < t->ndim; k++) shape[k] = t->shape[k];
    zb_ckpt_block bl[3 * ZB_TP_MAX_SEG];
    int nb = writes && b > a ? blocks_of(s, a, b, bl) : 0;
    return zb_ckpt_write_blocks(w, name, dt, t->ndim, shape, nb, bl, nb ? data : NULL);
}

typedef struct {
    zb_dtype dtype;
    const zb_train_ckpt *t;   /* NULL: weights only */
    int rank0;                /* writes a whole model's tensors */
} save_how;

/* Every tensor of the full model in its order: this rank's part of it, or nothing. */
static int write_tensors(zb_ckpt_writer *w, const zb_model *m, const save_how *h, MPI_Comm comm) {
    const zb_config *full = zb_model_full_config(m);
    zb_tensor_spec *spec = NULL;
    int ns = 0;
    ZB_TRY(zb_expected_tensors(full, &spec, &ns));
    /* loc[j]: the local parameter holding full tensor j (-1: another stage's); tr[j]: whether
     * its moments are stored (trainable on the stage that holds it: agreed by every rank) */
    int *loc = zb_malloc(sizeof(int) * 2 * (size_t)(ns + 1), "checkpoint tensor map");
    if (!loc) { free(spec); return ZB_ENOMEM; }
    int *tr = loc + ns + 1, rc = ZB_OK;
    for (int j = 0, i = 0; j < ns; j++) {   /* a stage's tensors come in the full model's order */
        const zb_param *q = i < m->n_params ? (m->tp ? &m->tp->full_params[i] : &m->params[i]) : NULL;
        int here = q && !strcmp(spec[j].name, q->name);
        loc[j] = here ? i : -1;
        tr[j] = here && h->t && h->t->o && h->t->o->trainable[i];
        i += here;
    }
    if (h->t && MPI_Allreduce(MPI_IN_PLACE, tr, ns, MPI_INT, MPI_MAX, comm) != MPI_SUCCESS)
        rc = zb_fail(ZB_EMPI, "checkpoint: MPI_Allreduce of the trainable flags failed");
    int weights = m->tp ? m->tp->writer : h->rank0;   /* one data-parallel replica writes the weights */
    int zero = h->t && h->t->zero;
    size_t lo = zero ? h->t->lo : 0, hi = zero ? h->t->hi : m->n_floats;
    uint16_t *tmp = NULL;
    char name[ZB_PARAM_NAME + 16];
    for (int j = 0; j < ns && !rc; j++) {
        int i = loc[j], mine = 0;
        zb_tp_slice s;
        memset(&s, 0, sizeof s);
        const zb_param *fp = NULL;
        size_t n = 0, off = 0;
        if (i >= 0) {
            s = part_of(m, i, &fp);
            mine = own_copy(m, i, &s);
            n = m->params[i].numel;
            off = m->params[i].offset;
        }
        const void *data = i >= 0 ? m->data + off : NULL;
        if (h->dtype == ZB_DT_BF16 && weights && mine && n) {
            uint16_t *t2 = realloc(tmp, sizeof(uint16_t) * n);
            if (!t2) { rc = zb_fail(ZB_ENOMEM, "out of memory converting '%s' to bf16", spec[j].name); break; }
            tmp = t2;
            for (size_t k = 0; k < n; k++) tmp[k] = zb_f32_to_bf16(m->data[off + k]);
            data = tmp;
        }
        rc = write_part(w, spec[j].name, h->dtype, &spec[j], weights && mine, &s, 0, n, data);
        if (rc || !tr[j]) continue;
        /* the moments: the weights' writers, or under ZeRO-1 every DP rank its range */
        int mw = i >= 0 && mine && (zero || weights) && h->t->o->trainable[i];
        size_t a = 0, b = n;
        if (zero && i >= 0) {
            a = lo > off ? lo - off : 0;
            b = hi < off + n ? (hi > off ? hi - off : 0) : n;
        }
        for (int k = 0; k < 2 && !rc; k++) {
            const float *mv = k ? h->t->o->v : h->t->o->m;
            snprintf(name, sizeof name, "optim.%c.%s", k ? 'v' : 'm', spec[j].name);
            rc = write_part(w, name, ZB_DT_F32, &spec[j], mw, &s, a, b, mw && b > a ? mv + off + a - lo : NULL);
        }
    }
    free(tmp);
    free(loc);
    free(spec);
    return rc;
}

static int save(const zb_model *m, const char *path, const save_how *h, MPI_Comm comm) {
    if (m->wdtype != ZB_WEIGHTS_F32)   /* m->data lacks the bf16 matrices (inference-only model) */
        return zb_fail(ZB_EARG, "%s: a model loaded with --weights %s cannot be saved; load it as f32", path,
                       zb_wdtype_name(m->wdtype));
    zb_ckpt_writer *w = NULL;
    ZB_TRY(zb_ckpt_open_model(&w, path, zb_model_full_config(m), h->dtype, comm));
    int rc = write_tensors(w, m, h, comm);
    const zb_train_ckpt *t = h->t;
    if (!rc && t && t->state) {
        int64_t sh = t->n_state;
        rc = zb_ckpt_write_tensor(w, "train.state", ZB_DT_I64, 1, &sh, t->state);
    }
    int64_t tl = t && t->run_text ? (int64_t)strlen(t->run_text) : 0;
    if (!rc && tl > 0) rc = zb_ckpt_write_tensor(w, "train.run_json", ZB_DT_U8, 1, &tl, t->run_text);
    if (rc) { zb_ckpt_abort(w); return rc; }
    return zb_ckpt_close(w);
}

int zb_model_save(const zb_model *m, const char *path, zb_dtype dtype, MPI_Comm comm) {
    int rank = 0;
    MPI_Comm_rank(comm, &rank);
    save_how h = {dtype, NULL, rank == 0};
    return save(m, path, &h, comm);
}

int zb_train_save(const zb_model *m, const char *path, const zb_train_ckpt *t, MPI_Comm comm) {
    int rank = 0;
    MPI_Comm_rank(comm, &rank);
    save_how h = {ZB_DT_F32, t, rank == 0};
    return save(m, path, &h, comm);
}

/* ---- reading back --------------------------------------------------------------------------- */

/* This rank's slice s of checkpoint entry j (full shape fp) into dst. */
static int read_part(const zb_ckpt_reader *r, int j, const zb_param *fp, const zb_tp_slice *s, float *dst) {
    const zb_ckpt_entry *e = zb_ckpt_entry_at(r, j);
    int same = e->ndim == fp->ndim;
    for (int k = 0; same && k < fp->ndim; k++) same = e->shape[k] == fp->shape[k];
    if (!same) return zb_fail(ZB_ESHAPE, "%s: '%s' has the wrong shape", zb_ckpt_path(r), e->name);
    for (int k = 0; k < s->nseg; k++) {
        if (s->ncols == s->width) {
            ZB_TRY(zb_ckpt_read_f32(r, j, s->row0[k], s->nrows[k], dst));
            dst += s->nrows[k] * s->width;
            continue;
        }
        float *tmp = zb_malloc(sizeof(float) * (size_t)(s->nrows[k] * s->width), "checkpoint read buffer");
        if (!tmp) return ZB_ENOMEM;
        int rc = zb_ckpt_read_f32(r, j, s->row0[k], s->nrows[k], tmp);
        for (int64_t q = 0; q < s->nrows[k] && !rc; q++, dst += s->ncols)
            memcpy(dst, tmp + q * s->width + s->col0, sizeof(float) * (size_t)s->ncols);
        free(tmp);
        ZB_TRY(rc);
    }
    return ZB_OK;
}

int zb_train_load(const zb_model *m, const char *path, zb_adamw *o, int zero, size_t lo, size_t hi,
                  int64_t *state, int n_state) {
    zb_ckpt_reader *r = NULL;
    ZB_TRY(zb_ckpt_reader_open(&r, path));
    int rc = ZB_OK, i = zb_ckpt_find(r, "train.state");
    if (i < 0 || zb_ckpt_entry_at(r, i)->numel != n_state)
        rc = zb_fail(ZB_EFORMAT, "%s: not a training checkpoint (no train.state[%d])", path, n_state);
    if (!rc) rc = zb_ckpt_read_raw(r, i, 0, n_state, state);
    if (!zero) { lo = 0; hi = m->n_floats; }
    float *tmp = NULL;
    char name[ZB_PARAM_NAME + 16];
    for (int p = 0; p < m->n_params && !rc; p++) {
        const zb_param *fp;
        zb_tp_slice s = part_of(m, p, &fp);
        size_t off = m->params[p].offset, n = m->params[p].numel;
        size_t a = lo > off ? lo - off : 0, b = hi < off + n ? (hi > off ? hi - off : 0) : n;
        if (a >= b) continue;   /* ZeRO: outside this rank's range */
        if (zero) {
            float *t2 = realloc(tmp, sizeof(float) * n);
            if (!t2) { rc = zb_fail(ZB_ENOMEM, "%s: out of memory reading the moments", path); break; }
            tmp = t2;
        }
        for (int k = 0; k < 2 && !rc; k++) {
            snprintf(name, sizeof name, "optim.%c.%s", k ? 'v' : 'm', fp->name);
            float *dst = (k ? o->v : o->m) + off + a - lo;
            int j = zb_ckpt_find(r, name);
            if (j < 0) memset(dst, 0, sizeof(float) * (b - a));
            else if (!zero) rc = read_part(r, j, fp, &s, dst);
            else if (!(rc = read_part(r, j, fp, &s, tmp))) memcpy(dst, tmp + a, sizeof(float) * (b - a));
        }
    }
    free(tmp);
    zb_ckpt_reader_close(r);
    return rc;
}
