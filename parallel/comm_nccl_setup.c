/* comm_nccl_setup.c — the NCCL implementation of core/comm.h: its communicators, streams and
 * peer memory made and freed (the table itself: comm_nccl.c; see comm_nccl.h). */
#include "comm_nccl.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm_mpi.h"
#include "zb_common.h"

#ifndef ZB_HAVE_CUDA

int zb_comm_nccl_available(const char **why) {
    if (why) *why = "this build has no CUDA (configure with -DZB_CUDA=ON)";
    return 0;
}

int zb_comm_nccl_new(zb_comm **out, zb_comm *mpi, MPI_Comm world, MPI_Comm tp, MPI_Comm pp, MPI_Comm dp) {
    (void)world; (void)tp; (void)pp; (void)dp;
    *out = NULL;
    zb_comm_mpi_free(mpi);
    const char *why;
    zb_comm_nccl_available(&why);
    return zb_fail(ZB_EARG, "GPU communication: %s", why);
}

void zb_comm_nccl_free(zb_comm *c) { (void)c; }

#else   /* ZB_HAVE_CUDA */

#include "comm_nccl_impl.h"

/* ---- setup ---------------------------------------------------------------------------------- */

#ifdef ZB_HAVE_NCCL
/* A communicator over MPI communicator mc: the unique id made on its rank 0, broadcast over MPI. */
static int group_comm(ncclComm_t *out, MPI_Comm mc) {
    int rank, size;
    ZB_MPI(MPI_Comm_rank(mc, &rank));
    ZB_MPI(MPI_Comm_size(mc, &size));
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    if (rank == 0) ZB_NC(ncclGetUniqueId(&id));
    ZB_MPI(MPI_Bcast(&id, (int)sizeof id, MPI_BYTE, 0, mc));
    ZB_NC(ncclCommInitRank(out, size, id, rank));
    return ZB_OK;
}

/* The two directed communicators between stages a and b of this pipeline (this rank is one of
 * them): src -> dst made on src, its id sent over the PP group's MPI communicator.
 * Each is connected here, by one float sent src -> dst, in the same order on both ranks. NCCL
 * connects a point-to-point peer lazily, at the first send / receive, and that handshake blocks
 * the calling host thread until the peer makes its own first call on the same communicator:
 * left to the first real message, two stages that both start with a send (isend then recv, the
 * exchange of tied embeddings) each wait in the handshake of a different communicator and
 * never reach the other's (the hang of test_nccl's PP section on 2 H200s). */
#define ZB_NCCL_ID_TAG 7411
static int pair_connect(ncclComm_t c, cudaStream_t s, int sending, float *one) {
    if (sending) ZB_NC(ncclSend(one, 1, ncclFloat32, 1, c, s));
    else ZB_NC(ncclRecv(one, 1, ncclFloat32, 0, c, s));
    ZB_CU(cudaStreamSynchronize(s));
    return ZB_OK;
}

static int pair_comms(nccl_impl *im, int me, int a, int b, float *one) {
    for (int k = 0; k < 2; k++) {
        int src = k ? b : a, dst = k ? a : b;
        ncclUniqueId id;
        memset(&id, 0, sizeof id);
        if (me == src) {
            ZB_NC(ncclGetUniqueId(&id));
            ZB_MPI(MPI_Send(&id, (int)sizeof id, MPI_BYTE, dst, ZB_NCCL_ID_TAG, im->mg[ZB_GROUP_PP]));
            ZB_NC(ncclCommInitRank(&im->to[dst], 2, id, 0));
            ZB_CU(cudaStreamCreateWithFlags(&im->to_s[dst], cudaStreamNonBlocking));
            ZB_TRY(pair_connect(im->to[dst], im->to_s[dst], 1, one));
        } else {
            ZB_MPI(MPI_Recv(&id, (int)sizeof id, MPI_BYTE, src, ZB_NCCL_ID_TAG, im->mg[ZB_GROUP_PP], MPI_STATUS_IGNORE));
            ZB_NC(ncclCommInitRank(&im->from[src], 2, id, 1));
            ZB_CU(cudaStreamCreateWithFlags(&im->from_s[src], cudaStreamNonBlocking));
            ZB_TRY(pair_connect(im->from[src], im->from_s[src], 0, one));
        }
    }
    return ZB_OK;
}
#endif

