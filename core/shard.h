/* shard.h — a model that is one part of a larger one: a tensor-parallel slice of every layer
 * (Megatron-LM rules, SPEC.md §9) and/or the layers of one pipeline stage. parallel/tp.h
 * builds shards (which slice of each tensor a rank holds, loading and saving by slices); this
 * file is what one rank's forward, backward and losses need of them, over core/comm.h.
 *
 * A TP shard is an ordinary zb_model whose m->cfg holds the LOCAL dims (heads / KV heads /
 * latent heads / SSM heads and groups / FFN / vocabulary divided by tp), so that every kernel
 * runs unchanged on the shard; m->tp (this struct) keeps the full config, the communication
 * table and, per parameter, its full HF name and shape and which part of it this rank holds
 * (row segments x a column range):
 *
 *   column-parallel (rows split)   attention q/k/v_proj by head; MLA q_proj / q_b_proj by
 *                                  query head, kv_b_proj by KV head; Mamba2 in_proj PER SEGMENT
 *                                  z | x | B | C | dt (local rows = this rank's rows of each
 *                                  segment, concatenated), conv1d weight/bias per segment
 *                                  x | B | C, dt_bias / A_log / D / norm.weight by head;
 *                                  MLP gate/up; embedding and LM head by vocabulary row.
 *   row-parallel (columns split)   attention / MLA o_proj, Mamba2 out_proj, MLP down_proj.
 *   replicated                     RMSNorm weights of the residual stream, the final norm, and
 *                                  the MLA latent projections q_a_proj, q_a_layernorm,
 *                                  kv_a_proj_with_mqa, kv_a_layernorm.
 *
 * Communication (all sums over the TP group):
 *   forward   embedding (vocab-parallel lookup: rows of other ranks give zeros), after each
 *             row-parallel output (mixer out, MLP down): 1 + 2 per layer;
 *             the loss: max / sum-exp / target logit per row (never the full logits).
 *   backward  the input gradient of each column-parallel block (head -> final norm, MLP
 *             gate/up -> dln, mixer -> dln): 1 + 2 per layer; plus the gradients of the
 *             replicated MLA latent projections and their norms (q_a_proj, q_a_layernorm,
 *             kv_a_proj_with_mqa, kv_a_layernorm): they feed rank-local heads, so each rank
 *             holds a partial sum. Residual-stream norm gradients are computed from replicated
 *             tensors and are identical on every rank: no reduction.
 * Generation: caches are per local head, logits are gathered over the vocabulary for
 * sampling. A pipeline stage's model (pp_size > 1) holds layers [pp_l0, pp_l1) (model.h
 * pp_first); its generation receives / sends the residual over the PP group. */
#ifndef ZB_SHARD_H
#define ZB_SHARD_H

#include <stdint.h>

#include "comm.h"
#include "model.h"

#define ZB_TP_MAX_SEG 5

/* The part of one full tensor held by one rank. The full tensor is viewed as rows of
 * `width` floats (leading dim x product of the others); the rank holds the rows of each
 * segment (increasing order), and of each row the columns [col0, col0 + ncols). */
typedef struct {
    int nseg;
    int64_t row0[ZB_TP_MAX_SEG], nrows[ZB_TP_MAX_SEG];
    int64_t col0, ncols, width;
    int replicated;     /* every rank holds all of it */
    int partial_grad;   /* replicated, but each rank's gradient is a partial sum */
} zb_tp_slice;

struct zb_tp {
    zb_comm *comm;        /* the grid's groups (not owned) */
    int rank, size;       /* in the TP group */
    int writer;           /* 1 on the ranks that write checkpoints (DP replica 0) */
    zb_config full;       /* the model's config (m->cfg holds the local dims) */
    int64_t vocab0;       /* first vocabulary row held by this rank */
    zb_param *full_params;   /* [n_params]: full HF names and shapes, same order as m->params */
    zb_tp_slice *slices;     /* [n_params]: this rank's slice */
    /* PP: this shard is stage pp_rank of pp_size and holds layers [pp_l0, pp_l1) of the full
     * model (m->pp_first etc.) */
    int pp_rank, pp_size, pp_l0, pp_l1;
    /* The model's backend when its memory is not the host's (zb_model_set_backend sets it;
     * NULL: host memory). The vocabulary-parallel functions below then stage through the host
     * what the backend table has no entry for (loss rows, the gathered logits). */
    const zb_backend *dev;
};

/* Check that a config can be split tp ways: a clear error (naming the dimension) otherwise.
 * Deterministic: every rank gets the same answer before any work starts. */
int zb_tp_check(const zb_config *full, int tp);
/* The local dims of one shard (after zb_tp_check). */
void zb_tp_local_config(const zb_config *full, int tp, zb_config *local);
/* The full config of a model (m->cfg when m is not a shard). */
const zb_config *zb_model_full_config(const zb_model *m);
/* The communication table of a model (NULL for a whole model on one rank). */
zb_comm *zb_model_comm(const zb_model *m);
/* Free what parallel/tp.c allocated (called by zb_model_free). */
void zb_tp_free(zb_tp *tp);

