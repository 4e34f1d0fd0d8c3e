/* dp.c — see dp.h. Bucketed non-blocking gradient all-reduce (MPI, or node-shared memory) and ZeRO-1. */
#include "dp.h"

#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "shard.h"
#include "tensor_names.h"
#include "zb_common.h"

/* g: the model's backend memory (be) */
static int reduce_range(const zb_backend *be, float *g, size_t n, float scale, zb_comm *c) {
    if (n == 0) return ZB_OK;
    ZB_TRY(zb_comm_sum_f32(c, ZB_GROUP_DP, g, n));
    float s = scale / (float)zb_comm_size(c, ZB_GROUP_DP);
    if (s != 1.0f) be->scale(be, g, s, n);
    return ZB_OK;
}

int zb_dp_reduce_grads(zb_model *m, const unsigned char *trainable, float scale, zb_comm *c) {
    size_t start = 0, len = 0;   /* current run [start, start+len) in floats */
    for (int i = 0; i < m->n_params; i++) {
        const zb_param *p = &m->params[i];
        if (trainable && !trainable[i]) continue;
        if (len > 0 && start + len == p->offset) { len += p->numel; continue; }
        ZB_TRY(reduce_range(m->be, m->grad + start, len, scale, c));
        start = p->offset;
        len = p->numel;
    }
    return reduce_range(m->be, m->grad + start, len, scale, c);
}

/* ---- buckets -------------------------------------------------------------------------------- */

/* ---- the node-shared path (ZB_DP_SHM) --------------------------------------------------------
 * Each rank's shared part: 3 x nb flags (one cache line each), then the buckets' floats.
 *   READY[k] = e   this rank's gradient of bucket k for step e is in its part
 *   DONE[k]  = e   this rank has summed its chunk of bucket k (in place in its part)
 *   GOT[k]   = e   this rank has copied every summed chunk of bucket k back
 * Rank i may overwrite bucket k of its part for step e+1 once every rank's GOT[k] = e (its chunk
 * i was read); the owners of the other chunks read them before their DONE, which i waited for. */
#define LINE 64
#define TILE 2048   /* floats summed at a time: the tree's partial sums stay in L1 / L2 */
enum { F_READY = 0, F_DONE, F_GOT };

static _Atomic unsigned long long *flag(const zb_dp *d, int rank, int kind, int k) {
    return (_Atomic unsigned long long *)(void *)(d->seg[rank] + ((size_t)kind * d->nb + (size_t)k) * LINE);
}
static float *sdata(const zb_dp *d, int rank, int k) { return (float *)(void *)(d->seg[rank] + d->hdr) + d->b[k].soff; }
static unsigned long long get(const zb_dp *d, int rank, int kind, int k) {
    return atomic_load_explicit(flag(d, rank, kind, k), memory_order_acquire);
}
static void put(const zb_dp *d, int kind, int k) {
    atomic_store_explicit(flag(d, d->rank, kind, k), d->epoch, memory_order_release);
}
/* chunk j of n floats over p ranks: [*lo, *lo + return) */
static size_t chunk(size_t n, int p, int j, size_t *lo) {
    size_t q = n / (size_t)p, r = n % (size_t)p;
    *lo = (size_t)j * q + ((size_t)j < r ? (size_t)j : r);
    return q + ((size_t)j < r);
}
static void relax(int *spins) {
    if (++*spins > 64) { sched_yield(); *spins = 0; }   /* oversubscribed ranks: let the others run */
}

/* out[i] = the sum over ranks v of in[v][i], added in the order of a binomial reduction to rank
 * 0 (round r: v, a multiple of 2^r, adds v + 2^(r-1) when that exists), which is the order of
 * Open MPI's in-place MPI_Iallreduce (libnbc allred_sched_diss): float addition is commutative,
 * so the same pairs give the same bits. tmp: ((p + 1) / 2) x TILE. */
static void tree_sum(float *out, float *const *in, size_t off, size_t n, int p, float *tmp) {
    const float *ptr[ZB_DP_MAX_SHM];
    for (size_t t = 0; t < n; t += TILE) {
        size_t w = n - t < TILE ? n - t : TILE;
        for (int v = 0; v < p; v++) ptr[v] = in[v] + off + t;
        for (int h = 1; h < p; h <<= 1)
            for (int v = 0; v + h < p; v += 2 * h) {
                float *dst = tmp + (size_t)(v >> 1) * TILE;
                const float *x = ptr[v], *y = ptr[v + h];
                for (size_t i = 0; i < w; i++) dst[i] = x[i] + y[i];
                ptr[v] = dst;
            }
        memcpy(out + t, ptr[0], sizeof(float) * w);
    }
}

static void shm_publish(zb_dp *d, int k) {
    zb_dp_bucket *b = &d->b[k];
    int spins = 0;
    for (int j = 0; j < d->size; j++)   /* last step's chunk of ours read by every rank */
        while (get(d, j, F_GOT, k) + 1 < d->epoch) relax(&spins);
    memcpy(sdata(d, d->rank, k), d->m->grad + b->off, sizeof(float) * b->n);
    put(d, F_READY, k);
    b->launched = 1;
}

