/* safetensors.c — mmap reader with full header validation, and an atomic writer.
 *
 * Every tensor's data pointer points into a read-only private mapping of its shard; nothing
 * is copied until zb_st_to_f32 / zb_st_to_i32. Data may be unaligned (the header length is
 * arbitrary), so conversions go through memcpy. */
#include "safetensors.h"

#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "zb_common.h"

/* A header is JSON text: anything above this is a corrupt length, not a real header. */
#define ZB_ST_MAX_HEADER (100u << 20)

typedef struct {
    char *path;
    void *map;
    size_t size;
} zb_st_file;

struct zb_safetensors {
    int nfiles;
    zb_st_file *files;
    int n, cap;
    zb_st_tensor *t;
    int *order;   /* indices of t sorted by name, for zb_st_get */
};

static const struct { const char *name; size_t size; } dtypes[] = {
    [ZB_DT_F32] = {"F32", 4}, [ZB_DT_F16] = {"F16", 2}, [ZB_DT_BF16] = {"BF16", 2},
    [ZB_DT_I32] = {"I32", 4}, [ZB_DT_I64] = {"I64", 8}, [ZB_DT_U8] = {"U8", 1},
    [ZB_DT_I8] = {"I8", 1},   [ZB_DT_U32] = {"U32", 4}, [ZB_DT_F64] = {"F64", 8},
};
#define ZB_NDTYPES ((int)(sizeof dtypes / sizeof dtypes[0]))

size_t zb_dtype_size(zb_dtype d) { return (int)d >= 0 && (int)d < ZB_NDTYPES ? dtypes[d].size : 0; }
const char *zb_dtype_name(zb_dtype d) { return (int)d >= 0 && (int)d < ZB_NDTYPES ? dtypes[d].name : "?"; }

int zb_dtype_parse(const char *s, zb_dtype *d) {
    for (int i = 0; i < ZB_NDTYPES; i++)
        if (!strcmp(s, dtypes[i].name)) { *d = (zb_dtype)i; return ZB_OK; }
    return zb_fail(ZB_EFORMAT, "unknown dtype '%s'", s);
}

static char *zb_strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = zb_malloc(n, "string");
    if (p) memcpy(p, s, n);
    return p;
}

