/* comm_mpi.h — core/comm.h over MPI: one communicator per group of the grid (grid.h). */
#ifndef ZB_COMM_MPI_H
#define ZB_COMM_MPI_H

#include <mpi.h>

#include "comm.h"

/* A communication table over the given communicators (not owned: they must outlive it; any of
 * tp / pp / dp may be MPI_COMM_SELF). *out is allocated; free it with zb_comm_mpi_free. */
int zb_comm_mpi_new(zb_comm **out, MPI_Comm world, MPI_Comm tp, MPI_Comm pp, MPI_Comm dp);
void zb_comm_mpi_free(zb_comm *c);
/* The MPI communicator of a group (the HDF5 MPI-IO writer needs it). */
MPI_Comm zb_comm_mpi_group(const zb_comm *c, zb_group g);

#endif
