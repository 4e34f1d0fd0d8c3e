/* gen.c — cached generation (model.h zb_gen): per-layer caches of B sequences, prefill and decode
 * steps of any subset of them (each at its own position), a decode step recorded once and
 * replayed (the backend's step_graph), and the pipelined greedy decode (zb_gen_decode_launch /
 * _wait: the next step queued before the host reads this one's picks). */
#include "model.h"

#include <stdlib.h>
#include <string.h>

#include "shard.h"   /* TP hooks (m->tp != NULL), SPEC §9 */

void zb_cache_sizes(const zb_config *c, size_t *kv_per_token, size_t *state_per_seq) {
    size_t kv = 0, st = 0;
    for (int l = 0; l < c->n_layers; l++) {
        if (c->kinds[l] == ZB_LAYER_ATTN) kv += 2 * (size_t)c->n_kv_heads * c->head_dim;
        else if (c->kinds[l] == ZB_LAYER_MLA) kv += (size_t)c->mla.kv_lora_rank + c->mla.qk_rope;
        else st += zb_mamba2_state_floats(&c->mamba);
    }
    if (kv_per_token) *kv_per_token = kv;
    if (state_per_seq) *state_per_seq = st;
}

#define ZB_GEN_CHUNK 64   /* prefill is processed this many tokens at a time */
/* A device backend prefills the sequences of a step together, each mixer call taking every
 * sequence's chunk (batched products, the chunked Mamba2 scan), up to this many tokens a call
 * and ZB_GEN_CHUNK_DEV per sequence. */
#define ZB_GEN_TOKENS_DEV 12288   /* 48 sequences x 256 */
#define ZB_GEN_CHUNK_DEV 256

/* the most tokens one mixer call of generation takes */
static int gen_mixer_tokens(const zb_gen *s) {
    int prefill = s->be->host_memory ? s->chunk : s->B * s->chunk;
    return s->B > prefill ? s->B : prefill;
}

