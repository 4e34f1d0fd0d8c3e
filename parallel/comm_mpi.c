/* comm_mpi.c — the MPI implementation of core/comm.h. MPI counts are int: blocking calls on
 * more than 2^30 elements go in pieces, non-blocking ones and the v-collectives refuse them. */
#include "comm_mpi.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>

#include "zb_common.h"

typedef struct { MPI_Comm g[ZB_NGROUPS]; } mpi_impl;

/* A request: the MPI one, and what MPI reads until it completes (the int counts of a
 * non-blocking v-collective; freed then). */
typedef struct { MPI_Request q; void *keep; } mreq;
_Static_assert(sizeof(mreq) <= sizeof(((zb_comm_req *)0)->h), "zb_comm_req cannot hold an MPI request");

#define PIECE ((size_t)1 << 30)

static MPI_Comm grp(void *impl, zb_group g) { return ((mpi_impl *)impl)->g[g]; }

static MPI_Datatype dtype(zb_ctype t) {
    switch (t) {
    case ZB_CT_F32: return MPI_FLOAT;
    case ZB_CT_F64: return MPI_DOUBLE;
    case ZB_CT_I32: return MPI_INT;
    case ZB_CT_I64: return MPI_LONG_LONG;
    default: return MPI_UNSIGNED_LONG_LONG;
    }
}

static MPI_Op op_of(zb_redop op) { return op == ZB_RED_MAX ? MPI_MAX : op == ZB_RED_MIN ? MPI_MIN : MPI_SUM; }

static int count_of(size_t n, int *out) {
    if (n > PIECE) return zb_fail(ZB_EARG, "MPI: a message of %zu elements is too large (at most 2^30)", n);
    *out = (int)n;
    return ZB_OK;
}

/* A blocking in-place call on x[n] in pieces of at most 2^30 elements: f(piece, count, arg). */
typedef int (*piece_fn)(void *impl, zb_group g, char *x, int k, zb_ctype t, int arg);
static int in_pieces(void *impl, zb_group g, void *x, size_t n, zb_ctype t, int arg, piece_fn f) {
    size_t es = zb_ctype_size(t);
    for (size_t o = 0; o < n; o += PIECE)
        ZB_TRY(f(impl, g, (char *)x + o * es, (int)(n - o < PIECE ? n - o : PIECE), t, arg));
    return ZB_OK;
}

static int allreduce_piece(void *impl, zb_group g, char *x, int k, zb_ctype t, int op) {
    ZB_MPI(MPI_Allreduce(MPI_IN_PLACE, x, k, dtype(t), op_of((zb_redop)op), grp(impl, g)));
    return ZB_OK;
}

static int bcast_piece(void *impl, zb_group g, char *x, int k, zb_ctype t, int root) {
    ZB_MPI(MPI_Bcast(x, k, dtype(t), root, grp(impl, g)));
    return ZB_OK;
}

static int m_allreduce(void *impl, zb_group g, void *x, size_t n, zb_ctype t, zb_redop op) {
    return in_pieces(impl, g, x, n, t, (int)op, allreduce_piece);
}

static mreq *mr(zb_comm_req *r) { return (mreq *)(void *)r->h; }
static MPI_Request *req_of(zb_comm_req *r) { mr(r)->keep = NULL; return &mr(r)->q; }   /* a new request */

static int m_iallreduce(void *impl, zb_group g, void *x, size_t n, zb_ctype t, zb_redop op, zb_comm_req *r) {
    int k = 0;
    ZB_TRY(count_of(n, &k));
    ZB_MPI(MPI_Iallreduce(MPI_IN_PLACE, x, k, dtype(t), op_of(op), grp(impl, g), req_of(r)));
    r->pending = 1;
    return ZB_OK;
}

static int m_bcast(void *impl, zb_group g, void *x, size_t n, zb_ctype t, int root) {
    return in_pieces(impl, g, x, n, t, root, bcast_piece);
}

static int m_allgather(void *impl, zb_group g, const void *x, size_t n, void *out, zb_ctype t) {
    int k = 0;
    ZB_TRY(count_of(n, &k));
    ZB_MPI(MPI_Allgather(x, k, dtype(t), out, k, dtype(t), grp(impl, g)));
    return ZB_OK;
}

/* size_t counts / displacements -> int ones (malloc'd pair) */
static int int_counts(void *impl, zb_group g, const size_t *counts, const size_t *displs, int **out) {
    int size;
    ZB_MPI(MPI_Comm_size(grp(impl, g), &size));
    int *v = zb_malloc(sizeof(int) * 2 * (size_t)size, "MPI counts");
    if (!v) return ZB_ENOMEM;
    for (int r = 0; r < size; r++) {
        if (counts[r] > INT_MAX || (displs && displs[r] > INT_MAX)) {
            free(v);
            return zb_fail(ZB_EARG, "MPI: a part of %zu elements is beyond int counts", counts[r]);
        }
        v[r] = (int)counts[r];
        v[size + r] = displs ? (int)displs[r] : 0;
    }
    *out = v;
    return ZB_OK;
}

