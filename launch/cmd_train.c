/* zebra train --stage pretrain|ild|kd|sft|dpo --config run.json [--resume CKPT.h5]
 *             [--tp N] [--pp M] [--stop-after STEP]
 *
 * One driver for every training stage (SPEC §6; the math of each stage: core/train.c; the
 * run.json keys: core/runcfg.h; docs/TRAINING.md). The loop, as llm.c's main:
 *
 *   setup: grid, models (this rank's shard / stage), trainer, AdamW, DP reducer, batches
 *   for each step:
 *     step_flat  grad_accum micro-batches forward + backward, the gradient reduced over DP
 *                (buckets during the last backward, or ZeRO-1's reduce-scatter)
 *     step_1f1b  (--pp) the same micro-batches through the 1F1B pipeline schedule
 *     update     the global gradient norm (TP, PP, ZeRO), clipping, one AdamW update — never
 *                for a step whose loss or gradient norm is inf / NaN (stopped or skipped)
 *     log, evaluate, save (a checkpoint resumes bit for bit, at any TP x PP x DP layout)
 *
 * One step = grad_accum micro-batches of micro_batch rows on every data-parallel rank.
 * --tp N (SPEC §9): every rank holds a TP shard (the student, and the KD / ILD teacher or DPO
 * reference sharded the same way); losses vocabulary-parallel; AdamW on the local slices.
 * --pp M: each rank holds the layers of its stage; the teacher (reference) is cut at the
 * student's layers and runs forward in the same pipeline (parallel/pipeline.h). The 1F1B
 * bubble is (M - 1) / (grad_accum + M - 1) of a step: grad_accum >= M fills the pipeline.
 * --device cuda: one rank per GPU (the node-local rank picks it), the models, activations and
 * moments on the GPU, the grid's collectives through NCCL (parallel/comm_nccl.h); checkpoints
 * are the same files (written from host copies). --precision f32|bf16 (default bf16): the
 * GPU's matrix products (f32 for exactness checks against CPU or one GPU). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "commands.h"
#include "data.h"
#include "dp.h"
#include "grid.h"
#include "model.h"
#include "model_io.h"
#include "optim.h"
#include "pipeline.h"
#include "pp.h"
#include "runcfg.h"
#include "store.h"
#include "tp.h"
#include "train.h"

enum { ST_STEP, ST_ROW, ST_EPOCH, ST_RNG, ST_TOKENS, ST_STAGE, ST_DP, ST_N };   /* train.state */
typedef char ckpt_path[ZB_RUN_PATH + 288];   /* out/ + a directory entry's name */

typedef struct {
    zb_stage stage;
    zb_run_cfg r;
    zb_grid g;
    int have_grid, have_t, pp;
    int gpu;                    /* --device cuda */
    zb_backend be;              /* the run's backend (the CUDA table with its options) */
    int cut[ZB_MAX_LAYERS + 1], cut_t;   /* --pp: the stages' first layers; cut_t: the teacher's too */
    zb_model m, t;
    zb_trainer tr;
    zb_pp_trainer pt;
    zb_adamw o;
    zb_dp dp;
    zb_batches *bt;
    int *ids, *tg;
    zb_rng rng;
    int64_t step, skipped;
    double tokens_seen, tok_per_step;
    int log_fd;                 /* rank 0: train.jsonl, appended one line at a time */
    ckpt_path *saved;           /* rank 0: checkpoints kept, oldest first */
    int n_saved;
} train_run;

/* ---- the JSONL log ------------------------------------------------------------------------ */

/* A number as JSON: inf / NaN have no JSON spelling and become null. */
static const char *jnum(char *buf, size_t cap, const char *fmt, double x) {
    if (!isfinite(x)) return "null";
    snprintf(buf, cap, fmt, x);
    return buf;
}

/* One record, written with one write(2) on an O_APPEND descriptor: a kill leaves whole lines. */
static int log_line(int fd, const char *line) {
    size_t n = strlen(line);
    while (n) {
        ssize_t k = write(fd, line, n);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return zb_fail(ZB_EIO, "train.jsonl: cannot write: %s", strerror(errno));
        line += k;
        n -= (size_t)k;
    }
    return ZB_OK;
}

/* On resume keep the records up to the checkpoint's step (a crash may have left later ones, which
 * the resumed run writes again), in a copy renamed over the log: never a half-rewritten log.
 * Dropped records are counted on stderr, a torn last line (no newline) too; a line that is not
 * a JSON object is kept as it is. */
static int log_keep_upto(const char *path, int64_t upto) {
    char *text = NULL;
    size_t len = 0;
    if (zb_read_file(path, &text, &len) != ZB_OK) return ZB_OK;   /* no log yet */
    char tmp[ZB_RUN_PATH + 48];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    FILE *w = fopen(tmp, "w");
    if (!w) { free(text); return zb_fail(ZB_EIO, "%s: cannot write: %s", tmp, strerror(errno)); }
    long dropped = 0, torn = 0;
    for (char *line = text, *end; *line; line = end + 1) {
        end = strchr(line, '\n');
        if (!end) { torn = 1; break; }
        *end = 0;
        cJSON *j = cJSON_Parse(line);
        const cJSON *s = j ? cJSON_GetObjectItemCaseSensitive(j, "step") : NULL;
        if (cJSON_IsNumber(s) && s->valuedouble > (double)upto) dropped++;
        else if (*line) fprintf(w, "%s\n", line);
        cJSON_Delete(j);
    }
    free(text);
    int bad = fflush(w) != 0 || fsync(fileno(w)) != 0;
    bad |= fclose(w) != 0;
    if (bad || rename(tmp, path) != 0) {
        unlink(tmp);
        return zb_fail(ZB_EIO, "%s: cannot rewrite it: %s", path, strerror(errno));
    }
    if (dropped || torn)
        fprintf(stderr, "train: %s: %ld record%s after step %lld dropped (the run goes on from the checkpoint)%s\n",
                path, dropped, dropped == 1 ? "" : "s", (long long)upto, torn ? "; a torn last line dropped" : "");
    return ZB_OK;
}

