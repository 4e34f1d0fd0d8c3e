/* comm_nccl.c — core/comm.h over NCCL for device buffers, MPI for host buffers: the table (its
 * setup: comm_nccl_setup.c); see comm_nccl.h for the communicators and the streams. */
#include "comm_nccl.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm_mpi.h"
#include "zb_common.h"

#ifdef ZB_HAVE_CUDA

#include "comm_nccl_impl.h"


/* A pending request (zb_comm_req.h): an MPI request (with the host copy of a staged send to
 * free after it), or the event that ends an operation queued on a stream. */
enum { RQ_MPI = 1, RQ_EVENT = 2 };
typedef struct {
    int kind, pad;
    union { MPI_Request mpi; cudaEvent_t ev; } u;
    void *host;
} nreq;
_Static_assert(sizeof(nreq) <= sizeof(((zb_comm_req *)0)->h), "zb_comm_req cannot hold a NCCL request");

static MPI_Datatype mpi_dt(zb_ctype t) {
    return t == ZB_CT_F32 ? MPI_FLOAT : t == ZB_CT_F64 ? MPI_DOUBLE : t == ZB_CT_I32 ? MPI_INT
         : t == ZB_CT_I64 ? MPI_LONG_LONG : MPI_UNSIGNED_LONG_LONG;
}
static nreq *rq(zb_comm_req *r) { return (nreq *)(void *)r->h; }
static nccl_impl *IM(void *impl) { return impl; }


/* Does p point into device memory? (host malloc'd memory: no) */
static int on_dev(const void *p) {
    if (!p) return 0;
    struct cudaPointerAttributes a;
    if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
        (void)cudaGetLastError();   /* older runtimes: an error for unregistered host memory */
        return 0;
    }
    return a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged;
}

/* Is the compute stream being recorded (a CUDA graph of a decode step, core/model.c)? Then a
 * collective is recorded on it directly: its buffers are the device's (nothing else can be
 * recorded), and no event or pointer query runs inside the recording. */
static int capturing(nccl_impl *im) {
    enum cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(im->compute, &st) != cudaSuccess) { (void)cudaGetLastError(); return 0; }
    return st == cudaStreamCaptureStatusActive;
}

/* a timing event from the pool *ev [*n of *cap used] recorded on stream s */
static int time_event(cudaEvent_t **ev, int *n, int *cap, cudaStream_t s) {
    if (*n == *cap) {
        int c = *cap ? 2 * *cap : 256;
        cudaEvent_t *e = realloc(*ev, sizeof *e * (size_t)c);
        if (!e) return zb_fail(ZB_ENOMEM, "GPU communication: out of memory for timing events");
        *ev = e;
        for (int i = *cap; i < c; i++) ZB_CU(cudaEventCreate(&e[i]));
        *cap = c;
    }
    ZB_CU(cudaEventRecord((*ev)[(*n)++], s));
    return ZB_OK;
}

/* a timing event on the side stream: the start or the end of a call (pairs) */
static int side_time(nccl_impl *im) {
    return im->timing ? time_event(&im->tside, &im->nside, &im->cap_side, im->side) : ZB_OK;
}

/* the sum of the pairs' times of the pool [n], waiting for each pair's end */
static int pairs_time(const cudaEvent_t *ev, int n, double *s) {
    double t = 0;
    for (int i = 0; i + 1 < n; i += 2) {
        float ms = 0;
        ZB_CU(cudaEventSynchronize(ev[i + 1]));
        ZB_CU(cudaEventElapsedTime(&ms, ev[i], ev[i + 1]));
        t += ms * 1e-3;
    }
    *s = t;
    return ZB_OK;
}

/* the work queued so far on the compute stream comes first on s */
static int enter(nccl_impl *im, cudaStream_t s) {
    ZB_CU(cudaEventRecord(im->ev_in, im->compute));
    ZB_CU(cudaStreamWaitEvent(s, im->ev_in, 0));
    if (s == im->side) ZB_TRY(side_time(im));   /* the call starts when the side stream gets here */
    return ZB_OK;
}