static const char *base_name(const char *p) {
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

/* ---------------------------------------------------------------- reader */

void zb_st_close(zb_safetensors *st) {
    if (!st) return;
    for (int i = 0; i < st->nfiles; i++) {
        if (st->files[i].map) munmap(st->files[i].map, st->files[i].size);
        free(st->files[i].path);
    }
    for (int i = 0; i < st->n; i++) free(st->t[i].name);
    free(st->files);
    free(st->t);
    free(st->order);
    free(st);
}

/* A JSON number that is a non-negative integer exactly representable in a double. */
static int json_u53(const cJSON *j, int64_t *v) {
    if (!cJSON_IsNumber(j)) return 0;
    double d = j->valuedouble;
    if (!(d >= 0) || d > 9007199254740992.0 || d != floor(d)) return 0;
    *v = (int64_t)d;
    return 1;
}

typedef struct { const zb_st_tensor *t; const uint8_t *base; } zb_span;   /* for the overlap check */
static int cmp_span(const void *a, const void *b) {
    const zb_span *x = a, *y = b;
    const uint8_t *px = x->t->data, *py = y->t->data;
    return px < py ? -1 : px > py;
}

static int add_tensor_slot(zb_safetensors *st) {
    if (st->n == st->cap) {
        int nc = st->cap ? 2 * st->cap : 64;
        zb_st_tensor *t = realloc(st->t, (size_t)nc * sizeof *t);
        if (!t) return zb_fail(ZB_ENOMEM, "out of memory for the tensor table");
        st->t = t;
        st->cap = nc;
    }
    memset(&st->t[st->n], 0, sizeof st->t[0]);
    return ZB_OK;
}

/* Parse one tensor entry of file `fp`'s header. */
static int parse_entry(zb_safetensors *st, int fi, const cJSON *e, const uint8_t *data, size_t dsize) {
    const char *fp = st->files[fi].path, *name = e->string;
    if (!cJSON_IsObject(e))
        return zb_fail(ZB_EFORMAT, "%s: tensor '%s': header entry is not an object", fp, name);
    const cJSON *jd = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *js = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *jo = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsString(jd))
        return zb_fail(ZB_EFORMAT, "%s: tensor '%s': missing or non-string \"dtype\"", fp, name);
    if (!cJSON_IsArray(js))
        return zb_fail(ZB_EFORMAT, "%s: tensor '%s': missing or non-array \"shape\"", fp, name);
    if (!cJSON_IsArray(jo) || cJSON_GetArraySize(jo) != 2)
        return zb_fail(ZB_EFORMAT, "%s: tensor '%s': \"data_offsets\" must be [begin, end]", fp, name);
    ZB_TRY(add_tensor_slot(st));
    zb_st_tensor *t = &st->t[st->n];
    if (zb_dtype_parse(jd->valuestring, &t->dtype) != ZB_OK)
        return zb_fail(ZB_EFORMAT, "%s: tensor '%s': unknown dtype '%s'", fp, name, jd->valuestring);
    int nd = cJSON_GetArraySize(js);
    if (nd > ZB_MAX_DIMS)
        return zb_fail(ZB_EFORMAT, "%s: tensor '%s': %d dimensions (at most %d supported)", fp, name, nd, ZB_MAX_DIMS);
    t->ndim = nd;
    /* numel * size must not overflow: bound it by the data size as we go */
    uint64_t numel = 1;
    int over = 0;
    for (int i = 0; i < nd; i++) {
        int64_t v;
        if (!json_u53(cJSON_GetArrayItem(js, i), &v))
            return zb_fail(ZB_EFORMAT, "%s: tensor '%s': shape[%d] is not a non-negative integer", fp, name, i);
        t->shape[i] = v;
        if (v && numel > UINT64_MAX / (uint64_t)v) over = 1;
        else numel *= (uint64_t)v;
    }
    int64_t b, en;
    if (!json_u53(cJSON_GetArrayItem(jo, 0), &b) || !json_u53(cJSON_GetArrayItem(jo, 1), &en) || en < b)
        return zb_fail(ZB_EFORMAT, "%s: tensor '%s': data_offsets must be integers with begin <= end", fp, name);
    if ((uint64_t)en > dsize)
        return zb_fail(ZB_EFORMAT, "%s: tensor '%s': data_offsets [%lld, %lld] exceed the data size %zu",
                       fp, name, (long long)b, (long long)en, dsize);
    size_t es = zb_dtype_size(t->dtype);
    if (over || numel > UINT64_MAX / es || numel * es != (uint64_t)(en - b)) {
        char sh[256];
        int o = 0;
        sh[0] = 0;
        for (int i = 0; i < nd && o < (int)sizeof sh - 24; i++)
            o += snprintf(sh + o, sizeof sh - (size_t)o, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
        return zb_fail(ZB_EFORMAT, "%s: tensor '%s': shape [%s] x %s (%zu bytes) does not match data_offsets "
                       "range of %lld bytes", fp, name, sh, zb_dtype_name(t->dtype), es,
                       (long long)(en - b));
    }
    t->numel = (int64_t)numel;
    t->nbytes = (size_t)(en - b);
    t->data = data + b;
    t->file = fi;
    t->name = zb_strdup(name);
    if (!t->name) return ZB_ENOMEM;
    st->n++;
    return ZB_OK;
}

/* mmap and validate one .safetensors file; appends its tensors. */
static int open_one(zb_safetensors *st, const char *path) {
    zb_st_file *nf = realloc(st->files, (size_t)(st->nfiles + 1) * sizeof *nf);
    if (!nf) return zb_fail(ZB_ENOMEM, "out of memory");
    st->files = nf;
    int fi = st->nfiles++;
    zb_st_file *f = &st->files[fi];
    memset(f, 0, sizeof *f);
    if (!(f->path = zb_strdup(path))) return ZB_ENOMEM;

    int fd = open(path, O_RDONLY);
    if (fd < 0) return zb_fail(ZB_EIO, "%s: cannot open (%s)", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) { close(fd); return zb_fail(ZB_EIO, "%s: cannot stat (%s)", path, strerror(errno)); }
    int krc = zb_fd_is_file(fd, path, 1);
    if (krc) { close(fd); return krc; }
    size_t size = (size_t)sb.st_size;
    if (size < 8) { close(fd); return zb_fail(ZB_EFORMAT, "%s: truncated: %zu bytes, too short for a safetensors header", path, size); }
    void *m = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);   /* the mapping keeps the file */
    if (m == MAP_FAILED) return zb_fail(ZB_EIO, "%s: mmap failed (%s)", path, strerror(errno));
    f->map = m;
    f->size = size;

    const uint8_t *p = m;
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = (hl << 8) | p[i];   /* little endian */
    if (hl > size - 8)
        return zb_fail(ZB_EFORMAT, "%s: header length %llu exceeds the file size %zu (truncated or not safetensors)",
                       path, (unsigned long long)hl, size);
    if (hl > ZB_ST_MAX_HEADER || hl < 2)
        return zb_fail(ZB_EFORMAT, "%s: implausible header length %llu", path, (unsigned long long)hl);
    const char *end = NULL;
    cJSON *h = cJSON_ParseWithLengthOpts((const char *)p + 8, (size_t)hl, &end, 0);
    if (!h || !cJSON_IsObject(h)) {
        long at = end ? (long)(end - ((const char *)p + 8)) : -1;
        cJSON_Delete(h);
        return zb_fail(ZB_EFORMAT, "%s: malformed header JSON (near byte %ld of %llu)", path, at,
                       (unsigned long long)hl);
    }
    /* only trailing spaces (the format's padding) may follow the JSON object */
    for (const char *q = end; q && q < (const char *)p + 8 + hl; q++)
        if (*q != ' ' && *q != '\0' && *q != '\n' && *q != '\t' && *q != '\r') {
            cJSON_Delete(h);
            return zb_fail(ZB_EFORMAT, "%s: malformed header JSON (garbage after the object)", path);
        }
    const uint8_t *data = p + 8 + hl;
    size_t dsize = size - 8 - (size_t)hl;
    int first = st->n, rc = ZB_OK;
    for (const cJSON *e = h->child; e && rc == ZB_OK; e = e->next) {
        if (!strcmp(e->string, "__metadata__")) continue;
        rc = parse_entry(st, fi, e, data, dsize);
    }
    cJSON_Delete(h);
    if (rc) return rc;

    /* no two byte ranges may overlap (empty tensors take no bytes) */
    int nt = st->n - first;
    zb_span *sp = zb_malloc((size_t)(nt ? nt : 1) * sizeof *sp, "overlap check");
    if (!sp) return ZB_ENOMEM;
    int k = 0;
    for (int i = first; i < st->n; i++)
        if (st->t[i].nbytes) sp[k++] = (zb_span){&st->t[i], data};
    qsort(sp, (size_t)k, sizeof *sp, cmp_span);
    for (int i = 1; i < k; i++) {
        const uint8_t *pe = (const uint8_t *)sp[i - 1].t->data + sp[i - 1].t->nbytes;
        if ((const uint8_t *)sp[i].t->data < pe) {
            rc = zb_fail(ZB_EFORMAT, "%s: tensor '%s': data_offsets [%lld, %lld] overlap tensor '%s' [%lld, %lld]",
                         path, sp[i].t->name, (long long)((const uint8_t *)sp[i].t->data - data),
                         (long long)((const uint8_t *)sp[i].t->data - data + (long long)sp[i].t->nbytes),
                         sp[i - 1].t->name, (long long)((const uint8_t *)sp[i - 1].t->data - data),
                         (long long)(pe - data));
            break;
        }
    }
    free(sp);
    return rc;
}

