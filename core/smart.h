/* smart.h — SMART (SPEC.md §6): which K layers of a Zebra hybrid stay MLA.
 *
 * Scores. From the teacher, the ILD'd all-Mamba2 model M and the ILD'd all-MLA model A (same
 * depth, width and vocabulary), on held-out tokens:
 *     score[l] = KL(teacher || M) - KL(teacher || M with block l taken from A)
 * (KL per token, mean over the tokens): how much the KV-cache layer at l helps. One batch costs
 * the teacher's and M's forwards plus, per l, A's block l and M's blocks l+1..L-1 from M's
 * residual at l (L (L+1) / 2 block evaluations, no activations kept).
 *
 * Placement (read off the released plans, SPEC §3/§6): K layers, the first 0 and the last L-2
 * (or L-1 when `to_last`), every gap between consecutive ones floor(g) or ceil(g) with
 * g = last / (K-1). Among those C(K-1, c) placements (c = the number of ceil gaps, fixed by the
 * sum) the one of highest total score, found exactly by dynamic programming over (gaps placed,
 * ceil gaps used). The control without scores: K layers evenly spread over [0, L-1],
 * round(k (L-1) / (K-1)). */
#ifndef ZB_SMART_H
#define ZB_SMART_H

#include "model.h"

/* ---- placement -------------------------------------------------------------------------- */

/* The last layer a placement holds: L-2, or L-1 with to_last. */
int zb_smart_last(int L, int to_last);
/* Does layers[K] (strictly increasing) follow the rule? */
int zb_smart_rule_ok(const int *layers, int K, int L, int to_last);
/* Number of placements the rule allows (0 if none: K < 2 or K - 1 > last). */
double zb_smart_count(int L, int K, int to_last);
/* The allowed placement of highest sum of score[layer]: chosen[K] increasing, *total its sum
 * (may be NULL). Ties are broken the same way every time: comparing from the last gap back,
 * a ceil gap wins (ceil gaps as late as possible).
 * ZB_EARG (a message naming K and L) when the rule allows none. */
int zb_smart_place(const double *score, int L, int K, int to_last, int *chosen, double *total);
/* The control: round(k (L-1) / (K-1)) for k = 0..K-1 (K = 1: layer 0). */
void zb_smart_even(int L, int K, int *chosen);

/* ---- scores ----------------------------------------------------------------------------- */

typedef struct {
    const zb_model *teacher, *mamba, *mla;
    const zb_backend *be;   /* the models' backend: the buffers below are its memory */
    int B, T, L;
    int *ids;        /* [N] the batch's ids (device copy) */
    float *tlog;     /* [N, V] the teacher's logits of the batch */
    float *logits;   /* [N, V] */
    float *res;      /* [(L+1), N, d] M's residual stream */
    float *x, *ln;   /* [N, d] */
    zb_block_ws wt, wm, wa;
} zb_smart;

/* Checks the three models (teacher all attention, M all Mamba2, A all MLA; same layers, width
 * and vocabulary; one rank each: no TP / PP shards) and allocates for batches of B x T. */
int zb_smart_init(zb_smart *s, const zb_model *teacher, const zb_model *mamba, const zb_model *mla,
                  int B, int T);
void zb_smart_free(zb_smart *s);
/* One batch of ids [rows*T], rows <= B: ADDS to kl[0..L] the KL(teacher || .) summed over its
 * tokens, kl[l] for M with block l from A, kl[L] for M itself. */
void zb_smart_batch(zb_smart *s, const int *ids, int rows, double *kl);

#endif
