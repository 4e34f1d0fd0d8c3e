/* store.c — one interface over an HF directory (config.json + safetensors), a release directory
 * of the authors' Zebra-Llama (config.json + hybrid_config.json + safetensors, release.h) and the
 * native HDF5 checkpoint. The config is parsed and validated on open. A release directory's
 * tensors are asked for by zebra's names (the MLA's self_attn.* / o_proj) and found under the
 * release's (mla.* / out_proj); its messages name the stored tensors. */
#include "store.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ckpt_read.h"
#include "release.h"
#include "tensor_names.h"
#include "zb_common.h"

struct zb_store {
    char *path;
    zb_config cfg;
    zb_safetensors *st;     /* HF directory */
    zb_ckpt_reader *ck;     /* native .h5 */
    int release;            /* the authors' release layout (names mapped, release.h) */
    char **ours;            /* release: zebra's name of each stored tensor */
};

/* The stored name of tensor `name` (release: mapped; else name itself). */
static const char *stored(const zb_store *s, const char *name, char *buf, size_t cap) {
    if (!s->release) return name;
    zb_release_stored_name(&s->cfg, name, buf, cap);
    return buf;
}
#define ZB_STORED(s, name) char name##_buf_[ZB_TNAME_MAX + 16]; name = stored(s, name, name##_buf_, sizeof name##_buf_)