/* the compute stream's next work comes after what s holds now */
static int leave(nccl_impl *im, cudaStream_t s) {
    ZB_CU(cudaEventRecord(im->ev_out, s));
    ZB_CU(cudaStreamWaitEvent(im->compute, im->ev_out, 0));
    if (im->sync) ZB_CU(cudaStreamSynchronize(s));
    return ZB_OK;
}

/* ---- the staging path: device buffers with no NCCL communicator --------------------------- */

static void *to_host(nccl_impl *im, const void *d, size_t bytes, int *rc) {
    void *h = zb_malloc(bytes ? bytes : 1, "host staging buffer");
    *rc = h ? ZB_OK : ZB_ENOMEM;
    if (!h) return NULL;
    if (cudaStreamSynchronize(im->compute) != cudaSuccess || cudaMemcpy(h, d, bytes, cudaMemcpyDeviceToHost) != cudaSuccess) {
        *rc = zb_fail(ZB_EDEVICE, "GPU communication: staging %zu bytes to the host failed", bytes);
        free(h);
        return NULL;
    }
    return h;
}

static int from_host(nccl_impl *im, void *d, const void *h, size_t bytes) {
    ZB_CU(cudaMemcpyAsync(d, h, bytes, cudaMemcpyHostToDevice, im->compute));
    ZB_CU(cudaStreamSynchronize(im->compute));
    return ZB_OK;
}

/* An in-place MPI call on a host copy of device buffer x (bytes long). */
enum { ST_ALLREDUCE, ST_BCAST, ST_ALLGATHERV };
typedef struct { int kind; size_t n; zb_ctype t; int arg; const size_t *counts, *displs; } staged_call;

static int staged_inplace(nccl_impl *im, zb_group g, void *x, size_t bytes, staged_call sc) {
    int rc;
    void *h = to_host(im, x, bytes, &rc);
    if (!h) return rc;
    const zb_comm_ops *o = im->mpi->ops;
    void *mi = im->mpi->impl;
    rc = sc.kind == ST_ALLREDUCE ? o->allreduce(mi, g, h, sc.n, sc.t, (zb_redop)sc.arg)
       : sc.kind == ST_BCAST     ? o->bcast(mi, g, h, sc.n, sc.t, sc.arg)
                                 : o->allgatherv_inplace(mi, g, h, sc.counts, sc.displs, sc.t);
    if (!rc) rc = from_host(im, x, h, bytes);
    free(h);
    return rc;
}

#define MPI_OPS(im) ((im)->mpi->ops)
#define MPI_IMPL(im) ((im)->mpi->impl)

#ifdef ZB_HAVE_NCCL
static ncclDataType_t ndt(zb_ctype t) {
    switch (t) {
    case ZB_CT_F32: return ncclFloat32;
    case ZB_CT_F64: return ncclFloat64;
    case ZB_CT_I32: return ncclInt32;
    case ZB_CT_I64: return ncclInt64;
    default: return ncclUint64;
    }
}
static ncclRedOp_t nop(zb_redop op) {
    return op == ZB_RED_MAX ? ncclMax : op == ZB_RED_MIN ? ncclMin : op == ZB_RED_MEAN ? ncclAvg : ncclSum;
}
static ncclComm_t gcomm(nccl_impl *im, zb_group g) { return im->nc[g]; }
#else
static void *gcomm(nccl_impl *im, zb_group g) { (void)im; (void)g; return NULL; }
#endif

#ifdef ZB_HAVE_NCCL
/* A sum of every rank's x [sum counts], part r to rank r's out, queued on stream s (after the
 * compute stream's work): ncclReduceScatter when the parts are equal, otherwise (ZeRO's ranges,
 * a bucket's pieces) a reduce of each non-empty part to its owner, in one group. */
