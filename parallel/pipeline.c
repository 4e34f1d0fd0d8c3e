/* pipeline.c — see pipeline.h: the stages' sends, the 1F1B schedule and a trainer's step
 * through it, over core/comm.h. */
#include "pipeline.h"

#include <stdlib.h>
#include <string.h>

#include "dp.h"
#include "shard.h"
#include "zb_common.h"

int zb_pp_is_first(const zb_model *m) { return !m->pp_no_embed; }
int zb_pp_is_last(const zb_model *m) { return !m->pp_no_head; }

static int pp_size(const zb_model *m) { return m->tp ? m->tp->pp_size : 1; }
static int pp_rank(const zb_model *m) { return m->tp ? m->tp->pp_rank : 0; }

enum { ZB_PP_TAG_ACT = 71, ZB_PP_TAG_GRAD = 72, ZB_PP_TAG_TIED = 73 };

int zb_pp_wait(const zb_model *m, zb_comm_req *req) { return zb_comm_wait(zb_model_comm(m), req); }

int zb_pp_forward(const zb_model *m, zb_acts *a, const int *ids, zb_comm_req *req) {
    size_t Nd = (size_t)a->B * a->T * m->cfg.d_model;
    int P = pp_size(m), s = pp_rank(m);
    zb_comm *c = zb_model_comm(m);
    req->pending = 0;
    if (P > 1 && s > 0) ZB_TRY(zb_comm_recv(c, ZB_GROUP_PP, a->res, Nd, ZB_CT_F32, s - 1, ZB_PP_TAG_ACT));
    zb_model_forward(m, a, ids);
    if (P > 1 && s < P - 1)
        ZB_TRY(zb_comm_isend(c, ZB_GROUP_PP, a->res + (size_t)m->cfg.n_layers * Nd, Nd, ZB_CT_F32, s + 1,
                             ZB_PP_TAG_ACT, req));
    return ZB_OK;
}

int zb_pp_backward(zb_model *m, zb_acts *a, const int *ids, zb_comm_req *req) {
    size_t Nd = (size_t)a->B * a->T * m->cfg.d_model;
    int P = pp_size(m), s = pp_rank(m);
    zb_comm *c = zb_model_comm(m);
    req->pending = 0;
    if (P > 1 && s < P - 1) ZB_TRY(zb_comm_recv(c, ZB_GROUP_PP, a->dres, Nd, ZB_CT_F32, s + 1, ZB_PP_TAG_GRAD));
    zb_model_backward(m, a, ids);
    if (P > 1 && s > 0) ZB_TRY(zb_comm_isend(c, ZB_GROUP_PP, a->dres, Nd, ZB_CT_F32, s - 1, ZB_PP_TAG_GRAD, req));
    return ZB_OK;
}

int zb_pp_tied_grad_sum(zb_model *m) {
    int P = pp_size(m), s = pp_rank(m);
    if (P < 2 || !m->cfg.tie_embeddings || !m->grad) return ZB_OK;
    int first = s == 0, last = s == P - 1;
    if (!first && !last) return ZB_OK;
    const zb_param *p = zb_model_param(m, "model.embed_tokens.weight");
    if (!p) return zb_fail(ZB_EFORMAT, "pipeline parallel: stage %d holds no embedding", s);
    const zb_backend *be = m->be;
    float *g = m->grad + p->offset;
    float *buf = be->alloc(be, sizeof(float) * p->numel, "tied embedding gradient");
    if (!buf) return ZB_ENOMEM;
    zb_comm *c = zb_model_comm(m);
    int peer = first ? P - 1 : 0, rc = ZB_OK;
    /* both sides send without blocking, then receive: no deadlock */
    for (size_t off = 0; off < p->numel && !rc; off += (size_t)1 << 30) {
        size_t n = p->numel - off < ((size_t)1 << 30) ? p->numel - off : (size_t)1 << 30;
        zb_comm_req r;
        rc = zb_comm_isend(c, ZB_GROUP_PP, g + off, n, ZB_CT_F32, peer, ZB_PP_TAG_TIED, &r);
        if (!rc) rc = zb_comm_recv(c, ZB_GROUP_PP, buf + off, n, ZB_CT_F32, peer, ZB_PP_TAG_TIED);
        int r2 = zb_comm_wait(c, &r);
        if (!rc) rc = r2;
    }
    if (rc) zb_fail_prefix(rc, "pipeline parallel: exchanging the tied embedding gradient");
    if (!rc) be->add(be, g, g, buf, p->numel);
    be->free(be, buf);
    return rc;
}