int zb_gen_init(zb_gen *s, const zb_model *m, int B, int max_T) {
    const zb_config *c = &m->cfg;
    const zb_backend *be = m->be;
    memset(s, 0, sizeof *s);
    s->be = be;
    if (B < 1 || max_T < 1 || (int64_t)B * max_T > ((int64_t)1 << 31) / 2)
        return zb_fail(ZB_EARG, "generation: %d sequences x %d positions: out of range", B, max_T);
    s->B = B;
    s->max_T = max_T;
    s->chunk = ZB_GEN_CHUNK;
    if (!be->host_memory) {
        int ch = ZB_GEN_TOKENS_DEV / B;
        s->chunk = ch < 1 ? 1 : ch > ZB_GEN_CHUNK_DEV ? ZB_GEN_CHUNK_DEV : ch;
    }
    size_t n = (size_t)B * s->chunk, d = c->d_model, F = c->ffn;
    int ntok = gen_mixer_tokens(s);   /* a prefill chunk (of every sequence on a device) or a decode batch */
    size_t qd = (size_t)c->n_heads * c->head_dim, kd = (size_t)c->n_kv_heads * c->head_dim;
    size_t scratch = n * (qd + 2 * kd + qd);   /* attention: q, k, v, att, then the backend's scratch */
    int any_attn = 0;
    ZB_ALLOC(s->cache, c->n_layers, "caches");
    ZB_ALLOC(s->cache_floats, c->n_layers, "caches");
    ZB_ALLOC(s->cache_esize, c->n_layers, "caches");
    s->n_layers = c->n_layers;
    int cache16 = be->opts.cache_bf16;   /* K/V and latents in bf16: half the bytes (backend.h) */
    for (int l = 0; l < c->n_layers; l++) {
        size_t floats, sc = 0;
        if (c->kinds[l] == ZB_LAYER_ATTN) {
            floats = (size_t)B * max_T * 2 * kd;
            any_attn = 1;
        } else if (c->kinds[l] == ZB_LAYER_MLA) {
            floats = zb_mla_cache_floats(&c->mla, B, max_T);
            sc = be->mla_step_scratch(be, &c->mla, c->d_model, max_T, ntok);
        } else {
            floats = (size_t)B * zb_mamba2_state_floats(&c->mamba);
            sc = be->mamba2_step_scratch(be, &c->mamba, c->d_model, ntok);
        }
        if (sc > scratch) scratch = sc;
        int es = cache16 && c->kinds[l] != ZB_LAYER_MAMBA2 ? 2 : 4;   /* Mamba2 states stay float32 */
        s->cache[l] = be->alloc(be, floats * (size_t)es, "generation cache");
        if (!s->cache[l]) return ZB_ENOMEM;
        s->cache_floats[l] = floats;
        s->cache_esize[l] = es;
    }
    if (any_attn) scratch += be->attention_step_scratch(be, c->n_heads, c->n_kv_heads, c->head_dim, max_T, ntok);
    zb_cache_sizes(c, &s->cache_bytes_per_token, &s->state_bytes_per_seq);
    s->cache_bytes_per_token *= cache16 ? 2 : sizeof(float);
    s->state_bytes_per_seq *= sizeof(float);
    ZB_BE_ALLOC(be, s->x, n * d, "generation buffers");
    ZB_BE_ALLOC(be, s->ln, n * d, "generation buffers");
    ZB_BE_ALLOC(be, s->mo, n * d, "generation buffers");
    ZB_BE_ALLOC(be, s->g, n * F, "generation buffers");
    ZB_BE_ALLOC(be, s->u, n * F, "generation buffers");
    ZB_BE_ALLOC(be, s->lnf, (size_t)B * d, "generation buffers");
    ZB_BE_ALLOC(be, s->scratch, scratch, "generation scratch");
    /* TP: logits are gathered over the vocabulary for sampling (s->logits is [B, full V]) */
    ZB_ALLOC(s->logits, (size_t)B * zb_model_full_config(m)->vocab, "logits");
    if (be->host_memory) s->logits_dev = s->logits;   /* the head writes the host's logits directly */
    else ZB_BE_ALLOC(be, s->logits_dev, (size_t)B * c->vocab, "logits");
    if (m->tp) ZB_BE_ALLOC(be, s->tp_buf, (size_t)B * (c->vocab + zb_model_full_config(m)->vocab), "logits");
    if (m->tp && !be->host_memory) {
        ZB_ALLOC(s->ids_host, n, "generation buffers");
        if (B > 1) ZB_ALLOC(s->logits_stage, (size_t)B * zb_model_full_config(m)->vocab, "logits");
    }
    ZB_BE_ALLOC(be, s->ids, n, "generation buffers");
    ZB_BE_ALLOC(be, s->next_dev, B, "generation tokens");
    ZB_ALLOC(s->next, B, "generation tokens");
    ZB_BE_ALLOC(be, s->pos_dev, B, "generation positions");
    ZB_BE_ALLOC(be, s->seqs_dev, B, "generation positions");
    ZB_ALLOC(s->pos, B, "generation positions");
    ZB_ALLOC(s->seqs, B, "generation positions");
    ZB_ALLOC(s->aseqs, B, "generation positions");
    if (m->tp && !be->host_memory && m->tp->size > 1 && B > 1 &&
        (int64_t)zb_model_full_config(m)->vocab == (int64_t)m->tp->size * c->vocab)
        ZB_BE_ALLOC(be, s->logits_rows, (size_t)B * zb_model_full_config(m)->vocab, "logits");
    ZB_ALLOC(s->kinds, c->n_layers, "caches");
    for (int l = 0; l < c->n_layers; l++) s->kinds[l] = c->kinds[l];
    return ZB_OK;
}

void zb_gen_free(zb_gen *s) {
    const zb_backend *be = s->be;
    if (be) {
        for (int l = 0; s->cache && l < s->n_layers; l++) be->free(be, s->cache[l]);
        float *f[] = {s->x, s->ln, s->mo, s->g, s->u, s->lnf, s->scratch, s->tp_buf};
        for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) be->free(be, f[i]);
        be->step_graph(be, &s->graph, ZB_GRAPH_FREE, 0);
        if (s->stepq) be->step_queue(be, &s->stepq, ZB_STEPQ_FREE, NULL, NULL, 0);
        be->free(be, s->logits_rows);
        if (s->logits_dev != s->logits) be->free(be, s->logits_dev);
        be->free(be, s->ids);
        be->free(be, s->next_dev);
        be->free(be, s->pos_dev);
        be->free(be, s->seqs_dev);
    }
    free(s->cache); free(s->cache_floats); free(s->cache_esize);
    free(s->logits); free(s->next); free(s->pos); free(s->seqs); free(s->aseqs); free(s->kinds); free(s->ids_host); free(s->logits_stage);
    memset(s, 0, sizeof *s);
}

void zb_gen_reset(zb_gen *s) {
    for (int l = 0; l < s->n_layers; l++) s->be->zero(s->be, s->cache[l], (size_t)s->cache_esize[l] * s->cache_floats[l]);
    for (int b = 0; b < s->B; b++) s->pos[b] = 0;
}

void zb_gen_reset_seq(zb_gen *s, int b) {
    if (b < 0 || b >= s->B) return;
    const zb_backend *be = s->be;
    /* every layer's cache is [B, per-sequence floats] (K and V halves for attention) */
    for (int l = 0; l < s->n_layers; l++) {
        size_t per = s->cache_floats[l] / (size_t)s->B, es = (size_t)s->cache_esize[l];
        char *c0 = (char *)s->cache[l];
        if (s->kinds[l] == ZB_LAYER_ATTN) {
            size_t half = per / 2, Bh = (size_t)s->B * half;
            be->zero(be, c0 + (size_t)b * half * es, es * half);
            be->zero(be, c0 + (Bh + (size_t)b * half) * es, es * half);
        } else {
            be->zero(be, c0 + (size_t)b * per * es, es * per);
        }
    }
    s->pos[b] = 0;
}

