/* zebra train --stage pretrain|ild|kd|sft|dpo --config run.json [--resume CKPT.h5]
 *             [--tp N --pp M] [--stop-after STEP]
 *
 * One driver for every training stage (SPEC §6; the math of each stage is core/train.c).
 * run.json keys (defaults in parentheses; paths relative to the working directory):
 *   model        pretrain: a config .json (random init) or a model; other stages: the model
 *   teacher      kd / ild: the teacher (an HF dir or .h5)
 *   reference    dpo: the frozen reference (model)
 *   data         shard directory written by `zebra data`
 *   out          output directory (out/train): train.jsonl, ckpt-<step>.h5, model.h5
 *   seq_len (256) micro_batch (4) grad_accum (1) steps (100) seed (1) init_std (0.02)
 *   lr (3e-4) min_lr (lr/10) warmup (0; < 1 = a fraction of steps) weight_decay (0.1)
 *   beta1 (0.9) beta2 (0.95) eps (1e-8) clip (1.0)
 *   kl_weight (1) ce_weight (0) temperature (1)     kd
 *   beta (0.1)                                      dpo
 *   ild_loss ("release" | "mixer_mse")              ild (train.h)
 *   log_every (10) eval_every (0: only at the end) eval_batches (8) save_every (0: only at
 *   the end) keep_last (2)
 *   zero (false)  ZeRO-1: AdamW moments sharded over the data-parallel ranks (parallel/dp.h)
 *   bucket_mb (25) size of the gradient buckets all-reduced during the backward
 *   pp_balance ("model")  --pp: cut the layers into stages by the cost model (parallel/pp.h)
 *                or "measured": rank 0 times one layer of each kind and the head at the run's
 *                micro-batch shape (zb_pp_measure) and every rank uses that cut
 *   train: ["pattern", ...]   only these parameters train (default: all; ild: new mixers)
 *   freeze: ["pattern", ...]  these do not train
 *   groups: [{"match": "mamba.A_log", "lr_mult": 1, "weight_decay": 0}, ...]
 * Patterns: a substring of the HF name, or a glob with '*'.
 *
 * One step = grad_accum micro-batches of micro_batch rows on every data-parallel rank, the
 * gradient averaged over them and over the ranks (parallel/dp.c: buckets all-reduced during
 * the last micro-batch's backward, or ZeRO-1), clipped by its global norm, one AdamW update
 * (core/optim.c). The checkpoint holds the model, the optimizer moments
 * (optim.m.<name>, optim.v.<name>), train.state (step, loader row and epoch, RNG state,
 * tokens) and the run config, in one HDF5 file written under a temporary name and renamed:
 * --resume continues bit-for-bit (same ranks).
 *
 * --tp N (SPEC §9, Megatron-LM tensor parallelism, parallel/tp.h): every rank holds a TP shard
 * (the student, and the KD/ILD teacher or DPO reference sharded the same way); the losses are
 * vocabulary-parallel (never gathering the logits); the clipping norm is the global one; AdamW
 * runs on the local slices; every tensor of the checkpoint, the moments included, is written
 * by slices with its full shape, so a checkpoint resumes / loads at any TP and DP layout
 * (the full moments are gathered from the ZeRO shards on save and scattered on load).
 *
 * --pp M: pipeline parallel (parallel/pp.h,
 * docs/PARALLEL.md): each rank holds the layers of its stage (partitioned by the cost model at
 * seq_len), the step's grad_accum micro-batches run through a 1F1B schedule (use grad_accum >= M),
 * the loss is computed on the last stage and broadcast over the pipeline, a tied embedding's
 * gradient is summed between first and last stage and counted once in the clipping norm, which
 * sums over the stages; the DP reduction (or ZeRO-1) follows the backward. Checkpoints are
 * written by stages and slices, with full shapes: they resume at any TP x PP x DP layout.
 * kd / ild / dpo: the teacher (reference) is cut at the student's layers and runs forward in
 * the same pipeline, just ahead of the student (core/train.h zb_trainer_pp_init). */
#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoint.h"
#include "commands.h"
#include "data.h"
#include "dp.h"
#include "grid.h"
#include "model.h"
#include "model_io.h"
#include "tensor_names.h"
#include "optim.h"
#include "pipeline.h"
#include "pp.h"
#include "tp.h"
#include "store.h"
#include "train.h"

#define PATHLEN 1024

typedef struct {
    char model[PATHLEN], teacher[PATHLEN], reference[PATHLEN], data[PATHLEN], out[PATHLEN];
    int seq_len, micro_batch, grad_accum, steps, log_every, eval_every, eval_batches;
    int save_every, keep_last;
    int zero;          /* ZeRO-1 */
    double bucket_mb;  /* gradient bucket size */
    int pp_measured;   /* pp_balance "measured": partition by timed layers, not the cost model */
    double warmup;
    float init_std;
    uint64_t seed;
    zb_optim_cfg opt;
    zb_loss_cfg loss;
    cJSON *root;   /* kept for train / freeze / groups */
    char *text;
} run_cfg;

static double jnum(const cJSON *o, const char *k, double d) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : d;
}
static void jstr(const cJSON *o, const char *k, char *dst, const char *d) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    snprintf(dst, PATHLEN, "%s", cJSON_IsString(v) ? v->valuestring : d);
}

