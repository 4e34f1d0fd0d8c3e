/* pp.h — pipeline parallelism: the cost model and the partition of layers into stages
 * (SPEC §9, issue 6; Megatron-LM / GPipe style contiguous stages; 1F1B schedule: PipeDream-
 * Flush, Narayanan et al. 2021).
 *
 * STATUS: the cost model and the partitioner (tests/test_pp.c), stage-local models with
 * point-to-point activation / gradient sends (tests/test_pp_model.c) and the 1F1B schedule over
 * the grad_accum micro-batches (zb_pp_1f1b; `zebra train --pp M`, every stage, the KD / ILD
 * teacher and DPO reference pipelined with the student; tests/cli_train_parallel.sh) are done.
 *
 * Cost of one layer, per token, for forward + backward (backward = 2 x forward, as in the
 * usual 6·N·tokens rule), as a roofline time on one rank:
 *     t = 3 * flops / flop_rate + bytes / mem_rate
 *   flops (forward, per token; a multiply-add = 2):
 *     MLP      2·3·d·F
 *     GQA      2·d·(H + 2·Hkv)·hd + 2·H·hd·d  +  2·T·H·hd        (causal: QK^T and PV over T/2 each)
 *     MLA      q: 2·d·r_q + 2·r_q·H·(nope+rope) (or 2·d·H·(nope+rope) without r_q);
 *              kv_a: 2·d·(r_kv+rope); kv_b: 2·r_kv·Hkv·(nope+v); o: 2·H·v·d;
 *              attention 2·(T/2)·H·(nope+rope+v)
 *     Mamba2   in_proj 2·d·(2·d_inner + x_w + b_w + c_w + nheads); conv 2·K·(x_w + b_w + c_w);
 *              SSD: intra-chunk 2·Q·nheads·(d_state + headdim) (Q = min(chunk, T)),
 *              state pass 4·nheads·headdim·d_state; out_proj 2·d_inner·d
 *   bytes (per token): the layer's parameters read in forward and backward and their gradient
 *   written (3·4·params / tokens-per-micro-batch, passed in as `tokens`), plus the saved
 *   activations written and read (2·4·acts per token, acts = what zb_acts keeps for the layer).
 * First stage also pays the embedding (a row gather: 3·4·d bytes per token), the last stage the
 * final norm, the LM head (2·d·V flops) and the loss (≈ 5·V flops).
 * Mamba2 layers cost less than attention / MLA ones at long T (no T-proportional term), MLA's
 * low-rank projections make it cheaper than GQA's, which the partition exploits. */
#ifndef ZB_PP_H
#define ZB_PP_H

#include <mpi.h>

#include "config.h"
#include "model.h"

typedef struct {
    double flop_rate;   /* FLOP/s of one rank (default 5e10: one AVX2 core with OpenBLAS) */
    double mem_rate;    /* bytes/s of one rank (default 1e10) */
    int T;              /* sequence length */
    int tokens;         /* tokens per micro-batch (B*T) */
    const zb_config *teacher;   /* a frozen model run forward in the same pipeline (KD / ILD
                                 * teacher, DPO reference), or NULL: each layer's and the head's
                                 * cost then adds the teacher's forward of the same layer */
} zb_pp_cost_cfg;

zb_pp_cost_cfg zb_pp_cost_defaults(int B, int T);
/* Forward FLOPs per token of layer l (mixer + MLP). */
double zb_pp_layer_flops(const zb_config *c, int l, int T);
/* Modelled seconds per token, forward + backward, of layer l / of the embedding / of the
 * final norm + head + loss. */
double zb_pp_layer_cost(const zb_config *c, int l, const zb_pp_cost_cfg *k);
double zb_pp_embed_cost(const zb_config *c, const zb_pp_cost_cfg *k);
double zb_pp_head_cost(const zb_config *c, const zb_pp_cost_cfg *k);
/* Contiguous stages minimising the most expensive stage (exact dynamic programme): stage s
 * holds layers [first[s], first[s+1]) (first[0] = 0, first[stages] = n_layers, at least one
 * layer each), stage 0 also the embedding, the last stage the head and loss. cost[s] (may be
 * NULL) receives each stage's modelled cost. Error if stages < 1 or > n_layers. */
int zb_pp_partition(const zb_config *c, int stages, const zb_pp_cost_cfg *k, int *first, double *cost);
/* The same from given costs: layer_cost[L], the embedding's (first stage) and the head's (last). */
int zb_pp_partition_costs(const double *layer_cost, int L, double emb, double head, int stages, int *first,
                          double *cost);

/* Measured costs (the alternative to the model): seconds of one micro-batch of B x T tokens on
 * THIS rank, forward and backward, of each layer (a one-layer model of its kind, random weights,
 * run as a middle stage; every layer of a kind gets that kind's time) and of the final norm +
 * LM head (a one-layer last stage minus the layer alone). Best of 3 runs each. c is what one
 * rank runs (under TP: zb_tp_local_config's dims, without the all-reduces). Cheap next to
 * training (3 x 2 x one layer per kind), but holds one layer of each kind with gradients. */
