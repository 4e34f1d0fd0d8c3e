/* train.h — the loss of each training stage on one micro-batch, with its gradient
 * accumulated into the student's m->grad (SPEC §6). The driver (launch/cmd_train.c) owns the
 * loop, the optimizer, data parallelism and checkpoints; this file is the math, so that each
 * stage can be tested against a hand computation and by finite differences.
 *
 *   pretrain, sft  mean next-token cross-entropy over the targets >= 0 (sft: the loader's
 *                  loss mask leaves only the assistant tokens)
 *   kd             kl_weight * KL(teacher || student) at temperature tau, mean over the rows
 *                  with a target (no tau^2 factor), + ce_weight * CE; the teacher runs forward
 *                  on the same ids in the same step (online distillation)
 *   ild            intermediate layer distillation: for every layer l whose student mixer is a
 *                  new one (MLA or Mamba2), the student mixer gets the TEACHER's normed layer
 *                  input ln1_l and is trained to reproduce the teacher's mixer output
 *                  (res_{l} -> mid_{l}); loss = mean over those layers of the MSE (mean over
 *                  B*T*d). Only those mixers receive gradients.
 *   dpo            batches of B preference pairs: rows [0, B) chosen, rows [B, 2B) rejected,
 *                  targets >= 0 on the continuation tokens only. log pi(y) = sum of the
 *                  target log-probabilities of the row; z = beta[(lp_c - lr_c) - (lp_r - lr_r)]
 *                  with lr from the frozen reference model; loss = mean -log sigmoid(z). */
#ifndef ZB_TRAIN_H
#define ZB_TRAIN_H

#include <mpi.h>

#include "model.h"

typedef enum { ZB_STAGE_PRETRAIN = 0, ZB_STAGE_ILD, ZB_STAGE_KD, ZB_STAGE_SFT, ZB_STAGE_DPO } zb_stage;

/* "pretrain" ... "dpo" -> stage; -1 if unknown. */
int zb_stage_parse(const char *s);
const char *zb_stage_name(zb_stage s);

typedef struct {
    float kl_weight, ce_weight, temperature;   /* kd */
    float beta;                                /* dpo */
} zb_loss_cfg;

/* The parts of a stage loss, for logging. */
typedef struct {
    double loss;        /* what is minimised */
    double ce, kl, mse; /* components (0 when not part of the stage) */
    double reward_acc, margin;   /* dpo: fraction of pairs with z > 0, mean z / beta */
    double tokens;      /* tokens that carried the loss */
} zb_loss_parts;

typedef struct {
    zb_stage stage;
    zb_loss_cfg cfg;
    zb_model *student;        /* the model trained (the policy for dpo) */
    const zb_model *teacher;  /* kd/ild teacher, dpo reference; NULL otherwise */
    int B, T;                 /* micro-batch rows (dpo: pairs) and sequence length */
    int rows;                 /* rows of the activations: B, or 2B for dpo */
    zb_acts a, ta;            /* student and teacher activations */
    int *mask;                /* [rows*T] host, and its device copy */
    int *mask_dev;
    float *tmp;               /* kd with CE: [rows*T*V]; ild: [rows*T*d] (the student's backend memory) */
    double *lp;               /* dpo: [2 * rows] policy and reference log-probabilities */
    unsigned char *ild_layer; /* [n_layers]: 1 if layer l is distilled by ILD */
    int n_ild;
    /* pipeline parallel (zb_trainer_pp_init): activations of the micro-batches in flight,
     * pp_acts[0] is `a` (shared buffers), the others owned; per-micro-batch loss parts */
    zb_acts *pp_acts;
    int pp_k;
    zb_loss_parts *pp_parts;
    int pp_m;
    const int *pp_ids, *pp_targets;
    MPI_Request t_req;        /* the teacher's pending activation send */
    int pp_m_now;             /* micro-batches of the current zb_trainer_step_pp call */
    struct zb_dp *pp_dp;      /* set by the driver (may stay NULL): armed before the last
                               * backward of a step, so that the DP gradient buckets are
                               * reduced while that backward runs (parallel/dp.h) */
    float pp_gs;
    int pp_want_grad;
} zb_trainer;

/* Allocate everything for micro-batches of B rows (pairs for dpo) of T tokens. The student
 * gets its gradient buffer. ILD distils every layer whose student kind differs from the
 * teacher's (the new mixers); error if there is none. */
int zb_trainer_init(zb_trainer *tr, zb_stage stage, const zb_loss_cfg *cfg, zb_model *student,
                    const zb_model *teacher, int B, int T);
void zb_trainer_free(zb_trainer *tr);

/* The parameters that a stage trains by default: ILD only the mixers of the distilled layers
 * (names "model.layers.<l>.self_attn." / ".mamba."), others all. out[n_params]. */
void zb_trainer_default_trainable(const zb_trainer *tr, unsigned char *out);

/* Loss of one micro-batch: ids and targets [rows*T]. When want_grad the gradient of the loss
 * (times grad_scale) is ACCUMULATED into student->grad. */
int zb_trainer_step(zb_trainer *tr, const int *ids, const int *targets, int want_grad,
                    float grad_scale, zb_loss_parts *out);

/* Pipeline parallel (parallel/pp.h; stage-local student with --pp > 1), every stage. The
 * teacher / reference (kd, ild, dpo) is a stage-local model of the same pipeline, run forward
 * just before the student on each stage (zb_pp_1f1b's pre hook), one activation set; ILD needs
 * it cut at the same layers as the student (zb_pp_set_partition) and runs no student pipeline:
 * each stage distils its own layers from the teacher activations it holds. Allocates the
 * activations of min(pp_size, M) micro-batches in flight, once; M = the most micro-batches a
 * zb_trainer_step_pp call gets (grad_accum). Collective over the pipeline. */
int zb_trainer_pp_init(zb_trainer *tr, int M);
/* One step's M micro-batches through the 1F1B schedule (zb_pp_1f1b): ids / targets
 * [M * rows*T] (micro-batch k at k * rows*T; every stage gets them, only the first uses the ids
 * and the last the targets). The stage loss of each micro-batch (as zb_trainer_step, gradient
 * times grad_scale ACCUMULATED into the stage's m->grad) is computed on the last stage; *out
 * holds the SUMS over the M micro-batches of the parts, broadcast from the last stage to every
 * stage of the pipeline (ILD: each stage's share, summed over the stages). want_grad = 0:
 * forwards only. The tied embedding gradient sum (zb_pp_tied_grad_sum) is left to the caller.
 * Collective over the pipeline (and TP). */
int zb_trainer_step_pp(zb_trainer *tr, int M, const int *ids, const int *targets, int want_grad,
                       float grad_scale, zb_loss_parts *out);

#endif