static int run_cfg_load(run_cfg *r, const char *path) {
    memset(r, 0, sizeof *r);
    size_t len = 0;
    ZB_TRY(zb_read_file(path, &r->text, &len));
    r->root = cJSON_Parse(r->text);
    if (!r->root || !cJSON_IsObject(r->root))
        return zb_fail(ZB_EFORMAT, "%s: not a JSON object", path);
    const cJSON *o = r->root;
    jstr(o, "model", r->model, "");
    jstr(o, "teacher", r->teacher, "");
    jstr(o, "reference", r->reference, "");
    jstr(o, "data", r->data, "");
    jstr(o, "out", r->out, "out/train");
    r->seq_len = (int)jnum(o, "seq_len", 256);
    r->micro_batch = (int)jnum(o, "micro_batch", 4);
    r->grad_accum = (int)jnum(o, "grad_accum", 1);
    r->steps = (int)jnum(o, "steps", 100);
    r->log_every = (int)jnum(o, "log_every", 10);
    r->eval_every = (int)jnum(o, "eval_every", 0);
    r->eval_batches = (int)jnum(o, "eval_batches", 8);
    r->save_every = (int)jnum(o, "save_every", 0);
    r->keep_last = (int)jnum(o, "keep_last", 2);
    r->seed = (uint64_t)jnum(o, "seed", 1);
    r->init_std = (float)jnum(o, "init_std", 0.02);
    r->warmup = jnum(o, "warmup", 0);
    r->bucket_mb = jnum(o, "bucket_mb", 25);
    char bal[PATHLEN];
    jstr(o, "pp_balance", bal, "model");
    if (strcmp(bal, "model") && strcmp(bal, "measured"))
        return zb_fail(ZB_EARG, "%s: pp_balance is \"model\" or \"measured\", not \"%s\"", path, bal);
    r->pp_measured = !strcmp(bal, "measured");
    const cJSON *zr = cJSON_GetObjectItemCaseSensitive(o, "zero");
    r->zero = cJSON_IsTrue(zr) || (cJSON_IsNumber(zr) && zr->valuedouble != 0);
    zb_optim_cfg *c = &r->opt;
    *c = zb_optim_defaults();
    c->lr = (float)jnum(o, "lr", c->lr);
    c->min_lr = (float)jnum(o, "min_lr", c->lr * 0.1);
    c->weight_decay = (float)jnum(o, "weight_decay", c->weight_decay);
    c->beta1 = (float)jnum(o, "beta1", c->beta1);
    c->beta2 = (float)jnum(o, "beta2", c->beta2);
    c->eps = (float)jnum(o, "eps", c->eps);
    c->clip = (float)jnum(o, "clip", c->clip);
    c->total_steps = r->steps;
    c->warmup = r->warmup > 0 && r->warmup < 1 ? (int)ceil(r->warmup * r->steps) : (int)r->warmup;
    r->loss.kl_weight = (float)jnum(o, "kl_weight", 1.0);
    r->loss.ce_weight = (float)jnum(o, "ce_weight", 0.0);
    r->loss.temperature = (float)jnum(o, "temperature", 1.0);
    r->loss.beta = (float)jnum(o, "beta", 0.1);
    char ild[PATHLEN];
    jstr(o, "ild_loss", ild, "release");
    if (strcmp(ild, "release") && strcmp(ild, "mixer_mse"))
        return zb_fail(ZB_EARG, "%s: ild_loss is \"release\" or \"mixer_mse\", not \"%s\"", path, ild);
    r->loss.ild_mode = strcmp(ild, "release") ? ZB_ILD_MIXER_MSE : ZB_ILD_RELEASE;
    if (r->seq_len < 2 || r->micro_batch < 1 || r->grad_accum < 1 || r->steps < 1 ||
        r->log_every < 1 || r->loss.temperature <= 0)
        return zb_fail(ZB_EARG, "%s: seq_len >= 2, micro_batch, grad_accum, steps, log_every >= 1 "
                       "and temperature > 0 are required", path);
    if (!r->data[0]) return zb_fail(ZB_EARG, "%s: 'data' (a shard directory) is required", path);
    return ZB_OK;
}

static void run_cfg_free(run_cfg *r) {
    cJSON_Delete(r->root);
    free(r->text);
}

/* Parameter selection and groups of run.json on top of the stage's default. */
static int apply_groups(const run_cfg *r, zb_adamw *o, const zb_model *m, int rank) {
    const cJSON *train = cJSON_GetObjectItemCaseSensitive(r->root, "train");
    const cJSON *freeze = cJSON_GetObjectItemCaseSensitive(r->root, "freeze");
    const cJSON *groups = cJSON_GetObjectItemCaseSensitive(r->root, "groups");
    const cJSON *it;
    if (cJSON_IsArray(train)) {
        zb_adamw_set_all_trainable(o, 0);
        cJSON_ArrayForEach(it, train) {
            if (!cJSON_IsString(it)) return zb_fail(ZB_EARG, "run config: 'train' holds strings");
            if (!zb_adamw_set_group(o, m, it->valuestring, -1, -1, 1))
                return zb_fail(ZB_EARG, "run config: train pattern '%s' matches no parameter", it->valuestring);
        }
    }
    if (cJSON_IsArray(freeze))
        cJSON_ArrayForEach(it, freeze) {
            if (!cJSON_IsString(it)) return zb_fail(ZB_EARG, "run config: 'freeze' holds strings");
            zb_adamw_set_group(o, m, it->valuestring, -1, -1, 0);
        }
    if (cJSON_IsArray(groups))
        cJSON_ArrayForEach(it, groups) {
            const cJSON *mt = cJSON_GetObjectItemCaseSensitive(it, "match");
            if (!cJSON_IsString(mt)) return zb_fail(ZB_EARG, "run config: every group needs a 'match' string");
            const cJSON *tr = cJSON_GetObjectItemCaseSensitive(it, "trainable");
            int n = zb_adamw_set_group(o, m, mt->valuestring, (float)jnum(it, "lr_mult", -1),
                                       (float)jnum(it, "weight_decay", -1),
                                       cJSON_IsBool(tr) ? cJSON_IsTrue(tr) : -1);
            if (rank == 0) fprintf(stderr, "train: group '%s': %d tensors\n", mt->valuestring, n);
        }
    return ZB_OK;
}