static int nccl_reduce_scatter(nccl_impl *im, zb_group g, const void *x, void *out, const size_t *counts, zb_ctype t,
                               cudaStream_t s) {
    int size = im->mpi->size[g], me = im->mpi->rank[g], equal = 1;
    size_t es = zb_ctype_size(t), off = 0;
    for (int r = 0; r < size; r++) equal &= counts[r] == counts[0];
    ZB_TRY(enter(im, s));
    if (equal) ZB_NC(ncclReduceScatter(x, out, counts[0], ndt(t), ncclSum, im->nc[g], s));
    else {
        ZB_NC(ncclGroupStart());
        for (int r = 0; r < size; r++) {
            const char *src = (const char *)x + off * es;
            if (counts[r]) ZB_NC(ncclReduce(src, r == me ? out : (void *)src, counts[r], ndt(t), ncclSum, r, im->nc[g], s));
            off += counts[r];
        }
        ZB_NC(ncclGroupEnd());
    }
    return ZB_OK;
}

/* r: pending until the side stream has done what it holds now (n_wait / n_test) */
static int side_request(nccl_impl *im, nreq *q, zb_comm_req *r) {
    ZB_TRY(side_time(im));
    ZB_CU(cudaEventCreateWithFlags(&q->u.ev, cudaEventDisableTiming));
    ZB_CU(cudaEventRecord(q->u.ev, im->side));
    q->kind = RQ_EVENT;
    r->pending = 1;
    return ZB_OK;
}
#endif

/* ---- the table ------------------------------------------------------------------------------ */

static int n_allreduce(void *impl, zb_group g, void *x, size_t n, zb_ctype t, zb_redop op) {
    nccl_impl *im = IM(impl);
    if (im->p2p_sum && g == ZB_GROUP_TP && t == ZB_CT_F32 && op == ZB_RED_SUM && n <= zb_cuda_p2p_max(im->p2p) &&
        (capturing(im) || on_dev(x))) {   /* one kernel on the compute stream (cuda_common.h) */
        zb_cuda_p2p_allreduce(im->p2p, x, n);
        if (im->sync) ZB_CU(cudaStreamSynchronize(im->compute));
        return ZB_OK;
    }
#ifdef ZB_HAVE_NCCL
    if (gcomm(im, g) && capturing(im)) {
        ZB_NC(ncclAllReduce(x, x, n, ndt(t), nop(op), im->nc[g], im->compute));
        return ZB_OK;
    }
#endif
#ifdef ZB_HAVE_NCCL
    if (gcomm(im, g) && on_dev(x)) {
        ZB_TRY(enter(im, im->comm));
        ZB_NC(ncclAllReduce(x, x, n, ndt(t), nop(op), im->nc[g], im->comm));
        return leave(im, im->comm);
    }
#endif
    if (op == ZB_RED_MEAN) return zb_fail(ZB_EARG, "GPU communication: a mean all-reduce needs NCCL and device buffers");
    if (!on_dev(x)) return MPI_OPS(im)->allreduce(MPI_IMPL(im), g, x, n, t, op);
    return staged_inplace(im, g, x, n * zb_ctype_size(t), (staged_call){ST_ALLREDUCE, n, t, (int)op, NULL, NULL});
}

static int n_iallreduce(void *impl, zb_group g, void *x, size_t n, zb_ctype t, zb_redop op, zb_comm_req *r) {
    nccl_impl *im = IM(impl);
    nreq *q = rq(r);
    memset(q, 0, sizeof *q);
    if (!on_dev(x)) {
        if (op == ZB_RED_MEAN) return zb_fail(ZB_EARG, "GPU communication: a mean all-reduce of host buffers");
        q->kind = RQ_MPI;
        if (n > ((size_t)1 << 30)) return zb_fail(ZB_EARG, "MPI: a message of %zu elements is too large", n);
        MPI_Datatype dt = mpi_dt(t);
        MPI_Op o = op == ZB_RED_MAX ? MPI_MAX : op == ZB_RED_MIN ? MPI_MIN : MPI_SUM;
        ZB_MPI(MPI_Iallreduce(MPI_IN_PLACE, x, (int)n, dt, o, im->mg[g], &q->u.mpi));
        r->pending = 1;
        return ZB_OK;
    }
#ifdef ZB_HAVE_NCCL
    if (gcomm(im, g)) {   /* the gradient buckets: the side stream, overlapping the backward */
        ZB_TRY(enter(im, im->side));
        ZB_NC(ncclAllReduce(x, x, n, ndt(t), nop(op), im->nc[g], im->side));
        return side_request(im, q, r);
    }
#endif
    return n_allreduce(impl, g, x, n, t, op);   /* staged: done when it returns */
}

