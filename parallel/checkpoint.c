/* checkpoint.c — the native HDF5 checkpoint (see checkpoint.h for the layout).
 *
 * HDF5's own error-stack printing is switched off; every failing call becomes one zb_fail
 * line naming the file (and tensor). Inside functions that hold handles, H5GO is ZB_H5 with a
 * jump to the cleanup label so that nothing leaks on the error path. */
#include "checkpoint.h"

#include <errno.h>
#include <hdf5.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "zb_common.h"

#define H5GO(call) do { if ((long long)(call) < 0) { \
    rc = zb_fail(ZB_EHDF5, "HDF5 call failed: %s (%s:%d)", #call, __FILE__, __LINE__); goto done; } } while (0)

static void h5_quiet(void) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }

/* File type (little endian, as safetensors) and native memory type of a dtype. */
static hid_t file_type(zb_dtype d) {
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
static hid_t mem_type(zb_dtype d) {
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

/* Fixed-length string attribute. */
static int write_str_attr(hid_t obj, const char *name, const char *val) {
    int rc = ZB_OK;
    hid_t t = -1, sp = -1, a = -1;
    size_t n = strlen(val);
    H5GO(t = H5Tcopy(H5T_C_S1));
    H5GO(H5Tset_size(t, n ? n : 1));
    H5GO(sp = H5Screate(H5S_SCALAR));
    H5GO(a = H5Acreate2(obj, name, t, sp, H5P_DEFAULT, H5P_DEFAULT));
    H5GO(H5Awrite(a, t, n ? val : " "));
done:
    if (a >= 0) H5Aclose(a);
    if (sp >= 0) H5Sclose(sp);
    if (t >= 0) H5Tclose(t);
    return rc;
}

static int write_int_attr(hid_t obj, const char *name, int v) {
    int rc = ZB_OK;
    hid_t sp = -1, a = -1;
    H5GO(sp = H5Screate(H5S_SCALAR));
    H5GO(a = H5Acreate2(obj, name, H5T_STD_I32LE, sp, H5P_DEFAULT, H5P_DEFAULT));
    H5GO(H5Awrite(a, H5T_NATIVE_INT, &v));
done:
    if (a >= 0) H5Aclose(a);
    if (sp >= 0) H5Sclose(sp);
    return rc;
}

/* Read a string attribute into a malloc'd NUL-terminated buffer. */
static int read_str_attr(hid_t obj, const char *name, char **out) {
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

/* ---------------------------------------------------------------- writer */

/* Every dataset of rank >= 1 is chunked with HDF5's Fletcher32 checksum filter: a flipped
 * byte is found on read (H5Dread fails, one error naming file and tensor) instead of loading
 * silently wrong weights. Chunks are whole rows of the leading dimension, about 4 MiB each
 * (the filter and parallel writes work per chunk). A 0-d or empty tensor stays contiguous. */
static hid_t checked_dcpl(int ndim, const hsize_t *dims, zb_dtype dtype) {
    hid_t p = H5Pcreate(H5P_DATASET_CREATE);
    if (p < 0 || ndim < 1) return p;
    hsize_t rowel = 1, chunk[ZB_MAX_DIMS];
    for (int i = 0; i < ndim; i++) {
        if (dims[i] == 0) return p;
        if (i) rowel *= dims[i];
        chunk[i] = dims[i];
    }
    size_t esz = zb_dtype_size(dtype);
    hsize_t rows = (hsize_t)(4u << 20) / (rowel * (esz ? esz : 1));
    chunk[0] = rows < 1 ? 1 : rows > dims[0] ? dims[0] : rows;
    /* a row of more than 4 GiB cannot be one chunk (HDF5's limit): then no checksum */
    if (rowel * (esz ? esz : 1) >= ((hsize_t)1 << 32)) return p;
    if (H5Pset_chunk(p, ndim, chunk) < 0 || H5Pset_fletcher32(p) < 0) { H5Pclose(p); return -1; }
    return p;
}

/* Collective: every rank learns whether any failed (rc != 0 somewhere), so that all leave a
 * collective sequence at the same point and none waits in the next HDF5 call for a rank that
 * has gone. A rank without an error of its own gets "another rank failed". */
static int agree(const zb_ckpt_writer *w, int rc, const char *what);

struct zb_ckpt_writer {
    char *path, *tmp;
    MPI_Comm comm;
    int rank;
    hid_t file, dxpl;
    int64_t reserved;   /* rank 0: bytes of the file allocated ahead of HDF5 (reserve) */
    int64_t end;        /* rank 0: a bound on HDF5's end of file: the tensors so far + metadata */
};

/* Disk space first, HDF5 after. A write that fails inside HDF5 (disk full, file size limit)
 * makes the close fail too, and HDF5 1.10 then crashes at exit (H5F__close_cb from
 * MPI_Finalize) with the file still registered. So rank 0 allocates the file's blocks before
 * each tensor is written, up to a bound on HDF5's end of file after it (every tensor so far
 * and this one, each with 16 KiB of object header and 1/1024 of its size of chunk index and
 * checksums, 1 MiB for the superblock and the root); when that fails every rank stops before HDF5 writes a byte beyond what is allocated,
 * and the close (metadata below the end, the file cut back to it) succeeds. File systems
 * without fallocate (EOPNOTSUPP) are written without the reservation. Collective (agree). */
static int reserve(zb_ckpt_writer *w, const char *name, uint64_t bytes) {
    int rc = ZB_OK;
    if (w->rank == 0) {
        if (!w->end) w->end = 1 << 20;
        w->end += (int64_t)bytes + (int64_t)bytes / 1024 + (16 << 10);
        int64_t want = w->end;
        if (want > w->reserved) {
            int fd = open(w->tmp, O_WRONLY);
            int e = fd < 0 ? errno : 0;
            if (!e && fallocate(fd, 0, 0, want) != 0) e = errno;
            if (fd >= 0) close(fd);
            if (e == EOPNOTSUPP || e == ENOSYS) w->reserved = INT64_MAX;   /* not supported here */
            else if (e) rc = zb_fail(ZB_EIO, "%s: no room to write tensor '%s': the file would reach %lld bytes (%s)",
                                     w->path, name, (long long)want, strerror(e));
            else w->reserved = want;
        }
    }
    char what[1100];
    snprintf(what, sizeof what, "tensor '%s'", name);
    return agree(w, rc, what);
}

static int agree(const zb_ckpt_writer *w, int rc, const char *what) {
    /* the lowest failing rank's message goes to every rank: whichever stops the job first
     * (MPI_Abort in the driver) prints the cause, not "another rank failed" */
    int me = rc != ZB_OK ? w->rank : INT_MAX, first = INT_MAX;
    if (MPI_Allreduce(&me, &first, 1, MPI_INT, MPI_MIN, w->comm) != MPI_SUCCESS)
        return rc ? rc : zb_fail(ZB_EMPI, "%s: MPI_Allreduce failed", w->path);
    if (first == INT_MAX) return rc;
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", w->rank == first ? zb_errmsg() : "");
    if (MPI_Bcast(msg, (int)sizeof msg, MPI_CHAR, first, w->comm) != MPI_SUCCESS || !msg[0])
        snprintf(msg, sizeof msg, "%s: rank %d failed to write %s", w->path, first, what);
    if (!rc) rc = zb_fail(ZB_EIO, "%s", msg);
    return rc;
}

int zb_ckpt_writer_open(zb_ckpt_writer **out, const char *path, MPI_Comm comm) {
    h5_quiet();
    *out = NULL;
    zb_ckpt_writer *w = zb_calloc(1, sizeof *w, "checkpoint writer");
    if (!w) return ZB_ENOMEM;
    w->file = w->dxpl = -1;
    w->comm = comm;
    int rc = ZB_OK;
    hid_t fapl = -1;
    MPI_Comm_rank(comm, &w->rank);
    long pid = (long)getpid();
    if (MPI_Bcast(&pid, 1, MPI_LONG, 0, comm) != MPI_SUCCESS) { rc = zb_fail(ZB_EMPI, "%s: MPI_Bcast failed", path); goto done; }
    size_t n = strlen(path) + 32;
    w->path = zb_malloc(strlen(path) + 1, "path");
    w->tmp = zb_malloc(n, "path");
    if (!w->path || !w->tmp) { rc = ZB_ENOMEM; goto done; }
    strcpy(w->path, path);
    snprintf(w->tmp, n, "%s.tmp.%ld", path, pid);
    H5GO(fapl = H5Pcreate(H5P_FILE_ACCESS));
    H5GO(H5Pset_fapl_mpio(fapl, comm, MPI_INFO_NULL));
    w->file = H5Fcreate(w->tmp, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    if (w->file < 0) { rc = zb_fail(ZB_EIO, "%s: cannot create the file (via %s): directory missing or not writable?", path, w->tmp); goto done; }
    H5GO(w->dxpl = H5Pcreate(H5P_DATASET_XFER));
    H5GO(H5Pset_dxpl_mpio(w->dxpl, H5FD_MPIO_COLLECTIVE));
    if ((rc = write_int_attr(w->file, "zebra_format", 1))) goto done;
done:
    if (fapl >= 0) H5Pclose(fapl);
    if (w->path && w->tmp) rc = agree(w, rc, "the new file");
    if (rc) {
        if (rc == ZB_EHDF5) zb_fail_prefix(rc, path);
        zb_ckpt_abort(w);
        return rc;
    }
    *out = w;
    return ZB_OK;
}

int zb_ckpt_set_config(zb_ckpt_writer *w, const char *config_json) {
    zb_config c;
    int rc = zb_config_parse(config_json, w->path, &c);
    if (rc) return rc;
    if ((rc = write_str_attr(w->file, "config_json", config_json)) ||
        (rc = write_str_attr(w->file, "model_type", c.model_type)) ||
        (rc = write_int_attr(w->file, "n_layers", c.n_layers)) ||
        (rc = write_int_attr(w->file, "d_model", c.d_model)))
        zb_fail_prefix(rc, w->path);
    return agree(w, rc, "the config attributes");
}

int zb_ckpt_open_model(zb_ckpt_writer **out, const char *path, const zb_config *cfg, zb_dtype dtype,
                       MPI_Comm comm) {
    *out = NULL;
    if (dtype != ZB_DT_F32 && dtype != ZB_DT_BF16)
        return zb_fail(ZB_EARG, "%s: checkpoints are stored as F32 or BF16", path);
    char *json = zb_config_to_json(cfg);
    if (!json) return zb_fail(ZB_ENOMEM, "%s: cannot serialise the config", path);
    zb_ckpt_writer *w = NULL;
    int rc = zb_ckpt_writer_open(&w, path, comm);
    if (!rc) rc = zb_ckpt_set_config(w, json);
    free(json);
    if (rc && w) zb_ckpt_abort(w);
    else *out = w;
    return rc;
}

/* Close what a tensor write opened; every rank learns whether any failed (agree); on failure
 * prefix the message with file and tensor. */
static int write_done(const zb_ckpt_writer *w, const char *name, int rc, hid_t ms, hid_t ds, hid_t sp) {
    if (ms >= 0) H5Sclose(ms);
    if (ds >= 0) H5Dclose(ds);
    if (sp >= 0) H5Sclose(sp);
    char what[1100];
    snprintf(what, sizeof what, "tensor '%s'", name);
    int own = rc;
    rc = agree(w, rc, what);
    if (rc && own) {
        char pre[1200];
        snprintf(pre, sizeof pre, "%s: tensor '%s'", w->path, name);
        zb_fail_prefix(rc, pre);
    }
    return rc;
}

int zb_ckpt_write_rows(zb_ckpt_writer *w, const char *name, zb_dtype dtype, int ndim, const int64_t *shape,
                       int64_t row0, int64_t nrows, const void *data) {
    if (strchr(name, '/') || !name[0] || !strcmp(name, "."))
        return zb_fail(ZB_EARG, "%s: tensor '%s': names with '/' cannot be stored", w->path, name);
    if (ndim < 0 || ndim > ZB_MAX_DIMS || file_type(dtype) < 0)
        return zb_fail(ZB_EARG, "%s: tensor '%s': bad ndim %d or dtype", w->path, name, ndim);
    int64_t nlead = ndim ? shape[0] : 1;
    if (row0 < 0 || nrows < 0 || row0 + nrows > nlead)
        return zb_fail(ZB_EARG, "%s: tensor '%s': rows [%lld, %lld) outside [0, %lld)", w->path, name,
                       (long long)row0, (long long)(row0 + nrows), (long long)nlead);
    int rc = ZB_OK;
    hid_t sp = -1, ds = -1, ms = -1, dcpl = -1;
    hsize_t dims[ZB_MAX_DIMS], start[ZB_MAX_DIMS] = {0}, count[ZB_MAX_DIMS];
    hsize_t rowel = 1;
    for (int i = 0; i < ndim; i++) {
        dims[i] = count[i] = (hsize_t)shape[i];
        if (i) rowel *= (hsize_t)shape[i];
    }
    if ((rc = reserve(w, name, (uint64_t)nlead * rowel * zb_dtype_size(dtype)))) return rc;
    if (ndim) H5GO(sp = H5Screate_simple(ndim, dims, NULL));
    else H5GO(sp = H5Screate(H5S_SCALAR));
    H5GO(dcpl = checked_dcpl(ndim, dims, dtype));
    H5GO(ds = H5Dcreate2(w->file, name, file_type(dtype), sp, H5P_DEFAULT, dcpl, H5P_DEFAULT));
    if ((rc = write_str_attr(ds, "dtype", zb_dtype_name(dtype)))) goto done;
    hsize_t nel = (hsize_t)nrows * rowel;
    if (nrows == 0 || nel == 0) {
        H5GO(H5Sselect_none(sp));
        hsize_t one = 1;
        H5GO(ms = H5Screate_simple(1, &one, NULL));
        H5GO(H5Sselect_none(ms));
    } else if (ndim) {
        start[0] = (hsize_t)row0;
        count[0] = (hsize_t)nrows;
        H5GO(H5Sselect_hyperslab(sp, H5S_SELECT_SET, start, NULL, count, NULL));
        H5GO(ms = H5Screate_simple(1, &nel, NULL));
    } else {
        H5GO(ms = H5Screate(H5S_SCALAR));
    }
    /* a rank with nothing to write still takes part in the collective write */
    static const char dummy[8];
    H5GO(H5Dwrite(ds, mem_type(dtype), ms, sp, w->dxpl, (nel && nrows) ? data : dummy));
done:
    if (dcpl >= 0) H5Pclose(dcpl);
    return write_done(w, name, rc, ms, ds, sp);
}

int zb_ckpt_write_tensor(zb_ckpt_writer *w, const char *name, zb_dtype dtype, int ndim, const int64_t *shape,
                         const void *data) {
    int64_t nlead = ndim ? shape[0] : 1;
    return zb_ckpt_write_rows(w, name, dtype, ndim, shape, 0, w->rank == 0 ? nlead : 0, data);
}

/* Added for tensor parallelism (parallel/tp.c): a union of row-range x column-range
 * hyperslabs per rank; HDF5 maps the contiguous memory buffer onto the selection in file
 * (row-major) order, which is the order of the rank's local tensor. */
int zb_ckpt_write_slab(zb_ckpt_writer *w, const char *name, zb_dtype dtype, int ndim, const int64_t *shape,
                       int nseg, const int64_t *row0, const int64_t *nrows, int64_t col0, int64_t ncols,
                       const void *data) {
    if (strchr(name, '/') || !name[0] || !strcmp(name, "."))
        return zb_fail(ZB_EARG, "%s: tensor '%s': names with '/' cannot be stored", w->path, name);
    if (ndim < 1 || ndim > ZB_MAX_DIMS || file_type(dtype) < 0)
        return zb_fail(ZB_EARG, "%s: tensor '%s': bad ndim %d or dtype", w->path, name, ndim);
    hsize_t dims[ZB_MAX_DIMS], start[ZB_MAX_DIMS] = {0}, count[ZB_MAX_DIMS];
    hsize_t rowel = 1;
    for (int i = 0; i < ndim; i++) {
        dims[i] = count[i] = (hsize_t)shape[i];
        if (i) rowel *= (hsize_t)shape[i];
    }
    if (nseg && (ndim == 2 ? (col0 < 0 || ncols < 0 || (hsize_t)(col0 + ncols) > dims[1])
                           : (col0 != 0 || (hsize_t)ncols != rowel)))   /* nseg 0: writes nothing */
        return zb_fail(ZB_EARG, "%s: tensor '%s': bad column range [%lld, %lld)", w->path, name,
                       (long long)col0, (long long)(col0 + ncols));
    hsize_t nel = 0;
    for (int k = 0; k < nseg; k++) {
        if (row0[k] < 0 || nrows[k] < 0 || (hsize_t)(row0[k] + nrows[k]) > dims[0] ||
            (k && row0[k] < row0[k - 1] + nrows[k - 1]))
            return zb_fail(ZB_EARG, "%s: tensor '%s': bad row segment [%lld, %lld)", w->path, name,
                           (long long)row0[k], (long long)(row0[k] + nrows[k]));
        nel += (hsize_t)nrows[k] * (hsize_t)ncols;
    }
    int rc = ZB_OK, first = 1;
    hid_t sp = -1, ds = -1, ms = -1, dcpl = -1;
    if ((rc = reserve(w, name, (uint64_t)dims[0] * rowel * zb_dtype_size(dtype)))) return rc;
    H5GO(sp = H5Screate_simple(ndim, dims, NULL));
    H5GO(dcpl = checked_dcpl(ndim, dims, dtype));
    H5GO(ds = H5Dcreate2(w->file, name, file_type(dtype), sp, H5P_DEFAULT, dcpl, H5P_DEFAULT));
    if ((rc = write_str_attr(ds, "dtype", zb_dtype_name(dtype)))) goto done;
    H5GO(H5Sselect_none(sp));
    if (nel) {
        for (int k = 0; k < nseg; k++) {
            if (!nrows[k]) continue;
            start[0] = (hsize_t)row0[k];
            count[0] = (hsize_t)nrows[k];
            if (ndim == 2) { start[1] = (hsize_t)col0; count[1] = (hsize_t)ncols; }
            H5GO(H5Sselect_hyperslab(sp, first ? H5S_SELECT_SET : H5S_SELECT_OR, start, NULL, count, NULL));
            first = 0;
        }
        H5GO(ms = H5Screate_simple(1, &nel, NULL));
    } else {
        hsize_t one = 1;
        H5GO(ms = H5Screate_simple(1, &one, NULL));
        H5GO(H5Sselect_none(ms));
    }
    /* a rank with nothing to write still takes part in the collective write */
    static const char dummy[8];
    H5GO(H5Dwrite(ds, mem_type(dtype), ms, sp, w->dxpl, nel ? data : dummy));
done:
    if (dcpl >= 0) H5Pclose(dcpl);
    return write_done(w, name, rc, ms, ds, sp);
}

static void writer_free(zb_ckpt_writer *w) {
    free(w->path);
    free(w->tmp);
    free(w);
}

int zb_ckpt_close(zb_ckpt_writer *w) {
    int rc = ZB_OK;
    if (w->dxpl >= 0) H5Pclose(w->dxpl);
    w->dxpl = -1;
    herr_t e = H5Fclose(w->file);
    w->file = -1;
    if (e < 0) rc = zb_fail(ZB_EIO, "%s: closing the HDF5 file failed (disk full?)", w->tmp);
    /* the data on disk before the name points at it: each rank flushes what its node wrote
     * (fsync acts on the file, whichever descriptor wrote), then rank 0 renames and flushes the
     * directory entry. A crash leaves the old checkpoint or the complete new one. */
    if (!rc) {
        int fd = open(w->tmp, O_RDONLY);
        if (fd < 0 || fsync(fd) != 0)
            rc = zb_fail(ZB_EIO, "%s: cannot flush %s to disk (%s)", w->path, w->tmp, strerror(errno));
        if (fd >= 0) close(fd);
    }
    /* every rank must have closed (flushed) before rank 0 renames */
    int ok = rc == ZB_OK, all = 0;
    MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, w->comm);
    if (w->rank == 0) {
        if (all && rename(w->tmp, w->path) != 0) {
            rc = zb_fail(ZB_EIO, "%s: cannot rename %s into place (%s)", w->path, w->tmp, strerror(errno));
            all = 0;
        }
        if (all) zb_fsync_dir(w->path);
        if (!all) unlink(w->tmp);
    }
    MPI_Bcast(&all, 1, MPI_INT, 0, w->comm);
    if (!all && rc == ZB_OK) rc = zb_fail(ZB_EIO, "%s: another rank failed to write the checkpoint", w->path);
    writer_free(w);
    return rc;
}

void zb_ckpt_abort(zb_ckpt_writer *w) {
    if (!w) return;
    if (w->dxpl >= 0) H5Pclose(w->dxpl);
    /* the name first: the close is collective, so no rank can stop the job (MPI_Abort) before
     * rank 0 has removed the temporary; the open file goes when closed */
    if (w->rank == 0 && w->tmp) unlink(w->tmp);
    if (w->file >= 0) H5Fclose(w->file);
    writer_free(w);
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
        int rc = read_str_attr(ds, "dtype", &s);
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

int zb_ckpt_reader_open(zb_ckpt_reader **out, const char *path) {
    h5_quiet();
    *out = NULL;
    struct stat sb;
    if (stat(path, &sb) != 0) return zb_fail(ZB_EIO, "%s: cannot open (%s)", path, strerror(errno));
    if (!S_ISREG(sb.st_mode)) return zb_fail(ZB_EIO, "%s: not a regular file", path);
    htri_t is = H5Fis_hdf5(path);
    if (is <= 0) return zb_fail(ZB_EFORMAT, "%s: not an HDF5 file", path);
    zb_ckpt_reader *r = zb_calloc(1, sizeof *r, "checkpoint reader");
    if (!r) return ZB_ENOMEM;
    r->file = -1;
    int rc = ZB_OK;
    zb_namelist l = {0};
    if (!(r->path = zb_malloc(strlen(path) + 1, "path"))) { rc = ZB_ENOMEM; goto done; }
    strcpy(r->path, path);
    if ((rc = zb_path_is_file(path, 1))) goto done;
    r->file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (r->file < 0) { rc = zb_fail(ZB_EFORMAT, "%s: cannot open as HDF5 (truncated or corrupt)", path); goto done; }
    if (H5Aexists(r->file, "config_json") <= 0) {
        rc = zb_fail(ZB_EFORMAT, "%s: not a zebra checkpoint (no 'config_json' attribute)", path);
        goto done;
    }
    if ((rc = read_str_attr(r->file, "config_json", &r->config_json))) { zb_fail_prefix(rc, path); goto done; }
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
        for (int k = 0; k < nd; k++) { e->shape[k] = (int64_t)dims[k]; e->numel *= e->shape[k]; }
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
    H5GO(H5Dread(r->ds[i], mem_type(e->dtype), ms, fs, H5P_DEFAULT, dst));
done:
    if (ms >= 0) H5Sclose(ms);
    if (fs >= 0) H5Sclose(fs);
    if (rc) {
        /* with the Fletcher32 filter a flipped byte fails the read: say so */
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