static int log_open(train_run *S, int resume) {
    char p[ZB_RUN_PATH + 32];
    snprintf(p, sizeof p, "%s/train.jsonl", S->r.out);
    if (resume) ZB_TRY(log_keep_upto(p, S->step));
    S->log_fd = open(p, O_WRONLY | O_CREAT | O_APPEND | (resume ? 0 : O_TRUNC), 0666);
    if (S->log_fd < 0) return zb_fail(ZB_EIO, "%s: cannot write: %s", p, strerror(errno));
    return ZB_OK;
}

static void fmt_time(char *buf, size_t cap, double s) {
    if (s < 0 || !isfinite(s)) { snprintf(buf, cap, "?"); return; }
    long t = (long)(s + 0.5);
    if (t >= 3600) snprintf(buf, cap, "%ldh%02ldm", t / 3600, (t / 60) % 60);
    else if (t >= 60) snprintf(buf, cap, "%ldm%02lds", t / 60, t % 60);
    else snprintf(buf, cap, "%lds", t);
}

/* --device cuda: the writer reads host memory, so it is given a view of the model and the
 * moments whose float buffers are host copies (the layout, shards and ranges are the same). */
typedef struct { zb_model m; zb_adamw o; } host_view;

static int host_view_make(train_run *S, host_view *v, int moments) {
    const zb_backend *be = S->m.be;
    ZB_TRY(zb_dp_params_ready(&S->dp));   /* ZeRO-1: the parameters' all-gather in flight */
    v->m = S->m;
    v->o = S->o;
    v->m.data = NULL;
    v->o.m = v->o.v = NULL;
    if (be->host_memory) { v->m.data = S->m.data; v->o.m = S->o.m; v->o.v = S->o.v; return ZB_OK; }
    ZB_ALLOC(v->m.data, S->m.n_floats, "host copy of the weights");
    be->to_host(be, v->m.data, S->m.data, sizeof(float) * S->m.n_floats);
    if (!moments) return ZB_OK;
    ZB_ALLOC(v->o.m, S->o.n_floats + 1, "host copy of the moments");
    ZB_ALLOC(v->o.v, S->o.n_floats + 1, "host copy of the moments");
    be->to_host(be, v->o.m, S->o.m, sizeof(float) * S->o.n_floats);
    be->to_host(be, v->o.v, S->o.v, sizeof(float) * S->o.n_floats);
    return ZB_OK;
}

static void host_view_free(const train_run *S, host_view *v) {
    if (S->m.be->host_memory) return;
    free(v->m.data);
    free(v->o.m);
    free(v->o.v);
}

/* ---- checkpoints kept (keep_last) ------------------------------------------------------------ */

static int cmp_path(const void *a, const void *b) { return strcmp(a, b); }

/* Rank 0: the checkpoints of this run already in `out` (ckpt-NNNNNN.h5 up to the resumed step;
 * the names sort by step), so that keep_last also counts them after --resume. */
static int ckpt_list_init(train_run *S) {
    int cap = S->r.keep_last + 1;
    S->saved = zb_calloc((size_t)cap, sizeof *S->saved, "checkpoint list");
    if (!S->saved) return ZB_ENOMEM;
    DIR *d = S->step > 0 && S->r.keep_last > 0 ? opendir(S->r.out) : NULL;
    if (!d) return ZB_OK;
    ckpt_path *found = NULL;
    int n = 0, fcap = 0, rc = ZB_OK;
    for (struct dirent *e; (e = readdir(d)) && !rc;) {
        long long st;
        int end = 0;
        if (sscanf(e->d_name, "ckpt-%lld.h5%n", &st, &end) != 1 || e->d_name[end] || st > S->step) continue;
        if (n == fcap) {
            void *f2 = realloc(found, sizeof *found * (size_t)(fcap = fcap ? 2 * fcap : 16));
            if (!f2) { rc = zb_fail(ZB_ENOMEM, "%s: out of memory listing checkpoints", S->r.out); break; }
            found = f2;
        }
        snprintf(found[n++], sizeof found[0], "%s/%s", S->r.out, e->d_name);
    }
    closedir(d);
    if (!rc) {
        qsort(found, (size_t)n, sizeof found[0], cmp_path);
        for (int i = n > S->r.keep_last ? n - S->r.keep_last : 0; i < n; i++)
            memcpy(S->saved[S->n_saved++], found[i], sizeof found[0]);
        for (int i = 0; i < n - S->r.keep_last; i++) unlink(found[i]);   /* beyond keep_last already */
    }
    free(found);
    return rc;
}

/* Rank 0: the temporaries of saves that never finished (a run killed while writing: nothing
 * ran to remove them; parallel/checkpoint.c names them NAME.h5.tmp.PID) are removed before this
 * run writes into `out`. A name whose PID is a live process of this node is kept. */
static void remove_stale_tmp(const char *out) {
    DIR *d = opendir(out);
    if (!d) return;
    for (struct dirent *e; (e = readdir(d));) {
        long long st;
        long pid;
        int end = 0;
        if ((sscanf(e->d_name, "ckpt-%lld.h5.tmp.%ld%n", &st, &pid, &end) != 2 &&
             sscanf(e->d_name, "model.h5.tmp.%ld%n", &pid, &end) != 1) || e->d_name[end])
            continue;
        if (pid > 0 && pid <= INT_MAX && (kill((pid_t)pid, 0) == 0 || errno == EPERM)) continue;
        char path[4200];
        snprintf(path, sizeof path, "%s/%s", out, e->d_name);
        if (unlink(path) == 0) fprintf(stderr, "train: removed %s, a save of an earlier run that never finished\n", path);
    }
    closedir(d);
}