void zb_gen_fill_synthetic(zb_gen *s, int pos, uint64_t seed) {
    /* uniform with standard deviation 0.1, counter-based and threaded (a batch-16 8k cache of
     * the 1B teacher is 2e9 values, which a serial normal generator fills in about a minute),
     * made by the backend where the caches live */
    const zb_backend *be = s->be;
    for (int l = 0; l < s->n_layers; l++) {
        /* bf16 caches: Mamba2 states (float32 room) as bf16 pairs, valid read as float32 (the upper
         * half is the value) or as the CUDA backend's bf16 SSM state */
        int pairs = be->opts.cache_bf16 && s->cache_esize[l] == 4;
        be->fill_uniform(be, s->cache[l], s->cache_esize[l] == 2 || pairs, s->cache_floats[l] * (pairs ? 2 : 1),
                         seed * 1000003u + (uint64_t)l, 0.1732f);
    }
    for (int b = 0; b < s->B; b++) s->pos[b] = pos;
}

/* element e of layer l's cache as a pointer (the elements are float32 or bf16) */
static float *cache_at(const zb_gen *s, int l, size_t e) {
    return (float *)((char *)s->cache[l] + e * (size_t)s->cache_esize[l]);
}

/* n new tokens for each of the nb sequences seqs (rows i*n.. of x; s->seqs_dev / s->pos_dev
 * hold them on the device), sequence b at positions pos[b]..pos[b]+n-1, against its rows of
 * the K/V cache. */
/* nw: the o projection with the residual step and the MLP's norm (linear_add_rmsnorm: x += out,
 * s->ln = RMSNorm(x) nw); NULL: the projection only */
static void attn_step(const zb_model *m, const zb_block *w, zb_gen *s, int l, int nb,
                      const float *x, float *out, int n, const float *nw) {
    const zb_config *c = &m->cfg;
    const zb_backend *be = m->be;
    int N = nb * n, d = c->d_model, hd = c->head_dim;
    int qd = c->n_heads * hd, kd = c->n_kv_heads * hd;
    float *q = s->scratch, *k = q + (size_t)N * qd, *v = k + (size_t)N * kd, *att = v + (size_t)N * kd;
    float *sc = s->scratch + (size_t)s->B * s->chunk * (2 * qd + 2 * kd);   /* after the largest q, k, v, att */
    be->linear_forward3(be, q, k, v, x, w->lin.wq, w->lin.wk, w->lin.wv, N, d, qd, kd, kd);
    be->attention_step(be, &m->rope, att, q, k, v, s->cache[l], cache_at(s, l, (size_t)s->B * s->max_T * kd), s->max_T,
                       s->seqs_dev, s->pos_dev, nb, n, c->n_heads, c->n_kv_heads, hd, sc);
    if (nw) be->linear_add_rmsnorm(be, out, att, w->lin.wo, N, qd, d, s->x, s->ln, nw, c->rms_eps);
    else be->linear_forward(be, out, att, w->lin.wo, N, qd, d);
}

/* PP generation: the residual [N, d] of the chunk goes point-to-point from stage s to s+1
 * (same TP coordinate, over the PP group; replicated over TP). Blocking: the stages run the
 * chunk one after the other. A failure stops every rank (like the TP hooks). */
#define ZB_PP_GEN_TAG 7301
static void pp_gen_xfer(const zb_model *m, float *x, size_t n, int send) {
    const zb_tp *tp = m->tp;
    int rc = send ? zb_comm_send(tp->comm, ZB_GROUP_PP, x, n, ZB_CT_F32, tp->pp_rank + 1, ZB_PP_GEN_TAG)
                  : zb_comm_recv(tp->comm, ZB_GROUP_PP, x, n, ZB_CT_F32, tp->pp_rank - 1, ZB_PP_GEN_TAG);
    if (rc) {
        zb_fail_prefix(rc, send ? "sending the residual" : "receiving the residual");
        zb_comm_die(tp->comm, "pipeline generation");
    }
}

const char *const zb_prof_names[ZB_PROF_N] = {"embed", "attention", "mla", "mamba2", "mlp", "head", "other"};

/* profiling: the time since the last mark goes to part k (nothing when s->profile is off) */
static inline void prof_mark(zb_gen *s, double *t, int k) {
    if (!s->profile) return;
    s->be->sync(s->be);   /* a device backend runs asynchronously */
    double now = zb_now();
    s->prof[k] += now - *t;
    *t = now;
}

