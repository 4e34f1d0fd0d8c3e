/* comm.h — how one rank's code talks to the other ranks. core/ knows nothing else of them:
 * no MPI type appears here, so that parallel/comm_mpi.c fills this table with MPI and a later
 * backend with NCCL (buffers then live where the model's tensors live: host memory today,
 * device memory with NCCL).
 *
 * Ranks form a DP x PP x TP grid (parallel/grid.h); every call names the group it runs over:
 *   ZB_GROUP_TP     the ranks holding the other slices of the same pipeline stage
 *   ZB_GROUP_PP     the stages of one pipeline (same TP and DP coordinates)
 *   ZB_GROUP_DP     the replicas of one shard (same TP and PP coordinates)
 *   ZB_GROUP_WORLD  every rank
 * Ranks in a call (root, peer) are ranks within that group. Collectives must be made by every
 * rank of the group in the same order. Every call returns ZB_OK or a code with its message
 * recorded (zb_fail). A NULL comm is one process alone: collectives are copies or no-ops.
 *
 * The wrappers below time every call into c->seconds (the communication share of a training
 * step: cluster/scaling.sh), and skip groups of one rank. */
#ifndef ZB_COMM_H
#define ZB_COMM_H

#include <stddef.h>

typedef enum { ZB_GROUP_WORLD = 0, ZB_GROUP_TP, ZB_GROUP_PP, ZB_GROUP_DP, ZB_NGROUPS } zb_group;
typedef enum { ZB_CT_F32 = 0, ZB_CT_F64, ZB_CT_I32, ZB_CT_I64, ZB_CT_U64 } zb_ctype;
/* ZB_RED_MEAN: the sum times 1/size, only where zb_comm.dev_mean says so (device floats) */
typedef enum { ZB_RED_SUM = 0, ZB_RED_MAX, ZB_RED_MIN, ZB_RED_MEAN } zb_redop;

/* A pending non-blocking operation (isend, iallreduce); pending 0: nothing to wait for. The
 * implementation keeps its handle in h. */
typedef struct {
    int pending;
    _Alignas(8) unsigned char h[24];
} zb_comm_req;

