/* release.c — the authors' Zebra-Llama release format (release.h, SPEC §3).
 *
 * Reading follows what their loader builds from hybrid_config.json (HybridConfig's defaults for
 * absent keys; DeepseekV3YarnRotaryEmbedding for the MLA rope; their Mamba2 with nheads =
 * ngroups, headdim = d_state, x and B in d_xb / d_state groups repeated to the heads, a gated
 * RMSNorm after the gate per group of d_state channels with eps 1e-5). Writing gives the same
 * keys as their save_config. */
#include "release.h"

#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "zb_common.h"

#define ZB_RELEASE_NORM_EPS 1e-5f   /* their Mamba2's RMSNormGated(eps=1e-5), fixed */

int zb_release_is_dir(const char *dir) {
    char p[4096 + 32];
    struct stat sb;
    snprintf(p, sizeof p, "%s/hybrid_config.json", dir);
    return stat(p, &sb) == 0;
}

/* ---- reading -------------------------------------------------------------------------------- */

static const cJSON *item(const cJSON *o, const char *k) { return cJSON_GetObjectItemCaseSensitive(o, k); }

/* A key that must be false / absent for zebra to compute what the release computes. */
static int refuse_true(const cJSON *o, const char *key, int dflt, const char *src, const char *why) {
    int v;
    ZB_TRY(zb_json_bool(o, key, src, dflt, &v));
    if (v == !dflt) return zb_fail(ZB_EFORMAT, "%s: key '%s' = %s is not supported (%s)", src, key, v ? "true" : "false", why);
    return ZB_OK;
}

/* The MLA rope: rope_theta + rope_scaling as their _init_rope reads them (null: unscaled). */
static int release_rope(const cJSON *h, const char *src, zb_rope_cfg *r) {
    memset(r, 0, sizeof *r);
    ZB_TRY(zb_json_float(h, "rope_theta", src, 0, 10000.0f, &r->theta));
    const cJSON *rs = item(h, "rope_scaling");
    if (!rs || cJSON_IsNull(rs)) { r->type = ZB_ROPE_DEFAULT; return ZB_OK; }
    if (!cJSON_IsObject(rs)) return zb_fail(ZB_EFORMAT, "%s: key 'rope_scaling' must be an object or null", src);
    const cJSON *t = item(rs, "rope_type");
    if (!t) t = item(rs, "type");
    const char *type = cJSON_IsString(t) ? t->valuestring : "";
    if (strcmp(type, "yarn"))
        return zb_fail(ZB_EFORMAT, "%s: key 'rope_scaling.rope_type': '%s' is not supported for the MLA layers "
                       "(yarn, or rope_scaling null%s)", src, type,
                       strcmp(type, "llama3") ? "" : "; the release builds no MLA rope for llama3");
    /* DeepseekV3YarnRotaryEmbedding's default for an absent original_max_position_embeddings */
    cJSON *cp = cJSON_Duplicate(rs, 1);
    if (!cp) return zb_fail(ZB_ENOMEM, "out of memory reading %s", src);
    if (!item(cp, "original_max_position_embeddings")) cJSON_AddNumberToObject(cp, "original_max_position_embeddings", 4096);
    float theta = r->theta;
    int rc = zb_rope_scaling_parse(cp, src, "rope_scaling.", r);
    cJSON_Delete(cp);
    r->theta = theta;
    return rc;
}

