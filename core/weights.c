/* weights.c — a model's parameter buffer: the layout of its named tensors (HF names and
 * shapes from tensor_names.h) and the views bound to them, allocation on the host, the move to
 * another backend, loading from a store, random init. The computation is in model.c. See
 * model.h. */
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store.h"
#include "tensor_names.h"
#include "shard.h"   /* zb_tp_free (m->tp != NULL), SPEC §9 */

/* ---- parameter layout ------------------------------------------------------------------ */

/* Where a parameter's view lives: a field of zb_weights (layer < 0) or of zb_block; lin is
 * the field of its tagged view (zb_wt) for matrices, NO_LIN otherwise. */
typedef struct { int layer; size_t field, lin; } slot_t;

#define BF(f) offsetof(zb_block, f)
#define WF(f) offsetof(zb_weights, f)
#define NO_LIN ((size_t)-1)

/* base: the f32 buffer, base16 the bf16 one (params flagged bf16 get a NULL float* view and a
 * bf16 tagged view). */
static void bind(const zb_model *m, const slot_t *slots, zb_weights *w, float *base, uint16_t *base16) {
    for (int i = 0; i < m->n_params; i++) {
        const slot_t *s = &slots[i];
        const zb_param *p = &m->params[i];
        char *obj = s->layer < 0 ? (char *)w : (char *)&w->blocks[s->layer];
        float *f = p->bf16 ? NULL : base + p->offset;
        *(float **)(obj + s->field) = f;
        if (s->lin != NO_LIN)
            *(zb_wt *)(obj + s->lin) = p->bf16 ? zb_wt_of_bf16(base16 + p->offset) : zb_wt_of_f32(f);
    }
    if (m->cfg.tie_embeddings) { w->lm_head = w->embed; w->lm_head_lin = w->embed_lin; }
    for (int l = 0; l < m->cfg.n_layers; l++) w->blocks[l].kind = m->cfg.kinds[l];
}

/* The tagged view of the matrix whose float* view is `field` (NO_LIN for 1-D / conv). */
static size_t lin_of(int layer, size_t field) {
    static const size_t global[][2] = {{WF(embed), WF(embed_lin)}, {WF(lm_head), WF(lm_head_lin)}};
    static const size_t block[][2] = {
        {BF(wq), BF(lin.wq)}, {BF(wk), BF(lin.wk)}, {BF(wv), BF(lin.wv)}, {BF(wo), BF(lin.wo)},
        {BF(w_gate), BF(lin.w_gate)}, {BF(w_up), BF(lin.w_up)}, {BF(w_down), BF(lin.w_down)},
        {BF(mla.q_proj), BF(mla_lin.q_proj)}, {BF(mla.q_a_proj), BF(mla_lin.q_a_proj)},
        {BF(mla.q_b_proj), BF(mla_lin.q_b_proj)}, {BF(mla.kv_a_proj), BF(mla_lin.kv_a_proj)},
        {BF(mla.kv_b_proj), BF(mla_lin.kv_b_proj)}, {BF(mla.o_proj), BF(mla_lin.o_proj)},
        {BF(mamba.in_proj), BF(mamba_lin.in_proj)}, {BF(mamba.out_proj), BF(mamba_lin.out_proj)}};
    if (layer < 0) {
        for (size_t i = 0; i < sizeof global / sizeof global[0]; i++)
            if (global[i][0] == field) return global[i][1];
        return NO_LIN;
    }
    for (size_t i = 0; i < sizeof block / sizeof block[0]; i++)
        if (block[i][0] == field) return block[i][1];
    return NO_LIN;
}

int zb_wdtype_parse(const char *s, zb_wdtype *out, const char *what) {
    if (!strcmp(s, "f32")) *out = ZB_WEIGHTS_F32;
    else if (!strcmp(s, "bf16")) *out = ZB_WEIGHTS_BF16;
    else return zb_fail(ZB_EARG, "%s must be f32 or bf16, not '%s'", what, s);
    return ZB_OK;
}

const char *zb_wdtype_name(zb_wdtype t) { return t == ZB_WEIGHTS_BF16 ? "bf16" : "f32"; }