static int n_bcast(void *impl, zb_group g, void *x, size_t n, zb_ctype t, int root) {
    nccl_impl *im = IM(impl);
    if (!on_dev(x)) return MPI_OPS(im)->bcast(MPI_IMPL(im), g, x, n, t, root);
#ifdef ZB_HAVE_NCCL
    if (gcomm(im, g)) {
        ZB_TRY(enter(im, im->comm));
        ZB_NC(ncclBroadcast(x, x, n, ndt(t), root, im->nc[g], im->comm));
        return leave(im, im->comm);
    }
#endif
    return staged_inplace(im, g, x, n * zb_ctype_size(t), (staged_call){ST_BCAST, n, t, root, NULL, NULL});
}

static int n_allgather(void *impl, zb_group g, const void *x, size_t n, void *out, zb_ctype t) {
    nccl_impl *im = IM(impl);
#ifdef ZB_HAVE_NCCL
    if (gcomm(im, g) && capturing(im)) {
        ZB_NC(ncclAllGather(x, out, n, ndt(t), im->nc[g], im->compute));
        return ZB_OK;
    }
#endif
    int dx = on_dev(x), dout = on_dev(out);
    if (!dx && !dout) return MPI_OPS(im)->allgather(MPI_IMPL(im), g, x, n, out, t);
#ifdef ZB_HAVE_NCCL
    if (dx && dout && gcomm(im, g)) {
        ZB_TRY(enter(im, im->comm));
        ZB_NC(ncclAllGather(x, out, n, ndt(t), im->nc[g], im->comm));
        return leave(im, im->comm);
    }
#endif
    int rc = ZB_OK, size = im->mpi->size[g];
    size_t es = zb_ctype_size(t);
    void *hx = dx ? to_host(im, x, n * es, &rc) : (void *)x;
    if (!hx) return rc;
    void *hout = dout ? zb_malloc(n * es * (size_t)size + 1, "host staging buffer") : out;
    if (!hout) rc = ZB_ENOMEM;
    if (!rc) rc = MPI_OPS(im)->allgather(MPI_IMPL(im), g, hx, n, hout, t);
    if (!rc && dout) rc = from_host(im, out, hout, n * es * (size_t)size);
    if (dx) free(hx);
    if (dout) free(hout);
    return rc;
}

static int n_allgatherv_inplace(void *impl, zb_group g, void *x, const size_t *counts, const size_t *displs,
                                zb_ctype t) {
    nccl_impl *im = IM(impl);
    if (!on_dev(x)) return MPI_OPS(im)->allgatherv_inplace(MPI_IMPL(im), g, x, counts, displs, t);
    int size = im->mpi->size[g];
    size_t es = zb_ctype_size(t), end = 0;
    for (int r = 0; r < size; r++) if (displs[r] + counts[r] > end) end = displs[r] + counts[r];
#ifdef ZB_HAVE_NCCL
    if (gcomm(im, g)) {   /* each rank's part broadcast from it, in one group */
        ZB_TRY(enter(im, im->comm));
        ZB_NC(ncclGroupStart());
        for (int r = 0; r < size; r++) {
            char *p = (char *)x + displs[r] * es;
            if (counts[r]) ZB_NC(ncclBroadcast(p, p, counts[r], ndt(t), r, im->nc[g], im->comm));
        }
        ZB_NC(ncclGroupEnd());
        return leave(im, im->comm);
    }
#endif
    return staged_inplace(im, g, x, end * es, (staged_call){ST_ALLGATHERV, 0, t, 0, counts, displs});
}