static const zb_safetensors *g_sort_st;   /* qsort has no context argument in C11 */
static int cmp_order(const void *a, const void *b) {
    return strcmp(g_sort_st->t[*(const int *)a].name, g_sort_st->t[*(const int *)b].name);
}

/* Sort the name index and reject duplicate names across shards. */
static int build_index(zb_safetensors *st) {
    st->order = zb_malloc((size_t)(st->n ? st->n : 1) * sizeof(int), "tensor index");
    if (!st->order) return ZB_ENOMEM;
    for (int i = 0; i < st->n; i++) st->order[i] = i;
    g_sort_st = st;
    qsort(st->order, (size_t)st->n, sizeof(int), cmp_order);
    for (int i = 1; i < st->n; i++) {
        const zb_st_tensor *a = &st->t[st->order[i - 1]], *b = &st->t[st->order[i]];
        if (!strcmp(a->name, b->name))
            return zb_fail(ZB_EFORMAT, "%s: tensor '%s' appears twice (also in %s)",
                           st->files[b->file].path, b->name, st->files[a->file].path);
    }
    return ZB_OK;
}

static int is_dir(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}
static int exists(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0;
}
static int open_index(zb_safetensors *st, const char *ipath) {
    char *txt = NULL;
    ZB_TRY(zb_read_file(ipath, &txt, NULL));
    cJSON *j = cJSON_Parse(txt);
    free(txt);
    if (!j || !cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return zb_fail(ZB_EFORMAT, "%s: malformed JSON", ipath);
    }
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(j, "weight_map");
    if (!cJSON_IsObject(wm)) {
        cJSON_Delete(j);
        return zb_fail(ZB_EFORMAT, "%s: missing \"weight_map\" object", ipath);
    }
    /* the directory of the index */
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", ipath);
    char *sl = strrchr(dir, '/');
    if (sl) sl[1] = 0; else dir[0] = 0;
    int rc = ZB_OK;
    for (const cJSON *e = wm->child; e && rc == ZB_OK; e = e->next) {
        if (!cJSON_IsString(e)) { rc = zb_fail(ZB_EFORMAT, "%s: weight_map['%s'] is not a file name", ipath, e->string); break; }
        char fp[4096 + 256];
        snprintf(fp, sizeof fp, "%s%s", dir, e->valuestring);
        int seen = 0;
        for (int i = 0; i < st->nfiles; i++) if (!strcmp(st->files[i].path, fp)) seen = 1;
        if (seen) continue;
        if (!exists(fp)) {
            rc = zb_fail(ZB_EIO, "%s: shard '%s' (holding tensor '%s') is missing", ipath, e->valuestring, e->string);
            break;
        }
        rc = open_one(st, fp);
    }
    if (rc == ZB_OK) rc = build_index(st);
    /* every tensor the index names must be in the shard it names */
    for (const cJSON *e = wm->child; e && rc == ZB_OK; e = e->next) {
        const zb_st_tensor *t = zb_st_get(st, e->string);
        char fp[4096 + 256];
        snprintf(fp, sizeof fp, "%s%s", dir, e->valuestring);
        if (!t)
            rc = zb_fail(ZB_EFORMAT, "%s: tensor '%s' listed in %s is missing from the shard", fp, e->string,
                         base_name(ipath));
        else if (strcmp(st->files[t->file].path, fp))
            rc = zb_fail(ZB_EFORMAT, "%s: tensor '%s' is in %s, not in the shard the index names", fp, e->string,
                         st->files[t->file].path);
    }
    cJSON_Delete(j);
    return rc;
}

