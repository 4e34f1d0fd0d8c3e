/* ckpt_read.c — reading the native HDF5 checkpoint, rank-local (HDF5's default driver; see
 * ckpt_read.h for the layout). HDF5's own error-stack printing is switched off; every failing
 * call becomes one zb_fail line naming the file (and tensor). */
#include "ckpt_read.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ckpt_h5.h"

void zb_h5_quiet(void) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }

/* File type (little endian, as safetensors) and native memory type of a dtype. */
hid_t zb_h5_file_type(zb_dtype d) {
    switch (d) {
    case ZB_DT_F32: return H5T_IEEE_F32LE;
    case ZB_DT_F64: return H5T_IEEE_F64LE;
    case ZB_DT_F16: case ZB_DT_BF16: return H5T_STD_U16LE;
    case ZB_DT_I32: return H5T_STD_I32LE;
    case ZB_DT_I64: return H5T_STD_I64LE;
    case ZB_DT_U32: return H5T_STD_U32LE;
    case ZB_DT_U8: return H5T_STD_U8LE;
    case ZB_DT_I8: return H5T_STD_I8LE;
    }
    return -1;
}
hid_t zb_h5_mem_type(zb_dtype d) {
    switch (d) {
    case ZB_DT_F32: return H5T_NATIVE_FLOAT;
    case ZB_DT_F64: return H5T_NATIVE_DOUBLE;
    case ZB_DT_F16: case ZB_DT_BF16: return H5T_NATIVE_UINT16;
    case ZB_DT_I32: return H5T_NATIVE_INT32;
    case ZB_DT_I64: return H5T_NATIVE_INT64;
    case ZB_DT_U32: return H5T_NATIVE_UINT32;
    case ZB_DT_U8: return H5T_NATIVE_UINT8;
    case ZB_DT_I8: return H5T_NATIVE_INT8;
    }
    return -1;
}

/* Read a string attribute into a malloc'd NUL-terminated buffer. */
int zb_h5_read_str_attr(hid_t obj, const char *name, char **out) {
    int rc = ZB_OK;
    hid_t a = -1, ft = -1, mt = -1;
    char *buf = NULL;
    *out = NULL;
    H5GO(a = H5Aopen(obj, name, H5P_DEFAULT));
    H5GO(ft = H5Aget_type(a));
    if (H5Tget_class(ft) != H5T_STRING || H5Tis_variable_str(ft) > 0) {
        rc = zb_fail(ZB_EFORMAT, "attribute '%s' is not a fixed-length string", name);
        goto done;
    }
    size_t n = H5Tget_size(ft);
    if (n == 0 || n > (64u << 20)) { rc = zb_fail(ZB_EFORMAT, "attribute '%s' has a bad size", name); goto done; }
    H5GO(mt = H5Tcopy(H5T_C_S1));
    H5GO(H5Tset_size(mt, n + 1));
    if (!(buf = zb_calloc(n + 2, 1, name))) { rc = ZB_ENOMEM; goto done; }
    H5GO(H5Aread(a, mt, buf));
    buf[n] = 0;
    *out = buf;
    buf = NULL;
done:
    free(buf);
    if (mt >= 0) H5Tclose(mt);
    if (ft >= 0) H5Tclose(ft);
    if (a >= 0) H5Aclose(a);
    return rc;
}

/* ---------------------------------------------------------------- reader */

struct zb_ckpt_reader {
    char *path;
    hid_t file;
    char *config_json;
    int n, cap;
    zb_ckpt_entry *e;
    hid_t *ds;   /* open dataset handles, one per entry */
};

void zb_ckpt_reader_close(zb_ckpt_reader *r) {
    if (!r) return;
    for (int i = 0; i < r->n; i++) {
        free(r->e[i].name);
        if (r->ds[i] >= 0) H5Dclose(r->ds[i]);
    }
    free(r->e);
    free(r->ds);
    free(r->config_json);
    if (r->file >= 0) H5Fclose(r->file);
    free(r->path);
    free(r);
}

/* Root link names, collected by H5Literate. */
typedef struct { char **names; int n, cap, oom; } zb_namelist;
static herr_t collect_name(hid_t g, const char *name, const H5L_info_t *info, void *op) {
    (void)g; (void)info;
    zb_namelist *l = op;
    if (l->n == l->cap) {
        int nc = l->cap ? 2 * l->cap : 64;
        char **nn = realloc(l->names, (size_t)nc * sizeof *nn);
        if (!nn) { l->oom = 1; return -1; }
        l->names = nn;
        l->cap = nc;
    }
    size_t k = strlen(name) + 1;
    if (!(l->names[l->n] = malloc(k))) { l->oom = 1; return -1; }
    memcpy(l->names[l->n++], name, k);
    return 0;
}