static int is_config_json(const char *path) {
    size_t n = strlen(path);
    struct stat st;
    return n > 5 && !strcmp(path + n - 5, ".json") && stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* ---- checkpoints ------------------------------------------------------------------------ */

enum { ST_STEP, ST_ROW, ST_EPOCH, ST_RNG, ST_TOKENS, ST_STAGE, ST_DP, ST_N };

/* Parameter i as a part of its full tensor: the TP slice (parallel/tp.h), or the whole tensor
 * on one rank. *writes: whether this rank writes it (TP: DP replica 0, replicated tensors by
 * TP rank 0; otherwise world rank 0). */
static const zb_param *param_part(const zb_model *m, int i, int world_rank, zb_tp_slice *s, int *writes) {
    if (m->tp) {
        *s = m->tp->slices[i];
        *writes = m->tp->writer && !(s->replicated && m->tp->rank != 0);
        return &m->tp->full_params[i];
    }
    const zb_param *p = &m->params[i];
    memset(s, 0, sizeof *s);
    s->nseg = 1;
    s->nrows[0] = p->ndim ? p->shape[0] : 1;
    s->width = s->ncols = s->nrows[0] ? (int64_t)p->numel / s->nrows[0] : 0;
    s->replicated = 1;
    *writes = world_rank == 0;
    return p;
}

/* PP: the checkpoint writer is collective over every rank, but each stage holds only its
 * tensors: every rank walks every tensor of the full model (as zb_tp_save) and writes its
 * slices of the ones it holds (the tied embedding: the first stage's copy), nothing for the
 * others; the moments of a tensor are written when the stage holding it trains it. */
static int save_pp_tensors(zb_ckpt_writer *w, const zb_model *m, const zb_adamw *o, const float *fm,
                           const float *fv, const zb_grid *g) {
    const zb_tp *tp = m->tp;
    zb_tensor_spec *spec = NULL;
    int ns = 0;
    ZB_TRY(zb_expected_tensors(&tp->full, &spec, &ns));
    int *loc = zb_malloc(sizeof(int) * 2 * (size_t)(ns + 1), "checkpoint tensor map");
    if (!loc) { free(spec); return ZB_ENOMEM; }
    int *tr = loc + ns + 1, rc = ZB_OK;
    for (int j = 0, i = 0; j < ns; j++) {   /* the stage's tensors come in the full model's order */
        loc[j] = -1;
        tr[j] = 0;
        if (i < m->n_params && !strcmp(spec[j].name, tp->full_params[i].name)) {
            loc[j] = i;
            tr[j] = o->trainable[i] != 0;
            i++;
        }
    }
    if (MPI_Allreduce(MPI_IN_PLACE, tr, ns, MPI_INT, MPI_MAX, g->world) != MPI_SUCCESS)
        rc = zb_fail(ZB_EMPI, "train: MPI_Allreduce of the trainable flags failed");
    char name[ZB_PARAM_NAME + 16];
    int64_t z = 0;
    for (int j = 0; j < ns && !rc; j++) {
        int64_t shape[4] = {0};
        for (int k = 0; k < spec[j].ndim; k++) shape[k] = spec[j].shape[k];
        int i = loc[j], nseg = 0;
        const zb_tp_slice *s = NULL;
        size_t off = 0;
        if (i >= 0) {
            s = &tp->slices[i];
            nseg = (!tp->writer || (s->replicated && tp->rank != 0)) ? 0 : s->nseg;
            if (tp->pp_rank > 0 && !strcmp(spec[j].name, "model.embed_tokens.weight")) nseg = 0;   /* tied copy */
            off = m->params[i].offset;
        }
        const int64_t *r0 = nseg ? s->row0 : &z, *nr = nseg ? s->nrows : &z;
        int64_t c0 = nseg ? s->col0 : 0, nc = nseg ? s->ncols : 0;
        rc = zb_ckpt_write_slab(w, spec[j].name, ZB_DT_F32, spec[j].ndim, shape, nseg, r0, nr, c0, nc,
                                nseg ? m->data + off : NULL);
        if (!rc && tr[j]) {
            int mseg = nseg && o->trainable[i] ? nseg : 0;
            snprintf(name, sizeof name, "optim.m.%s", spec[j].name);
            rc = zb_ckpt_write_slab(w, name, ZB_DT_F32, spec[j].ndim, shape, mseg, mseg ? r0 : &z, mseg ? nr : &z,
                                    mseg ? c0 : 0, mseg ? nc : 0, mseg ? fm + off : NULL);
            snprintf(name, sizeof name, "optim.v.%s", spec[j].name);
            if (!rc) rc = zb_ckpt_write_slab(w, name, ZB_DT_F32, spec[j].ndim, shape, mseg, mseg ? r0 : &z,
                                             mseg ? nr : &z, mseg ? c0 : 0, mseg ? nc : 0, mseg ? fv + off : NULL);
        }
    }
    free(loc);
    free(spec);
    return rc;
}

static int save_ckpt(const char *path, const zb_model *m, const zb_adamw *o, const zb_dp *dp,
                     const int64_t *state, const char *run_text, const zb_grid *g) {
    char *json = zb_config_to_json(zb_model_full_config(m));
    if (!json) return zb_fail(ZB_ENOMEM, "%s: cannot serialise the config", path);
    /* ZeRO-1: the checkpoint holds the full moments of the shard (gathered over DP) */
    const float *fm = o->m, *fv = o->v;
    float *gm = NULL, *gv = NULL;
    int rc = ZB_OK;
    if (dp->zero) {
        gm = zb_malloc(sizeof(float) * m->n_floats, "gathered moments");
        gv = zb_malloc(sizeof(float) * m->n_floats, "gathered moments");
        rc = gm && gv ? zb_dp_gather_moments(dp, o, gm, gv) : ZB_ENOMEM;
        fm = gm;
        fv = gv;
    }
    zb_ckpt_writer *w = NULL;
    if (!rc) rc = zb_ckpt_writer_open(&w, path, g->world);
    if (!rc) rc = zb_ckpt_set_config(w, json);
    free(json);
    char name[ZB_PARAM_NAME + 16];
    if (!rc && m->tp && m->tp->pp_size > 1) {
        rc = save_pp_tensors(w, m, o, fm, fv, g);
        free(gm);
        free(gv);
        gm = gv = NULL;
    }
    for (int i = 0; i < m->n_params && !rc && !(m->tp && m->tp->pp_size > 1); i++) {
        zb_tp_slice s;
        int writes;
        const zb_param *fp = param_part(m, i, g->rank, &s, &writes);
        size_t off = m->params[i].offset;
        int ns = writes ? s.nseg : 0;
        rc = zb_ckpt_write_slab(w, fp->name, ZB_DT_F32, fp->ndim, fp->shape, ns, s.row0, s.nrows, s.col0, s.ncols,
                                m->data + off);
        if (!rc && o->trainable[i]) {   /* moments of frozen parameters are zero: not stored */
            snprintf(name, sizeof name, "optim.m.%s", fp->name);
            rc = zb_ckpt_write_slab(w, name, ZB_DT_F32, fp->ndim, fp->shape, ns, s.row0, s.nrows, s.col0, s.ncols,
                                    fm + off);
            snprintf(name, sizeof name, "optim.v.%s", fp->name);
            if (!rc) rc = zb_ckpt_write_slab(w, name, ZB_DT_F32, fp->ndim, fp->shape, ns, s.row0, s.nrows, s.col0,
                                             s.ncols, fv + off);
        }
    }
    free(gm);
    free(gv);
    int64_t sh = ST_N;
    if (!rc) rc = zb_ckpt_write_tensor(w, "train.state", ZB_DT_I64, 1, &sh, state);
    int64_t tl = (int64_t)strlen(run_text);
    if (!rc && tl > 0) rc = zb_ckpt_write_tensor(w, "train.run_json", ZB_DT_U8, 1, &tl, run_text);
    if (rc) { if (w) zb_ckpt_abort(w); return rc; }
    return zb_ckpt_close(w);
}

/* This rank's slice of checkpoint entry j (full shape fp). */
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

/* The optimizer moments (this rank's slices; ZeRO: then its DP range) and train.state. */
static int load_ckpt_state(const char *path, const zb_model *m, zb_adamw *o, const zb_dp *dp, int64_t *state) {
    zb_ckpt_reader *r = NULL;
    ZB_TRY(zb_ckpt_reader_open(&r, path));
    int rc = ZB_OK, i = zb_ckpt_find(r, "train.state");
    if (i < 0 || zb_ckpt_entry_at(r, i)->numel != ST_N)
        rc = zb_fail(ZB_EFORMAT, "%s: not a training checkpoint (no train.state[%d])", path, ST_N);
    if (!rc) rc = zb_ckpt_read_raw(r, i, 0, ST_N, state);
    float *fm = o->m, *fv = o->v;
    if (!rc && dp->zero) {
        fm = zb_calloc(m->n_floats, sizeof(float), "moments");
        fv = zb_calloc(m->n_floats, sizeof(float), "moments");
        if (!fm || !fv) rc = ZB_ENOMEM;
    }
    char name[ZB_PARAM_NAME + 16];
    for (int p = 0; p < m->n_params && !rc; p++) {
        zb_tp_slice s;
        int writes;
        const zb_param *fp = param_part(m, p, 0, &s, &writes);
        size_t off = m->params[p].offset;
        for (int k = 0; k < 2 && !rc; k++) {
            snprintf(name, sizeof name, "optim.%c.%s", k ? 'v' : 'm', fp->name);
            int j = zb_ckpt_find(r, name);
            float *dst = (k ? fv : fm) + off;
            if (j < 0) memset(dst, 0, sizeof(float) * m->params[p].numel);
            else rc = read_part(r, j, fp, &s, dst);
        }
    }
    if (!rc && dp->zero) rc = zb_dp_scatter_moments(dp, o, fm, fv);
    if (dp->zero) { free(fm); free(fv); }
    zb_ckpt_reader_close(r);
    return rc;
}

/* ---- the JSONL log ------------------------------------------------------------------------- */

/* On resume keep the records up to the checkpoint's step (a crash may have left later ones). */
static int log_open(FILE **f, const char *path, int64_t keep_upto, int resume) {
    if (resume) {
        char *text = NULL;
        size_t len = 0;
        if (zb_read_file(path, &text, &len) == ZB_OK) {
            FILE *w = fopen(path, "w");
            if (!w) { free(text); return zb_fail(ZB_EIO, "%s: cannot write: %s", path, strerror(errno)); }
            for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
                cJSON *j = cJSON_Parse(line);
                const cJSON *s = j ? cJSON_GetObjectItemCaseSensitive(j, "step") : NULL;
                if (cJSON_IsNumber(s) && s->valuedouble <= (double)keep_upto) fprintf(w, "%s\n", line);
                cJSON_Delete(j);
            }
            free(text);
            *f = w;
            return ZB_OK;
        }
    }
    *f = fopen(path, "w");
    if (!*f) return zb_fail(ZB_EIO, "%s: cannot write: %s", path, strerror(errno));
    return ZB_OK;
}