/* The Mamba2 dims of their Mamba2(d_model, d_xb, d_inner, **ssm_cfg) (hybrid_mamba2_layer.py). */
static int release_mamba(const cJSON *h, const char *src, const zb_config *c, zb_mamba2_dims *m) {
    const cJSON *s = item(h, "ssm_cfg");
    if (s && !cJSON_IsNull(s) && !cJSON_IsObject(s))
        return zb_fail(ZB_EFORMAT, "%s: key 'ssm_cfg' must be an object", src);
    cJSON *empty = NULL;
    if (!s || cJSON_IsNull(s)) s = empty = cJSON_CreateObject();
    char where[4096 + 64];
    snprintf(where, sizeof where, "%s: ssm_cfg", src);
    int expand, ngroups, d_state, d_conv, chunk, conv_bias, d_inner, d_xb, rc;
    if ((rc = zb_json_int(s, "expand", where, 0, 2, 0, 0, &expand)) ||
        (rc = zb_json_int(s, "ngroups", where, 0, 1, 0, 0, &ngroups)) ||
        (rc = zb_json_int(s, "d_state", where, 0, 128, 0, 0, &d_state)) ||
        (rc = zb_json_int(s, "d_conv", where, 0, 4, 0, 0, &d_conv)) ||
        (rc = zb_json_int(s, "chunk_size", where, 0, 256, 0, 0, &chunk)) ||
        (rc = zb_json_bool(s, "conv_bias", where, 1, &conv_bias)) ||
        (rc = refuse_true(s, "bias", 0, where, "in_proj / out_proj biases")) ||
        (rc = refuse_true(s, "D_has_hdim", 0, where, "D per channel")) ||
        (rc = refuse_true(s, "rmsnorm", 1, where, "Mamba2 without its gated norm")) ||
        (rc = refuse_true(s, "norm_before_gate", 0, where, "the gated norm before the gate")) ||
        (rc = refuse_true(s, "repeat_kv_before_conv", 0, where, "x and B repeated before the conv")))
        goto done;
    const cJSON *ds = item(s, "d_ssm");
    if (ds && !cJSON_IsNull(ds)) { rc = zb_fail(ZB_EFORMAT, "%s: key 'd_ssm' is not supported (a gated MLP part)", where); goto done; }
    m->dt_min = 0;
    m->dt_max = INFINITY;
    const cJSON *dl = item(s, "dt_limit");
    if (dl && !cJSON_IsNull(dl)) {
        const cJSON *a = cJSON_GetArrayItem(dl, 0), *b = cJSON_GetArrayItem(dl, 1);
        if (!cJSON_IsArray(dl) || cJSON_GetArraySize(dl) != 2 || !cJSON_IsNumber(a) || !cJSON_IsNumber(b)) {
            rc = zb_fail(ZB_EFORMAT, "%s: key 'dt_limit' must be [min, max]", where);
            goto done;
        }
        m->dt_min = (float)a->valuedouble;
        m->dt_max = (float)b->valuedouble;
    }
    if ((rc = zb_json_int(h, "d_inner", src, 0, expand * c->d_model, 1, expand * c->d_model, &d_inner)) ||
        (rc = zb_json_int(h, "d_xb", src, 0, 2560, 0, 0, &d_xb)))
        goto done;
    /* their asserts: d_inner = ngroups * d_state; then nheads = ngroups, headdim = d_state */
    if (ngroups <= 0 || d_state <= 0 || d_inner != ngroups * d_state) {
        rc = zb_fail(ZB_EFORMAT, "%s: d_inner %d must equal ssm_cfg.ngroups %d x ssm_cfg.d_state %d (as the release "
                     "asserts)", src, d_inner, ngroups, d_state);
        goto done;
    }
    if (d_xb <= 0 || d_xb % d_state || ngroups % (d_xb / d_state)) {
        rc = zb_fail(ZB_EFORMAT, "%s: d_xb %d must be a multiple of ssm_cfg.d_state %d giving a group count that divides "
                     "ngroups %d", src, d_xb, d_state, ngroups);
        goto done;
    }
    m->d_inner = d_inner;
    m->nheads = ngroups;
    m->headdim = d_state;
    m->d_state = d_state;
    m->x_groups = m->b_groups = d_xb / d_state;
    m->c_groups = ngroups;
    m->conv_k = d_conv;
    m->chunk = chunk;
    m->norm_group = d_state;   /* RMSNormGated(group_size = d_ssm / ngroups) */
    m->conv_bias = conv_bias;
done:
    cJSON_Delete(empty);
    return rc;
}