/* The view a tensor name binds to: the names and shapes come from zb_expected_tensors (the
 * one enumeration shared with import), this maps each to its field. */
static int field_of(const zb_tensor_spec *t, zb_layer_kind kind, size_t *field) {
    static const struct { const char *suffix; size_t field; } global[] = {
        {"model.embed_tokens.weight", WF(embed)}, {"model.norm.weight", WF(final_norm)},
        {"lm_head.weight", WF(lm_head)}};
    static const struct { const char *suffix; size_t field; } block[] = {
        {"input_layernorm.weight", BF(attn_norm)}, {"post_attention_layernorm.weight", BF(mlp_norm)},
        {"self_attn.k_proj.weight", BF(wk)}, {"self_attn.v_proj.weight", BF(wv)},
        {"self_attn.q_a_proj.weight", BF(mla.q_a_proj)}, {"self_attn.q_a_layernorm.weight", BF(mla.q_a_norm)},
        {"self_attn.q_b_proj.weight", BF(mla.q_b_proj)},
        {"self_attn.kv_a_proj_with_mqa.weight", BF(mla.kv_a_proj)},
        {"self_attn.kv_a_layernorm.weight", BF(mla.kv_a_norm)},
        {"self_attn.kv_b_proj.weight", BF(mla.kv_b_proj)},
        {"mamba.in_proj.weight", BF(mamba.in_proj)}, {"mamba.conv1d.weight", BF(mamba.conv_w)},
        {"mamba.conv1d.bias", BF(mamba.conv_b)}, {"mamba.dt_bias", BF(mamba.dt_bias)},
        {"mamba.A_log", BF(mamba.A_log)}, {"mamba.D", BF(mamba.D)},
        {"mamba.norm.weight", BF(mamba.norm_w)}, {"mamba.out_proj.weight", BF(mamba.out_proj)},
        {"mlp.gate_proj.weight", BF(w_gate)}, {"mlp.up_proj.weight", BF(w_up)},
        {"mlp.down_proj.weight", BF(w_down)}};
    if (t->layer < 0) {
        for (size_t i = 0; i < sizeof global / sizeof global[0]; i++)
            if (!strcmp(t->name, global[i].suffix)) { *field = global[i].field; return ZB_OK; }
        return zb_fail(ZB_EFORMAT, "no view for tensor '%s'", t->name);
    }
    const char *sfx = strchr(t->name + strlen("model.layers."), '.') + 1;
    /* q_proj and o_proj exist in both attention kinds */
    if (!strcmp(sfx, "self_attn.q_proj.weight")) { *field = kind == ZB_LAYER_MLA ? BF(mla.q_proj) : BF(wq); return ZB_OK; }
    if (!strcmp(sfx, "self_attn.o_proj.weight")) { *field = kind == ZB_LAYER_MLA ? BF(mla.o_proj) : BF(wo); return ZB_OK; }
    for (size_t i = 0; i < sizeof block / sizeof block[0]; i++)
        if (!strcmp(sfx, block[i].suffix)) { *field = block[i].field; return ZB_OK; }
    return zb_fail(ZB_EFORMAT, "no view for tensor '%s'", t->name);
}

/* PP: whether this stage holds the non-layer tensor `name` (see zb_model.pp_first). */
static int zb_stage_holds(const zb_model *m, const char *name) {
    if (!strcmp(name, "model.embed_tokens.weight"))
        return !m->pp_no_embed || (!m->pp_no_head && m->cfg.tie_embeddings);
    return !m->pp_no_head;   /* model.norm.weight, lm_head.weight */
}

