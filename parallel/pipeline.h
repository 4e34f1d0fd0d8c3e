/* pipeline.h — running the stages of a pipeline (SPEC §9; the cut: pp.h; 1F1B schedule:
 * PipeDream-Flush, Narayanan et al. 2021).
 *
 * Stage s of a grid with pp > 1 holds layers [l0, l1) (a tp.h shard built with the cut), the
 * embedding on the first stage, final norm + head on the last; tied embeddings: a copy on both
 * first and last stage (it is the head there), whose gradients are summed between them after
 * the last backward of a step (zb_pp_tied_grad_sum; Megatron-LM does the same). Activations:
 * stage s receives the residual stream [B*T, d] of each micro-batch from s-1 and sends its
 * output to s+1; backward, d(residual) flows back the same way (point-to-point over the PP
 * group of core/comm.h, between ranks of the same TP and DP coordinates; the residual is
 * replicated over TP). Every function also works on a model without PP (one stage). */
#ifndef ZB_PIPELINE_H
#define ZB_PIPELINE_H

#include <stddef.h>

#include "comm.h"
#include "model.h"
#include "train.h"

/* 1 if this model is the first / last pipeline stage (also without PP). */
int zb_pp_is_first(const zb_model *m);
int zb_pp_is_last(const zb_model *m);

/* One micro-batch forward on this stage: receive res[0] from the previous stage (unless
 * first), zb_model_forward, send res[L] to the next (unless last) without blocking into *req
 * (complete it — zb_pp_wait — before a is reused; not pending when nothing was sent).
 * Collective along the pipeline. Models without PP: just zb_model_forward. */
int zb_pp_forward(const zb_model *m, zb_acts *a, const int *ids, zb_comm_req *req);
/* Backward of the same micro-batch: receive d(res[L]) from the next stage (unless last; the
 * last stage must have put dlogits in a->logits, as for zb_model_backward), zb_model_backward,
 * send d(res[0]) to the previous stage (unless first) into *req. */
int zb_pp_backward(zb_model *m, zb_acts *a, const int *ids, zb_comm_req *req);
int zb_pp_wait(const zb_model *m, zb_comm_req *req);
/* Tied embeddings: first and last stage exchange their embedding gradient (this TP rank's
 * vocabulary rows) and both keep the sum (identical on both: float addition commutes). No-op
 * without PP or without tying. */
int zb_pp_tied_grad_sum(zb_model *m);

/* ---- the 1F1B schedule (PipeDream-Flush) over the micro-batches of one step ----
 *
 * M micro-batches; micro-batch k's ids are ids + k * ids_stride. acts[K] (K >= min(pp_size, M)
 * on every stage; micro-batch k uses acts[k % K]) are allocated by the caller for this stage's
 * model. Stage s runs min(pp_size - s - 1, M) warm-up forwards, then alternates one forward and
 * one backward, then the remaining backwards (at most pp_size - s micro-batches in flight). On
 * the last stage h->loss(h->ctx, a, k) is called right after the forward of micro-batch k: it
 * computes the loss from a->logits and, when want_grad, puts dlogits in a->logits (as for
 * zb_model_backward). want_grad = 0: forwards only, in order. Gradients accumulate into
 * m->grad; the tied embedding gradient sum (zb_pp_tied_grad_sum) is left to the caller.
 * Collective along the pipeline. */
typedef int (*zb_pp_loss_fn)(void *ctx, zb_acts *a, int k);
typedef int (*zb_pp_hook_fn)(void *ctx, int k);
typedef struct {
    zb_pp_loss_fn loss;          /* the last stage's loss (required) */
    /* called on every stage right before the forward of micro-batch k (may be NULL): the trainer
     * runs the teacher's stage forward there (zb_pp_forward of the teacher: its residual travels
     * to the next stage just ahead of the student's, on the same group and tag, so the
     * non-overtaking order of point-to-point messages pairs each receive with its send) */
    zb_pp_hook_fn pre_forward;
    /* called on every stage right before the backward of micro-batch k (may be NULL): the
     * trainer arms the DP gradient buckets before the last one (k = M - 1), so that their
     * reduction overlaps that backward */
    zb_pp_hook_fn pre_backward;
    void *ctx;
} zb_pp_hooks;
int zb_pp_1f1b(zb_model *m, zb_acts *acts, int K, int M, const int *ids, size_t ids_stride, int want_grad,
               const zb_pp_hooks *h);

/* ---- a trainer's step through the pipeline ----
 *
 * The stage losses of core/train.h on stage-local models, every stage. The teacher / reference
 * (kd, ild, dpo) is a stage-local model of the same pipeline, run forward just before the
 * student on each stage (zb_pp_1f1b's pre hook), one activation set; ILD needs it cut at the
 * same layers as the student and runs no student pipeline: each stage distils its own layers
 * from the teacher activations it holds. */
struct zb_dp;
typedef struct {
    zb_trainer *tr;
    zb_acts *acts;            /* [k]: the micro-batches in flight; acts[0] is tr->a (shared) */
    int k;
    zb_loss_parts *parts;     /* [m]: per micro-batch */
    int m;
    zb_comm_req t_req;        /* the teacher's pending activation send */
    /* set by the driver (may stay NULL): armed before the last backward of a step, so that the
     * DP gradient buckets are reduced while that backward runs (parallel/dp.h) */
    struct zb_dp *dp;
    /* the current step */
    const int *ids, *targets;
    int m_now, want_grad;
    float gs;
} zb_pp_trainer;

/* Activations of min(pp_size, M) micro-batches in flight, allocated once; M = the most
 * micro-batches a zb_pp_trainer_step call gets (grad_accum). */
int zb_pp_trainer_init(zb_pp_trainer *p, zb_trainer *tr, int M);
void zb_pp_trainer_free(zb_pp_trainer *p);
/* One step's M micro-batches through the 1F1B schedule: ids / targets [M * rows*T]
 * (micro-batch k at k * rows*T; every stage gets them, only the first uses the ids and the
 * last the targets). The stage loss of each micro-batch (as zb_trainer_step, gradient times
 * grad_scale ACCUMULATED into the stage's m->grad) is computed on the last stage; *out holds
 * the SUMS over the M micro-batches of the parts, broadcast from the last stage to every
 * stage of the pipeline (ILD: each stage's share, summed over the stages). want_grad = 0:
 * forwards only. The tied embedding gradient sum (zb_pp_tied_grad_sum) is left to the caller.
 * Collective over the pipeline (and TP). */
int zb_pp_trainer_step(zb_pp_trainer *p, int M, const int *ids, const int *targets, int want_grad,
                       float grad_scale, zb_loss_parts *out);

#endif
