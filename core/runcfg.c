/* runcfg.c — see runcfg.h: run.json read into a zb_run_cfg, every key typed and range-checked. */
#include "runcfg.h"

#include <cjson/cJSON.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "zb_common.h"

typedef enum { T_STR, T_INT, T_NUM, T_BOOL, T_CHOICE, T_LIST, T_GROUPS } key_type;
/* range of a number: lo <= x (lo_open: lo < x), x <= hi (hi_open: x < hi) */
typedef struct {
    const char *name;
    key_type type;
    double lo, hi;
    int lo_open, hi_open;
    const char *choices;   /* T_CHOICE: "a|b" */
} key_spec;

#define BIG 1e300
static const key_spec keys[] = {
    {"model", T_STR, 0, 0, 0, 0, NULL},        {"teacher", T_STR, 0, 0, 0, 0, NULL},
    {"reference", T_STR, 0, 0, 0, 0, NULL},    {"data", T_STR, 0, 0, 0, 0, NULL},
    {"out", T_STR, 0, 0, 0, 0, NULL},
    {"seq_len", T_INT, 2, 1 << 30, 0, 0, NULL}, {"micro_batch", T_INT, 1, 1 << 30, 0, 0, NULL},
    {"grad_accum", T_INT, 1, 1 << 30, 0, 0, NULL}, {"steps", T_INT, 1, 2147483647, 0, 0, NULL},
    {"seed", T_INT, 0, 9007199254740992.0, 0, 0, NULL}, {"init_std", T_NUM, 0, BIG, 1, 0, NULL},
    {"lr", T_NUM, 0, BIG, 1, 0, NULL},         {"min_lr", T_NUM, 0, BIG, 0, 0, NULL},
    {"warmup", T_NUM, 0, 2147483647, 0, 0, NULL}, {"weight_decay", T_NUM, 0, BIG, 0, 0, NULL},
    {"beta1", T_NUM, 0, 1, 0, 1, NULL},        {"beta2", T_NUM, 0, 1, 0, 1, NULL},
    {"eps", T_NUM, 0, BIG, 1, 0, NULL},        {"clip", T_NUM, 0, BIG, 0, 0, NULL},
    {"kl_weight", T_NUM, 0, BIG, 0, 0, NULL},  {"ce_weight", T_NUM, 0, BIG, 0, 0, NULL},
    {"temperature", T_NUM, 0, BIG, 1, 0, NULL}, {"beta", T_NUM, 0, BIG, 1, 0, NULL},
    {"ild_loss", T_CHOICE, 0, 0, 0, 0, "release|mixer_mse"},
    {"kl_reduction", T_CHOICE, 0, 0, 0, 0, "batchmean|token"}, {"comment", T_STR, 0, 0, 0, 0, NULL},
    {"log_every", T_INT, 1, 2147483647, 0, 0, NULL}, {"eval_every", T_INT, 0, 2147483647, 0, 0, NULL},
    {"eval_batches", T_INT, 0, 2147483647, 0, 0, NULL}, {"save_every", T_INT, 0, 2147483647, 0, 0, NULL},
    {"keep_last", T_INT, 0, 2147483647, 0, 0, NULL}, {"nonfinite", T_CHOICE, 0, 0, 0, 0, "stop|skip"},
    {"zero", T_BOOL, 0, 0, 0, 0, NULL},        {"save", T_BOOL, 0, 0, 0, 0, NULL},
    {"bucket_mb", T_NUM, 0, BIG, 1, 0, NULL},
    {"pp_balance", T_CHOICE, 0, 0, 0, 0, "model|measured"},
    {"train", T_LIST, 0, 0, 0, 0, NULL},       {"freeze", T_LIST, 0, 0, 0, 0, NULL},
    {"groups", T_GROUPS, 0, 0, 0, 0, NULL},
};
static const key_spec group_keys[] = {
    {"match", T_STR, 0, 0, 0, 0, NULL}, {"lr_mult", T_NUM, 0, BIG, 0, 0, NULL},
    {"weight_decay", T_NUM, 0, BIG, 0, 0, NULL}, {"trainable", T_BOOL, 0, 0, 0, 0, NULL},
};
#define NKEYS(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* Levenshtein distance (names are short) */
static int edit_distance(const char *a, const char *b) {
    int n = (int)strlen(a), m = (int)strlen(b), d[64];
    if (n > 62 || m > 62) return 99;
    for (int j = 0; j <= m; j++) d[j] = j;
    for (int i = 1; i <= n; i++) {
        int prev = d[0];
        d[0] = i;
        for (int j = 1; j <= m; j++) {
            int cur = d[j], sub = prev + (a[i - 1] != b[j - 1]);
            int best = d[j] + 1 < d[j - 1] + 1 ? d[j] + 1 : d[j - 1] + 1;
            d[j] = sub < best ? sub : best;
            prev = cur;
        }
    }
    return d[m];
}