int zb_st_open(zb_safetensors **out, const char *path) {
    *out = NULL;
    zb_safetensors *st = zb_calloc(1, sizeof *st, "safetensors");
    if (!st) return ZB_ENOMEM;
    int rc;
    char p[4096 + 64];
    if (is_dir(path)) {
        snprintf(p, sizeof p, "%s/model.safetensors.index.json", path);
        if (exists(p)) rc = open_index(st, p);
        else {
            snprintf(p, sizeof p, "%s/model.safetensors", path);
            if (!exists(p)) rc = zb_fail(ZB_EIO, "%s: no model.safetensors or model.safetensors.index.json", path);
            else if ((rc = open_one(st, p)) == ZB_OK) rc = build_index(st);
        }
    } else if (zb_ends_with(path, ".json")) {
        rc = open_index(st, path);
    } else if (!exists(path)) {
        rc = zb_fail(ZB_EIO, "%s: cannot open (%s)", path, strerror(ENOENT));
    } else if ((rc = open_one(st, path)) == ZB_OK) {
        rc = build_index(st);
    }
    if (rc) { zb_st_close(st); return rc; }
    *out = st;
    return ZB_OK;
}

int zb_st_count(const zb_safetensors *st) { return st->n; }
const zb_st_tensor *zb_st_at(const zb_safetensors *st, int i) { return i >= 0 && i < st->n ? &st->t[i] : NULL; }