static int release_mla(const cJSON *h, const char *src, zb_mla_dims *m) {
    int kv_heads, full, rq, norm, bias;
    ZB_TRY(zb_json_int(h, "num_attention_heads", src, 0, 32, 0, 0, &m->n_heads));
    ZB_TRY(zb_json_int(h, "num_key_value_heads", src, 0, 8, 0, 0, &kv_heads));
    ZB_TRY(zb_json_bool(h, "use_full_kv_head", src, 0, &full));
    ZB_TRY(zb_json_int(h, "kv_lora_rank", src, 0, 128, 0, 0, &m->kv_lora_rank));
    ZB_TRY(zb_json_int(h, "q_lora_rank", src, 0, 1536, 1, 0, &rq));
    ZB_TRY(zb_json_bool(h, "use_lora_layer_norm", src, 0, &norm));
    ZB_TRY(zb_json_int(h, "qk_rope_head_dim", src, 0, 64, 0, 0, &m->qk_rope));
    ZB_TRY(zb_json_int(h, "qk_nope_head_dim", src, 0, 128, 0, 0, &m->qk_nope));
    ZB_TRY(zb_json_int(h, "v_head_dim", src, 0, 128, 0, 0, &m->v_head_dim));
    ZB_TRY(zb_json_bool(h, "attention_bias", src, 0, &bias));
    if (bias) return zb_fail(ZB_EFORMAT, "%s: key 'attention_bias' = true is not supported (MLA projection biases)", src);
    m->q_lora_rank = rq;
    m->q_norm = norm && rq > 0;
    m->kv_norm = norm;
    m->kv_heads = full ? m->n_heads : kv_heads;
    m->rope_interleave = 1;   /* their apply_rotary_pos_emb always de-interleaves the rope part */
    /* per-layer ranks (their dynamic-rank SVD init) would give layers of different shapes */
    const cJSON *lr = item(h, "layer_rank_list"), *e;
    cJSON_ArrayForEach(e, lr) {
        int q, kv;
        char where[4096 + 64];
        snprintf(where, sizeof where, "%s: layer_rank_list.%s", src, e->string ? e->string : "?");
        ZB_TRY(zb_json_int(e, "q_rank", where, 0, rq, 0, 0, &q));
        ZB_TRY(zb_json_int(e, "kv_rank", where, 0, m->kv_lora_rank, 0, 0, &kv));
        if (q != rq || kv != m->kv_lora_rank)
            return zb_fail(ZB_EFORMAT, "%s: layer %s has ranks q %d / kv %d, not q_lora_rank %d / kv_lora_rank %d: "
                           "per-layer ranks are not supported", src, e->string ? e->string : "?", q, kv, rq,
                           m->kv_lora_rank);
    }
    return release_rope(h, src, &m->rope);
}

/* hybrid keys that must agree with the base config.json */
static int same_int(const cJSON *h, const char *key, int dflt, int want, const char *src, const char *base_key) {
    int v;
    ZB_TRY(zb_json_int(h, key, src, 0, dflt, 0, 0, &v));
    if (v != want)
        return zb_fail(ZB_EFORMAT, "%s: key '%s' = %d disagrees with config.json's %s %d", src, key, v, base_key, want);
    return ZB_OK;
}