static int m_allgatherv_inplace(void *impl, zb_group g, void *x, const size_t *counts, const size_t *displs,
                              zb_ctype t) {
    int *v, size, rc = ZB_OK;
    ZB_MPI(MPI_Comm_size(grp(impl, g), &size));
    ZB_TRY(int_counts(impl, g, counts, displs, &v));
    if (MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, x, v, v + size, dtype(t), grp(impl, g)) != MPI_SUCCESS)
        rc = zb_fail(ZB_EMPI, "MPI_Allgatherv failed");
    free(v);
    return rc;
}

static int m_iallgatherv_inplace(void *impl, zb_group g, void *x, const size_t *counts, const size_t *displs,
                                 zb_ctype t, zb_comm_req *r) {
    int *v, size;
    ZB_MPI(MPI_Comm_size(grp(impl, g), &size));
    ZB_TRY(int_counts(impl, g, counts, displs, &v));
    if (MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, x, v, v + size, dtype(t), grp(impl, g), req_of(r)) !=
        MPI_SUCCESS) {
        free(v);
        return zb_fail(ZB_EMPI, "MPI_Iallgatherv failed");
    }
    mr(r)->keep = v;   /* MPI reads the counts until the request completes */
    r->pending = 1;
    return ZB_OK;
}

static int m_reduce_scatter(void *impl, zb_group g, const void *x, void *out, const size_t *counts, zb_ctype t) {
    int *v, rc = ZB_OK;
    ZB_TRY(int_counts(impl, g, counts, NULL, &v));
    if (MPI_Reduce_scatter(x, out, v, dtype(t), MPI_SUM, grp(impl, g)) != MPI_SUCCESS)
        rc = zb_fail(ZB_EMPI, "MPI_Reduce_scatter failed");
    free(v);
    return rc;
}

static int m_ireduce_scatter(void *impl, zb_group g, const void *x, void *out, const size_t *counts, zb_ctype t,
                             zb_comm_req *r) {
    int *v;
    ZB_TRY(int_counts(impl, g, counts, NULL, &v));
    if (MPI_Ireduce_scatter(x, out, v, dtype(t), MPI_SUM, grp(impl, g), req_of(r)) != MPI_SUCCESS) {
        free(v);
        return zb_fail(ZB_EMPI, "MPI_Ireduce_scatter failed");
    }
    mr(r)->keep = v;   /* MPI reads the counts until the request completes */
    r->pending = 1;
    return ZB_OK;
}

static int m_gather(void *impl, zb_group g, const void *x, size_t n, void *out, zb_ctype t, int root) {
    int k = 0;
    ZB_TRY(count_of(n, &k));
    ZB_MPI(MPI_Gather(x, k, dtype(t), out, k, dtype(t), root, grp(impl, g)));
    return ZB_OK;
}

static int m_send(void *impl, zb_group g, const void *x, size_t n, zb_ctype t, int peer, int tag) {
    int k = 0;
    ZB_TRY(count_of(n, &k));
    ZB_MPI(MPI_Send(x, k, dtype(t), peer, tag, grp(impl, g)));
    return ZB_OK;
}

static int m_recv(void *impl, zb_group g, void *x, size_t n, zb_ctype t, int peer, int tag) {
    int k = 0;
    ZB_TRY(count_of(n, &k));
    ZB_MPI(MPI_Recv(x, k, dtype(t), peer, tag, grp(impl, g), MPI_STATUS_IGNORE));
    return ZB_OK;
}

static int m_isend(void *impl, zb_group g, const void *x, size_t n, zb_ctype t, int peer, int tag, zb_comm_req *r) {
    int k = 0;
    ZB_TRY(count_of(n, &k));
    ZB_MPI(MPI_Isend(x, k, dtype(t), peer, tag, grp(impl, g), req_of(r)));
    r->pending = 1;
    return ZB_OK;
}

static int m_wait(void *impl, zb_comm_req *r) {
    (void)impl;
    r->pending = 0;
    int rc = MPI_Wait(&mr(r)->q, MPI_STATUS_IGNORE);
    free(mr(r)->keep);
    mr(r)->keep = NULL;
    return rc == MPI_SUCCESS ? ZB_OK : zb_fail(ZB_EMPI, "MPI_Wait failed (error %d)", rc);
}

static int m_test(void *impl, zb_comm_req *r, int *done) {
    (void)impl;
    ZB_MPI(MPI_Test(&mr(r)->q, done, MPI_STATUS_IGNORE));
    if (*done) {
        r->pending = 0;
        free(mr(r)->keep);
        mr(r)->keep = NULL;
    }
    return ZB_OK;
}

static int m_barrier(void *impl, zb_group g) {
    ZB_MPI(MPI_Barrier(grp(impl, g)));
    return ZB_OK;
}

static void abort_all(void *impl, int code) {
    (void)impl;
    MPI_Abort(MPI_COMM_WORLD, code);
    exit(code);
}

/* An MPI-3 shared-memory window over the node's part of the group, when that is all of it. */
typedef struct { MPI_Comm node; MPI_Win win; } shared_win;