/* sum our chunk of bucket k when every rank has published it; copy the sums back when every
 * chunk is summed (scaled by 1/dp as the MPI path does after its wait). 1: the bucket is done. */
static int shm_advance(zb_dp *d, int k) {
    zb_dp_bucket *b = &d->b[k];
    if (!b->reduced) {
        for (int j = 0; j < d->size; j++)
            if (get(d, j, F_READY, k) < d->epoch) return 0;
        float *in[ZB_DP_MAX_SHM];
        for (int j = 0; j < d->size; j++) in[j] = sdata(d, j, k);
        if (d->zero) {   /* ZeRO-1: our piece of the bucket summed into our range; nothing to copy back */
            size_t lo = 0;
            for (int j = 0; j < d->rank; j++) lo += b->zcounts[j];
            if (b->zcounts[d->rank]) tree_sum(d->gshard + b->zout, in, lo, b->zcounts[d->rank], d->size, d->tmp);
            put(d, F_DONE, k);
            put(d, F_GOT, k);   /* every part's piece read */
            b->reduced = b->gathered = 1;
            return 1;
        }
        size_t lo, n = chunk(b->n, d->size, d->rank, &lo);
        tree_sum(in[d->rank] + lo, in, lo, n, d->size, d->tmp);
        put(d, F_DONE, k);
        b->reduced = 1;
    }
    if (!b->gathered) {
        for (int j = 0; j < d->size; j++)
            if (get(d, j, F_DONE, k) < d->epoch) return 0;
        for (int j = 0; j < d->size; j++) {
            size_t lo, n = chunk(b->n, d->size, j, &lo);
            memcpy(d->m->grad + b->off + lo, sdata(d, j, k) + lo, sizeof(float) * n);
        }
        put(d, F_GOT, k);
        d->m->be->scale(d->m->be, d->m->grad + b->off, 1.0f / (float)d->size, b->n);
        b->gathered = 1;
    }
    return 1;
}

static int shm_init(zb_dp *d) {
    if (d->size > ZB_DP_MAX_SHM) return ZB_OK;
    size_t nf = 0;
    for (int k = 0; k < d->nb; k++) {
        d->b[k].soff = nf;
        nf += (d->b[k].n + 15) & ~(size_t)15;   /* each bucket on its own 64-byte line */
    }
    d->hdr = (size_t)3 * d->nb * LINE;
    ZB_ALLOC(d->seg, d->size, "shared gradient parts");
    ZB_TRY(zb_comm_shared_alloc(d->comm, ZB_GROUP_DP, d->hdr + sizeof(float) * nf, (void **)d->seg, &d->win));
    if (!d->win) return ZB_OK;   /* the group spans nodes: MPI */
    ZB_ALLOC(d->tmp, (size_t)(d->size + 1) / 2 * TILE, "tree-sum scratch");
    for (int k = 0; k < d->nb; k++)
        for (int f = F_READY; f <= F_GOT; f++) atomic_store(flag(d, d->rank, f, k), 0);
    d->epoch = 1;
    d->path = ZB_DP_SHM;
    return zb_comm_barrier(d->comm, ZB_GROUP_DP);   /* every rank's flags are zero */
}

/* ---- the MPI path --------------------------------------------------------------------------- */

static void *progress_main(void *arg) {
    zb_dp *d = arg;
    struct timespec ts = {0, (long)d->progress_us * 1000};
    while (atomic_load(&d->running)) {
        int n = atomic_load_explicit(&d->n_launched, memory_order_acquire);
        for (int i = 0; i < n; i++) {
            zb_dp_bucket *b = &d->b[d->order[i]];
            int flag_ = 0;
            if (atomic_load(&b->done) || !b->req.pending) continue;
            /* the table's call, not the timed wrapper: c->seconds belongs to the main thread */
            if (d->comm->ops->test(d->comm->impl, &b->req, &flag_)) zb_comm_die(d->comm, "data parallel (progress thread)");
            if (flag_) atomic_store(&b->done, 1);
        }
        nanosleep(&ts, NULL);
    }
    return NULL;
}

static int launch(zb_dp *d, zb_dp_bucket *b) {
    if (d->path == ZB_DP_SHM) {
        shm_publish(d, (int)(b - d->b));
        return ZB_OK;
    }
    if (d->zero)   /* ZeRO-1: each rank receives the sum of its piece of the bucket */
        ZB_TRY(zb_comm_ireduce_scatter(d->comm, ZB_GROUP_DP, d->m->grad + b->off, d->gshard + b->zout, b->zcounts,
                                       ZB_CT_F32, &b->req));
    else ZB_TRY(zb_comm_iallreduce(d->comm, ZB_GROUP_DP, d->m->grad + b->off, b->n, ZB_CT_F32,
                                   d->mean ? ZB_RED_MEAN : ZB_RED_SUM, &b->req));
    b->launched = 1;
    if (d->thread) {   /* the progress thread tests it from now on */
        int n = atomic_load(&d->n_launched);
        d->order[n] = (int)(b - d->b);
        atomic_store_explicit(&d->n_launched, n + 1, memory_order_release);
        return ZB_OK;
    }
    /* poke the buckets in flight so that the library progresses them while we compute */
    for (int k = 0; k < d->nb; k++) {
        int flag_;
        if (d->b[k].launched) ZB_TRY(zb_comm_test(d->comm, &d->b[k].req, &flag_));
    }
    return ZB_OK;
}

