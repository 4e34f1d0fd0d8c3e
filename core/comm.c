/* comm.c — the wrappers of comm.h: one process alone (NULL comm or a group of one rank) needs
 * no implementation; every call is timed into c->seconds. */
#include "comm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "zb_common.h"

size_t zb_ctype_size(zb_ctype t) {
    switch (t) {
    case ZB_CT_F32: case ZB_CT_I32: return 4;
    default: return 8;
    }
}

int zb_comm_rank(const zb_comm *c, zb_group g) { return c ? c->rank[g] : 0; }
int zb_comm_size(const zb_comm *c, zb_group g) { return c ? c->size[g] : 1; }

static int alone(const zb_comm *c, zb_group g) { return !c || c->size[g] <= 1; }

/* time the call `expr` (an int status) into c->seconds */
#define TIMED(expr) do { double t0_ = zb_now(); int rc_ = (expr); c->seconds += zb_now() - t0_; return rc_; } while (0)

int zb_comm_allreduce(zb_comm *c, zb_group g, void *x, size_t n, zb_ctype t, zb_redop op) {
    if (alone(c, g) || n == 0) return ZB_OK;
    TIMED(c->ops->allreduce(c->impl, g, x, n, t, op));
}

int zb_comm_sum_f32(zb_comm *c, zb_group g, float *x, size_t n) {
    return zb_comm_allreduce(c, g, x, n, ZB_CT_F32, ZB_RED_SUM);
}

int zb_comm_sum_f64(zb_comm *c, zb_group g, double *x, size_t n) {
    return zb_comm_allreduce(c, g, x, n, ZB_CT_F64, ZB_RED_SUM);
}

int zb_comm_iallreduce(zb_comm *c, zb_group g, void *x, size_t n, zb_ctype t, zb_redop op, zb_comm_req *r) {
    r->pending = 0;
    if (alone(c, g) || n == 0) return ZB_OK;
    TIMED(c->ops->iallreduce(c->impl, g, x, n, t, op, r));
}

int zb_comm_bcast(zb_comm *c, zb_group g, void *x, size_t n, zb_ctype t, int root) {
    if (alone(c, g) || n == 0) return ZB_OK;
    TIMED(c->ops->bcast(c->impl, g, x, n, t, root));
}

int zb_comm_allgather(zb_comm *c, zb_group g, const void *x, size_t n, void *out, zb_ctype t) {
    if (alone(c, g)) {
        if (n && out != x) memmove(out, x, n * zb_ctype_size(t));
        return ZB_OK;
    }
    TIMED(c->ops->allgather(c->impl, g, x, n, out, t));
}

int zb_comm_allgatherv_inplace(zb_comm *c, zb_group g, void *x, const size_t *counts, const size_t *displs,
                               zb_ctype t) {
    if (alone(c, g)) return ZB_OK;
    TIMED(c->ops->allgatherv_inplace(c->impl, g, x, counts, displs, t));
}

int zb_comm_reduce_scatter(zb_comm *c, zb_group g, const void *x, void *out, const size_t *counts, zb_ctype t) {
    if (alone(c, g)) {
        if (counts[0] && out != x) memmove(out, x, counts[0] * zb_ctype_size(t));
        return ZB_OK;
    }
    TIMED(c->ops->reduce_scatter(c->impl, g, x, out, counts, t));
}

int zb_comm_ireduce_scatter(zb_comm *c, zb_group g, const void *x, void *out, const size_t *counts, zb_ctype t,
                            zb_comm_req *r) {
    r->pending = 0;
    if (alone(c, g)) return zb_comm_reduce_scatter(c, g, x, out, counts, t);
    TIMED(c->ops->ireduce_scatter(c->impl, g, x, out, counts, t, r));
}

int zb_comm_gather(zb_comm *c, zb_group g, const void *x, size_t n, void *out, zb_ctype t, int root) {
    if (alone(c, g)) {
        if (n && out != x) memmove(out, x, n * zb_ctype_size(t));
        return ZB_OK;
    }
    TIMED(c->ops->gather(c->impl, g, x, n, out, t, root));
}