static int release_parse(const cJSON *h, const char *src, const zb_config *base, zb_config *c) {
    if (!cJSON_IsObject(h)) return zb_fail(ZB_EFORMAT, "%s: must be a JSON object", src);
    *c = *base;
    snprintf(c->model_type, sizeof c->model_type, "zebra");
    ZB_TRY(same_int(h, "n_layer", 32, base->n_layers, src, "num_hidden_layers"));
    ZB_TRY(same_int(h, "hidden_size", 4096, base->d_model, src, "hidden_size"));
    ZB_TRY(same_int(h, "intermediate_size", 18432, base->ffn, src, "intermediate_size"));
    const cJSON *act = item(h, "hidden_act");
    if (act && !(cJSON_IsString(act) && !strcmp(act->valuestring, "silu")))
        return zb_fail(ZB_EFORMAT, "%s: key 'hidden_act' must be \"silu\"", src);
    float eps;
    ZB_TRY(zb_json_float(h, "rms_norm_eps", src, 0, 1e-5f, &eps));
    if (eps != base->rms_eps)
        return zb_fail(ZB_EFORMAT, "%s: key 'rms_norm_eps' = %g disagrees with config.json's %g", src, eps, base->rms_eps);
    /* layer kinds: mla_layers, every other layer Mamba2 */
    const cJSON *ml = item(h, "mla_layers");
    if (ml && !cJSON_IsArray(ml)) return zb_fail(ZB_EFORMAT, "%s: key 'mla_layers' must be a list of layer indices", src);
    int any_mla = 0, any_mamba = 0, k = 0;
    for (int i = 0; i < c->n_layers; i++) c->kinds[i] = ZB_LAYER_MAMBA2;
    const cJSON *e;
    cJSON_ArrayForEach(e, ml) {
        if (!cJSON_IsNumber(e) || e->valuedouble != floor(e->valuedouble))
            return zb_fail(ZB_EFORMAT, "%s: key 'mla_layers[%d]' must be an integer", src, k);
        if (e->valuedouble < 0 || e->valuedouble >= c->n_layers)
            return zb_fail(ZB_EFORMAT, "%s: key 'mla_layers[%d]' = %.0f is out of range: the model has layers 0..%d",
                           src, k, e->valuedouble, c->n_layers - 1);
        int l = (int)e->valuedouble;
        if (c->kinds[l] == ZB_LAYER_MLA)
            return zb_fail(ZB_EFORMAT, "%s: key 'mla_layers' lists layer %d twice", src, l);
        c->kinds[l] = ZB_LAYER_MLA;
        k++;
    }
    for (int i = 0; i < c->n_layers; i++) {
        any_mla |= c->kinds[i] == ZB_LAYER_MLA;
        any_mamba |= c->kinds[i] == ZB_LAYER_MAMBA2;
    }
    memset(&c->mla, 0, sizeof c->mla);
    memset(&c->mamba, 0, sizeof c->mamba);
    if (any_mla) ZB_TRY(release_mla(h, src, &c->mla));
    if (any_mamba) {
        ZB_TRY(same_int(h, "d_model", 2560, base->d_model, src, "hidden_size"));
        ZB_TRY(release_mamba(h, src, c, &c->mamba));
        if (base->rms_eps != ZB_RELEASE_NORM_EPS)
            return zb_fail(ZB_EFORMAT, "%s: rms_norm_eps %g: the release's Mamba2 gated norm uses eps 1e-05, zebra one "
                           "eps for every norm", src, base->rms_eps);
    }
    c->teacher_layers = base->n_layers;
    c->teacher_kv_heads = base->n_kv_heads;
    c->teacher_head_dim = base->head_dim;
    return ZB_OK;
}

int zb_release_config(const char *dir, zb_config *c) {
    char bp[4096 + 32], hp[4096 + 32];
    snprintf(bp, sizeof bp, "%s/config.json", dir);
    snprintf(hp, sizeof hp, "%s/hybrid_config.json", dir);
    zb_config base;
    ZB_TRY(zb_config_load(bp, &base));
    if (strcmp(base.model_type, "llama"))
        return zb_fail(ZB_EFORMAT, "%s: model_type '%s': beside a hybrid_config.json the base config must be a llama",
                       bp, base.model_type);
    ZB_TRY(zb_config_validate(&base, bp));
    char *txt = NULL;
    ZB_TRY(zb_read_file(hp, &txt, NULL));
    cJSON *h = cJSON_Parse(txt);
    free(txt);
    if (!h) return zb_fail(ZB_EFORMAT, "%s: malformed JSON", hp);
    int rc = release_parse(h, hp, &base, c);
    cJSON_Delete(h);
    if (!rc) rc = zb_config_validate(c, hp);
    return rc;
}

