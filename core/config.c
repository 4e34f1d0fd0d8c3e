/* config.c — model config from HF config.json (llama, deepseek_v3 dense) or zebra's own
 * hybrid JSON (docs/CONFIG.md), its JSON writer, and validation.
 *
 * Every error is one line naming the source file and the key. */
#include "config.h"

#include <cJSON.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "zb_common.h"

const char *zb_layer_kind_name(zb_layer_kind k) {
    switch (k) {
    case ZB_LAYER_ATTN: return "attention";
    case ZB_LAYER_MLA: return "mla";
    case ZB_LAYER_MAMBA2: return "mamba2";
    }
    return "?";
}

/* ---------------------------------------------------------------- typed getters
 * `where` is the object's path for messages ("" at top level, "mla." inside "mla"). */

typedef struct { const char *src, *where; } zb_ctx;

static int missing(const zb_ctx *x, const char *key) {
    return zb_fail(ZB_EFORMAT, "%s: missing required key '%s%s'", x->src, x->where, key);
}

/* A JSON number that is an integer within int's range (a cast of anything else is undefined). */
static int is_int32(const cJSON *j) {
    return cJSON_IsNumber(j) && j->valuedouble == floor(j->valuedouble) && fabs(j->valuedouble) <= 2147483647.0;
}

/* A JSON number that is finite as a float (1e39 would become inf, which no JSON can hold). */
static int is_float(const cJSON *j) {
    return cJSON_IsNumber(j) && fabs(j->valuedouble) <= FLT_MAX;
}

/* required: 1 → error if absent (or null when null_ok == 0). Null with null_ok gives null_val. */
static int get_int_ex(const zb_ctx *x, const cJSON *o, const char *key, int required, int dflt, int null_ok,
                      int null_val, int *out) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!j) {
        if (required) return missing(x, key);
        *out = dflt;
        return ZB_OK;
    }
    if (cJSON_IsNull(j) && null_ok) { *out = null_val; return ZB_OK; }
    if (!is_int32(j)) return zb_fail(ZB_EFORMAT, "%s: key '%s%s' must be an integer", x->src, x->where, key);
    *out = (int)j->valuedouble;
    return ZB_OK;
}
static int get_int(const zb_ctx *x, const cJSON *o, const char *key, int required, int dflt, int *out) {
    return get_int_ex(x, o, key, required, dflt, 0, 0, out);
}

static int get_float(const zb_ctx *x, const cJSON *o, const char *key, int required, float dflt, float *out) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!j) {
        if (required) return missing(x, key);
        *out = dflt;
        return ZB_OK;
    }
    if (!is_float(j)) return zb_fail(ZB_EFORMAT, "%s: key '%s%s' must be a finite float number", x->src, x->where, key);
    *out = (float)j->valuedouble;
    return ZB_OK;
}

/* Booleans: true/false, or 0/1 (some configs write ints). */
static int get_bool(const zb_ctx *x, const cJSON *o, const char *key, int dflt, int *out) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!j || cJSON_IsNull(j)) { *out = dflt; return ZB_OK; }
    if (cJSON_IsBool(j)) { *out = cJSON_IsTrue(j); return ZB_OK; }
    if (cJSON_IsNumber(j) && (j->valuedouble == 0 || j->valuedouble == 1)) { *out = j->valuedouble != 0; return ZB_OK; }
    return zb_fail(ZB_EFORMAT, "%s: key '%s%s' must be true or false", x->src, x->where, key);
}

static int get_obj(const zb_ctx *x, const cJSON *o, const char *key, const cJSON **out) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
    *out = NULL;
    if (!j || cJSON_IsNull(j)) return ZB_OK;
    if (!cJSON_IsObject(j)) return zb_fail(ZB_EFORMAT, "%s: key '%s%s' must be an object", x->src, x->where, key);
    *out = j;
    return ZB_OK;
}

int zb_json_int(const cJSON *o, const char *key, const char *src, int required, int dflt, int null_ok, int null_val,
                int *out) {
    zb_ctx x = {src, ""};
    return get_int_ex(&x, o, key, required, dflt, null_ok, null_val, out);
}
int zb_json_float(const cJSON *o, const char *key, const char *src, int required, float dflt, float *out) {
    zb_ctx x = {src, ""};
    return get_float(&x, o, key, required, dflt, out);
}
int zb_json_bool(const cJSON *o, const char *key, const char *src, int dflt, int *out) {
    zb_ctx x = {src, ""};
    return get_bool(&x, o, key, dflt, out);
}

/* ---------------------------------------------------------------- pieces */

const char *zb_rope_type_name(zb_rope_type t) {
    switch (t) {
    case ZB_ROPE_DEFAULT: return "default";
    case ZB_ROPE_LLAMA3: return "llama3";
    case ZB_ROPE_YARN: return "yarn";
    }
    return "?";
}

double zb_yarn_get_mscale(double factor, double m) { return factor <= 1 ? 1.0 : 0.1 * m * log(factor) + 1.0; }

