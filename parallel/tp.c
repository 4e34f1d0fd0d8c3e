/* tp.c — tensor parallelism of the model (Megatron-LM rules, SPEC.md §9). See tp.h.
 *
 * The shard is built from the LOCAL config (zb_tp_local_config), so that zb_expected_tensors
 * gives, in the same order and with the same HF names, the local shapes of the shard's
 * buffer; the full config gives the full shapes; zb_tp_slice_of says which rows / columns of
 * the full tensor a rank holds. Everything else (load by slices, save by slices, gather,
 * copy from a full model) is expressed with those slices. */
#include "tp.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pp.h"
#include "store.h"
#include "tensor_names.h"
#include "zb_common.h"

/* ---- which dims split, and how ---------------------------------------------------------- */

/* One more row segment: rank r's 1/n of [off, off + total). */
static void seg_add(zb_tp_slice *s, int64_t off, int64_t total, int r, int n) {
    int64_t k = total / n;
    s->row0[s->nseg] = off + r * k;
    s->nrows[s->nseg] = k;
    s->nseg++;
}

#define ENDS(suf) zb_ends_with(nm, suf)
int zb_tp_slice_of(const zb_config *c, const zb_param *p, int r, int n, zb_tp_slice *s) {
    memset(s, 0, sizeof *s);
    int64_t rows = p->ndim ? p->shape[0] : 1, width = 1;
    for (int k = 1; k < p->ndim; k++) width *= p->shape[k];
    s->width = s->ncols = width;
    enum { REP, ROWS, COLS, PARTIAL } how = REP;
    const char *nm = p->name;
    if (p->layer < 0) {
        /* vocabulary-parallel embedding and head; the final norm is replicated */
        if (!strcmp(nm, "model.embed_tokens.weight") || !strcmp(nm, "lm_head.weight")) how = ROWS;
        else if (strcmp(nm, "model.norm.weight")) return zb_fail(ZB_EFORMAT, "tensor parallel: no split rule for '%s'", nm);
    } else {
        zb_layer_kind kind = c->kinds[p->layer];
        if (ENDS("input_layernorm.weight") || ENDS("post_attention_layernorm.weight")) how = REP;
        else if (ENDS("mlp.gate_proj.weight") || ENDS("mlp.up_proj.weight")) how = ROWS;   /* column-parallel */
        else if (ENDS("mlp.down_proj.weight")) how = COLS;                                       /* row-parallel */
        else if (kind == ZB_LAYER_ATTN && (ENDS("self_attn.q_proj.weight") || ENDS("self_attn.k_proj.weight") ||
                                           ENDS("self_attn.v_proj.weight"))) how = ROWS;      /* by head */
        else if (kind == ZB_LAYER_MLA && (ENDS("self_attn.q_proj.weight") || ENDS("self_attn.q_b_proj.weight") ||
                                          ENDS("self_attn.kv_b_proj.weight"))) how = ROWS;    /* by (KV) head */
        else if (kind == ZB_LAYER_MLA && (ENDS("self_attn.q_a_proj.weight") || ENDS("self_attn.q_a_layernorm.weight") ||
                                          ENDS("self_attn.kv_a_proj_with_mqa.weight") ||
                                          ENDS("self_attn.kv_a_layernorm.weight"))) how = PARTIAL;  /* latent: replicated */
        else if (kind != ZB_LAYER_MAMBA2 && ENDS("self_attn.o_proj.weight")) how = COLS;
        else if (kind == ZB_LAYER_MAMBA2) {
            const zb_mamba2_dims *m = &c->mamba;
            int64_t di = m->d_inner, xw = (int64_t)m->x_groups * m->headdim, bw = (int64_t)m->b_groups * m->d_state,
                    cw = (int64_t)m->c_groups * m->d_state, nh = m->nheads;
            if (ENDS("mamba.in_proj.weight")) {
                /* column-parallel PER SEGMENT: z | x | B | C | dt, each split by head / group */
                seg_add(s, 0, di, r, n);
                seg_add(s, di, xw, r, n);
                seg_add(s, di + xw, bw, r, n);
                seg_add(s, di + xw + bw, cw, r, n);
                seg_add(s, di + xw + bw + cw, nh, r, n);
                return ZB_OK;
            }
            if (ENDS("mamba.conv1d.weight") || ENDS("mamba.conv1d.bias")) {
                seg_add(s, 0, xw, r, n);
                seg_add(s, xw, bw, r, n);
                seg_add(s, xw + bw, cw, r, n);
                return ZB_OK;
            }
            if (ENDS("mamba.dt_bias") || ENDS("mamba.A_log") || ENDS("mamba.D") ||
                ENDS("mamba.norm.weight")) how = ROWS;
            else if (ENDS("mamba.out_proj.weight")) how = COLS;
            else return zb_fail(ZB_EFORMAT, "tensor parallel: no split rule for '%s'", nm);
        } else {
            return zb_fail(ZB_EFORMAT, "tensor parallel: no split rule for '%s'", nm);
        }
    }
    if (how == ROWS) {
        seg_add(s, 0, rows, r, n);
    } else if (how == COLS) {
        if (p->ndim != 2) return zb_fail(ZB_ESHAPE, "tensor parallel: '%s' is not 2-D", nm);
        s->nseg = 1;
        s->row0[0] = 0;
        s->nrows[0] = rows;
        s->ncols = width / n;
        s->col0 = r * s->ncols;
    } else {
        s->nseg = 1;
        s->row0[0] = 0;
        s->nrows[0] = rows;
        s->replicated = 1;
        s->partial_grad = how == PARTIAL;
    }
    return ZB_OK;
}
#undef ENDS