static int build_layout(zb_model *m, slot_t **slots_out, zb_wdtype wt) {
    zb_tensor_spec *spec = NULL;
    int n = 0;
    ZB_TRY(zb_expected_tensors(&m->cfg, &spec, &n));
    m->params = zb_calloc(n, sizeof(zb_param), "parameter list");
    slot_t *slots = zb_calloc(n, sizeof(slot_t), "parameter list");
    int rc = (!m->params || !slots) ? ZB_ENOMEM : ZB_OK;
    size_t off = 0, off16 = 0;
    int kept = 0;   /* PP: a stage keeps only the tensors it holds */
    for (int j = 0; j < n && !rc; j++) {
        const zb_tensor_spec *t = &spec[j];
        if (t->layer < 0 && !zb_stage_holds(m, t->name)) continue;   /* PP */
        int i = kept++;
        zb_param *p = &m->params[i];
        if (t->layer >= 0 && m->pp_first)   /* PP: the global layer index in the name */
            snprintf(p->name, sizeof p->name, "model.layers.%d.%s", t->layer + m->pp_first,
                     strchr(t->name + strlen("model.layers."), '.') + 1);
        else snprintf(p->name, sizeof p->name, "%s", t->name);
        p->ndim = t->ndim;
        p->numel = 1;
        for (int k = 0; k < t->ndim; k++) { p->shape[k] = t->shape[k]; p->numel *= (size_t)t->shape[k]; }
        p->no_decay = t->ndim == 1;   /* norms, biases, A_log, D, dt_bias */
        p->layer = t->layer;
        p->bf16 = wt == ZB_WEIGHTS_BF16 && t->ndim == 2;   /* the matrices */
        p->offset = p->bf16 ? off16 : off;
        if (p->bf16) off16 += p->numel;
        else off += p->numel;
        slots[i].layer = t->layer;
        rc = field_of(t, t->layer >= 0 ? m->cfg.kinds[t->layer] : ZB_LAYER_ATTN, &slots[i].field);
        if (!rc) slots[i].lin = lin_of(t->layer, slots[i].field);
        if (!rc && p->bf16 && slots[i].lin == NO_LIN)
            rc = zb_fail(ZB_EFORMAT, "'%s': a matrix without a tagged view cannot be held in bf16", t->name);
    }
    free(spec);
    if (rc) { free(slots); return rc; }
    m->n_params = kept;
    m->n_floats = off;
    m->n_bf16 = off16;
    m->wdtype = wt;
    *slots_out = slots;
    return ZB_OK;
}

int zb_model_init(zb_model *m, const zb_config *cfg) { return zb_model_init_ex(m, cfg, ZB_WEIGHTS_F32); }

int zb_model_init_ex(zb_model *m, const zb_config *cfg, zb_wdtype wt) {
    return zb_model_init_stage(m, cfg, wt, 0, 0, 0);
}

int zb_model_init_stage(zb_model *m, const zb_config *cfg, zb_wdtype wt, int first, int no_embed, int no_head) {
    memset(m, 0, sizeof *m);
    m->cfg = *cfg;
    if (m->cfg.mla.rope.theta == 0) m->cfg.mla.rope = cfg->rope;   /* unset: the model's (config.h) */
    m->pp_first = first;   /* PP: which part of the stack this model holds (all of it: 0, 0, 0) */
    m->pp_no_embed = no_embed;
    m->pp_no_head = no_head;
    ZB_TRY(zb_config_validate(cfg, cfg->model_type));
    slot_t *slots = NULL;
    ZB_TRY(build_layout(m, &slots, wt));
    m->be = zb_backend_cpu();   /* built, loaded and initialised on the host (zb_model_set_backend moves it) */
    m->data = m->be->alloc(m->be, m->n_floats * sizeof(float), "model parameters");
    if (m->n_bf16) m->data16 = m->be->alloc(m->be, m->n_bf16 * sizeof(uint16_t), "model parameters (bf16)");
    m->w.blocks = zb_calloc(cfg->n_layers, sizeof(zb_block), "blocks");
    m->g.blocks = zb_calloc(cfg->n_layers, sizeof(zb_block), "blocks");
    if (!m->data || (m->n_bf16 && !m->data16) || !m->w.blocks || !m->g.blocks) {
        free(slots);
        zb_model_free(m);
        return ZB_ENOMEM;
    }
    bind(m, slots, &m->w, m->data, m->data16);
    m->slots = slots;   /* kept to bind the gradient views in zb_model_alloc_grad */
    if (cfg->n_heads > 0 && cfg->head_dim > 0 && cfg->head_dim <= ZB_ROPE_MAX_DIM)
        zb_rope_init(&m->rope, cfg->head_dim, &cfg->rope);
    /* MLA rotates its rope dims with its own rope (the release: YaRN), SPEC §3 */
    if (cfg->mla.qk_rope > 0) zb_rope_init(&m->rope_mla, cfg->mla.qk_rope, &m->cfg.mla.rope);
    return ZB_OK;
}