/* Open MPI backs shared windows by files in /dev/shm (osc_sm_backing_directory): a tmpfs that
 * is too small (a container's 64 MB) would let the window be made and then SIGBUS on first
 * touch. Room for `need` bytes with a quarter to spare, or no shared window. */
static int shm_room(double need) {
    const char *dir = getenv("OMPI_MCA_osc_sm_backing_directory");
    struct statvfs st;
    if (statvfs(dir && *dir ? dir : "/dev/shm", &st) != 0) return 1;   /* elsewhere: trust MPI */
    return (double)st.f_bavail * (double)st.f_frsize >= 1.25 * need;
}

static int m_shared_alloc(void *impl, zb_group g, size_t bytes, void **base, void **win) {
    MPI_Comm c = grp(impl, g), node;
    int size, nsize, all;
    *win = NULL;
    ZB_MPI(MPI_Comm_size(c, &size));
    /* key 0 keeps the group's rank order: node rank == group rank when the sizes agree */
    ZB_MPI(MPI_Comm_split_type(c, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node));
    MPI_Comm_size(node, &nsize);
    all = nsize == size && shm_room((double)bytes * nsize);
    ZB_MPI(MPI_Allreduce(MPI_IN_PLACE, &all, 1, MPI_INT, MPI_MIN, c));   /* every rank decides alike */
    if (!all) { MPI_Comm_free(&node); return ZB_OK; }
    shared_win *w = zb_calloc(1, sizeof *w, "shared window");
    if (!w) { MPI_Comm_free(&node); return ZB_ENOMEM; }
    w->node = node;
    MPI_Info info;
    MPI_Info_create(&info);
    MPI_Info_set(info, "alloc_shared_noncontig", "true");   /* each rank's part on its own pages */
    void *mine;
    int rc = MPI_Win_allocate_shared((MPI_Aint)bytes, 1, info, node, &mine, &w->win);
    MPI_Info_free(&info);
    if (rc != MPI_SUCCESS) {
        MPI_Comm_free(&node); free(w);
        return zb_fail(ZB_EMPI, "MPI_Win_allocate_shared of %zu bytes per rank failed", bytes);
    }
    for (int r = 0; r < size; r++) {
        MPI_Aint sz;
        int disp;
        if (MPI_Win_shared_query(w->win, r, &sz, &disp, &base[r]) != MPI_SUCCESS) {
            MPI_Win_free(&w->win); MPI_Comm_free(&node); free(w);
            return zb_fail(ZB_EMPI, "MPI_Win_shared_query failed");
        }
    }
    *win = w;
    return ZB_OK;
}

static void m_shared_free(void *impl, void *win) {
    (void)impl;
    shared_win *w = win;
    MPI_Win_free(&w->win);
    MPI_Comm_free(&w->node);
    free(w);
}

static const zb_comm_ops mpi_ops = {m_allreduce, m_iallreduce, m_bcast, m_allgather, m_allgatherv_inplace,
                                    m_reduce_scatter, m_ireduce_scatter, m_gather, m_send, m_recv, m_isend, m_wait, m_test,
                                    m_barrier, abort_all, m_shared_alloc, m_shared_free,
                                    NULL,    /* no fused decode sum on host ranks: all-reduce, then the norm */
                                    NULL, NULL, NULL,    /* no device timing: the calls' own time is true */
                                    m_iallgatherv_inplace, NULL};

int zb_comm_mpi_new(zb_comm **out, MPI_Comm world, MPI_Comm tp, MPI_Comm pp, MPI_Comm dp) {
    *out = NULL;
    zb_comm *c = zb_calloc(1, sizeof *c, "communication table");
    mpi_impl *im = zb_calloc(1, sizeof *im, "communication table");
    if (!c || !im) { free(c); free(im); return ZB_ENOMEM; }
    im->g[ZB_GROUP_WORLD] = world;
    im->g[ZB_GROUP_TP] = tp;
    im->g[ZB_GROUP_PP] = pp;
    im->g[ZB_GROUP_DP] = dp;
    c->ops = &mpi_ops;
    c->impl = im;
    int level = MPI_THREAD_SINGLE;
    MPI_Query_thread(&level);
    c->thread_multiple = level == MPI_THREAD_MULTIPLE;
    for (int g = 0; g < ZB_NGROUPS; g++) {
        int rc = MPI_Comm_rank(im->g[g], &c->rank[g]);
        if (rc == MPI_SUCCESS) rc = MPI_Comm_size(im->g[g], &c->size[g]);
        if (rc != MPI_SUCCESS) {
            free(c); free(im);
            return zb_fail(ZB_EMPI, "MPI error %d reading a communicator's rank and size", rc);
        }
    }
    *out = c;
    return ZB_OK;
}

void zb_comm_mpi_free(zb_comm *c) {
    if (!c) return;
    free(c->impl);
    free(c);
}

MPI_Comm zb_comm_mpi_group(const zb_comm *c, zb_group g) { return ((const mpi_impl *)c->impl)->g[g]; }