/* Rank 0, after `path` was written: forget it if listed, append it, drop the oldest beyond keep_last. */
static void ckpt_list_add(train_run *S, const char *path) {
    if (S->r.keep_last <= 0) return;
    for (int i = 0; i < S->n_saved; i++)
        if (!strcmp(S->saved[i], path)) {
            memmove(S->saved[i], S->saved[i + 1], sizeof S->saved[0] * (size_t)(S->n_saved - i - 1));
            S->n_saved--;
            break;
        }
    snprintf(S->saved[S->n_saved++], sizeof S->saved[0], "%s", path);
    if (S->n_saved > S->r.keep_last) {
        unlink(S->saved[0]);
        memmove(S->saved[0], S->saved[1], sizeof S->saved[0] * (size_t)(S->n_saved - 1));
        S->n_saved--;
    }
}

/* ---- setup ------------------------------------------------------------------------------------ */

/* A model from an HF directory or .h5: this rank's shard / stage under --tp / --pp (each rank
 * reads only its slices, whatever layout wrote the file). */
static int load_model(const train_run *S, zb_model *m, const char *path, const int *cut) {
    if (S->g.tp_size > 1 || S->pp) return zb_model_load_tp_ex(m, path, &S->g, ZB_WEIGHTS_F32, cut);
    return zb_model_load(m, path);
}

/* The config of a model path (HF directory, .h5, or a config .json). */
static int path_config(const char *path, zb_config *c) {
    if (zb_is_config_json(path)) return zb_config_load(path, c);
    zb_store *st = NULL;
    ZB_TRY(zb_store_open(&st, path));
    *c = *zb_store_config(st);
    zb_store_close(st);
    return ZB_OK;
}

/* --pp: the cut of the layers into stages (pp.h zb_pp_choose_cut); a teacher of the student's
 * depth is cut at the same layers, one of another depth by the cost model alone. */
static int plan_stages(train_run *S, const char *student, const char *teacher) {
    const zb_run_cfg *r = &S->r;
    zb_config sc, tc;
    ZB_TRY(path_config(student, &sc));
    if (teacher) ZB_TRY(path_config(teacher, &tc));
    S->cut_t = teacher && tc.n_layers == sc.n_layers;
    int rows = S->stage == ZB_STAGE_DPO ? 2 * r->micro_batch : r->micro_batch, S_ = S->g.pp_size;
    double cost[ZB_MAX_LAYERS + 1];
    ZB_TRY(zb_pp_choose_cut(&sc, S->cut_t ? &tc : NULL, S_, S->g.tp_size, r->pp_measured, rows, r->seq_len,
                            S->g.comm, S->cut, cost));
    if (S->g.rank != 0) return ZB_OK;
    if (r->pp_measured) {
        fprintf(stderr, "train: pp_balance measured (s per micro-batch of %d x %d, forward + backward%s):", rows,
                r->seq_len, S->cut_t ? " + teacher forward" : "");
        for (int l = 0; l < sc.n_layers; l++) fprintf(stderr, " %s %.3g", zb_layer_kind_name(sc.kinds[l]), cost[l]);
        fprintf(stderr, "; head %.3g\n", cost[sc.n_layers]);
    }
    fprintf(stderr, "train: pipeline stages (%s):", r->pp_measured ? "measured" : "cost model");
    for (int s = 0; s < S_; s++) fprintf(stderr, " [%d,%d)", S->cut[s], S->cut[s + 1]);
    fprintf(stderr, "\n");
    if (r->grad_accum < S_)
        fprintf(stderr, "train: note: grad_accum %d < --pp %d leaves stages idle (bubble %.0f%% of a step)\n",
                r->grad_accum, S_, 100.0 * (S_ - 1) / (r->grad_accum + S_ - 1));
    return ZB_OK;
}

/* The student (resumed, a random init from a config for pretrain, or loaded) and the teacher /
 * reference (kd, ild, dpo: sharded the same way; dpo's reference is the initial policy, frozen,
 * also when resuming). */
static int setup_models(train_run *S, const char *resume) {
    const zb_run_cfg *r = &S->r;
    const int with_t = S->stage == ZB_STAGE_KD || S->stage == ZB_STAGE_ILD || S->stage == ZB_STAGE_DPO;
    const char *t_path = S->stage == ZB_STAGE_DPO ? (r->reference[0] ? r->reference : r->model) : r->teacher;
    if (with_t && !t_path[0]) return zb_fail(ZB_EARG, "%s: stage %s needs 'teacher'", r->path, zb_stage_name(S->stage));
    if (!resume && !r->model[0]) return zb_fail(ZB_EARG, "%s: 'model' is required", r->path);
    const int *cut = NULL;
    if (S->pp) {
        ZB_TRY(plan_stages(S, resume ? resume : r->model, with_t ? t_path : NULL));
        cut = S->cut;
    }
    if (resume) {
        ZB_TRY(load_model(S, &S->m, resume, cut));
    } else if (zb_is_config_json(r->model)) {
        if (S->stage != ZB_STAGE_PRETRAIN)
            return zb_fail(ZB_EARG, "train: a config as 'model' (random init) only for --stage pretrain");
        zb_config c;
        ZB_TRY(zb_config_load(r->model, &c));
        ZB_TRY(zb_model_init(&S->m, &c));
        zb_model_init_random(&S->m, r->seed, r->init_std);
        if (S->g.tp_size > 1 || S->pp) {
            /* TP / PP: the same random model as one rank, then this rank's slices of it (every rank
             * holds the full model for a moment: fine for the sizes trained from scratch here) */
            zb_model full = S->m;
            memset(&S->m, 0, sizeof S->m);
            int rc = zb_model_init_tp_ex(&S->m, &c, &S->g, ZB_WEIGHTS_F32, cut);
            if (!rc) rc = zb_tp_copy_from_full(&S->m, &full);
            zb_model_free(&full);
            ZB_TRY(rc);
        }
    } else {
        ZB_TRY(load_model(S, &S->m, r->model, cut));
    }
    if (with_t && S->stage == ZB_STAGE_KD && S->g.tp_size == 1 && !S->pp) {
        /* one rank's KD teacher: bf16 on a GPU in the bf16 mode (zb_kd_teacher_wdtype) */
        zb_config tc;
        ZB_TRY(path_config(t_path, &tc));
        ZB_TRY(zb_model_load_ex(&S->t, t_path, zb_kd_teacher_wdtype(&tc, &S->be, 0)));
        S->have_t = 1;
    } else if (with_t) {
        ZB_TRY(load_model(S, &S->t, t_path, S->cut_t ? cut : NULL));
        S->have_t = 1;
    }
    return ZB_OK;
}

