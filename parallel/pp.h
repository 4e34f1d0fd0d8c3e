/* pp.h — pipeline parallelism: the cost model and the cut of the layers into stages
 * (SPEC §9; Megatron-LM / GPipe style contiguous stages). The stages' models are tp.h shards
 * built with a cut; the schedule that runs them is pipeline.h.
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

#include "comm.h"
#include "config.h"

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

/* The layers [*l0, *l1) of stage `stage` of `stages`: cut[stage] .. cut[stage + 1] when a cut
 * is given (first layer of each stage, cut[stages] = n_layers, as zb_pp_partition gives: every
 * model built with it is cut there, e.g. a teacher with its student, ILD needing the teacher's
 * layer l on the stage of the student's layer l), otherwise zb_pp_partition with the cost
 * model at B = 1, T = ZB_PP_DEFAULT_T. Clear error if stages > layers or the cut is not one. */
#define ZB_PP_DEFAULT_T 2048
int zb_pp_stage_layers(const zb_config *c, int stages, int stage, const int *cut, int *l0, int *l1);

/* The cut of a training run: student config sc and, when a teacher / reference of the same
 * depth runs in the same pipeline, its config tc (both are cut at the same layers: ILD needs
 * the teacher's layer l on the stage of the student's layer l; the cut balances the student's
 * forward + backward plus the teacher's forward; NULL: the student alone), at tp-way tensor
 * parallelism. By the cost model at micro-batches of rows x T, or measured: rank 0 times one
 * layer of each kind and the head (zb_pp_measure, on the TP-local dims), costs[n_layers + 1]
 * (may be NULL) receives those seconds (layers, then the head), and every rank gets rank 0's
 * cut. cut[stages + 1]. Collective over the world when measured. */
int zb_pp_choose_cut(const zb_config *sc, const zb_config *tc, int stages, int tp, int measured, int rows, int T,
                     zb_comm *c, int *cut, double *costs);

#endif