/* The type and extras of a rope_scaling / rope_parameters object (theta is the caller's). */
static int parse_rope_obj(const zb_ctx *x0, const cJSON *r, const char *where, zb_rope_cfg *rc) {
    zb_ctx x = {x0->src, where};
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(r, "rope_type");
    if (!t) t = cJSON_GetObjectItemCaseSensitive(r, "type");
    const char *type = "default";
    if (t && !cJSON_IsNull(t)) {
        if (!cJSON_IsString(t)) return zb_fail(ZB_EFORMAT, "%s: key '%srope_type' must be a string", x.src, where);
        type = t->valuestring;
    }
    if (!strcmp(type, "default")) {
        rc->type = ZB_ROPE_DEFAULT;
        return ZB_OK;
    }
    if (!strcmp(type, "llama3")) {
        rc->type = ZB_ROPE_LLAMA3;
        ZB_TRY(get_float(&x, r, "factor", 1, 0, &rc->factor));
        ZB_TRY(get_float(&x, r, "low_freq_factor", 1, 0, &rc->low_freq_factor));
        ZB_TRY(get_float(&x, r, "high_freq_factor", 1, 0, &rc->high_freq_factor));
        ZB_TRY(get_int(&x, r, "original_max_position_embeddings", 1, 0, &rc->original_max_pos));
        return ZB_OK;
    }
    if (!strcmp(type, "yarn")) {   /* DeepSeek's YaRN keys and defaults (SPEC §3) */
        rc->type = ZB_ROPE_YARN;
        ZB_TRY(get_float(&x, r, "factor", 1, 0, &rc->factor));
        ZB_TRY(get_int(&x, r, "original_max_position_embeddings", 1, 0, &rc->original_max_pos));
        ZB_TRY(get_float(&x, r, "beta_fast", 0, 32.0f, &rc->beta_fast));
        ZB_TRY(get_float(&x, r, "beta_slow", 0, 1.0f, &rc->beta_slow));
        ZB_TRY(get_float(&x, r, "mscale", 0, 1.0f, &rc->mscale));
        ZB_TRY(get_float(&x, r, "mscale_all_dim", 0, 0.0f, &rc->mscale_all_dim));
        return ZB_OK;
    }
    return zb_fail(ZB_EFORMAT, "%s: key '%srope_type': rope type '%s' is not supported (default, llama3, yarn)",
                   x.src, where, type);
}

int zb_rope_scaling_parse(const struct cJSON *obj, const char *src, const char *where, zb_rope_cfg *rc) {
    zb_ctx x = {src, ""};
    return parse_rope_obj(&x, obj, where, rc);
}

/* rope_parameters (transformers >= 5) wins over rope_theta + rope_scaling. `pre` prefixes the
 * keys' names in messages ("" at top level, "mla." inside the mla object). */
static int parse_rope_in(const zb_ctx *x, const cJSON *j, const char *pre, float theta0, zb_rope_cfg *rc) {
    const cJSON *rp, *rs;
    char where[64];
    memset(rc, 0, sizeof *rc);
    ZB_TRY(get_float(x, j, "rope_theta", 0, theta0, &rc->theta));
    ZB_TRY(get_obj(x, j, "rope_parameters", &rp));
    if (rp) {
        snprintf(where, sizeof where, "%srope_parameters.", pre);
        zb_ctx xr = {x->src, where};
        ZB_TRY(get_float(&xr, rp, "rope_theta", 0, rc->theta, &rc->theta));
        return parse_rope_obj(x, rp, where, rc);
    }
    ZB_TRY(get_obj(x, j, "rope_scaling", &rs));
    snprintf(where, sizeof where, "%srope_scaling.", pre);
    if (rs) return parse_rope_obj(x, rs, where, rc);
    return ZB_OK;
}

static int parse_rope(const zb_ctx *x, const cJSON *j, zb_rope_cfg *rc) { return parse_rope_in(x, j, "", 10000.0f, rc); }

/* Keys shared by every form. */
static int parse_common(const zb_ctx *x, const cJSON *j, zb_config *c) {
    ZB_TRY(get_int(x, j, "hidden_size", 1, 0, &c->d_model));
    ZB_TRY(get_int(x, j, "num_hidden_layers", 1, 0, &c->n_layers));
    ZB_TRY(get_int(x, j, "vocab_size", 1, 0, &c->vocab));
    ZB_TRY(get_int(x, j, "intermediate_size", 1, 0, &c->ffn));
    ZB_TRY(get_int(x, j, "num_attention_heads", 1, 0, &c->n_heads));
    ZB_TRY(get_int(x, j, "num_key_value_heads", 0, c->n_heads, &c->n_kv_heads));
    ZB_TRY(get_int_ex(x, j, "head_dim", 0, 0, 1, 0, &c->head_dim));
    if (c->head_dim == 0 && c->n_heads > 0) c->head_dim = c->d_model / c->n_heads;
    ZB_TRY(get_float(x, j, "rms_norm_eps", 0, 1e-6f, &c->rms_eps));
    ZB_TRY(get_bool(x, j, "tie_word_embeddings", 0, &c->tie_embeddings));
    ZB_TRY(get_int(x, j, "max_position_embeddings", 0, 2048, &c->max_pos));
    ZB_TRY(get_int_ex(x, j, "bos_token_id", 0, 1, 1, -1, &c->bos_id));
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "eos_token_id");
    c->n_eos = 0;
    if (e && cJSON_IsArray(e)) {
        int n = cJSON_GetArraySize(e);
        if (n > ZB_MAX_EOS) return zb_fail(ZB_EFORMAT, "%s: key 'eos_token_id' has %d ids (at most %d)", x->src, n, ZB_MAX_EOS);
        for (int i = 0; i < n; i++) {
            const cJSON *v = cJSON_GetArrayItem(e, i);
            if (!is_int32(v)) return zb_fail(ZB_EFORMAT, "%s: key 'eos_token_id' must hold integers", x->src);
            c->eos_ids[c->n_eos++] = (int)v->valuedouble;
        }
    } else if (e && is_int32(e)) {
        c->eos_ids[c->n_eos++] = (int)e->valuedouble;
    } else if (e && !cJSON_IsNull(e)) {
        return zb_fail(ZB_EFORMAT, "%s: key 'eos_token_id' must be an integer or a list of integers", x->src);
    } else if (!e) {
        c->eos_ids[c->n_eos++] = 2;   /* LlamaConfig default */
    }
    return parse_rope(x, j, &c->rope);
}