/* ---- names ---------------------------------------------------------------------------------- */

/* Layer index and the rest of "model.layers.N.rest", or -1. */
static int layer_of(const char *name, const char **rest) {
    int l, n = 0;
    if (sscanf(name, "model.layers.%d.%n", &l, &n) != 1 || n == 0) return -1;
    *rest = name + n;
    return l;
}

void zb_release_stored_name(const zb_config *c, const char *ours, char *out, size_t cap) {
    const char *rest;
    int l = layer_of(ours, &rest);
    if (l >= 0 && l < c->n_layers && c->kinds[l] == ZB_LAYER_MLA && !strncmp(rest, "self_attn.", 10)) {
        rest += 10;
        snprintf(out, cap, "model.layers.%d.mla.%s", l, !strcmp(rest, "o_proj.weight") ? "out_proj.weight" : rest);
        return;
    }
    snprintf(out, cap, "%s", ours);
}

void zb_release_our_name(const zb_config *c, const char *stored, char *out, size_t cap) {
    const char *rest;
    int l = layer_of(stored, &rest);
    if (l >= 0 && l < c->n_layers && c->kinds[l] == ZB_LAYER_MLA && !strncmp(rest, "mla.", 4)) {
        rest += 4;
        snprintf(out, cap, "model.layers.%d.self_attn.%s", l, !strcmp(rest, "out_proj.weight") ? "o_proj.weight" : rest);
        return;
    }
    snprintf(out, cap, "%s", stored);
}

/* ---- writing -------------------------------------------------------------------------------- */

int zb_release_check(const zb_config *c) {
    int any_mla = 0, any_mamba = 0;
    for (int i = 0; i < c->n_layers; i++) {
        if (c->kinds[i] == ZB_LAYER_ATTN)
            return zb_fail(ZB_EARG, "layer %d is an attention layer: the release format holds MLA and Mamba2 layers only", i);
        any_mla |= c->kinds[i] == ZB_LAYER_MLA;
        any_mamba |= c->kinds[i] == ZB_LAYER_MAMBA2;
    }
    if (any_mla) {
        const zb_mla_dims *m = &c->mla;
        if (m->rope.type == ZB_ROPE_LLAMA3)
            return zb_fail(ZB_EARG, "the MLA layers use llama3-scaled RoPE (a model made before zebra's MLA had its "
                           "own YaRN rope): the release's MLA rotates with YaRN, so this model would compute another "
                           "function there; keep it in zebra's format, or retrain it with mla.rope_scaling yarn");
        if (!m->rope_interleave)
            return zb_fail(ZB_EARG, "mla.rope_interleave is false: the release always stores the rope dims interleaved");
        if (m->q_lora_rank == 0 || m->q_lora_rank % 8 || m->kv_lora_rank % 8)
            return zb_fail(ZB_EARG, "mla.q_lora_rank %d and kv_lora_rank %d must be positive multiples of 8 (the "
                           "release's HybridConfig asserts it)", m->q_lora_rank, m->kv_lora_rank);
        if (m->q_norm != m->kv_norm)
            return zb_fail(ZB_EARG, "mla.q_norm %d != mla.kv_norm %d: the release has one use_lora_layer_norm for both",
                           m->q_norm, m->kv_norm);
        if (m->kv_heads != c->n_kv_heads && m->kv_heads != m->n_heads)
            return zb_fail(ZB_EARG, "mla.kv_heads %d is neither num_key_value_heads %d nor mla.n_heads %d (the release's "
                           "two kv_b_proj layouts)", m->kv_heads, c->n_kv_heads, m->n_heads);
        if (m->n_heads % c->n_kv_heads)
            return zb_fail(ZB_EARG, "mla.n_heads %d is not a multiple of num_key_value_heads %d", m->n_heads, c->n_kv_heads);
    }
    if (any_mamba) {
        const zb_mamba2_dims *s = &c->mamba;
        if (s->nheads != s->c_groups || s->headdim != s->d_state || s->x_groups != s->b_groups ||
            s->norm_group != s->headdim)
            return zb_fail(ZB_EARG, "the Mamba2 layout (nheads %d, headdim %d, d_state %d, x/b/c groups %d/%d/%d, norm "
                           "group %d) is not the release's (nheads = c_groups, headdim = d_state, x_groups = b_groups, "
                           "per-head gated norm)", s->nheads, s->headdim, s->d_state, s->x_groups, s->b_groups,
                           s->c_groups, s->norm_group);
        if (s->dt_min != 0 && isinf(s->dt_max))
            return zb_fail(ZB_EARG, "mamba2.time_step_limit [%g, inf] cannot be written in JSON", s->dt_min);
        if (c->rms_eps != ZB_RELEASE_NORM_EPS)
            return zb_fail(ZB_EARG, "rms_norm_eps %g: the release's Mamba2 gated norm uses 1e-05", c->rms_eps);
    }
    return ZB_OK;
}

