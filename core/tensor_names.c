/* tensor_names.c — see tensor_names.h. */
#include "tensor_names.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "zb_common.h"

typedef struct { zb_tensor_spec *s; int n, cap; } zb_tlist;

static int add(zb_tlist *l, int layer, int ndim, int64_t a, int64_t b, int64_t c, const char *fmt, ...)
    __attribute__((format(printf, 7, 8)));
static int add(zb_tlist *l, int layer, int ndim, int64_t a, int64_t b, int64_t c, const char *fmt, ...) {
    if (l->n == l->cap) {
        int nc = l->cap ? 2 * l->cap : 64;
        zb_tensor_spec *ns = realloc(l->s, (size_t)nc * sizeof *ns);
        if (!ns) return zb_fail(ZB_ENOMEM, "out of memory listing tensors");
        l->s = ns;
        l->cap = nc;
    }
    zb_tensor_spec *t = &l->s[l->n++];
    memset(t, 0, sizeof *t);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->name, sizeof t->name, fmt, ap);
    va_end(ap);
    t->layer = layer;
    t->ndim = ndim;
    t->shape[0] = a;
    t->shape[1] = b;
    t->shape[2] = c;
    return ZB_OK;
}

#define P "model.layers.%d."

static int add_layer(zb_tlist *l, const zb_config *c, int i) {
    int64_t d = c->d_model;
    ZB_TRY(add(l, i, 1, d, 0, 0, P "input_layernorm.weight", i));
    if (c->kinds[i] == ZB_LAYER_ATTN) {
        int64_t H = c->n_heads, K = c->n_kv_heads, hd = c->head_dim;
        ZB_TRY(add(l, i, 2, H * hd, d, 0, P "self_attn.q_proj.weight", i));
        ZB_TRY(add(l, i, 2, K * hd, d, 0, P "self_attn.k_proj.weight", i));
        ZB_TRY(add(l, i, 2, K * hd, d, 0, P "self_attn.v_proj.weight", i));
        ZB_TRY(add(l, i, 2, d, H * hd, 0, P "self_attn.o_proj.weight", i));
    } else if (c->kinds[i] == ZB_LAYER_MLA) {
        const zb_mla_dims *m = &c->mla;
        int64_t H = m->n_heads, qk = m->qk_nope + m->qk_rope;
        if (m->q_lora_rank == 0) {
            ZB_TRY(add(l, i, 2, H * qk, d, 0, P "self_attn.q_proj.weight", i));
        } else {
            ZB_TRY(add(l, i, 2, m->q_lora_rank, d, 0, P "self_attn.q_a_proj.weight", i));
            if (m->q_norm) ZB_TRY(add(l, i, 1, m->q_lora_rank, 0, 0, P "self_attn.q_a_layernorm.weight", i));
            ZB_TRY(add(l, i, 2, H * qk, m->q_lora_rank, 0, P "self_attn.q_b_proj.weight", i));
        }
        ZB_TRY(add(l, i, 2, m->kv_lora_rank + m->qk_rope, d, 0, P "self_attn.kv_a_proj_with_mqa.weight", i));
        if (m->kv_norm) ZB_TRY(add(l, i, 1, m->kv_lora_rank, 0, 0, P "self_attn.kv_a_layernorm.weight", i));
        ZB_TRY(add(l, i, 2, (int64_t)m->kv_heads * (m->qk_nope + m->v_head_dim), m->kv_lora_rank, 0,
                   P "self_attn.kv_b_proj.weight", i));
        ZB_TRY(add(l, i, 2, d, H * m->v_head_dim, 0, P "self_attn.o_proj.weight", i));
    } else {
        const zb_mamba2_dims *s = &c->mamba;
        int64_t conv_dim = (int64_t)s->x_groups * s->headdim + (int64_t)(s->b_groups + s->c_groups) * s->d_state;
        ZB_TRY(add(l, i, 2, s->d_inner + conv_dim + s->nheads, d, 0, P "mamba.in_proj.weight", i));
        ZB_TRY(add(l, i, 3, conv_dim, 1, s->conv_k, P "mamba.conv1d.weight", i));
        if (s->conv_bias) ZB_TRY(add(l, i, 1, conv_dim, 0, 0, P "mamba.conv1d.bias", i));
        ZB_TRY(add(l, i, 1, s->nheads, 0, 0, P "mamba.dt_bias", i));
        ZB_TRY(add(l, i, 1, s->nheads, 0, 0, P "mamba.A_log", i));
        ZB_TRY(add(l, i, 1, s->nheads, 0, 0, P "mamba.D", i));
        ZB_TRY(add(l, i, 1, s->d_inner, 0, 0, P "mamba.norm.weight", i));
        ZB_TRY(add(l, i, 2, d, s->d_inner, 0, P "mamba.out_proj.weight", i));
    }
    ZB_TRY(add(l, i, 1, d, 0, 0, P "post_attention_layernorm.weight", i));
    ZB_TRY(add(l, i, 2, c->ffn, d, 0, P "mlp.gate_proj.weight", i));
    ZB_TRY(add(l, i, 2, c->ffn, d, 0, P "mlp.up_proj.weight", i));
    ZB_TRY(add(l, i, 2, d, c->ffn, 0, P "mlp.down_proj.weight", i));
    return ZB_OK;
}

static int build(zb_tlist *l, const zb_config *c) {
    ZB_TRY(add(l, -1, 2, c->vocab, c->d_model, 0, "model.embed_tokens.weight"));
    for (int i = 0; i < c->n_layers; i++) ZB_TRY(add_layer(l, c, i));
    ZB_TRY(add(l, -1, 1, c->d_model, 0, 0, "model.norm.weight"));
    if (!c->tie_embeddings) ZB_TRY(add(l, -1, 2, c->vocab, c->d_model, 0, "lm_head.weight"));
    return ZB_OK;
}

int zb_expected_tensors(const zb_config *c, zb_tensor_spec **out, int *n) {
    zb_tlist l = {0};
    *out = NULL;
    *n = 0;
    if (c->n_layers < 0 || c->n_layers > ZB_MAX_LAYERS)
        return zb_fail(ZB_EARG, "config: %d layers out of range", c->n_layers);
    int rc = build(&l, c);
    if (rc) { free(l.s); return rc; }
    *out = l.s;
    *n = l.n;
    return ZB_OK;
}

const zb_tensor_spec *zb_tensor_spec_find(const zb_tensor_spec *s, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (!strcmp(s[i].name, name)) return &s[i];
    return NULL;
}

const char *zb_shape_str(char *buf, size_t cap, int ndim, const int64_t *shape) {
    size_t o = 0;
    if (cap == 0) return buf;
    buf[0] = 0;
    o += (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && o < cap; i++)
        o += (size_t)snprintf(buf + o, cap - o, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (o < cap) snprintf(buf + o, cap - o, "]");
    return buf;
}