static int parse_mla(const zb_ctx *x0, const cJSON *m, const zb_config *c, zb_mla_dims *d) {
    zb_ctx x = {x0->src, "mla."};
    ZB_TRY(get_int(&x, m, "n_heads", 0, c->n_heads, &d->n_heads));
    ZB_TRY(get_int_ex(&x, m, "q_lora_rank", 0, 0, 1, 0, &d->q_lora_rank));
    ZB_TRY(get_bool(&x, m, "q_norm", d->q_lora_rank > 0, &d->q_norm));
    ZB_TRY(get_int(&x, m, "kv_lora_rank", 1, 0, &d->kv_lora_rank));
    ZB_TRY(get_bool(&x, m, "kv_norm", 0, &d->kv_norm));
    ZB_TRY(get_int(&x, m, "qk_nope_head_dim", 1, 0, &d->qk_nope));
    ZB_TRY(get_int(&x, m, "qk_rope_head_dim", 1, 0, &d->qk_rope));
    ZB_TRY(get_int(&x, m, "v_head_dim", 1, 0, &d->v_head_dim));
    ZB_TRY(get_int(&x, m, "kv_heads", 0, d->n_heads, &d->kv_heads));
    ZB_TRY(get_bool(&x, m, "rope_interleave", 0, &d->rope_interleave));
    /* The MLA rope dims' own RoPE (the release: YaRN): mla.rope_theta / mla.rope_scaling
     * (null: unscaled); neither key: the model's rope (configs and checkpoints written before
     * MLA had its own, whose MLA used the llama3 scaling of the model). */
    if (cJSON_GetObjectItemCaseSensitive(m, "rope_scaling") || cJSON_GetObjectItemCaseSensitive(m, "rope_theta") ||
        cJSON_GetObjectItemCaseSensitive(m, "rope_parameters"))
        ZB_TRY(parse_rope_in(&x, m, "mla.", c->rope.theta, &d->rope));
    else
        d->rope = c->rope;
    return ZB_OK;
}

static int parse_mamba2(const zb_ctx *x0, const cJSON *m, zb_mamba2_dims *d) {
    zb_ctx x = {x0->src, "mamba2."};
    int ng;
    ZB_TRY(get_int(&x, m, "nheads", 1, 0, &d->nheads));
    ZB_TRY(get_int(&x, m, "headdim", 1, 0, &d->headdim));
    ZB_TRY(get_int(&x, m, "d_state", 1, 0, &d->d_state));
    ZB_TRY(get_int(&x, m, "d_inner", 0, d->nheads * d->headdim, &d->d_inner));
    ZB_TRY(get_int(&x, m, "n_groups", 0, 1, &ng));
    ZB_TRY(get_int(&x, m, "x_groups", 0, d->nheads, &d->x_groups));
    ZB_TRY(get_int(&x, m, "b_groups", 0, ng, &d->b_groups));
    ZB_TRY(get_int(&x, m, "c_groups", 0, d->b_groups, &d->c_groups));
    ZB_TRY(get_int(&x, m, "conv_kernel", 0, 4, &d->conv_k));
    ZB_TRY(get_int(&x, m, "chunk_size", 0, 256, &d->chunk));
    ZB_TRY(get_int(&x, m, "norm_group_size", 0, d->d_inner, &d->norm_group));
    ZB_TRY(get_bool(&x, m, "conv_bias", 1, &d->conv_bias));
    d->dt_min = 0;
    d->dt_max = INFINITY;
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(m, "time_step_limit");
    if (t && !cJSON_IsNull(t)) {
        const cJSON *a = cJSON_GetArrayItem(t, 0), *b = cJSON_GetArrayItem(t, 1);
        if (!cJSON_IsArray(t) || cJSON_GetArraySize(t) < 1 || cJSON_GetArraySize(t) > 2 || !is_float(a))
            return zb_fail(ZB_EFORMAT, "%s: key 'mamba2.time_step_limit' must be [min, max] (finite min)", x.src);
        d->dt_min = (float)a->valuedouble;
        if (b && is_float(b)) d->dt_max = (float)b->valuedouble;
        else if (b && cJSON_IsString(b) && (!strcmp(b->valuestring, "inf") || !strcmp(b->valuestring, "Infinity")))
            d->dt_max = INFINITY;
        else if (b && !cJSON_IsNull(b))
            return zb_fail(ZB_EFORMAT, "%s: key 'mamba2.time_step_limit' max must be a number, null or \"inf\"", x.src);
    }
    return ZB_OK;
}

static int parse_kind(const char *s, zb_layer_kind *k) {
    if (!strcmp(s, "mla")) *k = ZB_LAYER_MLA;
    else if (!strcmp(s, "mamba2") || !strcmp(s, "mamba")) *k = ZB_LAYER_MAMBA2;
    else if (!strcmp(s, "attention") || !strcmp(s, "attn")) *k = ZB_LAYER_ATTN;
    else return 0;
    return 1;
}