static int n_reduce_scatter(void *impl, zb_group g, const void *x, void *out, const size_t *counts, zb_ctype t) {
    nccl_impl *im = IM(impl);
    int dx = on_dev(x), dout = on_dev(out);
    if (!dx && !dout) return MPI_OPS(im)->reduce_scatter(MPI_IMPL(im), g, x, out, counts, t);
    int size = im->mpi->size[g], me = im->mpi->rank[g];
    size_t es = zb_ctype_size(t), total = 0;
    for (int r = 0; r < size; r++) total += counts[r];
#ifdef ZB_HAVE_NCCL
    if (dx && dout && gcomm(im, g)) {
        ZB_TRY(nccl_reduce_scatter(im, g, x, out, counts, t, im->comm));
        return leave(im, im->comm);
    }
#endif
    int rc = ZB_OK;
    void *hx = dx ? to_host(im, x, total * es, &rc) : (void *)x;
    if (!hx) return rc;
    void *hout = dout ? zb_malloc(counts[me] * es + 1, "host staging buffer") : out;
    if (!hout) rc = ZB_ENOMEM;
    if (!rc) rc = MPI_OPS(im)->reduce_scatter(MPI_IMPL(im), g, hx, hout, counts, t);
    if (!rc && dout) rc = from_host(im, out, hout, counts[me] * es);
    if (dx) free(hx);
    if (dout) free(hout);
    return rc;
}

/* ZeRO-1's gradient buckets: on the side stream like n_iallreduce's, overlapping the backward. */
static int n_ireduce_scatter(void *impl, zb_group g, const void *x, void *out, const size_t *counts, zb_ctype t,
                             zb_comm_req *r) {
    nccl_impl *im = IM(impl);
    nreq *q = rq(r);
    memset(q, 0, sizeof *q);
    int dx = on_dev(x), dout = on_dev(out), size = im->mpi->size[g];
    if (!dx && !dout) {   /* host buffers: MPI, the int counts kept until the request completes */
        int *v = zb_malloc(sizeof(int) * (size_t)size, "MPI counts");
        if (!v) return ZB_ENOMEM;
        for (int k = 0; k < size; k++) {
            if (counts[k] > INT_MAX) { free(v); return zb_fail(ZB_EARG, "MPI: a part of %zu elements is beyond int counts", counts[k]); }
            v[k] = (int)counts[k];
        }
        if (MPI_Ireduce_scatter(x, out, v, mpi_dt(t), MPI_SUM, im->mg[g], &q->u.mpi) != MPI_SUCCESS) {
            free(v);
            return zb_fail(ZB_EMPI, "MPI_Ireduce_scatter failed");
        }
        q->kind = RQ_MPI;
        q->host = v;
        r->pending = 1;
        return ZB_OK;
    }
#ifdef ZB_HAVE_NCCL
    if (dx && dout && gcomm(im, g)) {   /* most buckets lie in one rank's range: one reduce */
        ZB_TRY(nccl_reduce_scatter(im, g, x, out, counts, t, im->side));
        return side_request(im, q, r);
    }
#endif
    return n_reduce_scatter(impl, g, x, out, counts, t);   /* staged: done when it returns */
}

static int n_gather(void *impl, zb_group g, const void *x, size_t n, void *out, zb_ctype t, int root) {
    nccl_impl *im = IM(impl);
    int me = im->mpi->rank[g], size = im->mpi->size[g];
    int dx = on_dev(x), dout = me == root ? on_dev(out) : dx;
    if (!dx && !dout) return MPI_OPS(im)->gather(MPI_IMPL(im), g, x, n, out, t, root);
    size_t es = zb_ctype_size(t);
#ifdef ZB_HAVE_NCCL
    if (dx && dout && gcomm(im, g)) {
        ZB_TRY(enter(im, im->comm));
        ZB_NC(ncclGroupStart());
        if (me == root) {
            for (int r = 0; r < size; r++)
                if (r != root) ZB_NC(ncclRecv((char *)out + (size_t)r * n * es, n, ndt(t), r, im->nc[g], im->comm));
        } else ZB_NC(ncclSend(x, n, ndt(t), root, im->nc[g], im->comm));
        ZB_NC(ncclGroupEnd());
        if (me == root)
            ZB_CU(cudaMemcpyAsync((char *)out + (size_t)root * n * es, x, n * es, cudaMemcpyDeviceToDevice, im->comm));
        return leave(im, im->comm);
    }
#endif
    int rc = ZB_OK;
    void *hx = dx ? to_host(im, x, n * es, &rc) : (void *)x;
    if (!hx) return rc;
    void *hout = me == root && dout ? zb_malloc(n * es * (size_t)size + 1, "host staging buffer") : out;
    if (!hout) rc = ZB_ENOMEM;
    if (!rc) rc = MPI_OPS(im)->gather(MPI_IMPL(im), g, hx, n, hout, t, root);
    if (!rc && me == root && dout) rc = from_host(im, out, hout, n * es * (size_t)size);
    if (dx) free(hx);
    if (me == root && dout) free(hout);
    return rc;
}