/* A float as Python's json writes one: shortest text, ".0" on integral values. */
static cJSON *pyfloat(float v) {
    char t[64];
    zb_float_text(t, sizeof t - 2, v);
    if (!strpbrk(t, ".eEn")) strcat(t, ".0");
    return cJSON_CreateRaw(t);
}

/* o as Python's json.dump(indent=ind) lays it out (cJSON's tabs -> ind spaces, ": "); o freed. */
static char *print_or_fail(cJSON *o, const char *what, int ind) {
    char *s = o ? cJSON_Print(o) : NULL, *r = NULL;
    cJSON_Delete(o);
    size_t n = s ? strlen(s) : 0, k = 0;
    if (s && (r = malloc(n * (size_t)ind + 1)))   /* a tab is never inside a string (escaped) */
        for (size_t i = 0; i < n; i++) {
            if (s[i] == '\t' && i && s[i - 1] == ':') r[k++] = ' ';
            else if (s[i] == '\t') for (int j = 0; j < ind; j++) r[k++] = ' ';
            else r[k++] = s[i];
        }
    if (r) r[k] = 0;
    free(s);
    if (!r) zb_fail(ZB_ENOMEM, "out of memory writing %s", what);
    return r;
}

static cJSON *rope_scaling_obj(const zb_rope_cfg *r) {
    if (r->type == ZB_ROPE_DEFAULT) return cJSON_CreateNull();
    cJSON *o = cJSON_CreateObject();
    cJSON_AddItemToObject(o, "factor", pyfloat(r->factor));
    if (r->type == ZB_ROPE_LLAMA3) {
        cJSON_AddItemToObject(o, "high_freq_factor", pyfloat(r->high_freq_factor));
        cJSON_AddItemToObject(o, "low_freq_factor", pyfloat(r->low_freq_factor));
    }
    cJSON_AddNumberToObject(o, "original_max_position_embeddings", r->original_max_pos);
    cJSON_AddStringToObject(o, "rope_type", zb_rope_type_name(r->type));
    if (r->type == ZB_ROPE_YARN) {   /* only what differs from DeepSeek's defaults */
        if (r->beta_fast != 32) cJSON_AddItemToObject(o, "beta_fast", pyfloat(r->beta_fast));
        if (r->beta_slow != 1) cJSON_AddItemToObject(o, "beta_slow", pyfloat(r->beta_slow));
        if (r->mscale != 1) cJSON_AddItemToObject(o, "mscale", pyfloat(r->mscale));
        if (r->mscale_all_dim != 0) cJSON_AddItemToObject(o, "mscale_all_dim", pyfloat(r->mscale_all_dim));
    }
    return o;
}

