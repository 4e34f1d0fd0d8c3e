/* safetensors.h — read (mmap) and write the safetensors format, single file or sharded.
 *
 * Format: u64 little-endian header length N, N bytes of JSON {name: {dtype, shape,
 * data_offsets: [begin, end]}, "__metadata__": {...}}, then the data buffer. Opening
 * validates the header fully: JSON well formed, dtype known, shape x dtype size == byte
 * range, every range inside the file, ranges non-overlapping. Errors name file and tensor. */
#ifndef ZB_SAFETENSORS_H
#define ZB_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

typedef enum { ZB_DT_F32 = 0, ZB_DT_F16, ZB_DT_BF16, ZB_DT_I32, ZB_DT_I64, ZB_DT_U8, ZB_DT_I8,
               ZB_DT_U32, ZB_DT_F64 } zb_dtype;

#define ZB_MAX_DIMS 8

typedef struct {
    char *name;
    zb_dtype dtype;
    int ndim;
    int64_t shape[ZB_MAX_DIMS];
    int64_t numel;
    const void *data;     /* points into the mmap */
    size_t nbytes;
    int file;             /* index of the shard holding it */
} zb_st_tensor;

typedef struct zb_safetensors zb_safetensors;

/* path: a .safetensors file, a model.safetensors.index.json, or a directory holding either
 * (model.safetensors / model.safetensors.index.json). */
int zb_st_open(zb_safetensors **out, const char *path);
void zb_st_close(zb_safetensors *st);
int zb_st_count(const zb_safetensors *st);
const zb_st_tensor *zb_st_at(const zb_safetensors *st, int i);
/* NULL when absent (no error recorded). */
const zb_st_tensor *zb_st_get(const zb_safetensors *st, const char *name);
/* The file a tensor came from (for error messages). */
const char *zb_st_file_of(const zb_safetensors *st, const zb_st_tensor *t);
/* Convert any float dtype to f32 (numel elements into dst). */
int zb_st_to_f32(const zb_st_tensor *t, float *dst);
/* Convert integer dtypes (I32/I64/U32/U8) to int32. */
int zb_st_to_i32(const zb_st_tensor *t, int32_t *dst);
/* Convert n elements of a float dtype at src (any alignment) to f32 (used by the HDF5 reader). */
int zb_dtype_convert_f32(zb_dtype dt, const void *src, int64_t n, float *dst);
size_t zb_dtype_size(zb_dtype d);
const char *zb_dtype_name(zb_dtype d);   /* "F32", "BF16", ... */
int zb_dtype_parse(const char *s, zb_dtype *d);

/* Writer: add tensors (data is copied), then save atomically (temp file + rename). */
typedef struct zb_st_writer zb_st_writer;
zb_st_writer *zb_st_writer_new(void);
int zb_st_writer_add(zb_st_writer *w, const char *name, zb_dtype dtype, int ndim,
                     const int64_t *shape, const void *data);
/* A tensor whose bytes fill(ctx, name, dst, nbytes) writes at save time, one tensor at a time
 * (a model exported without a second copy in memory). A non-zero return aborts the save. */
typedef int (*zb_st_fill)(void *ctx, const char *name, void *dst, size_t nbytes);
int zb_st_writer_add_fill(zb_st_writer *w, const char *name, zb_dtype dtype, int ndim,
                          const int64_t *shape, zb_st_fill fill, void *ctx);
/* Data bytes of the tensors added so far. */
size_t zb_st_writer_bytes(const zb_st_writer *w);
int zb_st_writer_save(zb_st_writer *w, const char *path);
void zb_st_writer_free(zb_st_writer *w);

#endif
