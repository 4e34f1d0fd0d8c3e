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

#include "checkpoint.h"
#include "dp.h"
#include "pp.h"
#include "store.h"
#include "tensor_names.h"
#include "zb_common.h"

/* An MPI failure inside forward/backward (void functions): print this rank's message and stop
 * every rank (issue 6: "an error on one rank stops all ranks with that rank's message"). */
static void tp_die(void) {
    fprintf(stderr, "zebra: tensor parallel: %s\n", zb_errmsg());
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, ZB_EMPI);
}

/* In-place all-reduce in pieces of at most 2^30 elements (MPI counts are int). */
static int allreduce_rc(MPI_Comm comm, void *x, size_t n, MPI_Datatype t, size_t elsz, MPI_Op op) {
    char *p = x;
    double t0 = MPI_Wtime();
    while (n) {
        int k = n > ((size_t)1 << 30) ? (1 << 30) : (int)n;
        ZB_MPI(MPI_Allreduce(MPI_IN_PLACE, p, k, t, op, comm));
        p += (size_t)k * elsz;
        n -= (size_t)k;
    }
    zb_comm_seconds += MPI_Wtime() - t0;   /* cluster/scaling.sh: communication share */
    return ZB_OK;
}

void zb_tp_allreduce(const zb_tp *tp, float *x, size_t n) {
    if (tp->size == 1) return;
    if (allreduce_rc(tp->comm, x, n, MPI_FLOAT, sizeof(float), MPI_SUM)) tp_die();
}

/* ---- which dims split, and how ---------------------------------------------------------- */

static void layer_kinds(const zb_config *c, int *attn, int *mla, int *mamba) {
    *attn = *mla = *mamba = 0;
    for (int i = 0; i < c->n_layers; i++) {
        *attn |= c->kinds[i] == ZB_LAYER_ATTN;
        *mla |= c->kinds[i] == ZB_LAYER_MLA;
        *mamba |= c->kinds[i] == ZB_LAYER_MAMBA2;
    }
}

#define TP_CHECK(cond, ...) do { if (!(cond)) return zb_fail(ZB_EARG, __VA_ARGS__); } while (0)
#define TP_DIV(v, what) TP_CHECK((v) % n == 0, "tensor parallel: %s %d is not divisible by --tp %d", \
                                 what, (int)(v), n)

int zb_tp_check(const zb_config *c, int n) {
    TP_CHECK(n >= 1, "tensor parallel: --tp must be >= 1 (got %d)", n);
    if (n == 1) return ZB_OK;
    int attn, mla, mamba;
    layer_kinds(c, &attn, &mla, &mamba);
    TP_CHECK(c->vocab % n == 0, "tensor parallel: vocab_size %d is not divisible by --tp %d (the embedding and "
             "LM head are split by vocabulary rows; padding is not supported)", c->vocab, n);
    TP_DIV(c->ffn, "intermediate_size");
    if (attn) {
        TP_DIV(c->n_heads, "num_attention_heads");
        TP_CHECK(c->n_kv_heads % n == 0, "tensor parallel: num_key_value_heads %d is not divisible by --tp %d "
                 "(attention KV heads are split across ranks; replicating them is not supported)",
                 c->n_kv_heads, n);
    }
    if (mla) {
        TP_DIV(c->mla.n_heads, "mla.n_heads");
        TP_CHECK(c->mla.kv_heads % n == 0, "tensor parallel: mla.kv_heads %d is not divisible by --tp %d "
                 "(kv_b_proj is split by KV head)", c->mla.kv_heads, n);
    }
    if (mamba) {
        const zb_mamba2_dims *s = &c->mamba;
        TP_DIV(s->nheads, "mamba2.nheads");
        TP_DIV(s->x_groups, "mamba2.x_groups");
        TP_DIV(s->b_groups, "mamba2.b_groups");
        TP_DIV(s->c_groups, "mamba2.c_groups");
        int G = s->norm_group > 0 ? s->norm_group : s->d_inner;
        TP_CHECK((s->d_inner / n) % G == 0,
                 "tensor parallel: the Mamba2 gated-norm group (norm_group_size %d) would straddle ranks: "
                 "d_inner/tp = %d/%d = %d is not a multiple of it (a whole-d_inner norm cannot be split; "
                 "use norm_group_size = headdim)", G, s->d_inner, n, s->d_inner / n);
    }
    return ZB_OK;
}