/* Prefill: how many sequences from seqs[i] on one mixer call takes. The step entries take B
 * sequences whose caches follow one another, so a run of consecutive ids; a device backend
 * takes the whole run, the CPU one sequence at a time (its scratch is sized for one). */
static int prefill_run(const zb_backend *be, const int *seqs, int i, int nb) {
    int k = 1;
    if (!be->host_memory)
        while (i + k < nb && seqs[i + k] == seqs[i] + k) k++;
    return k;
}

/* TP on a device, greedy picks only (zb_gen.picks_only): zb_tp_greedy_picks, not the logits */
static int tp_pairs(const zb_model *m, const zb_gen *s) { return s->greedy && s->picks_only && s->ids_host && m->tp->size > 1; }

/* The full logits [B, V] where the head's backend has them (for the greedy pick there): the
 * head's output, or under TP on a device the gathered [tp][B][V/tp] when that is [B][V] (one
 * row or one rank); NULL otherwise (the rows are put in order on the host). */
static const float *dev_logits(const zb_model *m, const zb_gen *s, int B) {
    if (!m->tp) return s->logits_dev;
    if (!s->ids_host || tp_pairs(m, s) || (m->tp->size > 1 && B > 1)) return NULL;
    return m->tp->size == 1 ? s->tp_buf : s->tp_buf + (size_t)B * m->cfg.vocab;
}

/* Whether a pipelined step of nb sequences makes its picks where the logits are (gen_layers):
 * the head's output, or under TP on a device the gathered rows (as rows [B, V] when B > 1). */
static int async_dev_picks(const zb_model *m, const zb_gen *s, int nb) {
    return dev_logits(m, s, nb) || tp_pairs(m, s) || (m->tp && s->ids_host && s->logits_rows && nb > 1);
}

/* The next pipelined step's inputs from this one's picks (backend decode_advance): the ids as the
 * embedding reads them (TP on a device: this rank's vocabulary rows) and the positions. */
static void async_advance(const zb_model *m, const zb_gen *s, int nb) {
    int64_t v0 = s->ids_host ? m->tp->vocab0 : 0;
    int V = s->ids_host ? m->cfg.vocab : zb_model_full_config(m)->vocab;
    m->be->decode_advance(m->be, s->ids, s->pos_dev, s->next_dev, s->seqs_dev, nb, v0, V);
}

/* The step's device work from the embedding to the head's logits (on the device): what a
 * decode step's recording (step_graph) holds. */