static const key_spec *find_key(const key_spec *ks, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (!strcmp(ks[i].name, name)) return &ks[i];
    return NULL;
}

static int unknown_key(const char *path, const char *where, const key_spec *ks, int n, const char *name) {
    const char *best = NULL;
    int bd = 99;
    for (int i = 0; i < n; i++) {
        int d = edit_distance(name, ks[i].name);
        if (d < bd) { bd = d; best = ks[i].name; }
    }
    int len = (int)strlen(name), close = best && bd <= (len > 6 ? len / 3 : 2);
    return zb_fail(ZB_EARG, "%s: unknown key '%s'%s%s%s%s", path, name, where, close ? " (did you mean '" : "",
                   close ? best : "", close ? "'?)" : "");
}

static const char *type_name(key_type t) {
    switch (t) {
    case T_STR: case T_CHOICE: return "a string";
    case T_INT: return "an integer";
    case T_NUM: return "a number";
    case T_BOOL: return "true or false";
    case T_LIST: return "a list of strings";
    default: return "a list of objects";
    }
}

/* Type and range of one value; where: "" or " in groups[i]" for messages. */
static int check_value(const char *path, const char *where, const key_spec *k, const cJSON *v) {
    int ok;
    switch (k->type) {
    case T_STR: case T_CHOICE: ok = cJSON_IsString(v); break;
    case T_INT: ok = cJSON_IsNumber(v) && isfinite(v->valuedouble) && v->valuedouble == floor(v->valuedouble); break;
    case T_NUM: ok = cJSON_IsNumber(v) && isfinite(v->valuedouble); break;
    case T_BOOL: ok = cJSON_IsBool(v); break;
    case T_LIST: ok = cJSON_IsArray(v); break;
    default: ok = cJSON_IsArray(v);
    }
    if (!ok) return zb_fail(ZB_EARG, "%s: key '%s'%s must be %s", path, k->name, where, type_name(k->type));
    /* numbers are kept as float32: one beyond its range would become inf */
    if (k->type == T_NUM && fabs(v->valuedouble) > FLT_MAX)
        return zb_fail(ZB_EARG, "%s: key '%s'%s is %g, beyond float32's range", path, k->name, where, v->valuedouble);
    /* ... and one below its smallest subnormal would become 0 (an eps of 1e-85: fuzzing) */
    if (k->type == T_NUM && v->valuedouble != 0 && (float)v->valuedouble == 0.0f)
        return zb_fail(ZB_EARG, "%s: key '%s'%s is %g, too small for float32 (it would be 0)", path, k->name, where,
                       v->valuedouble);
    if (k->type == T_INT || k->type == T_NUM) {
        /* the range holds for the value kept: a number's float32 rounding (0.999999999 is 1) */
        double x = k->type == T_NUM ? (double)(float)v->valuedouble : v->valuedouble;
        if (x < k->lo || (k->lo_open && x == k->lo) || x > k->hi || (k->hi_open && x == k->hi)) {
            char lo[32] = "", hi[32] = "";
            if (k->hi < 1e9) snprintf(hi, sizeof hi, " and %s %g", k->hi_open ? "<" : "<=", k->hi);
            else if (x > k->hi) snprintf(hi, sizeof hi, " and <= %.0f", k->hi);
            snprintf(lo, sizeof lo, "%s %g", k->lo_open ? ">" : ">=", k->lo);
            char asf[48] = "";
            if (x != v->valuedouble) snprintf(asf, sizeof asf, ", %.9g as float32", x);
            return zb_fail(ZB_EARG, "%s: key '%s'%s must be %s%s (got %.10g%s)", path, k->name, where, lo, hi,
                           v->valuedouble, asf);
        }
    }
    if (k->type == T_CHOICE) {
        const char *c = k->choices, *s = v->valuestring;
        size_t n = strlen(s);
        int found = 0;
        while (c && *c && !found) {
            const char *e = strchr(c, '|');
            size_t len = e ? (size_t)(e - c) : strlen(c);
            found = len == n && !strncmp(c, s, n);
            c = e ? e + 1 : NULL;
        }
        if (!found) {   /* "a|b" -> "a" or "b" */
            char alts[96] = "\"";
            size_t o = 1;
            for (const char *q = k->choices; *q && o + 8 < sizeof alts; q++)
                o += (size_t)snprintf(alts + o, sizeof alts - o, *q == '|' ? "\" or \"" : "%c", *q);
            return zb_fail(ZB_EARG, "%s: %s is %s\", not \"%s\"", path, k->name, alts, s);
        }
    }
    if (k->type == T_LIST) {
        const cJSON *it;
        cJSON_ArrayForEach(it, v) if (!cJSON_IsString(it))
            return zb_fail(ZB_EARG, "%s: key '%s' must be a list of strings", path, k->name);
    }
    return ZB_OK;
}

