/* zb_common.h — error codes, the checking macros, allocation and small utilities.
 *
 * Every fallible function returns an int status (ZB_OK == 0) and, on failure, records a
 * one-line message with zb_fail(). Callers propagate with ZB_TRY; library calls are wrapped
 * by ZB_MPI / ZB_H5 / ZB_LAPACK so that no return code is silently dropped. The driver prints
 * zb_errmsg() once ("zebra: <file>: <problem>") and stops every rank. */
#ifndef ZB_COMMON_H
#define ZB_COMMON_H

#include <stddef.h>
#include <stdint.h>

enum {
    ZB_OK = 0,
    ZB_EIO = 1,       /* file missing / unreadable / unwritable */
    ZB_EFORMAT = 2,   /* malformed file contents (JSON, safetensors header, HDF5 layout) */
    ZB_ESHAPE = 3,    /* a tensor or dimension does not have the expected shape */
    ZB_ENOMEM = 4,
    ZB_EARG = 5,      /* bad command line / config value */
    ZB_EMPI = 6,
    ZB_EHDF5 = 7,
    ZB_ELAPACK = 8,
    ZB_ENOTFOUND = 9, /* a named tensor / key is absent */
    ZB_EDEVICE = 10,  /* the GPU: no device, a CUDA / cuBLAS error, out of device memory */
};

/* Record a formatted one-line message; returns code so that `return zb_fail(...)` works. */
int zb_fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The last recorded message ("" if none). */
const char *zb_errmsg(void);
/* Prefix the current message with "<prefix>: " (used to add the file name on the way up). */
int zb_fail_prefix(int code, const char *prefix);

#define ZB_TRY(expr) do { int zb_rc_ = (expr); if (zb_rc_ != ZB_OK) return zb_rc_; } while (0)
/* MPI: any non-success return is an error with the call's text. */
#define ZB_MPI(call) do { int zb_m_ = (call); if (zb_m_ != 0) \
    return zb_fail(ZB_EMPI, "MPI error %d in %s (%s:%d)", zb_m_, #call, __FILE__, __LINE__); } while (0)
/* HDF5: negative return values are errors. */
#define ZB_H5(call) do { if ((long long)(call) < 0) \
    return zb_fail(ZB_EHDF5, "HDF5 call failed: %s (%s:%d)", #call, __FILE__, __LINE__); } while (0)
/* LAPACKE: info != 0 is an error (info > 0: no convergence). */
#define ZB_LAPACK(call) do { int zb_i_ = (int)(call); if (zb_i_ != 0) \
    return zb_fail(ZB_ELAPACK, "LAPACK error info=%d in %s (%s:%d)", zb_i_, #call, __FILE__, __LINE__); } while (0)

/* Allocation that records ZB_ENOMEM with the size and purpose; returns NULL on failure. */
void *zb_malloc(size_t bytes, const char *what);
void *zb_calloc(size_t n, size_t size, const char *what);
/* Allocate or fail the enclosing function with ZB_ENOMEM. */
#define ZB_ALLOC(ptr, n, what) do { (ptr) = zb_calloc((size_t)(n), sizeof(*(ptr)), (what)); \
    if (!(ptr)) return ZB_ENOMEM; } while (0)

/* A path the caller will read as a file: ZB_EIO "<path>: is a directory" (or "not a regular
 * file" when need_regular: whole-file reads and mappings; streams may read a pipe), or the
 * system's reason when it cannot be opened. zb_fd_is_file: the same for an open descriptor. */
int zb_path_is_file(const char *path, int need_regular);
int zb_fd_is_file(int fd, const char *path, int need_regular);
/* Flush the directory that holds path (its new entry after a rename) to disk; best effort:
 * file systems that cannot fsync a directory are not an error. */
void zb_fsync_dir(const char *path);
/* Write n bytes to fd and fsync it; ZB_EIO naming path and the system's reason (ENOSPC...). */
int zb_write_all_fsync(int fd, const void *p, size_t n, const char *path);
/* 1 if s ends with suffix. */
int zb_ends_with(const char *s, const char *suffix);
/* 1 if path is a regular file named *.json (a model config, where a model is expected). */
int zb_is_config_json(const char *path);

/* The string member `key` of a JSON object (cJSON), or NULL when absent or not a string. */
struct cJSON;
const char *zb_json_str(const struct cJSON *o, const char *key);

/* Read a whole file into a NUL-terminated malloc'd buffer. */
int zb_read_file(const char *path, char **out, size_t *len);

double zb_now(void);   /* monotonic seconds */

/* bf16 / f16 <-> f32 */
float zb_bf16_to_f32(uint16_t h);
uint16_t zb_f32_to_bf16(float f);   /* round to nearest even, as torch */
float zb_f16_to_f32(uint16_t h);
uint16_t zb_f32_to_f16(float f);
/* n values: bf16 to f32 (exact); f32 to bf16 (round to nearest even) */
void zb_bf16_to_f32_n(const uint16_t *src, float *dst, size_t n);
void zb_f32_to_bf16_n(const float *src, uint16_t *dst, size_t n);

/* Deterministic RNG (xorshift64*), one state per user; no hidden globals. */
typedef struct { uint64_t s; } zb_rng;
void zb_rng_seed(zb_rng *r, uint64_t seed);
uint64_t zb_rng_u64(zb_rng *r);
float zb_rng_uniform(zb_rng *r);   /* [0, 1) */
float zb_rng_normal(zb_rng *r);    /* N(0, 1) */
/* A counter-based uniform in [0, 1): value i of stream `seed` (splitmix64 of both), so that a
 * fill split over threads gives the same values in any order (benchmark fills, not training). */
float zb_hash_uniform(uint64_t seed, uint64_t i);

#endif