static void gen_layers(const zb_model *m, zb_gen *s, const int *seqs, int nb, int n, double *tp) {
    const zb_config *c = &m->cfg;
    const zb_backend *be = m->be;
    int B = nb, N = B * n, d = c->d_model, F = c->ffn;
    size_t Nd = (size_t)N * d;
    double t = *tp;
    int ln0 = 0, lnf = 0;   /* layer 0's norm / the final norm already made with a TP sum */
    if (m->pp_no_embed) pp_gen_xfer(m, s->x, Nd, 0);   /* PP: the previous stage's residual */
    else if (m->tp && s->ids_host) {   /* TP on a device: ids of this rank's rows (-1: zeros), summed, and layer 0's norm */
        be->embedding_forward(be, s->x, s->ids, m->w.embed_lin, N, d);
        zb_tp_sum_add_rmsnorm(m->tp, be, s->x, s->x, s->ln, m->w.blocks[0].attn_norm, N, d, c->rms_eps, 0);
        ln0 = 1;
    } else if (m->tp) zb_tp_embedding_forward(m, s->x, s->ids, N);   /* TP: vocab-parallel + all-reduce */
    else be->embedding_forward(be, s->x, s->ids, m->w.embed_lin, N, d);   /* f32 or bf16 rows */
    prof_mark(s, &t, ZB_PROF_EMBED);
    for (int l = 0; l < c->n_layers; l++) {
        const zb_block *w = &m->w.blocks[l];
        if (l == 0 && !ln0) {   /* later layers' norm comes with the previous residual step */
            be->rmsnorm_forward(be, s->ln, NULL, s->x, w->attn_norm, N, d, c->rms_eps);
            prof_mark(s, &t, ZB_PROF_OTHER);
        }
        /* one GPU: the projections that end the mixer and the MLP make the residual step and the
         * next norm too (backend linear_add_rmsnorm; the same bits as the separate calls) */
        int normed = !m->tp && c->kinds[l] == ZB_LAYER_ATTN;
        if (c->kinds[l] == ZB_LAYER_ATTN) attn_step(m, w, s, l, nb, s->ln, s->mo, n, normed ? w->mlp_norm : NULL);
        else if (c->kinds[l] == ZB_LAYER_MLA) {
            size_t per = zb_mla_cache_floats(&c->mla, 1, s->max_T);   /* one sequence's rows */
            if (n == 1)   /* decode: the projections once for all sequences */
                be->mla_decode_seqs(be, &c->mla, d, c->rms_eps, &w->mla, &w->mla_lin, &m->rope_mla, s->ln, s->mo,
                                    s->cache[l], per, s->max_T, s->seqs_dev, s->pos_dev, nb, s->scratch);
            else
                for (int i = 0, k; i < nb; i += k) {   /* runs of consecutive sequences (k of them) */
                    k = prefill_run(be, seqs, i, nb);
                    be->mla_step(be, &c->mla, d, c->rms_eps, &w->mla, &w->mla_lin, &m->rope_mla,
                                 s->ln + (size_t)i * n * d, s->mo + (size_t)i * n * d,
                                 cache_at(s, l, (size_t)seqs[i] * per), s->max_T, s->pos_dev + seqs[i], n, k,
                                 s->scratch);
                }
        } else {
            size_t per = zb_mamba2_state_floats(&c->mamba);
            if (n == 1)   /* decode: in_proj / out_proj once for all sequences */
                be->mamba2_decode_seqs(be, &c->mamba, d, c->rms_eps, &w->mamba, &w->mamba_lin, s->ln, s->mo,
                                       s->cache[l], s->seqs_dev, nb, s->scratch);
            else
                for (int i = 0, k; i < nb; i += k) {
                    k = prefill_run(be, seqs, i, nb);
                    be->mamba2_step(be, &c->mamba, d, c->rms_eps, &w->mamba, &w->mamba_lin,
                                    s->ln + (size_t)i * n * d, s->mo + (size_t)i * n * d,
                                    s->cache[l] + (size_t)seqs[i] * per, n, k, s->scratch);
                }
        }
        prof_mark(s, &t, c->kinds[l] == ZB_LAYER_ATTN ? ZB_PROF_ATTN : c->kinds[l] == ZB_LAYER_MLA ? ZB_PROF_MLA
                                                                                                 : ZB_PROF_MAMBA);
        /* the residual and the MLP's norm (TP: mixer out is row-parallel, summed first) */
        if (m->tp) zb_tp_sum_add_rmsnorm(m->tp, be, s->mo, s->x, s->ln, w->mlp_norm, N, d, c->rms_eps, 1);
        else if (!normed) be->add_rmsnorm(be, s->x, s->mo, s->ln, w->mlp_norm, N, d, c->rms_eps);
        prof_mark(s, &t, ZB_PROF_OTHER);
        be->swiglu_linear_forward(be, s->g, s->u, s->ln, w->lin.w_gate, w->lin.w_up, N, d, F);
        normed = !m->tp && l + 1 < c->n_layers;
        if (normed)
            be->linear_add_rmsnorm(be, s->mo, s->g, w->lin.w_down, N, F, d, s->x, s->ln, m->w.blocks[l + 1].attn_norm,
                                   c->rms_eps);
        else be->linear_forward(be, s->mo, s->g, w->lin.w_down, N, F, d);
        prof_mark(s, &t, ZB_PROF_MLP);
        /* the residual, and the next layer's norm (TP: down_proj is row-parallel, summed first);
         * TP decode: the last layer's with the final norm (the head's input is then x itself) */
        if (m->tp && l + 1 < c->n_layers)
            zb_tp_sum_add_rmsnorm(m->tp, be, s->mo, s->x, s->ln, m->w.blocks[l + 1].attn_norm, N, d, c->rms_eps, 1);
        else if (m->tp && n == 1 && !m->pp_no_head &&
                 zb_tp_fused_sum_add_rmsnorm(m->tp, s->mo, s->x, s->lnf, m->w.final_norm, N, d, c->rms_eps, 1))
            lnf = 1;
        else if (m->tp) {
            zb_tp_allreduce(m->tp, s->mo, Nd);
            be->add(be, s->x, s->x, s->mo, Nd);
        } else if (!normed) be->add(be, s->x, s->x, s->mo, Nd);   /* the last layer: the head makes the final norm */
        prof_mark(s, &t, ZB_PROF_OTHER);
    }
    if (!m->pp_no_head) {   /* the head, on the last new token of each sequence */
        const float *last = s->x + (size_t)(n - 1) * d;
        if (n > 1) {   /* gather row n-1 of each sequence */
            be->copy_2d(be, s->lnf, (size_t)d, last, (size_t)n * d, (size_t)B, (size_t)d);
            last = s->lnf;
        }
        if (!lnf) be->rmsnorm_forward(be, s->lnf, NULL, last, m->w.final_norm, B, d, c->rms_eps);
        be->linear_forward(be, m->tp ? s->tp_buf : s->logits_dev, s->lnf, m->w.lm_head_lin, B, d, c->vocab);
        /* TP on a device, in the step (and its recording): the picks' pairs, or the slices [tp][B][V/tp] */
        if (tp_pairs(m, s))
            zb_tp_greedy_picks(m->tp, be, s->next_dev, s->tp_buf, (int *)(s->tp_buf + (size_t)B * c->vocab), B, c->vocab);
        else if (m->tp && s->ids_host && m->tp->size > 1)
            zb_tp_gather_slices(m->tp, s->tp_buf, s->tp_buf + (size_t)B * c->vocab, (size_t)B * c->vocab);
        const float *lg = dev_logits(m, s, B);
        int V = zb_model_full_config(m)->vocab;
        int pairs = tp_pairs(m, s);   /* the picks are in next_dev already */
        if (!lg && !pairs && s->async_step && s->logits_rows && B > 1) {
            /* a pipelined step under TP (ZB_TP_ARGMAX=0): the gathered [tp][B][V/tp] as rows
             * [B][V], on the device */
            for (int r = 0; r < m->tp->size; r++)
                be->copy_2d(be, s->logits_rows + (size_t)r * c->vocab, (size_t)V,
                            s->tp_buf + (size_t)B * c->vocab * (1 + r), (size_t)c->vocab, (size_t)B, (size_t)c->vocab);
            lg = s->logits_rows;
        }
        if (s->greedy && lg) be->argmax_rows(be, s->next_dev, lg, B, V);   /* B ids, not B x V */
        if (s->async_step && (lg || pairs)) async_advance(m, s, B);
    }
    *tp = t;
}