static void fmt_time(char *buf, size_t cap, double s) {
    if (s < 0 || !isfinite(s)) { snprintf(buf, cap, "?"); return; }
    long t = (long)(s + 0.5);
    if (t >= 3600) snprintf(buf, cap, "%ldh%02ldm", t / 3600, (t / 60) % 60);
    else if (t >= 60) snprintf(buf, cap, "%ldm%02lds", t / 60, t % 60);
    else snprintf(buf, cap, "%lds", t);
}

/* ---- batches: the token loader, or preference pairs for dpo -------------------------------- */

typedef struct {
    zb_loader *ld;
    zb_prefs *pf;
    uint64_t next, npairs;   /* dpo: next global pair index (across epochs) */
    int B, T, rank, size;
} batch_src;

static int src_open(batch_src *s, const char *dir, const char *split, zb_stage stage, int B, int T,
                    int rank, int size) {
    memset(s, 0, sizeof *s);
    s->B = B; s->T = T; s->rank = rank; s->size = size;
    if (stage != ZB_STAGE_DPO) return zb_loader_open(&s->ld, dir, split, B, T, rank, size);
    ZB_TRY(zb_pref_open(&s->pf, dir, split));
    s->npairs = zb_pref_count(s->pf);
    if (s->npairs == 0) return zb_fail(ZB_EFORMAT, "%s: no preference pairs in split %s", dir, split);
    return ZB_OK;
}

/* The data's ids must index the models that read them: the student's (full) vocabulary and the
 * teacher's / reference's (every id outside is one error naming the file, data.h). */
static void src_limit_vocab(batch_src *s, const zb_trainer *tr) {
    int v = zb_model_full_config(tr->student)->vocab;
    if (tr->teacher && zb_model_full_config(tr->teacher)->vocab < v) v = zb_model_full_config(tr->teacher)->vocab;
    if (s->ld) zb_loader_limit_vocab(s->ld, v, "the model's vocabulary");
    if (s->pf) zb_pref_limit_vocab(s->pf, v, "the model's vocabulary");
}

static void src_close(batch_src *s) {
    if (s->ld) zb_loader_close(s->ld);
    if (s->pf) zb_pref_close(s->pf);
    memset(s, 0, sizeof *s);
}

/* One row of a pair: prompt ++ completion in T tokens (the prompt is cut from the left, then the
 * completion from the right, when too long); targets only where the next token is part of the
 * completion (SPEC §6 DPO: log pi(y | x) over the continuation tokens). */
static void pref_row(const uint32_t *pr, size_t np, const uint32_t *c, size_t nc, int T, int *ids, int *tg) {
    size_t keep_p = np, over = np + nc > (size_t)T ? np + nc - (size_t)T : 0;
    size_t cut = over < (np > 0 ? np - 1 : 0) ? over : (np > 0 ? np - 1 : 0);
    keep_p = np - cut;
    const uint32_t *p0 = pr + cut;
    size_t n = keep_p + nc > (size_t)T ? (size_t)T : keep_p + nc;
    for (int t = 0; t < T; t++) {
        size_t i = (size_t)t;
        ids[t] = i < n ? (int)(i < keep_p ? p0[i] : c[i - keep_p]) : 0;
        size_t j = i + 1;   /* the token predicted at t */
        tg[t] = (j < n && j >= keep_p) ? (int)c[j - keep_p] : -1;
    }
}

static int src_next(batch_src *s, int *ids, int *tg) {
    if (s->ld) return zb_loader_next(s->ld, ids, tg);
    /* rank r of R takes pairs next + b*R + r; rows [0,B) chosen, [B,2B) rejected */
    for (int b = 0; b < s->B; b++) {
        uint64_t i = (s->next + (uint64_t)b * s->size + s->rank) % s->npairs;
        zb_pref_pair pp;
        ZB_TRY(zb_pref_get(s->pf, i, &pp));
        pref_row(pp.prompt, pp.n_prompt, pp.chosen, pp.n_chosen, s->T, ids + (size_t)b * s->T, tg + (size_t)b * s->T);
        pref_row(pp.prompt, pp.n_prompt, pp.rejected, pp.n_rejected, s->T, ids + (size_t)(s->B + b) * s->T,
                 tg + (size_t)(s->B + b) * s->T);
    }
    s->next += (uint64_t)s->B * s->size;
    return ZB_OK;
}