/* The TP group's peer memory (cuda_common.h), when every rank of the group is on this node and
 * each can open the others' buffers, for
 *   - the fused decode sum + residual + norm (zb_comm_sum_add_rmsnorm): on unless ZB_TP_FUSED=0
 *     (faster than NCCL + add_rmsnorm on 2 H200s since S6R1, docs/SCALING.md);
 *   - ZB_TP_ALLREDUCE=p2p: the group's all-reduces of up to 64 K floats (off unless asked).
 * Otherwise (said once per rank that asked) NCCL all-reduces as before. Collective over TP: a use
 * is on only where every rank of the group asked for it and every rank's buffer opened. */
#define ZB_P2P_FLOATS ((size_t)1 << 16)
static int p2p_setup(nccl_impl *im) {
    const char *e = getenv("ZB_TP_ALLREDUCE"), *f = getenv("ZB_TP_FUSED");
    int size = im->mpi->size[ZB_GROUP_TP], rank = im->mpi->rank[ZB_GROUP_TP], ok, all = 0;
    MPI_Comm tp = im->mg[ZB_GROUP_TP];
    if (size < 2) return ZB_OK;
    int want[2] = {e && !strcmp(e, "p2p"), !(f && !strcmp(f, "0"))}, agreed[2] = {0, 0};
    int asked = want[0] || (f && !strcmp(f, "1"));   /* the default falls back to NCCL silently */
    ZB_MPI(MPI_Allreduce(want, agreed, 2, MPI_INT, MPI_LAND, tp));
    if (!agreed[0] && !agreed[1]) return ZB_OK;   /* nobody asked, or not every rank */
    ok = size <= ZB_P2P_MAX_RANKS;
    MPI_Comm node;
    int on_node = 0;
    ZB_MPI(MPI_Comm_split_type(tp, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node));
    ZB_MPI(MPI_Comm_size(node, &on_node));
    MPI_Comm_free(&node);
    size_t hb = zb_cuda_p2p_handle_bytes();
    char *mine = zb_calloc(1, hb, "peer memory"), *hs = zb_calloc((size_t)size, hb, "peer memory");
    if (!mine || !hs) { free(mine); free(hs); return ZB_ENOMEM; }
    const char *why = ok ? "another TP rank could not set it up" : "more TP ranks than ZB_P2P_MAX_RANKS";
    if (ok && on_node != size) { ok = 0; why = "the TP group spans nodes"; }
    if (ok && zb_cuda_p2p_new(&im->p2p, rank, size, ZB_P2P_FLOATS, mine)) { ok = 0; why = zb_errmsg(); }
    int rc = MPI_Allgather(mine, (int)hb, MPI_BYTE, hs, (int)hb, MPI_BYTE, tp) == MPI_SUCCESS ? ZB_OK
           : zb_fail(ZB_EMPI, "peer memory: MPI_Allgather of the handles failed");
    if (!rc) rc = MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_LAND, tp) == MPI_SUCCESS ? ZB_OK : ZB_EMPI;
    if (!rc && all && zb_cuda_p2p_open(im->p2p, hs)) { ok = 0; why = zb_errmsg(); }
    if (!rc) rc = MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_LAND, tp) == MPI_SUCCESS ? ZB_OK : ZB_EMPI;
    free(mine);
    free(hs);
    if (rc || !all) {
        if (!ok && asked) fprintf(stderr, "zebra: note: TP rank %d: peer memory not used (%s): NCCL all-reduces%s\n", rank, why,
                         agreed[0] ? " (ZB_TP_ALLREDUCE=p2p not used)" : "");
        zb_cuda_p2p_free(im->p2p);
        im->p2p = NULL;
        return rc;
    }
    im->p2p_sum = agreed[0];
    im->p2p_fused = agreed[1];
    return ZB_OK;
}