void zb_model_free(zb_model *m) {
    free(m->params);
    if (m->be) {
        m->be->free(m->be, m->data);
        m->be->free(m->be, m->data16);
        m->be->free(m->be, m->grad);
    }
    free(m->w.blocks);
    free(m->g.blocks);
    free(m->slots);
    zb_tp_free(m->tp);
    memset(m, 0, sizeof *m);
}

int zb_model_alloc_grad(zb_model *m) {
    if (m->grad) return ZB_OK;
    if (m->wdtype != ZB_WEIGHTS_F32)
        return zb_fail(ZB_EARG, "training needs float32 weights: this model holds its matrices in %s "
                       "(--weights bf16 is for inference)", zb_wdtype_name(m->wdtype));
    ZB_BE_ALLOC(m->be, m->grad, m->n_floats, "parameter gradients");
    bind(m, m->slots, &m->g, m->grad, NULL);
    return ZB_OK;
}

void zb_model_zero_grad(zb_model *m) {
    if (m->grad) m->be->zero(m->be, m->grad, sizeof(float) * m->n_floats);
}

/* n bytes from memory of backend a to memory of backend b (staged through the host when
 * neither is host memory). */
static int copy_across(const zb_backend *a, const zb_backend *b, void *dst, const void *src, size_t n) {
    if (a->host_memory) b->to_device(b, dst, src, n);
    else if (b->host_memory) a->to_host(a, dst, src, n);
    else {
        void *h = zb_malloc(n, "host staging buffer");
        if (!h) return ZB_ENOMEM;
        a->to_host(a, h, src, n);
        b->to_device(b, dst, h, n);
        free(h);
    }
    return ZB_OK;
}

int zb_model_set_backend(zb_model *m, const zb_backend *be) {
    const zb_backend *old = m->be;
    if (!be) return zb_fail(ZB_EARG, "no backend");
    if (be->host_memory && old->host_memory) { m->be = be; return ZB_OK; }   /* one memory: the table only */
    void *src[3] = {m->data, m->data16, m->grad}, *dst[3] = {NULL, NULL, NULL};
    size_t bytes[3] = {m->n_floats * sizeof(float), m->n_bf16 * sizeof(uint16_t), m->n_floats * sizeof(float)};
    int rc = ZB_OK;
    for (int i = 0; i < 3 && !rc; i++) {   /* everything allocated first: a failure leaves m as it was */
        if (!src[i]) continue;
        dst[i] = be->alloc(be, bytes[i], "model parameters");
        if (!dst[i]) rc = ZB_ENOMEM;
    }
    for (int i = 0; i < 3 && !rc; i++)
        if (src[i]) rc = copy_across(old, be, dst[i], src[i], bytes[i]);
    for (int i = 0; i < 3; i++) {
        if (!rc) old->free(old, src[i]);
        else be->free(be, dst[i]);
    }
    if (rc) return rc;
    m->data = dst[0];
    m->data16 = dst[1];
    m->grad = dst[2];
    m->be = be;
    if (m->tp) m->tp->dev = be->host_memory ? NULL : be;   /* shard.c's staging of the losses */
    bind(m, m->slots, &m->w, m->data, m->data16);
    if (m->grad) bind(m, m->slots, &m->g, m->grad, NULL);
    return ZB_OK;
}

const zb_param *zb_model_param(const zb_model *m, const char *name) {
    for (int i = 0; i < m->n_params; i++)
        if (!strcmp(m->params[i].name, name)) return &m->params[i];
    return NULL;
}

size_t zb_model_num_params(const zb_model *m) { return m->n_floats + m->n_bf16; }

size_t zb_model_param_bytes(const zb_model *m) { return m->n_floats * sizeof(float) + m->n_bf16 * sizeof(uint16_t); }