/* dtype from the `dtype` attribute, else from the HDF5 type. */
static int entry_dtype(hid_t ds, const char *path, const char *name, zb_dtype *dt) {
    if (H5Aexists(ds, "dtype") > 0) {
        char *s = NULL;
        int rc = zb_h5_read_str_attr(ds, "dtype", &s);
        if (rc) return rc;
        rc = zb_dtype_parse(s, dt);
        free(s);
        if (rc) return zb_fail(ZB_EFORMAT, "%s: tensor '%s': unknown dtype attribute", path, name);
        return ZB_OK;
    }
    hid_t t = H5Dget_type(ds);
    if (t < 0) return zb_fail(ZB_EHDF5, "%s: tensor '%s': cannot read its type", path, name);
    H5T_class_t cl = H5Tget_class(t);
    size_t sz = H5Tget_size(t);
    H5T_sign_t sg = H5Tget_sign(t);
    H5Tclose(t);
    if (cl == H5T_FLOAT && sz == 4) *dt = ZB_DT_F32;
    else if (cl == H5T_FLOAT && sz == 8) *dt = ZB_DT_F64;
    else if (cl == H5T_INTEGER && sz == 4) *dt = sg == H5T_SGN_NONE ? ZB_DT_U32 : ZB_DT_I32;
    else if (cl == H5T_INTEGER && sz == 8 && sg != H5T_SGN_NONE) *dt = ZB_DT_I64;
    else if (cl == H5T_INTEGER && sz == 1) *dt = sg == H5T_SGN_NONE ? ZB_DT_U8 : ZB_DT_I8;
    else return zb_fail(ZB_EFORMAT, "%s: tensor '%s': unsupported HDF5 type", path, name);
    return ZB_OK;
}

/* libhdf5 sizes its read buffers from the file's own metadata: a damaged chunk record claiming
 * 4 GiB makes H5Dread allocate 4 GiB before it notices the file is short (fuzzing). Refuse, at
 * open, what zebra's writer never makes: stored bytes beyond the file's size, or a chunk larger
 * than the tensor in any dimension (parallel/checkpoint.c: chunks are whole rows). */
static int check_storage(hid_t ds, const char *path, const zb_ckpt_entry *e, uint64_t fsize) {
    hsize_t stored = H5Dget_storage_size(ds);
    if ((uint64_t)stored > fsize)
        return zb_fail(ZB_EFORMAT, "%s: tensor '%s': %llu bytes stored in a file of %llu (truncated or corrupt)",
                       path, e->name, (unsigned long long)stored, (unsigned long long)fsize);
    hid_t dcpl = H5Dget_create_plist(ds);
    if (dcpl < 0) return zb_fail(ZB_EFORMAT, "%s: tensor '%s': unreadable storage layout", path, e->name);
    int rc = ZB_OK;
    if (H5Pget_layout(dcpl) == H5D_CHUNKED) {
        hsize_t cd[H5S_MAX_RANK];
        int nc = H5Pget_chunk(dcpl, H5S_MAX_RANK, cd);
        if (nc != e->ndim) {
            rc = zb_fail(ZB_EFORMAT, "%s: tensor '%s': chunks of rank %d for a tensor of rank %d (corrupt)", path,
                         e->name, nc, e->ndim);
        } else {
            for (int k = 0; k < nc && !rc; k++)
                if (cd[k] == 0 || cd[k] > (hsize_t)(e->shape[k] ? e->shape[k] : 1))
                    rc = zb_fail(ZB_EFORMAT, "%s: tensor '%s': chunk dimension %d of %llu exceeds the tensor's %lld "
                                 "(corrupt or not a zebra checkpoint)", path, e->name, k,
                                 (unsigned long long)cd[k], (long long)e->shape[k]);
        }
    }
    H5Pclose(dcpl);
    return rc;
}

