/* train.h — the loss of each training stage on one micro-batch, with its gradient
 * accumulated into the student's m->grad (SPEC §6). The driver (launch/cmd_train.c) owns the
 * loop and the optimizer, parallel/ data parallelism, the pipeline schedule
 * (parallel/pipeline.h) and checkpoints; this file is the math, so that each stage can be
 * tested against a hand computation and by finite differences.
 *
 *   pretrain, sft  mean next-token cross-entropy over the targets >= 0 (sft: the loader's
 *                  loss mask leaves only the assistant tokens)
 *   kd             kl_weight * KL(teacher || student) at temperature tau (no tau^2 factor)
 *                  over the positions with a target, reduced as the release's
 *                  F.kl_div(..., reduction="batchmean") does: summed over the tokens and divided
 *                  by the micro-batch's rows (kl_token_mean: divided by the tokens instead),
 *                  + ce_weight * CE (mean over the tokens); the teacher runs forward on the same
 *                  ids in the same step (online distillation)
 *   ild            intermediate layer distillation of every layer l whose mixer differs from the
 *                  teacher's (all of them for an all-MLA or all-Mamba2 student). Default
 *                  (ild_mode release, SPEC §6 as the release runs it): the student's BLOCK l is
 *                  fed the teacher's hidden state res_l; loss = sum over those layers of
 *                  mean_n ||block_l out - teacher res_{l+1}||_2 + mean_n ||mixer_l out - teacher
 *                  attention out (mid_l - res_l)||_2 (unsquared L2 norms over d, mean over the
 *                  B*T tokens); every parameter of those blocks trains (mixer, MLP, norms; the
 *                  embedding, final norm and head get no gradient and stay frozen).
 *                  ild_mode mixer_mse (the earlier form): the student MIXER gets the teacher's
 *                  normed input ln1_l, loss = mean over the layers of the MSE (mean over B*T*d)
 *                  to the teacher's mixer output; only those mixers train.
 *   dpo            batches of B preference pairs: rows [0, B) chosen, rows [B, 2B) rejected,
 *                  targets >= 0 on the continuation tokens only. log pi(y) = sum of the
 *                  target log-probabilities of the row; z = beta[(lp_c - lr_c) - (lp_r - lr_r)]
 *                  with lr from the frozen reference model; loss = mean -log sigmoid(z). */
#ifndef ZB_TRAIN_H
#define ZB_TRAIN_H

#include "comm.h"
#include "model.h"

typedef enum { ZB_STAGE_PRETRAIN = 0, ZB_STAGE_ILD, ZB_STAGE_KD, ZB_STAGE_SFT, ZB_STAGE_DPO } zb_stage;

/* "pretrain" ... "dpo" -> stage; -1 if unknown. */
int zb_stage_parse(const char *s);
const char *zb_stage_name(zb_stage s);

typedef enum { ZB_ILD_RELEASE = 0, ZB_ILD_MIXER_MSE = 1 } zb_ild_mode;

typedef struct {
    float kl_weight, ce_weight, temperature;   /* kd */
    float beta;                                /* dpo */
    zb_ild_mode ild_mode;                      /* ild */
    int kl_token_mean;                         /* kd: 0 = batchmean (per row), 1 = per token */
} zb_loss_cfg;

/* The parts of a stage loss, for logging. */
typedef struct {
    double loss;        /* what is minimised */
    double ce, kl, mse; /* components (0 when not part of the stage) */
    double reward_acc, margin;   /* dpo: fraction of pairs with z > 0, mean z / beta */
    double tokens;      /* tokens that carried the loss */
    double ild_block, ild_mixer;   /* ild (release): the block-output and the mixer-output terms */
} zb_loss_parts;

/* acc += p, part by part. */
void zb_loss_parts_add(zb_loss_parts *acc, const zb_loss_parts *p);
/* Every part divided by d (a mean from sums). */
void zb_loss_parts_div(zb_loss_parts *p, double d);
/* Sums over a group (in place) / rank root's parts to every rank of the group. Collective. */
int zb_loss_parts_sum(zb_comm *c, zb_group g, zb_loss_parts *p);
int zb_loss_parts_bcast(zb_comm *c, zb_group g, zb_loss_parts *p, int root);