/* Trainer, AdamW with the run's parameter groups, the DP reducer (or ZeRO-1), the pipeline. */
/* The data's ids must index the models that read them: the student's (full) vocabulary and the
 * teacher's / reference's (an id outside is one error naming the file and the id, data.h). */
static void limit_vocab(const train_run *S, zb_batches *b) {
    int v = zb_model_full_config(&S->m)->vocab;
    if (S->have_t && zb_model_full_config(&S->t)->vocab < v) v = zb_model_full_config(&S->t)->vocab;
    zb_batches_limit_vocab(b, v, S->have_t ? "the models' vocabulary" : "the model's vocabulary");
}

static int setup_training(train_run *S) {
    const zb_run_cfg *r = &S->r;
    ZB_TRY(zb_trainer_init(&S->tr, S->stage, &r->loss, &S->m, S->have_t ? &S->t : NULL, r->micro_batch,
                           r->seq_len));
    ZB_TRY(zb_adamw_init(&S->o, &S->m, &r->opt));
    zb_trainer_default_trainable(&S->tr, S->o.trainable);
    int *matched = zb_calloc((size_t)r->n_train + 1, sizeof(int), "train patterns");
    if (!matched) return ZB_ENOMEM;
    int rc = zb_run_cfg_apply_groups(r, &S->o, &S->m, matched, S->g.rank == 0);
    /* a stage holds a part of the model: each pattern must match on some stage */
    if (!rc && r->n_train) rc = zb_comm_allreduce(S->g.comm, ZB_GROUP_PP, matched, (size_t)r->n_train, ZB_CT_I32,
                                                  ZB_RED_SUM);
    for (int i = 0; i < r->n_train && !rc; i++)
        if (!matched[i]) rc = zb_fail(ZB_EARG, "%s: train pattern '%s' matches no parameter", r->path, r->train[i]);
    free(matched);
    ZB_TRY(rc);
    double n_train = (double)zb_adamw_trainable_floats(&S->o, &S->m);
    ZB_TRY(zb_comm_sum_f64(S->g.comm, ZB_GROUP_PP, &n_train, 1));
    if (n_train == 0) return zb_fail(ZB_EARG, "train: no trainable parameter");
    ZB_TRY(zb_dp_init(&S->dp, &S->m, S->o.trainable, S->g.comm, r->bucket_mb, r->zero));
    ZB_TRY(zb_dp_zero_attach(&S->dp, &S->o));
    if (S->pp) ZB_TRY(zb_pp_trainer_init(&S->pt, &S->tr, r->grad_accum));
    if (S->pp) S->pt.dp = &S->dp;   /* buckets overlap each stage's last backward (ZeRO too) */
    /* PP: the step's grad_accum micro-batches are read up front (every stage reads them, so that
     * the loader positions agree; the first stage uses the ids, the last the targets) */
    size_t N = (size_t)S->tr.rows * r->seq_len * (S->pp ? r->grad_accum : 1);
    ZB_ALLOC(S->ids, N, "batch ids");
    ZB_ALLOC(S->tg, N, "batch targets");
    ZB_TRY(zb_batches_open(&S->bt, r->data, "train", S->stage == ZB_STAGE_DPO, S->tr.B, r->seq_len, S->g.dp_rank,
                           S->g.dp_size));
    limit_vocab(S, S->bt);
    S->tok_per_step = (double)r->grad_accum * S->g.dp_size * S->tr.rows * r->seq_len;
    if (S->g.rank == 0) {
        char gd[160];
        fprintf(stderr, "train: stage %s, %zu parameters (%.0f trainable), %s\n", zb_stage_name(S->stage),
                zb_model_num_params(&S->m), n_train, zb_grid_describe(&S->g, gd, sizeof gd));
    }
    return ZB_OK;
}

