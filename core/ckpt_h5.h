/* ckpt_h5.h — what the checkpoint reader (core/ckpt_read.c) and writer (parallel/checkpoint.c)
 * share of HDF5: the file and memory types of a dtype, string attributes, quiet errors. Not a
 * public interface: the two checkpoint files only. */
#ifndef ZB_CKPT_H5_H
#define ZB_CKPT_H5_H

#include <hdf5.h>

#include "safetensors.h"
#include "zb_common.h"

/* Inside functions that hold handles: ZB_H5 with a jump to the cleanup label `done`, so that
 * nothing leaks on the error path (needs `int rc` in scope). */
#define H5GO(call) do { if ((long long)(call) < 0) { \
    rc = zb_fail(ZB_EHDF5, "HDF5 call failed: %s (%s:%d)", #call, __FILE__, __LINE__); goto done; } } while (0)

/* HDF5's own error-stack printing off: every failing call becomes one zb_fail line. */
void zb_h5_quiet(void);
/* File type (little endian, as safetensors) and native memory type of a dtype (-1: none). */
hid_t zb_h5_file_type(zb_dtype d);
hid_t zb_h5_mem_type(zb_dtype d);
/* A fixed-length string attribute into a malloc'd NUL-terminated buffer. */
int zb_h5_read_str_attr(hid_t obj, const char *name, char **out);

#endif
