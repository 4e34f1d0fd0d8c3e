/* runcfg.h — a training run's configuration (run.json of `zebra train`), read and checked.
 *
 * Every key has a type and a range; a key of the wrong type, out of range, or unknown (a
 * typo: the closest known key is suggested) is an error of one line naming the file and the
 * key. Keys (defaults in parentheses; paths relative to the working directory):
 *   model        pretrain: a config .json (random init) or a model; other stages: the model
 *   teacher      kd / ild: the teacher (an HF dir or .h5)
 *   reference    dpo: the frozen reference (default: model)
 *   data         shard directory written by `zebra data` (required)
 *   out          output directory (out/train): train.jsonl, ckpt-<step>.h5, model.h5
 *   seq_len (256) >= 2, micro_batch (4) >= 1, grad_accum (1) >= 1, steps (100) >= 1, seed (1),
 *   init_std (0.02) > 0
 *   lr (3e-4) > 0, min_lr (lr/10) >= 0, warmup (0; < 1 = a fraction of steps) >= 0,
 *   weight_decay (0.1) >= 0, beta1 (0.9) and beta2 (0.95) in [0, 1), eps (1e-8) > 0,
 *   clip (1.0) >= 0 (0: off)
 *   kl_weight (1) >= 0, ce_weight (0) >= 0, temperature (1) > 0     kd
 *   kl_reduction ("batchmean" | "token")    kd: the KL per row as the release, or per token
 *   beta (0.01) > 0                                                 dpo (the release's)
 *   ild_loss ("release" | "mixer_mse")                              ild (train.h)
 *   comment      any text, not read (the configs/run-*.json examples say where they come from)
 *   log_every (10) >= 1, eval_every (0: only at the end), eval_batches (8), save_every (0:
 *   only at the end), keep_last (2; 0: keep all) — all >= 0
 *   save (true)   false: no checkpoint and no final model.h5 at all (benchmarks: the step
 *                time without writing the model; cluster/scaling.sh)
 *   nonfinite ("stop")  a step whose loss or gradient norm is inf / NaN is never applied nor
 *                saved: "stop" ends the run with an error naming the step and the first
 *                tensor whose gradient is not finite; "skip" drops the step's update and
 *                counts it (train.jsonl "skipped")
 *   zero (false)  ZeRO-1: AdamW moments sharded over the data-parallel ranks (parallel/dp.h)
 *   bucket_mb (25) > 0  size of the gradient buckets all-reduced during the backward
 *   pp_balance ("model")  --pp: cut the layers into stages by the cost model (parallel/pp.h)
 *                or "measured": rank 0 times one layer of each kind and the head
 *   train: ["pattern", ...]   only these parameters train (default: all; ild: the distilled
 *                layers' blocks, zb_trainer_default_trainable)
 *   freeze: ["pattern", ...]  these do not train
 *   groups: [{"match": "mamba.A_log", "lr_mult": 1, "weight_decay": 0, "trainable": true}, ...]
 * Patterns: a substring of the HF name, or a glob with '*'. */
#ifndef ZB_RUNCFG_H
#define ZB_RUNCFG_H

#include <stdint.h>

#include "optim.h"
#include "train.h"

#define ZB_RUN_PATH 1024

typedef struct {
    char *match;
    float lr_mult, weight_decay;   /* < 0: unchanged */
    int trainable;                 /* < 0: unchanged */
} zb_run_group;

typedef struct {
    char path[ZB_RUN_PATH];        /* the file (for messages) */
    char model[ZB_RUN_PATH], teacher[ZB_RUN_PATH], reference[ZB_RUN_PATH], data[ZB_RUN_PATH],
        out[ZB_RUN_PATH];
    int seq_len, micro_batch, grad_accum, steps, log_every, eval_every, eval_batches;
    int save_every, keep_last;
    int zero;          /* ZeRO-1 */
    int save;          /* write checkpoints and the final model (false: benchmarks) */
    double bucket_mb;  /* gradient bucket size */
    int pp_measured;   /* pp_balance "measured": partition by timed layers, not the cost model */
    int skip_nonfinite;   /* nonfinite "skip" (else "stop") */
    double warmup;
    float init_std;
    uint64_t seed;
    zb_optim_cfg opt;
    zb_loss_cfg loss;
    char **train, **freeze;        /* patterns */
    int n_train, n_freeze;
    zb_run_group *groups;
    int n_groups;
    char *text;        /* the file's text (stored in checkpoints) */
} zb_run_cfg;

/* Read and check `path`. On error *r holds nothing to free beyond zb_run_cfg_free. */
int zb_run_cfg_load(zb_run_cfg *r, const char *path);
/* The same from text (named `path` in messages). */
int zb_run_cfg_parse(zb_run_cfg *r, const char *text, const char *path);
void zb_run_cfg_free(zb_run_cfg *r);

/* The parameter selection and groups of the run on top of the stage's default trainable
 * flags already in o: train patterns, freeze patterns, groups. matched[n_train] (may be NULL)
 * receives how many of m's parameters each train pattern matched (a pipeline stage holds a
 * part of the model: the caller checks the sum over the stages). verbose: print each group's
 * tensor count to stderr. */
int zb_run_cfg_apply_groups(const zb_run_cfg *r, zb_adamw *o, const zb_model *m, int *matched, int verbose);

#endif