/* --resume: moments (this rank's slices; ZeRO: its range), step, loader position, RNG. */
static int resume_state(train_run *S, const char *resume) {
    int64_t st[ST_N] = {0};
    host_view hv;
    memset(&hv, 0, sizeof hv);
    int rc = host_view_make(S, &hv, 1);   /* on a GPU the moments are read into host copies, then uploaded */
    if (!rc) rc = zb_train_load(&hv.m, resume, &hv.o, S->dp.zero, S->dp.lo, S->dp.hi, st, ST_N);
    if (!rc && !S->m.be->host_memory) {
        S->m.be->to_device(S->m.be, S->o.m, hv.o.m, sizeof(float) * S->o.n_floats);
        S->m.be->to_device(S->m.be, S->o.v, hv.o.v, sizeof(float) * S->o.n_floats);
    }
    host_view_free(S, &hv);
    ZB_TRY(rc);
    if ((st[ST_STAGE] != S->stage || st[ST_DP] != S->g.dp_size) && S->g.rank == 0)
        fprintf(stderr, "train: note: checkpoint was stage %s on %lld DP ranks; now %s on %d (the data order "
                "changes)\n", zb_stage_name((zb_stage)st[ST_STAGE]), (long long)st[ST_DP], zb_stage_name(S->stage),
                S->g.dp_size);
    S->o.step = S->step = st[ST_STEP];
    S->rng.s = (uint64_t)st[ST_RNG];
    S->tokens_seen = (double)st[ST_TOKENS];
    zb_loader_pos pos = {(uint64_t)st[ST_ROW], (uint64_t)st[ST_EPOCH]};
    return zb_batches_seek(S->bt, pos);
}

/* ---- one step ----------------------------------------------------------------------------- */

/* grad_accum micro-batches, one after the other; the DP buckets armed for the last backward. */
static int step_flat(train_run *S, zb_loss_parts *sum) {
    const float gs = 1.0f / (float)S->r.grad_accum;
    for (int k = 0; k < S->r.grad_accum; k++) {
        zb_loss_parts p;
        ZB_TRY(zb_batches_next(S->bt, S->ids, S->tg));
        if (k == S->r.grad_accum - 1)   /* last backward: buckets overlap it */
            ZB_TRY(zb_dp_arm(&S->dp, S->ids, S->tr.rows * S->r.seq_len));
        ZB_TRY(zb_trainer_step(&S->tr, S->ids, S->tg, 1, gs, &p));
        zb_loss_parts_add(sum, &p);
    }
    return zb_dp_finish(&S->dp);
}

/* The same micro-batches through the 1F1B schedule of the pipeline; the tied embedding's
 * gradient summed between first and last stage. */
static int step_1f1b(train_run *S, zb_loss_parts *sum) {
    size_t Nm = (size_t)S->tr.rows * S->r.seq_len;
    for (int k = 0; k < S->r.grad_accum; k++) ZB_TRY(zb_batches_next(S->bt, S->ids + k * Nm, S->tg + k * Nm));
    ZB_TRY(zb_pp_trainer_step(&S->pt, S->r.grad_accum, S->ids, S->tg, 1, 1.0f / (float)S->r.grad_accum, sum));
    if (S->dp.zero) {
        /* ZeRO: the buckets were reduce-scattered during the last backward, but the tied
         * embedding's (held by the hook: the two stages' ZeRO ranges differ) goes after the
         * tied copies' gradients are summed, in zb_dp_finish */
        ZB_TRY(zb_pp_tied_grad_sum(&S->m));
        return zb_dp_finish(&S->dp);
    }
    /* the buckets were armed before each stage's last backward (pt.dp) and ran while it did;
     * the DP mean and the tied sum are both linear: either order */
    ZB_TRY(zb_dp_finish(&S->dp));
    return zb_pp_tied_grad_sum(&S->m);
}

/* After a step's backward: the global gradient norm, then one AdamW update unless the loss or
 * the norm is inf / NaN (nonfinite "stop": an error naming the step and the first tensor whose
 * gradient is not finite; "skip": no update, counted). *applied says which. */
static int update(train_run *S, const zb_loss_parts *sum, double *gnorm, float *lr, int *applied) {
    double gsq;
    ZB_TRY(zb_dp_grad_sq_norm(&S->dp, &S->o, &gsq));
    *gnorm = sqrt(gsq);
    *lr = zb_lr_at(&S->o.cfg, S->step);
    *applied = isfinite(*gnorm) && isfinite(sum->loss);
    if (*applied) return zb_dp_optim_step(&S->dp, &S->o, *lr, zb_clip_scale(&S->o.cfg, *gnorm));
    char name[ZB_PARAM_NAME], what[64];
    ZB_TRY(zb_dp_first_nonfinite(&S->dp, &S->o, name, sizeof name));
    double bad = isfinite(sum->loss) ? *gnorm : sum->loss;
    snprintf(what, sizeof what, "the %s is %s", isfinite(sum->loss) ? "gradient norm" : "loss",
             isnan(bad) ? "NaN" : bad > 0 ? "inf" : "-inf");
    if (!S->r.skip_nonfinite)
        return zb_fail(ZB_EARG, "step %lld: %s%s%s%s; the step is not applied and nothing is saved "
                       "(run.json \"nonfinite\": \"skip\" skips such steps)", (long long)S->step + 1, what,
                       name[0] ? " (the first tensor whose gradient is not finite: '" : "", name, name[0] ? "')" : "");
    S->o.step++;   /* the step counts (the schedule and the loader go on); the weights stay */
    S->skipped++;
    if (S->g.rank == 0)
        fprintf(stderr, "train: step %lld skipped: %s%s%s%s (%lld skipped so far)\n", (long long)S->step + 1, what,
                name[0] ? ", first in '" : "", name, name[0] ? "'" : "", (long long)S->skipped);
    return ZB_OK;
}

/* ---- evaluation, logging, saving ----------------------------------------------------------- */