/* When a parameter's gradient is final, in the hook's terms (model.h ZB_GRAD_*): block l's MLP
 * and its norm after the MLP's backward, the rest of block l after the block's; the head's
 * (untied) and the final norm's after the head's backward; the embedding's (and a tied head's)
 * at the end (-1). Buckets do not mix these three classes. ZB_DP_MLP_EARLY=0: a block's MLP
 * waits for its whole block (the path before). */
static int is_mlp(const zb_param *p) { return strstr(p->name, ".mlp.") || strstr(p->name, "post_attention_layernorm"); }
static int level_of(const zb_model *m, const zb_param *p, int mlp_early) {
    if (p->layer >= 0) return mlp_early && is_mlp(p) ? ZB_GRAD_MLP(p->layer) : ZB_GRAD_BLOCK(p->layer);
    const float *g = m->grad + p->offset;
    if ((g == m->g.lm_head && m->g.lm_head != m->g.embed) || g == m->g.final_norm) return ZB_GRAD_HEAD(m->cfg.n_layers);
    return ZB_GRAD_ALL;
}
static int level_class(const zb_model *m, int level) {
    return level < 0 ? 0 : level >= ZB_GRAD_HEAD(m->cfg.n_layers) ? 2 : 1;
}

static int env_off(const char *name) {   /* NAME=0: the path before */
    const char *e = getenv(name);
    return e && !strcmp(e, "0");
}

static int sparse_launch(zb_dp *d);

/* ZeRO-1: the parameters' all-gather after the optimizer, bucket by bucket in the forward's
 * order; zb_model.param_hook waits for the buckets that hold the parameters the forward reads
 * next (block l: its levels up to ZB_GRAD_MLP(l); the head: all), so the gather of the upper
 * layers overlaps the forward of the lower ones. */
static int gather_wait(zb_dp *d, int upto) {
    int left = 0;
    for (int k = 0; k < d->nb; k++) {
        zb_dp_bucket *b = &d->b[k];
        if (!b->greq.pending) continue;
        if (b->ready <= upto) ZB_TRY(zb_comm_wait(d->comm, &b->greq));
        else left++;
    }
    d->gathering = left > 0;
    return ZB_OK;
}

static void dp_param_hook(void *ctx, int at) {
    zb_dp *d = ctx;
    if (!d->gathering) return;
    /* the last block's call also covers the final norm and the head: all that is left */
    int upto = at < 0 ? ZB_GRAD_ALL : at + 2 >= ZB_GRAD_HEAD(d->m->cfg.n_layers) ? INT_MAX : at + 1;
    double t0 = zb_now();
    if (gather_wait(d, upto)) zb_comm_die(d->comm, "ZeRO-1 (the parameters' all-gather)");
    d->comm->seconds += zb_now() - t0;
}

int zb_dp_params_ready(zb_dp *d) {
    return d->gathering ? gather_wait(d, INT_MAX) : ZB_OK;
}

/* zb_model.grad_hook: the gradients of `at` (model.h ZB_GRAD_*) and above are final. With the
 * embedding's rows reduced apart (d->sp_on), its dense buckets (the tied head's gradient, or
 * what earlier micro-batches added) are final once the head's backward is done. */
static void dp_hook(void *ctx, int at) {
    zb_dp *d = ctx;
    if (d->stall_due) {   /* the forward is done (the loss was read): its waits for the gather */
        double st;
        if (zb_comm_stalled(d->comm, &st)) zb_comm_die(d->comm, "data parallel");
        d->ag_stall += st > 0 ? st : 0;
        d->stall_due = 0;
    }
    if (!d->armed || d->size == 1 || d->zero_whole) return;
    double t0 = zb_now(), c0 = d->comm->seconds;
    int head_done = d->sp_on && at <= ZB_GRAD_HEAD(d->m->cfg.n_layers);
    if (at == ZB_GRAD_ALL && zb_comm_mark(d->comm, ZB_DP_MARK_BWD)) zb_comm_die(d->comm, "data parallel");
    for (int k = 0; k < d->nb; k++) {
        const zb_dp_bucket *b = &d->b[k];
        if (b->launched || (d->hold_tied && b->ready < 0)) continue;
        if ((b->ready >= at || (head_done && b->ready < 0)) && launch(d, &d->b[k])) zb_comm_die(d->comm, "data parallel");
    }
    if (at == ZB_GRAD_ALL && d->sp_on && !d->sp_launched && sparse_launch(d)) zb_comm_die(d->comm, "data parallel");
    if (d->path == ZB_DP_SHM)   /* what every rank has published: summed and copied back now */
        for (int k = 0; k < d->nb; k++)
            if (d->b[k].launched) shm_advance(d, k);
    double dt = zb_now() - t0;
    d->overlap_s += dt;
    d->comm->seconds = c0 + dt;   /* communication time (the MPI calls' own time included once) */
}

