/* model_io.h — a model and its training state as a native checkpoint (parallel/checkpoint.h),
 * by one slice writer for every case: one rank, tensor parallel (each rank its slices),
 * pipeline stages (each stage its tensors; every rank walks every tensor of the full model
 * since the writer is collective), data parallel (one replica writes the weights), and the
 * AdamW moments beside them, which under ZeRO-1 each data-parallel rank writes from its own
 * range (no gather). Every tensor is stored with its full shape, so a checkpoint loads at any
 * TP x PP x DP layout. */
#ifndef ZB_MODEL_IO_H
#define ZB_MODEL_IO_H

#include <mpi.h>
#include <stdint.h>

#include "model.h"
#include "optim.h"
#include "safetensors.h"

/* Write every parameter of m (HF names, full shapes) and its (full) config to path, stored as
 * dtype (ZB_DT_F32 or ZB_DT_BF16). Collective over comm, which holds every rank of m's grid
 * (or, for a whole model, the ranks holding copies: rank 0's values are written). */
int zb_model_save(const zb_model *m, const char *path, zb_dtype dtype, MPI_Comm comm);

/* What a training checkpoint holds besides the weights (float32). */
typedef struct {
    const zb_adamw *o;        /* optim.m.<name> / optim.v.<name> of the trainable tensors */
    int zero;                 /* ZeRO-1: o->m, o->v hold the floats [lo, hi) of m's flat buffer */
    size_t lo, hi;
    const int64_t *state;     /* "train.state": int64 [n_state] */
    int n_state;
    const char *run_text;     /* "train.run_json": the run config's text (may be NULL) */
} zb_train_ckpt;
int zb_train_save(const zb_model *m, const char *path, const zb_train_ckpt *t, MPI_Comm comm);
/* Resume: this rank's part of the moments (its slices; ZeRO, zero != 0: the range [lo, hi) of
 * them) into o (absent moments: zeros), and train.state [n_state]. Rank-local reads. */
int zb_train_load(const zb_model *m, const char *path, zb_adamw *o, int zero, size_t lo, size_t hi,
                  int64_t *state, int n_state);

#endif