static int evaluate(train_run *S, zb_loss_parts *out) {
    zb_batches *b = NULL;
    ZB_TRY(zb_batches_open(&b, S->r.data, "val", S->stage == ZB_STAGE_DPO, S->tr.B, S->r.seq_len, S->g.dp_rank,
                           S->g.dp_size));
    limit_vocab(S, b);
    zb_loss_parts acc;
    memset(&acc, 0, sizeof acc);
    int rc = ZB_OK;
    double n = 0;
    for (int k = 0; k < S->r.eval_batches && !rc; k++) {
        zb_loss_parts p;
        rc = zb_batches_next(b, S->ids, S->tg);
        if (!rc) rc = S->pp ? zb_pp_trainer_step(&S->pt, 1, S->ids, S->tg, 0, 1.0f, &p)
                            : zb_trainer_step(&S->tr, S->ids, S->tg, 0, 1.0f, &p);
        if (!rc) { zb_loss_parts_add(&acc, &p); n++; }
    }
    zb_batches_close(b);
    ZB_TRY(rc);
    ZB_TRY(zb_loss_parts_sum(S->g.comm, ZB_GROUP_DP, &acc));
    ZB_TRY(zb_comm_sum_f64(S->g.comm, ZB_GROUP_DP, &n, 1));
    if (n > 0) zb_loss_parts_div(&acc, n);
    *out = acc;
    return ZB_OK;
}

/* What a log interval accumulates. */
typedef struct {
    zb_loss_parts parts;   /* per-step means, summed */
    double gnorm, t, comm, busy, t_run, dp_overlap, dp_exposed, dp_side;
    int n, dp_device;   /* dp_device: the DP split as the device ran it (zb_dp_device_times) */
    int64_t steps_run;
} interval;

/* The interval's record: stderr and train.jsonl (rank 0); under --pp every stage's compute time. */
static int report(train_run *S, interval *v, float lr) {
    const zb_run_cfg *r = &S->r;
    char busy[ZB_MAX_LAYERS * 16 + 32] = "";
    if (S->pp) {   /* each stage's compute time per step (the balance of the cut), to rank 0 */
        double mine = v->busy / v->n, all[ZB_MAX_LAYERS];
        ZB_TRY(zb_comm_gather(S->g.comm, ZB_GROUP_PP, &mine, 1, all, ZB_CT_F64, 0));
        size_t o = (size_t)snprintf(busy, sizeof busy, ",\"stage_busy_s\":[");
        for (int q = 0; q < S->g.pp_size && o < sizeof busy; q++)
            o += (size_t)snprintf(busy + o, sizeof busy - o, "%s%.4f", q ? "," : "", all[q]);
        if (o < sizeof busy) snprintf(busy + o, sizeof busy - o, "]");
    }
    if (S->g.rank == 0) {
        double tps = v->t > 0 ? v->n * S->tok_per_step / v->t : 0, L = v->parts.loss / v->n;
        double eta = (double)(r->steps - S->step) * (v->t_run / (double)v->steps_run);
        char es[32], b[8][40], line[2048 + sizeof busy];
        fmt_time(es, sizeof es, eta);
        fprintf(stderr, "step %6lld/%d | loss %.4f", (long long)S->step, r->steps, L);
        if (S->stage == ZB_STAGE_KD) fprintf(stderr, " (kl %.4f ce %.4f)", v->parts.kl / v->n, v->parts.ce / v->n);
        if (S->stage == ZB_STAGE_ILD && r->loss.ild_mode == ZB_ILD_RELEASE)
            fprintf(stderr, " (block %.4f mixer %.4f)", v->parts.ild_block / v->n, v->parts.ild_mixer / v->n);
        fprintf(stderr, " | lr %.3e | gnorm %.3f | %.0f tok/s | eta %s\n", lr, v->gnorm / v->n, tps, es);
        snprintf(line, sizeof line, "{\"stage\":\"%s\",\"step\":%lld,\"loss\":%s,\"ce\":%s,\"kl\":%s,\"mse\":%s,"
                 "\"lr\":%.9g,\"grad_norm\":%s,\"tokens\":%.0f,\"tokens_per_s\":%.1f,\"elapsed_s\":%.3f,"
                 "\"eta_s\":%s,\"step_s\":%.6f,\"comm_s\":%.6f,\"dp_overlap_s\":%.6f,\"dp_exposed_s\":%.6f,"
                 "\"dp_side_s\":%.6f,\"dp_times\":\"%s\",\"ild_block\":%s,\"ild_mixer\":%s,\"skipped\":%lld%s}\n",
                 zb_stage_name(S->stage),
                 (long long)S->step, jnum(b[0], 40, "%.17g", L), jnum(b[1], 40, "%.17g", v->parts.ce / v->n),
                 jnum(b[2], 40, "%.17g", v->parts.kl / v->n), jnum(b[3], 40, "%.17g", v->parts.mse / v->n), lr,
                 jnum(b[4], 40, "%.9g", v->gnorm / v->n), S->tokens_seen, tps, v->t_run,
                 jnum(b[5], 40, "%.1f", eta), v->t / v->n, v->comm / v->n, v->dp_overlap / v->n, v->dp_exposed / v->n,
                 v->dp_side / v->n, v->dp_device ? "device" : "host",
                 jnum(b[6], 40, "%.17g", v->parts.ild_block / v->n),
                 jnum(b[7], 40, "%.17g", v->parts.ild_mixer / v->n), (long long)S->skipped, busy);
        ZB_TRY(log_line(S->log_fd, line));
    }
    double t_run = v->t_run;
    int64_t steps_run = v->steps_run;
    memset(v, 0, sizeof *v);
    v->t_run = t_run;
    v->steps_run = steps_run;
    return ZB_OK;
}

/* A failing evaluation (every rank reads the same files, so every rank fails alike: no hang)
 * turns evaluation off for the run. */