/* The point-to-point communicator (and its stream) for a message between this stage and stage
 * peer: in each, the sender is rank 0 and the receiver rank 1. NULL: none (stage them). */
#ifdef ZB_HAVE_NCCL
static ncclComm_t p2p(nccl_impl *im, zb_group g, int peer, int sending, cudaStream_t *s) {
    if (g != ZB_GROUP_PP || !im->to || peer < 0 || peer >= im->pp_size) return NULL;
    *s = sending ? im->to_s[peer] : im->from_s[peer];
    return sending ? im->to[peer] : im->from[peer];
}
#endif

/* A blocking send (sending = 1, x read) or receive (x written) of n elements with stage peer. */
static int n_p2p(void *impl, zb_group g, void *x, size_t n, zb_ctype t, int peer, int tag, int sending) {
    nccl_impl *im = IM(impl);
    if (!on_dev(x)) return sending ? MPI_OPS(im)->send(MPI_IMPL(im), g, x, n, t, peer, tag)
                                   : MPI_OPS(im)->recv(MPI_IMPL(im), g, x, n, t, peer, tag);
#ifdef ZB_HAVE_NCCL
    cudaStream_t s;
    ncclComm_t pc = p2p(im, g, peer, sending, &s);
    if (pc) {
        ZB_TRY(enter(im, s));
        if (sending) ZB_NC(ncclSend(x, n, ndt(t), 1, pc, s));
        else ZB_NC(ncclRecv(x, n, ndt(t), 0, pc, s));
        return leave(im, s);
    }
#endif
    int rc = ZB_OK;
    size_t bytes = n * zb_ctype_size(t);
    void *h = sending ? to_host(im, x, bytes, &rc) : zb_malloc(bytes + 1, "host staging buffer");
    if (!h) return rc ? rc : ZB_ENOMEM;
    rc = sending ? MPI_OPS(im)->send(MPI_IMPL(im), g, h, n, t, peer, tag)
                 : MPI_OPS(im)->recv(MPI_IMPL(im), g, h, n, t, peer, tag);
    if (!rc && !sending) rc = from_host(im, x, h, bytes);
    free(h);
    return rc;
}

static int n_send(void *impl, zb_group g, const void *x, size_t n, zb_ctype t, int peer, int tag) {
    return n_p2p(impl, g, (void *)x, n, t, peer, tag, 1);
}

static int n_recv(void *impl, zb_group g, void *x, size_t n, zb_ctype t, int peer, int tag) {
    return n_p2p(impl, g, x, n, t, peer, tag, 0);
}

static int n_isend(void *impl, zb_group g, const void *x, size_t n, zb_ctype t, int peer, int tag, zb_comm_req *r) {
    nccl_impl *im = IM(impl);
    nreq *q = rq(r);
    memset(q, 0, sizeof *q);
    int dx = on_dev(x);
#ifdef ZB_HAVE_NCCL
    cudaStream_t s;
    ncclComm_t pc = dx ? p2p(im, g, peer, 1, &s) : NULL;
    if (pc) {   /* the compute stream waits for it at zb_comm_wait, before it reuses x */
        ZB_TRY(enter(im, s));
        ZB_NC(ncclSend(x, n, ndt(t), 1, pc, s));
        ZB_CU(cudaEventCreateWithFlags(&q->u.ev, cudaEventDisableTiming));
        ZB_CU(cudaEventRecord(q->u.ev, s));
        q->kind = RQ_EVENT;
        r->pending = 1;
        return ZB_OK;
    }
#endif
    int rc = ZB_OK;
    size_t es = zb_ctype_size(t);
    if (dx && !(q->host = to_host(im, x, n * es, &rc))) return rc;   /* sent from a host copy */
    if (n > ((size_t)1 << 30)) { free(q->host); return zb_fail(ZB_EARG, "MPI: a message of %zu elements is too large", n); }
    MPI_Datatype dt = mpi_dt(t);
    if (MPI_Isend(dx ? q->host : x, (int)n, dt, peer, tag, im->mg[g], &q->u.mpi) != MPI_SUCCESS) {
        free(q->host);
        return zb_fail(ZB_EMPI, "MPI_Isend failed");
    }
    q->kind = RQ_MPI;
    r->pending = 1;
    return ZB_OK;
}