static int parse_obj(const cJSON *j, const char *src, zb_config *c) {
    zb_ctx x = {src, ""};
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(j, "model_type");
    if (!mt) return missing(&x, "model_type");
    if (!cJSON_IsString(mt)) return zb_fail(ZB_EFORMAT, "%s: key 'model_type' must be a string", src);
    const char *type = mt->valuestring;
    if (strcmp(type, "llama") && strcmp(type, "deepseek_v3") && strcmp(type, "zebra"))
        return zb_fail(ZB_EFORMAT, "%s: key 'model_type': '%s' is not supported (llama, deepseek_v3, zebra)", src, type);
    snprintf(c->model_type, sizeof c->model_type, "%s", type);
    ZB_TRY(parse_common(&x, j, c));
    if (c->n_layers <= 0 || c->n_layers > ZB_MAX_LAYERS)
        return zb_fail(ZB_EFORMAT, "%s: key 'num_hidden_layers' = %d is out of range 1..%d", src, c->n_layers, ZB_MAX_LAYERS);

    if (!strcmp(type, "llama")) {
        for (int i = 0; i < c->n_layers; i++) c->kinds[i] = ZB_LAYER_ATTN;
    } else if (!strcmp(type, "deepseek_v3")) {
        int fk, nre;
        ZB_TRY(get_int(&x, j, "first_k_dense_replace", 0, 3, &fk));
        ZB_TRY(get_int_ex(&x, j, "n_routed_experts", 0, 256, 1, 0, &nre));
        if (nre > 0 && fk < c->n_layers)
            return zb_fail(ZB_EFORMAT, "%s: MoE layers are not supported (first_k_dense_replace %d < num_hidden_layers %d)",
                           src, fk, c->n_layers);
        zb_mla_dims *d = &c->mla;
        d->n_heads = c->n_heads;
        ZB_TRY(get_int_ex(&x, j, "q_lora_rank", 0, 1536, 1, 0, &d->q_lora_rank));
        d->q_norm = d->q_lora_rank > 0;
        ZB_TRY(get_int(&x, j, "kv_lora_rank", 1, 0, &d->kv_lora_rank));
        d->kv_norm = 1;
        ZB_TRY(get_int(&x, j, "qk_nope_head_dim", 1, 0, &d->qk_nope));
        ZB_TRY(get_int(&x, j, "qk_rope_head_dim", 1, 0, &d->qk_rope));
        ZB_TRY(get_int(&x, j, "v_head_dim", 1, 0, &d->v_head_dim));
        ZB_TRY(get_bool(&x, j, "rope_interleave", 1, &d->rope_interleave));
        d->kv_heads = c->n_heads;
        d->rope = c->rope;   /* DeepSeek's rope_scaling (yarn) is the MLA's */
        /* HF DeepseekV3Config: head_dim = qk_rope_head_dim unless given */
        const cJSON *hd = cJSON_GetObjectItemCaseSensitive(j, "head_dim");
        if (!hd || cJSON_IsNull(hd)) c->head_dim = d->qk_rope;
        for (int i = 0; i < c->n_layers; i++) c->kinds[i] = ZB_LAYER_MLA;
    } else {   /* zebra */
        const cJSON *lk = cJSON_GetObjectItemCaseSensitive(j, "layer_kinds");
        if (!lk) return missing(&x, "layer_kinds");
        if (!cJSON_IsArray(lk)) return zb_fail(ZB_EFORMAT, "%s: key 'layer_kinds' must be an array of strings", src);
        if (cJSON_GetArraySize(lk) != c->n_layers)
            return zb_fail(ZB_EFORMAT, "%s: key 'layer_kinds' has %d entries, num_hidden_layers is %d", src,
                           cJSON_GetArraySize(lk), c->n_layers);
        int any_mla = 0, any_mamba = 0;
        for (int i = 0; i < c->n_layers; i++) {
            const cJSON *s = cJSON_GetArrayItem(lk, i);
            if (!cJSON_IsString(s) || !parse_kind(s->valuestring, &c->kinds[i]))
                return zb_fail(ZB_EFORMAT, "%s: key 'layer_kinds[%d]' must be \"mla\", \"mamba2\" or \"attention\"", src, i);
            any_mla |= c->kinds[i] == ZB_LAYER_MLA;
            any_mamba |= c->kinds[i] == ZB_LAYER_MAMBA2;
        }
        const cJSON *m;
        ZB_TRY(get_obj(&x, j, "mla", &m));
        if (m) ZB_TRY(parse_mla(&x, m, c, &c->mla));
        else if (any_mla) return missing(&x, "mla");
        ZB_TRY(get_obj(&x, j, "mamba2", &m));
        if (m) ZB_TRY(parse_mamba2(&x, m, &c->mamba));
        else if (any_mamba) return missing(&x, "mamba2");
        ZB_TRY(get_obj(&x, j, "teacher", &m));
        if (m) {
            zb_ctx xt = {src, "teacher."};
            ZB_TRY(get_int(&xt, m, "num_hidden_layers", 0, 0, &c->teacher_layers));
            ZB_TRY(get_int(&xt, m, "num_key_value_heads", 0, 0, &c->teacher_kv_heads));
            ZB_TRY(get_int(&xt, m, "head_dim", 0, 0, &c->teacher_head_dim));
        }
    }
    return ZB_OK;
}

int zb_config_parse(const char *json_text, const char *src, zb_config *c) {
    memset(c, 0, sizeof *c);
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithOpts(json_text, &end, 0);
    if (!j || !cJSON_IsObject(j)) {
        long at = (j || !end) ? 0 : (long)(end - json_text);
        cJSON_Delete(j);
        if (!j) return zb_fail(ZB_EFORMAT, "%s: malformed JSON (near byte %ld)", src, at);
        return zb_fail(ZB_EFORMAT, "%s: the config must be a JSON object", src);
    }
    int rc = parse_obj(j, src, c);
    cJSON_Delete(j);
    return rc;
}