/* PP: this stage holds a copy of a tied embedding (first or last stage) */
static int tied_stage(const zb_model *m) {
    return m->tp && m->tp->pp_size > 1 && m->cfg.tie_embeddings &&
           (m->tp->pp_rank == 0 || m->tp->pp_rank == m->tp->pp_size - 1);
}

/* ZeRO-1: bucket b's pieces in each rank's range; the ranges and the buckets both cut the
 * flat buffer into contiguous runs, so the pieces are contiguous and in rank order. */
static void zero_pieces(zb_dp *d, zb_dp_bucket *b, size_t *zc) {
    for (int r = 0; r < d->size; r++) {
        size_t a = b->off > d->displs[r] ? b->off : d->displs[r];
        size_t e = b->off + b->n < d->displs[r] + d->counts[r] ? b->off + b->n : d->displs[r] + d->counts[r];
        zc[r] = e > a ? e - a : 0;
        if (r == d->rank) b->zout = zc[r] ? a - d->lo : 0;
    }
    b->zcounts = zc;
}

int zb_dp_init(zb_dp *d, zb_model *m, const unsigned char *trainable, zb_comm *comm, double bucket_mb, int zero) {
    memset(d, 0, sizeof *d);
    d->m = m;
    d->comm = comm;
    d->zero = zero;
    d->rank = zb_comm_rank(comm, ZB_GROUP_DP);
    d->size = zb_comm_size(comm, ZB_GROUP_DP);
    if (!m->grad) return zb_fail(ZB_EARG, "data parallel: the model has no gradient buffer");
    if (bucket_mb <= 0) bucket_mb = 25;
    size_t cap = (size_t)(bucket_mb * 1048576.0 / sizeof(float));
    if (cap < 1) cap = 1;
    if (cap > ((size_t)1 << 30)) cap = (size_t)1 << 30;
    /* walk the parameters from the last (head, final norm, top layers) to the first, the order
     * in which the backward finishes them; a bucket is a contiguous run of trainable floats */
    ZB_ALLOC(d->b, (size_t)m->n_params + (m->n_floats / cap) + 2, "gradient buckets");
    zb_dp_bucket *cur = NULL;
    for (int i = m->n_params - 1; i >= 0; i--) {
        const zb_param *p = &m->params[i];
        if (trainable && !trainable[i]) { cur = NULL; continue; }
        size_t off = p->offset, n = p->numel;
        int level = level_of(m, p, !env_off("ZB_DP_MLP_EARLY"));
        while (n > 0) {
            /* the run grows downwards: [off + n - take, off + n) joins cur if contiguous */
            if (!cur || cur->off != off + n || cur->n >= cap || level_class(m, cur->ready) != level_class(m, level)) {
                cur = &d->b[d->nb++];
                memset(cur, 0, sizeof *cur);
                cur->off = off + n;
                cur->ready = level;
            }
            size_t take = cap - cur->n < n ? cap - cur->n : n;
            cur->off -= take;
            cur->n += take;
            n -= take;
            if (level < cur->ready) cur->ready = level;
        }
    }
    if (zero) {
        size_t N = m->n_floats, q = N / (size_t)d->size, r = N % (size_t)d->size;
        if (N > INT_MAX)
            return zb_fail(ZB_EARG, "ZeRO-1: the shard has %zu floats, more than int counts (use --tp)", N);
        ZB_ALLOC(d->counts, d->size, "ZeRO ranges");
        ZB_ALLOC(d->displs, d->size, "ZeRO ranges");
        size_t o = 0;
        for (int k = 0; k < d->size; k++) {
            size_t c = q + ((size_t)k < r);
            d->counts[k] = c;
            d->displs[k] = o;
            if (k == d->rank) { d->lo = o; d->hi = o + c; }
            o += c;
        }
        ZB_BE_ALLOC(m->be, d->gshard, d->hi - d->lo + 1, "ZeRO gradient shard");
        m->be->zero(m->be, d->gshard, sizeof(float) * (d->hi - d->lo + 1));   /* frozen floats: never summed */
        ZB_ALLOC(d->zc, (size_t)d->nb * d->size, "ZeRO bucket pieces");
        for (int k = 0; k < d->nb; k++) zero_pieces(d, &d->b[k], d->zc + (size_t)k * d->size);
        d->hold_tied = tied_stage(m);
        const char *e = getenv("ZB_ZERO_REDUCE");
        if (e && *e && strcmp(e, "overlap") && strcmp(e, "after"))
            return zb_fail(ZB_EARG, "ZB_ZERO_REDUCE=%s: expected overlap or after", e);
        d->zero_whole = e && !strcmp(e, "after");
        const char *ge = getenv("ZB_ZERO_GATHER");
        if (ge && *ge && strcmp(ge, "overlap") && strcmp(ge, "after"))
            return zb_fail(ZB_EARG, "ZB_ZERO_GATHER=%s: expected overlap or after", ge);
        d->gather = d->size > 1 && !(ge && !strcmp(ge, "after"));
        if (d->gather) {   /* each bucket's pieces as displacements from its start */
            ZB_ALLOC(d->zd, (size_t)d->nb * d->size, "ZeRO bucket pieces");
            for (int k = 0; k < d->nb; k++) {
                size_t o = 0;
                for (int r = 0; r < d->size; r++) {
                    d->zd[(size_t)k * d->size + r] = o;
                    o += d->b[k].zcounts[r];
                }
            }
            m->param_hook = dp_param_hook;
            m->param_hook_ctx = d;
        }
    }
    if (d->size > 1 && !d->zero_whole) {
        const char *e = getenv("ZB_DP_ALLREDUCE");
        if (e && *e && strcmp(e, "auto") && strcmp(e, "mpi") && strcmp(e, "shm"))
            return zb_fail(ZB_EARG, "ZB_DP_ALLREDUCE=%s: expected auto, mpi or shm", e);
        int want_shm = !e || strcmp(e, "mpi");
        if (want_shm && m->be->host_memory) ZB_TRY(shm_init(d));
        if (e && !strcmp(e, "shm") && d->path != ZB_DP_SHM)
            return zb_fail(ZB_EARG, "ZB_DP_ALLREDUCE=shm: the DP group is not on one node in host memory "
                           "(or has more than %d ranks)", ZB_DP_MAX_SHM);
    }
    /* NCCL's average (each part times 1/dp, then summed) instead of a scaling pass after */
    d->mean = d->size > 1 && !zero && !m->be->host_memory && comm->dev_mean && !env_off("ZB_DP_MEAN");
    /* the embedding's rows reduced apart (one replica per rank, no TP / PP, not ZeRO; trainable) */
    const zb_param *emb = zb_model_param(m, "model.embed_tokens.weight");
    d->sparse = d->size > 1 && !zero && !m->tp && emb && (!trainable || trainable[emb - m->params]) &&
                !env_off("ZB_DP_SPARSE_EMBED");
    d->emb = emb;
    if (d->size > 1) {
        const char *pe = getenv("ZB_DP_PROGRESS");
        if (d->path == ZB_DP_MPI && pe && !strncmp(pe, "thread", 6)) {
            if (!comm->thread_multiple)
                return zb_fail(ZB_EARG, "ZB_DP_PROGRESS=%s: MPI was not initialised with MPI_THREAD_MULTIPLE", pe);
            d->progress_us = pe[6] == ':' ? atoi(pe + 7) : 50;
            if (d->progress_us < 1) d->progress_us = 1;
            ZB_ALLOC(d->order, d->nb, "gradient buckets");
        }
    }
    m->grad_hook = dp_hook;
    m->grad_hook_ctx = d;
    return ZB_OK;
}