/* ---- what forward / backward / the losses call (each stops every rank on a failure) ------- */
/* x[n] = sum over the TP group (in place). */
void zb_tp_allreduce(const zb_tp *tp, float *x, size_t n);
/* out [size * n] = every rank's mine [n] in rank order (the head's vocabulary slices). */
void zb_tp_gather_slices(const zb_tp *tp, const float *mine, float *all, size_t n);
/* Greedy picks over the vocabulary slices (each rank's logits [B, Vl], its rows from vocab0):
 * next[B] = the argmax of the full rows, as backend.h argmax_rows, from this rank's (value,
 * index) pairs gathered over the group into pairs [2 B (1 + size)] (backend.h argmax_pairs /
 * argmax_pick): 8 bytes per rank and row instead of 4 Vl. */
void zb_tp_greedy_picks(const zb_tp *tp, const zb_backend *be, int *next, const float *logits, int *pairs, int B,
                        int Vl);
/* The TP decode's sum with the residual step and the next norm after it, N rows of C:
 * x += the sum over the group of part (residual 0: x = the sum, part must be x), then
 * out = RMSNorm(x) * w. One fused call through the peers' memory where the communication table
 * has one (comm.h zb_comm_sum_add_rmsnorm; part then keeps this rank's values), else the
 * all-reduce of part in place and be's add_rmsnorm / rmsnorm_forward. */
void zb_tp_sum_add_rmsnorm(const zb_tp *tp, const zb_backend *be, float *part, float *x, float *out, const float *w,
                           int N, int C, float eps, int residual);
/* The fused call alone: 1 when made, 0 when the table has none for this call (nothing done). */
int zb_tp_fused_sum_add_rmsnorm(const zb_tp *tp, const float *part, float *x, float *out, const float *w, int N, int C,
                                float eps, int residual);
/* Vocabulary-parallel embedding: ids of this rank's rows are looked up, others give zeros;
 * then summed over the group. */
void zb_tp_embedding_forward(const zb_model *m, float *out, const int *ids, int N);
/* Gradient of this rank's rows only (dout is replicated; on a device backend the rows of other
 * ranks' tokens are zeroed in dout, which the backward does not read again). */
void zb_tp_embedding_backward(zb_model *m, float *dout, const int *ids, int N);
/* zb_cross_entropy over vocabulary-parallel logits [N, Vl]: the per-row max, sum of
 * exponentials and target logit are all-reduced; dlogits (local columns) as zb_cross_entropy.
 * Returns the SUM of the row losses (identical on every rank). */
double zb_tp_cross_entropy(const zb_tp *tp, float *dlogits, const float *logits, const int *targets,
                           int N, int Vl, float scale);
/* zb_kl_div over vocabulary-parallel student and teacher logits [N, Vl] (both split the same
 * way). Returns the sum over rows (identical on every rank). */
double zb_tp_kl_div(const zb_tp *tp, float *dstudent, const float *student, const float *teacher,
                    const int *mask, int N, int Vl, float tau, float scale);
/* Around a mixer backward of layer l whose input gradient dx[n] is replicated on entry:
 * begin zeroes, on TP ranks other than 0, dx and the layer's partial-gradient parameters;
 * end sums them over the group. The result: dx and those gradients hold the previous value
 * plus the full contribution, identical on every rank (accumulation keeps working). */
void zb_tp_mixer_grad_begin(zb_model *m, int l, float *dx, size_t n);
void zb_tp_mixer_grad_end(zb_model *m, int l, float *dx, size_t n);
/* Gather vocabulary-parallel rows: local [N, V/tp] -> full [N, V] on every rank; tmp holds
 * N * V floats (NULL: allocated here). Stops every rank on a failure. */
int zb_tp_gather_vocab(const zb_tp *tp, const float *local, float *tmp, float *full, int N, int Vl);
/* The same on a device backend be, from the gathered [tp][N][Vl] on the device (gathered) to
 * full [N][V] on the host; stage (host, N * V floats) is used when N > 1 and tp > 1. */
void zb_tp_logits_to_host(const zb_tp *tp, const zb_backend *be, const float *gathered, float *stage, float *full,
                          int N, int Vl);
/* Token ids (nb rows of nc at stride ld) as this rank's rows of the vocabulary (Vl of them):
 * id - vocab0, or -1 for another rank's token (an embedding row of zeros, backend.h). */
void zb_tp_local_ids(const zb_tp *tp, int Vl, const int *ids, int ld, int nb, int nc, int *out);
/* 1 when ok is non-zero on every rank of the TP group (a host collective: e.g. every rank
 * recorded its decode step, core/model.c); a failure stops every rank. */
int zb_tp_all(const zb_tp *tp, int ok);
/* The full model's sum of squared gradients (for global-norm clipping), identical on every TP
 * rank: split tensors summed over the group, replicated ones counted once. Works on a model
 * without TP too. Collective over the TP group. */
int zb_tp_grad_sq_norm(const zb_model *m, double *out);

#endif