void zb_tp_local_config(const zb_config *full, int n, zb_config *l) {
    *l = *full;
    if (n == 1) return;
    int attn, mla, mamba;
    layer_kinds(full, &attn, &mla, &mamba);
    l->vocab /= n;
    l->ffn /= n;
    if (attn) { l->n_heads /= n; l->n_kv_heads /= n; }
    if (mla) { l->mla.n_heads /= n; l->mla.kv_heads /= n; }
    if (mamba) {
        zb_mamba2_dims *s = &l->mamba;
        if (s->norm_group <= 0) s->norm_group = s->d_inner;
        s->d_inner /= n;
        s->nheads /= n;
        s->x_groups /= n;
        s->b_groups /= n;
        s->c_groups /= n;
    }
}

/* One more row segment: rank r's 1/n of [off, off + total). */
static void seg_add(zb_tp_slice *s, int64_t off, int64_t total, int r, int n) {
    int64_t k = total / n;
    s->row0[s->nseg] = off + r * k;
    s->nrows[s->nseg] = k;
    s->nseg++;
}

static int ends(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

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
        if (ends(nm, "input_layernorm.weight") || ends(nm, "post_attention_layernorm.weight")) how = REP;
        else if (ends(nm, "mlp.gate_proj.weight") || ends(nm, "mlp.up_proj.weight")) how = ROWS;   /* column-parallel */
        else if (ends(nm, "mlp.down_proj.weight")) how = COLS;                                       /* row-parallel */
        else if (kind == ZB_LAYER_ATTN && (ends(nm, "self_attn.q_proj.weight") || ends(nm, "self_attn.k_proj.weight") ||
                                           ends(nm, "self_attn.v_proj.weight"))) how = ROWS;      /* by head */
        else if (kind == ZB_LAYER_MLA && (ends(nm, "self_attn.q_proj.weight") || ends(nm, "self_attn.q_b_proj.weight") ||
                                          ends(nm, "self_attn.kv_b_proj.weight"))) how = ROWS;    /* by (KV) head */
        else if (kind == ZB_LAYER_MLA && (ends(nm, "self_attn.q_a_proj.weight") || ends(nm, "self_attn.q_a_layernorm.weight") ||
                                          ends(nm, "self_attn.kv_a_proj_with_mqa.weight") ||
                                          ends(nm, "self_attn.kv_a_layernorm.weight"))) how = PARTIAL;  /* latent: replicated */
        else if (kind != ZB_LAYER_MAMBA2 && ends(nm, "self_attn.o_proj.weight")) how = COLS;
        else if (kind == ZB_LAYER_MAMBA2) {
            const zb_mamba2_dims *m = &c->mamba;
            int64_t di = m->d_inner, xw = (int64_t)m->x_groups * m->headdim, bw = (int64_t)m->b_groups * m->d_state,
                    cw = (int64_t)m->c_groups * m->d_state, nh = m->nheads;
            if (ends(nm, "mamba.in_proj.weight")) {
                /* column-parallel PER SEGMENT: z | x | B | C | dt, each split by head / group */
                seg_add(s, 0, di, r, n);
                seg_add(s, di, xw, r, n);
                seg_add(s, di + xw, bw, r, n);
                seg_add(s, di + xw + bw, cw, r, n);
                seg_add(s, di + xw + bw + cw, nh, r, n);
                return ZB_OK;
            }
            if (ends(nm, "mamba.conv1d.weight") || ends(nm, "mamba.conv1d.bias")) {
                seg_add(s, 0, xw, r, n);
                seg_add(s, xw, bw, r, n);
                seg_add(s, xw + bw, cw, r, n);
                return ZB_OK;
            }
            if (ends(nm, "mamba.dt_bias") || ends(nm, "mamba.A_log") || ends(nm, "mamba.D") ||
                ends(nm, "mamba.norm.weight")) how = ROWS;
            else if (ends(nm, "mamba.out_proj.weight")) how = COLS;
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

void zb_tp_free(zb_tp *tp) {
    if (!tp) return;
    free(tp->full_params);
    free(tp->slices);
    free(tp);
}

const zb_config *zb_model_full_config(const zb_model *m) { return m->tp ? &m->tp->full : &m->cfg; }

int zb_model_init_tp(zb_model *m, const zb_config *cfg, const zb_grid *g) {
    return zb_model_init_tp_ex(m, cfg, g, ZB_WEIGHTS_F32);
}

int zb_model_init_tp_ex(zb_model *m, const zb_config *cfg, const zb_grid *g, zb_wdtype wt) {
    memset(m, 0, sizeof *m);
    int n = g->tp_size;
    ZB_TRY(zb_config_validate(cfg, cfg->model_type));
    ZB_TRY(zb_tp_check(cfg, n));
    /* PP: this stage's layers [l0, l1) (the same partition on every rank) */
    int l0 = 0, l1 = cfg->n_layers;
    if (g->pp_size > 1) ZB_TRY(zb_pp_stage_layers(cfg, g->pp_size, g->pp_rank, &l0, &l1));
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
        tp->comm = g->tp;
        tp->rank = g->tp_rank;
        tp->size = n;
        tp->writer = g->dp_rank == 0;
        tp->full = *cfg;
        tp->vocab0 = (int64_t)g->tp_rank * local.vocab;
        tp->pp = g->pp;
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
    return zb_model_load_tp_ex(m, path, g, ZB_WEIGHTS_F32);
}

int zb_model_load_tp_ex(zb_model *m, const char *path, const zb_grid *g, zb_wdtype wt) {
    memset(m, 0, sizeof *m);
    zb_store *st = NULL;
    ZB_TRY(zb_store_open(&st, path));
    int rc = zb_model_init_tp_ex(m, zb_store_config(st), g, wt);
    if (rc) { zb_fail_prefix(rc, path); zb_store_close(st); return rc; }
    for (int i = 0; i < m->n_params && !rc; i++) {
        const zb_param *p = &m->params[i];
        void *dst = p->bf16 ? (void *)(m->data16 + p->offset) : (void *)(m->data + p->offset);
        rc = read_slice(st, path, &m->tp->full_params[i], &m->tp->slices[i], dst);
    }
    zb_store_close(st);
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
    if (L > INT_MAX) return zb_fail(ZB_EARG, "tensor parallel: '%s' slice too large to gather", m->params[i].name);
    float *buf = zb_malloc(sizeof(float) * L * (size_t)tp->size, "gather buffer");
    if (!buf) return ZB_ENOMEM;
    int rc = ZB_OK;
    if (MPI_Allgather(src, (int)L, MPI_FLOAT, buf, (int)L, MPI_FLOAT, tp->comm) != MPI_SUCCESS)
        rc = zb_fail(ZB_EMPI, "tensor parallel: MPI_Allgather of '%s' failed", m->params[i].name);
    for (int r = 0; r < tp->size && !rc; r++) {
        zb_tp_slice s;
        rc = zb_tp_slice_of(&tp->full, &tp->full_params[i], r, tp->size, &s);
        if (!rc) slice_place(&s, buf + (size_t)r * L, dst);
    }
    free(buf);
    return rc;
}

int zb_tp_gather_vocab(const zb_tp *tp, const float *local, float *tmp, float *full, int N, int Vl) {
    size_t nl = (size_t)N * Vl, V = (size_t)Vl * tp->size;
    if (tp->size == 1) { memcpy(full, local, sizeof(float) * nl); return ZB_OK; }
    if (nl > INT_MAX) { zb_fail(ZB_EARG, "tensor parallel: %zu logits too many to gather", nl); tp_die(); }
    float *own = NULL;
    if (!tmp && !(tmp = own = zb_malloc(sizeof(float) * nl * tp->size, "logits gather"))) tp_die();
    if (MPI_Allgather(local, (int)nl, MPI_FLOAT, tmp, (int)nl, MPI_FLOAT, tp->comm) != MPI_SUCCESS) {
        zb_fail(ZB_EMPI, "tensor parallel: MPI_Allgather of the logits failed");
        tp_die();
    }
    for (int r = 0; r < tp->size; r++)
        for (int n = 0; n < N; n++)
            memcpy(full + (size_t)n * V + (size_t)r * Vl, tmp + (size_t)r * nl + (size_t)n * Vl, sizeof(float) * Vl);
    free(own);
    return ZB_OK;
}

int zb_tp_grad_sq_norm(const zb_model *m, double *out) {
    double split = 0, rep = 0;
    for (int i = 0; i < m->n_params; i++) {
        const float *g = m->grad + m->params[i].offset;
        double s = 0;
        for (size_t j = 0; j < m->params[i].numel; j++) s += (double)g[j] * g[j];
        if (m->tp && !m->tp->slices[i].replicated) split += s;
        else rep += s;
    }
    if (m->tp && m->tp->size > 1) ZB_MPI(MPI_Allreduce(MPI_IN_PLACE, &split, 1, MPI_DOUBLE, MPI_SUM, m->tp->comm));
    *out = split + rep;
    return ZB_OK;
}

/* ---- saving ----------------------------------------------------------------------------- */

int zb_tp_save(const zb_model *m, const char *path, int dtype_i, MPI_Comm comm) {
    zb_dtype dtype = (zb_dtype)dtype_i;
    const zb_tp *tp = m->tp;
    zb_ckpt_writer *w = NULL;
    int rc = zb_ckpt_open_model(&w, path, &tp->full, dtype, comm);
    uint16_t *tmp = NULL;
    /* PP: every rank walks every tensor of the full model (the writer is collective); a stage
     * writes the ones it holds (the tied embedding: the first stage), nothing for the others */
    zb_tensor_spec *spec = NULL;
    int ns = 0;
    if (!rc) rc = zb_expected_tensors(&tp->full, &spec, &ns);
    for (int j = 0, i = 0; j < ns && !rc; j++) {
        if (i >= m->n_params || strcmp(spec[j].name, tp->full_params[i].name)) {
            int64_t shape[4] = {0};
            for (int k = 0; k < spec[j].ndim; k++) shape[k] = spec[j].shape[k];
            int64_t z = 0;
            rc = zb_ckpt_write_slab(w, spec[j].name, dtype, spec[j].ndim, shape, 0, &z, &z, 0, 0, NULL);
            continue;
        }
        const zb_param *p = &tp->full_params[i];
        const zb_tp_slice *s = &tp->slices[i];
        size_t L = m->params[i].numel;
        const float *x = m->data + m->params[i].offset;
        i++;
        /* replicated tensors: TP rank 0 writes; other DP replicas write nothing */
        int nseg = (!tp->writer || (s->replicated && tp->rank != 0)) ? 0 : s->nseg;
        if (tp->pp_size > 1 && p->layer < 0 && tp->pp_rank > 0 && !strcmp(p->name, "model.embed_tokens.weight"))
            nseg = 0;   /* PP: the tied copy on the last stage */
        const void *data = x;
        if (dtype == ZB_DT_BF16 && nseg) {
            uint16_t *t = realloc(tmp, sizeof(uint16_t) * L);
            if (!t) { rc = zb_fail(ZB_ENOMEM, "%s: out of memory converting '%s'", path, p->name); break; }
            tmp = t;
            for (size_t j = 0; j < L; j++) tmp[j] = zb_f32_to_bf16(x[j]);
            data = tmp;
        }
        rc = zb_ckpt_write_slab(w, p->name, dtype, p->ndim, p->shape, nseg, s->row0, s->nrows, s->col0, s->ncols,
                                data);
    }
    free(spec);
    free(tmp);
    if (rc) { if (w) zb_ckpt_abort(w); return rc; }
    return zb_ckpt_close(w);
}

/* ---- vocabulary-parallel embedding and losses --------------------------------------------- */

void zb_tp_embedding_forward(const zb_model *m, float *out, const int *ids, int N) {
    const zb_tp *tp = m->tp;
    int d = m->cfg.d_model;
    int64_t Vl = m->cfg.vocab;
    for (int n = 0; n < N; n++) {
        int64_t v = (int64_t)ids[n] - tp->vocab0;
        if (v >= 0 && v < Vl && m->w.embed_lin.bf16)   /* bf16 embedding (--weights bf16) */
            zb_bf16_to_f32_n(m->w.embed_lin.bf16 + v * d, out + (size_t)n * d, (size_t)d);
        else if (v >= 0 && v < Vl) memcpy(out + (size_t)n * d, m->w.embed + v * d, sizeof(float) * d);
        else memset(out + (size_t)n * d, 0, sizeof(float) * d);
    }
    zb_tp_allreduce(tp, out, (size_t)N * d);   /* exactly one rank contributes each row */
}

void zb_tp_embedding_backward(zb_model *m, const float *dout, const int *ids, int N) {
    const zb_tp *tp = m->tp;
    int d = m->cfg.d_model;
    int64_t Vl = m->cfg.vocab;
    for (int n = 0; n < N; n++) {
        int64_t v = (int64_t)ids[n] - tp->vocab0;
        if (v < 0 || v >= Vl) continue;
        float *g = m->g.embed + v * d;
        const float *s = dout + (size_t)n * d;
        for (int i = 0; i < d; i++) g[i] += s[i];
    }
}

double zb_tp_cross_entropy(const zb_tp *tp, float *dlogits, const float *logits, const int *targets, int N,
                           int Vl, float scale) {
    int64_t V = (int64_t)Vl * tp->size, v0 = tp->vocab0;
    float *mx = zb_malloc(sizeof(float) * (size_t)(N ? N : 1), "loss");
    double *st = zb_malloc(sizeof(double) * 2 * (size_t)(N ? N : 1), "loss");
    if (!mx || !st) tp_die();
    for (int n = 0; n < N; n++) {
        const float *row = logits + (size_t)n * Vl;
        float m = -INFINITY;
        for (int v = 0; v < Vl; v++) if (row[v] > m) m = row[v];
        mx[n] = m;
    }
    /* 1: the row max over the whole vocabulary */
    if (tp->size > 1 && allreduce_rc(tp->comm, mx, (size_t)N, MPI_FLOAT, sizeof(float), MPI_MAX)) tp_die();
    for (int n = 0; n < N; n++) {
        const float *row = logits + (size_t)n * Vl;
        double sum = 0;
        for (int v = 0; v < Vl; v++) sum += exp((double)row[v] - mx[n]);
        int64_t y = (int64_t)targets[n] - v0;
        st[2 * n] = sum;
        st[2 * n + 1] = (y >= 0 && y < Vl) ? row[y] : 0.0;   /* the target logit lives on one rank */
    }
    /* 2: sum of exponentials and the target logit */
    if (tp->size > 1 && allreduce_rc(tp->comm, st, 2 * (size_t)N, MPI_DOUBLE, sizeof(double), MPI_SUM)) tp_die();
    double total = 0;
    for (int n = 0; n < N; n++) {
        float *d = dlogits ? dlogits + (size_t)n * Vl : NULL;
        int y = targets[n];
        if (y < 0 || y >= V) {
            if (d) memset(d, 0, sizeof(float) * Vl);
            continue;
        }
        double lse = mx[n] + log(st[2 * n]);
        total += lse - st[2 * n + 1];
        if (d) {
            const float *row = logits + (size_t)n * Vl;
            for (int v = 0; v < Vl; v++) d[v] = (float)(scale * exp((double)row[v] - lse));
            if (y - v0 >= 0 && y - v0 < Vl) d[y - v0] -= scale;
        }
    }
    free(mx);
    free(st);
    return total;
}

double zb_tp_kl_div(const zb_tp *tp, float *dstudent, const float *student, const float *teacher, const int *mask,
                    int N, int Vl, float tau, float scale) {
    size_t nn = N ? (size_t)N : 1;
    double *mx = zb_malloc(sizeof(double) * 2 * nn, "kl"), *z = zb_malloc(sizeof(double) * 2 * nn, "kl");
    double *kl = zb_malloc(sizeof(double) * nn, "kl");
    if (!mx || !z || !kl) tp_die();
    for (int n = 0; n < N; n++) {
        const float *s = student + (size_t)n * Vl, *t = teacher + (size_t)n * Vl;
        double ms = -INFINITY, mt = -INFINITY;
        for (int v = 0; v < Vl; v++) {
            if (s[v] / tau > ms) ms = s[v] / tau;
            if (t[v] / tau > mt) mt = t[v] / tau;
        }
        mx[2 * n] = ms;
        mx[2 * n + 1] = mt;
    }
    if (tp->size > 1 && allreduce_rc(tp->comm, mx, 2 * (size_t)N, MPI_DOUBLE, sizeof(double), MPI_MAX)) tp_die();
    for (int n = 0; n < N; n++) {
        const float *s = student + (size_t)n * Vl, *t = teacher + (size_t)n * Vl;
        double zs = 0, zt = 0;
        for (int v = 0; v < Vl; v++) { zs += exp(s[v] / tau - mx[2 * n]); zt += exp(t[v] / tau - mx[2 * n + 1]); }
        z[2 * n] = zs;
        z[2 * n + 1] = zt;
    }
    if (tp->size > 1 && allreduce_rc(tp->comm, z, 2 * (size_t)N, MPI_DOUBLE, sizeof(double), MPI_SUM)) tp_die();
    for (int n = 0; n < N; n++) {
        const float *s = student + (size_t)n * Vl, *t = teacher + (size_t)n * Vl;
        float *d = dstudent ? dstudent + (size_t)n * Vl : NULL;
        kl[n] = 0;
        if (mask && !mask[n]) {
            if (d) memset(d, 0, sizeof(float) * Vl);
            continue;
        }
        double lzs = mx[2 * n] + log(z[2 * n]), lzt = mx[2 * n + 1] + log(z[2 * n + 1]), k = 0;
        for (int v = 0; v < Vl; v++) {
            double lpt = t[v] / tau - lzt, lps = s[v] / tau - lzs, pt = exp(lpt);
            k += pt * (lpt - lps);
            if (d) d[v] = (float)(scale * (exp(lps) - pt) / tau);
        }
        kl[n] = k;
    }
    if (tp->size > 1 && allreduce_rc(tp->comm, kl, (size_t)N, MPI_DOUBLE, sizeof(double), MPI_SUM)) tp_die();
    double total = 0;
    for (int n = 0; n < N; n++) total += kl[n];
    free(mx);
    free(z);
    free(kl);
    return total;
}

/* ---- backward of a mixer: partial sums over local heads ------------------------------------ */

/* The MLA latent projections (q_a_proj, q_a_layernorm, kv_a_proj_with_mqa, kv_a_layernorm) are
 * replicated but feed this rank's heads only: their gradients are partial sums. */
static void partial_grads(zb_model *m, int l, int zero) {
    const zb_tp *tp = m->tp;
    for (int i = 0; i < m->n_params; i++) {
        if (m->params[i].layer != l || !tp->slices[i].partial_grad) continue;
        float *g = m->grad + m->params[i].offset;
        if (zero) memset(g, 0, sizeof(float) * m->params[i].numel);
        else zb_tp_allreduce(tp, g, m->params[i].numel);
    }
}

void zb_tp_mixer_grad_begin(zb_model *m, int l, float *dx, size_t n) {
    if (m->tp->size == 1 || m->tp->rank == 0) return;
    memset(dx, 0, sizeof(float) * n);   /* rank 0 keeps the previous value, the others add 0 */
    if (m->grad) partial_grads(m, l, 1);
}

void zb_tp_mixer_grad_end(zb_model *m, int l, float *dx, size_t n) {
    if (m->tp->size == 1) return;
    zb_tp_allreduce(m->tp, dx, n);   /* the input gradient of the column-parallel projections */
    if (m->grad) partial_grads(m, l, 0);
}