const zb_st_tensor *zb_st_get(const zb_safetensors *st, const char *name) {
    int lo = 0, hi = st->n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2, c = strcmp(st->t[st->order[mid]].name, name);
        if (!c) return &st->t[st->order[mid]];
        if (c < 0) lo = mid + 1; else hi = mid - 1;
    }
    return NULL;
}

const char *zb_st_file_of(const zb_safetensors *st, const zb_st_tensor *t) {
    return t && t->file >= 0 && t->file < st->nfiles ? st->files[t->file].path : "?";
}

/* ---------------------------------------------------------------- conversion */

int zb_dtype_convert_f32(zb_dtype dt, const void *src, int64_t n, float *dst) {
    const uint8_t *s = src;
    switch (dt) {
    case ZB_DT_F32: memcpy(dst, s, (size_t)n * 4); return ZB_OK;
    case ZB_DT_BF16:
        for (int64_t i = 0; i < n; i++) { uint16_t h; memcpy(&h, s + 2 * i, 2); dst[i] = zb_bf16_to_f32(h); }
        return ZB_OK;
    case ZB_DT_F16:
        for (int64_t i = 0; i < n; i++) { uint16_t h; memcpy(&h, s + 2 * i, 2); dst[i] = zb_f16_to_f32(h); }
        return ZB_OK;
    case ZB_DT_F64:
        for (int64_t i = 0; i < n; i++) { double d; memcpy(&d, s + 8 * i, 8); dst[i] = (float)d; }
        return ZB_OK;
    default:
        return zb_fail(ZB_EFORMAT, "dtype %s is not a float type", zb_dtype_name(dt));
    }
}

int zb_st_to_f32(const zb_st_tensor *t, float *dst) {
    int rc = zb_dtype_convert_f32(t->dtype, t->data, t->numel, dst);
    if (rc) return zb_fail(rc, "tensor '%s': dtype %s is not a float type", t->name, zb_dtype_name(t->dtype));
    return ZB_OK;
}

int zb_st_to_i32(const zb_st_tensor *t, int32_t *dst) {
    const uint8_t *s = t->data;
    for (int64_t i = 0; i < t->numel; i++) {
        int64_t v;
        switch (t->dtype) {
        case ZB_DT_I32: { int32_t x; memcpy(&x, s + 4 * i, 4); v = x; break; }
        case ZB_DT_I64: { int64_t x; memcpy(&x, s + 8 * i, 8); v = x; break; }
        case ZB_DT_U32: { uint32_t x; memcpy(&x, s + 4 * i, 4); v = x; break; }
        case ZB_DT_U8: v = s[i]; break;
        case ZB_DT_I8: v = (int8_t)s[i]; break;
        default:
            return zb_fail(ZB_EFORMAT, "tensor '%s': dtype %s is not an integer type", t->name, zb_dtype_name(t->dtype));
        }
        if (v < INT32_MIN || v > INT32_MAX)
            return zb_fail(ZB_EFORMAT, "tensor '%s': value %lld at %lld does not fit int32", t->name, (long long)v,
                           (long long)i);
        dst[i] = (int32_t)v;
    }
    return ZB_OK;
}