static int n_wait(void *impl, zb_comm_req *r) {
    nccl_impl *im = IM(impl);
    nreq *q = rq(r);
    r->pending = 0;
    if (q->kind == RQ_EVENT) {   /* timed: how long the compute stream stands here */
        int tm = im->timing && !capturing(im);
        if (tm && im->nwait >= 4096) im->nwait = 0;   /* nobody reads them (pipeline sends): start over */
        if (tm) ZB_TRY(time_event(&im->twait, &im->nwait, &im->cap_wait, im->compute));
        cudaError_t e = cudaStreamWaitEvent(im->compute, q->u.ev, 0);
        if (tm && e == cudaSuccess) ZB_TRY(time_event(&im->twait, &im->nwait, &im->cap_wait, im->compute));
        cudaEventDestroy(q->u.ev);
        if (e != cudaSuccess) return zb_fail(ZB_EDEVICE, "CUDA error '%s' waiting for a transfer", cudaGetErrorString(e));
        if (im->sync) ZB_CU(cudaStreamSynchronize(im->compute));
        return ZB_OK;
    }
    int rc = MPI_Wait(&q->u.mpi, MPI_STATUS_IGNORE);
    free(q->host);
    q->host = NULL;
    return rc == MPI_SUCCESS ? ZB_OK : zb_fail(ZB_EMPI, "MPI_Wait failed (error %d)", rc);
}

static int n_test(void *impl, zb_comm_req *r, int *done) {
    (void)impl;
    nreq *q = rq(r);
    if (q->kind == RQ_EVENT) {
        cudaError_t e = cudaEventQuery(q->u.ev);
        *done = e == cudaSuccess;
        if (e == cudaErrorNotReady) { (void)cudaGetLastError(); return ZB_OK; }
        cudaEventDestroy(q->u.ev);
        r->pending = 0;
        return e == cudaSuccess ? ZB_OK : zb_fail(ZB_EDEVICE, "CUDA error '%s' in a transfer", cudaGetErrorString(e));
    }
    ZB_MPI(MPI_Test(&q->u.mpi, done, MPI_STATUS_IGNORE));
    if (*done) {
        free(q->host);
        q->host = NULL;
        r->pending = 0;
    }
    return ZB_OK;
}

static int n_barrier(void *impl, zb_group g) {
    nccl_impl *im = IM(impl);
    ZB_CU(cudaStreamSynchronize(im->compute));   /* a barrier also means: this GPU's work is done */
    return MPI_OPS(im)->barrier(MPI_IMPL(im), g);
}

static void n_abort(void *impl, int code) {
    nccl_impl *im = IM(impl);
    MPI_OPS(im)->abort(MPI_IMPL(im), code);   /* MPI_Abort: the GPUs' processes go with it */
}

/* The TP decode's sum + residual + norm in one kernel through peer memory (cuda_common.h),
 * on the compute stream (recorded with the step when it is being recorded). */
static int n_sum_add_rmsnorm(void *impl, zb_group g, const float *part, float *x, float *out, const float *w, int N,
                             int C, float eps, int residual, int *done) {
    nccl_impl *im = IM(impl);
    *done = 0;
    if (!im->p2p_fused || g != ZB_GROUP_TP || !(capturing(im) || on_dev(x))) return ZB_OK;
    *done = zb_cuda_p2p_add_rmsnorm(im->p2p, part, x, out, w, N, C, eps, residual);
    if (*done && im->sync) ZB_CU(cudaStreamSynchronize(im->compute));
    return ZB_OK;
}