static int setup(nccl_impl *im) {
    if (!zb_cuda_ready()) return zb_fail(ZB_EDEVICE, "GPU communication: no GPU selected (zb_cuda_init first)");
    im->compute = (cudaStream_t)zb_cuda_stream_handle();
    const char *sync = getenv("ZB_NCCL_SYNC");
    im->sync = sync && *sync == '1';
    ZB_CU(cudaStreamCreateWithFlags(&im->comm, cudaStreamNonBlocking));
    ZB_CU(cudaStreamCreateWithFlags(&im->side, cudaStreamNonBlocking));
    ZB_CU(cudaEventCreateWithFlags(&im->ev_in, cudaEventDisableTiming));
    ZB_CU(cudaEventCreateWithFlags(&im->ev_out, cudaEventDisableTiming));
    const char *tm = getenv("ZB_DP_TIMING");
    im->timing = !(tm && !strcmp(tm, "0"));
    for (int k = 0; k < ZB_COMM_MARKS && im->timing; k++) ZB_CU(cudaEventCreate(&im->marks[k]));
    int P = im->pp_size;
    ZB_ALLOC(im->to_s, P, "GPU communication");
    ZB_ALLOC(im->from_s, P, "GPU communication");
#ifdef ZB_HAVE_NCCL
    /* every rank makes the same communicators in the same order: TP, PP, DP, then the pairs */
    for (int g = ZB_GROUP_TP; g < ZB_NGROUPS; g++)
        if (im->mpi->size[g] > 1) ZB_TRY(group_comm(&im->nc[g], im->mg[g]));
    if (P > 1) {
        ZB_ALLOC(im->to, P, "GPU communication");
        ZB_ALLOC(im->from, P, "GPU communication");
        int me = im->mpi->rank[ZB_GROUP_PP], rc = ZB_OK;
        float *one = NULL;   /* the connecting message */
        ZB_CU(cudaMalloc((void **)&one, sizeof(float)));
        ZB_CU(cudaMemset(one, 0, sizeof(float)));
        for (int s = 0; s + 1 < P && !rc; s++)
            if (me == s || me == s + 1) rc = pair_comms(im, me, s, s + 1, one);
        if (!rc && P > 2 && (me == 0 || me == P - 1)) rc = pair_comms(im, me, 0, P - 1, one);   /* tied embeddings */
        cudaFree(one);
        ZB_TRY(rc);
    }
#endif
    return p2p_setup(im);
}

#ifdef ZB_HAVE_NCCL
/* The pair of stages a, b: its two communicators destroyed in the order pair_comms made them. */
static void destroy_pair(nccl_impl *im, int me, int a, int b) {
    for (int k = 0; k < 2; k++) {
        int src = k ? b : a, dst = k ? a : b;
        ncclComm_t *c = me == src ? &im->to[dst] : &im->from[src];
        if (*c) ncclCommDestroy(*c);
        *c = NULL;
    }
}
#endif

/* ncclCommDestroy waits for the communicator's other ranks (it finalizes collectively), so the
 * communicators go in one order on every rank, that of their creation: the groups TP, PP, DP,
 * then the stage pairs (each rank destroying its own to[] then from[] waited in a different
 * communicator than its peer: test_nccl's PP section hung there on 2 H200s). */
