/* comm_nccl_impl.h — private to parallel/comm_nccl*.c: the NCCL implementation's state, shared
 * by the table (comm_nccl.c) and its setup / teardown (comm_nccl_setup.c). */
#ifndef ZB_COMM_NCCL_IMPL_H
#define ZB_COMM_NCCL_IMPL_H
#ifdef ZB_HAVE_CUDA

#include <cuda_runtime.h>

#include "comm_mpi.h"
#include "comm_nccl.h"
#include "cuda_common.h"
#include "zb_common.h"
#ifdef ZB_HAVE_NCCL
#include <nccl.h>
#endif

typedef struct {
    zb_comm *mpi;                   /* host buffers, and the staging path */
    MPI_Comm mg[ZB_NGROUPS];
    int pp_size;
#ifdef ZB_HAVE_NCCL
    ncclComm_t nc[ZB_NGROUPS];      /* NULL: none (one rank, or WORLD) */
    ncclComm_t *to, *from;          /* [pp_size]: to[p] carries this stage -> stage p, from[p] p -> this */
#endif
    cudaStream_t *to_s, *from_s;    /* a stream per point-to-point communicator */
    cudaStream_t compute, comm, side;
    zb_cuda_p2p *p2p;               /* the TP group's peer memory (CUDA IPC), NULL: none */
    int p2p_sum;                    /* ZB_TP_ALLREDUCE=p2p: the TP group's small all-reduces through it */
    int p2p_fused;                  /* the fused decode sum + residual + norm through it (ZB_TP_FUSED=1) */
    cudaEvent_t ev_in, ev_out;
    int sync;                       /* ZB_NCCL_SYNC=1: the host waits after every call */
    /* device-true timing (comm.h mark / elapsed / side_busy; ZB_DP_TIMING=0: none) */
    int timing;
    cudaEvent_t marks[ZB_COMM_MARKS];
    unsigned marked;                /* bit k: mark k recorded since the reset */
    cudaEvent_t *tside;             /* [cap_side]: start, end of each side-stream call since the reset */
    int nside, cap_side;
    cudaEvent_t *twait;             /* [cap_wait]: before, after each compute-stream wait for the side stream */
    int nwait, cap_wait;
} nccl_impl;

#define ZB_CU(call) do { cudaError_t zb_e_ = (call); if (zb_e_ != cudaSuccess) \
    return zb_fail(ZB_EDEVICE, "CUDA error '%s' in %s (%s:%d)", cudaGetErrorString(zb_e_), #call, __FILE__, __LINE__); } while (0)
#ifdef ZB_HAVE_NCCL
#define ZB_NC(call) do { ncclResult_t zb_n_ = (call); if (zb_n_ != ncclSuccess) \
    return zb_fail(ZB_EMPI, "NCCL error '%s' in %s (%s:%d)", ncclGetErrorString(zb_n_), #call, __FILE__, __LINE__); } while (0)
#endif

/* the table (comm_nccl.c) */
extern const zb_comm_ops zb_nccl_ops;

#endif   /* ZB_HAVE_CUDA */
#endif