/* A decode step may be recorded once and replayed (one launch on a GPU): one token per sequence,
 * bf16 weights (no converted weight copies), not while profiling; with attention layers at most
 * 8 sequences (the GEMV products). The MLA / Mamba2 decode entries read positions and slots on
 * the device and size their products by max_T, so a hybrid's step replays at any batch. Under TP
 * (no PP) when the group's collectives can be recorded (NCCL: comm.h graph_groups): the step's
 * all-reduces and the logits gather are recorded with it, and replayed by every rank. */
static int gen_graph_ok(const zb_model *m, const zb_gen *s, int nb, int n) {
    const zb_config *c = &m->cfg;
    int tp_ok = !m->tp || (m->tp->pp_size == 1 && s->ids_host &&
                           (m->tp->size == 1 || (m->tp->comm && (m->tp->comm->graph_groups >> ZB_GROUP_TP & 1))));
    if (s->graph_off || n != 1 || !tp_ok || m->pp_no_embed || m->pp_no_head || s->profile ||
        m->wdtype != ZB_WEIGHTS_BF16 || m->be->host_memory)
        return 0;
    for (int l = 0; l < c->n_layers; l++)
        if (c->kinds[l] == ZB_LAYER_ATTN && nb > 8) return 0;
    return 1;
}

/* The step's layers (gen_layers) replayed from its recording, recorded, or run call by call. */
static void run_layers(const zb_model *m, zb_gen *s, const int *seqs, int nb, int n, double *t) {
    const zb_backend *be = m->be;
    /* the recording holds the argmax or not, the TP picks' pairs or the logits, the pipelined
     * step's tail or not */
    long long key = 8LL * nb + 4 * (s->async_step != 0) + 2 * tp_pairs(m, s) + (s->greedy != 0);
    if (!gen_graph_ok(m, s, nb, n)) gen_layers(m, s, seqs, nb, n, t);
    else if (be->step_graph(be, &s->graph, ZB_GRAPH_REPLAY, key)) {
    } else if (s->graph_warm == key && m->tp && m->tp->size > 1) {
        /* TP: a recording holds collectives: every rank of the group launches it, or none does
         * (NCCL: being recorded is a collective property). Each rank records its step without
         * running it, they agree, then all replay, or all drop theirs and run it call by call. */
        int ok = be->step_graph(be, &s->graph, ZB_GRAPH_BEGIN, key);
        if (ok) {
            gen_layers(m, s, seqs, nb, n, t);
            ok = be->step_graph(be, &s->graph, ZB_GRAPH_END_HOLD, key);
        }
        if (!zb_tp_all(m->tp, ok) || !be->step_graph(be, &s->graph, ZB_GRAPH_REPLAY, key)) {
            be->step_graph(be, &s->graph, ZB_GRAPH_FREE, 0);
            s->graph_off = 1;
            gen_layers(m, s, seqs, nb, n, t);
        }
    } else if (s->graph_warm == key && be->step_graph(be, &s->graph, ZB_GRAPH_BEGIN, key)) {
        /* the same step ran once without recording (scratch sizes settled): record it */
        gen_layers(m, s, seqs, nb, n, t);
        if (!be->step_graph(be, &s->graph, ZB_GRAPH_END, key)) {
            s->graph_off = 1;
            gen_layers(m, s, seqs, nb, n, t);
        }
    } else {
        gen_layers(m, s, seqs, nb, n, t);
        s->graph_warm = key;
    }
}