static int n_mark(void *impl, int k) {
    nccl_impl *im = IM(impl);
    if (!im->timing) return ZB_OK;
    if (k < 0) { im->marked = 0; im->nside = 0; return ZB_OK; }
    if (k >= ZB_COMM_MARKS) return zb_fail(ZB_EARG, "GPU communication: timing mark %d out of range", k);
    ZB_CU(cudaEventRecord(im->marks[k], im->compute));
    im->marked |= 1u << k;
    return ZB_OK;
}

static int n_elapsed(void *impl, int a, int b, double *s) {
    nccl_impl *im = IM(impl);
    *s = -1;
    if (!im->timing || a < 0 || b < 0 || a >= ZB_COMM_MARKS || b >= ZB_COMM_MARKS) return ZB_OK;
    if (!(im->marked >> a & 1) || !(im->marked >> b & 1)) return ZB_OK;
    float ms = 0;
    ZB_CU(cudaEventSynchronize(im->marks[b]));
    ZB_CU(cudaEventElapsedTime(&ms, im->marks[a], im->marks[b]));
    *s = ms * 1e-3;
    return ZB_OK;
}

static int n_side_busy(void *impl, double *s) {
    nccl_impl *im = IM(impl);
    *s = -1;
    return im->timing ? pairs_time(im->tside, im->nside, s) : ZB_OK;
}

static int n_stalled(void *impl, double *s) {
    nccl_impl *im = IM(impl);
    *s = -1;
    if (!im->timing) return ZB_OK;
    ZB_TRY(pairs_time(im->twait, im->nwait, s));
    im->nwait = 0;
    return ZB_OK;
}

/* ZeRO-1's parameters bucket by bucket: on the side stream (the compute stream's work queued
 * so far first), each rank's part broadcast from it in one group, as n_allgatherv_inplace */
static int n_iallgatherv_inplace(void *impl, zb_group g, void *x, const size_t *counts, const size_t *displs,
                                 zb_ctype t, zb_comm_req *r) {
    nccl_impl *im = IM(impl);
    nreq *q = rq(r);
    memset(q, 0, sizeof *q);
    int size = im->mpi->size[g];
    size_t es = zb_ctype_size(t);
    if (!on_dev(x)) {   /* host buffers: MPI, the int counts kept until the request completes */
        int *v = zb_malloc(sizeof(int) * 2 * (size_t)size, "MPI counts");
        if (!v) return ZB_ENOMEM;
        for (int k = 0; k < size; k++) {
            if (counts[k] > INT_MAX || displs[k] > INT_MAX) { free(v); return zb_fail(ZB_EARG, "MPI: a part beyond int counts"); }
            v[k] = (int)counts[k];
            v[size + k] = (int)displs[k];
        }
        if (MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, x, v, v + size, mpi_dt(t), im->mg[g], &q->u.mpi) !=
            MPI_SUCCESS) {
            free(v);
            return zb_fail(ZB_EMPI, "MPI_Iallgatherv failed");
        }
        q->kind = RQ_MPI;
        q->host = v;
        r->pending = 1;
        return ZB_OK;
    }
#ifdef ZB_HAVE_NCCL
    if (gcomm(im, g)) {
        ZB_TRY(enter(im, im->side));
        ZB_NC(ncclGroupStart());
        for (int k = 0; k < size; k++) {
            char *p = (char *)x + displs[k] * es;
            if (counts[k]) ZB_NC(ncclBroadcast(p, p, counts[k], ndt(t), k, im->nc[g], im->side));
        }
        ZB_NC(ncclGroupEnd());
        return side_request(im, q, r);
    }
#endif
    return n_allgatherv_inplace(impl, g, x, counts, displs, t);   /* staged: done when it returns */
}

const zb_comm_ops zb_nccl_ops = {n_allreduce, n_iallreduce, n_bcast, n_allgather, n_allgatherv_inplace,
                                     n_reduce_scatter, n_ireduce_scatter, n_gather, n_send, n_recv, n_isend, n_wait, n_test,
                                     n_barrier, n_abort, NULL, NULL,   /* no node-shared memory: device buffers */
                                     n_sum_add_rmsnorm, n_mark, n_elapsed, n_side_busy, n_iallgatherv_inplace,
                                     n_stalled};

#endif   /* ZB_HAVE_CUDA */