int zb_comm_send(zb_comm *c, zb_group g, const void *x, size_t n, zb_ctype t, int peer, int tag) {
    if (alone(c, g)) return zb_fail(ZB_EARG, "send to rank %d of a group of one", peer);
    TIMED(c->ops->send(c->impl, g, x, n, t, peer, tag));
}

int zb_comm_recv(zb_comm *c, zb_group g, void *x, size_t n, zb_ctype t, int peer, int tag) {
    if (alone(c, g)) return zb_fail(ZB_EARG, "receive from rank %d of a group of one", peer);
    TIMED(c->ops->recv(c->impl, g, x, n, t, peer, tag));
}

int zb_comm_isend(zb_comm *c, zb_group g, const void *x, size_t n, zb_ctype t, int peer, int tag,
                  zb_comm_req *r) {
    r->pending = 0;
    if (alone(c, g)) return zb_fail(ZB_EARG, "send to rank %d of a group of one", peer);
    TIMED(c->ops->isend(c->impl, g, x, n, t, peer, tag, r));
}

int zb_comm_wait(zb_comm *c, zb_comm_req *r) {
    if (!r->pending) return ZB_OK;
    TIMED(c->ops->wait(c->impl, r));
}

int zb_comm_test(zb_comm *c, zb_comm_req *r, int *done) {
    *done = 1;
    if (!r->pending) return ZB_OK;
    TIMED(c->ops->test(c->impl, r, done));
}

int zb_comm_barrier(zb_comm *c, zb_group g) {
    if (alone(c, g)) return ZB_OK;
    TIMED(c->ops->barrier(c->impl, g));
}

int zb_comm_shared_alloc(zb_comm *c, zb_group g, size_t bytes, void **base, void **win) {
    *win = NULL;
    if (alone(c, g) || !c->ops->shared_alloc) return ZB_OK;
    TIMED(c->ops->shared_alloc(c->impl, g, bytes, base, win));
}

void zb_comm_shared_free(zb_comm *c, void *win) {
    if (win && c && c->ops->shared_free) c->ops->shared_free(c->impl, win);
}

int zb_comm_sum_add_rmsnorm(zb_comm *c, zb_group g, const float *part, float *x, float *out, const float *w, int N,
                            int C, float eps, int residual, int *done) {
    *done = 0;
    if (alone(c, g) || !c->ops->sum_add_rmsnorm) return ZB_OK;
    TIMED(c->ops->sum_add_rmsnorm(c->impl, g, part, x, out, w, N, C, eps, residual, done));
}

int zb_comm_mark(zb_comm *c, int k) {
    return c && c->ops->mark ? c->ops->mark(c->impl, k) : ZB_OK;
}

int zb_comm_elapsed(zb_comm *c, int a, int b, double *s) {
    *s = -1;
    return c && c->ops->elapsed ? c->ops->elapsed(c->impl, a, b, s) : ZB_OK;
}

int zb_comm_side_busy(zb_comm *c, double *s) {
    *s = -1;
    return c && c->ops->side_busy ? c->ops->side_busy(c->impl, s) : ZB_OK;
}

int zb_comm_stalled(zb_comm *c, double *s) {
    *s = -1;
    return c && c->ops->stalled ? c->ops->stalled(c->impl, s) : ZB_OK;
}

int zb_comm_iallgatherv_inplace(zb_comm *c, zb_group g, void *x, const size_t *counts, const size_t *displs,
                                zb_ctype t, zb_comm_req *r) {
    r->pending = 0;
    if (alone(c, g)) return ZB_OK;
    if (!c->ops->iallgatherv_inplace) TIMED(c->ops->allgatherv_inplace(c->impl, g, x, counts, displs, t));
    TIMED(c->ops->iallgatherv_inplace(c->impl, g, x, counts, displs, t, r));
}

void zb_comm_die(zb_comm *c, const char *what) {
    fprintf(stderr, "zebra: %s: %s\n", what, zb_errmsg());
    fflush(stderr);
    if (c && c->ops && c->ops->abort) c->ops->abort(c->impl, ZB_EMPI);
    exit(ZB_EMPI);
}
