#include "grid.h"

#include <stdio.h>
#include <string.h>

#include "comm_mpi.h"
#include "zb_common.h"

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
    int node_leader = 0, nrank;
    ZB_MPI(MPI_Comm_rank(node, &nrank));
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

void zb_grid_free(zb_grid *g) {
    zb_comm_mpi_free(g->comm);
    if (g->tp != MPI_COMM_NULL && g->tp) MPI_Comm_free(&g->tp);
    if (g->pp != MPI_COMM_NULL && g->pp) MPI_Comm_free(&g->pp);
    if (g->dp != MPI_COMM_NULL && g->dp) MPI_Comm_free(&g->dp);
    memset(g, 0, sizeof *g);
}

const char *zb_grid_describe(const zb_grid *g, char *buf, int cap) {
    snprintf(buf, cap, "world %d = dp %d x pp %d x tp %d; rank %d = (dp %d, pp %d, tp %d)%s",
             g->size, g->dp_size, g->pp_size, g->tp_size, g->rank, g->dp_rank, g->pp_rank,
             g->tp_rank, g->tp_on_one_node ? "" : " [warning: a TP group spans nodes]");
    return buf;
}
