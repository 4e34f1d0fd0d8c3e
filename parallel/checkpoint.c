/* checkpoint.c — writing the native HDF5 checkpoint (the layout and the reader: core/ckpt_read.h).
 *
 * HDF5's own error-stack printing is switched off; every failing call becomes one zb_fail
 * line naming the file (and tensor). Inside functions that hold handles, H5GO is ZB_H5 with a
 * jump to the cleanup label so that nothing leaks on the error path. */
#include "checkpoint.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckpt_h5.h"
#include "config.h"
#include "zb_common.h"

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

/* ---------------------------------------------------------------- writer */

/* Every dataset of rank >= 1 is chunked with HDF5's Fletcher32 checksum filter: a flipped
 * byte is found on read (H5Dread fails, one error naming file and tensor) instead of loading
 * silently wrong weights. Chunks are whole rows of the leading dimension, about 4 MiB each
 * (the filter and parallel writes work per chunk). A 0-d or empty tensor stays contiguous. */
static hid_t checked_dcpl(int ndim, const hsize_t *dims, zb_dtype dtype) {
    hid_t p = H5Pcreate(H5P_DATASET_CREATE);
    /* no modification times in the object headers: the same weights give the same bytes */
    if (p >= 0 && H5Pset_obj_track_times(p, 0) < 0) { H5Pclose(p); return -1; }
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
    zb_h5_quiet();
    *out = NULL;
    zb_ckpt_writer *w = zb_calloc(1, sizeof *w, "checkpoint writer");
    if (!w) return ZB_ENOMEM;
    w->file = w->dxpl = -1;
    w->comm = comm;
    int rc = ZB_OK;
    hid_t fapl = -1, fcpl = -1;
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
    /* The 1.8+ file format: superblock v2+, object headers, group and attribute storage all carry
     * checksums that HDF5 verifies on read, so a damaged file fails cleanly instead of reaching
     * libhdf5's metadata decoders (1.10.8 overflows the heap on some corrupt attribute
     * messages: found by tests/fuzz, docs/RELIABILITY.md). The root group keeps its links in
     * its (checksummed) object header: the dense form's fractal heap has no checksum. */
    H5GO(H5Pset_libver_bounds(fapl, H5F_LIBVER_V18, H5F_LIBVER_LATEST));
    H5GO(fcpl = H5Pcreate(H5P_FILE_CREATE));
    H5GO(H5Pset_link_phase_change(fcpl, 65535, 65535));
    H5GO(H5Pset_obj_track_times(fcpl, 0));   /* the root group's header, as checked_dcpl's */
    w->file = H5Fcreate(w->tmp, H5F_ACC_TRUNC, fcpl, fapl);
    if (w->file < 0) { rc = zb_fail(ZB_EIO, "%s: cannot create the file (via %s): directory missing or not writable?", path, w->tmp); goto done; }
    H5GO(w->dxpl = H5Pcreate(H5P_DATASET_XFER));
    H5GO(H5Pset_dxpl_mpio(w->dxpl, H5FD_MPIO_COLLECTIVE));
    if ((rc = write_int_attr(w->file, "zebra_format", 1))) goto done;
done:
    if (fapl >= 0) H5Pclose(fapl);
    if (w->path && w->tmp) rc = agree(w, rc, "the new file");
    if (fcpl >= 0) H5Pclose(fcpl);
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
    if (ndim < 0 || ndim > ZB_MAX_DIMS || zb_h5_file_type(dtype) < 0)
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
    H5GO(ds = H5Dcreate2(w->file, name, zb_h5_file_type(dtype), sp, H5P_DEFAULT, dcpl, H5P_DEFAULT));
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
    H5GO(H5Dwrite(ds, zb_h5_mem_type(dtype), ms, sp, w->dxpl, (nel && nrows) ? data : dummy));
done:
    if (dcpl >= 0) H5Pclose(dcpl);
    return write_done(w, name, rc, ms, ds, sp);
}

int zb_ckpt_write_tensor(zb_ckpt_writer *w, const char *name, zb_dtype dtype, int ndim, const int64_t *shape,
                         const void *data) {
    int64_t nlead = ndim ? shape[0] : 1;
    return zb_ckpt_write_rows(w, name, dtype, ndim, shape, 0, w->rank == 0 ? nlead : 0, data);
}

/* OR into sp the boxes covering elements [a, b) of the trailing dims k.. of one index of the
 * leading ones (start[0..k), count[0..k) already set): full runs of dim k as one box, the
 * partial ends recursively. */
