/* ckpt_read.h — zebra's native checkpoint (one HDF5 file) and its reader.
 *
 * Layout (docs/CHECKPOINT.md): one dataset per tensor at the root, named exactly by its HF
 * name (HF names use dots, never '/'); the dtype is kept: F32/F64/I8/U8/I32/U32/I64 as the
 * matching little-endian HDF5 type, BF16 and F16 (no native HDF5 type) as 16-bit unsigned
 * integers holding the raw bits. Every dataset has a string attribute `dtype` ("F32", "BF16",
 * ...) that is authoritative. Root attributes: `config_json` (text of zb_config_to_json),
 * `model_type` (string), `n_layers`, `d_model` (int), `zebra_format` (int, 1).
 *
 * Writing: parallel/checkpoint.h (every rank its slices, MPI-IO). Reading is rank-local (HDF5's
 * default driver): each rank reads what it needs. */
#ifndef ZB_CKPT_READ_H
#define ZB_CKPT_READ_H

#include <stdint.h>

#include "safetensors.h"

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