int zb_ckpt_reader_open(zb_ckpt_reader **out, const char *path) {
    zb_h5_quiet();
    *out = NULL;
    ZB_TRY(zb_path_is_file(path, 1));
    struct stat st;
    if (stat(path, &st)) return zb_fail(ZB_EIO, "%s: %s", path, strerror(errno));
    uint64_t fsize = (uint64_t)st.st_size;
    htri_t is = H5Fis_hdf5(path);
    if (is <= 0) return zb_fail(ZB_EFORMAT, "%s: not an HDF5 file", path);
    zb_ckpt_reader *r = zb_calloc(1, sizeof *r, "checkpoint reader");
    if (!r) return ZB_ENOMEM;
    r->file = -1;
    int rc = ZB_OK;
    zb_namelist l = {0};
    if (!(r->path = zb_malloc(strlen(path) + 1, "path"))) { rc = ZB_ENOMEM; goto done; }
    strcpy(r->path, path);
    r->file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (r->file < 0) { rc = zb_fail(ZB_EFORMAT, "%s: cannot open as HDF5 (truncated or corrupt)", path); goto done; }
    /* zebra writes the root links compactly (or, before, as a symbol table); the dense form keeps
     * them in a fractal heap without checksums, where libhdf5 1.10.8 crashes on damage (fuzzing) */
    H5G_info_t gi;
    if (H5Gget_info(r->file, &gi) < 0) {
        rc = zb_fail(ZB_EFORMAT, "%s: cannot read the root group (truncated or corrupt)", path);
        goto done;
    }
    if (gi.storage_type == H5G_STORAGE_TYPE_DENSE) {
        rc = zb_fail(ZB_EFORMAT, "%s: root links in HDF5's dense storage, which zebra never writes (corrupt or "
                     "not a zebra checkpoint)", path);
        goto done;
    }
    if (H5Aexists(r->file, "config_json") <= 0) {
        rc = zb_fail(ZB_EFORMAT, "%s: not a zebra checkpoint (no 'config_json' attribute)", path);
        goto done;
    }
    if ((rc = zb_h5_read_str_attr(r->file, "config_json", &r->config_json))) { zb_fail_prefix(rc, path); goto done; }
    hsize_t idx = 0;
    if (H5Literate(r->file, H5_INDEX_NAME, H5_ITER_INC, &idx, collect_name, &l) < 0) {
        rc = l.oom ? zb_fail(ZB_ENOMEM, "%s: out of memory listing datasets", path)
                   : zb_fail(ZB_EFORMAT, "%s: cannot list the datasets (truncated or corrupt)", path);
        goto done;
    }
    r->e = zb_calloc((size_t)(l.n ? l.n : 1), sizeof *r->e, "checkpoint entries");
    r->ds = zb_calloc((size_t)(l.n ? l.n : 1), sizeof *r->ds, "checkpoint entries");
    if (!r->e || !r->ds) { rc = ZB_ENOMEM; goto done; }
    for (int i = 0; i < l.n; i++) {
        H5O_info_t oi;
        if (H5Oget_info_by_name2(r->file, l.names[i], &oi, H5O_INFO_BASIC, H5P_DEFAULT) < 0) {
            rc = zb_fail(ZB_EFORMAT, "%s: object '%s' is unreadable (truncated or corrupt)", path, l.names[i]);
            goto done;
        }
        if (oi.type != H5O_TYPE_DATASET) continue;
        zb_ckpt_entry *e = &r->e[r->n];
        hid_t ds = H5Dopen2(r->file, l.names[i], H5P_DEFAULT);
        if (ds < 0) { rc = zb_fail(ZB_EFORMAT, "%s: tensor '%s': cannot open the dataset", path, l.names[i]); goto done; }
        r->ds[r->n] = ds;
        e->name = l.names[i];
        l.names[i] = NULL;
        r->n++;
        if ((rc = entry_dtype(ds, path, e->name, &e->dtype))) goto done;
        hid_t sp = H5Dget_space(ds);
        int nd = sp >= 0 ? H5Sget_simple_extent_ndims(sp) : -1;
        if (nd < 0 || nd > ZB_MAX_DIMS) {
            if (sp >= 0) H5Sclose(sp);
            rc = zb_fail(ZB_EFORMAT, "%s: tensor '%s': bad dataspace", path, e->name);
            goto done;
        }
        hsize_t dims[ZB_MAX_DIMS];
        H5Sget_simple_extent_dims(sp, dims, NULL);
        H5Sclose(sp);
        e->ndim = nd;
        e->numel = 1;
        /* a dataspace may claim any dims (chunked storage need not exist): its bytes must fit
         * int64, or every size computed from it overflows */
        uint64_t lim = (uint64_t)INT64_MAX / zb_dtype_size(e->dtype);
        for (int k = 0; k < nd; k++) {
            if (dims[k] && (uint64_t)e->numel > lim / dims[k]) {
                rc = zb_fail(ZB_EFORMAT, "%s: tensor '%s': dimension %d of %llu elements: the tensor does not fit "
                             "in 2^63 bytes (corrupt or not a zebra checkpoint)", path, e->name, k,
                             (unsigned long long)dims[k]);
                goto done;
            }
            e->shape[k] = (int64_t)dims[k];
            e->numel *= e->shape[k];
        }
        if ((rc = check_storage(ds, path, e, fsize))) goto done;
    }
done:
    for (int i = 0; i < l.n; i++) free(l.names[i]);
    free(l.names);
    if (rc) { zb_ckpt_reader_close(r); return rc; }
    *out = r;
    return ZB_OK;
}

