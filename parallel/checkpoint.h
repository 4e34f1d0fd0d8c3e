/* checkpoint.h — zebra's native checkpoint: one HDF5 file.
 *
 * Layout (docs/CHECKPOINT.md): one dataset per tensor at the root, named exactly by its HF
 * name (HF names use dots, never '/'); the dtype is kept: F32/F64/I8/U8/I32/U32/I64 as the
 * matching little-endian HDF5 type, BF16 and F16 (no native HDF5 type) as 16-bit unsigned
 * integers holding the raw bits. Every dataset has a string attribute `dtype` ("F32", "BF16",
 * ...) that is authoritative. Root attributes: `config_json` (text of zb_config_to_json),
 * `model_type` (string), `n_layers`, `d_model` (int), `zebra_format` (int, 1).
 *
 * Writing goes through the MPI-IO driver on a communicator so that every rank can write its
 * slice collectively; every writer call is collective (all ranks, same arguments except the
 * data / row range). The file is built at `path.tmp.<pid of rank 0>` and renamed into place by
 * rank 0 on a successful close: there is never a half-written file at the final name.
 * Reading is rank-local (default driver): each rank reads what it needs. */
#ifndef ZB_CHECKPOINT_H
#define ZB_CHECKPOINT_H

#include <mpi.h>
#include <stdint.h>

#include "config.h"
#include "safetensors.h"

typedef struct zb_ckpt_writer zb_ckpt_writer;

/* Collective over comm. */
int zb_ckpt_writer_open(zb_ckpt_writer **out, const char *path, MPI_Comm comm);
/* Store the config JSON text (and the scalar attributes read from it). Collective. */
int zb_ckpt_set_config(zb_ckpt_writer *w, const char *config_json);
/* A model checkpoint's writer: dtype must be F32 or BF16 (checked before any collective), then
 * zb_ckpt_writer_open + zb_ckpt_set_config(cfg as JSON). On failure *out is NULL. Collective. */
int zb_ckpt_open_model(zb_ckpt_writer **out, const char *path, const zb_config *cfg, zb_dtype dtype, MPI_Comm comm);
/* Create dataset `name` and write it; rank 0's data is written, other ranks may pass NULL.
 * Collective. */
int zb_ckpt_write_tensor(zb_ckpt_writer *w, const char *name, zb_dtype dtype, int ndim,
                         const int64_t *shape, const void *data);
/* Same, but each rank writes rows [row0, row0+nrows) of the leading dimension (its slice;
 * nrows may be 0); data holds those rows contiguously. Collective. */
int zb_ckpt_write_rows(zb_ckpt_writer *w, const char *name, zb_dtype dtype, int ndim,
                       const int64_t *shape, int64_t row0, int64_t nrows, const void *data);
/* General slice (tensor parallelism, parallel/tp.h): the tensor is viewed as rows of the
 * leading dimension; this rank writes the rows of nseg segments [row0[k], row0[k]+nrows[k])
 * (increasing, disjoint), and of each row the columns [col0, col0+ncols) of dim 1 (2-D only;
 * otherwise col0 = 0 and ncols = the product of the trailing dims). data holds the selected
 * values in row-major order ([sum nrows, ncols]). nseg 0 writes nothing. Collective. */
int zb_ckpt_write_slab(zb_ckpt_writer *w, const char *name, zb_dtype dtype, int ndim,
                       const int64_t *shape, int nseg, const int64_t *row0, const int64_t *nrows,
                       int64_t col0, int64_t ncols, const void *data);
/* The most general write: the tensor viewed as [shape[0], width] (width = the product of the
 * trailing dims); this rank writes nblk blocks, rows [row0, row0+nrows) x columns
 * [col0, col0+ncols) of that view (a column range inside a row of an N-D tensor, N > 2, is
 * split into boxes of its trailing dims), disjoint and in increasing file order; data holds
 * their values in that order. nblk 0 writes nothing. Collective. */
typedef struct { int64_t row0, nrows, col0, ncols; } zb_ckpt_block;
int zb_ckpt_write_blocks(zb_ckpt_writer *w, const char *name, zb_dtype dtype, int ndim, const int64_t *shape,
                         int nblk, const zb_ckpt_block *b, const void *data);
/* Close and rename into place. Collective. Frees w whatever the outcome; on failure the
 * temporary file is removed. */
int zb_ckpt_close(zb_ckpt_writer *w);
/* Give up: close, remove the temporary file, free w. Collective. */
void zb_ckpt_abort(zb_ckpt_writer *w);

/* Reader. */
typedef struct {
    char *name;
    zb_dtype dtype;
    int ndim;
    int64_t shape[ZB_MAX_DIMS];
    int64_t numel;
} zb_ckpt_entry;

typedef struct zb_ckpt_reader zb_ckpt_reader;

int zb_ckpt_reader_open(zb_ckpt_reader **out, const char *path);
void zb_ckpt_reader_close(zb_ckpt_reader *r);
const char *zb_ckpt_path(const zb_ckpt_reader *r);
/* The config_json attribute (NUL-terminated). */
const char *zb_ckpt_config_json(const zb_ckpt_reader *r);
int zb_ckpt_count(const zb_ckpt_reader *r);
const zb_ckpt_entry *zb_ckpt_entry_at(const zb_ckpt_reader *r, int i);
/* Index of tensor `name`, or -1. */
int zb_ckpt_find(const zb_ckpt_reader *r, const char *name);
/* Rows [row0, row0+nrows) of the leading dimension of entry i (nrows = shape[0] for all; a
 * 0-d tensor has one row), raw bytes in the stored dtype. */
int zb_ckpt_read_raw(const zb_ckpt_reader *r, int i, int64_t row0, int64_t nrows, void *dst);
/* Same, converted to f32 (float dtypes only). */
int zb_ckpt_read_f32(const zb_ckpt_reader *r, int i, int64_t row0, int64_t nrows, float *dst);

#endif
