/* comm_nccl.h — core/comm.h for ranks that compute on GPUs (--device cuda): buffers in device
 * memory go through NCCL, GPU to GPU; buffers in host memory (loss sums, token ids, counters)
 * through the MPI table of the same grid. Each call looks at where its buffer lives
 * (cudaPointerGetAttributes), so core/ and parallel/ call the one table as before.
 *
 * Communicators: one NCCL communicator per group of more than one rank (TP, PP, DP), and for
 * the pipeline's point-to-point traffic two per pair of neighbouring stages (and first <-> last
 * for tied embeddings), one for each direction: NCCL runs the operations of one communicator in
 * the order they were issued, so a send and a receive between the same two stages must not share
 * one (1F1B would deadlock). Each is bootstrapped over MPI: ncclGetUniqueId on the group's root,
 * MPI_Bcast over the group's MPI communicator, ncclCommInitRank.
 *
 * Streams: collectives and receives run on the comm stream, sends on the send stream, the
 * non-blocking all-reduce of the gradient buckets on the side stream; each waits for the work
 * queued so far on the backend's compute stream (an event), and the compute stream waits for
 * blocking calls before its next kernel, for non-blocking ones at zb_comm_wait. The host does
 * not wait (ZB_NCCL_SYNC=1: it does, after every call; then comm_s in train.jsonl is the time
 * spent communicating, otherwise the time to queue it). A device buffer with no NCCL
 * communicator for it (the WORLD group, stages that are not neighbours, a build without NCCL)
 * is staged through the host and MPI: slower, same result.
 *
 * Built with -DZB_CUDA=ON (NCCL when CMake finds it); zb_comm_nccl_new fails otherwise. */
#ifndef ZB_COMM_NCCL_H
#define ZB_COMM_NCCL_H

#include <mpi.h>

#include "comm.h"

/* 1 when this build has the GPU table with NCCL; 0 otherwise (then why says what is missing). */
int zb_comm_nccl_available(const char **why);
/* A table over the given communicators (not owned); mpi is the MPI table over the same ones and
 * is owned by the new table from here on (freed with it), also on failure. Collective over
 * world. The process's GPU must be selected already (zb_cuda_init). */
int zb_comm_nccl_new(zb_comm **out, zb_comm *mpi, MPI_Comm world, MPI_Comm tp, MPI_Comm pp, MPI_Comm dp);
void zb_comm_nccl_free(zb_comm *c);

#endif
