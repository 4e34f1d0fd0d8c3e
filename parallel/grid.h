/* grid.h — the DP x PP x TP process grid (Megatron order: TP fastest, then PP, then DP).
 *
 * world rank = (dp * pp_size + pp) * tp_size + tp, so the ranks of one TP group are
 * consecutive — with mpirun's default by-core placement they share a node, which the
 * tensor-parallel all-reduces (one per block in forward and in backward) need. */
#ifndef ZB_GRID_H
#define ZB_GRID_H

#include <mpi.h>

#include "comm.h"

typedef struct {
    MPI_Comm world, tp, pp, dp;
    zb_comm *comm;        /* the groups as core/comm.h sees them (comm_mpi.c); owned */
    int rank, size;
    int tp_rank, tp_size, pp_rank, pp_size, dp_rank, dp_size;
    int tp_on_one_node;   /* 1 if every TP group shares a node (MPI_COMM_TYPE_SHARED) */
    int local_rank, local_size;   /* this rank's place among the ranks of its node */
    int gpu;              /* 1: zb_grid_init_gpu: comm is the NCCL table (comm_nccl.h) */
} zb_grid;

/* tp * pp must divide the world size; the rest is data parallel. Collective. Models built on
 * the grid point to g->comm: free the grid after them. */
int zb_grid_init(zb_grid *g, MPI_Comm world, int tp, int pp);
/* The same for ranks that compute on GPUs (--device cuda): one rank per GPU, the local rank
 * picks it (zb_cuda_init), and g->comm moves device buffers with NCCL (comm_nccl.h). Call it
 * before the first use of the CUDA backend. A build without CUDA fails with a clear line. */
int zb_grid_init_gpu(zb_grid *g, MPI_Comm world, int tp, int pp);
void zb_grid_free(zb_grid *g);
/* A one-line description: "world 8 = dp 2 x pp 2 x tp 2; rank 5 = (dp 1, pp 0, tp 1)". */
const char *zb_grid_describe(const zb_grid *g, char *buf, int cap);

#endif
