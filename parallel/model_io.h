/* model_io.h — writing a model's parameters as a native checkpoint (parallel/checkpoint.h). */
#ifndef ZB_MODEL_IO_H
#define ZB_MODEL_IO_H

#include <mpi.h>

#include "model.h"
#include "safetensors.h"

/* Write every parameter of m (HF names, shapes) and its config to path, stored as dtype
 * (ZB_DT_F32 or ZB_DT_BF16). Collective over comm; rank 0's values are written. */
int zb_model_save(const zb_model *m, const char *path, zb_dtype dtype, MPI_Comm comm);

#endif