static size_t slice_numel(const zb_tp_slice *s) {
    size_t k = 0;
    for (int i = 0; i < s->nseg; i++) k += (size_t)s->nrows[i];
    return k * (size_t)s->ncols;
}

/* full -> local (this slice) and local -> full */
static void slice_extract(const zb_tp_slice *s, const float *full, float *local) {
    for (int k = 0; k < s->nseg; k++)
        for (int64_t r = s->row0[k]; r < s->row0[k] + s->nrows[k]; r++) {
            memcpy(local, full + r * s->width + s->col0, sizeof(float) * (size_t)s->ncols);
            local += s->ncols;
        }
}
static void slice_place(const zb_tp_slice *s, const float *local, float *full) {
    for (int k = 0; k < s->nseg; k++)
        for (int64_t r = s->row0[k]; r < s->row0[k] + s->nrows[k]; r++) {
            memcpy(full + r * s->width + s->col0, local, sizeof(float) * (size_t)s->ncols);
            local += s->ncols;
        }
}

/* ---- building a shard ------------------------------------------------------------------- */

int zb_model_init_tp(zb_model *m, const zb_config *cfg, const zb_grid *g) {
    return zb_model_init_tp_ex(m, cfg, g, ZB_WEIGHTS_F32, NULL);
}

int zb_model_init_tp_ex(zb_model *m, const zb_config *cfg, const zb_grid *g, zb_wdtype wt, const int *cut) {
    memset(m, 0, sizeof *m);
    int n = g->tp_size;
    ZB_TRY(zb_config_validate(cfg, cfg->model_type));
    ZB_TRY(zb_tp_check(cfg, n));
    /* PP: this stage's layers [l0, l1) (the same partition on every rank) */
    int l0 = 0, l1 = cfg->n_layers;
    if (g->pp_size > 1) ZB_TRY(zb_pp_stage_layers(cfg, g->pp_size, g->pp_rank, cut, &l0, &l1));
    zb_config local;
    zb_tp_local_config(cfg, n, &local);
    /* token ids are global: bos/eos may lie outside the local vocabulary rows */
    local.bos_id = -1;
    local.n_eos = 0;
    local.n_layers = l1 - l0;   /* PP: the stage's layers only */
    memmove(local.kinds, cfg->kinds + l0, sizeof(local.kinds[0]) * (size_t)(l1 - l0));
    ZB_TRY(zb_model_init_stage(m, &local, wt, l0, g->pp_rank > 0, g->pp_rank < g->pp_size - 1));
    m->cfg.bos_id = cfg->bos_id;
    m->cfg.n_eos = cfg->n_eos;
    memcpy(m->cfg.eos_ids, cfg->eos_ids, sizeof cfg->eos_ids);

    zb_tp *tp = zb_calloc(1, sizeof *tp, "tensor-parallel layout");
    zb_tensor_spec *spec = NULL;
    int ns = 0, rc = tp ? ZB_OK : ZB_ENOMEM;
    if (!rc) {
        tp->comm = g->comm;
        tp->rank = g->tp_rank;
        tp->size = n;
        tp->writer = g->dp_rank == 0;
        tp->full = *cfg;
        tp->vocab0 = (int64_t)g->tp_rank * local.vocab;
        tp->pp_rank = g->pp_rank;
        tp->pp_size = g->pp_size;
        tp->pp_l0 = l0;
        tp->pp_l1 = l1;
        rc = zb_expected_tensors(cfg, &spec, &ns);
    }
    /* PP: keep the full tensors this stage holds (its local list, in the same order) */
    int kept = 0;
    for (int j = 0; j < ns && !rc; j++)
        if (kept < m->n_params && !strcmp(spec[j].name, m->params[kept].name)) spec[kept++] = spec[j];
    if (!rc && kept != m->n_params)
        rc = zb_fail(ZB_EFORMAT, "tensor parallel: %d of %d local tensors found in the full layout", kept,
                     m->n_params);
    ns = m->n_params;
    if (!rc) {
        tp->full_params = zb_calloc((size_t)ns, sizeof(zb_param), "tensor-parallel layout");
        tp->slices = zb_calloc((size_t)ns, sizeof(zb_tp_slice), "tensor-parallel layout");
        if (!tp->full_params || !tp->slices) rc = ZB_ENOMEM;
    }
    for (int i = 0; i < ns && !rc; i++) {
        zb_param *p = &tp->full_params[i];
        snprintf(p->name, sizeof p->name, "%s", spec[i].name);
        p->ndim = spec[i].ndim;
        p->numel = 1;
        for (int k = 0; k < p->ndim; k++) { p->shape[k] = spec[i].shape[k]; p->numel *= (size_t)p->shape[k]; }
        p->layer = spec[i].layer;
        p->no_decay = m->params[i].no_decay;
        p->offset = m->params[i].offset;   /* of the local slice in the shard's buffer */
        p->bf16 = m->params[i].bf16;
        if (strcmp(p->name, m->params[i].name))
            rc = zb_fail(ZB_EFORMAT, "tensor parallel: tensor #%d is '%s' in the full layout, '%s' locally", i,
                         p->name, m->params[i].name);
        else rc = zb_tp_slice_of(cfg, p, tp->rank, n, &tp->slices[i]);
        if (!rc && slice_numel(&tp->slices[i]) != m->params[i].numel)
            rc = zb_fail(ZB_ESHAPE, "tensor parallel: '%s': slice of %zu values, local tensor of %zu", p->name,
                         slice_numel(&tp->slices[i]), m->params[i].numel);
    }
    free(spec);
    if (rc) { zb_tp_free(tp); zb_model_free(m); return rc; }
    m->tp = tp;
    return ZB_OK;
}