char *zb_release_hybrid_json(const zb_config *c) {
    if (zb_release_check(c)) return NULL;
    const zb_mla_dims *m = &c->mla;
    const zb_mamba2_dims *s = &c->mamba;
    int any_mla = 0, any_mamba = 0;
    for (int i = 0; i < c->n_layers; i++) {
        any_mla |= c->kinds[i] == ZB_LAYER_MLA;
        any_mamba |= c->kinds[i] == ZB_LAYER_MAMBA2;
    }
    /* the MLA keys of a model without MLA layers (or the Mamba2 ones without Mamba2 layers):
     * what the release derives from the Llama shape */
    zb_mla_dims md = {.n_heads = c->n_heads, .q_lora_rank = 1536, .kv_lora_rank = 128, .qk_nope = c->head_dim / 2,
                      .qk_rope = c->head_dim / 2, .v_head_dim = c->head_dim, .kv_heads = c->n_kv_heads,
                      .rope = {.type = ZB_ROPE_DEFAULT, .theta = c->rope.theta}};
    zb_mamba2_dims sd = {.d_inner = c->n_heads * c->head_dim, .nheads = c->n_heads, .headdim = c->head_dim,
                         .d_state = c->head_dim, .x_groups = c->n_kv_heads, .b_groups = c->n_kv_heads,
                         .c_groups = c->n_heads, .conv_k = 4, .chunk = 256, .norm_group = c->head_dim,
                         .dt_max = INFINITY, .conv_bias = 1};
    if (!any_mla) m = &md;
    if (!any_mamba) s = &sd;
    cJSON *o = cJSON_CreateObject(), *a;
    cJSON_AddNumberToObject(o, "hidden_size", c->d_model);
    cJSON_AddNumberToObject(o, "intermediate_size", c->ffn);
    cJSON_AddStringToObject(o, "hidden_act", "silu");
    cJSON_AddNumberToObject(o, "n_layer", c->n_layers);
    cJSON_AddItemToObject(o, "mla_layers", a = cJSON_CreateArray());
    for (int i = 0; i < c->n_layers; i++)
        if (c->kinds[i] == ZB_LAYER_MLA) cJSON_AddItemToArray(a, cJSON_CreateNumber(i));
    cJSON_AddItemToObject(o, "rms_norm_eps", pyfloat(c->rms_eps));
    cJSON_AddNumberToObject(o, "num_attention_heads", m->n_heads);
    cJSON_AddNumberToObject(o, "num_key_value_heads", c->n_kv_heads);
    cJSON_AddNumberToObject(o, "kv_lora_rank", m->kv_lora_rank);
    cJSON_AddNumberToObject(o, "q_lora_rank", m->q_lora_rank);
    cJSON_AddBoolToObject(o, "use_lora_layer_norm", m->kv_norm);
    cJSON_AddBoolToObject(o, "use_full_kv_head", m->kv_heads != c->n_kv_heads);
    cJSON_AddNumberToObject(o, "qk_rope_head_dim", m->qk_rope);
    cJSON_AddNumberToObject(o, "v_head_dim", m->v_head_dim);
    cJSON_AddNumberToObject(o, "qk_nope_head_dim", m->qk_nope);
    cJSON_AddNumberToObject(o, "qkv_rank_divisor", 8);
    cJSON_AddNumberToObject(o, "max_position_embeddings", c->max_pos);
    cJSON_AddItemToObject(o, "rope_theta", pyfloat(m->rope.theta));
    cJSON_AddItemToObject(o, "rope_scaling", rope_scaling_obj(&m->rope));
    cJSON_AddBoolToObject(o, "attention_bias", 0);
    cJSON_AddItemToObject(o, "attention_dropout", pyfloat(0));
    cJSON_AddStringToObject(o, "rope_type", "yarn");
    cJSON_AddNumberToObject(o, "d_model", c->d_model);
    cJSON *sc = cJSON_CreateObject();
    cJSON_AddItemToObject(o, "ssm_cfg", sc);
    cJSON_AddNumberToObject(sc, "expand", s->d_inner % c->d_model ? 1 : s->d_inner / c->d_model);
    cJSON_AddNumberToObject(sc, "ngroups", s->nheads);
    cJSON_AddNumberToObject(sc, "d_state", s->d_state);
    cJSON_AddBoolToObject(sc, "repeat_kv_before_conv", 0);
    /* Mamba2's own defaults (d_conv 4, chunk 256, conv bias, dt limit (0, inf)) written only when
     * they differ */
    if (s->conv_k != 4) cJSON_AddNumberToObject(sc, "d_conv", s->conv_k);
    if (s->chunk != 256) cJSON_AddNumberToObject(sc, "chunk_size", s->chunk);
    if (!s->conv_bias) cJSON_AddBoolToObject(sc, "conv_bias", 0);
    if (s->dt_min != 0 || !isinf(s->dt_max)) {
        cJSON *dl = cJSON_CreateArray();
        cJSON_AddItemToArray(dl, pyfloat(s->dt_min));
        cJSON_AddItemToArray(dl, pyfloat(s->dt_max));
        cJSON_AddItemToObject(sc, "dt_limit", dl);
    }
    cJSON_AddNumberToObject(o, "d_inner", s->d_inner);
    cJSON_AddNumberToObject(o, "d_xb", s->x_groups * s->headdim);
    return print_or_fail(o, "hybrid_config.json", 4);   /* their save_config: indent 4 */
}