static zb_loader_pos src_tell(const batch_src *s) {
    if (s->ld) return zb_loader_tell(s->ld);
    zb_loader_pos p = {s->next % s->npairs, s->next / s->npairs};
    return p;
}

static int src_seek(batch_src *s, zb_loader_pos p) {
    if (s->ld) return zb_loader_seek(s->ld, p);
    s->next = p.epoch * s->npairs + p.row;
    return ZB_OK;
}

/* ---- evaluation on the validation split --------------------------------------------------- */

/* The global squared gradient norm: zb_dp_grad_sq_norm (TP, ZeRO), then summed over the
 * pipeline stages, the tied embedding counted once (the last stage's copy left out: after
 * zb_pp_tied_grad_sum it equals the first stage's). */
static int pp_grad_sq_norm(const zb_dp *dp, zb_adamw *o, const zb_grid *g, double *out) {
    const zb_model *m = dp->m;
    if (g->pp_size < 2) return zb_dp_grad_sq_norm(dp, o, out);
    int tied = -1;
    if (m->cfg.tie_embeddings && g->pp_rank == g->pp_size - 1) {
        const zb_param *p = zb_model_param(m, "model.embed_tokens.weight");
        if (p) tied = (int)(p - m->params);
    }
    unsigned char keep = tied >= 0 ? o->trainable[tied] : 0;
    if (tied >= 0) o->trainable[tied] = 0;
    int rc = zb_dp_grad_sq_norm(dp, o, out);
    if (tied >= 0) o->trainable[tied] = keep;
    ZB_TRY(rc);
    return zb_comm_sum_f64(g->comm, ZB_GROUP_PP, out, 1);
}

static int evaluate(zb_trainer *tr, zb_pp_trainer *pt, const run_cfg *r, const zb_grid *g, int *ids, int *tg,
                    zb_loss_parts *out) {
    batch_src ld;
    ZB_TRY(src_open(&ld, r->data, "val", tr->stage, tr->B, r->seq_len, g->dp_rank, g->dp_size));
    src_limit_vocab(&ld, tr);
    double acc[5] = {0, 0, 0, 0, 0};
    int rc = ZB_OK;
    for (int b = 0; b < r->eval_batches && !rc; b++) {
        zb_loss_parts p;
        rc = src_next(&ld, ids, tg);
        if (!rc) rc = g->pp_size > 1 ? zb_pp_trainer_step(pt, 1, ids, tg, 0, 1.0f, &p)
                                     : zb_trainer_step(tr, ids, tg, 0, 1.0f, &p);
        if (!rc) { acc[0] += p.loss; acc[1] += p.ce; acc[2] += p.kl; acc[3] += p.mse; acc[4] += 1; }
    }
    src_close(&ld);
    ZB_TRY(rc);
    ZB_TRY(zb_comm_sum_f64(g->comm, ZB_GROUP_DP, acc, 5));
    memset(out, 0, sizeof *out);
    if (acc[4] > 0) {
        out->loss = acc[0] / acc[4]; out->ce = acc[1] / acc[4];
        out->kl = acc[2] / acc[4]; out->mse = acc[3] / acc[4];
    }
    return ZB_OK;
}

/* ---- the command ---------------------------------------------------------------------------- */

typedef struct {
    run_cfg r;
    zb_grid g;
    zb_model m, t;
    int have_t, have_grid;
    zb_trainer tr;
    zb_pp_trainer pt;
    int cut[ZB_MAX_LAYERS + 1], cut_t;   /* PP: the stages' first layers; cut_t: the teacher's too */
    zb_adamw o;
    zb_dp dp;
    batch_src ld;
    int *ids, *tg;
    FILE *log;
} train_state;

/* A model from an HF directory or .h5: this rank's TP shard under --tp > 1 (zb_model_load_tp
 * reads only its slices, whatever layout wrote the file). */
static int load_model(zb_model *m, const char *path, const zb_grid *g, const int *cut) {
    if (g->tp_size > 1 || g->pp_size > 1) return zb_model_load_tp_ex(m, path, g, ZB_WEIGHTS_F32, cut);
    return zb_model_load(m, path);
}

/* The config of a model path (HF directory, .h5, or a config .json). */
static int path_config(const char *path, zb_config *c) {
    if (is_config_json(path)) return zb_config_load(path, c);
    zb_store *st = NULL;
    ZB_TRY(zb_store_open(&st, path));
    *c = *zb_store_config(st);
    zb_store_close(st);
    return ZB_OK;
}

/* PP: the cut of the layers into stages, first[S + 1] (the teacher's too when *same).
 * By the cost model (pp.h) unless measured; with a teacher / reference in the pipeline both are
 * cut at the same layers, balancing the student's forward + backward plus the teacher's forward
 * (ILD distils layer l from the teacher's layer l). Measured: rank 0 times the layers
 * (zb_pp_measure, on the TP-local dims) and broadcasts the cut. Prints the cut on rank 0. */
static int set_partition(const run_cfg *r, const zb_grid *g, const char *student, const char *teacher, int rows,
                         int *first, int *same) {
    zb_config sc, tc;
    ZB_TRY(path_config(student, &sc));
    ZB_TRY(zb_tp_check(&sc, g->tp_size));   /* before the local dims are used */
    if (teacher) {
        ZB_TRY(path_config(teacher, &tc));
        ZB_TRY(zb_tp_check(&tc, g->tp_size));
        if (tc.n_layers != sc.n_layers) teacher = NULL;   /* KD across depths: each its own cut */
    }
    *same = teacher != NULL;
    int L = sc.n_layers, S = g->pp_size;
    int rc = ZB_OK;
    if (S > L) return zb_fail(ZB_EARG, "pipeline parallel: --pp %d stages for a model of %d layers (every stage "
                              "needs at least one layer)", S, L);
    if (r->pp_measured) {
        if (g->rank == 0) {
            zb_config ls, lt;
            zb_pp_measured ms, mt;
            zb_tp_local_config(&sc, g->tp_size, &ls);
            rc = zb_pp_measure(&ls, rows, r->seq_len, &ms);
            if (!rc && teacher) {
                zb_tp_local_config(&tc, g->tp_size, &lt);
                rc = zb_pp_measure(&lt, rows, r->seq_len, &mt);
            }
            double lc[ZB_MAX_LAYERS], head = rc ? 0 : ms.head_fwd + ms.head_bwd + (teacher ? mt.head_fwd : 0);
            for (int l = 0; l < L && !rc; l++) lc[l] = ms.layer_fwd[l] + ms.layer_bwd[l] + (teacher ? mt.layer_fwd[l] : 0);
            if (!rc) rc = zb_pp_partition_costs(lc, L, 0, head, S, first, NULL);
            if (!rc) {
                fprintf(stderr, "train: pp_balance measured (s per micro-batch of %d x %d, forward + backward%s):",
                        rows, r->seq_len, teacher ? " + teacher forward" : "");
                for (int l = 0; l < L; l++) fprintf(stderr, " %s %.3g", zb_layer_kind_name(sc.kinds[l]), lc[l]);
                fprintf(stderr, "; head %.3g\n", head);
            }
        }
        /* rank 0's status and cut to every rank (an error there stops all ranks here) */
        int buf[ZB_MAX_LAYERS + 2];
        buf[0] = rc;
        memcpy(buf + 1, first, sizeof(int) * (size_t)(S + 1));
        ZB_MPI(MPI_Bcast(buf, S + 2, MPI_INT, 0, g->world));
        if (buf[0]) return g->rank == 0 ? rc : zb_fail(ZB_EARG, "pipeline parallel: rank 0 could not time the layers");
        memcpy(first, buf + 1, sizeof(int) * (size_t)(S + 1));
    } else {
        zb_pp_cost_cfg k = zb_pp_cost_defaults(1, r->seq_len);
        if (teacher) k.teacher = &tc;
        ZB_TRY(zb_pp_partition(&sc, S, &k, first, NULL));
    }
    if (g->rank == 0) {
        fprintf(stderr, "train: pipeline stages (%s):", r->pp_measured ? "measured" : "cost model");
        for (int s2 = 0; s2 < S; s2++) fprintf(stderr, " [%d,%d)", first[s2], first[s2 + 1]);
        fprintf(stderr, "\n");
    }
    return ZB_OK;
}