static int eval_and_log(train_run *S, int *eval_ok) {
    zb_loss_parts ev;
    if (evaluate(S, &ev) != ZB_OK) {
        if (S->g.rank == 0) fprintf(stderr, "train: evaluation off: %s\n", zb_errmsg());
        *eval_ok = 0;
        return ZB_OK;
    }
    if (S->g.rank != 0) return ZB_OK;
    double ppl = S->stage == ZB_STAGE_PRETRAIN || S->stage == ZB_STAGE_SFT ? exp(ev.ce) : 0;
    fprintf(stderr, "eval %6lld | val loss %.4f", (long long)S->step, ev.loss);
    if (ppl > 0) fprintf(stderr, " | val ppl %.3f", ppl);
    fprintf(stderr, "\n");
    char b[5][40], line[512];
    snprintf(line, sizeof line, "{\"stage\":\"%s\",\"step\":%lld,\"val_loss\":%s,\"val_ce\":%s,\"val_kl\":%s,"
             "\"val_mse\":%s,\"val_ppl\":%s}\n", zb_stage_name(S->stage), (long long)S->step,
             jnum(b[0], 40, "%.17g", ev.loss), jnum(b[1], 40, "%.17g", ev.ce), jnum(b[2], 40, "%.17g", ev.kl),
             jnum(b[3], 40, "%.17g", ev.mse), jnum(b[4], 40, "%.9g", ppl));
    return log_line(S->log_fd, line);
}

/* ckpt-<step>.h5: weights, moments, train.state and the run config (parallel/model_io.h). */
static int save(train_run *S) {
    zb_loader_pos pos = zb_batches_tell(S->bt);
    int64_t st[ST_N] = {S->step, (int64_t)pos.row, (int64_t)pos.epoch, (int64_t)S->rng.s,
                        (int64_t)S->tokens_seen, S->stage, S->g.dp_size};
    ckpt_path path;
    snprintf(path, sizeof path, "%s/ckpt-%06lld.h5", S->r.out, (long long)S->step);
    double ts = zb_now();
    host_view hv;
    memset(&hv, 0, sizeof hv);
    int rc = host_view_make(S, &hv, 1);
    zb_train_ckpt c = {&hv.o, S->dp.zero, S->dp.lo, S->dp.hi, st, ST_N, S->r.text};
    if (!rc) rc = zb_train_save(&hv.m, path, &c, S->g.world);
    host_view_free(S, &hv);
    ZB_TRY(rc);
    if (S->g.rank == 0) {
        fprintf(stderr, "save  %6lld | %s (%.2fs)\n", (long long)S->step, path, zb_now() - ts);
        ckpt_list_add(S, path);
    }
    return ZB_OK;
}

/* ---- the run ---------------------------------------------------------------------------------- */

static int train_setup(train_run *S, const char *cfg_path, const char *resume, int tp, int pp) {
    const zb_run_cfg *r = &S->r;
    ZB_TRY(zb_run_cfg_load(&S->r, cfg_path));
    ZB_TRY(S->gpu ? zb_grid_init_gpu(&S->g, MPI_COMM_WORLD, tp, pp) : zb_grid_init(&S->g, MPI_COMM_WORLD, tp, pp));
    S->have_grid = 1;
    S->pp = S->g.pp_size > 1;
    S->log_fd = -1;
    ZB_TRY(setup_models(S, resume));
    if (S->gpu) {   /* loaded on the host (each rank its slices), then moved to this rank's GPU */
        ZB_TRY(zb_model_set_backend(&S->m, &S->be));
        if (S->have_t) ZB_TRY(zb_model_set_backend(&S->t, &S->be));
    }
    ZB_TRY(setup_training(S));
    zb_rng_seed(&S->rng, r->seed);
    if (resume) ZB_TRY(resume_state(S, resume));
    if (S->g.rank == 0) {
        ZB_TRY(zb_mkdir_p(r->out));   /* "out": "runs/sft" with runs/ not made yet */
        ZB_TRY(log_open(S, resume != NULL));
        ZB_TRY(ckpt_list_init(S));
        remove_stale_tmp(r->out);
        fprintf(stderr, "train: %d steps x %d accum x %d ranks x %d rows x %d tokens; lr %g -> %g, warmup %d; %s at "
                "step %lld\n", r->steps, r->grad_accum, S->g.dp_size, S->tr.rows, r->seq_len, r->opt.lr, r->opt.min_lr,
                r->opt.warmup, resume ? "resumed" : "starting", (long long)S->step);
        if (S->g.dp_size > 1)
            fprintf(stderr, "train: DP gradients: %s%s\n", S->dp.zero ? "ZeRO-1, " : "",
                    S->dp.zero_whole ? "one reduce-scatter after the backward (ZB_ZERO_REDUCE=after)"
                    : S->dp.path == ZB_DP_SHM ? "node-shared memory, buckets overlapped with the backward"
                    : !S->m.be->host_memory ? "NCCL buckets on the side stream, overlapped with the backward"
                    : S->dp.zero ? (S->dp.progress_us ? "MPI_Ireduce_scatter buckets, a progress thread"
                                                      : "MPI_Ireduce_scatter buckets, progressed between layers")
                    : S->dp.progress_us ? "MPI_Iallreduce buckets, a progress thread"
                    : "MPI_Iallreduce buckets, progressed between layers");
    }
    return zb_comm_barrier(S->g.comm, ZB_GROUP_WORLD);
}