/* ---------------------------------------------------------------- writer */

typedef struct {
    char *name;
    zb_dtype dtype;
    int ndim;
    int64_t shape[ZB_MAX_DIMS];
    size_t nbytes;
    void *data;          /* a copy, or NULL for a tensor filled at save time */
    zb_st_fill fill;
    void *fill_ctx;
} zb_st_wentry;

struct zb_st_writer {
    int n, cap;
    zb_st_wentry *e;
};

zb_st_writer *zb_st_writer_new(void) { return zb_calloc(1, sizeof(zb_st_writer), "safetensors writer"); }

void zb_st_writer_free(zb_st_writer *w) {
    if (!w) return;
    for (int i = 0; i < w->n; i++) { free(w->e[i].name); free(w->e[i].data); }
    free(w->e);
    free(w);
}

static int writer_add(zb_st_writer *w, const char *name, zb_dtype dtype, int ndim, const int64_t *shape,
                      const void *data, zb_st_fill fill, void *fill_ctx) {
    if (ndim < 0 || ndim > ZB_MAX_DIMS || !zb_dtype_size(dtype) || !name[0] || !strcmp(name, "__metadata__"))
        return zb_fail(ZB_EARG, "safetensors writer: tensor '%s': bad dtype, name or ndim %d", name, ndim);
    for (int i = 0; i < w->n; i++)
        if (!strcmp(w->e[i].name, name)) return zb_fail(ZB_EARG, "safetensors writer: tensor '%s' added twice", name);
    if (w->n == w->cap) {
        int nc = w->cap ? 2 * w->cap : 16;
        zb_st_wentry *ne = realloc(w->e, (size_t)nc * sizeof *ne);
        if (!ne) return zb_fail(ZB_ENOMEM, "out of memory in the safetensors writer");
        w->e = ne;
        w->cap = nc;
    }
    zb_st_wentry *e = &w->e[w->n];
    memset(e, 0, sizeof *e);
    size_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return zb_fail(ZB_EARG, "safetensors writer: tensor '%s': negative dim", name);
        e->shape[i] = shape[i];
        numel *= (size_t)shape[i];
    }
    e->ndim = ndim;
    e->dtype = dtype;
    e->nbytes = numel * zb_dtype_size(dtype);
    e->name = zb_strdup(name);
    e->fill = fill;
    e->fill_ctx = fill_ctx;
    if (!fill) e->data = zb_malloc(e->nbytes, name);
    if (!e->name || (!fill && !e->data)) { free(e->name); free(e->data); return ZB_ENOMEM; }
    if (!fill && e->nbytes) memcpy(e->data, data, e->nbytes);
    w->n++;
    return ZB_OK;
}

int zb_st_writer_add(zb_st_writer *w, const char *name, zb_dtype dtype, int ndim, const int64_t *shape,
                     const void *data) {
    return writer_add(w, name, dtype, ndim, shape, data, NULL, NULL);
}

int zb_st_writer_add_fill(zb_st_writer *w, const char *name, zb_dtype dtype, int ndim, const int64_t *shape,
                          zb_st_fill fill, void *ctx) {
    return writer_add(w, name, dtype, ndim, shape, NULL, fill, ctx);
}

size_t zb_st_writer_bytes(const zb_st_writer *w) {
    size_t b = 0;
    for (int i = 0; i < w->n; i++) b += w->e[i].nbytes;
    return b;
}

