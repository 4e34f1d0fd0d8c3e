/* store.h — where a model's tensors come from: an HF directory (config.json + safetensors,
 * single or sharded) or zebra's native HDF5 checkpoint. Every command that takes a model
 * goes through this, so both forms are accepted everywhere. */
#ifndef ZB_STORE_H
#define ZB_STORE_H

#include <stdint.h>
#include "config.h"
#include "safetensors.h"

typedef struct zb_store zb_store;

int zb_store_open(zb_store **out, const char *path);
void zb_store_close(zb_store *s);
/* The parsed model config. */
const zb_config *zb_store_config(const zb_store *s);
const char *zb_store_path(const zb_store *s);
/* 1 if the tensor exists. */
int zb_store_has(const zb_store *s, const char *name);
/* Read tensor `name` as f32 into dst; its shape must equal (ndim, shape) exactly, otherwise
 * ZB_ESHAPE naming file, tensor, expected and found shapes. Absent: ZB_ENOTFOUND. */
int zb_store_read(const zb_store *s, const char *name, float *dst, int ndim, const int64_t *shape);
/* Read rows [row0, row0+nrows) of a 2-D (or the leading dim of an N-D) tensor: used to load
 * a tensor-parallel slice without holding the whole tensor. */
int zb_store_read_rows(const zb_store *s, const char *name, float *dst, int64_t row0, int64_t nrows);
/* The same into bf16 (raw bits): a BF16 tensor is copied as stored, any other float dtype is
 * converted (round to nearest even) through a bounded f32 buffer. For --weights bf16. */
int zb_store_read_bf16(const zb_store *s, const char *name, uint16_t *dst, int ndim, const int64_t *shape);
int zb_store_read_rows_bf16(const zb_store *s, const char *name, uint16_t *dst, int64_t row0, int64_t nrows);
/* Names of all tensors (for "no unexpected tensor" checks and import). */
int zb_store_count(const zb_store *s);
const char *zb_store_name_at(const zb_store *s, int i);
/* Shape and dtype of tensor i. */
int zb_store_info_at(const zb_store *s, int i, int *ndim, int64_t *shape, zb_dtype *dtype);
/* Index of tensor `name` (for zb_store_info_at), or -1. */
int zb_store_find(const zb_store *s, const char *name);
/* The file holding tensor `name` (its shard for an HF directory), for messages. */
const char *zb_store_file_of(const zb_store *s, const char *name);
/* The whole tensor in its stored dtype (zb_dtype_size(dtype) * numel bytes), no conversion. */
int zb_store_read_raw(const zb_store *s, const char *name, void *dst);

#endif