void zb_dp_free(zb_dp *d) {
    if (d->gathering && gather_wait(d, INT_MAX)) fprintf(stderr, "zebra: %s\n", zb_errmsg());
    if (d->m && d->m->grad_hook_ctx == d) { d->m->grad_hook = NULL; d->m->grad_hook_ctx = NULL; }
    if (d->m && d->m->param_hook_ctx == d) { d->m->param_hook = NULL; d->m->param_hook_ctx = NULL; }
    if (d->m) d->m->be->free(d->m->be, d->gshard);
    if (d->win) zb_comm_shared_free(d->comm, d->win);
    if (d->m) {
        const zb_backend *be = d->m->be;
        be->free(be, d->sp_buf); be->free(be, d->sp_slot_d); be->free(be, d->sp_rows_d);
        if (d->m->emb_rows == d->sp_buf) { d->m->emb_rows = NULL; d->m->emb_slot = NULL; }
    }
    free(d->zd); free(d->sp_mark); free(d->sp_all); free(d->sp_slot); free(d->sp_rows);
    free(d->b); free(d->zc); free(d->counts); free(d->displs); free(d->seg); free(d->tmp); free(d->order);
    memset(d, 0, sizeof *d);
}

/* ---- the embedding's rows, reduced apart ----------------------------------------------------
 * The embedding's gradient from this micro-batch's tokens lives in the rows of its tokens only.
 * Every rank learns the union U of the DP group's token ids (sorted), its backward adds token
 * t's gradient to row slot(id_t) of a compact [|U|, d] buffer instead of the full table
 * (model.h emb_rows), the compact rows are all-reduced (mean) after the backward, and added to
 * their rows of g.embed. The rest of g.embed (a tied head's gradient, earlier micro-batches')
 * is final once the head's backward ends: its buckets go then, overlapping the blocks. A row
 * outside U is zero on every rank in the compact sum. Same sum, other grouping:
 * (h0 + h1) + (e0 + e1) instead of (h0 + e0) + (h1 + e1), within the f32 bounds. */