/* Read this rank's slice of one tensor: whole rows go straight through zb_store_read_rows;
 * column slices (row-parallel weights) read blocks of full rows and keep the columns. */
/* rows into f32 or, for a parameter held in bf16, into raw bf16 (store.h) */
static int read_rows_as(const zb_store *st, const char *name, int bf16, void *dst, int64_t row0, int64_t nrows) {
    return bf16 ? zb_store_read_rows_bf16(st, name, dst, row0, nrows) : zb_store_read_rows(st, name, dst, row0, nrows);
}

static int read_slice(const zb_store *st, const char *path, const zb_param *p, const zb_tp_slice *s, void *dst_) {
    char *dst = dst_;
    size_t esz = p->bf16 ? sizeof(uint16_t) : sizeof(float);
    int idx = zb_store_find(st, p->name);
    if (idx < 0) return zb_fail(ZB_ENOTFOUND, "%s: missing tensor '%s'", path, p->name);
    int nd;
    int64_t sh[ZB_MAX_DIMS];
    zb_dtype dt;
    ZB_TRY(zb_store_info_at(st, idx, &nd, sh, &dt));
    int same = nd == p->ndim;
    for (int k = 0; same && k < nd; k++) same = sh[k] == p->shape[k];
    if (!same) {
        char a[160], b[160];
        return zb_fail(ZB_ESHAPE, "%s: tensor '%s': expected shape %s, found %s", zb_store_file_of(st, p->name),
                       p->name, zb_shape_str(a, sizeof a, p->ndim, p->shape), zb_shape_str(b, sizeof b, nd, sh));
    }
    if (s->ncols == s->width) {
        for (int k = 0; k < s->nseg; k++) {
            ZB_TRY(read_rows_as(st, p->name, p->bf16, dst, s->row0[k], s->nrows[k]));
            dst += (size_t)(s->nrows[k] * s->width) * esz;
        }
        return ZB_OK;
    }
    int64_t blk = ((int64_t)1 << 22) / s->width;
    if (blk < 1) blk = 1;
    char *tmp = zb_malloc(esz * (size_t)(blk * s->width), "checkpoint read buffer");
    if (!tmp) return ZB_ENOMEM;
    int rc = ZB_OK;
    for (int k = 0; k < s->nseg && !rc; k++)
        for (int64_t r0 = s->row0[k]; r0 < s->row0[k] + s->nrows[k] && !rc; r0 += blk) {
            int64_t nr = s->row0[k] + s->nrows[k] - r0 < blk ? s->row0[k] + s->nrows[k] - r0 : blk;
            rc = read_rows_as(st, p->name, p->bf16, tmp, r0, nr);
            for (int64_t r = 0; r < nr && !rc; r++) {
                memcpy(dst, tmp + (size_t)(r * s->width + s->col0) * esz, esz * (size_t)s->ncols);
                dst += esz * (size_t)s->ncols;
            }
        }
    free(tmp);
    return rc;
}

