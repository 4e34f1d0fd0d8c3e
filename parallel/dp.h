/* dp.h — data-parallel gradient reduction (SPEC §9: every DP rank holds a full replica of its
 * TP/PP shard; gradients are averaged over the DP communicator before the optimizer step).
 *
 * This is the ONE place where gradients cross ranks, so that it can later be replaced by a
 * bucketed non-blocking reduction with ZeRO-1 optimizer sharding without touching the driver. */
#ifndef ZB_DP_H
#define ZB_DP_H

#include <mpi.h>
#include <stddef.h>

#include "model.h"

/* grad <- scale * mean over the ranks of dp of grad, for the parameters whose trainable[i] is
 * nonzero (trainable may be NULL: all). Contiguous trainable parameters are reduced in one
 * call. Collective over dp (all ranks, same trainable mask). With one rank only the scaling. */
int zb_dp_reduce_grads(zb_model *m, const unsigned char *trainable, float scale, MPI_Comm dp);

/* In place sums of a few doubles over comm (losses, token counts). */
int zb_dp_sum(double *x, int n, MPI_Comm comm);

#endif