int zb_model_check_finite(const zb_model *m, const char *src) {
    for (int i = 0; i < m->n_params; i++) {
        const zb_param *p = &m->params[i];
        size_t bad = 0, first = 0;
        for (size_t j = 0; j < p->numel; j++) {
            /* exponent all ones: inf or NaN (bf16: the top 16 bits of an f32) */
            int nf = p->bf16 ? (m->data16[p->offset + j] & 0x7f80u) == 0x7f80u : !isfinite(m->data[p->offset + j]);
            if (nf && !bad++) first = j;
        }
        if (bad)
            return zb_fail(ZB_EFORMAT, "%s: tensor '%s' holds %zu NaN / inf value%s (first at index %zu): a damaged or "
                           "diverged checkpoint", src, p->name, bad, bad == 1 ? "" : "s", first);
    }
    return ZB_OK;
}

int zb_model_load(zb_model *m, const char *path) { return zb_model_load_ex(m, path, ZB_WEIGHTS_F32); }

int zb_model_load_ex(zb_model *m, const char *path, zb_wdtype wt) {
    zb_store *st = NULL;
    ZB_TRY(zb_store_open(&st, path));
    int rc = zb_model_init_ex(m, zb_store_config(st), wt);
    if (rc) { zb_fail_prefix(rc, path); zb_store_close(st); return rc; }
    for (int i = 0; i < m->n_params && !rc; i++) {
        const zb_param *p = &m->params[i];
        rc = p->bf16 ? zb_store_read_bf16(st, p->name, m->data16 + p->offset, p->ndim, p->shape)
                     : zb_store_read(st, p->name, m->data + p->offset, p->ndim, p->shape);
        if (rc == ZB_ENOTFOUND) rc = zb_fail(ZB_ENOTFOUND, "%s: missing tensor '%s'", path, p->name);
    }
    zb_store_close(st);
    if (!rc) rc = zb_model_check_finite(m, path);
    if (rc) zb_model_free(m);
    return rc;
}

void zb_param_fill_random(const zb_param *p, float std, zb_rng *rng, float *x, size_t n) {
    if (p->ndim == 1 && strstr(p->name, "norm")) {
        for (size_t j = 0; j < n; j++) x[j] = 1.0f;
    } else if (strstr(p->name, "mamba.dt_bias")) {
        /* dt ~ log-uniform [1e-3, 1e-1]; store softplus^-1(dt) (SPEC §5) */
        for (size_t j = 0; j < n; j++) {
            double dt = exp(log(1e-3) + zb_rng_uniform(rng) * (log(1e-1) - log(1e-3)));
            x[j] = (float)(dt + log(-expm1(-dt)));
        }
    } else if (strstr(p->name, "mamba.A_log")) {
        for (size_t j = 0; j < n; j++) x[j] = logf(1.0f + 15.0f * zb_rng_uniform(rng));
    } else if (strstr(p->name, "mamba.D")) {
        for (size_t j = 0; j < n; j++) x[j] = 1.0f;
    } else if (strstr(p->name, "conv1d.bias")) {
        for (size_t j = 0; j < n; j++) x[j] = 0.0f;
    } else if (strstr(p->name, "conv1d.weight")) {
        float bound = 1.0f / sqrtf((float)p->shape[2]);
        for (size_t j = 0; j < n; j++) x[j] = bound * (2.0f * zb_rng_uniform(rng) - 1.0f);
    } else {
        for (size_t j = 0; j < n; j++) x[j] = std * zb_rng_normal(rng);
    }
}

void zb_model_init_random(zb_model *m, uint64_t seed, float std) {
    zb_rng rng;
    zb_rng_seed(&rng, seed);
    float tmp[1024];
    for (int i = 0; i < m->n_params; i++) {
        const zb_param *p = &m->params[i];
        if (!p->bf16) { zb_param_fill_random(p, std, &rng, m->data + p->offset, p->numel); continue; }
        /* the same draws, rounded to bf16: a bf16 model is the f32 one of the same seed, rounded */
        for (size_t j = 0; j < p->numel; j += 1024) {
            size_t k = p->numel - j < 1024 ? p->numel - j : 1024;
            zb_param_fill_random(p, std, &rng, tmp, k);
            zb_f32_to_bf16_n(tmp, m->data16 + p->offset + j, k);
        }
    }
}