int zb_model_load_tp(zb_model *m, const char *path, const zb_grid *g) {
    return zb_model_load_tp_ex(m, path, g, ZB_WEIGHTS_F32, NULL);
}

int zb_model_load_tp_ex(zb_model *m, const char *path, const zb_grid *g, zb_wdtype wt, const int *cut) {
    memset(m, 0, sizeof *m);
    zb_store *st = NULL;
    ZB_TRY(zb_store_open(&st, path));
    int rc = zb_model_init_tp_ex(m, zb_store_config(st), g, wt, cut);
    if (rc) { zb_fail_prefix(rc, path); zb_store_close(st); return rc; }
    for (int i = 0; i < m->n_params && !rc; i++) {
        const zb_param *p = &m->params[i];
        void *dst = p->bf16 ? (void *)(m->data16 + p->offset) : (void *)(m->data + p->offset);
        rc = read_slice(st, path, &m->tp->full_params[i], &m->tp->slices[i], dst);
    }
    zb_store_close(st);
    if (!rc) rc = zb_model_check_finite(m, path);   /* this rank's slices */
    if (rc) zb_model_free(m);
    return rc;
}

int zb_tp_copy_from_full(zb_model *shard, const zb_model *full) {
    const zb_tp *tp = shard->tp;
    if (!tp) return zb_fail(ZB_EARG, "zb_tp_copy_from_full: not a tensor-parallel shard");
    if (full->tp || (tp->pp_size <= 1 && full->n_params != shard->n_params))
        return zb_fail(ZB_EARG, "zb_tp_copy_from_full: the full model has another layout");
    for (int i = 0; i < shard->n_params; i++) {
        /* PP: a stage holds a subset of the tensors: found by name */
        const zb_param *p = &tp->full_params[i], *q = tp->pp_size > 1 ? zb_model_param(full, p->name) : &full->params[i];
        if (!q) return zb_fail(ZB_ESHAPE, "zb_tp_copy_from_full: tensor '%s' missing", p->name);
        int same = !strcmp(p->name, q->name) && p->ndim == q->ndim;
        for (int k = 0; same && k < p->ndim; k++) same = p->shape[k] == q->shape[k];
        if (!same) return zb_fail(ZB_ESHAPE, "zb_tp_copy_from_full: tensor '%s' differs", p->name);
        slice_extract(&tp->slices[i], full->data + q->offset, shard->data + shard->params[i].offset);
    }
    return ZB_OK;
}

/* ---- gathering -------------------------------------------------------------------------- */

int zb_tp_gather_param(const zb_model *m, int i, const float *src, float *dst) {
    size_t L = m->params[i].numel;
    if (!m->tp || m->tp->size == 1 || m->tp->slices[i].replicated) {
        memcpy(dst, src, sizeof(float) * L);
        return ZB_OK;
    }
    const zb_tp *tp = m->tp;
    float *buf = zb_malloc(sizeof(float) * L * (size_t)tp->size, "gather buffer");
    if (!buf) return ZB_ENOMEM;
    int rc = ZB_OK;
    if (zb_comm_allgather(tp->comm, ZB_GROUP_TP, src, L, buf, ZB_CT_F32))
        rc = zb_fail_prefix(ZB_EMPI, m->params[i].name);
    for (int r = 0; r < tp->size && !rc; r++) {
        zb_tp_slice s;
        rc = zb_tp_slice_of(&tp->full, &tp->full_params[i], r, tp->size, &s);
        if (!rc) slice_place(&s, buf + (size_t)r * L, dst);
    }
    free(buf);
    return rc;
}