static int train_loop(train_run *S, long stop_after) {
    const zb_run_cfg *r = &S->r;
    zb_comm *c = S->g.comm;
    interval v;
    memset(&v, 0, sizeof v);
    int eval_ok = 1;
    while (S->step < r->steps) {
        double t0 = zb_now(), gnorm;
        float lr;
        int applied;
        c->seconds = 0;
        S->dp.overlap_s = S->dp.exposed_s = 0;
        zb_model_zero_grad(&S->m);
        zb_loss_parts sum;
        memset(&sum, 0, sizeof sum);
        ZB_TRY(S->pp ? step_1f1b(S, &sum) : step_flat(S, &sum));
        ZB_TRY(update(S, &sum, &gnorm, &lr, &applied));
        ZB_TRY(zb_dp_device_times(&S->dp));   /* on GPUs: the split of the DP time as the device ran it */
        S->step++;
        ZB_TRY(zb_loss_parts_sum(c, ZB_GROUP_DP, &sum));   /* sums over ranks of the per-rank sums */
        zb_loss_parts_div(&sum, (double)r->grad_accum * S->g.dp_size);
        zb_loss_parts_add(&v.parts, &sum);
        v.comm += c->seconds;
        v.dp_overlap += S->dp.overlap_s;
        v.dp_exposed += S->dp.exposed_s;
        v.dp_side += S->dp.device_times ? S->dp.side_s : 0;
        v.dp_device = S->dp.device_times;
        S->tokens_seen += S->tok_per_step;
        v.gnorm += gnorm;
        v.n++;
        double dt = zb_now() - t0;
        v.busy += dt - c->seconds;   /* this rank's compute: the step less its communication */
        v.t += dt;
        v.t_run += dt;
        v.steps_run++;
        int last = S->step == r->steps;
        if (S->step % r->log_every == 0 || last || S->step == stop_after) ZB_TRY(report(S, &v, lr));
        if (eval_ok && r->eval_batches > 0 && ((r->eval_every > 0 && S->step % r->eval_every == 0) || last))
            ZB_TRY(eval_and_log(S, &eval_ok));
        if (r->save && ((r->save_every > 0 && S->step % r->save_every == 0) || last || S->step == stop_after))
            ZB_TRY(save(S));
        if (S->step == stop_after) break;
    }
    if (S->step < r->steps) return ZB_OK;
    if (!r->save) {   /* a benchmark: nothing written */
        if (S->g.rank == 0)
            fprintf(stderr, "train: done, %lld steps (%lld skipped), %.0f tokens in %.1fs (%.0f tok/s); not saved (\"save\": false)\n",
                    (long long)S->step, (long long)S->skipped, S->tokens_seen, v.t_run,
                    v.t_run > 0 ? v.steps_run * S->tok_per_step / v.t_run : 0);
        return ZB_OK;
    }
    char path[ZB_RUN_PATH + 32];
    snprintf(path, sizeof path, "%s/model.h5", r->out);
    host_view hv;
    memset(&hv, 0, sizeof hv);
    int rc = host_view_make(S, &hv, 0);
    if (!rc) rc = zb_model_save(&hv.m, path, ZB_DT_F32, S->g.world);
    host_view_free(S, &hv);
    ZB_TRY(rc);
    if (S->g.rank == 0)
        fprintf(stderr, "train: done, %lld steps (%lld skipped), %.0f tokens in %.1fs (%.0f tok/s); model %s\n",
                (long long)S->step, (long long)S->skipped, S->tokens_seen, v.t_run,
                v.t_run > 0 ? v.steps_run * S->tok_per_step / v.t_run : 0, path);
    return ZB_OK;
}

static void train_free(train_run *S) {
    if (S->log_fd >= 0) close(S->log_fd);
    free(S->saved);
    zb_batches_close(S->bt);
    free(S->ids);
    free(S->tg);
    zb_dp_free(&S->dp);
    if (S->o.m) zb_adamw_free(&S->o);
    zb_pp_trainer_free(&S->pt);
    if (S->tr.mask) zb_trainer_free(&S->tr);
    if (S->have_t) zb_model_free(&S->t);
    if (S->m.data) zb_model_free(&S->m);
    if (S->have_grid) zb_grid_free(&S->g);
    zb_run_cfg_free(&S->r);
}

/* --device / --precision: the CPU table, or the CUDA one (its GPU is picked by the grid). */
static int train_backend(train_run *S, int argc, char **argv) {
    zb_device_args d;
    ZB_TRY(zb_device_args_parse(argc, argv, "train", 0, &d));
    S->gpu = d.gpu;
    if (!d.gpu) { S->be = *zb_backend_cpu(); return ZB_OK; }   /* training: no decode switches */
    return zb_device_backend(&d, ZB_WEIGHTS_F32, "train", &S->be);
}

int zb_cmd_train(int argc, char **argv) {
    static const char *const vals[] = {"--stage", "--config", "--resume", "--tp", "--pp", "--stop-after", "--device",
                                       "--precision", NULL};
    ZB_TRY(zb_args_check(argc, argv, vals, NULL, 0));
    const char *st = zb_arg_str(argc, argv, "--stage", NULL);
    const char *cfg = zb_arg_str(argc, argv, "--config", NULL);
    if (!st || !cfg)
        return zb_fail(ZB_EARG, "train: needs --stage pretrain|ild|kd|sft|dpo --config run.json "
                       "[--resume CKPT.h5] [--tp N] [--pp M] [--stop-after STEP] [--device cpu|cuda [--precision bf16|f32]]");
    int stage = zb_stage_parse(st);
    if (stage < 0) return zb_fail(ZB_EARG, "train: unknown stage '%s' (pretrain, ild, kd, sft, dpo)", st);
    train_run S;
    memset(&S, 0, sizeof S);
    S.stage = (zb_stage)stage;
    S.log_fd = -1;
    int tp, pp, stop_after;
    ZB_TRY(zb_arg_int(argc, argv, "--tp", 1, 1, 1 << 12, &tp));
    ZB_TRY(zb_arg_int(argc, argv, "--pp", 1, 1, 1 << 12, &pp));
    ZB_TRY(zb_arg_int(argc, argv, "--stop-after", -1, -1, INT_MAX, &stop_after));
    ZB_TRY(train_backend(&S, argc, argv));
    int rc = train_setup(&S, cfg, zb_arg_str(argc, argv, "--resume", NULL), tp, pp);
    if (!rc) rc = train_loop(&S, stop_after);
    train_free(&S);
    return rc;
}