static char *dup_str(const char *s) {
    char *d = zb_malloc(strlen(s) + 1, "run config");
    if (d) strcpy(d, s);
    return d;
}

static int read_list(const cJSON *v, char ***out, int *n) {
    *n = 0;
    *out = NULL;
    if (!v) return ZB_OK;
    int k = cJSON_GetArraySize(v);
    ZB_ALLOC(*out, k ? k : 1, "run config");
    const cJSON *it;
    cJSON_ArrayForEach(it, v) {
        if (!((*out)[*n] = dup_str(it->valuestring))) return ZB_ENOMEM;
        (*n)++;
    }
    return ZB_OK;
}

static int read_groups(zb_run_cfg *r, const cJSON *v) {
    if (!v) return ZB_OK;
    int k = cJSON_GetArraySize(v);
    ZB_ALLOC(r->groups, k ? k : 1, "run config");
    const cJSON *g;
    cJSON_ArrayForEach(g, v) {
        char where[48];
        snprintf(where, sizeof where, " in groups[%d]", r->n_groups);
        if (!cJSON_IsObject(g)) return zb_fail(ZB_EARG, "%s: groups[%d] must be an object", r->path, r->n_groups);
        const cJSON *it;
        cJSON_ArrayForEach(it, g) {
            const key_spec *ks = find_key(group_keys, NKEYS(group_keys), it->string);
            if (!ks) return unknown_key(r->path, where, group_keys, NKEYS(group_keys), it->string);
            ZB_TRY(check_value(r->path, where, ks, it));
        }
        const cJSON *mt = cJSON_GetObjectItemCaseSensitive(g, "match");
        if (!mt) return zb_fail(ZB_EARG, "%s: groups[%d] needs a 'match' string", r->path, r->n_groups);
        zb_run_group *q = &r->groups[r->n_groups++];
        const cJSON *lm = cJSON_GetObjectItemCaseSensitive(g, "lr_mult");
        const cJSON *wd = cJSON_GetObjectItemCaseSensitive(g, "weight_decay");
        const cJSON *tr = cJSON_GetObjectItemCaseSensitive(g, "trainable");
        q->lr_mult = lm ? (float)lm->valuedouble : -1.0f;
        q->weight_decay = wd ? (float)wd->valuedouble : -1.0f;
        q->trainable = tr ? cJSON_IsTrue(tr) : -1;
        if (!(q->match = dup_str(mt->valuestring))) return ZB_ENOMEM;
    }
    return ZB_OK;
}