static int is_hdf5_file(const char *p) {
    static const uint8_t sig[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
    uint8_t b[8];
    FILE *f = fopen(p, "rb");
    if (!f) return 0;
    size_t n = fread(b, 1, 8, f);
    fclose(f);
    return n == 8 && !memcmp(b, sig, 8);
}

void zb_store_close(zb_store *s) {
    if (!s) return;
    if (s->ours)
        for (int i = 0; i < zb_st_count(s->st); i++) free(s->ours[i]);
    free(s->ours);
    zb_st_close(s->st);
    zb_ckpt_reader_close(s->ck);
    free(s->path);
    free(s);
}

/* A release directory: zebra's name of every stored tensor; every tensor the hybrid config
 * implies present with its shape and a float dtype (so that a hybrid_config.json whose dims
 * disagree with the tensors fails here, in one line naming the stored tensor); a stored
 * lm_head.weight of a tied model equal to the embedding (the config is honoured: tied). */
static int release_open(zb_store *s) {
    int n = zb_st_count(s->st), ns = 0, rc = ZB_OK;
    char buf[ZB_TNAME_MAX + 16], hp[4096 + 32], a[160], b[160];
    snprintf(hp, sizeof hp, "%s/hybrid_config.json", s->path);
    if (!(s->ours = zb_calloc((size_t)(n ? n : 1), sizeof(char *), "tensor names"))) return ZB_ENOMEM;
    for (int i = 0; i < n; i++) {
        zb_release_our_name(&s->cfg, zb_st_at(s->st, i)->name, buf, sizeof buf);
        if (!(s->ours[i] = zb_malloc(strlen(buf) + 1, "tensor name"))) return ZB_ENOMEM;
        strcpy(s->ours[i], buf);
    }
    zb_tensor_spec *spec = NULL;
    ZB_TRY(zb_expected_tensors(&s->cfg, &spec, &ns));
    for (int i = 0; i < ns && !rc; i++) {
        const char *name = stored(s, spec[i].name, buf, sizeof buf);
        const zb_st_tensor *t = zb_st_get(s->st, name);
        int same = t && t->ndim == spec[i].ndim;
        for (int k = 0; same && k < t->ndim; k++) same = t->shape[k] == spec[i].shape[k];
        if (!t)
            rc = zb_fail(ZB_ENOTFOUND, "%s: tensor '%s' is missing (%s implies it)", s->path, name, hp);
        else if (!same)
            rc = zb_fail(ZB_ESHAPE, "%s: tensor '%s' has shape %s, %s implies %s", zb_st_file_of(s->st, t), name,
                         zb_shape_str(a, sizeof a, t->ndim, t->shape), hp,
                         zb_shape_str(b, sizeof b, spec[i].ndim, spec[i].shape));
        else if (t->dtype != ZB_DT_F32 && t->dtype != ZB_DT_BF16 && t->dtype != ZB_DT_F16)
            rc = zb_fail(ZB_EFORMAT, "%s: tensor '%s': dtype %s is not a float type", zb_st_file_of(s->st, t), name,
                         zb_dtype_name(t->dtype));
    }
    free(spec);
    const zb_st_tensor *e = zb_st_get(s->st, "model.embed_tokens.weight"), *h = zb_st_get(s->st, "lm_head.weight");
    if (!rc && s->cfg.tie_embeddings && h &&
        (h->dtype != e->dtype || h->nbytes != e->nbytes || memcmp(h->data, e->data, e->nbytes)))
        rc = zb_fail(ZB_EFORMAT, "%s: lm_head.weight differs from model.embed_tokens.weight but config.json ties them "
                     "(tie_word_embeddings true); set it false there to keep both", zb_st_file_of(s->st, h));
    return rc;
}

int zb_store_open(zb_store **out, const char *path) {
    *out = NULL;
    struct stat sb;
    if (stat(path, &sb) != 0) return zb_fail(ZB_EIO, "%s: cannot open (%s)", path, strerror(errno));
    zb_store *s = zb_calloc(1, sizeof *s, "store");
    if (!s) return ZB_ENOMEM;
    int rc = ZB_OK;
    if (!(s->path = zb_malloc(strlen(path) + 1, "path"))) { rc = ZB_ENOMEM; goto done; }
    strcpy(s->path, path);
    if (S_ISDIR(sb.st_mode) && zb_release_is_dir(path)) {
        s->release = 1;
        if ((rc = zb_release_config(path, &s->cfg))) goto done;
        if ((rc = zb_st_open(&s->st, path))) goto done;
        rc = release_open(s);
    } else if (S_ISDIR(sb.st_mode)) {
        char cp[4096 + 16];
        snprintf(cp, sizeof cp, "%s/config.json", path);
        if ((rc = zb_config_load(cp, &s->cfg))) goto done;
        if ((rc = zb_config_validate(&s->cfg, cp))) goto done;
        rc = zb_st_open(&s->st, path);
    } else if (is_hdf5_file(path) || zb_ends_with(path, ".h5") || zb_ends_with(path, ".hdf5")) {
        if ((rc = zb_ckpt_reader_open(&s->ck, path))) goto done;
        if ((rc = zb_config_parse(zb_ckpt_config_json(s->ck), path, &s->cfg))) goto done;
        rc = zb_config_validate(&s->cfg, path);
    } else {
        rc = zb_fail(ZB_EARG, "%s: not a model directory (config.json + safetensors) nor a .h5 checkpoint", path);
    }
done:
    if (rc) { zb_store_close(s); return rc; }
    *out = s;
    return ZB_OK;
}

const zb_config *zb_store_config(const zb_store *s) { return &s->cfg; }
const char *zb_store_path(const zb_store *s) { return s->path; }

int zb_store_count(const zb_store *s) { return s->st ? zb_st_count(s->st) : zb_ckpt_count(s->ck); }

const char *zb_store_name_at(const zb_store *s, int i) {
    if (s->ours) return i >= 0 && i < zb_st_count(s->st) ? s->ours[i] : NULL;
    if (s->st) { const zb_st_tensor *t = zb_st_at(s->st, i); return t ? t->name : NULL; }
    const zb_ckpt_entry *e = zb_ckpt_entry_at(s->ck, i);
    return e ? e->name : NULL;
}

int zb_store_info_at(const zb_store *s, int i, int *ndim, int64_t *shape, zb_dtype *dtype) {
    if (s->st) {
        const zb_st_tensor *t = zb_st_at(s->st, i);
        if (!t) return zb_fail(ZB_ENOTFOUND, "%s: no tensor #%d", s->path, i);
        *ndim = t->ndim;
        memcpy(shape, t->shape, (size_t)t->ndim * sizeof *shape);
        *dtype = t->dtype;
        return ZB_OK;
    }
    const zb_ckpt_entry *e = zb_ckpt_entry_at(s->ck, i);
    if (!e) return zb_fail(ZB_ENOTFOUND, "%s: no tensor #%d", s->path, i);
    *ndim = e->ndim;
    memcpy(shape, e->shape, (size_t)e->ndim * sizeof *shape);
    *dtype = e->dtype;
    return ZB_OK;
}

int zb_store_find(const zb_store *s, const char *name) {
    ZB_STORED(s, name);
    if (s->st) {
        const zb_st_tensor *t = zb_st_get(s->st, name);
        return t ? (int)(t - zb_st_at(s->st, 0)) : -1;
    }
    return zb_ckpt_find(s->ck, name);
}

int zb_store_has(const zb_store *s, const char *name) { return zb_store_find(s, name) >= 0; }

const char *zb_store_file_of(const zb_store *s, const char *name) {
    ZB_STORED(s, name);
    if (s->st) {
        const zb_st_tensor *t = zb_st_get(s->st, name);
        return t ? zb_st_file_of(s->st, t) : s->path;
    }
    return s->path;
}

/* Error unless tensor `name` is stored with exactly this shape; *nlead = its leading dim. */
static int check_shape(const zb_store *s, const char *name, int ndim, const int64_t *shape, int64_t *nlead) {
    ZB_STORED(s, name);
    int i = zb_store_find(s, name);
    if (i < 0) return zb_fail(ZB_ENOTFOUND, "%s: tensor '%s' is missing", s->path, name);
    int nd;
    int64_t sh[ZB_MAX_DIMS];
    zb_dtype dt;
    ZB_TRY(zb_store_info_at(s, i, &nd, sh, &dt));
    int same = nd == ndim;
    for (int k = 0; same && k < nd; k++) same = sh[k] == shape[k];
    if (!same) {
        char a[160], b[160];
        return zb_fail(ZB_ESHAPE, "%s: tensor '%s': expected shape %s, found %s", zb_store_file_of(s, name), name,
                       zb_shape_str(a, sizeof a, ndim, shape), zb_shape_str(b, sizeof b, nd, sh));
    }
    *nlead = nd ? sh[0] : 1;
    return ZB_OK;
}

int zb_store_read(const zb_store *s, const char *name, float *dst, int ndim, const int64_t *shape) {
    int64_t n;
    ZB_TRY(check_shape(s, name, ndim, shape, &n));
    return zb_store_read_rows(s, name, dst, 0, n);
}

int zb_store_read_bf16(const zb_store *s, const char *name, uint16_t *dst, int ndim, const int64_t *shape) {
    int64_t n;
    ZB_TRY(check_shape(s, name, ndim, shape, &n));
    return zb_store_read_rows_bf16(s, name, dst, 0, n);
}

int zb_store_read_rows_bf16(const zb_store *s, const char *name, uint16_t *dst, int64_t row0, int64_t nrows) {
    ZB_STORED(s, name);
    int i = zb_store_find(s, name);
    if (i < 0) return zb_fail(ZB_ENOTFOUND, "%s: tensor '%s' is missing", s->path, name);
    int nd;
    int64_t sh[ZB_MAX_DIMS], rowel = 1;
    zb_dtype dt;
    ZB_TRY(zb_store_info_at(s, i, &nd, sh, &dt));
    for (int k = 1; k < nd; k++) rowel *= sh[k];
    int64_t nlead = nd ? sh[0] : 1;
    if (row0 < 0 || nrows < 0 || row0 + nrows > nlead)
        return zb_fail(ZB_ESHAPE, "%s: tensor '%s': rows [%lld, %lld) outside [0, %lld)", zb_store_file_of(s, name),
                       name, (long long)row0, (long long)(row0 + nrows), (long long)nlead);
    if (dt == ZB_DT_BF16) {   /* as stored: no conversion, no f32 copy */
        if (s->ck) return zb_ckpt_read_raw(s->ck, i, row0, nrows, dst);
        const zb_st_tensor *t = zb_st_at(s->st, i);
        memcpy(dst, (const uint8_t *)t->data + (size_t)(row0 * rowel) * 2, (size_t)(nrows * rowel) * 2);
        return ZB_OK;
    }
    /* other dtypes: f32 through a buffer of at most ~4M values, then rounded */
    int64_t blk = rowel > 0 ? ((int64_t)1 << 22) / rowel : nrows;
    if (blk < 1) blk = 1;
    if (blk > nrows) blk = nrows;
    float *tmp = blk ? zb_malloc(sizeof(float) * (size_t)(blk * rowel), "bf16 conversion buffer") : NULL;
    if (blk && !tmp) return ZB_ENOMEM;
    int rc = ZB_OK;
    for (int64_t r = 0; r < nrows && !rc; r += blk) {
        int64_t nr = nrows - r < blk ? nrows - r : blk;
        rc = zb_store_read_rows(s, name, tmp, row0 + r, nr);
        for (int64_t j = 0; !rc && j < nr * rowel; j++) dst[r * rowel + j] = zb_f32_to_bf16(tmp[j]);
    }
    free(tmp);
    return rc;
}

int zb_store_read_rows(const zb_store *s, const char *name, float *dst, int64_t row0, int64_t nrows) {
    ZB_STORED(s, name);
    int i = zb_store_find(s, name);
    if (i < 0) return zb_fail(ZB_ENOTFOUND, "%s: tensor '%s' is missing", s->path, name);
    if (s->ck) return zb_ckpt_read_f32(s->ck, i, row0, nrows, dst);
    const zb_st_tensor *t = zb_st_at(s->st, i);
    int64_t nlead = t->ndim ? t->shape[0] : 1, rowel = 1;
    for (int k = 1; k < t->ndim; k++) rowel *= t->shape[k];
    if (row0 < 0 || nrows < 0 || row0 + nrows > nlead)
        return zb_fail(ZB_ESHAPE, "%s: tensor '%s': rows [%lld, %lld) outside [0, %lld)", zb_st_file_of(s->st, t),
                       name, (long long)row0, (long long)(row0 + nrows), (long long)nlead);
    const uint8_t *src = (const uint8_t *)t->data + (size_t)(row0 * rowel) * zb_dtype_size(t->dtype);
    int rc = zb_dtype_convert_f32(t->dtype, src, nrows * rowel, dst);
    if (rc) return zb_fail(rc, "%s: tensor '%s': dtype %s is not a float type", zb_st_file_of(s->st, t), name,
                           zb_dtype_name(t->dtype));
    return ZB_OK;
}

int zb_store_read_raw(const zb_store *s, const char *name, void *dst) {
    ZB_STORED(s, name);
    int i = zb_store_find(s, name);
    if (i < 0) return zb_fail(ZB_ENOTFOUND, "%s: tensor '%s' is missing", s->path, name);
    if (s->ck) {
        const zb_ckpt_entry *e = zb_ckpt_entry_at(s->ck, i);
        return zb_ckpt_read_raw(s->ck, i, 0, e->ndim ? e->shape[0] : 1, dst);
    }
    const zb_st_tensor *t = zb_st_at(s->st, i);
    if (t->nbytes) memcpy(dst, t->data, t->nbytes);
    return ZB_OK;
}
