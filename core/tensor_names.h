/* tensor_names.h — the (HF name, shape) pairs a config implies.
 *
 * One enumeration shared by `zebra import` (presence and shape checks) and the model code
 * (loading), so that both agree on names and shapes. Shapes are in HF (PyTorch) order:
 * Linear weights are [out, in]. */
#ifndef ZB_TENSOR_NAMES_H
#define ZB_TENSOR_NAMES_H

#include <stddef.h>
#include <stdint.h>
#include "config.h"

#define ZB_TNAME_MAX 128

typedef struct {
    char name[ZB_TNAME_MAX];
    int ndim;
    int64_t shape[3];
    int layer;            /* layer index, -1 for embed / final norm / lm_head */
} zb_tensor_spec;

/* All tensors of config c, in a fixed order (embed, layers 0..L-1, norm, lm_head unless tied):
 * *out is malloc'd (caller frees), *n its length. Per layer: input_layernorm, the mixer's
 * tensors (self_attn.* for attention and MLA, mamba.* for Mamba2), post_attention_layernorm,
 * mlp.{gate,up,down}_proj. */
int zb_expected_tensors(const zb_config *c, zb_tensor_spec **out, int *n);
/* The entry named `name`, or NULL. */
const zb_tensor_spec *zb_tensor_spec_find(const zb_tensor_spec *s, int n, const char *name);
/* "[a, b, c]" into buf (for messages). */
const char *zb_shape_str(char *buf, size_t cap, int ndim, const int64_t *shape);

#endif