static int train_run(train_state *S, zb_stage stage, const char *cfg_path, const char *resume,
                     int tp, int pp, long stop_after) {
    run_cfg *r = &S->r;
    ZB_TRY(run_cfg_load(r, cfg_path));
    ZB_TRY(zb_grid_init(&S->g, MPI_COMM_WORLD, tp, pp));
    S->have_grid = 1;
    zb_grid *g = &S->g;
    int rank = g->rank;
    const int PP = g->pp_size > 1;
    const int with_t = stage == ZB_STAGE_KD || stage == ZB_STAGE_ILD || stage == ZB_STAGE_DPO;
    const char *t_path = stage == ZB_STAGE_DPO ? (r->reference[0] ? r->reference : r->model) : r->teacher;
    if (with_t && !t_path[0]) return zb_fail(ZB_EARG, "%s: stage %s needs 'teacher'", cfg_path, zb_stage_name(stage));
    if (!resume && !r->model[0]) return zb_fail(ZB_EARG, "%s: 'model' is required", cfg_path);
    const int *cut = NULL;
    if (PP) {
        ZB_TRY(set_partition(r, g, resume ? resume : r->model, with_t ? t_path : NULL,
                             stage == ZB_STAGE_DPO ? 2 * r->micro_batch : r->micro_batch, S->cut, &S->cut_t));
        cut = S->cut;
    }

    /* the model: resumed, a random init from a config (pretrain), or loaded */
    if (resume) {
        ZB_TRY(load_model(&S->m, resume, g, cut));
    } else if (is_config_json(r->model)) {
        if (stage != ZB_STAGE_PRETRAIN)
            return zb_fail(ZB_EARG, "train: a config as 'model' (random init) only for --stage pretrain");
        zb_config c;
        ZB_TRY(zb_config_load(r->model, &c));
        ZB_TRY(zb_model_init(&S->m, &c));
        zb_model_init_random(&S->m, r->seed, r->init_std);
        if (g->tp_size > 1 || PP) {
            /* TP / PP: the same random model as one rank, then this rank's slices of it (every rank
             * holds the full model for a moment: fine for the sizes trained from scratch here) */
            zb_model full = S->m;
            memset(&S->m, 0, sizeof S->m);
            int rc = zb_model_init_tp_ex(&S->m, &c, g, ZB_WEIGHTS_F32, cut);
            if (!rc) rc = zb_tp_copy_from_full(&S->m, &full);
            zb_model_free(&full);
            ZB_TRY(rc);
        }
    } else {
        if (!r->model[0]) return zb_fail(ZB_EARG, "%s: 'model' is required", cfg_path);
        ZB_TRY(load_model(&S->m, r->model, g, cut));
    }
    if (with_t) {
        /* TP / PP: the teacher is sharded the same way; dpo: the reference is the initial policy,
         * frozen (also when resuming) */
        ZB_TRY(load_model(&S->t, t_path, g, S->cut_t ? cut : NULL));
        S->have_t = 1;
    }
    ZB_TRY(zb_trainer_init(&S->tr, stage, &r->loss, &S->m, S->have_t ? &S->t : NULL,
                           r->micro_batch, r->seq_len));
    zb_trainer *tr = &S->tr;
    ZB_TRY(zb_adamw_init(&S->o, &S->m, &r->opt));
    zb_trainer_default_trainable(tr, S->o.trainable);
    ZB_TRY(apply_groups(r, &S->o, &S->m, rank));
    size_t n_train = zb_adamw_trainable_floats(&S->o, &S->m);
    if (n_train == 0) return zb_fail(ZB_EARG, "train: no trainable parameter");
    /* data parallel: gradient buckets overlapped with the backward, or ZeRO-1 */
    ZB_TRY(zb_dp_init(&S->dp, &S->m, S->o.trainable, g->comm, r->bucket_mb, r->zero));
    ZB_TRY(zb_dp_zero_attach(&S->dp, &S->o));
    if (PP) ZB_TRY(zb_pp_trainer_init(&S->pt, tr, r->grad_accum));
    if (PP && !r->zero) S->pt.dp = &S->dp;   /* buckets overlap each stage's last backward */

    /* PP: the step's grad_accum micro-batches are read up front (every stage reads them, so that
     * the loader positions agree; the first stage uses the ids, the last the targets) */
    size_t N = (size_t)tr->rows * r->seq_len * (PP ? r->grad_accum : 1);
    ZB_ALLOC(S->ids, N, "batch ids");
    ZB_ALLOC(S->tg, N, "batch targets");
    ZB_TRY(src_open(&S->ld, r->data, "train", stage, tr->B, r->seq_len, g->dp_rank, g->dp_size));
    src_limit_vocab(&S->ld, tr);

    int64_t state[ST_N] = {0};
    zb_rng rng;
    zb_rng_seed(&rng, r->seed);
    if (resume) {
        ZB_TRY(load_ckpt_state(resume, &S->m, &S->o, &S->dp, state));
        if (state[ST_STAGE] != stage || state[ST_DP] != g->dp_size) {
            if (rank == 0)
                fprintf(stderr, "train: note: checkpoint was stage %s on %lld DP ranks; now %s on %d "
                        "(the data order changes)\n", zb_stage_name((zb_stage)state[ST_STAGE]),
                        (long long)state[ST_DP], zb_stage_name(stage), g->dp_size);
        }
        S->o.step = state[ST_STEP];
        rng.s = (uint64_t)state[ST_RNG];
        zb_loader_pos pos = {(uint64_t)state[ST_ROW], (uint64_t)state[ST_EPOCH]};
        ZB_TRY(src_seek(&S->ld, pos));
    }
    int64_t step = S->o.step;
    double tokens_seen = (double)state[ST_TOKENS];

    if (rank == 0) {
        if (mkdir(r->out, 0777) && errno != EEXIST)
            return zb_fail(ZB_EIO, "%s: cannot create: %s", r->out, strerror(errno));
        char p[PATHLEN + 32];
        snprintf(p, sizeof p, "%s/train.jsonl", r->out);
        ZB_TRY(log_open(&S->log, p, step, resume != NULL));
        char gd[160];
        fprintf(stderr, "train: stage %s, %zu parameters (%zu trainable), %s\n", zb_stage_name(stage),
                zb_model_num_params(&S->m), n_train, zb_grid_describe(g, gd, sizeof gd));
        fprintf(stderr, "train: %d steps x %d accum x %d ranks x %d rows x %d tokens; lr %g -> %g, "
                "warmup %d; %s at step %lld\n", r->steps, r->grad_accum, g->dp_size, tr->rows,
                r->seq_len, r->opt.lr, r->opt.min_lr, r->opt.warmup, resume ? "resumed" : "starting",
                (long long)step);
    }
    ZB_TRY(zb_comm_barrier(g->comm, ZB_GROUP_WORLD));

    const double tok_per_step = (double)r->grad_accum * g->dp_size * tr->B * r->seq_len *
                                (stage == ZB_STAGE_DPO ? 2 : 1);
    double t_interval = 0, acc[8] = {0}, gn_sum = 0, comm_interval = 0, busy_interval = 0;
    int n_interval = 0;
    double t_run = 0;
    int64_t steps_run = 0;
    char saved[16][PATHLEN + 32];
    int n_saved = 0;
    const float gs = 1.0f / (float)r->grad_accum;
    int eval_ok = 1;
    while (step < r->steps) {
        double t0 = zb_now();
        g->comm->seconds = 0;
        zb_model_zero_grad(&S->m);
        double part[8] = {0};
        if (PP) {
            size_t Nm = (size_t)tr->rows * r->seq_len;
            for (int k = 0; k < r->grad_accum; k++)
                ZB_TRY(src_next(&S->ld, S->ids + k * Nm, S->tg + k * Nm));
            zb_loss_parts p;
            ZB_TRY(zb_pp_trainer_step(&S->pt, r->grad_accum, S->ids, S->tg, 1, gs, &p));
            part[0] = p.loss; part[1] = p.ce; part[2] = p.kl; part[3] = p.mse;
            part[4] = p.reward_acc; part[5] = p.tokens; part[6] = p.ild_block; part[7] = p.ild_mixer;
            if (S->dp.zero) {
                /* ZeRO reduce-scatters m->grad in zb_dp_finish: the tied copies' gradients are
                 * summed first (the two stages' ZeRO ranges differ) */
                ZB_TRY(zb_pp_tied_grad_sum(&S->m));
                ZB_TRY(zb_dp_finish(&S->dp));
            } else {
                /* the buckets were armed before each stage's last backward (tr->pp_dp) and run
                 * while it did; the DP mean and the tied sum are both linear: either order */
                ZB_TRY(zb_dp_finish(&S->dp));
                ZB_TRY(zb_pp_tied_grad_sum(&S->m));
            }
        }
        for (int k = 0; k < r->grad_accum && !PP; k++) {
            zb_loss_parts p;
            ZB_TRY(src_next(&S->ld, S->ids, S->tg));
            if (k == r->grad_accum - 1) zb_dp_arm(&S->dp);   /* last backward: buckets overlap it */
            ZB_TRY(zb_trainer_step(tr, S->ids, S->tg, 1, gs, &p));
            part[0] += p.loss; part[1] += p.ce; part[2] += p.kl; part[3] += p.mse;
            part[4] += p.reward_acc; part[5] += p.tokens; part[6] += p.ild_block; part[7] += p.ild_mixer;
        }
        if (!PP) ZB_TRY(zb_dp_finish(&S->dp));
        double gsq;
        ZB_TRY(pp_grad_sq_norm(&S->dp, &S->o, g, &gsq));   /* global: over TP, PP and ZeRO shards */
        double gnorm = sqrt(gsq);
        float lr = zb_lr_at(&S->o.cfg, step);
        ZB_TRY(zb_dp_optim_step(&S->dp, &S->o, lr, zb_clip_scale(&S->o.cfg, gnorm)));
        step++;
        ZB_TRY(zb_comm_sum_f64(g->comm, ZB_GROUP_DP, part, 8));   /* sums over ranks of the per-rank sums */
        comm_interval += g->comm->seconds;
        double denom = (double)r->grad_accum * g->dp_size;
        for (int i = 0; i < 8; i++) acc[i] += i == 5 ? part[i] : part[i] / denom;
        tokens_seen += tok_per_step;
        gn_sum += gnorm;
        n_interval++;
        double dt = zb_now() - t0;
        busy_interval += dt - g->comm->seconds;   /* this rank's compute: the step less its MPI time */
        t_interval += dt;
        t_run += dt;
        steps_run++;

        if (step % r->log_every == 0 || step == r->steps || step == stop_after) {
            double tps = t_interval > 0 ? n_interval * tok_per_step / t_interval : 0;
            /* PP: each stage's compute time per step (the balance of the cut), to rank 0 */
            char busy[ZB_MAX_LAYERS * 16 + 32] = "";
            if (PP) {
                double mine = busy_interval / n_interval, all[ZB_MAX_LAYERS];
                ZB_TRY(zb_comm_gather(g->comm, ZB_GROUP_PP, &mine, 1, all, ZB_CT_F64, 0));
                size_t o = (size_t)snprintf(busy, sizeof busy, ",\"stage_busy_s\":[");
                for (int q = 0; q < g->pp_size && o < sizeof busy; q++)
                    o += (size_t)snprintf(busy + o, sizeof busy - o, "%s%.4f", q ? "," : "", all[q]);
                if (o < sizeof busy) snprintf(busy + o, sizeof busy - o, "]");
            }
            double eta = (double)(r->steps - step) * (t_run / (double)steps_run);
            if (rank == 0) {
                char es[32];
                fmt_time(es, sizeof es, eta);
                double L = acc[0] / n_interval;
                fprintf(stderr, "step %6lld/%d | loss %.4f", (long long)step, r->steps, L);
                if (stage == ZB_STAGE_KD) fprintf(stderr, " (kl %.4f ce %.4f)", acc[2] / n_interval, acc[1] / n_interval);
                if (stage == ZB_STAGE_ILD && r->loss.ild_mode == ZB_ILD_RELEASE)
                    fprintf(stderr, " (block %.4f mixer %.4f)", acc[6] / n_interval, acc[7] / n_interval);
                fprintf(stderr, " | lr %.3e | gnorm %.3f | %.0f tok/s | eta %s\n", lr, gn_sum / n_interval, tps, es);
                fprintf(S->log, "{\"stage\":\"%s\",\"step\":%lld,\"loss\":%.17g,\"ce\":%.17g,\"kl\":%.17g,"
                        "\"mse\":%.17g,\"lr\":%.9g,\"grad_norm\":%.9g,\"tokens\":%.0f,\"tokens_per_s\":%.1f,"
                        "\"elapsed_s\":%.3f,\"eta_s\":%.1f,\"step_s\":%.6f,\"comm_s\":%.6f,\"ild_block\":%.17g,"
                        "\"ild_mixer\":%.17g%s}\n",
                        zb_stage_name(stage), (long long)step, L,
                        acc[1] / n_interval, acc[2] / n_interval, acc[3] / n_interval, lr, gn_sum / n_interval,
                        tokens_seen, tps, t_run, eta, t_interval / n_interval, comm_interval / n_interval,
                        acc[6] / n_interval, acc[7] / n_interval, busy);
                fflush(S->log);
            }
            memset(acc, 0, sizeof acc);
            gn_sum = 0; n_interval = 0; t_interval = 0; comm_interval = 0; busy_interval = 0;
        }
        int last = step == r->steps;
        if (eval_ok && r->eval_batches > 0 && ((r->eval_every > 0 && step % r->eval_every == 0) || last)) {
            zb_loss_parts ev;
            if (evaluate(tr, &S->pt, r, g, S->ids, S->tg, &ev) != ZB_OK) {
                /* every rank reads the same files, so every rank fails alike: no hang */
                if (rank == 0) fprintf(stderr, "train: evaluation off: %s\n", zb_errmsg());
                eval_ok = 0;
            } else if (rank == 0) {
                double ppl = stage == ZB_STAGE_PRETRAIN || stage == ZB_STAGE_SFT ? exp(ev.ce) : 0;
                fprintf(stderr, "eval %6lld | val loss %.4f", (long long)step, ev.loss);
                if (ppl > 0) fprintf(stderr, " | val ppl %.3f", ppl);
                fprintf(stderr, "\n");
                fprintf(S->log, "{\"stage\":\"%s\",\"step\":%lld,\"val_loss\":%.17g,\"val_ce\":%.17g,"
                        "\"val_kl\":%.17g,\"val_mse\":%.17g,\"val_ppl\":%.9g}\n", zb_stage_name(stage),
                        (long long)step, ev.loss, ev.ce, ev.kl, ev.mse, ppl);
                fflush(S->log);
            }
        }
        if ((r->save_every > 0 && step % r->save_every == 0) || last || step == stop_after) {
            zb_loader_pos pos = src_tell(&S->ld);
            state[ST_STEP] = step;
            state[ST_ROW] = (int64_t)pos.row;
            state[ST_EPOCH] = (int64_t)pos.epoch;
            state[ST_RNG] = (int64_t)rng.s;
            state[ST_TOKENS] = (int64_t)tokens_seen;
            state[ST_STAGE] = stage;
            state[ST_DP] = g->dp_size;
            char path[PATHLEN + 32];
            snprintf(path, sizeof path, "%s/ckpt-%06lld.h5", r->out, (long long)step);
            double ts = zb_now();
            ZB_TRY(save_ckpt(path, &S->m, &S->o, &S->dp, state, r->text, g));
            if (rank == 0) {
                fprintf(stderr, "save  %6lld | %s (%.2fs)\n", (long long)step, path, zb_now() - ts);
                if (r->keep_last > 0) {   /* drop the oldest beyond keep_last */
                    int cap = r->keep_last < 16 ? r->keep_last : 16;
                    if (n_saved == cap) {
                        if (strcmp(saved[0], path)) unlink(saved[0]);
                        memmove(saved[0], saved[1], sizeof saved[0] * (size_t)(cap - 1));
                        n_saved--;
                    }
                    snprintf(saved[n_saved++], sizeof saved[0], "%s", path);
                }
            }
        }
        if (step == stop_after) break;
    }
    if (step == r->steps) {
        char path[PATHLEN + 32];
        snprintf(path, sizeof path, "%s/model.h5", r->out);
        ZB_TRY(zb_model_save(&S->m, path, ZB_DT_F32, g->world));
        if (rank == 0)
            fprintf(stderr, "train: done, %lld steps, %.0f tokens in %.1fs (%.0f tok/s); model %s\n",
                    (long long)step, tokens_seen, t_run, t_run > 0 ? steps_run * tok_per_step / t_run : 0, path);
    }
    return ZB_OK;
}

