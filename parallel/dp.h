/* dp.h — data parallelism (SPEC §9: every DP rank holds a full replica of its TP/PP shard;
 * gradients are averaged over the DP communicator before the optimizer step).
 *
 * Two ways:
 *   zb_dp_reduce_grads  one blocking all-reduce per run of trainable parameters (simple).
 *   zb_dp (below)       what the trainer uses: gradients reduced in BUCKETS of ~bucket_mb MB
 *                       with non-blocking all-reduces, each bucket started as soon as the
 *                       backward has finished the layers it holds (zb_model.grad_hook, called by
 *                       zb_model_backward after each block from the top), so that communication
 *                       overlaps the rest of the backward (PyTorch DDP / Megatron-LM gradient
 *                       buckets); zb_dp_finish waits for all of them before the optimizer.
 *                       With zero = 1, ZeRO stage 1 (Rajbhandari et al., "ZeRO: memory
 *                       optimizations toward training trillion parameter models", 2020): the
 *                       flat buffer of the shard is cut into dp contiguous ranges; DP rank r
 *                       keeps AdamW's m and v of its range only, receives the reduced gradient
 *                       of its range (a reduce-scatter of each bucket's pieces, started by the
 *                       hook like the all-reduces), updates those parameters, and the
 *                       parameters are all-gathered after the step. The
 *                       arithmetic of each float is that of zb_adamw_step: the loss curve is
 *                       the non-ZeRO one (up to the summation order of the reduction).
 *
 * Communication goes through core/comm.h (the DP group); every call is checked, a failure
 * inside the backward hook (a void callback) prints the rank's message and stops every rank. */
#ifndef ZB_DP_H
#define ZB_DP_H

#include <stddef.h>

#include "comm.h"
#include "model.h"
#include "optim.h"

/* grad <- scale * mean over the DP group of grad, for the parameters whose trainable[i] is
 * nonzero (trainable may be NULL: all). Contiguous trainable parameters are reduced in one
 * call. Collective over DP (all ranks, same trainable mask). With one rank only the scaling. */
int zb_dp_reduce_grads(zb_model *m, const unsigned char *trainable, float scale, zb_comm *c);

typedef struct {
    size_t off, n;        /* floats [off, off+n) of the flat gradient buffer */
    int ready;            /* the lowest layer it holds (n_layers: head / final norm; -1: embedding) */
    int launched;
    zb_comm_req req;
    /* node-shared path: this bucket's place in each rank's shared data, and how far it got */
    size_t soff;
    int reduced, gathered;
    _Atomic int done;     /* MPI path with the progress thread: its request completed */
    /* ZeRO-1: the bucket's pieces in each rank's range ([size], rank order, summing to n) and
     * where this rank's piece goes in gshard */
    const size_t *zcounts;
    size_t zout;
    zb_comm_req greq;     /* ZeRO-1: the parameters' all-gather of the bucket after the optimizer */
} zb_dp_bucket;

/* How the buckets are all-reduced (env ZB_DP_ALLREDUCE: auto (default), mpi, shm).
 *  ZB_DP_MPI  MPI_Iallreduce per bucket (in place: Open MPI's libnbc runs its binomial tree,
 *             reduce to rank 0 and broadcast); progressed inside the hooks' MPI_Test calls, or
 *             by a progress thread (env ZB_DP_PROGRESS=thread[:microseconds], which needs
 *             MPI_THREAD_MULTIPLE, asked for by the driver when that variable is set).
 *  ZB_DP_SHM  the DP group on one node, host memory: an MPI-3 shared window; each rank copies
 *             a finished bucket into its part, and rank j sums chunk j of the bucket over the
 *             ranks reading their parts directly (the same binomial tree of additions as
 *             libnbc's, so the bits equal the MPI path's), then every rank copies the summed
 *             chunks back: a reduce-scatter + all-gather at memory speed, no message rounds to
 *             progress. Work is done in the hooks between layers as soon as every rank has
 *             published a bucket; what is left at zb_dp_finish is the exposed part. */
typedef enum { ZB_DP_MPI = 0, ZB_DP_SHM } zb_dp_path;
#define ZB_DP_MAX_SHM 256   /* the shared path's most ranks (its tree's stack arrays) */