const char *zb_ckpt_path(const zb_ckpt_reader *r) { return r->path; }
const char *zb_ckpt_config_json(const zb_ckpt_reader *r) { return r->config_json; }
int zb_ckpt_count(const zb_ckpt_reader *r) { return r->n; }
const zb_ckpt_entry *zb_ckpt_entry_at(const zb_ckpt_reader *r, int i) { return i >= 0 && i < r->n ? &r->e[i] : NULL; }

int zb_ckpt_find(const zb_ckpt_reader *r, const char *name) {
    int lo = 0, hi = r->n - 1;   /* H5Literate by name gives sorted order */
    while (lo <= hi) {
        int mid = (lo + hi) / 2, c = strcmp(r->e[mid].name, name);
        if (!c) return mid;
        if (c < 0) lo = mid + 1; else hi = mid - 1;
    }
    for (int i = 0; i < r->n; i++)   /* in case the order differs from strcmp's */
        if (!strcmp(r->e[i].name, name)) return i;
    return -1;
}

int zb_ckpt_read_raw(const zb_ckpt_reader *r, int i, int64_t row0, int64_t nrows, void *dst) {
    if (i < 0 || i >= r->n) return zb_fail(ZB_ENOTFOUND, "%s: no tensor #%d", r->path, i);
    const zb_ckpt_entry *e = &r->e[i];
    int64_t nlead = e->ndim ? e->shape[0] : 1;
    if (row0 < 0 || nrows < 0 || row0 + nrows > nlead)
        return zb_fail(ZB_ESHAPE, "%s: tensor '%s': rows [%lld, %lld) outside [0, %lld)", r->path, e->name,
                       (long long)row0, (long long)(row0 + nrows), (long long)nlead);
    if (nrows == 0 || e->numel == 0) return ZB_OK;
    int rc = ZB_OK;
    hid_t fs = -1, ms = -1;
    hsize_t start[ZB_MAX_DIMS] = {0}, count[ZB_MAX_DIMS];
    hsize_t nel = (hsize_t)nrows;
    for (int k = 0; k < e->ndim; k++) {
        count[k] = (hsize_t)e->shape[k];
        if (k) nel *= (hsize_t)e->shape[k];
    }
    H5GO(fs = H5Dget_space(r->ds[i]));
    if (e->ndim) {
        start[0] = (hsize_t)row0;
        count[0] = (hsize_t)nrows;
        H5GO(H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL));
        H5GO(ms = H5Screate_simple(1, &nel, NULL));
    } else {
        H5GO(ms = H5Screate(H5S_SCALAR));
    }
    H5GO(H5Dread(r->ds[i], zb_h5_mem_type(e->dtype), ms, fs, H5P_DEFAULT, dst));
done:
    if (ms >= 0) H5Sclose(ms);
    if (fs >= 0) H5Sclose(fs);
    if (rc) {
        /* with the Fletcher32 filter (the writer's, parallel/checkpoint.c) a flipped byte fails
         * the read: say so */
        hid_t dcpl = H5Dget_create_plist(r->ds[i]);
        unsigned flags = 0, conf = 0;
        size_t nelm = 0;
        int sum = dcpl >= 0 && H5Pget_filter_by_id2(dcpl, H5Z_FILTER_FLETCHER32, &flags, &nelm, NULL, 0, NULL, &conf) >= 0;
        if (dcpl >= 0) H5Pclose(dcpl);
        zb_fail(ZB_EFORMAT, "%s: tensor '%s': %s", r->path, e->name,
                sum ? "read failed: its Fletcher32 checksum does not match (corrupt data) or the file is truncated"
                    : "read failed (truncated or corrupt file)");
        return ZB_EFORMAT;
    }
    return ZB_OK;
}

int zb_ckpt_read_f32(const zb_ckpt_reader *r, int i, int64_t row0, int64_t nrows, float *dst) {
    if (i < 0 || i >= r->n) return zb_fail(ZB_ENOTFOUND, "%s: no tensor #%d", r->path, i);
    const zb_ckpt_entry *e = &r->e[i];
    zb_dtype dt = e->dtype;
    if (dt == ZB_DT_F32) return zb_ckpt_read_raw(r, i, row0, nrows, dst);
    if (dt != ZB_DT_BF16 && dt != ZB_DT_F16 && dt != ZB_DT_F64)
        return zb_fail(ZB_EFORMAT, "%s: tensor '%s': dtype %s is not a float type", r->path, e->name, zb_dtype_name(dt));
    int64_t rowel = 1;
    for (int k = 1; k < e->ndim; k++) rowel *= e->shape[k];
    int64_t n = nrows * rowel;
    void *tmp = zb_malloc((size_t)(n ? n : 1) * zb_dtype_size(dt), e->name);
    if (!tmp) return ZB_ENOMEM;
    int rc = zb_ckpt_read_raw(r, i, row0, nrows, tmp);
    if (!rc) rc = zb_dtype_convert_f32(dt, tmp, n, dst);
    free(tmp);
    return rc;
}