int zb_config_load(const char *path, zb_config *c) {
    char *txt = NULL;
    ZB_TRY(zb_read_file(path, &txt, NULL));
    int rc = zb_config_parse(txt, path, c);
    free(txt);
    return rc;
}

/* ---------------------------------------------------------------- writer */

typedef struct { char *p; size_t n, cap; int oom; } zb_sb;

static void sb_printf(zb_sb *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(zb_sb *b, const char *fmt, ...) {
    if (b->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(b->p ? b->p + b->n : NULL, b->p ? b->cap - b->n : 0, fmt, ap);
        va_end(ap);
        if (k < 0) { b->oom = 1; return; }
        if (b->p && b->n + (size_t)k < b->cap) { b->n += (size_t)k; return; }
        size_t nc = b->cap ? b->cap * 2 : 2048;
        while (nc < b->n + (size_t)k + 1) nc *= 2;
        char *np = realloc(b->p, nc);
        if (!np) { b->oom = 1; return; }
        b->p = np;
        b->cap = nc;
    }
}

/* Shortest decimal text that reads back as the same float. */
void zb_float_text(char *buf, size_t n, float v) {
    for (int prec = 6; prec <= 9; prec++) {
        snprintf(buf, n, "%.*g", prec, (double)v);
        if (strtof(buf, NULL) == v) break;
    }
    /* keep it a JSON float-looking number (1e-05 and 500000 are fine JSON as they are) */
}

static void sb_float(zb_sb *b, const char *key, float v) {
    char t[64];
    zb_float_text(t, sizeof t, v);
    sb_printf(b, ",\n  \"%s\": %s", key, t);
}

/* The rope_scaling value of r: null, or the object of its type. */
static void sb_rope_scaling(zb_sb *b, const zb_rope_cfg *r) {
    char f[64], lo[64], hi[64], bf[64], bs[64], ms[64], ma[64];
    zb_float_text(f, sizeof f, r->factor);
    if (r->type == ZB_ROPE_LLAMA3) {
        zb_float_text(lo, sizeof lo, r->low_freq_factor);
        zb_float_text(hi, sizeof hi, r->high_freq_factor);
        sb_printf(b, "{\"rope_type\": \"llama3\", \"factor\": %s, \"low_freq_factor\": %s, "
                  "\"high_freq_factor\": %s, \"original_max_position_embeddings\": %d}", f, lo, hi, r->original_max_pos);
    } else if (r->type == ZB_ROPE_YARN) {
        zb_float_text(bf, sizeof bf, r->beta_fast);
        zb_float_text(bs, sizeof bs, r->beta_slow);
        zb_float_text(ms, sizeof ms, r->mscale);
        zb_float_text(ma, sizeof ma, r->mscale_all_dim);
        sb_printf(b, "{\"rope_type\": \"yarn\", \"factor\": %s, \"original_max_position_embeddings\": %d, "
                  "\"beta_fast\": %s, \"beta_slow\": %s, \"mscale\": %s, \"mscale_all_dim\": %s}",
                  f, r->original_max_pos, bf, bs, ms, ma);
    } else {
        sb_printf(b, "null");
    }
}

static void sb_rope(zb_sb *b, const zb_rope_cfg *r) {
    sb_float(b, "rope_theta", r->theta);
    sb_printf(b, ",\n  \"rope_scaling\": ");
    sb_rope_scaling(b, r);
}

static void sb_common(zb_sb *b, const zb_config *c, const char *type) {
    sb_printf(b, "{\n  \"model_type\": \"%s\"", type);
    sb_printf(b, ",\n  \"hidden_size\": %d,\n  \"num_hidden_layers\": %d,\n  \"vocab_size\": %d", c->d_model,
              c->n_layers, c->vocab);
    sb_printf(b, ",\n  \"intermediate_size\": %d,\n  \"num_attention_heads\": %d,\n  \"num_key_value_heads\": %d",
              c->ffn, c->n_heads, c->n_kv_heads);
    sb_printf(b, ",\n  \"head_dim\": %d", c->head_dim);
    sb_float(b, "rms_norm_eps", c->rms_eps);
    sb_printf(b, ",\n  \"tie_word_embeddings\": %s", c->tie_embeddings ? "true" : "false");
    sb_printf(b, ",\n  \"max_position_embeddings\": %d", c->max_pos);
    if (c->bos_id < 0) sb_printf(b, ",\n  \"bos_token_id\": null");
    else sb_printf(b, ",\n  \"bos_token_id\": %d", c->bos_id);
    if (c->n_eos == 0) sb_printf(b, ",\n  \"eos_token_id\": null");
    else if (c->n_eos == 1) sb_printf(b, ",\n  \"eos_token_id\": %d", c->eos_ids[0]);
    else {
        sb_printf(b, ",\n  \"eos_token_id\": [");
        for (int i = 0; i < c->n_eos; i++) sb_printf(b, "%s%d", i ? ", " : "", c->eos_ids[i]);
        sb_printf(b, "]");
    }
    sb_rope(b, &c->rope);
}

static int all_kind(const zb_config *c, zb_layer_kind k) {
    for (int i = 0; i < c->n_layers; i++)
        if (c->kinds[i] != k) return 0;
    return 1;
}
static int any_kind(const zb_config *c, zb_layer_kind k) {
    for (int i = 0; i < c->n_layers; i++)
        if (c->kinds[i] == k) return 1;
    return 0;
}

char *zb_config_to_json(const zb_config *c) {
    zb_sb b = {0};
    const zb_mla_dims *m = &c->mla;
    const zb_mamba2_dims *s = &c->mamba;
    int teacher = c->teacher_layers || c->teacher_kv_heads || c->teacher_head_dim;
    if (!strcmp(c->model_type, "llama") && all_kind(c, ZB_LAYER_ATTN) && !m->n_heads && !s->nheads && !teacher) {
        sb_common(&b, c, "llama");
    } else if (!strcmp(c->model_type, "deepseek_v3") && all_kind(c, ZB_LAYER_MLA) && m->n_heads == c->n_heads &&
               !memcmp(&m->rope, &c->rope, sizeof m->rope) &&
               m->kv_heads == c->n_heads && m->kv_norm == 1 && m->q_norm == (m->q_lora_rank > 0) && !s->nheads &&
               !teacher) {
        /* the HF DeepSeek-V3 keys, dense layers only */
        sb_common(&b, c, "deepseek_v3");
        if (m->q_lora_rank) sb_printf(&b, ",\n  \"q_lora_rank\": %d", m->q_lora_rank);
        else sb_printf(&b, ",\n  \"q_lora_rank\": null");
        sb_printf(&b, ",\n  \"kv_lora_rank\": %d,\n  \"qk_nope_head_dim\": %d,\n  \"qk_rope_head_dim\": %d"
                  ",\n  \"v_head_dim\": %d,\n  \"rope_interleave\": %s,\n  \"first_k_dense_replace\": %d",
                  m->kv_lora_rank, m->qk_nope, m->qk_rope, m->v_head_dim, m->rope_interleave ? "true" : "false",
                  c->n_layers);
    } else {
        sb_common(&b, c, "zebra");
        sb_printf(&b, ",\n  \"layer_kinds\": [");
        for (int i = 0; i < c->n_layers; i++)
            sb_printf(&b, "%s\"%s\"", i ? ", " : "", zb_layer_kind_name(c->kinds[i]));
        sb_printf(&b, "]");
        if (any_kind(c, ZB_LAYER_MLA) || m->n_heads) {
            sb_printf(&b, ",\n  \"mla\": {\"n_heads\": %d, \"q_lora_rank\": %d, \"q_norm\": %s, \"kv_lora_rank\": %d, "
                      "\"kv_norm\": %s, \"qk_nope_head_dim\": %d, \"qk_rope_head_dim\": %d, \"v_head_dim\": %d, "
                      "\"kv_heads\": %d, \"rope_interleave\": %s",
                      m->n_heads, m->q_lora_rank, m->q_norm ? "true" : "false", m->kv_lora_rank,
                      m->kv_norm ? "true" : "false", m->qk_nope, m->qk_rope, m->v_head_dim, m->kv_heads,
                      m->rope_interleave ? "true" : "false");
            char th[64];   /* the MLA's own rope, always explicit (unset: the model's) */
            const zb_rope_cfg *mr = m->rope.theta != 0 ? &m->rope : &c->rope;
            zb_float_text(th, sizeof th, mr->theta);
            sb_printf(&b, ", \"rope_theta\": %s, \"rope_scaling\": ", th);
            sb_rope_scaling(&b, mr);
            sb_printf(&b, "}");
        }
        if (any_kind(c, ZB_LAYER_MAMBA2) || s->nheads) {
            char lo[64], hi[64];
            zb_float_text(lo, sizeof lo, s->dt_min);
            if (isinf(s->dt_max)) snprintf(hi, sizeof hi, "null");
            else zb_float_text(hi, sizeof hi, s->dt_max);
            sb_printf(&b, ",\n  \"mamba2\": {\"d_inner\": %d, \"nheads\": %d, \"headdim\": %d, \"d_state\": %d, "
                      "\"x_groups\": %d, \"b_groups\": %d, \"c_groups\": %d, \"conv_kernel\": %d, \"chunk_size\": %d, "
                      "\"norm_group_size\": %d, \"time_step_limit\": [%s, %s], \"conv_bias\": %s}",
                      s->d_inner, s->nheads, s->headdim, s->d_state, s->x_groups, s->b_groups, s->c_groups,
                      s->conv_k, s->chunk, s->norm_group, lo, hi, s->conv_bias ? "true" : "false");
        }
        if (teacher)
            sb_printf(&b, ",\n  \"teacher\": {\"num_hidden_layers\": %d, \"num_key_value_heads\": %d, \"head_dim\": %d}",
                      c->teacher_layers, c->teacher_kv_heads, c->teacher_head_dim);
    }
    sb_printf(&b, "\n}\n");
    if (b.oom) { free(b.p); zb_fail(ZB_ENOMEM, "out of memory writing the config JSON"); return NULL; }
    return b.p;
}

/* ---------------------------------------------------------------- validation */

#define ZB_CHECK(cond, ...) do { if (!(cond)) return zb_fail(ZB_EARG, __VA_ARGS__); } while (0)

/* Sizes: the kernels hold widths in int and form products of two of them (rows x width,
 * chunk x d_state, ...), so every dimension and every width derived from dimensions is capped:
 * a single dimension (heads, head dims, d_state, ranks, chunk) at 2^16, a width (hidden,
 * intermediate, vocabulary, heads x head_dim, in_proj rows, ...) at 2^24, so that a product of
 * two stays below 2^40 in size_t and a width fits an int with room. Far above any real model;
 * a config beyond them is refused with its key instead of overflowing. Computed in int64. */
#define ZB_MAX_DIM (1 << 16)
#define ZB_MAX_WIDTH (1 << 24)
#define ZB_DIM(v, key) ZB_CHECK((v) > 0 && (v) <= ZB_MAX_DIM, "%s: %s %lld out of range 1..%d", src, key, (long long)(v), ZB_MAX_DIM)
#define ZB_WIDTH(v, key) ZB_CHECK((v) > 0 && (v) <= ZB_MAX_WIDTH, "%s: %s %lld out of range 1..%d", src, key, (long long)(v), ZB_MAX_WIDTH)
/* pre: "" for the model's rope, "mla." for the MLA's. */
static int rope_validate(const zb_rope_cfg *r, const char *src, const char *pre) {
    ZB_CHECK(r->theta > 0, "%s: %srope_theta must be positive", src, pre);
    if (r->type == ZB_ROPE_LLAMA3)
        ZB_CHECK(r->factor > 0 && r->low_freq_factor > 0 && r->high_freq_factor > r->low_freq_factor &&
                 r->original_max_pos > 0,
                 "%s: %sllama3 rope scaling needs factor > 0, 0 < low_freq_factor < high_freq_factor, "
                 "original_max_position_embeddings > 0", src, pre);
    if (r->type == ZB_ROPE_YARN)
        ZB_CHECK(r->factor >= 1 && r->original_max_pos > 0 && r->beta_fast > 0 && r->beta_slow > 0 &&
                 r->mscale >= 0 && r->mscale_all_dim >= 0,
                 "%s: %syarn rope scaling needs factor >= 1, original_max_position_embeddings > 0, "
                 "beta_fast and beta_slow > 0, mscale and mscale_all_dim >= 0", src, pre);
    return ZB_OK;
}

int zb_config_validate(const zb_config *c, const char *src) {
    ZB_CHECK(c->n_layers > 0 && c->n_layers <= ZB_MAX_LAYERS, "%s: num_hidden_layers %d out of range 1..%d", src,
             c->n_layers, ZB_MAX_LAYERS);
    ZB_WIDTH(c->d_model, "hidden_size");
    ZB_WIDTH(c->vocab, "vocab_size");
    ZB_WIDTH(c->ffn, "intermediate_size");
    ZB_DIM(c->n_heads, "num_attention_heads");
    ZB_DIM(c->n_kv_heads, "num_key_value_heads");
    ZB_CHECK(c->n_heads % c->n_kv_heads == 0,
             "%s: num_attention_heads %d is not a multiple of num_key_value_heads %d", src, c->n_heads, c->n_kv_heads);
    ZB_DIM(c->head_dim, "head_dim");
    ZB_WIDTH((int64_t)c->n_heads * c->head_dim, "num_attention_heads x head_dim");
    ZB_CHECK(c->max_pos <= (1 << 30), "%s: max_position_embeddings %d out of range 1..%d", src, c->max_pos, 1 << 30);
    ZB_CHECK(c->rms_eps > 0, "%s: rms_norm_eps must be positive", src);
    ZB_CHECK(c->max_pos > 0, "%s: max_position_embeddings must be positive", src);
    ZB_CHECK(c->n_eos >= 0 && c->n_eos <= ZB_MAX_EOS, "%s: too many eos ids", src);
    ZB_CHECK(c->bos_id < c->vocab, "%s: bos_token_id %d >= vocab_size %d", src, c->bos_id, c->vocab);
    for (int i = 0; i < c->n_eos; i++)
        ZB_CHECK(c->eos_ids[i] >= 0 && c->eos_ids[i] < c->vocab, "%s: eos_token_id %d outside the vocabulary (%d)",
                 src, c->eos_ids[i], c->vocab);
    ZB_TRY(rope_validate(&c->rope, src, ""));
    int any_attn = 0, any_mla = 0, any_mamba = 0;
    for (int i = 0; i < c->n_layers; i++) {
        ZB_CHECK(c->kinds[i] == ZB_LAYER_ATTN || c->kinds[i] == ZB_LAYER_MLA || c->kinds[i] == ZB_LAYER_MAMBA2,
                 "%s: layer %d has an unknown kind %d", src, i, (int)c->kinds[i]);
        any_attn |= c->kinds[i] == ZB_LAYER_ATTN;
        any_mla |= c->kinds[i] == ZB_LAYER_MLA;
        any_mamba |= c->kinds[i] == ZB_LAYER_MAMBA2;
    }
    if (any_attn)
        ZB_CHECK(c->head_dim % 2 == 0 && c->head_dim <= ZB_ROPE_MAX_DIM,
                 "%s: head_dim %d must be even and at most %d for RoPE", src, c->head_dim, ZB_ROPE_MAX_DIM);
    if (any_mla) {
        const zb_mla_dims *m = &c->mla;
        ZB_DIM(m->n_heads, "mla.n_heads");
        ZB_DIM(m->kv_lora_rank, "mla.kv_lora_rank");
        ZB_CHECK(m->q_lora_rank >= 0 && m->q_lora_rank <= ZB_MAX_DIM, "%s: mla.q_lora_rank %d out of range 0..%d", src,
                 m->q_lora_rank, ZB_MAX_DIM);
        ZB_CHECK(m->qk_nope <= ZB_MAX_DIM && m->qk_rope <= ZB_MAX_DIM && m->v_head_dim <= ZB_MAX_DIM,
                 "%s: mla head dims (qk_nope %d, qk_rope %d, v %d) above %d", src, m->qk_nope, m->qk_rope,
                 m->v_head_dim, ZB_MAX_DIM);
        ZB_WIDTH((int64_t)m->n_heads * (m->qk_nope + m->qk_rope), "mla.n_heads x (qk_nope + qk_rope)");
        ZB_WIDTH((int64_t)m->n_heads * m->v_head_dim, "mla.n_heads x v_head_dim");
        ZB_CHECK(!m->q_norm || m->q_lora_rank > 0, "%s: mla.q_norm needs q_lora_rank > 0", src);
        ZB_CHECK(m->qk_rope > 0 && m->qk_rope % 2 == 0 && m->qk_rope <= ZB_ROPE_MAX_DIM,
                 "%s: mla.qk_rope_head_dim %d must be positive, even and at most %d", src, m->qk_rope,
                 ZB_ROPE_MAX_DIM);
        ZB_CHECK(m->qk_nope >= 0, "%s: mla.qk_nope_head_dim must be >= 0", src);
        ZB_CHECK(m->v_head_dim > 0, "%s: mla.v_head_dim must be positive", src);
        ZB_CHECK(m->kv_heads > 0 && m->n_heads % m->kv_heads == 0,
                 "%s: mla.n_heads %d is not a multiple of mla.kv_heads %d", src, m->n_heads, m->kv_heads);
        ZB_WIDTH((int64_t)m->kv_heads * (m->qk_nope + m->v_head_dim), "mla.kv_heads x (qk_nope + v_head_dim)");
        if (m->rope.theta != 0) ZB_TRY(rope_validate(&m->rope, src, "mla."));   /* 0: unset, the model's */
    }
    if (any_mamba) {
        const zb_mamba2_dims *s = &c->mamba;
        ZB_DIM(s->nheads, "mamba2.nheads");
        ZB_DIM(s->headdim, "mamba2.headdim");
        ZB_DIM(s->d_state, "mamba2.d_state");
        ZB_CHECK((int64_t)s->d_inner == (int64_t)s->nheads * s->headdim, "%s: mamba2.d_inner %d != nheads %d x headdim %d",
                 src, s->d_inner, s->nheads, s->headdim);
        ZB_WIDTH(s->d_inner, "mamba2.d_inner");
        ZB_DIM(s->x_groups, "mamba2.x_groups");
        ZB_DIM(s->b_groups, "mamba2.b_groups");
        ZB_DIM(s->c_groups, "mamba2.c_groups");
        /* in_proj rows [z | x | B | C | dt], the conv channels [x | B | C], one head's state */
        int64_t xw = (int64_t)s->x_groups * s->headdim, bcw = ((int64_t)s->b_groups + s->c_groups) * s->d_state;
        ZB_WIDTH(s->d_inner + xw + bcw + s->nheads, "mamba2 in_proj rows (d_inner + x_groups x headdim + "
                 "(b_groups + c_groups) x d_state + nheads)");
        ZB_WIDTH((int64_t)s->headdim * s->d_state, "mamba2.headdim x d_state");
        ZB_WIDTH((int64_t)s->nheads * s->headdim * s->d_state, "mamba2 state (nheads x headdim x d_state)");
        ZB_CHECK(s->conv_k <= 1024, "%s: mamba2.conv_kernel %d out of range 1..1024", src, s->conv_k);
        ZB_CHECK(s->chunk <= ZB_MAX_DIM, "%s: mamba2.chunk_size %d out of range 1..%d", src, s->chunk, ZB_MAX_DIM);
        /* the SSD's per-chunk products [chunk, d_state], [chunk, headdim] */
        ZB_WIDTH((int64_t)s->chunk * (s->d_state > s->headdim ? s->d_state : s->headdim),
                 "mamba2.chunk_size x max(d_state, headdim)");
        ZB_CHECK(s->x_groups > 0 && s->nheads % s->x_groups == 0, "%s: mamba2.x_groups %d does not divide nheads %d",
                 src, s->x_groups, s->nheads);
        ZB_CHECK(s->b_groups > 0 && s->nheads % s->b_groups == 0, "%s: mamba2.b_groups %d does not divide nheads %d",
                 src, s->b_groups, s->nheads);
        ZB_CHECK(s->c_groups > 0 && s->nheads % s->c_groups == 0, "%s: mamba2.c_groups %d does not divide nheads %d",
                 src, s->c_groups, s->nheads);
        ZB_CHECK(s->conv_k > 0, "%s: mamba2.conv_kernel must be positive", src);
        ZB_CHECK(s->chunk > 0, "%s: mamba2.chunk_size must be positive", src);
        ZB_CHECK(s->norm_group > 0 && s->d_inner % s->norm_group == 0,
                 "%s: mamba2.norm_group_size %d does not divide d_inner %d", src, s->norm_group, s->d_inner);
        ZB_CHECK(s->dt_min >= 0 && s->dt_max >= s->dt_min, "%s: mamba2.time_step_limit must satisfy 0 <= min <= max",
                 src);
    }
    ZB_CHECK(c->teacher_layers >= 0 && c->teacher_kv_heads >= 0 && c->teacher_head_dim >= 0,
             "%s: teacher dims must be >= 0", src);
    ZB_CHECK(c->teacher_layers <= ZB_MAX_LAYERS && c->teacher_kv_heads <= ZB_MAX_DIM && c->teacher_head_dim <= ZB_MAX_DIM,
             "%s: teacher dims out of range", src);
    return ZB_OK;
}