static void impl_free(nccl_impl *im) {
    if (!im) return;
    if (im->compute) cudaStreamSynchronize(im->compute);
    if (im->comm) cudaStreamSynchronize(im->comm);
    if (im->side) cudaStreamSynchronize(im->side);
    for (int p = 0; p < im->pp_size; p++) {
        if (im->to_s && im->to_s[p]) cudaStreamSynchronize(im->to_s[p]);
        if (im->from_s && im->from_s[p]) cudaStreamSynchronize(im->from_s[p]);
    }
    zb_cuda_p2p_free(im->p2p);
#ifdef ZB_HAVE_NCCL
    for (int g = 0; g < ZB_NGROUPS; g++) if (im->nc[g]) ncclCommDestroy(im->nc[g]);
    if (im->to && im->from) {
        int me = im->mpi->rank[ZB_GROUP_PP], P = im->pp_size;
        for (int s = 0; s + 1 < P; s++)
            if (me == s || me == s + 1) destroy_pair(im, me, s, s + 1);
        if (P > 2 && (me == 0 || me == P - 1)) destroy_pair(im, me, 0, P - 1);
    }
    free(im->to);
    free(im->from);
#endif
    for (int p = 0; p < im->pp_size; p++) {
        if (im->to_s && im->to_s[p]) cudaStreamDestroy(im->to_s[p]);
        if (im->from_s && im->from_s[p]) cudaStreamDestroy(im->from_s[p]);
    }
    free(im->to_s);
    free(im->from_s);
    if (im->comm) cudaStreamDestroy(im->comm);
    if (im->side) cudaStreamDestroy(im->side);
    if (im->ev_in) cudaEventDestroy(im->ev_in);
    if (im->ev_out) cudaEventDestroy(im->ev_out);
    for (int k = 0; k < ZB_COMM_MARKS; k++)
        if (im->marks[k]) cudaEventDestroy(im->marks[k]);
    for (int i = 0; i < im->cap_side; i++) cudaEventDestroy(im->tside[i]);
    for (int i = 0; i < im->cap_wait; i++) cudaEventDestroy(im->twait[i]);
    free(im->tside);
    free(im->twait);
    zb_comm_mpi_free(im->mpi);
    free(im);
}

int zb_comm_nccl_available(const char **why) {
#ifdef ZB_HAVE_NCCL
    if (why) *why = NULL;
    return 1;
#else
    if (why) *why = "this CUDA build has no NCCL (nccl.h / libnccl not found at configure time): "
                    "device buffers are staged through the host";
    return 0;
#endif
}

int zb_comm_nccl_new(zb_comm **out, zb_comm *mpi, MPI_Comm world, MPI_Comm tp, MPI_Comm pp, MPI_Comm dp) {
    *out = NULL;
    zb_comm *c = zb_calloc(1, sizeof *c, "communication table");
    nccl_impl *im = zb_calloc(1, sizeof *im, "communication table");
    if (!c || !im) { free(c); free(im); zb_comm_mpi_free(mpi); return ZB_ENOMEM; }
    im->mpi = mpi;
    im->mg[ZB_GROUP_WORLD] = world;
    im->mg[ZB_GROUP_TP] = tp;
    im->mg[ZB_GROUP_PP] = pp;
    im->mg[ZB_GROUP_DP] = dp;
    im->pp_size = mpi->size[ZB_GROUP_PP];
    /* one rank's failure before the NCCL handshakes stops every rank (no rank waits in one) */
    int rc = zb_cuda_ready() ? ZB_OK : zb_fail(ZB_EDEVICE, "GPU communication: no GPU selected (zb_cuda_init first)");
    int ok = rc == ZB_OK, all = 0;
    if (MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_LAND, world) != MPI_SUCCESS) all = 0;
    if (!all && ok) rc = zb_fail(ZB_EDEVICE, "GPU communication: another rank has no usable GPU");
    if (!rc) rc = setup(im);
    if (rc) { impl_free(im); free(c); return rc; }
    c->ops = &zb_nccl_ops;
    c->impl = im;
#ifdef ZB_HAVE_NCCL
    for (int g = 0; g < ZB_NGROUPS; g++)
        if (im->nc[g]) c->graph_groups |= 1u << g;
#endif
    if (im->p2p_sum) c->graph_groups |= 1u << ZB_GROUP_TP;
#if defined(ZB_HAVE_NCCL) && NCCL_VERSION_CODE >= NCCL_VERSION(2, 10, 0)
    c->dev_mean = 1;   /* ncclAvg */
#endif
    memcpy(c->rank, mpi->rank, sizeof c->rank);
    memcpy(c->size, mpi->size, sizeof c->size);
    *out = c;
    return ZB_OK;
}

void zb_comm_nccl_free(zb_comm *c) {
    if (!c) return;
    impl_free(c->impl);
    free(c);
}

#endif   /* ZB_HAVE_CUDA */