typedef struct {
    double layer_fwd[ZB_MAX_LAYERS], layer_bwd[ZB_MAX_LAYERS];
    double head_fwd, head_bwd;
} zb_pp_measured;
int zb_pp_measure(const zb_config *c, int B, int T, zb_pp_measured *out);

/* ---- the pipeline schedule's pieces (stage-local models: tp.h zb_model_init_tp with --pp) ----
 *
 * Stage s of a grid with pp > 1 holds layers [l0, l1) (zb_pp_stage_layers), the embedding on
 * the first stage, final norm + head on the last; tied embeddings: a copy on both first and last
 * stage (it is the head there), whose gradients are summed between them after the last
 * backward of a step (zb_pp_tied_grad_sum; Megatron-LM does the same). Activations: stage s
 * receives the residual stream [B*T, d] of each micro-batch from s-1 and sends its output to
 * s+1; backward, d(residual) flows back the same way (point-to-point over grid->pp, between
 * ranks of the same TP and DP coordinates; the residual is replicated over TP). */

/* The partition used by the stage-local models: zb_pp_partition with the cost model at
 * B = 1, T = zb_pp_seq_len (default 2048; the training driver sets its sequence length).
 * Stage `stage` holds layers [*l0, *l1). Clear error if stages > layers. */
extern int zb_pp_seq_len;
int zb_pp_stage_layers(const zb_config *c, int stages, int stage, int *l0, int *l1);
/* An explicit partition (first[stages + 1], as zb_pp_partition gives) that zb_pp_stage_layers
 * returns for every config of n_layers layers cut into `stages` stages, until cleared (first
 * NULL). The training driver sets it when a teacher runs in the same pipeline as the student:
 * both are then cut at the same layers (ILD needs the teacher's layer l on the stage of the
 * student's layer l), and the cut balances student forward + backward + teacher forward. */
int zb_pp_set_partition(const int *first, int stages, int n_layers);

/* One micro-batch forward on this stage: receive res[0] from the previous stage (unless
 * first), zb_model_forward, send res[L] to the next (unless last) with MPI_Isend into *req
 * (complete it — zb_pp_wait — before a is reused; MPI_REQUEST_NULL when nothing was sent).
 * Collective along the pipeline. Models without PP: just zb_model_forward. */
int zb_pp_forward(const zb_model *m, zb_acts *a, const int *ids, MPI_Request *req);
/* Backward of the same micro-batch: receive d(res[L]) from the next stage (unless last; the
 * last stage must have put dlogits in a->logits, as for zb_model_backward), zb_model_backward,
 * send d(res[0]) to the previous stage (unless first) into *req. */
int zb_pp_backward(zb_model *m, zb_acts *a, const int *ids, MPI_Request *req);
int zb_pp_wait(MPI_Request *req);
/* Tied embeddings: first and last stage exchange their embedding gradient (this TP rank's
 * vocabulary rows) and both keep the sum (identical on both: float addition commutes). No-op
 * without PP or without tying. */
int zb_pp_tied_grad_sum(zb_model *m);
/* 1 if this model is the first / last pipeline stage (also without PP). */
int zb_pp_is_first(const zb_model *m);
int zb_pp_is_last(const zb_model *m);

#endif

/* ---- the 1F1B schedule (PipeDream-Flush) over the micro-batches of one step ----
 *
 * M micro-batches; micro-batch k's ids are ids + k * ids_stride. acts[K] (K >= min(pp_size, M)
 * on every stage; micro-batch k uses acts[k % K]) are allocated by the caller for this stage's
 * model. Stage s runs min(pp_size - s - 1, M) warm-up forwards, then alternates one forward and
 * one backward, then the remaining backwards (at most pp_size - s micro-batches in flight). On the
 * last stage h->loss(h->ctx, a, k) is called right after the forward of micro-batch k: it computes the
 * loss from a->logits and, when want_grad, puts dlogits in a->logits (as for zb_model_backward).
 * want_grad = 0: forwards only, in order. Gradients accumulate into m->grad; the tied embedding
 * gradient sum (zb_pp_tied_grad_sum) is left to the caller. Collective along the pipeline. */
typedef int (*zb_pp_loss_fn)(void *ctx, zb_acts *a, int k);
typedef int (*zb_pp_hook_fn)(void *ctx, int k);
typedef struct {
    zb_pp_loss_fn loss;          /* the last stage's loss (required) */
    /* called on every stage right before the forward of micro-batch k (may be NULL): the trainer
     * runs the teacher's stage forward there (zb_pp_forward of the teacher: its residual travels
     * to the next stage just ahead of the student's, on the same communicator and tag, so the
     * non-overtaking order of MPI pairs each receive with its send) */
    zb_pp_hook_fn pre_forward;
    /* called on every stage right before the backward of micro-batch k (may be NULL): the
     * trainer arms the DP gradient buckets before the last one (k = M - 1), so that their
     * reduction overlaps that backward */
    zb_pp_hook_fn pre_backward;
    void *ctx;
} zb_pp_hooks;
int zb_pp_1f1b(zb_model *m, zb_acts *acts, int K, int M, const int *ids, size_t ids_stride, int want_grad,
               const zb_pp_hooks *h);