char *zb_hf_llama_json(const zb_config *c, const char *torch_dtype) {
    cJSON *o = cJSON_CreateObject(), *a;
    cJSON_AddItemToObject(o, "architectures", a = cJSON_CreateArray());
    cJSON_AddItemToArray(a, cJSON_CreateString("LlamaForCausalLM"));
    cJSON_AddBoolToObject(o, "attention_bias", 0);
    cJSON_AddItemToObject(o, "attention_dropout", pyfloat(0));
    if (c->bos_id < 0) cJSON_AddNullToObject(o, "bos_token_id");
    else cJSON_AddNumberToObject(o, "bos_token_id", c->bos_id);
    if (c->n_eos == 0) cJSON_AddNullToObject(o, "eos_token_id");
    else if (c->n_eos == 1) cJSON_AddNumberToObject(o, "eos_token_id", c->eos_ids[0]);
    else {
        cJSON_AddItemToObject(o, "eos_token_id", a = cJSON_CreateArray());
        for (int i = 0; i < c->n_eos; i++) cJSON_AddItemToArray(a, cJSON_CreateNumber(c->eos_ids[i]));
    }
    cJSON_AddNumberToObject(o, "head_dim", c->head_dim);
    cJSON_AddStringToObject(o, "hidden_act", "silu");
    cJSON_AddNumberToObject(o, "hidden_size", c->d_model);
    cJSON_AddItemToObject(o, "initializer_range", pyfloat(0.02f));
    cJSON_AddNumberToObject(o, "intermediate_size", c->ffn);
    cJSON_AddNumberToObject(o, "max_position_embeddings", c->max_pos);
    cJSON_AddBoolToObject(o, "mlp_bias", 0);
    cJSON_AddStringToObject(o, "model_type", "llama");
    cJSON_AddNumberToObject(o, "num_attention_heads", c->n_heads);
    cJSON_AddNumberToObject(o, "num_hidden_layers", c->n_layers);
    cJSON_AddNumberToObject(o, "num_key_value_heads", c->n_kv_heads);
    cJSON_AddNumberToObject(o, "pretraining_tp", 1);
    cJSON_AddItemToObject(o, "rms_norm_eps", pyfloat(c->rms_eps));
    cJSON_AddItemToObject(o, "rope_scaling", rope_scaling_obj(&c->rope));
    cJSON_AddItemToObject(o, "rope_theta", pyfloat(c->rope.theta));
    cJSON_AddBoolToObject(o, "tie_word_embeddings", c->tie_embeddings);
    cJSON_AddStringToObject(o, "torch_dtype", torch_dtype);
    cJSON_AddBoolToObject(o, "use_cache", 1);
    cJSON_AddNumberToObject(o, "vocab_size", c->vocab);
    return print_or_fail(o, "config.json", 2);   /* HF to_json_string: indent 2 */
}