/* The step's results on the host: the greedy picks in s->next, else the logits in s->logits. */
static void step_results(const zb_model *m, zb_gen *s, int B) {
    const zb_config *c = &m->cfg;
    const zb_backend *be = m->be;
    if (s->greedy && (dev_logits(m, s, B) || tp_pairs(m, s))) {
        be->to_host(be, s->next, s->next_dev, sizeof(int) * B);   /* the picks only */
    } else if (m->tp) {
        if (s->ids_host)   /* TP on a device: gathered in the step */
            zb_tp_logits_to_host(m->tp, be, m->tp->size == 1 ? s->tp_buf : s->tp_buf + (size_t)B * c->vocab,
                                 s->logits_stage, s->logits, B, c->vocab);
        else zb_tp_gather_vocab(m->tp, s->tp_buf, s->tp_buf + (size_t)B * c->vocab, s->logits, B, c->vocab);
        if (s->greedy)   /* the gathered rows are on the host */
            zb_backend_cpu()->argmax_rows(zb_backend_cpu(), s->next, s->logits, B, zb_model_full_config(m)->vocab);
    } else {
        be->to_host(be, s->logits, s->logits_dev, sizeof(float) * B * c->vocab);
    }
}

static void stepq_op(zb_gen *s, int op) {
    if (s->be->step_queue(s->be, &s->stepq, op, NULL, NULL, 0) < 0) s->time_steps = 0;   /* no memory: untimed */
}

static void gen_chunk(const zb_model *m, zb_gen *s, const int *seqs, int nb, int n) {
    const zb_backend *be = m->be;
    int N = nb * n;
    double t = s->profile ? zb_now() : 0;
    /* the sequences and their positions, for the entries that index caches by them (before any
     * recording: the recorded step reads them where they are) */
    be->to_device(be, s->seqs_dev, seqs, sizeof(int) * nb);
    be->to_device(be, s->pos_dev, s->pos, sizeof(int) * s->B);
    if (s->time_steps) stepq_op(s, ZB_STEPQ_START);
    run_layers(m, s, seqs, nb, n, &t);
    if (s->time_steps) stepq_op(s, ZB_STEPQ_STOP);
    if (m->pp_no_head) {   /* PP: not the last stage: the residual goes on, no logits */
        pp_gen_xfer(m, s->x, (size_t)N * m->cfg.d_model, 1);
        for (int i = 0; i < nb; i++) s->pos[seqs[i]] += n;
        return;
    }
    step_results(m, s, nb);
    prof_mark(s, &t, ZB_PROF_HEAD);
    for (int i = 0; i < nb; i++) s->pos[seqs[i]] += n;
}

void zb_gen_logits_host(const zb_model *m, zb_gen *s, int nb) {
    const float *lg = dev_logits(m, s, nb);
    if (s->greedy && lg && lg != s->logits)
        m->be->to_host(m->be, s->logits, lg, sizeof(float) * (size_t)nb * zb_model_full_config(m)->vocab);
}

/* nb distinct sequences in [0, B), each with room for n more tokens */
static int check_seqs(const zb_gen *s, const int *seqs, int nb, int n) {
    if (n <= 0) return zb_fail(ZB_EARG, "generation step with %d tokens", n);
    if (nb <= 0 || nb > s->B) return zb_fail(ZB_EARG, "generation step for %d of %d sequences", nb, s->B);
    for (int i = 0; i < nb; i++) {
        int b = seqs[i];
        if (b < 0 || b >= s->B) return zb_fail(ZB_EARG, "generation step: sequence %d outside [0, %d)", b, s->B);
        for (int j = 0; j < i; j++)
            if (seqs[j] == b) return zb_fail(ZB_EARG, "generation step: sequence %d given twice", b);
        if (s->pos[b] + n > s->max_T)
            return zb_fail(ZB_EARG, "context full: sequence %d has %d + %d tokens, more than the cache of %d",
                           b, s->pos[b], n, s->max_T);
    }
    return ZB_OK;
}

/* tokens t0.. t0+nc of each of the nb sequences' ids [nb, n] to s->ids (TP on a device: this
 * rank's vocabulary rows, -1 for the others', one copy) */
static void upload_ids(const zb_model *m, zb_gen *s, const int *ids, int nb, int n, int t0, int nc) {
    if (s->ids_host) {
        zb_tp_local_ids(m->tp, m->cfg.vocab, ids + t0, n, nb, nc, s->ids_host);
        s->be->to_device(s->be, s->ids, s->ids_host, sizeof(int) * (size_t)nb * nc);
    } else if (nc == n)   /* the whole call in one chunk (decode): the ids are one block, one copy */
        s->be->to_device(s->be, s->ids, ids, sizeof(int) * nb * n);
    else
        for (int i = 0; i < nb; i++)
            s->be->to_device(s->be, s->ids + (size_t)i * nc, ids + (size_t)i * n + t0, sizeof(int) * nc);
}