int zb_cmd_train(int argc, char **argv) {
    static const char *const vals[] = {"--stage", "--config", "--resume", "--tp", "--pp", "--stop-after", NULL};
    ZB_TRY(zb_args_check(argc, argv, vals, NULL, 0));
    const char *st = zb_arg_str(argc, argv, "--stage", NULL);
    const char *cfg = zb_arg_str(argc, argv, "--config", NULL);
    if (!st || !cfg)
        return zb_fail(ZB_EARG, "train: needs --stage pretrain|ild|kd|sft|dpo --config run.json");
    int stage = zb_stage_parse(st);
    if (stage < 0) return zb_fail(ZB_EARG, "train: unknown stage '%s' (pretrain, ild, kd, sft, dpo)", st);
    int tp, pp, stop_after;
    ZB_TRY(zb_arg_int(argc, argv, "--tp", 1, 1, 1 << 16, &tp));
    ZB_TRY(zb_arg_int(argc, argv, "--pp", 1, 1, 1 << 16, &pp));
    ZB_TRY(zb_arg_int(argc, argv, "--stop-after", -1, -1, INT_MAX, &stop_after));
    train_state S;
    memset(&S, 0, sizeof S);
    int rc = train_run(&S, (zb_stage)stage, cfg, zb_arg_str(argc, argv, "--resume", NULL),
                       tp, pp, stop_after);
    if (S.log) fclose(S.log);
    src_close(&S.ld);
    free(S.ids); free(S.tg);
    zb_dp_free(&S.dp);
    if (S.o.m) zb_adamw_free(&S.o);
    zb_pp_trainer_free(&S.pt);
    if (S.tr.mask) zb_trainer_free(&S.tr);
    if (S.have_t) zb_model_free(&S.t);
    if (S.m.data) zb_model_free(&S.m);
    if (S.have_grid) zb_grid_free(&S.g);
    run_cfg_free(&S.r);
    return rc;
}
