/* release.h — the authors' release format of Zebra-Llama checkpoints (SPEC §3; AMD-Hybrid-Models,
 * folder Zebra-Llama; fixtures/zebra-release-tiny):
 *   config.json         the plain Llama base config (the teacher's shape, its llama3 rope);
 *   hybrid_config.json  their HybridConfig: the MLA and Mamba2 settings, `mla_layers`
 *                       (every other layer is Mamba2), the MLA's rope (YaRN);
 *   model.safetensors   (or shards + model.safetensors.index.json) with the MLA tensors under
 *                       model.layers.N.mla.* (o_proj named out_proj) and the Mamba2 ones under
 *                       model.layers.N.mamba.*; lm_head.weight stored even when tied.
 * zebra names the MLA tensors as HF DeepSeek does (self_attn.*, o_proj): the store maps the names
 * (zb_release_stored_name / zb_release_our_name), so every command reads a release directory as
 * it is. `zebra export` writes one (zb_release_*_json). */
#ifndef ZB_RELEASE_H
#define ZB_RELEASE_H

#include <stddef.h>
#include "config.h"

/* 1 if DIR holds a hybrid_config.json (then config.json is the base of a release checkpoint). */
int zb_release_is_dir(const char *dir);
/* The model config of release directory DIR (config.json + hybrid_config.json): model_type
 * "zebra", layer kinds from mla_layers, the MLA dims and rope, the Mamba2 dims, the teacher shape
 * from the base. Anything the release can hold that zebra cannot compute the same way (attention
 * biases, per-layer ranks, a gated norm before the gate, ...) is refused with one line naming
 * hybrid_config.json and the key. */
int zb_release_config(const char *dir, zb_config *c);

/* Tensor names: ours -> the release's (model.layers.N.self_attn.X of an MLA layer ->
 * model.layers.N.mla.X, o_proj -> out_proj; every other name unchanged), and back. */
void zb_release_stored_name(const zb_config *c, const char *ours, char *out, size_t cap);
void zb_release_our_name(const zb_config *c, const char *stored, char *out, size_t cap);

/* Whether c can be written in the release layout; a one-line reason (ZB_EARG) otherwise, e.g. an
 * MLA with llama3 scaling (our older checkpoints), attention layers in a hybrid, norms the
 * release has not. */
int zb_release_check(const zb_config *c);
/* The release's hybrid_config.json for c (the keys of their HybridConfig as their save_config
 * writes them) and the Llama base config.json (also the whole config of a pure Llama model, as
 * HF writes it); torch_dtype "float32" / "bfloat16". malloc'd; NULL with zb_fail on error. */
char *zb_release_hybrid_json(const zb_config *c);
char *zb_hf_llama_json(const zb_config *c, const char *torch_dtype);

#endif
