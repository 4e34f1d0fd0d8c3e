/* tp.h — building tensor-parallel shards and pipeline stages of a model (Megatron-LM rules,
 * SPEC.md §9; what splits how and what one rank's math does with it: core/shard.h).
 *
 * This file holds the slice tables: which part of each full tensor a rank holds
 * (zb_tp_slice_of), and everything expressed with them: a shard built on a grid, loaded by
 * slices from an HF directory or a .h5 (whatever layout wrote it), copied out of a full model,
 * gathered back. Checkpoints are layout free: zb_model_save of a shard writes every slice
 * into one file with full shapes (collective; parallel/model_io.h). With pp > 1 a shard is
 * also one pipeline stage's part of the stack (pp.h: the cut; pipeline.h: the schedule). */
#ifndef ZB_TP_H
#define ZB_TP_H

#include <stdint.h>

#include "grid.h"
#include "model.h"
#include "shard.h"

/* Which part of tensor `p` (full name and shape) rank r of tp holds. */
int zb_tp_slice_of(const zb_config *full, const zb_param *p, int r, int tp, zb_tp_slice *s);

/* A shard of config cfg on grid g (zeros). With g->tp_size == 1 this is still a valid "shard"
 * (the whole model, m->tp set). With g->pp_size > 1 it is the shard of pipeline stage
 * g->pp_rank only (its layers, + embedding / head): full_params then lists the stage's
 * tensors (global names and full shapes). Collective only in the sense that every rank
 * checks the same config. The grid must outlive the model (m->tp->comm is g->comm). */
int zb_model_init_tp(zb_model *m, const zb_config *cfg, const zb_grid *g);
/* The same with the 2-D parameters held as wt (bf16: inference only, see model.h) and, with
 * pp > 1, the stages cut at `cut` (first layer of each stage, cut[pp_size] = n_layers; the
 * same on every rank; NULL: the cost model's cut, pp.h zb_pp_stage_layers). */
int zb_model_init_tp_ex(zb_model *m, const zb_config *cfg, const zb_grid *g, zb_wdtype wt, const int *cut);
/* Load this rank's slices from an HF directory or a native .h5 (whatever layout wrote it). */
int zb_model_load_tp(zb_model *m, const char *path, const zb_grid *g);
/* The same with wt and cut as zb_model_init_tp_ex: each rank reads only its slices, bf16
 * tensors of a bf16 checkpoint raw (no f32 copy of the shard). */
int zb_model_load_tp_ex(zb_model *m, const char *path, const zb_grid *g, zb_wdtype wt, const int *cut);
/* Copy this rank's slices out of a full (1-rank) model of the same config. */
int zb_tp_copy_from_full(zb_model *shard, const zb_model *full);

/* Gather parameter i's full tensor from its slices: src is this rank's local tensor (e.g.
 * m->data + p->offset or m->grad + p->offset), dst receives the full tensor on every rank
 * (numel of the full shape). Collective over the TP group. */
int zb_tp_gather_param(const zb_model *m, int i, const float *src, float *dst);
#endif