/* ---- 1F1B ------------------------------------------------------------------------------- */

/* One forward of micro-batch k (+ the loss on the last stage) / one backward, in slot k % K;
 * fr / br: the slot's pending activation / gradient sends. */
static int pp_fwd(zb_model *m, zb_acts *acts, int K, zb_comm_req *fr, zb_comm_req *br, int k, const int *ids,
                  size_t stride, const zb_pp_hooks *h) {
    int q = k % K;
    ZB_TRY(zb_pp_wait(m, &fr[q]));   /* the slot's previous micro-batch is done with its buffers */
    ZB_TRY(zb_pp_wait(m, &br[q]));
    if (h->pre_forward) ZB_TRY(h->pre_forward(h->ctx, k));
    ZB_TRY(zb_pp_forward(m, &acts[q], ids + (size_t)k * stride, &fr[q]));
    return zb_pp_is_last(m) ? h->loss(h->ctx, &acts[q], k) : ZB_OK;
}

static int pp_bwd(zb_model *m, zb_acts *acts, int K, zb_comm_req *fr, zb_comm_req *br, int k, const int *ids,
                  size_t stride, const zb_pp_hooks *h) {
    int q = k % K;
    ZB_TRY(zb_pp_wait(m, &fr[q]));
    if (h->pre_backward) ZB_TRY(h->pre_backward(h->ctx, k));
    return zb_pp_backward(m, &acts[q], ids + (size_t)k * stride, &br[q]);
}

int zb_pp_1f1b(zb_model *m, zb_acts *acts, int K, int M, const int *ids, size_t ids_stride, int want_grad,
               const zb_pp_hooks *h) {
    int P = pp_size(m), s = pp_rank(m);
    int need = P < M ? P : M, rc = ZB_OK;
    if (K < need) return zb_fail(ZB_EARG, "pipeline parallel: %d activation sets for %d in flight", K, need);
    zb_comm_req *fr = zb_calloc(2 * (size_t)K, sizeof(zb_comm_req), "pipeline requests");
    if (!fr) return ZB_ENOMEM;
    zb_comm_req *br = fr + K;
#define FWD(k) pp_fwd(m, acts, K, fr, br, (k), ids, ids_stride, h)
#define BWD(k) pp_bwd(m, acts, K, fr, br, (k), ids, ids_stride, h)
    if (!want_grad) {
        for (int k = 0; k < M && !rc; k++) rc = FWD(k);
    } else {
        int warm = P - s - 1 < M ? P - s - 1 : M;
        for (int k = 0; k < warm && !rc; k++) rc = FWD(k);              /* warm-up */
        for (int j = 0; j < M - warm && !rc; j++) {                      /* steady state: 1F1B */
            rc = FWD(warm + j);
            if (!rc) rc = BWD(j);
        }
        for (int j = M - warm; j < M && !rc; j++) rc = BWD(j);          /* cool-down */
    }
#undef FWD
#undef BWD
    for (int i = 0; i < 2 * K; i++) {
        int r2 = zb_pp_wait(m, &fr[i]);
        if (!rc) rc = r2;
    }
    free(fr);
    return rc;
}

/* ---- a trainer's step ------------------------------------------------------------------- */

int zb_pp_trainer_init(zb_pp_trainer *p, zb_trainer *tr, int M) {
    memset(p, 0, sizeof *p);
    p->tr = tr;
    zb_model *m = tr->student;
    int P = pp_size(m), K = P < M ? P : M;
    if (tr->teacher && pp_size(tr->teacher) != P)
        return zb_fail(ZB_EARG, "pipeline parallel: the teacher / reference is cut into %d stages, the student "
                       "into %d", pp_size(tr->teacher), P);
    if (K < 1) K = 1;
    p->parts = zb_calloc((size_t)M, sizeof(zb_loss_parts), "pipeline losses");
    if (!p->parts) return ZB_ENOMEM;
    p->m = M;
    if (tr->stage == ZB_STAGE_ILD) return ZB_OK;   /* layer-local: no student pipeline */
    p->acts = zb_calloc((size_t)K, sizeof(zb_acts), "pipeline activations");
    if (!p->acts) return ZB_ENOMEM;
    p->acts[0] = tr->a;
    p->k = 1;
    for (; p->k < K; p->k++) ZB_TRY(zb_acts_alloc(&p->acts[p->k], m, tr->rows, tr->T));
    return ZB_OK;
}