static const cJSON *get(const cJSON *o, const char *k) { return cJSON_GetObjectItemCaseSensitive(o, k); }
static double num(const cJSON *o, const char *k, double d) {
    const cJSON *v = get(o, k);
    return v ? v->valuedouble : d;
}
static void str(const cJSON *o, const char *k, char *dst, const char *d) {
    const cJSON *v = get(o, k);
    snprintf(dst, ZB_RUN_PATH, "%s", v ? v->valuestring : d);
}

/* Every key known and of its type and range; then the values. */
static int parse_root(zb_run_cfg *r, const cJSON *o) {
    const char *path = r->path;
    if (!cJSON_IsObject(o)) return zb_fail(ZB_EFORMAT, "%s: not a JSON object", path);
    const cJSON *it;
    cJSON_ArrayForEach(it, o) {
        const key_spec *k = find_key(keys, NKEYS(keys), it->string);
        if (!k) return unknown_key(path, "", keys, NKEYS(keys), it->string);
        for (const cJSON *j = it->next; j; j = j->next)
            if (!strcmp(j->string, it->string)) return zb_fail(ZB_EARG, "%s: key '%s' given twice", path, it->string);
        ZB_TRY(check_value(path, "", k, it));
        if (k->type == T_STR && strlen(it->valuestring) >= ZB_RUN_PATH)
            return zb_fail(ZB_EARG, "%s: key '%s' is longer than %d characters", path, k->name, ZB_RUN_PATH - 1);
    }
    str(o, "model", r->model, "");
    str(o, "teacher", r->teacher, "");
    str(o, "reference", r->reference, "");
    str(o, "data", r->data, "");
    str(o, "out", r->out, "out/train");
    r->seq_len = (int)num(o, "seq_len", 256);
    r->micro_batch = (int)num(o, "micro_batch", 4);
    r->grad_accum = (int)num(o, "grad_accum", 1);
    r->steps = (int)num(o, "steps", 100);
    r->log_every = (int)num(o, "log_every", 10);
    r->eval_every = (int)num(o, "eval_every", 0);
    r->eval_batches = (int)num(o, "eval_batches", 8);
    r->save_every = (int)num(o, "save_every", 0);
    r->keep_last = (int)num(o, "keep_last", 2);
    r->seed = (uint64_t)num(o, "seed", 1);
    r->init_std = (float)num(o, "init_std", 0.02);
    r->warmup = num(o, "warmup", 0);
    r->bucket_mb = num(o, "bucket_mb", 25);
    const cJSON *v = get(o, "pp_balance");
    r->pp_measured = v && !strcmp(v->valuestring, "measured");
    v = get(o, "nonfinite");
    r->skip_nonfinite = v && !strcmp(v->valuestring, "skip");
    r->zero = cJSON_IsTrue(get(o, "zero"));
    r->save = !cJSON_IsFalse(get(o, "save"));
    zb_optim_cfg *c = &r->opt;
    *c = zb_optim_defaults();
    c->lr = (float)num(o, "lr", c->lr);
    c->min_lr = (float)num(o, "min_lr", c->lr * 0.1);
    c->weight_decay = (float)num(o, "weight_decay", c->weight_decay);
    c->beta1 = (float)num(o, "beta1", c->beta1);
    c->beta2 = (float)num(o, "beta2", c->beta2);
    c->eps = (float)num(o, "eps", c->eps);
    c->clip = (float)num(o, "clip", c->clip);
    c->total_steps = r->steps;
    c->warmup = r->warmup > 0 && r->warmup < 1 ? (int)ceil(r->warmup * r->steps) : (int)r->warmup;
    r->loss.kl_weight = (float)num(o, "kl_weight", 1.0);
    r->loss.ce_weight = (float)num(o, "ce_weight", 0.0);
    r->loss.temperature = (float)num(o, "temperature", 1.0);
    r->loss.beta = (float)num(o, "beta", 0.01);   /* the release's DPO beta (SPEC §6) */
    v = get(o, "kl_reduction");
    r->loss.kl_token_mean = v && !strcmp(v->valuestring, "token");
    v = get(o, "ild_loss");
    r->loss.ild_mode = v && !strcmp(v->valuestring, "mixer_mse") ? ZB_ILD_MIXER_MSE : ZB_ILD_RELEASE;
    /* float32 lr of a tiny double rounds to 0 (or a huge one to inf): still checked */
    if (!(c->lr > 0) || !isfinite(c->lr))
        return zb_fail(ZB_EARG, "%s: key 'lr' must be > 0 as a float32 (got %g)", path, num(o, "lr", 0));
    if (!r->data[0]) return zb_fail(ZB_EARG, "%s: 'data' (a shard directory) is required", path);
    ZB_TRY(read_list(get(o, "train"), &r->train, &r->n_train));
    ZB_TRY(read_list(get(o, "freeze"), &r->freeze, &r->n_freeze));
    return read_groups(r, get(o, "groups"));
}