/* The implementation's table; impl is its state. Counts are elements of type t. */
typedef struct {
    int (*allreduce)(void *impl, zb_group g, void *x, size_t n, zb_ctype t, zb_redop op);
    int (*iallreduce)(void *impl, zb_group g, void *x, size_t n, zb_ctype t, zb_redop op, zb_comm_req *r);
    int (*bcast)(void *impl, zb_group g, void *x, size_t n, zb_ctype t, int root);
    /* out [size * n]: rank r's x at r * n */
    int (*allgather)(void *impl, zb_group g, const void *x, size_t n, void *out, zb_ctype t);
    /* in place: rank r's part x[displs[r] .. + counts[r]) to every rank */
    int (*allgatherv_inplace)(void *impl, zb_group g, void *x, const size_t *counts, const size_t *displs,
                              zb_ctype t);
    /* out [counts[rank]]: this rank's part of the sum of every rank's x [sum counts] */
    int (*reduce_scatter)(void *impl, zb_group g, const void *x, void *out, const size_t *counts, zb_ctype t);
    /* the same, non-blocking (ZeRO-1's gradient buckets); x and out are not touched until
     * the request completes, counts may be freed on return */
    int (*ireduce_scatter)(void *impl, zb_group g, const void *x, void *out, const size_t *counts, zb_ctype t,
                           zb_comm_req *r);
    /* out [size * n] on root only */
    int (*gather)(void *impl, zb_group g, const void *x, size_t n, void *out, zb_ctype t, int root);
    int (*send)(void *impl, zb_group g, const void *x, size_t n, zb_ctype t, int peer, int tag);
    int (*recv)(void *impl, zb_group g, void *x, size_t n, zb_ctype t, int peer, int tag);
    int (*isend)(void *impl, zb_group g, const void *x, size_t n, zb_ctype t, int peer, int tag, zb_comm_req *r);
    int (*wait)(void *impl, zb_comm_req *r);
    int (*test)(void *impl, zb_comm_req *r, int *done);
    int (*barrier)(void *impl, zb_group g);
    /* bring every rank down now (never returns) */
    void (*abort)(void *impl, int code);
    /* Optional (NULL: none). Memory every rank of group g maps, when they all run on one node:
     * `bytes` per rank; base[r] (one per rank of the group) is rank r's part in this process's
     * address space; *win the handle for shared_free, NULL when the group spans nodes. */
    int (*shared_alloc)(void *impl, zb_group g, size_t bytes, void **base, void **win);
    void (*shared_free)(void *impl, void *win);
    /* Optional (NULL: none). A TP decode step's sum fused with the residual step and the next
     * norm, on device buffers of N rows of C (zb_comm_sum_add_rmsnorm); *done 0: not taken (the
     * call does not fit, or the group has no peer memory), nothing done. */
    int (*sum_add_rmsnorm)(void *impl, zb_group g, const float *part, float *x, float *out, const float *w, int N,
                           int C, float eps, int residual, int *done);
    /* Optional (NULL: none). Device-true timing where the calls are queued on device streams
     * (NCCL): mark(k) records mark k (0 .. ZB_COMM_MARKS-1) on the compute stream, after what is
     * queued there now; mark(-1) forgets every mark and the side stream's timed calls (a new
     * step). elapsed(a, b) waits for mark b and gives the seconds from mark a to b (-1: one of
     * them not recorded since the reset); side_busy gives the seconds the side stream spent in
     * the non-blocking collectives (iallreduce, ireduce_scatter) since the reset (waits for them). */
    int (*mark)(void *impl, int k);
    int (*elapsed)(void *impl, int a, int b, double *s);
    int (*side_busy)(void *impl, double *s);
    /* Optional (NULL: the blocking allgatherv_inplace). allgatherv_inplace, non-blocking (ZeRO-1's
     * parameters bucket by bucket; GPUs: on the side stream after the compute stream's work
     * queued so far); counts / displs may be freed on return. */
    int (*iallgatherv_inplace)(void *impl, zb_group g, void *x, const size_t *counts, const size_t *displs,
                               zb_ctype t, zb_comm_req *r);
    /* Optional (NULL: none). The seconds the compute stream stood waiting in wait() for the
     * side stream's requests since the last call (timing events around each wait; the events
     * of the waits made so far must be done, or the call waits for them). */
    int (*stalled)(void *impl, double *s);
} zb_comm_ops;
#define ZB_COMM_MARKS 8

typedef struct zb_comm {
    const zb_comm_ops *ops;
    void *impl;
    int rank[ZB_NGROUPS], size[ZB_NGROUPS];
    double seconds;   /* time inside the calls below since the caller last reset it */
    int thread_multiple;   /* calls may come from several threads at once (MPI_THREAD_MULTIPLE) */
    /* bit g set: group g's collectives on device buffers may be recorded into a device graph
     * (NCCL on the recording stream: a TP decode step is replayed with its all-reduces) */
    unsigned graph_groups;
    /* iallreduce of device floats takes ZB_RED_MEAN (NCCL's ncclAvg: each rank's part times
     * 1/size, then summed; for a power-of-two size the bits of the sum scaled after) */
    int dev_mean;
} zb_comm;

size_t zb_ctype_size(zb_ctype t);

int zb_comm_rank(const zb_comm *c, zb_group g);
int zb_comm_size(const zb_comm *c, zb_group g);

