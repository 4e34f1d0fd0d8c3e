/* optim.h — AdamW over a model's flat float32 parameters (the master weights), global-norm
 * gradient clipping, warmup + cosine learning-rate schedule, per-parameter groups
 * (SPEC §6: AdamW, cosine, warmup 1%; no decay on norms / biases / Mamba2 A_log, D, dt_bias).
 *
 * The update follows torch.optim.AdamW exactly (decoupled decay first):
 *   p <- p * (1 - lr_i * wd_i)
 *   m <- b1 m + (1 - b1) g ;  v <- b2 v + (1 - b2) g^2
 *   p <- p - (lr_i / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
 * with lr_i = lr * lr_mult_i and g the (clipped) gradient. Parameters whose trainable flag is
 * 0 are never touched (their m, v stay zero). */
#ifndef ZB_OPTIM_H
#define ZB_OPTIM_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"

typedef struct {
    float lr, min_lr;         /* peak and final learning rate */
    int warmup;               /* linear warmup steps (lr * (s+1) / warmup) */
    int total_steps;          /* cosine from the end of warmup to total_steps */
    float beta1, beta2, eps;
    float weight_decay;       /* default decay for parameters without no_decay */
    float clip;               /* global gradient-norm clip (<= 0: off) */
} zb_optim_cfg;

/* Defaults: lr 3e-4, min_lr 3e-5, warmup 0, b1 0.9, b2 0.95, eps 1e-8, wd 0.1, clip 1. */
zb_optim_cfg zb_optim_defaults(void);

typedef struct {
    zb_optim_cfg cfg;
    int n_params;
    size_t n_floats;
    const zb_backend *be;     /* the model's backend at init: m and v are its memory */
    float *m, *v;             /* [n_floats] first and second moments */
    float *lr_mult;           /* [n_params] */
    float *wd;                /* [n_params] weight decay per parameter */
    unsigned char *trainable; /* [n_params] */
    int64_t step;             /* updates done so far (t of the bias corrections = step + 1) */
} zb_adamw;

/* Allocate the state for m's layout: every parameter trainable, lr_mult 1, decay
 * cfg.weight_decay unless the parameter is no_decay. */
int zb_adamw_init(zb_adamw *o, const zb_model *m, const zb_optim_cfg *cfg);
void zb_adamw_free(zb_adamw *o);

/* Does parameter name match pattern? A pattern with '*' or '?' is a glob (fnmatch) over the
 * whole name; otherwise it matches when it occurs anywhere in the name ("mamba.A_log"). */
int zb_param_match(const char *pattern, const char *name);
/* Apply a group setting to every parameter whose name matches: lr_mult (< 0: unchanged),
 * weight decay (< 0: unchanged), trainable (< 0: unchanged). Returns the number matched. */
int zb_adamw_set_group(zb_adamw *o, const zb_model *m, const char *pattern, float lr_mult,
                       float wd, int trainable);
/* Set every trainable flag to v. */
void zb_adamw_set_all_trainable(zb_adamw *o, int v);
/* Number of trainable floats. */
size_t zb_adamw_trainable_floats(const zb_adamw *o, const zb_model *m);

/* Learning rate of update number `step` (0-based): warmup then cosine to min_lr. */
float zb_lr_at(const zb_optim_cfg *c, int64_t step);

/* 1 when ZB_OPTIM=per_tensor is set: the norm and the update call the backend once per tensor
 * (sumsq, adamw) instead of once for all of them (sumsq_ranges, adamw_ranges). */
int zb_optim_per_tensor(void);
/* L2 norm of the gradients of the trainable parameters (double accumulation). Call after the
 * data-parallel reduction: every rank then holds the same gradient, so this is the global
 * norm. */
double zb_grad_norm(const zb_adamw *o, const zb_model *m);
/* The clipping factor for a gradient norm: min(1, clip / norm) (1 when clip <= 0). */
float zb_clip_scale(const zb_optim_cfg *c, double norm);

/* One AdamW update of every trainable parameter with learning rate lr, gradients multiplied
 * by grad_scale first (the clipping factor). Increments o->step. */
void zb_adamw_step(zb_adamw *o, zb_model *m, float lr, float grad_scale);
/* The same update restricted to the floats [lo, hi) of the flat buffer (ZeRO-1: a DP rank's
 * shard, parallel/dp.h): g, mm, vv hold the gradient and moments of [lo, hi) only (index 0 =
 * float lo). Does not increment o->step. zb_adamw_step is this over [0, n_floats). */
void zb_adamw_update_range(const zb_adamw *o, zb_model *m, size_t lo, size_t hi, const float *g,
                           float *mm, float *vv, float lr, float grad_scale);

#endif