int zb_run_cfg_parse(zb_run_cfg *r, const char *text, const char *path) {
    memset(r, 0, sizeof *r);
    snprintf(r->path, sizeof r->path, "%s", path);
    if (!(r->text = dup_str(text))) return ZB_ENOMEM;
    cJSON *root = cJSON_Parse(text);
    if (!root) return zb_fail(ZB_EFORMAT, "%s: not valid JSON (near byte %ld)", path,
                              cJSON_GetErrorPtr() ? (long)(cJSON_GetErrorPtr() - text) : 0L);
    int rc = parse_root(r, root);
    cJSON_Delete(root);
    return rc;
}

int zb_run_cfg_load(zb_run_cfg *r, const char *path) {
    memset(r, 0, sizeof *r);
    char *text = NULL;
    size_t len = 0;
    ZB_TRY(zb_read_file(path, &text, &len));
    if (strlen(text) != len) {
        free(text);
        return zb_fail(ZB_EFORMAT, "%s: holds a NUL byte (not a JSON text)", path);
    }
    int rc = zb_run_cfg_parse(r, text, path);
    free(text);
    return rc;
}

void zb_run_cfg_free(zb_run_cfg *r) {
    for (int i = 0; i < r->n_train; i++) free(r->train[i]);
    for (int i = 0; i < r->n_freeze; i++) free(r->freeze[i]);
    for (int i = 0; i < r->n_groups; i++) free(r->groups[i].match);
    free(r->train);
    free(r->freeze);
    free(r->groups);
    free(r->text);
    memset(r, 0, sizeof *r);
}

int zb_run_cfg_apply_groups(const zb_run_cfg *r, zb_adamw *o, const zb_model *m, int *matched, int verbose) {
    if (r->train) {
        zb_adamw_set_all_trainable(o, 0);
        for (int i = 0; i < r->n_train; i++) {
            int n = zb_adamw_set_group(o, m, r->train[i], -1, -1, 1);
            if (matched) matched[i] = n;
        }
    }
    for (int i = 0; i < r->n_freeze; i++) zb_adamw_set_group(o, m, r->freeze[i], -1, -1, 0);
    for (int i = 0; i < r->n_groups; i++) {
        const zb_run_group *g = &r->groups[i];
        int n = zb_adamw_set_group(o, m, g->match, g->lr_mult, g->weight_decay, g->trainable);
        if (verbose) fprintf(stderr, "train: group '%s': %d tensors\n", g->match, n);
    }
    return ZB_OK;
}