typedef struct {
    zb_stage stage;
    zb_loss_cfg cfg;
    zb_model *student;        /* the model trained (the policy for dpo) */
    const zb_model *teacher;  /* kd/ild teacher, dpo reference; NULL otherwise */
    int B, T;                 /* micro-batch rows (dpo: pairs) and sequence length */
    int rows;                 /* rows of the activations: B, or 2B for dpo */
    zb_acts a, ta;            /* student and teacher activations (ta: not for kd_infer) */
    /* kd on one rank (no TP / PP), the default: the teacher runs zb_model_forward_infer (one
     * layer's buffers, weights f32 or bf16) and the KL takes its logits kd_rows rows at a time
     * from its final hidden state (zb_model_head_rows), so neither its activations nor its full
     * [N, V] logits are held. ZB_KD_TEACHER=train in the environment: the training forward
     * into ta (every activation, the full logits), as before. */
    int kd_infer;
    zb_infer tf;
    float *tlogits;           /* kd_infer: [kd_rows, V] */
    int kd_rows;              /* kd_infer: rows of teacher logits per block (set before the step) */
    int *mask;                /* [rows*T] host, and its device copy */
    int *mask_dev;
    float *tmp;               /* kd with CE: [rows*T*V]; ild: [rows*T*d] (the student's backend memory) */
    double *lp;               /* dpo: [2 * rows] policy and reference log-probabilities */
    unsigned char *ild_layer; /* [n_layers]: 1 if layer l is distilled by ILD */
    int n_ild;
} zb_trainer;

/* Allocate everything for micro-batches of B rows (pairs for dpo) of T tokens. The student
 * gets its gradient buffer. ILD distils every layer whose student kind differs from the
 * teacher's (the new mixers); error if there is none. */
int zb_trainer_init(zb_trainer *tr, zb_stage stage, const zb_loss_cfg *cfg, zb_model *student,
                    const zb_model *teacher, int B, int T);
/* The storage a KD teacher can be held in on backend be: bf16 when the backend runs its products
 * with bf16 operands (a device with gpu_bf16: the products round the weights to bf16 anyway),
 * every layer is attention, no TP / PP (tp_pp) and ZB_KD_TEACHER is not "train"; else f32. */
zb_wdtype zb_kd_teacher_wdtype(const zb_config *tc, const zb_backend *be, int tp_pp);
void zb_trainer_free(zb_trainer *tr);

/* The parameters that a stage trains by default: ILD every parameter of the distilled layers
 * (mixer_mse: only their mixers, names "model.layers.<l>.self_attn." / ".mamba."),
 * others all. out[n_params]. */
void zb_trainer_default_trainable(const zb_trainer *tr, unsigned char *out);

/* Loss of one micro-batch: ids and targets [rows*T]. When want_grad the gradient of the loss
 * (times grad_scale) is ACCUMULATED into student->grad. The loss may come out inf / NaN (a
 * diverging run): the caller decides what to do with such a step. */
int zb_trainer_step(zb_trainer *tr, const int *ids, const int *targets, int want_grad,
                    float grad_scale, zb_loss_parts *out);

/* The pieces a pipeline step (parallel/pipeline.h) runs on its stages: the stage loss of one
 * micro-batch from the student's logits a->logits (and, for kd / dpo, the teacher's,
 * tr->ta.logits, of the same micro-batch), the gradient times grad_scale left in a->logits
 * when want_grad (for zb_model_backward); and the ILD loss of the distilled layers this model
 * holds from the teacher activations tr->ta (forward done), by cfg.ild_mode (this model's share:
 * release, the sum over its layers; mixer_mse, the sum of its layers' MSE / n_ild), the gradient
 * accumulated into the student; its parts (ild_block, ild_mixer or mse) ADDED to *out. */
void zb_trainer_loss(zb_trainer *tr, zb_acts *a, const int *targets, int want_grad, float grad_scale,
                     zb_loss_parts *out);
double zb_trainer_ild_loss(zb_trainer *tr, int want_grad, float grad_scale, zb_loss_parts *out);

#endif