void zb_pp_trainer_free(zb_pp_trainer *p) {
    for (int k = 1; k < p->k; k++) zb_acts_free(&p->acts[k]);   /* [0] is tr->a */
    free(p->acts);
    free(p->parts);
    memset(p, 0, sizeof *p);
}

/* Before the student's forward of micro-batch k on this stage: the teacher's (one activation
 * set: its previous send must be complete before its buffers are reused). */
static int pp_teacher_forward(void *ctx, int k) {
    zb_pp_trainer *p = ctx;
    const zb_trainer *tr = p->tr;
    ZB_TRY(zb_pp_wait(tr->teacher, &p->t_req));
    return zb_pp_forward(tr->teacher, &p->tr->ta, p->ids + (size_t)k * tr->rows * tr->T, &p->t_req);
}

/* The last stage's loss of micro-batch k, right after its forward (the teacher's forward of the
 * same micro-batch ran just before: tr->ta holds its logits). */
static int pp_loss(void *ctx, zb_acts *a, int k) {
    zb_pp_trainer *p = ctx;
    const int *tg = p->targets + (size_t)k * p->tr->rows * p->tr->T;
    zb_trainer_loss(p->tr, a, tg, p->want_grad, p->gs, &p->parts[k]);
    return ZB_OK;
}

/* Before the backward of micro-batch k: the DP buckets armed for the step's last one. */
static int pp_arm_dp(void *ctx, int k) {
    zb_pp_trainer *p = ctx;
    if (k == p->m_now - 1) zb_dp_arm_buckets(p->dp);
    return ZB_OK;
}

/* ILD under PP: the teacher's forward goes through the pipeline micro-batch by micro-batch;
 * each stage distils its own layers from the teacher activations it holds (the student mixers
 * take the teacher's inputs, so nothing of the student crosses stages). Each stage's parts are
 * its layers' share; zb_pp_trainer_step sums them over the stages. */
static int pp_ild(zb_pp_trainer *p, int M) {
    for (int k = 0; k < M; k++) {
        ZB_TRY(pp_teacher_forward(p, k));
        zb_loss_parts *o = &p->parts[k];
        memset(o, 0, sizeof *o);
        o->loss = zb_trainer_ild_loss(p->tr, p->want_grad, p->gs, o);
    }
    return ZB_OK;
}

int zb_pp_trainer_step(zb_pp_trainer *p, int M, const int *ids, const int *targets, int want_grad,
                       float grad_scale, zb_loss_parts *out) {
    zb_trainer *tr = p->tr;
    zb_model *m = tr->student;
    if (!p->parts || M > p->m)
        return zb_fail(ZB_EARG, "pipeline parallel: %d micro-batches, zb_pp_trainer_init was for %d", M, p->m);
    size_t N = (size_t)tr->rows * tr->T;
    p->ids = ids;
    p->targets = targets;
    p->gs = grad_scale;
    p->want_grad = want_grad;
    p->m_now = M;
    zb_pp_hooks h = {pp_loss, tr->teacher ? pp_teacher_forward : NULL, p->dp ? pp_arm_dp : NULL, p};
    int rc = tr->stage == ZB_STAGE_ILD ? pp_ild(p, M) : zb_pp_1f1b(m, p->acts, p->k, M, ids, N, want_grad, &h);
    int r2 = tr->teacher ? zb_pp_wait(tr->teacher, &p->t_req) : ZB_OK;
    ZB_TRY(rc);
    ZB_TRY(r2);
    /* the parts summed over the micro-batches: on the last stage (ILD: every stage its share) */
    zb_loss_parts o;
    memset(&o, 0, sizeof o);
    if (zb_pp_is_last(m) || tr->stage == ZB_STAGE_ILD)
        for (int k = 0; k < M; k++) zb_loss_parts_add(&o, &p->parts[k]);
    if (pp_size(m) > 1) {
        zb_comm *c = zb_model_comm(m);
        if (tr->stage == ZB_STAGE_ILD) ZB_TRY(zb_loss_parts_sum(c, ZB_GROUP_PP, &o));
        else ZB_TRY(zb_loss_parts_bcast(c, ZB_GROUP_PP, &o, pp_size(m) - 1));
    }
    if (tr->stage == ZB_STAGE_ILD) o.tokens = (double)M * N;
    if (out) *out = o;
    return ZB_OK;
}