typedef struct { char *p; size_t n, cap; int oom; } zb_buf;
static void buf_put(zb_buf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t nc = (b->cap ? b->cap * 2 : 1024);
        while (nc < b->n + n + 1) nc *= 2;
        char *np = realloc(b->p, nc);
        if (!np) { b->oom = 1; return; }
        b->p = np;
        b->cap = nc;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}
static void buf_puts(zb_buf *b, const char *s) { buf_put(b, s, strlen(s)); }
static void buf_json_str(zb_buf *b, const char *s) {
    buf_puts(b, "\"");
    for (; *s; s++) {
        char tmp[8];
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') { tmp[0] = '\\'; tmp[1] = (char)c; buf_put(b, tmp, 2); }
        else if (c < 0x20) { snprintf(tmp, sizeof tmp, "\\u%04x", c); buf_puts(b, tmp); }
        else buf_put(b, (const char *)&c, 1);
    }
    buf_puts(b, "\"");
}

int zb_st_writer_save(zb_st_writer *w, const char *path) {
    zb_buf h = {0};
    char num[96];
    buf_puts(&h, "{\"__metadata__\":{\"format\":\"pt\"}");
    size_t off = 0;
    for (int i = 0; i < w->n; i++) {   /* insertion order, data laid out in the same order */
        const zb_st_wentry *e = &w->e[i];
        buf_puts(&h, ",");
        buf_json_str(&h, e->name);
        buf_puts(&h, ":{\"dtype\":\"");
        buf_puts(&h, zb_dtype_name(e->dtype));
        buf_puts(&h, "\",\"shape\":[");
        for (int d = 0; d < e->ndim; d++) {
            snprintf(num, sizeof num, "%s%lld", d ? "," : "", (long long)e->shape[d]);
            buf_puts(&h, num);
        }
        snprintf(num, sizeof num, "],\"data_offsets\":[%zu,%zu]}", off, off + e->nbytes);
        buf_puts(&h, num);
        off += e->nbytes;
    }
    buf_puts(&h, "}");
    while (!h.oom && (8 + h.n) % 8) buf_puts(&h, " ");   /* pad so the data starts 8-byte aligned */
    if (h.oom) { free(h.p); return zb_fail(ZB_ENOMEM, "%s: out of memory building the header", path); }

    char tmp[4096 + 64];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "wb");
    if (!f) { free(h.p); return zb_fail(ZB_EIO, "%s: cannot create (%s)", tmp, strerror(errno)); }
    uint8_t len8[8];
    uint64_t hl = h.n;
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t)(hl >> (8 * i));
    int ok = fwrite(len8, 1, 8, f) == 8 && fwrite(h.p, 1, h.n, f) == h.n, rc = ZB_OK;
    for (int i = 0; ok && !rc && i < w->n; i++) {
        const zb_st_wentry *e = &w->e[i];
        if (!e->nbytes) continue;
        if (!e->fill) { ok = fwrite(e->data, 1, e->nbytes, f) == e->nbytes; continue; }
        void *buf = zb_malloc(e->nbytes, e->name);   /* one filled tensor at a time */
        if (!buf) rc = ZB_ENOMEM;
        else if (!(rc = e->fill(e->fill_ctx, e->name, buf, e->nbytes))) ok = fwrite(buf, 1, e->nbytes, f) == e->nbytes;
        free(buf);
    }
    free(h.p);
    /* on disk before the name points at it (a crash leaves the old file or the whole new one) */
    if (fflush(f) != 0 || fsync(fileno(f)) != 0) ok = 0;
    int er = errno;
    if (fclose(f) != 0 && ok) { ok = 0; er = errno; }
    if (rc) { unlink(tmp); return rc; }
    if (!ok) { unlink(tmp); return zb_fail(ZB_EIO, "%s: write failed (%s)", tmp, strerror(er)); }
    if (rename(tmp, path) != 0) {
        er = errno;
        unlink(tmp);
        return zb_fail(ZB_EIO, "%s: cannot rename the temporary file into place (%s)", path, strerror(er));
    }
    zb_fsync_dir(path);
    return ZB_OK;
}