typedef struct zb_dp {
    zb_model *m;
    zb_comm *comm;        /* the DP group (not owned) */
    int rank, size;
    int nb;
    zb_dp_bucket *b;
    int armed;            /* the hook launches buckets (set for the last micro-batch only) */
    int zero;
    /* ZeRO-1: this rank's range [lo, hi) of the flat buffer; counts / displs of every rank */
    size_t lo, hi;
    size_t *counts, *displs;
    float *gshard;        /* [hi - lo] the reduced gradient of the range */
    size_t *zc;           /* [nb * size] the buckets' zcounts */
    int zero_whole;       /* env ZB_ZERO_REDUCE=after: one reduce-scatter of the whole buffer in
                           * zb_dp_finish, after the backward (the path before the buckets) */
    int hold_tied;        /* ZeRO under PP, first / last stage of a tied embedding: its bucket waits
                           * for zb_pp_tied_grad_sum (the stages' ranges differ), started by finish */
    zb_dp_path path;
    /* time spent on the gradient all-reduce since the caller last reset them: inside the
     * backward's hooks (overlapped with compute) and inside zb_dp_finish (exposed) */
    double overlap_s, exposed_s;
    /* after zb_dp_device_times on a device with stream timing (NCCL): overlap_s and exposed_s
     * are the device's: exposed = from the backward's end to the reduced gradients on the
     * compute stream (+ ZeRO's parameter all-gather after the optimizer, the previous step's:
     * ag_last), side_s = the side stream's time in the
     * buckets' collectives, overlap = side_s - exposed (at least 0) */
    double side_s, ag_last, ag_stall;
    /* ZeRO-1's parameters gathered bucket by bucket after the optimizer (ZB_ZERO_GATHER=after:
     * one all-gather after it, the path before): each bucket's greq, waited for by the forward
     * (zb_model.param_hook); zd [nb * size] the pieces' displacements in each bucket */
    int gather, gathering, stall_due;
    size_t *zd;
    int device_times;
    int mean;             /* buckets all-reduced with ZB_RED_MEAN (NCCL's average), no scaling
                           * after (env ZB_DP_MEAN=0: sum, then scale) */
    /* the embedding's rows reduced apart (dp.c; env ZB_DP_SPARSE_EMBED=0: its dense buckets
     * after the embedding's backward, the path before) */
    int sparse, sp_on, sp_launched, sp_n, sp_nu;
    const zb_param *emb;
    int *sp_mark;         /* [vocab] host: -1, or a row's slot while the union is built */
    int *sp_all, *sp_slot, *sp_rows;   /* host: every rank's ids [size * sp_n], this rank's slots
                                        * [sp_n], the union's ids [sp_nu] (sorted) */
    int *sp_slot_d, *sp_rows_d;        /* backend copies of sp_slot and sp_rows */
    float *sp_buf;        /* backend [sp_nu, d]: the compact rows */
    zb_comm_req sp_req;
    /* ZB_DP_SHM */
    void *win;
    char **seg;           /* [size] each rank's shared part: flags, then the buckets' data */
    size_t hdr;           /* bytes of flags before the data */
    unsigned long long epoch;   /* the current step's number (flags hold the last one done) */
    float *tmp;           /* tree-sum scratch */
    /* ZB_DP_MPI progress thread */
    int progress_us;      /* 0: none */
    int *order;           /* [nb] buckets in launch order */
    _Atomic int n_launched, running;
    void *thread;         /* pthread_t * while running */
} zb_dp;

/* Buckets of ~bucket_mb MB over the trainable parameters (contiguous runs, cut at layer
 * boundaries of the -1 group and at frozen parameters). zero: ZeRO-1 (also sets up the
 * ranges). Installs m->grad_hook (disarmed). Collective-free; every rank computes the same. */
int zb_dp_init(zb_dp *d, zb_model *m, const unsigned char *trainable, zb_comm *comm, double bucket_mb, int zero);
void zb_dp_free(zb_dp *d);
/* Arm before the backward of the LAST micro-batch of a step (earlier micro-batches only
 * accumulate): the hook then starts each bucket when its layers are done. Optional: what
 * the hook has not started, zb_dp_finish starts. */
int zb_dp_arm(zb_dp *d, const int *ids, int n);
/* ids [n] (host): the armed micro-batch's token ids (NULL: unknown, the embedding's gradient
 * goes dense), the same n on every rank of the group; collective over DP when the embedding's
 * rows are reduced apart (d->sparse). zb_dp_arm_buckets: the arming alone (no ids). */
void zb_dp_arm_buckets(zb_dp *d);
/* Start what the hook has not (stages whose backward does not go through zb_model_backward,
 * e.g. ILD), wait for every bucket, scale by 1/dp (the mean). ZeRO: the buckets are
 * reduce-scattered into d->gshard instead (the full m->grad is then not meaningful).
 * Collective over comm. */
int zb_dp_finish(zb_dp *d);
/* The squared global gradient norm of the trainable parameters after zb_dp_finish, identical
 * on every rank of the grid: TP-split tensors summed over the TP group, replicated ones once;
 * under ZeRO each DP rank sums its range and the parts are summed over DP; pipeline stages
 * summed over PP, a tied embedding counted once (after zb_pp_tied_grad_sum). */
int zb_dp_grad_sq_norm(const zb_dp *d, const zb_adamw *o, double *out);
/* After zb_dp_finish: the full HF name of the first tensor (in the full model's order) whose
 * gradient holds an inf or NaN on any rank, or "" when none does. Collective over the world. */
int zb_dp_first_nonfinite(const zb_dp *d, const zb_adamw *o, char *name, size_t cap);
/* ZeRO-1: give o shard-sized moments (frees the full ones). */
int zb_dp_zero_attach(zb_dp *d, zb_adamw *o);
/* One AdamW update: plain zb_adamw_step, or under ZeRO the update of this rank's range then
 * an all-gather of the parameters. Increments o->step. Collective under ZeRO. */
int zb_dp_optim_step(zb_dp *d, zb_adamw *o, float lr, float grad_scale);
/* After the step's optimizer: where the communication implementation times its device streams
 * (NCCL), overlap_s / exposed_s / side_s become the device's (waits for the step's DP work);
 * otherwise they stay the host's. */
int zb_dp_device_times(zb_dp *d);
/* ZeRO-1: wait for the parameters' all-gather still in flight (before the parameters are read
 * other than by the forward, e.g. a checkpoint). Not collective. */
int zb_dp_params_ready(zb_dp *d);
/* zb_comm marks of the DP exchange (zb_comm_mark) */
enum { ZB_DP_MARK_BWD = 0, ZB_DP_MARK_DONE, ZB_DP_MARK_AG0, ZB_DP_MARK_AG1 };
#endif