static int select_range(hid_t sp, int *first, int nd, const hsize_t *dims, hsize_t *start, hsize_t *count, int k,
                        hsize_t a, hsize_t b) {
    if (a >= b) return ZB_OK;
    hsize_t s = 1;
    for (int j = k + 1; j < nd; j++) s *= dims[j];
    if (a % s == 0 && b % s == 0) {   /* whole sub-blocks of dim k: one box */
        start[k] = a / s;
        count[k] = b / s - a / s;
        for (int j = k + 1; j < nd; j++) { start[j] = 0; count[j] = dims[j]; }
        if (H5Sselect_hyperslab(sp, *first ? H5S_SELECT_SET : H5S_SELECT_OR, start, NULL, count, NULL) < 0)
            return zb_fail(ZB_EHDF5, "HDF5 call failed: H5Sselect_hyperslab");
        *first = 0;
        return ZB_OK;
    }
    hsize_t ia = a / s, ib = b / s;
    start[k] = ia;
    count[k] = 1;
    if (ia == ib) return select_range(sp, first, nd, dims, start, count, k + 1, a - ia * s, b - ia * s);
    if (a % s) {   /* the head inside index ia */
        ZB_TRY(select_range(sp, first, nd, dims, start, count, k + 1, a % s, s));
        a = (ia + 1) * s;
    }
    ZB_TRY(select_range(sp, first, nd, dims, start, count, k, a, ib * s));   /* whole indices */
    start[k] = ib;
    count[k] = 1;
    return select_range(sp, first, nd, dims, start, count, k + 1, 0, b - ib * s);   /* the tail */
}

int zb_ckpt_write_blocks(zb_ckpt_writer *w, const char *name, zb_dtype dtype, int ndim, const int64_t *shape,
                         int nblk, const zb_ckpt_block *bl, const void *data) {
    if (strchr(name, '/') || !name[0] || !strcmp(name, "."))
        return zb_fail(ZB_EARG, "%s: tensor '%s': names with '/' cannot be stored", w->path, name);
    if (ndim < 1 || ndim > ZB_MAX_DIMS || zb_h5_file_type(dtype) < 0)
        return zb_fail(ZB_EARG, "%s: tensor '%s': bad ndim %d or dtype", w->path, name, ndim);
    hsize_t dims[ZB_MAX_DIMS], start[ZB_MAX_DIMS] = {0}, count[ZB_MAX_DIMS];
    hsize_t width = 1, nel = 0;
    for (int i = 0; i < ndim; i++) {
        dims[i] = (hsize_t)shape[i];
        if (i) width *= dims[i];
    }
    for (int k = 0; k < nblk; k++) {
        const zb_ckpt_block *b = &bl[k];
        if (b->row0 < 0 || b->nrows < 0 || (hsize_t)(b->row0 + b->nrows) > dims[0] || b->col0 < 0 || b->ncols < 0 ||
            (hsize_t)(b->col0 + b->ncols) > width)
            return zb_fail(ZB_EARG, "%s: tensor '%s': bad block rows [%lld, %lld) x columns [%lld, %lld)", w->path,
                           name, (long long)b->row0, (long long)(b->row0 + b->nrows), (long long)b->col0,
                           (long long)(b->col0 + b->ncols));
        nel += (hsize_t)b->nrows * (hsize_t)b->ncols;
    }
    int rc = ZB_OK, first = 1;
    hid_t sp = -1, ds = -1, ms = -1, dcpl = -1;
    if ((rc = reserve(w, name, (uint64_t)dims[0] * width * zb_dtype_size(dtype)))) return rc;
    H5GO(sp = H5Screate_simple(ndim, dims, NULL));
    H5GO(dcpl = checked_dcpl(ndim, dims, dtype));
    H5GO(ds = H5Dcreate2(w->file, name, zb_h5_file_type(dtype), sp, H5P_DEFAULT, dcpl, H5P_DEFAULT));
    if ((rc = write_str_attr(ds, "dtype", zb_dtype_name(dtype)))) goto done;
    H5GO(H5Sselect_none(sp));
    for (int k = 0; k < nblk && nel; k++) {
        const zb_ckpt_block *b = &bl[k];
        if (!b->nrows || !b->ncols) continue;
        if ((hsize_t)b->ncols == width || ndim <= 2) {   /* one box */
            start[0] = (hsize_t)b->row0;
            count[0] = (hsize_t)b->nrows;
            for (int j = 1; j < ndim; j++) { start[j] = 0; count[j] = dims[j]; }
            if (ndim == 2) { start[1] = (hsize_t)b->col0; count[1] = (hsize_t)b->ncols; }
            H5GO(H5Sselect_hyperslab(sp, first ? H5S_SELECT_SET : H5S_SELECT_OR, start, NULL, count, NULL));
            first = 0;
            continue;
        }
        for (int64_t r = b->row0; r < b->row0 + b->nrows && !rc; r++) {   /* a column range of an N-D row */
            start[0] = (hsize_t)r;
            count[0] = 1;
            rc = select_range(sp, &first, ndim, dims, start, count, 1, (hsize_t)b->col0, (hsize_t)(b->col0 + b->ncols));
        }
        if (rc) goto done;
    }
    if (nel) {
        H5GO(ms = H5Screate_simple(1, &nel, NULL));
    } else {
        hsize_t one = 1;
        H5GO(ms = H5Screate_simple(1, &one, NULL));
        H5GO(H5Sselect_none(ms));
    }
    /* a rank with nothing to write still takes part in the collective write */
    static const char dummy[8];
    H5GO(H5Dwrite(ds, zb_h5_mem_type(dtype), ms, sp, w->dxpl, nel ? data : dummy));
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