static int cmp_int(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

/* n: the tokens of the armed micro-batch, the same on every rank of the group (collective) */
static int sparse_setup(zb_dp *d, const int *ids, int n) {
    zb_model *m = d->m;
    const zb_backend *be = m->be;
    int V = m->cfg.vocab, D = m->cfg.d_model;
    if (n != d->sp_n) {   /* (re)size: the union has at most min(V, size x n) rows */
        be->free(be, d->sp_buf); be->free(be, d->sp_slot_d); be->free(be, d->sp_rows_d);
        free(d->sp_all); free(d->sp_slot); free(d->sp_rows);
        d->sp_buf = NULL; d->sp_slot_d = d->sp_rows_d = NULL; d->sp_all = d->sp_slot = d->sp_rows = NULL;
        d->sp_n = 0;
        size_t cap = (size_t)d->size * n < (size_t)V ? (size_t)d->size * n : (size_t)V;
        if (!d->sp_mark) {
            ZB_ALLOC(d->sp_mark, V, "sparse embedding rows");
            for (int v = 0; v < V; v++) d->sp_mark[v] = -1;
        }
        ZB_ALLOC(d->sp_all, (size_t)d->size * n, "sparse embedding rows");
        ZB_ALLOC(d->sp_slot, n, "sparse embedding rows");
        ZB_ALLOC(d->sp_rows, cap, "sparse embedding rows");
        ZB_BE_ALLOC(be, d->sp_buf, cap * D, "sparse embedding rows");
        ZB_BE_ALLOC(be, d->sp_slot_d, n, "sparse embedding rows");
        ZB_BE_ALLOC(be, d->sp_rows_d, cap, "sparse embedding rows");
        d->sp_n = n;
    }
    int bad = 0;
    for (int t = 0; t < n; t++) bad |= ids[t] < 0 || ids[t] >= V;
    ZB_TRY(zb_comm_allgather(d->comm, ZB_GROUP_DP, ids, (size_t)n, d->sp_all, ZB_CT_I32));
    int nu = 0;
    for (size_t i = 0; i < (size_t)d->size * n; i++) {
        int v = d->sp_all[i];
        if (v < 0 || v >= V) { bad = 1; continue; }
        if (d->sp_mark[v] < 0) { d->sp_mark[v] = 0; d->sp_rows[nu++] = v; }
    }
    qsort(d->sp_rows, (size_t)nu, sizeof(int), cmp_int);
    for (int i = 0; i < nu; i++) d->sp_mark[d->sp_rows[i]] = i;
    for (int t = 0; t < n && !bad; t++) d->sp_slot[t] = d->sp_mark[ids[t]];
    for (int i = 0; i < nu; i++) d->sp_mark[d->sp_rows[i]] = -1;
    if (bad) return ZB_OK;   /* an id out of the table on some rank (every rank saw it): the dense path */
    be->to_device(be, d->sp_slot_d, d->sp_slot, sizeof(int) * (size_t)n);
    be->to_device(be, d->sp_rows_d, d->sp_rows, sizeof(int) * (size_t)nu);
    be->zero(be, d->sp_buf, sizeof(float) * (size_t)nu * D);
    d->sp_nu = nu;
    d->sp_on = 1;
    d->sp_launched = 0;
    m->emb_rows = d->sp_buf;
    m->emb_slot = d->sp_slot_d;
    return ZB_OK;
}

static int sparse_launch(zb_dp *d) {
    d->sp_launched = 1;
    size_t n = (size_t)d->sp_nu * d->m->cfg.d_model;
    return zb_comm_iallreduce(d->comm, ZB_GROUP_DP, d->sp_buf, n, ZB_CT_F32, d->mean ? ZB_RED_MEAN : ZB_RED_SUM,
                              &d->sp_req);
}

/* after the buckets: the compact rows' mean added to their rows of g.embed */
static int sparse_finish(zb_dp *d) {
    zb_model *m = d->m;
    const zb_backend *be = m->be;
    int D = m->cfg.d_model;
    if (!d->sp_launched) ZB_TRY(sparse_launch(d));
    ZB_TRY(zb_comm_wait(d->comm, &d->sp_req));
    if (!d->mean) be->scale(be, d->sp_buf, 1.0f / (float)d->size, (size_t)d->sp_nu * D);
    be->embedding_backward(be, m->grad + d->emb->offset, d->sp_buf, d->sp_rows_d, d->sp_nu, D);
    d->sp_on = 0;
    m->emb_rows = NULL;
    m->emb_slot = NULL;
    return ZB_OK;
}

int zb_dp_arm(zb_dp *d, const int *ids, int n) {
    zb_dp_arm_buckets(d);
    if (d->sparse && ids && n > 0) return sparse_setup(d, ids, n);
    return ZB_OK;
}

void zb_dp_arm_buckets(zb_dp *d) {
    d->armed = 1;
    if (d->size > 1) {   /* the last step's ZeRO all-gather read here, not at its end: the host
                          * reads the next batch meanwhile */
        double ag;
        if (zb_comm_elapsed(d->comm, ZB_DP_MARK_AG0, ZB_DP_MARK_AG1, &ag) || zb_comm_mark(d->comm, -1))
            zb_comm_die(d->comm, "data parallel");
        d->ag_last = ag > 0 ? ag : 0;
    }
    for (int k = 0; k < d->nb; k++) {
        zb_dp_bucket *b = &d->b[k];
        b->launched = b->reduced = b->gathered = 0;
        b->req.pending = 0;
        atomic_store(&b->done, 0);
    }
    if (d->progress_us && !d->thread && d->size > 1) {
        atomic_store(&d->n_launched, 0);
        atomic_store(&d->running, 1);
        pthread_t *t = zb_malloc(sizeof *t, "progress thread");
        if (t && pthread_create(t, NULL, progress_main, d) == 0) d->thread = t;
        else { free(t); atomic_store(&d->running, 0); }   /* no thread: the hooks' tests progress */
    }
}

static void stop_thread(zb_dp *d) {
    if (!d->thread) return;
    atomic_store(&d->running, 0);
    pthread_join(*(pthread_t *)d->thread, NULL);
    free(d->thread);
    d->thread = NULL;
}

static int finish_buckets(zb_dp *d) {
    const zb_backend *be = d->m->be;
    for (int k = 0; k < d->nb; k++)
        if (!d->b[k].launched) ZB_TRY(launch(d, &d->b[k]));
    if (d->path == ZB_DP_SHM) {
        int left = d->nb, spins = 0;
        while (left) {
            left = 0;
            for (int k = 0; k < d->nb; k++) left += !shm_advance(d, k);
            if (left) relax(&spins);
        }
        d->epoch++;
        if (d->zero) be->scale(be, d->gshard, 1.0f / (float)d->size, d->hi - d->lo);
        return ZB_OK;
    }
    stop_thread(d);
    for (int k = 0; k < d->nb; k++) ZB_TRY(zb_comm_wait(d->comm, &d->b[k].req));
    if (d->zero) {   /* the range's floats, trainable or not (frozen ones stay 0) */
        be->scale(be, d->gshard, 1.0f / (float)d->size, d->hi - d->lo);
        return ZB_OK;
    }
    if (!d->mean)
        for (int k = 0; k < d->nb; k++) be->scale(be, d->m->grad + d->b[k].off, 1.0f / (float)d->size, d->b[k].n);
    return ZB_OK;
}

int zb_dp_finish(zb_dp *d) {
    const zb_backend *be = d->m->be;
    d->armed = 0;
    if (d->size == 1) {   /* ZeRO alone: the range is the whole buffer */
        if (d->zero) be->copy(be, d->gshard, d->m->grad, sizeof(float) * (d->hi - d->lo));
        return ZB_OK;
    }
    double t0 = zb_now(), c0 = d->comm->seconds;
    int rc;
    if (d->zero_whole) {   /* ZB_ZERO_REDUCE=after: the earlier path, one reduce-scatter of the buffer */
        rc = zb_comm_reduce_scatter(d->comm, ZB_GROUP_DP, d->m->grad, d->gshard, d->counts, ZB_CT_F32);
        if (!rc) be->scale(be, d->gshard, 1.0f / (float)d->size, d->hi - d->lo);
    } else rc = finish_buckets(d);
    if (!rc && d->sp_on) rc = sparse_finish(d);
    if (!rc) rc = zb_comm_mark(d->comm, ZB_DP_MARK_DONE);
    for (int k = 0; k < d->nb; k++)   /* the next step starts from nothing launched, armed or not */
        d->b[k].launched = d->b[k].reduced = d->b[k].gathered = 0;
    double dt = zb_now() - t0;
    d->exposed_s += dt;
    d->comm->seconds = c0 + dt;
    return rc;
}

/* PP: the last stage's copy of a tied embedding (its gradient equals the first stage's after
 * zb_pp_tied_grad_sum: counted once), or -1. */
static int tied_copy(const zb_model *m) {
    if (!m->tp || m->tp->pp_size < 2 || m->tp->pp_rank != m->tp->pp_size - 1 || !m->cfg.tie_embeddings) return -1;
    const zb_param *p = zb_model_param(m, "model.embed_tokens.weight");
    return p ? (int)(p - m->params) : -1;
}

int zb_dp_grad_sq_norm(const zb_dp *d, const zb_adamw *o, double *out) {
    const zb_model *m = d->m;
    size_t lo = d->zero ? d->lo : 0, hi = d->zero ? d->hi : m->n_floats;
    const float *g = d->zero ? d->gshard : m->grad;
    double s[2] = {0, 0};   /* TP-split, replicated */
    int skip = tied_copy(m), nr[2] = {0, 0};
    /* the ranges of each kind in one call (ZB_OPTIM=per_tensor: a call per tensor) */
    zb_range *r = zb_optim_per_tensor() ? NULL : malloc(sizeof(zb_range) * 2 * (size_t)(m->n_params + 1));
    for (int i = 0; i < m->n_params; i++) {
        if (!o->trainable[i] || i == skip) continue;
        const zb_param *p = &m->params[i];
        size_t a = p->offset > lo ? p->offset : lo, b = p->offset + p->numel < hi ? p->offset + p->numel : hi;
        int k = m->tp && !m->tp->slices[i].replicated ? 0 : 1;
        if (a >= b) continue;
        if (!r) { s[k] += m->be->sumsq(m->be, g + (a - lo), b - a); continue; }
        zb_range *q = r + (size_t)k * (m->n_params + 1) + nr[k]++;
        q->off = a - lo;
        q->n = b - a;
        q->decay = q->step_size = 0;
    }
    for (int k = 0; r && k < 2; k++)
        if (nr[k]) s[k] = m->be->sumsq_ranges(m->be, g, nr[k], r + (size_t)k * (m->n_params + 1));
    free(r);
    if (d->zero) ZB_TRY(zb_comm_sum_f64(d->comm, ZB_GROUP_DP, s, 2));
    if (m->tp) ZB_TRY(zb_comm_sum_f64(m->tp->comm, ZB_GROUP_TP, s, 1));
    *out = s[0] + s[1];
    if (m->tp) ZB_TRY(zb_comm_sum_f64(m->tp->comm, ZB_GROUP_PP, out, 1));   /* over the stages */
    return ZB_OK;
}

int zb_dp_first_nonfinite(const zb_dp *d, const zb_adamw *o, char *name, size_t cap) {
    const zb_model *m = d->m;
    const zb_config *full = zb_model_full_config(m);
    size_t lo = d->zero ? d->lo : 0, hi = d->zero ? d->hi : m->n_floats;
    const float *g = d->zero ? d->gshard : m->grad;
    zb_tensor_spec *spec = NULL;
    int ns = 0, first = INT_MAX;
    ZB_TRY(zb_expected_tensors(full, &spec, &ns));
    for (int i = 0, j = 0; i < m->n_params && first == INT_MAX; i++) {
        const char *nm = m->tp ? m->tp->full_params[i].name : m->params[i].name;
        while (j < ns && strcmp(spec[j].name, nm)) j++;   /* its place in the full model */
        if (!o->trainable[i]) continue;
        const zb_param *p = &m->params[i];
        size_t a = p->offset > lo ? p->offset : lo, b = p->offset + p->numel < hi ? p->offset + p->numel : hi;
        if (a >= b) continue;
        const float *h = g + (a - lo);
        float *tmp = NULL;
        if (!m->be->host_memory) {   /* an error path: the range read back to the host */
            if (!(tmp = zb_malloc(sizeof(float) * (b - a), "gradient check"))) { free(spec); return ZB_ENOMEM; }
            m->be->to_host(m->be, tmp, h, sizeof(float) * (b - a));
            h = tmp;
        }
        for (size_t k = 0; k < b - a; k++)
            if (!isfinite(h[k])) { first = j; break; }
        free(tmp);
    }
    int rc = zb_comm_allreduce(d->comm, ZB_GROUP_WORLD, &first, 1, ZB_CT_I32, ZB_RED_MIN);
    snprintf(name, cap, "%s", !rc && first < ns ? spec[first].name : "");
    free(spec);
    return rc;
}

int zb_dp_zero_attach(zb_dp *d, zb_adamw *o) {
    if (!d->zero) return ZB_OK;
    const zb_backend *be = o->be;
    be->free(be, o->m);
    be->free(be, o->v);
    o->m = o->v = NULL;
    size_t n = d->hi - d->lo + 1;
    ZB_BE_ALLOC(be, o->m, n, "ZeRO optimizer moments");
    ZB_BE_ALLOC(be, o->v, n, "ZeRO optimizer moments");
    o->n_floats = d->hi - d->lo;
    return ZB_OK;
}

int zb_dp_optim_step(zb_dp *d, zb_adamw *o, float lr, float grad_scale) {
    if (!d->zero) { zb_adamw_step(o, d->m, lr, grad_scale); return ZB_OK; }
    zb_adamw_update_range(o, d->m, d->lo, d->hi, d->gshard, o->m, o->v, lr, grad_scale);
    o->step++;
    if (d->gather) {   /* bucket by bucket in the forward's order, waited for by the forward */
        ZB_TRY(zb_dp_params_ready(d));
        for (int k = d->nb - 1; k >= 0; k--) {
            zb_dp_bucket *b = &d->b[k];
            ZB_TRY(zb_comm_iallgatherv_inplace(d->comm, ZB_GROUP_DP, d->m->data + b->off, b->zcounts,
                                               d->zd + (size_t)k * d->size, ZB_CT_F32, &b->greq));
            d->gathering |= b->greq.pending;
        }
        d->stall_due = d->gathering;
        return ZB_OK;
    }
    if (d->size > 1) ZB_TRY(zb_comm_mark(d->comm, ZB_DP_MARK_AG0));
    ZB_TRY(zb_comm_allgatherv_inplace(d->comm, ZB_GROUP_DP, d->m->data, d->counts, d->displs, ZB_CT_F32));
    if (d->size > 1) ZB_TRY(zb_comm_mark(d->comm, ZB_DP_MARK_AG1));
    return ZB_OK;
}

int zb_dp_device_times(zb_dp *d) {
    d->device_times = 0;
    if (d->size == 1 || d->zero_whole) return ZB_OK;
    double ex, busy;
    ZB_TRY(zb_comm_elapsed(d->comm, ZB_DP_MARK_BWD, ZB_DP_MARK_DONE, &ex));
    ZB_TRY(zb_comm_side_busy(d->comm, &busy));
    if (ex < 0 || busy < 0) return ZB_OK;   /* host ranks, or no armed backward: the host's times */
    double st;
    ZB_TRY(zb_comm_stalled(d->comm, &st));   /* (the waits of finish: inside ex) */
    d->exposed_s = ex + d->ag_last + d->ag_stall;   /* ZeRO: the previous step's all-gather: after the
                                                     * optimizer, or what the forward waited for it */
    d->ag_stall = 0;
    d->overlap_s = busy > ex ? busy - ex : 0;
    d->side_s = busy;
    d->device_times = 1;
    return ZB_OK;
}