int zb_comm_allreduce(zb_comm *c, zb_group g, void *x, size_t n, zb_ctype t, zb_redop op);
/* in-place sums, the common cases */
int zb_comm_sum_f32(zb_comm *c, zb_group g, float *x, size_t n);
int zb_comm_sum_f64(zb_comm *c, zb_group g, double *x, size_t n);
int zb_comm_iallreduce(zb_comm *c, zb_group g, void *x, size_t n, zb_ctype t, zb_redop op, zb_comm_req *r);
int zb_comm_bcast(zb_comm *c, zb_group g, void *x, size_t n, zb_ctype t, int root);
int zb_comm_allgather(zb_comm *c, zb_group g, const void *x, size_t n, void *out, zb_ctype t);
int zb_comm_allgatherv_inplace(zb_comm *c, zb_group g, void *x, const size_t *counts, const size_t *displs,
                               zb_ctype t);
int zb_comm_reduce_scatter(zb_comm *c, zb_group g, const void *x, void *out, const size_t *counts, zb_ctype t);
/* Non-blocking reduce_scatter (completed by zb_comm_wait / zb_comm_test); alone: a copy, done. */
int zb_comm_ireduce_scatter(zb_comm *c, zb_group g, const void *x, void *out, const size_t *counts, zb_ctype t,
                            zb_comm_req *r);
int zb_comm_gather(zb_comm *c, zb_group g, const void *x, size_t n, void *out, zb_ctype t, int root);
int zb_comm_send(zb_comm *c, zb_group g, const void *x, size_t n, zb_ctype t, int peer, int tag);
int zb_comm_recv(zb_comm *c, zb_group g, void *x, size_t n, zb_ctype t, int peer, int tag);
int zb_comm_isend(zb_comm *c, zb_group g, const void *x, size_t n, zb_ctype t, int peer, int tag,
                  zb_comm_req *r);
/* Both: nothing to do when r is not pending. */
int zb_comm_wait(zb_comm *c, zb_comm_req *r);
int zb_comm_test(zb_comm *c, zb_comm_req *r, int *done);
int zb_comm_barrier(zb_comm *c, zb_group g);
/* Node-shared memory over group g (collective; see zb_comm_ops.shared_alloc): *win NULL (and
 * ZB_OK) when the implementation has none or the group spans nodes. Freed (collectively) by
 * zb_comm_shared_free. Loads and stores in it are the caller's protocol (C11 atomics). */
int zb_comm_shared_alloc(zb_comm *c, zb_group g, size_t bytes, void **base, void **win);
void zb_comm_shared_free(zb_comm *c, void *win);

/* x = (residual ? x : 0) + the sum over group g of every rank's part, then out = RMSNorm(x) * w
 * (the backend's add_rmsnorm / rmsnorm_forward arithmetic), for N rows of C on device buffers,
 * part left as it was; x identical on every rank. One fused call when the implementation has one
 * for this group and size (*done = 1: a GPU kernel reading the peers' parts from their memory,
 * parallel/comm_nccl.c); *done = 0 otherwise, nothing done (the caller all-reduces and norms).
 * Collective: every rank of the group makes the same call, and gets the same *done. */
int zb_comm_sum_add_rmsnorm(zb_comm *c, zb_group g, const float *part, float *x, float *out, const float *w, int N,
                            int C, float eps, int residual, int *done);

/* Device-true timing (zb_comm_ops.mark / elapsed / side_busy): no-ops giving -1 seconds where
 * the implementation has none (host ranks: the calls' own time is the true time). */
int zb_comm_mark(zb_comm *c, int k);
int zb_comm_elapsed(zb_comm *c, int a, int b, double *s);
int zb_comm_side_busy(zb_comm *c, double *s);
int zb_comm_stalled(zb_comm *c, double *s);
/* Non-blocking allgatherv_inplace (completed by zb_comm_wait / zb_comm_test); alone: nothing to do.
 * Without the implementation's non-blocking call: the blocking one, done on return. */
int zb_comm_iallgatherv_inplace(zb_comm *c, zb_group g, void *x, const size_t *counts, const size_t *displs,
                                zb_ctype t, zb_comm_req *r);

/* A failure where no status can be returned (inside forward / backward): print this rank's
 * message as "zebra: <what>: <message>" and bring every rank down. */
void zb_comm_die(zb_comm *c, const char *what) __attribute__((noreturn));

#endif