/* ---- benchmark weights -------------------------------------------------------------------- */

/* value i of a benchmark fill: uniform on [-a, a] from stream sd */
static inline float synth(uint64_t sd, long long i, float a) { return a * (2.0f * zb_hash_uniform(sd, (uint64_t)i) - 1.0f); }

/* a tensor's stream: its full HF name hashed (FNV-1a) with the seed, so that a value does not
 * depend on which tensors a rank holds (a PP stage) or in which order */
static uint64_t synth_stream(uint64_t seed, const char *name) {
    uint64_t h = 1469598103934665603ull ^ (seed * 0x9E3779B97F4A7C15ull);
    for (const unsigned char *c = (const unsigned char *)name; *c; c++) h = (h ^ *c) * 1099511628211ull;
    return h;
}

/* Value j of every tensor is a function of the seed, the tensor's full name and j's index in
 * the FULL tensor: a TP shard (m->tp: full names, shapes and this rank's slice) or a PP stage
 * holds exactly its part of the one-rank model, so that `generate --model C.json --tp 2`
 * decodes the tokens of one GPU (cluster/gpu2-check.sh compares them). */
void zb_model_init_synthetic(zb_model *m, uint64_t seed, float std) {
    const float a = std * 1.7320508f;   /* uniform on [-a, a] has standard deviation std */
    for (int i = 0; i < m->n_params; i++) {
        const zb_param *p = &m->params[i];
        const zb_param *fp = m->tp ? &m->tp->full_params[i] : p;   /* the full tensor */
        const zb_tp_slice *sl = m->tp ? &m->tp->slices[i] : NULL;
        uint64_t sd = synth_stream(seed, fp->name);
        if (p->ndim != 2) {   /* norms, Mamba2 A_log / D / dt_bias, conv, biases: their init rule (small) */
            if (p->bf16) continue;
            zb_rng rng;
            zb_rng_seed(&rng, sd);
            float *dst = m->data + p->offset, *full = dst;
            if (sl && fp->numel != p->numel && !(full = zb_malloc(sizeof(float) * fp->numel, "synthetic weights")))
                continue;   /* out of memory for a small tensor: left as it is (values do not matter for speed) */
            zb_param_fill_random(fp, std, &rng, full, fp->numel);
            if (full != dst) {   /* this rank's rows (segments) and columns of the full tensor */
                float *o = dst;
                for (int k = 0; k < sl->nseg; k++)
                    for (int64_t r = sl->row0[k]; r < sl->row0[k] + sl->nrows[k]; r++, o += sl->ncols)
                        memcpy(o, full + r * sl->width + sl->col0, sizeof(float) * (size_t)sl->ncols);
                free(full);
            }
            continue;
        }
        int nseg = sl ? sl->nseg : 1;
        int64_t width = sl ? sl->width : p->shape[1], col0 = sl ? sl->col0 : 0, nc = sl ? sl->ncols : p->shape[1];
        long long lr = 0;   /* local rows so far */
        for (int k = 0; k < nseg; k++) {
            long long r0 = sl ? sl->row0[k] : 0, nr = sl ? sl->nrows[k] : p->shape[0];
#pragma omp parallel for schedule(static)
            for (long long r = 0; r < nr; r++) {
                uint64_t j0 = (uint64_t)((r0 + r) * width + col0);
                size_t o = (size_t)(lr + r) * (size_t)nc;
                if (p->bf16) {
                    uint16_t *w = m->data16 + p->offset + o;
                    for (long long c = 0; c < nc; c++) w[c] = zb_f32_to_bf16(synth(sd, (long long)j0 + c, a));
                } else {
                    float *w = m->data + p->offset + o;
                    for (long long c = 0; c < nc; c++) w[c] = synth(sd, (long long)j0 + c, a);
                }
            }
            lr += nr;
        }
    }
}