int zb_gen_step_seqs(const zb_model *m, zb_gen *s, const int *seqs, int nb, const int *ids, int n) {
    if (nb > 0 && nb <= s->B && !seqs) {
        for (int i = 0; i < nb; i++) s->seqs[i] = i;
        seqs = s->seqs;
    }
    ZB_TRY(check_seqs(s, seqs, nb, n));
    if (s->pending) return zb_fail(ZB_EARG, "generation step while %d pipelined steps are pending", s->pending);
    for (int t0 = 0; t0 < n; t0 += s->chunk) {
        int nc = n - t0 < s->chunk ? n - t0 : s->chunk;
        upload_ids(m, s, ids, nb, n, t0, nc);
        gen_chunk(m, s, seqs, nb, nc);
    }
    return ZB_OK;
}

/* ---- pipelined greedy decode ------------------------------------------------------------- */

int zb_gen_async_ok(const zb_model *m, const zb_gen *s) {
    if (!s->greedy || s->profile || m->pp_no_embed || m->pp_no_head || (m->tp && m->tp->pp_size > 1)) return 0;
    /* the picks where the logits are for every batch up to B (one row: the head's or the
     * gathered logits directly), or on the host for a host-memory backend */
    return m->be->host_memory || (async_dev_picks(m, s, 1) && (s->B == 1 || async_dev_picks(m, s, 2)));
}

int zb_gen_decode_launch(const zb_model *m, zb_gen *s, const int *seqs, int nb, const int *ids) {
    const zb_backend *be = m->be;
    if (!s->greedy) return zb_fail(ZB_EARG, "pipelined decode: greedy picks only");
    if (s->pending >= 2) return zb_fail(ZB_EARG, "pipelined decode: %d steps pending already", s->pending);
    if (ids) {   /* new sequences: their tokens, positions and slots from the host */
        if (s->pending) return zb_fail(ZB_EARG, "pipelined decode: new sequences while %d steps are pending", s->pending);
        ZB_TRY(check_seqs(s, seqs, nb, 1));
        memcpy(s->aseqs, seqs, sizeof(int) * nb);
        s->anb = nb;
        upload_ids(m, s, ids, nb, 1, 0, 1);
        be->to_device(be, s->seqs_dev, seqs, sizeof(int) * nb);
        be->to_device(be, s->pos_dev, s->pos, sizeof(int) * s->B);
    } else {   /* the same sequences, fed the picks of the step before on the backend */
        if (!s->anb) return zb_fail(ZB_EARG, "pipelined decode: no step to continue");
        ZB_TRY(check_seqs(s, s->aseqs, s->anb, 1));
    }
    nb = s->anb;
    double t = 0;
    if (s->time_steps) stepq_op(s, ZB_STEPQ_START);
    s->async_step = 1;
    run_layers(m, s, s->aseqs, nb, 1, &t);   /* ends with decode_advance where the picks are made */
    s->async_step = 0;
    if (!async_dev_picks(m, s, nb)) {   /* a host-memory backend under TP: the picks on the host */
        step_results(m, s, nb);
        be->to_device(be, s->next_dev, s->next, sizeof(int) * nb);
        async_advance(m, s, nb);
    }
    if (s->time_steps) stepq_op(s, ZB_STEPQ_STOP);
    if (be->step_queue(be, &s->stepq, ZB_STEPQ_FETCH, NULL, s->next_dev, sizeof(int) * nb) < 0) return ZB_ENOMEM;
    s->pending++;
    for (int i = 0; i < nb; i++) s->pos[s->aseqs[i]] += 1;
    return ZB_OK;
}

int zb_gen_decode_wait(const zb_model *m, zb_gen *s, int *next) {
    if (!s->pending) return zb_fail(ZB_EARG, "pipelined decode: no step pending");
    if (m->be->step_queue(m->be, &s->stepq, ZB_STEPQ_WAIT, next, NULL, 0) < 0) return ZB_EARG;
    s->pending--;
    return ZB_OK;
}

double zb_gen_device_time(zb_gen *s) {
    if (!s->stepq) return 0;
    double t = s->be->step_queue(s->be, &s->stepq, ZB_STEPQ_TIME, NULL, NULL, 0);
    return t > 0 ? t : 0;
}

int zb_gen_step(const zb_model *m, zb_gen *s, const int *ids, int n) {
    return zb_gen_step_seqs(m, s, NULL, s->B, ids, n);
}
