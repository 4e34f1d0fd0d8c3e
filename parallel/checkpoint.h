/* checkpoint.h — writing zebra's native checkpoint (one HDF5 file; its layout and the reader:
 * core/ckpt_read.h) from every rank: each writes its slices through the MPI-IO driver.
 *
 * Every writer call is collective (all ranks, same arguments except the data / row range).
 * The file is built at `path.tmp.<pid of rank 0>` and renamed into place by rank 0 on a
 * successful close: there is never a half-written file at the final name. */
#ifndef ZB_CHECKPOINT_H
#define ZB_CHECKPOINT_H

#include <mpi.h>
#include <stdint.h>

#include "ckpt_read.h"
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

#endif
