#include "grid.h"

#include <stdio.h>
#include <string.h>

#include "comm_mpi.h"
#include "comm_nccl.h"
#include "zb_common.h"
#ifdef ZB_HAVE_CUDA
#include "cuda_common.h"
#endif

int zb_grid_init(zb_grid *g, MPI_Comm world, int tp, int pp) {
    memset(g, 0, sizeof *g);
    g->world = world;
    ZB_MPI(MPI_Comm_rank(world, &g->rank));
    ZB_MPI(MPI_Comm_size(world, &g->size));
    if (tp < 1 || pp < 1) return zb_fail(ZB_EARG, "--tp and --pp must be >= 1 (got %d, %d)", tp, pp);
    if (g->size % (tp * pp) != 0)
        return zb_fail(ZB_EARG, "world size %d is not divisible by tp %d x pp %d", g->size, tp, pp);
    g->tp_size = tp;
    g->pp_size = pp;
    g->dp_size = g->size / (tp * pp);
    g->tp_rank = g->rank % tp;
    g->pp_rank = (g->rank / tp) % pp;
    g->dp_rank = g->rank / (tp * pp);
    /* colour = the coordinates that stay fixed within the group */
    ZB_MPI(MPI_Comm_split(world, g->dp_rank * pp + g->pp_rank, g->tp_rank, &g->tp));
    ZB_MPI(MPI_Comm_split(world, g->dp_rank * tp + g->tp_rank, g->pp_rank, &g->pp));
    ZB_MPI(MPI_Comm_split(world, g->pp_rank * tp + g->tp_rank, g->dp_rank, &g->dp));
    /* Is each TP group inside one shared-memory node? */
    MPI_Comm node;
    ZB_MPI(MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, g->rank, MPI_INFO_NULL, &node));
    int node_leader = 0;
    ZB_MPI(MPI_Comm_rank(node, &g->local_rank));
    ZB_MPI(MPI_Comm_size(node, &g->local_size));
    int wr = g->rank;
    ZB_MPI(MPI_Allreduce(&wr, &node_leader, 1, MPI_INT, MPI_MIN, node));   /* node id = lowest rank */
    int lo = node_leader, hi = node_leader;
    ZB_MPI(MPI_Allreduce(&node_leader, &lo, 1, MPI_INT, MPI_MIN, g->tp));
    ZB_MPI(MPI_Allreduce(&node_leader, &hi, 1, MPI_INT, MPI_MAX, g->tp));
    int same = lo == hi, all = 0;
    ZB_MPI(MPI_Allreduce(&same, &all, 1, MPI_INT, MPI_LAND, world));
    g->tp_on_one_node = all;
    MPI_Comm_free(&node);
    return zb_comm_mpi_new(&g->comm, world, g->tp, g->pp, g->dp);
}

/* Every rank's GPU selected, or every rank fails with the first failing rank's reason. */
static int select_gpu(zb_grid *g) {
    int rc = ZB_OK;
#ifdef ZB_HAVE_CUDA
    char why[256] = "";
    int n = zb_cuda_device_count(why, sizeof why);
    if (n == 0) rc = zb_fail(ZB_EDEVICE, "--device cuda: no GPU on this node (%s)", why);
    else if (g->local_size > n && n > 1)   /* NCCL refuses two ranks on one GPU */
        rc = zb_fail(ZB_EDEVICE, "--device cuda: %d ranks on this node but %d GPUs visible: start one rank per GPU "
                     "(cluster/launch.sh; CUDA_VISIBLE_DEVICES)", g->local_size, n);
    else   /* one GPU visible to each of several ranks: the launcher gave each its own (srun --gpus-per-task=1) */
        rc = zb_cuda_init(n == 1 ? 0 : g->local_rank);
#else
    rc = zb_fail(ZB_EARG, "--device cuda: this build has no CUDA backend (configure with -DZB_CUDA=ON)");
#endif
    int ok = rc == ZB_OK, all = 0;
    ZB_MPI(MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_LAND, g->world));
    if (all) return ZB_OK;
    /* the lowest failing rank's message, so that every rank reports the same line */
    int first = ok ? g->size : g->rank, lowest = 0;
    ZB_MPI(MPI_Allreduce(&first, &lowest, 1, MPI_INT, MPI_MIN, g->world));
    char msg[512];
    snprintf(msg, sizeof msg, "%s", ok ? "" : zb_errmsg());
    ZB_MPI(MPI_Bcast(msg, (int)sizeof msg, MPI_CHAR, lowest, g->world));
    return zb_fail(ZB_EDEVICE, "%s%s", lowest == g->rank ? "" : "(another rank) ", msg);
}

int zb_grid_init_gpu(zb_grid *g, MPI_Comm world, int tp, int pp) {
    ZB_TRY(zb_grid_init(g, world, tp, pp));
    ZB_TRY(select_gpu(g));
    zb_comm *mpi = g->comm;
    g->comm = NULL;
    ZB_TRY(zb_comm_nccl_new(&g->comm, mpi, world, g->tp, g->pp, g->dp));   /* owns mpi from here */
    g->gpu = 1;
    return ZB_OK;
}

void zb_grid_free(zb_grid *g) {
    if (g->gpu) zb_comm_nccl_free(g->comm);
    else zb_comm_mpi_free(g->comm);
    if (g->tp != MPI_COMM_NULL && g->tp) MPI_Comm_free(&g->tp);
    if (g->pp != MPI_COMM_NULL && g->pp) MPI_Comm_free(&g->pp);
    if (g->dp != MPI_COMM_NULL && g->dp) MPI_Comm_free(&g->dp);
    memset(g, 0, sizeof *g);
}

const char *zb_grid_describe(const zb_grid *g, char *buf, int cap) {
    snprintf(buf, cap, "world %d = dp %d x pp %d x tp %d; rank %d = (dp %d, pp %d, tp %d)%s%s",
             g->size, g->dp_size, g->pp_size, g->tp_size, g->rank, g->dp_rank, g->pp_rank,
             g->tp_rank, g->gpu ? "; GPUs, NCCL" : "", g->tp_on_one_node ? "" : " [warning: a TP group spans nodes]");
    return buf;
}
